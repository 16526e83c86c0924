"""Chapter 11 (the paper's Fig 4): does LoRA regularise more than weight decay or attention dropout?

Full fine-tuning at its main learning rate, plain and with weight decay or attention dropout, against standard
LoRA at the lowest and highest rank of the panel, on one panel (code IFT, as in the paper).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lorastudy.analysis.selection import (
    close_to,
    last_duration_table,
    main_learning_rate,
    panel_rows,
    standard_lora,
    with_order,
)
from lorastudy.plan import method_label

REGULARISED = "full FT +"  # the start of every regularised full-FT role


def regularization_runs(df: pd.DataFrame, domain: str = "code", regime: str = "ift", *,
                        hidden_size: int | None = None, alpha_ratio: float = 2.0) -> pd.DataFrame:
    """Fig 4's lines: full FT at the main learning rate, plain and with weight decay or attention dropout,
    and standard LoRA at the lowest and highest rank present at LoRA's main learning rate. A `role` column
    says which is which ('full FT', 'full FT + weight decay', 'full FT + dropout', 'LoRA low rank',
    'LoRA high rank'; one rank only → 'LoRA high rank')."""
    rows = panel_rows(df, domain, regime)
    if rows.empty:
        return rows.assign(label=[], role=[], variant=[])
    regularised = rows[(rows.method == "full") & ((rows.weight_decay > 0) | (rows.attention_dropout > 0))]
    # plain full FT at the regularised runs' rate (the candidates train every rate with seed 0), else the main one
    full_lr = (float(regularised.learning_rate.mode().min()) if len(regularised)
               else main_learning_rate(rows, "full", alpha_ratio))
    full = rows[(rows.method == "full") & close_to(rows.learning_rate, full_lr)
                & (rows.optimizer == "adamw")].copy()

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
    std = rows[standard_lora(rows, alpha_ratio)]
    lora = std.iloc[0:0]
    if not std.empty:  # each rank at its own main (validation-chosen: most seeds) rate
        lo, hi = std.lora_rank.min(), std.lora_rank.max()
        picks = [std[(std.lora_rank == r) & close_to(std.learning_rate, main_learning_rate(std[std.lora_rank == r], "lora", alpha_ratio))]
                 for r in sorted({lo, hi})]
        lora = pd.concat(picks).copy()
        lora["label"] = lora.lora_rank.map(lambda r: method_label("lora", r, hidden_size))
        lora["role"] = np.where(lora.lora_rank == hi, "LoRA high rank", "LoRA low rank")
        lora["variant"] = 0
    return with_order(pd.concat([full, lora], ignore_index=True))


def has_regularised(sel: pd.DataFrame) -> bool:
    """Whether the selection has regularised full FT (the regularization arm)."""
    return bool(sel.role.str.startswith(REGULARISED).any()) if len(sel) else False


def runs_text(sel: pd.DataFrame) -> str:
    """'4 runs in the comparison: full, full, wd=0.1, …': the chapter's opening line."""
    return f"{sel.run_id.nunique()} runs in the comparison: " + ", ".join(sel.drop_duplicates("label").label)


def decay_table(sel: pd.DataFrame) -> pd.DataFrame:
    """Weight decay in our optimizer's units, per run with weight decay (not the high-rank LoRA line): the
    decay per step at the peak learning rate (AdamW multiplies `weight_decay` by the rate), the step count
    and the most the decay alone can shrink a weight over those steps, 1 − (1 − lr·wd)^steps, at each
    run's longest duration (its last checkpoint). Empty without such runs."""
    reg_runs = sel[sel.role != "LoRA high rank"] if len(sel) else sel
    if len(reg_runs):  # each run's last checkpoint, runs in the selection's order
        last_rows = reg_runs.loc[reg_runs.groupby("run_id", sort=False).step.idxmax()]
        reg_runs = last_rows.set_index("run_id").loc[reg_runs.run_id.unique()].reset_index()
    decay = reg_runs[reg_runs.weight_decay > 0] if len(reg_runs) else reg_runs
    if not len(decay):
        return pd.DataFrame(columns=["label", "learning_rate", "weight_decay", "step", "per_step_decay_at_peak",
                                     "decay_bound_over_run"])
    last = decay.sort_values("step").groupby("label").tail(1)
    table = last[["label", "learning_rate", "weight_decay", "step"]].assign(
        per_step_decay_at_peak=lambda d: d.learning_rate * d.weight_decay,
        decay_bound_over_run=lambda d: 1 - (1 - d.learning_rate * d.weight_decay) ** d.step)
    return table.reset_index(drop=True)


def regularization_table(sel: pd.DataFrame) -> pd.DataFrame:
    """Per line at its last duration: learning, forgetting (and source loss), the change against plain full
    FT, and for LoRA lines whether they forget less than every regularised full FT (None without one)."""
    table = last_duration_table(sel, ["label", "role"])
    if table.empty:
        return table.assign(d_learning_vs_full=[], d_forgetting_vs_full=[], forgets_less_than_every_regularised_full=[])
    plain_full = table[table.role == "full FT"]
    ref_l = plain_full.learning.mean() if len(plain_full) else np.nan
    ref_f = plain_full.forgetting.mean() if len(plain_full) else np.nan
    table["d_learning_vs_full"] = table.learning - ref_l
    table["d_forgetting_vs_full"] = table.forgetting - ref_f
    reg = table[table.role.str.startswith(REGULARISED)]
    worst = reg.forgetting.max() if len(reg) else np.nan
    table["forgets_less_than_every_regularised_full"] = [
        (bool(f > worst) if not np.isnan(worst) and not np.isnan(f) else None) if role.startswith("LoRA") else None
        for role, f in zip(table.role, table.forgetting)]
    return table.reset_index(drop=True)
