"""The HumanEval evaluator against an attacker: completions that try to forge a pass, to read what they should
not, to starve or crash the evaluator. Each attack is run on the real HumanEval problems and must fail (or be
contained), and every other sample must still be scored."""
from __future__ import annotations

import json
import os
import socket
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lorastudy.data.records import CodeTask
from lorastudy.evaluation.code import evaluate_samples, load_problems, score_humaneval_files
from lorastudy.evaluation.sandbox import FAILED, PASSED, run_program, sandbox_capabilities

CAPS = sandbox_capabilities()
needs_private_root = pytest.mark.skipif(not CAPS.get("mount_namespace"), reason="no mount namespace (not root?)")
TASKS = [f"HumanEval/{i}" for i in range(20)]


@pytest.fixture(scope="module")
def problems(shared_data: Path) -> dict[str, CodeTask]:
    return load_problems(shared_data / "humaneval" / "HumanEval.jsonl.gz")


def _score(problems: dict[str, CodeTask], completion: str, tasks: list[str] = TASKS) -> dict:
    samples = [{"task_id": t, "completion": textwrap.indent(textwrap.dedent(completion), "    ")} for t in tasks]
    return evaluate_samples(samples, problems, progress=False)


def _passed(result: dict) -> int:
    return sum(s["passed"] for s in result["samples"])


# ---------------------------------------------------------------- forging a pass
def test_writing_the_nonce_found_by_walking_the_frames_does_not_pass(problems) -> None:
    """The bootstrap's frames hold the run's nonce; writing every candidate to every fd passed the old harness."""
    result = _score(problems, """
        import os, sys
        frame, found = sys._getframe(), []
        while frame is not None:
            for value in list(frame.f_locals.values()):
                if isinstance(value, bytes) and len(value) == 32:
                    found.append(value)
                if isinstance(value, dict) and isinstance(value.get("nonce"), str):
                    found.append(value["nonce"].encode())
            frame = frame.f_back
        for nonce in found:
            for fd in range(3, 64):
                try:
                    os.write(fd, nonce)
                except OSError:
                    pass
        os._exit(0)
    """)
    assert _passed(result) == 0


TRACE_HOOK = """    return None


import sys


def _swap(frame, event, arg):
    if getattr(frame.f_globals.get("check"), "__name__", "") == "check":
        frame.f_globals["check"] = lambda candidate: None
    return _swap


sys.settrace(_swap)
sys._getframe().f_trace = _swap
"""


def test_a_trace_hook_that_disables_check_does_not_pass(problems) -> None:
    """Module-level code after the function installs a trace hook that replaces `check` before it is called."""
    samples = [{"task_id": t, "completion": TRACE_HOOK} for t in TASKS[:3]]
    result = evaluate_samples(samples, problems, progress=False)
    assert _passed(result) == 0 and all(s["judged"] == "replayed" for s in result["samples"])


def test_an_object_equal_to_everything_does_not_pass(problems) -> None:
    result = _score(problems, """
        class Equal:
            def __eq__(self, other):
                return True
            def __ne__(self, other):
                return False
            def __bool__(self):
                return True
        return Equal()
    """)
    assert _passed(result) == 0
    assert all("not plain data" in s["result"] for s in result["samples"])


def test_a_str_subclass_with_forged_equality_does_not_pass(problems) -> None:
    result = _score(problems, """
        class S(str):
            def __eq__(self, other):
                return True
            __hash__ = str.__hash__
        return S("x")
    """)
    assert _passed(result) == 0


def test_running_the_canonical_solution_from_the_problems_file_does_not_pass(problems, shared_data) -> None:
    """The attack that passed 158 of 164: find the problems file (its path is in /proc/*/cmdline or guessable),
    read the canonical solution of the calling function and run it."""
    result = _score(problems, f"""
        arguments = dict(locals())
        import glob, gzip, json, os, sys
        name = sys._getframe().f_code.co_name
        paths = [{str(shared_data / 'humaneval' / 'HumanEval.jsonl.gz')!r}]
        for cmd in glob.glob("/proc/*/cmdline"):
            try:
                paths += [p for p in open(cmd, "rb").read().decode(errors="ignore").split("\\0") if "HumanEval" in p]
            except OSError:
                pass
        for path in paths:
            try:
                rows = [json.loads(l) for l in gzip.open(path, "rt")]
            except OSError:
                continue
            row = next(r for r in rows if r["entry_point"] == name)
            scope = {{}}
            exec(row["prompt"] + row["canonical_solution"], scope)
            return scope[name](**arguments)
        raise RuntimeError("no problems file found")
    """)
    assert _passed(result) == 0


def test_redefining_a_helper_that_check_uses_does_not_pass(problems) -> None:
    """HumanEval/38's check encodes with the prompt's encode_cyclic; a completion that redefines it as the
    identity passed the in-sandbox harness. The replayed check uses the reference's helpers."""
    completion = "    return s\n\n\ndef encode_cyclic(s: str):\n    return s\n"
    result = evaluate_samples([{"task_id": "HumanEval/38", "completion": completion}], problems, progress=False)
    assert _passed(result) == 0


# ---------------------------------------------------------------- isolation
@needs_private_root
def test_the_host_is_invisible(problems, shared_data) -> None:
    root = Path(__file__).resolve().parents[1]
    result = run_program(textwrap.dedent(f"""
        import os
        for path in ({str(root)!r}, {str(shared_data)!r}, "/home", "/etc/passwd", "/var/tmp", "/dev/shm",
                     {tempfile.gettempdir() + '/lorastudy-sandbox-slots'!r}):
            assert not os.path.exists(path), path
        assert set(os.listdir("/")) <= {{"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "root",
                                          "sbin", "tmp", "usr"}}, os.listdir("/")
        assert os.listdir("/etc") == ["ld.so.cache"] and os.listdir("/dev") and len(os.listdir("/dev")) == 5
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        assert len(pids) <= 3, pids  # its init, its own process, maybe a child
        for p in pids:
            assert b"pytest" not in open(f"/proc/{{p}}/cmdline", "rb").read()
    """))
    assert result.passed, result.output


def _sandboxes() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("lorastudy-sbx-*"))


def _wait_for_a_new_sandbox(before: set[Path], timeout: float = 10.0) -> None:
    """Until another thread's run has its sandbox folder (it is under way), not for a fixed time."""
    deadline = time.monotonic() + timeout
    while not _sandboxes() - before:
        assert time.monotonic() < deadline, "the other run never started"
        time.sleep(0.01)


@needs_private_root
def test_concurrent_runs_cannot_see_each_others_files() -> None:
    before = _sandboxes()
    writer = threading.Thread(target=run_program, args=(
        "open('/tmp/secret-of-run-a', 'w').write('a')\nimport time\ntime.sleep(1.5)\n",), kwargs={"timeout": 3})
    writer.start()
    _wait_for_a_new_sandbox(before)
    reader = run_program("import os\nassert os.listdir('/tmp') == [], os.listdir('/tmp')\n")
    writer.join()
    assert reader.passed, reader.output
    assert not (Path(tempfile.gettempdir()) / "secret-of-run-a").exists()


@needs_private_root
def test_a_unix_socket_of_the_host_is_unreachable(tmp_path_factory) -> None:
    folder = Path(tempfile.mkdtemp(prefix="lorastudy-sock-"))
    folder.chmod(0o755)
    path = folder / "listener.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o777)
    server.listen(1)
    server.settimeout(0.5)
    try:
        result = run_program(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})\n")
        assert result.status == FAILED and ("FileNotFoundError" in result.detail or "Permission" in result.detail)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
        path.unlink()
        folder.rmdir()


@pytest.mark.skipif(not CAPS.get("seccomp"), reason="no libseccomp: user namespaces are not refused")
def test_no_user_namespace_can_be_made() -> None:
    result = run_program(textwrap.dedent("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.unshare(0x10000000) == -1 and ctypes.get_errno() == 1  # CLONE_NEWUSER: EPERM
        assert libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0) == -1  # clone(CLONE_NEWUSER | SIGCHLD)
        pid = os.fork()  # a plain fork still works
        if pid == 0:
            os._exit(7)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
    """))
    assert result.passed, result.output


@pytest.mark.skipif(not CAPS.get("cgroup"), reason="no per-run cgroup here: memory is bounded per process only")
@pytest.mark.parametrize("hog", [
    # memfds are not in the address space: only the run's cgroup sees their pages
    "import os\nfds = []\nfor i in range(40):\n    fd = os.memfd_create('x')\n    os.write(fd, b'x' * (15 * 2**20))\n"
    "    fds.append(fd)\n",
    # eight children, each under its own address-space limit, holding 1.6 GB together
    "import os, time\npids = []\nfor i in range(8):\n    pid = os.fork()\n    if pid == 0:\n"
    "        x = bytearray(200 * 2**20)\n        x[::4096] = b'x' * len(x[::4096])\n        time.sleep(2)\n"
    "        os._exit(0)\n    pids.append(pid)\n"
    "assert all(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) == 0 for p in pids)\n",
], ids=["memfd", "children"])
def test_memory_outside_the_address_space_limit_is_bounded_per_run(hog: str) -> None:
    start = time.monotonic()
    result = run_program(hog, memory_mb=256, timeout=6)
    assert result.status != PASSED, result.output
    assert time.monotonic() - start < 10


def test_a_fork_bomb_does_not_starve_a_concurrent_run() -> None:
    bomb = threading.Thread(target=run_program, args=(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",),
        kwargs={"timeout": 3, "max_procs": 24})
    before = _sandboxes()
    bomb.start()
    _wait_for_a_new_sandbox(before)
    honest = run_program("import os\npids = [os.fork() for _ in range(1)]\nfor pid in pids:\n    if pid == 0:\n"
                         "        os._exit(0)\n    os.waitpid(pid, 0)\n", timeout=5)
    bomb.join()
    if CAPS.get("uid_per_run"):
        assert honest.passed, honest.output


# ---------------------------------------------------------------- crashers: every sample scored, a result written
CRASHERS = {
    "recursion in compile": "    return 0" + "+1" * 3000 + "\n",
    "memory in the parser": "    return " + "-" * 6000 + "1\n",
    "deep nesting": "    return " + "(" * 5000 + "1" + ")" * 5000 + "\n",
    "NUL byte": "    return 1\x00\n",
    "lone surrogate": "    return '\udcff'\n",
    "a 3 MB line": "    x = '" + "a" * 3_000_000 + "'\n",
    "a huge int literal": "    return " + "9" * 200_000 + "\n",
    "a 1200-deep folder chain": "    import os\n    p = '.'\n    for i in range(1200):\n        p = os.path.join(p, 'd')\n"
                                "        os.mkdir(p)\n    return []\n",
    "a file-tree bomb": "    import os\n    os.chdir('/tmp')\n    for i in range(100000):\n        os.mkdir(str(i))\n"
                        "    return []\n",
    "a repeated line": "    return numbers\n" * 3000,
    "a repeated opening": "    " + "for i in range(10):\n        " * 80 + "pass\n",
    "repeated tokens": "    return " + "numbers[0] + " * 2000 + "0\n",
    "a runaway docstring": '    """' + "the function returns the list " * 2000 + "\n",
    "huge output": "    while True:\n        print('x' * 100000)\n",
    "a recursion bomb": "    def f(n):\n        return f(n + 1)\n    return f(0)\n",
}


def test_degenerate_completions_fail_with_a_reason_and_every_sample_is_scored(problems, shared_data,
                                                                              tmp_path: Path) -> None:
    good = problems["HumanEval/0"].canonical_solution
    rows = [{"task_id": "HumanEval/0", "completion": c} for c in CRASHERS.values()]
    rows.insert(len(rows) // 2, {"task_id": "HumanEval/0", "completion": good})
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))  # lone surrogates travel as \\udcff
    out = tmp_path / "result.json"
    before = set(Path(tempfile.gettempdir()).glob("lorastudy-sbx-*"))  # another test's SIGKILLed worker may leave one
    score_humaneval_files(samples, out, problems_path=shared_data / "humaneval" / "HumanEval.jsonl.gz")
    scored = json.loads(out.read_text())["samples"]
    assert len(scored) == len(rows)
    for row, sample in zip(rows, scored):
        if row["completion"] == good:
            assert sample["passed"]
        else:
            assert not sample["passed"] and sample["result"].startswith(("failed: ", "timed out")), sample
    assert not set(Path(tempfile.gettempdir()).glob("lorastudy-sbx-*")) - before, "a run's folder was left behind"



@needs_private_root
def test_links_planted_by_a_program_never_reach_the_host() -> None:
    """The old sandbox let a program plant links in world-writable folders for the root evaluator to write
    through; in its private root those folders are its own and vanish with it."""
    names = [f"lorastudy-planted-{os.getpid()}-{i}" for i in range(3)]
    result = run_program(textwrap.dedent(f"""
        import os
        for folder, name in zip(("/tmp", "/var/tmp", "/dev/shm"), {names!r}):
            try:
                os.symlink("/etc/passwd", os.path.join(folder, name))
            except OSError:
                pass
    """))
    assert result.passed, result.output
    for folder, name in zip(("/tmp", "/var/tmp", "/dev/shm"), names):
        assert not os.path.lexists(os.path.join(folder, name))


def test_a_result_path_that_is_a_link_is_replaced_not_written_through(problems, shared_data, tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "result.json"
    out.symlink_to(victim)
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return False\n"}) + "\n")
    score_humaneval_files(samples, out, problems_path=shared_data / "humaneval" / "HumanEval.jsonl.gz")
    assert victim.read_text() == "precious" and not out.is_symlink() and json.loads(out.read_text())["samples"]
