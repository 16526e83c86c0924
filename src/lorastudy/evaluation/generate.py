"""Batched generation for every learning benchmark: left padding, KV cache, greedy or sampled, stop strings.

The same call serves a base model, a full fine-tuning checkpoint and a peft LoRA model.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from lorastudy.data.examples import pad, prompt_ids
from lorastudy.evaluation.context import within

Stop = str | re.Pattern[str]


class StopOnStrings(StoppingCriteria):
    """Per-sequence stop when the decoded continuation contains a stop string or pattern. Written here because
    transformers' StopStringCriteria assumes a BPE-style vocabulary and rejects word-level tokenizers."""

    def __init__(self, tok: Any, stop: Sequence[Stop], prompt_len: int) -> None:
        self.tok, self.stop, self.prompt_len = tok, list(stop), prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tok.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([stop_index(t, self.stop) is not None for t in texts], device=input_ids.device)


def stop_index(text: str, stop: Sequence[Stop]) -> int | None:
    """Where the first stop string or pattern begins in `text`, or None."""
    hits = []
    for s in stop:
        if isinstance(s, re.Pattern):
            match = s.search(text)
            hits.append(match.start() if match else -1)
        else:
            hits.append(text.find(s))
    return min((i for i in hits if i >= 0), default=None)


def truncate_at_stop(text: str, stop: Sequence[Stop]) -> str:
    """Cut a completion at the first stop (generation may overshoot within a batch)."""
    cut = stop_index(text, stop)
    return text if cut is None else text[:cut]


@torch.no_grad()
def generate(model: Any, tok: Any, prompts: Sequence[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 1.0, n: int = 1, stop: Sequence[Stop] = (), batch_size: int = 32, seed: int = 0,
             progress: bool = True, desc: str = "generate", context: int | None = None,
             names: Sequence[str] | None = None) -> list[list[str]]:
    """n completions per prompt (greedy when temperature is 0), each cut at the first stop sequence. `context`:
    the length the model was trained on (default its max_position_embeddings): a prompt whose tokens plus
    max_new_tokens exceed it is an error naming the item (`names`, else its index)."""
    if tok.padding_side != "left":
        tok.padding_side = "left"
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    sample = temperature > 0
    gen_kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens, do_sample=sample, num_return_sequences=n, use_cache=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    if sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        if n > 1:
            raise ValueError("greedy decoding gives one completion per prompt; set temperature > 0 for n > 1")
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    per_batch = max(1, batch_size // n)
    context = context or getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if context:
        for k, prompt in enumerate(prompts):
            within(len(prompt_ids(tok, prompt)) + max_new_tokens, context,
                   f"{desc} prompt {names[k] if names is not None else k} plus max_new_tokens {max_new_tokens}")
    out: list[list[str]] = []
    for start in tqdm(range(0, len(prompts), per_batch), desc=desc, disable=not progress, leave=False):
        chunk = list(prompts[start:start + per_batch])
        ids, mask = left_padded(tok, chunk)
        criteria = StoppingCriteriaList([StopOnStrings(tok, stop, ids.shape[1])] if stop else [])
        gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), stopping_criteria=criteria,
                             **gen_kwargs)
        texts = tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
        texts = [truncate_at_stop(t, stop) for t in texts]
        out += [texts[i * n:(i + 1) * n] for i in range(len(chunk))]
    model.train(was_training)
    return out


def left_padded(tok: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """bos + prompt tokens (as in training), left-padded so that generation continues every row at once."""
    return pad([prompt_ids(tok, p) for p in prompts], tok.pad_token_id, side="left")
