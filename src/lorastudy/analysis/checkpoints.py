"""Runs and checkpoints for the analyses that open weights (chapters 12, 13, 16): which runs exist (a chapter
renders with what exists), their models on the analysis device, and a per-checkpoint JSON cache.

A run trained on another base than the profile's is skipped with a warning, because a weight delta or a KL
against the wrong base means nothing. Each (run, checkpoint) result is cached under the chapter's folder,
keyed by the settings and a fingerprint of the checkpoint, so a re-run only computes what is new.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from lorastudy.analysis.claims import not_run
from lorastudy.config import Profile
from lorastudy.data.world.settings import WorldConfig
from lorastudy.io import config_hash, read_json, write_json
from lorastudy.layout import Layout
from lorastudy.plan import RunSpec, plan_runs
from lorastudy.train.modeling import device, load_base, load_finetuned, quiet_loading, small_model_threads

__all__ = ["RUN_FIELDS", "CKPT_FIELDS", "base_identity", "same_base", "finished_runs", "missing_runs_note",
           "run_checkpoints", "pick_checkpoints", "load_base_on_device", "load_base_fp32", "load_checkpoint",
           "fingerprint", "cached", "per_checkpoint", "weight_measure"]

RUN_FIELDS = ["run_id", "arm", "domain", "regime", "method", "lora_rank", "lora_alpha", "target_modules",
              "learning_rate", "weight_decay", "attention_dropout", "use_rslora", "optimizer", "seed"]
CKPT_FIELDS = ["checkpoint", "duration", "duration_unit", "tokens_seen", "step"]
BASE_IDENTITY = ("kind", "model", "revision", "world", "architecture", "pretrain")  # what decides the base weights

Rows = list[dict[str, Any]]


# ----------------------------------------------------------------------------- which runs
def _world(value: Any) -> Any:
    """A world setting in its full form: provenance written before the world was typed holds the raw
    `{"preset": "tiny"}`, the typed profile every size; both validate to the same WorldConfig."""
    if not isinstance(value, dict):
        return value
    try:
        return WorldConfig.model_validate(value).model_dump(mode="json")
    except ValidationError:
        return value


def base_identity(base: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a profile's `base` (as JSON) that decide the base weights, the world in its full form."""
    return {k: _world(base.get(k)) if k == "world" else base.get(k) for k in BASE_IDENTITY}


def same_base(profile: Profile, train_summary: dict[str, Any]) -> bool:
    """Whether a run was trained on this profile's base (model, revision, or the mini base's world,
    architecture and pre-training); runs without provenance are trusted."""
    trained = (train_summary.get("provenance") or {}).get("profile", {}).get("base")
    if trained is None:
        return True
    return base_identity(trained) == base_identity(profile.base.model_dump(mode="json"))


def finished_runs(profile: Profile, out_root: Path, **where: Any) -> list[RunSpec]:
    """Planned runs with results, filtered by RunSpec fields (a value or a list of values), so a chapter
    draws what exists; runs trained on another base are left out with a warning."""
    layout = Layout(out_root)
    out = []
    for spec in plan_runs(profile):
        paths = layout.run(spec.run_id)
        if not (paths.evaluated() and paths.trained()):
            continue
        if any(getattr(spec, k) not in (v if isinstance(v, (list, tuple, set)) else [v]) for k, v in where.items()):
            continue
        if not same_base(profile, read_json(paths.train_record)):
            warnings.warn(f"{spec.run_id} was trained on another base than profile {profile.name!r} now "
                          "describes (its provenance differs): left out", stacklevel=2)
            continue
        out.append(spec)
    return out


def missing_runs_note(have: Iterable[Any], wanted: Mapping[str, str]) -> str:
    """The not-run notes (markdown, one paragraph each) for every method of `wanted` ({method: what}) that no
    item of `have` (runs or anything else with a `method`) has; empty when none is missing."""
    methods = {h.method for h in have}
    return "\n\n".join(not_run(what) for method, what in wanted.items() if method not in methods)


def run_checkpoints(out_root: Path, run_id: str) -> Rows:
    """The run's saved checkpoints (train record entries whose folder exists), shortest duration first."""
    paths = Layout(out_root).run(run_id)
    ckpts = [c for c in read_json(paths.train_record)["checkpoints"] if paths.checkpoint(c["checkpoint"]).is_dir()]
    return sorted(ckpts, key=lambda c: (c.get("step") or 0, c.get("tokens_seen") or 0))


def pick_checkpoints(ckpts: Rows, which: str) -> Rows:
    """Every checkpoint ('all') or the last one ('last')."""
    if which not in {"all", "last"}:
        raise ValueError(f"checkpoints must be 'all' or 'last', not {which!r}")
    return ckpts[-1:] if which == "last" else ckpts


# ----------------------------------------------------------------------------- models
def load_base_on_device(profile: Profile, dtype: str | None = None, index: int = 0) -> tuple[torch.nn.Module, Any]:
    """Base model `index` on the analysis device in eval mode, and its tokenizer; dtype None = the profile's."""
    with quiet_loading():
        model, tok = load_base(profile, dtype, index)
    return model.to(device()).eval(), tok


def load_base_fp32(profile: Profile, index: int = 0) -> torch.nn.Module:
    """Base model `index` in fp32 on the analysis device (weight deltas of bf16 weights are rounding noise)."""
    return load_base_on_device(profile, "float32", index)[0]


def load_checkpoint(profile: Profile, out_root: Path, spec: RunSpec, label: str, *, dtype: str | None = "float32",
                    merge: bool = False) -> torch.nn.Module:
    """A run's checkpoint on the analysis device, in eval mode: full FT weights, or the base plus the LoRA
    adapter (unmerged unless asked); dtype None = the profile's."""
    with quiet_loading():
        model = load_finetuned(profile, spec.method, Layout(out_root).run(spec.run_id).checkpoint(label),
                               dtype=dtype, merge=merge, base_index=profile.base.index(spec.seed))
    return model.to(device()).eval()


def _finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ----------------------------------------------------------------------------- the per-checkpoint cache
def fingerprint(out_root: Path, run_id: str, label: str) -> str:
    """Changes when the checkpoint is retrained: its checkpoint record (wall time, loss), else its file sizes."""
    paths = Layout(out_root).run(run_id)
    meta = paths.checkpoint_record(label)
    if meta.is_file():
        return config_hash(meta.read_text())
    return config_hash(sorted((p.name, p.stat().st_size) for p in paths.checkpoint(label).iterdir()))


def cached(path: Path | None, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """Rows from `path` when it was written with the same key, else computed and written atomically."""
    if path is not None and path.is_file():
        saved = read_json(path)
        if saved.get("key") == key:
            return saved["rows"]
    rows = compute()
    if path is not None:
        write_json(path, {"key": key, "rows": rows})
    return rows


def _run_fields(spec: RunSpec) -> dict[str, Any]:
    d = spec.to_dict()
    return {k: d.get(k) for k in RUN_FIELDS}


def _ckpt_fields(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta.get(k) for k in CKPT_FIELDS}


def per_checkpoint(profile: Profile, out_root: Path, specs: Iterable[RunSpec] | None, *, checkpoints: str,
                   cache_dir: Path | None, kind: str, settings: Callable[[RunSpec], dict[str, Any]],
                   measure: Callable[[RunSpec, str], Rows], suffix: str | None = None) -> Rows:
    """`measure(spec, label)` rows for each chosen checkpoint of each run (default: every finished run), with
    the run's and the checkpoint's fields in front; each (run, checkpoint) cached as
    cache_dir/KIND/RUN_ID/LABEL-SUFFIX.json (SUFFIX None = a hash of the key), keyed by `settings(spec)` and
    the checkpoint's fingerprint."""
    specs = list(finished_runs(profile, out_root) if specs is None else specs)
    rows: Rows = []
    for spec in specs:
        for meta in pick_checkpoints(run_checkpoints(out_root, spec.run_id), checkpoints):
            label = meta["checkpoint"]
            key = {**settings(spec), "fingerprint": fingerprint(out_root, spec.run_id, label)}
            name = f"{label}-{suffix if suffix is not None else config_hash(key, 6)}.json"
            path = cache_dir / kind / spec.run_id / name if cache_dir else None
            with small_model_threads(profile):
                found = cached(path, key, lambda spec=spec, label=label: measure(spec, label))
            rows += [{**_run_fields(spec), **_ckpt_fields(meta), **r} for r in found]
    return rows


def weight_measure(profile: Profile, out_root: Path, base: torch.nn.Module | None,
                   fn: Callable[[torch.nn.Module, torch.nn.Module], Rows]) -> Callable[[RunSpec, str], Rows]:
    """A `per_checkpoint` measure of `fn(base, tuned)` on fp32 weights, against the base the run was fine-tuned
    from (`base`: the first one, if given), each loaded once, on first need; diverged checkpoints (non-finite
    weights) are left out with a warning."""
    loaded = {0: base} if base is not None else {}

    def measure(spec: RunSpec, label: str) -> Rows:
        index = profile.base.index(spec.seed)
        if index not in loaded:
            loaded[index] = load_base_fp32(profile, index)
        tuned = load_checkpoint(profile, out_root, spec, label)
        if not _finite(tuned):
            warnings.warn(f"{spec.run_id}/{label} has non-finite weights (diverged): left out", stacklevel=2)
            return []
        return fn(loaded[index], tuned)

    return measure
