"""Figures of chapter 16: intruder dimensions against LoRA rank, and KL to the base against forgetting. They read
the tables of `lorastudy.analysis.beyond`."""
from __future__ import annotations

import itertools
import math

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from lorastudy.analysis.beyond import spearman
from lorastudy.figures.style import (
    BASE_COLOUR,
    DOMAINS,
    GUIDE_COLOUR,
    LINESTYLES,
    REGIMES,
    blank_panel,
    ensure_style,
    method_colour,
    rank_colour,
)
from lorastudy.plan import method_label

__all__ = ["plot_intruders", "plot_kl_forgetting", "plot_transitions"]


def plot_intruders(summary: pd.DataFrame, hidden_size: int | None = None) -> Figure:
    """Intruder dimensions per matrix against LoRA rank, one panel per (domain, regime); full FT as a red
    line at its own level (it has no rank)."""
    ensure_style()
    fig, axes = plt.subplots(2, 2, squeeze=False, layout="constrained", figsize=(9.2, 5.6))
    for (i, domain), (j, regime) in itertools.product(enumerate(DOMAINS), enumerate(REGIMES)):
        ax = axes[i, j]
        ax.set_title(f"{domain} {regime.upper()}")
        rows = summary[(summary.domain == domain) & (summary.regime == regime)]
        if rows.empty:
            blank_panel(ax, "not run")
            continue
        lora = rows[rows.method == "lora"].sort_values("lora_rank")
        for (tm, arm), g in lora.groupby([lora.target_modules.fillna("all"), lora.arm], sort=False):
            label = f"LoRA, {tm} modules" + ("" if arm in {"lora", "modules"} else f" ({arm} arm)")
            ax.plot(g.lora_rank, g.per_matrix, color=GUIDE_COLOUR, lw=0.8, zorder=1)
            ax.scatter(g.lora_rank, g.per_matrix, c=[rank_colour(r) for r in g.lora_rank], zorder=3, s=40,
                       marker={"all": "o", "attention": "s", "mlp": "^"}.get(tm, "D"), label=label, edgecolors="white")
        for k, (_, f) in enumerate(rows[rows.method == "full"].iterrows()):
            ax.axhline(f.per_matrix, color=method_colour("full"), ls=LINESTYLES[k % len(LINESTYLES)], lw=1.2,
                       label="full FT" + ("" if f.arm == "full" else f" ({f.arm} arm, {f.run_id})"))
        if lora.empty:
            ax.set_xticks([])
        else:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(lora.lora_rank.unique()))
            ax.set_xticklabels([method_label("lora", r, hidden_size).removeprefix("LoRA r=").replace(" (", "\n(")
                                for r in sorted(lora.lora_rank.unique())])
            ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xlabel("LoRA rank r")
        ax.set_ylabel("intruder dimensions per matrix")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="x-small", loc="best")
    return fig


def plot_kl_forgetting(frame: pd.DataFrame, y: str = "forgetting_drop",
                       ylabel: str = "forgetting: base − run accuracy") -> Figure:
    """KL(base ‖ fine-tuned) on target data against a forgetting measure, one point per checkpoint coloured
    by method and rank, marker by domain; Spearman's ρ in the title."""
    ensure_style()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    ok = frame.dropna(subset=["kl", y])
    if ok.empty:
        blank_panel(ax, "no checkpoint with both KL and forgetting")
        return fig
    markers = {"code": "o", "math": "s"}
    seen = set()
    for _, r in ok.iterrows():
        lab = f"{method_label(r.method, r.lora_rank)}, {r.domain}"
        ax.scatter(r.kl, r[y], color=method_colour(r.method, r.lora_rank), marker=markers.get(r.domain, "o"),
                   edgecolors="white", s=50, label=None if lab in seen else lab, zorder=3)
        seen.add(lab)
    if ok.kl.min() > 0 and ok.kl.max() / ok.kl.min() > 10:  # log only where KL spans more than a decade
        ax.set_xscale("log")
    rho = spearman(ok.kl, ok[y])
    title = (f"Spearman ρ = {rho:.2f} over {len(ok)} checkpoints" if not math.isnan(rho)
             else f"{len(ok)} checkpoints: too few (or constant) for a rank correlation")
    ax.set(xlabel="KL(base ‖ fine-tuned) on target prompts (nats/token)", ylabel=ylabel, title=title)
    ax.axhline(0, color=BASE_COLOUR, ls="--", lw=1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), fontsize="small")
    return fig


def plot_transitions(table: pd.DataFrame) -> Figure:
    """Per panel: the share of the forgetting sets' items each arm lost (the base right, the arm wrong) and
    gained (drawn below zero), mean over the sets (`lorastudy.analysis.transitions.transitions_table`); what a
    guessing model would lose is written in each panel (far above these shares, so no line for it)."""
    ensure_style()
    fig, axes = plt.subplots(2, 2, squeeze=False, layout="constrained", figsize=(9.2, 5.6))
    for (i, domain), (j, regime) in itertools.product(enumerate(DOMAINS), enumerate(REGIMES)):
        ax, panel = axes[i, j], f"{domain} {regime.upper()}"
        ax.set_title(panel)
        rows = table[table.panel == panel]
        if rows.empty:
            blank_panel(ax, "not run")
            continue
        arms = rows.drop_duplicates("arm")
        mean = rows.groupby("arm", sort=False)[["lost", "gained", "lost_if_guessing"]].mean().loc[list(arms.arm)]
        colours = [rank_colour(r) if m == "lora" else method_colour(m) for m, r in zip(arms.method, arms.lora_rank)]
        ax.bar(range(len(arms)), mean.lost, color=colours, label="lost (base right, arm wrong)")
        ax.bar(range(len(arms)), -mean.gained, color=colours, alpha=0.45, hatch="//", label="gained (drawn below 0)")
        ax.axhline(0, color=BASE_COLOUR, lw=0.8)
        top = max(float(mean.lost.max()), 0.01) * 1.3
        ax.set_ylim(-max(float(mean.gained.max()), 0.002) * 1.5, top)
        ax.text(0.98, 0.95, f"a guessing model loses {float(mean.lost_if_guessing.iloc[0]):.2f}", ha="right",
                va="top", transform=ax.transAxes, color=GUIDE_COLOUR, fontsize="small")
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([a.removeprefix("LoRA ") for a in arms.arm])
        ax.set_ylabel("share of items (mean of the sets)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3)
    return fig
