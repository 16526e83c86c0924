"""Run discovery and checkpoint access for the weight analyses: runs trained on another base are left out (but
provenance written before the world was typed still matches), checkpoints load on the analysis device, and the
per-checkpoint cache is reused until the checkpoint changes."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from fake_runs import FULL_ID, LABEL, LORA_ID, write_run

from lorastudy.analysis.checkpoints import (
    cached,
    fingerprint,
    finished_runs,
    load_checkpoint,
    missing_runs_note,
    run_checkpoints,
    same_base,
)
from lorastudy.config import load_profile
from lorastudy.layout import Layout


def test_runs_on_another_base_are_left_out(fake, base, tmp_path) -> None:
    profile, _ = fake
    out = tmp_path / "out"
    write_run(out, FULL_ID, profile, base)
    write_run(out, LORA_ID, profile, base, base_override={"model": "some/other-model"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = finished_runs(profile, out)
    assert [s.run_id for s in runs] == [FULL_ID]
    assert any("another base" in str(w.message) for w in caught)
    with pytest.warns(UserWarning, match="another base"):
        assert [s.run_id for s in finished_runs(profile, out, method="lora")] == []


def test_provenance_with_a_raw_world_dict_is_the_same_base() -> None:
    """Provenance written before the world was typed holds `world: {"preset": "tiny"}`; the typed profile
    dumps every size. Both describe one world, and another preset another."""
    profile = load_profile("tiny")
    old = profile.base.model_dump(mode="json") | {"world": {"preset": profile.base.world.preset}}
    assert same_base(profile, {"provenance": {"profile": {"base": old}}})
    other = old | {"world": {"preset": "mini" if profile.base.world.preset != "mini" else "tiny"}}
    assert not same_base(profile, {"provenance": {"profile": {"base": other}}})
    resized = old | {"world": {"preset": profile.base.world.preset, "n_people": profile.base.world.n_people + 1}}
    assert not same_base(profile, {"provenance": {"profile": {"base": resized}}})
    assert same_base(profile, {"status": "completed"})  # no provenance: trusted


def test_checkpoints_listed_and_loaded(fake) -> None:
    profile, out = fake
    assert [c["checkpoint"] for c in run_checkpoints(out, FULL_ID)] == [LABEL]
    lora = finished_runs(profile, out, method="lora")
    assert [s.run_id for s in lora] == [LORA_ID]
    model = load_checkpoint(profile, out, lora[0], LABEL)
    assert not model.training and hasattr(model, "peft_config")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    merged = load_checkpoint(profile, out, lora[0], LABEL, merge=True)
    assert not hasattr(merged, "peft_config")


def test_cache_is_keyed_by_settings_and_fingerprint(fake, tmp_path) -> None:
    profile, out = fake
    stamp = fingerprint(out, FULL_ID, LABEL)
    path = tmp_path / "rows.json"
    calls = []

    def compute():
        calls.append(1)
        return [{"x": len(calls)}]

    assert cached(path, {"k": 1, "fingerprint": stamp}, compute) == [{"x": 1}]
    assert cached(path, {"k": 1, "fingerprint": stamp}, compute) == [{"x": 1}] and len(calls) == 1
    assert cached(path, {"k": 2, "fingerprint": stamp}, compute) == [{"x": 2}]
    record = Layout(out).run(FULL_ID).checkpoint_record(LABEL)
    saved = record.read_text()
    record.write_text(json.dumps({"wall": 2}))  # retrained: a new checkpoint record
    try:
        assert fingerprint(out, FULL_ID, LABEL) != stamp
    finally:
        record.write_text(saved)


def test_missing_runs_note_names_what_is_missing(fake) -> None:
    profile, out = fake
    runs = finished_runs(profile, out)
    assert missing_runs_note(runs, {"full": "Full fine-tuning", "lora": "LoRA"}) == ""
    note = missing_runs_note([s for s in runs if s.method == "full"], {"full": "Full fine-tuning", "lora": "LoRA"})
    assert "LoRA: not run" in note and "Full fine-tuning" not in note
