"""Zygotes: sandbox bootstraps kept running, each forking the outer process of one run at a time.

A fresh `python -I -S` costs about 20 ms of a sandboxed run's 30 before any isolation is set up. A zygote is
that interpreter started once, with the trusted bootstrap loaded (lorastudy/evaluation/sandbox_serve.py): asked
to run, it forks, and the child goes on exactly as a fresh bootstrap would (namespaces, private root, uid,
cgroups, rlimits, seccomp), so every run still gets a process tree, a root and limits of its own. The zygote
never reads a run's payload (the child opens the run's files), so no run's program or nonce is in the memory
that later runs are forked from. A zygote serves one run at a time; the pool keeps one per concurrent caller.
Runs of one zygote share its hash seed and address-space layout (a program whose outcome depends on set order is
then consistent within a worker, as it would be with PYTHONHASHSEED fixed; isolation does not rest on either).
"""
from __future__ import annotations

import atexit
import contextlib
import marshal
import os
import select
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

ANSWER_TIMEOUT = 30.0  # a zygote answers in milliseconds; one that does not is broken, not slow


class ZygoteError(RuntimeError):
    """The zygote could not start a run (or died): the caller runs it in a fresh interpreter instead."""


class Zygote:
    """One bootstrap in serve mode, spoken to through its stdin and stdout (length-prefixed marshal messages)."""

    def __init__(self, interpreter: str, bootstrap: bytes, loader: str, env: dict[str, str]) -> None:
        folder = tempfile.mkdtemp(prefix="lorastudy-zygote-")
        try:
            with open(os.path.join(folder, "bootstrap.bin"), "wb") as fh:
                fh.write(bootstrap)
            self.proc = subprocess.Popen([interpreter, "-I", "-S", "-u", "-c", loader, "serve=1"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, cwd=folder, env=env, start_new_session=True)
            kind, _ = self._answer()  # the bootstrap has been read: its folder can go
            if kind != "ready":
                raise ZygoteError(f"the zygote said {kind!r} on start")
        except BaseException:
            if hasattr(self, "proc"):
                self.close()
            raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def spawn(self, cfg: dict[str, str], files: dict[str, Any]) -> int:
        """Fork the outer process of one run (in the run's cgroups, its own process group); its pid."""
        self._ask(("run", cfg, files))
        kind, value = self._answer()
        if kind != "pid":
            raise ZygoteError(f"the zygote could not fork: {value}")
        return int(value)

    def reap(self, pid: int) -> int:
        """Wait for an outer process this zygote forked; its wait status."""
        self._ask(("reap", pid))
        kind, value = self._answer()
        if kind != "status":
            raise ZygoteError(f"the zygote could not reap {pid}: {value}")
        return int(value)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]

    def _ask(self, message: Any) -> None:
        body = marshal.dumps(message)
        try:
            self.proc.stdin.write(len(body).to_bytes(4, "big") + body)  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (OSError, ValueError) as exc:
            raise ZygoteError(f"the zygote is gone ({exc})") from exc

    def _read(self, size: int) -> bytes:
        fd, data = self.proc.stdout.fileno(), b""  # type: ignore[union-attr]
        while len(data) < size:
            if not select.select([fd], [], [], ANSWER_TIMEOUT)[0]:
                raise ZygoteError("the zygote did not answer")
            chunk = os.read(fd, size - len(data))
            if not chunk:
                raise ZygoteError("the zygote is gone")
            data += chunk
        return data

    def _answer(self) -> tuple[str, Any]:
        answer = marshal.loads(self._read(int.from_bytes(self._read(4), "big")))
        if type(answer) is not tuple or len(answer) != 2:
            raise ZygoteError("the zygote's answer is malformed")
        return answer


_idle: list[Zygote] = []
_idle_lock = threading.Lock()
os.register_at_fork(after_in_child=_idle.clear)  # a forked evaluator must not share its parent's zygotes' pipes


@contextlib.contextmanager
def borrowed(interpreter: str, bootstrap: bytes, loader: str, env: dict[str, str]) -> Iterator[Zygote]:
    """An idle zygote (started when none is), back to the pool after the run; one that failed is closed."""
    with _idle_lock:
        zygote = _idle.pop() if _idle else None
    if zygote is None or zygote.proc.poll() is not None:
        zygote = Zygote(interpreter, bootstrap, loader, env)
    try:
        yield zygote
    except BaseException:
        zygote.close()
        raise
    with _idle_lock:
        _idle.append(zygote)


@atexit.register
def close_all() -> None:
    """End every idle zygote (they would end anyway when this process's pipes close)."""
    with _idle_lock:
        zygotes, _idle[:] = list(_idle), []
    for zygote in zygotes:
        zygote.close()
