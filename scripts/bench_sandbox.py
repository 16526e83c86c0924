"""Programs per second of the HumanEval evaluator: every canonical solution (and one wrong completion per task)
scored through lorastudy.evaluation.code.evaluate_samples with the default workers. Prints one line; run it
under farm-bench to compare two trees (PYTHONPATH=OTHER/src python scripts/bench_sandbox.py PROBLEMS)."""
from __future__ import annotations

import argparse
import time

from lorastudy.evaluation.code import evaluate_samples, load_problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("problems", help="HumanEval.jsonl(.gz)")
    parser.add_argument("--wrong", action="store_true", help="also one wrong completion per task")
    args = parser.parse_args()
    problems = load_problems(args.problems)
    samples = [{"task_id": t, "completion": p.canonical_solution} for t, p in problems.items()]
    if args.wrong:
        samples += [{"task_id": t, "completion": "    return None\n"} for t in problems]
    start = time.perf_counter()
    result = evaluate_samples(samples, problems, progress=False)
    seconds = time.perf_counter() - start
    passed = sum(s["passed"] for s in result["samples"])
    print(f"{len(samples)} programs in {seconds:.2f} s = {len(samples) / seconds:.1f} programs/s; {passed} passed")


if __name__ == "__main__":
    main()
