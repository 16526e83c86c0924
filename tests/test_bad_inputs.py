"""A user's file that is not what a command expects is refused up front, in one line that names the file, the
line and what was expected (exit 2, no traceback): the scoring commands' samples, predictions and references,
every dataset adapter's local files, and profiles."""
from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorastudy import cli
from lorastudy.config import ConfigError, load_profile
from lorastudy.data.adapters import ADAPTERS, load_records
from lorastudy.io import DataFileError, json_lines, numbered_jsonl, read_jsonl

GOOD_SAMPLE = {"task_id": "T/0", "completion": "    return 1\n"}
PROBLEM = {"task_id": "T/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
           "test": "def check(candidate):\n    assert candidate() == 1\n", "entry_point": "f"}
REFERENCE = {"question": "Tom has 2 apples and buys 1. How many?", "answer": "2 + 1 = 3\n#### 3"}
PREDICTION = {"idx": 0, "question": REFERENCE["question"], "completion": "#### 3"}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the one reader
def test_a_broken_line_names_the_file_and_its_line_counting_blank_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(GOOD_SAMPLE), "", '{"task_id": "T/0", completion: 1}'])
    with pytest.raises(DataFileError, match=r"s\.jsonl: line 3 is not JSON .*'task_id', 'completion'"):
        read_jsonl(path, required=("task_id", "completion"))


def test_a_missing_key_names_the_line_the_key_and_what_the_line_has(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(GOOD_SAMPLE), json.dumps({"task_id": "T/0", "text": ""})])
    with pytest.raises(DataFileError, match=r"line 2 lacks 'completion'.*this line has 'task_id', 'text'"):
        read_jsonl(path, required=("task_id", "completion"))


def test_an_empty_file_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "e.jsonl", ["", "  "])
    with pytest.raises(DataFileError, match=r"e\.jsonl: empty; expected one JSON object per line"):
        read_jsonl(path)
    assert read_jsonl(path, allow_empty=True) == []


def test_a_line_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", ["[1, 2]"])
    with pytest.raises(DataFileError, match="line 1 holds a JSON list, not an object"):
        read_jsonl(path)


def test_compressed_files_are_read_by_their_bytes_not_their_names(tmp_path: Path) -> None:
    rows = [GOOD_SAMPLE, {**GOOD_SAMPLE, "completion": "    return 2\n"}]
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "g.jsonl").write_bytes(gzip.compress(text))  # gzip without a .gz suffix
    (tmp_path / "b.jsonl.bz2").write_bytes(bz2.compress(text))
    assert read_jsonl(tmp_path / "g.jsonl") == rows == read_jsonl(tmp_path / "b.jsonl.bz2")
    assert [n for n, _ in numbered_jsonl(tmp_path / "g.jsonl")] == [1, 2]


def test_a_damaged_gzip_is_a_data_file_error(tmp_path: Path) -> None:
    (tmp_path / "g.jsonl.gz").write_bytes(gzip.compress(b"{\"a\": 1}\n" * 100)[:20])
    with pytest.raises(DataFileError, match=r"g\.jsonl\.gz: not readable"):
        read_jsonl(tmp_path / "g.jsonl.gz")


def test_json_lines_reads_arrays_and_whole_documents_only_when_asked(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.json", ["[", '  {"a": 1},', '  {"a": 2}', "]"])
    with path.open() as fh:
        assert [r for _, r in json_lines(fh, "d.json", arrays=True, whole=True)] == [{"a": 1}, {"a": 2}]
    with path.open() as fh, pytest.raises(DataFileError, match="line 1 is not JSON"):
        list(json_lines(fh, "d.json"))


# ---------------------------------------------------------------- the scoring commands
def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def _cases(tmp_path: Path, good: dict, required: list[str]) -> dict[str, tuple[Path, str]]:
    """A broken second line, a second line without the first required key, and an empty file: each with the
    message it must give."""
    missing = {k: v for k, v in good.items() if k != required[0]}
    return {
        "broken": (write_lines(tmp_path / "broken.jsonl", [json.dumps(good), "{bad"]), "broken.jsonl: line 2 is not JSON"),
        "missing": (write_lines(tmp_path / "missing.jsonl", [json.dumps(good), json.dumps(missing)]),
                    f"missing.jsonl: line 2 lacks '{required[0]}'"),
        "empty": (write_lines(tmp_path / "empty.jsonl", []), "empty.jsonl: empty; expected"),
    }


# each scoring command: its file options, each with a good row and the key a broken one lacks
COMMANDS = {"humaneval": {"samples": (GOOD_SAMPLE, ["completion"]), "problems": (PROBLEM, ["prompt"])},
            "gsm8k": {"predictions": (PREDICTION, ["completion"]), "references": (REFERENCE, ["answer"])}}


@pytest.mark.parametrize("case", ["broken", "missing", "empty"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_eval_commands_refuse_each_bad_file_in_one_line(tmp_path: Path, command: str, case: str, capsys) -> None:
    """`lorastudy eval humaneval` (--samples, --problems) and `eval gsm8k` (--predictions, --references): each file
    in turn broken, lacking a key or empty, the other good."""
    options = COMMANDS[command]
    good = {kind: write_lines(tmp_path / f"{kind}.jsonl", [json.dumps(row)]) for kind, (row, _) in options.items()}
    for kind, (row, required) in options.items():
        folder = tmp_path / kind
        folder.mkdir(exist_ok=True)
        bad, message = _cases(folder, row, required)[case]
        paths = {**good, kind: bad}
        flags = [x for k, path in paths.items() for x in (f"--{k}", str(path))]
        code, err = _run(["eval", command, *flags, "--out", str(tmp_path / "out.json")], capsys)
        assert code == 2, (kind, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, (kind, err)
        assert not (tmp_path / "out.json").exists()


def test_a_prediction_for_another_file_names_its_line(tmp_path: Path, capsys) -> None:
    references = write_lines(tmp_path / "r.jsonl", [json.dumps(REFERENCE)])
    predictions = write_lines(tmp_path / "p.jsonl", [json.dumps(PREDICTION), json.dumps({**PREDICTION, "idx": 5})])
    code, err = _run(["eval", "gsm8k", "--predictions", str(predictions), "--references", str(references),
                      "--out", str(tmp_path / "o.json")], capsys)
    assert code == 2 and "p.jsonl: line 2: idx 5 is not an int in 0..0" in err


def test_a_sample_for_an_unknown_task_names_its_line(tmp_path: Path, capsys) -> None:
    problems = write_lines(tmp_path / "problems.jsonl", [json.dumps(PROBLEM)])
    samples = write_lines(tmp_path / "s.jsonl", [json.dumps(GOOD_SAMPLE), json.dumps({**GOOD_SAMPLE, "task_id": "X"})])
    code, err = _run(["eval", "humaneval", "--samples", str(samples), "--problems", str(problems),
                      "--out", str(tmp_path / "o.json")], capsys)
    assert code == 2 and "s.jsonl: line 2: task_id 'X' is not among the 1 problems" in err


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    samples = write_lines(tmp_path / "s.jsonl", [json.dumps(GOOD_SAMPLE), "{bad"])
    proc = subprocess.run([sys.executable, "-m", "lorastudy.cli", "eval", "humaneval", "--samples", str(samples),
                           "--out", str(tmp_path / "o.json")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {samples}: line 2 is not JSON (Expecting property name enclosed in double quotes at column 2); "
        "expected one JSON object per line with 'task_id', 'completion'"]


# ---------------------------------------------------------------- dataset adapters
@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_every_adapter_names_the_file_and_line_of_a_broken_line_a_missing_field_and_an_empty_file(
        tmp_path: Path, adapter: str) -> None:
    broken = write_lines(tmp_path / "broken.jsonl", ['{"x": 1}', '{"x": '])
    with pytest.raises(DataFileError, match=r"broken\.jsonl: line 2 is not JSON"):
        load_records(adapter, str(broken))
    unrelated = write_lines(tmp_path / "unrelated.jsonl", ['{"task_id": 11, "unrelated": 1}'])
    with pytest.raises(DataFileError, match=rf"unrelated\.jsonl: line 1 has no field '\w+', which the '{adapter}' "
                                            "adapter reads"):
        load_records(adapter, str(unrelated))
    empty = write_lines(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataFileError, match=rf"empty\.jsonl: no records for the '{adapter}' adapter"):
        load_records(adapter, str(empty))


def test_an_adapter_names_the_line_of_the_first_row_without_its_field(tmp_path: Path) -> None:
    rows = [json.dumps({"query": "q", "response": "r"})] * 2 + ["", json.dumps({"query": "q"})]
    path = write_lines(tmp_path / "m.jsonl", rows)
    with pytest.raises(DataFileError, match=r"m\.jsonl: line 4 has no field 'response', which the 'metamathqa'"):
        load_records("metamathqa", str(path))


# ---------------------------------------------------------------- profiles
def test_a_profile_that_is_not_yaml_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nseeds: [0, 1\nbase: {}\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: line \d+, column \d+: not valid YAML"):
        load_profile(path)


@pytest.mark.parametrize("text, message", [("", "empty; expected a profile mapping"),
                                           ("- a\n- b\n", "holds a YAML list, expected a profile mapping")])
def test_an_empty_or_non_mapping_profile_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_profile(path)


def test_a_bad_value_names_the_line_it_is_written_on(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text()
    assert "  batch_size: 16\n" in text
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("  batch_size: 16\n", "  batch_size: -3\n"))
    line = path.read_text().splitlines().index("  batch_size: -3") + 1
    with pytest.raises(ConfigError, match=rf"training\.batch_size \(line {line}\): "):
        load_profile(path)


def test_the_command_line_refuses_a_broken_profile_in_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: [unclosed\n")
    code, err = _run(["sweep", str(path), "--dry-run"], capsys)
    assert code == 2 and err.count("\n") == 1 and "p.yaml: line" in err
