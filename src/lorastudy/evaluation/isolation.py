"""What isolation this machine allows the sandbox, detected once: namespaces (network, PID, mount), an
unprivileged uid per concurrent run (worker slots held with file locks), per-run cgroups (v2, or v1 `memory` and
`pids`), and pidfds. lorastudy.evaluation.sandbox uses the layers found and reports the missing ones; a run's
folder is removed here whatever the program left in it.
"""
from __future__ import annotations

import contextlib
import ctypes.util
import fcntl
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SLOT_UID_BASE, SLOTS = 62000, 256  # run uids 62000-62255, unused by Debian's users (< 60000 and 65534)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_SLOT_DIR = Path(tempfile.gettempdir()) / "lorastudy-sandbox-slots"


@dataclass(frozen=True)
class Caps:
    root: bool
    netns: bool
    pidns: bool
    uid: int | None  # the uid programs run as (slot 0's, or nobody's); None = the evaluator's own
    gid: int | None
    pidfd: bool
    mntns: bool = False  # a private root (mount namespace, tmpfs, pivot_root)
    cgroup: str = ""  # "v2", "v1" or "" (none)
    slots: bool = False  # a uid per concurrent run
    seccomp: str = ""  # libseccomp's file: namespaces, mounts, tracing and the like refused


_caps: Caps | None = None
_caps_lock = threading.Lock()

# Probes what this process may do, in throw-away children so that the evaluator itself is untouched.
_PROBE = r'''
import ctypes, os, sys, tempfile
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


def mntns():
    if libc.unshare(0x00020000) != 0 or libc.mount(None, b"/", None, 16384 | (1 << 18), None) != 0:
        return False
    where = tempfile.mkdtemp()
    try:
        return libc.mount(b"tmpfs", where.encode(), b"tmpfs", 0, b"size=1m") == 0
    finally:
        libc.umount2(where.encode(), 2)
        os.rmdir(where)


def drop():
    uid, gid = int(sys.argv[1]), int(sys.argv[2])
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    return os.getuid() == uid and os.getgid() == gid


print(int(attempt(netns)), int(attempt(pidns)), int(attempt(drop)), int(attempt(mntns)))
'''


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


def _slot_uids_free() -> bool:
    """The slot uids belong to no user of this machine (else programs would run as that user)."""
    used = {e.pw_uid for e in pwd.getpwall()}
    return not used & set(range(SLOT_UID_BASE, SLOT_UID_BASE + SLOTS))


def _cgroup_dirs(version: str, slot: int) -> list[Path]:
    name = f"lorastudy-sandbox-{slot}"
    if version == "v2":
        return [_CGROUP_ROOT / name]
    return [_CGROUP_ROOT / "memory" / name, _CGROUP_ROOT / "pids" / name]


def _cgroup_version() -> str:
    """'v2' or 'v1' when this process can make a run's cgroup and set its memory and pids limits, else ''."""
    if (_CGROUP_ROOT / "cgroup.controllers").is_file():
        version = "v2" if {"memory", "pids"} <= set((_CGROUP_ROOT / "cgroup.controllers").read_text().split()) \
            else ""
    else:
        version = "v1" if (_CGROUP_ROOT / "memory").is_dir() and (_CGROUP_ROOT / "pids").is_dir() else ""
    if not version:
        return ""
    try:
        set_cgroup_limits(version, 0, 64 * 2**20, 8)
        return version
    except OSError as exc:
        log.info("sandbox: no per-run cgroup (%s)", exc)
        return ""


def set_cgroup_limits(version: str, slot: int, memory: int, procs: int) -> list[Path]:
    """Create (or reuse) the slot's cgroups with these limits; the files its bootstrap joins."""
    dirs = _cgroup_dirs(version, slot)
    for d in dirs:
        d.mkdir(exist_ok=True)
    if version == "v2":
        (dirs[0] / "memory.max").write_text(str(memory))
        if (dirs[0] / "memory.swap.max").exists():
            (dirs[0] / "memory.swap.max").write_text("0")
        (dirs[0] / "pids.max").write_text(str(procs))
        return [dirs[0] / "cgroup.procs"]
    files = [dirs[0] / "memory.limit_in_bytes", dirs[0] / "memory.memsw.limit_in_bytes"]  # memory <= memsw:
    if not files[1].exists():
        files.pop()
    elif int(files[1].read_text()) < memory:  # raising both, memsw goes first
        files.reverse()
    for f in files:
        f.write_text(str(memory))
    (dirs[1] / "pids.max").write_text(str(procs))
    return [d / "cgroup.procs" for d in dirs]


def kill_cgroup(version: str, slot: int) -> None:
    """SIGKILL whatever is still in the slot's cgroup (a process that left the group and the namespaces)."""
    for _ in range(50):
        pids = set()
        for d in _cgroup_dirs(version, slot):
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _probe() -> Caps:
    """Detect once (in a child process) which isolation features this process may use."""
    pidfd = _has_pidfd()
    seccomp = ctypes.util.find_library("seccomp") or ""
    if os.geteuid() != 0:
        return Caps(root=False, netns=False, pidns=False, uid=None, gid=None, pidfd=pidfd, seccomp=seccomp)
    slots = _slot_uids_free()
    uid, gid = (SLOT_UID_BASE, SLOT_UID_BASE) if slots else _nobody()
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-c", _PROBE, str(uid), str(gid)],
            capture_output=True, text=True, timeout=30, env={"PATH": DEFAULT_PATH}, cwd="/",
        ).stdout.split()
        netns, pidns, drop, mntns = (tok == "1" for tok in out)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.warning("sandbox capability probe failed (%r): running without namespaces", exc)
        netns = pidns = drop = mntns = False
    return Caps(root=True, netns=netns, pidns=pidns, uid=uid if drop else None, gid=gid if drop else None,
                 pidfd=pidfd, mntns=mntns and pidns, cgroup=_cgroup_version(), slots=slots and drop,
                 seccomp=seccomp)


def capabilities() -> Caps:
    global _caps
    with _caps_lock:
        if _caps is None:
            _caps = _probe()
            missing = [name for name, ok in (("network namespace", _caps.netns), ("PID namespace", _caps.pidns),
                                             ("private root", _caps.mntns), ("per-run cgroup", _caps.cgroup),
                                             ("seccomp", _caps.seccomp), ("unprivileged uid", _caps.uid is not None)) if not ok]
            if missing:
                log.warning("sandbox: running without %s (see sandbox_capabilities())", ", ".join(missing))
        return _caps


def use(caps: Caps) -> None:
    """Use these layers from now on (the sandbox drops a layer its first trial run could not set up)."""
    global _caps
    with _caps_lock:
        _caps = caps


def sandbox_capabilities() -> dict[str, Any]:
    """Which isolation features the sandbox uses in this process (detected once, then cached)."""
    caps = capabilities()
    notes = []
    if not caps.root:
        notes.append("not root: programs run as the evaluator's user, without namespaces (network and files "
                     "reachable)")
    else:
        if not caps.netns:
            notes.append("no network namespace: programs can reach the network")
        if not caps.pidns:
            notes.append("no PID namespace: a program that calls setsid() can outlive its run")
        if not caps.mntns:
            notes.append("no private root: programs see the host's files as their user may")
        if not caps.cgroup:
            notes.append("no per-run cgroup: memory is bounded per process (RLIMIT_AS), not per run")
        if not caps.seccomp:
            notes.append("no seccomp (libseccomp2 missing): programs may make user namespaces and the like")
        if caps.uid is None:
            notes.append("cannot switch to an unprivileged uid: programs run as root")
        elif not caps.slots:
            notes.append("programs run as nobody: concurrent runs share one RLIMIT_NPROC")
    return {
        "root": caps.root,
        "network_namespace": caps.netns,
        "pid_namespace": caps.pidns,
        "mount_namespace": caps.mntns,
        "cgroup": caps.cgroup or None,
        "seccomp": bool(caps.seccomp),
        "run_as_uid": caps.uid if caps.uid is not None else os.geteuid(),
        "run_as_gid": caps.gid if caps.gid is not None else os.getegid(),
        "privilege_drop": caps.uid is not None,
        "uid_per_run": caps.slots,
        "rlimit_nproc": "per run (its own uid)" if caps.slots else "per uid, shared by runs in flight"
        if caps.uid is not None else "relative to the evaluator user's current task count",
        "pidfd": caps.pidfd,
        "notes": notes,
    }


@contextlib.contextmanager
def slot(caps: Caps) -> Iterator[int]:
    """A worker slot no other run (of any evaluator process on this machine) holds: its uid and cgroup."""
    if not caps.slots and not caps.cgroup:
        yield 0
        return
    _SLOT_DIR.mkdir(mode=0o700, exist_ok=True)
    for _ in range(200):
        for slot in range(SLOTS):
            fh = open(_SLOT_DIR / f"{slot}.lock", "w")  # noqa: SIM115 - held for the run
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                yield slot
            finally:
                fh.close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"all {SLOTS} sandbox slots are busy")


def remove_tree(root: Path) -> None:
    """Remove the run's folder whatever the program left in it (read-only or mode-000 folders, a tree too deep
    for shutil's recursion); never raises: a failure is logged and the folder left for the OS to clean."""

    def make_writable(func: Any, path: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
            func(path)

    for attempt in range(3):
        try:
            shutil.rmtree(root, onerror=make_writable)
        except (RecursionError, OSError):
            with contextlib.suppress(OSError, subprocess.SubprocessError):  # coreutils' rm walks without recursion
                subprocess.run(["rm", "-rf", "--one-file-system", "--", str(root)], capture_output=True, timeout=60)
        if not root.exists():
            return
        time.sleep(0.05 * (attempt + 1))  # processes of a killed PID namespace may still be exiting
    log.warning("sandbox: could not fully remove %s", root)
