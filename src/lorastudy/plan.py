"""The sweep plan: every run of a profile's grid, fully resolved, with a stable id (a slug of what differs)."""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import ValidationError

from lorastudy.config import Arm, ConfigError, Profile
from lorastudy.config_errors import format_errors


@dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run, fully resolved; its id is a stable slug of the values that differ by run."""

    domain: str
    regime: str
    method: str
    learning_rate: float
    seed: int
    lora_rank: int | None = None
    lora_alpha: float | None = None
    target_modules: str | None = None
    weight_decay: float = 0.0
    attention_dropout: float = 0.0
    use_rslora: bool = False
    optimizer: str = "adamw"
    arm: str = field(default="", compare=False)
    # "" or, in an arm that chooses its learning rate on validation (lorastudy.tuning): "candidate" (the first
    # seed, trained at every listed rate), "edge-low"/"edge-high" (the first seed one grid step beyond an edge,
    # trained only if the listed candidates' winner sits at that edge) or "seed" (another seed, trained only at
    # the chosen rate)
    selection: str = field(default="", compare=False)

    @property
    def run_id(self) -> str:
        parts = [self.domain, self.regime, self.method]
        if self.method == "lora":
            parts += [f"r{self.lora_rank}", f"a{self.lora_alpha:g}", str(self.target_modules)]
            if self.use_rslora:
                parts.append("rslora")
        parts.append(f"lr{self.learning_rate:g}")
        if self.weight_decay:
            parts.append(f"wd{self.weight_decay:g}")
        if self.attention_dropout:
            parts.append(f"do{self.attention_dropout:g}")
        if self.optimizer != "adamw":
            parts.append(self.optimizer)
        parts.append(f"s{self.seed}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, **asdict(self)}


EDGES = ("edge-low", "edge-high")


def beyond(rates: list[float], side: str) -> float:
    """The rate one grid step beyond the lowest (`edge-low`) or highest (`edge-high`) of `rates`: the grid's
    mean log step, rounded to the 1-3-10 series the profiles' grids are written in."""
    lo, hi = min(rates), max(rates)
    step = (math.log10(hi) - math.log10(lo)) / (len(set(rates)) - 1)
    target = math.log10(lo) - step if side == "edge-low" else math.log10(hi) + step
    series = [d + math.log10(m) for d in range(math.floor(target) - 1, math.floor(target) + 2) for m in (1, 3)]
    return float(f"{10 ** min(series, key=lambda x: abs(x - target)):.1g}")


def _arm_specs(profile: Profile, arm: Arm) -> list[RunSpec]:
    """The runs one arm lists: its grid, and for a selecting arm the two rates beyond its edges."""
    t = profile.training
    seeds = arm.seed or profile.seeds
    rates = [(lr, None) for lr in arm.learning_rate]
    if arm.select_learning_rate:
        rates += [(beyond(arm.learning_rate, side), side) for side in EDGES]
    out = []
    for lr, edge in rates:
        grid = itertools.product(
            arm.domain, arm.regime, arm.method, seeds,
            arm.weight_decay or [t.weight_decay], arm.attention_dropout or [t.attention_dropout],
            arm.optimizer or [t.optimizer],
        )
        for domain, regime, method, seed, wd, do, opt in grid:
            role = ("" if not arm.select_learning_rate else "seed" if seed != seeds[0]
                    else edge or "candidate")  # an edge rate that wins trains the other seeds too
            common = dict(domain=domain, regime=regime, method=method, learning_rate=lr, seed=seed,
                          weight_decay=wd, attention_dropout=do, optimizer=opt, arm=arm.name, selection=role)
            if method == "full":
                out.append(RunSpec(**common))
                continue
            out += [RunSpec(**common, lora_rank=r, lora_alpha=alpha, target_modules=tm, use_rslora=rs)
                    for r in arm.lora_rank
                    for alpha in (arm.lora_alpha or [t.lora.alpha_ratio * r])
                    for tm in arm.target_modules
                    for rs in (arm.use_rslora or [t.lora.use_rslora])]
    return out


def selection_runs(profile: Profile) -> list[RunSpec]:
    """Every run a learning-rate choice reads or may add (candidates, edges, other seeds), per selecting arm,
    whether or not another arm plans the same run."""
    return [s for arm in profile.sweep if arm.select_learning_rate for s in _arm_specs(profile, arm)]


def plan_runs(profile: Profile) -> list[RunSpec]:
    """Every run of the sweep grid, deduplicated by run id: the listed runs in declaration order, then the
    edge candidates (a run another arm lists trains as that arm's, whatever the choice)."""
    runs: dict[str, RunSpec] = {}
    specs = [s for arm in profile.sweep for s in _arm_specs(profile, arm)]
    for spec in sorted(specs, key=lambda s: s.selection in EDGES):  # stable: edges last
        runs.setdefault(spec.run_id, spec)
    return list(runs.values())


def find_run(profile: Profile, run_id: str) -> RunSpec:
    """The planned run with this id, or a clear error listing a few that exist."""
    runs = {r.run_id: r for r in plan_runs(profile)}
    if run_id not in runs:
        raise ConfigError(f"run {run_id!r} is not in profile {profile.name!r}; e.g. {list(runs)[:5]}")
    return runs[run_id]


def resolve_run(profile: Profile, run_id: str | None = None, **explicit: Any) -> RunSpec:
    """A run from its id, or from explicit settings (domain, regime, method, lora_rank, learning_rate, ...)
    validated like a one-run sweep arm; unset settings take the profile's first matching arm's values."""
    explicit = {k: v for k, v in explicit.items() if v is not None and v != ""}
    if run_id and explicit:
        raise ConfigError(f"give a run_id or explicit settings, not both (got run_id={run_id!r} and {sorted(explicit)})")
    if run_id:
        return find_run(profile, run_id)
    method = explicit.get("method", "lora")
    template = next((a for a in profile.sweep if method in a.method), profile.sweep[0])
    raw = {"method": method, "learning_rate": template.learning_rate[0], "domain": "code", "regime": "ift", **explicit}
    try:
        arm = Arm.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, "explicit run settings")) from None
    single = profile.model_copy(update={"sweep": [arm]})
    return plan_runs(single)[0]


def percent(fraction: float) -> str:
    """A fraction as a percentage with one decimal, the trailing .0 dropped."""
    text = f"{100 * fraction:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + "%"


def method_label(method: str, rank: float | None = None, hidden_size: int | None = None) -> str:
    """'full', 'base' or 'LoRA r=16 (12.5% of d)': the rank as a number and, given the hidden size d, as the
    fraction of d that makes ranks comparable across model sizes."""
    if method != "lora":
        return method
    label = f"LoRA r={int(rank)}"
    return f"{label} ({percent(rank / hidden_size)} of d)" if hidden_size else label
