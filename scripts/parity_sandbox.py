"""Verdicts of this tree's HumanEval evaluator on honest samples, as JSON lines, to compare two trees:
for every task of HumanEval, MBPP (test split) and the mini world's code test set, the reference solution,
`return None`, the reference with its first `+`/`<` flipped, and the reference cut in half.

    python scripts/parity_sandbox.py SHARED_DATA OUT.jsonl         # with PYTHONPATH=OTHER/src for another tree
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lorastudy.config import load_profile
from lorastudy.data.adapters import load_humaneval, load_mbpp
from lorastudy.data.sources import load_spec
from lorastudy.evaluation.code import evaluate_samples


def variants(solution: str) -> list[str]:
    flipped = solution.replace("+", "-", 1) if "+" in solution else solution.replace("<", ">", 1)
    return [solution, "    return None\n", flipped, solution[: len(solution) // 2]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shared_data", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    mini = load_profile("mini")
    sets = {"humaneval": load_humaneval(str(args.shared_data / "humaneval" / "HumanEval.jsonl.gz")),
            "mbpp": load_mbpp(str(args.shared_data / "mbpp" / "mbpp.jsonl")),
            "mini": load_spec(mini, mini.eval.learning["code"].dataset)}
    with open(args.out, "w") as fh:
        for name, tasks in sets.items():
            samples = [{"task_id": t.task_id, "completion": c} for t in tasks for c in variants(t.canonical_solution)]
            result = evaluate_samples(samples, {t.task_id: t for t in tasks}, progress=False)
            for sample, scored in zip(samples, result["samples"]):
                fh.write(json.dumps({"set": name, "task_id": sample["task_id"], "completion": sample["completion"],
                                     "passed": scored["passed"], "judged": scored.get("judged")}) + "\n")
            print(name, len(samples), "samples,", sum(s["passed"] for s in result["samples"]), "passed,",
                  "fallback rate", result.get("fallback_rate"))


if __name__ == "__main__":
    main()
