"""The house plots on a synthetic results table: the right panels, one line per method/rank, seed bands,
the base model, and the paper's row."""
from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection

from lorastudy.figures import style
from lorastudy.figures.learning_forgetting import metric_vs_duration, tradeoff
from lorastudy.figures.style import PANELS, savefig
from lorastudy.paper import paper_tables
from lorastudy.results import COLUMNS, wide

DURATIONS = {"cpt": ("tokens", [1e5, 2e5, 4e5]), "ift": ("epochs", [1.0, 2.0, 4.0])}
METHODS = [("full", np.nan), ("lora", 4), ("lora", 16)]


def synthetic_results() -> pd.DataFrame:
    """Full FT and LoRA r=4/16 in all four panels, 3 durations, 2 seeds, plus the base model's rows."""
    rows = []
    base = {"run_id": "base", "method": "base", "status": "completed", "checkpoint": "base", "duration": 0.0,
            "tokens_seen": 0, "step": 0}
    for metric, value in [("learning_code", 0.05), ("learning_math", 0.10), ("forgetting_avg", 0.90)]:
        rows.append({**base, "metric": metric, "value": value})
    for (domain, regime), (method, rank), seed in itertools.product(PANELS, METHODS, [0, 1]):
        unit, durations = DURATIONS[regime]
        run_id = f"{domain}-{regime}-{method}" + ("" if method == "full" else f"-r{rank}") + f"-s{seed}"
        strength = 1.0 if method == "full" else rank / 32
        run = {"run_id": run_id, "domain": domain, "regime": regime, "method": method, "lora_rank": rank,
               "lora_alpha": 2 * rank, "target_modules": None if method == "full" else "all",
               "learning_rate": 1e-3, "weight_decay": 0.0, "attention_dropout": 0.0, "use_rslora": False,
               "seed": seed, "arm": "main", "status": "completed", "duration_unit": unit}
        for i, duration in enumerate(durations):
            ckpt = {**run, "checkpoint": f"ckpt-{i}", "duration": duration, "tokens_seen": int(1e5 * 2 ** i),
                    "step": 10 * 2 ** i}
            learn = 0.1 + 0.2 * strength * (i + 1) + 0.01 * seed
            rows.append({**ckpt, "metric": f"learning_{domain}", "value": learn})
            rows.append({**ckpt, "metric": "forgetting_avg", "value": 0.9 - 0.1 * strength * (i + 1)})
            rows.append({**ckpt, "metric": "heldout_source_loss", "value": 1.0 + strength * i})
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def labelled_lines(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_synthetic_table_pivots_like_the_real_one():
    table = wide(synthetic_results())
    assert len(table) == 1 + 4 * 3 * 2 * 3
    assert {"learning_code", "learning_math", "forgetting_avg"} <= set(table.columns)


def test_metric_vs_duration_draws_four_panels_with_one_line_per_method_and_the_base():
    fig = metric_vs_duration(synthetic_results(), "learning", hidden_size=128)
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["code CPT", "code IFT", "math CPT", "math IFT"]
    for ax in fig.axes:
        assert labelled_lines(ax) == ["full", "LoRA r=4 (3.1% of d)", "LoRA r=16 (12.5% of d)", "base model"]
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 3  # one seed band per line
    code_cpt, math_ift = fig.axes[0], fig.axes[3]
    assert code_cpt.get_xscale() == "log" and math_ift.get_xscale() == "linear"
    base = [line for line in code_cpt.get_lines() if line.get_label() == "base model"][0]
    assert base.get_linestyle() == "--" and base.get_ydata()[0] == pytest.approx(0.05)
    assert [line.get_ydata()[0] for line in math_ift.get_lines()][-1] == pytest.approx(0.10)
    full = code_cpt.get_lines()[0]
    assert list(full.get_xdata()) == [1e5, 2e5, 4e5]
    assert full.get_ydata()[0] == pytest.approx(0.305)  # the mean of seeds 0 and 1
    assert len(fig.axes[1].get_legend().get_texts()) == 4  # beside the top-right panel


def test_ranks_get_an_ordered_palette_and_full_its_own_colour():
    fig = metric_vs_duration(synthetic_results(), "forgetting_avg")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert lines["full"].get_color() == style.FULL_COLOUR
    small, large = (np.mean(plt.matplotlib.colors.to_rgb(lines[k].get_color())) for k in ("LoRA r=4", "LoRA r=16"))
    assert large < small  # a larger rank is darker
    with_paper = metric_vs_duration(synthetic_results(), "forgetting_avg", paper=paper_tables())
    same = {line.get_label(): line.get_color() for line in with_paper.axes[0].get_lines()}
    assert same["LoRA r=16"] == lines["LoRA r=16"].get_color()  # a rank keeps its colour across figures


def test_missing_panels_say_not_run_and_one_seed_has_no_band():
    df = synthetic_results()
    only = df[((df.domain == "code") & (df.regime == "cpt") & (df.seed == 0)) | (df.method == "base")]
    fig = metric_vs_duration(only, "learning")
    code_cpt, *others = fig.axes
    assert len(labelled_lines(code_cpt)) == 4 and not code_cpt.collections
    for ax in others:
        assert not ax.axison and [t.get_text() for t in ax.texts] == ["not run"]


def test_settings_that_vary_split_lines_and_name_them():
    df = synthetic_results()
    other = df[(df.method == "full")].assign(learning_rate=1e-4, run_id=lambda d: d.run_id + "-lr1e-4")
    fig = metric_vs_duration(pd.concat([df, other]), "learning")
    labels = labelled_lines(fig.axes[0])
    assert labels[:2] == ["full, lr=0.0001", "full, lr=0.001"]
    assert fig.axes[0].get_lines()[0].get_linestyle() != fig.axes[0].get_lines()[1].get_linestyle()


def test_paper_row_is_added_below_ours():
    fig = metric_vs_duration(synthetic_results(), "forgetting_avg", paper=paper_tables())
    assert len(fig.axes) == 8
    paper_code_cpt = fig.axes[4]
    assert paper_code_cpt.get_title() == "paper (Llama-2-7B): code CPT"
    assert labelled_lines(paper_code_cpt) == ["full", "LoRA r=16 (0.4% of d)", "LoRA r=64 (1.6% of d)",
                                              "LoRA r=256 (6.2% of d)"]
    assert max(paper_code_cpt.get_lines()[0].get_xdata()) == 20e9


def test_paper_tables_use_our_column_names():
    paper = paper_tables()
    assert set(paper.metric) == {"learning", "forgetting_avg"}
    assert set(paper.duration_unit) == {"tokens", "epochs"}
    full_code_cpt = paper[(paper.domain == "code") & (paper.regime == "cpt") & (paper.method == "full")
                          & (paper.metric == "learning")]
    assert full_code_cpt.set_index("duration").value[20e9] == pytest.approx(0.263)
    assert paper.lora_rank.dropna().unique().tolist() == [16, 64, 256]


def test_tradeoff_connects_each_runs_checkpoints_and_stars_the_base():
    fig = tradeoff(synthetic_results(), learning_metric="learning")
    assert len(fig.axes) == 4
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3 * 2  # one line per run (3 methods × 2 seeds)
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points) == 3 * 2 + 1  # checkpoints per run + the base star
    sizes = points[0].get_sizes()
    assert len(sizes) == 3 and sizes[0] < sizes[-1]  # marker size grows with duration
    star = points[-1]
    assert star.get_offsets()[0].tolist() == pytest.approx([0.05, 0.90])
    texts = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert texts == ["full", "LoRA r=4", "LoRA r=16", "base model"]


def test_tradeoff_with_paper_row():
    fig = tradeoff(synthetic_results(), paper=paper_tables())
    assert len(fig.axes) == 8
    assert len(fig.axes[5].get_lines()) == 4  # paper code IFT: full + 3 ranks, one condition each


def test_savefig_writes_a_png(tmp_path):
    fig = metric_vs_duration(synthetic_results(), "learning")
    path = savefig(fig, tmp_path / "figs" / "fig1.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["fig1.png"]
