"""Every GPU-profile dataset in the layout its hub repository really has, read three ways that must agree: the one
file, the hub-layout folder through the real `datasets` library without README configs, and with them. The hub is
never contacted (datasets runs offline); the evaluation sets are also checked at full size from shared/data."""
from __future__ import annotations

import bz2
import collections
import gzip
import itertools
import json
import os
import sys
import tracemalloc
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lorastudy.data.adapters import iter_rows, load_records, read_rows

FIXTURES = Path(__file__).parent / "fixtures" / "layouts"
# Field names and the types `datasets` hands over, from each dataset card's `dataset_info.features`
# ([str] a list of strings; a dict a struct). HellaSwag's label and WinoGrande's answer are strings on the hub.
SCHEMAS: dict[str, dict] = {
    "metamathqa": {"type": str, "query": str, "original_question": str, "response": str},
    "magicoder": {"instruction": str, "response": str},
    "starcoder_python": {"max_stars_repo_path": str, "max_stars_repo_name": str, "max_stars_count": int, "id": str,
                         "content": str},
    "openwebmath": {"url": str, "text": str, "date": str, "metadata": str},
    "gsm8k": {"question": str, "answer": str},
    "humaneval": {"task_id": str, "prompt": str, "canonical_solution": str, "test": str, "entry_point": str},
    "hellaswag": {"ind": int, "activity_label": str, "ctx_a": str, "ctx_b": str, "ctx": str, "endings": [str],
                  "source_id": str, "split": str, "split_type": str, "label": str},
    "arc_challenge": {"id": str, "question": str, "choices": {"text": [str], "label": [str]}, "answerKey": str},
    "winogrande": {"sentence": str, "option1": str, "option2": str, "answer": str},
}
NAMES = sorted(SCHEMAS)
HUB_DEFAULTS = {"gsm8k": ("test", "main"), "humaneval": ("test", None), "hellaswag": ("validation", None),
                "arc_challenge": ("test", "ARC-Challenge"), "winogrande": ("validation", "winogrande_xl")}
"""(split, subset) each evaluation adapter asks for by default; the training sets read `train`."""


def fixture(name: str) -> dict:
    return yaml.safe_load((FIXTURES / f"{name}.yaml").read_text(encoding="utf-8"))


def write_file(path: Path, rows: list[dict], casts: dict[str, str] | None = None) -> Path:
    """One data file as the hub stores it: parquet (columns cast to the card's widths), a JSON array, or JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        table = pa.Table.from_pylist(rows)
        for col, kind in (casts or {}).items():
            table = table.set_column(table.schema.get_field_index(col), col, table[col].cast(kind))
        pq.write_table(table, path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=4, ensure_ascii=False), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_repo(root: Path, fx: dict, *, card: bool, main_rows: list[dict] | None = None) -> Path:
    """The fixture's repository tree under `root`; with `card` a README.md whose front matter declares the configs."""
    for rel, rows in fx["files"].items():
        write_file(root / rel, main_rows if main_rows is not None and rel == fx["file"] else rows, fx.get("types"))
    if card:
        (root / "README.md").write_text(f"---\n{yaml.safe_dump(fx['card'], sort_keys=False)}---\n# {fx['hub']}\n",
                                        encoding="utf-8")
    return root


def shape(value: object) -> object:
    """A value's type the way SCHEMAS spells it."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real `datasets` with the hub switched off (env vars and the already-imported config both), and its
    cache (streaming still leaves lock files there) in tmp_path, not the home folder."""
    import datasets
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def three_ways(tmp_path: Path, name: str, main_rows: list[dict] | None = None, file: Path | None = None) -> list:
    """Records from the file, the folder without README configs and the folder with them; asserts they agree."""
    fx = fixture(name)
    plain = write_repo(tmp_path / "plain", fx, card=False, main_rows=main_rows)
    carded = write_repo(tmp_path / "card", fx, card=True, main_rows=main_rows)
    from_file = load_records(name, str(file or plain / fx["file"]))
    from_plain = load_records(name, str(plain), **fx.get("load", {}))
    from_card = load_records(name, str(carded), **fx.get("card_load", fx.get("load", {})))
    assert from_file == from_plain, "the hub-layout folder (no README configs) differs from the file"
    assert from_file == from_card, "the hub-layout folder with README configs differs from the file"
    return from_file


# ---------------------------------------------------------------- the fixtures are the real schemas
@pytest.mark.parametrize("name", NAMES)
def test_fixture_rows_have_the_cards_fields_and_types(tmp_path: Path, offline: None, name: str) -> None:
    fx = fixture(name)
    features = fx["card"]["dataset_info"]
    features = features["features"] if isinstance(features, dict) else features[0]["features"]
    assert [f["name"] for f in features] == list(SCHEMAS[name]), "fixture card and SCHEMAS disagree"
    repo = write_repo(tmp_path / "repo", fx, card=True)
    split, subset = HUB_DEFAULTS.get(name, ("train", None))
    through_datasets = iter_rows(str(repo), split=split, **{"subset": subset, **fx.get("card_load", {})})
    for row in [*iter_rows(str(repo / fx["file"])), *through_datasets]:
        assert shape(row) == SCHEMAS[name], row


# ---------------------------------------------------------------- one file, two folder layouts, one set of records
def test_metamathqa(tmp_path: Path, offline: None) -> None:
    pairs = three_ways(tmp_path, "metamathqa")  # one pretty-printed JSON array at the repo root
    assert [p.id for p in pairs] == ["metamathqa/0", "metamathqa/1"]
    assert pairs[0].response.endswith("The answer is: 72") and pairs[1].prompt.startswith("What is the value of $x$")


def test_magicoder(tmp_path: Path, offline: None) -> None:
    pairs = three_ways(tmp_path, "magicoder")
    assert pairs[0].prompt == "Write a Python function that returns the square of a number."
    assert pairs[1].response.startswith("```python\ndef inc(x):")


def test_starcoder_python_reads_only_the_python_folder(tmp_path: Path, offline: None) -> None:
    docs = three_ways(tmp_path, "starcoder_python")  # data_dir="python", as the hub call passes it
    assert [d.text for d in docs] == ["def hello():\n    print('hello')\n",
                                      "from setuptools import setup\n\nsetup(name='pkg')\n"]
    plain = tmp_path / "plain"
    assert load_records("starcoder_python", str(plain), subset="python") == docs  # the subset names the folder


def test_openwebmath(tmp_path: Path, offline: None) -> None:
    docs = three_ways(tmp_path, "openwebmath")  # data/train-00000-of-00001-<hash>.parquet
    assert [d.id for d in docs] == ["openwebmath/0", "openwebmath/1"] and docs[0].text.startswith("If $x^2 = 4$")


def test_gsm8k_main_not_socratic(tmp_path: Path, offline: None) -> None:
    problems = three_ways(tmp_path, "gsm8k")
    assert [p.target for p in problems] == ["18", "3"]
    assert problems[0].question.startswith("Janet’s ducks lay 16 eggs per day.")


def test_humaneval(tmp_path: Path, offline: None) -> None:
    (task,) = three_ways(tmp_path, "humaneval")
    assert (task.task_id, task.entry_point, task.canonical_solution) == ("HumanEval/53", "add", "    return x + y\n")


def test_hellaswag_string_labels_become_ints(tmp_path: Path, offline: None) -> None:
    items = three_ways(tmp_path, "hellaswag")  # the test split's unlabelled row would fail int("")
    assert [i.gold for i in items] == [3, 3] and all(type(i.gold) is int for i in items)
    # lm-eval's query capitalises ctx_b (the text file keeps ctx as is: "... roof. he")
    assert items[0].options[3] == ("Roof shingle removal: A man is sitting on a roof. He",
                                   " starts pulling up roofing on a roof.")
    assert items[1].options[0][0] == ("Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. "
                                      "The lady")


def test_arc_gold_from_a_letter_or_a_digit_answer_key(tmp_path: Path, offline: None) -> None:
    items = three_ways(tmp_path, "arc_challenge")  # ARC-Easy and the other splits are decoys
    assert [i.gold for i in items] == [2, 1]  # answerKey "C" of A-D; answerKey "2" of 1-4
    assert items[0].options[2][1] == " Planetary days will become shorter."
    assert items[1].options[1] == (items[1].options[1][0], " buildings will be made safer")


def test_winogrande_string_answers(tmp_path: Path, offline: None) -> None:
    items = three_ways(tmp_path, "winogrande")  # winogrande_debiased and the unlabelled test split are decoys
    assert [i.gold for i in items] == [1, 0]
    assert items[0].options[1] == ("Sarah was a much better surgeon than Maria so Maria",
                                   " always got the easier cases.")


# ---------------------------------------------------------------- the real evaluation sets, full size
def _arc_hub(rows: list[dict]) -> list[dict]:
    """Gauntlet ARC items back in allenai/ai2_arc's layout; every other item keyed by digits, as some real ones are."""
    out = []
    for i, r in enumerate(rows):
        labels = [chr(65 + k) if i % 2 == 0 else str(k + 1) for k in range(len(r["choices"]))]
        out.append({"id": f"item_{i}", "question": r["query"].removeprefix("Question: "),
                    "choices": {"text": r["choices"], "label": labels}, "answerKey": labels[r["gold"]]})
    return out


def _winogrande_hub(rows: list[dict]) -> list[dict]:
    """Gauntlet WinoGrande items back in allenai/winogrande's layout: the sentence with its blank, answer '1'/'2'."""
    out = []
    for r in rows:
        a, b = r["context_options"]
        head = os.path.commonprefix([a, b])
        out.append({"sentence": f"{head}_ {r['continuation']}", "option1": a[len(head):], "option2": b[len(head):],
                    "answer": str(r["gold"] + 1)})
    return out


def _hellaswag_hub(rows: list[dict]) -> list[dict]:
    """The llama.cpp text tasks in Rowan/hellaswag's layout, label a string; ctx goes whole into ctx_a."""
    lines = [r["line"] for r in rows]
    out = []
    for k in range(0, len(lines), 6):
        label, _, ctx = lines[k].partition(": ")
        out.append({"ind": k // 6, "activity_label": label, "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
                    "endings": lines[k + 2:k + 6], "source_id": "", "split": "val", "split_type": "",
                    "label": lines[k + 1]})
    return out


SHARED: dict[str, tuple[str, Callable[[list[dict]], list[dict]]]] = {
    "gsm8k": ("gsm8k/test.jsonl", list),
    "humaneval": ("humaneval/HumanEval.jsonl.gz", list),
    "arc_challenge": ("arc_challenge/arc_challenge.jsonl", _arc_hub),
    "winogrande": ("winogrande/winogrande.jsonl", _winogrande_hub),
    "hellaswag": ("hellaswag/hellaswag_val_full.txt.bz2", _hellaswag_hub),
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_eval_sets_in_hub_layout(tmp_path: Path, offline: None, shared_data: Path, name: str) -> None:
    """The real file and the same rows in the hub's folder layout (both README variants) give the same records."""
    rel, to_hub = SHARED[name]
    rows = read_rows(str(shared_data / rel))
    records = three_ways(tmp_path, name, main_rows=to_hub(rows), file=shared_data / rel)
    if name == "gsm8k":
        assert len(records) == 1319 and records[0].target == "18"
        assert records[0].question.startswith("Janet’s ducks lay 16 eggs per day.")
    elif name == "humaneval":
        assert len(records) == 164 and (records[0].task_id, records[0].entry_point) == ("HumanEval/0",
                                                                                        "has_close_elements")
    elif name == "arc_challenge":
        hub = _arc_hub(rows)
        assert len(records) == 1172 and (hub[0]["answerKey"], hub[1]["answerKey"]) == ("C", "2")
        assert (records[0].gold, records[1].gold) == (2, 1)
    elif name == "winogrande":
        assert len(records) == 1267 and collections.Counter(i.gold for i in records) == {0: 628, 1: 639}
    else:
        hub = _hellaswag_hub(rows)
        assert len(records) == 10042 and hub[0]["label"] == "3" and records[0].gold == 3
        assert collections.Counter(i.gold for i in records) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}


# ---------------------------------------------------------------- iter_rows: lazy, one reader for every source
def _big_jsonl(path: Path, n: int, opener: Callable = open) -> Path:
    """n JSON lines of ~200 bytes, then a line that is not JSON: a reader that reads ahead would fail."""
    with opener(path, "wt", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"text": f"{i} " + "x" * 200}) + "\n")
        fh.write("not json\n")
    return path


@pytest.mark.parametrize("suffix, opener", [(".jsonl", open), (".jsonl.gz", gzip.open), (".json.bz2", bz2.open)],
                         ids=["jsonl", "jsonl.gz", "json.bz2"])
def test_json_lines_are_read_one_at_a_time(tmp_path: Path, suffix: str, opener: Callable) -> None:
    path = str(_big_jsonl(tmp_path / f"rows{suffix}", 20_000, opener))  # ~4 MB of text
    tracemalloc.start()
    rows = iter_rows(path)
    first = next(rows)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(rows, Iterator) and first["text"].startswith("0 ") and peak < 1_000_000
    assert [r["text"].split()[0] for r in read_rows(path, limit=3)] == ["0", "1", "2"]  # never reaches the bad line
    with pytest.raises(ValueError, match=r"line 20001 is not JSON"):
        collections.deque(rows, maxlen=0)


def test_parquet_is_read_by_record_batch(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": str(i), "n": i} for i in range(10)]), path, row_group_size=3)
    assert pq.ParquetFile(path).num_row_groups == 4
    rows = iter_rows(str(path))
    assert next(rows) == {"text": "0", "n": 0} and [r["n"] for r in rows] == list(range(1, 10))


def test_a_pretty_printed_json_array_is_read_whole(tmp_path: Path) -> None:
    rows = [{"query": "q", "response": "r"}, {"query": "q2", "response": "r2"}]
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=4), encoding="utf-8")
    (tmp_path / "one.json").write_text(json.dumps(rows[0], indent=2), encoding="utf-8")
    assert list(iter_rows(str(tmp_path / "a.json"))) == rows and read_rows(str(tmp_path / "one.json")) == rows[:1]


def test_text_lines_and_bad_paths(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("one\n\nthree\n", encoding="utf-8")
    assert list(iter_rows(str(tmp_path / "t.txt"))) == [{"line": "one"}, {"line": ""}, {"line": "three"}]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        iter_rows(str(tmp_path / "missing.jsonl"))  # at the call, not at the first row
    (tmp_path / "rows.parquet.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported file type"):
        iter_rows(str(tmp_path / "rows.parquet.gz"))


def test_folders_stream_unless_asked_not_to(tmp_path: Path, offline: None) -> None:
    repo = write_repo(tmp_path / "repo", fixture("arc_challenge"), card=False)
    streamed = iter_rows(str(repo), subset="ARC-Challenge", split="test")
    assert isinstance(streamed, Iterator) and next(streamed)["answerKey"] == "C"
    cached = read_rows(str(repo), subset="ARC-Challenge", split="test", streaming=False, cache_dir=str(tmp_path / "c"))
    assert cached == read_rows(str(repo), subset="ARC-Challenge", split="test")
    assert [r["id"] for r in cached] == ["placeholder_letters", "placeholder_digits"]


def test_folder_subset_rules(tmp_path: Path, offline: None) -> None:
    carded = write_repo(tmp_path / "card", fixture("gsm8k"), card=True)
    with pytest.raises(ValueError, match=r"declares configs \['main', 'socratic'\], not 'Main'"):
        read_rows(str(carded), subset="Main", split="test")
    assert [r["answer"][:11] for r in read_rows(str(carded), subset="socratic", split="test")] == ["Placeholder"]
    flat = tmp_path / "flat"  # no subset folder, no card: the subset is ignored, as for a file
    write_file(flat / "test-00000-of-00001.parquet", fixture("gsm8k")["files"]["main/test-00000-of-00001.parquet"])
    assert [p.target for p in load_records("gsm8k", str(flat))] == ["18", "3"]


def test_hub_ids_stream_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(path, name=None, **kw):
        calls.append((path, name, kw))
        return iter([{"text": "a"}, {"text": "b"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert list(iter_rows("open-web-math/open-web-math", streaming=True)) == [{"text": "a"}, {"text": "b"}]
    assert next(iter_rows("bigcode/starcoderdata", data_dir="python")) == {"text": "a"}
    assert list(itertools.islice(iter_rows("openai/gsm8k", subset="main", split="test"), 1)) == [{"text": "a"}]
    assert calls == [("open-web-math/open-web-math", None, {"split": "train", "streaming": True}),
                     ("bigcode/starcoderdata", None, {"split": "train", "streaming": False, "data_dir": "python"}),
                     ("openai/gsm8k", "main", {"split": "test", "streaming": False})]
