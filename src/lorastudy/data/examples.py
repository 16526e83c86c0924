"""Records as token ids: the one implementation that training, scoring and generation share.

Every sequence starts with the tokenizer's bos (when it has one) and encodes text without special tokens;
CPT packs documents into blocks and learns every token, IFT learns the response only; batches are padded
right for training and scoring, left for generation.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lorastudy.data import prompts
from lorastudy.data.records import CodeTask, InstructionPair, MathProblem, Record, TextDoc

IGNORE = -100  # the label of a position the loss skips (torch's cross-entropy ignore_index)


def bos_ids(tok: Any) -> list[int]:
    """[bos], or [] for tokenizers without one (Qwen2's)."""
    return [tok.bos_token_id] if tok.bos_token_id is not None else []


def encode(tok: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens (callers add bos/eos where they want them)."""
    return tok(text, add_special_tokens=False)["input_ids"]


def to_text(record: Record) -> str:
    """A record as unstructured text for continued pre-training."""
    if isinstance(record, TextDoc):
        return record.text
    if isinstance(record, CodeTask):
        return record.prompt + record.canonical_solution
    if isinstance(record, InstructionPair):
        return record.prompt + "\n" + record.response
    if isinstance(record, MathProblem):
        return record.question + "\n" + record.answer
    raise TypeError(f"cannot use {type(record).__name__} as CPT text")


def to_pair(record: Record, domain: str) -> tuple[str, str]:
    """A record as (prompt, response) in the same prompt format the evaluation uses."""
    if isinstance(record, CodeTask):
        return record.prompt, record.canonical_solution
    if isinstance(record, MathProblem):
        return prompts.math_prompt(record.question), prompts.math_response(record.answer)
    if isinstance(record, InstructionPair):
        if domain == "math":
            return prompts.math_prompt(record.prompt), prompts.math_response(record.response)
        return prompts.code_instruction(record.prompt), record.response
    raise TypeError(f"cannot use {type(record).__name__} as an instruction pair")


def pack_cpt(texts: Sequence[str], tok: Any, seq_len: int) -> list[dict[str, list[int]]]:
    """Concatenate bos+doc+eos for every doc and cut into seq_len blocks; the last block is kept short,
    so every token is used exactly once."""
    stream: list[int] = []
    for text in texts:
        stream += [*bos_ids(tok), *encode(tok, text), tok.eos_token_id]
    return [{"input_ids": stream[i:i + seq_len], "labels": stream[i:i + seq_len]} for i in range(0, len(stream), seq_len)]


def tokenize_ift(pairs: Sequence[tuple[str, str]], tok: Any, seq_len: int) -> list[dict[str, list[int]]]:
    """bos + prompt + response + eos, labels masked (IGNORE) on bos and prompt; truncated to seq_len.
    Pairs whose prompt fills the whole window teach nothing and are dropped."""
    out = []
    for prompt, response in pairs:
        p = [*bos_ids(tok), *encode(tok, prompt)]
        r = [*encode(tok, response), tok.eos_token_id]
        ids = (p + r)[:seq_len]
        labels = ([IGNORE] * len(p) + r)[:seq_len]
        if any(x != IGNORE for x in labels):
            out.append({"input_ids": ids, "labels": labels})
    return out


def prompt_ids(tok: Any, text: str) -> list[int]:
    """bos + the text's tokens: how every prompt and scored sequence starts, as in training."""
    return [*bos_ids(tok), *encode(tok, text)]


def pad(seqs: Sequence[Sequence[int]], pad_id: int, *, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of sequences padded to the longest, on the right (training, scoring) or the
    left (generation continues every row at the same position)."""
    if side not in {"right", "left"}:
        raise ValueError(f"side must be 'right' or 'left', not {side!r}")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, seq in enumerate(seqs):
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[r, cols] = torch.tensor(list(seq), dtype=torch.long)
        mask[r, cols] = 1
    return ids, mask


@dataclass
class PadCollator:
    """Right-pads a batch; padded positions are ignored by the loss and the attention."""

    pad_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        ids, mask = pad([b["input_ids"] for b in batch], self.pad_id)
        labels, _ = pad([b["labels"] for b in batch], IGNORE)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
