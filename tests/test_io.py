"""lorastudy.io: a write that fails part-way (an exception, or SIGKILL while the bytes go out) leaves the old file
as it was, and a failed write leaves no temporary file behind; JSON round trips; stable hashes."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lorastudy import io
from lorastudy.io import atomic_path, config_hash, read_json, read_jsonl, write_json, write_jsonl, write_text

OLD = {"rows": [1, 2, 3], "status": "completed"}


@pytest.fixture()
def old(tmp_path: Path) -> Path:
    path = tmp_path / "sub" / "results.json"
    write_json(path, OLD)
    return path


def only(path: Path) -> list[str]:
    """Every entry of the file's folder (hidden ones too)."""
    return sorted(p.name for p in path.parent.iterdir())


def test_writes_round_trip_and_create_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.json"
    write_json(path, {"b": 1, "a": [1.5, "é"], "p": Path("/x")})
    assert read_json(path) == {"a": [1.5, "é"], "b": 1, "p": "/x"}  # non-JSON values as their str
    assert path.read_text(encoding="utf-8").endswith("}\n") and path.read_text().index('"a"') < path.read_text().index('"b"')
    write_json(tmp_path / "exact.json", {"b": 1, "a": [1]})  # records are diffed in git: a stable layout
    assert (tmp_path / "exact.json").read_text() == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}\n'
    (tmp_path / "exact.json").unlink()
    write_jsonl(tmp_path / "r.jsonl", ({"i": i, "p": Path(f"/p{i}")} for i in range(3)))
    assert read_jsonl(tmp_path / "r.jsonl") == [{"i": 0, "p": "/p0"}, {"i": 1, "p": "/p1"}, {"i": 2, "p": "/p2"}]
    assert (tmp_path / "r.jsonl").read_text().splitlines()[0] == '{"i": 0, "p": "/p0"}'  # one compact line per row
    assert (tmp_path / "r.jsonl").read_text().count("\n") == 3
    (tmp_path / "blank.jsonl").write_text('{"i": 1}\n\n  \n{"i": 2}\n')
    assert read_jsonl(tmp_path / "blank.jsonl") == [{"i": 1}, {"i": 2}]
    write_text(tmp_path / "t.txt", "hello\n")
    assert (tmp_path / "t.txt").read_bytes() == b"hello\n" and only(tmp_path / "t.txt") == [
        "a", "blank.jsonl", "r.jsonl", "t.txt"]


def test_a_write_replaces_the_old_content_whole(old: Path) -> None:
    write_json(old, {"new": True})
    assert read_json(old) == {"new": True} and only(old) == ["results.json"]
    write_jsonl(old, [{"a": 1}])
    assert read_jsonl(old) == [{"a": 1}]


def test_an_exception_while_encoding_leaves_the_old_file_and_no_temporary(old: Path) -> None:
    """The text's last character cannot be encoded: the write fails after the file was opened."""
    before = old.read_bytes()
    with pytest.raises(UnicodeEncodeError):
        write_text(old, "x" * 1_000_000 + "\ud800")
    assert old.read_bytes() == before and only(old) == ["results.json"]


def test_an_exception_inside_the_block_leaves_the_old_file_and_no_temporary(old: Path) -> None:
    before = old.read_bytes()
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_path(old) as tmp:
            assert tmp.parent == old.parent and tmp != old
            tmp.write_text('{"rows": [1, 2')  # half written
            raise RuntimeError("half way")
    assert old.read_bytes() == before and only(old) == ["results.json"]


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failing_flush_or_rename_leaves_the_old_file_and_no_temporary(old: Path, monkeypatch, step: str) -> None:
    before = old.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(f"{step} failed")

    monkeypatch.setattr(io.os, step, fail)
    with pytest.raises(OSError, match=f"{step} failed"):
        write_json(old, {"new": True})
    monkeypatch.undo()
    assert old.read_bytes() == before and only(old) == ["results.json"]


def test_the_new_content_is_flushed_to_disk_before_the_rename(old: Path, monkeypatch) -> None:
    """fsync on the temporary file, then os.replace onto the name: a crash between them keeps the old file."""
    calls = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(io.os, "fsync", lambda fd: (calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                    fsync(fd))[1])
    monkeypatch.setattr(io.os, "replace", lambda a, b: (calls.append(("replace", str(a), str(b))), replace(a, b))[1])
    write_json(old, {"new": True})
    (f, tmp), (r, src, dst) = calls
    assert (f, r) == ("fsync", "replace") and tmp == src != dst == str(old)
    assert Path(tmp).name.startswith(".results.json.") and Path(tmp).suffix == ".tmp"


# A child that writes ~300 MB over `path` with write_text while a thread watches the folder and SIGKILLs the
# process at the first sign of the new bytes going out: a temporary file with content, or `path` itself no longer
# holding the old bytes. The kill therefore lands while the new content is being written.
WRITER = """
import os, signal, sys, threading, time
from pathlib import Path
from lorastudy.io import write_text
path = Path(sys.argv[1])
old = path.read_bytes()
def watch():
    while True:
        for entry in os.scandir(path.parent):
            try:
                size = entry.stat().st_size
                changed = entry.name == path.name and (size != len(old) or path.read_bytes() != old)
            except FileNotFoundError:
                continue
            if changed or (entry.name != path.name and size > 0):
                os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.0005)
threading.Thread(target=watch, daemon=True).start()
write_text(path, '{"rows": [' + "7, " * 100_000_000 + '7]}')
time.sleep(5)  # the watcher should have killed us by now; exiting 0 means it never saw the write
"""


def test_sigkill_during_a_write_leaves_the_old_file(old: Path) -> None:
    before = old.read_bytes()
    proc = subprocess.run([sys.executable, "-c", WRITER, str(old)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert old.read_bytes() == before and read_json(old) == OLD
    leftovers = [p for p in old.parent.iterdir() if p != old]
    assert all(p.name.startswith(".results.json.") and p.name.endswith(".tmp") for p in leftovers), leftovers


def test_config_hash_is_stable_and_order_free() -> None:
    a = config_hash({"b": [1, 2], "a": {"x": 1.0}})
    assert a == config_hash({"a": {"x": 1.0}, "b": [1, 2]}) and len(a) == 10 and int(a, 16) >= 0
    assert a != config_hash({"a": {"x": 1.0}, "b": [2, 1]})
    assert len(config_hash("x", n=16)) == 16 and config_hash("x", n=16).startswith(config_hash("x"))
    assert config_hash({"p": Path("/a")}) == config_hash({"p": "/a"})
    # the sha256 of the sorted JSON: cache keys written by an earlier version stay valid
    assert config_hash({"b": 2, "a": 1}) == hashlib.sha256(b'{"a": 1, "b": 2}').hexdigest()[:10]
