"""GSM8K answer extraction (lm-eval's strict and flexible regexes) and scoring."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorastudy.data.records import MathProblem
from lorastudy.evaluation.math import (
    flexible_extract_answer,
    numbers_equal,
    read_gsm8k,
    score_gsm8k,
    score_gsm8k_files,
    strict_match_answer,
)
from lorastudy.io import read_json


def _problem(gold: str, question: str = "How many?") -> MathProblem:
    return MathProblem(question=question, answer=f"Some reasoning.\n#### {gold}")


def _score_one(completion: str, gold: str) -> dict:
    ref = _problem(gold)
    return score_gsm8k([{"idx": 0, "question": ref.question, "completion": completion}], [ref])


@pytest.mark.parametrize("split", ["test", "train"])
def test_gold_answers_score_perfectly(shared_data: Path, split: str) -> None:
    path = shared_data / "gsm8k" / f"{split}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    refs = read_gsm8k(path)
    assert len(refs) == {"test": 1319, "train": 7473}[split]
    preds = [{"idx": i, "question": r.question, "completion": r.answer} for i, r in enumerate(refs)]
    result = score_gsm8k(preds, refs)
    assert result["n"] == len(refs)
    assert result["strict_match"] == 1.0 and result["flexible_extract"] == 1.0


@pytest.mark.parametrize(("completion", "gold", "strict", "flexible"), [
    ("So the total is 1234.\n#### 1,234", "1234", True, True),
    ("She pays $5.\n#### $5", "5", True, True),
    ("The answer is 5.", "5", False, True),
    ("#### 5.0", "5", True, True),
    ("#### -3", "-3", True, True),
    ("#### 7\nActually it is 8", "7", True, False),
    ("no number here", "3", False, False),
])
def test_answer_variants(completion: str, gold: str, strict: bool, flexible: bool) -> None:
    record = _score_one(completion, gold)["records"][0]
    assert (record["strict_correct"], record["flexible_correct"]) == (strict, flexible), record


def test_extractors() -> None:
    assert strict_match_answer("#### 1,234") == "1234"
    assert strict_match_answer("#### $5") == "5"
    assert strict_match_answer("The answer is 5.") is None
    assert strict_match_answer("#### 3\n#### 4") == "3"  # lm-eval takes the first match
    assert strict_match_answer("#### ...") is None
    assert flexible_extract_answer("The answer is 5.") == "5"
    assert flexible_extract_answer("It costs $1,250.50 in 2023, so 42") == "42"
    assert flexible_extract_answer("It costs $1,250.50") == "1250.50"
    assert flexible_extract_answer("nothing") is None


def test_numbers_equal() -> None:
    assert numbers_equal("5.0", "5") and numbers_equal("1,234", "1234") and numbers_equal("$5", "5")
    assert not numbers_equal("-3", "3") and not numbers_equal("5", "6")
    assert not numbers_equal(None, "5") and not numbers_equal("5", None)
    assert numbers_equal("0.5", ".5") and not numbers_equal("1.2.3", "1.2")
    assert not numbers_equal("...", "5") and not numbers_equal("5", "$") and not numbers_equal("$", ",")  # no digit
    assert numbers_equal("0", "0.0000000001") and not numbers_equal("0", "0.001")  # absolute tolerance near 0
    assert numbers_equal("100000000000000", "100000000000000.01")  # relative tolerance for large answers
    assert not numbers_equal("100000000000000", "100000100000000")


def test_records_and_rates() -> None:
    refs = [_problem("10", "q0"), _problem("20", "q1"), _problem("30", "q2")]
    preds = [
        {"idx": 2, "question": "q2", "completion": "#### 30"},
        {"idx": 0, "question": "q0", "completion": "it is 10"},
    ]
    result = score_gsm8k(preds, refs)
    assert result["n"] == 2 and result["strict_match"] == 0.5 and result["flexible_extract"] == 1.0
    assert result["records"][0] == {"idx": 2, "gold": "30", "strict": "30", "flexible": "30",
                                    "strict_correct": True, "flexible_correct": True}
    assert result["records"][1]["strict"] is None and result["records"][1]["flexible"] == "10"


@pytest.mark.parametrize(("pred", "message"), [
    ({"idx": 5, "question": "q0", "completion": ""}, "not an int in 0..1"),
    ({"idx": 2, "question": "q0", "completion": ""}, "idx 2 is not an int in 0..1"),
    ({"idx": True, "question": "q0", "completion": ""}, "not an int"),
    ({"idx": -1, "question": "q0", "completion": ""}, "not an int"),
    ({"idx": "0", "question": "q0", "completion": ""}, "not an int"),
    ({"idx": 0, "question": "another question", "completion": ""}, "does not match reference line 0"),
    ({"idx": 0, "question": "q0"}, "completion"),
])
def test_invalid_predictions_are_rejected(pred: dict, message: str) -> None:
    refs = [_problem("1", "q0"), _problem("2", "q1")]
    with pytest.raises(ValueError, match=message):
        score_gsm8k([pred], refs)


def test_duplicate_and_empty_predictions_are_rejected() -> None:
    refs = [_problem("1", "q0")]
    with pytest.raises(ValueError, match="more than once"):
        score_gsm8k([{"idx": 0, "question": "q0", "completion": "1"}] * 2, refs)
    with pytest.raises(ValueError, match="no predictions"):
        score_gsm8k([], refs)
    with pytest.raises(ValueError, match="prediction 1: question does not match reference line 1"):
        score_gsm8k([{"idx": 0, "question": "q0", "completion": "1"}, {"idx": 1, "question": "x", "completion": ""}],
                    [_problem("1", "q0"), _problem("2", "q1")])


def test_score_gsm8k_files(tmp_path: Path) -> None:
    refs_path = tmp_path / "test.jsonl"
    refs_path.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"work\n#### {i * 10}"}) + "\n"
                                 for i in range(3)))
    preds_path = tmp_path / "preds.jsonl"
    preds_path.write_text("".join(json.dumps({"idx": i, "question": f"q{i}", "completion": c}) + "\n"
                                  for i, c in enumerate(["#### 0", "The answer is 10.", "#### 31"])))
    out = tmp_path / "out" / "gsm8k.json"
    result = score_gsm8k_files(preds_path, refs_path, out)
    assert result["strict_match"] == pytest.approx(1 / 3) and result["flexible_extract"] == pytest.approx(2 / 3)
    assert read_json(out)["records"] == result["records"]
    assert result["references_path"] == read_json(out)["references_path"] == str(refs_path)
    refs = read_gsm8k(refs_path)
    assert [r.id for r in refs] == ["test-0", "test-1", "test-2"] and refs[1].target == "10"
