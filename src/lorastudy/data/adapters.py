"""Adapters from real datasets (a local snapshot file or a Hugging Face hub id) to lorastudy's record types.

Each dataset's own field names and layouts stop here: training and evaluation only ever see records.
A local file or folder never touches the network; only a hub id downloads, through `datasets.load_dataset`
(imported lazily). One reader, `lorastudy.data.rows.iter_rows`, serves every source.
"""
from __future__ import annotations

import ast
import itertools
import re
import textwrap
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from lorastudy.data.records import CodeTask, InstructionPair, MathProblem, MCItem, Record, TextDoc
from lorastudy.data.rows import iter_rows, read_rows, row_without
from lorastudy.io import DataFileError

__all__ = ["ADAPTERS", "MBPP_SPLITS", "CPT_TEXT_FIELDS", "iter_rows", "iter_texts", "load_records", "read_rows"]

MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601), "train": range(601, 975)}
"""MBPP task_id ranges (google-research README; the same ranges as the hub's `full` config)."""


def _rows(source: str, split: str | None, limit: int | None, kw: dict, default_split: str,
          default_subset: str | None = None) -> list[dict]:
    """read_rows with this dataset's hub split/config as defaults (a local file ignores them)."""
    kw.setdefault("subset", default_subset)
    return read_rows(source, split=split or default_split, limit=limit, **kw)


# ---------------------------------------------------------------- instruction pairs and text
def load_metamathqa(source: str, *, split: str | None = None, limit: int | None = None,
                    **kw: Any) -> list[InstructionPair]:
    """MetaMathQA (hub meta-math/MetaMathQA): the paper's math instruction-tuning set."""
    rows = _rows(source, split, limit, kw, "train")
    return [InstructionPair(r["query"], r["response"], f"metamathqa/{i}") for i, r in enumerate(rows)]


def load_magicoder(source: str, *, split: str | None = None, limit: int | None = None,
                   **kw: Any) -> list[InstructionPair]:
    """Magicoder-Evol-Instruct-110K (hub ise-uiuc/...): the paper's code instruction-tuning set."""
    rows = _rows(source, split, limit, kw, "train")
    return [InstructionPair(r["instruction"], r["response"], f"magicoder/{i}") for i, r in enumerate(rows)]


def load_gsm8k_train(source: str, *, split: str | None = None, limit: int | None = None,
                     **kw: Any) -> list[InstructionPair]:
    """GSM8K train as SFT pairs; the response is the full worked answer ending in '#### n'."""
    rows = _rows(source, split, limit, kw, "train", "main")
    return [InstructionPair(r["question"], r["answer"], f"gsm8k_train/{i}") for i, r in enumerate(rows)]


def load_gpteacher_code(source: str, *, split: str | None = None, limit: int | None = None,
                        **kw: Any) -> list[InstructionPair]:
    """GPTeacher Code-Instruct, the offline stand-in for Magicoder; a non-empty input follows a blank line."""
    rows = _rows(source, split, limit, kw, "train")
    return [InstructionPair("\n\n".join(p for p in (r["instruction"], r.get("input") or "") if p.strip()),
                            r["response"], f"gpteacher_code/{i}") for i, r in enumerate(rows)]


def load_math(source: str, *, split: str | None = None, limit: int | None = None, **kw: Any) -> list[InstructionPair]:
    """MATH / MATH-500 (problem, solution with a final \\boxed{} answer) as pairs."""
    rows = _rows(source, split, limit, kw, "test")
    return [InstructionPair(r["problem"], r["solution"], str(r.get("unique_id") or f"math/{r.get('idx', i)}"))
            for i, r in enumerate(rows)]


def load_metamath_backward(source: str, *, split: str | None = None, limit: int | None = None,
                           **kw: Any) -> list[InstructionPair]:
    """MetaMath GSM8K_Backward (FOBAR questions); its two layouts keep the chain of thought in different fields."""
    rows = _rows(source, split, limit, kw, "test")
    return [InstructionPair(r["question"], (r.get("inv_question_pred_answer") or r["output"]).strip(),
                            f"metamath_backward/{i}") for i, r in enumerate(rows)]


CPT_TEXT_FIELDS = {"text": "text", "starcoder_python": "content", "openwebmath": "text"}
"""Each continued pre-training corpus adapter's text field: what both the in-memory and the streamed path read."""


def _docs(name: str, field: str, source: str, split: str | None, limit: int | None, kw: dict) -> list[TextDoc]:
    """TextDocs from one text field, with ids that name the corpus."""
    rows = _rows(source, split, limit, kw, "train")
    return [TextDoc(r[field], f"{name}/{i}") for i, r in enumerate(rows)]


def iter_texts(adapter: str, source: str, *, split: str | None = None, skip: int = 0, limit: int | None = None,
               field: str | None = None, **kw: Any) -> Iterator[str]:
    """A CPT corpus' documents one at a time, from document `skip` (read and dropped) to document `limit`: the
    streamed path's reader, the same rows and field as the adapter's list."""
    if adapter not in CPT_TEXT_FIELDS:
        raise ValueError(f"adapter {adapter!r} is not a continued pre-training corpus; streaming reads "
                         f"{sorted(CPT_TEXT_FIELDS)}")
    key = field or CPT_TEXT_FIELDS[adapter]
    kw.setdefault("streaming", True)
    rows = iter_rows(source, split=split or "train", **kw)
    return (row[key] for row in itertools.islice(rows, skip, limit))


def load_text(source: str, *, split: str | None = None, limit: int | None = None, field: str = "text",
              **kw: Any) -> list[TextDoc]:
    """Documents for continued pre-training from any dataset with one text field."""
    return _docs("text", field, source, split, limit, kw)


def load_starcoder_python(source: str, *, split: str | None = None, limit: int | None = None,
                          **kw: Any) -> list[TextDoc]:
    """StarCoder-Python files (hub bigcode/starcoderdata, data_dir='python'): the paper's code CPT corpus."""
    return _docs("starcoder_python", CPT_TEXT_FIELDS["starcoder_python"], source, split, limit, kw)


def load_openwebmath(source: str, *, split: str | None = None, limit: int | None = None, **kw: Any) -> list[TextDoc]:
    """OpenWebMath pages (hub open-web-math/open-web-math): the paper's math CPT corpus."""
    return _docs("openwebmath", CPT_TEXT_FIELDS["openwebmath"], source, split, limit, kw)


# ---------------------------------------------------------------- generation evals
def load_gsm8k(source: str, *, split: str | None = None, limit: int | None = None, **kw: Any) -> list[MathProblem]:
    """GSM8K test problems; MathProblem.target reads the '#### n' line."""
    rows = _rows(source, split, limit, kw, "test", "main")
    return [MathProblem(r["question"], r["answer"], f"gsm8k/{i}") for i, r in enumerate(rows)]


def load_humaneval(source: str, *, split: str | None = None, limit: int | None = None, **kw: Any) -> list[CodeTask]:
    """HumanEval (hub openai/openai_humaneval), already in CodeTask's layout."""
    rows = _rows(source, split, limit, kw, "test")
    return [CodeTask(r["task_id"], r["prompt"], r["canonical_solution"], r["test"], r["entry_point"]) for r in rows]


def _lf(text: str) -> str:
    """MBPP strings use Windows line breaks (and four codes end in a lone CR); the stub and tests must not."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _parse(code: str) -> ast.Module:
    """ast.parse without the SyntaxWarnings that MBPP's unescaped regex strings raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(code)


def _mbpp_entry(tree: ast.Module, tests: list[str]) -> ast.FunctionDef:
    """The top-level function the first assert calls (reference code may define helpers too)."""
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    called = re.findall(r"([A-Za-z_]\w*)\s*\(", tests[0])
    name = next((c for c in called if c in defs), None)
    if name is None:
        raise ValueError(f"none of {called} in the first assert is a top-level function of the reference code")
    return defs[name]


def _mbpp_stub(code: str, fn: ast.FunctionDef, doc: list[str]) -> tuple[str, str]:
    """Split the reference code after the entry point's header, inserting a docstring: (prompt, body)."""
    first = fn.body[0]
    start = min([first.lineno, *(d.lineno for d in getattr(first, "decorator_list", []))]) - 1
    if start < fn.lineno:
        raise ValueError(f"{fn.name}: body on the def line, no room for a docstring")
    lines = code.splitlines(keepends=True)
    indent = re.match(r"[ \t]*", lines[start]).group(0)
    end = start  # comments between the signature and the body stay in the body, not the prompt
    while end > fn.lineno and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    escaped = [d.replace("\\", "\\\\").replace('"""', '\\"\\"\\"') for d in doc]
    docstring = "".join(f"{indent}{d}\n" for d in ['"""', *escaped, '"""'])
    return "".join(lines[:end]) + docstring, "".join(lines[end:])


def _rename(text: str, name: str) -> str:
    """`name` -> `name_` (MBPP 56 and 349 call their function `check`, which the harness's check(candidate) shadows)."""
    return re.sub(rf"(?<![\w.]){re.escape(name)}(?!\w)", name + "_", text)


def _mbpp_task(row: dict) -> CodeTask:
    """One MBPP row as a HumanEval-style task: prompt + canonical_solution is the reference code plus a docstring."""
    code, tests = _lf(row["code"]), [_lf(t) for t in row["test_list"]]
    fn = _mbpp_entry(_parse(code), tests)
    if fn.name in ("check", "candidate"):
        code, tests = _rename(code, fn.name), [_rename(t, fn.name) for t in tests]
        fn = _mbpp_entry(_parse(code), tests)
    prompt, body = _mbpp_stub(code, fn, [_lf(row.get("text") or row["prompt"]).strip(), tests[0]])
    asserts = [re.sub(rf"(?<![\w.]){re.escape(fn.name)}(?=\s*\()", "candidate", t) for t in tests]
    setup = [*row.get("test_imports", []), _lf(row.get("test_setup_code") or "")]
    check = "def check(candidate):\n" + textwrap.indent("\n".join(asserts), "    ") + "\n"
    test = "\n".join([*(s for s in setup if s.strip()), check])
    return CodeTask(f"MBPP/{row['task_id']}", prompt, body if body.endswith("\n") else body + "\n", test, fn.name)


def load_mbpp(source: str, *, split: str | None = None, limit: int | None = None,
              task_ids: Collection[int] | None = None, **kw: Any) -> list[CodeTask]:
    """MBPP as HumanEval-style CodeTasks so one harness scores both; `split` picks a task_id range (test: 11-510)."""
    split = split or "test"
    if task_ids is None and split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; choose one of {sorted(MBPP_SPLITS)} or pass task_ids")
    wanted = set(MBPP_SPLITS[split] if task_ids is None else task_ids)
    rows = _rows(source, split, None, kw, "test", "full")
    return [_mbpp_task(r) for r in rows if int(r["task_id"]) in wanted][:limit]


# ---------------------------------------------------------------- multiple choice
def _mc(task: str, items: Iterable[tuple[list[tuple[str, str]], int]], limit: int | None,
        partial: bool = False) -> list[MCItem]:
    """MCItems with the meta the scorer needs (partial: options share the continuation, not the context)."""
    return [MCItem(tuple(options), gold, f"{task}/{i}", {"task": task, "partial": partial})
            for i, (options, gold) in enumerate(itertools.islice(items, limit))]


def _hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag preprocessing: WikiHow '[title]'/'[step]' artifacts and double spaces."""
    text = re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". "))
    return text.replace("  ", " ")


def _hellaswag_raw(rows: list[dict]) -> Iterable[tuple[str, list[str], int]]:
    """(query, endings, gold) from the llama.cpp 6-line text, the Gauntlet or the hub (Rowan/hellaswag) layout."""
    if rows and "line" in rows[0]:
        lines = [r["line"] for r in rows]
        if len(lines) % 6:
            raise ValueError(f"HellaSwag text layout needs 6 lines per task, got {len(lines)} lines")
        return ((lines[k], lines[k + 2:k + 6], int(lines[k + 1])) for k in range(0, len(lines), 6))
    return ((r["query"], r["choices"], int(r["gold"])) if "query" in r else
            (f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}", r["endings"], int(r["label"]))
            for r in rows)


def load_hellaswag(source: str, *, split: str | None = None, limit: int | None = None, **kw: Any) -> list[MCItem]:
    """HellaSwag (forgetting eval) as lm-eval scores it: cleaned query, ' ' + ending."""
    rows = _rows(source, split, None, kw, "validation")
    items = (([(_hellaswag_clean(q), " " + _hellaswag_clean(e)) for e in endings], gold)
             for q, endings, gold in _hellaswag_raw(rows))
    return _mc("hellaswag", items, limit)


def _arc_raw(row: dict) -> tuple[str, list[str], int]:
    """(query, choices, gold) from the Gauntlet or the hub (allenai/ai2_arc) layout; answerKey may be a digit."""
    if "query" in row:
        return row["query"], row["choices"], int(row["gold"])
    labels = [str(label) for label in row["choices"]["label"]]
    return f"Question: {row['question']}", row["choices"]["text"], labels.index(str(row["answerKey"]))


def load_arc_challenge(source: str, *, split: str | None = None, limit: int | None = None, **kw: Any) -> list[MCItem]:
    """ARC-Challenge (forgetting eval) as lm-eval scores it: 'Question: ...\\nAnswer:' + ' ' + choice."""
    rows = _rows(source, split, limit, kw, "test", "ARC-Challenge")
    items = (([(q + "\nAnswer:", " " + c) for c in choices], gold) for q, choices, gold in map(_arc_raw, rows))
    return _mc("arc_challenge", items, limit)


def _winogrande_raw(row: dict) -> tuple[list[str], str, int]:
    """(contexts, continuation, gold) from the Gauntlet partial layout or the hub (allenai/winogrande) layout."""
    if "context_options" in row:
        return row["context_options"], row["continuation"], int(row["gold"])
    answer = str(row["answer"])
    if answer not in ("1", "2"):
        raise ValueError(f"WinoGrande row without a label (answer={answer!r}); the test split is unlabelled")
    blank = row["sentence"].index("_")
    head = row["sentence"][:blank]
    return [head + row["option1"], head + row["option2"]], row["sentence"][blank + 1:], int(answer) - 1


def load_winogrande(source: str, *, split: str | None = None, limit: int | None = None, **kw: Any) -> list[MCItem]:
    """WinoGrande (forgetting eval) with lm-eval's partial scoring: filled-in contexts, shared ' ' + rest."""
    rows = _rows(source, split, limit, kw, "validation", "winogrande_xl")
    items = (([(c, " " + rest.strip()) for c in contexts], gold)
             for contexts, rest, gold in map(_winogrande_raw, rows))
    return _mc("winogrande", items, limit, partial=True)


# ---------------------------------------------------------------- registry
ADAPTERS: dict[str, Callable[..., list[Record]]] = {
    "metamathqa": load_metamathqa, "magicoder": load_magicoder, "gsm8k_train": load_gsm8k_train,
    "gpteacher_code": load_gpteacher_code, "math": load_math, "metamath_backward": load_metamath_backward,
    "starcoder_python": load_starcoder_python, "openwebmath": load_openwebmath, "text": load_text,
    "gsm8k": load_gsm8k, "humaneval": load_humaneval, "mbpp": load_mbpp,
    "hellaswag": load_hellaswag, "arc_challenge": load_arc_challenge, "winogrande": load_winogrande,
}


def load_records(adapter: str, source: str, **kw: Any) -> list[Record]:
    """Records from `source` through a named adapter, so configs can name datasets as plain strings."""
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown data adapter {adapter!r}; choose one of {sorted(ADAPTERS)}")
    try:
        records = ADAPTERS[adapter](source, **kw)
    except KeyError as err:  # a row without a field the adapter reads: say which row, here rather than in each adapter
        field = err.args[0] if err.args else "?"
        raise DataFileError(f"{source}: {row_without(source, field)} has no field {field!r}, which the "
                            f"{adapter!r} adapter reads") from None
    if not records:
        raise DataFileError(f"{source}: no records for the {adapter!r} adapter (an empty file, or a split, subset "
                            "or task ids that select nothing)")
    return records
