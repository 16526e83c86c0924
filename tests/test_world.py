"""The mini world: deterministic files in the real layouts, disjoint splits, correct math answers and code
tasks, and multiple-choice items that are true to the world's facts."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lorastudy.data.adapters import load_records
from lorastudy.data.records import CodeTask, MathProblem
from lorastudy.data.world import MINI, TINY, VALUES, MiniWorld, WorldConfig, arithmetic_facts, generate_world

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)\.")
FAMILIES = ("int", "list", "str")


@pytest.fixture(scope="module")
def tiny() -> MiniWorld:
    return generate_world(TINY)


@pytest.fixture(scope="module")
def mini() -> MiniWorld:
    return generate_world(MINI)


@pytest.fixture(params=["tiny", "mini"])
def world(request: pytest.FixtureRequest) -> MiniWorld:
    return request.getfixturevalue(request.param)


def program(task: CodeTask, body: str) -> str:
    return task.prompt + body + task.test + f"\ncheck({task.entry_point})\n"


def passes(task: CodeTask, body: str) -> bool:
    return subprocess.run([sys.executable, "-c", program(task, body)], capture_output=True, timeout=10).returncode == 0


def family(task: CodeTask) -> str:
    return task.entry_point.split("_")[0]


# ---------------------------------------------------------------- config
def test_presets_and_overrides() -> None:
    assert WorldConfig() == MINI and WorldConfig(**{}) == MINI
    small = WorldConfig(preset="tiny", n_mc=10)
    assert small.n_mc == 10 and small.n_people == TINY.n_people and small != TINY
    assert MINI.n_people > TINY.n_people and MINI.fact_repetitions > TINY.fact_repetitions


@pytest.mark.parametrize("overrides, field", [
    ({"n_people": 0}, "n_people"), ({"n_templates": 5}, "n_templates"), ({"n_mc": 10**6}, "n_mc"),
    ({"preset": "huge"}, "preset"), ({"n_attributes": 9}, "n_attributes"), ({"n_code_train": 10**5}, "n_code_train"),
    ({"preset": "tiny", "n_source_heldout": 17}, "n_source_heldout"),
    ({"n_people": 50, "n_first_names": 5, "n_last_names": 5}, "n_people"), ({"max_math_steps": 4}, "max_math_steps"),
])
def test_bad_sizes_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"WorldConfig\.{field}="):
        WorldConfig(**overrides)


def test_too_many_math_problems_for_the_ranges() -> None:
    with pytest.raises(ValueError, match="n_math_test"):
        generate_world(WorldConfig(preset="tiny", max_add_operand=5, max_mul_operand=2, max_math_steps=1,
                                   n_math_test=10_000))


# ---------------------------------------------------------------- files
def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a = generate_world(TINY).write(tmp_path / "a")
    b = generate_world(WorldConfig(preset="tiny")).write(tmp_path / "b")
    c = generate_world(WorldConfig(preset="tiny", seed=1)).write(tmp_path / "c")
    assert set(a) == set(b) == set(c)
    for part in a:
        assert Path(a[part]).read_bytes() == Path(b[part]).read_bytes(), part
        if part != "world":
            assert Path(a[part]).read_bytes() != Path(c[part]).read_bytes(), part


def test_files_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    """Another interpreter with another PYTHONHASHSEED writes the same bytes (no set order leaks into output)."""
    import os

    code = ("import sys; from lorastudy.data.world import TINY, generate_world; "
            "generate_world(TINY).write(sys.argv[1])")
    for folder, seed in (("a", "1"), ("b", "2")):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / folder)], check=True, timeout=60,
                       env={**os.environ, "PYTHONHASHSEED": seed})
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(names) == 14
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)


def test_files_read_back_through_the_real_adapters(tiny: MiniWorld, tmp_path: Path) -> None:
    paths = tiny.write(tmp_path)
    assert set(paths) == {"pretrain", "source_heldout", "math_cpt", "code_cpt", "math_train", "math_test", "math_val",
                          "code_train", "code_test", "code_val", "source_completion", "source_question",
                          "source_fillin", "world"}
    assert load_records("text", paths["pretrain"]) == tiny.pretrain
    assert load_records("text", paths["source_heldout"]) == tiny.source_heldout
    assert load_records("text", paths["math_cpt"]) == tiny.math_cpt
    assert load_records("text", paths["code_cpt"]) == tiny.code_cpt
    assert load_records("gsm8k", paths["math_test"]) == tiny.math_test
    assert [(p.prompt, p.response) for p in load_records("gsm8k_train", paths["math_train"])] == [
        (p.question, p.answer) for p in tiny.math_train]
    assert load_records("humaneval", paths["code_test"]) == tiny.code_test
    assert load_records("humaneval", paths["code_train"]) == tiny.code_train
    assert load_records("humaneval", paths["code_val"]) == tiny.code_val
    assert load_records("gsm8k", paths["math_val"]) == tiny.math_val
    assert load_records("hellaswag", paths["source_completion"]) == tiny.source_mc["completion"]
    assert load_records("arc_challenge", paths["source_question"]) == tiny.source_mc["question"]
    assert load_records("winogrande", paths["source_fillin"]) == tiny.source_mc["fill_in"]
    meta = json.loads(Path(paths["world"]).read_text())
    assert meta["config"]["n_people"] == TINY.n_people and meta["counts"]["code_test"] == TINY.n_code_test


def first_row(path: Path) -> dict:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return json.loads(fh.readline())


@pytest.mark.parametrize("part, real", [
    ("source_completion", "hellaswag/hellaswag_small.jsonl"), ("source_question", "arc_challenge/arc_challenge.jsonl"),
    ("source_fillin", "winogrande/winogrande.jsonl"), ("math_test", "gsm8k/test.jsonl"),
    ("code_test", "humaneval/HumanEval.jsonl.gz"),
])
def test_files_mirror_the_real_layouts(tiny: MiniWorld, tmp_path: Path, shared_data: Path, part: str,
                                       real: str) -> None:
    ours, theirs = first_row(Path(tiny.write(tmp_path)[part])), first_row(shared_data / real)
    assert list(ours) == list(theirs)
    assert {k: type(v) for k, v in ours.items()} == {k: type(v) for k, v in theirs.items()}
    texts = ours.get("choices", []) + [ours.get("continuation", "x")] + ours.get("context_options", [])
    assert not any(t.startswith(" ") or t.endswith(" ") for t in texts)
    if part == "source_question":
        assert ours["query"].startswith("Question: ") and ours["query"].endswith("?")


# ---------------------------------------------------------------- splits
def equations(answer: str) -> tuple[str, ...]:
    return tuple(m.group(0) for m in EQUATION.finditer(answer))


def test_math_splits_are_disjoint(world: MiniWorld) -> None:
    train_q = {p.question for p in world.math_train}
    assert len({p.question for p in world.math_test}) == len(world.math_test)
    assert not train_q & {p.question for p in world.math_test}
    # held-out value combinations: no test problem's equation chain occurs in training
    assert not {equations(p.answer) for p in world.math_train} & {equations(p.answer) for p in world.math_test}
    corpus = "\x00".join(d.text for d in world.pretrain + world.math_cpt)
    assert not [p.question for p in world.math_test if p.question in corpus]


def test_math_validation_is_like_test_but_apart_from_everything(world: MiniWorld) -> None:
    assert len(world.math_val) == world.config.n_math_val
    val_chains = {equations(p.answer) for p in world.math_val}
    assert not val_chains & {equations(p.answer) for p in world.math_train}
    assert not val_chains & {equations(p.answer) for p in world.math_test}  # no shared value combination
    corpus = "\x00".join(d.text for d in world.pretrain + world.math_cpt)
    assert not [p.question for p in world.math_val if p.question in corpus]


def test_code_test_tasks_are_unseen_combinations_of_seen_parts(world: MiniWorld) -> None:
    train_names = {t.entry_point for t in world.code_train}
    corpus = "\x00".join(d.text for d in world.pretrain + world.code_cpt)
    train_bodies = {t.canonical_solution for t in world.code_train}
    train_lines = {line for t in world.code_train for line in t.canonical_solution.splitlines()}
    train_clauses = {c for t in world.code_train if family(t) == "list" for c in list_clauses(t.prompt)}
    assert len(world.code_val) == world.config.n_code_val
    assert not {t.entry_point for t in world.code_val} & {t.entry_point for t in world.code_test}
    for t in world.code_test + world.code_val:
        assert t.entry_point not in train_names and f"{t.entry_point}(" not in corpus
        assert t.prompt not in corpus and t.canonical_solution not in train_bodies | {""}
        assert t.canonical_solution not in corpus
        if family(t) == "list":
            assert set(list_clauses(t.prompt)) <= train_clauses, t.prompt
        else:
            assert set(t.canonical_solution.splitlines()) <= train_lines, t.prompt
            assert len(t.canonical_solution.splitlines()) >= 3  # at least two parts and the return


def list_clauses(prompt: str) -> list[str]:
    m = re.search(r"Return the (\w+) of the numbers in xs( that are [^,.]+)?(, each [^.]+)?\.", prompt)
    assert m, prompt
    return [g for g in m.groups() if g]


def test_families_have_fair_shares(world: MiniWorld) -> None:
    for tasks in (world.code_train, world.code_test, world.code_val):
        counts = Counter(family(t) for t in tasks)
        assert set(counts) == set(FAMILIES) and max(counts.values()) - min(counts.values()) <= 1


def test_source_heldout_sentences_never_occur_in_pretraining(world: MiniWorld) -> None:
    corpus = "\x00".join(d.text for d in world.pretrain)
    lines = [line for d in world.source_heldout for line in d.text.split("\n")]
    assert len(lines) == world.config.n_source_heldout * world.config.n_attributes
    assert not [line for line in lines if line in corpus]


# ---------------------------------------------------------------- math answers
def check_answer(p: MathProblem, facts: set[tuple[int, str, int, int]], max_steps: int) -> None:
    *lines, last = p.answer.split("\n")
    assert re.fullmatch(r"#### \d+", last) and p.target == last[5:]
    eqs = [(int(a), op, int(b), int(c)) for a, op, b, c in EQUATION.findall(p.answer)]
    assert 1 <= len(eqs) <= max_steps and len(lines) == len(eqs)
    running = int(re.match(r"\w+ has (\d+) ", p.question).group(1))
    for k, (a, op, b, c) in enumerate(eqs):
        assert c == {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] and (op != "/" or a % b == 0), p
        assert (a, op, b, c) in facts, f"{a} {op} {b} is outside the pre-trained arithmetic"
        if op == "*":
            assert eqs[k + 1][2] == c  # the bags' content is what gets added next
        else:
            assert a == running
            running = c
    assert int(p.target) == running == eqs[-1][3]


def test_math_answers_are_correct_and_inside_the_pretrained_arithmetic(world: MiniWorld) -> None:
    facts = set(arithmetic_facts(world.config))
    for p in world.math_train + world.math_test:
        check_answer(p, facts, world.config.max_math_steps)
    pretrained = {(int(a), op, int(b), int(c)) for d in world.pretrain for a, op, b, c in EQUATION.findall(d.text)}
    assert facts <= pretrained
    steps = Counter(len(equations(p.answer)) for p in world.math_test)
    assert set(steps) == set(range(1, world.config.max_math_steps + 1))


# ---------------------------------------------------------------- code tasks
def test_tiny_code_tasks_pass_their_own_tests_and_reject_a_wrong_body(tiny: MiniWorld) -> None:
    tasks = tiny.code_train + tiny.code_test
    for t in tasks:
        assert t.test.startswith("\n\ndef check(candidate):\n") and t.test.count("assert candidate(") == 4
    assert not [t.task_id for t in tasks if not passes(t, t.canonical_solution)]
    wrong = [passes(t, "    return 0\n") for t in tiny.code_test + tiny.code_train[:30]]
    assert sum(wrong) <= 0.1 * len(wrong)


RUN_ALL = """
import json, sys
results = []
for source in json.load(sys.stdin):
    try:
        exec(source, {})
        results.append(True)
    except Exception:
        results.append(False)
print(json.dumps(results))
"""


def run_batch(programs: list[str]) -> list[bool]:
    done = subprocess.run([sys.executable, "-c", RUN_ALL], input=json.dumps(programs), capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_mini_code_tasks_pass_their_own_tests_in_one_process(mini: MiniWorld) -> None:
    tasks = mini.code_train + mini.code_test
    ok = run_batch([program(t, t.canonical_solution) for t in tasks])
    assert all(ok), [t.task_id for t, good in zip(tasks, ok) if not good][:5]
    wrong = run_batch([program(t, "    return 0\n") for t in tasks])
    assert sum(wrong) == 0


def test_prompts_are_humaneval_shaped(world: MiniWorld) -> None:
    for i, t in enumerate(world.code_test):
        assert t.task_id == f"Mini/{i}"
        assert re.fullmatch(rf'def {t.entry_point}\((x|xs|s)\):\n    """Return [^"\n]+\."""\n', t.prompt)
        assert re.fullmatch(r"(    \S[^\n]*\n)+", t.canonical_solution)
        assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", t.entry_point)


# ---------------------------------------------------------------- multiple choice
def test_mc_items_are_true_to_the_facts(world: MiniWorld) -> None:
    facts = {p.name: p.facts for p in world.people}
    n = world.config.n_mc
    for kind in ("completion", "question"):
        items = world.source_mc[kind]
        assert len(items) == n and len({(i.meta["person"], i.meta["attribute"]) for i in items}) == n
        for item in items:
            person, attr, values = item.meta["person"], item.meta["attribute"], item.meta["values"]
            assert len(item.options) == 4 and len({ctx for ctx, _ in item.options}) == 1
            assert person in item.options[0][0] and len(set(values)) == 4
            assert values[item.gold] == facts[person][attr]
            assert all(v != facts[person][attr] and v in VALUES[attr] for k, v in enumerate(values) if k != item.gold)
            assert all(cont.startswith(" " + v) for (_, cont), v in zip(item.options, values))
        if n >= 40:
            assert set(Counter(i.gold for i in items)) == {0, 1, 2, 3}
    for item in world.source_mc["fill_in"]:
        (ctx0, cont0), (ctx1, cont1) = item.options
        people, attr, value = item.meta["people"], item.meta["attribute"], item.meta["value"]
        assert cont0 == cont1 and re.search(rf" {value}\b", cont0)
        assert ctx0.endswith("\n" + people[0]) and ctx1.endswith("\n" + people[1])
        assert ctx0.split("\n")[0] == ctx1.split("\n")[0]
        assert facts[people[item.gold]][attr] == value and facts[people[1 - item.gold]][attr] != value


# ---------------------------------------------------------------- helpers for training
def test_ift_pairs_use_the_evaluation_prompts(tiny: MiniWorld) -> None:
    math, code = tiny.ift_pairs("math"), tiny.ift_pairs("code")
    p, t = tiny.math_train[0], tiny.code_train[0]
    assert (math[0].prompt, math[0].response) == (f"Question: {p.question}\nAnswer:", " " + p.answer)
    assert (code[0].prompt, code[0].response) == (t.prompt, t.canonical_solution)
    assert len(math) == len(tiny.math_train) and len(code) == len(tiny.code_train)
    with pytest.raises(ValueError, match="unknown domain"):
        tiny.ift_pairs("poetry")


def test_mini_generation_is_fast() -> None:
    start = time.perf_counter()
    generate_world(MINI)
    seconds = time.perf_counter() - start
    print(f"\nmini world generated in {seconds:.2f} s")
    assert seconds < 15  # about 1 s alone; generous for a shared 2-core machine


def test_every_token_fine_tuning_reads_occurs_in_pretraining(world: MiniWorld) -> None:
    """No vocabulary confound: an embedding row pre-training never trained would favour full FT over LoRA."""
    assert world.unseen_tokens() == {}


def test_an_unseen_word_is_reported(tiny: MiniWorld) -> None:
    import dataclasses

    from lorastudy.data.records import TextDoc

    odd = dataclasses.replace(tiny, math_cpt=[*tiny.math_cpt, TextDoc("Zoe juggles 3 plums.", "text/x")])
    assert dict(odd.unseen_tokens()) == {"math_cpt": {" juggles": 1}}


def test_world_pieces_are_the_tokenizers_pieces(tiny: MiniWorld) -> None:
    from collections import Counter

    from lorastudy.data.tokenizer import pre_tokenizer
    from lorastudy.data.world import pieces

    split = pre_tokenizer()
    for doc in tiny.pretrain[:200] + tiny.code_cpt[:50] + tiny.math_cpt[:50]:
        assert pieces([doc.text]) == Counter(p for p, _ in split.pre_tokenize_str(doc.text))
