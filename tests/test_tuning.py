"""Learning rates chosen on validation: candidates with the first seed, the winner's other seeds, never the test."""
from __future__ import annotations

import pandas as pd
import pytest

from lorastudy.config import ConfigError, load_profile
from lorastudy.plan import plan_runs
from lorastudy.tuning import candidates, chosen_rates, keep_chosen, runs_expected, runs_to_train, selection_metric

PROFILE = load_profile("tiny")
SELECTING = [s for s in plan_runs(PROFILE) if s.arm == "lora" and s.regime == "ift"]


def results(scores: dict[tuple[float, int], dict[float, float]], test_metric: float = 0.5) -> pd.DataFrame:
    """Rows like the results table: per (rate, seed) run, per duration, its validation score and a test metric."""
    rows = []
    for spec in SELECTING:
        for duration, score in scores.get((spec.learning_rate, spec.seed), {}).items():
            common = {**spec.to_dict(), "duration": duration, "checkpoint": f"epochs-{duration:g}", "status": "completed"}
            rows.append({**common, "metric": selection_metric(spec.domain), "value": score})
            rows.append({**common, "metric": "learning_code", "value": test_metric})
    return pd.DataFrame(rows)


def trained_ids(df: pd.DataFrame | None) -> set[str]:
    return {s.run_id for s in runs_to_train(PROFILE, df) if s in SELECTING}


def test_only_first_seeds_train_before_the_choice() -> None:
    assert {(s.learning_rate, s.seed) for s in SELECTING} == {(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)}
    assert {s.seed for s in runs_to_train(PROFILE, None) if s in SELECTING} == {0}


def test_the_lowest_validation_nll_at_the_longest_duration_wins() -> None:
    # at the shorter duration 1e-3 looks better; the longest duration decides for 3e-3
    df = results({(1e-3, 0): {0.5: 1.0, 1.0: 1.3}, (3e-3, 0): {0.5: 1.5, 1.0: 1.1}})
    assert list(chosen_rates(PROFILE, df).values()) == [3e-3]
    seeds = {(s.learning_rate, s.seed) for s in runs_to_train(PROFILE, df) if s in SELECTING}
    assert seeds == {(1e-3, 0), (3e-3, 0), (3e-3, 1)}


def test_a_tie_goes_to_the_smaller_rate_and_an_open_group_waits() -> None:
    assert list(chosen_rates(PROFILE, results({(1e-3, 0): {1.0: 1.2}, (3e-3, 0): {1.0: 1.2}})).values()) == [1e-3]
    waiting = results({(3e-3, 0): {1.0: 0.1}})  # the other candidate has not finished
    assert chosen_rates(PROFILE, waiting) == {}
    assert {s.seed for s in runs_to_train(PROFILE, waiting) if s in SELECTING} == {0}
    table = candidates(PROFILE, waiting)
    assert table.score.isna().sum() == 1 and not table.chosen.any()


def test_the_test_metric_plays_no_part() -> None:
    good = results({(1e-3, 0): {1.0: 1.3}, (3e-3, 0): {1.0: 1.1}}, test_metric=0.0)
    bad = results({(1e-3, 0): {1.0: 1.3}, (3e-3, 0): {1.0: 1.1}}, test_metric=1.0)
    assert chosen_rates(PROFILE, good) == chosen_rates(PROFILE, bad)


def test_comparisons_keep_only_the_chosen_rate() -> None:
    df = results({(1e-3, 0): {1.0: 1.3}, (3e-3, 0): {1.0: 1.1}, (3e-3, 1): {1.0: 1.0}})
    other = df.iloc[:2].assign(arm="lr", run_id="elsewhere")  # another arm's runs are never filtered
    kept = keep_chosen(PROFILE, pd.concat([df, other], ignore_index=True))
    assert set(kept[kept.arm == "lora"].learning_rate) == {3e-3}
    assert set(kept[kept.arm == "lora"].seed) == {0, 1}
    assert (kept.arm == "lr").sum() == 2


def test_selection_needs_validation_data_and_candidates() -> None:
    with pytest.raises(ConfigError, match="validation"):
        load_profile("tiny", {"eval.validation": {}})
    arm = {"name": "x", "domain": "code", "regime": "ift", "method": "full", "learning_rate": 1e-3,
           "select_learning_rate": True}
    with pytest.raises(ConfigError, match="two learning rates"):
        load_profile("tiny", {"sweep": [arm]})
    with pytest.raises(ConfigError, match="name"):
        load_profile("tiny", {"sweep": [{**arm, "name": "", "learning_rate": [1e-3, 3e-3]}]})


def test_estimates_count_one_rate_per_group() -> None:
    expected = [s for s in runs_expected(PROFILE) if s in SELECTING]
    assert len(expected) == 3 and sorted(s.seed for s in expected) == [0, 0, 1]  # two candidates, one more seed


def test_the_other_rate_and_the_main_grid_follow_the_choice() -> None:
    from lorastudy.analysis.learning_forgetting import chosen_rates_table, main_grid, other_rate_runs

    df = results({(1e-3, 0): {1.0: 1.3}, (3e-3, 0): {1.0: 1.1}, (3e-3, 1): {1.0: 1.0}})
    assert set(other_rate_runs(PROFILE, df).run_id) == {s.run_id for s in SELECTING if s.learning_rate == 1e-3 and s.seed == 0}
    assert set(main_grid(PROFILE, df).learning_rate) == {3e-3}  # the figures draw the chosen rate's seeds only
    table = chosen_rates_table(PROFILE, df)
    assert table[table.chosen].learning_rate.tolist() == [3e-3] and len(table) == 2
    # undecided: no other rate, no main-grid run of the group
    waiting = results({(3e-3, 0): {1.0: 0.1}})
    assert other_rate_runs(PROFILE, waiting).empty and main_grid(PROFILE, waiting).empty
