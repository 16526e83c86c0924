"""Figures of one run's notebooks: its loss curve and its learning and forgetting along the checkpoints."""
from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from lorastudy.figures.style import DEFAULT_LABELS, GUIDE_COLOUR, ensure_style, format_tokens, method_colour


def loss_curve(curve: list[dict[str, Any]], *, title: str = "", method: str | None = None,
               rank: float | None = None) -> Figure:
    """Training loss per optimizer step (a run's `loss_curve`), with a rolling mean to see through the noise;
    the mean in the house colour of `method` (and `rank`) when given, near-black when not."""
    ensure_style()
    df = pd.DataFrame(curve)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(df.step, df.loss, color=GUIDE_COLOUR, alpha=0.6, lw=0.8, label="per step")
    ax.plot(df.step, df.loss.rolling(max(1, len(df) // 20), min_periods=1).mean(), color=method_colour(method, rank),
            lw=1.6, label="rolling mean")
    ax.set(xlabel="optimizer step", ylabel="training loss", title=title)
    ax.legend()
    return fig


def run_trajectory(rows: pd.DataFrame | list[dict[str, Any]], *, domain: str, title: str = "",
                   method: str | None = None, rank: float | None = None) -> Figure:
    """One run's learning and forgetting at each of its checkpoints (the evaluation notebook's figure);
    `rows` are the run's tidy result rows, as a DataFrame or as evaluate_run returns them. The colour is the
    run's method's (from `method`/`rank`, else the rows' own columns where they have them)."""
    ensure_style()
    rows = pd.DataFrame(rows)
    if method is None and "method" in rows and rows.method.notna().any():
        method = str(rows.method.dropna().iloc[0])
        if rank is None and "lora_rank" in rows and rows.lora_rank.notna().any():
            rank = float(rows.lora_rank.dropna().iloc[0])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, metric, label in zip(axes, [f"learning_{domain}", "forgetting_avg"],
                                 ["learning (target domain)", DEFAULT_LABELS["forgetting_avg"]]):
        sel = rows[rows.metric == metric].sort_values("tokens_seen")
        ax.plot(sel.tokens_seen, sel.value, marker="o", color=method_colour(method, rank))
        ax.set(xlabel="tokens seen", ylabel=label)
        ax.xaxis.set_major_formatter(FuncFormatter(format_tokens))
    fig.suptitle(title)
    return fig
