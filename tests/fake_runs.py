"""Constructed models and a fake output tree (through `lorastudy.layout`) for the tests of the analyses that
open weights: a tiny Llama, a copy with a known rank-2 update, and finished runs written like training writes
them (checkpoint folder with its record, train and results records with provenance)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lorastudy.config import TARGET_MODULES, Profile, load_profile
from lorastudy.data.tokenizer import build_tokenizer
from lorastudy.layout import Layout
from lorastudy.train.modeling import quiet_loading

TEXTS = ["def add(a, b):\n    return a + b\n", "Question: Tom has 3 apples. How many?\nAnswer: 3\n#### 3",
         "def neg(x):\n    return -x\n"]
FULL_ID, LORA_ID = "code-ift-full-lr0.001-s0", "code-ift-lora-r8-a16-all-lr0.003-s0"
LABEL = "epochs-1"


def tiny_tokenizer() -> Any:
    return build_tokenizer(TEXTS)


def tiny_llama(tok: Any) -> LlamaForCausalLM:
    """2 layers, hidden 32, MLP 64: 14 attention/MLP matrices."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True,
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


def trained_lora(base: LlamaForCausalLM, r: int = 8) -> Any:
    """A peft LoRA model on every linear module with B ≠ 0 (at init B = 0; a trained adapter has B ≠ 0)."""
    from peft import LoraConfig, get_peft_model  # optional dependency of the package

    torch.manual_seed(3)
    with quiet_loading():
        lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=2 * r,
                                                              target_modules=list(TARGET_MODULES["all"])))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return lora


def write_run(out: Path, run_id: str, profile: Profile, model: Any, label: str = LABEL,
              base_override: dict | None = None, base_dump: dict | None = None) -> None:
    """A finished run as training leaves it; its provenance names the profile's base, changed by
    `base_override`, or replaced by `base_dump`."""
    paths = Layout(out).run(run_id)
    model.save_pretrained(paths.checkpoint(label))
    paths.checkpoint_record(label).write_text(json.dumps({"checkpoint": label, "wall": 1}))
    dump = profile.model_dump(mode="json")
    if base_override:
        dump["base"].update(base_override)
    if base_dump is not None:
        dump["base"] = base_dump
    ckpt = {"checkpoint": label, "duration": 1.0, "duration_unit": "epochs", "step": 10, "tokens_seen": 100}
    paths.train_record.write_text(json.dumps({"status": "completed", "checkpoints": [ckpt],
                                              "provenance": {"profile": dump}}))
    paths.results_record.write_text(json.dumps({"status": "completed", "rows": []}))


def fake_output(root: Path, base: LlamaForCausalLM, tok: Any) -> tuple[Profile, Path]:
    """The tiny profile on a saved copy of `base` (fp32), and an output tree with a finished full-FT run (a
    rank-2 update) and a finished LoRA run (r = 8)."""
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    profile = load_profile("tiny", {"base.kind": "pretrained", "base.count": 1, "base.model": str(root / "base"),
                                    "base.dtype": "float32"})
    out = root / "out"
    write_run(out, FULL_ID, profile, rank2_update(base))
    write_run(out, LORA_ID, profile, trained_lora(base))
    return profile, out
