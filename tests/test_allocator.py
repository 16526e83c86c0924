"""The allocator preloaded into the processes that train and evaluate: tcmalloc when installed, glibc's on
request, an existing LD_PRELOAD kept, a wrong path an error; and a child started with it really maps it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lorastudy.engine import allocator
from lorastudy.engine.notebook_exec import compute_env


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(allocator.MALLOC_ENV, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)


def test_tcmalloc_is_preloaded_when_found_and_glibc_kept_on_request(monkeypatch, tmp_path) -> None:
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: str(lib))
    env = compute_env(1)
    assert env["LD_PRELOAD"] == str(lib) and env["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("LD_PRELOAD", "/opt/other.so")
    assert allocator.allocator_env()["LD_PRELOAD"] == f"{lib} /opt/other.so"
    monkeypatch.setenv("LD_PRELOAD", f"{lib} /opt/other.so")  # a worker's kernel: not preloaded twice
    assert allocator.allocator_env()["LD_PRELOAD"] == f"{lib} /opt/other.so"
    monkeypatch.setenv(allocator.MALLOC_ENV, "system")
    assert allocator.allocator_env() == {} and "LD_PRELOAD" not in compute_env(1)


def test_nothing_is_preloaded_without_tcmalloc_and_a_wrong_path_is_an_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    assert allocator.allocator_env() == {}
    monkeypatch.setenv(allocator.MALLOC_ENV, str(tmp_path / "absent.so"))
    with pytest.raises(FileNotFoundError, match="LORASTUDY_MALLOC"):
        allocator.allocator_env()


@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason="tcmalloc is not installed here")
def test_a_child_started_with_the_environment_maps_tcmalloc(monkeypatch) -> None:
    def maps() -> str:
        return subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"], check=True,
                              env={**os.environ, **compute_env(1)}, capture_output=True, text=True).stdout

    assert "tcmalloc" in maps()
    monkeypatch.setenv(allocator.MALLOC_ENV, "system")
    assert "tcmalloc" not in maps()
