"""Bit-exact reruns: the same base build and the same run, at the same thread count, give identical weights,
even when the second one runs on a machine kept busy by another process."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lorastudy.engine.notebook_exec import thread_env
from lorastudy.layout import Layout

ROOT = Path(__file__).resolve().parents[1]
RUN = "code-ift-lora-r8-a16-all-lr0.003-s0"  # LoRA with dropout: seeded data order, adapter init and masks


@contextmanager
def busy_cores(n: int = 2) -> Iterator[None]:
    """Other processes spinning on every core while the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def cli(*args: str, cache: Path) -> None:
    env = {**os.environ, **thread_env(1), "LORASTUDY_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-m", "lorastudy.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def weights(folder: Path, name: str) -> dict:
    (path,) = folder.rglob(name)
    return load_file(path)


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny base built and one run trained twice, the second time on busy cores."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    for root, load in ((first, False), (second, True)):
        if load:
            with busy_cores():
                cli("base", "tiny", cache=root / "cache")
                cli("train", "tiny", RUN, "--output", str(root / "out"), cache=root / "cache")
        else:
            cli("base", "tiny", cache=root / "cache")
            cli("train", "tiny", RUN, "--output", str(root / "out"), cache=root / "cache")
    return first, second


def test_the_bases_build_bit_identically(builds: tuple[Path, Path]) -> None:
    first, second = builds
    found = [{p.parent.name: p for p in (root / "cache").rglob("model.safetensors")} for root in (first, second)]
    assert len(found[0]) == 2 and found[0].keys() == found[1].keys()  # tiny's two bases, from seeds 0 and 1
    for name in found[0]:
        assert_identical(load_file(found[0][name]), load_file(found[1][name]))
    a, b = (load_file(p) for p in found[0].values())
    assert any(not (a[k] == b[k]).all() for k in a)  # each seed its own base


def test_a_run_trains_bit_identically(builds: tuple[Path, Path]) -> None:
    first, second = builds
    a, b = Layout(first / "out").run(RUN), Layout(second / "out").run(RUN)
    labels = sorted(p.name for p in a.checkpoints.iterdir())
    assert labels == sorted(p.name for p in b.checkpoints.iterdir()) and labels
    for label in labels:
        assert_identical(weights(a.checkpoint(label), "adapter_model.safetensors"),
                         weights(b.checkpoint(label), "adapter_model.safetensors"))
