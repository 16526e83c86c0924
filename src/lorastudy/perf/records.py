"""Benchmark records: each measurement kept as a JSON file beside what produced it (commit, versions, CPU, its
matmul peak, date), so the log and docstrings cite a file instead of pasting numbers. The layout follows peft's
`method_comparison` results: `meta_info` (who and where), `params` (what was asked), `results` (what was measured).
"""
from __future__ import annotations

import os
import platform
import re
from argparse import Namespace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lorastudy.config import PROJECT_ROOT
from lorastudy.io import write_json
from lorastudy.provenance import git_state, versions

RECORDS_DIR = PROJECT_ROOT / "benchmarks"  # committed: the measurements LOG.md cites


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meta_info(matmul_peak_gflops: float | None = None, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(timezone.utc)
    return {"date": now.isoformat(timespec="seconds"), "git": git_state(), "versions": versions(),
            "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "matmul_peak_gflops": matmul_peak_gflops}


def record_path(kind: str, meta: dict[str, Any], folder: Path) -> Path:
    """`KIND-YYYYMMDDTHHMMSS-COMMIT.json`: sorted by name is sorted by date within a kind."""
    stamp = re.sub(r"[-:]", "", meta["date"])[:15]
    commit = (meta["git"].get("commit") or "nogit")[:10] + ("-dirty" if meta["git"].get("dirty") else "")
    return folder / f"{kind}-{stamp}-{commit}.json"


def write_record(kind: str, params: dict[str, Any], results: Any, *, folder: Path | None = None,
                 matmul_peak_gflops: float | None = None, now: datetime | None = None) -> Path:
    """Write one measurement atomically; returns its path."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", kind):
        raise ValueError(f"a record's kind is lower-case words joined by '-', not {kind!r}")
    meta = {"kind": kind, **meta_info(matmul_peak_gflops, now)}
    path = record_path(kind, meta, folder or RECORDS_DIR)
    write_json(path, {"meta_info": meta, "params": params, "results": results})
    return path


def keep(args: Namespace, kind: str, results: Any, peak_gflops: float | None = None) -> Path | None:
    """A `lorastudy bench*` command's numbers as a record (under benchmarks/, or --record-dir; none with
    --no-record), its parameters the command's arguments."""
    if args.no_record:
        return None
    params = {k: v for k, v in vars(args).items() if k not in ("func", "no_record", "record_dir")}
    path = write_record(kind, params, results, folder=Path(args.record_dir) if args.record_dir else None,
                        matmul_peak_gflops=peak_gflops)
    print(f"record: {path}")
    return path
