"""Chapter 10 (the paper's Figs 1–3): does full fine-tuning learn more, and does LoRA forget less, at the
longest duration of each panel? Ours beside the same statements computed on the paper's Tables S1–S8."""
from __future__ import annotations

import pandas as pd

from lorastudy.figures.style import method_label
from lorastudy.results import wide


def last_checkpoints(df: pd.DataFrame) -> pd.DataFrame:
    """Wide rows of each run's longest duration (one per run)."""
    w = wide(df[df.method != "base"])
    if w.empty:
        return w
    idx = w.groupby("run_id")["duration"].idxmax()
    return w.loc[idx].reset_index(drop=True)


def learning_col(domain: str) -> str:
    return f"learning_{domain}"


def compare_methods(df: pd.DataFrame) -> pd.DataFrame:
    """Per (domain, regime), at the longest duration: learning and forgetting of full FT and each LoRA rank,
    and whether 'full learns more' and 'LoRA forgets less' hold (averaged over seeds)."""
    last = last_checkpoints(df)
    rows = []
    for (domain, regime), g in last.groupby(["domain", "regime"]):
        g = g.assign(label=g.apply(lambda r: method_label(r.method, r.lora_rank), axis=1))
        agg = g.groupby("label")[[learning_col(domain), "forgetting_avg"]].mean()
        if "full" not in agg.index or len(agg) < 2:
            continue
        lora = agg.drop(index="full")
        rows.append({
            "domain": domain, "regime": regime,
            "learning_full": agg.loc["full", learning_col(domain)], "learning_best_lora": lora[learning_col(domain)].max(),
            "forgetting_full": agg.loc["full", "forgetting_avg"], "forgetting_best_lora": lora["forgetting_avg"].max(),
            "full_learns_more": bool(agg.loc["full", learning_col(domain)] >= lora[learning_col(domain)].max()),
            "lora_forgets_less": bool((lora["forgetting_avg"] >= agg.loc["full", "forgetting_avg"]).all()),
        })
    return pd.DataFrame(rows)


def paper_comparison(paper: pd.DataFrame) -> pd.DataFrame:
    """The same two statements on the paper's Tables S1–S8, at the longest duration of each panel."""
    rows = []
    for (domain, regime), g in paper.groupby(["domain", "regime"]):
        last = g[g.duration == g.duration.max()].assign(lora_rank=lambda d: d.lora_rank.fillna(0))
        piv = last.pivot_table(index=["method", "lora_rank"], columns="metric", values="value")
        full = piv.xs("full", level="method")
        lora = piv.xs("lora", level="method")
        rows.append({
            "domain": domain, "regime": regime,
            "paper_full_learns_more": bool(full["learning"].max() >= lora["learning"].max()),
            "paper_lora_forgets_less": bool((lora["forgetting_avg"] >= full["forgetting_avg"].max()).all()),
        })
    return pd.DataFrame(rows)


def agreement(df: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Ours beside the paper's, per panel, with a plain agree/disagree column for each statement."""
    ours = compare_methods(df)
    if ours.empty:
        return ours
    both = ours.merge(paper_comparison(paper), on=["domain", "regime"], how="left")
    both["learns_more_agrees"] = both.full_learns_more == both.paper_full_learns_more
    both["forgets_less_agrees"] = both.lora_forgets_less == both.paper_lora_forgets_less
    return both
