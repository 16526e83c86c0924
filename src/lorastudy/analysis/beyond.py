"""Chapter 16, beyond the paper: intruder dimensions (Shuttleworth et al. 2024) in the fine-tuned weights, and
KL(base ‖ fine-tuned) on target data as a forgetting predictor (RL's Razor).

Weights are compared in fp32 (intruders); the generation-free forward passes of KL use the profile's dtype,
as evaluation does.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lorastudy.analysis import linalg
from lorastudy.analysis.chapter import Chapter
from lorastudy.analysis.checkpoints import (
    CKPT_FIELDS,
    RUN_FIELDS,
    finished_runs,
    load_base_fp32,
    load_base_on_device,
    load_checkpoint,
    missing_runs_note,
    per_checkpoint,
    weight_measure,
)
from lorastudy.analysis.claims import claim
from lorastudy.config import Profile
from lorastudy.data import prompts
from lorastudy.data.examples import pad, prompt_ids
from lorastudy.data.sources import load_spec
from lorastudy.io import config_hash
from lorastudy.plan import RunSpec
from lorastudy.results import wide
from lorastudy.train.modeling import base_matrices, weight_deltas

__all__ = ["RUNS_NEEDED", "chapter_tables", "analysed_runs", "intruder_rows", "intruder_counts", "intruder_summary", "module_pivot", "target_texts",
           "kl_between", "kl_to_base", "forgetting_drop", "kl_forgetting", "spearman", "missing_note", "runs_line",
           "spearman_line",
           "beyond_verdict"]

RUNS_NEEDED = {"full": "Full fine-tuning", "lora": "LoRA"}  # the methods compared, named as the not-run notes do


# ----------------------------------------------------------------------------- intruder dimensions
def intruder_rows(base: torch.nn.Module, tuned: torch.nn.Module, *, top_k: int = 10,
                  epsilon: float = 0.5) -> list[dict[str, Any]]:
    """Per matrix, how many of W_ft's top_k singular vectors are intruders (no base singular vector with
    |cos| ≥ epsilon), the sign Shuttleworth et al. tie to LoRA's forgetting."""
    w0 = base_matrices(base)
    rows = []
    for layer, module, delta in weight_deltas(base, tuned):
        w = w0[(layer, module)].to(delta.device)
        res = linalg.intruder_dimensions(w, w + delta, top_k=min(top_k, min(w.shape)), epsilon=epsilon)
        sim = res["max_similarity"]
        rows.append({"layer": layer, "module": module, "module_type": linalg.module_type(module),
                     "intruders": res["count"], "top_k": res["top_k"], "epsilon": epsilon,
                     "min_similarity": float(sim.min()), "mean_similarity": float(sim.mean())})
    return rows


def intruder_counts(profile: Profile, out_root: Path, specs: Iterable[RunSpec] | None = None, *, top_k: int = 10,
                    epsilon: float = 0.5, checkpoints: str = "last", cache_dir: Path | None = None,
                    base: torch.nn.Module | None = None) -> pd.DataFrame:
    """Intruder dimensions per (run, checkpoint, layer, module) for the given runs (default: every finished
    run), each (run, checkpoint) cached under cache_dir/intruders/."""
    measure = weight_measure(profile, out_root, base, lambda b, t: intruder_rows(b, t, top_k=top_k, epsilon=epsilon))
    rows = per_checkpoint(profile, out_root, specs, checkpoints=checkpoints, cache_dir=cache_dir, kind="intruders",
                          settings=lambda _spec: {"top_k": top_k, "epsilon": epsilon}, measure=measure,
                          suffix=f"k{top_k}-e{epsilon:g}")
    cols = [*RUN_FIELDS, *CKPT_FIELDS, "layer", "module", "module_type", "intruders", "top_k", "epsilon",
            "min_similarity", "mean_similarity"]
    return pd.DataFrame(rows, columns=cols)


def intruder_summary(counts: pd.DataFrame) -> pd.DataFrame:
    """Per (run, checkpoint): intruders summed over matrices, per matrix on average, and by module type."""
    keys = ["run_id", "arm", "method", "lora_rank", "target_modules", "domain", "regime", "checkpoint", "duration"]
    if counts.empty:
        return pd.DataFrame(columns=[*keys, "intruders", "matrices", "per_matrix", "attention", "mlp"])
    g = counts.groupby(keys, dropna=False, sort=False)
    out = g.intruders.agg(intruders="sum", matrices="size").reset_index()
    out["per_matrix"] = out.intruders / out.matrices
    by_type = counts.pivot_table(index=["run_id", "checkpoint"], columns="module_type", values="intruders",
                                 aggfunc="sum")
    index = pd.MultiIndex.from_frame(out[["run_id", "checkpoint"]])
    for t in ("attention", "mlp"):
        out[t] = by_type[t].reindex(index).to_numpy() if t in by_type else np.nan
    return out


def module_pivot(counts: pd.DataFrame) -> pd.DataFrame:
    """Mean intruders per module (rows) and method (columns), over layers and runs; empty without counts."""
    if counts.empty:
        return pd.DataFrame()
    return counts.pivot_table(index="module", columns="method", values="intruders", aggfunc="mean")


# ----------------------------------------------------------------------------- KL to the base
def target_texts(profile: Profile, domain: str, n: int) -> list[str]:
    """The first n test items of the domain as the text a fine-tuned model was taught to produce: the code
    prompt with its reference body, or the math question with its worked answer (the target distribution)."""
    items = load_spec(profile, profile.eval.learning[domain].dataset)[:n]
    if domain == "code":
        return [t.prompt + t.canonical_solution for t in items]
    return [prompts.math_prompt(p.question) + prompts.math_response(p.answer) for p in items]


@torch.no_grad()
def kl_between(base: torch.nn.Module, tuned: torch.nn.Module, tok: Any, texts: Sequence[str], *,
               batch_size: int = 32, max_len: int | None = None) -> dict[str, float]:
    """Mean per-token KL(base ‖ tuned) of next-token distributions over `texts` (bos + tokens, right-padded,
    padding masked): how far fine-tuning moved the model on the target data (RL's Razor)."""
    if not texts:
        raise ValueError("no texts to measure KL on")
    dev = next(tuned.parameters()).device
    max_len = max_len or int(getattr(base.config, "max_position_embeddings", 2048))
    seqs = [prompt_ids(tok, t)[:max_len] for t in texts]
    total, count = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad(seqs[start:start + batch_size], tok.pad_token_id, side="right")
        ids, mask = ids.to(dev), mask.to(dev)
        p = base(input_ids=ids, attention_mask=mask).logits
        q = tuned(input_ids=ids, attention_mask=mask).logits
        n = int(mask.sum())
        total += linalg.kl_divergence_from_logits(p, q, mask) * n
        count += n
    return {"kl": total / count, "tokens": count}


def kl_to_base(profile: Profile, out_root: Path, specs: Iterable[RunSpec] | None = None, *, n_prompts: int = 64,
               checkpoints: str = "last", batch_size: int = 32, cache_dir: Path | None = None) -> pd.DataFrame:
    """KL(base ‖ fine-tuned) per (run, checkpoint) on the first n_prompts test items of the run's domain,
    each cached under cache_dir/kl/: the candidate forgetting predictor of chapter 16."""
    loaded: dict[Any, Any] = {}
    texts: dict[str, list[str]] = {}

    def settings(spec: RunSpec) -> dict[str, Any]:
        return {"n_prompts": n_prompts, "dtype": profile.base.dtype,
                "test_set": config_hash(profile.eval.learning[spec.domain].dataset.model_dump(mode="json"))}

    def measure(spec: RunSpec, label: str) -> list[dict[str, Any]]:
        index = profile.base.index(spec.seed)  # KL from the base the run was fine-tuned from
        if index not in loaded:
            loaded[index], loaded["tok"] = load_base_on_device(profile, index=index)
        if spec.domain not in texts:
            texts[spec.domain] = target_texts(profile, spec.domain, n_prompts)
        tuned = load_checkpoint(profile, out_root, spec, label, dtype=None)
        res = kl_between(loaded[index], tuned, loaded["tok"], texts[spec.domain], batch_size=batch_size)
        return [{**res, "n_prompts": len(texts[spec.domain]), "finite": bool(math.isfinite(res["kl"]))}]

    rows = per_checkpoint(profile, out_root, specs, checkpoints=checkpoints, cache_dir=cache_dir, kind="kl",
                          settings=settings, measure=measure)
    return pd.DataFrame(rows, columns=[*RUN_FIELDS, *CKPT_FIELDS, "kl", "tokens", "n_prompts", "finite"])


# ----------------------------------------------------------------------------- against forgetting
def forgetting_drop(df: pd.DataFrame) -> pd.DataFrame:
    """Per (run, checkpoint): forgetting_avg, its drop from the base (base − run: more = forgot more) and,
    where measured, the rise of held-out source loss (run − base)."""
    w = wide(df)
    base = w[w.method == "base"]
    runs = w[w.method != "base"].copy()
    out = runs[["run_id", "checkpoint"]].copy()
    for col, name, sign in (("forgetting_avg", "forgetting_drop", 1), ("heldout_source_loss", "source_loss_rise", -1)):
        if col in w and len(base):
            out[col] = runs[col]
            out[name] = sign * (float(base[col].mean()) - runs[col])
        else:
            out[col], out[name] = np.nan, np.nan
    return out.reset_index(drop=True)


def kl_forgetting(kl: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """`kl_to_base` rows with the same checkpoint's `forgetting_drop` columns beside them (NaN where not
    evaluated)."""
    return kl.merge(forgetting_drop(results), on=["run_id", "checkpoint"], how="left")


def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 pairs or a constant side."""
    frame = pd.DataFrame({"x": list(x), "y": list(y)}).dropna()
    if len(frame) < 3:
        return float("nan")
    rx, ry = frame.x.rank(), frame.y.rank()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def chapter_tables(ch: Chapter, *, top_k: int, epsilon: float, kl_prompts: int,
                   kl_all_checkpoints: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The chapter's two summaries, intruder counts and KL to the base: read from OUT/summaries when stored
    with these settings (a snapshot), else measured on every finished run's checkpoints."""
    base = cache(lambda: load_base_fp32(ch.profile))
    runs = cache(lambda: finished_runs(ch.profile, ch.out))
    counts = ch.summary("intruders", {"top_k": top_k, "epsilon": epsilon}, lambda: intruder_counts(
        ch.profile, ch.out, runs(), top_k=top_k, epsilon=epsilon, cache_dir=ch.cache, base=base()))
    which = "all" if kl_all_checkpoints else "last"
    kl = ch.summary("kl", {"n_prompts": kl_prompts, "checkpoints": which}, lambda: kl_to_base(
        ch.profile, ch.out, runs(), n_prompts=kl_prompts, checkpoints=which, cache_dir=ch.cache))
    return counts, kl


def analysed_runs(counts: pd.DataFrame) -> list[Any]:
    """One row per run of a per-matrix table (with `.method`): what the runs line and the not-run notes read."""
    return list(counts.drop_duplicates("run_id").itertuples(index=False))


def missing_note(runs: Iterable[RunSpec]) -> str:
    """The not-run notes for the methods the chapter needs but found no finished run of (empty when none)."""
    return missing_runs_note(runs, RUNS_NEEDED)


def runs_line(runs: Sequence[RunSpec]) -> str:
    """'N finished runs: F full fine-tuning, L LoRA'."""
    return (f"{len(runs)} finished runs: {sum(s.method == 'full' for s in runs)} full fine-tuning, "
            f"{sum(s.method == 'lora' for s in runs)} LoRA")


def spearman_line(frame: pd.DataFrame, y: str, name: str) -> str:
    """'Spearman(KL, NAME) = ρ over N checkpoints' for a `kl_forgetting` column."""
    return f"Spearman(KL, {name}) = {spearman(frame.kl, frame[y]):.3f} over {int(frame[y].notna().sum())} checkpoints"


def beyond_verdict(intruders: pd.DataFrame, kl: pd.DataFrame) -> pd.DataFrame:
    """Chapter 16's two statements: LoRA has more intruder dimensions than full FT (Shuttleworth et al.),
    and KL to the base on target data predicts forgetting (positive Spearman correlation, RL's Razor)."""
    claims = []
    full, lora = intruders[intruders.method == "full"], intruders[intruders.method == "lora"]
    if len(full) and len(lora):
        claims.append(claim("LoRA has more intruder dimensions per matrix than full FT", True,
                            bool(lora.per_matrix.mean() > full.per_matrix.mean()),
                            f"LoRA {lora.per_matrix.mean():.2f} vs full {full.per_matrix.mean():.2f} per matrix"))
    else:
        claims.append(claim("LoRA has more intruder dimensions per matrix than full FT", True, None,
                            "needs finished full-FT and LoRA runs"))
    ok = kl.dropna(subset=["kl", "forgetting_drop"]) if len(kl) else kl
    rho = spearman(ok.kl, ok.forgetting_drop) if len(ok) else float("nan")
    claims.append(claim("more KL(base ‖ fine-tuned) on target data, more forgetting (Spearman > 0)", True,
                        None if math.isnan(rho) else bool(rho > 0),
                        f"Spearman {rho:.2f} over {len(ok)} checkpoints" if not math.isnan(rho)
                        else f"needs at least 3 checkpoints with both numbers (have {len(ok)})"))
    if len(ok) and ok.source_loss_rise.notna().sum() >= 3:
        rho2 = spearman(ok.kl, ok.source_loss_rise)
        claims.append(claim("more KL, larger rise of held-out source loss (Spearman > 0)", True,
                            None if math.isnan(rho2) else bool(rho2 > 0), f"Spearman {rho2:.2f}"))
    return pd.DataFrame(claims)
