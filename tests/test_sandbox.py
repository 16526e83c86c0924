"""The sandbox passes only complete runs, and hostile programs fail without harming the evaluator or host."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from lorastudy.evaluation.isolation import SLOT_UID_BASE, SLOTS
from lorastudy.evaluation.sandbox import FAILED, PASSED, TIMED_OUT, run_program, sandbox_capabilities

ROOT = Path(__file__).resolve().parents[1]
CAPS = sandbox_capabilities()
needs_drop = pytest.mark.skipif(not CAPS["privilege_drop"], reason="no privilege drop: evaluator is not root "
                                "(or cannot switch to nobody), so the program runs as the evaluator's user")


def _run(program: str, **kw):
    return run_program(textwrap.dedent(program), **kw)


def _cwd_of_run(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("CWD "))
    return line[4:].strip()


def _evaluate_in_child(program: str, timeout: float = 2.0) -> subprocess.CompletedProcess:
    """Run the sandbox from a separate evaluator process, so a failure here cannot take pytest down."""
    driver = (
        "import sys; from lorastudy.evaluation.sandbox import run_program\n"
        f"r = run_program(sys.stdin.read(), timeout={timeout})\n"
        "print('EVALUATOR-ALIVE', r.status, '|', r.detail)\n"
    )
    return subprocess.run([sys.executable, "-c", driver], input=textwrap.dedent(program), capture_output=True,
                          text=True, timeout=60)


def test_capabilities_report() -> None:
    print("sandbox capabilities:", CAPS)
    for key in ("root", "network_namespace", "pid_namespace", "privilege_drop", "run_as_uid", "notes"):
        assert key in CAPS
    if CAPS["root"] and CAPS["privilege_drop"]:
        assert CAPS["run_as_uid"] != 0


def test_complete_program_passes_and_output_is_captured() -> None:
    result = _run("print('hello from the sandbox')\nassert 1 + 1 == 2\n")
    assert result.status == PASSED and result.passed
    assert "hello from the sandbox" in result.output


def test_failing_assertion_fails_with_reason() -> None:
    result = _run("def f():\n    return 1\nassert f() == 2\n")
    assert result.status == FAILED
    assert result.detail == "AssertionError"


def test_syntax_error_fails() -> None:
    result = _run("def f(:\n    pass\n")
    assert result.status == FAILED and "SyntaxError" in result.detail


def test_stdlib_imports_and_codecs_work() -> None:
    # The interpreter may live under a directory `nobody` cannot read (pyenv in /root): imports must still work.
    result = _run("""
        import collections, fractions, hashlib, heapq, itertools, math, re, string, typing
        assert hashlib.md5(b"a").hexdigest() == "0cc175b9c0f1b6a831c399e269772661"
        assert "é".encode("latin-1").decode("cp1252") == "é"
        assert "bücher.de".encode("idna") == b"xn--bcher-kva.de"
        assert math.gcd(12, 18) == 6 and fractions.Fraction(1, 3) * 3 == 1
    """)
    assert result.passed, result.output


def test_runs_in_scrubbed_environment_and_fresh_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORASTUDY_TEST_SECRET", "do-not-leak")
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    marker = f"scratch-{os.getpid()}-{time.monotonic_ns()}.txt"
    result = _run(f"""
        import os
        print("CWD", os.getcwd())
        assert "LORASTUDY_TEST_SECRET" not in os.environ and "PYTHONPATH" not in os.environ
        assert os.environ["HOME"] == os.getcwd() and os.listdir(".") == []
        open({marker!r}, "w").write("ok")
    """)
    assert result.passed, result.output
    cwd = _cwd_of_run(result.output)
    if CAPS["mount_namespace"]:  # its private /tmp, gone with the run: nothing reached the host's /tmp
        assert cwd == "/tmp" and not (Path(tempfile.gettempdir()) / marker).exists()
    else:
        assert not Path(cwd).exists(), "the run's temporary directory must be removed"


@needs_drop
def test_runs_as_unprivileged_user() -> None:
    uids = range(SLOT_UID_BASE, SLOT_UID_BASE + SLOTS) if CAPS["uid_per_run"] else [CAPS["run_as_uid"]]
    result = _run(f"import os\nassert os.getuid() in {list(uids)} and os.geteuid() != 0\n"
                  "assert os.getgroups() == []\n")
    assert result.passed, result.output


def test_sys_exit_zero_before_tests_fails() -> None:
    result = _run("import sys\nsys.exit(0)\nassert False\n")
    assert result.status == FAILED and "no completion signal" in result.detail


def test_os_exit_zero_before_tests_fails() -> None:
    result = _run("import os\nos._exit(0)\nassert False\n")
    assert result.status == FAILED and "no completion signal" in result.detail


def test_faked_completion_signal_fails() -> None:
    # Without the per-run nonce, writing to every fd and printing "passed" must not count.
    result = _run("""
        import os
        print("passed")
        for fd in range(3, 64):
            try:
                os.write(fd, b"passed 0123456789abcdef0123456789abcdef")
            except OSError:
                pass
        os._exit(0)
    """)
    assert result.status == FAILED


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    result = _run("while True:\n    pass\n", timeout=1.0)
    assert result.status == TIMED_OUT
    assert time.monotonic() - start < 5


def _uid_of_run(output: str) -> int:
    return int(next(line for line in output.splitlines() if line.startswith("UID "))[4:])


def _processes_of(uid: int, seconds: float = 5.0) -> list[int]:
    """Pids of `uid` still alive after up to `seconds` (each concurrent run has its own uid)."""
    deadline = time.monotonic() + seconds
    while True:
        pids = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                pass
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


@needs_drop
def test_fork_bomb_is_limited_and_fully_killed() -> None:
    result = _run("""
        import os
        print("UID", os.getuid(), flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, timeout=1.5, max_procs=24)
    assert result.status in (TIMED_OUT, FAILED)
    assert _processes_of(_uid_of_run(result.output)) == [], "fork bomb processes survived their run"
    assert run_program("pass").passed, "the evaluator can still start programs"


@pytest.mark.skipif(not CAPS["pid_namespace"], reason="no PID namespace: a setsid() escapee is not guaranteed "
                    "to be killed")
@needs_drop
def test_process_leaving_the_group_is_killed() -> None:
    result = _run("""
        import os, time
        print("UID", os.getuid(), flush=True)
        if os.fork() == 0:
            os.setsid()
            time.sleep(60)
        time.sleep(60)
    """, timeout=0.5)
    assert result.status == TIMED_OUT
    assert _processes_of(_uid_of_run(result.output)) == []


def test_memory_hog_fails() -> None:
    result = _run("""
        chunks = []
        while True:
            chunks.append(bytearray(50 * 2**20))
    """, memory_mb=256, timeout=10)
    assert result.status == FAILED and "MemoryError" in result.detail


def test_huge_single_allocation_fails() -> None:
    result = _run("x = bytearray(8 * 2**30)\n", memory_mb=256)
    assert result.status == FAILED and "MemoryError" in result.detail


@pytest.fixture
def protected_file():
    """A root-owned 0644 file in a root-owned 0755 directory that anyone can reach (pytest's tmp_path
    is 0700, which would make the test pass for the wrong reason)."""
    folder = Path(tempfile.mkdtemp(prefix="lorastudy-protected-"))
    folder.chmod(0o755)
    victim = folder / "precious.txt"
    victim.write_text("precious")
    victim.chmod(0o644)
    yield victim
    shutil.rmtree(folder, ignore_errors=True)


@needs_drop
def test_cannot_delete_or_modify_protected_files(protected_file: Path) -> None:
    project_probe = ROOT / "sandbox-was-here.txt"
    result = _run(f"""
        import os, shutil
        victim = {str(protected_file)!r}
        print("READ", open(victim).read())
        attacks = [
            lambda: os.remove(victim),
            lambda: open(victim, "w").write("overwritten"),
            lambda: os.rename(victim, victim + ".moved"),
            lambda: os.chmod(victim, 0o777),
            lambda: shutil.rmtree(os.path.dirname(victim)),
            lambda: open({str(project_probe)!r}, "w").write("x"),
        ]
        for attack in attacks:
            try:
                attack()
            except OSError:
                pass
    """)
    if CAPS["mount_namespace"]:  # the private root holds no host folder but the interpreter's
        assert "FileNotFoundError" in result.output and "READ" not in result.output
    else:
        assert "READ precious" in result.output, "the program should be able to reach the file it attacks"
    assert protected_file.read_text() == "precious"
    assert oct(protected_file.stat().st_mode & 0o777) == oct(0o644)
    assert not project_probe.exists()


def test_killing_its_parent_does_not_kill_the_evaluator() -> None:
    proc = _evaluate_in_child("import os, time\nos.kill(os.getppid(), 9)\ntime.sleep(0.2)\nassert False\n")
    assert "EVALUATOR-ALIVE failed" in proc.stdout, (proc.stdout, proc.stderr)


def test_killing_its_process_group_does_not_kill_the_evaluator() -> None:
    proc = _evaluate_in_child("import os, time\nos.killpg(0, 9)\ntime.sleep(0.2)\nassert False\n")
    assert "EVALUATOR-ALIVE failed" in proc.stdout, (proc.stdout, proc.stderr)


@needs_drop  # as the evaluator's own user, kill(-1) would take down every process of that user
def test_killing_every_process_it_can_does_not_kill_the_evaluator() -> None:
    proc = _evaluate_in_child("import os, time\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\n"
                              "time.sleep(0.2)\nassert False\n")
    assert "EVALUATOR-ALIVE failed" in proc.stdout, (proc.stdout, proc.stderr)


def test_stdout_flood_is_bounded() -> None:
    start = time.monotonic()
    result = _run("while True:\n    print('x' * 10000)\n", timeout=5, file_size_mb=4, output_limit=4096)
    assert result.status == FAILED and "file size limit" in result.detail
    assert len(result.output) <= 4096
    assert time.monotonic() - start < 5


@pytest.mark.skipif(not CAPS["network_namespace"], reason="no network namespace available here: the sandbox "
                    "cannot isolate the network (see sandbox_capabilities())")
def test_cannot_connect_to_a_local_listening_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        result = _run(f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
            s.sendall(b"leak")
        """, timeout=3)
        server.settimeout(0.2)
        with pytest.raises(socket.timeout):
            server.accept()
    assert result.status == FAILED and "unreachable" in result.detail.lower(), result.detail


def test_fallback_without_namespaces_or_privilege_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    # The code path taken by a non-root evaluator (no namespaces, same user, NPROC relative to the user).
    from lorastudy.evaluation import isolation

    bare = isolation.Caps(root=False, netns=False, pidns=False, uid=None, gid=None, pidfd=False, mntns=False,
                         cgroup="", slots=False)
    monkeypatch.setattr(isolation, "_caps", bare)
    assert run_program("import math\nassert math.sqrt(4) == 2\n").passed
    assert run_program("assert False\n").status == FAILED
    assert run_program("import os\nos._exit(0)\n").status == FAILED
    assert run_program("while True:\n    pass\n", timeout=0.5).status == TIMED_OUT


def test_a_layer_this_machine_cannot_set_up_is_dropped_not_failing_every_program(monkeypatch) -> None:
    """The capability probe can pass where the full set-up fails (here: a seccomp library that is not there):
    the first run tries it, drops that layer with a warning, and programs run with the others."""
    from dataclasses import replace

    from lorastudy.evaluation import isolation, sandbox

    broken = replace(isolation.capabilities(), seccomp="/nonexistent/libseccomp.so.2")
    monkeypatch.setattr(isolation, "_caps", broken)
    monkeypatch.setattr(sandbox, "_tried", [])
    assert run_program("assert 1 + 1 == 2\n").passed
    assert isolation.capabilities().seccomp == "" and isolation.capabilities().netns == broken.netns


def test_the_interpreter_has_the_standard_library_and_sites_builtins_but_no_site_packages() -> None:
    result = _run("""
        import sys
        # the bootstrap stays import-light: json (with re and enum) would cost every run ~13 ms
        assert not {"json", "re", "enum"} & set(sys.modules), sorted(sys.modules)
        import json, collections
        assert not any("site-packages" in p for p in sys.path), sys.path
        assert callable(exit) and callable(quit) and callable(help)
        exit(0)
        raise AssertionError("exit() did not end the program")
    """)
    assert result.status == FAILED and "no completion signal" in result.detail, result


@pytest.mark.skipif(not CAPS.get("cgroup"), reason="no per-run cgroup here")
def test_the_program_runs_inside_its_runs_cgroups() -> None:
    result = _run("""
        lines = open("/proc/self/cgroup").read().splitlines()
        mine = [line for line in lines if "lorastudy-sandbox-" in line]
        assert mine, lines
        print("CGROUPS", len(mine))
    """)
    assert result.passed, result.output
    assert "CGROUPS 1" in result.output or "CGROUPS 2" in result.output


@pytest.mark.skipif(not CAPS.get("cgroup"), reason="no per-run cgroup here")
def test_a_run_the_evaluator_cannot_put_into_its_cgroup_runs_nothing(monkeypatch, tmp_path) -> None:
    from lorastudy.evaluation import sandbox

    assert run_program("pass\n").passed  # the trial run of the layers happens before the patch
    monkeypatch.setattr(sandbox, "set_cgroup_limits", lambda *a: [tmp_path / "no" / "such" / "cgroup.procs"])
    start = time.monotonic()
    result = _run("print('THE PROGRAM RAN')\n")
    assert result.status == FAILED and "sandbox setup error" in result.detail, result
    assert "THE PROGRAM RAN" not in result.output
    assert time.monotonic() - start < 2  # it did not wait for its timeout
