"""Chapter 14 (the paper's Figs 7, S1 and S3): how sensitive LoRA is to its target modules, its learning
rate and its scaling α (with rsLoRA as an extra arm), on one panel (code IFT, as in the paper)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Fig S2's table lives with the arm claims; chapter 14 reads it from here (an explicit re-export)
from lorastudy.analysis.arm_claims import optimizer_comparison as optimizer_comparison
from lorastudy.analysis.selection import (
    close_to,
    default_alpha,
    last_duration_table,
    main_learning_rate,
    panel_ranks,
    panel_rows,
    plain,
    standard_lora,
    summarise,
    with_order,
)
from lorastudy.paper import PAPER_HIDDEN_SIZE, PAPER_LR_RATIO, PAPER_RANKS
from lorastudy.plan import method_label

MODULE_ORDER = {"all": 0, "mlp": 1, "attention": 2}


def _ranks_of_d(ranks: list[int] | tuple[int, ...], hidden: int) -> str:
    return ", ".join(f"r={r} ({r / hidden:.1%} of d)" for r in ranks)


def ranks_text(df: pd.DataFrame, domain: str, regime: str, hidden_size: int | None) -> str:
    """Our ranks (given the hidden size d) and the paper's, each as a number and as a fraction of d."""
    lines = []
    if hidden_size:
        lines.append(f"hidden size d = {hidden_size}; LoRA ranks of the {domain} {regime.upper()} runs: "
                     + _ranks_of_d(panel_ranks(df, domain, regime), hidden_size))
    lines.append(f"the paper (d = {PAPER_HIDDEN_SIZE}): " + _ranks_of_d(PAPER_RANKS, PAPER_HIDDEN_SIZE))
    return "\n".join(lines)


def arm_rate(rows: pd.DataFrame, arms: list[str], alpha_ratio: float) -> float | None:
    """The learning rate of an extra arm's runs (its baseline is the main grid's seed-0 run at that rate, which
    the candidates train), else LoRA's main rate."""
    extra = rows[rows.arm.isin(arms)]
    return float(extra.learning_rate.mode().min()) if len(extra) else main_learning_rate(rows, "lora", alpha_ratio)


# ----------------------------------------------------------------------------- Fig 7: target modules
def modules_runs(df: pd.DataFrame, domain: str = "code", regime: str = "ift", *,
                 hidden_size: int | None = None, alpha_ratio: float = 2.0) -> pd.DataFrame:
    """Fig 7's lines: LoRA at the modules arm's learning rate, α = 2r, no rsLoRA, on attention, MLP or all
    modules. Where some run adapts only attention or only the MLP, only the ranks that have such runs are kept."""
    rows = panel_rows(df, domain, regime)
    if rows.empty:
        return rows.assign(label=[], variant=[])
    lr = arm_rate(rows, ["modules"], alpha_ratio)
    keep = ((rows.method == "lora") & ~rows.use_rslora & plain(rows) & close_to(rows.learning_rate, lr)
            & default_alpha(rows, alpha_ratio))
    sel = rows[keep].copy()
    partial = sel[sel.target_modules != "all"]
    if len(partial):
        sel = sel[sel.lora_rank.isin(partial.lora_rank.unique())]
    sel["label"] = [f"{method_label('lora', r, hidden_size)}, {m}" for r, m in zip(sel.lora_rank, sel.target_modules)]
    sel["variant"] = sel.target_modules.map(MODULE_ORDER).fillna(9).astype(int)
    return with_order(sel)


def has_modules_arm(sel: pd.DataFrame) -> bool:
    """Whether some run of the selection adapts attention only or the MLP only (the modules arm)."""
    return bool(len(sel) and (sel.target_modules != "all").any())


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


# ----------------------------------------------------------------------------- Fig S1: learning rate
def _lr_rank(rows: pd.DataFrame, alpha_ratio: float) -> float | None:
    """The LoRA rank of the learning-rate sweep: that of arm 'lr', else the rank with most learning rates
    (ties: the middle one)."""
    lora = rows[standard_lora(rows, alpha_ratio)]
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
    full = rows[(rows.method == "full") & plain(rows)]
    lora = rows[standard_lora(rows, alpha_ratio) & close_to(rows.lora_rank, rank)]
    sel = pd.concat([full, lora], ignore_index=True)
    sel["label"] = [f"{'full' if m == 'full' else method_label('lora', r, hidden_size)}, lr={lr:g}"
                    for m, r, lr in zip(sel.method, sel.lora_rank, sel.learning_rate)]
    sel["variant"] = sel.groupby("method").learning_rate.rank(method="dense").fillna(1).astype(int) - 1
    return with_order(sel)


def lr_table(sel: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, learning rate) at its last duration, sorted by method then rate, with
    `learning_mean` (learning averaged over all durations: how soon it learned) and the run status."""
    table = last_duration_table(sel, ["method", "lora_rank", "learning_rate", "label"])
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


def has_lr_sweep(grid: pd.DataFrame) -> bool:
    """Whether every method of an `lr_grid_summary` was run at more than one rate (the lr arm)."""
    return not (grid.n_rates < 2).any()


def lr_ratio_text(table: pd.DataFrame, grid: pd.DataFrame) -> str:
    """Markdown: the best LoRA rate over the best full-FT rate beside the paper's, and how coarsely the
    grid (`lr_grid_summary`) resolves it."""
    ratio = lr_ratio(table)
    if ratio is None:
        return "No ratio: one of the methods has no run with a learning value."
    step = float(grid.grid_step.max()) if grid.grid_step.notna().any() else float("nan")
    if step == step:
        coarse = (f"Each best rate is known only to within a grid step (a factor of about {step:.1f}), so the ratio "
                  f"is resolved only to roughly {ratio / step:.2g}–{ratio * step:.2g}.")
    else:
        coarse = "With one rate per method this is no sweep: the ratio is that of the two rates the profile chose."
    return (f"**Best LoRA rate / best full fine-tuning rate = {ratio:.3g}** (the paper and LoRA Without Regret: "
            f"about {PAPER_LR_RATIO:g}). {coarse}")


# ----------------------------------------------------------------------------- Fig S3: alpha and rsLoRA
def alpha_runs(df: pd.DataFrame, domain: str = "code", regime: str = "ift", *,
               hidden_size: int | None = None, alpha_ratio: float = 2.0) -> pd.DataFrame:
    """Fig S3's lines: LoRA on all modules at the α arm's learning rate and the rank of the α / rsLoRA arms
    (else the highest rank present), at every α, with and without rsLoRA (α/√r instead of α/r).
    Adds `scale` (the factor applied to BA), `alpha_over_rank` and `variant_kind` ('α/r' or 'rsLoRA α/√r')."""
    rows = panel_rows(df, domain, regime)
    if rows.empty:
        return rows.assign(label=[], variant=[])
    lr = arm_rate(rows, ["alpha", "rslora"], alpha_ratio)
    lora = rows[(rows.method == "lora") & (rows.target_modules == "all") & plain(rows)
                & close_to(rows.learning_rate, lr)]
    if lora.empty:
        return lora.assign(label=[], variant=[])
    extra = lora[lora.arm.isin(["alpha", "rslora"])]
    rank = float((extra if len(extra) else lora).lora_rank.max())
    sel = lora[close_to(lora.lora_rank, rank)].copy()
    sel["alpha_over_rank"] = sel.lora_alpha / sel.lora_rank
    sel["scale"] = np.where(sel.use_rslora, sel.lora_alpha / np.sqrt(sel.lora_rank), sel.lora_alpha / sel.lora_rank)
    sel["variant_kind"] = np.where(sel.use_rslora, "rsLoRA α/√r", "α/r")

    def label(alpha: float, rs: bool) -> str:
        ratio = alpha / rank
        text = f"{method_label('lora', rank, hidden_size)}, α={alpha:g} ({ratio:g}r)"
        return text + ", rsLoRA" if rs else text

    sel["label"] = [label(a, rs) for a, rs in zip(sel.lora_alpha, sel.use_rslora)]
    default = sel.use_rslora.eq(False) & np.isclose(sel.alpha_over_rank, alpha_ratio)
    order = sel.lora_alpha.rank(method="dense").astype(int)
    sel["variant"] = np.where(default, 0, order + 100 * sel.use_rslora.astype(int))
    return with_order(sel)


def alpha_table(sel: pd.DataFrame, alpha_ratio: float = 2.0) -> pd.DataFrame:
    """Per (α, rsLoRA) at the last duration: the scale on BA, learning, forgetting; `is_default` marks
    α = 2r without rsLoRA (the paper's choice)."""
    table = last_duration_table(sel, ["label", "lora_rank", "lora_alpha", "alpha_over_rank", "use_rslora", "scale"])
    if table.empty:
        return table.assign(is_default=[])
    table["is_default"] = ~table.use_rslora.astype(bool) & np.isclose(table.alpha_over_rank.astype(float), alpha_ratio)
    return table.reset_index(drop=True)


def has_alpha_arm(table: pd.DataFrame) -> bool:
    """Whether an `alpha_table` has several α without rsLoRA at its rank (the alpha arm)."""
    return bool(len(table) >= 2 and (~table.use_rslora.astype(bool)).sum() >= 2)


def has_rslora_arm(table: pd.DataFrame) -> bool:
    """Whether an `alpha_table` has an rsLoRA run (the rslora arm)."""
    return bool(table.use_rslora.astype(bool).any())


# ----------------------------------------------------------------------------- Fig S2: LionW against AdamW
def lion_runs(df: pd.DataFrame, domain: str = "code", regime: str = "ift", *,
              hidden_size: int | None = None) -> pd.DataFrame:
    """Fig S2's lines: every LionW run and, for the same method and rank, the main grid's AdamW candidates
    (seed 0, all modules, α as the main grid, no regulariser). Empty without LionW runs."""
    rows = panel_rows(df, domain, regime)
    lion = rows[rows.optimizer == "lion"] if len(rows) else rows
    if lion.empty:
        return lion.assign(label=[], variant=[])
    keys = set(zip(lion.method, lion.lora_rank.fillna(-1)))
    same = pd.Series([(m, r) in keys for m, r in zip(rows.method, rows.lora_rank.fillna(-1))], index=rows.index)
    sel = rows[same & (rows.seed == 0) & (rows.weight_decay == 0) & (rows.attention_dropout == 0)
               & (rows.target_modules.fillna("all") == "all") & ~rows.use_rslora
               & rows.arm.isin(["full", "lora", "lion"])].copy()
    sel["label"] = [f"{method_label(m, r, hidden_size)}, {'LionW' if o == 'lion' else 'AdamW'}, lr={lr:g}"
                    for m, r, o, lr in zip(sel.method, sel.lora_rank, sel.optimizer, sel.learning_rate)]
    sel["variant"] = (sel.optimizer == "lion").astype(int) * 10 + sel.groupby(
        ["method", "optimizer"]).learning_rate.rank(method="dense").astype(int)
    return with_order(sel)
