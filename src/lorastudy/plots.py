"""The house style: the one plotting helper every notebook uses, so every figure of the book reads the same.

Colours carry meaning everywhere: full fine-tuning is always `FULL_COLOUR`, LoRA ranks a sequential palette
(light = small rank, dark = large), the base model a dashed grey line (a grey star in trade-off plots). The
paper's numbers get their own row of panels titled "paper (Llama-2-7B)": their scale (billions of tokens on
a 7B model) is not ours, so sharing axes would hide one or the other.

Figure functions read the long results table (`lorastudy.results.COLUMNS`) and return the Figure; in a
notebook assign it (`fig = ...`) so that it is shown once.
"""
from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from lorastudy.io import atomic_path
from lorastudy.paper import PAPER_HIDDEN_SIZE, PAPER_MODEL, paper_tables

__all__ = ["FULL_COLOUR", "BASE_COLOUR", "PANELS", "style", "rank_colour", "method_label",
           "metric_vs_duration", "tradeoff", "savefig", "paper_tables", "loss_curve", "run_trajectory"]

FULL_COLOUR = "#c44e52"
BASE_COLOUR = "0.45"
RANK_PALETTE = "crest"
RANK_RANGE = (2, 512)
DOMAINS = ("code", "math")
REGIMES = ("cpt", "ift")
PANELS = list(itertools.product(DOMAINS, REGIMES))  # the panel order of every figure (row-major)
# run settings besides method and rank; when one still varies inside a panel it splits the lines
SETTINGS = {"lora_alpha": "α", "target_modules": "modules", "learning_rate": "lr", "weight_decay": "wd",
            "attention_dropout": "dropout", "use_rslora": "rslora"}
LINESTYLES = ["-", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]  # never "--": that is the base model's
DEFAULT_LABELS = {"learning": "learning (pass@1 | exact match)", "forgetting_avg": "forgetting set accuracy (mean)"}
PAPER_ROW = f"paper ({PAPER_MODEL})"

_styled = False


def style() -> None:
    """Apply the house style (white grid, compact fonts, tight PNGs); figure functions apply it if nobody has."""
    global _styled
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85,
                  rc={"figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight", "legend.frameon": False,
                      "axes.titlesize": "medium", "axes.titleweight": "bold", "lines.markersize": 4.5})
    _styled = True


def _ensure_style() -> None:
    if not _styled:
        style()


def rank_colour(rank: float) -> tuple[float, float, float]:
    """The colour of a LoRA rank: darker for more capacity, on a fixed log2 scale (r = 2 … 512) so that a
    rank keeps its colour in every figure of the book, whichever other ranks share the figure."""
    low, high = np.log2(RANK_RANGE)
    position = float(np.clip((np.log2(max(rank, 1)) - low) / (high - low), 0, 1))
    return sns.color_palette(RANK_PALETTE, as_cmap=True)(0.25 + 0.75 * position)[:3]  # skip the palest end


def _percent(fraction: float) -> str:
    text = f"{100 * fraction:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + "%"


def method_label(method: str, rank: float | None = None, hidden_size: int | None = None) -> str:
    """'full', 'base' or 'LoRA r=16 (12.5% of d)': the rank as a number and, given the hidden size d, as the
    fraction of d that makes ranks comparable across model sizes."""
    if method != "lora":
        return method
    label = f"LoRA r={int(rank)}"
    return f"{label} ({_percent(rank / hidden_size)} of d)" if hidden_size else label


def _format_setting(column: str, value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return SETTINGS[column] if value else f"no {SETTINGS[column]}"
    return f"{SETTINGS[column]}={value:g}" if isinstance(value, numbers.Real) else f"{SETTINGS[column]}={value}"


def _varying_settings(df: pd.DataFrame) -> list[str]:
    """Settings that take several values inside one panel's method and rank: they need lines of their own."""
    cols = [c for c in SETTINGS if c in df]
    if not cols or df.empty:
        return []
    counts = df.groupby(["domain", "regime", "method", "lora_rank"], dropna=False)[cols].nunique()
    return [c for c in cols if (counts[c] > 1).any()]


def _learning_names(metric: str, domain: str) -> set[str]:
    """'learning' is `learning_<domain>` in our table and plain 'learning' in the paper's."""
    return {f"learning_{domain}", "learning"} if metric == "learning" else {metric}


def _panel_rows(df: pd.DataFrame, domain: str, regime: str, metric: str) -> pd.DataFrame:
    keep = (df.domain == domain) & (df.regime == regime) & (df.method != "base")
    return df[keep & df.metric.isin(_learning_names(metric, domain))]


def _base_value(df: pd.DataFrame, domain: str, metric: str) -> float:
    """The base model's value for this panel (NaN if the table has no base rows)."""
    rows = df[(df.method == "base") & df.metric.isin(_learning_names(metric, domain))]
    return float(rows.value.mean()) if len(rows) else float("nan")


class _Legend:
    """Legend entries of one block of panels, deduplicated and ordered full → LoRA by rank → base."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[tuple, Any]] = {}

    def add(self, label: str, order: tuple, handle: Any) -> None:
        self.entries.setdefault(label, (order, handle))

    def draw(self, ax: Axes, title: str | None = None) -> None:
        if not self.entries:
            return
        items = sorted(self.entries.items(), key=lambda kv: kv[1][0])
        ax.legend([h for _, (_, h) in items], [label for label, _ in items], title=title,
                  loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0)


def _series(rows: pd.DataFrame, extra: list[str],
            hidden_size: int | None) -> Iterator[tuple[str, tuple, dict[str, Any], pd.DataFrame]]:
    """Rows per line with its label, legend order and line style; lines differ by method, rank and
    the `extra` settings; seeds (and runs that differ only by seed) share a line."""
    keys = ["method", "lora_rank", *extra]
    seen: dict[tuple, int] = {}
    for key, group in rows.groupby(keys, dropna=False, sort=True):
        method, rank, *values = key
        label = ", ".join([method_label(method, rank, hidden_size),
                           *(_format_setting(c, v) for c, v in zip(extra, values) if pd.notna(v))])
        ident = (method, -1 if pd.isna(rank) else int(rank))
        n = seen[ident] = seen.get(ident, -1) + 1
        colour = FULL_COLOUR if method != "lora" else rank_colour(rank)
        order = (0 if method != "lora" else 1, ident[1], n)
        yield label, order, {"color": colour, "linestyle": LINESTYLES[n % len(LINESTYLES)]}, group


def _format_tokens(x: float, _pos: Any = None) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:g}{suffix}"
    return f"{x:g}"


def _duration_axis(ax: Axes, regime: str, durations: np.ndarray) -> None:
    """Tokens on a log axis for CPT (budgets double), epochs on a linear one for IFT; ticks only at the
    durations evaluated, thinned where they would overlap."""
    ticks = sorted(set(float(d) for d in durations if d > 0))
    if regime == "cpt":
        ax.set_xscale("log")
        kept = [ticks[-1]] if ticks else []
        for t in reversed(ticks[:-1]):
            if kept[-1] / t >= 1.5:
                kept.append(t)
        ax.xaxis.set_major_locator(FixedLocator(sorted(kept)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(_format_tokens))
        ax.set_xlabel("training tokens")
    else:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
        ax.set_xlabel("epochs")


def _not_run(ax: Axes, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=BASE_COLOUR)


def _title(domain: str, regime: str, row: str | None) -> str:
    panel = f"{domain} {regime.upper()}"
    return f"{row}: {panel}" if row else panel


PanelDrawer = Callable[[Axes, pd.DataFrame, str, str, int | None, _Legend], bool]


def _grid(df: pd.DataFrame, paper: pd.DataFrame | None, draw: PanelDrawer, *, ylabel: str,
          hidden_size: int | None, legend_title: str | None = None) -> Figure:
    """A 2×2 block of panels (rows: code, math; columns: CPT, IFT) for our table and, with `paper`, a
    second block below for the paper's; `draw` fills a panel and says whether it had data."""
    _ensure_style()
    blocks: list[tuple[str | None, pd.DataFrame, int | None]] = [(None, df, hidden_size)]
    if paper is not None:
        blocks.append((PAPER_ROW, paper, PAPER_HIDDEN_SIZE))
    fig, axes = plt.subplots(len(DOMAINS) * len(blocks), len(REGIMES), squeeze=False, layout="constrained",
                             figsize=(3.4 * len(REGIMES) + 2.4, 2.7 * len(DOMAINS) * len(blocks)))
    for b, (block_label, data, d) in enumerate(blocks):
        legend = _Legend()
        for (i, domain), (j, regime) in itertools.product(enumerate(DOMAINS), enumerate(REGIMES)):
            ax = axes[b * len(DOMAINS) + i, j]
            ax.set_title(_title(domain, regime, block_label))
            if j == 0:
                ax.set_ylabel(ylabel)
            if not draw(ax, data, domain, regime, d, legend):
                _not_run(ax, "not run" if block_label is None else "not in the paper")
        legend.draw(axes[b * len(DOMAINS), -1], legend_title)
    return fig


def metric_vs_duration(df: pd.DataFrame, metric: str, *, paper: pd.DataFrame | None = None,
                       ylabel: str | None = None, hidden_size: int | None = None) -> Figure:
    """Figs 1 and 2: `metric` against training duration, one line per method/rank, in four panels (rows:
    code, math; columns: CPT, IFT).

    metric: 'learning' (each panel's `learning_<domain>`), 'forgetting_avg' or any metric of the table.
    Lines are the mean over seeds with a min–max band where several seeds exist; the base model is a dashed
    line. `paper` (from `paper_tables()`) adds the paper's row; `hidden_size` labels ranks as fractions of d.
    """
    def draw(ax: Axes, data: pd.DataFrame, domain: str, regime: str, d: int | None, legend: _Legend) -> bool:
        rows = _panel_rows(data, domain, regime, metric)
        if rows.empty:
            return False
        for label, order, kw, group in _series(rows, _varying_settings(rows), d):
            stats = group.groupby("duration").value.agg(["mean", "min", "max", "count"]).sort_index()
            (line,) = ax.plot(stats.index, stats["mean"], marker="o", label=label, **kw)
            if (stats["count"] > 1).any():
                ax.fill_between(stats.index, stats["min"], stats["max"], color=kw["color"], alpha=0.2, lw=0)
            legend.add(label, order, line)
        base = _base_value(data, domain, metric)
        if not np.isnan(base):
            legend.add("base model", (2,), ax.axhline(base, color=BASE_COLOUR, ls="--", lw=1.2, label="base model"))
            ax.dataLim.update_from_data_y([base], ignore=False)  # keep a margin above/below the base line
            ax.autoscale_view()
        _duration_axis(ax, regime, rows.duration.to_numpy())
        return True

    return _grid(df, paper, draw, ylabel=ylabel or DEFAULT_LABELS.get(metric, metric), hidden_size=hidden_size)


def _marker_sizes(durations: pd.Series) -> np.ndarray:
    """Marker area grows with log duration inside a panel: budgets double, so equal steps read equal."""
    logs = np.log(durations.clip(lower=1e-12).to_numpy(dtype=float))
    span = logs.max() - logs.min()
    return 20 + 110 * ((logs - logs.min()) / span if span > 0 else np.full_like(logs, 0.5))


def tradeoff(df: pd.DataFrame, *, learning_metric: str = "learning", forgetting_metric: str = "forgetting_avg",
             paper: pd.DataFrame | None = None, hidden_size: int | None = None) -> Figure:
    """Fig 3: learning (x) against forgetting (y), one line through the checkpoints of each run, marker
    size = duration, the base model as a star; compares methods at equal learning rather than equal
    learning rate. `paper` adds the paper's row (its conditions count as runs)."""
    def draw(ax: Axes, data: pd.DataFrame, domain: str, regime: str, d: int | None, legend: _Legend) -> bool:
        learn = _panel_rows(data, domain, regime, learning_metric)
        forget = _panel_rows(data, domain, regime, forgetting_metric)[["run_id", "duration", "value"]]
        points = learn.merge(forget, on=["run_id", "duration"], suffixes=("", "_y"))
        if points.empty:
            return False
        sizes = pd.Series(_marker_sizes(points.duration), index=points.index)
        for label, order, kw, group in _series(points, _varying_settings(points), d):
            for _, run in group.sort_values("duration").groupby("run_id", sort=True):
                (line,) = ax.plot(run.value, run.value_y, lw=1, alpha=0.8, **kw)
                ax.scatter(run.value, run.value_y, s=sizes[run.index], color=kw["color"], zorder=3,
                           edgecolors="white", linewidths=0.5)
                legend.add(label, order, line)
        base = (_base_value(data, domain, learning_metric), _base_value(data, domain, forgetting_metric))
        if not np.isnan(base).any():
            star = ax.scatter(*base, marker="*", s=200, color=BASE_COLOUR, zorder=4, label="base model")
            legend.add("base model", (2,), star)
        ax.set_xlabel(DEFAULT_LABELS.get(learning_metric, learning_metric))
        return True

    return _grid(df, paper, draw, ylabel=DEFAULT_LABELS.get(forgetting_metric, forgetting_metric),
                 hidden_size=hidden_size, legend_title="marker size = duration")


def savefig(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write the figure as PNG atomically, so a reader never finds a half-written image."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def loss_curve(curve: list[dict[str, Any]], *, title: str = "") -> Figure:
    """Training loss per optimizer step (a run's `loss_curve`), with a rolling mean to see through the noise."""
    _ensure_style()
    df = pd.DataFrame(curve)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(df.step, df.loss, color="0.75", lw=0.8, label="per step")
    ax.plot(df.step, df.loss.rolling(max(1, len(df) // 20), min_periods=1).mean(), color=FULL_COLOUR, lw=1.6,
            label="rolling mean")
    ax.set(xlabel="optimizer step", ylabel="training loss", title=title)
    ax.legend()
    return fig


def run_trajectory(rows: pd.DataFrame, *, domain: str, title: str = "") -> Figure:
    """One run's learning and forgetting at each of its checkpoints (the evaluation notebook's figure)."""
    _ensure_style()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, metric, label in zip(axes, [f"learning_{domain}", "forgetting_avg"],
                                 ["learning (target domain)", DEFAULT_LABELS["forgetting_avg"]]):
        sel = rows[rows.metric == metric].sort_values("tokens_seen")
        ax.plot(sel.tokens_seen, sel.value, marker="o", color=FULL_COLOUR)
        ax.set(xlabel="tokens seen", ylabel=label)
        ax.xaxis.set_major_formatter(FuncFormatter(_format_tokens))
    fig.suptitle(title)
    return fig
