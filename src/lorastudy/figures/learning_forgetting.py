"""Figures of chapter 10 (the paper's Figs 1–3): learning and forgetting against duration, and the trade-off,
in four panels (rows: code, math; columns: CPT, IFT) with the paper's numbers in a second block.

They read the long results table (`lorastudy.results.COLUMNS`)."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lorastudy.figures.style import (
    BASE_COLOUR,
    DEFAULT_LABELS,
    DOMAINS,
    LINESTYLES,
    PAPER_ROW,
    REGIMES,
    SETTINGS,
    Legend,
    blank_panel,
    duration_axis,
    ensure_style,
    format_setting,
    marker_areas,
    method_colour,
    seed_legend,
    seed_line,
    seed_path,
    several_seeds,
)
from lorastudy.paper import PAPER_HIDDEN_SIZE
from lorastudy.plan import method_label


def _varying_settings(df: pd.DataFrame) -> list[str]:
    """Settings that take several values inside one panel's method and rank: they need lines of their own."""
    cols = [c for c in SETTINGS if c in df]
    if not cols or df.empty:
        return []
    counts = df.groupby(["domain", "regime", "method", "lora_rank"], dropna=False)[cols].nunique()
    return [c for c in cols if (counts[c] > 1).any()]


def _learning_names(metric: str, domain: str) -> set[str]:
    """'learning' is `learning_<domain>` in our table and plain 'learning' in the paper's; 'answer_nll' is
    `answer_nll_<domain>` (ours only)."""
    if metric == "answer_nll":
        return {f"answer_nll_{domain}"}
    return {f"learning_{domain}", "learning"} if metric == "learning" else {metric}


def _panel_rows(df: pd.DataFrame, domain: str, regime: str, metric: str) -> pd.DataFrame:
    keep = (df.domain == domain) & (df.regime == regime) & (df.method != "base")
    return df[keep & df.metric.isin(_learning_names(metric, domain))]


def _base_value(df: pd.DataFrame, domain: str, metric: str) -> float:
    """The base model's value for this panel (NaN if the table has no base rows)."""
    rows = df[(df.method == "base") & df.metric.isin(_learning_names(metric, domain))]
    return float(rows.value.mean()) if len(rows) else float("nan")


def _series(rows: pd.DataFrame, extra: list[str],
            hidden_size: int | None) -> Iterator[tuple[str, tuple, dict[str, Any], pd.DataFrame]]:
    """Rows per line with its label, legend order and line style; lines differ by method, rank and
    the `extra` settings; seeds (and runs that differ only by seed) share a line."""
    keys = ["method", "lora_rank", *extra]
    seen: dict[tuple, int] = {}
    for key, group in rows.groupby(keys, dropna=False, sort=True):
        method, rank, *values = key
        label = ", ".join([method_label(method, rank, hidden_size),
                           *(format_setting(c, v) for c, v in zip(extra, values) if pd.notna(v))])
        ident = (method, -1 if pd.isna(rank) else int(rank))
        n = seen[ident] = seen.get(ident, -1) + 1
        colour = method_colour("full" if method != "lora" else "lora", rank)
        order = (0 if method != "lora" else 1, ident[1], n)
        yield label, order, {"color": colour, "linestyle": LINESTYLES[n % len(LINESTYLES)]}, group


def _note(kind: str) -> tuple[str, tuple, Any]:
    """The seed band's (or bars') legend entry, ordered after the base model."""
    label, handle = seed_legend(kind)
    return label, (3,), handle


def _title(domain: str, regime: str, row: str | None) -> str:
    panel = f"{domain} {regime.upper()}"
    return f"{row}: {panel}" if row else panel


PanelDrawer = Callable[[Axes, pd.DataFrame, str, str, int | None, Legend], bool]


def _grid(df: pd.DataFrame, paper: pd.DataFrame | None, draw: PanelDrawer, *, ylabel: str,
          hidden_size: int | None, legend_title: str | None = None) -> Figure:
    """A 2×2 block of panels (rows: code, math; columns: CPT, IFT) for our table and, with `paper`, a
    second block below for the paper's; `draw` fills a panel and says whether it had data."""
    ensure_style()
    blocks: list[tuple[str | None, pd.DataFrame, int | None]] = [(None, df, hidden_size)]
    if paper is not None:
        blocks.append((PAPER_ROW, paper, PAPER_HIDDEN_SIZE))
    fig, axes = plt.subplots(len(DOMAINS) * len(blocks), len(REGIMES), squeeze=False, layout="constrained",
                             figsize=(3.4 * len(REGIMES) + 2.4, 2.7 * len(DOMAINS) * len(blocks)))
    for b, (block_label, data, d) in enumerate(blocks):
        legend = Legend()
        for (i, domain), (j, regime) in itertools.product(enumerate(DOMAINS), enumerate(REGIMES)):
            ax = axes[b * len(DOMAINS) + i, j]
            ax.set_title(_title(domain, regime, block_label))
            if j == 0:
                ax.set_ylabel(ylabel)
            if not draw(ax, data, domain, regime, d, legend):
                blank_panel(ax, "not run" if block_label is None else "not in the paper")
        legend.draw(axes[b * len(DOMAINS), -1], legend_title)
    return fig


def metric_vs_duration(df: pd.DataFrame, metric: str, *, paper: pd.DataFrame | None = None,
                       ylabel: str | None = None, hidden_size: int | None = None) -> Figure:
    """Figs 1 and 2: `metric` against training duration, one line per method/rank, in four panels (rows:
    code, math; columns: CPT, IFT).

    metric: 'learning' (each panel's `learning_<domain>`), 'forgetting_avg' or any metric of the table.
    Lines are the mean over seeds with a min–max band where several seeds exist (`style.seed_line`); the base
    model is a dashed line. `paper` (from `paper_tables()`) adds the paper's row; `hidden_size` labels ranks
    as fractions of d.
    """
    def draw(ax: Axes, data: pd.DataFrame, domain: str, regime: str, d: int | None, legend: Legend) -> bool:
        rows = _panel_rows(data, domain, regime, metric)
        if rows.empty:
            return False
        for label, order, kw, group in _series(rows, _varying_settings(rows), d):
            line, stats = seed_line(ax, group, "duration", "value", marker="o", label=label, **kw)
            legend.add(label, order, line)
            if several_seeds(stats):
                legend.add(*_note("band"))
        base = _base_value(data, domain, metric)
        if not np.isnan(base):
            legend.add("base model", (2,), ax.axhline(base, color=BASE_COLOUR, ls="--", lw=1.2, label="base model"))
            ax.dataLim.update_from_data_y([base], ignore=False)  # keep a margin above/below the base line
            ax.autoscale_view()
        duration_axis(ax, regime, rows.duration.to_numpy())
        return True

    return _grid(df, paper, draw, ylabel=ylabel or DEFAULT_LABELS.get(metric, metric), hidden_size=hidden_size)


def tradeoff(df: pd.DataFrame, *, learning_metric: str = "learning", forgetting_metric: str = "forgetting_avg",
             paper: pd.DataFrame | None = None, hidden_size: int | None = None) -> Figure:
    """Fig 3: learning (x) against forgetting (y), one path through the checkpoints of each method/rank (the
    mean over seeds, min–max error bars on both axes where several seeds exist: `style.seed_path`), marker
    size = duration, the base model as a star; compares methods at equal learning rather than equal
    learning rate. `paper` adds the paper's row (its conditions count as runs)."""
    def draw(ax: Axes, data: pd.DataFrame, domain: str, regime: str, d: int | None, legend: Legend) -> bool:
        learn = _panel_rows(data, domain, regime, learning_metric)
        forget = _panel_rows(data, domain, regime, forgetting_metric)[["run_id", "duration", "value"]]
        points = learn.merge(forget, on=["run_id", "duration"], suffixes=("", "_y"))
        if points.empty:
            return False
        areas = marker_areas(points.duration)
        for label, order, kw, group in _series(points, _varying_settings(points), d):
            line, stats = seed_path(ax, group, "value", "value_y", lw=1, alpha=0.8, **kw)
            ax.scatter(stats.value, stats.value_y, s=[areas[float(t)] for t in stats.duration], color=kw["color"],
                       zorder=3, edgecolors="white", linewidths=0.5)
            legend.add(label, order, line)
            if several_seeds(stats):
                legend.add(*_note("bars"))
        base = (_base_value(data, domain, learning_metric), _base_value(data, domain, forgetting_metric))
        if not np.isnan(base).any():
            star = ax.scatter(*base, marker="*", s=200, color=BASE_COLOUR, zorder=4, label="base model")
            legend.add("base model", (2,), star)
        ax.set_xlabel(DEFAULT_LABELS.get(learning_metric, learning_metric))
        return True

    return _grid(df, paper, draw, ylabel=DEFAULT_LABELS.get(forgetting_metric, forgetting_metric),
                 hidden_size=hidden_size, legend_title="marker size = duration")
