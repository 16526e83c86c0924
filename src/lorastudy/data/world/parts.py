"""The shapes of the mini world's code tasks: the parts a task is composed of (int operations, list
map × filter × aggregate, str transform × slice) and every combination of them. Pure tables, no randomness."""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

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


def combos(family: str) -> list[Combo]:
    """Every task shape of a family with at least two parts (these become train/test tasks)."""
    if family == "int":
        return [(a,) for a in INT_PARTS] + list(itertools.product(INT_PARTS, INT_PARTS))
    if family == "str":
        seqs = [(t,) for t in STR_TRANSFORM_PARTS] + list(itertools.permutations(STR_TRANSFORM_PARTS, 2))
        return [(*t, s) for t in seqs for s in STR_SLICE_PARTS]
    combos = itertools.product([None, *LIST_MAP_PARTS], [None, *LIST_FILTER_PARTS], LIST_AGG_PARTS)
    return [c for c in combos if n_parts(c) >= 2]


@functools.cache
def combo_counts() -> dict[str, int]:
    return {f: len(combos(f)) for f in FAMILIES}


def single_parts() -> list[Combo]:
    """One function per part: what pre-training shows of the code families."""
    return ([(p,) for p in INT_PARTS + STR_TRANSFORM_PARTS + STR_SLICE_PARTS] + [(m, None, ALL) for m in LIST_MAP_PARTS]
            + [(None, f, ALL) for f in LIST_FILTER_PARTS] + [(None, None, a) for a in LIST_AGG_PARTS])


def parts_of(combo: Combo) -> tuple[Part, ...]:
    return tuple(p for p in combo if p is not None and p is not ALL)


def n_parts(combo: Combo) -> int:
    return len(parts_of(combo))


def family_of(combo: Combo) -> str:
    return next(p for p in combo if p is not None).family
