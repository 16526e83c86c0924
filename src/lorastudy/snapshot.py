"""The committed snapshot of a study (results/PROFILE/): the tables and chapter summaries a sweep wrote,
copied out of its output folder with where they came from, so that the book renders without training.

`take` copies an output folder's snapshot files into results/PROFILE; `seed` copies them back into an output
folder that has no results of its own (a fresh clone), which then reads exactly like the sweep's.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from lorastudy.analysis.claims import claims_sources
from lorastudy.config import Profile
from lorastudy.io import atomic_path, read_json, write_json
from lorastudy.layout import SNAPSHOT_FILES, Layout, snapshot_layout
from lorastudy.provenance import git_state, versions
from lorastudy.results import run_records, write_table
from lorastudy.summaries import summary_names

__all__ = ["take", "seed", "from_snapshot", "describe"]


def take(profile: Profile, out_root: Path, dest: Path | None = None) -> Path:
    """Copy OUT's results, per-item results, claims and summaries into results/PROFILE (or `dest`), with a
    provenance record: the commit, the sweep's phases and when. Returns the snapshot folder."""
    source = Layout(out_root)
    target = Layout(dest) if dest is not None else snapshot_layout(profile.name)
    for required in (source.results_table, source.items_table, source.claims_table):
        if not required.is_file():
            raise FileNotFoundError(f"{required} is missing: run `lorastudy sweep {profile.name}` to the end first")
    records = run_records(profile, out_root)  # the run folders' facts, fresh where the runs are here
    if len(records):
        write_table(records, source.run_records)
    if not source.claims_record.is_file() and all(  # a sweep of before the record: its file times still hold
            p.stat().st_mtime <= source.claims_table.stat().st_mtime for p in (source.results_table, source.items_table)):
        write_json(source.claims_record, {"sources": claims_sources(source)})
    _copy(source, target, SNAPSHOT_FILES[:-1])
    results = pd.read_csv(source.results_table)
    sweep = read_json(source.sweep_record) if source.sweep_record.is_file() else {}
    write_json(target.provenance, {
        "profile": profile.name, "taken": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git": git_state(),
        "versions": versions(), "runs": int(results[results.method != "base"].run_id.nunique()),
        "sweep": {k: sweep.get(k) for k in ("seconds", "workers", "threads_per_run", "executor")},
        "summaries": summary_names(source), "trained_by": sorted(set(records.commit.dropna()))})
    return target.root


def seed(profile: Profile, out_root: Path, source: Path | None = None) -> bool:
    """Fill an output folder that has no results table from the snapshot; False (nothing copied) when it has
    its own results or there is no snapshot."""
    target, snap = Layout(out_root), Layout(source) if source is not None else snapshot_layout(profile.name)
    if target.results_table.is_file() or not snap.results_table.is_file():
        return False
    _copy(snap, target, SNAPSHOT_FILES)
    record = read_json(target.provenance) if target.provenance.is_file() else {}
    write_json(target.provenance, {**record, "seeded_from": str(snap.root)})
    return True


def from_snapshot(layout: Layout) -> dict[str, Any] | None:
    """The provenance of an output folder seeded from a snapshot (no runs of its own), else None."""
    if not layout.provenance.is_file():
        return None
    record = read_json(layout.provenance)
    return record if "seeded_from" in record else None


def describe(record: dict[str, Any]) -> str:
    """'the snapshot of 2026-12-02 (commit abc1234, 73 runs)' for the book's pages."""
    commit = (record.get("git") or {}).get("commit") or "unknown"
    return (f"the committed snapshot `results/{record.get('profile')}` taken {record.get('taken', '?')} "
            f"(commit {commit[:7]}, {record.get('runs', '?')} runs)")


def _copy(source: Layout, target: Layout, names: tuple[str, ...]) -> None:
    """Files atomically, folders whole (replacing what was there): a reader never sees half a table."""
    target.root.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, dst = source.root / name, target.root / name
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        elif src.is_file():
            with atomic_path(dst) as tmp:
                shutil.copy2(src, tmp)
