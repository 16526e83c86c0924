"""Training mechanics on a small random Llama: LoRA trains only adapters, IFT masks the prompt, CPT packing
keeps every token once, runs are deterministic, divergence is recorded, merged LoRA = unmerged."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lorastudy.config import TARGET_MODULES, load_profile
from lorastudy.data.examples import IGNORE, pack_cpt, tokenize_ift
from lorastudy.data.tokenizer import build_tokenizer
from lorastudy.engine.sweep import TrainingBar
from lorastudy.io import read_json, write_json
from lorastudy.layout import PROGRESS_ENV
from lorastudy.plan import RunSpec
from lorastudy.train.modeling import apply_lora, count_parameters, weight_deltas
from lorastudy.train.training import checkpoint_steps, fit, training_arguments

TEXTS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer: 3 + 4 = 7.\n#### 7",
    "def add_two(x):\n    \"\"\"add two to x\"\"\"\n    return x + 2\n",
    "Alice lives in Paris. Alice is a baker. Bob lives in Rome.",
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(TEXTS)


@pytest.fixture()
def model(tok):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg)


def lora_spec(rank: int = 4, targets: str = "all") -> RunSpec:
    return RunSpec(domain="code", regime="ift", method="lora", learning_rate=1e-3, seed=0, lora_rank=rank,
                   lora_alpha=2 * rank, target_modules=targets)


def test_lora_trains_only_adapter_parameters(model) -> None:
    profile = load_profile("tiny")
    full = count_parameters(model)
    assert full["trainable"] == full["total"]
    peft_model = apply_lora(model, lora_spec(4), profile)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # r * (in + out) per adapted matrix: q,k,v,o are 32x32, gate/up 64x32, down 32x64, 2 layers
    expected = 2 * 4 * (4 * (32 + 32) + 3 * (32 + 64))
    assert count_parameters(peft_model)["trainable"] == expected
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "embed" in n or "lm_head" in n)


@pytest.mark.parametrize("targets", ["attention", "mlp"])
def test_lora_target_module_choice(model, targets: str) -> None:
    peft_model = apply_lora(model, lora_spec(2, targets), load_profile("tiny"))
    adapted = {n.split(".")[-4] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert adapted == set(TARGET_MODULES[targets])


def test_ift_loss_mask_excludes_prompt(tok) -> None:
    prompt, response = "Question: Tom has 3 apples?\nAnswer:", " 3 + 4 = 7.\n#### 7"
    (ex,) = tokenize_ift([(prompt, response)], tok, seq_len=128)
    n_prompt = 1 + len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(ex["input_ids"][n_prompt:-1]) == response


def test_ift_drops_pairs_whose_prompt_fills_the_window(tok) -> None:
    assert tokenize_ift([("Alice lives in Paris. " * 20, " Rome")], tok, seq_len=16) == []


def test_cpt_packing_keeps_every_token_once(tok) -> None:
    texts = TEXTS * 7
    blocks = pack_cpt(texts, tok, seq_len=16)
    stream = [t for b in blocks for t in b["input_ids"]]
    expected = []
    for text in texts:
        expected += [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    assert stream == expected
    assert all(len(b["input_ids"]) == 16 for b in blocks[:-1]) and 0 < len(blocks[-1]["input_ids"]) <= 16
    assert all(b["labels"] == b["input_ids"] for b in blocks)


def test_checkpoint_steps_for_epochs_and_tokens() -> None:
    examples = [{"input_ids": [1] * 10}] * 40
    assert checkpoint_steps([1, 2], "epochs", examples, batch=8) == {5: 1, 10: 2}
    assert checkpoint_steps([800, 1600], "tokens", examples, batch=8) == {10: 800, 20: 1600}
    with pytest.raises(ValueError, match="same optimizer steps"):
        checkpoint_steps([1, 1.01], "epochs", examples, batch=8)


def _fit(model, tok, tmp_path: Path, name: str, lr: float = 1e-3):
    profile = load_profile("tiny")
    examples = pack_cpt(TEXTS * 10, tok, seq_len=32)
    args = training_arguments(tmp_path / name, lr=lr, batch=4, accum=1, max_steps=6, seed=0, schedule="wsd",
                              profile=profile, weight_decay=0.0, progress=False)
    return fit(model, examples, out=tmp_path / name, args=args, pad_id=tok.pad_token_id, at_steps={3: 1, 6: 2},
               unit="tokens")


def test_same_seed_same_loss_curve(tok, tmp_path: Path) -> None:
    curves = []
    for name in ("a", "b"):
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
        ckpt = _fit(LlamaForCausalLM(cfg), tok, tmp_path, name)
        curves.append([h["loss"] for h in ckpt.log_history if "loss" in h])
    assert len(curves[0]) == 6 and curves[0] == curves[1]


def test_checkpoints_record_their_cost(model, tok, tmp_path: Path) -> None:
    ckpt = _fit(model, tok, tmp_path, "c")
    assert [m["step"] for m in ckpt.saved] == [3, 6]
    for meta in ckpt.saved:
        folder = tmp_path / "c" / "checkpoints" / meta["checkpoint"]
        assert (folder / "checkpoint.json").is_file() and any(folder.glob("*.safetensors"))
        assert meta["tokens_seen"] > 0 and meta["peak_memory_bytes"] > 0 and meta["tokens_per_s"] > 0
    assert ckpt.saved[1]["tokens_seen"] > ckpt.saved[0]["tokens_seen"]


def test_non_finite_loss_is_recorded_not_raised(model, tok, tmp_path: Path, monkeypatch) -> None:
    forward = model.forward

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(model, "forward", poisoned)
    ckpt = _fit(model, tok, tmp_path, "nan")
    assert ckpt.diverged_at == 1
    assert ckpt.saved == []


def test_merged_lora_matches_unmerged(model, tok) -> None:
    profile = load_profile("tiny", {"training.lora.init_lora_weights": False})  # random B, so ΔW != 0
    base_logits_input = torch.tensor([tok(TEXTS[0])["input_ids"][:20]])
    peft_model = apply_lora(model, lora_spec(4), profile).eval()
    with torch.no_grad():
        unmerged = peft_model(base_logits_input).logits
        deltas = {(layer, m): d for layer, m, d in weight_deltas(peft_model.get_base_model(), peft_model)}
        base_w = {n: p.detach().clone() for n, p in peft_model.get_base_model().named_parameters()}
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(base_logits_input).logits
    rel = (merged - unmerged).norm() / unmerged.norm()
    assert rel < 1e-4
    assert len(deltas) == 2 * 7 and all(d.abs().sum() > 0 for d in deltas.values())
    q0 = merged_model.model.layers[0].self_attn.q_proj.weight
    q0_base = base_w["model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert torch.allclose(q0 - q0_base, deltas[(0, "q_proj")], atol=1e-6)


def test_full_ft_deltas_are_weight_differences(model) -> None:
    tuned = LlamaForCausalLM(model.config)
    tuned.load_state_dict(model.state_dict())
    with torch.no_grad():
        tuned.model.layers[1].mlp.down_proj.weight += 0.5
    deltas = {(layer, m): d for layer, m, d in weight_deltas(model, tuned)}
    assert len(deltas) == 2 * 7
    assert math.isclose(float(deltas[(1, "down_proj")].mean()), 0.5, rel_tol=1e-5)
    assert float(deltas[(0, "q_proj")].abs().max()) == 0.0


def test_lion_optimizer_trains(model, tok, tmp_path: Path) -> None:
    profile = load_profile("tiny", {"training.optimizer": "lion"})
    examples = pack_cpt(TEXTS * 10, tok, seq_len=32)
    args = training_arguments(tmp_path / "lion", lr=1e-3, batch=4, accum=1, max_steps=4, seed=0, schedule="cosine",
                              profile=profile, weight_decay=0.0, progress=False)
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    ckpt = fit(model, examples, out=tmp_path / "lion", args=args, pad_id=tok.pad_token_id, at_steps={}, unit="tokens",
               optimizer="lion")
    from lion_pytorch import Lion
    assert isinstance(getattr(ckpt.trainer_optimizer, "optimizer", ckpt.trainer_optimizer), Lion)
    # Lion moves every weight by exactly lr * sign(update) per step (no weight decay here)
    delta = (model.model.layers[0].mlp.up_proj.weight.detach() - before).abs()
    assert torch.all(delta <= 4 * 1e-3 + 1e-7) and delta.max() > 0


def _random_llama(tok, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, attention_dropout=0.1)
    return LlamaForCausalLM(cfg)


def test_a_cooldown_branch_equals_a_run_that_ends_there(tok, tmp_path: Path) -> None:
    """Annealed durations: the short duration's checkpoint, cooled down from the long run's stable phase, is
    bit for bit the run whose own schedule ends there (same data order, optimizer state and dropout RNG)."""
    from safetensors.torch import load_file

    from lorastudy.train.training import branch_points, ordered

    profile = load_profile("tiny")
    examples = ordered(pack_cpt(TEXTS * 10, tok, seq_len=16), 8 * 4, seed=3)

    def args(out: Path, steps: int, decay: int):
        return training_arguments(out, lr=3e-3, batch=4, accum=1, max_steps=steps, seed=0, schedule="wsd",
                                  profile=profile, weight_decay=0.0, progress=False, warmup_steps=1, decay_steps=decay)

    at = {4: 16.0, 8: 32.0}
    branches = branch_points(at, 0.25, warmup_steps=1)
    assert branches == {3: 4}
    main = fit(_random_llama(tok), examples, out=tmp_path / "a", args=args(tmp_path / "a", 8, 2), pad_id=0,
               at_steps=at, unit="tokens", branches=branches,
               branch=lambda start, final: (_random_llama(tok, seed=9), args(tmp_path / "a", final, final - start)))
    alone = fit(_random_llama(tok), examples[:16], out=tmp_path / "b", args=args(tmp_path / "b", 4, 1), pad_id=0,
                at_steps={4: 16.0}, unit="tokens")
    assert [m["step"] for m in main.saved] == [4, 8]
    a, b = (load_file(next((tmp_path / d / "checkpoints" / "tokens-16").glob("*.safetensors"))) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main.saved[0]["tokens_seen"] == alone.saved[0]["tokens_seen"] == sum(len(e["input_ids"]) for e in examples[:16])
    lrs = [h["learning_rate"] for h in main.log_history if "learning_rate" in h]
    assert lrs.count(3e-3) >= 4 and lrs[-1] < 3e-3  # a stable phase, then the main run's own cooldown


def test_a_branch_point_inside_the_warmup_is_refused() -> None:
    from lorastudy.train.training import branch_points

    with pytest.raises(ValueError, match="warmup"):
        branch_points({2: 1.0, 20: 10.0}, 0.5, warmup_steps=2)


def test_training_reports_its_progress_to_the_file_the_environment_names(model, tok, tmp_path: Path,
                                                                          monkeypatch) -> None:
    progress = tmp_path / "progress.json"
    monkeypatch.setenv(PROGRESS_ENV, str(progress))
    ckpt = _fit(model, tok, tmp_path, "p")
    p = read_json(progress)
    assert p["step"] == p["steps"] == 6  # the last step is always written
    assert p["tokens"] == ckpt.saved[-1]["tokens_seen"] and p["seconds"] > 0


def test_the_training_bar_follows_the_progress_file(tmp_path: Path) -> None:
    progress = tmp_path / "progress.json"
    write_json(progress, {"step": 9, "steps": 9, "tokens": 1, "seconds": 1})  # stale: from an earlier build
    bar = TrainingBar(progress, "pre-training")
    bar()
    assert bar.bar is None  # the stale file was removed, nothing to show yet
    for step in (3, 7):
        write_json(progress, {"step": step, "steps": 10, "tokens": 100 * step, "seconds": step})
        bar()
        assert bar.bar.n == step and bar.bar.total == 10 and "100 tokens/s" in bar.bar.postfix
    bar.close()
