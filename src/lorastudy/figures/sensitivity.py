"""Figures of the sensitivity chapter that are not lines against duration (those are
`lorastudy.figures.comparisons`): the learning-rate sweep of the paper's Fig S1."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lorastudy.analysis.sensitivity import best_learning_rate
from lorastudy.figures.comparisons import metric_label
from lorastudy.figures.style import (
    BASE_COLOUR,
    ensure_style,
    log_value_axis,
    method_colour,
    row_layout,
    row_legend,
    seed_legend,
    seed_line,
    several_seeds,
)
from lorastudy.plan import method_label


def _seed_points(table: pd.DataFrame, runs: pd.DataFrame | None) -> pd.DataFrame:
    """What a method's line averages: with `runs` (the `lr_runs` selection the table was made from) each
    seed's row at its label's last duration, else the table's own rows (already a mean over seeds)."""
    if runs is None or runs.empty or "label" not in table:
        return table
    return runs.merge(table[["label", "duration"]], on=["label", "duration"])


def plot_lr_sweep(table: pd.DataFrame, metrics: Sequence[str] = ("learning", "forgetting"), *,
                  hidden_size: int | None = None, base: dict[str, float] | None = None,
                  domain: str | None = None, runs: pd.DataFrame | None = None) -> Figure:
    """Fig S1: each metric at the last duration against the learning rate (log axis), full FT and LoRA
    (an `lr_table`); the best rate (by learning) of each method ringed. Given `runs` (the `lr_runs`
    selection behind the table), a rate run with several seeds shows their min–max band around the mean."""
    ensure_style()
    size, below = row_layout(len(metrics))
    fig, axes = plt.subplots(1, len(metrics), figsize=size, squeeze=False, layout="constrained")
    best = {m: best_learning_rate(table, m) for m in ("full", "lora")}
    points = _seed_points(table, runs)
    handles: dict[str, Any] = {}
    banded = False
    for ax, metric in zip(axes[0], metrics):
        for method, g in table.groupby("method", sort=True):
            rank = g.lora_rank.iloc[0]
            colour = method_colour(method, rank)
            label = method_label(method, rank, hidden_size)
            line, stats = seed_line(ax, points[points.method == method], "learning_rate", metric, marker="o",
                                    color=colour, label=label)
            handles.setdefault(label, line)
            banded |= several_seeds(stats)
            if best.get(method) is not None:
                b = g[np.isclose(g.learning_rate, best[method])]
                ring = ax.scatter(b.learning_rate, b[metric], s=150, facecolors="none", edgecolors=colour, lw=1.6,
                                  label=f"best rate ({'full' if method == 'full' else 'LoRA'})")
                handles.setdefault(ring.get_label(), ring)
        if base and not np.isnan(base.get(metric, np.nan)):
            handles.setdefault("base model", ax.axhline(base[metric], color=BASE_COLOUR, ls="--", lw=1.2,
                                                        label="base model"))
        log_value_axis(ax, table.learning_rate.unique())
        ax.set(xlabel="learning rate", ylabel=metric_label(metric, domain))
    if banded:
        note, handle = seed_legend("band")
        handles[note] = handle
    if handles:
        row_legend(fig, axes[0, -1], list(handles.values()), list(handles), below)
    return fig
