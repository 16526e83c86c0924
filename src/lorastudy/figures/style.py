"""The house style: every figure of the book reads the same (d2l's one plotting helper).

Colours carry meaning everywhere: full fine-tuning is always `FULL_COLOUR`, LoRA ranks one sequential palette
(light = small rank, dark = large, also in greyscale), the base model a dashed grey line (a grey star in
trade-off plots); every figure takes its colours from `method_colour` / `rank_colour` or the named neutral
colours here. Runs that differ only by seed are one line (their mean) with a min–max band (`seed_line`), or one
path with min–max error bars in trade-off plots (`seed_path`), never a line per seed. The
paper's numbers get their own row of panels titled "paper (Llama-2-7B)": their scale (billions of tokens on
a 7B model) is not ours, so sharing axes would hide one or the other.

Figure functions (one module per chapter in `lorastudy.figures`) return the Figure; in a notebook assign it
(`fig = ...`) so that it is shown once.
"""
from __future__ import annotations

import itertools
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from lorastudy.io import atomic_path
from lorastudy.paper import PAPER_MODEL

FULL_COLOUR = "#c44e52"  # red: no rank colour is near it in hue; in grey it sits between ranks 2 and 8
BASE_COLOUR = "0.45"
GUIDE_COLOUR = "0.6"  # neutral ink that is no method: connectors, reference lines, per-step noise, legend keys
RUN_COLOUR = "0.2"  # one run whose method the caller did not say
ACCENT_COLOUR = "#55a868"  # a third quantity beside base and fine-tuned weights (ΔW, cB): green, not a rank's hue
RANK_PALETTE = "Purples"  # one hue, lightness falling monotonically; far in hue from FULL_COLOUR
RANK_RANGE = (1, 256)  # the fixed log2 scale: a rank keeps its colour in every figure
RANK_SPAN = (0.35, 1.0)  # the part of the palette used: its palest end would vanish on white
RANK_STRETCH = 0.5  # position = (log2 share of the range) ** this: small ranks (what a mini study runs) spread out
MODULE_PALETTES = {"attention": "Blues", "mlp": "Oranges"}  # module types as two groups (full-FT figures only)
SEED_ALPHA = 0.2
SEED_NOTE = {"band": "mean over seeds; band: min–max", "bars": "mean over seeds; bars: min–max"}
DOMAINS = ("code", "math")
REGIMES = ("cpt", "ift")
PANELS = list(itertools.product(DOMAINS, REGIMES))  # the panel order of every figure (row-major)
# run settings besides method and rank; when one still varies inside a panel it splits the lines
SETTINGS = {"lora_alpha": "α", "target_modules": "modules", "learning_rate": "lr", "weight_decay": "wd",
            "attention_dropout": "dropout", "use_rslora": "rslora", "optimizer": "optimizer"}
MARKERS = ["o", "s", "^", "D", "v", "P"]  # variants of one method and rank, beside LINESTYLES
LINESTYLES = ["-", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]  # never "--": that is the base model's
MAX_WIDTH = 9.8  # inches, legend included: the book's column (~7.5 in) shrinks it by a quarter at most
PANEL_WIDTH = 3.4  # one panel of a row
LEGEND_WIDTH = 2.6  # a legend beside the last panel
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


def ensure_style() -> None:
    if not _styled:
        style()


def rank_colour(rank: float) -> tuple[float, float, float]:
    """The colour of a LoRA rank: darker for more capacity, on a fixed log2 scale (r = 1 … 256) so that a
    rank keeps its colour in every figure of the book, whichever other ranks share the figure. The scale is
    stretched at the small end (a square root of the log2 position) so that ranks 1, 2 and 8 stay apart in
    lightness, in colour and in greyscale, while 16 … 256 still darken step by step."""
    low, high = np.log2(RANK_RANGE)
    position = float(np.clip((np.log2(max(rank, 1)) - low) / (high - low), 0, 1)) ** RANK_STRETCH
    start, stop = RANK_SPAN
    return tuple(sns.color_palette(RANK_PALETTE, as_cmap=True)(start + (stop - start) * position)[:3])


def format_setting(column: str, value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return SETTINGS[column] if value else f"no {SETTINGS[column]}"
    return f"{SETTINGS[column]}={value:g}" if isinstance(value, numbers.Real) else f"{SETTINGS[column]}={value}"


class Legend:
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


def row_layout(n_panels: int, height: float = 3.2) -> tuple[tuple[float, float], bool]:
    """The figsize of a row of panels with its legend, and whether the legend goes below the panels: beside
    them while the row stays within `MAX_WIDTH`, below (panels narrowed to fit) when it would not."""
    beside = PANEL_WIDTH * n_panels + LEGEND_WIDTH
    if beside <= MAX_WIDTH:
        return (beside, height), False
    return (min(PANEL_WIDTH * n_panels, MAX_WIDTH), height + 0.9), True


def row_legend(fig: Figure, ax: Axes, handles: Sequence[Any], labels: Sequence[str], below: bool) -> None:
    """The legend of a `row_layout` row: beside the last panel, or under the row in columns."""
    if below:
        fig.legend(list(handles), list(labels), loc="outside lower center", ncols=min(3, len(labels)))
    else:
        ax.legend(list(handles), list(labels), loc="upper left", bbox_to_anchor=(1.03, 1.0))


def format_tokens(x: float, _pos: Any = None) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:g}{suffix}"
    return f"{x:g}"


def duration_axis(ax: Axes, regime: str, durations: Any) -> None:
    """Tokens on a log axis for CPT (budgets double), epochs on a linear one for IFT; ticks only at the
    durations evaluated, thinned where they would overlap. `regime` is 'cpt'/'ift' or the unit
    'tokens'/'epochs'."""
    ticks = sorted(set(float(d) for d in durations if d > 0))
    if regime in ("cpt", "tokens"):
        ax.set_xscale("log")
        kept = [ticks[-1]] if ticks else []
        for t in reversed(ticks[:-1]):
            if kept[-1] / t >= 1.5:
                kept.append(t)
        ax.xaxis.set_major_locator(FixedLocator(sorted(kept)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(format_tokens))
        ax.set_xlabel("training tokens")
    else:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
        ax.set_xlabel("epochs")


def duration_text(duration: float, unit: str | None) -> str:
    """'16k tokens', '2 epochs': a checkpoint's duration in words."""
    if unit == "tokens":
        return f"{format_tokens(duration)} tokens"
    return f"{duration:g} epochs" if unit == "epochs" else f"{duration:g}"


def method_colour(method: str | None, rank: float | None = None) -> Any:
    """Full FT red, LoRA by rank, base grey: the house colours; a run of unnamed method (None) near-black."""
    if method is None:
        return RUN_COLOUR
    if method == "full":
        return FULL_COLOUR
    if method == "lora":
        return rank_colour(16 if rank is None or pd.isna(rank) else rank)
    return BASE_COLOUR


def module_colours(groups: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """A colour per module, each module type (`MODULE_PALETTES`) in one ramp, so types read as groups."""
    out: dict[str, Any] = {}
    for kind, modules in groups.items():
        out.update(zip(modules, sns.color_palette(MODULE_PALETTES[kind], len(modules) + 2)[2:]))
    return out


# ----------------------------------------------------------------------------- seeds
def seed_stats(rows: pd.DataFrame, by: str, values: str | Sequence[str]) -> pd.DataFrame:
    """Per value of `by` (duration, learning rate): the mean, min and max of each `values` column over the
    rows, i.e. over runs that differ only by seed, and `n`, how many rows (seeds) every column has there."""
    cols = [values] if isinstance(values, str) else list(values)
    group = rows.groupby(by, sort=True)[cols]
    out = group.mean()
    low, high = group.min(), group.max()
    for col in cols:
        out[f"{col}_min"], out[f"{col}_max"] = low[col], high[col]
    out["n"] = group.count().min(axis=1)
    return out.reset_index()


def seed_line(ax: Axes, rows: pd.DataFrame, x: str, y: str, **kw: Any) -> tuple[Line2D, pd.DataFrame]:
    """One line through the mean of `y` over seeds at each `x`, with a min–max band where some `x` has
    several seeds (the house rule for runs that differ only by seed; say so with `seed_legend`). Returns
    the line and the `seed_stats` it drew."""
    stats = seed_stats(rows, x, y)
    (line,) = ax.plot(stats[x], stats[y], **kw)
    if several_seeds(stats):
        ax.fill_between(stats[x], stats[f"{y}_min"], stats[f"{y}_max"], color=line.get_color(), alpha=SEED_ALPHA,
                        lw=0)
    return line, stats


def seed_path(ax: Axes, rows: pd.DataFrame, x: str, y: str, *, by: str = "duration",
              **kw: Any) -> tuple[Line2D, pd.DataFrame]:
    """A trade-off path: (mean x, mean y) over seeds at each `by` (a checkpoint's duration), joined in
    order, with min–max error bars on both axes where several seeds exist. Returns the line and the means
    (columns x, y, `by`, n) for markers on top."""
    stats = seed_stats(rows, by, [x, y])
    (line,) = ax.plot(stats[x], stats[y], **kw)
    multi = stats[stats.n > 1]
    if len(multi):
        def spread(col: str) -> list[pd.Series]:  # the mean of equal seeds can sit an ulp outside their min and max
            return [(multi[col] - multi[f"{col}_min"]).clip(lower=0), (multi[f"{col}_max"] - multi[col]).clip(lower=0)]

        ax.errorbar(multi[x], multi[y], fmt="none", ecolor=line.get_color(), elinewidth=0.9, alpha=0.6, capsize=0,
                    xerr=spread(x), yerr=spread(y), zorder=2)
    return line, stats


def several_seeds(stats: pd.DataFrame) -> bool:
    """Whether some point of a `seed_line` / `seed_path` averages several seeds (then say so in the legend)."""
    return bool((stats.n > 1).any())


def seed_legend(kind: str = "band") -> tuple[str, Any]:
    """The legend entry that says what a seed band ('band') or error bar ('bars') is: (label, handle)."""
    handle = (Patch(facecolor=GUIDE_COLOUR, alpha=2 * SEED_ALPHA, lw=0) if kind == "band"
              else Line2D([], [], color=GUIDE_COLOUR, marker="+", markersize=9, markeredgewidth=0.9, ls="none"))
    return SEED_NOTE[kind], handle


def marker_areas(durations: Sequence[float] | pd.Series) -> dict[float, float]:
    """Marker area per duration, growing with log duration over the given ones (budgets double, so equal
    steps read equal): what trade-off plots use for 'marker size = duration'."""
    values = sorted({float(d) for d in durations})
    if not values:
        return {}
    logs = np.log(np.clip(values, 1e-12, None))
    span = logs.max() - logs.min()
    scaled = (logs - logs.min()) / span if span > 0 else np.full_like(logs, 0.5)
    return dict(zip(values, (20 + 110 * scaled).tolist()))


def blank_panel(ax: Axes, text: str) -> None:
    """An empty panel that says why (e.g. 'not run')."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=BASE_COLOUR)


def savefig(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write the figure as PNG atomically, so a reader never finds a half-written image."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def log_value_axis(ax: Axes, values: Any, *, base: int = 10) -> None:
    """A log x axis with ticks only at `values`, labelled as plain numbers (learning rates, batch sizes)."""
    ticks = sorted(set(values))
    ax.set_xscale("log", base=base)
    ax.xaxis.set_major_locator(FixedLocator(ticks) if ticks else NullLocator())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
