"""Where a sweep's runs execute: local worker processes (the default) or cluster jobs through submitit.

Both hand every run to `lorastudy.engine.runner`, so resume and lock semantics are the same everywhere: a done run is
skipped, a run another process holds is waited for, a failed run is recorded and the others go on.
"""
from __future__ import annotations

import itertools
import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lorastudy.config import Profile
from lorastudy.engine.notebook_exec import compute_env
from lorastudy.engine.runner import BUSY, DONE, FAILED, SKIPPED, failure, run_lock, run_locked
from lorastudy.engine.schedule import longest_first
from lorastudy.io import write_json
from lorastudy.layout import PROJECT_ROOT, Layout

GIB = 2**30
RUN_MEMORY_BYTES = {"mini": int(1.5 * GIB), "pretrained": 4 * GIB}  # per run, by base kind; a mini run peaks ~0.8 GiB


@dataclass
class Outcome:
    """What became of one run: DONE, SKIPPED (done before, or by another sweep), or FAILED with its error."""

    run_id: str
    status: str
    error: str = ""


@dataclass
class Plan:
    """How many runs at once, with how many CPU threads each."""

    workers: int
    threads: int | None
    reason: str = field(default="")


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def available_memory() -> int:
    import psutil  # imported where needed: only the automatic worker count reads memory

    return int(psutil.virtual_memory().available)


def plan_workers(profile: Profile, n_runs: int, workers: int | str = "auto", threads: int | None = None) -> Plan:
    """Workers and threads per run. `auto`: as many workers as cores allow at the profile's threads per run
    (mini profiles: 1, so that a run's numbers do not depend on the worker count), bounded by memory and by
    the number of runs; one worker on a GPU machine (a run takes the whole device)."""
    threads = threads or profile.execution.threads_per_run
    if workers != "auto":
        n = int(workers)
        if n < 1:
            raise ValueError(f"--workers must be at least 1 or 'auto', not {workers!r}")
        return Plan(n, threads or max(1, cpu_count() // n), "as asked")
    import torch  # imported where needed: deciding on GPUs is the only use here

    if torch.cuda.is_available():
        return Plan(1, threads, "GPU: one run at a time")
    per_run = threads or cpu_count()
    by_cores = max(1, cpu_count() // per_run)
    by_memory = max(1, available_memory() // RUN_MEMORY_BYTES[profile.base.kind])
    n = max(1, min(by_cores, by_memory, n_runs))
    return Plan(n, per_run, f"{cpu_count()} cores / {per_run} thread(s) per run, memory for {by_memory}")


def _wait_for(out_root: Path, run_id: str) -> Outcome:
    """A run another process held: wait until its lock is free, then say what it left."""
    paths = Layout(out_root).run(run_id)
    with run_lock(paths):
        pass
    if paths.done():
        return Outcome(run_id, SKIPPED)
    return Outcome(run_id, BUSY)


class _Worker:
    """One `python -m lorastudy.engine.runner --serve` process: runs the ids it is sent one after another in one kernel
    that it keeps across runs, and answers each with its status on a pipe of its own."""

    def __init__(self, profile_ref: str, out_root: Path, threads: int | None, log: Path) -> None:
        read_fd, write_fd = os.pipe()
        cmd = [sys.executable, "-m", "lorastudy.engine.runner", profile_ref, str(out_root), "--serve",
               "--reply-fd", str(write_fd)]
        if threads:
            cmd += ["--threads", str(threads)]
        env = {**os.environ, **compute_env(threads), "PYTHONUNBUFFERED": "1"}
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.STDOUT, text=True,
                                         env=env, cwd=PROJECT_ROOT, pass_fds=(write_fd,))
        os.close(write_fd)
        self.replies = os.fdopen(read_fd, encoding="utf-8")

    def run(self, run_id: str) -> str | int:
        """The run's status, or the exit code of a worker that died on it."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(run_id + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self.proc.wait()
        line = self.replies.readline().strip()
        return line if line else self.proc.wait()

    def close(self) -> None:
        """End of input: the worker shuts its kernel down and exits."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.replies.close()


class LocalExecutor:
    """`workers` processes at once on this machine (`lorastudy.engine.runner --serve` with `threads` threads each,
    every one keeping its kernel across the runs it is given); a run's output goes to RUN/sweep.log, the
    progress bar shows what every worker is doing."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._started = itertools.count()

    def _worker(self, profile_ref: str, out_root: Path) -> _Worker:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            log = Layout(out_root).worker_log(f"{os.getpid()}-{next(self._started)}")
            return _Worker(profile_ref, out_root, self.plan.threads, log)

    def _one(self, profile_ref: str, out_root: Path, run_id: str) -> Outcome:
        paths = Layout(out_root).run(run_id)
        paths.dir.mkdir(parents=True, exist_ok=True)
        worker = self._worker(profile_ref, out_root)
        answer = worker.run(run_id)
        if isinstance(answer, str):
            self._idle.put(worker)
        else:
            worker.close()
        if answer == BUSY:
            return Outcome(run_id, BUSY)
        if answer == SKIPPED:  # another sweep finished it between our plan and our turn
            return Outcome(run_id, SKIPPED)
        if answer == DONE and paths.done():
            return Outcome(run_id, DONE)
        if isinstance(answer, str):
            return Outcome(run_id, FAILED, failure(paths))
        error = f"worker ended with code {answer} (killed or crashed; the next sweep redoes the run)"
        write_json(paths.failure_record, {"run_id": run_id, "error": error, "time": time.time()})
        return Outcome(run_id, FAILED, error)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def run(self, profile_ref: str, out_root: Path, run_ids: Sequence[str], on_done: Callable[[Outcome], None],
            more: Callable[[], list[str]] | None = None, costs: dict[str, float] | None = None) -> list[Outcome]:
        """Train `run_ids`, and after every finished run those `more` adds (runs it makes possible: the other
        seeds of a group whose learning rate is chosen), so no worker waits for a stage to end. With `costs`
        (estimated run lengths, lorastudy.engine.schedule) a free worker takes the longest run waiting."""
        outcomes: list[Outcome] = []
        running: dict[Future, str] = {}
        costs = costs or {}
        todo = longest_first(run_ids, costs)
        with ThreadPoolExecutor(max_workers=self.plan.workers) as pool, \
                tqdm(total=len(todo), desc="runs", unit="run") as bar:
            try:
                while todo or running:
                    while todo and len(running) < self.plan.workers:
                        run_id = todo.pop(0)
                        running[pool.submit(self._one, profile_ref, out_root, run_id)] = run_id
                    bar.set_postfix_str(" | ".join(running.values()), refresh=True)
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        run_id = running.pop(fut)
                        outcome = fut.result()
                        if outcome.status == BUSY:  # held by another sweep: wait for it, redo it if it died
                            outcome = _wait_for(out_root, run_id)
                            if outcome.status == BUSY:
                                todo.append(run_id)
                                continue
                        outcomes.append(outcome)
                        on_done(outcome)
                        bar.update()
                        added = more() if more else []
                        if added:
                            todo = longest_first(todo + added, costs)
                            bar.total += len(added)
                            bar.refresh()
            finally:
                self.close()
        return outcomes


def _job(profile_ref: str, out_root: str, run_id: str, threads: int | None) -> str:
    """One cluster job: the run under its lock, in the job's own process."""
    status = run_locked(profile_ref, out_root, run_id, threads=threads)
    if status == BUSY:
        status = _wait_for(Path(out_root), run_id).status
    return status


class SubmititExecutor:
    """Every run as one task of a submitit job array (Slurm, or `cluster: local` for submitit's local
    executor); resources per task from the profile's `execution.slurm`."""

    def __init__(self, profile: Profile, plan: Plan, folder: Path) -> None:
        import submitit  # optional at import time: only cluster sweeps need it

        cfg = profile.execution.slurm
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cfg.cluster)
        params = dict(timeout_min=cfg.timeout_min, cpus_per_task=plan.threads or cfg.cpus_per_task,
                      mem_gb=cfg.mem_gb, slurm_array_parallelism=cfg.array_parallelism)
        gpus = cfg.gpus_per_task
        if gpus is None:
            gpus = profile.training.num_processes if profile.base.kind == "pretrained" else 0
        if gpus:
            params["gpus_per_node"] = gpus
        if cfg.partition:
            params["slurm_partition"] = cfg.partition
        self.executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        self.plan = plan

    def run(self, profile_ref: str, out_root: Path, run_ids: Sequence[str], on_done: Callable[[Outcome], None],
            more: Callable[[], list[str]] | None = None, costs: dict[str, float] | None = None) -> list[Outcome]:
        """LocalExecutor.run's contract, a job array per stage: `run_ids`, then, once that array has ended, the
        runs `more` adds (the edge rates, then the other seeds), until it adds none. `costs` is not used: the
        cluster's scheduler orders the tasks."""
        outcomes = self._array(profile_ref, out_root, run_ids, on_done)
        while more and (later := more()):
            outcomes += self._array(profile_ref, out_root, later, on_done)
        return outcomes

    def _array(self, profile_ref: str, out_root: Path, run_ids: Sequence[str],
               on_done: Callable[[Outcome], None]) -> list[Outcome]:
        n = len(run_ids)
        jobs = self.executor.map_array(_job, [profile_ref] * n, [str(out_root)] * n, list(run_ids),
                                       [self.plan.threads] * n)
        outcomes = []
        pending = dict(zip(run_ids, jobs))
        with tqdm(total=n, desc="runs (jobs)", unit="run") as bar:
            while pending:
                for run_id, job in list(pending.items()):
                    if not job.done():
                        continue
                    del pending[run_id]
                    try:
                        status = job.result()
                    except Exception as err:  # noqa: BLE001 - a job that died is one failed run
                        status, error = FAILED, f"job {job.job_id}: {type(err).__name__}: {err}"
                    else:
                        error = failure(Layout(out_root).run(run_id)) if status == FAILED else ""
                    outcome = Outcome(run_id, status, error)
                    outcomes.append(outcome)
                    on_done(outcome)
                    bar.update()
                time.sleep(1)
        return outcomes
