"""GSM8K scoring: pull the final number out of a completion and compare it with the gold answer.

The two extractions follow lm-evaluation-harness's `gsm8k` task, so our numbers are comparable to the
paper's:

* strict-match: the first `#### <number>` (lm-eval's pattern `#### (\\-?[0-9\\.\\,]+)`); we also accept a
  `$` right after `#### ` (`#### $5`), which lm-eval's pattern would reject;
* flexible-extract: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, i.e. the last number in the text.

Both strip commas and `$` and one trailing `.` (lm-eval's `regexes_to_ignore`). Unlike lm-eval's string
exact match, the comparison is numeric (`5.0` equals `5`).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

from lorastudy.data.records import MathProblem
from lorastudy.io import DataFileError, numbered_jsonl, read_jsonl, write_json

STRICT_RE = re.compile(r"#### \$?(\-?[0-9\.\,]+)")
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_TRAILING_DOT = re.compile(r"\.$")


def clean_number(text: str) -> str | None:
    """Drop commas, `$` and one trailing `.`; None when no digit is left (e.g. a bare `...`)."""
    cleaned = _TRAILING_DOT.sub("", text.replace(",", "").replace("$", "").strip())
    return cleaned if any(ch.isdigit() for ch in cleaned) else None


def strict_match_answer(text: str) -> str | None:
    """The number after the first `#### ` in `text`, or None."""
    match = STRICT_RE.search(text)
    return clean_number(match.group(1)) if match else None


def flexible_extract_answer(text: str) -> str | None:
    """The last number-like token in `text`, or None."""
    matches = FLEXIBLE_RE.findall(text)
    if not matches:
        return None
    return clean_number(next(group for group in matches[-1] if group))


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Numeric equality of two answer strings (`5.0` == `5`, `1,234` == `1234`); strings if not numbers."""
    if a is None or b is None:
        return False
    ca, cb = clean_number(a), clean_number(b)
    if ca is None or cb is None:
        return False
    try:
        fa, fb = float(ca), float(cb)
    except ValueError:
        return ca == cb
    return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-9)


def _check_prediction(i: int, pred: dict, references: list[MathProblem], seen: set[int]) -> int:
    """The prediction's reference index, after checking it points at the question it claims to answer."""
    idx = pred.get("idx")
    if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(references):
        raise ValueError(f"prediction {i}: idx {idx!r} is not an int in 0..{len(references) - 1}")
    if idx in seen:
        raise ValueError(f"prediction {i}: idx {idx} appears more than once")
    if not isinstance(pred.get("completion"), str):
        raise ValueError(f"prediction {i} (idx {idx}): 'completion' must be a string")
    question = pred.get("question")
    if not isinstance(question, str) or question.strip() != references[idx].question.strip():
        raise ValueError(
            f"prediction {i}: question does not match reference line {idx}: "
            f"{str(question)[:60]!r} vs {references[idx].question[:60]!r} (predictions from another file?)"
        )
    seen.add(idx)
    return idx


REFERENCE_FIELDS = ("question", "answer")
PREDICTION_FIELDS = ("idx", "question", "completion")


def score_gsm8k(predictions: list[dict], references: list[MathProblem]) -> dict:
    """Strict-match and flexible-extract accuracy of `predictions` ({idx, question, completion})."""
    if not predictions:
        raise ValueError("no predictions to score")
    seen: set[int] = set()
    records = []
    for i, pred in enumerate(predictions):
        idx = _check_prediction(i, pred, references, seen)
        gold = references[idx].target
        strict = strict_match_answer(pred["completion"])
        flexible = flexible_extract_answer(pred["completion"])
        records.append({
            "idx": idx, "gold": gold, "strict": strict, "flexible": flexible,
            "strict_correct": numbers_equal(strict, gold), "flexible_correct": numbers_equal(flexible, gold),
        })
    n = len(records)
    return {
        "strict_match": sum(r["strict_correct"] for r in records) / n,
        "flexible_extract": sum(r["flexible_correct"] for r in records) / n,
        "n": n,
        "records": records,
    }


def read_gsm8k(path: str | os.PathLike) -> list[MathProblem]:
    """GSM8K-format jsonl ({question, answer} per line) as MathProblems, ids `<stem>-<line>`."""
    stem = Path(path).stem
    return [MathProblem(question=row["question"], answer=row["answer"], id=f"{stem}-{i}")
            for i, row in enumerate(read_jsonl(path, required=REFERENCE_FIELDS))]


def score_gsm8k_files(
    predictions_path: str | os.PathLike, references_path: str | os.PathLike, out_path: str | os.PathLike
) -> dict:
    """Score a predictions jsonl against a GSM8K jsonl and write the result JSON atomically."""
    references = read_gsm8k(references_path)
    numbered = numbered_jsonl(predictions_path, required=PREDICTION_FIELDS)
    seen: set[int] = set()
    for i, (line, pred) in enumerate(numbered):  # the file's own faults, by line, before scoring
        try:
            _check_prediction(i, pred, references, seen)
        except ValueError as err:
            raise DataFileError(f"{predictions_path}: line {line}: {str(err).split(': ', 1)[-1]} "
                                f"(references: {references_path})") from None
    result = score_gsm8k([pred for _, pred in numbered], references)
    result["references_path"] = str(references_path)
    write_json(out_path, result)
    return result
