"""Models: the one loader (a base, a fine-tuned checkpoint, a released checkpoint), LoRA, and weight deltas.

The same functions serve the 2-core mini study and GPU profiles; only the profile differs.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from lorastudy.config import TARGET_MODULES, Profile
from lorastudy.plan import RunSpec
from lorastudy.train.base import base_source
from lorastudy.train.dropout import speed_up_lora_dropout


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str) -> torch.dtype:
    """`auto` = bf16 on a GPU that supports it, fp32 elsewhere (merging and CPU math stay exact in fp32)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No per-model progress bar or peft deprecation warning while loading dozens of checkpoints (a
    chapter's output would be mostly "Loading weights" lines otherwise)."""

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def one_thread(active: bool = True) -> Iterator[None]:
    """One torch CPU thread while active (and the previous count restored after)."""
    if not active:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def small_model_threads(profile: Profile) -> Iterator[None]:
    """One CPU thread while working on a mini model: its matrices are too small to gain from a second
    thread, and on busy cores OpenMP's waiting made a 128×64 SVD 0.37 s instead of 0.0005 s (and sampling
    16×8 completions 48 s instead of 1.7 s). GPU runs and pretrained bases are left alone."""
    with one_thread(profile.base.kind == "mini" and not torch.cuda.is_available()):
        yield


def load_tokenizer(source: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token and left padding (batched generation needs it)."""
    tok = AutoTokenizer.from_pretrained(source, revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def profile_tokenizer(profile: Profile) -> PreTrainedTokenizerBase:
    """The tokenizer of the profile's base (its own `tokenizer` when it names one)."""
    return load_tokenizer(profile.base.tokenizer or base_source(profile), profile.base.revision)


def load_model(source: str, dtype: str = "auto", revision: str | None = None, **kwargs: Any) -> PreTrainedModel:
    """Any causal LM by hub id or local folder, with sdpa attention."""
    return AutoModelForCausalLM.from_pretrained(
        source, dtype=resolve_dtype(dtype), revision=revision, attn_implementation="sdpa", **kwargs
    )


def load_base(profile: Profile, dtype: str | None = None, index: int = 0
              ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The profile's base model `index` (built first for a mini profile) and its tokenizer (one for every base:
    each is pre-trained on the same world); dtype None = the profile's."""
    model = load_model(base_source(profile, index=index), dtype or profile.base.dtype, profile.base.revision)
    return model, profile_tokenizer(profile)


def load_finetuned(profile: Profile, method: str, source: str | Path, *, revision: str | None = None,
                   dtype: str | None = None, merge: bool = False, base_index: int = 0) -> PreTrainedModel:
    """A fine-tuned checkpoint as a model: full fine-tuning weights, or the profile's base plus a LoRA adapter
    (unmerged unless asked; the adapter on base `base_index`). `source` is a run's checkpoint folder, or a released repository (hub id at
    `revision`, or a local copy); dtype None = the profile's."""
    dtype = dtype or profile.base.dtype
    if method == "full":
        return load_model(str(source), dtype, revision)
    from peft import PeftModel  # optional at import time: full-FT-only work never needs peft

    base = load_model(base_source(profile, index=base_index), dtype, profile.base.revision)
    model = PeftModel.from_pretrained(base, str(source), revision=revision)
    return model.merge_and_unload() if merge else model


def set_attention_dropout(model: PreTrainedModel, p: float) -> None:
    """Attention dropout as a regulariser (Fig 4): the config and every attention module read it."""
    model.config.attention_dropout = p
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = p


def lora_config(spec: RunSpec, profile: Profile) -> Any:
    from peft import LoraConfig  # optional at import time (see load_finetuned)

    d = profile.training.lora
    return LoraConfig(
        r=int(spec.lora_rank or 16),
        lora_alpha=float(spec.lora_alpha or d.alpha_ratio * (spec.lora_rank or 16)),
        lora_dropout=d.dropout,
        target_modules=list(TARGET_MODULES[spec.target_modules or "all"]),
        use_rslora=spec.use_rslora or d.use_rslora,
        use_dora=d.use_dora,
        init_lora_weights=d.init_lora_weights,
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_lora(model: PreTrainedModel, spec: RunSpec, profile: Profile) -> PreTrainedModel:
    """Wrap with peft LoRA; embeddings and lm_head stay frozen (peft freezes all non-adapter weights).
    On CPU the adapters' input dropout draws its masks the faster way (lorastudy.train.dropout), same distribution."""
    from peft import get_peft_model  # optional at import time (see load_finetuned)

    torch.manual_seed(spec.seed)  # peft's adapter init draws from the global RNG
    wrapped = get_peft_model(model, lora_config(spec, profile))
    if device().type == "cpu":
        speed_up_lora_dropout(wrapped)
    return wrapped


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def layer_and_module(name: str) -> tuple[int, str] | None:
    """(layer index, module name) of a parameter or module name inside a decoder layer's linear map."""
    parts = name.split(".")
    if "layers" not in parts:
        return None
    i = parts.index("layers")
    mod = next((p for p in parts[i + 1:] if p in TARGET_MODULES["all"]), None)
    return (int(parts[i + 1]), mod) if mod else None


def base_matrices(model: torch.nn.Module) -> dict[tuple[int, str], torch.Tensor]:
    """Every attention/MLP weight matrix of a plain (or peft-wrapped) model in fp32, by (layer, module)."""
    out = {}
    for name, p in model.named_parameters():
        key = layer_and_module(name)
        if key and name.endswith("weight") and "lora_" not in name:
            out[key] = p.detach().float()
    return out


def weight_deltas(base: torch.nn.Module, tuned: torch.nn.Module) -> Iterator[tuple[int, str, torch.Tensor]]:
    """(layer, module, ΔW) in fp32 for every attention/MLP matrix: W_ft − W_base for full FT,
    scale·B·A for a peft LoRA model (no merge needed, so no precision loss)."""
    if hasattr(tuned, "peft_config"):
        from peft.tuners.lora import LoraLayer  # optional at import time (see load_finetuned)

        for name, module in tuned.named_modules():
            key = layer_and_module(name)
            if key and isinstance(module, LoraLayer) and module.r:
                adapter = module.active_adapters[0]
                yield (*key, module.get_delta_weight(adapter).detach().float())
        return
    base_w = base_matrices(base)
    for name, p in tuned.named_parameters():
        key = layer_and_module(name)
        if key and name.endswith("weight") and key in base_w:
            yield (*key, p.detach().float() - base_w[key])
