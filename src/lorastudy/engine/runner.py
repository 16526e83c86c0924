"""One run of a sweep, in a process of its own: its two notebooks under a per-run lock, at a fixed thread count.

The lock (an OS file lock, released by the kernel when the process dies) makes sure that two workers, or two
sweeps started at once on one output folder, never train the same run; a killed worker's run is simply not
done and is redone by the next sweep. Every attempt is logged, so a reader can see that a run was trained once.
Run as `python -m lorastudy.engine.runner PROFILE OUT RUN_ID --threads N` for one run, called in a cluster job by the
submitit executor, or as `python -m lorastudy.engine.runner PROFILE OUT --serve --reply-fd FD` by the local executor:
a worker that reads run ids from stdin, runs them one after another in one kernel kept across runs (no kernel
start-up or torch import per run), and answers each with its status on FD.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from lorastudy.config import load_profile
from lorastudy.engine.notebook_exec import (
    clean_stale,
    compute_env,
    describe_error,
    execute,
    kernel,
    notebook_parameters,
    reset,
    start_kernel,
)
from lorastudy.io import read_json, write_json
from lorastudy.layout import EVALUATE_NOTEBOOK, FINETUNE_NOTEBOOK, Layout, RunPaths
from lorastudy.plan import find_run

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


def run_locked(profile_ref: str, out_root: str | Path, run_id: str, *, threads: int | None = None,
               km: Any = None) -> str:
    """Train and evaluate one run unless it is done or another process holds it; returns DONE, SKIPPED,
    BUSY or FAILED (then with RUN/failed.json written). Never raises for a failed run. `km`: a running kernel
    to use (its namespace cleared first), else a fresh one for this run."""
    os.environ.update(compute_env(threads))  # inherited by the notebooks' kernels
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
        shared = km is not None
        with nullcontext(km) if shared else kernel() as k:  # one kernel for both notebooks
            kernel_pid = getattr(k.provisioner, "pid", None)
            if shared:  # a worker's kernel kept across runs: nothing of the run before survives
                reset(k)
            for notebook in (FINETUNE_NOTEBOOK, EVALUATE_NOTEBOOK):
                start = time.perf_counter()
                execute(notebook, paths.notebook(notebook), notebook_parameters(profile_ref, out_root, spec.run_id),
                        km=k)
                reset(k)
                timings[notebook] = time.perf_counter() - start
        if not paths.done():
            raise RuntimeError(f"{EVALUATE_NOTEBOOK} finished without writing {paths.results_record}")
        write_json(paths.sweep_record, {"run_id": run_id, "notebook_seconds": timings, "threads": threads,
                                        "kernel": "kept by the worker" if shared else "own",
                                        "kernel_pid": kernel_pid,
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


@contextmanager
def output_to(log: Path) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2, so library and C-level output too) appended
    to `log` for the block, then put back."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1), os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def _relay(read_fd: int) -> None:
    """Copy what the kernel writes to its stdout/stderr onto ours, which `output_to` points at the current run's
    log: the kernel outlives the run whose log its streams were opened on."""
    while data := os.read(read_fd, 65536):
        os.write(1, data)


def serve(profile_ref: str, out_root: str | Path, *, threads: int | None, reply_fd: int) -> int:
    """A sweep worker: one run id per line on stdin, each run under its lock in one kernel kept across runs,
    its status answered on `reply_fd`. The kernel is started afresh after a failed run (whatever it left behind
    goes with it) or when it died."""
    os.environ.update(compute_env(threads))  # inherited by the kernel
    read_fd, write_fd = os.pipe()
    threading.Thread(target=_relay, args=(read_fd,), daemon=True).start()
    km = None
    with os.fdopen(reply_fd, "w", buffering=1) as reply:
        try:
            for line in sys.stdin:
                if not (run_id := line.strip()):
                    continue
                with output_to(Layout(Path(out_root)).run(run_id).sweep_log):
                    if km is None or not km.is_alive():
                        km = start_kernel(stdout=write_fd, stderr=write_fd)
                    status = run_locked(profile_ref, out_root, run_id, threads=threads, km=km)
                    print(f"[runner] {run_id}: {status}", flush=True)
                if status == FAILED:
                    km.shutdown_kernel(now=True)
                    km = None
                reply.write(status + "\n")
        finally:
            if km is not None:
                km.shutdown_kernel(now=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lorastudy.engine.runner", description=__doc__.splitlines()[0])
    p.add_argument("profile")
    p.add_argument("output")
    p.add_argument("run_id", nargs="?", help="the run to train and evaluate (not with --serve)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--serve", action="store_true", help="a worker: run ids from stdin, one kernel for all")
    p.add_argument("--reply-fd", type=int, default=None, help="with --serve: where each run's status goes")
    args = p.parse_args(argv)
    if args.serve:
        if args.run_id is not None or args.reply_fd is None:
            p.error("--serve takes run ids on stdin and needs --reply-fd")
        return serve(args.profile, args.output, threads=args.threads, reply_fd=args.reply_fd)
    if args.run_id is None:
        p.error("a run id is needed (or --serve)")
    status = run_locked(args.profile, args.output, args.run_id, threads=args.threads)
    print(f"[runner] {args.run_id}: {status}", flush=True)
    return EXIT_CODES[status]


if __name__ == "__main__":
    sys.exit(main())
