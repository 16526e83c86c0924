"""Selecting and summarising the sweep's extra arms (regularisation, modules, learning rate, α / rsLoRA) on a
synthetic results table, the memory tables against the printed ones, and the benchmark's bookkeeping."""
from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lorastudy import arms
from lorastudy.memory import LLAMA2_7B, llama_shapes
from lorastudy.results import COLUMNS

EPOCHS = [1.0, 2.0, 4.0]


def _run(domain="code", regime="ift", method="lora", rank=None, alpha=None, modules=None, lr=3e-3, wd=0.0,
         do=0.0, rslora=False, seed=0, arm="lora", learn=0.5, keep=0.5, status="completed") -> list[dict]:
    """One run's rows (learning, forgetting, held-out loss at three epochs): `learn` and `keep` are the
    learning and the source accuracy at the last epoch, reached linearly."""
    if method == "lora":
        alpha = 2 * rank if alpha is None else alpha
        modules = modules or "all"
    rid = f"{domain}-{regime}-{method}-r{rank}-a{alpha}-{modules}-lr{lr:g}-wd{wd:g}-do{do:g}-rs{rslora}-s{seed}"
    run = {"run_id": rid, "domain": domain, "regime": regime, "method": method, "lora_rank": rank,
           "lora_alpha": alpha, "target_modules": modules, "learning_rate": lr, "weight_decay": wd,
           "attention_dropout": do, "use_rslora": rslora, "seed": seed, "arm": arm, "status": status,
           "duration_unit": "epochs"}
    rows = []
    for i, epochs in enumerate(EPOCHS):
        ckpt = {**run, "checkpoint": f"epochs-{epochs:g}", "duration": epochs, "tokens_seen": 1000 * 2**i, "step": 10 * 2**i}
        frac = (i + 1) / len(EPOCHS)
        rows += [{**ckpt, "metric": f"learning_{domain}", "value": learn * frac},
                 {**ckpt, "metric": "forgetting_avg", "value": 1 - (1 - keep) * frac},
                 {**ckpt, "metric": "heldout_source_loss", "value": 1 + frac}]
    return rows


def synthetic(extended: bool = True) -> pd.DataFrame:
    """The mini grid on code IFT (full 1e-3, LoRA r4/16/64 at 3e-3), a math run, the base model and, with
    `extended`, every extra arm of mini-extended; full FT learns most and forgets most."""
    rows = [{"run_id": "base", "method": "base", "status": "completed", "checkpoint": "base", "duration": 0.0,
             "tokens_seen": 0, "step": 0, "metric": m, "value": v}
            for m, v in [("learning_code", 0.0), ("learning_math", 0.0), ("forgetting_avg", 1.0)]]
    rows += _run(method="full", lr=1e-3, arm="full", learn=0.9, keep=0.4)
    rows += _run(method="full", lr=1e-3, arm="full", learn=0.8, keep=0.5, seed=1)
    rows += _run(domain="math", method="full", lr=1e-3, arm="full", learn=0.3, keep=0.3)
    for rank, learn, keep in [(4, 0.3, 0.9), (16, 0.5, 0.85), (64, 0.7, 0.8)]:
        rows += _run(rank=rank, learn=learn, keep=keep)
    if extended:
        for wd, do, keep in [(0.05, 0, 0.46), (0.1, 0, 0.47), (0, 0.05, 0.44), (0, 0.1, 0.45)]:
            rows += _run(method="full", lr=1e-3, wd=wd, do=do, arm="regularization", learn=0.85, keep=keep)
        for rank in (4, 64):
            rows += _run(rank=rank, modules="attention", arm="modules", learn=0.1 * math.log2(rank), keep=0.9)
            rows += _run(rank=rank, modules="mlp", arm="modules", learn=0.12 * math.log2(rank), keep=0.85)
        rows += _run(method="full", lr=3e-4, arm="lr", learn=0.6, keep=0.7)
        rows += _run(method="full", lr=3e-3, arm="lr", learn=0.4, keep=0.2)
        rows += _run(rank=16, lr=1e-3, arm="lr", learn=0.3, keep=0.9)
        rows += _run(rank=16, lr=1e-2, arm="lr", learn=0.55, keep=0.6)
        rows += _run(rank=64, alpha=16, arm="alpha", learn=0.4, keep=0.9)
        rows += _run(rank=64, alpha=64, arm="alpha", learn=0.6, keep=0.85)
        rows += _run(rank=64, rslora=True, arm="rslora", learn=0.75, keep=0.7)
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_select_arm_keeps_one_panel_and_the_named_arms():
    df = synthetic()
    reg = arms.select_arm(df, "regularization")
    assert reg.run_id.nunique() == 4 and set(reg.arm) == {"regularization"}
    both = arms.select_arm(df, ["full", "lr"])
    assert set(both.domain) == {"code"} and set(both.regime) == {"ift"}  # the math full run is left out
    assert both.run_id.nunique() == 2 + 4
    assert arms.select_arm(df, "full", domain="math").run_id.nunique() == 1
    assert arms.select_arm(df, "nonexistent").empty


def test_panel_rows_normalise_settings_and_name_the_metrics():
    df = synthetic()
    df.loc[df.method == "full", "use_rslora"] = None
    df.loc[df.method == "full", "weight_decay"] = np.nan
    rows = arms.panel_rows(df)
    assert {"learning", "forgetting", "source_loss"} <= set(rows.columns)
    assert rows.use_rslora.dtype == bool and (rows.weight_decay >= 0).all()
    assert arms.panel_rows(df, domain="math", regime="cpt").empty
    base = arms.base_values(df)
    assert base["learning"] == 0.0 and base["forgetting"] == 1.0 and np.isnan(base["source_loss"])


def test_main_learning_rates_and_a_missing_method():
    rows = arms.panel_rows(synthetic())
    assert arms.main_learning_rate(rows, "full") == pytest.approx(1e-3)
    assert arms.main_learning_rate(rows, "lora") == pytest.approx(3e-3)
    only_lora = arms.panel_rows(synthetic()[lambda d: d.method != "full"])
    assert arms.main_learning_rate(only_lora, "full") is None


def test_regularization_selects_fig4_lines_and_computes_the_claims():
    sel = arms.regularization_runs(synthetic(), hidden_size=128)
    roles = sel.drop_duplicates("label").set_index("label").role
    assert list(roles.value_counts().sort_index().items()) == [
        ("LoRA high rank", 1), ("LoRA low rank", 1), ("full FT", 1), ("full FT + dropout", 2),
        ("full FT + weight decay", 2)]
    assert roles["LoRA r=64 (50% of d)"] == "LoRA high rank" and "full, wd=0.05" in roles
    assert not sel.learning_rate.isin([3e-4]).any() and 16 not in set(sel.lora_rank)  # no LR sweep, no middle rank
    table = arms.regularization_table(sel)
    full = table[table.role == "full FT"].iloc[0]
    assert full.n_seeds == 2 and full.learning == pytest.approx(0.85) and full.forgetting == pytest.approx(0.45)
    hi = table[table.role == "LoRA high rank"].iloc[0]
    assert hi.forgets_less_than_every_regularised_full is True
    assert hi.d_forgetting_vs_full == pytest.approx(0.35)
    verdict = arms.regularization_verdict(table)
    assert verdict.ours.tolist() == [True, True, True] and verdict.agrees.all()


def test_regularization_without_the_arm_says_none_not_crash():
    df = synthetic(extended=False)
    table = arms.regularization_table(arms.regularization_runs(df))
    assert set(table.role) == {"full FT", "LoRA low rank", "LoRA high rank"}
    assert table.forgets_less_than_every_regularised_full.isna().all()
    verdict = arms.regularization_verdict(table)
    assert verdict.ours.isna().all() and len(verdict) == 3
    empty = arms.regularization_runs(df[df.method == "base"])
    assert empty.empty and arms.regularization_verdict(arms.regularization_table(empty)).ours.isna().all()


def test_modules_grid_and_verdict():
    sel = arms.modules_runs(synthetic(), hidden_size=128)
    assert set(sel.lora_rank) == {4, 64}  # r16 has no attention/MLP runs
    assert set(sel.target_modules) == {"all", "mlp", "attention"}
    table = arms.modules_table(sel)
    assert table.shape == (6, 6) and table.loc[(64, "attention"), ("learning", 4.0)] == pytest.approx(0.6)
    verdict = arms.modules_verdict(sel).set_index("rank")
    assert bool(verdict.loc[64, "mlp_or_all_beats_attention"])
    assert verdict.loc[64, "best_modules"] == "mlp" and verdict.loc[64, "all_gap_to_best"] == pytest.approx(0.72 - 0.7)
    assert verdict.loc[4, "best_modules"] == "all"
    main_only = arms.modules_runs(synthetic(extended=False))
    assert set(main_only.target_modules) == {"all"} and arms.modules_verdict(main_only).empty


def test_best_learning_rate_and_ratio():
    table = arms.lr_table(arms.lr_runs(synthetic()))
    assert sorted(table[table.method == "full"].learning_rate) == pytest.approx([3e-4, 1e-3, 3e-3])
    assert sorted(table[table.method == "lora"].learning_rate) == pytest.approx([1e-3, 3e-3, 1e-2])
    assert set(table[table.method == "lora"].lora_rank) == {16}
    assert arms.best_learning_rate(table, "full") == pytest.approx(1e-3)
    assert arms.best_learning_rate(table, "lora") == pytest.approx(1e-2)
    assert arms.lr_ratio(table) == pytest.approx(10)
    assert arms.best_learning_rate(table, "full", metric="forgetting") == pytest.approx(3e-4)
    # a long results table is accepted as well
    assert arms.lr_ratio(synthetic()) == pytest.approx(10)
    grid = arms.lr_grid_summary(table).set_index("method")
    assert grid.loc["lora", "best_at_edge"] and not grid.loc["full", "best_at_edge"]
    assert grid.loc["full", "grid_step"] == pytest.approx(10**0.5, rel=0.1)


def test_best_learning_rate_ties_missing_and_nan():
    table = pd.DataFrame({"method": ["full", "full", "lora", "lora"], "lora_rank": [np.nan, np.nan, 16, 16],
                          "learning_rate": [1e-3, 3e-4, 1e-2, 3e-3], "learning": [0.5, 0.5, 0.2, np.nan]})
    assert arms.best_learning_rate(table, "full") == pytest.approx(3e-4)  # a tie goes to the smaller rate
    assert arms.best_learning_rate(table, "lora") == pytest.approx(1e-2)  # NaN is no candidate
    assert arms.best_learning_rate(table, "dora") is None
    assert arms.lr_ratio(table[table.method == "full"]) is None
    assert arms.lr_ratio(table.assign(learning=np.nan)) is None
    assert arms.best_learning_rate(table.iloc[:0], "full") is None
    grid = arms.lr_grid_summary(table).set_index("method")
    assert grid.loc["full", "tied_rates"] == "0.0003, 0.001"
    # a saturated last checkpoint: the rate that learned sooner wins the tie
    saturated = table.assign(learning=[1.0, 1.0, 0.2, 0.1], learning_mean=[0.7, 0.5, 0.1, 0.05])
    assert arms.best_learning_rate(saturated, "full") == pytest.approx(1e-3)
    assert arms.lr_grid_summary(saturated).set_index("method").loc["full", "tied_rates"] == ""
    assert arms.best_learning_rate(saturated, "full", metric="forgetting") is None  # no such column


def test_alpha_and_rslora_grouping():
    sel = arms.alpha_runs(synthetic(), hidden_size=128)
    assert set(sel.lora_rank) == {64} and sel.run_id.nunique() == 4
    table = arms.alpha_table(sel).set_index("label")
    assert list(table.index) == ["LoRA r=64 (50% of d), α=128 (2r)", "LoRA r=64 (50% of d), α=16 (0.25r)",
                                 "LoRA r=64 (50% of d), α=64 (1r)", "LoRA r=64 (50% of d), α=128 (2r), rsLoRA"]
    assert table.is_default.tolist() == [True, False, False, False]
    assert table.loc["LoRA r=64 (50% of d), α=128 (2r), rsLoRA", "scale"] == pytest.approx(128 / 8)
    assert table.loc["LoRA r=64 (50% of d), α=16 (0.25r)", "scale"] == pytest.approx(0.25)
    verdict = arms.alpha_verdict(arms.alpha_table(sel))
    assert verdict.ours.tolist() == [True, True]
    main_only = arms.alpha_table(arms.alpha_runs(synthetic(extended=False)))
    assert len(main_only) == 1 and main_only.lora_rank.iloc[0] == 64  # the highest rank present
    assert arms.alpha_verdict(main_only).ours.isna().all()


def test_plots_draw_a_line_per_label_and_survive_empty_selections():
    df = synthetic()
    sel = arms.regularization_runs(df, hidden_size=128)
    fig = arms.plot_vs_duration(sel, base=arms.base_values(df))
    assert isinstance(fig, Figure) and len(fig.axes[0].get_lines()) == sel.label.nunique() + 1
    assert isinstance(arms.plot_tradeoff(sel, base=arms.base_values(df)), Figure)
    assert isinstance(arms.plot_lr_sweep(arms.lr_table(arms.lr_runs(df))), Figure)
    empty = arms.modules_runs(df[df.method == "base"])
    assert isinstance(arms.plot_vs_duration(empty), Figure)


def test_paper_memory_tables_match_the_printed_ones():
    for model in ("7B", "70B"):
        assert arms.paper_memory_comparison(model)[("matches", "")].all()
    s16 = arms.paper_memory_comparison("405B")
    assert s16.loc["Adam", ("matches", "")]
    assert s16.loc["Adam + LoRA", ("mismatches", "")] == "16 GPUs"  # the paper prints 54.65 for 54.675


def test_lora_size_table_and_state_vs_activations():
    mini = llama_shapes(128, 384, 4, vocab=713)
    table = arms.lora_size_table({"7B": (LLAMA2_7B, LLAMA2_7B.n_params, 2), "mini": (mini, 944_384, 4)}, ranks=[16, 64])
    r16 = table.set_index(["model", "rank"]).loc[("7B", 16)]
    assert r16.lora_fraction == pytest.approx(0.006, abs=0.001) and r16.lora_saves > 0.8
    mini64 = table.set_index(["model", "rank"]).loc[("mini", 64)]
    assert mini64.rank_of_d == 0.5 and mini64.lora_fraction > 0.5 and mini64.lora_saves < 0.2
    sva = arms.state_vs_activations(mini, 944_384, [8, 32], 128, [4, 64])
    assert len(sva) == 2 * 3 and (sva.activations_MiB > sva.model_state_MiB).all()


def test_profile_model_reads_the_cached_mini_base(tmp_path, monkeypatch):
    from lorastudy.config import load_profile
    from lorastudy.modeling import mini_base_dir

    monkeypatch.setenv("LORASTUDY_CACHE", str(tmp_path))
    profile = load_profile("tiny")
    shapes, n_params, why = arms.profile_model(profile)
    assert shapes is None and "not built" in why
    folder = mini_base_dir(profile)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "vocab_size": 432, "tie_word_embeddings": True}))
    shapes, n_params, _ = arms.profile_model(profile)
    assert shapes.hidden == 64 and n_params == shapes.n_params - 432 * 64
    (folder / "base.json").write_text(json.dumps({"parameters": 109_888}))
    assert arms.profile_model(profile)[1] == 109_888


def test_bench_bookkeeping_uses_the_cache_and_compares_with_full(tmp_path):
    assert arms.bench_configs([4, 64], [8, 32]) == [
        ("trainer-full", 0, 8), ("trainer-full", 0, 32), ("trainer-lora", 4, 8), ("trainer-lora", 64, 8),
        ("trainer-lora", 4, 32), ("trainer-lora", 64, 32)]
    with pytest.raises(ValueError):
        arms.bench_configs([4], [8], mode="fast")
    for mode, rank, batch in arms.bench_configs([4], [8, 32]):  # pre-filled cache: no process is started
        tps = 1000.0 * (0.85 if rank else 1.0)
        mem = 500.0 + batch * (9 if rank else 10)
        (tmp_path / f"k-{mode}-r{rank}-b{batch}-s5.json").write_text(json.dumps(
            {"mode": mode, "rank": rank or None, "batch": batch, "tokens_per_s": tps, "peak_memory_MiB": mem,
             "trainable_params": 10 if rank else 100, "threads": 2}))
    bench = arms.run_bench("tiny", ranks=[4], batch_sizes=[8, 32], steps=5, cache_dir=tmp_path, key="k-")
    assert bench.cached.all() and len(bench) == 4
    summary = arms.bench_summary(bench)
    lora = summary[summary.method == "lora"].set_index("batch")
    assert lora.throughput_vs_full.tolist() == pytest.approx([0.85, 0.85])
    assert lora.loc[8, "memory_vs_full"] == pytest.approx(572 / 580)
    assert isinstance(arms.plot_bench(bench), Figure)
    with pytest.raises(ValueError):
        arms.run_bench("tiny", ranks=[4], batch_sizes=[8], steps=2)


def test_bench_verdict_and_shapes_from_a_count():
    from lorastudy.config import Architecture

    summary = pd.DataFrame({"batch": [8, 8, 32, 32], "method": ["full", "lora"] * 2, "rank": [None, 4] * 2,
                            "throughput_vs_full": [1, 0.85, 1, 0.9], "memory_vs_full": [1, 0.6, 1, 0.85]})
    verdict = arms.bench_verdict(summary)
    assert verdict.ours.tolist() == [True, True, True]
    assert arms.bench_verdict(summary[summary.method == "full"]).ours.isna().all()
    more = summary.assign(memory_vs_full=[1, 1.1, 1, 1.2])
    assert arms.bench_verdict(more).ours.tolist()[1:] == [False, None]
    shapes = arms.shapes_with_count(Architecture(), 944_384 - 713 * 128 + 1024 * 128)
    assert shapes.vocab == 1024
    with pytest.raises(ValueError):
        arms.shapes_with_count(Architecture(), 1000)


def test_lora_extra_memory_is_counted_for_lora_only():
    mini = llama_shapes(128, 384, 4, vocab=713)
    parts = arms.state_vs_activations(mini, 944_384, [4], 128, [4, 64]).set_index("method")
    assert parts.loc["full", "lora_extra_MiB"] == 0 and (parts.loc["lora", "lora_extra_MiB"] > 0).all()
    without = arms.state_vs_activations(mini, 944_384, [4], 128, [4], lora_dropout=False)
    assert without.lora_extra_MiB.iloc[1] < parts.loc["lora", "lora_extra_MiB"].iloc[0]


@pytest.mark.slow
def test_run_bench_measures_in_forked_processes(tmp_path):
    bench = arms.run_bench("tiny", ranks=[4], batch_sizes=[2], steps=3, cache_dir=tmp_path, threads=1)
    assert "error" not in bench or bench.error.isna().all()
    assert (bench.tokens_per_s > 0).all() and (bench.threads == 1).all() and not bench.cached.any()
    assert len(list(tmp_path.glob("*.json"))) == 2
    again = arms.run_bench("tiny", ranks=[4], batch_sizes=[2], steps=3, cache_dir=tmp_path, threads=1)
    assert again.cached.all()
