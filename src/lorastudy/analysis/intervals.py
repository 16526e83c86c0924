"""95% intervals for differences between arms, and the three-way verdict.

The study's claims generalise over base models, so a claim's interval covers base-to-base variation
(`difference`). Each arm is one condition (method, rank, rate, duration) fine-tuned from B bases; two arms are
paired by base (the same base's runs) and by item (they answer the same items). The estimate is the mean over
bases of the per-base difference. Its variance has two parts, each estimated from the data: between bases,
the sample variance of the B per-base differences over B (it holds each base's own item noise too), and the
items', the variance over items of the base-averaged per-item difference over n (per set; a composite such
as forgetting_avg averages its sets). Their sum counts the base-by-item interaction twice, so the interval
errs wide, never narrow. Each part is scaled by its own quantile and the two added in quadrature: the bases'
by Student's t on B - 1 degrees of freedom (4.3 with 3 bases, where a percentile bootstrap over 3 bases would
understate the spread), the items' by t on n - 1 (about 1.96). One t for the sum on Satterthwaite's degrees of
freedom, estimated from the same 3 bases, covered 93% where 95% was asked; one t on B - 1 for the sum covers
100% when the bases agree, an interval twice as wide as the items allow. `tests/test_intervals.py` measures the coverage on simulated data with a known base
effect. With one base (the extra arms) only the items' part remains, and a claim says n_bases = 1.

`bootstrap_difference` keeps the percentile bootstrap for arms whose rows are not paired (chapter 12's
LoRA ranks against full FT): items resampled paired, each arm's rows resampled on their own. Written here:
scipy.stats.bootstrap resamples one axis of independent samples, not paired items crossed with unpaired rows.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

AGREES, DISAGREES, CANNOT_TELL = "agrees", "disagrees", "cannot tell"
VERDICTS = (AGREES, DISAGREES, CANNOT_TELL)

CHUNK_ELEMENTS = 1 << 22  # values gathered at once by resampled_mean (32 MiB of float64)
ROUNDING = 1e-12  # a bound this close to 0 is 0: a sum of float64 scores rounds at ~1e-16, never near this

# One arm's values on one set of items: rows are bases (or seeds, or models), columns the set's items (in a
# shared item order).
Arm = Sequence[np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A difference (arm a minus arm b) with its interval; `per_base` the difference on each base alone."""

    estimate: float
    low: float
    high: float
    n_bases: int
    n_items: int
    per_base: tuple[float, ...] = field(default=())

    def sign(self) -> int:
        """+1 or -1 when the interval excludes zero, 0 when it does not (a tie is never a direction, nor is a
        bound within float rounding of 0)."""
        return 1 if self.low > ROUNDING else -1 if self.high < -ROUNDING else 0


def t_interval(per_base: np.ndarray, item_var: float, n_items: int, level: float = 0.95
               ) -> tuple[float, float, float]:
    """(estimate, low, high): the mean of the per-base estimates, +- each part of its variance at its own
    quantile, added in quadrature: the bases' part (their sample variance over B) at Student's t on B - 1
    degrees of freedom, the items' part (`item_var`) at t on n_items - 1 (about the normal's)."""
    per_base = np.asarray(per_base, dtype=float)
    b = len(per_base)
    est = float(per_base.mean())
    v_base = float(per_base.var(ddof=1)) / b if b > 1 else 0.0
    q = 0.5 + level / 2
    t_base = float(stats.t.ppf(q, b - 1)) if b > 1 else 0.0
    half = math.sqrt(t_base ** 2 * v_base + float(stats.t.ppf(q, max(n_items - 1, 1))) ** 2 * item_var)
    return est, est - half, est + half


def difference(a: Arm, b: Arm, *, level: float = 0.95) -> Interval:
    """score(a) - score(b) over bases and items, paired by base (row) and item (column): `t_interval` of the
    per-base differences with the items' variance of the base-averaged per-item differences."""
    _check(a, b)
    if a[0].shape[0] != b[0].shape[0]:
        raise ValueError(f"arms paired by base need the same bases, got {a[0].shape[0]} and {b[0].shape[0]} rows")
    per_base = sum(x.mean(axis=1) - y.mean(axis=1) for x, y in zip(a, b)) / len(a)
    item_var = sum(float((x - y).mean(axis=0).var(ddof=1)) / x.shape[1] if x.shape[1] > 1 else 0.0
                   for x, y in zip(a, b)) / len(a) ** 2
    n_items = sum(x.shape[1] for x in a)
    est, low, high = t_interval(per_base, item_var, n_items, level)
    return Interval(estimate=est, low=low, high=high, n_bases=len(per_base), n_items=n_items,
                    per_base=tuple(float(v) for v in per_base))


def _score(arm: Arm) -> float:
    """The arm's score on the data as they are: the mean over its sets of each set's mean."""
    return sum(float(values.mean()) for values in arm) / len(arm)


def resample_draws(rng: np.random.Generator, n_boot: int, sizes: Sequence[int]) -> list[np.ndarray]:
    """One (n_boot, n) array of indices in [0, n) per size n, with replacement: the indices a loop over the
    resamples draws with one `rng.integers(0, n, n)` per size (a test checks it), in a single call."""
    sizes = [int(n) for n in sizes]
    flat = rng.integers(0, np.tile(np.repeat(sizes, sizes), n_boot)).reshape(n_boot, sum(sizes))
    return np.split(flat, np.cumsum(sizes)[:-1], axis=1)


def resampled_mean(values: np.ndarray, seeds: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Per resample (a row of `seeds` and of `items`), the mean over seeds and items of values (seeds, items) or
    (seeds, durations, items): (n_boot,) or (n_boot, durations).

    Laid out (resample, item, seed[, duration]) as numpy lays out `values[seeds][..., items]`, so that each mean
    adds the same numbers in the same order as that expression's `.mean()`: the same intervals, bit for bit, as a
    loop over resamples, without its Python overhead."""
    if values.ndim not in (2, 3):
        raise ValueError(f"values must be (seeds, items) or (seeds, durations, items), not shape {values.shape}")
    per_resample = seeds.shape[1] * items.shape[1] * (values.shape[1] if values.ndim == 3 else 1)
    step = max(1, CHUNK_ELEMENTS // max(per_resample, 1))  # resamples at a time: memory stays bounded
    parts = []
    for lo in range(0, len(seeds), step):
        s, i = seeds[lo:lo + step], items[lo:lo + step]
        if values.ndim == 2:
            parts.append(values[s[:, None, :], i[:, :, None]].reshape(len(s), -1).mean(axis=1))
        else:
            durations = np.arange(values.shape[1])[None, None, None, :]
            parts.append(values[s[:, None, :, None], durations, i[:, :, None, None]].mean(axis=(1, 2)))
    return np.concatenate(parts)


def _scores(arm: Arm, item_draws: Sequence[np.ndarray], seed_draw: np.ndarray) -> np.ndarray:
    """The arm's score on every resample, (n_boot,): the mean over its sets, each summed as `_score` sums."""
    total = np.zeros(len(seed_draw))
    for values, draw in zip(arm, item_draws):
        total = total + resampled_mean(values, seed_draw, draw)
    return total / len(arm)


def _check(a: Arm, b: Arm) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"both arms need the same sets of items, got {len(a)} and {len(b)}")
    for k, (x, y) in enumerate(zip(a, b)):
        if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or x.shape[1] == 0 or 0 in (x.shape[0], y.shape[0]):
            raise ValueError(f"set {k}: arms must be (seeds, items) arrays over the same items, "
                             f"got shapes {x.shape} and {y.shape}")
    if len({x.shape[0] for x in a}) != 1 or len({y.shape[0] for y in b}) != 1:
        raise ValueError("every set of an arm must hold the same seeds")


def bootstrap_difference(a: Arm, b: Arm, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """score(a) - score(b) with a percentile interval: items resampled paired, each arm's rows on their own
    (rows that are not paired: n_bases is the fewer rows)."""
    _check(a, b)
    rng = np.random.default_rng(seed)
    rows_a, rows_b = a[0].shape[0], b[0].shape[0]
    *draws, s_a, s_b = resample_draws(rng, n_boot, [x.shape[1] for x in a] + [rows_a, rows_b])
    diffs = _scores(a, draws, s_a) - _scores(b, draws, s_b)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return Interval(estimate=_score(a) - _score(b), low=float(low), high=float(high),
                    n_bases=min(rows_a, rows_b), n_items=sum(x.shape[1] for x in a))


def verdict(interval: Interval, expected_sign: int) -> str:
    """`agrees` when the interval excludes zero on the paper's side, `disagrees` on the other, else
    `cannot tell`."""
    if expected_sign not in (1, -1):
        raise ValueError(f"the paper's direction must be +1 or -1, got {expected_sign}")
    observed = interval.sign()
    return CANNOT_TELL if observed == 0 else AGREES if observed == expected_sign else DISAGREES
