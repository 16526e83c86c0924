"""The source domain of the mini world: people and their facts, stated in several paraphrases for
pre-training, in one held-out paraphrase, and asked in three multiple-choice formats (HellaSwag-, ARC- and
WinoGrande-like) that measure forgetting."""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from lorastudy.data.records import MCItem
from lorastudy.data.world.settings import WorldConfig, part_rng
from lorastudy.data.world.vocabulary import (
    ATTRIBUTES,
    CITIES,
    CONSONANTS,
    FRIEND_RATE,
    FRIENDS,
    HELDOUT,
    MATH_NAMES,
    QA_LINE,
    QUESTIONS,
    STATEMENTS,
    VALUES,
    VOWELS,
)


@dataclass(frozen=True)
class Person:
    name: str
    facts: dict[str, str] = field(hash=False)



def _names(rng: random.Random, count: int, syllables: int, taken: set[str]) -> list[str]:
    """Invented capitalised words of consonant-vowel syllables, distinct from every other word used."""
    out: list[str] = []
    while len(out) < count:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(syllables)).capitalize()
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


def make_people(cfg: WorldConfig) -> list[Person]:
    """People with balanced attribute values: every value of a pool is used about equally often."""
    rng = part_rng(cfg, "people")
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


def source_docs(cfg: WorldConfig, people: list[Person]) -> list[str]:
    """One document per person and repetition, all its facts (templates cycled so each is seen equally)."""
    rng, docs = part_rng(cfg, "source"), []
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


def heldout_docs(cfg: WorldConfig, people: list[Person]) -> list[str]:
    rng = part_rng(cfg, "heldout")
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


def source_mc(cfg: WorldConfig, people: list[Person]) -> dict[str, list[MCItem]]:
    """The three forgetting formats over the source facts, as the Gauntlet adapters read them back."""
    rng = part_rng(cfg, "mc")
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
