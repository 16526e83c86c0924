"""Selecting and summarising the sweep's extra arms (regularisation, modules, learning rate, α / rsLoRA) on a
synthetic results table, and their figures (`analysis.selection`, `analysis.regularization`,
`analysis.sensitivity`, `figures.comparisons`, `figures.sensitivity`)."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lorastudy.analysis import regularization, selection, sensitivity
from lorastudy.figures.comparisons import plot_tradeoff, plot_vs_duration
from lorastudy.figures.sensitivity import plot_lr_sweep
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
           "attention_dropout": do, "use_rslora": rslora, "seed": seed, "base_id": f"b{seed}", "arm": arm, "status": status,
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
    `extended`, every extra arm of the mini grid; full FT learns most and forgets most."""
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
    reg = selection.select_arm(df, "regularization")
    assert reg.run_id.nunique() == 4 and set(reg.arm) == {"regularization"}
    both = selection.select_arm(df, ["full", "lr"])
    assert set(both.domain) == {"code"} and set(both.regime) == {"ift"}  # the math full run is left out
    assert both.run_id.nunique() == 2 + 4
    assert selection.select_arm(df, "full", domain="math").run_id.nunique() == 1
    assert selection.select_arm(df, "nonexistent").empty


def test_panel_rows_normalise_settings_and_name_the_metrics():
    df = synthetic()
    df.loc[df.method == "full", "use_rslora"] = None
    df.loc[df.method == "full", "weight_decay"] = np.nan
    rows = selection.panel_rows(df)
    assert {"learning", "forgetting", "source_loss"} <= set(rows.columns)
    assert rows.use_rslora.dtype == bool and (rows.weight_decay >= 0).all()
    assert selection.panel_rows(df, domain="math", regime="cpt").empty
    base = selection.base_values(df)
    assert base["learning"] == 0.0 and base["forgetting"] == 1.0 and np.isnan(base["source_loss"])


def test_main_learning_rates_and_a_missing_method():
    rows = selection.panel_rows(synthetic())
    assert selection.main_learning_rate(rows, "full") == pytest.approx(1e-3)
    assert selection.main_learning_rate(rows, "lora") == pytest.approx(3e-3)
    only_lora = selection.panel_rows(synthetic()[lambda d: d.method != "full"])
    assert selection.main_learning_rate(only_lora, "full") is None


def test_regularization_selects_fig4_lines_and_computes_the_claims():
    sel = regularization.regularization_runs(synthetic(), hidden_size=128)
    roles = sel.drop_duplicates("label").set_index("label").role
    assert list(roles.value_counts().sort_index().items()) == [
        ("LoRA high rank", 1), ("LoRA low rank", 1), ("full FT", 1), ("full FT + dropout", 2),
        ("full FT + weight decay", 2)]
    assert roles["LoRA r=64 (50% of d)"] == "LoRA high rank" and "full, wd=0.05" in roles
    assert not sel.learning_rate.isin([3e-4]).any() and 16 not in set(sel.lora_rank)  # no LR sweep, no middle rank
    table = regularization.regularization_table(sel)
    full = table[table.role == "full FT"].iloc[0]
    assert full.n_seeds == 2 and full.learning == pytest.approx(0.85) and full.forgetting == pytest.approx(0.45)
    hi = table[table.role == "LoRA high rank"].iloc[0]
    assert hi.forgets_less_than_every_regularised_full is True
    assert hi.d_forgetting_vs_full == pytest.approx(0.35)


def test_regularised_full_ft_is_compared_at_its_own_rate_when_validation_chose_another():
    df = synthetic()
    df = df[~((df.method == "full") & (df.seed == 1))]
    extra = pd.DataFrame(_run(method="full", lr=3e-4, arm="full", learn=0.6, keep=0.7, seed=1)
                         + _run(method="full", lr=3e-4, arm="full", learn=0.6, keep=0.7, seed=2), columns=COLUMNS)
    df = pd.concat([df, extra], ignore_index=True)
    assert selection.main_learning_rate(selection.panel_rows(df), "full") == pytest.approx(3e-4)
    sel = regularization.regularization_runs(df)
    full = sel[sel.method == "full"]
    assert set(full.learning_rate) == {1e-3} and "full FT" in set(full.role)  # plain full at the regularised rate


def test_regularization_without_the_arm_says_none_not_crash():
    df = synthetic(extended=False)
    table = regularization.regularization_table(regularization.regularization_runs(df))
    assert set(table.role) == {"full FT", "LoRA low rank", "LoRA high rank"}
    assert table.forgets_less_than_every_regularised_full.isna().all()
    empty = regularization.regularization_runs(df[df.method == "base"])
    assert empty.empty and regularization.regularization_table(empty).empty


def test_modules_grid_and_verdict():
    sel = sensitivity.modules_runs(synthetic(), hidden_size=128)
    assert set(sel.lora_rank) == {4, 64}  # r16 has no attention/MLP runs
    assert set(sel.target_modules) == {"all", "mlp", "attention"}
    table = sensitivity.modules_table(sel)
    assert table.shape == (6, 6) and table.loc[(64, "attention"), ("learning", 4.0)] == pytest.approx(0.6)
    main_only = sensitivity.modules_runs(synthetic(extended=False))
    assert set(main_only.target_modules) == {"all"}


def test_best_learning_rate_and_ratio():
    table = sensitivity.lr_table(sensitivity.lr_runs(synthetic()))
    assert sorted(table[table.method == "full"].learning_rate) == pytest.approx([3e-4, 1e-3, 3e-3])
    assert sorted(table[table.method == "lora"].learning_rate) == pytest.approx([1e-3, 3e-3, 1e-2])
    assert set(table[table.method == "lora"].lora_rank) == {16}
    assert sensitivity.best_learning_rate(table, "full") == pytest.approx(1e-3)
    assert sensitivity.best_learning_rate(table, "lora") == pytest.approx(1e-2)
    assert sensitivity.lr_ratio(table) == pytest.approx(10)
    assert sensitivity.best_learning_rate(table, "full", metric="forgetting") == pytest.approx(3e-4)
    # a long results table is accepted as well
    assert sensitivity.lr_ratio(synthetic()) == pytest.approx(10)
    grid = sensitivity.lr_grid_summary(table).set_index("method")
    assert grid.loc["lora", "best_at_edge"] and not grid.loc["full", "best_at_edge"]
    assert grid.loc["full", "grid_step"] == pytest.approx(10**0.5, rel=0.1)


def test_best_learning_rate_ties_missing_and_nan():
    table = pd.DataFrame({"method": ["full", "full", "lora", "lora"], "lora_rank": [np.nan, np.nan, 16, 16],
                          "learning_rate": [1e-3, 3e-4, 1e-2, 3e-3], "learning": [0.5, 0.5, 0.2, np.nan]})
    assert sensitivity.best_learning_rate(table, "full") == pytest.approx(3e-4)  # a tie goes to the smaller rate
    assert sensitivity.best_learning_rate(table, "lora") == pytest.approx(1e-2)  # NaN is no candidate
    assert sensitivity.best_learning_rate(table, "dora") is None
    assert sensitivity.lr_ratio(table[table.method == "full"]) is None
    assert sensitivity.lr_ratio(table.assign(learning=np.nan)) is None
    assert sensitivity.best_learning_rate(table.iloc[:0], "full") is None
    grid = sensitivity.lr_grid_summary(table).set_index("method")
    assert grid.loc["full", "tied_rates"] == "0.0003, 0.001"
    # a saturated last checkpoint: the rate that learned sooner wins the tie
    saturated = table.assign(learning=[1.0, 1.0, 0.2, 0.1], learning_mean=[0.7, 0.5, 0.1, 0.05])
    assert sensitivity.best_learning_rate(saturated, "full") == pytest.approx(1e-3)
    assert sensitivity.lr_grid_summary(saturated).set_index("method").loc["full", "tied_rates"] == ""
    assert sensitivity.best_learning_rate(saturated, "full", metric="forgetting") is None  # no such column


def test_alpha_and_rslora_grouping():
    sel = sensitivity.alpha_runs(synthetic(), hidden_size=128)
    assert set(sel.lora_rank) == {64} and sel.run_id.nunique() == 4
    table = sensitivity.alpha_table(sel).set_index("label")
    assert list(table.index) == ["LoRA r=64 (50% of d), α=128 (2r)", "LoRA r=64 (50% of d), α=16 (0.25r)",
                                 "LoRA r=64 (50% of d), α=64 (1r)", "LoRA r=64 (50% of d), α=128 (2r), rsLoRA"]
    assert table.is_default.tolist() == [True, False, False, False]
    assert table.loc["LoRA r=64 (50% of d), α=128 (2r), rsLoRA", "scale"] == pytest.approx(128 / 8)
    assert table.loc["LoRA r=64 (50% of d), α=16 (0.25r)", "scale"] == pytest.approx(0.25)
    main_only = sensitivity.alpha_table(sensitivity.alpha_runs(synthetic(extended=False)))
    assert len(main_only) == 1 and main_only.lora_rank.iloc[0] == 64  # the highest rank present


def per_item(df: pd.DataFrame, n: int = 100) -> pd.DataFrame:
    """Per-item rows behind a synthetic table: at each checkpoint the first share of the items are right,
    learning on code tasks, the source accuracy on each of tiny's three forgetting sets."""
    sets = ["hellaswag_acc_norm", "arc_challenge_acc_norm", "winogrande_acc"]
    rows = []
    for r in df[df.metric.isin(["learning_code", "forgetting_avg"])].itertuples():
        for metric in (["learning_code"] if r.metric == "learning_code" else sets):
            rows += [{"run_id": r.run_id, "checkpoint": r.checkpoint, "metric": metric, "item": f"{metric}{i}",
                      "value": float(i < round(r.value * n))} for i in range(n)]
    return pd.DataFrame(rows)


def test_extra_arm_claims_have_intervals_and_follow_the_data():
    from lorastudy.analysis.arm_claims import arm_claims
    from lorastudy.config import load_profile

    df = synthetic()
    claims = arm_claims(df, per_item(df), load_profile("tiny")).set_index("claim")
    # Fig 4: LoRA r=64 keeps 0.8 against regularised full FT's 0.44-0.47, learns 0.7 against 0.85
    fig4 = claims.filter(like="fig4/", axis=0)
    assert len(fig4) == 8 and (fig4.verdict == "agrees").all()
    assert claims.loc["fig4/lora-forgets-less/wd0.05", "estimate"] == pytest.approx(0.8 - 0.46)
    # Fig 7: all (0.3) and MLP (0.24) against attention (0.2) at r=4
    assert claims.loc["fig7/all-beats-attention/r4", "estimate"] == pytest.approx(0.1)
    assert claims.loc["fig7/all-beats-attention/r4", "verdict"] == "agrees"
    # Fig S3: alpha = 2r (0.7) against alpha 16 (0.4) and 64 (0.6) at r=64
    assert claims.loc["figS3/alpha-2r-learns-more/r64-a16", "estimate"] == pytest.approx(0.3)
    assert {"figS3/alpha-2r-learns-more/r64-a16", "figS3/alpha-2r-learns-more/r64-a64"} <= set(claims.index)
    # the same claims on flipped data disagree: the verdict follows the numbers, not the paper
    flipped = df.assign(value=np.where(df.metric == "learning_code", 1 - df.value, df.value))
    flip = arm_claims(flipped, per_item(flipped), load_profile("tiny")).set_index("claim")
    assert flip.loc["fig7/all-beats-attention/r4", "verdict"] == "disagrees"
    assert flip.loc["fig4/full-learns-more/wd0.05", "verdict"] == "disagrees"
    assert arm_claims(synthetic(extended=False), per_item(synthetic(extended=False)), load_profile("tiny")).empty


def test_plots_draw_a_line_per_label_and_survive_empty_selections():
    df = synthetic()
    sel = regularization.regularization_runs(df, hidden_size=128)
    fig = plot_vs_duration(sel, base=selection.base_values(df))
    assert isinstance(fig, Figure) and len(fig.axes[0].get_lines()) == sel.label.nunique() + 1
    assert isinstance(plot_tradeoff(sel, base=selection.base_values(df)), Figure)
    assert isinstance(plot_lr_sweep(sensitivity.lr_table(sensitivity.lr_runs(df))), Figure)
    empty = sensitivity.modules_runs(df[df.method == "base"])
    assert isinstance(plot_vs_duration(empty), Figure)




def test_what_the_chapters_print_and_which_arms_are_missing():
    df, main_only = synthetic(), synthetic(extended=False)
    assert selection.panel_ranks(df) == [4, 16, 64] and selection.panel_name("code", "ift") == "code IFT"
    sel = regularization.regularization_runs(df, hidden_size=128)
    assert regularization.has_regularised(sel) and selection.measured_metrics(sel) == ["learning", "forgetting",
                                                                                        "source_loss"]
    assert regularization.runs_text(sel).startswith(f"{sel.run_id.nunique()} runs in the comparison: full, ")
    decay = regularization.decay_table(sel).set_index("label")
    assert list(decay.index) == ["full, wd=0.05", "full, wd=0.1"]
    assert decay.loc["full, wd=0.1", "per_step_decay_at_peak"] == pytest.approx(1e-4)
    assert decay.loc["full, wd=0.1", "step"] == 40  # the longest duration's steps (10, 20, 40 in `synthetic`)
    assert decay.loc["full, wd=0.1", "decay_bound_over_run"] == pytest.approx(1 - (1 - 1e-4) ** 40)
    plain = regularization.regularization_runs(main_only)
    assert not regularization.has_regularised(plain) and regularization.decay_table(plain).empty
    assert not regularization.has_regularised(regularization.regularization_runs(df[df.method == "base"]))
    text = sensitivity.ranks_text(df, "code", "ift", 128)
    assert "r=64 (50.0% of d)" in text and "the paper (d = 4096): r=16 (0.4% of d)" in text
    assert sensitivity.ranks_text(df, "code", "ift", None).startswith("the paper")
    assert sensitivity.has_modules_arm(sensitivity.modules_runs(df))
    assert not sensitivity.has_modules_arm(sensitivity.modules_runs(main_only))
    table = sensitivity.lr_table(sensitivity.lr_runs(df))
    grid = sensitivity.lr_grid_summary(table)
    assert sensitivity.has_lr_sweep(grid) and "= 10** (the paper and LoRA Without Regret: about 10)" in (
        sensitivity.lr_ratio_text(table, grid))
    one = sensitivity.lr_table(sensitivity.lr_runs(main_only))
    assert not sensitivity.has_lr_sweep(sensitivity.lr_grid_summary(one))
    assert "no sweep" in sensitivity.lr_ratio_text(one, sensitivity.lr_grid_summary(one))
    assert sensitivity.lr_ratio_text(one.assign(learning=np.nan), grid).startswith("No ratio")
    alphas = sensitivity.alpha_table(sensitivity.alpha_runs(df))
    assert sensitivity.has_alpha_arm(alphas) and sensitivity.has_rslora_arm(alphas)
    alone = sensitivity.alpha_table(sensitivity.alpha_runs(main_only))
    assert not sensitivity.has_alpha_arm(alone) and not sensitivity.has_rslora_arm(alone)


def test_lion_runs_pair_lionw_with_the_adamw_candidates_of_the_same_method_and_rank():
    df = synthetic()
    lion = pd.DataFrame(_run(method="full", lr=3e-4, arm="lion", learn=0.7, keep=0.5) + _run(rank=16, lr=1e-3, arm="lion"),
                        columns=COLUMNS).assign(optimizer="lion")
    df = pd.concat([df.assign(optimizer="adamw"), lion], ignore_index=True)
    sel = sensitivity.lion_runs(df, hidden_size=128)
    assert set(sel[sel.optimizer == "lion"].learning_rate) == {3e-4, 1e-3}
    adamw = sel[sel.optimizer == "adamw"]
    assert set(adamw.arm) <= {"full", "lora"} and (adamw.seed == 0).all()
    assert set(adamw.method) == {"full", "lora"} and set(adamw.lora_rank.dropna()) == {16}  # only Lion's rank
    assert any("LionW" in label for label in sel.label) and sensitivity.lion_runs(synthetic()).empty
