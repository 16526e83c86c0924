"""Figure of the memory chapter: measured throughput and peak memory against batch size (the paper's Fig S10)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lorastudy.figures.style import ensure_style, log_value_axis, method_colour
from lorastudy.plan import method_label


def plot_bench(bench: pd.DataFrame, hidden_size: int | None = None) -> Figure:
    """Fig S10: training throughput and peak memory against batch size, full FT and LoRA per rank
    (`lorastudy.perf.bench.run_bench`'s rows; failed measurements are left out)."""
    ensure_style()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.2), layout="constrained")
    ok = bench[bench.get("tokens_per_s", pd.Series(np.nan, index=bench.index)).notna()]
    for (method, rank), g in ok.groupby([ok.method, ok["rank"].fillna(0)], sort=True):
        g = g.sort_values("batch")
        for ax, col in zip(axes, ["tokens_per_s", "peak_memory_MiB"]):
            ax.plot(g.batch, g[col], marker="o", color=method_colour(method, rank),
                    label=method_label(method, rank, hidden_size))
    for ax, ylabel in zip(axes, ["training tokens / s", "peak memory (MiB)"]):
        log_value_axis(ax, ok.batch.unique(), base=2)
        ax.set(xlabel="batch size (sequences)", ylabel=ylabel)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.03, 1.0))
    return fig
