"""Profiles validate once, name the bad key, and plan runs with stable ids."""
from __future__ import annotations

import re
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


def _write(tmp_path: Path, name: str, raw: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_profile_extends_its_parent_key_by_key_and_adds_sweep_arms(tmp_path: Path) -> None:
    tiny = load_profile("tiny")
    child = load_profile(_write(tmp_path, "child", {
        "extends": "tiny", "name": "child", "training": {"batch_size": 4, "lora": {"dropout": 0.2}},
        "eval": {"learning": {"math": {"shots": 5}}},
        "sweep": [{"name": "extra", "domain": "math", "regime": "ift", "method": "full", "learning_rate": 5e-4}]}))
    assert child.name == "child" and child.training.batch_size == 4 and child.training.lora.dropout == 0.2
    assert child.training.seq_len == tiny.training.seq_len and child.training.lora.alpha_ratio == 2.0  # kept
    assert child.eval.learning["math"].shots == 5
    assert child.eval.learning["math"].dataset == tiny.eval.learning["math"].dataset  # the sibling keys stay
    assert child.eval.forgetting == tiny.eval.forgetting and child.data == tiny.data
    assert child.sweep[:-1] == tiny.sweep and child.sweep[-1].name == "extra"
    grandchild = load_profile(_write(tmp_path, "grandchild", {"extends": str(tmp_path / "child.yaml"),
                                                               "name": "gc", "sweep": []}))
    assert grandchild.sweep == child.sweep and grandchild.training.batch_size == 4


def test_a_missing_or_circular_parent_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "a", {"extends": str(tmp_path / "b.yaml"), "name": "a"})
    _write(tmp_path, "b", {"extends": str(tmp_path / "a.yaml"), "name": "b"})
    with pytest.raises(ConfigError, match=r"b\.yaml: extends '.*a\.yaml', which is missing or circular"):
        load_profile(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="extends 'no-such-parent', which is missing or circular"):
        load_profile(_write(tmp_path, "orphan", {"extends": "no-such-parent", "name": "orphan"}))


def test_dotted_overrides_reach_nested_keys_and_create_missing_ones() -> None:
    p = load_profile("tiny", {"training.lora.dropout": 0.3, "execution.slurm.partition": "big",
                              "eval.learning.code.n_samples": 4, "seeds": [3, 4]})
    assert p.training.lora.dropout == 0.3 and p.execution.slurm.partition == "big"
    assert p.eval.learning["code"].n_samples == 4 and p.seeds == [3, 4]
    assert p.eval.learning["code"].max_new_tokens == load_profile("tiny").eval.learning["code"].max_new_tokens


def test_errors_list_every_bad_key_with_the_value_given(tmp_path: Path) -> None:
    path = _bad_profile(tmp_path, lora_rank=-4, learning_rate=0)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"invalid profile {path}:"
    assert any(re.match(r"  sweep\.0\.lora_rank\.0 \(line \d+\): ", line) and line.endswith("(got -4)")
               for line in lines)
    assert any(re.match(r"  sweep\.0\.learning_rate\.0 \(line \d+\): ", line) and line.endswith("(got 0)")
               for line in lines)
    with pytest.raises(ConfigError, match=r"training\.batch_size: .* \(got 'many'\)"):
        load_profile("tiny", {"training.batch_size": "many"})


def test_profile_names_and_paths(tmp_path: Path) -> None:
    from lorastudy.config import CONFIG_DIR, profile_path

    assert profile_path("tiny") == CONFIG_DIR / "tiny.yaml"
    assert profile_path("elsewhere/x.yaml") == Path("elsewhere/x.yaml")  # a path, even before it exists
    assert profile_path("x.yml") == Path("x.yml")
    plain = tmp_path / "profile-without-suffix"
    plain.write_text((ROOT / "configs" / "tiny.yaml").read_text())
    assert profile_path(str(plain)) == plain and load_profile(str(plain)).name == "tiny"


def test_output_folder_from_override_environment_or_profile(monkeypatch, tmp_path: Path) -> None:
    from lorastudy.layout import PROJECT_ROOT, Layout

    p = load_profile("tiny")
    monkeypatch.delenv("LORASTUDY_OUTPUT", raising=False)
    assert p.out_dir() == PROJECT_ROOT / "outputs" / "tiny"  # `{name}` filled, relative to the project
    assert p.out_dir(tmp_path / "o") == tmp_path / "o" and p.out_dir("rel/o") == PROJECT_ROOT / "rel" / "o"
    monkeypatch.setenv("LORASTUDY_OUTPUT", str(tmp_path / "env-{name}"))
    assert p.out_dir() == tmp_path / "env-tiny" and p.out_dir(tmp_path / "o") == tmp_path / "o"
    assert p.layout() == Layout(tmp_path / "env-tiny") and p.layout(tmp_path / "x") == Layout(tmp_path / "x")


def test_task_overrides_change_only_their_task_and_only_the_keys_they_set() -> None:
    p = load_profile("tiny", {"training.task_overrides": {"math": {"ift": {"seq_len": 64, "grad_accum": 2}}}})
    math_ift = p.training.for_task("math", "ift")
    assert (math_ift.seq_len, math_ift.grad_accum, math_ift.batch_size) == (64, 2, p.training.batch_size)
    assert p.training.for_task("math", "cpt") == p.training and p.training.for_task("code", "ift") == p.training
    assert p.training.for_task("math", "ift").durations == p.training.durations


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="a pretrained base needs `model`"):
        load_profile("tiny", {"base.kind": "pretrained"})
    pretrained = {"base.kind": "pretrained", "base.model": "some/model"}
    with pytest.raises(ConfigError, match="a pretrained base is one model"):  # tiny's two mini bases
        load_profile("tiny", pretrained)
    assert load_profile("tiny", {**pretrained, "base.count": 1}).base.model == "some/model"
    assert load_profile("mini").base.index(4) == 1  # seed 4 of 3 bases
    with pytest.raises(ConfigError, match="select_learning_rate needs a name and at least two"):
        load_profile("tiny", {"sweep": [{"name": "x", "method": "full", "learning_rate": 1e-3,
                                         "select_learning_rate": True}]})
    with pytest.raises(ConfigError, match=r"arm 'lora' chooses .* eval\.validation has no \['code'\]"):
        load_profile("tiny", {"eval.validation": {"math": load_profile("tiny").eval.validation["math"].model_dump()}})
    assert load_profile("tiny", {"sweep": [{"method": "full", "learning_rate": 1e-3}]}).sweep[0].domain == [
        "code", "math"]  # scalars and defaults become lists


def test_a_parent_without_a_sweep_takes_the_childs_arms(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    del raw["sweep"]
    _write(tmp_path, "armless", raw)
    child = load_profile(_write(tmp_path, "armed", {"extends": str(tmp_path / "armless.yaml"), "sweep": [
        {"domain": "code", "regime": "ift", "method": "full", "learning_rate": 1e-3}]}))
    assert [s.method for s in child.sweep] == [["full"]] and child.name == "tiny"
