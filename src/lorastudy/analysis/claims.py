"""The one verdict type of the book: the paper's statement, what our runs say, and whether they agree.

Every claim a chapter makes about agreement with the paper comes from here, never from hand-typed numbers, so
the text stays true when the results change.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lorastudy.analysis.learning_forgetting import main_claims
from lorastudy.config import Profile
from lorastudy.layout import Layout
from lorastudy.paper import paper_tables
from lorastudy.results import collect, collect_items

EXTENDED_PROFILE = "mini-extended"  # the profile that runs every arm of the regularisation and sensitivity chapters


def not_run(what: str) -> str:
    """The markdown note a chapter shows where runs are missing (one wording for every chapter)."""
    return (f"**{what}: not run in this profile** — run `make reproduce PROFILE={EXTENDED_PROFILE}` "
            "(or a profile with these runs) to add it.")


def claim(statement: str, paper: bool, ours: bool | None, detail: str) -> dict:
    """One row of a chapter's verdict table: the paper's statement, ours (None = cannot tell), agreement."""
    return {"statement": statement, "paper": paper, "ours": ours,
            "agrees": None if ours is None else bool(ours == paper), "detail": detail}


def claims_table(profile: Profile, out_root: Path) -> pd.DataFrame:
    """Every claim with an interval, one row each (analysis.learning_forgetting.CLAIM_COLUMNS), from the
    sweep's results and per-item tables (collected from the runs when the sweep has not written them)."""
    layout = Layout(out_root)
    df = pd.read_csv(layout.results_table) if layout.results_table.is_file() else collect(profile, out_root)
    items = (pd.read_parquet(layout.items_table) if layout.items_table.is_file()
             else collect_items(profile, out_root))
    if items.empty:
        raise FileNotFoundError(f"no per-item results under {out_root}: run `lorastudy sweep {profile.name}` first")
    return main_claims(df, items, profile, paper_tables())
