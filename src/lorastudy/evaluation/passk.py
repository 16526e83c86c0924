"""The unbiased pass@k estimator (Chen et al., 2021) and a count of distinct completions.

pass@k = 1 - C(n-c, k) / C(n, k) is computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the
huge binomials (Chen et al.'s numerically stable form).
"""
from __future__ import annotations

from collections.abc import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) passes."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems given (n, c) per problem."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("no problems to average over")
    return sum(values) / len(values)


def normalize_whitespace(text: str) -> str:
    """Collapse every whitespace run to one space and strip the ends."""
    return " ".join(text.split())


def unique_count(completions: Iterable[str]) -> int:
    """Number of distinct completions once whitespace differences are ignored."""
    return len({normalize_whitespace(c) for c in completions})
