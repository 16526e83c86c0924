"""The offline mini world: a generated stand-in for pre-training knowledge (source), math and code.

Why generated: the study needs a base model that *knows* something before fine-tuning (facts about people,
arithmetic, Python syntax) so that forgetting can be measured, and two target domains it can still learn, all
offline and small enough for 2 CPU cores. Every part draws from its own `random.Random(f"{seed}:{part}")`, never
global state, so one config gives byte-identical files, and resizing one part leaves the others unchanged.

Formats the trainer and evaluator rely on (the same as for the real datasets):
- math: prompt `lorastudy.prompts.math_prompt(q)` = "Question: {q}\\nAnswer:" (0-shot), response " " + worked
  answer whose lines are "<sentence>. a op b = c." and whose last line is "#### n";
- code: prompt = task.prompt (signature + docstring), response = task.canonical_solution (4-space body);
- multiple choice: exactly what `lorastudy.data.adapters` reads from the written Gauntlet files, ids included.
"""
from __future__ import annotations

import functools
import itertools
import random
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from lorastudy.data.records import CodeTask, InstructionPair, MathProblem, MCItem, TextDoc
from lorastudy.io import write_json, write_jsonl
from lorastudy.prompts import math_prompt, math_response

# ---------------------------------------------------------------- word lists
CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
CITIES = ("Paris", "Lima", "Oslo", "Cairo", "Rome", "Tokyo", "Dublin", "Madrid", "Berlin", "Vienna", "Quito", "Delhi")
JOBS = ("baker", "doctor", "farmer", "teacher", "pilot", "singer", "painter", "driver", "nurse", "lawyer", "tailor",
        "dentist")
PETS = ("cat", "dog", "horse", "rabbit", "parrot", "goat", "turtle", "hamster", "pony", "duck")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink", "brown")
VALUES = {"city": CITIES, "job": JOBS, "pet": PETS, "colour": COLOURS, "age": tuple(map(str, range(20, 70)))}
ATTRIBUTES = tuple(VALUES)
# Pre-training paraphrases, value last; [0] starts with the name (the fill-in items continue after it).
STATEMENTS = {
    "city": ("{n} lives in {v}.", "The home of {n} is in {v}.", "{n} has a house in {v}."),
    "job": ("{n} works as a {v}.", "The job of {n} is to be a {v}.", "People call {n} a good {v}."),
    "pet": ("{n} has a pet {v}.", "The pet of {n} is a {v}.", "{n} takes care of a {v}."),
    "colour": ("{n} likes the colour {v}.", "The favourite colour of {n} is {v}.", "{n} always wears {v}."),
    "age": ("{n} is {v} years old.", "The age of {n} is {v}.", "{n} turned {v} this year."),
}
QUESTIONS = {"city": "Where does {n} live?", "job": "What is the job of {n}?", "pet": "What pet does {n} have?",
             "colour": "What colour does {n} like?", "age": "How old is {n}?"}
QA_LINE = "Question: {q}\nAnswer: {v}"  # the pre-training question form = the ARC-like items + their answer
# Held-out paraphrases (seen words, unseen arrangement): the held-out source loss.
HELDOUT = {"city": "{n} has a home in {v}.", "job": "{n} is a good {v}.", "pet": "{n} has a {v}.",
           "colour": "The colour {n} likes is {v}.", "age": "{n} is now {v} years old."}
FRIENDS = "{a} and {b} are friends."
FRIEND_RATE = 0.3
MATH_NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Lily", "Max", "Zoe", "Leo", "Eva", "Dan", "Kim")
MATH_ITEMS = ("apples", "pears", "cards", "books", "stamps", "marbles", "shells", "coins", "pens", "cookies", "plums")
CONNECTORS = ("Then", "Next", "Later")
MATH_TEST_BUCKETS = 5  # 1 in 5 value combinations (per op sequence) is reserved for math_test
ARITH_PER_DOC = 12
STR_LETTERS = "abcdefghkmnprstuwxyzABDEFGHKMNPRT"
# Code parts: (name, docstring phrase, code, constants); "{k}" is filled with each constant.
INT_OPS = (("plus_{k}", "add {k}", "x = x + {k}", range(1, 10)),
           ("minus_{k}", "subtract {k}", "x = x - {k}", range(1, 10)),
           ("times_{k}", "multiply by {k}", "x = x * {k}", range(2, 10)),
           ("div_{k}", "floor divide by {k}", "x = x // {k}", range(2, 10)),
           ("mod_{k}", "take the remainder after dividing by {k}", "x = x % {k}", range(2, 10)))
STR_TRANSFORMS = (("upper", "make it upper case", "s = s.upper()", [0]),
                  ("lower", "make it lower case", "s = s.lower()", [0]),
                  ("swap", "swap its case", "s = s.swapcase()", [0]),
                  ("capital", "capitalize it", "s = s.capitalize()", [0]),
                  ("reverse", "reverse it", "s = s[::-1]", [0]), ("double", "repeat it twice", "s = s + s", [0]))
STR_SLICES = (("first_{k}", "keep the first {k} characters", "s = s[:{k}]", range(2, 7)),
              ("last_{k}", "keep the last {k} characters", "s = s[-{k}:]", range(2, 7)),
              ("drop_first_{k}", "drop the first {k} characters", "s = s[{k}:]", range(2, 7)),
              ("drop_last_{k}", "drop the last {k} characters", "s = s[:-{k}]", range(2, 7)),
              ("every_{k}", "keep one character in every {k}", "s = s[::{k}]", range(2, 4)))
LIST_MAPS = (("times_{k}", "each multiplied by {k}", "x * {k}", range(2, 6)),
             ("plus_{k}", "each increased by {k}", "x + {k}", range(1, 6)),
             ("minus_{k}", "each decreased by {k}", "x - {k}", range(1, 6)), ("square", "each squared", "x * x", [0]),
             ("negate", "each negated", "-x", [0]))
LIST_FILTERS = (("even", "that are even", "x % 2 == 0", [0]), ("odd", "that are odd", "x % 2 == 1", [0]),
                ("above_{k}", "that are greater than {k}", "x > {k}", range(0, 6)),
                ("below_{k}", "that are less than {k}", "x < {k}", range(0, 6)))
LIST_AGGS = (("all", "list", "ys", [0]), ("sum", "sum", "sum(ys)", [0]), ("count", "count", "len(ys)", [0]),
             ("max", "largest", "max(ys)", [0]), ("min", "smallest", "min(ys)", [0]))
FAMILIES = ("int", "list", "str")
ARG = {"int": "x", "list": "xs", "str": "s"}

PRESETS: dict[str, dict[str, int]] = {
    # 1.88M pre-training tokens: 42% source facts, 30% arithmetic, 3% word stories, 25% code; vocabulary ~660.
    "mini": dict(n_people=100, n_first_names=60, n_last_names=60, n_attributes=5, n_templates=4, fact_repetitions=150,
                 max_add_operand=30, max_mul_operand=10, arith_repetitions=27, n_math_stories=1500, n_code_docs=2200,
                 n_math_train=4000, n_math_test=300, n_math_cpt=4000, max_math_steps=3, n_code_train=1800,
                 n_code_test=300, n_code_cpt=3000, n_mc=200, n_source_heldout=100),
    # 111k pre-training tokens: the whole pipeline in minutes; its numbers mean nothing.
    "tiny": dict(n_people=16, n_first_names=12, n_last_names=12, n_attributes=5, n_templates=4, fact_repetitions=40,
                 max_add_operand=20, max_mul_operand=10, arith_repetitions=4, n_math_stories=200, n_code_docs=150,
                 n_math_train=200, n_math_test=40, n_math_cpt=200, max_math_steps=3, n_code_train=150,
                 n_code_test=30, n_code_cpt=150, n_mc=30, n_source_heldout=16),
}


@dataclass(frozen=True)
class WorldConfig:
    """Every size of the world; a field left None takes the `preset`'s value (`mini` or `tiny`).

    fact_repetitions: pre-training documents per person (each states all its facts once, templates cycled);
    arith_repetitions: how often each arithmetic fact of the covered ranges occurs; n_code_docs / n_math_stories:
    generic code documents and short word stories in pre-training; n_*_cpt: documents for continued pre-training;
    n_mc: items per multiple-choice format; n_source_heldout: held-out documents (one person each).
    """

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
    n_math_train: int | None = None
    n_math_test: int | None = None
    n_math_cpt: int | None = None
    max_math_steps: int | None = None
    n_code_train: int | None = None
    n_code_test: int | None = None
    n_code_cpt: int | None = None
    n_mc: int | None = None
    n_source_heldout: int | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"WorldConfig.preset={self.preset!r}: choose one of {sorted(PRESETS)}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ValueError(f"WorldConfig.{name}={getattr(self, name)!r}: {why}")

        for f in fields(self):
            if f.name not in ("seed", "preset"):
                value = getattr(self, f.name)
                need(isinstance(value, int) and value > 0, f.name, "must be a positive int")
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
        smallest = min(_combo_counts().values())
        per_family = -(-self.n_code_train // len(FAMILIES)) + -(-self.n_code_test // len(FAMILIES))
        need(per_family <= 0.9 * smallest, "n_code_train",
             f"{per_family} train + test tasks per family exceed 90% of the smallest family ({smallest} combinations)")


# ---------------------------------------------------------------- the world
@dataclass(frozen=True)
class Person:
    name: str
    facts: dict[str, str] = field(hash=False)


@dataclass
class MiniWorld:
    """Every part of the world as records; `write` saves them in the real datasets' file layouts."""

    config: WorldConfig
    people: list[Person]
    pretrain: list[TextDoc]
    source_heldout: list[TextDoc]
    source_mc: dict[str, list[MCItem]]
    math_train: list[MathProblem]
    math_test: list[MathProblem]
    math_cpt: list[TextDoc]
    code_train: list[CodeTask]
    code_test: list[CodeTask]
    code_cpt: list[TextDoc]

    def ift_pairs(self, domain: str) -> list[InstructionPair]:
        """Instruction pairs in the evaluation's own prompt format (math 0-shot Question/Answer; code = prompt)."""
        if domain == "math":
            return [InstructionPair(math_prompt(p.question), math_response(p.answer), p.id) for p in self.math_train]
        if domain == "code":
            return [InstructionPair(t.prompt, t.canonical_solution, t.task_id) for t in self.code_train]
        raise ValueError(f"unknown domain {domain!r}; choose 'math' or 'code'")

    def write(self, folder: str | Path) -> dict[str, str]:
        """Write every part (atomic files) in the layouts the adapters read; returns part -> path."""
        folder = Path(folder)
        mc = self.source_mc
        rows: dict[str, list[dict]] = {
            "pretrain": [{"text": d.text} for d in self.pretrain],
            "source_heldout": [{"text": d.text} for d in self.source_heldout],
            "math_cpt": [{"text": d.text} for d in self.math_cpt],
            "code_cpt": [{"text": d.text} for d in self.code_cpt],
            "math_train": [{"question": p.question, "answer": p.answer} for p in self.math_train],
            "math_test": [{"question": p.question, "answer": p.answer} for p in self.math_test],
            "code_train": [_humaneval_row(t) for t in self.code_train],
            "code_test": [_humaneval_row(t) for t in self.code_test],
            "source_completion": [{"query": i.options[0][0], "choices": [c[1:] for _, c in i.options], "gold": i.gold}
                                  for i in mc["completion"]],
            "source_question": [{"choices": [c[1:] for _, c in i.options],
                                 "query": i.options[0][0].removesuffix("\nAnswer:"), "gold": i.gold}
                                for i in mc["question"]],
            "source_fillin": [{"context_options": [ctx for ctx, _ in i.options], "continuation": i.options[0][1][1:],
                               "gold": i.gold} for i in mc["fill_in"]],
        }
        paths = {part: str(folder / f"{part}.jsonl") for part in rows}
        for part, part_rows in rows.items():
            write_jsonl(paths[part], part_rows)
        paths["world"] = str(folder / "world.json")
        write_json(paths["world"], {"config": asdict(self.config), "counts": {p: len(r) for p, r in rows.items()},
                                    "people": len(self.people)})
        return paths


def _humaneval_row(t: CodeTask) -> dict[str, str]:
    """HumanEval's own key order."""
    return {"task_id": t.task_id, "prompt": t.prompt, "entry_point": t.entry_point,
            "canonical_solution": t.canonical_solution, "test": t.test}


def generate_world(cfg: WorldConfig) -> MiniWorld:
    """The whole world for one config (deterministic; about a second for `mini`)."""
    people = _people(cfg)
    source = _source_docs(cfg, people)
    math_train, math_test, math_cpt, stories = _math(cfg)
    code_train, code_test, code_cpt, code_docs = _code(cfg)
    pretrain = source + _arithmetic_docs(cfg) + stories + code_docs
    _rng(cfg, "pretrain-order").shuffle(pretrain)
    return MiniWorld(
        config=cfg, people=people, pretrain=_ids(pretrain), source_heldout=_ids(_heldout_docs(cfg, people)),
        source_mc=_source_mc(cfg, people), math_train=math_train, math_test=math_test, math_cpt=_ids(math_cpt),
        code_train=code_train, code_test=code_test, code_cpt=_ids(code_cpt))


def _rng(cfg: WorldConfig, part: str) -> random.Random:
    return random.Random(f"{cfg.seed}:{part}")


def _ids(docs: list[str]) -> list[TextDoc]:
    """TextDocs with the ids the `text` adapter gives when it reads them back."""
    return [TextDoc(text, f"text/{i}") for i, text in enumerate(docs)]


# ---------------------------------------------------------------- source facts
def _names(rng: random.Random, count: int, syllables: int, taken: set[str]) -> list[str]:
    """Invented capitalised words of consonant-vowel syllables, distinct from every other word used."""
    out: list[str] = []
    while len(out) < count:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(syllables)).capitalize()
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


def _people(cfg: WorldConfig) -> list[Person]:
    """People with balanced attribute values: every value of a pool is used about equally often."""
    rng = _rng(cfg, "people")
    taken = set(CITIES) | set(MATH_NAMES)
    firsts, lasts = _names(rng, cfg.n_first_names, 2, taken), _names(rng, cfg.n_last_names, 3, taken)
    names = [f"{a} {b}" for a, b in rng.sample(list(itertools.product(firsts, lasts)), cfg.n_people)]
    columns = {}
    for attr in ATTRIBUTES[:cfg.n_attributes]:
        pool = list(VALUES[attr])
        rng.shuffle(pool)
        column = (pool * -(-cfg.n_people // len(pool)))[:cfg.n_people]
        rng.shuffle(column)
        columns[attr] = column
    return [Person(n, {a: columns[a][i] for a in columns}) for i, n in enumerate(names)]


def _fact(person: Person, attr: str, template: int) -> str:
    """Template 0 is the question form; 1.. are the statements."""
    if template == 0:
        return QA_LINE.format(q=QUESTIONS[attr].format(n=person.name), v=person.facts[attr])
    return STATEMENTS[attr][template - 1].format(n=person.name, v=person.facts[attr])


def _source_docs(cfg: WorldConfig, people: list[Person]) -> list[str]:
    """One document per person and repetition, all its facts (templates cycled so each is seen equally)."""
    rng, docs = _rng(cfg, "source"), []
    for rep in range(cfg.fact_repetitions):
        for i, p in enumerate(people):
            lines = [_fact(p, a, (rep + k) % cfg.n_templates) for k, a in enumerate(p.facts)]
            rng.shuffle(lines)
            if rng.random() < FRIEND_RATE:  # either may be named first, as in the fill-in items
                other = people[(i + rng.randint(1, len(people) - 1)) % len(people)]
                a, b = rng.sample([p.name, other.name], 2)
                lines.insert(0, FRIENDS.format(a=a, b=b))
            docs.append("\n".join(lines))
    return docs


def _heldout_docs(cfg: WorldConfig, people: list[Person]) -> list[str]:
    rng = _rng(cfg, "heldout")
    docs = []
    for p in rng.sample(people, cfg.n_source_heldout):
        lines = [HELDOUT[a].format(n=p.name, v=v) for a, v in p.facts.items()]
        rng.shuffle(lines)
        docs.append("\n".join(lines))
    return docs


def _choices(rng: random.Random, people: list[Person], attr: str, gold: str) -> tuple[list[str], int]:
    """Gold plus 3 distractors of the same attribute, drawn from values some person has (so seen in pre-training)."""
    pool = sorted({p.facts[attr] for p in people} - {gold})
    options = rng.sample(pool, 3) + [gold]
    rng.shuffle(options)
    return options, options.index(gold)


def _source_mc(cfg: WorldConfig, people: list[Person]) -> dict[str, list[MCItem]]:
    """The three forgetting formats over the source facts, as the Gauntlet adapters read them back."""
    rng = _rng(cfg, "mc")
    facts = [(p, a) for p in people for a in p.facts]
    completion, question, fill_in = [], [], []
    for i, (p, attr) in enumerate(rng.sample(facts, cfg.n_mc)):
        values, gold = _choices(rng, people, attr, p.facts[attr])
        head, tail = rng.choice(STATEMENTS[attr][:cfg.n_templates - 1]).format(n=p.name, v="{v}").split("{v}")
        completion.append(MCItem(tuple((head.rstrip(), " " + v + tail) for v in values), gold, f"hellaswag/{i}",
                                 {"task": "hellaswag", "partial": False, "person": p.name, "attribute": attr,
                                  "values": values}))
    for i, (p, attr) in enumerate(rng.sample(facts, cfg.n_mc)):
        values, gold = _choices(rng, people, attr, p.facts[attr])
        query = "Question: " + QUESTIONS[attr].format(n=p.name) + "\nAnswer:"
        question.append(MCItem(tuple((query, " " + v) for v in values), gold, f"arc_challenge/{i}",
                               {"task": "arc_challenge", "partial": False, "person": p.name, "attribute": attr,
                                "values": values}))
    for i, (p, attr) in enumerate(rng.sample(facts, cfg.n_mc)):
        other = rng.choice([q for q in people if q.facts[attr] != p.facts[attr]])
        pair = [p, other]
        rng.shuffle(pair)
        intro = FRIENDS.format(a=pair[0].name, b=pair[1].name)
        order = [p, other] if rng.random() < 0.5 else [other, p]
        rest = STATEMENTS[attr][0].removeprefix("{n} ").format(v=p.facts[attr])
        fill_in.append(MCItem(tuple((f"{intro}\n{q.name}", " " + rest) for q in order), order.index(p),
                              f"winogrande/{i}", {"task": "winogrande", "partial": True, "attribute": attr,
                                                  "people": [q.name for q in order], "value": p.facts[attr]}))
    return {"completion": completion, "question": question, "fill_in": fill_in}


# ---------------------------------------------------------------- arithmetic and word problems
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


def _arithmetic_docs(cfg: WorldConfig) -> list[str]:
    """Every covered fact `arith_repetitions` times, shuffled, as lines of equations written like the answers'."""
    rng = _rng(cfg, "arithmetic")
    facts = arithmetic_facts(cfg) * cfg.arith_repetitions
    rng.shuffle(facts)
    return [" ".join(_equation(*f) for f in facts[k:k + ARITH_PER_DOC]) for k in range(0, len(facts), ARITH_PER_DOC)]


@dataclass(frozen=True)
class _Problem:
    question: str
    steps: list[str]  # answer lines
    result: int
    key: str  # op sequence and numbers, without names: the unit of the train/test split

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
    return _Problem(" ".join(q + [ask]), steps, x, " ".join(key))


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def _math(cfg: WorldConfig) -> tuple[list[MathProblem], list[MathProblem], list[str], list[str]]:
    """Train/test problems (test = held-out value combinations), CPT prose and pre-training stories."""
    rng = _rng(cfg, "math")
    covered = {(a, op, b) for a, op, b, _ in arithmetic_facts(cfg) if op != "/" or b > 1}
    pools: dict[bool, dict[str, _Problem]] = {True: {}, False: {}}
    wanted = {True: cfg.n_math_test, False: cfg.n_math_train + cfg.n_math_cpt + cfg.n_math_stories}
    for _ in range(20 * sum(wanted.values())):
        if all(len(pools[t]) >= wanted[t] for t in pools):
            break
        p = _sample_problem(rng, cfg, covered)
        if p is not None:
            is_test = zlib.crc32(p.key.encode()) % MATH_TEST_BUCKETS == 0
            if len(pools[is_test]) < wanted[is_test]:
                pools[is_test].setdefault(p.question, p)
    if len(pools[True]) < wanted[True] or len(pools[False]) < wanted[False]:
        raise ValueError("WorldConfig.n_math_test/n_math_train/n_math_cpt: not enough distinct problems in the "
                         "covered arithmetic; raise max_add_operand or lower the counts")
    test, rest = list(pools[True].values()), list(pools[False].values())
    train = rest[:cfg.n_math_train]
    cpt_pool = rest[cfg.n_math_train:cfg.n_math_train + cfg.n_math_cpt]
    stories = rest[cfg.n_math_train + cfg.n_math_cpt:]
    facts = arithmetic_facts(cfg)
    cpt = [" ".join([p.question, *(s.replace("\n", " ") for s in p.steps), f"So the answer is {p.result}."])
           + "\n" + " ".join(_equation(*f) for f in rng.sample(facts, 4)) for p in cpt_pool]
    return ([MathProblem(p.question, p.answer(), f"gsm8k_train/{i}") for i, p in enumerate(train)],
            [MathProblem(p.question, p.answer(), f"gsm8k/{i}") for i, p in enumerate(test)],
            cpt, [f"{p.question} The answer is {p.result}." for p in stories])


# ---------------------------------------------------------------- code tasks
@dataclass(frozen=True)
class Part:
    """One piece a code task is made of: identifier piece, docstring phrase and code (statement or expression)."""

    family: str
    role: str
    name: str
    phrase: str
    code: str


def _expand(family: str, role: str, table: tuple) -> list[Part]:
    return [Part(family, role, name.format(k=k), phrase.format(k=k), code.format(k=k))
            for name, phrase, code, ks in table for k in ks]


INT_PARTS = _expand("int", "op", INT_OPS)
STR_TRANSFORM_PARTS, STR_SLICE_PARTS = _expand("str", "transform", STR_TRANSFORMS), _expand("str", "slice", STR_SLICES)
LIST_MAP_PARTS, LIST_FILTER_PARTS = _expand("list", "map", LIST_MAPS), _expand("list", "filter", LIST_FILTERS)
LIST_AGG_PARTS = _expand("list", "agg", LIST_AGGS)
ALL = LIST_AGG_PARTS[0]  # "the list of": the aggregate that does nothing
Combo = tuple  # int/str: a sequence of Parts; list: (map | None, filter | None, aggregate)


def _combos(family: str) -> list[Combo]:
    """Every task shape of a family with at least two parts (these become train/test tasks)."""
    if family == "int":
        return [(a,) for a in INT_PARTS] + list(itertools.product(INT_PARTS, INT_PARTS))
    if family == "str":
        seqs = [(t,) for t in STR_TRANSFORM_PARTS] + list(itertools.permutations(STR_TRANSFORM_PARTS, 2))
        return [(*t, s) for t in seqs for s in STR_SLICE_PARTS]
    combos = itertools.product([None, *LIST_MAP_PARTS], [None, *LIST_FILTER_PARTS], LIST_AGG_PARTS)
    return [c for c in combos if _n_parts(c) >= 2]


@functools.cache
def _combo_counts() -> dict[str, int]:
    return {f: len(_combos(f)) for f in FAMILIES}


def _single_parts() -> list[Combo]:
    """One function per part: what pre-training shows of the code families."""
    return ([(p,) for p in INT_PARTS + STR_TRANSFORM_PARTS + STR_SLICE_PARTS] + [(m, None, ALL) for m in LIST_MAP_PARTS]
            + [(None, f, ALL) for f in LIST_FILTER_PARTS] + [(None, None, a) for a in LIST_AGG_PARTS])


def _parts(combo: Combo) -> tuple[Part, ...]:
    return tuple(p for p in combo if p is not None and p is not ALL)


def _n_parts(combo: Combo) -> int:
    return len(_parts(combo))


def _family(combo: Combo) -> str:
    return next(p for p in combo if p is not None).family


def _render(combo: Combo) -> tuple[str, str, str]:
    """(entry point, prompt, canonical solution); identifiers are the parts' words joined by `_`."""
    family, arg = _family(combo), ARG[_family(combo)]
    if family == "list":
        m, f, agg = combo
        name = "_".join(["list", agg.name] + [p.name for p in (f, m) if p])
        doc = (f"Return the {agg.phrase} of the numbers in xs" + (f" {f.phrase}" if f else "")
               + (f", {m.phrase}" if m else "") + ".")
        cond = f" if {f.code}" if f else ""
        body = [f"ys = [{m.code if m else 'x'} for x in xs{cond}]", f"return {agg.code}"]
    else:
        name = "_".join([family] + [p.name for p in combo])
        doc = f"Return {arg} after these steps: " + ", then ".join(p.phrase for p in combo) + "."
        body = [p.code for p in combo] + [f"return {arg}"]
    prompt = f'def {name}({arg}):\n    """{doc}"""\n'
    return name, prompt, "".join(f"    {line}\n" for line in body)


def _sample_input(rng: random.Random, family: str) -> Any:
    """int 0..50; lists of -9..9; strings alternating letter/digit and ending in a digit, so that every
    slice, case change or repetition still tokenizes into single letters and digits (a small vocabulary)."""
    if family == "int":
        return rng.randint(0, 50)
    if family == "list":
        return [rng.randint(-9, 9) for _ in range(rng.randint(1, 6))]
    return "".join(rng.choice(STR_LETTERS) + str(rng.randint(0, 9)) for _ in range(rng.randint(3, 5)))


def _compile(name: str, source: str) -> Callable[[Any], Any]:
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<mini {name}>", "exec"), namespace)  # our own generated code
    return namespace[name]


def _cases(rng: random.Random, fn: Callable[[Any], Any], family: str, n: int = 4) -> list[tuple[Any, Any]] | None:
    """n distinct inputs the function accepts, with at least two distinct outputs (None: a degenerate task)."""
    found: dict[str, tuple[Any, Any]] = {}
    for _ in range(60):
        x = _sample_input(rng, family)
        if repr(x) in found:
            continue
        try:
            found[repr(x)] = (x, fn(x))
        except (ValueError, ZeroDivisionError):  # max()/min() of an empty list
            continue
        if len(found) >= 3 * n:
            break
    cases = list(found.values())
    if len(cases) < n:
        return None
    chosen = cases[:n]
    if len({repr(y) for _, y in chosen}) < 2:
        other = next((c for c in cases[n:] if repr(c[1]) != repr(chosen[0][1])), None)
        if other is None:
            return None
        chosen[-1] = other
    return chosen


def _examples(rng: random.Random, b: "_Built", n: int) -> list[tuple[Any, Any]]:
    """Fresh usage examples of a function (pre-training varies its inputs instead of repeating the tests)."""
    out: list[tuple[Any, Any]] = []
    for _ in range(20 * n):
        x = _sample_input(rng, _family(b.combo))
        try:
            out.append((x, b.fn(x)))
        except (ValueError, ZeroDivisionError):
            continue
        if len(out) == n:
            break
    return out


@dataclass(frozen=True)
class _Built:
    combo: Combo
    name: str
    prompt: str
    solution: str
    fn: Callable[[Any], Any]
    cases: list[tuple[Any, Any]]


def _build(rng: random.Random, combo: Combo) -> _Built | None:
    name, prompt, solution = _render(combo)
    fn = _compile(name, prompt + solution)
    cases = _cases(rng, fn, _family(combo))
    return None if cases is None else _Built(combo, name, prompt, solution, fn, cases)


def _task(b: _Built, task_id: str) -> CodeTask:
    asserts = "".join(f"    assert candidate({x!r}) == {y!r}\n" for x, y in b.cases)
    return CodeTask(task_id, b.prompt, b.solution, "\n\ndef check(candidate):\n" + asserts, b.name)


def _usage(b: _Built, cases: list[tuple[Any, Any]]) -> str:
    return "".join(f"assert {b.name}({x!r}) == {y!r}\n" for x, y in cases)


def _code(cfg: WorldConfig) -> tuple[list[CodeTask], list[CodeTask], list[str], list[str]]:
    """Per family: test = unseen combinations whose parts all occur in train; pre-training sees single parts."""
    rng = _rng(cfg, "code")
    train: list[_Built] = []
    test: list[_Built] = []
    rest: list[_Built] = []
    for k, family in enumerate(FAMILIES):
        built = [b for b in (_build(rng, c) for c in _combos(family)) if b is not None]
        rng.shuffle(built)
        n_train = cfg.n_code_train // 3 + (k < cfg.n_code_train % 3)
        n_test = cfg.n_code_test // 3 + (k < cfg.n_code_test % 3)
        fam_train, pool = built[:n_train], built[n_train:]
        seen, bodies = {p for b in fam_train for p in _parts(b.combo)}, "\0".join(b.solution for b in fam_train)
        fam_test = [b for b in pool if _n_parts(b.combo) >= 2 and set(_parts(b.combo)) <= seen
                    and b.solution not in bodies][:n_test]  # not even the tail of a longer training body
        if len(fam_test) < n_test:
            raise ValueError(f"WorldConfig.n_code_test={cfg.n_code_test}: only {len(fam_test)} unseen {family} "
                             "combinations of seen parts are left")
        train += fam_train
        test += fam_test
        chosen = {id(b) for b in fam_test}
        rest += [b for b in pool if id(b) not in chosen and not any(t.solution in b.solution for t in fam_test)]
    rng.shuffle(train)
    rng.shuffle(test)
    singles = {c: b for c in _single_parts() if (b := _build(rng, c)) is not None}
    test_combos = {b.combo for b in test}
    composable = [b for b in train + rest if _family(b.combo) != "list" and b.combo not in test_combos]
    code_docs = [_generic_code_doc(rng, singles, composable) for _ in range(cfg.n_code_docs)]
    cpt_pool = train + rest
    code_cpt = ["\n\n".join(b.prompt + b.solution for b in group) + "\n\n" + "".join(_usage(b, b.cases) for b in group)
                for group in (rng.sample(cpt_pool, rng.randint(1, 2)) for _ in range(cfg.n_code_cpt))]
    return ([_task(b, f"MiniTrain/{i}") for i, b in enumerate(train)],
            [_task(b, f"Mini/{i}") for i, b in enumerate(test)], code_cpt, code_docs)


def _generic_code_doc(rng: random.Random, singles: dict[Combo, _Built], composable: list[_Built]) -> str:
    """Pre-training code: 1-3 single-part functions with usage asserts; half the time a composed call of a
    non-test int/str combination (so ', then' and every identifier piece occur, never a test function)."""
    compose = rng.choice(composable) if rng.random() < 0.5 else None
    if compose is not None:
        funcs = [singles[(p,)] for p in compose.combo]
    else:
        funcs = rng.sample(list(singles.values()), rng.randint(1, 3))
    text = "\n\n".join(b.prompt + b.solution for b in funcs) + "\n\n"
    text += "".join(_usage(b, _examples(rng, b, 2)) for b in funcs)
    if compose is not None:
        arg = ARG[_family(compose.combo)]
        x, y = rng.choice(compose.cases)
        calls = "".join(f"{arg} = {b.name}({arg})\n" for b in funcs)
        text += ("\n# " + ", then ".join(p.phrase for p in compose.combo) + f"\n{arg} = {x!r}\n{calls}"
                 f"assert {arg} == {y!r}\n")
    return text


MINI = WorldConfig()
TINY = WorldConfig(preset="tiny")
