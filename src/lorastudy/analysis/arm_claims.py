"""The extra arms' claims (the paper's Figs 4, 7 and S3 on code IFT), with intervals like the main grid's.

Each extra arm trains with seed 0; it is compared at the longest duration with the main grid's run of the same
settings but the one it varies (the candidates train both rates with seed 0), or, for Fig 4, with LoRA at its
chosen rate over all its seeds. Rows follow `learning_forgetting.CLAIM_COLUMNS`; the paper's column is empty
where its tables do not hold the number (Figs 4, 7, S3 are figures only).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lorastudy.analysis.learning_forgetting import (
    CLAIM_COLUMNS,
    MAIN_ARMS,
    chosen_runs,
    claim_row,
    compare_arms,
    forgetting_metrics,
)
from lorastudy.analysis.selection import panel_rows
from lorastudy.config import Profile

PANEL = ("code", "ift")  # where the paper ran its extra arms


def _settings(df: pd.DataFrame) -> pd.DataFrame:
    """Completed wide rows of the panel at its longest duration, settings normalised (selection.panel_rows)."""
    g = panel_rows(df, *PANEL)
    g = g[g.status == "completed"]
    return g[g.duration == g.duration.max()]


def _pick(g: pd.DataFrame, *, method: str, lr: float | None = None, rank: int | None = None,
          alpha: float | None = None, modules: str = "all", wd: float = 0.0, do: float = 0.0,
          rslora: bool = False, optimizer: str = "adamw", seed: int | None = 0) -> pd.DataFrame:
    """The (run_id, checkpoint) cells of the runs with exactly these settings (empty if none ran)."""
    m = (g.method == method) & np.isclose(g.weight_decay, wd) & np.isclose(g.attention_dropout, do) & (g.optimizer == optimizer)
    if lr is not None:
        m &= np.isclose(g.learning_rate.astype(float), lr)
    if seed is not None:
        m &= g.seed.astype(float) == seed
    if method == "lora":
        m &= (g.lora_rank.astype(float) == rank) & (g.target_modules == modules) & (g.use_rslora == rslora)
        m &= np.isclose(g.lora_alpha.astype(float), 2.0 * rank if alpha is None else alpha)
    return g[m][["run_id", "checkpoint", "base_id"]].drop_duplicates()


def arm_claims(df: pd.DataFrame, items: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """Fig 4 (LoRA against regularised full FT), Fig 7 (target modules) and Fig S3 (α) as claims."""
    g = _settings(df)
    learn, forget = [f"learning_{PANEL[0]}"], forgetting_metrics(profile)
    panel, rows = f"{PANEL[0]} {PANEL[1].upper()}", []

    def add(claim: str, statement: str, a: pd.DataFrame, b: pd.DataFrame, metrics: list[str]) -> None:
        if len(a) and len(b):
            rows.append(claim_row(claim, statement, panel, items, a, b, metrics))

    # Fig 4: LoRA at its highest rank and chosen rate (all seeds) against full FT with weight decay or dropout
    chosen = _settings(chosen_runs(profile, df, items))
    ranks = sorted(chosen[chosen.method == "lora"].lora_rank.dropna().astype(int).unique())
    if ranks:
        top = ranks[-1]
        lora = chosen[(chosen.method == "lora") & (chosen.lora_rank == top)][["run_id", "checkpoint", "base_id"]].drop_duplicates()
        reg = g[(g.method == "full") & ((g.weight_decay > 0) | (g.attention_dropout > 0))]
        for _, r in reg.drop_duplicates("run_id").iterrows():
            what = f"weight decay {r.weight_decay:g}" if r.weight_decay else f"attention dropout {r.attention_dropout:g}"
            tag = f"wd{r.weight_decay:g}" if r.weight_decay else f"do{r.attention_dropout:g}"
            cells = reg[reg.run_id == r.run_id][["run_id", "checkpoint", "base_id"]].drop_duplicates()
            add(f"fig4/lora-forgets-less/{tag}", f"LoRA r={top} forgets less than full FT with {what}", lora, cells, forget)
            add(f"fig4/full-learns-more/{tag}", f"full FT with {what} learns more than LoRA r={top}", cells, lora, learn)
    # Fig 7: at each rank of the modules arm, all modules against attention only, MLP against attention only
    mods = g[(g.method == "lora") & (g.target_modules != "all")]
    for (rank, lr), _ in mods.groupby(["lora_rank", "learning_rate"]):
        r, lr = int(rank), float(lr)
        attention = _pick(g, method="lora", rank=r, lr=lr, modules="attention")
        add(f"fig7/all-beats-attention/r{r}", f"LoRA r={r} on all modules learns more than on attention only",
            _pick(g, method="lora", rank=r, lr=lr), attention, learn)
        add(f"fig7/mlp-beats-attention/r{r}", f"LoRA r={r} on the MLP learns more than on attention only",
            _pick(g, method="lora", rank=r, lr=lr, modules="mlp"), attention, learn)
    # Fig S3: α = 2r against every smaller α at the alpha arm's rank
    alphas = g[(g.method == "lora") & (g.arm == "alpha")]
    for _, r in alphas.drop_duplicates("run_id").iterrows():
        rank, lr, alpha = int(r.lora_rank), float(r.learning_rate), float(r.lora_alpha)
        if alpha < 2 * rank:
            add(f"figS3/alpha-2r-learns-more/r{rank}-a{alpha:g}",
                f"LoRA r={rank} learns more with α = 2r = {2 * rank} than with α = {alpha:g}",
                _pick(g, method="lora", rank=rank, lr=lr), _pick(g, method="lora", rank=rank, lr=lr, alpha=alpha), learn)
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def optimizer_comparison(df: pd.DataFrame, items: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """Fig S2 as numbers: each LionW run against AdamW on the same method and rank (seed 0, longest duration),
    at every AdamW rate of the main grid's candidates, as LionW minus AdamW in learning and in forgetting with
    intervals. No verdict: the paper shows both optimizers without stating a direction."""
    g = _settings(df)
    learn, forget = [f"learning_{PANEL[0]}"], forgetting_metrics(profile)
    rows = []
    for _, r in g[g.optimizer == "lion"].drop_duplicates("run_id").iterrows():
        rank = None if r.method == "full" else int(r.lora_rank)
        lion = g[g.run_id == r.run_id][["run_id", "checkpoint", "base_id"]].drop_duplicates()
        main = g[g.arm.isin(MAIN_ARMS) & (g.method == r.method)]
        if rank is not None:
            main = main[main.lora_rank.astype(float) == rank]
        for lr in sorted(main.learning_rate.astype(float).unique()):
            adamw = _pick(g, method=r.method, lr=lr, rank=rank)
            if adamw.empty:
                continue
            row = {"method": r.method if rank is None else f"LoRA r={rank}", "lion_lr": float(r.learning_rate),
                   "adamw_lr": lr}
            for name, metrics in (("learning", learn), ("forgetting", forget)):
                iv = compare_arms(items, lion, adamw, metrics)
                row |= {f"d_{name}": iv.estimate, f"{name}_ci_low": iv.low, f"{name}_ci_high": iv.high}
            rows.append(row)
    return pd.DataFrame(rows)
