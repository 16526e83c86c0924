"""Forgetting benchmarks: multiple choice scored by log-likelihood, and held-out loss.

acc and acc_norm follow lm-eval: acc picks the option with the highest log P(continuation | context);
acc_norm divides it by the continuation's length in bytes. WinoGrande-style partial items have one shared
continuation after different contexts, so both reduce to the same choice.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from lorastudy.data.examples import IGNORE, PadCollator, encode, pack_cpt, pad, prompt_ids
from lorastudy.data.records import MCItem
from lorastudy.evaluation.context import within


def fewshot_prefix(item_index: int, items: Sequence[MCItem], shots: int, seed: int = 1234) -> str:
    """k solved examples drawn (deterministically) from the other items, each followed by a blank line."""
    if shots == 0:
        return ""
    rng = random.Random(seed + item_index)
    pool = [i for i in range(len(items)) if i != item_index]
    chosen = rng.sample(pool, min(shots, len(pool)))
    return "".join("".join(items[i].options[items[i].gold]) + "\n\n" for i in chosen)


def _requests(tok: Any, items: Sequence[MCItem], shots: int, max_len: int) -> list[tuple[int, int, list[int], int]]:
    """(item, option, token ids, number of continuation tokens); a sequence longer than `max_len` (the context
    the model was trained on) is an error, never cut: read past it, a score measures nothing."""
    reqs = []
    for i, item in enumerate(items):
        prefix = fewshot_prefix(i, items, shots)
        for j, (context, continuation) in enumerate(item.options):
            cont = encode(tok, continuation)
            ids = prompt_ids(tok, prefix + context) + cont
            within(len(ids), max_len, f"multiple-choice item {item.id or i}, option {j}")
            reqs.append((i, j, ids, len(cont)))
    return reqs


@torch.no_grad()
def continuation_logprobs(model: torch.nn.Module, tok: Any, requests: Sequence[tuple[int, int, list[int], int]],
                          batch_size: int = 32, progress: bool = True, split_last: bool = False) -> dict[tuple[int, int], Any]:
    """Sum of log-probabilities of each request's continuation tokens, batched (longest first, right-padded);
    with `split_last`, (sum without the last token, the last token's log-probability) instead."""
    dev = next(model.parameters()).device
    order = sorted(range(len(requests)), key=lambda k: -len(requests[k][2]))
    out: dict[tuple[int, int], float] = {}
    for start in tqdm(range(0, len(order), batch_size), desc="log-likelihood", disable=not progress, leave=False):
        batch = [requests[k] for k in order[start:start + batch_size]]
        ids, mask = pad([r[2] for r in batch], tok.pad_token_id)
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        for b, (i, j, seq, n_cont) in enumerate(batch):
            pos = torch.arange(len(seq) - n_cont, len(seq), device=dev)
            targets = ids[b, pos.cpu()].to(dev)
            token_logps = logp[b, pos - 1, targets]
            out[(i, j)] = (float(token_logps[:-1].sum()), float(token_logps[-1])) if split_last else \
                float(token_logps.sum())
    return out


def score_choice(model: torch.nn.Module, tok: Any, items: Sequence[MCItem], *, shots: int = 0,
                 batch_size: int = 32, max_len: int | None = None, progress: bool = True) -> dict[str, Any]:
    """acc, acc_norm and per-item choices for a multiple-choice set; `max_len`: the context the model was trained
    on (default its max_position_embeddings)."""
    if not items:
        raise ValueError("no multiple-choice items to score")
    max_len = max_len or int(getattr(model.config, "max_position_embeddings", 2048))
    was_training = model.training
    model.eval()
    ll = continuation_logprobs(model, tok, _requests(tok, items, shots, max_len), batch_size, progress)
    model.train(was_training)
    records = []
    for i, item in enumerate(items):
        scores = [ll[(i, j)] for j in range(len(item.options))]
        norm = [s / max(len(cont.encode("utf-8")), 1) for s, (_, cont) in zip(scores, item.options)]
        pred, pred_norm = max(range(len(scores)), key=scores.__getitem__), max(range(len(norm)), key=norm.__getitem__)
        records.append({"id": item.id, "gold": item.gold, "pred": pred, "pred_norm": pred_norm, "loglik": scores})
    n = len(records)
    return {
        "acc": sum(r["pred"] == r["gold"] for r in records) / n,
        "acc_norm": sum(r["pred_norm"] == r["gold"] for r in records) / n,
        "n": n, "chance": sum(1 / len(it.options) for it in items) / n, "records": records,
    }


def answer_nll(model: torch.nn.Module, tok: Any, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32,
               max_len: int | None = None, progress: bool = True,
               ids: Sequence[str] | None = None) -> tuple[list[float], list[float]]:
    """Per item, the mean negative log-likelihood per token of the reference answer after its prompt: a learning
    measure that no decoding choice can move. Two readings: of the answer's own tokens, and of the answer plus
    the end-of-sequence token as fine-tuning trains it (a model that never saw where answers end pays for the
    ending only in the second). `max_len`: the context the model was trained on (default max_position_embeddings)."""
    max_len = max_len or int(getattr(model.config, "max_position_embeddings", 2048))
    reqs = []
    for i, (prompt, answer) in enumerate(pairs):
        cont = [*encode(tok, answer), tok.eos_token_id]
        seq = prompt_ids(tok, prompt) + cont
        within(len(seq), max_len, f"reference answer of item {ids[i] if ids is not None else i}")
        reqs.append((i, 0, seq, len(cont)))
    was_training = model.training
    model.eval()
    ll = continuation_logprobs(model, tok, reqs, batch_size, progress, split_last=True)
    model.train(was_training)
    answer = [-ll[(i, 0)][0] / max(n_cont - 1, 1) for i, _, _, n_cont in reqs]
    with_eos = [-(ll[(i, 0)][0] + ll[(i, 0)][1]) / n_cont for i, _, _, n_cont in reqs]
    return answer, with_eos


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, tok: Any, texts: Sequence[str], *, seq_len: int = 128,
                 batch_size: int = 32) -> dict[str, float]:
    """Mean next-token loss (and perplexity) over packed held-out text: the most sensitive forgetting signal."""

    blocks = [b for b in pack_cpt(texts, tok, seq_len) if len(b["input_ids"]) > 1]
    if not blocks:
        raise ValueError("no held-out text to score")
    dev = next(model.parameters()).device
    collate = PadCollator(tok.pad_token_id)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = {k: v.to(dev) for k, v in collate(blocks[start:start + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                                 ignore_index=IGNORE, reduction="sum")
        total += float(loss)
        count += int((batch["labels"][:, 1:] != IGNORE).sum())
    model.train(was_training)
    mean = total / count
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": count}
