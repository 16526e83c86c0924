"""The committed snapshot of a study (results/PROFILE/): the tables and chapter summaries a sweep wrote,
copied out of its output folder with where they came from, so that the book renders without training.

`take` copies an output folder's snapshot files into results/PROFILE and records each file's size and sha256 in
its provenance; `seed` copies them back into an output folder that has no results of its own (a fresh clone),
which then reads exactly like the sweep's. `verify` checks a snapshot, or a folder seeded from one, against that
record in well under a second, so a damaged file stops the book before any chapter runs, naming the file.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from lorastudy.analysis.claims import claims_sources
from lorastudy.analysis.robustness import replicate_layouts
from lorastudy.analysis.summaries import summary_names
from lorastudy.config import Profile
from lorastudy.io import DataFileError, atomic_path, file_sha256, read_json, write_json
from lorastudy.layout import PROJECT_ROOT, SNAPSHOT_FILES, Layout, snapshot_layout
from lorastudy.provenance import git_state, versions
from lorastudy.results import run_records, write_table

__all__ = ["take", "seed", "from_snapshot", "describe", "file_records", "verify", "verify_inputs", "is_seeded",
           "stale_copy", "SnapshotDamaged"]


class SnapshotDamaged(DataFileError):
    """A snapshot file that is not the file the snapshot recorded (truncated, edited, missing)."""


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
    for stale in set(_listed(target.root)) - set(_listed(source.root)):  # a summary the sweep no longer writes
        (target.root / stale).unlink()
    results = pd.read_csv(source.results_table)
    sweep = read_json(source.sweep_record) if source.sweep_record.is_file() else {}
    write_json(target.provenance, {
        "profile": profile.name, "taken": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git": git_state(),
        "versions": versions(), "runs": int(results[results.method != "base"].run_id.nunique()),
        "sweep": {k: sweep.get(k) for k in ("seconds", "workers", "threads_per_run", "executor")},
        "summaries": summary_names(source), "trained_by": sorted(set(records.commit.dropna())),
        "files": file_records(target.root)})
    return target.root


def seed(profile: Profile, out_root: Path, source: Path | None = None) -> bool:
    """Fill an output folder that has no results table from the snapshot; False (nothing copied) when it has
    its own results or there is no snapshot."""
    target, snap = Layout(out_root), Layout(source) if source is not None else snapshot_layout(profile.name)
    if target.results_table.is_file() or not snap.results_table.is_file():
        return False
    verify(snap.root)
    _copy(snap, target, SNAPSHOT_FILES)
    record = read_json(target.provenance) if target.provenance.is_file() else {}
    write_json(target.provenance, {**record, "seeded_from": str(snap.root)})
    return True


def file_records(root: Path) -> dict[str, dict[str, Any]]:
    """{path relative to the snapshot: {bytes, sha256}} of every snapshot file under `root` (provenance.json
    aside: it holds this record)."""
    return {rel: {"bytes": (root / rel).stat().st_size, "sha256": file_sha256(root / rel)} for rel in _listed(root)}


def _listed(root: Path) -> list[str]:
    """The snapshot files under `root` (SNAPSHOT_FILES, folders file by file, no hidden files), relative."""
    found = []
    for name in SNAPSHOT_FILES[:-1]:
        path = root / name
        if path.is_dir():
            found += [p.relative_to(root).as_posix() for p in sorted(path.rglob("*"))
                      if p.is_file() and not p.name.startswith(".")]
        elif path.is_file():
            found.append(name)
    return found


def verify(root: Path) -> bool:
    """Check every file a snapshot's provenance records (size, then sha256); raise SnapshotDamaged naming the
    first that differs and how to restore it. False when the provenance records no files (a snapshot taken
    before the record, which cannot be checked), True when all match."""
    root = Path(root)
    if not (root / "provenance.json").is_file():
        return False
    fix = _restore_hint(root)
    try:
        files = read_json(root / "provenance.json").get("files")
    except ValueError as err:
        raise SnapshotDamaged(f"{root / 'provenance.json'} is not readable JSON ({err}): {fix}") from None
    if not files:
        return False
    problems = []
    for rel, want in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != want["bytes"]:
            problems.append(f"{path} has {path.stat().st_size:,} bytes, the snapshot recorded {want['bytes']:,}")
        elif file_sha256(path) != want["sha256"]:
            problems.append(f"{path} differs from the snapshot's record (sha256)")
    if problems:
        more = f" (and {len(problems) - 1} more file{'s' * (len(problems) > 2)})" if len(problems) > 1 else ""
        raise SnapshotDamaged(f"{problems[0]}{more}: {fix}")
    return True


def _restore_hint(root: Path) -> str:
    """How to get the recorded files back: git for a committed snapshot, a fresh seed for a copy of one."""
    try:
        rel = root.resolve().relative_to(PROJECT_ROOT)
    except ValueError:
        rel = None
    if rel is not None and rel.parts[:1] == ("results",):
        return f"restore it with `git checkout {rel.as_posix()}`"
    try:
        record = read_json(root / "provenance.json")
    except (OSError, ValueError):
        record = {}
    if "seeded_from" in record:
        return (f"this folder is a copy of the snapshot {record['seeded_from']}: remove {root} and run again to "
                "copy it afresh")
    return "restore the snapshot's files from where they came"


def verify_inputs(profile_name: str, layout: Layout) -> None:
    """What a chapter or the book reads besides a sweep's own output: the output folder when it was seeded from
    a snapshot and has no runs of its own, the committed snapshot (whether or not this folder reads it), and the
    replicate snapshots the landing page compares with."""
    if is_seeded(layout):
        verify(layout.root)
    verify(snapshot_layout(profile_name).root)  # a damaged committed snapshot stops the book whichever copy it reads
    for replicate in replicate_layouts(profile_name):
        verify(replicate.root)


def is_seeded(layout: Layout) -> bool:
    """An output folder filled from a snapshot that no sweep has run in since."""
    return from_snapshot(layout) is not None and not any(layout.runs_dir.glob("*/results.json"))


def stale_copy(profile_name: str, layout: Layout) -> bool:
    """A seeded output folder whose snapshot has changed since it was copied (a new commit of results/PROFILE):
    the book must copy it afresh and execute every chapter again, not show the old numbers."""
    snap = snapshot_layout(profile_name)
    if not is_seeded(layout) or not snap.provenance.is_file():
        return False
    recorded = (from_snapshot(layout) or {}).get("files")
    return recorded != read_json(snap.provenance).get("files")


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
