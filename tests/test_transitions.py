"""Per-item forgetting: items lost and gained against each run's own base."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lorastudy.analysis import transitions
from lorastudy.config import load_profile

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "results" / "mini"


def test_an_item_is_lost_gained_or_kept_against_its_own_base() -> None:
    profile = load_profile("mini")
    metric = transitions.forgetting_metrics(profile)[0]
    df = pd.DataFrame({"run_id": ["base", "base-1", "r"], "checkpoint": ["base", "base", "c"],
                       "base_id": ["b0", "b1", "b1"], "method": ["base", "base", "full"]})
    items = pd.DataFrame({"run_id": ["base"] * 3 + ["base-1"] * 3 + ["r"] * 3, "checkpoint": ["base"] * 6 + ["c"] * 3,
                          "metric": metric, "item": ["i1", "i2", "i3"] * 3,
                          "value": [0, 1, 0,  1, 0, 1,  0, 1, 1]})  # base b0 must not be read: r is base b1's
    flips = transitions.flip_items(items, df, profile).set_index(["metric", "item"]).value
    assert list(flips[f"lost_{metric}"]) == [1.0, 0.0, 0.0]  # i1: right -> wrong
    assert list(flips[f"gained_{metric}"]) == [0.0, 1.0, 0.0]  # i2: wrong -> right; i3 kept


@pytest.mark.skipif(not (SNAPSHOT / "claims.csv").is_file(), reason="no committed mini snapshot")
def test_the_snapshots_transition_claims_are_its_tables_difference() -> None:
    profile = load_profile("mini")
    df, items = pd.read_csv(SNAPSHOT / "results.csv"), pd.read_parquet(SNAPSHOT / "items.parquet")
    claims = pd.read_csv(SNAPSHOT / "claims.csv").set_index("claim")
    table = transitions.transitions_table(profile, df, items)
    lost = table.groupby(["panel", "arm"]).lost.mean()  # the sets are of equal size: the items' mean
    for (panel, arm), value in lost.items():
        if arm == "full":
            continue
        claim = f"transitions/{panel.replace(' ', '-').lower()}/r{arm.split('=')[1]}"
        assert claims.loc[claim, "estimate"] == pytest.approx(lost[(panel, "full")] - value, abs=1e-12)
        assert claims.loc[claim, "n_bases"] == 3
