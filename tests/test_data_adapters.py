"""Every offline data file loads through its adapter with the record count and checksum its SOURCE.md gives,
and hub-layout rows (written locally; the hub is never contacted) convert with the same code."""
from __future__ import annotations

import ast
import bz2
import collections
import gzip
import hashlib
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lorastudy.data.adapters import ADAPTERS, MBPP_SPLITS, load_records, read_rows
from lorastudy.data.records import CodeTask, InstructionPair, MathProblem, MCItem, TextDoc
from lorastudy.io import DataFileError

# (file under shared/data, adapter, records, record type)
FILES = [
    ("gsm8k/train.jsonl", "gsm8k_train", 7473, InstructionPair),
    ("gsm8k/test.jsonl", "gsm8k", 1319, MathProblem),
    ("humaneval/HumanEval.jsonl.gz", "humaneval", 164, CodeTask),
    ("mbpp/mbpp.jsonl", "mbpp", 500, CodeTask),
    ("code_instruct_gpteacher/codegen-instruct.json", "gpteacher_code", 4535, InstructionPair),
    ("math_test/test.jsonl", "math", 5000, InstructionPair),
    ("math500/test.jsonl", "math", 500, InstructionPair),
    ("metamath_gsm8k_backward/GSM8K_Backward.jsonl", "metamath_backward", 1270, InstructionPair),
    ("hellaswag/hellaswag_val_full.txt.bz2", "hellaswag", 10042, MCItem),
    ("hellaswag/hellaswag_small.jsonl", "hellaswag", 4, MCItem),
    ("arc_challenge/arc_challenge.jsonl", "arc_challenge", 1172, MCItem),
    ("winogrande/winogrande.jsonl", "winogrande", 1267, MCItem),
]
MBPP_UPSTREAM_FAILURES: set[str] = set()  # every MBPP test-split reference passes its converted tests


def source_table(folder: Path) -> dict[str, tuple[int, int, str]]:
    """file -> (records, bytes, sha256) from the table in a folder's SOURCE.md."""
    rows = re.findall(r"^\| (\S+) \| (\d+)[^|]* \| (\d+) \| ([0-9a-f]{64}) \|$",
                      (folder / "SOURCE.md").read_text(encoding="utf-8"), re.M)
    return {name: (int(n), int(size), sha) for name, n, size, sha in rows}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mbpp_tasks(shared_data: Path) -> list[CodeTask]:
    return load_records("mbpp", str(shared_data / "mbpp/mbpp.jsonl"))


def program(task: CodeTask, completion: str) -> str:
    """The HumanEval harness's program: prompt + completion + test + check(entry_point)."""
    return f"{task.prompt}{completion}\n{task.test}\ncheck({task.entry_point})\n"


# ---------------------------------------------------------------- every shared file
def test_every_data_file_is_covered_and_matches_its_checksum(shared_data: Path) -> None:
    listed = {}
    for folder in sorted(p for p in shared_data.iterdir() if p.is_dir()):
        table = source_table(folder)
        assert table, f"{folder}/SOURCE.md has no file table"
        files = {p.name for p in folder.iterdir() if p.name != "SOURCE.md"}
        assert files == set(table), folder
        for name, (_, size, digest) in table.items():
            path = folder / name
            assert path.stat().st_size == size, path
            assert sha256(path) == digest, path
            listed[f"{folder.name}/{name}"] = table[name][0]
    assert set(listed) == {f for f, *_ in FILES}
    # SOURCE.md's counts are rows; MBPP's adapter yields the 500-task test split of its 974 rows
    assert {f: n for f, _, n, _ in FILES} == {**listed, "mbpp/mbpp.jsonl": 500}
    assert listed["mbpp/mbpp.jsonl"] == 974


@pytest.mark.parametrize("rel, adapter, count, kind", FILES, ids=[f[0] for f in FILES])
def test_file_loads_with_its_record_count(shared_data: Path, rel: str, adapter: str, count: int, kind: type) -> None:
    records = load_records(adapter, str(shared_data / rel))
    assert len(records) == count
    assert all(isinstance(r, kind) for r in records)
    ids = [r.task_id if isinstance(r, CodeTask) else r.id for r in records]
    assert len(set(ids)) == count and all(ids)
    assert load_records(adapter, str(shared_data / rel), limit=3) == records[:3]


def test_raw_row_counts(shared_data: Path) -> None:
    assert len(read_rows(str(shared_data / "mbpp/mbpp.jsonl"))) == 974
    assert len(read_rows(str(shared_data / "hellaswag/hellaswag_val_full.txt.bz2"))) == 60252
    assert len(read_rows(str(shared_data / "gsm8k/test.jsonl"), limit=5)) == 5


# ---------------------------------------------------------------- math
def test_every_gsm8k_answer_has_a_numeric_target(shared_data: Path) -> None:
    test = load_records("gsm8k", str(shared_data / "gsm8k/test.jsonl"))
    train = load_records("gsm8k_train", str(shared_data / "gsm8k/train.jsonl"))
    problems = test + [MathProblem(p.prompt, p.response, p.id) for p in train]
    assert len(problems) == 7473 + 1319
    for p in problems:
        float(p.target)
    assert test[0].target == "18" and train[0].response.endswith("#### 72")


def test_math_and_metamath_backward(shared_data: Path) -> None:
    math500 = load_records("math", str(shared_data / "math500/test.jsonl"))
    assert math500[0].id == "test/precalculus/807.json" and "\\boxed" in math500[0].response
    full = load_records("math", str(shared_data / "math_test/test.jsonl"))
    assert full[4999].id == "math/4999" and all("\\boxed" in p.response for p in full)
    rows = read_rows(str(shared_data / "metamath_gsm8k_backward/GSM8K_Backward.jsonl"))
    assert collections.Counter("output" in r for r in rows) == {True: 657, False: 613}
    pairs = load_records("metamath_backward", str(shared_data / "metamath_gsm8k_backward/GSM8K_Backward.jsonl"))
    assert all(p.response and p.prompt.endswith("value of unknown variable x?") for p in pairs)


def test_gpteacher_joins_non_empty_input_after_a_blank_line(shared_data: Path) -> None:
    path = str(shared_data / "code_instruct_gpteacher/codegen-instruct.json")
    rows, pairs = read_rows(path), load_records("gpteacher_code", path)
    assert sum(bool(r["input"].strip()) for r in rows) == 3580
    for r, p in zip(rows, pairs):
        expected = f"{r['instruction']}\n\n{r['input']}" if r["input"].strip() else r["instruction"]
        assert (p.prompt, p.response) == (expected, r["response"])


# ---------------------------------------------------------------- code
def test_humaneval_fields(shared_data: Path) -> None:
    tasks = load_records("humaneval", str(shared_data / "humaneval/HumanEval.jsonl.gz"))
    assert [t.task_id for t in tasks] == [f"HumanEval/{i}" for i in range(164)]
    assert tasks[0].entry_point == "has_close_elements" and "def check(candidate)" in tasks[0].test


def test_mbpp_splits_partition_the_file(shared_data: Path) -> None:
    path = str(shared_data / "mbpp/mbpp.jsonl")
    sizes = {s: len(load_records("mbpp", path, split=s)) for s in MBPP_SPLITS}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    assert [t.task_id for t in load_records("mbpp", path, task_ids=[2, 3, 4])] == ["MBPP/2", "MBPP/3", "MBPP/4"]
    with pytest.raises(ValueError, match="unknown MBPP split"):
        load_records("mbpp", path, split="dev")


def test_mbpp_prompt_is_a_docstringed_stub_of_the_reference(shared_data: Path, mbpp_tasks: list[CodeTask]) -> None:
    rows = {f"MBPP/{r['task_id']}": r for r in read_rows(str(shared_data / "mbpp/mbpp.jsonl"))}
    for t in mbpp_tasks:
        row = rows[t.task_id]
        assert "\r" not in t.prompt + t.canonical_solution + t.test
        fn = next(n for n in ast.parse(t.prompt).body if isinstance(n, ast.FunctionDef) and n.name == t.entry_point)
        assert row["text"].strip() in ast.get_docstring(fn, clean=False)
        code = row["code"].replace("\r\n", "\n").replace("\r", "\n")
        if t.entry_point in ("check_", "candidate_"):  # renamed: the harness owns check(candidate)
            code = re.sub(rf"\b{t.entry_point[:-1]}\b", t.entry_point, code)
        without_doc = re.sub(r'[ \t]*"""\n.*?\n[ \t]*"""\n', "", t.prompt, count=1, flags=re.S)
        assert (without_doc + t.canonical_solution).rstrip("\n") == code.rstrip("\n"), t.task_id
        assert len(re.findall(r"candidate\s*\(", t.test)) >= len(row["test_list"])
        assert re.search(rf"(?<![\w.]){t.entry_point}\s*\(", t.test) is None, t.task_id
    assert {t.task_id for t in mbpp_tasks if t.entry_point == "check_"} == {"MBPP/56", "MBPP/349"}


def test_mbpp_references_pass_their_converted_tests(mbpp_tasks: list[CodeTask]) -> None:
    failed = set()
    for t in mbpp_tasks:
        try:
            done = subprocess.run([sys.executable, "-c", program(t, t.canonical_solution)],
                                  capture_output=True, timeout=30)
            ok = done.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if not ok:
            failed.add(t.task_id)
    assert failed == MBPP_UPSTREAM_FAILURES


def test_mbpp_tests_reject_a_wrong_solution(mbpp_tasks: list[CodeTask]) -> None:
    for t in mbpp_tasks[:5]:
        done = subprocess.run([sys.executable, "-c", program(t, "    return None\n")], capture_output=True, timeout=30)
        assert done.returncode != 0, t.task_id


# ---------------------------------------------------------------- multiple choice
def test_hellaswag_text_layout(shared_data: Path) -> None:
    items = load_records("hellaswag", str(shared_data / "hellaswag/hellaswag_val_full.txt.bz2"))
    assert collections.Counter(i.gold for i in items) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}
    first = items[0]
    assert first.gold == 3 and first.meta == {"task": "hellaswag", "partial": False}
    assert first.options[3] == ("Roof shingle removal: A man is sitting on a roof. he",
                                " starts pulling up roofing on a roof.")
    for item in items:
        assert len(item.options) == 4 and len({ctx for ctx, _ in item.options}) == 1
        assert all(cont.startswith(" ") and "  " not in ctx + cont for ctx, cont in item.options)
    assert not any(re.search(r"\[.*?\]", ctx + cont) for i in items for ctx, cont in i.options)


def test_gauntlet_layouts(shared_data: Path) -> None:
    small = load_records("hellaswag", str(shared_data / "hellaswag/hellaswag_small.jsonl"))
    assert [i.gold for i in small] == [3, 3, 3, 3]
    assert small[0].options[3][1] == " , the man continues removing the snow on his car."
    arc = load_records("arc_challenge", str(shared_data / "arc_challenge/arc_challenge.jsonl"))
    assert all(len(i.options) == 4 for i in arc) and arc[0].gold == 2
    assert arc[0].options[2] == ("Question: An astronomer observes that a planet rotates faster after a meteorite "
                                 "impact. Which is the most likely effect of this increase in rotation?\nAnswer:",
                                 " Planetary days will become shorter.")
    wino = load_records("winogrande", str(shared_data / "winogrande/winogrande.jsonl"))
    assert collections.Counter(i.gold for i in wino) == {0: 628, 1: 639}
    assert all(i.meta == {"task": "winogrande", "partial": True} for i in wino)
    for item in wino:
        (ctx0, cont0), (ctx1, cont1) = item.options
        assert cont0 == cont1 and cont0.startswith(" ") and not cont0.startswith("  ") and ctx0 != ctx1


# ---------------------------------------------------------------- hub layouts, written locally
HUB_HELLASWAG = [
    {"activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window of "
     "a car, and a woman wearing winter clothes smiles.", "ctx_b": "then", "label": "3",
     "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift, while two men "
                 "supporting the head of the person wearing winter clothes snow as the we girls sled.",
                 ", the man puts on a christmas coat, knitted with netting.",
                 ", the man continues removing the snow on his car."]},
    {"activity_label": "Home and Garden", "ctx_a": "[header] How to grow tomatoes [title] Pick a sunny spot.",
     "ctx_b": "", "label": "0", "endings": ["Water  them daily.", "Eat them [substeps] now."]},
]
HUB_ARC = [{"question": "An astronomer observes that a planet rotates faster after a meteorite impact. Which is the "
            "most likely effect of this increase in rotation?", "answerKey": "C",
            "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer.",
                                 "Planetary days will become shorter.", "Planetary gravity will become stronger."],
                        "label": ["A", "B", "C", "D"]}},
           {"question": "2+2?", "answerKey": "2", "choices": {"text": ["3", "4", "5"], "label": ["1", "2", "3"]}}]
HUB_WINOGRANDE = [{"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                   "option1": "Sarah", "option2": "Maria", "answer": "2"}]
HUB_MBPP = [{"task_id": 2, "prompt": "Write a function to add two numbers.", "code": "def add(a, b):\r\n  return a + b",
             "test_imports": ["import math"], "test_list": ["assert math.isclose(add(1, 2), 3)"]}]


def write_rows(path: Path, rows: list[dict]) -> str:
    """Save hub-shaped rows locally, as the hub would hand them over, in the file type `path` names."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_hub_layouts_convert_like_lm_eval(tmp_path: Path, shared_data: Path, suffix: str) -> None:
    hs = load_records("hellaswag", write_rows(tmp_path / f"hs{suffix}", HUB_HELLASWAG))
    gauntlet = load_records("hellaswag", str(shared_data / "hellaswag/hellaswag_small.jsonl"))
    assert hs[0] == gauntlet[0]
    assert hs[1].options == (("Home and Garden: How to grow tomatoes. Pick a sunny spot.", " Water them daily."),
                             ("Home and Garden: How to grow tomatoes. Pick a sunny spot.", " Eat them now."))
    arc = load_records("arc_challenge", write_rows(tmp_path / f"arc{suffix}", HUB_ARC))
    assert arc[0] == load_records("arc_challenge", str(shared_data / "arc_challenge/arc_challenge.jsonl"))[0]
    assert arc[1].gold == 1 and arc[1].options[1] == ("Question: 2+2?\nAnswer:", " 4")
    wino = load_records("winogrande", write_rows(tmp_path / f"wino{suffix}", HUB_WINOGRANDE))
    assert wino[0] == load_records("winogrande", str(shared_data / "winogrande/winogrande.jsonl"))[0]
    assert wino[0].options[1] == ("Sarah was a much better surgeon than Maria so Maria",
                                  " always got the easier cases.")
    (task,) = load_records("mbpp", write_rows(tmp_path / f"mbpp{suffix}", HUB_MBPP), task_ids=[2])
    assert task.prompt.startswith("def add(a, b):\n  \"\"\"\n  Write a function to add two numbers.\n")
    assert task.test.startswith("import math\n") and "math.isclose(candidate(1, 2), 3)" in task.test
    assert subprocess.run([sys.executable, "-c", program(task, task.canonical_solution)], timeout=30).returncode == 0


def test_unlabelled_winogrande_is_refused(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "wino.jsonl", [{**HUB_WINOGRANDE[0], "answer": ""}])
    with pytest.raises(ValueError, match="unlabelled"):
        load_records("winogrande", path)


@pytest.mark.parametrize("adapter, row, expected", [
    ("metamathqa", {"query": "q", "response": "r"}, InstructionPair("q", "r", "metamathqa/0")),
    ("magicoder", {"instruction": "i", "response": "r"}, InstructionPair("i", "r", "magicoder/0")),
    ("starcoder_python", {"content": "x = 1\n"}, TextDoc("x = 1\n", "starcoder_python/0")),
    ("openwebmath", {"text": "$x^2$"}, TextDoc("$x^2$", "openwebmath/0")),
    ("text", {"text": "hello"}, TextDoc("hello", "text/0")),
])
def test_training_adapters(tmp_path: Path, adapter: str, row: dict, expected: object) -> None:
    assert load_records(adapter, write_rows(tmp_path / "rows.parquet", [row])) == [expected]


# ---------------------------------------------------------------- file types, hub ids, errors
def test_file_types(tmp_path: Path) -> None:
    rows = [{"text": "a"}, {"text": "b\u2028c"}]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (tmp_path / "array.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "lines.json").write_text(lines, encoding="utf-8")
    (tmp_path / "rows.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "rows.json.bz2").write_bytes(bz2.compress(json.dumps(rows).encode()))
    for name in ("array.json", "lines.json", "rows.jsonl.gz", "rows.json.bz2"):
        assert read_rows(str(tmp_path / name)) == rows, name
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(b"one\ntwo\n"))
    assert read_rows(str(tmp_path / "t.txt.gz")) == [{"line": "one"}, {"line": "two"}]
    (tmp_path / "rows.csv").write_text("text\na\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_rows(str(tmp_path / "rows.csv"))


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A stand-in `datasets` module that records load_dataset calls and serves `rows`; nothing is downloaded."""
    hub = types.SimpleNamespace(calls=[], rows=[{"query": f"q{i}", "response": f"r{i}"} for i in range(10)])

    def load_dataset(path, name=None, **kw):
        hub.calls.append((path, name, kw))
        return iter(hub.rows)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return hub


def test_hub_ids_go_to_load_dataset(fake_hub: types.SimpleNamespace) -> None:
    pairs = load_records("metamathqa", "meta-math/MetaMathQA", limit=3)
    assert [p.prompt for p in pairs] == ["q0", "q1", "q2"]
    assert len(read_rows("meta-math/MetaMathQA")) == 10
    read_rows("bigcode/starcoderdata", data_dir="python", limit=2)
    assert fake_hub.calls == [
        ("meta-math/MetaMathQA", None, {"split": "train", "streaming": True}),
        ("meta-math/MetaMathQA", None, {"split": "train", "streaming": False}),
        ("bigcode/starcoderdata", None, {"split": "train", "streaming": True, "data_dir": "python"}),
    ]


@pytest.mark.parametrize("adapter, source, subset, split", [
    ("gsm8k", "openai/gsm8k", "main", "test"),
    ("arc_challenge", "allenai/ai2_arc", "ARC-Challenge", "test"),
    ("winogrande", "allenai/winogrande", "winogrande_xl", "validation"),
    ("hellaswag", "Rowan/hellaswag", None, "validation"),
    ("mbpp", "google-research-datasets/mbpp", "full", "test"),
    ("humaneval", "openai/openai_humaneval", None, "test"),
])
def test_adapters_pass_their_hub_defaults(fake_hub: types.SimpleNamespace, adapter: str, source: str,
                                          subset: str | None, split: str) -> None:
    fake_hub.rows = []
    with pytest.raises(DataFileError, match=f"{source}: no records for the '{adapter}' adapter"):
        load_records(adapter, source)  # a dataset that selects nothing is refused, not scored as empty
    assert fake_hub.calls == [(source, subset, {"split": split, "streaming": False})]


@pytest.mark.parametrize("source", ["./missing.jsonl", "/no/such/dir/file", "missing.parquet", "a/b/c", "~/x.json"])
def test_missing_local_path_raises_without_touching_the_hub(fake_hub: types.SimpleNamespace, source: str) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_rows(source)
    assert fake_hub.calls == []


def test_unknown_adapter() -> None:
    with pytest.raises(ValueError, match="unknown data adapter 'nope'.*'arc_challenge'"):
        load_records("nope", "x.jsonl")
    assert len(ADAPTERS) == 15
