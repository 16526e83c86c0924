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

from lorastudy.analysis.selection import summarise
from lorastudy.figures.style import BASE_COLOUR, LINESTYLES, MARKERS, duration_axis, ensure_style, method_colour

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
    """One panel per metric against training duration, one line per `label` (mean over seeds; a band
    where several seeds exist), the base model dashed."""
    ensure_style()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 2.6, 3.2), squeeze=False,
                             layout="constrained")
    styles = line_styles(sel)
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
            handles.setdefault("base model", ax.axhline(base[metric], color=BASE_COLOUR, ls="--", lw=1.2))
        ax.set_ylabel(metric_label(metric, _domain(sel)))
        duration_axis(ax, unit, sel.duration)
    if handles:
        axes[0, -1].legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.03, 1.0))
    if title:
        fig.suptitle(title, fontweight="bold")
    return fig


def plot_tradeoff(sel: pd.DataFrame, *, base: dict[str, float] | None = None, title: str = "") -> Figure:
    """Learning (x) against forgetting (y, source accuracy): a line through each label's checkpoints,
    marker area growing with duration, the base model a grey star."""
    ensure_style()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    styles = line_styles(sel)
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
        ax.scatter([base["learning"]], [base["forgetting"]], marker="*", s=160, color=BASE_COLOUR,
                   label="base model", zorder=4)
    ax.set(xlabel=metric_label("learning", _domain(sel)), ylabel=YLABELS["forgetting"])
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0))
    if title:
        ax.set_title(title)
    return fig
