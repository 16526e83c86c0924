"""Figures of chapter 13 (the paper's Figs 6, S7, S8): the rank of ΔW by layer and by training duration, the
spectra of one matrix, and the random-matrix toy. They read the tables of `lorastudy.analysis.spectra`."""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from lorastudy.analysis.spectra import PANEL_ORDER
from lorastudy.config import ATTENTION_MODULES, MLP_MODULES
from lorastudy.figures.style import (BASE_COLOUR, DOMAINS, FULL_COLOUR, REGIMES, blank_panel, duration_axis,
                                     duration_text, ensure_style, method_label, rank_colour)

__all__ = ["plot_rank_by_layer", "plot_rank_by_duration", "plot_matrix_spectra", "plot_gaussian"]


def _module_colours() -> dict[str, Any]:
    """Attention modules in blues, MLP modules in oranges, so the two types read as groups."""
    blues = sns.color_palette("Blues", len(ATTENTION_MODULES) + 2)[2:]
    oranges = sns.color_palette("Oranges", len(MLP_MODULES) + 2)[2:]
    return dict(zip([*ATTENTION_MODULES, *MLP_MODULES], [*blues, *oranges]))


def _run_title(row: pd.Series) -> str:
    extra = []
    if row.get("weight_decay"):
        extra.append(f"wd={row['weight_decay']:g}")
    if row.get("attention_dropout"):
        extra.append(f"dropout={row['attention_dropout']:g}")
    extra.append(f"lr={row['learning_rate']:g}")
    return f"{row['domain']} {str(row['regime']).upper()} full ({', '.join(extra)})"


def plot_rank_by_layer(ranks: pd.DataFrame, *, arms: Sequence[str] = ("full",), max_runs: int = 6) -> Figure:
    """Fig 6: rank90 of ΔW against layer, one line per module, a row per full-FT run of the main grid
    (`arms`; every full-FT run if none) with code CPT first as in the paper, a column per checkpoint."""
    ensure_style()
    full = ranks[ranks.method == "full"]
    if full.arm.isin(arms).any():
        full = full[full.arm.isin(arms)]
    runs = full.drop_duplicates("run_id")
    runs = (runs.assign(_o=[PANEL_ORDER.get((a, b), 9) for a, b in zip(runs.domain, runs.regime)])
            .sort_values(["_o", "run_id"]).head(max_runs))
    n_cols = int(full.groupby("run_id").checkpoint.nunique().max()) if len(full) else 1
    fig, axes = plt.subplots(max(len(runs), 1), n_cols, squeeze=False, sharey=True, layout="constrained",
                             figsize=(2.9 * n_cols + 1.6, 2.3 * max(len(runs), 1)))
    colours = _module_colours()
    for i, (_, run) in enumerate(runs.iterrows()):
        rows = full[full.run_id == run.run_id]
        ckpts = rows.drop_duplicates("checkpoint").sort_values("step")
        for j in range(n_cols):
            ax = axes[i, j]
            if j >= len(ckpts):
                ax.set_axis_off()
                continue
            c = ckpts.iloc[j]
            sel = rows[rows.checkpoint == c.checkpoint]
            for module, colour in colours.items():
                m = sel[sel.module == module].sort_values("layer")
                if len(m):
                    ax.plot(m.layer, m.rank90, marker="o", color=colour, label=module,
                            ls="-" if module in ATTENTION_MODULES else ":")
            ax.set_title(f"{_run_title(run)}\n{duration_text(float(c.duration), c.duration_unit)}", fontsize="small")
            ax.set_xticks(sorted(sel.layer.unique()))
            if i == len(runs) - 1:
                ax.set_xlabel("layer")
            if j == 0:
                ax.set_ylabel("rank for 90% of Σσ²")
    if len(runs):
        axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), title="module")
    else:
        blank_panel(axes[0, 0], "no full fine-tuning run")
    return fig


def plot_rank_by_duration(ranks: pd.DataFrame, reference: pd.DataFrame, hidden_size: int | None = None) -> Figure:
    """rank90 of ΔW (mean over layers) against duration for attention (solid) and MLP (dotted), per (domain,
    regime) panel, beside the base weights' (dashed) and a Gaussian's (dash-dotted) rank90 of the same
    module type and each LoRA rank r (thin lines in the rank colours)."""
    ensure_style()
    fig, axes = plt.subplots(2, 2, squeeze=False, layout="constrained", figsize=(9.6, 5.8))
    ref = reference.groupby("module_type")[["base_rank90", "gaussian_rank90"]].mean()
    styles = {"attention": "-", "mlp": ":"}
    handles: dict[str, Any] = {}
    for (i, domain), (j, regime) in itertools.product(enumerate(DOMAINS), enumerate(REGIMES)):
        ax = axes[i, j]
        ax.set_title(f"{domain} {regime.upper()}")
        rows = ranks[(ranks.domain == domain) & (ranks.regime == regime)]
        full = rows[(rows.method == "full") & (rows.weight_decay.fillna(0) == 0)
                    & (rows.attention_dropout.fillna(0) == 0)]
        if full.empty:
            blank_panel(ax, "no full fine-tuning run")
            continue
        lrs = sorted(full.learning_rate.unique())
        for (lr, mtype), g in full[full.module_type.isin(styles)].groupby(["learning_rate", "module_type"]):
            stats = g.groupby("duration").rank90.mean().sort_index()
            label = f"full ΔW, {mtype}" + (f", lr={lr:g}" if len(lrs) > 1 else "")
            (line,) = ax.plot(stats.index, stats.values, marker="osD^v"[lrs.index(lr) % 5], color=FULL_COLOUR,
                              ls=styles[mtype])
            handles.setdefault(label, line)
        for mtype in styles:
            if mtype not in ref.index:
                continue
            for col, colour, name in (("base_rank90", BASE_COLOUR, "base W"),
                                      ("gaussian_rank90", "0.72", "Gaussian W")):
                line = ax.axhline(ref.loc[mtype, col], color=colour, ls="--" if col == "base_rank90" else "-.", lw=1)
                ax.annotate(f"{name}, {mtype}", (1.0, ref.loc[mtype, col]), xycoords=("axes fraction", "data"),
                            xytext=(-2, 2), textcoords="offset points", ha="right", va="bottom", fontsize="x-small",
                            color=colour)
                handles.setdefault(f"{name} (same shape)", line)
        for r in sorted(rows[rows.method == "lora"].lora_rank.dropna().unique()):
            line = ax.axhline(r, color=rank_colour(r), lw=1.2)
            handles.setdefault(method_label("lora", r, hidden_size), line)
        duration_axis(ax, regime, full.duration.to_numpy(dtype=float))
        ax.set_ylim(bottom=0)
        if j == 0:
            ax.set_ylabel("rank for 90% of Σσ²\n(mean over layers)")
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small")
    return fig


def plot_matrix_spectra(spec_df: pd.DataFrame, title: str = "") -> Figure:
    """Fig S7: singular values (left) and cumulative explained variance (right) of W_base, W_ft and ΔW; an
    empty table draws a blank panel that says `title`."""
    ensure_style()
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.2), layout="constrained")
    if spec_df.empty:
        blank_panel(axes[0], title)
        axes[1].set_axis_off()
        return fig
    colours = {"W_base": "0.7", "W_ft": FULL_COLOUR, "ΔW": "#4c72b0"}
    widths = {"W_base": 4.0}  # drawn wide underneath: W_ft often lies right on top of it
    for name, g in spec_df.groupby("matrix", sort=False):
        for ax, col in zip(axes, ["sigma", "explained"]):
            ax.plot(g["index"], g[col], color=colours.get(name), lw=widths.get(name, 1.5), label=name)
        r = int((g.explained >= 0.9 - 1e-9).to_numpy().argmax()) + 1
        axes[1].axvline(r, color=colours.get(name), lw=0.8, ls=":")
    axes[0].set(yscale="log", xlabel="index i", ylabel="singular value σᵢ")
    axes[1].axhline(0.9, color="0.6", lw=0.8)
    axes[1].set(xlabel="rank k", ylabel="Σᵢ≤k σᵢ² / Σ σ²", ylim=(0, 1.02))
    axes[1].legend(loc="lower right")
    fig.suptitle(title)
    return fig


def plot_gaussian(summary: pd.DataFrame, long: pd.DataFrame, c_show: float | None = None) -> Figure:
    """Fig S8: spectra of A, A + cB and cB for one c (left) and the mean |σ(A + cB) − σ(A)| against c."""
    ensure_style()
    c_show = c_show if c_show is not None else float(summary.c.iloc[len(summary) // 2])
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.2), layout="constrained")
    colours = {"A": BASE_COLOUR, "A + cB": FULL_COLOUR, "cB": "#4c72b0"}
    for name, g in long[np.isclose(long.c, c_show)].groupby("matrix", sort=False):
        axes[0].plot(g["index"], g.sigma, color=colours[name], label=name)
    axes[0].set(xlabel="index i", ylabel="singular value σᵢ", title=f"c = {c_show:g}, n = {int(summary.n.iloc[0])}")
    axes[0].legend()
    axes[1].plot(summary.c, summary.mean_abs_diff, marker="o", color=FULL_COLOUR)
    axes[1].set(xscale="log", yscale="log", xlabel="c", ylabel="mean |σ(A + cB) − σ(A)|")
    return fig
