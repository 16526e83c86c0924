"""The tidy results table: one row per (run, checkpoint, metric), with the run's resolved settings beside it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lorastudy.config import Profile
from lorastudy.io import atomic_path, read_json
from lorastudy.layout import EVALUATE_NOTEBOOK, FINETUNE_NOTEBOOK, Layout, base_run_id
from lorastudy.plan import plan_runs, selection_runs
from lorastudy.train.base import base_id, base_record

RUN_COLUMNS = ["run_id", "domain", "regime", "method", "lora_rank", "lora_alpha", "target_modules", "learning_rate",
               "weight_decay", "attention_dropout", "use_rslora", "optimizer", "seed", "base_id", "arm"]
COLUMNS = [*RUN_COLUMNS, "status", "checkpoint", "duration_unit", "duration", "tokens_seen", "step", "metric", "value"]


def collect(profile: Profile, out_root: Path | None = None) -> pd.DataFrame:
    """Every finished run's rows plus the base model's (method 'base', duration 0) and any evaluated released
    checkpoints' (arm 'released'), as a DataFrame."""
    layout = Layout(out_root or profile.out_dir())
    rows: list[dict[str, Any]] = []
    ids = [base_id(profile, i) for i in range(profile.base.count)]
    for index, name in enumerate(ids):
        if layout.base_eval_of(index).is_file():
            rows += [{**r, "method": "base", "status": "completed", "base_id": name}
                     for r in read_json(layout.base_eval_of(index))["rows"]]
    for spec in plan_runs(profile):
        path = layout.run(spec.run_id).results_record
        if path.is_file():
            res = read_json(path)
            rows += [{**spec.to_dict(), **r, "status": res["status"], "base_id": ids[profile.base.index(spec.seed)]}
                     for r in res["rows"]]
    for path in layout.released_evals():
        rows += read_json(path)["rows"]
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["run_id", "tokens_seen", "metric"], kind="stable").reset_index(drop=True)


RUN_RECORD_COLUMNS = ["run_id", "status", "trainable", "total", "n_examples", "train_s", "diverged_at_step",
                      "finetune_notebook_s", "evaluate_notebook_s", "threads", "commit"]


def run_records(profile: Profile, out_root: Path | None = None) -> pd.DataFrame:
    """One row per trained run: its parameter counts, training time and the sweep's notebook times — what the
    book reads of the run folders (trainable shares, the run table) when only a snapshot is here."""
    layout = Layout(out_root or profile.out_dir())
    rows = []
    folders = sorted(p for p in layout.runs_dir.glob("*") if p.is_dir()) if layout.runs_dir.is_dir() else []
    for paths in (layout.run(p.name) for p in folders):  # every trained folder, planned now or not
        if not paths.train_record.is_file():
            continue
        train = read_json(paths.train_record)
        sweep = read_json(paths.sweep_record) if paths.sweep_record.is_file() else {}
        notebooks = sweep.get("notebook_seconds", {})
        rows.append({"run_id": paths.run_id, "status": train.get("status"),
                     **{k: train.get("parameters", {}).get(k) for k in ("trainable", "total")},
                     "n_examples": train.get("n_examples"), "train_s": train.get("wall_time_s"),
                     "diverged_at_step": train.get("diverged_at_step"),
                     "finetune_notebook_s": notebooks.get(FINETUNE_NOTEBOOK),
                     "evaluate_notebook_s": notebooks.get(EVALUATE_NOTEBOOK), "threads": sweep.get("threads"),
                     "commit": _commit(train.get("provenance", {}).get("git", {}))})
    return pd.DataFrame(rows, columns=RUN_RECORD_COLUMNS)


def _commit(git: dict[str, Any]) -> str:
    """'abc123def456' or 'abc123def456 (dirty)': the commit a run was trained with."""
    return f"{(git.get('commit') or 'unknown')[:12]}{' (dirty)' if git.get('dirty') else ''}"


def known_runs(profile: Profile, out_root: Path | None = None) -> pd.DataFrame:
    """`run_records` from the run folders where they are here, else the table of them the sweep stored (all a
    snapshot has)."""
    runs = run_records(profile, out_root)
    stored = Layout(out_root or profile.out_dir()).run_records
    return pd.read_parquet(stored) if runs.empty and stored.is_file() else runs


ITEM_COLUMNS = ["run_id", "checkpoint", "metric", "item", "value"]


def collect_items(profile: Profile, out_root: Path | None = None) -> pd.DataFrame:
    """Per-item results of the base, every finished run's evaluated checkpoints and released checkpoints:
    one row per (run, checkpoint, metric, item). The mean of a metric's items is its value in `collect`."""
    layout = Layout(out_root or profile.out_dir())
    frames = []

    def add(run_id: str, checkpoint: str, record: dict[str, Any]) -> None:
        if record.get("items"):
            frames.append(pd.DataFrame(record["items"]).assign(run_id=run_id, checkpoint=checkpoint))

    for index in range(profile.base.count):
        if layout.base_eval_of(index).is_file():
            add(base_run_id(index), "base", read_json(layout.base_eval_of(index)))
    for spec in plan_runs(profile):
        paths = layout.run(spec.run_id)
        if paths.results_record.is_file():
            for label in dict.fromkeys(r["checkpoint"] for r in read_json(paths.results_record)["rows"]):
                add(spec.run_id, label, read_json(paths.eval_record(label)))
    for path in layout.released_evals():
        record = read_json(path)
        if record.get("rows"):
            add(record["rows"][0]["run_id"], record["rows"][0]["checkpoint"], record)
    df = _item_table(frames)
    return df.sort_values(["run_id", "checkpoint", "metric", "item"], kind="stable").reset_index(drop=True)


def _item_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-item frames as one table in ITEM_COLUMNS, item ids as strings (empty: the columns alone)."""
    if not frames:
        return pd.DataFrame(columns=ITEM_COLUMNS)
    df = pd.concat(frames, ignore_index=True)[ITEM_COLUMNS]
    df["item"] = df["item"].astype(str)
    return df


def selection_items(profile: Profile, out_root: Path | None = None) -> pd.DataFrame:
    """Per-item validation rows of the learning-rate choice's runs at their longest checkpoint (what
    lorastudy.tuning's tie rule reads while a sweep runs, without reading every run's items)."""
    layout = Layout(out_root or profile.out_dir())
    frames = []
    for spec in selection_runs(profile):
        paths = layout.run(spec.run_id)
        if spec.selection == "seed" or not paths.results_record.is_file():
            continue
        rows = read_json(paths.results_record)["rows"]
        if not rows:
            continue
        label = max(rows, key=lambda r: r["duration"])["checkpoint"]
        record = read_json(paths.eval_record(label))
        vals = [i for i in record.get("items", []) if i["metric"].startswith("val_answer_nll_")]
        if vals:
            frames.append(pd.DataFrame(vals).assign(run_id=spec.run_id, checkpoint=label))
    return _item_table(frames)


def stale_runs(profile: Profile, out_root: Path | None = None) -> dict[str, str]:
    """Finished runs fine-tuned from other weights than the base their seed selects now ({run_id: why}): a
    rebuilt or re-shipped base makes them a different study, which a sweep refuses to mix in."""
    layout = Layout(out_root or profile.out_dir())
    current: dict[int, dict[str, Any]] = {}
    out = {}
    for spec in plan_runs(profile):
        paths = layout.run(spec.run_id)
        if not paths.train_record.is_file():
            continue
        trained = read_json(paths.train_record).get("base")
        index = profile.base.index(spec.seed)
        if index not in current:
            current[index] = base_record(profile, index)
        if trained is None or trained != current[index]:
            out[spec.run_id] = (f"fine-tuned from {trained['id'] if trained else 'an unrecorded base'} "
                                f"({(trained or {}).get('sha256') or '?'}), its seed now selects "
                                f"{current[index]['id']} ({current[index]['sha256']})")
    return out


def write_table(df: pd.DataFrame, path: Path, fmt: str | None = None) -> Path:
    """CSV or parquet, atomically; the format follows the suffix unless given."""
    fmt = fmt or ("parquet" if path.suffix == ".parquet" else "csv")
    if fmt not in {"csv", "parquet"}:
        raise ValueError(f"format must be csv or parquet, not {fmt!r}")
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False) if fmt == "parquet" else df.to_csv(tmp, index=False)
    return path


def wide(df: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per (run, checkpoint) with a column per metric: what plots and tables read."""
    if metrics:
        df = df[df.metric.isin(metrics)]
    index = [c for c in COLUMNS if c not in {"metric", "value"}]
    return df.set_index([*index, "metric"])["value"].unstack("metric").reset_index()
