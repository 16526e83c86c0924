"""The few record types every dataset adapter yields, real or mini-world.

Keeping them tiny and frozen means the training and evaluation code never sees a dataset's own field names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


@dataclass(frozen=True)
class InstructionPair:
    """A prompt/response pair for instruction fine-tuning (loss on the response only)."""

    prompt: str
    response: str
    id: str = ""


@dataclass(frozen=True)
class TextDoc:
    """Unstructured text for continued pre-training (loss on every token)."""

    text: str
    id: str = ""


@dataclass(frozen=True)
class MathProblem:
    """A GSM8K-format problem: the worked `answer` ends with a line `#### <number>`."""

    question: str
    answer: str
    id: str = ""

    @property
    def target(self) -> str:
        """The gold final answer as written after `####` (commas removed)."""
        m = _FINAL.search(self.answer)
        if not m:
            raise ValueError(f"answer of {self.id or self.question[:40]!r} has no '#### n' line")
        return m.group(1).replace(",", "").strip()


@dataclass(frozen=True)
class CodeTask:
    """A HumanEval-format task: `prompt` + completion + `test` + `check(entry_point)` is the program."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice item as (context, continuation) options; the log-likelihood of each
    continuation given its context is scored.

    HellaSwag/ARC: one context, several continuations. WinoGrande (partial scoring): several contexts
    (the blank filled with each option), one shared continuation.
    """

    options: tuple[tuple[str, str], ...]
    gold: int
    id: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not 0 <= self.gold < len(self.options):
            raise ValueError(f"MC item {self.id!r}: gold {self.gold} outside 0..{len(self.options) - 1}")


Record = InstructionPair | TextDoc | MathProblem | CodeTask | MCItem
