"""95% intervals for differences between arms, by a bootstrap over items and seeds, and the three-way verdict.

An arm is one condition (method, rank, rate, duration) over its seeds; its score on a metric is the mean over
seeds and items, and a composite such as forgetting_avg is the mean of its sets' scores. A resample draws the
items of each set with replacement - the same draw for both arms, since they answer the same items (paired) -
and each arm's seeds with replacement, independently (different runs). Written here: scipy.stats.bootstrap
resamples one axis of independent samples, not paired items crossed with unpaired seeds.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

AGREES, DISAGREES, CANNOT_TELL = "agrees", "disagrees", "cannot tell"
VERDICTS = (AGREES, DISAGREES, CANNOT_TELL)

CHUNK_ELEMENTS = 1 << 22  # values gathered at once by resampled_mean (32 MiB of float64)

# One arm's values on one set of items: rows are seeds, columns the set's items (in a shared item order).
Arm = Sequence[np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A difference (arm a minus arm b) with its bootstrap interval."""

    estimate: float
    low: float
    high: float
    n_seeds: tuple[int, int]
    n_items: int

    def sign(self) -> int:
        """+1 or -1 when the interval excludes zero, 0 when it does not (a tie is never a direction)."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


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


def difference(a: Arm, b: Arm, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """score(a) - score(b) with a percentile interval: items resampled paired, seeds per arm."""
    _check(a, b)
    rng = np.random.default_rng(seed)
    seeds_a, seeds_b = a[0].shape[0], b[0].shape[0]
    *draws, s_a, s_b = resample_draws(rng, n_boot, [x.shape[1] for x in a] + [seeds_a, seeds_b])
    diffs = _scores(a, draws, s_a) - _scores(b, draws, s_b)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return Interval(estimate=_score(a) - _score(b), low=float(low), high=float(high),
                    n_seeds=(seeds_a, seeds_b), n_items=sum(x.shape[1] for x in a))


def verdict(interval: Interval, expected_sign: int) -> str:
    """`agrees` when the interval excludes zero on the paper's side, `disagrees` on the other, else
    `cannot tell`."""
    if expected_sign not in (1, -1):
        raise ValueError(f"the paper's direction must be +1 or -1, got {expected_sign}")
    observed = interval.sign()
    return CANNOT_TELL if observed == 0 else AGREES if observed == expected_sign else DISAGREES
