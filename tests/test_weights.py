"""Weight-delta analyses give known answers on constructed models: a rank-2 update needs rank ≤ 2, LoRA's ΔW
needs at most r, identical models have KL 0 and no intruders, a direction outside the base's column space is
an intruder; run discovery skips runs trained on another base; caches are reused and refreshed."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lorastudy import weights
from lorastudy.config import load_profile
from lorastudy.results import COLUMNS
from lorastudy.tokenizer import build_tokenizer

TEXTS = ["def add(a, b):\n    return a + b\n", "Question: Tom has 3 apples. How many?\nAnswer: 3\n#### 3",
         "def neg(x):\n    return -x\n"]
FULL_ID, LORA_ID = "code-ift-full-lr0.001-s0", "code-ift-lora-r8-a16-all-lr0.003-s0"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def base(tok) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


def rank2_update(model: LlamaForCausalLM, layer: int = 1, scale: float = 0.05) -> LlamaForCausalLM:
    """A copy whose layer's q_proj got u1 v1ᵀ + u2 v2ᵀ and nothing else changed."""
    tuned = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    w = tuned.model.layers[layer].self_attn.q_proj.weight
    update = torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g)
    with torch.no_grad():
        w.add_(scale * update)
    return tuned


def test_rank2_update_needs_rank_at_most_2(base) -> None:
    rows = pd.DataFrame(weights.delta_ranks(base, rank2_update(base)))
    assert len(rows) == 2 * 7
    hit = rows[(rows.layer == 1) & (rows.module == "q_proj")].iloc[0]
    assert 1 <= hit.rank90 <= 2 and hit.frobenius > 0
    assert hit.rank90_fraction == pytest.approx(hit.rank90 / 32)
    assert (rows.drop(hit.name).rank90 == 0).all()  # untouched matrices: ΔW = 0 needs rank 0
    assert set(rows.module_type) == {"attention", "mlp"}
    assert {(r.n_out, r.n_in) for r in rows[rows.module == "gate_proj"].itertuples()} == {(64, 32)}


def test_identical_models_have_no_intruders_and_zero_kl(base, tok) -> None:
    same = copy.deepcopy(base)
    rows = weights.intruder_rows(base, same, top_k=5)
    assert len(rows) == 14 and all(r["intruders"] == 0 for r in rows)
    assert all(r["min_similarity"] == pytest.approx(1.0, abs=1e-4) for r in rows)
    assert weights.kl_between(base, same, tok, TEXTS)["kl"] == pytest.approx(0.0, abs=1e-7)


def test_direction_outside_base_columns_is_an_intruder(base) -> None:
    tuned = copy.deepcopy(base)
    w = tuned.model.layers[0].mlp.gate_proj.weight  # 64 x 32: the base's left singular vectors span 32 of 64 dims
    u_base = torch.linalg.svd(w.detach(), full_matrices=True).U
    u = u_base[:, -1]  # orthogonal to every left singular vector of the base
    with torch.no_grad():
        w.add_(10.0 * torch.outer(u, torch.randn(32, generator=torch.Generator().manual_seed(2))))
    rows = pd.DataFrame(weights.intruder_rows(base, tuned, top_k=3, epsilon=0.5))
    hit = rows[(rows.layer == 0) & (rows.module == "gate_proj")].iloc[0]
    assert hit.intruders >= 1 and hit.min_similarity < 0.05
    assert rows.drop(hit.name).intruders.sum() == 0


def test_kl_masks_padding_and_grows_with_change(base, tok) -> None:
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for p in tuned.model.layers[1].parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))  # a large change
    together = weights.kl_between(base, tuned, tok, TEXTS, batch_size=3)  # padded batch
    singles = [weights.kl_between(base, tuned, tok, [t], batch_size=1) for t in TEXTS]
    expected = sum(s["kl"] * s["tokens"] for s in singles) / sum(s["tokens"] for s in singles)
    assert together["tokens"] == sum(s["tokens"] for s in singles)
    assert together["kl"] == pytest.approx(expected, rel=1e-4) and together["kl"] > 0


def test_spearman_and_forgetting_drop() -> None:
    assert weights.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert weights.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert pd.isna(weights.spearman([1, 2], [1, 2]))
    rows = [("base", "base", "base", "forgetting_avg", 0.9), ("base", "base", "base", "heldout_source_loss", 1.0),
            ("r1", "full", "epochs-1", "forgetting_avg", 0.6), ("r1", "full", "epochs-1", "heldout_source_loss", 1.5)]
    df = pd.DataFrame([{"run_id": r, "method": m, "checkpoint": c, "metric": k, "value": v, "duration": 1}
                       for r, m, c, k, v in rows], columns=COLUMNS)
    drop = weights.forgetting_drop(df)
    assert drop.loc[0, "forgetting_drop"] == pytest.approx(0.3)
    assert drop.loc[0, "source_loss_rise"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- on a fake output folder
def _write_run(out: Path, run_id: str, profile, model, label: str = "epochs-1", base_override: dict | None = None):
    d = out / "runs" / run_id
    model.save_pretrained(d / "checkpoints" / label)
    (d / "checkpoints" / label / "checkpoint.json").write_text(json.dumps({"checkpoint": label, "wall": 1}))
    dump = profile.model_dump(mode="json")
    if base_override:
        dump["base"].update(base_override)
    ckpt = {"checkpoint": label, "duration": 1.0, "duration_unit": "epochs", "step": 10, "tokens_seen": 100}
    (d / "train.json").write_text(json.dumps({"status": "completed", "checkpoints": [ckpt],
                                              "provenance": {"profile": dump}}))
    (d / "results.json").write_text(json.dumps({"status": "completed", "rows": []}))


@pytest.fixture(scope="module")
def fake(tmp_path_factory, base, tok):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("weights")
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    profile = load_profile("tiny", {"base.kind": "pretrained", "base.model": str(root / "base"), "base.dtype": "float32"})
    out = root / "out"
    _write_run(out, FULL_ID, profile, rank2_update(base))
    torch.manual_seed(3)
    with weights.quiet_loading():
        lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # B = 0 at init; a trained adapter has B ≠ 0
    _write_run(out, LORA_ID, profile, lora)
    return profile, out


def test_rank_table_on_runs_and_cache(fake, base) -> None:
    profile, out = fake
    cache = out / "analyses" / "13_spectra"
    table = weights.rank_table(profile, out, cache_dir=cache)
    full = table[table.run_id == FULL_ID]
    assert full[(full.layer == 1) & (full.module == "q_proj")].rank90.item() <= 2
    assert (full.rank90 > 0).sum() == 1
    lora = table[table.run_id == LORA_ID]
    assert len(lora) == 14 and (lora.rank90 <= 8).all() and (lora.rank90 > 2).any()
    assert (lora.method == "lora").all() and set(table.checkpoint) == {"epochs-1"}
    cached = sorted(p.name for p in (cache / "ranks").rglob("*.json"))
    assert cached == ["epochs-1-t0.9.json", "epochs-1-t0.9.json"]
    # a cached result is reused as long as the checkpoint is the same ...
    path = cache / "ranks" / FULL_ID / "epochs-1-t0.9.json"
    saved = json.loads(path.read_text())
    saved["rows"][0]["rank90"] = 99
    path.write_text(json.dumps(saved))
    assert 99 in weights.rank_table(profile, out, cache_dir=cache).rank90.values
    # ... and recomputed when the checkpoint changes (retrained: new checkpoint.json)
    (out / "runs" / FULL_ID / "checkpoints" / "epochs-1" / "checkpoint.json").write_text('{"wall": 2}')
    assert 99 not in weights.rank_table(profile, out, cache_dir=cache).rank90.values
    ref = weights.reference_ranks(profile, base=base)
    assert len(ref) == 14 and (ref.base_rank90 > 0).all() and (ref.gaussian_rank90 <= 32).all()
    verdict = weights.spectra_verdict(table, ref, [8])
    assert verdict.set_index("statement").loc["LoRA's ΔW needs at most rank r", "ours"]


def test_intruders_and_kl_per_run(fake) -> None:
    profile, out = fake
    counts = weights.intruder_counts(profile, out, top_k=4)
    summary = weights.intruder_summary(counts).set_index("run_id")
    assert summary.loc[FULL_ID, "matrices"] == 14 and summary.loc[LORA_ID, "matrices"] == 14
    from lorastudy.modeling import load_tokenizer

    base = weights.load_base_fp32(profile)
    tuned = weights.load_checkpoint(profile, out, weights.finished_runs(profile, out, method="lora")[0], "epochs-1")
    kl = weights.kl_between(base, tuned, load_tokenizer(str(profile.base.model)), TEXTS)
    assert kl["kl"] > 0 and kl["tokens"] > 0


def test_runs_on_another_base_are_left_out(fake, base, tmp_path) -> None:
    profile, _ = fake
    out = tmp_path / "out"
    _write_run(out, FULL_ID, profile, base)
    _write_run(out, LORA_ID, profile, base, base_override={"model": "some/other-model"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = weights.finished_runs(profile, out)
    assert [s.run_id for s in runs] == [FULL_ID]
    assert any("another base" in str(w.message) for w in caught)
    with pytest.warns(UserWarning, match="another base"):
        assert [s.run_id for s in weights.finished_runs(profile, out, method="lora")] == []
