"""The `released` profile offline: branch names become profile entries, released LoRA adapters give peft's own
logits, the weight analysis (Figs 6, S7) recovers a planted update from folders in the released layout with
Llama-2-7B's real 4096-wide shapes, and both evaluation and analysis print their estimate before loading."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from huggingface_hub import save_torch_state_dict
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from lorastudy import cli
from lorastudy.analysis import released_weights as rw
from lorastudy.config import TARGET_MODULES, ReleasedCheckpoint, load_profile
from lorastudy.evaluation import released
from lorastudy.evaluation.released import (
    CPT_TOKENS_PER_BATCH,
    MIRROR_ENV,
    checkpoint_id,
    entry_yaml,
    load_released,
    parse_revision,
    revision_entries,
)
from lorastudy.perf.memory_model import llama_shapes

FULL_REPO = "LoRA-TMLR-2024/starcoder-full-finetuning-lr-1e-05-20B-token"


def _profile(tmp: Path, base: Path, dtype: str = "float32", released: list[ReleasedCheckpoint] = ()) -> Path:
    raw = {"name": "local-released", "base": {"kind": "pretrained", "model": str(base), "dtype": dtype},
           "data": {}, "eval": {"learning": {}, "forgetting": {}}, "sweep": [],
           "released": [c.model_dump(mode="json", exclude_none=True) for c in released]}
    path = tmp / f"profile-{dtype}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ---------------------------------------------------------------- branch names -> entries
@pytest.mark.parametrize("name, regime, duration", [
    ("main", "cpt", None), ("4B-tokens", "cpt", 4e9), ("tokens-0.25B", "cpt", 2.5e8), ("0.5BT", "cpt", 5e8),
    ("ba6357", "cpt", 6357 * CPT_TOKENS_PER_BATCH), ("step-1272", "cpt", 1272 * CPT_TOKENS_PER_BATCH),
    ("ep0-ba25431-rank0", "cpt", 25431 * CPT_TOKENS_PER_BATCH), ("epoch-2", "cpt", None),
    ("epoch-2", "ift", 2.0), ("ep4", "ift", 4.0), ("16-epochs", "ift", 16.0), ("ba100", "ift", None),
    ("ep0-ba100", "ift", None), ("1a2b3c4d", "ift", None)])
def test_branch_names_state_durations(name: str, regime: str, duration: float | None) -> None:
    assert parse_revision(name, regime) == duration


def test_cpt_batches_match_the_published_schedule() -> None:
    """The README's cooldown of 5086 batches is the last 20% of 20B tokens at 192 x 4096 tokens per batch."""
    assert 0.2 * 20e9 / CPT_TOKENS_PER_BATCH == pytest.approx(5086, abs=1)


def test_branches_become_profile_entries_that_validate(tmp_path: Path) -> None:
    final = next(c for c in load_profile("released").released if c.model == FULL_REPO)
    entries, unread = revision_entries(final, ["main", "ba25431", "4B-tokens", "ba1272", "mystery"])
    assert [e.revision for e in entries] == ["ba1272", "4B-tokens", "ba25431"] and unread == ["mystery"]
    assert all(e.model == FULL_REPO and e.method == "full" and e.unit == "tokens" for e in entries)
    listed = yaml.safe_load("released:\n" + "\n".join(entry_yaml(e) for e in entries))["released"]
    assert [ReleasedCheckpoint(**item) for item in listed] == entries
    profile = load_profile(_profile(tmp_path, tmp_path, released=entries))
    assert [checkpoint_id(c) for c in profile.released] == [f"released-code-cpt-full-{b}"
                                                             for b in ("ba1272", "4B-tokens", "ba25431")]


def test_cli_turns_given_branch_names_into_entries(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["released", "revisions", "released", "--repo", "starcoder-full", "metamath-lora-rank-16",
                     "--branches", "main", "ba6357", "epoch-2", "weird"]) == 0
    out = capsys.readouterr().out
    assert f"{FULL_REPO}, revision: ba6357" in out and f"duration: {6357 * CPT_TOKENS_PER_BATCH:.1f}" in out
    assert "metamath-lora-rank-16-alpha-32, revision: epoch-2" in out and "duration: 2.0, unit: epochs" in out
    assert out.count("no duration read from") == 2  # 'weird' in both; 'epoch-2' in CPT, 'ba6357' in IFT too


# ---------------------------------------------------------------- LoRA logits equal peft's
@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("released") / "tiny-llama"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
                     ).save_pretrained(path)
    return path


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_released_lora_logits_equal_peft_from_pretrained(tiny_base: Path, tmp_path: Path, dtype: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter folder as the LoRA repositories publish it (adapter_config.json + adapter_model.safetensors,
    every linear module, α = 2r), loaded the study's way, gives exactly peft's logits."""
    torch.manual_seed(1)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGET_MODULES["all"])))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)  # trained-looking: B starts at zero
    folder = tmp_path / "mirror" / "magicoder-lora-rank-4-alpha-8"
    model.save_pretrained(folder)
    assert {p.name for p in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}

    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    ckpt = ReleasedCheckpoint(model="LoRA-TMLR-2024/magicoder-lora-rank-4-alpha-8", method="lora", rank=4,
                              alpha=8, domain="code", regime="ift", unit="epochs")
    profile = load_profile(_profile(tmp_path, tiny_base, dtype, [ckpt]))
    ids = torch.tensor([[1, 5, 9, 2, 33, 7], [3, 3, 8, 60, 0, 1]])
    with torch.no_grad():
        ours = load_released(profile, ckpt).eval()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=getattr(torch, dtype))
        theirs = PeftModel.from_pretrained(base, str(folder)).eval()(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=getattr(torch, dtype)).eval()(ids).logits
    assert ours.dtype == getattr(torch, dtype) and torch.equal(ours, theirs)
    assert not torch.allclose(ours, plain)  # the adapter is active


# ---------------------------------------------------------------- estimates before loading
def test_evaluation_prints_its_estimate_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    printed: list[str] = []

    def stop(*_: object) -> None:
        printed.append(capsys.readouterr().out)
        raise RuntimeError("stop before loading")

    monkeypatch.setattr(released, "profile_tokenizer", stop)
    monkeypatch.setattr(released, "load_released", stop)
    with pytest.raises(RuntimeError, match="stop before loading"):
        released.evaluate_released(load_profile("released"), tmp_path)
    (text,) = printed
    assert "estimate for 16 released checkpoints" in text and "GPU-h" in text
    assert "released-code-cpt-full-main: weights 13.5 GB" in text  # 6.74B parameters in bf16
    assert "released-math-ift-lora-r256-main: weights 13.5 GB + adapter 1.28 GB" in text  # as on the hub


def test_weight_estimate_of_the_released_profile() -> None:
    profile = load_profile("released")
    ckpts = rw.full_checkpoints(profile)
    assert [c.model.split("/")[1].split("-")[0] for c in ckpts] == ["starcoder", "openwebmath", "magicoder",
                                                                     "metamath"]
    text = rw.weights_estimate(profile, ckpts, [(26, "q_proj")], (26, "q_proj"))
    assert "33.6 MB per matrix" in text and "from the hub (4 checkpoint(s) and the base)" in text
    assert f"peak memory ~{4096 * 4096 * 4 * (3 + rw.SVD_WORKSPACE) / 2**20:,.0f} MiB" in text
    assert rw.svd_seconds((4096, 4096)) == pytest.approx(7.6) and rw.svd_seconds((4096, 11008)) == pytest.approx(9.9)


# ---------------------------------------------------------------- Figs S7 and 6 on released-layout folders
def _planted(base: torch.Tensor, rank: int, gen: torch.Generator, share: float = 0.95,
             noise: float = 2e-4) -> torch.Tensor:
    """base + a rank-`rank` update holding `share` of ΔW's energy (equal singular values) + full-rank noise."""
    n_out, n_in = base.shape
    u = torch.linalg.qr(torch.randn(n_out, rank, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(n_in, rank, generator=gen)).Q
    sigma = (share / (1 - share) * n_out * n_in * noise**2 / rank) ** 0.5
    return base.float() + sigma * u @ v.T + noise * torch.randn(n_out, n_in, generator=gen)


def _save(folder: Path, weights: dict[str, torch.Tensor], config: LlamaConfig, shard: str | None = "60MB") -> None:
    """A checkpoint folder as the hub repositories hold one: config.json and bf16 safetensors, sharded with
    model.safetensors.index.json (or one model.safetensors when `shard` is None)."""
    folder.mkdir(parents=True)
    config.to_json_file(folder / "config.json")
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}
    save_torch_state_dict(state, folder, max_shard_size=shard or "100GB")
    assert (folder / (SAFE_WEIGHTS_INDEX_NAME if shard else SAFE_WEIGHTS_NAME)).is_file()


LLAMA2_7B = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=32, vocab_size=32000)


def test_fig_s7_on_real_shapes_recovers_a_planted_update(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Layer 26 only, in Llama-2-7B's shapes: a 4096x4096 q_proj and an 11008-wide down_proj in two shards.
    The fine-tuned q_proj is the base + a rank-8 update holding 95% of ΔW's energy + small full-rank noise."""
    gen = torch.Generator().manual_seed(0)
    q, down = rw.matrix_name(26, "q_proj"), rw.matrix_name(26, "down_proj")
    base = {q: 0.02 * torch.randn(4096, 4096, generator=gen), down: 0.02 * torch.randn(4096, 11008, generator=gen)}
    _save(tmp_path / "base", base, LLAMA2_7B)
    stored = base[q].to(torch.bfloat16)
    _save(tmp_path / "ft", {q: _planted(stored, 8, gen), down: base[down]}, LLAMA2_7B)
    assert len(json.loads((tmp_path / "ft" / SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"]) == 2
    assert len(list((tmp_path / "ft").glob("model-*.safetensors"))) == 2
    ckpt = ReleasedCheckpoint(model=str(tmp_path / "ft"), method="full", domain="code", regime="cpt",
                              duration=2e10, unit="tokens")
    profile = load_profile(_profile(tmp_path, tmp_path / "base", "bfloat16", [ckpt]))

    first_read: list[str] = []
    read = rw.WeightFolder.read

    def spy(self: rw.WeightFolder, name: str) -> torch.Tensor:
        if not first_read:
            first_read.append(capsys.readouterr().out)
        return read(self, name)

    monkeypatch.setattr(rw.WeightFolder, "read", spy)
    res = rw.released_weights(profile)  # the paper's matrix: layer 26, q_proj
    assert "estimate for the weight analysis" in first_read[0] and "peak memory" in first_read[0]
    assert "33.6 MB per matrix" in first_read[0] and "from the hub" not in first_read[0]

    cid = checkpoint_id(ckpt)
    ranks = res.detail_ranks().set_index("matrix")
    assert ranks.loc["ΔW", "rank90"] == 8  # the planted rank explains 95% > 90%
    gaussian = ranks.loc["Gaussian", "rank90"]
    # a square Gaussian's σ/√n follow the quarter-circle law, whose top 50.98% hold 90% of Σσ²: far from low rank
    assert abs(gaussian - 0.5098 * 4096) < 0.01 * 4096
    assert abs(ranks.loc["W_base", "rank90"] - gaussian) < 0.02 * 4096  # the base is random here too
    assert abs(ranks.loc["W_ft", "rank90"] - gaussian) < 0.02 * 4096
    delta = res.spectra_of(cid).query("matrix == 'ΔW'")
    assert delta.sigma.iloc[7] > 10 * delta.sigma.iloc[8]  # the planted directions dominate
    assert delta.explained.iloc[7] == pytest.approx(0.95, abs=0.01) and delta.explained.iloc[8] < 0.99

    row = res.ranks.iloc[0]
    assert (len(res.ranks), row.run_id, row.layer, row.module, row.rank90) == (1, cid, 26, "q_proj", 8)
    assert (row.n_out, row.n_in, row.duration, row.duration_unit) == (4096, 4096, 2e10, "tokens")
    assert res.reference.iloc[0].gaussian_rank90 == gaussian
    assert res.reference.iloc[0].base_rank90 == ranks.loc["W_base", "rank90"]


def test_fig6_over_branches_layers_and_modules(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A small model in the same layout, two intermediate checkpoints of a hub repository served from
    $LORASTUDY_RELEASED_DIR as `<repo>@<branch>` (unsharded, one model.safetensors): the planted rank of every
    matrix grows from 2 to 6 with the branch's tokens, and the command writes the tables and both figures."""
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=100)
    shapes = llama_shapes(64, 96, 2, n_kv_heads=4, head_dim=16).modules
    gen = torch.Generator().manual_seed(1)
    base = {rw.matrix_name(lay, m): 0.02 * torch.randn(*shapes[m], generator=gen)
            for lay in range(2) for m in TARGET_MODULES["all"]}
    _save(tmp_path / "base", base, config, shard="40KB")
    final = ReleasedCheckpoint(model=FULL_REPO, method="full", domain="code", regime="cpt", duration=2e10,
                               unit="tokens")
    entries, _ = revision_entries(final, ["ba1272", "ba6357"])
    for entry, rank in zip(entries, (2, 6)):
        tuned = {k: _planted(v.to(torch.bfloat16), rank, gen, noise=1e-3) for k, v in base.items()}
        _save(tmp_path / "mirror" / f"{FULL_REPO.split('/')[1]}@{entry.revision}", tuned, config, shard=None)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    path = _profile(tmp_path, tmp_path / "base", "bfloat16", entries)

    assert cli.main(["released", "spectra", str(path), "--layer", "1", "--module", "down_proj", "--layers", "all",
                     "--modules", "all", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("estimate for the weight analysis") and "2 full-FT checkpoint(s) x 14 matrices" in out
    ranks = pd.read_csv(tmp_path / "out" / "ranks.csv")
    assert len(ranks) == 28 and set(ranks.module_type) == {"attention", "mlp"}
    by_branch = ranks.groupby("run_id").rank90.agg(["min", "max"])
    assert by_branch.loc["released-code-cpt-full-ba1272"].tolist() == [2, 2]
    assert by_branch.loc["released-code-cpt-full-ba6357"].tolist() == [6, 6]
    assert (ranks.learning_rate == 1e-5).all() and set(ranks.duration) == {1272 * CPT_TOKENS_PER_BATCH,
                                                                          6357 * CPT_TOKENS_PER_BATCH}
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "spectra.csv", "ranks.csv", "reference.csv", "fig6-rank-by-layer.png",
        "figS7-released-code-cpt-full-ba1272.png", "figS7-released-code-cpt-full-ba6357.png"}
