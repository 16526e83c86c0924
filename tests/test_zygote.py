"""Runs forked from a zygote are as contained as runs in a fresh interpreter, end the same way, and share nothing."""
from __future__ import annotations

import logging
import os
import re
import signal
import textwrap
from dataclasses import replace

import pytest

from lorastudy.evaluation import isolation, sandbox, zygote
from lorastudy.evaluation.sandbox import FAILED, PASSED, TIMED_OUT, run_program

SERVED = isolation.capabilities().pidfd
needs_zygote = pytest.mark.skipif(not SERVED, reason="no pidfds here: every run starts a fresh interpreter")


def _run(program: str, **kw) -> sandbox.SandboxResult:
    return run_program(textwrap.dedent(program), **kw)


def _idle_pids() -> list[int]:
    with zygote._idle_lock:
        return [z.proc.pid for z in zygote._idle]


@needs_zygote
def test_a_run_is_served_by_a_zygote_and_sees_nothing_of_the_run_before() -> None:
    first = _run("""
        import builtins, os, sys
        builtins.LEFT_BEHIND = 1
        sys.modules["left_behind"] = sys
        os.environ["LEFT_BEHIND"] = "1"
        open("/tmp/left-behind", "w").write("x")
    """)
    assert first.passed, first
    assert _idle_pids(), "the run did not go through a zygote"
    second = _run("""
        import builtins, os, sys
        assert not hasattr(builtins, "LEFT_BEHIND")
        assert "left_behind" not in sys.modules and "LEFT_BEHIND" not in os.environ
        assert not os.path.exists("/tmp/left-behind"), os.listdir("/tmp")
        print("ENV", sorted(os.environ))
    """)
    assert second.passed, second
    assert "ENV ['HOME', 'LANG', 'MKL_NUM_THREADS', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'PATH', 'TMPDIR']" \
        in second.output


@needs_zygote
def test_the_zygote_never_holds_a_runs_program_or_nonce() -> None:
    """Later runs are forked from the zygote's memory: no earlier run's source may be in it."""
    if os.geteuid() != 0:
        pytest.skip("reading another process's memory needs root")
    marker = "MARKER-" + os.urandom(8).hex()
    assert _run(f"x = {marker!r}\n").passed
    assert _run("pass\n").passed
    pids = _idle_pids()
    assert pids
    for pid in pids:
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            for line in maps:
                m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
                if not m or "r" not in m.group(3) or "[vvar" in line or "[vsyscall" in line:
                    continue
                start, end = int(m.group(1), 16), int(m.group(2), 16)
                try:
                    mem.seek(start)
                    data = mem.read(end - start)
                except OSError:
                    continue
                assert marker.encode() not in data, f"the zygote {pid} holds a run's source ({line.strip()})"


@needs_zygote
def test_a_zygote_that_fails_is_replaced_by_a_fresh_interpreter(monkeypatch, caplog) -> None:
    def broken(self, cfg, files):
        raise zygote.ZygoteError("broken on purpose")

    monkeypatch.setattr(zygote.Zygote, "spawn", broken)
    with caplog.at_level(logging.WARNING, logger="lorastudy.evaluation.sandbox"):
        assert _run("print('ran')\n").passed
        assert _run("assert False\n").status == FAILED
    assert "broken on purpose" in caplog.text and "fresh interpreter" in caplog.text


@needs_zygote
def test_a_dead_zygote_is_not_used_again() -> None:
    assert _run("pass\n").passed
    with zygote._idle_lock:
        idle = list(zygote._idle)
    for z in idle:
        os.kill(z.proc.pid, signal.SIGKILL)
        z.proc.wait()
    result = _run("print('after')\n")
    assert result.passed and "after" in result.output
    assert _idle_pids() and not set(_idle_pids()) & {z.proc.pid for z in idle}


ENDINGS = {
    "passes": "print('ok')\n",
    "fails an assertion": "assert 1 == 2, 'not equal'\n",
    "raises": "raise ValueError('bad value')\n",
    "exits 3": "import sys\nsys.exit(3)\n",
    "exits with text": "import sys\nsys.exit('a message')\n",
    "exits 0 early": "exit(0)\nprint('never')\n",
    "os._exit": "import os\nos._exit(7)\n",
    "interrupted": "raise KeyboardInterrupt\n",
    "killed": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "loops": "while True:\n    pass\n",
    "unclosed thread": "import threading\nthreading.Thread(target=lambda: None).start()\n",
    "exits False": "import sys\nsys.exit(False)\n",
    "raises beside a thread": "import threading, time\nthreading.Thread(target=time.sleep, args=(5,)).start()\n"
                              "raise ValueError('bad')\n",
    "raises, then atexit": "import atexit\natexit.register(lambda: print('ATEXIT'))\nraise ValueError('bad')\n",
}


@needs_zygote
@pytest.mark.parametrize("name", list(ENDINGS))
def test_a_served_run_ends_as_a_fresh_one(monkeypatch, name: str) -> None:
    served = run_program(ENDINGS[name], timeout=0.5)
    monkeypatch.setattr(isolation, "_caps", replace(isolation.capabilities(), pidfd=False))
    fresh = run_program(ENDINGS[name], timeout=0.5)
    assert (served.status, served.detail) == (fresh.status, fresh.detail)
    assert served.status == (PASSED if name in ("passes", "unclosed thread") else
                             TIMED_OUT if name in ("loops", "raises beside a thread") else FAILED)
    assert ("ATEXIT" in served.output) == ("ATEXIT" in fresh.output)


def _zygote_processes() -> list[int]:
    """Our children that are zygotes (idle or serving)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) == \
                    os.getpid() and b"serve=1" in open(f"/proc/{entry}/cmdline", "rb").read():
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


@needs_zygote
def test_a_run_dies_with_its_zygote_and_is_not_run_again(caplog) -> None:
    import threading
    import time

    outcome: list[sandbox.SandboxResult] = []
    marker = "/tmp/lorastudy-zygote-test-" + os.urandom(4).hex()  # the run's own /tmp: gone with it
    worker = threading.Thread(target=lambda: outcome.append(run_program(
        f"open({marker!r}, 'w').write('x')\nprint('STARTED', flush=True)\nimport time\ntime.sleep(30)\n",
        timeout=60)))
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="lorastudy.evaluation.sandbox"):
        worker.start()
        time.sleep(1.0)
        busy = _zygote_processes()
        with zygote._idle_lock:
            busy = [pid for pid in busy if pid not in {z.proc.pid for z in zygote._idle}]
        assert busy, "no zygote was serving the run"
        for pid in busy:
            os.kill(pid, signal.SIGKILL)
        worker.join(30)
    assert outcome and outcome[0].status == FAILED, outcome
    assert time.monotonic() - start < 15  # the run died with the zygote, it did not sleep out its 30 s
    assert outcome[0].output.count("STARTED") == 1  # not run again in a fresh interpreter
    assert "zygote" in caplog.text
