"""Resume after preemption: a tiny run killed with SIGKILL during training goes on from its newest complete
Trainer state (weights, optimizer, schedule, RNG, data position) and ends bit-identical to an uninterrupted run,
both for the in-memory IFT path and for a streamed CPT run, and both in the main run and in a cooldown branch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from lorastudy.engine.notebook_exec import thread_env
from lorastudy.io import read_json, write_json
from lorastudy.layout import Layout, RunPaths
from lorastudy.train.training import RESUME_RECORD, resumable_states

ROOT = Path(__file__).resolve().parents[1]
IFT = "code-ift-lora-r8-a16-all-lr0.003-s0"  # LoRA with dropout: the dropout RNG must be restored too
CPT = "code-cpt-lora-r8-a16-all-lr0.003-s0"

# Runs `lorastudy train` with a callback that SIGKILLs the process at the end of one optimizer step of one phase
# (the main run's Trainer folder `trainer`, or a branch's `branch-N`), before Trainer saves anything at that step.
KILLER = """
import os, signal, sys
from transformers import TrainerCallback
from lorastudy.train import training
from lorastudy.cli import main
at, where = int(sys.argv[1]), sys.argv[2]
class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == at and os.path.basename(args.output_dir) == where:
            os.kill(os.getpid(), signal.SIGKILL)
made = training._trainer
def with_kill(*a, **k):
    trainer = made(*a, **k)
    trainer.add_callback(Kill())
    return trainer
training._trainer = with_kill
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A tiny profile that saves Trainer's state every 3 steps, streams code CPT, and trains 16 steps (the short
    duration's cooldown branches off at step 6; IFT: 150 examples, 10 steps an epoch); the tiny base built once into a shared cache."""
    root = tmp_path_factory.mktemp("resume")
    profile = root / "resume.yaml"
    profile.write_text(yaml.safe_dump({
        "extends": "tiny", "name": "resume",
        "training": {"save_every_steps": 3, "durations": {"cpt": [16384, 32768], "ift": [0.8, 1.6]}},
        "data": {"code": {"cpt": {"adapter": "text", "source": "{world}/code_cpt.jsonl", "streaming": True}}},
    }))
    env = {**os.environ, **thread_env(1), "LORASTUDY_CACHE": str(root / "cache")}
    proc = subprocess.run([sys.executable, "-m", "lorastudy.cli", "base", str(profile)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return profile, env


def train(setup: tuple[Path, dict[str, str]], run_id: str, out: Path, kill: tuple[int, str] | None = None) -> int:
    profile, env = setup
    args = ["train", str(profile), run_id, "--output", str(out)]
    cmd = [sys.executable, "-c", KILLER, str(kill[0]), kill[1], *args] if kill else [
        sys.executable, "-m", "lorastudy.cli", *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
    return proc.returncode


def checkpoints(paths: RunPaths) -> dict[str, dict]:
    return {p.name: load_file(p / "adapter_model.safetensors") for p in sorted(paths.checkpoints.iterdir())}


@pytest.mark.slow
@pytest.mark.parametrize("run_id", [IFT, CPT])
def test_a_killed_run_resumes_and_ends_as_an_uninterrupted_one(setup, tmp_path: Path, run_id: str) -> None:
    alone = Layout(tmp_path / "alone").run(run_id)
    assert train(setup, run_id, tmp_path / "alone") == 0
    killed = Layout(tmp_path / "killed").run(run_id)
    # killed at step 10 of the main run: its states at 3 and 9 are gone or superseded, 6 (a branch point) kept
    assert train(setup, run_id, tmp_path / "killed", kill=(10, "trainer")) == -signal.SIGKILL
    assert not killed.train_record.is_file()
    assert [s for s, _ in resumable_states(killed.trainer_dir)] == [6, 9]
    # killed again in the first duration's cooldown branch, after the main run finished
    assert train(setup, run_id, tmp_path / "killed", kill=(7, "branch-8")) == -signal.SIGKILL
    assert not killed.train_record.is_file() and (killed.trainer_dir / "main.json").is_file()
    assert train(setup, run_id, tmp_path / "killed") == 0

    a, b = checkpoints(alone), checkpoints(killed)
    assert list(a) == list(b) == (["epochs-0.8", "epochs-1.6"] if run_id == IFT else ["tokens-16384", "tokens-32768"])
    for label in a:
        assert a[label].keys() == b[label].keys()
        assert all((a[label][k] == b[label][k]).all() for k in a[label]), f"{label} differs after resuming"
    ta, tb = read_json(alone.train_record), read_json(killed.train_record)
    assert tb["resumed"] and not ta["resumed"]
    assert [c["tokens_seen"] for c in ta["checkpoints"]] == [c["tokens_seen"] for c in tb["checkpoints"]]
    assert [c["step"] for c in tb["checkpoints"]] == [8, 16]
    assert [h["loss"] for h in ta["loss_curve"]] == [h["loss"] for h in tb["loss_curve"]]
    assert not killed.trainer_dir.exists()  # Trainer's states are removed once the run is trained


@pytest.mark.slow
def test_states_of_other_settings_are_not_resumed(setup, tmp_path: Path) -> None:
    """A state left by an attempt with other settings (here: another stamp) is cleared, never resumed."""
    out = tmp_path / "out"
    assert train(setup, IFT, out, kill=(10, "trainer")) == -signal.SIGKILL
    paths = Layout(out).run(IFT)
    stamp = paths.trainer_dir / "attempt.json"
    write_json(stamp, {**read_json(stamp), "spec": {"changed": True}})
    assert train(setup, IFT, out) == 0
    assert not read_json(paths.train_record)["resumed"]


def test_a_half_written_state_is_not_resumable(tmp_path: Path) -> None:
    """Trainer writes a checkpoint folder file by file; only one that RESUME_RECORD completed counts."""
    for step, complete in ((3, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            write_json(tmp_path / f"checkpoint-{step}" / RESUME_RECORD, {"step": step})
    (tmp_path / "checkpoint-x").mkdir()
    assert [s for s, _ in resumable_states(tmp_path)] == [3]
