"""The GPU smoke script's code paths, run here on a CPU with small shapes (`--device cpu --tiny`), so that a
session that is lent a GPU runs it and does not find a crash: every evaluation and every training row comes back
with numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_smoke_script_runs_every_row_on_small_shapes(tmp_path: Path) -> None:
    env = {**os.environ, "LORASTUDY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "scripts/gpu_smoke.py", "--device", "cpu", "--tiny", "--steps", "4",
                           "--batch", "2", "--out", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["what"]: r for r in json.loads((tmp_path / "out" / "smoke.json").read_text())["rows"]}
    for what in ("eval code (generate + sandbox)", "eval math (generate + GSM8K score)", "eval multiple choice"):
        assert 0.0 <= rows[what]["score"] <= 1.0
    trained = [r for w, r in rows.items() if w.startswith("train ")]
    assert [r["what"] for r in trained] == ["train llama full", "train llama lora r=16", "train qwen2-tiny full",
                                            "train qwen2-tiny lora r=16"]
    for r in trained:
        assert r["tokens_per_s"] > 0 and r["peak_memory_GiB"] > 0 and r["model_GiB"] > 0 and r["params"] > 0
