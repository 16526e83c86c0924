"""The bootstrap over items (paired) and seeds, and the three-way verdict: ties never agree."""
from __future__ import annotations

import numpy as np
import pytest

from lorastudy.analysis.intervals import AGREES, CANNOT_TELL, DISAGREES, Interval, difference, verdict


def bernoulli(rng: np.random.Generator, p: np.ndarray, seeds: int) -> np.ndarray:
    return (rng.random((seeds, p.size)) < p).astype(float)


def test_a_tie_is_never_a_direction() -> None:
    x = np.array([[1.0, 0.0, 1.0, 1.0, 0.0] * 20])
    iv = difference([x], [x.copy()])
    assert iv.estimate == 0 and iv.low == 0 and iv.high == 0
    assert verdict(iv, +1) == verdict(iv, -1) == CANNOT_TELL


def test_a_clear_difference_agrees_or_disagrees() -> None:
    rng = np.random.default_rng(0)
    a, b = bernoulli(rng, np.full(300, 0.8), 3), bernoulli(rng, np.full(300, 0.4), 3)
    iv = difference([a], [b])
    assert 0.3 < iv.estimate < 0.5 and iv.low > 0.25 and iv.high < 0.55
    assert iv.n_seeds == (3, 3) and iv.n_items == 300
    assert verdict(iv, +1) == AGREES and verdict(iv, -1) == DISAGREES


def test_items_are_paired_between_arms() -> None:
    """Items of very different difficulty, the same small gain on each: paired, the interval is narrow;
    if the arms' items were drawn independently it would span the difficulty spread and include zero."""
    rng = np.random.default_rng(1)
    difficulty = rng.random(200)
    a, b = (difficulty + 0.02)[None, :], difficulty[None, :]
    iv = difference([a], [b])
    assert iv.low > 0.019 and iv.high < 0.021


def test_seed_spread_widens_the_interval() -> None:
    rng = np.random.default_rng(2)
    base = rng.random((1, 100))
    steady = np.repeat(base + 0.05, 4, axis=0)
    noisy = base + 0.05 + np.array([[-0.2], [0.2], [-0.1], [0.1]])
    narrow, wide = difference([steady], [base]), difference([noisy], [base])
    assert narrow.estimate == pytest.approx(wide.estimate)
    assert (wide.high - wide.low) > 5 * (narrow.high - narrow.low)


def test_a_composite_is_the_mean_of_its_sets() -> None:
    a = [np.ones((2, 10)), np.zeros((2, 30))]  # set means 1 and 0: composite 0.5 whatever the set sizes
    b = [np.full((1, 10), 0.5), np.full((1, 30), 0.5)]
    iv = difference(a, b)
    assert iv.estimate == pytest.approx(0.0) and iv.n_items == 40


def test_mismatched_arms_are_refused() -> None:
    with pytest.raises(ValueError, match="same items"):
        difference([np.ones((1, 5))], [np.ones((1, 6))])
    with pytest.raises(ValueError, match="same sets"):
        difference([np.ones((1, 5))], [np.ones((1, 5)), np.ones((1, 5))])
    with pytest.raises(ValueError, match="direction"):
        verdict(Interval(0.1, 0.05, 0.2, (1, 1), 5), 0)


# ----------------------------------------------------------------------------- forgetting at matched learning
def _arm_items(run: str, points: list[tuple[float, float, float]], n: int = 200) -> list[dict]:
    """Per-item rows of one run: at each (duration, learning, forgetting) a share of items right."""
    rows = []
    for duration, learn, keep in points:
        ckpt = f"d{duration:g}"
        for metric, share in [("learning_code", learn), ("a_acc", keep), ("b_acc", keep)]:
            rows += [{"run_id": run, "checkpoint": ckpt, "duration": duration, "metric": metric, "item": f"{metric}{i}",
                      "value": float(i < round(share * n))} for i in range(n)]
    return rows


def _matched(lora_points: list[tuple[float, float, float]]):
    import pandas as pd

    from lorastudy.analysis.learning_forgetting import matched_forgetting
    rows = (_arm_items("base", [(0, 0.0, 1.0)]) + _arm_items("full", [(1, 0.4, 0.8), (2, 0.8, 0.6)])
            + _arm_items("lora", lora_points))
    items = pd.DataFrame(rows)
    cells = {r: items[items.run_id == r][["run_id", "checkpoint", "duration"]].drop_duplicates() for r in ("base", "full", "lora")}
    return matched_forgetting(items.drop(columns="duration"), cells["full"], cells["lora"], cells["base"],
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
