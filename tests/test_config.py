"""Profiles validate once, name the bad key, and plan runs with stable ids."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lorastudy.cli import main
from lorastudy.config import ConfigError, available_profiles, load_profile
from lorastudy.plan import plan_runs, resolve_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["mini", "tiny"])
def test_shipped_profiles_validate_and_plan(name: str) -> None:
    profile = load_profile(name)
    runs = plan_runs(profile)
    assert runs, "a profile plans at least one run"
    ids = [r.run_id for r in runs]
    assert len(ids) == len(set(ids))
    assert {r.method for r in runs} == {"full", "lora"}


def test_run_ids_are_stable_and_descriptive() -> None:
    runs = plan_runs(load_profile("mini"))
    assert [r.run_id for r in runs] == [r.run_id for r in plan_runs(load_profile("mini"))]
    lora = next(r for r in runs if r.method == "lora" and r.lora_rank == 8 and r.arm == "lora")
    assert lora.lora_alpha == 16  # alpha defaults to 2r, as in the paper
    assert "r8" in lora.run_id and "a16" in lora.run_id and lora.run_id.endswith("s0")
    lion = [r for r in runs if r.optimizer == "lion"]
    assert lion and all(r.run_id.endswith("-lion-s0") for r in lion)  # the optimizer is in the id when not AdamW
    assert not any("adamw" in r.run_id for r in runs)  # and ids of AdamW runs are as before


def _bad_profile(tmp_path: Path, **arm: object) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw["sweep"] = [{"method": "lora", "learning_rate": 1e-3, **arm}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("arm, key, allowed", [
    ({"method": "lorra"}, "sweep.0.method", "'full' or 'lora'"),
    ({"lora_rank": -4}, "sweep.0.lora_rank", "greater than 0"),
    ({"target_modules": "everything"}, "sweep.0.target_modules", "'attention', 'mlp' or 'all'"),
    ({"learning_rate": 0}, "sweep.0.learning_rate", "greater than 0"),
])
def test_bad_values_name_the_key(tmp_path: Path, arm: dict, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_profile(_bad_profile(tmp_path, **arm))
    assert key in str(err.value) and allowed in str(err.value)


def test_unknown_keys_and_missing_profiles_fail(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="extra_forbidden|Extra inputs"):
        load_profile(_bad_profile(tmp_path, lora_rnak=4))
    with pytest.raises(ConfigError, match="not found"):
        load_profile("no-such-profile")
    assert {"mini", "tiny"} <= set(available_profiles())


def test_durations_must_increase() -> None:
    with pytest.raises(ConfigError, match="durations"):
        load_profile("tiny", {"training.durations.ift": [2, 1]})


def test_explicit_run_settings_are_validated() -> None:
    profile = load_profile("mini")
    assert resolve_run(profile, method="lora", lora_rank=64).run_id.startswith("code-ift-lora-r64-a128-all")
    with pytest.raises(ConfigError, match="lora_rank"):
        resolve_run(profile, method="lora", lora_rank=0)
    with pytest.raises(ConfigError, match="not both"):
        resolve_run(profile, "x", method="full")


def test_cli_dry_run_prints_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "tiny", "--dry-run", "--output", "/nonexistent-out"]) == 0
    out = capsys.readouterr().out
    for spec in plan_runs(load_profile("tiny")):
        assert spec.run_id in out


def test_cli_bad_profile_exits_nonzero(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lorastudy.cli", "sweep", str(_bad_profile(tmp_path, method="lorra")),
                           "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "sweep.0.method" in proc.stderr


def test_help_lists_subcommands() -> None:
    proc = subprocess.run([sys.executable, "-m", "lorastudy.cli", "--help"], capture_output=True, text=True)
    for sub in ["sweep", "base", "train", "eval", "results", "book", "bench"]:
        assert sub in proc.stdout
