"""Figures of chapter 13 (the paper's Figs 6, S7, S8): the rank of ΔW by layer and by training duration, the
spectra of one matrix, and the random-matrix toy. They read the tables of `lorastudy.analysis.spectra`."""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lorastudy.analysis.spectra import PANEL_ORDER
from lorastudy.config import ATTENTION_MODULES, MLP_MODULES
from lorastudy.figures.style import (
    ACCENT_COLOUR,
    BASE_COLOUR,
    DOMAINS,
    GUIDE_COLOUR,
    MAX_WIDTH,
    REGIMES,
    SETTINGS,
    blank_panel,
    duration_axis,
    duration_text,
    ensure_style,
    method_colour,
    module_colours,
    rank_colour,
    seed_legend,
    seed_line,
    several_seeds,
)
from lorastudy.plan import method_label

__all__ = ["plot_rank_by_layer", "plot_rank_by_duration", "plot_matrix_spectra", "plot_gaussian"]


def _module_colours() -> dict[str, Any]:
    """Attention modules in one ramp, MLP modules in another, so the two types read as groups."""
    return module_colours({"attention": ATTENTION_MODULES, "mlp": MLP_MODULES})


def _settings(rows: pd.DataFrame) -> list[str]:
    """The columns that tell runs apart other than their seed: runs equal in these are seeds of one line."""
    return [c for c in ["domain", "regime", "method", "lora_rank", *SETTINGS] if c in rows]


def _optimizers(rows: pd.DataFrame) -> pd.Series:
    """Each row's optimizer, AdamW where the table has none (tables from before the optimizer arm)."""
    if "optimizer" not in rows:
        return pd.Series("adamw", index=rows.index)
    return rows.optimizer.astype(object).where(rows.optimizer.notna(), "adamw")


def _run_title(row: pd.Series) -> str:
    extra = []
    if row.get("weight_decay"):
        extra.append(f"wd={row['weight_decay']:g}")
    if row.get("attention_dropout"):
        extra.append(f"dropout={row['attention_dropout']:g}")
    extra.append(f"lr={row['learning_rate']:g}")
    return f"{row['domain']} {str(row['regime']).upper()} full ({', '.join(extra)})"


def plot_rank_by_layer(ranks: pd.DataFrame, *, arms: Sequence[str] = ("full",), max_runs: int = 6) -> Figure:
    """Fig 6: rank90 of ΔW against layer, one line per module, a row per full-FT setting of the main grid
    (`arms`; every full-FT run if none) with code CPT first as in the paper, a column per checkpoint. Runs
    that differ only by seed share a row: the mean over seeds with a min–max band (`style.seed_line`). Each
    row is a subfigure titled by its setting, so the panels' titles need only say the duration."""
    ensure_style()
    full = ranks[ranks.method == "full"]
    if full.arm.isin(arms).any():
        full = full[full.arm.isin(arms)]
    full = full.assign(optimizer=_optimizers(full))
    groups = [g for _, g in full.groupby(_settings(full), dropna=False, sort=False)] if len(full) else []
    groups = sorted(groups, key=lambda g: (PANEL_ORDER.get((g.domain.iloc[0], g.regime.iloc[0]), 9),
                                           g.run_id.min()))[:max_runs]
    n_cols = max((g.duration.nunique() for g in groups), default=1)
    fig = plt.figure(layout="constrained", figsize=(min(2.6 * n_cols + 2.4, MAX_WIDTH), 2.5 * max(len(groups), 1)))
    rows_of_panels = fig.subfigures(max(len(groups), 1), 1, squeeze=False)[:, 0]
    axes = np.array([sub.subplots(1, n_cols, squeeze=False)[0] for sub in rows_of_panels])
    colours = _module_colours()
    banded = False
    for i, rows in enumerate(groups):
        seeds = rows.run_id.nunique()
        title = _run_title(rows.sort_values("run_id").iloc[0]) + (f", {seeds} seeds" if seeds > 1 else "")
        rows_of_panels[i].suptitle(title, fontsize="medium", fontweight="bold")
        durations = rows.drop_duplicates("duration").sort_values("duration")
        for j in range(n_cols):
            ax = axes[i, j]
            if j >= len(durations):
                ax.set_axis_off()
                continue
            c = durations.iloc[j]
            sel = rows[rows.duration == c.duration]
            for module, colour in colours.items():
                m = sel[sel.module == module]
                if len(m):
                    _, stats = seed_line(ax, m, "layer", "rank90", marker="o", color=colour, label=module,
                                         ls="-" if module in ATTENTION_MODULES else ":")
                    banded |= several_seeds(stats)
            ax.set_title(duration_text(float(c.duration), c.duration_unit), fontsize="small", fontweight="normal")
            ax.set_xticks(sorted(sel.layer.unique()))
            if i == len(groups) - 1:
                ax.set_xlabel("layer")
            if j == 0:
                ax.set_ylabel("rank for 90% of Σσ²")
            else:
                ax.tick_params(labelleft=False)
    drawn = [ax for ax in axes.flat if ax.axison and ax.has_data()]
    if drawn:  # one y scale for every panel (sharey across subfigures would redraw the figure at each change)
        low, high = min(ax.get_ylim()[0] for ax in drawn), max(ax.get_ylim()[1] for ax in drawn)
        for ax in drawn:
            ax.set_ylim(low, high)
    if groups:
        handles, labels = axes[0, 0].get_legend_handles_labels()
        if banded:
            note, handle = seed_legend("band")
            handles, labels = [*handles, handle], [*labels, note]
        fig.legend(handles, labels, loc="outside right upper", title="module")
    else:
        blank_panel(axes[0, 0], "no full fine-tuning run")
    return fig


def plot_rank_by_duration(ranks: pd.DataFrame, reference: pd.DataFrame, hidden_size: int | None = None) -> Figure:
    """rank90 of ΔW (mean over layers) against duration for attention (solid) and MLP (dotted), per (domain,
    regime) panel, beside the base weights' (dashed) and a Gaussian's (dash-dotted) rank90 of the same
    module type and each LoRA rank r (thin lines in the rank colours). Full-FT runs that differ only by
    seed are one line: the mean over seeds with a min–max band (`style.seed_line`)."""
    ensure_style()
    fig, axes = plt.subplots(2, 2, squeeze=False, layout="constrained", figsize=(8.4, 5.6))
    ref = reference.groupby("module_type")[["base_rank90", "gaussian_rank90"]].mean()
    styles = {"attention": "-", "mlp": ":"}
    handles: dict[str, Any] = {}
    banded = False
    for (i, domain), (j, regime) in itertools.product(enumerate(DOMAINS), enumerate(REGIMES)):
        ax = axes[i, j]
        ax.set_title(f"{domain} {regime.upper()}")
        rows = ranks[(ranks.domain == domain) & (ranks.regime == regime)]
        full = rows[(rows.method == "full") & (rows.weight_decay.fillna(0) == 0)
                    & (rows.attention_dropout.fillna(0) == 0)]
        if full.empty:
            blank_panel(ax, "no full fine-tuning run")
            continue
        full = full.assign(optimizer=_optimizers(full))
        lrs = sorted(full.learning_rate.unique())
        several_optimizers = full.optimizer.nunique() > 1
        for (lr, opt, mtype), g in full[full.module_type.isin(styles)].groupby(["learning_rate", "optimizer",
                                                                                "module_type"]):
            per_run = g.groupby(["run_id", "duration"], as_index=False).rank90.mean()  # mean over layers
            label = (f"full ΔW, {mtype}" + (f", lr={lr:g}" if len(lrs) > 1 else "")
                     + (f", {opt}" if several_optimizers else ""))
            line, stats = seed_line(ax, per_run, "duration", "rank90", marker="osD^v"[lrs.index(lr) % 5],
                                    color=method_colour("full"), ls=styles[mtype])
            handles.setdefault(label, line)
            banded |= several_seeds(stats)
        for mtype in styles:
            if mtype not in ref.index:
                continue
            for col, colour, name in (("base_rank90", BASE_COLOUR, "base W"),
                                      ("gaussian_rank90", GUIDE_COLOUR, "Gaussian W")):
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
    if banded:
        note, handle = seed_legend("band")
        handles[note] = handle
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
    colours = {"W_base": method_colour("base"), "W_ft": method_colour("full"), "ΔW": ACCENT_COLOUR}
    widths = {"W_base": 4.0}  # drawn wide and pale underneath: W_ft often lies right on top of it
    alphas = {"W_base": 0.45}
    for name, g in spec_df.groupby("matrix", sort=False):
        for ax, col in zip(axes, ["sigma", "explained"]):
            ax.plot(g["index"], g[col], color=colours.get(name), lw=widths.get(name, 1.5), alpha=alphas.get(name),
                    label=name)
        r = int((g.explained >= 0.9 - 1e-9).to_numpy().argmax()) + 1
        axes[1].axvline(r, color=colours.get(name), lw=0.8, ls=":")
    axes[0].set(yscale="log", xlabel="index i", ylabel="singular value σᵢ")
    axes[1].axhline(0.9, color=GUIDE_COLOUR, lw=0.8)
    axes[1].set(xlabel="rank k", ylabel="Σᵢ≤k σᵢ² / Σ σ²", ylim=(0, 1.02))
    axes[1].legend(loc="lower right")
    fig.suptitle(title)
    return fig


def plot_gaussian(summary: pd.DataFrame, long: pd.DataFrame, c_show: float | None = None) -> Figure:
    """Fig S8: spectra of A, A + cB and cB for one c (left) and the mean |σ(A + cB) − σ(A)| against c."""
    ensure_style()
    c_show = c_show if c_show is not None else float(summary.c.iloc[len(summary) // 2])
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.2), layout="constrained")
    colours = {"A": method_colour("base"), "A + cB": method_colour("full"), "cB": ACCENT_COLOUR}
    for name, g in long[np.isclose(long.c, c_show)].groupby("matrix", sort=False):
        axes[0].plot(g["index"], g.sigma, color=colours[name], label=name)
    axes[0].set(xlabel="index i", ylabel="singular value σᵢ", title=f"c = {c_show:g}, n = {int(summary.n.iloc[0])}")
    axes[0].legend()
    axes[1].plot(summary.c, summary.mean_abs_diff, marker="o", color=method_colour("full"))
    axes[1].set(xscale="log", yscale="log", xlabel="c", ylabel="mean |σ(A + cB) − σ(A)|")
    return fig
