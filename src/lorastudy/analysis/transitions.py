"""Per-item forgetting (after arXiv 2510.17776): a forgetting set's mean accuracy hides items that flip both
ways. Against the base it was fine-tuned from, each item a fine-tuned model answers was lost (the base right, the
model wrong), gained (the reverse) or kept. Guessing alone loses a base-right item of a k-option set with
probability 1 - 1/k, so each share is shown beside what a model that guessed would show.

The claims `transitions/<domain>-<regime>/r<rank>`: LoRA at rank r loses fewer of its base's right answers than
full fine-tuning, at the panel's longest duration and the chosen rates, paired by base and item (the interval
over both, as every claim's). No new runs: the per-item table holds every answer.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lorastudy.analysis.learning_forgetting import (
    CLAIM_COLUMNS,
    base_rows,
    chance_levels,
    chosen_runs,
    claim_row,
    forgetting_metrics,
)
from lorastudy.config import Profile
from lorastudy.plan import method_label

FLIPS = ("lost", "gained")


def flip_items(items: pd.DataFrame, df: pd.DataFrame, profile: Profile, cells: pd.DataFrame | None = None
               ) -> pd.DataFrame:
    """Per-item `lost_<set>` and `gained_<set>` indicators (0 or 1) of the fine-tuned (run_id, checkpoint,
    base_id) `cells` (default: every fine-tuned cell of `df`), against each one's own base's answer to the same
    item (the bases' rows of `df`); rows as the items table's."""
    forget = forgetting_metrics(profile)
    answers = items[items.metric.isin(forget)]
    bases = base_rows(df)[["run_id", "base_id"]].drop_duplicates()
    base = (answers.merge(bases, on="run_id")[["base_id", "metric", "item", "value"]]
            .rename(columns={"value": "base_value"}))
    if cells is None:
        cells = df[df.method != "base"]
    cells = cells[["run_id", "checkpoint", "base_id"]].drop_duplicates()
    mine = answers[answers.run_id.isin(set(cells.run_id))].merge(cells, on=["run_id", "checkpoint"])
    joined = mine.merge(base, on=["base_id", "metric", "item"])
    lost = (joined.base_value == 1) & (joined.value == 0)
    gained = (joined.base_value == 0) & (joined.value == 1)
    keep = ["run_id", "checkpoint", "metric", "item", "value"]
    return pd.concat([joined.assign(metric="lost_" + joined.metric, value=lost.astype(float))[keep],
                      joined.assign(metric="gained_" + joined.metric, value=gained.astype(float))[keep]],
                     ignore_index=True)


def _longest_cells(profile: Profile, df: pd.DataFrame, items: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (domain, regime): the main grid's cells at the chosen rates and the panel's longest duration."""
    out = {}
    for panel, runs in chosen_runs(profile, df, items).groupby(["domain", "regime"]):
        last = runs[runs.duration == runs.duration.max()]
        out[panel] = last[["run_id", "checkpoint", "base_id", "method", "lora_rank"]].drop_duplicates()
    return out


def transitions_table(profile: Profile, df: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Per panel, arm (at its chosen rate and longest duration, mean over its runs) and forgetting set: the share
    of items lost and gained, the base's accuracy, and the shares a model that guessed would lose and gain."""
    panels = _longest_cells(profile, df, items)
    if not panels:
        return pd.DataFrame()
    flips = flip_items(items, df, profile, pd.concat(panels.values()))  # only the cells the table reads
    chance = chance_levels(profile)
    base_acc = (items[items.run_id.isin(set(base_rows(df).run_id))].groupby("metric").value.mean())
    rows = []
    for (domain, regime), last in panels.items():
        for (method, rank), cell in last.groupby(["method", last.lora_rank.fillna(0)]):
            arm = method_label(method, rank)
            mine = flips.merge(cell[["run_id", "checkpoint"]], on=["run_id", "checkpoint"])  # the longest only
            for metric, k in chance.items():
                acc = float(base_acc.get(metric, np.nan))
                share = {f: float(mine[mine.metric == f"{f}_{metric}"].value.mean()) for f in FLIPS}
                rows.append({"panel": f"{domain} {regime.upper()}", "arm": arm, "method": method,
                             "lora_rank": rank if method == "lora" else np.nan, "set": metric.rsplit("_acc", 1)[0],
                             "base_accuracy": acc, "lost": share["lost"], "gained": share["gained"],
                             "lost_if_guessing": acc * (1 - k), "gained_if_guessing": (1 - acc) * k,
                             "runs": cell.run_id.nunique()})
    return pd.DataFrame(rows)


def transition_claims(df: pd.DataFrame, items: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """Per panel and rank: does LoRA lose fewer of its base's right answers than full FT (the lost shares over
    the forgetting sets' items, full minus LoRA)?"""
    if not items.metric.isin(forgetting_metrics(profile)).any():  # no forgetting set was scored: nothing to count
        return pd.DataFrame(columns=CLAIM_COLUMNS)
    panels = _longest_cells(profile, df, items)
    if not panels:
        return pd.DataFrame(columns=CLAIM_COLUMNS)
    flips = flip_items(items, df, profile, pd.concat(panels.values()))  # only the cells the claims compare
    lost = [f"lost_{m}" for m in forgetting_metrics(profile)]
    rows = []
    for (domain, regime), last in panels.items():
        full = last[last.method == "full"]
        if full.empty:
            continue
        for rank, lora in last[last.method == "lora"].groupby("lora_rank"):
            r = int(rank)
            rows.append(claim_row(f"transitions/{domain}-{regime}/r{r}",
                                  f"LoRA r={r} loses fewer of the base's right answers than full fine-tuning",
                                  f"{domain} {regime.upper()}", flips, full, lora, lost))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
