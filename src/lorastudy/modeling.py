"""Models: load a base (hub id, local folder or the cached mini base), apply LoRA, load checkpoints, weight deltas.

The same functions serve the 2-core mini study and GPU profiles; only the profile differs.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lorastudy.config import PROJECT_ROOT, Profile, RunSpec, config_hash

ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_MODULES = ["gate_proj", "up_proj", "down_proj"]
TARGET_MODULES = {"attention": ATTENTION_MODULES, "mlp": MLP_MODULES, "all": ATTENTION_MODULES + MLP_MODULES}
BASE_VERSION = 1  # bump when the mini base recipe changes, so cached bases are rebuilt


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str) -> torch.dtype:
    """`auto` = bf16 on a GPU that supports it, fp32 elsewhere (merging and CPU math stay exact in fp32)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def cache_root() -> Path:
    """Where built worlds and bases are cached (env LORASTUDY_CACHE, default outputs/cache)."""
    return Path(os.environ.get("LORASTUDY_CACHE", PROJECT_ROOT / "outputs" / "cache"))


def world_dir(profile: Profile) -> Path:
    """The mini world's files, generated once per world config (atomic: built beside, then renamed)."""
    from lorastudy.data.world import WorldConfig, generate_world

    cfg = WorldConfig(**profile.base.world)
    path = cache_root() / f"world-{config_hash(repr(cfg))}"
    if not (path / "world.json").is_file():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        generate_world(cfg).write(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return path


def mini_base_dir(profile: Profile) -> Path:
    """Cache folder of the mini base, keyed by everything that shapes it."""
    b = profile.base
    key = config_hash([BASE_VERSION, b.world, b.architecture.model_dump(), b.pretrain.model_dump()])
    return cache_root() / f"base-{key}"


def base_source(profile: Profile) -> str:
    """Hub id or local folder of the base model (building the mini base if needed)."""
    if profile.base.kind == "pretrained":
        return str(profile.base.model)
    path = mini_base_dir(profile)
    if not (path / "base.json").is_file():
        from lorastudy.pretrain import build_mini_base

        build_mini_base(profile, path)
    return str(path)


def load_tokenizer(source: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token and left padding (batched generation needs it)."""
    tok = AutoTokenizer.from_pretrained(source, revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(source: str, dtype: str = "auto", revision: str | None = None, **kwargs: Any) -> PreTrainedModel:
    """Any causal LM by hub id or local folder, with sdpa attention."""
    return AutoModelForCausalLM.from_pretrained(
        source, dtype=resolve_dtype(dtype), revision=revision, attn_implementation="sdpa", **kwargs
    )


def load_base(profile: Profile) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    src = base_source(profile)
    tok = load_tokenizer(profile.base.tokenizer or src, profile.base.revision)
    return load_model(src, profile.base.dtype, profile.base.revision), tok


def set_attention_dropout(model: PreTrainedModel, p: float) -> None:
    """Attention dropout as a regulariser (Fig 4): the config and every attention module read it."""
    model.config.attention_dropout = p
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = p


def lora_config(spec: RunSpec, profile: Profile) -> Any:
    from peft import LoraConfig

    d = profile.training.lora
    return LoraConfig(
        r=int(spec.lora_rank or 16),
        lora_alpha=float(spec.lora_alpha or d.alpha_ratio * (spec.lora_rank or 16)),
        lora_dropout=d.dropout,
        target_modules=TARGET_MODULES[spec.target_modules or "all"],
        use_rslora=spec.use_rslora or d.use_rslora,
        use_dora=d.use_dora,
        init_lora_weights=d.init_lora_weights,
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_lora(model: PreTrainedModel, spec: RunSpec, profile: Profile) -> PreTrainedModel:
    """Wrap with peft LoRA; embeddings and lm_head stay frozen (peft freezes all non-adapter weights)."""
    from peft import get_peft_model

    torch.manual_seed(spec.seed)  # peft's adapter init draws from the global RNG
    return get_peft_model(model, lora_config(spec, profile))


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def load_finetuned(profile: Profile, spec: RunSpec, checkpoint: Path, *, merge: bool = False) -> PreTrainedModel:
    """A checkpoint as a model: full FT weights, or the base plus the LoRA adapter (unmerged unless asked)."""
    if spec.method == "full":
        return load_model(str(checkpoint), profile.base.dtype)
    from peft import PeftModel

    base = load_model(base_source(profile), profile.base.dtype, profile.base.revision)
    model = PeftModel.from_pretrained(base, str(checkpoint))
    return model.merge_and_unload() if merge else model


def _layer_and_module(name: str) -> tuple[int, str] | None:
    parts = name.split(".")
    if "layers" not in parts:
        return None
    i = parts.index("layers")
    mod = next((p for p in parts[i + 1:] if p in TARGET_MODULES["all"]), None)
    return (int(parts[i + 1]), mod) if mod else None


def weight_deltas(base: torch.nn.Module, tuned: torch.nn.Module) -> Iterator[tuple[int, str, torch.Tensor]]:
    """(layer, module, ΔW) in fp32 for every attention/MLP matrix: W_ft − W_base for full FT,
    scale·B·A for a peft LoRA model (no merge needed, so no precision loss)."""
    base_w = {}
    for name, p in base.named_parameters():
        key = _layer_and_module(name)
        if key and name.endswith("weight"):
            base_w[key] = p.detach().float()
    if hasattr(tuned, "peft_config"):
        from peft.tuners.lora import LoraLayer

        for name, module in tuned.named_modules():
            key = _layer_and_module(name)
            if key and isinstance(module, LoraLayer) and module.r:
                adapter = module.active_adapters[0]
                yield (*key, module.get_delta_weight(adapter).detach().float())
        return
    for name, p in tuned.named_parameters():
        key = _layer_and_module(name)
        if key and name.endswith("weight") and key in base_w:
            yield (*key, p.detach().float() - base_w[key])
