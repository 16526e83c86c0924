"""Figures of runs that differ in one setting (the regularisation and sensitivity chapters, the paper's Figs 4,
7 and S3): each metric against training duration, and learning against forgetting, one line per `label` of
a selection (`lorastudy.analysis.selection`)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lorastudy.figures.style import (
    BASE_COLOUR,
    LINESTYLES,
    MARKERS,
    duration_axis,
    ensure_style,
    marker_areas,
    method_colour,
    row_layout,
    row_legend,
    seed_legend,
    seed_line,
    seed_path,
    several_seeds,
)

LEARNING_LABELS = {"code": "learning (pass@1)", "math": "learning (exact match)"}
YLABELS = {"learning": "learning (pass@1 | exact match)", "forgetting": "source accuracy (forgetting, mean of 3)",
           "source_loss": "held-out source loss"}


def line_styles(sel: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Colour by method and rank (the house palette), line style and marker by variant within a rank."""
    out: dict[str, dict[str, Any]] = {}
    seen: dict[tuple, int] = {}
    lines = sel.drop_duplicates("label")
    for _, r in lines.iterrows():
        ident = ("full",) if r.method != "lora" else ("lora", float(r.lora_rank))
        n = seen[ident] = seen.get(ident, -1) + 1
        out[r.label] = {"color": method_colour("lora" if r.method == "lora" else "full", r.lora_rank),
                        "linestyle": LINESTYLES[n % len(LINESTYLES)], "marker": MARKERS[n % len(MARKERS)]}
    return out


def metric_label(metric: str, domain: str | None = None) -> str:
    """A metric's axis label; learning names its benchmark given the domain."""
    if metric == "learning" and domain:
        return LEARNING_LABELS.get(domain, YLABELS["learning"])
    return YLABELS.get(metric, metric)


def _domain(sel: pd.DataFrame) -> str | None:
    """The selection's one domain (None for none or several)."""
    domains = set(sel.domain.dropna()) if "domain" in sel else set()
    return domains.pop() if len(domains) == 1 else None


def plot_vs_duration(sel: pd.DataFrame, metrics: Sequence[str] = ("learning", "forgetting"), *,
                     base: dict[str, float] | None = None, title: str = "") -> Figure:
    """One panel per metric against training duration, one line per `label` (mean over seeds, a min–max band
    where several seeds exist: `style.seed_line`), the base model dashed."""
    ensure_style()
    size, below = row_layout(len(metrics))
    fig, axes = plt.subplots(1, len(metrics), figsize=size, squeeze=False, layout="constrained")
    styles = line_styles(sel)
    unit = sel.duration_unit.dropna().iloc[0] if len(sel) and sel.duration_unit.notna().any() else "epochs"
    handles: dict[str, Any] = {}
    banded = False
    for ax, metric in zip(axes[0], metrics):
        for label in styles:
            line, stats = seed_line(ax, sel[sel.label == label], "duration", metric, label=label, **styles[label])
            handles.setdefault(label, line)
            banded |= several_seeds(stats)
        if base and not np.isnan(base.get(metric, np.nan)):
            handles.setdefault("base model", ax.axhline(base[metric], color=BASE_COLOUR, ls="--", lw=1.2))
        ax.set_ylabel(metric_label(metric, _domain(sel)))
        duration_axis(ax, unit, sel.duration)
    if banded:
        note, handle = seed_legend("band")
        handles[note] = handle
    if handles:
        row_legend(fig, axes[0, -1], list(handles.values()), list(handles), below)
    if title:
        fig.suptitle(title, fontweight="bold")
    return fig


def plot_tradeoff(sel: pd.DataFrame, *, base: dict[str, float] | None = None, title: str = "") -> Figure:
    """Learning (x) against forgetting (y, source accuracy): a path through each label's checkpoints (mean
    over seeds, min–max error bars on both axes where several seeds exist: `style.seed_path`), marker area
    growing with duration, the base model a grey star."""
    ensure_style()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    styles = line_styles(sel)
    areas = marker_areas(sel.duration) if len(sel) else {}
    handles: dict[str, Any] = {}
    barred = False
    for label, kw in styles.items():
        line, stats = seed_path(ax, sel[sel.label == label], "learning", "forgetting", color=kw["color"],
                                linestyle=kw["linestyle"], marker=kw["marker"], markersize=4, lw=1.2, label=label)
        ax.scatter(stats.learning, stats.forgetting, s=[areas[float(t)] for t in stats.duration], color=kw["color"],
                   marker=kw["marker"], zorder=3)
        handles[label] = line
        barred |= several_seeds(stats)
    if base and not np.isnan(base.get("learning", np.nan)):
        handles["base model"] = ax.scatter([base["learning"]], [base["forgetting"]], marker="*", s=160,
                                           color=BASE_COLOUR, label="base model", zorder=4)
    if barred:
        note, handle = seed_legend("bars")
        handles[note] = handle
    ax.set(xlabel=metric_label("learning", _domain(sel)), ylabel=YLABELS["forgetting"])
    if handles:
        ax.legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.03, 1.0))
    if title:
        ax.set_title(title)
    return fig
