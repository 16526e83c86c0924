"""The tensor math of the weight analyses (paper Figs 6, S7, S8; Shuttleworth et al. 2024; KL forgetting):
singular values, explained variance and ranks, intruder dimensions, KL from logits.

Pure tensor math: callers load the weights. Everything is computed in fp32 at least (fp64 stays fp64),
because SVDs of bf16 weights are neither supported nor accurate enough for cumulative-variance ranks.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from lorastudy.config import ATTENTION_MODULES, MLP_MODULES

# Cumulative shares are compared with this slack so that a share equal to the threshold up to
# rounding (e.g. 9/10 for a 10x10 identity) counts as reaching it.
_SHARE_TOLERANCE = 1e-9


def _at_least_fp32(t: Tensor) -> Tensor:
    """fp64 stays fp64; anything else (bf16, fp16, ints) becomes fp32."""
    return t if t.dtype == torch.float64 else t.to(torch.float32)


def singular_values(m: Tensor) -> Tensor:
    """Singular values of a 2-D matrix, descending, computed in at least fp32."""
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(m.shape)}")
    return torch.linalg.svdvals(_at_least_fp32(m))


def explained_variance(s: Tensor) -> Tensor:
    """Cumulative share of σ² explained by the top-k singular values, k = 1..len(s), in fp64.

    The paper does not define "variance explained"; the natural reading, used here, is
    Σ_{i≤k} σ_i² / Σ_i σ_i² with σ sorted descending (σ² is the energy the rank-k truncation keeps).
    A zero spectrum has nothing to explain and returns all zeros.
    """
    if s.ndim != 1:
        raise ValueError(f"expected a 1-D vector of singular values, got shape {tuple(s.shape)}")
    energy = torch.sort(s.to(torch.float64).abs(), descending=True).values ** 2
    total = energy.sum()
    if total == 0:
        return torch.zeros_like(energy)
    return torch.cumsum(energy, dim=0) / total


def rank_for_variance(x: Tensor, threshold: float = 0.9) -> int:
    """Smallest k whose top-k singular values explain `threshold` of Σσ² (paper Fig 6: threshold 0.9).

    `x` is a 2-D matrix or a 1-D vector of singular values in any order. A zero matrix needs rank 0.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    s = singular_values(x) if x.ndim == 2 else x
    share = explained_variance(s)
    if share.numel() == 0 or share[-1] == 0:
        return 0
    reached = share >= threshold - _SHARE_TOLERANCE
    return int(torch.nonzero(reached)[0].item()) + 1


def module_type(module: str) -> str:
    """'attention' or 'mlp' for Llama's linear modules (dotted names allowed), else 'other'."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf in ATTENTION_MODULES:
        return "attention"
    if leaf in MLP_MODULES:
        return "mlp"
    return "other"


def spectrum_table(deltas: Iterable[tuple[int, str, Tensor]], threshold: float = 0.9) -> list[dict]:
    """One row per (layer, module, ΔW): the rank explaining `threshold` of the variance (Fig 6).

    The key is `rank90` whatever the threshold (the paper's name); the threshold is its own column.
    The Frobenius norm comes from the same singular values (‖ΔW‖_F² = Σσ²), saving a second pass.
    """
    return [spectrum_row(layer, module, tuple(delta.shape), singular_values(delta), threshold)
            for layer, module, delta in deltas]


def spectrum_row(layer: int, module: str, shape: tuple[int, ...], s: Tensor, threshold: float = 0.9) -> dict:
    """`spectrum_table`'s row for one matrix of `shape` from its singular values `s` (computed once elsewhere)."""
    rank = rank_for_variance(s, threshold)
    return {
        "layer": layer,
        "module": module,
        "module_type": module_type(module),
        "shape": tuple(int(x) for x in shape),
        "threshold": threshold,
        "rank90": rank,
        "rank90_fraction": rank / min(shape),
        "frobenius": math.sqrt(float((s.to(torch.float64) ** 2).sum())),
    }


def gaussian_like(shape: tuple[int, int], seed: int = 0) -> Tensor:
    """An i.i.d. N(0, 1) fp32 matrix of `shape`, the same for the same (shape, seed): the yardstick a weight's
    or ΔW's rank is set against (its rank90 depends on its shape only, up to sampling noise)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def gaussian_experiment(
    n: int = 1000, cs: Sequence[float] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0), seed: int = 0
) -> list[dict]:
    """Fig S8: how much does adding a scaled Gaussian cB move the spectrum of a Gaussian A?

    A and B are n×n with i.i.d. N(0, 1) entries (fp32). Per c: spectra of A, A + cB and cB
    (= c·spectrum(B)), the mean absolute difference between the sorted spectra of A + cB and A, and
    the 90%-variance rank of each. The paper's exact c values are not known to us, hence the defaults.
    """
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    s_a, s_b = singular_values(a), singular_values(b)
    rows = []
    for c in cs:
        s_sum = singular_values(a + c * b)
        s_cb = abs(c) * s_b
        rows.append(
            {
                "c": c,
                "mean_abs_diff": float((s_sum - s_a).abs().mean()),
                "rank90_a": rank_for_variance(s_a),
                "rank90_a_plus_cb": rank_for_variance(s_sum),
                "rank90_cb": rank_for_variance(s_cb),
                "s_a": s_a,
                "s_a_plus_cb": s_sum,
                "s_cb": s_cb,
            }
        )
    return rows


def intruder_dimensions(
    w_base: Tensor, w_ft: Tensor, *, top_k: int = 10, epsilon: float = 0.5
) -> dict:
    """Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence").

    For each of the top_k left singular vectors of W_ft, its largest |cosine similarity| with any left
    singular vector of W_base; the vector is an intruder when that largest similarity is below epsilon,
    i.e. it points somewhere the pretrained matrix had no singular direction.
    """
    if w_base.shape != w_ft.shape or w_base.ndim != 2:
        raise ValueError(f"need two 2-D matrices of one shape, got {tuple(w_base.shape)}, {tuple(w_ft.shape)}")
    if not 1 <= top_k <= min(w_ft.shape):
        raise ValueError(f"top_k must lie in [1, {min(w_ft.shape)}], got {top_k}")
    u_base = torch.linalg.svd(_at_least_fp32(w_base), full_matrices=False).U
    u_ft = torch.linalg.svd(_at_least_fp32(w_ft), full_matrices=False).U[:, :top_k]
    u_base = u_base.to(u_ft.dtype)
    similarity = (u_ft.T @ u_base).abs().amax(dim=1)
    is_intruder = similarity < epsilon
    return {
        "count": int(is_intruder.sum()),
        "max_similarity": similarity,
        "is_intruder": is_intruder,
        "top_k": top_k,
        "epsilon": epsilon,
    }


def kl_divergence_from_logits(base_logits: Tensor, ft_logits: Tensor, mask: Tensor | None = None) -> float:
    """Mean per-token KL(base ‖ fine-tuned) of the next-token distributions, in nats.

    Logits are (..., vocab); `mask` (same leading shape, bool or 0/1) selects the tokens to average,
    e.g. to drop padding. Terms where the base probability is exactly zero contribute 0.
    """
    if base_logits.shape != ft_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(base_logits.shape)} vs {tuple(ft_logits.shape)}")
    log_p = torch.log_softmax(_at_least_fp32(base_logits), dim=-1)
    log_q = torch.log_softmax(_at_least_fp32(ft_logits), dim=-1).to(log_p.dtype)
    p = log_p.exp()
    per_token = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=-1)
    if mask is None:
        return float(per_token.mean())
    if mask.shape != per_token.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match tokens {tuple(per_token.shape)}")
    keep = mask.to(torch.bool)
    if not keep.any():
        raise ValueError("mask selects no tokens")
    return float(per_token[keep].mean())
