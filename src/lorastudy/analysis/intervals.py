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


def _score(arm: Arm, item_draws: Sequence[np.ndarray] | None, seed_draw: np.ndarray | None) -> float:
    sets = []
    for k, values in enumerate(arm):
        v = values if seed_draw is None else values[seed_draw]
        sets.append(float(v.mean() if item_draws is None else v[:, item_draws[k]].mean()))
    return sum(sets) / len(sets)


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
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        draws = [rng.integers(0, x.shape[1], x.shape[1]) for x in a]
        diffs[i] = (_score(a, draws, rng.integers(0, seeds_a, seeds_a))
                    - _score(b, draws, rng.integers(0, seeds_b, seeds_b)))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return Interval(estimate=_score(a, None, None) - _score(b, None, None), low=float(low), high=float(high),
                    n_seeds=(seeds_a, seeds_b), n_items=sum(x.shape[1] for x in a))


def verdict(interval: Interval, expected_sign: int) -> str:
    """`agrees` when the interval excludes zero on the paper's side, `disagrees` on the other, else
    `cannot tell`."""
    if expected_sign not in (1, -1):
        raise ValueError(f"the paper's direction must be +1 or -1, got {expected_sign}")
    observed = interval.sign()
    return CANNOT_TELL if observed == 0 else AGREES if observed == expected_sign else DISAGREES
