"""The sweep's extra arms, selected and summarised for the regularisation, sensitivity and memory chapters
(the paper's Figs 4, 7, S1, S3, S10 and Tables S14–S16).

Every chapter compares runs of one panel (code IFT, as in the paper) that differ in one setting. The
functions here pick those runs from the long results table (`lorastudy.results.COLUMNS`) by their settings,
not only by arm name: a run planned by two arms keeps the first arm's name (run ids are deduplicated), so
e.g. the learning-rate sweep's middle point is the main grid's run. Each `*_runs` function returns wide rows
(one per run × checkpoint) with `learning` (the panel's `learning_<domain>`), `forgetting` (`forgetting_avg`,
source-domain accuracy: higher = less forgotten), `source_loss` (held-out source loss, if measured), and a
`label` plus a `variant` number that the plots turn into line styles. `*_table` functions summarise them
(mean over seeds) and `*_verdict` functions compute the comparisons the chapters state beside the paper.

An arm that a profile did not run gives empty selections, never an error: the notebooks then show
`not_run(...)`.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from lorastudy import plots
from lorastudy.findings import EXTENDED_PROFILE, not_run
from lorastudy.findings import claim as _claim
from lorastudy.memory import (GB, PAPER_GPUS, PAPER_PRINTED_GB, ModelShapes, agrees_to_printed, lora_param_count,
                              model_state_bytes, paper_table)
from lorastudy.results import wide

__all__ = [
    "EXTENDED_PROFILE", "not_run", "select_arm", "panel_rows", "base_values",
    "main_learning_rate", "summarise", "at_last_duration",
    "regularization_runs", "regularization_table", "regularization_verdict",
    "modules_runs", "modules_table", "modules_verdict",
    "lr_runs", "lr_table", "best_learning_rate", "lr_ratio", "lr_grid_summary",
    "alpha_runs", "alpha_table", "alpha_verdict",
    "plot_vs_duration", "plot_tradeoff", "plot_lr_sweep",
    "paper_memory_comparison", "lora_size_table", "state_vs_activations", "profile_model",
    "shapes_with_count", "bench_configs", "run_bench", "bench_summary", "bench_verdict", "plot_bench",
]

MODULE_ORDER = {"all": 0, "mlp": 1, "attention": 2}
MARKERS = ["o", "s", "^", "D", "v", "P"]
_NUMERIC = ["lora_rank", "lora_alpha", "learning_rate", "weight_decay", "attention_dropout", "seed", "duration"]
_SUMMARY_METRICS = ["learning", "forgetting", "source_loss"]
SIMILAR_LEARNING = 0.05  # learning differences up to this count as "similar" (about the noise of ~150 tasks)


# ----------------------------------------------------------------------------- selection
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
        return pd.DataFrame(columns=[*cols, *_SUMMARY_METRICS])
    w = wide(sub).rename_axis(columns=None)
    w["learning"] = w[f"learning_{domain}"] if f"learning_{domain}" in w else np.nan
    w["forgetting"] = w["forgetting_avg"] if "forgetting_avg" in w else np.nan
    w["source_loss"] = w["heldout_source_loss"] if "heldout_source_loss" in w else np.nan
    for col in _NUMERIC:
        w[col] = pd.to_numeric(w[col], errors="coerce")
    w["weight_decay"] = w.weight_decay.fillna(0.0)
    w["attention_dropout"] = w.attention_dropout.fillna(0.0)
    w["use_rslora"] = w.use_rslora.map(lambda v: str(v).lower() in {"true", "1", "1.0"})
    return w


def base_values(df: pd.DataFrame, domain: str = "code") -> dict[str, float]:
    """The base model's learning, forgetting and source loss (NaN where the table has no base rows)."""
    base = df[df.method == "base"]
    names = {"learning": f"learning_{domain}", "forgetting": "forgetting_avg", "source_loss": "heldout_source_loss"}
    return {k: float(base[base.metric == m].value.mean()) if (base.metric == m).any() else float("nan")
            for k, m in names.items()}


def _close(values: pd.Series, target: float | None) -> pd.Series:
    if target is None or values.empty:
        return pd.Series(False, index=values.index)
    return pd.Series(np.isclose(values.astype(float), float(target), rtol=1e-6, atol=0), index=values.index)


def _plain(rows: pd.DataFrame) -> pd.Series:
    return (rows.weight_decay == 0) & (rows.attention_dropout == 0)


def _standard_lora(rows: pd.DataFrame, alpha_ratio: float) -> pd.Series:
    """LoRA as in the main grid: all modules, α = alpha_ratio·r, no rsLoRA, no weight decay or dropout."""
    return ((rows.method == "lora") & (rows.target_modules == "all") & ~rows.use_rslora & _plain(rows)
            & pd.Series(np.isclose(rows.lora_alpha.astype(float), alpha_ratio * rows.lora_rank.astype(float)),
                        index=rows.index))


def main_learning_rate(rows: pd.DataFrame, method: str, alpha_ratio: float = 2.0) -> float | None:
    """The learning rate of the main grid's `method` runs in these rows (arm named like the method, else
    the most common one of the plain runs; ties go to the smaller rate); None if there is no such run."""
    if rows.empty:
        return None
    mask = (_standard_lora(rows, alpha_ratio) if method == "lora" else (rows.method == method) & _plain(rows))
    cand = rows[mask]
    if cand.empty:
        return None
    main = cand[cand.arm == method]
    lrs = (main if not main.empty else cand).drop_duplicates("run_id").learning_rate
    counts = lrs.value_counts()
    return float(min(counts.index[counts == counts.max()]))


def _pct(rank: float, hidden_size: int | None) -> str:
    return plots.method_label("lora", rank, hidden_size)


# ----------------------------------------------------------------------------- summaries
def summarise(sel: pd.DataFrame, keys: Sequence[str] = ("label",)) -> pd.DataFrame:
    """Mean over seeds per line and duration: learning, forgetting, source loss and the seed count; the
    other columns of the line (method, rank, settings, variant) kept from its first row."""
    if sel.empty:
        return pd.DataFrame(columns=[*keys, "duration", *_SUMMARY_METRICS, "n_seeds"])
    keys = list(keys)
    group = sel.groupby([*keys, "duration"], dropna=False, sort=False)
    out = group[_SUMMARY_METRICS].mean()
    out["n_seeds"] = group.run_id.nunique()
    first = group.first()[[c for c in sel.columns if c not in {*keys, "duration", *_SUMMARY_METRICS}]]
    return out.join(first).reset_index().rename_axis(columns=None)


def at_last_duration(summary: pd.DataFrame, keys: Sequence[str] = ("label",)) -> pd.DataFrame:
    """Each line's row at its own longest duration (a run that stopped early keeps its last checkpoint)."""
    if summary.empty:
        return summary
    idx = summary.groupby(list(keys), dropna=False, sort=False)["duration"].idxmax()
    return summary.loc[idx].reset_index(drop=True)


def _with_order(sel: pd.DataFrame) -> pd.DataFrame:
    """Lines ordered full → LoRA by rank → variant (what legends and tables follow)."""
    if sel.empty:
        return sel
    rank = sel.lora_rank.fillna(-1)
    return sel.assign(_m=(sel.method == "lora").astype(int), _r=rank).sort_values(
        ["_m", "_r", "variant", "label", "duration"], kind="stable").drop(columns=["_m", "_r"]).reset_index(drop=True)


def _table(sel: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    last = at_last_duration(summarise(sel))
    if last.empty:
        return pd.DataFrame(columns=[*columns, "duration", *_SUMMARY_METRICS, "n_seeds"])
    last = _with_order(last)
    cols = [*columns, "duration", *_SUMMARY_METRICS, "n_seeds"]
    if last.source_loss.isna().all():
        cols.remove("source_loss")
    return last[cols]


# ----------------------------------------------------------------------------- Fig 4: regularisation
def regularization_runs(df: pd.DataFrame, domain: str = "code", regime: str = "ift", *,
                        hidden_size: int | None = None, alpha_ratio: float = 2.0) -> pd.DataFrame:
    """Fig 4's lines: full FT at the main learning rate, plain and with weight decay or attention dropout,
    and standard LoRA at the lowest and highest rank present at LoRA's main learning rate. A `role` column
    says which is which ('full FT', 'full FT + weight decay', 'full FT + dropout', 'LoRA low rank',
    'LoRA high rank'; one rank only → 'LoRA high rank')."""
    rows = panel_rows(df, domain, regime)
    if rows.empty:
        return rows.assign(label=[], role=[], variant=[])
    full_lr, lora_lr = main_learning_rate(rows, "full", alpha_ratio), main_learning_rate(rows, "lora", alpha_ratio)
    full = rows[(rows.method == "full") & _close(rows.learning_rate, full_lr)].copy()

    def describe(r: pd.Series) -> tuple[str, str, int]:
        wd, do = r.weight_decay, r.attention_dropout
        if not wd and not do:
            return "full", "full FT", 0
        parts = ([f"wd={wd:g}"] if wd else []) + ([f"dropout={do:g}"] if do else [])
        role = "full FT + weight decay" if wd and not do else "full FT + dropout" if do and not wd else "full FT + both"
        group = {"full FT + weight decay": 0, "full FT + dropout": 1}.get(role, 2)  # wd lines, then dropout
        return "full, " + ", ".join(parts), role, 1 + 100_000 * group + int(1e4 * (wd + do))

    if not full.empty:
        full[["label", "role", "variant"]] = full.apply(lambda r: pd.Series(describe(r)), axis=1)
    lora = rows[_standard_lora(rows, alpha_ratio) & _close(rows.learning_rate, lora_lr)].copy()
    if not lora.empty:
        lo, hi = lora.lora_rank.min(), lora.lora_rank.max()
        lora = lora[lora.lora_rank.isin([lo, hi])]
        lora["label"] = lora.lora_rank.map(lambda r: _pct(r, hidden_size))
        lora["role"] = np.where(lora.lora_rank == hi, "LoRA high rank", "LoRA low rank")
        lora["variant"] = 0
    return _with_order(pd.concat([full, lora], ignore_index=True))


def regularization_table(sel: pd.DataFrame) -> pd.DataFrame:
    """Per line at its last duration: learning, forgetting (and source loss), the change against plain full
    FT, and for LoRA lines whether they forget less than every regularised full FT (None without one)."""
    table = _table(sel, ["label", "role"])
    if table.empty:
        return table.assign(d_learning_vs_full=[], d_forgetting_vs_full=[], forgets_less_than_every_regularised_full=[])
    plain = table[table.role == "full FT"]
    ref_l = plain.learning.mean() if len(plain) else np.nan
    ref_f = plain.forgetting.mean() if len(plain) else np.nan
    table["d_learning_vs_full"] = table.learning - ref_l
    table["d_forgetting_vs_full"] = table.forgetting - ref_f
    reg = table[table.role.str.startswith("full FT +")]
    worst = reg.forgetting.max() if len(reg) else np.nan
    table["forgets_less_than_every_regularised_full"] = [
        (bool(f > worst) if not np.isnan(worst) and not np.isnan(f) else None) if role.startswith("LoRA") else None
        for role, f in zip(table.role, table.forgetting)]
    return table.reset_index(drop=True)


def regularization_verdict(table: pd.DataFrame) -> pd.DataFrame:
    """Fig 4's statements computed on `regularization_table`: 'ours' is None where an arm is missing."""
    def one(role: str) -> pd.Series | None:
        rows = table[table.role == role]
        return rows.iloc[0] if len(rows) else None

    hi, plain = one("LoRA high rank"), one("full FT")
    reg = table[table.role.str.startswith("full FT +")] if len(table) else table
    forgets = "LoRA (highest rank) forgets less than every regularised full FT"
    learns = f"… at similar or lower learning (LoRA ≤ best regularised full FT + {SIMILAR_LEARNING:g})"
    claims = []
    if hi is not None and len(reg):
        worst, best = reg.forgetting.max(), reg.learning.max()
        claims.append(_claim(forgets, True, bool(hi.forgetting > worst),
                             f"LoRA {hi.forgetting:.3f} vs best regularised full {worst:.3f}"))
        claims.append(_claim(learns, True, bool(hi.learning <= best + SIMILAR_LEARNING),
                             f"LoRA {hi.learning:.3f} vs best regularised full {best:.3f}"))
    else:
        claims.append(_claim(forgets, True, None, "needs the regularisation arm and a LoRA run"))
        claims.append(_claim(learns, True, None, "needs the regularisation arm and a LoRA run"))
    if plain is not None and len(reg) and hi is not None:
        moved = float((reg.forgetting - plain.forgetting).abs().max())
        gap = float(abs(hi.forgetting - plain.forgetting))
        claims.append(_claim("weight decay and dropout move full FT's forgetting less than LoRA does", True,
                             bool(moved < gap), f"largest change by a regulariser {moved:.3f}; LoRA vs full {gap:.3f}"))
    else:
        claims.append(_claim("weight decay and dropout move full FT's forgetting less than LoRA does", True, None,
                             "needs plain and regularised full FT and a LoRA run"))
    return pd.DataFrame(claims)


# ----------------------------------------------------------------------------- Fig 7: target modules
def modules_runs(df: pd.DataFrame, domain: str = "code", regime: str = "ift", *,
                 hidden_size: int | None = None, alpha_ratio: float = 2.0) -> pd.DataFrame:
    """Fig 7's lines: LoRA at the main learning rate, α = 2r, no rsLoRA, on attention, MLP or all modules.
    Where some run adapts only attention or only the MLP, only the ranks that have such runs are kept."""
    rows = panel_rows(df, domain, regime)
    if rows.empty:
        return rows.assign(label=[], variant=[])
    lr = main_learning_rate(rows, "lora", alpha_ratio)
    keep = ((rows.method == "lora") & ~rows.use_rslora & _plain(rows) & _close(rows.learning_rate, lr)
            & pd.Series(np.isclose(rows.lora_alpha.astype(float), alpha_ratio * rows.lora_rank.astype(float)),
                        index=rows.index))
    sel = rows[keep].copy()
    partial = sel[sel.target_modules != "all"]
    if len(partial):
        sel = sel[sel.lora_rank.isin(partial.lora_rank.unique())]
    sel["label"] = [f"{_pct(r, hidden_size)}, {m}" for r, m in zip(sel.lora_rank, sel.target_modules)]
    sel["variant"] = sel.target_modules.map(MODULE_ORDER).fillna(9).astype(int)
    return _with_order(sel)


def modules_table(sel: pd.DataFrame) -> pd.DataFrame:
    """Learning and forgetting of each (rank, modules) at every duration (mean over seeds): Fig 7 as numbers."""
    summ = summarise(sel)
    if summ.empty:
        return pd.DataFrame()
    summ = summ.rename(columns={"lora_rank": "rank", "target_modules": "modules"})
    summ["rank"] = summ["rank"].astype(int)
    summ["_o"] = summ.modules.map(MODULE_ORDER)
    piv = summ.pivot_table(index=["rank", "_o", "modules"], columns="duration", values=["learning", "forgetting"])
    piv = piv.droplevel("_o")
    return piv[["learning", "forgetting"]].rename_axis(columns=[None, "duration"])


def modules_verdict(sel: pd.DataFrame) -> pd.DataFrame:
    """Per rank with more than one module set, at the last duration: learning of each module set, the best,
    whether MLP or all beat attention only (the paper: yes) and how far 'all' is from the best."""
    last = at_last_duration(summarise(sel))
    rows = []
    for rank, g in last.groupby("lora_rank"):
        learn = g.set_index("target_modules").learning
        if len(learn) < 2:
            continue
        att = learn.get("attention", np.nan)
        others = learn.drop(labels="attention", errors="ignore")
        rows.append({
            "rank": int(rank), **{f"learning_{m}": learn.get(m, np.nan) for m in MODULE_ORDER},
            "best_modules": learn.idxmax(),
            "mlp_or_all_beats_attention": (None if np.isnan(att) or others.empty else bool(others.max() > att)),
            "all_gap_to_best": float(learn.max() - learn["all"]) if "all" in learn else np.nan,
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Fig S1: learning rate
def _lr_rank(rows: pd.DataFrame, alpha_ratio: float) -> float | None:
    """The LoRA rank of the learning-rate sweep: that of arm 'lr', else the rank with most learning rates
    (ties: the middle one)."""
    lora = rows[_standard_lora(rows, alpha_ratio)]
    if lora.empty:
        return None
    in_arm = lora[lora.arm == "lr"]
    if len(in_arm):
        return float(in_arm.lora_rank.mode().min())
    counts = lora.groupby("lora_rank").learning_rate.nunique()
    best = sorted(counts.index[counts == counts.max()])
    return float(best[(len(best) - 1) // 2])


def lr_runs(df: pd.DataFrame, domain: str = "code", regime: str = "ift", *,
            hidden_size: int | None = None, alpha_ratio: float = 2.0) -> pd.DataFrame:
    """Fig S1's runs: plain full FT at every learning rate, and standard LoRA at the sweep's rank at every
    learning rate (the main grid's rate included)."""
    rows = panel_rows(df, domain, regime)
    if rows.empty:
        return rows.assign(label=[], variant=[])
    rank = _lr_rank(rows, alpha_ratio)
    full = rows[(rows.method == "full") & _plain(rows)]
    lora = rows[_standard_lora(rows, alpha_ratio) & _close(rows.lora_rank, rank)]
    sel = pd.concat([full, lora], ignore_index=True)
    sel["label"] = [f"{'full' if m == 'full' else _pct(r, hidden_size)}, lr={lr:g}"
                    for m, r, lr in zip(sel.method, sel.lora_rank, sel.learning_rate)]
    sel["variant"] = sel.groupby("method").learning_rate.rank(method="dense").fillna(1).astype(int) - 1
    return _with_order(sel)


def lr_table(sel: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, learning rate) at its last duration, sorted by method then rate, with
    `learning_mean` (learning averaged over all durations: how soon it learned) and the run status."""
    table = _table(sel, ["method", "lora_rank", "learning_rate", "label"])
    status = sel.groupby("label").status.first() if "status" in sel and len(sel) else pd.Series(dtype=str)
    mean = summarise(sel).groupby("label").learning.mean() if len(sel) else pd.Series(dtype=float)
    table = table.assign(learning_mean=table.label.map(mean), status=table.label.map(status))
    return table.sort_values(["method", "learning_rate"], kind="stable").reset_index(drop=True)


def _as_lr_table(table: pd.DataFrame) -> pd.DataFrame:
    """Accept an `lr_table` or a long results table (turned into one for code IFT)."""
    return lr_table(lr_runs(table)) if "metric" in table.columns else table


def _tied_best(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows that share the best `metric`; among them, where the table has `learning_mean` and the
    metric is learning, those that share the best mean over durations (a saturated last checkpoint then
    still ranks rates by how soon they learned)."""
    best = rows[np.isclose(rows[metric], rows[metric].max(), rtol=0, atol=1e-12)]
    if metric == "learning" and "learning_mean" in best and len(best) > 1 and best.learning_mean.notna().any():
        best = best[np.isclose(best.learning_mean, best.learning_mean.max(), rtol=0, atol=1e-12)]
    return best


def best_learning_rate(table: pd.DataFrame, method: str, metric: str = "learning") -> float | None:
    """The learning rate with the highest `metric` for `method` ('full' or 'lora') at the last duration;
    ties are broken by the mean learning over all durations (when ranking by learning and the table has
    it), then go to the smaller rate (the safer choice); None if the method has no run with a value.

    `table` is an `lr_table` (or a long results table, from which code IFT's sweep is taken)."""
    table = _as_lr_table(table)
    if table.empty or metric not in table:
        return None
    rows = table[(table.method == method) & table[metric].notna()]
    if rows.empty:
        return None
    return float(_tied_best(rows, metric).learning_rate.min())


def lr_ratio(table: pd.DataFrame, metric: str = "learning") -> float | None:
    """LoRA's best learning rate over full FT's (the paper and LoRA Without Regret: about 10); None if
    either method is missing."""
    table = _as_lr_table(table)
    full, lora = best_learning_rate(table, "full", metric), best_learning_rate(table, "lora", metric)
    return None if full is None or lora is None else lora / full


def lr_grid_summary(table: pd.DataFrame, metric: str = "learning") -> pd.DataFrame:
    """Per method: the rates tried, the best, whether it lies at the edge of the grid (then the optimum may
    lie outside it), the rates tied with it and the grid's step (a factor): how coarse the answer is."""
    table = _as_lr_table(table)
    rows = []
    for method in ("full", "lora"):
        g = table[(table.method == method)].sort_values("learning_rate") if len(table) else table
        lrs = list(g.learning_rate.astype(float)) if len(g) else []
        best = best_learning_rate(table, method, metric)
        valid = g[g[metric].notna()] if len(g) else g
        ties = _tied_best(valid, metric).learning_rate.tolist() if len(valid) else []
        steps = [b / a for a, b in zip(lrs, lrs[1:])]
        rows.append({
            "method": method, "n_rates": len(lrs), "rates": ", ".join(f"{x:g}" for x in lrs),
            "best_rate": best, "tied_rates": ", ".join(f"{x:g}" for x in ties) if len(ties) > 1 else "",
            "best_at_edge": (None if best is None or len(lrs) < 2
                             else bool(math.isclose(best, lrs[0]) or math.isclose(best, lrs[-1]))),
            "grid_step": float(np.exp(np.mean(np.log(steps)))) if steps else np.nan,
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Fig S3: alpha and rsLoRA
def alpha_runs(df: pd.DataFrame, domain: str = "code", regime: str = "ift", *,
               hidden_size: int | None = None, alpha_ratio: float = 2.0) -> pd.DataFrame:
    """Fig S3's lines: LoRA on all modules at the main learning rate and the rank of the α / rsLoRA arms
    (else the highest rank present), at every α, with and without rsLoRA (α/√r instead of α/r).
    Adds `scale` (the factor applied to BA), `alpha_over_rank` and `variant_kind` ('α/r' or 'rsLoRA α/√r')."""
    rows = panel_rows(df, domain, regime)
    if rows.empty:
        return rows.assign(label=[], variant=[])
    lr = main_learning_rate(rows, "lora", alpha_ratio)
    lora = rows[(rows.method == "lora") & (rows.target_modules == "all") & _plain(rows)
                & _close(rows.learning_rate, lr)]
    if lora.empty:
        return lora.assign(label=[], variant=[])
    extra = lora[lora.arm.isin(["alpha", "rslora"])]
    rank = float((extra if len(extra) else lora).lora_rank.max())
    sel = lora[_close(lora.lora_rank, rank)].copy()
    sel["alpha_over_rank"] = sel.lora_alpha / sel.lora_rank
    sel["scale"] = np.where(sel.use_rslora, sel.lora_alpha / np.sqrt(sel.lora_rank), sel.lora_alpha / sel.lora_rank)
    sel["variant_kind"] = np.where(sel.use_rslora, "rsLoRA α/√r", "α/r")

    def label(alpha: float, rs: bool) -> str:
        ratio = alpha / rank
        text = f"{_pct(rank, hidden_size)}, α={alpha:g} ({ratio:g}r)"
        return text + ", rsLoRA" if rs else text

    sel["label"] = [label(a, rs) for a, rs in zip(sel.lora_alpha, sel.use_rslora)]
    default = sel.use_rslora.eq(False) & np.isclose(sel.alpha_over_rank, alpha_ratio)
    order = sel.lora_alpha.rank(method="dense").astype(int)
    sel["variant"] = np.where(default, 0, order + 100 * sel.use_rslora.astype(int))
    return _with_order(sel)


def alpha_table(sel: pd.DataFrame, alpha_ratio: float = 2.0) -> pd.DataFrame:
    """Per (α, rsLoRA) at the last duration: the scale on BA, learning, forgetting; `is_default` marks
    α = 2r without rsLoRA (the paper's choice)."""
    table = _table(sel, ["label", "lora_rank", "lora_alpha", "alpha_over_rank", "use_rslora", "scale"])
    if table.empty:
        return table.assign(is_default=[])
    table["is_default"] = ~table.use_rslora.astype(bool) & np.isclose(table.alpha_over_rank.astype(float), alpha_ratio)
    return table.reset_index(drop=True)


def alpha_verdict(table: pd.DataFrame) -> pd.DataFrame:
    """Is α = 2r the best α (by learning) among plain-α runs, and does rsLoRA do better than α = 2r?"""
    claims = []
    plain_alpha = table[~table.use_rslora.astype(bool)] if len(table) else table
    default = table[table.is_default] if len(table) else table
    if len(plain_alpha) >= 2 and len(default):
        best = plain_alpha.learning.max()
        tied = np.isclose(plain_alpha.learning, best, rtol=0, atol=1e-12).sum()
        claims.append(_claim("α = 2r learns at least as much as the other α values", True,
                             bool(default.learning.iloc[0] >= best - 1e-12),
                             f"α=2r {default.learning.iloc[0]:.3f}; best {best:.3f} at "
                             f"α={plain_alpha.loc[plain_alpha.learning.idxmax(), 'lora_alpha']:g}"
                             + (f" ({tied} α values tie)" if tied > 1 else "")))
    else:
        claims.append(_claim("α = 2r learns at least as much as the other α values", True, None,
                             "needs the α arm (several α at one rank)"))
    rs = table[table.use_rslora.astype(bool)] if len(table) else table
    if len(rs) and len(default):
        claims.append({"statement": "rsLoRA (α/√r) learns more than α = 2r (not in the paper)", "paper": None,
                       "ours": bool(rs.learning.max() > default.learning.iloc[0]), "agrees": None,
                       "detail": f"rsLoRA {rs.learning.max():.3f} vs α=2r {default.learning.iloc[0]:.3f}"})
    else:
        claims.append({"statement": "rsLoRA (α/√r) learns more than α = 2r (not in the paper)", "paper": None,
                       "ours": None, "agrees": None, "detail": "needs the rsLoRA arm and α = 2r at its rank"})
    return pd.DataFrame(claims)


# ----------------------------------------------------------------------------- plots
def _styles(sel: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Colour by method and rank (the house palette), line style and marker by variant within a rank."""
    out: dict[str, dict[str, Any]] = {}
    seen: dict[tuple, int] = {}
    lines = sel.drop_duplicates("label")
    for _, r in lines.iterrows():
        ident = ("full",) if r.method != "lora" else ("lora", float(r.lora_rank))
        n = seen[ident] = seen.get(ident, -1) + 1
        colour = plots.FULL_COLOUR if r.method != "lora" else plots.rank_colour(r.lora_rank)
        out[r.label] = {"color": colour, "linestyle": plots.LINESTYLES[n % len(plots.LINESTYLES)],
                        "marker": MARKERS[n % len(MARKERS)]}
    return out


LEARNING_LABELS = {"code": "learning (pass@1)", "math": "learning (exact match)"}
_YLABELS = {"learning": "learning (pass@1 | exact match)", "forgetting": "source accuracy (forgetting, mean of 3)",
            "source_loss": "held-out source loss"}


def _format_duration(x: float, unit: str) -> str:
    if unit == "tokens":
        for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= div:
                return f"{x / div:g}{suffix}"
    return f"{x:g}"


def _epochs_axis(ax: Any, durations: Iterable[float], unit: str) -> None:
    ticks = sorted({float(d) for d in durations if d > 0})
    if unit == "tokens":
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: _format_duration(x, unit)))
    ax.set_xlabel("training tokens" if unit == "tokens" else "epochs")


def _ylabel(metric: str, sel: pd.DataFrame) -> str:
    """The metric's axis label; learning names its benchmark when the rows have one domain."""
    domains = set(sel.domain.dropna()) if "domain" in sel else set()
    if metric == "learning" and len(domains) == 1:
        return LEARNING_LABELS.get(domains.pop(), _YLABELS["learning"])
    return _YLABELS.get(metric, metric)


def plot_vs_duration(sel: pd.DataFrame, metrics: Sequence[str] = ("learning", "forgetting"), *,
                     base: dict[str, float] | None = None, title: str = "") -> Figure:
    """One panel per metric against training duration, one line per `label` (mean over seeds; a band
    where several seeds exist), the base model dashed."""
    plots.style()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 2.6, 3.2), squeeze=False,
                             layout="constrained")
    styles = _styles(sel)
    summ = summarise(sel)
    unit = sel.duration_unit.dropna().iloc[0] if len(sel) and sel.duration_unit.notna().any() else "epochs"
    handles: dict[str, Any] = {}
    for ax, metric in zip(axes[0], metrics):
        for label in styles:
            g = summ[summ.label == label].sort_values("duration")
            raw = sel[sel.label == label].groupby("duration")[metric].agg(["min", "max"])
            (line,) = ax.plot(g.duration, g[metric], label=label, **styles[label])
            if (g.n_seeds > 1).any():
                ax.fill_between(raw.index, raw["min"], raw["max"], color=styles[label]["color"], alpha=0.15, lw=0)
            handles.setdefault(label, line)
        if base and not np.isnan(base.get(metric, np.nan)):
            handles.setdefault("base model", ax.axhline(base[metric], color=plots.BASE_COLOUR, ls="--", lw=1.2))
        ax.set_ylabel(_ylabel(metric, sel))
        _epochs_axis(ax, sel.duration, unit)
    if handles:
        axes[0, -1].legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.03, 1.0))
    if title:
        fig.suptitle(title, fontweight="bold")
    return fig


def plot_tradeoff(sel: pd.DataFrame, *, base: dict[str, float] | None = None, title: str = "") -> Figure:
    """Learning (x) against forgetting (y, source accuracy): a line through each label's checkpoints,
    marker area growing with duration, the base model a grey star."""
    plots.style()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    styles = _styles(sel)
    summ = summarise(sel)
    if len(summ):
        logs = np.log(summ.duration.clip(lower=1e-12).astype(float))
        span = logs.max() - logs.min()
        summ = summ.assign(size=20 + 110 * ((logs - logs.min()) / span if span > 0 else 0.5))
    for label, kw in styles.items():
        g = summ[summ.label == label].sort_values("duration")
        ax.plot(g.learning, g.forgetting, color=kw["color"], linestyle=kw["linestyle"], marker=kw["marker"],
                markersize=4, lw=1.2, label=label)
        ax.scatter(g.learning, g.forgetting, s=g["size"], color=kw["color"], marker=kw["marker"], zorder=3)
    if base and not np.isnan(base.get("learning", np.nan)):
        ax.scatter([base["learning"]], [base["forgetting"]], marker="*", s=160, color=plots.BASE_COLOUR,
                   label="base model", zorder=4)
    ax.set(xlabel=_ylabel("learning", sel), ylabel=_YLABELS["forgetting"])
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0))
    if title:
        ax.set_title(title)
    return fig


def plot_lr_sweep(table: pd.DataFrame, metrics: Sequence[str] = ("learning", "forgetting"), *,
                  hidden_size: int | None = None, base: dict[str, float] | None = None,
                  domain: str | None = None) -> Figure:
    """Fig S1: each metric at the last duration against the learning rate (log axis), full FT and LoRA;
    the best rate (by learning) of each method ringed."""
    plots.style()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 2.4, 3.2), squeeze=False,
                             layout="constrained")
    best = {m: best_learning_rate(table, m) for m in ("full", "lora")}
    for ax, metric in zip(axes[0], metrics):
        for method, g in table.groupby("method", sort=True):
            g = g.sort_values("learning_rate")
            rank = g.lora_rank.iloc[0]
            colour = plots.FULL_COLOUR if method == "full" else plots.rank_colour(rank)
            label = "full" if method == "full" else _pct(rank, hidden_size)
            ax.plot(g.learning_rate, g[metric], marker="o", color=colour, label=label)
            if best.get(method) is not None:
                b = g[np.isclose(g.learning_rate, best[method])]
                ax.scatter(b.learning_rate, b[metric], s=150, facecolors="none", edgecolors=colour, lw=1.6,
                           label=f"best rate ({'full' if method == 'full' else 'LoRA'})")
        if base and not np.isnan(base.get(metric, np.nan)):
            ax.axhline(base[metric], color=plots.BASE_COLOUR, ls="--", lw=1.2, label="base model")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sorted(table.learning_rate.unique())))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: f"{x:g}"))
        ylabel = LEARNING_LABELS.get(domain or "", _YLABELS["learning"]) if metric == "learning" else None
        ax.set(xlabel="learning rate", ylabel=ylabel or _YLABELS.get(metric, metric))
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.03, 1.0))
    return fig


# ----------------------------------------------------------------------------- Tables S14–S16, Fig S10
def paper_memory_comparison(model: str) -> pd.DataFrame:
    """Table S14 (7B), S15 (70B) or S16 (405B, Adam rows only): GB per GPU from `memory.paper_table` beside
    the printed numbers, with a `matches` column (every GPU count agrees to the printed precision) and
    `mismatches` listing the GPU counts that do not."""
    gpus = PAPER_GPUS[model]
    rows = []
    for r in paper_table(model, gpus):  # type: ignore[arg-type]
        printed = PAPER_PRINTED_GB.get((model, r["setting"]))
        if printed is None:
            continue
        row: dict[str, Any] = {"setting": r["setting"]}
        bad = []
        for g, p in zip(gpus, printed):
            row[(f"{g} GPU" if g == 1 else f"{g} GPUs", "ours")] = round(r[g], 6)
            row[(f"{g} GPU" if g == 1 else f"{g} GPUs", "paper")] = float(p)
            if not agrees_to_printed(r[g], p):
                bad.append(str(g))
        row[("matches", "")] = not bad
        row[("mismatches", "")] = ", ".join(f"{b} GPUs" for b in bad)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("setting")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def profile_model(profile: Any) -> tuple[ModelShapes | None, int | None, str]:
    """The shapes and exact parameter count of a profile's base model, without building or downloading it:
    the mini base's `config.json` / `base.json` in the cache, or a pretrained model's config if available
    locally. Returns (None, None, why) when neither can be read."""
    from lorastudy.memory import llama_shapes

    if profile.base.kind == "mini":
        from lorastudy.modeling import mini_base_dir

        folder = mini_base_dir(profile)
        cfg_path, info_path = folder / "config.json", folder / "base.json"
        if not cfg_path.is_file():
            return None, None, f"the mini base is not built yet ({folder})"
        cfg = json.loads(cfg_path.read_text())
    else:
        try:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(profile.base.model, revision=profile.base.revision,
                                             local_files_only=True).to_dict()
        except Exception as err:  # noqa: BLE001 - no local copy: say so, do not download
            return None, None, f"no local config for {profile.base.model}: {type(err).__name__}"
        info_path = None
    heads = cfg.get("num_attention_heads")
    kv = cfg.get("num_key_value_heads")
    head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // heads if heads else None)
    shapes = llama_shapes(cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"],
                          n_kv_heads=kv if kv and kv != heads else None, head_dim=head_dim, vocab=cfg["vocab_size"])
    n_params = shapes.n_params - (cfg["vocab_size"] * cfg["hidden_size"] if cfg.get("tie_word_embeddings") else 0)
    if info_path is not None and info_path.is_file():
        n_params = int(json.loads(info_path.read_text()).get("parameters", n_params))
    return shapes, n_params, "read from the base's config"


def lora_size_table(models: dict[str, tuple[ModelShapes, int, int]], ranks: Sequence[int] = (16, 64, 256),
                    optimizer: str = "adam", paper_fraction: float = 0.01) -> pd.DataFrame:
    """Per model and rank: exact LoRA parameters (all seven linear modules), their fraction of the base
    (the paper assumes 1%), and the model-state memory of full FT vs LoRA with that true fraction.

    models: name → (shapes, exact parameter count Ψ, bytes per frozen weight: 2 for bf16, 4 for fp32)."""
    rows = []
    for name, (shapes, n_params, frozen_bytes) in models.items():
        full = model_state_bytes(n_params, method="full", optimizer=optimizer)["total_bytes"]  # type: ignore[arg-type]
        for r in ranks:
            n_lora = lora_param_count(shapes.modules, shapes.n_layers, r)
            frac = n_lora / n_params
            lora = model_state_bytes(n_params, method="lora", optimizer=optimizer, lora_fraction=frac,  # type: ignore[arg-type]
                                     frozen_dtype_bytes=frozen_bytes)["total_bytes"]
            rows.append({"model": name, "hidden": shapes.hidden, "rank": r, "rank_of_d": r / shapes.hidden,
                         "params": n_params, "lora_params": n_lora, "lora_fraction": frac,
                         "paper_assumes": paper_fraction, "frozen_bytes": frozen_bytes,
                         "full_state_GB": full / GB, "lora_state_GB": lora / GB,
                         "lora_saves": 1 - lora / full})
    return pd.DataFrame(rows)


def state_vs_activations(shapes: ModelShapes, n_params: int, batch_sizes: Sequence[int], seq: int,
                         ranks: Sequence[int], dtype_bytes: int = 4, optimizer: str = "adam",
                         lora_dropout: bool = True) -> pd.DataFrame:
    """For our own model: model states (weights, gradients, optimizer) of full FT and LoRA beside estimates
    of what one batch keeps for backward, in MiB: what a peak-memory measurement at these batch sizes is
    made of. Estimates, not measurements:

    activations_MiB: `memory.activation_bytes` (the frozen or trained blocks, the same for both methods);
    logits_MiB: the logits and their gradient (batch·seq·vocab, twice);
    lora_extra_MiB: what LoRA adds on top: the rank-r intermediate of each adapted matrix and, with LoRA
    dropout (peft applies it to the input of every adapted module separately), a dropped-out copy of each
    module's input and its mask."""
    from lorastudy.memory import activation_bytes

    rows = []
    configs = [("full", None)] + [("lora", r) for r in ranks]
    in_dims = sum(i for _o, i in shapes.modules.values())
    for b in batch_sizes:
        tokens = b * seq
        act = activation_bytes(b, seq, shapes.hidden, shapes.n_layers, shapes.intermediate, dtype_bytes=dtype_bytes)
        logits = tokens * shapes.vocab * dtype_bytes * 2
        for method, r in configs:
            frac = 0.0 if r is None else lora_param_count(shapes.modules, shapes.n_layers, r) / n_params
            state = model_state_bytes(n_params, method=method, optimizer=optimizer,  # type: ignore[arg-type]
                                      lora_fraction=frac, frozen_dtype_bytes=dtype_bytes)["total_bytes"]
            extra = 0.0
            if r is not None:
                extra = tokens * shapes.n_layers * (len(shapes.modules) * r * dtype_bytes
                                                    + (in_dims * (dtype_bytes + 1) if lora_dropout else 0))
            rows.append({"batch": b, "method": method, "rank": r, "model_state_MiB": state / 2**20,
                         "activations_MiB": act / 2**20, "logits_MiB": logits / 2**20, "lora_extra_MiB": extra / 2**20,
                         "state_share": state / (state + act + logits + extra)})
    return pd.DataFrame(rows)


def shapes_with_count(architecture: Any, n_params: int) -> ModelShapes:
    """The shapes of a mini Llama (`config.Architecture`) whose tied-embedding model has `n_params`
    parameters: the vocabulary is what the count leaves (e.g. the benchmark's model, from its full-FT
    trainable parameter count)."""
    from lorastudy.memory import llama_shapes

    a = architecture
    blocks = llama_shapes(a.hidden_size, a.intermediate_size, a.num_layers, vocab=0)
    vocab = (n_params - blocks.n_params) / a.hidden_size
    if vocab <= 0 or abs(vocab - round(vocab)) > 1e-6:
        raise ValueError(f"{n_params} parameters do not fit the architecture {a} with tied embeddings")
    return llama_shapes(a.hidden_size, a.intermediate_size, a.num_layers, vocab=int(round(vocab)))


def bench_configs(ranks: Sequence[int], batch_sizes: Sequence[int], mode: str = "trainer") -> list[tuple[str, int, int]]:
    """(mode, rank, batch) of every measurement: full FT and LoRA at each rank, at each batch size."""
    if mode not in {"trainer", "bare"}:
        raise ValueError(f"mode must be 'trainer' or 'bare', not {mode!r}")
    return [(f"{mode}-full", 0, b) for b in batch_sizes] + [(f"{mode}-lora", r, b) for b in batch_sizes for r in ranks]


# Imports once, then forks a child per measurement: each child is its own process (its peak memory counter
# starts from the parent's resident set, as a fresh process's would after the same imports) without paying
# the imports (seconds) again. The parent runs no tensor code, so no thread pool or CUDA context is forked.
_FORK_HELPER = r"""
import json, os, sys, time, traceback
import lorastudy.bench as bench
import peft, transformers
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback
from lorastudy.config import RunSpec, load_profile
from lorastudy.modeling import apply_lora
from lorastudy.training import PadCollator, peak_memory_bytes, training_arguments
profile, steps, configs = json.loads(sys.argv[1])
for mode, rank, batch in configs:
    start = time.perf_counter()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = bench.measure(profile, mode, rank, batch, steps)
        except BaseException:
            out = {"mode": mode, "rank": rank or None, "batch": batch, "error": traceback.format_exc()[-400:]}
        with os.fdopen(w, "wb") as fh:
            fh.write(json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    try:
        out = json.loads(data)
    except ValueError:
        out = {"mode": mode, "rank": rank or None, "batch": batch, "error": f"measurement process ended with status {status}"}
    out["wall_s"] = time.perf_counter() - start
    print("RESULT " + json.dumps(out), flush=True)
"""


def _env(threads: int | None) -> dict[str, str] | None:
    """The environment of a measuring process: `threads` intra-op threads, or the torch default (None)."""
    if not threads:
        return None
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _measure_forked(profile_name: str, configs: list[tuple[str, int, int]], steps: int,
                    timeout: float, threads: int | None) -> list[dict[str, Any]]:
    payload = json.dumps([profile_name, steps, configs])
    try:
        proc = subprocess.run([sys.executable, "-c", _FORK_HELPER, payload], capture_output=True, text=True,
                              timeout=timeout, env=_env(threads))
    except subprocess.TimeoutExpired:
        return [{"mode": m, "rank": r or None, "batch": b, "error": f"timeout after {timeout} s"} for m, r, b in configs]
    rows = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    done = {(row["mode"], row.get("rank") or 0, row["batch"]) for row in rows}
    rows += [{"mode": m, "rank": r or None, "batch": b, "error": proc.stderr.strip()[-400:] or "no result"}
             for m, r, b in configs if (m, r, b) not in done]
    return rows


def _measure_process(profile_name: str, mode: str, rank: int, batch: int, steps: int, timeout: float,
                     threads: int | None) -> dict[str, Any]:
    code = ("import json, lorastudy.bench as b; "
            f"print(json.dumps(b.measure({profile_name!r}, {mode!r}, {rank}, {batch}, {steps})))")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env=_env(threads))
        row = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else
               {"mode": mode, "rank": rank or None, "batch": batch, "error": proc.stderr.strip()[-400:]})
    except subprocess.TimeoutExpired:
        row = {"mode": mode, "rank": rank or None, "batch": batch, "error": f"timeout after {timeout} s"}
    return {**row, "wall_s": time.perf_counter() - start}


def run_bench(profile_name: str, *, ranks: Sequence[int], batch_sizes: Sequence[int], steps: int,
              cache_dir: Path | None = None, mode: str = "trainer", key: str = "", timeout: float = 600,
              isolation: str = "fork", threads: int | None = None) -> pd.DataFrame:
    """Measure each configuration with `lorastudy.bench.measure` in a process of its own, so that its peak
    memory is its own, and cache each result as JSON in `cache_dir` (file name: `key`, e.g. a hash of the
    model shape, then mode, rank, batch and steps); a failed measurement becomes a row with its `error`.

    isolation: 'fork' (one helper process imports torch and transformers once and forks a child per
    measurement: seconds saved per measurement; POSIX only) or 'process' (a fresh interpreter each).
    threads: intra-op threads of the measuring processes (None: torch's default, one per core). On a
    shared machine one thread is far steadier: with every core busy, a 2-thread step can take 10× longer.
    Returns one row per configuration with `wall_s` (the measurement's own time) and `cached`."""
    from lorastudy.io import write_json

    if steps < 3:
        raise ValueError("bench steps must be at least 3 (the first two are warm-up)")
    if isolation not in {"fork", "process"}:
        raise ValueError(f"isolation must be 'fork' or 'process', not {isolation!r}")
    configs = bench_configs(ranks, batch_sizes, mode)

    def path(m: str, rank: int, batch: int) -> Path | None:
        return cache_dir / f"{key}{m}-r{rank}-b{batch}-s{steps}.json" if cache_dir else None

    cached = {c: json.loads(path(*c).read_text()) for c in configs if path(*c) is not None and path(*c).is_file()}
    todo = [c for c in configs if c not in cached]
    fresh: dict[tuple[str, int, int], dict[str, Any]] = {}
    if todo and isolation == "fork" and hasattr(os, "fork"):
        for row in _measure_forked(profile_name, todo, steps, timeout, threads):
            fresh[(row["mode"], row.get("rank") or 0, row["batch"])] = row
    else:
        for c in todo:
            fresh[c] = _measure_process(profile_name, *c, steps, timeout, threads)
    rows = []
    for c in configs:
        if c in cached:
            rows.append({**cached[c], "cached": True})
            continue
        row = fresh[c]
        if "error" not in row and path(*c) is not None:
            write_json(path(*c), row)
        rows.append({**row, "cached": False})
    out = pd.DataFrame(rows)
    out["method"] = out["mode"].str.split("-").str[1]
    return out


def bench_summary(bench: pd.DataFrame) -> pd.DataFrame:
    """Per batch size and configuration: tokens/s and peak memory, and each as a ratio to full FT at the
    same batch size (the paper, Fig S10: throughput ~0.85, memory ~0.6 at small and ~0.85 at large batch)."""
    ok = bench[bench.get("tokens_per_s", pd.Series(np.nan, index=bench.index)).notna()].copy()
    if ok.empty:
        return pd.DataFrame()
    full = ok[ok.method == "full"].set_index("batch")
    ok["throughput_vs_full"] = ok.tokens_per_s / ok.batch.map(full.tokens_per_s)
    ok["memory_vs_full"] = ok.peak_memory_MiB / ok.batch.map(full.peak_memory_MiB)
    ok["rank"] = ok["rank"].astype("Int64")
    cols = ["batch", "method", "rank", "trainable_params", "tokens_per_s", "peak_memory_MiB",
            "throughput_vs_full", "memory_vs_full", *(["threads"] if "threads" in ok else [])]
    return ok.sort_values(["batch", "method", "rank"], na_position="first")[cols].reset_index(drop=True)


def bench_verdict(summary: pd.DataFrame) -> pd.DataFrame:
    """Fig S10's statements on `bench_summary`: LoRA slower; LoRA less peak memory; the memory saving
    smaller at the largest batch than at the smallest (None where there is nothing to compare)."""
    lora = summary[summary.method == "lora"] if len(summary) else summary
    if lora.empty:
        return pd.DataFrame([_claim(s, True, None, "no LoRA measurement") for s in
                             ("LoRA trains slower than full FT", "LoRA needs less peak memory than full FT",
                              "LoRA's memory saving shrinks as the batch grows")])
    thr, mem = lora.throughput_vs_full, lora.memory_vs_full
    by_batch = lora.groupby("batch").memory_vs_full.mean().sort_index()
    claims = [
        _claim("LoRA trains slower than full FT", True, bool(thr.mean() < 1),
               f"LoRA/full tokens per s: {thr.min():.2f}–{thr.max():.2f} (paper ~0.85)"),
        _claim("LoRA needs less peak memory than full FT", True, bool((mem < 1).all()),
               f"LoRA/full peak memory: {mem.min():.2f}–{mem.max():.2f} (paper ~0.6 small batch, ~0.85 large)"),
    ]
    if len(by_batch) >= 2 and by_batch.iloc[0] >= 1:
        claims.append(_claim("LoRA's memory saving shrinks as the batch grows", True, None,
                             f"LoRA saves no memory at the smallest batch (ratio {by_batch.iloc[0]:.2f} at batch "
                             f"{by_batch.index[0]}), so there is no saving to shrink"))
    elif len(by_batch) >= 2:
        claims.append(_claim("LoRA's memory saving shrinks as the batch grows", True,
                             bool(by_batch.iloc[-1] > by_batch.iloc[0]),
                             f"ratio {by_batch.iloc[0]:.2f} at batch {by_batch.index[0]}, "
                             f"{by_batch.iloc[-1]:.2f} at batch {by_batch.index[-1]}"))
    else:
        claims.append(_claim("LoRA's memory saving shrinks as the batch grows", True, None, "one batch size only"))
    return pd.DataFrame(claims)


def plot_bench(bench: pd.DataFrame, hidden_size: int | None = None) -> Figure:
    """Fig S10: training throughput and peak memory against batch size, full FT and LoRA per rank."""
    plots.style()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.2), layout="constrained")
    ok = bench[bench.get("tokens_per_s", pd.Series(np.nan, index=bench.index)).notna()]
    for (method, rank), g in ok.groupby([ok.method, ok["rank"].fillna(0)], sort=True):
        g = g.sort_values("batch")
        colour = plots.FULL_COLOUR if method == "full" else plots.rank_colour(rank)
        label = plots.method_label(method, rank, hidden_size)
        for ax, col in zip(axes, ["tokens_per_s", "peak_memory_MiB"]):
            ax.plot(g.batch, g[col], marker="o", color=colour, label=label)
    for ax, ylabel in zip(axes, ["training tokens / s", "peak memory (MiB)"]):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(sorted(ok.batch.unique())) if len(ok) else NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: f"{x:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set(xlabel="batch size (sequences)", ylabel=ylabel)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.03, 1.0))
    return fig
