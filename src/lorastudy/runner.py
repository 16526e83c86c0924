"""One run of a sweep, in a process of its own: its two notebooks under a per-run lock, at a fixed thread count.

The lock (an OS file lock, released by the kernel when the process dies) makes sure that two workers, or two
sweeps started at once on one output folder, never train the same run; a killed worker's run is simply not
done and is redone by the next sweep. Every attempt is logged, so a reader can see that a run was trained once.
Run as `python -m lorastudy.runner PROFILE OUT RUN_ID --threads N` by the local executor, or called in a
cluster job by the submitit executor.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from lorastudy.config import load_profile

from lorastudy.plan import find_run
from lorastudy.io import read_json, write_json
from lorastudy.layout import EVALUATE_NOTEBOOK, FINETUNE_NOTEBOOK, Layout, RunPaths
from lorastudy.notebooks import clean_stale, describe_error, execute, kernel, notebook_parameters, reset, thread_env

DONE, FAILED, BUSY, SKIPPED = "done", "failed", "busy", "skipped"
EXIT_CODES = {DONE: 0, FAILED: 1, SKIPPED: 3, BUSY: 75}  # 75 = EX_TEMPFAIL: another process holds the run


def run_lock(paths: RunPaths) -> FileLock:
    paths.dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(paths.lock_file))


def log_attempt(paths: RunPaths, **extra: Any) -> None:
    """Append one line per training attempt (host, pid, time): how a reader counts attempts."""
    line = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), **extra})
    with open(paths.attempts, "a", encoding="utf-8") as fh:  # one short write: atomic on POSIX for O_APPEND
        fh.write(line + "\n")


def run_locked(profile_ref: str, out_root: str | Path, run_id: str, *, threads: int | None = None) -> str:
    """Train and evaluate one run unless it is done or another process holds it; returns DONE, SKIPPED,
    BUSY or FAILED (then with RUN/failed.json written). Never raises for a failed run."""
    os.environ.update(thread_env(threads))  # inherited by the notebooks' kernels
    out_root = Path(out_root)
    paths = Layout(out_root).run(run_id)
    lock = run_lock(paths)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return BUSY
    try:
        if paths.done():
            return SKIPPED
        spec = find_run(load_profile(profile_ref), run_id)  # a clear error for an unknown id
        paths.failure_record.unlink(missing_ok=True)
        clean_stale(paths.dir)
        log_attempt(paths, threads=threads)
        timings: dict[str, float] = {}
        started = time.time()
        with kernel() as km:  # one kernel for both notebooks, its namespace cleared in between
            for notebook in (FINETUNE_NOTEBOOK, EVALUATE_NOTEBOOK):
                start = time.perf_counter()
                execute(notebook, paths.notebook(notebook), notebook_parameters(profile_ref, out_root, spec.run_id),
                        km=km)
                reset(km)
                timings[notebook] = time.perf_counter() - start
        if not paths.done():
            raise RuntimeError(f"{EVALUATE_NOTEBOOK} finished without writing {paths.results_record}")
        write_json(paths.sweep_record, {"run_id": run_id, "notebook_seconds": timings, "threads": threads,
                                        "started": started, "finished": time.time(), "pid": os.getpid(),
                                        "host": socket.gethostname()})
        return DONE
    except Exception as err:  # noqa: BLE001 - a failed run is recorded; the sweep decides whether to go on
        write_json(paths.failure_record, {"run_id": run_id, "error": describe_error(err),
                                          "traceback": traceback.format_exc(), "time": time.time()})
        return FAILED
    finally:
        lock.release()


def failure(paths: RunPaths) -> str:
    """The recorded error of a failed run, in one line."""
    if paths.failure_record.is_file():
        return str(read_json(paths.failure_record).get("error", "failed"))
    return "failed without a record (see sweep.log in the run folder)"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lorastudy.runner", description=__doc__.splitlines()[0])
    p.add_argument("profile")
    p.add_argument("output")
    p.add_argument("run_id")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    status = run_locked(args.profile, args.output, args.run_id, threads=args.threads)
    print(f"[runner] {args.run_id}: {status}", flush=True)
    return EXIT_CODES[status]


if __name__ == "__main__":
    sys.exit(main())
