"""Chapter 16 on constructed models: identical models have KL 0 and no intruders, a direction outside the base's
column space is an intruder, KL masks padding; Spearman and the forgetting drop on hand-made rows."""
from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from fake_runs import FULL_ID, LORA_ID, TEXTS

from lorastudy.analysis import beyond
from lorastudy.analysis.checkpoints import finished_runs, load_base_fp32, load_checkpoint
from lorastudy.results import COLUMNS
from lorastudy.train.modeling import load_tokenizer


def test_identical_models_have_no_intruders_and_zero_kl(base, tok) -> None:
    same = copy.deepcopy(base)
    rows = beyond.intruder_rows(base, same, top_k=5)
    assert len(rows) == 14 and all(r["intruders"] == 0 for r in rows)
    assert all(r["min_similarity"] == pytest.approx(1.0, abs=1e-4) for r in rows)
    assert beyond.kl_between(base, same, tok, TEXTS)["kl"] == pytest.approx(0.0, abs=1e-7)


def test_direction_outside_base_columns_is_an_intruder(base) -> None:
    tuned = copy.deepcopy(base)
    w = tuned.model.layers[0].mlp.gate_proj.weight  # 64 x 32: the base's left singular vectors span 32 of 64 dims
    u_base = torch.linalg.svd(w.detach(), full_matrices=True).U
    u = u_base[:, -1]  # orthogonal to every left singular vector of the base
    with torch.no_grad():
        w.add_(10.0 * torch.outer(u, torch.randn(32, generator=torch.Generator().manual_seed(2))))
    rows = pd.DataFrame(beyond.intruder_rows(base, tuned, top_k=3, epsilon=0.5))
    hit = rows[(rows.layer == 0) & (rows.module == "gate_proj")].iloc[0]
    assert hit.intruders >= 1 and hit.min_similarity < 0.05
    assert rows.drop(hit.name).intruders.sum() == 0


def test_kl_masks_padding_and_grows_with_change(base, tok) -> None:
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for p in tuned.model.layers[1].parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))  # a large change
    together = beyond.kl_between(base, tuned, tok, TEXTS, batch_size=3)  # padded batch
    singles = [beyond.kl_between(base, tuned, tok, [t], batch_size=1) for t in TEXTS]
    expected = sum(s["kl"] * s["tokens"] for s in singles) / sum(s["tokens"] for s in singles)
    assert together["tokens"] == sum(s["tokens"] for s in singles)
    assert together["kl"] == pytest.approx(expected, rel=1e-4) and together["kl"] > 0


def test_spearman_and_forgetting_drop() -> None:
    assert beyond.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert beyond.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert pd.isna(beyond.spearman([1, 2], [1, 2]))
    rows = [("base", "base", "base", "forgetting_avg", 0.9), ("base", "base", "base", "heldout_source_loss", 1.0),
            ("r1", "full", "epochs-1", "forgetting_avg", 0.6), ("r1", "full", "epochs-1", "heldout_source_loss", 1.5)]
    df = pd.DataFrame([{"run_id": r, "method": m, "checkpoint": c, "metric": k, "value": v, "duration": 1}
                       for r, m, c, k, v in rows], columns=COLUMNS)
    drop = beyond.forgetting_drop(df)
    assert drop.loc[0, "forgetting_drop"] == pytest.approx(0.3)
    assert drop.loc[0, "source_loss_rise"] == pytest.approx(0.5)
    kl = pd.DataFrame({"run_id": ["r1"], "checkpoint": ["epochs-1"], "kl": [0.2]})
    frame = beyond.kl_forgetting(kl, df)
    assert frame.loc[0, "forgetting_drop"] == pytest.approx(0.3)
    assert beyond.spearman_line(frame, "forgetting_drop", "accuracy drop").endswith("over 1 checkpoints")


def test_intruders_and_kl_per_run(fake) -> None:
    profile, out = fake
    counts = beyond.intruder_counts(profile, out, top_k=4)
    summary = beyond.intruder_summary(counts).set_index("run_id")
    assert summary.loc[FULL_ID, "matrices"] == 14 and summary.loc[LORA_ID, "matrices"] == 14
    # each run's counts are its own checkpoint's against the base: the full run's rank-2 update of layer 1's
    # q_proj brings both of its directions in as intruders and nothing else; LoRA's every-module B ≠ 0 many
    full = counts[counts.run_id == FULL_ID]
    assert full[full.intruders > 0][["layer", "module", "intruders"]].values.tolist() == [[1, "q_proj", 2]]
    assert summary.loc[LORA_ID, "intruders"] > summary.loc[FULL_ID, "intruders"]
    base_model = load_base_fp32(profile)
    for spec in finished_runs(profile, out):
        direct = pd.DataFrame(beyond.intruder_rows(base_model, load_checkpoint(profile, out, spec, "epochs-1"),
                                                   top_k=4))
        mine = counts[counts.run_id == spec.run_id].reset_index(drop=True)
        assert mine[["layer", "module", "intruders"]].equals(direct[["layer", "module", "intruders"]])
    pivot = beyond.module_pivot(counts)
    assert set(pivot.columns) == {"full", "lora"} and len(pivot) == 7
    assert beyond.module_pivot(counts.iloc[:0]).empty
    base = load_base_fp32(profile)
    tuned = load_checkpoint(profile, out, finished_runs(profile, out, method="lora")[0], "epochs-1")
    kl = beyond.kl_between(base, tuned, load_tokenizer(str(profile.base.model)), TEXTS)
    assert kl["kl"] > 0 and kl["tokens"] > 0
