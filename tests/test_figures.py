"""The house plots on a synthetic results table: the right panels, one line per method/rank, seed bands,
the base model, and the paper's row; rank colours that stay apart in greyscale; seeds drawn as one line with
a band (or error bars) everywhere; widths that fit the book."""
from __future__ import annotations

import colorsys
import itertools
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.colors import to_rgb

from lorastudy.analysis import selection, sensitivity
from lorastudy.config import ATTENTION_MODULES, MLP_MODULES
from lorastudy.figures import style
from lorastudy.figures.comparisons import plot_tradeoff, plot_vs_duration
from lorastudy.figures.learning_forgetting import metric_vs_duration, tradeoff
from lorastudy.figures.sensitivity import plot_lr_sweep
from lorastudy.figures.spectra import plot_rank_by_duration, plot_rank_by_layer
from lorastudy.figures.style import PANELS, SEED_NOTE, savefig
from lorastudy.paper import paper_tables
from lorastudy.plan import method_label
from lorastudy.results import COLUMNS, wide

FIGURES = Path(__file__).resolve().parents[1] / "src" / "lorastudy" / "figures"

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
    texts = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]  # beside the top-right panel
    assert texts == ["full", "LoRA r=4 (3.1% of d)", "LoRA r=16 (12.5% of d)", "base model", SEED_NOTE["band"]]


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
    assert SEED_NOTE["band"] not in [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
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


def test_tradeoff_connects_each_methods_checkpoints_and_stars_the_base():
    fig = tradeoff(synthetic_results(), learning_metric="learning")
    assert len(fig.axes) == 4
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3  # one path per method/rank: the mean over its 2 seeds
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points) == 3 + 1  # checkpoints per method/rank + the base star
    sizes = points[0].get_sizes()
    assert len(sizes) == 3 and sizes[0] < sizes[-1]  # marker size grows with duration
    full = ax.get_lines()[0]
    assert full.get_xdata()[0] == pytest.approx(0.305)  # learning of seeds 0 and 1, averaged
    star = points[-1]
    assert star.get_offsets()[0].tolist() == pytest.approx([0.05, 0.90])
    texts = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert texts == ["full", "LoRA r=4", "LoRA r=16", "base model", SEED_NOTE["bars"]]


def test_tradeoff_with_paper_row():
    fig = tradeoff(synthetic_results(), paper=paper_tables())
    assert len(fig.axes) == 8
    assert len(fig.axes[5].get_lines()) == 4  # paper code IFT: full + 3 ranks, one condition each


def test_savefig_writes_a_png(tmp_path):
    fig = metric_vs_duration(synthetic_results(), "learning")
    path = savefig(fig, tmp_path / "figs" / "fig1.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["fig1.png"]


# ----------------------------------------------------------------------------- colours in grey
def luminance(colour) -> float:
    """Relative luminance (Rec. 709 weights on linearised sRGB): the grey a colour becomes in print."""
    rgb = np.array(to_rgb(colour))
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def hue_distance(a, b) -> float:
    """How far apart two colours' hues are on the colour wheel, in degrees (0 … 180)."""
    ha, hb = (colorsys.rgb_to_hls(*to_rgb(c))[0] * 360 for c in (a, b))
    return min(abs(ha - hb), 360 - abs(ha - hb))


def test_rank_colours_stay_apart_in_grey_and_full_ft_stands_out():
    mini, paper = [1, 2, 8], [16, 64, 256]  # the mini study's ranks and the paper's
    grey = {r: luminance(style.rank_colour(r)) for r in [2 ** k for k in range(9)]}
    ranks = sorted(grey)
    assert all(grey[a] > grey[b] for a, b in zip(ranks, ranks[1:]))  # darker with every doubling
    assert all(grey[a] - grey[b] >= 0.08 for a, b in [(1, 2), (2, 8)])  # the mini ranks read apart in grey
    assert grey[1] <= 0.6  # the lightest rank is still seen on white
    full = style.method_colour("full")
    assert all(hue_distance(full, style.rank_colour(r)) >= 60 for r in ranks)  # another hue than every rank
    assert all(abs(luminance(full) - grey[r]) >= 0.05 for r in mini + paper)  # and another grey than those used
    assert style.method_colour("lora", 8) == style.rank_colour(8)
    assert len(set(to_rgb(style.method_colour("base")))) == 1  # the base is grey (and dashed, or a star)


def test_figure_modules_take_their_colours_from_the_style():
    """No colour literal outside style.py: every figure reads the house colours."""
    literal = re.compile(r"""["'](#[0-9a-fA-F]{3,8}|0?\.\d+|1\.0)["']|colou?rs?=["'](?!none|white)[a-z]+["']""")
    found = [f"{path.name}:{n}: {line.strip()}" for path in sorted(FIGURES.glob("*.py")) if path.name != "style.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert not found, "\n".join(found)


# ----------------------------------------------------------------------------- seeds: one line and a band
def seed_table(full_seeds=(0, 1, 2), lora_seeds=(0,), full_lrs=(1e-3,), lora_lrs=(1e-3,)) -> pd.DataFrame:
    """Full FT (3 seeds by default) and LoRA r=8 (1 seed) in all four panels, code IFT-style epochs, whose
    values move with the seed, plus the base model's rows."""
    base = {"run_id": "base", "method": "base", "status": "completed", "checkpoint": "base", "duration": 0.0,
            "tokens_seen": 0, "step": 0}
    rows = [{**base, "metric": m, "value": v}
            for m, v in [("learning_code", 0.05), ("learning_math", 0.10), ("forgetting_avg", 0.90)]]
    arms = [("full", np.nan, lr, seed) for lr in full_lrs for seed in full_seeds]
    arms += [("lora", 8, lr, seed) for lr in lora_lrs for seed in lora_seeds]
    for (domain, regime), (method, rank, lr, seed) in itertools.product(PANELS, arms):
        unit, durations = DURATIONS[regime]
        run = {"run_id": f"{domain}-{regime}-{method}-r{rank}-lr{lr:g}-s{seed}", "domain": domain, "regime": regime,
               "method": method, "lora_rank": rank, "lora_alpha": 2 * rank,
               "target_modules": None if method == "full" else "all", "learning_rate": lr, "weight_decay": 0.0,
               "attention_dropout": 0.0, "use_rslora": False, "optimizer": "adamw", "seed": seed,
               "arm": method, "status": "completed", "duration_unit": unit}
        strength = (1.0 if method == "full" else 0.5) * (1 + np.log10(lr / 1e-3) / 4)
        for i, duration in enumerate(durations):
            ckpt = {**run, "checkpoint": f"ckpt-{i}", "duration": duration, "tokens_seen": int(1e5 * 2 ** i),
                    "step": 10 * 2 ** i}
            rows.append({**ckpt, "metric": f"learning_{domain}", "value": 0.1 + 0.2 * strength * (i + 1) + 0.02 * seed})
            rows.append({**ckpt, "metric": "forgetting_avg", "value": 0.9 - 0.1 * strength * (i + 1) - 0.01 * seed})
    return pd.DataFrame(rows, columns=COLUMNS)


def seed_selection(df: pd.DataFrame) -> pd.DataFrame:
    """code IFT's runs as the chapters' selections are: wide rows with a `label` per line."""
    sel = selection.panel_rows(df, "code", "ift")
    return sel.assign(label=[method_label(m, r) for m, r in zip(sel.method, sel.lora_rank)], variant=0)


def bands(ax) -> list[PolyCollection]:
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def error_bars(ax) -> list[LineCollection]:
    return [c for c in ax.collections if isinstance(c, LineCollection)]


def same_colour(a, b) -> bool:
    return np.allclose(to_rgb(a), to_rgb(b))


def legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if legend
            for t in legend.get_texts()]


def test_a_three_seed_arm_is_one_line_with_a_band_and_a_one_seed_arm_a_bare_line():
    df = seed_table()
    sel = seed_selection(df)
    figures = [metric_vs_duration(df, "learning"), metric_vs_duration(df, "forgetting_avg"),
               plot_vs_duration(sel, ["learning", "forgetting"], base=selection.base_values(df))]
    for fig in figures:
        for ax in [ax for ax in fig.axes if ax.axison]:
            assert labelled_lines(ax)[:2] == ["full", "LoRA r=8"]  # one line per arm, not one per seed
            (band,) = bands(ax)  # the 3-seed arm's band; the 1-seed arm has none
            assert same_colour(band.get_facecolor()[0][:3], style.method_colour("full"))
        assert SEED_NOTE["band"] in legend_texts(fig)
    full = [line for line in figures[0].axes[0].get_lines() if line.get_label() == "full"][0]
    assert full.get_ydata()[0] == pytest.approx(0.1 + 0.2 + 0.02)  # the mean of seeds 0, 1, 2
    band = bands(figures[0].axes[0])[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(0.3) and band.max() == pytest.approx(0.1 + 0.6 + 0.04)  # min–max


def test_one_seed_everywhere_draws_no_band_and_no_note():
    df = seed_table(full_seeds=(0,))
    for fig in [metric_vs_duration(df, "learning"), plot_vs_duration(seed_selection(df))]:
        assert all(not bands(ax) for ax in fig.axes)
        assert SEED_NOTE["band"] not in legend_texts(fig)


def test_tradeoffs_draw_seeds_as_error_bars_on_one_path():
    df = seed_table()
    for fig in [tradeoff(df), plot_tradeoff(seed_selection(df), base=selection.base_values(df))]:
        for ax in [ax for ax in fig.axes if ax.axison]:
            assert len(ax.get_lines()) == 2  # full and LoRA r=8: one path each
            bars = error_bars(ax)
            assert len(bars) == 2  # x and y bars, of the 3-seed arm only
            assert all(same_colour(b.get_color()[0][:3], style.method_colour("full")) for b in bars)
            assert len(bars[0].get_segments()) == 3  # one bar per checkpoint
        assert SEED_NOTE["bars"] in legend_texts(fig)
    single = tradeoff(seed_table(full_seeds=(0,)))
    assert all(not error_bars(ax) for ax in single.axes) and SEED_NOTE["bars"] not in legend_texts(single)


def test_lr_sweep_draws_seed_bands_from_its_runs():
    df = seed_table(full_lrs=(1e-4, 1e-3, 1e-2), lora_lrs=(1e-3, 1e-2, 1e-1))
    runs = sensitivity.lr_runs(df)
    table = sensitivity.lr_table(runs)
    fig = plot_lr_sweep(table, runs=runs)
    for ax in fig.axes:
        assert labelled_lines(ax) == ["full", "LoRA r=8"]
        assert len(ax.get_lines()[0].get_xdata()) == 3
        (band,) = bands(ax)
        assert same_colour(band.get_facecolor()[0][:3], style.method_colour("full"))
    assert SEED_NOTE["band"] in legend_texts(fig)
    means = plot_lr_sweep(table)  # without the runs: the table's means, nothing to draw a band from
    assert all(not bands(ax) for ax in means.axes)
    assert list(means.axes[0].get_lines()[0].get_ydata()) == pytest.approx(list(fig.axes[0].get_lines()[0].get_ydata()))


def rank_rows(seeds: dict[tuple[str, str], tuple[int, ...]]) -> pd.DataFrame:
    """A `rank_table` of full-FT runs (seeds per panel), 2 layers, every module, 2 checkpoints."""
    rows = []
    for (domain, regime), panel_seeds in seeds.items():
        for seed, (i, duration), layer, module in itertools.product(panel_seeds, enumerate([1.0, 2.0]), [0, 1],
                                                                    [*ATTENTION_MODULES, *MLP_MODULES]):
            rows.append({"run_id": f"{domain}-{regime}-full-s{seed}", "arm": "full", "domain": domain,
                         "regime": regime, "method": "full", "lora_rank": np.nan, "lora_alpha": np.nan,
                         "target_modules": None, "learning_rate": 1e-4, "weight_decay": 0.0,
                         "attention_dropout": 0.0, "use_rslora": False, "optimizer": "adamw", "seed": seed,
                         "checkpoint": f"ckpt-{i}", "duration": duration, "duration_unit": "epochs",
                         "tokens_seen": 1000 * 2 ** i, "step": 10 * 2 ** i, "layer": layer, "module": module,
                         "module_type": "attention" if module in ATTENTION_MODULES else "mlp",
                         "rank90": 10 + 2 * i + layer + seed})
    return pd.DataFrame(rows)


def test_spectra_figures_average_seeds_into_one_line_with_a_band():
    ranks = rank_rows({("code", "cpt"): (0, 1, 2), ("code", "ift"): (0,)})
    reference = pd.DataFrame({"module_type": ["attention", "mlp"], "base_rank90": [40, 45],
                              "gaussian_rank90": [50, 55]})
    fig = plot_rank_by_duration(ranks, reference)
    code_cpt, code_ift = fig.axes[:2]
    full = [line for line in code_cpt.get_lines() if line.get_marker() != "None"]
    assert len(full) == 2 and len(bands(code_cpt)) == 2  # attention and MLP, each the mean of 3 seeds
    assert full[0].get_ydata()[0] == pytest.approx(10 + 0.5 + 1)  # mean over layers, then over seeds
    assert len([line for line in code_ift.get_lines() if line.get_marker() != "None"]) == 2
    assert not bands(code_ift)
    by_layer = plot_rank_by_layer(ranks)
    titles = [sub.get_suptitle() for sub in by_layer.subfigs]
    assert titles == ["code CPT full (lr=0.0001), 3 seeds", "code IFT full (lr=0.0001)"]  # a row per setting
    first, single = by_layer.axes[0], by_layer.axes[2]
    assert len(first.get_lines()) == len(ATTENTION_MODULES) + len(MLP_MODULES) == len(bands(first))
    assert not bands(single)
    assert SEED_NOTE["band"] in legend_texts(by_layer)


# ----------------------------------------------------------------------------- fits the book
def test_figures_fit_the_books_width_with_their_legends():
    """The book's column is ~7.5 in; no figure, legend included, may be wider than ~10 in."""
    df = seed_table()
    sel = seed_selection(df).assign(label=lambda d: d.label + ", a rather long variant name")
    figures = {"Fig 1": metric_vs_duration(synthetic_results(), "learning", paper=paper_tables(), hidden_size=128),
               "Fig 3": tradeoff(synthetic_results(), paper=paper_tables(), hidden_size=128),
               "3 metrics": plot_vs_duration(sel.assign(source_loss=1.0), ["learning", "forgetting", "source_loss"]),
               "2 metrics": plot_vs_duration(sel),
               "trade-off": plot_tradeoff(sel),
               "lr sweep": plot_lr_sweep(sensitivity.lr_table(sensitivity.lr_runs(df)))}
    for name, fig in figures.items():
        fig.canvas.draw()
        width = fig.get_tightbbox(fig.canvas.get_renderer()).width
        assert width <= 10.0, f"{name} is {width:.1f} in wide"
    three = figures["3 metrics"]
    assert three.legends and not any(ax.get_legend() for ax in three.axes)  # below the row, not beside it


def test_a_trade_off_path_of_equal_seeds_draws_even_when_their_mean_rounds_outside_them() -> None:
    """Three seeds that all score 0.1 average to 0.10000000000000002 > their max: the error bar is zero, not an
    error (the mini study's chapter 10 stopped on it once)."""
    import matplotlib.pyplot as plt

    from lorastudy.figures.style import seed_path

    rows = pd.DataFrame({"duration": [1.0] * 3 + [2.0] * 3, "x": [0.1] * 3 + [0.2, 0.3, 0.4],
                         "y": [0.7] * 3 + [0.5, 0.6, 0.7]})
    assert rows[rows.duration == 1.0].x.mean() > 0.1
    fig, ax = plt.subplots()
    _, stats = seed_path(ax, rows, "x", "y")
    plt.close(fig)
    assert list(stats.n) == [3, 3]
