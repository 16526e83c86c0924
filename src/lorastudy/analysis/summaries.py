"""Chapter summaries: the small tables a chapter computes from weights or samples (ranks of ΔW, intruder
counts, KL, sampled completions, memory measurements), stored in the output folder with the settings and
the checkpoints they were computed from.

They are what lets the book render without checkpoints: a committed snapshot holds them, and a chapter that
finds its summary with the same settings reads it instead of opening weights. Where the checkpoints are
here, a summary computed from other checkpoints (a run was retrained or added) is computed again; where they
are not (a snapshot), a summary with other settings cannot be computed, and the error says what to run.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from lorastudy.io import read_json, write_json
from lorastudy.layout import CHECKPOINT_RECORD, Layout
from lorastudy.results import write_table

__all__ = ["SummaryUnavailable", "checkpoint_sources", "summary", "read_summary", "summary_names"]


class SummaryUnavailable(FileNotFoundError):
    """A chapter needs a summary that is not stored with these settings, and no checkpoint is here to compute it."""


def checkpoint_sources(out_root: Path) -> dict[str, str] | None:
    """Every saved checkpoint of the output folder as RUN/LABEL → its record's stamp (changes when retrained);
    None when the folder has no checkpoint (a snapshot), so that a stored summary is taken as it is."""
    found = {}
    for record in sorted(Layout(out_root).runs_dir.glob(f"*/checkpoints/*/{CHECKPOINT_RECORD}")):
        stat = record.stat()
        found[f"{record.parents[2].name}/{record.parent.name}"] = f"{stat.st_size}-{stat.st_mtime_ns}"
    return found or None


def summary(layout: Layout, name: str, settings: dict[str, Any], compute: Callable[[], pd.DataFrame], *,
            sources: dict[str, str] | None, needs: str = "the sweep's checkpoints") -> pd.DataFrame:
    """The stored summary `name` when it was computed with these settings (and, where checkpoints are here,
    from these `sources`); else `compute()`, stored atomically with its settings and sources."""
    table, record = layout.summary_table(name), layout.summary_record(name)
    stored = read_json(record) if record.is_file() and table.is_file() else None
    if stored is not None and stored.get("settings") == _plain(settings) and (
            sources is None or stored.get("sources") == sources):
        return pd.read_parquet(table)
    if sources is None:
        held = f"it holds {stored.get('settings')}" if stored else "it has none"
        raise SummaryUnavailable(
            f"summary {name!r} with settings {_plain(settings)} is not in {layout.summaries_dir} ({held}), and "
            f"computing it needs {needs}, which are not in {layout.root}: run `lorastudy sweep` for this profile "
            "first, or use the settings the snapshot was computed with")
    frame = compute()
    write_table(frame, table)
    write_json(record, {"settings": _plain(settings), "sources": sources, "rows": len(frame)})
    return frame


def read_summary(layout: Layout, name: str) -> pd.DataFrame:
    """A stored summary whatever its settings (for readers that only display it)."""
    path = layout.summary_table(name)
    if not path.is_file():
        raise SummaryUnavailable(f"no summary {name!r} in {layout.summaries_dir}")
    return pd.read_parquet(path)


def summary_names(layout: Layout) -> list[str]:
    return sorted(p.stem for p in layout.summaries_dir.glob("*.parquet"))


def _plain(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as they read back from JSON (tuples become lists), so stored and asked-for compare equal."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))
