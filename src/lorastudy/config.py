"""Experiment profiles: YAML files validated once into typed models (the sweep plan is lorastudy.plan).

A bad value fails here, before any compute, with the key path and what is allowed (pydantic does the
validation; we only format its errors).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from lorastudy.config_errors import format_errors
from lorastudy.data.world.settings import WorldConfig
from lorastudy.layout import PROJECT_ROOT, Layout

Domain = Literal["code", "math"]
Regime = Literal["cpt", "ift"]
Method = Literal["full", "lora"]
Targets = Literal["attention", "mlp", "all"]

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
TARGET_MODULES: dict[str, tuple[str, ...]] = {"attention": ATTENTION_MODULES, "mlp": MLP_MODULES,
                                              "all": ATTENTION_MODULES + MLP_MODULES}  # Llama's linear layers
CONFIG_DIR = Path(os.environ.get("LORASTUDY_CONFIGS", PROJECT_ROOT / "configs"))


class ConfigError(ValueError):
    """A profile failed validation; the message names every bad key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    """Where a dataset comes from: an adapter name and a local path or hub id (`{world}` = the mini world folder)."""

    adapter: str
    source: str
    split: str | None = None
    subset: str | None = None
    limit: PositiveInt | None = None
    streaming: bool = False
    data_dir: str | None = None  # a hub dataset's folder, e.g. `python` of bigcode/starcoderdata


class Architecture(_Strict):
    """Shape of the mini Llama built from scratch."""

    hidden_size: PositiveInt = 128
    num_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    intermediate_size: PositiveInt = 384
    max_position_embeddings: PositiveInt = 256


class Pretrain(_Strict):
    """How the mini base is pre-trained on the mini world's corpus."""

    epochs: PositiveFloat = 2.0
    batch_size: PositiveInt = 32
    seq_len: PositiveInt = 128
    learning_rate: PositiveFloat = 3e-3
    warmup_ratio: NonNegativeFloat = 0.03
    weight_decay: NonNegativeFloat = 0.0


class Base(_Strict):
    """The base model: `mini` (built and pre-trained here, offline) or `pretrained` (hub id or local folder)."""

    kind: Literal["mini", "pretrained"] = "mini"
    model: str | None = None
    tokenizer: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    revision: str | None = None
    world: WorldConfig = WorldConfig()  # the mini world's sizes (a preset plus overrides); unused by pretrained bases
    architecture: Architecture = Architecture()
    pretrain: Pretrain = Pretrain()
    count: PositiveInt = 1  # mini bases pre-trained from seeds 0..count-1; a run's seed s fine-tunes base s % count

    @model_validator(mode="after")  # not a field validator: it would never see the default (no model at all)
    def _model_given(self) -> "Base":
        if self.kind == "pretrained" and (not self.model or self.count != 1):
            raise ValueError("a pretrained base needs `model` (hub id or local folder)" if not self.model else
                             "a pretrained base is one model: `count` is for mini bases pre-trained here")
        return self

    def index(self, seed: int) -> int:
        """The base a run of this seed fine-tunes (B bases cost no more runs than B seeds)."""
        return seed % self.count


class LoraDefaults(_Strict):
    """LoRA options shared by every LoRA run unless the sweep overrides them."""

    alpha_ratio: PositiveFloat = 2.0
    dropout: NonNegativeFloat = 0.05
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: bool | Literal["gaussian", "pissa", "olora"] = True


class TaskTraining(_Strict):
    """Per domain × regime settings that differ from the training defaults (the paper's math IFT runs at
    seq 1024 and batch 768, the other three at 4096 and 192)."""

    seq_len: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    grad_accum: PositiveInt | None = None


class Training(_Strict):
    """Defaults for every fine-tuning run (the paper's Appendix A, scaled to the profile)."""

    seq_len: PositiveInt = 128
    batch_size: PositiveInt = 16
    grad_accum: PositiveInt = 1
    optimizer: Literal["adamw", "lion"] = "adamw"
    adam_betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: NonNegativeFloat = 0.0
    attention_dropout: NonNegativeFloat = 0.0
    warmup_ratio: NonNegativeFloat = 0.1
    cooldown_ratio: NonNegativeFloat = 0.2
    max_grad_norm: PositiveFloat = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    gradient_checkpointing: bool = False
    save_every_steps: PositiveInt | None = None  # Trainer's full state this often: a killed run resumes from it
    durations: dict[Regime, list[PositiveFloat]] = Field(
        default_factory=lambda: {"cpt": [100_000, 200_000, 400_000], "ift": [1, 2, 4]}
    )
    lora: LoraDefaults = LoraDefaults()
    num_processes: PositiveInt = 1
    task_overrides: dict[Domain, dict[Regime, TaskTraining]] = Field(default_factory=dict)

    def for_task(self, domain: str, regime: str) -> "Training":
        """These defaults with the domain × regime overrides applied."""
        override = self.task_overrides.get(domain, {}).get(regime)
        return self.model_copy(update=override.model_dump(exclude_none=True)) if override else self

    @field_validator("durations")
    @classmethod
    def _sorted(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        for regime, durs in v.items():
            if not durs or list(durs) != sorted(set(durs)):
                raise ValueError(f"durations.{regime} must be a non-empty increasing list, got {durs}")
        return v


class GenerationEval(_Strict):
    """A learning benchmark: generate, then score (GSM8K-style math or HumanEval-style code)."""

    dataset: DatasetSpec
    shots: int = Field(0, ge=0)
    n_samples: PositiveInt = 1
    temperature: NonNegativeFloat = 0.0
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: PositiveInt = 128
    batch_size: PositiveInt = 32
    timeout: PositiveFloat = 3.0
    ks: list[PositiveInt] = Field(default_factory=lambda: [1])


class ChoiceEval(_Strict):
    """A forgetting benchmark scored by option log-likelihoods."""

    dataset: DatasetSpec
    shots: int = Field(0, ge=0)
    metric: Literal["acc", "acc_norm"] = "acc_norm"


class Evaluation(_Strict):
    """Everything measured at every checkpoint."""

    learning: dict[Domain, GenerationEval]
    forgetting: dict[str, ChoiceEval]
    heldout: dict[str, DatasetSpec] = Field(default_factory=dict)
    # per domain, items in the learning benchmark's format apart from its test items, scored by the reference
    # answers' NLL at every checkpoint: what learning rates are chosen on (never the test items)
    validation: dict[Domain, DatasetSpec] = Field(default_factory=dict)
    batch_size: PositiveInt = 32


class Arm(_Strict):
    """One block of the sweep grid: every list is crossed with every other (scalars are one-item lists)."""

    name: str = ""
    domain: list[Domain] = Field(default_factory=lambda: ["code", "math"])
    regime: list[Regime] = Field(default_factory=lambda: ["cpt", "ift"])
    method: list[Method]
    lora_rank: list[PositiveInt] = Field(default_factory=lambda: [16])
    lora_alpha: list[PositiveFloat] | None = None
    target_modules: list[Targets] = Field(default_factory=lambda: ["all"])
    learning_rate: list[PositiveFloat]
    weight_decay: list[NonNegativeFloat] | None = None
    attention_dropout: list[NonNegativeFloat] | None = None
    use_rslora: list[bool] | None = None
    optimizer: list[Literal["adamw", "lion"]] | None = None  # None: training.optimizer (Fig S2 crosses both)
    seed: list[int] | None = None
    # learning_rate lists candidates: each trains with the first seed, the best on validation trains the rest
    # (lorastudy.tuning)
    select_learning_rate: bool = False

    @field_validator("*", mode="before")
    @classmethod
    def _listify(cls, v: Any, info: Any) -> Any:
        if info.field_name not in ("name", "select_learning_rate") and v is not None and not isinstance(v, (list, tuple)):
            return [v]
        return v

    @model_validator(mode="after")
    def _selectable(self) -> "Arm":
        if self.select_learning_rate and (not self.name or len(self.learning_rate) < 2):
            raise ValueError("an arm with select_learning_rate needs a name and at least two learning rates")
        return self


class ReleasedCheckpoint(_Strict):
    """A published checkpoint to evaluate without training: a full model, or a LoRA adapter on `base.model`."""

    model: str  # hub id or local folder
    revision: str | None = None  # hub branch (intermediate checkpoints) or commit; None = main
    method: Method
    rank: PositiveInt | None = None
    alpha: PositiveFloat | None = None
    domain: Domain
    regime: Regime
    duration: PositiveFloat | None = None  # None: the repository's final checkpoint, duration not stated
    unit: Literal["tokens", "epochs"]


class Slurm(_Strict):
    """Resources of each run's cluster job (`lorastudy sweep --executor slurm`, through submitit)."""

    cluster: Literal["slurm", "local", "debug"] | None = None  # None: Slurm when present; local: jobs run here
    partition: str | None = None
    timeout_min: PositiveInt = 240
    cpus_per_task: PositiveInt | None = None  # None: the run's threads
    gpus_per_task: int | None = Field(None, ge=0)  # None: training.num_processes on a pretrained base, else 0
    mem_gb: PositiveFloat | None = None
    array_parallelism: PositiveInt = 64


class Execution(_Strict):
    """How a sweep runs its runs: threads per run (fixed, so that a run's numbers do not depend on how many
    run beside it) and the cluster executor's resources."""

    threads_per_run: PositiveInt | None = None  # None: the machine's cores shared among the workers
    slurm: Slurm = Slurm()


class Profile(_Strict):
    """A whole experiment: base model, data, training defaults, evaluation sets and the sweep grid."""

    name: str
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0])
    base: Base = Base()
    data: dict[Domain, dict[Regime, DatasetSpec]]
    training: Training = Training()
    eval: Evaluation
    sweep: list[Arm]
    released: list[ReleasedCheckpoint] = Field(default_factory=list)
    analyses: list[str] = Field(default_factory=list)
    analysis_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    execution: Execution = Execution()
    output_dir: str = "outputs/{name}"

    @property
    def trained_context(self) -> int | None:
        """The positions every model here trained on, which every evaluated sequence must fit: the mini base's
        pre-training length capped by the shortest fine-tuning one; None for a pretrained base (its own context)."""
        tasks = [self.training.for_task(d, r).seq_len for d in self.data for r in self.data[d]]
        return min([self.base.pretrain.seq_len, *tasks]) if self.base.kind == "mini" else None

    def out_dir(self, override: str | os.PathLike | None = None) -> Path:
        """The folder for this profile's runs and results (outside git)."""
        raw = str(override) if override else os.environ.get("LORASTUDY_OUTPUT") or self.output_dir
        path = Path(raw.format(name=self.name))
        return path if path.is_absolute() else PROJECT_ROOT / path

    def layout(self, override: str | os.PathLike | None = None) -> Layout:
        """The paths of this profile's output tree (lorastudy.layout)."""
        return Layout(self.out_dir(override))

    @model_validator(mode="after")
    def _validation_for_selection(self) -> "Profile":
        for arm in self.sweep:
            missing = sorted(set(arm.domain) - set(self.eval.validation)) if arm.select_learning_rate else []
            if missing:
                raise ValueError(f"sweep arm {arm.name!r} chooses its learning rate on validation data, but "
                                 f"eval.validation has no {missing}")
        return self


def profile_path(name_or_path: str | os.PathLike) -> Path:
    """A profile name (configs/NAME.yaml) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} or p.exists():
        return p
    return CONFIG_DIR / f"{name_or_path}.yaml"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(parent)
    for key, value in child.items():
        if key == "sweep":
            out[key] = [*parent.get("sweep", []), *value]
        elif isinstance(value, dict) and isinstance(parent.get(key), dict):
            out[key] = _merge(parent[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    """A profile file's mapping; a YAML syntax error or a file that is not one mapping is a ConfigError naming
    the file and line."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: {where}: not valid YAML ({problem}); expected a profile mapping such as "
                          "configs/tiny.yaml") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if raw is None:
        raise ConfigError(f"{path}: empty; expected a profile mapping (name, base, data, eval, sweep, ...) such as "
                          "configs/tiny.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: holds a YAML {type(raw).__name__}, expected a profile mapping (name, base, ...)")
    return raw


def _read_with_parents(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A profile may say `extends: NAME`: it then changes its parent's keys and *adds* sweep arms."""
    raw = _read_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    ppath = profile_path(parent)
    if ppath.resolve() in seen or not ppath.is_file():
        raise ConfigError(f"{path}: extends {parent!r}, which is missing or circular")
    return _merge(_read_with_parents(ppath, (*seen, path.resolve())), raw)


def load_profile(name_or_path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Profile:
    """Read and validate a profile; `overrides` are dotted keys (`training.batch_size`) applied first."""
    path = profile_path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"profile {name_or_path!r} not found (looked for {path}); available: {available_profiles()}")
    raw = _read_with_parents(path)
    for key, value in (overrides or {}).items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    try:
        return Profile.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, str(path), tuple(overrides or ()))) from None
