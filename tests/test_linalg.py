"""The tensor math of the weight analyses on matrices whose answers are known by construction."""
from __future__ import annotations

import math

import pytest
import torch

from lorastudy.analysis.linalg import (
    explained_variance,
    gaussian_experiment,
    intruder_dimensions,
    kl_divergence_from_logits,
    module_type,
    rank_for_variance,
    singular_values,
    spectrum_table,
)


def _orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q


def test_rank_by_hand() -> None:
    # σ² = 9, 1, 1, 1, 1, 1, 1 (total 15): shares 9/15=0.6, 10/15, 11/15, 12/15=0.8, 13/15, 14/15, 1.
    s = torch.tensor([3.0, 1, 1, 1, 1, 1, 1])
    assert rank_for_variance(s, 0.6) == 1
    assert rank_for_variance(s, 0.61) == 2
    assert rank_for_variance(s, 0.8) == 4
    assert rank_for_variance(s, 0.9) == 6  # 13/15 = 0.867 < 0.9 <= 14/15
    assert rank_for_variance(s, 1.0) == 7


def test_rank_unsorted_and_1d_matches_2d() -> None:
    s = torch.tensor([1.0, 1, 3, 1, 1, 1, 1])
    assert rank_for_variance(s) == 6
    m = torch.randn(20, 12, generator=torch.Generator().manual_seed(1))
    assert rank_for_variance(m) == rank_for_variance(singular_values(m))
    assert rank_for_variance(m) == rank_for_variance(singular_values(m).flip(0))


@pytest.mark.parametrize("n", [10, 37, 100])
def test_rank_of_identity(n: int) -> None:
    for dtype in (torch.float32, torch.float64):
        assert rank_for_variance(torch.eye(n, dtype=dtype)) == math.ceil(0.9 * n)
    assert rank_for_variance(torch.eye(n), 1.0) == n


def test_rank_of_low_rank_product() -> None:
    gen = torch.Generator().manual_seed(2)
    r = 5
    m = torch.randn(64, r, generator=gen) @ torch.randn(r, 48, generator=gen)
    assert 1 <= rank_for_variance(m) <= r
    assert rank_for_variance(m, 1.0) <= r + 1  # fp32 round-off tail beyond r is ~1e-14 of the energy


def test_rank_edge_cases() -> None:
    assert rank_for_variance(torch.zeros(5, 4)) == 0
    assert rank_for_variance(torch.eye(4, dtype=torch.bfloat16)) == 4
    for bad in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(ValueError):
            rank_for_variance(torch.eye(3), bad)


def test_explained_variance_monotone_ends_at_one() -> None:
    s = singular_values(torch.randn(30, 20, generator=torch.Generator().manual_seed(3)))
    ev = explained_variance(s)
    assert ev.shape == (20,)
    assert torch.all(ev[1:] >= ev[:-1])
    assert ev[-1].item() == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(explained_variance(torch.zeros(3)), torch.zeros(3, dtype=torch.float64))


def test_spectrum_table_rows() -> None:
    deltas = [(0, "q_proj", torch.eye(8)), (3, "model.layers.3.mlp.down_proj", torch.diag(torch.tensor([2.0, 0, 0, 0])))]
    rows = spectrum_table(deltas)
    assert [r["module_type"] for r in rows] == ["attention", "mlp"]
    assert rows[0]["shape"] == (8, 8) and rows[0]["rank90"] == 8 and rows[0]["rank90_fraction"] == 1.0
    assert rows[0]["frobenius"] == pytest.approx(math.sqrt(8))
    assert rows[1]["rank90"] == 1 and rows[1]["rank90_fraction"] == 0.25 and rows[1]["frobenius"] == pytest.approx(2.0)
    assert module_type("lm_head") == "other"


def test_gaussian_experiment_difference_grows_with_c() -> None:
    n = 100
    rows = gaussian_experiment(n=n, cs=(0.01, 0.1, 0.5, 1.0, 3.0), seed=0)
    diffs = [r["mean_abs_diff"] for r in rows]
    assert all(a < b for a, b in zip(diffs, diffs[1:]))
    assert diffs[0] < 0.05 * rows[0]["s_a"].mean().item()
    for r in rows:
        assert r["rank90_cb"] > 0.5 * n  # a Gaussian matrix is far from low rank
        assert r["s_a_plus_cb"].shape == (n,)
        assert torch.equal(r["s_a"], rows[0]["s_a"])
        assert torch.allclose(r["s_cb"] / r["c"], rows[0]["s_cb"] / rows[0]["c"])  # spectrum(cB) = c·spectrum(B)


def _intruder_case(c: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """W_base = U diag(s) Vᵀ (48×32, σ = 10…1 distinct). W_ft adds c·x v_nᵀ, where x is orthogonal to
    every left singular vector of W_base and v_n is its weakest right singular vector.

    Because W_baseᵀx = 0, W_ftᵀW_ft = V diag(s²) Vᵀ + c² v_n v_nᵀ: the singular pairs of W_base survive
    unchanged except the n-th, whose value becomes √(s_n² + c²) with left vector (s_n u_n + c x)/√(s_n² + c²).
    Its largest cosine with W_base's left vectors is s_n/√(s_n² + c²); every other one is exactly 1.
    """
    gen = torch.Generator().manual_seed(4)
    m, n = 48, 32
    q_m, v = _orthogonal(m, gen), _orthogonal(n, gen)
    s = torch.linspace(10, 1, n, dtype=torch.float64)
    w_base = q_m[:, :n] @ torch.diag(s) @ v.T
    x = q_m[:, n]
    w_ft = w_base + c * torch.outer(x, v[:, -1])
    return w_base, w_ft, s[-1].item() / math.hypot(s[-1].item(), c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_intruder_from_orthogonal_rank_one_update(dtype: torch.dtype) -> None:
    w_base, w_ft, expected_sim = _intruder_case(c=100.0)
    out = intruder_dimensions(w_base.to(dtype), w_ft.to(dtype), top_k=10, epsilon=0.5)
    assert out["count"] == 1
    assert out["is_intruder"].tolist() == [True] + [False] * 9  # σ = 100 is the new top direction
    assert out["max_similarity"][0].item() == pytest.approx(expected_sim, abs=1e-4)
    assert torch.allclose(out["max_similarity"][1:].double(), torch.ones(9, dtype=torch.float64), atol=1e-4)


def test_small_update_stays_out_of_top_k() -> None:
    w_base, w_ft, _ = _intruder_case(c=2.0)  # new σ = √5 ≈ 2.2, far below the top 10 (10 … 7.1)
    assert intruder_dimensions(w_base, w_ft, top_k=10)["count"] == 0


def test_no_intruders_when_scaled() -> None:
    w_base, _, _ = _intruder_case(c=0.0)
    out = intruder_dimensions(w_base, 3.0 * w_base, top_k=10)
    assert out["count"] == 0
    assert torch.allclose(out["max_similarity"], torch.ones(10, dtype=torch.float64))


def test_intruder_validation() -> None:
    with pytest.raises(ValueError):
        intruder_dimensions(torch.eye(4), torch.eye(5))
    with pytest.raises(ValueError):
        intruder_dimensions(torch.eye(4), torch.eye(4), top_k=5)


def test_kl_identical_is_zero() -> None:
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    assert kl_divergence_from_logits(logits, logits) == pytest.approx(0.0, abs=1e-6)


def test_kl_two_classes_by_hand() -> None:
    # p = (1/2, 1/2), q = (3/4, 1/4): KL = ½ln(2/3) + ½ln 2 = ½ln(4/3).
    base = torch.tensor([[0.0, 0.0]])
    ft = torch.tensor([[math.log(3.0), 0.0]])
    assert kl_divergence_from_logits(base, ft) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # The masked-out token (a large divergence) must not count.
    base2 = torch.stack([base[0], torch.tensor([10.0, -10.0])]).unsqueeze(0)
    ft2 = torch.stack([ft[0], torch.tensor([-10.0, 10.0])]).unsqueeze(0)
    mask = torch.tensor([[1, 0]])
    assert kl_divergence_from_logits(base2, ft2, mask) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    assert kl_divergence_from_logits(base2, ft2) > 5
    with pytest.raises(ValueError):
        kl_divergence_from_logits(base2, ft2, torch.zeros(1, 2))
