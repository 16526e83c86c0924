"""The mini world's settings: every size of the generated world, typed and validated as a field of the profile
(`base.world`), with two presets. Each part of the world draws from its own seeded generator."""
from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from lorastudy.data.world.parts import FAMILIES, combo_counts
from lorastudy.data.world.vocabulary import ATTRIBUTES

PRESETS: dict[str, dict[str, int]] = {
    # Pre-training: source facts, arithmetic, word stories, a few worked problems and documented composed functions
    # in the evaluated layouts (so that the base follows them, as Llama-2-7B follows GSM8K's and HumanEval's), code.
    "mini": dict(n_people=100, n_first_names=60, n_last_names=60, n_attributes=5, n_templates=4, fact_repetitions=150,
                 max_add_operand=30, max_mul_operand=10, arith_repetitions=27, n_math_stories=1500, n_code_docs=2200,
                 n_math_worked=300, n_code_composed=300,
                 n_math_train=4000, n_math_test=300, n_math_val=150, n_math_cpt=4000, max_math_steps=3,
                 n_code_train=1800, n_code_test=210, n_code_val=120, n_code_cpt=3000, n_mc=200, n_source_heldout=100),
    # 111k pre-training tokens: the whole pipeline in minutes; its numbers mean nothing.
    "tiny": dict(n_people=16, n_first_names=12, n_last_names=12, n_attributes=5, n_templates=4, fact_repetitions=40,
                 max_add_operand=20, max_mul_operand=10, arith_repetitions=4, n_math_stories=200, n_code_docs=150,
                 n_math_worked=20, n_code_composed=20,
                 n_math_train=200, n_math_test=40, n_math_val=16, n_math_cpt=200, max_math_steps=3,
                 n_code_train=150, n_code_test=30, n_code_val=15, n_code_cpt=150, n_mc=30, n_source_heldout=16),
}


class WorldConfig(BaseModel):
    """Every size of the world; a field left None takes the `preset`'s value (`mini` or `tiny`).

    fact_repetitions: pre-training documents per person (each states all its facts once, templates cycled);
    arith_repetitions: how often each arithmetic fact of the covered ranges occurs; n_code_docs / n_math_stories:
    generic code documents and short word stories in pre-training; n_math_worked / n_code_composed: pre-training
    documents in the evaluated layouts (worked `Question:`/`#### n` problems; documented composed functions), never
    a test or validation item; n_*_cpt: documents for continued pre-training;
    n_mc: items per multiple-choice format; n_source_heldout: held-out documents (one person each);
    n_math_val / n_code_val: validation items built like the test items (unseen value combinations, unseen code
    compositions) but disjoint from them and from every training and CPT text: what learning rates are chosen on.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    preset: str = "mini"
    n_people: int | None = None
    n_first_names: int | None = None
    n_last_names: int | None = None
    n_attributes: int | None = None
    n_templates: int | None = None
    fact_repetitions: int | None = None
    max_add_operand: int | None = None
    max_mul_operand: int | None = None
    arith_repetitions: int | None = None
    n_math_stories: int | None = None
    n_code_docs: int | None = None
    n_math_worked: int | None = None
    n_code_composed: int | None = None
    n_math_train: int | None = None
    n_math_test: int | None = None
    n_math_val: int | None = None
    n_math_cpt: int | None = None
    max_math_steps: int | None = None
    n_code_train: int | None = None
    n_code_test: int | None = None
    n_code_val: int | None = None
    n_code_cpt: int | None = None
    n_mc: int | None = None
    n_source_heldout: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        """A field left out (or None) takes the preset's value, so the model always holds every size."""
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "mini")
        if preset not in PRESETS:
            raise ValueError(f"WorldConfig.preset={preset!r}: choose one of {sorted(PRESETS)}")
        return {**PRESETS[preset], **{k: v for k, v in data.items() if v is not None}}

    @model_validator(mode="after")
    def _validate(self) -> "WorldConfig":
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ValueError(f"WorldConfig.{name}={getattr(self, name)!r}: {why}")

        for name in PRESETS[self.preset]:
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, name, "must be a positive int")
        need(self.n_attributes <= len(ATTRIBUTES), "n_attributes",
             f"at most {len(ATTRIBUTES)} ({', '.join(ATTRIBUTES)})")
        need(2 <= self.n_templates <= 4, "n_templates", "2..4 (the question form + 1..3 statements)")
        need(self.n_people <= self.n_first_names * self.n_last_names, "n_people", "more than first x last names")
        need(self.n_people >= 4, "n_people", "the multiple-choice items need at least 4 people")
        need(self.n_first_names <= 1000, "n_first_names", "at most 1000")
        need(self.n_last_names <= 1000, "n_last_names", "at most 1000")
        need(self.n_mc <= self.n_people * self.n_attributes, "n_mc", "more than the (person, attribute) facts")
        need(self.n_source_heldout <= self.n_people, "n_source_heldout", "at most one held-out document per person")
        need(self.max_add_operand >= 5, "max_add_operand", "at least 5")
        need(2 <= self.max_mul_operand <= 12, "max_mul_operand", "2..12")
        need(self.max_math_steps <= 3, "max_math_steps", "1..3")
        need(self.n_code_test >= len(FAMILIES), "n_code_test", "at least one task per family")
        need(self.n_code_val >= len(FAMILIES), "n_code_val", "at least one task per family")
        smallest = min(combo_counts().values())
        per_family = sum(-(-n // len(FAMILIES)) for n in (self.n_code_train, self.n_code_test, self.n_code_val))
        need(per_family <= 0.9 * smallest, "n_code_train", f"{per_family} train + test + validation tasks per family "
             f"exceed 90% of the smallest family ({smallest} combinations)")
        return self


def part_rng(cfg: WorldConfig, part: str) -> random.Random:
    """The generator of one part of the world: resizing one part leaves the others unchanged."""
    return random.Random(f"{cfg.seed}:{part}")


MINI = WorldConfig()
TINY = WorldConfig(preset="tiny")
