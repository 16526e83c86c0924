"""Records as token ids: the one implementation that training, scoring and generation share.

Every sequence starts with the tokenizer's bos (when it has one) and encodes text without special tokens;
CPT packs documents into blocks and learns every token, IFT learns the response only; batches are padded
right for training and scoring, left for generation.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lorastudy.data import prompts
from lorastudy.data.records import CodeTask, InstructionPair, MathProblem, Record, TextDoc

Block = dict[str, list[int]]
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


def pack_blocks(texts: Iterable[str], tok: Any, seq_len: int, *, first_doc: int = 0,
                offset: int = 0) -> Iterator[tuple[Block, int, int]]:
    """(block, doc, offset) for each block, with the position of the token that follows it; the texts start at
    document `first_doc`, whose first `offset` tokens are skipped (a resumed stream re-encodes that one)."""
    buf: list[int] = []
    segments: deque[list[int]] = deque()  # [doc, offset of its first buffered token, its tokens in buf]
    for doc, text in enumerate(texts, start=first_doc):
        ids = [*bos_ids(tok), *encode(tok, text), tok.eos_token_id]
        start = offset if doc == first_doc else 0
        if start >= len(ids):
            continue
        buf += ids[start:]
        segments.append([doc, start, len(ids) - start])
        while len(buf) >= seq_len:
            block, buf = buf[:seq_len], buf[seq_len:]
            left = seq_len
            while left:  # advance the buffered documents past the block's tokens
                take = min(left, segments[0][2])
                segments[0][1] += take
                segments[0][2] -= take
                left -= take
                if not segments[0][2]:
                    nxt = segments.popleft()
            after = (segments[0][0], segments[0][1]) if segments else (nxt[0] + 1, 0)
            yield {"input_ids": block, "labels": list(block)}, *after
    if buf:
        yield {"input_ids": buf, "labels": list(buf)}, segments[-1][0] + 1, 0


def pack_cpt(texts: Iterable[str], tok: Any, seq_len: int) -> list[Block]:
    """Concatenate bos+doc+eos for every doc and cut into seq_len blocks; the last block is kept short,
    so every token is used exactly once."""
    return [b for b, _, _ in pack_blocks(texts, tok, seq_len)]


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
