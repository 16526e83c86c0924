"""The sweep engine: several workers at once, a per-run lock that two sweeps on one folder respect, a killed
worker's run redone, the same numbers from 2 workers as from 1, and cluster jobs through submitit (its local
executor stands in for Slurm here)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from filelock import FileLock

from lorastudy.config import load_profile
from lorastudy.engine.executors import LocalExecutor, Outcome, Plan, plan_workers
from lorastudy.engine.notebook_exec import thread_env
from lorastudy.engine.runner import BUSY, run_locked
from lorastudy.engine.sweep import run_sweep
from lorastudy.layout import Layout
from lorastudy.results import collect

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "lorastudy.cli"]
RUNS = ["math-ift-full-lr0.001-s0", "code-ift-lora-r8-a16-all-lr0.003-s0", "code-ift-full-lr0.001-s0"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {**os.environ, "LORASTUDY_CACHE": str(tmp_path_factory.mktemp("cache")), "PYTHONUNBUFFERED": "1"}


def sweep_cmd(profile: str, out: Path, *extra: str) -> list[str]:
    return [*CLI, "sweep", profile, "--output", str(out), "--no-analyses", *extra]


def attempts(out: Path, run_id: str) -> list[dict]:
    path = Layout(out).run(run_id).attempts
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def rows(out: Path) -> pd.DataFrame:
    df = collect(load_profile("tiny"), out)
    df = df[df.run_id.isin(["base", *RUNS])].drop(columns=["status"])
    return df.sort_values(["run_id", "checkpoint", "metric"]).reset_index(drop=True)


def test_runs_a_finished_run_makes_possible_start_before_the_others_end(monkeypatch, tmp_path: Path) -> None:
    """The other seeds of a group go to the first free worker once its candidates are in, not after a stage."""
    started: list[str] = []

    def one(self, profile_ref, out_root, run_id):
        started.append(run_id)
        time.sleep({"slow": 0.6}.get(run_id, 0.05))
        return Outcome(run_id, "done")

    monkeypatch.setattr(LocalExecutor, "_one", one)
    released = {"fast": ["seed-1", "seed-2"]}
    done: list[str] = []

    def more() -> list[str]:
        return released.pop(done[-1], [])

    outcomes = LocalExecutor(Plan(workers=2, threads=1)).run("tiny", tmp_path, ["slow", "fast", "last"],
                                                             lambda o: done.append(o.run_id), more=more)
    assert sorted(o.run_id for o in outcomes) == ["fast", "last", "seed-1", "seed-2", "slow"]
    assert done.index("slow") > done.index("seed-1"), done  # a seed ran while the slow candidate still trained


def test_plan_workers_shares_the_cores() -> None:
    tiny = load_profile("tiny")
    assert tiny.execution.threads_per_run == 1
    assert plan_workers(tiny, 10, 3).workers == 3 and plan_workers(tiny, 10, 3).threads == 1
    auto = plan_workers(tiny, 10)
    assert 1 <= auto.workers <= os.cpu_count() and auto.threads == 1
    assert plan_workers(tiny, 1).workers == 1  # never more workers than runs
    with pytest.raises(ValueError, match="--workers"):
        plan_workers(tiny, 3, 0)
    assert thread_env(2)["OMP_NUM_THREADS"] == "2" and thread_env(None)["MKL_DYNAMIC"] == "FALSE"


def test_a_held_run_is_left_to_its_holder(tmp_path: Path) -> None:
    paths = Layout(tmp_path).run(RUNS[0])
    paths.dir.mkdir(parents=True)
    with FileLock(str(paths.lock_file)):
        assert run_locked("tiny", tmp_path, RUNS[0]) == BUSY
    assert not paths.failure_record.exists() and not paths.attempts.exists()


def test_only_with_an_unknown_run_id_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no-such-run"):
        run_sweep(load_profile("tiny"), "tiny", out_root=tmp_path, only=[RUNS[0], "no-such-run"])
    assert not any(tmp_path.iterdir())  # nothing built, nothing written


@pytest.fixture(scope="module")
def twice(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sweeps of the same runs started at the same moment on one output folder, 2 workers each."""
    out = tmp_path_factory.mktemp("twice")
    procs = [subprocess.Popen(sweep_cmd("tiny", out, "--workers", "2", "--only", *RUNS), env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    return out


@pytest.mark.slow
def test_two_sweeps_at_once_train_every_run_once(twice: Path) -> None:
    for run_id in RUNS:
        assert len(attempts(twice, run_id)) == 1, f"{run_id} was trained {len(attempts(twice, run_id))} times"
        assert Layout(twice).run(run_id).done()
    assert len(list(Layout(twice).base_dir.glob("*.ipynb"))) == 1
    assert not list(twice.rglob(".*.tmp*"))


@pytest.mark.slow
def test_two_workers_give_the_numbers_of_one(twice: Path, env: dict[str, str], tmp_path: Path) -> None:
    serial = tmp_path / "serial"
    proc = subprocess.run(sweep_cmd("tiny", serial, "--workers", "1", "--only", *RUNS), env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(Layout(serial).run(r).sweep_record.read_text()) for r in RUNS]
    assert len({r["kernel_pid"] for r in records}) == 1  # one worker: one kernel kept across its runs
    pd.testing.assert_frame_equal(rows(twice).drop(columns=["eval_seconds"], errors="ignore"),
                                  rows(serial).drop(columns=["eval_seconds"], errors="ignore"), check_exact=True)


@pytest.mark.slow
def test_a_killed_worker_run_is_redone(env: dict[str, str], tmp_path: Path) -> None:
    out, run_id = tmp_path / "killed", RUNS[1]
    proc = subprocess.Popen(sweep_cmd("tiny", out, "--workers", "1", "--continue-on-error", "--only", run_id),
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not attempts(out, run_id) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(attempts(out, run_id)[0]["pid"], signal.SIGKILL)  # the worker process holding the run
    text = proc.communicate(timeout=600)[0]
    assert proc.returncode == 1 and f"FAILED {run_id}" in text, text[-2000:]
    assert not Layout(out).run(run_id).done()
    again = subprocess.run(sweep_cmd("tiny", out, "--workers", "1", "--only", run_id), env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert Layout(out).run(run_id).done() and len(attempts(out, run_id)) == 2


@pytest.mark.slow
def test_cluster_executor_runs_jobs_through_submitit(env: dict[str, str], tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw["execution"] = {"threads_per_run": 1, "slurm": {"cluster": "local", "timeout_min": 20}}
    profile = tmp_path / "tiny-local-cluster.yaml"
    profile.write_text(yaml.safe_dump(raw))
    out = tmp_path / "jobs-out"
    proc = subprocess.run(sweep_cmd(str(profile), out, "--executor", "slurm", "--only", RUNS[2]), env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert Layout(out).run(RUNS[2]).done() and len(attempts(out, RUNS[2])) == 1
    assert list(Layout(out).jobs_dir.glob("*_submission.sh")) or list(Layout(out).jobs_dir.glob("*.pkl"))
    rerun = subprocess.run(sweep_cmd(str(profile), out, "--executor", "slurm", "--only", RUNS[2]), env=env,
                           cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0 and len(attempts(out, RUNS[2])) == 1  # done runs are not resubmitted
