"""Benchmark records: one JSON file per measurement, with what produced it."""
from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from lorastudy.perf.records import keep, write_record

NOW = datetime(2026, 12, 8, 3, 4, 5, tzinfo=timezone.utc)


def test_a_record_holds_the_numbers_and_what_produced_them(tmp_path: Path) -> None:
    path = write_record("bench-step", {"batch": 16}, [{"tokens_per_s": 7712.0}], folder=tmp_path,
                        matmul_peak_gflops=101.1, now=NOW)
    assert path.parent == tmp_path and path.name.startswith("bench-step-20261208T030405-")
    record = json.loads(path.read_text())
    assert record["params"] == {"batch": 16} and record["results"] == [{"tokens_per_s": 7712.0}]
    meta = record["meta_info"]
    assert meta["kind"] == "bench-step" and meta["date"] == "2026-12-08T03:04:05+00:00"
    assert meta["matmul_peak_gflops"] == 101.1 and meta["cpu"] and meta["cores"] >= 1
    assert meta["versions"]["torch"] and "commit" in meta["git"]
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: nothing half-written beside it


def test_a_kind_that_would_make_an_odd_file_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lower-case"):
        write_record("../bench", {}, {}, folder=tmp_path)


def test_keep_follows_the_commands_record_options(tmp_path: Path) -> None:
    args = Namespace(func=print, profile="mini", no_record=True, record_dir=str(tmp_path))
    assert keep(args, "bench", {"x": 1}) is None and not list(tmp_path.iterdir())
    path = keep(Namespace(**{**vars(args), "no_record": False}), "bench", {"x": 1})
    assert path is not None and path.parent == tmp_path
    assert json.loads(path.read_text())["params"] == {"profile": "mini"}  # the arguments, not the options


def test_bench_sweep_writes_a_record(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "lorastudy.cli", "bench-sweep", "tiny", "--no-peak", "--output",
                          str(tmp_path / "out"), "--record-dir", str(tmp_path / "records")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    [path] = (tmp_path / "records").glob("bench-sweep-*.json")
    results = json.loads(path.read_text())["results"]
    assert results["runs"] == 0 and results["trained_at_commits"] == []
