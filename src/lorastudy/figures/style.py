"""The house style: every figure of the book reads the same (d2l's one plotting helper).

Colours carry meaning everywhere: full fine-tuning is always `FULL_COLOUR`, LoRA ranks a sequential palette
(light = small rank, dark = large), the base model a dashed grey line (a grey star in trade-off plots). The
paper's numbers get their own row of panels titled "paper (Llama-2-7B)": their scale (billions of tokens on
a 7B model) is not ours, so sharing axes would hide one or the other.

Figure functions (one module per chapter in `lorastudy.figures`) return the Figure; in a notebook assign it
(`fig = ...`) so that it is shown once.
"""
from __future__ import annotations

import itertools
import numbers
from pathlib import Path
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from lorastudy.io import atomic_path
from lorastudy.paper import PAPER_MODEL

FULL_COLOUR = "#c44e52"
BASE_COLOUR = "0.45"
RANK_PALETTE = "viridis_r"  # a hue ramp: the mini ranks 1, 2, 8 stay apart, unlike a one-hue ramp
RANK_RANGE = (1, 256)
DOMAINS = ("code", "math")
REGIMES = ("cpt", "ift")
PANELS = list(itertools.product(DOMAINS, REGIMES))  # the panel order of every figure (row-major)
# run settings besides method and rank; when one still varies inside a panel it splits the lines
SETTINGS = {"lora_alpha": "α", "target_modules": "modules", "learning_rate": "lr", "weight_decay": "wd",
            "attention_dropout": "dropout", "use_rslora": "rslora"}
MARKERS = ["o", "s", "^", "D", "v", "P"]  # variants of one method and rank, beside LINESTYLES
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


def ensure_style() -> None:
    if not _styled:
        style()


def rank_colour(rank: float) -> tuple[float, float, float]:
    """The colour of a LoRA rank: darker for more capacity, on a fixed log2 scale (r = 1 … 256) so that a
    rank keeps its colour in every figure of the book, whichever other ranks share the figure."""
    low, high = np.log2(RANK_RANGE)
    position = float(np.clip((np.log2(max(rank, 1)) - low) / (high - low), 0, 1))
    return sns.color_palette(RANK_PALETTE, as_cmap=True)(0.15 + 0.85 * position)[:3]  # skip the palest yellow


def percent(fraction: float) -> str:
    text = f"{100 * fraction:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + "%"


def method_label(method: str, rank: float | None = None, hidden_size: int | None = None) -> str:
    """'full', 'base' or 'LoRA r=16 (12.5% of d)': the rank as a number and, given the hidden size d, as the
    fraction of d that makes ranks comparable across model sizes."""
    if method != "lora":
        return method
    label = f"LoRA r={int(rank)}"
    return f"{label} ({percent(rank / hidden_size)} of d)" if hidden_size else label




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


def method_colour(method: str, rank: float | None = None) -> Any:
    """Full FT red, LoRA by rank, base grey: the house colours."""
    if method == "full":
        return FULL_COLOUR
    if method == "lora":
        return rank_colour(rank or 16)
    return BASE_COLOUR


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
