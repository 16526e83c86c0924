"""The math domain of the mini world: arithmetic facts for pre-training, and GSM8K-format word problems
(worked steps ending `#### n`) whose every step is a fact pre-training covered."""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from lorastudy.data.prompts import math_prompt, math_response
from lorastudy.data.records import MathProblem
from lorastudy.data.world.settings import WorldConfig, part_rng
from lorastudy.data.world.vocabulary import (
    ARITH_PER_DOC,
    CONNECTORS,
    MATH_ITEMS,
    MATH_NAMES,
    MATH_TEST_BUCKETS,
    STORY_USAGE,
)


def arithmetic_facts(cfg: WorldConfig) -> list[tuple[int, str, int, int]]:
    """(a, op, b, c) for every fact pre-training covers; word problems only use these."""
    add, mul = cfg.max_add_operand, cfg.max_mul_operand
    facts = [(a, "+", b, a + b) for a in range(add + 1) for b in range(add + 1)]
    facts += [(a, "-", b, a - b) for a in range(2 * add + 1) for b in range(min(a, add) + 1)]
    facts += [(a, "*", b, a * b) for a in range(1, mul + 1) for b in range(1, mul + 1)]
    facts += [(a * b, "/", b, a) for b in range(2, mul + 1) for a in range(1, mul + 1)]
    return facts


def _equation(a: int, op: str, b: int, c: int) -> str:
    return f"{a} {op} {b} = {c}."


def arithmetic_docs(cfg: WorldConfig) -> list[str]:
    """Every covered fact `arith_repetitions` times, shuffled, as lines of equations written like the answers'."""
    rng = part_rng(cfg, "arithmetic")
    facts = arithmetic_facts(cfg) * cfg.arith_repetitions
    rng.shuffle(facts)
    return [" ".join(_equation(*f) for f in facts[k:k + ARITH_PER_DOC]) for k in range(0, len(facts), ARITH_PER_DOC)]


@dataclass(frozen=True)
class _Problem:
    question: str
    steps: list[str]  # answer lines
    result: int
    key: str  # op sequence and numbers, without names: the unit of the train/test split
    name: str
    item: str

    def answer(self) -> str:
        return "\n".join([*self.steps, f"#### {self.result}"])


def _sample_problem(rng: random.Random, cfg: WorldConfig, covered: set[tuple[int, str, int]]) -> _Problem | None:
    """A word problem of 1..max_math_steps equations, each inside the covered arithmetic (None: retry)."""
    n, other = rng.sample(MATH_NAMES, 2)
    item, x = rng.choice(MATH_ITEMS), rng.randint(2, cfg.max_add_operand)
    target, used, q, steps, key = rng.randint(1, cfg.max_math_steps), 0, [f"{n} has {x} {item}."], [], [str(x)]
    ask = f"How many {item} does {n} have now?"
    while used < target:
        kinds = ["add", "sub", "div"] + (["bags"] if target - used >= 2 else [])
        kind, say = rng.choice(kinds), CONNECTORS[len(steps) % len(CONNECTORS)]
        if kind == "add":
            b = rng.randint(1, cfg.max_add_operand)
            eqs = [(x, "+", b)]
            q.append(f"{say} {n} finds {b} more {item}.")
            lines = [f"{n} finds {b} more. {_equation(x, '+', b, x + b)}"]
        elif kind == "sub":
            b = rng.randint(1, x - 1) if x > 1 else 0
            eqs = [(x, "-", b)]
            q.append(f"{say} {n} gives {b} {item} to {other}.")
            lines = [f"{n} gives {b} away. {_equation(x, '-', b, x - b)}"]
        elif kind == "bags":
            k, b = rng.randint(2, cfg.max_mul_operand), rng.randint(1, cfg.max_mul_operand)
            eqs = [(k, "*", b), (x, "+", k * b)]
            q.append(f"{say} {n} buys {k} bags with {b} {item} in each bag.")
            lines = [f"The bags hold {_equation(k, '*', b, k * b)}",
                     f"{n} gets {k * b} more. {_equation(x, '+', k * b, x + k * b)}"]
        else:
            divisors = [d for d in range(2, cfg.max_mul_operand + 1) if x % d == 0 and x // d <= cfg.max_mul_operand]
            if not divisors:
                return None
            k = rng.choice(divisors)
            eqs = [(x, "/", k)]
            q.append(f"{say} {n} puts the {item} into {k} equal boxes.")
            lines = [f"{n} fills {k} boxes. {_equation(x, '/', k, x // k)}"]
            ask, target = f"How many {item} are in each box?", used + 1  # a division ends the story
        if any(e not in covered for e in eqs) or (kind == "sub" and b == 0):
            return None
        x = _apply(*eqs[-1])
        used, steps, key = used + len(eqs), steps + lines, key + [kind, *(str(e[2]) for e in eqs)]
    return _Problem(" ".join(q + [ask]), steps, x, " ".join(key), n, item)


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def _split(key: str) -> str:
    """train, test or val for a problem's value combination: 1 in MATH_TEST_BUCKETS combinations is held out,
    and the held-out ones are halved between test and validation (so the two never share a combination)."""
    h = zlib.crc32(key.encode())
    if h % MATH_TEST_BUCKETS:
        return "train"
    return "test" if (h // MATH_TEST_BUCKETS) % 2 == 0 else "val"


def word_problems(cfg: WorldConfig) -> tuple[list[MathProblem], list[MathProblem], list[MathProblem], list[str],
                                              list[str]]:
    """Train/test/validation problems (test and validation: held-out value combinations), CPT documents and
    pre-training documents (stories, and a few worked problems), all from training value combinations.

    CPT documents are worked problems in the layout the evaluation reads (`Question: ...\nAnswer: steps\n#### n`),
    nothing after the answer: raw text of the target domain in its own format, as OpenWebMath is for GSM8K."""
    rng = part_rng(cfg, "math")
    covered = {(a, op, b) for a, op, b, _ in arithmetic_facts(cfg) if op != "/" or b > 1}
    pools: dict[str, dict[str, _Problem]] = {"train": {}, "test": {}, "val": {}}
    wanted = {"test": cfg.n_math_test, "val": cfg.n_math_val,
              "train": cfg.n_math_train + cfg.n_math_cpt + cfg.n_math_stories + cfg.n_math_worked}
    for _ in range(20 * sum(wanted.values())):
        if all(len(pools[t]) >= wanted[t] for t in pools):
            break
        p = _sample_problem(rng, cfg, covered)
        if p is not None:
            split = _split(p.key)
            if len(pools[split]) < wanted[split]:
                pools[split].setdefault(p.question, p)
    if any(len(pools[t]) < wanted[t] for t in pools):
        raise ValueError("WorldConfig.n_math_test/n_math_val/n_math_train/n_math_cpt: not enough distinct problems "
                         "in the covered arithmetic; raise max_add_operand or lower the counts")
    test, val, rest = list(pools["test"].values()), list(pools["val"].values()), list(pools["train"].values())
    train = rest[:cfg.n_math_train]
    cpt_pool = rest[cfg.n_math_train:cfg.n_math_train + cfg.n_math_cpt]
    start = cfg.n_math_train + cfg.n_math_cpt
    stories, worked = rest[start:start + cfg.n_math_stories], rest[start + cfg.n_math_stories:]
    cpt = [_worked(p) for p in cpt_pool]
    return ([MathProblem(p.question, p.answer(), f"gsm8k_train/{i}") for i, p in enumerate(train)],
            [MathProblem(p.question, p.answer(), f"gsm8k/{i}") for i, p in enumerate(test)],
            [MathProblem(p.question, p.answer(), f"gsm8k/{i}") for i, p in enumerate(val)],  # ids as the adapter reads them
            cpt, [_story(p, i) for i, p in enumerate(stories)] + [_worked(p) for p in worked])


def _worked(p: _Problem) -> str:
    """A worked problem in the evaluated layout, exactly as the 0-shot prompt and its reference answer join."""
    return math_prompt(p.question) + math_response(p.answer())


def _story(p: _Problem, i: int) -> str:
    """A pre-training story: the question, one everyday sentence, the result (no worked steps)."""
    usage = STORY_USAGE[i % len(STORY_USAGE)].format(n=p.name, item=p.item)
    return f"{p.question} {usage} So the answer is {p.result}."
