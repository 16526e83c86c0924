"""Execute a profile: the base notebook, then 01_finetune and 02_evaluate for every planned run (several at
once), then the analyses.

A run is done when its results record exists (lorastudy.layout); re-running skips done runs and redoes failed
or interrupted ones. Runs go to an executor (lorastudy.engine.executors): local worker processes, or cluster jobs.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock
from tqdm import tqdm

from lorastudy.config import Profile
from lorastudy.engine.executors import LocalExecutor, Outcome, Plan, SubmititExecutor, cpu_count, plan_workers
from lorastudy.engine.notebook_exec import clean_stale, execute_in_process, is_exclusive, notebook_parameters
from lorastudy.engine.runner import DONE, FAILED
from lorastudy.engine.schedule import run_costs
from lorastudy.io import read_json, write_json
from lorastudy.layout import BASE_NOTEBOOK, PROGRESS_ENV, Layout
from lorastudy.plan import RunSpec, plan_runs
from lorastudy.results import collect, collect_items, run_records, selection_items, stale_runs, write_table
from lorastudy.tuning import awaits_selection, runs_expected, runs_to_train


@dataclass
class SweepReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class RunFailed(RuntimeError):
    """A run failed and the sweep was not asked to go on."""


def run_status(out_root: Path, spec: RunSpec) -> str:
    """'done' (results written), 'failed' (recorded failure) or 'todo'."""
    paths = Layout(out_root).run(spec.run_id)
    if paths.done():
        return "done"
    return "failed" if paths.failure_record.is_file() else "todo"


def plan_table(profile: Profile, out_root: Path | None = None) -> list[dict[str, Any]]:
    """Every planned run and its status; a seed that trains only if its learning rate wins on validation, or an
    edge rate that trains only if the grid's best is at its edge, is 'if chosen' until that is known."""
    out_root = out_root or profile.out_dir()
    trains = {s.run_id for s in runs_to_train(profile, collect(profile, out_root), selection_items(profile, out_root))}
    rows = []
    for spec in plan_runs(profile):
        status = run_status(out_root, spec)
        if status == "todo" and awaits_selection(spec) and spec.run_id not in trains:
            status = "if chosen"
        rows.append({**spec.to_dict(), "status": status})
    return rows


class TrainingBar:
    """A notebook's training progress as one terminal line (steps, tokens/s, ETA), read from the file its
    Trainer writes (lorastudy.train.training.ProgressFile) while the notebook runs in a process of its own."""

    def __init__(self, path: Path, desc: str) -> None:
        self.path, self.desc, self.bar = path, desc, None
        path.unlink(missing_ok=True)  # a stale file from an earlier build would show it finished

    def __call__(self) -> None:
        try:
            p = read_json(self.path)
        except (OSError, ValueError):  # not written yet
            return
        if self.bar is None:
            self.bar = tqdm(total=p["steps"], desc=self.desc, unit="step")
        self.bar.update(p["step"] - self.bar.n)
        self.bar.set_postfix_str(f"{p['tokens'] / max(p['seconds'], 1e-9):,.0f} tokens/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def headline(layout: Layout, spec: RunSpec) -> str:
    """One line for a finished run: its learning, forgetting and answer NLL at its longest duration."""
    paths = layout.run(spec.run_id)
    rows = read_json(paths.results_record)["rows"]
    if not rows:
        return f"{spec.run_id}: no checkpoint evaluated"
    longest = max(rows, key=lambda r: r["duration"])  # the checkpoint tuning and the claims read
    m = {r["metric"]: r["value"] for r in rows if r["checkpoint"] == longest["checkpoint"]}
    names = [f"learning_{spec.domain}", "forgetting_avg", f"answer_nll_{spec.domain}"]
    shown = ", ".join(f"{n} {m[n]:.3f}" for n in names if n in m)
    record = read_json(paths.sweep_record) if paths.sweep_record.is_file() else {}
    seconds = sum(record.get("notebook_seconds", {}).values())
    return f"{spec.run_id} ({seconds:.0f} s): {shown} at {longest['checkpoint']}"


def ensure_base(profile_ref: str, out_root: Path, threads: int | None) -> None:
    """The base notebook, once: a second sweep on the same folder waits for the first one's."""
    layout = Layout(out_root)
    layout.base_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(layout.base_lock)):
        if not layout.base_notebook.is_file():
            clean_stale(layout.base_dir)  # what a killed sweep's base notebook left half-written
            print(f"[base] building (if not cached) and evaluating the base model ({threads} threads; "
                  f"log: base/base.log)")
            bar = TrainingBar(layout.base_progress, "base pre-training")
            try:
                error = execute_in_process(BASE_NOTEBOOK, layout.base_notebook,
                                           notebook_parameters(profile_ref, out_root), log=layout.base_log,
                                           threads=threads, env={PROGRESS_ENV: str(layout.base_progress)},
                                           poll=bar)
            finally:
                bar.close()
            if error:
                raise RuntimeError(f"the base notebook failed: {error} (see {layout.base_log})")


def _analysis(profile: Profile, profile_ref: str, out_root: Path, name: str, threads: int | None) -> str | None:
    """One chapter in its own process (output to analyses/NAME.log); None, or its error in one line."""
    layout = Layout(out_root)
    params = {**notebook_parameters(profile_ref, out_root), **profile.analysis_params.get(name, {})}
    return execute_in_process(f"{name}.ipynb", layout.analysis_notebook(name), params,
                              log=layout.analysis_log(name), threads=threads)


def run_analyses(profile: Profile, profile_ref: str, out_root: Path, plan: Plan,
                 only: list[str] | None = None) -> None:
    """Every chapter (or `only` these), `plan.workers` at a time; chapters that measure speed or memory run
    alone, last."""
    names = [n for n in profile.analyses if only is None or n in only]
    shared = [n for n in names if not is_exclusive(f"{n}.ipynb")]
    alone = [n for n in names if n not in shared]
    errors: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=plan.workers) as pool, \
            tqdm(total=len(names), desc="analyses", unit="chapter") as bar:
        futures = {pool.submit(_analysis, profile, profile_ref, out_root, n, plan.threads): n for n in shared}
        for fut in as_completed(futures):
            if (err := fut.result()) is not None:
                errors[futures[fut]] = err
            bar.update()
        for name in alone:
            bar.set_postfix_str(f"{name} (alone: it measures speed)")
            if (err := _analysis(profile, profile_ref, out_root, name, plan.threads)) is not None:
                errors[name] = err
            bar.update()
    if errors:
        raise RuntimeError("analysis notebooks failed (see analyses/NAME.log and NAME.failed.ipynb): "
                           + "; ".join(f"{k}: {v}" for k, v in errors.items()))


def make_executor(profile: Profile, plan: Plan, executor: str, out_root: Path) -> LocalExecutor | SubmititExecutor:
    if executor == "local":
        return LocalExecutor(plan)
    if executor == "slurm":
        return SubmititExecutor(profile, plan, Layout(out_root).jobs_dir)
    raise ValueError(f"executor must be 'local' or 'slurm', not {executor!r}")


def run_sweep(profile: Profile, profile_ref: str, *, out_root: Path | None = None, continue_on_error: bool = False,
              analyses: bool = True, only: list[str] | None = None, workers: int | str = "auto",
              threads: int | None = None, executor: str = "local") -> SweepReport:
    """Base, runs and analyses; resumable and atomic. A failed run is recorded and the other runs go on;
    without `continue_on_error` the sweep then stops before the analyses with RunFailed."""
    out_root = out_root or profile.out_dir()
    planned = {s.run_id: s for s in plan_runs(profile)}
    if only:
        unknown = sorted(set(only) - planned.keys())
        if unknown:
            raise ValueError(f"--only names run ids the profile does not plan: {unknown} "
                             f"(see `lorastudy sweep {profile_ref} --dry-run`)")
    out_root.mkdir(parents=True, exist_ok=True)
    layout = Layout(out_root)
    stale = stale_runs(profile, out_root)
    if stale:
        first = next(iter(stale))
        raise ValueError(f"{len(stale)} finished run(s) in {out_root} were fine-tuned from other weights than the "
                         f"bases their seeds select now (e.g. {first}: {stale[first]}); remove those run folders "
                         f"(or the whole {out_root}) to train them again from these bases")
    report = SweepReport()
    clock = {"start": time.perf_counter()}
    ensure_base(profile_ref, out_root, cpu_count())  # alone on the machine: every core
    clock["base"] = time.perf_counter()

    def record(outcome: Outcome) -> None:
        if outcome.status == DONE:
            report.done.append(outcome.run_id)
            tqdm.write(f"[run] {headline(layout, planned[outcome.run_id])}")
        elif outcome.status == FAILED:
            report.failed[outcome.run_id] = outcome.error
            print(f"[sweep] FAILED {outcome.run_id}: {outcome.error}")
        else:
            report.skipped.append(outcome.run_id)

    seen: set[str] = set()

    def wanted(spec: RunSpec) -> bool:
        return not only or spec.run_id in only

    def pending(df: pd.DataFrame | None) -> list[str]:
        """Runs to train that no call planned before: without results, every run but the other seeds and edge
        rates of learning-rate sweeps; with them, also the edges and seeds their results ask for."""
        items = selection_items(profile, out_root) if df is not None else None
        specs = [s for s in runs_to_train(profile, df, items) if wanted(s) and s.run_id not in seen]
        seen.update(s.run_id for s in specs)
        todo = [s.run_id for s in specs if run_status(out_root, s) != "done"]
        report.skipped.extend(s.run_id for s in specs if s.run_id not in todo)
        if df is not None and todo:
            tqdm.write(f"[sweep] from the validation scores: {len(todo)} more run(s) (an edge rate, or the other "
                       "seeds at a chosen rate)")
        return todo

    todo = pending(None)
    todo += pending(collect(profile, out_root))  # groups already decided by an earlier sweep
    if report.skipped:
        print(f"[sweep] {len(report.skipped)} runs already done; skipping them")
    expected = [s for s in runs_expected(profile) if wanted(s) and run_status(out_root, s) != "done"]
    plan = plan_workers(profile, max(1, len(todo), len(expected)), workers, threads)  # the seeds to come count too
    if todo:
        print(f"[sweep] {len(todo)} runs on {plan.workers} worker(s), {plan.threads or 'default'} thread(s) each "
              f"({plan.reason}); {executor} executor; each run's log: runs/RUN_ID/sweep.log")
        runner = make_executor(profile, plan, executor, out_root)
        costs = run_costs(profile, planned.values()) if plan.workers > 1 else {}  # the longest run first
        # the runs a finished one makes possible (an edge rate; a group's other seeds once its rate is chosen)
        runner.run(profile_ref, out_root, todo, record, more=lambda: pending(collect(profile, out_root)), costs=costs)
    clock["runs"] = time.perf_counter()
    if profile.released:
        from lorastudy.evaluation.released import evaluate_released  # heavy (torch): only released profiles

        print(f"[released] evaluating {len(profile.released)} released checkpoints")
        evaluate_released(profile, out_root)
    write_table(collect(profile, out_root), layout.results_table)
    items = collect_items(profile, out_root)
    write_table(items, layout.items_table)
    write_table(run_records(profile, out_root), layout.run_records)
    if len(items):
        from lorastudy.analysis.claims import write_claims  # bootstraps: only once the results are in

        write_claims(profile, out_root)
    if report.failed and not continue_on_error:
        raise RunFailed(f"{len(report.failed)} run(s) failed: " + "; ".join(f"{k}: {v}" for k, v in report.failed.items()))
    if analyses:
        run_analyses(profile, profile_ref, out_root, plan)
    clock["analyses"] = time.perf_counter()
    write_json(layout.sweep_record, {
        "seconds": {"base": clock["base"] - clock["start"], "runs": clock["runs"] - clock["base"],
                    "results_and_analyses": clock["analyses"] - clock["runs"]},
        "runs_done": len(report.done), "runs_failed": len(report.failed), "workers": plan.workers,
        "threads_per_run": plan.threads, "executor": executor, "time": time.time()})
    return report
