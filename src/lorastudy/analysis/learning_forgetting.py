"""Chapter 10 (the paper's Figs 1–3): does full fine-tuning learn more, and does LoRA forget less, at the
longest duration of each panel? Each claim as a difference with a bootstrap interval and a three-way verdict,
beside the same difference on the paper's Tables S1–S8."""
from __future__ import annotations

import numpy as np
import pandas as pd

from lorastudy.analysis.intervals import Interval, difference, verdict
from lorastudy.config import Profile
from lorastudy.layout import BASE_ID
from lorastudy.paper import PAPER_HIDDEN_SIZE
from lorastudy.tuning import keep_chosen

MAIN_ARMS = ("full", "lora")  # the sweep arms of the main grid (regularisation and sensitivity arms are apart)


def forgetting_metrics(profile: Profile) -> list[str]:
    """The per-set metrics whose mean is forgetting_avg (each set's metric as the profile names it)."""
    return [f"{name}_{cfg.metric}" for name, cfg in profile.eval.forgetting.items()]


def arm_values(items: pd.DataFrame, cells: pd.DataFrame, metrics: list[str],
               universe: dict[str, list[str]] | None = None) -> list[np.ndarray]:
    """One (seeds, items) array per metric for the (run_id, checkpoint) cells of one arm, its columns in the
    order of `universe` (default: the items this arm has)."""
    mine = _select(items, cells)
    out = []
    for metric in metrics:
        grid = mine[mine.metric == metric].pivot_table(index=["run_id", "checkpoint"], columns="item", values="value")
        columns = universe[metric] if universe else sorted(grid.columns)
        missing = set(columns) - set(grid.columns)
        if grid.empty or missing or grid.isna().any().any():
            raise ValueError(f"per-item {metric} incomplete for runs {sorted(set(cells.run_id))[:2]}: "
                             f"{len(missing)} items absent")
        out.append(grid[columns].to_numpy(dtype=float))
    return out


def compare_arms(items: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame, metrics: list[str], seed: int) -> Interval:
    """score(a) - score(b) over the items both arms answered: the claim's estimate and its 95% interval."""
    shared = {}
    for m in metrics:
        shared[m] = sorted(set(arm_items(items, a, m)) & set(arm_items(items, b, m)))
        if not shared[m]:
            raise ValueError(f"the two arms share no {m} items")
    return difference(arm_values(items, a, metrics, shared), arm_values(items, b, metrics, shared), seed=seed)


def arm_items(items: pd.DataFrame, cells: pd.DataFrame, metric: str) -> list[str]:
    mine = _select(items, cells)
    return sorted(set(mine[mine.metric == metric].item))


def _select(items: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The per-item rows of these (run_id, checkpoint) cells."""
    return items.merge(cells[["run_id", "checkpoint"]].drop_duplicates(), on=["run_id", "checkpoint"])


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    return df[["run_id", "checkpoint"]].drop_duplicates()


def _paper_panel(paper: pd.DataFrame, domain: str, regime: str) -> pd.DataFrame:
    g = paper[(paper.domain == domain) & (paper.regime == regime)]
    return g[g.duration == g.duration.max()]


def _paper_value(last: pd.DataFrame, method: str, rank: float | None, metric: str) -> float | None:
    rows = last[(last.method == method) & (last.metric == metric)]
    rows = rows[rows.lora_rank.isna()] if rank is None else rows[rows.lora_rank == rank]
    return float(rows.value.iloc[0]) if len(rows) else None


def _row(claim: str, statement: str, panel: str, iv: Interval, expected: int, paper: float | None) -> dict:
    return {"claim": claim, "statement": statement, "panel": panel, "estimate": iv.estimate, "ci_low": iv.low,
            "ci_high": iv.high, "n_seeds": min(iv.n_seeds), "n_items": iv.n_items,
            "verdict": verdict(iv, expected), "paper": paper}


def main_claims(df: pd.DataFrame, items: pd.DataFrame, profile: Profile, paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's headline claims per panel at its longest duration, with intervals: full FT learns more than
    each LoRA rank, each LoRA rank forgets less than full FT, and (CPT) full FT learns beyond the base.
    The paper's number is the same difference on its Tables S1-S8, at the rank with the same share of the width."""
    runs = keep_chosen(profile, df[(df.method != "base") & df.arm.isin(MAIN_ARMS) & (df.status == "completed")])
    base = df[df.run_id == BASE_ID]
    forget = forgetting_metrics(profile)
    # the mini base's ranks map to the paper's by share of the width; a pretrained base is compared rank for rank
    width = profile.base.architecture.hidden_size if profile.base.kind == "mini" else PAPER_HIDDEN_SIZE
    rows = []
    for (domain, regime), g in runs.groupby(["domain", "regime"]):
        last = g[g.duration == g.duration.max()]
        full = last[last.method == "full"]
        if full.empty:
            continue
        panel, learn = f"{domain} {regime.upper()}", [f"learning_{domain}"]
        pp = _paper_panel(paper, domain, regime)
        paper_full = {m: _paper_value(pp, "full", None, m) for m in ("learning", "forgetting_avg")}
        for rank, lora in last[last.method == "lora"].groupby("lora_rank"):
            r = int(rank)
            paper_rank = r * PAPER_HIDDEN_SIZE / width
            pl = {m: _paper_value(pp, "lora", paper_rank, m) for m in ("learning", "forgetting_avg")}
            gap = lambda m, sign: None if None in (paper_full[m], pl[m]) else sign * (paper_full[m] - pl[m])
            iv = compare_arms(items, _cells(full), _cells(lora), learn, seed=len(rows))
            rows.append(_row(f"full-learns-more/{domain}-{regime}/r{r}",
                             f"full fine-tuning learns more than LoRA r={r}", panel, iv, +1, gap("learning", 1)))
            iv = compare_arms(items, _cells(lora), _cells(full), forget, seed=len(rows))
            rows.append(_row(f"lora-forgets-less/{domain}-{regime}/r{r}",
                             f"LoRA r={r} forgets less than full fine-tuning", panel, iv, +1,
                             gap("forgetting_avg", -1)))
        if regime == "cpt" and not base.empty:
            iv = compare_arms(items, _cells(full), _cells(base), learn, seed=len(rows))
            rows.append(_row(f"cpt-learns/{domain}", "continued pre-training teaches the target domain "
                             "(full FT at the longest budget beats the base)", panel, iv, +1, None))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


CLAIM_COLUMNS = ["claim", "statement", "panel", "estimate", "ci_low", "ci_high", "n_seeds", "n_items", "verdict",
                 "paper"]
