"""Figures of chapter 12 (the paper's Fig 5 and Fig S9): distinct completions per model, and pass@k against k.
They read the tables of `lorastudy.analysis.diversity`."""
from __future__ import annotations

from collections.abc import Iterable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from lorastudy.analysis.diversity import Subject
from lorastudy.figures.style import GUIDE_COLOUR, ensure_style, method_colour

__all__ = ["plot_unique", "plot_pass_at_k"]


def plot_unique(summary: pd.DataFrame, *, n_samples: int | None = None, temperature: float | None = None) -> Figure:
    """Fig 5: distinct completions per task among passing and among failing samples, one bar per model; the
    pale bar behind is the number of such samples (the most distinct completions there could be)."""
    ensure_style()
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.3), layout="constrained", sharey=True)
    x = np.arange(len(summary))
    for ax, kind in zip(axes, ["passing", "failing"]):
        colours = [method_colour(m, r) for m, r in zip(summary.method, summary.lora_rank)]
        ax.bar(x, summary[f"{kind}_per_task"], color=colours, alpha=0.25, width=0.7)
        ax.bar(x, summary[f"unique_{kind}"], color=colours, width=0.45)
        ax.set_xticks(x, summary.model, rotation=30, ha="right")
        ax.set_title(f"{kind} samples")
    axes[0].set_ylabel("per task (mean over tasks)")
    fig.legend([Patch(color=GUIDE_COLOUR, alpha=0.25), Patch(color=GUIDE_COLOUR)],
               ["samples in the group", "distinct completions"], loc="outside right upper", fontsize="small")
    if n_samples is not None and temperature is not None:
        fig.suptitle(f"{n_samples} samples per task at temperature {temperature:g}")
    return fig


def plot_pass_at_k(curves: dict[str, pd.DataFrame], subjects: Iterable[Subject], *,
                   temperature: float | None = None) -> Figure:
    """Fig S9: pass@k against k (log axis) per model (curves by legend label, as the subjects'), full FT red,
    LoRA by rank, the base grey and dashed."""
    ensure_style()
    by_label = {s.label: s for s in subjects}
    fig, ax = plt.subplots(figsize=(6.2, 3.6), layout="constrained")
    for name, curve in curves.items():
        s = by_label[name]
        ax.plot(curve.k, curve["pass@k"], marker="o", ms=3, label=name, color=method_colour(s.method, s.lora_rank),
                ls="--" if s.method == "base" else "-")
    ax.set_xscale("log", base=2)
    k_max = max((int(c.k.max()) for c in curves.values() if len(c)), default=1)
    ax.xaxis.set_major_locator(FixedLocator([2 ** i for i in range(k_max.bit_length()) if 2 ** i <= k_max]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(xlabel="k (samples drawn)", ylabel="pass@k (unbiased)", ylim=(-0.02, 1.02))
    if temperature is not None:
        ax.set_title(f"temperature {temperature:g}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0))
    return fig
