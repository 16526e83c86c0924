"""The diversity aggregation on hand-made sample records: distinct completions per passing/failing group
(whitespace-normalised), the pass@k curve (unbiased estimator), the per-model summary and the verdict."""
from __future__ import annotations

import pytest

from lorastudy.analysis.diversity import Subject, diversity_summary, diversity_verdict, pass_at_k_curve, unique_counts


def rec(task: str, completion: str, passed: bool) -> dict:
    return {"task_id": task, "completion": completion, "passed": passed}


RECORDS = [
    # task A: 2 passing that differ only in whitespace, 1 other passing, 1 failing
    rec("A", "    return x + 1\n", True), rec("A", "    return  x + 1", True), rec("A", "    return 1 + x\n", True),
    rec("A", "    return x\n", False),
    # task B: nothing passes, two distinct failures
    rec("B", "    pass\n", False), rec("B", "    pass", False), rec("B", "    return 0\n", False),
    rec("B", "    return 0\n", False),
]


def test_unique_counts_per_group() -> None:
    counts = unique_counts(RECORDS).set_index("task_id")
    assert counts.loc["A"].to_dict() == {"n": 4, "n_passing": 3, "n_failing": 1, "unique_all": 3,
                                         "unique_passing": 2, "unique_failing": 1}
    assert counts.loc["B"].to_dict() == {"n": 4, "n_passing": 0, "n_failing": 4, "unique_all": 2,
                                         "unique_passing": 0, "unique_failing": 2}
    assert unique_counts([]).empty


def test_pass_at_k_curve_is_the_unbiased_estimate() -> None:
    curve = pass_at_k_curve(RECORDS).set_index("k")["pass@k"]
    # task A: n=4, c=3 -> pass@1 = 3/4, pass@k = 1 for k >= 2; task B: always 0
    assert list(curve.index) == [1, 2, 3, 4]
    assert curve[1] == pytest.approx(0.375)
    assert curve[2] == pytest.approx(0.5) and curve[4] == pytest.approx(0.5)
    one = [rec("C", str(i), i == 0) for i in range(4)]  # c = 1 of n = 4: pass@k = k/4
    assert list(pass_at_k_curve(one)["pass@k"]) == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert list(pass_at_k_curve(one, ks=[2, 9])["k"]) == [2]  # k above n is dropped


def test_summary_and_verdict() -> None:
    base = [rec(t, f"{t} garbage {i}", False) for t in "AB" for i in range(4)]   # 4 distinct per task
    lora = [rec(t, f"{t} body {i % 2}", i < 2) for t in "AB" for i in range(4)]  # 2 distinct, half pass
    full = [rec(t, f"{t} body", True) for t in "AB" for i in range(4)]           # 1 distinct, all pass
    subjects = {"base": Subject("base", "base", "base"), "full": Subject("f", "full", "full"),
                "LoRA r=8": Subject("l", "LoRA r=8", "lora", 8)}
    per = {"base": (subjects["base"], base), "full": (subjects["full"], full), "LoRA r=8": (subjects["LoRA r=8"], lora)}
    summary = diversity_summary(per).set_index("model")
    assert summary.loc["base", "unique_all"] == 4 and summary.loc["LoRA r=8", "unique_all"] == 2
    assert summary.loc["full", "unique_passing"] == 1 and summary.loc["full", "pass@1"] == 1.0
    assert summary.loc["LoRA r=8", "unique_share"] == pytest.approx(0.5)
    verdict = diversity_verdict(per).set_index("statement")
    v = verdict.verdict
    assert v["the base gives more distinct failing completions than LoRA"] == "agrees"  # 4 vs 2 on every task
    assert v["LoRA gives more distinct passing completions than full FT"] == "agrees"   # 2 vs 1
    # judged apart: the base has no passing sample, so it is less diverse among the passing ones
    assert v["the base gives more distinct passing completions than LoRA"] == "disagrees"
    assert v["LoRA gives more distinct failing completions than full FT"] == "agrees"  # 2 vs 0
    # full leads by 0.5 at k = 1 and by 1 - 1 = 0 at k = 4: the gap closes
    assert v["full FT's pass@k lead over LoRA shrinks as k grows"] == "agrees"
    assert verdict.loc["full FT's pass@k lead over LoRA shrinks as k grows", "estimate"] == pytest.approx(0.5)
    # a tie on every task is no direction
    same = {"full": per["full"], "LoRA r=8": (subjects["LoRA r=8"], full)}
    tie = diversity_verdict(same).set_index("statement")
    assert tie.loc["LoRA gives more distinct passing completions than full FT", "verdict"] == "cannot tell"


def test_verdict_without_runs_says_it_cannot_tell() -> None:
    verdict = diversity_verdict({"base": (Subject("base", "base", "base"), [rec("A", "x", False)])})
    assert (verdict.verdict == "cannot tell").all() and verdict.estimate.isna().all()
