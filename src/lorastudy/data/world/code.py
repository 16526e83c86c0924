"""The code domain of the mini world: HumanEval-format tasks composed of small parts (int operations, list
map × filter × aggregate, str transform × slice) whose docstring words map to code, and the generic code
that pre-training shows (single parts with usage asserts)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from lorastudy.data.records import CodeTask
from lorastudy.data.world.parts import (
    ARG,
    FAMILIES,
    STR_LETTERS,
    Combo,
    combos,
    family_of,
    n_parts,
    parts_of,
    single_parts,
)
from lorastudy.data.world.settings import WorldConfig, part_rng


def _render(combo: Combo) -> tuple[str, str, str]:
    """(entry point, prompt, canonical solution); identifiers are the parts' words joined by `_`."""
    family, arg = family_of(combo), ARG[family_of(combo)]
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
        x = _sample_input(rng, family_of(b.combo))
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
    cases = _cases(rng, fn, family_of(combo))
    return None if cases is None else _Built(combo, name, prompt, solution, fn, cases)


def _task(b: _Built, task_id: str) -> CodeTask:
    asserts = "".join(f"    assert candidate({x!r}) == {y!r}\n" for x, y in b.cases)
    return CodeTask(task_id, b.prompt, b.solution, "\n\ndef check(candidate):\n" + asserts, b.name)


def _usage(b: _Built, cases: list[tuple[Any, Any]]) -> str:
    return "".join(f"assert {b.name}({x!r}) == {y!r}\n" for x, y in cases)


def code_tasks(cfg: WorldConfig) -> tuple[list[CodeTask], list[CodeTask], list[CodeTask], list[str], list[str]]:
    """Per family: test and validation = unseen combinations whose parts all occur in train (disjoint, and
    neither in CPT); pre-training sees single parts, and a few documented compositions that are in neither
    train, test nor validation (so that the base knows the layout and composing, as Llama-2-7B knows Python)."""
    rng = part_rng(cfg, "code")
    train: list[_Built] = []
    test: list[_Built] = []
    val: list[_Built] = []
    rest: list[_Built] = []
    for k, family in enumerate(FAMILIES):
        built = [b for b in (_build(rng, c) for c in combos(family)) if b is not None]
        rng.shuffle(built)
        n_train = cfg.n_code_train // 3 + (k < cfg.n_code_train % 3)
        n_test = cfg.n_code_test // 3 + (k < cfg.n_code_test % 3)
        n_val = cfg.n_code_val // 3 + (k < cfg.n_code_val % 3)
        fam_train, pool = built[:n_train], built[n_train:]
        seen, bodies = {p for b in fam_train for p in parts_of(b.combo)}, "\0".join(b.solution for b in fam_train)
        held = [b for b in pool if n_parts(b.combo) >= 2 and set(parts_of(b.combo)) <= seen
                and b.solution not in bodies][:n_test + n_val]  # not even the tail of a longer training body
        if len(held) < n_test + n_val:
            raise ValueError(f"WorldConfig.n_code_test={cfg.n_code_test} + n_code_val={cfg.n_code_val}: only "
                             f"{len(held)} unseen {family} combinations of seen parts are left")
        train += fam_train
        test += held[:n_test]
        val += held[n_test:]
        chosen = {id(b) for b in held}
        rest += [b for b in pool if id(b) not in chosen and not any(t.solution in b.solution for t in held)]
    rng.shuffle(train)
    rng.shuffle(test)
    rng.shuffle(val)
    singles = {c: b for c in single_parts() if (b := _build(rng, c)) is not None}
    test_combos = {b.combo for b in test + val}
    composable = [b for b in train + rest if family_of(b.combo) != "list" and b.combo not in test_combos]
    code_docs = [_generic_code_doc(rng, singles, composable, k) for k in range(cfg.n_code_docs)]
    composed = [b.prompt + b.solution for b in rng.sample(rest, min(cfg.n_code_composed, len(rest)))]
    cpt_pool = train + rest
    # CPT: documented functions in the evaluated layout, bodies a fair share of the tokens (no usage asserts), one
    # to three per document; the document ends with a body, so the end-of-sequence token follows one, as in IFT
    code_cpt = ["\n\n".join(b.prompt + b.solution for b in rng.sample(cpt_pool, rng.randint(1, 3)))
                for _ in range(cfg.n_code_cpt)]
    return ([_task(b, f"MiniTrain/{i}") for i, b in enumerate(train)],
            [_task(b, f"Mini/{i}") for i, b in enumerate(test)],
            [_task(b, f"MiniVal/{i}") for i, b in enumerate(val)], code_cpt, code_docs + composed)


def _generic_code_doc(rng: random.Random, singles: dict[Combo, _Built], composable: list[_Built], k: int) -> str:
    """Pre-training code: 1-3 single-part functions with usage asserts; half the time a composed call of a
    non-test int/str combination (so ', then' and every identifier piece occur, never a test function).
    The first documents show each single part once, so every part's words occur whatever the sizes."""
    compose = rng.choice(composable) if rng.random() < 0.5 else None
    if k < len(singles):
        compose, funcs = None, [list(singles.values())[k]]
    elif compose is not None:
        funcs = [singles[(p,)] for p in compose.combo]
    else:
        funcs = rng.sample(list(singles.values()), rng.randint(1, 3))
    text = "\n\n".join(b.prompt + b.solution for b in funcs) + "\n\n"
    text += "".join(_usage(b, _examples(rng, b, 2)) for b in funcs)
    if compose is not None:
        arg = ARG[family_of(compose.combo)]
        x, y = rng.choice(compose.cases)
        calls = "".join(f"{arg} = {b.name}({arg})\n" for b in funcs)
        text += ("\n# " + ", then ".join(p.phrase for p in compose.combo) + f"\n{arg} = {x!r}\n{calls}"
                 f"assert {arg} == {y!r}\n")
    return text
