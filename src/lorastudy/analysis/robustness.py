"""Do the verdicts survive a replicate of the whole study? The same profile and code, run again on another
host, where the mini base came out differently: CPU kernels round differently, and pre-training carries the
difference into another base model. The claims' intervals cover test items and fine-tuning seeds, not the base
model, so a replicate is the only way to see how much a verdict owes to the one base it was measured on.

A replicate is a snapshot at results/PROFILE-replicate* (claims.csv, results.csv, items.parquet, provenance.json with
its `origin`); the book's landing page compares each one's verdicts with the study's (scorecard.replicate_section).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from lorastudy.analysis.claims import kind
from lorastudy.analysis.intervals import AGREES, CANNOT_TELL, DISAGREES
from lorastudy.layout import BASE_ID, SNAPSHOTS, Layout, snapshot_layout

REPLICATE_SUFFIX = "-replicate"


def replicate_layouts(profile_name: str) -> list[Layout]:
    """results/PROFILE-replicate, PROFILE-replicate-2, ...: the snapshots of other runs of the same study that hold
    a claims table, in the order of their names."""
    prefix = profile_name + REPLICATE_SUFFIX
    names = sorted((path.name for path in SNAPSHOTS.glob(prefix + "*")
                    if path.name == prefix or path.name[len(prefix):].startswith("-")),
                   key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])  # -2 before -10
    return [layout for layout in map(snapshot_layout, names) if layout.claims_table.is_file()]


def base_forgetting(results_table: Path) -> float | None:
    """The base model's forgetting average in a results table, None when the table has no base row."""
    if not results_table.is_file():
        return None
    rows = pd.read_csv(results_table, usecols=["run_id", "metric", "value"])
    value = rows[(rows.run_id == BASE_ID) & (rows.metric == "forgetting_avg")].value
    return float(value.iloc[0]) if len(value) else None


def paired_verdicts(claims: pd.DataFrame, replicate: pd.DataFrame) -> pd.DataFrame:
    """The claims both tables hold, side by side: family, claim, panel, statement, each side's estimate and
    verdict, and how they relate (`same`, `opposite` when one agrees and the other disagrees, else `one
    cannot tell`)."""
    cols = ["claim", "panel", "statement", "estimate", "ci_low", "ci_high", "verdict"]
    both = claims[cols].merge(replicate[["claim", "estimate", "ci_low", "ci_high", "verdict"]], on="claim",
                              suffixes=("", "_replicate"))
    decided = {AGREES, DISAGREES}
    both["relation"] = [
        "same" if a == b else "opposite" if {a, b} == decided else "one cannot tell"
        for a, b in zip(both.verdict, both.verdict_replicate)]
    both.insert(0, "family", [kind(c) for c in both.claim])
    return both


def agreement_table(paired: pd.DataFrame) -> pd.DataFrame:
    """Per family of claims: how many, how many keep their verdict, flip to the opposite verdict, or move to or
    from *cannot tell*; and how many were decided (agree or disagree) on each side."""
    rows = []
    for family, g in paired.groupby("family", sort=False):
        rows.append({"family": family, "n": len(g),
                     "same verdict": int((g.relation == "same").sum()),
                     "opposite verdict": int((g.relation == "opposite").sum()),
                     "one side cannot tell": int((g.relation == "one cannot tell").sum()),
                     "decided here": int((g.verdict != CANNOT_TELL).sum()),
                     "decided in the replicate": int((g.verdict_replicate != CANNOT_TELL).sum()),
                     "decided in both, same": int(((g.verdict != CANNOT_TELL) & (g.relation == "same")).sum())})
    return pd.DataFrame(rows)


def settled(claims: pd.DataFrame, replicates: list[pd.DataFrame]) -> pd.DataFrame:
    """The claims decided (agrees or disagrees) here and the same way in every replicate: the verdicts that do
    not hang on the base model. Columns: family, claim, panel, statement, verdict, estimate, ci_low, ci_high."""
    keep = claims[claims.verdict != CANNOT_TELL]
    for other in replicates:
        same = keep[["claim", "verdict"]].merge(other[["claim", "verdict"]], on=["claim", "verdict"])
        keep = keep[keep.claim.isin(same.claim)]
    out = keep[["claim", "panel", "statement", "verdict", "estimate", "ci_low", "ci_high"]].copy()
    out.insert(0, "family", [kind(c) for c in out.claim])
    return out.reset_index(drop=True)
