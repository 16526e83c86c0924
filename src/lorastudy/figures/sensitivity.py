"""Figures of the sensitivity chapter that are not lines against duration (those are
`lorastudy.figures.comparisons`): the learning-rate sweep of the paper's Fig S1."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lorastudy.analysis.sensitivity import best_learning_rate
from lorastudy.figures.comparisons import metric_label
from lorastudy.figures.style import BASE_COLOUR, ensure_style, log_value_axis, method_colour, method_label


def plot_lr_sweep(table: pd.DataFrame, metrics: Sequence[str] = ("learning", "forgetting"), *,
                  hidden_size: int | None = None, base: dict[str, float] | None = None,
                  domain: str | None = None) -> Figure:
    """Fig S1: each metric at the last duration against the learning rate (log axis), full FT and LoRA
    (an `lr_table`); the best rate (by learning) of each method ringed."""
    ensure_style()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 2.4, 3.2), squeeze=False,
                             layout="constrained")
    best = {m: best_learning_rate(table, m) for m in ("full", "lora")}
    for ax, metric in zip(axes[0], metrics):
        for method, g in table.groupby("method", sort=True):
            g = g.sort_values("learning_rate")
            rank = g.lora_rank.iloc[0]
            colour = method_colour(method, rank)
            ax.plot(g.learning_rate, g[metric], marker="o", color=colour, label=method_label(method, rank, hidden_size))
            if best.get(method) is not None:
                b = g[np.isclose(g.learning_rate, best[method])]
                ax.scatter(b.learning_rate, b[metric], s=150, facecolors="none", edgecolors=colour, lw=1.6,
                           label=f"best rate ({'full' if method == 'full' else 'LoRA'})")
        if base and not np.isnan(base.get(metric, np.nan)):
            ax.axhline(base[metric], color=BASE_COLOUR, ls="--", lw=1.2, label="base model")
        log_value_axis(ax, table.learning_rate.unique())
        ax.set(xlabel="learning rate", ylabel=metric_label(metric, domain))
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.03, 1.0))
    return fig
