"""Learning rates chosen on validation: candidates with the first seed, an edge rate when the best is at an edge,
a tie within the validation noise to the lower rate, the winner's other seeds, never the test items."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lorastudy.config import ConfigError, load_profile
from lorastudy.plan import beyond, plan_runs, selection_runs
from lorastudy.tuning import candidates, chosen_rates, keep_chosen, runs_expected, runs_to_train, selection_metric

PROFILE = load_profile("tiny")
SELECTING = [s for s in selection_runs(PROFILE) if s.regime == "ift"]  # code IFT LoRA r=8, listed 1e-3 and 3e-3
PLANNED = {s.run_id: s for s in plan_runs(PROFILE)}
N_ITEMS = 40


def results(scores: dict[tuple[float, int], float], test_metric: float = 0.5, noise: float = 0.0,
            diverged: tuple[tuple[float, int], ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows like the results table and the per-item table: per (rate, seed) run, its validation score at the
    longest duration (1 epoch; a worse one at 0.5) as the mean of N_ITEMS per-item values (each item's
    difficulty shared by every run, plus `noise` of the run's own), and a test metric."""
    rows, items = [], []
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1, N_ITEMS)
    for spec in SELECTING:
        key = (spec.learning_rate, spec.seed)
        if key not in scores and key not in diverged:
            continue
        planned = PLANNED[spec.run_id].to_dict()  # the results table carries the planned run's settings
        status = "diverged" if key in diverged else "completed"
        for duration in (0.5, 1.0):
            common = {**planned, "duration": duration, "checkpoint": f"epochs-{duration:g}", "status": status}
            if key in diverged:
                continue
            own = rng.normal(0, noise, N_ITEMS) if noise else np.zeros(N_ITEMS)
            values = difficulty - difficulty.mean() + own - own.mean() + scores[key] + (1.0 - duration)
            rows.append({**common, "metric": selection_metric(spec.domain), "value": float(values.mean())})
            rows.append({**common, "metric": "learning_code", "value": test_metric})
            items += [{"run_id": spec.run_id, "checkpoint": common["checkpoint"], "metric": selection_metric(spec.domain),
                       "item": str(i), "value": float(v)} for i, v in enumerate(values)]
        if key in diverged:
            rows.append({**planned, "duration": 0.5, "checkpoint": "epochs-0.5", "status": status,
                         "metric": "learning_code", "value": 0.0})
    return pd.DataFrame(rows), pd.DataFrame(items, columns=["run_id", "checkpoint", "metric", "item", "value"])


def trained(df: pd.DataFrame | None, items: pd.DataFrame | None) -> set[tuple[float, int]]:
    ids = {s.run_id for s in SELECTING}
    return {(s.learning_rate, s.seed) for s in runs_to_train(PROFILE, df, items) if s.run_id in ids}


def test_edges_are_one_grid_step_beyond_on_the_1_3_10_series() -> None:
    assert beyond([3e-4, 1e-3, 3e-3], "edge-low") == 1e-4 and beyond([3e-4, 1e-3, 3e-3], "edge-high") == 1e-2
    assert beyond([3e-3, 1e-2, 3e-2], "edge-high") == 0.1 and beyond([1e-3, 3e-3], "edge-low") == 3e-4


def test_only_the_listed_first_seeds_train_before_the_choice() -> None:
    assert {(s.learning_rate, s.selection) for s in SELECTING if s.seed == 0} == {
        (1e-3, "candidate"), (3e-3, "candidate"), (3e-4, "edge-low"), (1e-2, "edge-high")}
    assert trained(None, None) == {(1e-3, 0), (3e-3, 0), (1e-2, 0)}  # 1e-2 seed 0: the tiny `lr` arm lists it
    assert PLANNED[next(s.run_id for s in SELECTING if s.learning_rate == 1e-2 and s.seed == 0)].arm == "lr"


def test_a_best_at_an_edge_trains_the_rate_beyond_before_the_choice() -> None:
    df, items = results({(1e-3, 0): 1.3, (3e-3, 0): 1.1})  # best at the low rate's other side: the high edge
    assert chosen_rates(PROFILE, df, items) == {}  # waits for 1e-2
    assert trained(df, items) == {(1e-3, 0), (3e-3, 0), (1e-2, 0)}
    df, items = results({(1e-3, 0): 1.1, (3e-3, 0): 1.3})  # best at the low edge: 3e-4 trains
    assert (3e-4, 0) in trained(df, items) and chosen_rates(PROFILE, df, items) == {}


def test_an_interior_winner_is_chosen_and_trains_the_other_seeds() -> None:
    df, items = results({(1e-3, 0): 1.3, (3e-3, 0): 1.1, (1e-2, 0): 1.4})
    assert list(chosen_rates(PROFILE, df, items).values()) == [3e-3]
    assert trained(df, items) == {(1e-3, 0), (3e-3, 0), (1e-2, 0), (3e-3, 1)}
    table = candidates(PROFILE, df, items)
    assert table[table.chosen].role.tolist() == ["candidate"]


def test_an_edge_that_wins_is_chosen_once_and_trains_the_other_seeds() -> None:
    df, items = results({(1e-3, 0): 1.3, (3e-3, 0): 1.1, (1e-2, 0): 0.9})
    assert list(chosen_rates(PROFILE, df, items).values()) == [1e-2]  # no second extension
    assert (1e-2, 1) in trained(df, items)


def test_a_diverged_edge_is_never_chosen() -> None:
    df, items = results({(1e-3, 0): 1.3, (3e-3, 0): 1.1}, diverged=((1e-2, 0),))
    assert list(chosen_rates(PROFILE, df, items).values()) == [3e-3]
    table = candidates(PROFILE, df, items)
    assert table.set_index("learning_rate").loc[1e-2, ["diverged", "score"]].tolist() == [True, np.inf]


def test_a_difference_within_the_validation_noise_goes_to_the_lower_rate() -> None:
    # 0.02 nats apart: with per-run item noise the paired standard error is ~0.05, a tie; without it, a win
    noisy, noisy_items = results({(1e-3, 0): 1.12, (3e-3, 0): 1.10, (1e-2, 0): 1.3}, noise=0.2)
    assert list(chosen_rates(PROFILE, noisy, noisy_items).values()) == [1e-3]
    clean, clean_items = results({(1e-3, 0): 1.12, (3e-3, 0): 1.10, (1e-2, 0): 1.3})
    assert list(chosen_rates(PROFILE, clean, clean_items).values()) == [3e-3]
    table = candidates(PROFILE, noisy, noisy_items).set_index("learning_rate")
    assert 0.02 < table.loc[1e-3, "tie_se"] and np.isnan(table.loc[3e-3, "tie_se"])  # measured against the best


def test_the_test_metric_plays_no_part() -> None:
    good = results({(1e-3, 0): 1.3, (3e-3, 0): 1.1, (1e-2, 0): 1.4}, test_metric=0.0)
    bad = results({(1e-3, 0): 1.3, (3e-3, 0): 1.1, (1e-2, 0): 1.4}, test_metric=1.0)
    assert chosen_rates(PROFILE, *good) == chosen_rates(PROFILE, *bad)


def test_comparisons_keep_only_the_chosen_rate() -> None:
    df, items = results({(1e-3, 0): 1.3, (3e-3, 0): 1.1, (1e-2, 0): 1.4, (3e-3, 1): 1.0})
    other = df.iloc[:2].assign(arm="regularization", run_id="elsewhere")  # another arm's runs are never filtered
    kept = keep_chosen(PROFILE, pd.concat([df, other], ignore_index=True), items)
    assert set(kept[kept.arm == "lora"].learning_rate) == {3e-3}
    assert set(kept[kept.arm == "lora"].seed) == {0, 1}
    assert (kept.arm == "regularization").sum() == 2


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
    ids = {s.run_id for s in SELECTING}
    expected = [s for s in runs_expected(PROFILE) if s.run_id in ids]
    # two candidates, one more seed, and the `lr` arm's run at the high edge (it trains whatever the choice)
    assert sorted((s.learning_rate, s.seed) for s in expected) == [(1e-3, 0), (1e-3, 1), (3e-3, 0), (1e-2, 0)]


def test_the_other_rates_and_the_main_grid_follow_the_choice() -> None:
    from lorastudy.analysis.learning_forgetting import chosen_rates_table, main_grid, other_rate_runs

    df, items = results({(1e-3, 0): 1.3, (3e-3, 0): 1.1, (1e-2, 0): 1.4, (3e-3, 1): 1.0})
    assert set(other_rate_runs(PROFILE, df, items).run_id) == {  # the edge run too, though the `lr` arm lists it
        s.run_id for s in SELECTING if s.learning_rate in (1e-3, 1e-2) and s.seed == 0}
    assert set(main_grid(PROFILE, df, items).learning_rate) == {3e-3}  # the figures draw the chosen rate's seeds
    table = chosen_rates_table(PROFILE, df, items)
    assert table[table.chosen].learning_rate.tolist() == [3e-3] and len(table) == 3
