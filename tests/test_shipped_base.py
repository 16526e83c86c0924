"""The shipped mini base: it is the mini profile's, it is what its record says, and a fresh cache takes it only
when this machine generates the world it was pre-trained on."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer, LlamaForCausalLM

from lorastudy.config import load_profile
from lorastudy.train import base


@pytest.fixture(scope="module")
def mini():
    return load_profile("mini")


@pytest.fixture(scope="module")
def shipped(mini) -> Path:
    folder = base.shipped_base(mini)
    assert folder is not None, "no shipped base for the mini profile's recipe: run `lorastudy base mini --ship`"
    return folder


def test_the_shipped_base_is_the_mini_recipes_and_passes_its_checksums(mini, shipped: Path) -> None:
    manifest = json.loads((shipped / base.MANIFEST).read_text())
    assert shipped.name == base.mini_base_dir(mini).name
    assert manifest["world"] == base.world_fingerprint(base.world_dir(mini))
    assert set(manifest["files"]) == {f.name for f in shipped.iterdir()} - {base.MANIFEST}
    assert {"model.safetensors", "config.json", "tokenizer.json", "base.json"} <= set(manifest["files"])
    assert "/" not in json.loads((shipped / "base.json").read_text())["world"]  # no path of the building machine


def test_the_shipped_base_scores_what_its_record_says(mini, shipped: Path) -> None:
    """Weights, tokenizer and world belong together: the source accuracy measured now is the recorded one."""
    model = LlamaForCausalLM.from_pretrained(shipped)
    tok = AutoTokenizer.from_pretrained(shipped)
    recorded = json.loads((shipped / "base.json").read_text())["source_mc"]
    measured = base.source_mc_accuracy(mini, model, tok)
    limits = {name: cfg.dataset.limit for name, cfg in mini.eval.forgetting.items()}
    assert measured.keys() == recorded.keys()
    for name, value in measured.items():  # equal here; another CPU may flip one near-tie item
        assert abs(value - recorded[name]) <= 1 / limits[name] + 1e-9, (name, value, recorded[name])


@pytest.fixture()
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """A fresh cache holding only the world (copied), and a pre-training that records being asked."""
    world = base.world_dir(load_profile("mini"))
    monkeypatch.setenv("LORASTUDY_CACHE", str(tmp_path / "cache"))
    shutil.copytree(world, tmp_path / "cache" / world.name)
    built: list[Path] = []

    def pretrain(profile, out, seed=0, progress=True):
        out.mkdir(parents=True)
        (out / "base.json").write_text("{}")
        built.append(out)

    monkeypatch.setattr(base, "build_mini_base", pretrain)
    return built


def test_a_fresh_cache_takes_the_shipped_base_without_pre_training(mini, shipped: Path, empty_cache) -> None:
    path = Path(base.base_source(mini))
    assert not empty_cache
    assert path.parent == Path(base.world_dir(mini)).parent and path.name == shipped.name
    assert base.file_sha256(path / "model.safetensors") == base.file_sha256(shipped / "model.safetensors")
    info = base.base_info(mini)
    assert info["shipped_by"] and info["built_on"] and info["source_mc"]


def test_rebuild_pre_trains_here_even_with_a_shipped_base(mini, shipped: Path, empty_cache) -> None:
    base.base_source(mini, rebuild=True)
    assert len(empty_cache) == 1


def test_another_world_is_pre_trained_on_not_given_the_shipped_base(mini, shipped: Path, empty_cache,
                                                                    monkeypatch, caplog) -> None:
    monkeypatch.setattr(base, "world_fingerprint", lambda world: "another world")
    with caplog.at_level(logging.WARNING, logger="lorastudy.train.base"):
        base.base_source(mini)
    assert len(empty_cache) == 1 and "another world" in caplog.text


def test_a_damaged_shipped_file_is_an_error_not_a_silent_base(mini, shipped: Path, empty_cache, tmp_path,
                                                             monkeypatch) -> None:
    copy = tmp_path / "bases"
    shutil.copytree(shipped, copy / shipped.name)
    with open(copy / shipped.name / "model.safetensors", "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    monkeypatch.setattr(base, "SHIPPED", copy)
    with pytest.raises(ValueError, match="model.safetensors"):
        base.base_source(mini)
    assert not empty_cache


def test_a_cache_from_before_bases_shipped_gives_way_to_the_shipped_base(mini, shipped: Path, empty_cache,
                                                                        caplog) -> None:
    old = base.mini_base_dir(mini)
    old.mkdir(parents=True)
    (old / "base.json").write_text("{}")  # pre-trained here by an older version: no marker, no manifest
    with caplog.at_level(logging.WARNING, logger="lorastudy.train.base"):
        base.base_source(mini)
    assert (old / base.MANIFEST).is_file() and "replacing a cached base" in caplog.text and not empty_cache


def test_a_base_pre_trained_here_stays_and_is_never_shipped_twice(mini, shipped: Path, empty_cache) -> None:
    base.base_source(mini, rebuild=True)
    here = base.mini_base_dir(mini)
    assert (here / base.PRETRAINED_HERE).is_file()
    base.base_source(mini)
    assert len(empty_cache) == 1 and not (here / base.MANIFEST).is_file()  # kept, not replaced
    shutil.rmtree(here)
    base.base_source(mini)  # the shipped one, installed
    with pytest.raises(ValueError, match="is the shipped base"):
        base.ship(mini, "some-commit")


def test_every_mini_base_ships_and_each_is_its_own_model(mini) -> None:
    """The study's random unit: B bases pre-trained from seeds 0..B-1, each shipped with its checksums; a run's
    seed selects its base."""
    folders = [base.SHIPPED / base.mini_base_dir(mini, i).name for i in range(mini.base.count)]
    assert mini.base.count >= 3 and all((f / base.MANIFEST).is_file() for f in folders)
    assert len({base.file_sha256(f / "model.safetensors") for f in folders}) == mini.base.count
    assert [json.loads((f / "base.json").read_text()).get("seed", 0) for f in folders] == list(range(mini.base.count))
    assert [mini.base.index(s) for s in mini.seeds] == list(range(mini.base.count))
    with pytest.raises(ValueError, match=f"no base {mini.base.count}"):
        base.base_source(mini, index=mini.base.count)


def test_a_sweep_refuses_runs_fine_tuned_from_other_weights(mini, tmp_path: Path) -> None:
    from lorastudy.layout import Layout
    from lorastudy.plan import plan_runs
    from lorastudy.results import stale_runs

    spec = next(s for s in plan_runs(mini) if s.seed == 1)
    record = Layout(tmp_path).run(spec.run_id).train_record
    record.parent.mkdir(parents=True)
    current = base.base_record(mini, 1)
    record.write_text(json.dumps({"base": current}))
    assert stale_runs(mini, tmp_path) == {}
    record.write_text(json.dumps({"base": {**current, "sha256": "0" * 64}}))  # a rebuilt base 1
    assert list(stale_runs(mini, tmp_path)) == [spec.run_id]
    record.write_text(json.dumps({}))  # trained before runs recorded their base
    assert "an unrecorded base" in stale_runs(mini, tmp_path)[spec.run_id]
