"""pass@k's edges beside tests/test_code_eval.py's enumeration: what is rejected and why, averaging, and the
whitespace rule behind the count of distinct completions."""
from __future__ import annotations

import pytest

from lorastudy.evaluation.passk import mean_pass_at_k, normalize_whitespace, pass_at_k, unique_count


def test_invalid_counts_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"need 0 <= c <= n, got n=3, c=4"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match=r"need 1 <= k <= n, got n=3, k=0"):
        pass_at_k(3, 1, 0)
    with pytest.raises(ValueError, match="no problems to average over"):
        mean_pass_at_k([], 1)


def test_every_sample_correct_or_too_few_wrong_ones_is_certain() -> None:
    assert pass_at_k(4, 4, 1) == pass_at_k(4, 3, 2) == pass_at_k(10, 1, 10) == 1.0
    assert pass_at_k(4, 0, 4) == 0.0
    assert mean_pass_at_k([(4, 4), (4, 0), (2, 1)], 1) == pytest.approx((1 + 0 + 0.5) / 3)


def test_whitespace_is_collapsed_and_stripped() -> None:
    assert normalize_whitespace("  a \t b\n\n c ") == "a b c"
    assert unique_count(["x = 1", "x  =  1\n", "x = 2"]) == 2
