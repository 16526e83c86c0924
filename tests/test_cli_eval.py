"""The `lorastudy eval gsm8k|humaneval` commands on the real files, as a user would run them."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "lorastudy.cli", "eval"]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_humaneval_cli(shared_data: Path, tmp_path: Path) -> None:
    problems = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    tasks = [json.loads(line) for line in gzip.open(problems, "rt")][:6]
    samples = [{"task_id": t["task_id"], "completion": t["canonical_solution"]} for t in tasks]
    samples += [{"task_id": t["task_id"], "completion": "    return None\n"} for t in tasks]
    out = tmp_path / "out.json"
    proc = subprocess.run([*CLI, "humaneval", "--samples", str(_jsonl(tmp_path / "s.jsonl", samples)),
                           "--problems", str(problems), "--k", "1,2", "--workers", "2", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["n_per_task"] == 2 and res["pass@1"] == 0.5 and res["pass@2"] == 1.0
    assert [s["passed"] for s in res["samples"]] == [True] * 6 + [False] * 6
    assert all(s["result"] == "passed" for s in res["samples"][:6])
    assert all(s["result"].startswith("failed") for s in res["samples"][6:])


def test_eval_gsm8k_cli(shared_data: Path, tmp_path: Path) -> None:
    refs = shared_data / "gsm8k" / "test.jsonl"
    rows = [json.loads(line) for line in refs.open()][:10]
    preds = [{"idx": i, "question": r["question"], "completion": r["answer"]} for i, r in enumerate(rows)]
    preds[0]["completion"] = "I think it is 3."  # wrong under both extractions unless the gold is 3
    out = tmp_path / "out.json"
    proc = subprocess.run([*CLI, "gsm8k", "--predictions", str(_jsonl(tmp_path / "p.jsonl", preds)),
                           "--references", str(refs), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["n"] == 10 and res["strict_match"] == 0.9
    assert len(res["records"]) == 10 and res["records"][0]["strict"] is None
