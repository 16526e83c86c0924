"""Intervals over bases and items (paired by both), the bootstrap for unpaired rows, and the three-way verdict:
ties never agree."""
from __future__ import annotations

import numpy as np
import pytest

from lorastudy.analysis.intervals import (
    AGREES,
    CANNOT_TELL,
    DISAGREES,
    Interval,
    bootstrap_difference,
    difference,
    t_interval,
    verdict,
)


def bernoulli(rng: np.random.Generator, p: np.ndarray, rows: int) -> np.ndarray:
    return (rng.random((rows, p.size)) < p).astype(float)


def test_a_tie_is_never_a_direction() -> None:
    x = np.array([[1.0, 0.0, 1.0, 1.0, 0.0] * 20] * 3)
    iv = difference([x], [x.copy()])
    assert iv.estimate == 0 and iv.low == 0 and iv.high == 0
    assert verdict(iv, +1) == verdict(iv, -1) == CANNOT_TELL


def test_a_bound_within_rounding_of_zero_is_zero() -> None:
    """An upper bound of -1.1e-16 (printed -0.0000) is a tie decided by rounding, not a direction."""
    iv = Interval(estimate=-0.01, low=-0.02, high=-1.1e-16, n_bases=3, n_items=100)
    assert iv.sign() == 0 and verdict(iv, +1) == CANNOT_TELL
    assert Interval(-0.01, -0.02, -1e-6, 3, 100).sign() == -1


def test_a_clear_difference_agrees_or_disagrees() -> None:
    rng = np.random.default_rng(0)
    a, b = bernoulli(rng, np.full(300, 0.8), 3), bernoulli(rng, np.full(300, 0.4), 3)
    iv = difference([a], [b])
    assert 0.3 < iv.estimate < 0.5 and iv.low > 0.2 and iv.high < 0.6
    assert iv.n_bases == 3 and iv.n_items == 300 and len(iv.per_base) == 3
    assert iv.estimate == pytest.approx(np.mean(iv.per_base))
    assert verdict(iv, +1) == AGREES and verdict(iv, -1) == DISAGREES


def test_items_are_paired_between_arms() -> None:
    """Items of very different difficulty, the same small gain on each: paired, the interval is narrow;
    if the arms' items were drawn independently it would span the difficulty spread and include zero."""
    rng = np.random.default_rng(1)
    difficulty = rng.random(200)
    a, b = (difficulty + 0.02)[None, :], difficulty[None, :]
    iv = difference([a], [b])
    assert iv.low > 0.019 and iv.high < 0.021


def test_bases_that_disagree_widen_the_interval() -> None:
    """The same mean gain, steady on every base or varying by base: the second interval is far wider, since a
    claim about another base must allow for that spread."""
    rng = np.random.default_rng(2)
    base = np.repeat(rng.random((1, 100)), 4, axis=0)
    steady = base + 0.05
    varying = base + 0.05 + np.array([[-0.2], [0.2], [-0.1], [0.1]])
    narrow, wide = difference([steady], [base]), difference([varying], [base])
    assert narrow.estimate == pytest.approx(wide.estimate)
    assert (wide.high - wide.low) > 5 * (narrow.high - narrow.low)
    assert wide.low < 0 < wide.high and narrow.low > 0


def test_few_bases_use_students_t_not_the_normal() -> None:
    """Three per-base estimates and no item noise: the half-width is t(2) * s / sqrt(3), 4.30 standard errors."""
    est, low, high = t_interval(np.array([0.1, 0.2, 0.3]), 0.0, 100)
    se = np.std([0.1, 0.2, 0.3], ddof=1) / np.sqrt(3)
    assert est == pytest.approx(0.2) and (high - est) / se == pytest.approx(4.303, abs=1e-3)


def test_arms_are_paired_by_base() -> None:
    with pytest.raises(ValueError, match="same bases"):
        difference([np.ones((3, 5))], [np.ones((2, 5))])


def _simulated_claim(rng: np.random.Generator, n_bases: int, n_items: int, base_sd: float, truth: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Two arms' per-item scores on `n_bases` bases drawn from a population: an item effect shared by both arms
    and every base, a base effect on the difference (what another base would change), base-by-item noise."""
    item = rng.normal(0, 1, n_items)
    shift = truth + rng.normal(0, 0.1, n_items)  # the true difference varies by item: item sampling matters
    base_effect = rng.normal(0, base_sd, (n_bases, 1))
    b = item + rng.normal(0, 0.5, (n_bases, n_items))
    a = item + shift + base_effect + rng.normal(0, 0.5, (n_bases, n_items))
    return a, b


@pytest.mark.parametrize("n_bases, base_sd", [(3, 0.2), (3, 0.0), (5, 0.1), (1, 0.0)])
def test_the_interval_covers_the_population_difference(n_bases: int, base_sd: float) -> None:
    """Coverage on simulated data with a known difference and a known base effect: at least the nominal 95%
    (600 claims; a binomial 95% band around 0.95 reaches down to ~0.93)."""
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(600):
        a, b = _simulated_claim(rng, n_bases, 80, base_sd, truth=0.1)
        iv = difference([a], [b])
        hits += iv.low <= 0.1 <= iv.high
    assert hits / 600 >= 0.93


def test_a_percentile_bootstrap_over_three_bases_would_undercover() -> None:
    """Why not a bootstrap over bases: with 3 bases and a base effect that dominates, resampling them covers
    the truth far less than 95% of the time (the reason `difference` uses t)."""
    rng = np.random.default_rng(12)
    boot_hits = t_hits = 0
    for k in range(200):
        a, b = _simulated_claim(rng, 3, 80, 0.3, truth=0.1)
        boot = bootstrap_difference([a], [b], n_boot=400, seed=k)  # rows resampled on their own: bases
        boot_hits += boot.low <= 0.1 <= boot.high
        iv = difference([a], [b])
        t_hits += iv.low <= 0.1 <= iv.high
    assert boot_hits / 200 < 0.85 and t_hits / 200 >= 0.93


def test_the_unpaired_bootstrap_widens_with_row_spread() -> None:
    rng = np.random.default_rng(2)
    base = rng.random((1, 100))
    steady = np.repeat(base + 0.05, 4, axis=0)
    noisy = base + 0.05 + np.array([[-0.2], [0.2], [-0.1], [0.1]])
    narrow, wide = bootstrap_difference([steady], [base]), bootstrap_difference([noisy], [base])
    assert narrow.estimate == pytest.approx(wide.estimate)
    assert (wide.high - wide.low) > 5 * (narrow.high - narrow.low)


def test_a_composite_is_the_mean_of_its_sets() -> None:
    a = [np.ones((2, 10)), np.zeros((2, 30))]  # set means 1 and 0: composite 0.5 whatever the set sizes
    b = [np.full((2, 10), 0.5), np.full((2, 30), 0.5)]
    iv = difference(a, b)
    assert iv.estimate == pytest.approx(0.0) and iv.n_items == 40


def test_mismatched_arms_are_refused() -> None:
    with pytest.raises(ValueError, match="same items"):
        difference([np.ones((1, 5))], [np.ones((1, 6))])
    with pytest.raises(ValueError, match="same sets"):
        difference([np.ones((1, 5))], [np.ones((1, 5)), np.ones((1, 5))])
    with pytest.raises(ValueError, match="direction"):
        verdict(Interval(0.1, 0.05, 0.2, 1, 5), 0)


# ----------------------------------------------------------------------------- forgetting at matched learning
def _arm_items(run: str, points: list[tuple[float, float, float]], n: int = 200) -> list[dict]:
    """Per-item rows of one run: at each (duration, learning, forgetting) a share of items right."""
    rows = []
    for duration, learn, keep in points:
        ckpt = f"d{duration:g}"
        for metric, share in [("learning_code", learn), ("a_acc", keep), ("b_acc", keep)]:
            rows += [{"run_id": run, "checkpoint": ckpt, "duration": duration, "base_id": "b0", "metric": metric,
                      "item": f"{metric}{i}", "value": float(i < round(share * n))} for i in range(n)]
    return rows


def _matched(lora_points: list[tuple[float, float, float]]):
    import pandas as pd

    from lorastudy.analysis.matched import matched_forgetting
    rows = (_arm_items("base", [(0, 0.0, 1.0)]) + _arm_items("full", [(1, 0.4, 0.8), (2, 0.8, 0.6)])
            + _arm_items("lora", lora_points))
    items = pd.DataFrame(rows)
    cells = {r: items[items.run_id == r][["run_id", "checkpoint", "duration", "base_id"]].drop_duplicates()
             for r in ("base", "full", "lora")}
    return matched_forgetting(items.drop(columns=["duration", "base_id"]), cells["full"], cells["lora"], cells["base"],
                              "learning_code", ["a_acc", "b_acc"], n_boot=300)


def test_matched_learning_separates_forgets_less_from_learns_less() -> None:
    # LoRA on full FT's own trade-off line (forgetting = 1 - learning / 2), only shorter: it "forgets less" at
    # equal duration, yet at the same learning (0.4) both keep 0.8 - no direction
    iv, level = _matched([(1, 0.2, 0.9), (2, 0.4, 0.8)])
    assert level == pytest.approx(0.4)
    assert iv.estimate == pytest.approx(0.0, abs=1e-9) and verdict(iv, +1) == CANNOT_TELL
    # LoRA above the line: at learning 0.4 it keeps 0.95 against full FT's 0.8
    iv, _ = _matched([(1, 0.2, 0.95), (2, 0.4, 0.95)])
    assert iv.estimate == pytest.approx(0.15, abs=1e-9) and verdict(iv, +1) == AGREES
    # nothing learned by LoRA: no level above the base to match on
    iv, _ = _matched([(1, 0.0, 1.0), (2, 0.0, 1.0)])
    assert iv is None


def test_the_draws_are_those_of_a_loop_over_resamples() -> None:
    from lorastudy.analysis.intervals import resample_draws
    sizes = [150, 7, 1, 3]
    loop_rng, rng = np.random.default_rng(3), np.random.default_rng(3)
    loop = [[loop_rng.integers(0, n, n) for n in sizes] for _ in range(40)]
    draws = resample_draws(rng, 40, sizes)
    assert [d.shape for d in draws] == [(40, n) for n in sizes]
    for k in range(len(sizes)):
        assert np.array_equal(draws[k], np.stack([row[k] for row in loop]))
    assert rng.integers(0, 1 << 30) == loop_rng.integers(0, 1 << 30)  # the stream goes on from the same place


@pytest.mark.parametrize("shape", [(1, 40), (3, 17), (1, 4, 25), (3, 2, 9)])
def test_a_resampled_mean_adds_what_the_expression_per_resample_adds(shape, monkeypatch) -> None:
    from lorastudy.analysis import intervals
    rng = np.random.default_rng(1)
    values = rng.normal(size=shape) * 1e3
    seeds, items = rng.integers(0, shape[0], (30, shape[0])), rng.integers(0, shape[-1], (30, shape[-1]))
    per_resample = [values[seeds[b]][..., items[b]].mean(axis=(0, -1) if values.ndim == 3 else None)
                    for b in range(30)]
    monkeypatch.setattr(intervals, "CHUNK_ELEMENTS", 7 * seeds.shape[1] * items.shape[1])  # several chunks
    got = intervals.resampled_mean(values, seeds, items)
    assert np.array_equal(got, np.array(per_resample))  # equal, not close: the same sums in the same order
