"""Prompt formats, in one place so that training (IFT) and evaluation use the same text."""
from __future__ import annotations

import re
from collections.abc import Sequence

MATH_STOP: list[str | re.Pattern[str]] = ["\n\n", "Question:"]
# A completion ends where the function ends: at the first line back at column 0 (a `def`, `class`, `if`,
# `print`, `#` or a top-level `assert` of pre-training code) - the rule behind the HumanEval harnesses' stop lists.
CODE_STOP: list[str | re.Pattern[str]] = [re.compile(r"\n(?=\S)")]


def math_prompt(question: str) -> str:
    """lm-eval's GSM8K layout: `Question: …\\nAnswer:`; the worked answer follows after a space."""
    return f"Question: {question.strip()}\nAnswer:"


def math_response(answer: str) -> str:
    return " " + answer.strip()


def math_fewshot(question: str, shots: Sequence[tuple[str, str]]) -> str:
    """k solved examples, each separated by a blank line, then the question (k = 0 is plain 0-shot)."""
    blocks = [math_prompt(q) + math_response(a) for q, a in shots]
    return "\n\n".join([*blocks, math_prompt(question)])


def code_instruction(instruction: str) -> str:
    """An instruction-style code prompt (Magicoder, GPTeacher) ends with a newline before the response."""
    return instruction if instruction.endswith("\n") else instruction + "\n"
