"""Picking and summarising the runs of one panel that differ in one setting (the regularisation and
sensitivity chapters: the paper's Figs 4, 7, S1 and S3).

Every such chapter compares runs of one panel (code IFT, as in the paper) that differ in one setting. The
functions here pick those runs from the long results table (`lorastudy.results.COLUMNS`) by their settings,
not only by arm name: a run planned by two arms keeps the first arm's name (run ids are deduplicated), so
e.g. the learning-rate sweep's middle point is the main grid's run. A chapter's `*_runs` function returns
wide rows (one per run × checkpoint) with `learning` (the panel's `learning_<domain>`), `forgetting`
(`forgetting_avg`, source-domain accuracy: higher = less forgotten), `source_loss` (held-out source loss, if
measured), and a `label` plus a `variant` number that the plots turn into line styles; `summarise` and
`last_duration_table` turn them into the chapter's tables (mean over seeds).

An arm that a profile did not run gives empty selections, never an error: the notebooks then show
`lorastudy.analysis.claims.not_run(...)`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from lorastudy.results import wide

NUMERIC = ["lora_rank", "lora_alpha", "learning_rate", "weight_decay", "attention_dropout", "seed", "duration"]
SUMMARY_METRICS = ["learning", "forgetting", "source_loss"]


def panel_name(domain: str, regime: str) -> str:
    """'code IFT': how figures and notes name a panel."""
    return f"{domain} {regime.upper()}"


def _panel(df: pd.DataFrame, domain: str, regime: str) -> pd.Series:
    return (df.domain == domain) & (df.regime == regime) & (df.method != "base")


def select_arm(df: pd.DataFrame, arm_names: str | Iterable[str], domain: str = "code",
               regime: str = "ift") -> pd.DataFrame:
    """Long rows of the runs whose sweep arm is one of `arm_names`, in one (domain, regime) panel."""
    names = {arm_names} if isinstance(arm_names, str) else set(arm_names)
    return df[_panel(df, domain, regime) & df.arm.isin(names)].reset_index(drop=True)


def panel_rows(df: pd.DataFrame, domain: str = "code", regime: str = "ift") -> pd.DataFrame:
    """Wide rows (run × checkpoint) of one panel with `learning`, `forgetting` and `source_loss` columns and
    the settings normalised (no weight decay / dropout = 0, rsLoRA off = False)."""
    sub = df[_panel(df, domain, regime)]
    if sub.empty:
        cols = [c for c in df.columns if c not in {"metric", "value"}]
        return pd.DataFrame(columns=[*cols, *SUMMARY_METRICS])
    w = wide(sub).rename_axis(columns=None)
    w["learning"] = w[f"learning_{domain}"] if f"learning_{domain}" in w else np.nan
    w["forgetting"] = w["forgetting_avg"] if "forgetting_avg" in w else np.nan
    w["source_loss"] = w["heldout_source_loss"] if "heldout_source_loss" in w else np.nan
    for col in NUMERIC:
        w[col] = pd.to_numeric(w[col], errors="coerce")
    w["weight_decay"] = w.weight_decay.fillna(0.0)
    w["attention_dropout"] = w.attention_dropout.fillna(0.0)
    w["use_rslora"] = w.use_rslora.map(lambda v: str(v).lower() in {"true", "1", "1.0"})
    w["optimizer"] = optimizers(w)
    return w


def optimizers(rows: pd.DataFrame) -> pd.Series:
    """Each row's optimizer, 'adamw' where the table has none (tables written before Fig S2's arm)."""
    if "optimizer" not in rows:
        return pd.Series("adamw", index=rows.index)
    return rows.optimizer.astype(object).where(rows.optimizer.notna(), "adamw")


def panel_ranks(df: pd.DataFrame, domain: str = "code", regime: str = "ift") -> list[int]:
    """The LoRA ranks of a panel's runs, ascending."""
    return sorted({int(r) for r in panel_rows(df, domain, regime).lora_rank.dropna()})


def base_values(df: pd.DataFrame, domain: str = "code") -> dict[str, float]:
    """The base model's learning, forgetting and source loss (NaN where the table has no base rows)."""
    base = df[df.method == "base"]
    names = {"learning": f"learning_{domain}", "forgetting": "forgetting_avg", "source_loss": "heldout_source_loss"}
    return {k: float(base[base.metric == m].value.mean()) if (base.metric == m).any() else float("nan")
            for k, m in names.items()}


def measured_metrics(sel: pd.DataFrame) -> list[str]:
    """Learning and forgetting, and the held-out source loss where the selection measured it."""
    return ["learning", "forgetting"] + (["source_loss"] if sel.source_loss.notna().any() else [])


# ----------------------------------------------------------------------------- settings
def close_to(values: pd.Series, target: float | None) -> pd.Series:
    """Which values equal `target` (to rounding); all False without a target."""
    if target is None or values.empty:
        return pd.Series(False, index=values.index)
    return pd.Series(np.isclose(values.astype(float), float(target), rtol=1e-6, atol=0), index=values.index)


def plain(rows: pd.DataFrame) -> pd.Series:
    """Runs without weight decay or attention dropout, trained with AdamW (the main grid's optimizer)."""
    return (rows.weight_decay == 0) & (rows.attention_dropout == 0) & (rows.optimizer == "adamw")


def default_alpha(rows: pd.DataFrame, alpha_ratio: float) -> pd.Series:
    """Runs with α = alpha_ratio·r (the profile's, and the paper's, 2r)."""
    return pd.Series(np.isclose(rows.lora_alpha.astype(float), alpha_ratio * rows.lora_rank.astype(float)),
                     index=rows.index)


def standard_lora(rows: pd.DataFrame, alpha_ratio: float) -> pd.Series:
    """LoRA as in the main grid: all modules, α = alpha_ratio·r, no rsLoRA, no weight decay or dropout."""
    return ((rows.method == "lora") & (rows.target_modules == "all") & ~rows.use_rslora & plain(rows)
            & default_alpha(rows, alpha_ratio))


def main_learning_rate(rows: pd.DataFrame, method: str, alpha_ratio: float = 2.0) -> float | None:
    """The learning rate of the main grid's `method` runs in these rows (arm named like the method, else
    the most common one of the plain runs; ties go to the smaller rate); None if there is no such run."""
    if rows.empty:
        return None
    mask = (standard_lora(rows, alpha_ratio) if method == "lora" else (rows.method == method) & plain(rows))
    cand = rows[mask]
    if cand.empty:
        return None
    main = cand[cand.arm == method]
    lrs = (main if not main.empty else cand).drop_duplicates("run_id").learning_rate
    counts = lrs.value_counts()
    return float(min(counts.index[counts == counts.max()]))


# ----------------------------------------------------------------------------- summaries
def summarise(sel: pd.DataFrame, keys: Sequence[str] = ("label",)) -> pd.DataFrame:
    """Mean over seeds per line and duration: learning, forgetting, source loss and the seed count; the
    other columns of the line (method, rank, settings, variant) kept from its first row."""
    if sel.empty:
        return pd.DataFrame(columns=[*keys, "duration", *SUMMARY_METRICS, "n_seeds"])
    keys = list(keys)
    group = sel.groupby([*keys, "duration"], dropna=False, sort=False)
    out = group[SUMMARY_METRICS].mean()
    out["n_seeds"] = group.run_id.nunique()
    first = group.first()[[c for c in sel.columns if c not in {*keys, "duration", *SUMMARY_METRICS}]]
    return out.join(first).reset_index().rename_axis(columns=None)


def at_last_duration(summary: pd.DataFrame, keys: Sequence[str] = ("label",)) -> pd.DataFrame:
    """Each line's row at its own longest duration (a run that stopped early keeps its last checkpoint)."""
    if summary.empty:
        return summary
    idx = summary.groupby(list(keys), dropna=False, sort=False)["duration"].idxmax()
    return summary.loc[idx].reset_index(drop=True)


def with_order(sel: pd.DataFrame) -> pd.DataFrame:
    """Lines ordered full → LoRA by rank → variant (what legends and tables follow)."""
    if sel.empty:
        return sel
    rank = sel.lora_rank.fillna(-1)
    return sel.assign(_m=(sel.method == "lora").astype(int), _r=rank).sort_values(
        ["_m", "_r", "variant", "label", "duration"], kind="stable").drop(columns=["_m", "_r"]).reset_index(drop=True)


def last_duration_table(sel: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One row per line at its last duration (mean over seeds), ordered like the legends: `columns`, the
    duration, learning, forgetting, source loss (left out where never measured) and the seed count."""
    last = at_last_duration(summarise(sel))
    if last.empty:
        return pd.DataFrame(columns=[*columns, "duration", *SUMMARY_METRICS, "n_seeds"])
    last = with_order(last)
    cols = [*columns, "duration", *SUMMARY_METRICS, "n_seeds"]
    if last.source_loss.isna().all():
        cols.remove("source_loss")
    return last[cols]
