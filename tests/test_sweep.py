"""The tiny study end to end through the CLI: sweep (papermill), results table, analyses and the book;
a sweep killed with SIGKILL and re-run gives the same table; --continue-on-error records a failure and goes on."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from lorastudy.config import load_profile
from lorastudy.layout import EVALUATE_NOTEBOOK, Layout
from lorastudy.plan import plan_runs
from lorastudy.results import collect, collect_items, selection_items
from lorastudy.tuning import runs_to_train

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "lorastudy.cli"]


pytestmark = pytest.mark.slow  # the whole tiny sweep, end to end: `make test-slow`

@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private cache, so the tiny world and base are built once for this module and never from outputs/."""
    return {**os.environ, "LORASTUDY_CACHE": str(tmp_path_factory.mktemp("cache")), "PYTHONUNBUFFERED": "1"}


def sweep(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "sweep", *args], env=env, capture_output=True, text=True, cwd=ROOT, **kw)


def table(out: Path) -> pd.DataFrame:
    return collect(load_profile("tiny"), out)


@pytest.fixture(scope="module")
def uninterrupted(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-a")
    proc = sweep(["tiny", "--output", str(out)], env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    TERMINAL["uninterrupted"] = proc.stdout + proc.stderr
    return out


TERMINAL: dict[str, str] = {}  # what a sweep printed, by fixture


def test_the_terminal_shows_base_progress_and_a_line_per_run(uninterrupted: Path) -> None:
    text = TERMINAL["uninterrupted"]
    assert "base pre-training" in text and "tokens/s" in text  # the bar read from the Trainer's progress file
    assert "running over TCP" not in text  # kernel noise stays in the logs
    runs = runs_to_train(load_profile("tiny"), table(uninterrupted), selection_items(load_profile("tiny"), uninterrupted))
    for spec in runs:
        assert f"[run] {spec.run_id} (" in text and f"learning_{spec.domain} " in text


def test_sweep_runs_every_notebook_and_writes_results(uninterrupted: Path) -> None:
    profile = load_profile("tiny")
    runs = runs_to_train(profile, table(uninterrupted), selection_items(profile, uninterrupted))
    # of the learning-rate candidates' second seeds (the two listed rates and the two beyond the edges), only the
    # rate chosen on validation trained; the low edge trained only if the best listed rate was the lowest
    waiting = [s for s in plan_runs(profile) if s.selection == "seed"]
    assert len(waiting) == 4 and sum((uninterrupted / "runs" / s.run_id).exists() for s in waiting) == 1
    chosen = next(s for s in waiting if (uninterrupted / "runs" / s.run_id).exists())
    assert chosen.run_id in {s.run_id for s in runs}
    assert (uninterrupted / "base" / "00_base_model.ipynb").is_file()
    for spec in runs:
        d = uninterrupted / "runs" / spec.run_id
        assert (d / "01_finetune.ipynb").is_file() and (d / "02_evaluate.ipynb").is_file()
        assert (d / "results.json").is_file()
    assert (uninterrupted / "analyses" / "10_learning_forgetting.ipynb").is_file()
    df = pd.read_csv(uninterrupted / "results.csv")
    assert set(df.run_id) == {"base", "base-1", *(s.run_id for s in runs)}  # tiny's two bases
    assert df.groupby("run_id").base_id.nunique().eq(1).all() and df.base_id.nunique() == 2
    for col in ["run_id", "domain", "regime", "method", "lora_rank", "lora_alpha", "target_modules", "learning_rate",
                "seed", "duration_unit", "duration", "tokens_seen", "metric", "value"]:
        assert col in df.columns
    assert {"forgetting_avg", "learning_code", "learning_math", "heldout_source_loss"} <= set(df.metric)
    # the validation NLL that tuning reads is measured at each run's longest duration, and only there
    trained = df[df.method != "base"]
    val = trained[trained.metric.str.startswith("val_answer_nll_")]
    longest = trained.groupby("run_id").duration.transform("max")
    assert set(val.run_id) == set(trained.run_id)
    assert (val.duration == longest[val.index]).all()
    assert val.groupby("run_id").size().eq(1).all()


def test_the_tiny_book_builds_with_warnings_as_errors(uninterrupted: Path, tmp_path: Path) -> None:
    """`make tiny`'s book: tiny leaves some arms out, so chapters take their "not run" branches, and a note left
    in a figure's cell (a duplicate label) or a scorecard link to a figure no chapter drew fails this build."""
    from lorastudy.publish.book import BOOK_DIR, build_book, crowded_figure_cells
    from lorastudy.publish.scorecard import figure_labels

    analyses = sorted((uninterrupted / "analyses").glob("1*.ipynb"))
    assert [p.name for p in analyses] == [f"{n}.ipynb" for n in load_profile("tiny").analyses]
    assert "not run in this profile" in (uninterrupted / "analyses" / "14_sensitivity.ipynb").read_text()
    for path in analyses:
        assert crowded_figure_cells(nbformat.read(path, as_version=4)) == [], path.name
    book_dir = Path(shutil.copytree(BOOK_DIR, tmp_path / "book", ignore=shutil.ignore_patterns("_build")))
    html = build_book("tiny", uninterrupted, book_dir=book_dir, strict=True)
    intro = (uninterrupted / "book_src" / "intro.md").read_text()
    linked = set(re.findall(r"<(fig-[\w-]+)>`", intro))
    assert linked and linked <= set(figure_labels(analyses)), linked - set(figure_labels(analyses))
    assert (html / "14_sensitivity.html").is_file()


def test_chapter_10_keeps_what_the_base_and_each_main_grid_run_wrote(uninterrupted: Path) -> None:
    """The completions summary the snapshot carries: the base's first items in both domains, each main-grid run's
    at its longest checkpoint, word for word as its evaluation wrote them, with the scorer's verdict."""
    from lorastudy.analysis.learning_forgetting import main_grid
    from lorastudy.io import read_jsonl

    layout = Layout(uninterrupted)
    sample = pd.read_parquet(layout.summary_table("10_learning_forgetting-completions"))
    base = sample[sample.run_id == "base"]
    assert set(base.domain) == {"code", "math"} and base.groupby("domain").size().eq(8).all()
    grid = main_grid(load_profile("tiny"), table(uninterrupted), collect_items(load_profile("tiny"), uninterrupted))
    runs = set(grid[grid.method != "base"].run_id)
    assert set(sample.run_id) == {"base", *runs}
    run_id = sorted(r for r in runs if r.startswith("math-"))[0]
    longest = grid[grid.run_id == run_id].sort_values("duration").checkpoint.iloc[-1]
    written = read_jsonl(layout.run(run_id).eval_outputs(longest) / "math_predictions.jsonl")[:8]
    mine = sample[sample.run_id == run_id]
    assert list(mine.completion) == [w["completion"] for w in written]
    assert list(mine.correct) == [w["strict_correct"] for w in written]


def test_rerun_skips_finished_runs(uninterrupted: Path, env: dict[str, str]) -> None:
    before = {p: p.stat().st_mtime for p in uninterrupted.glob("runs/*/results.json")}
    proc = sweep(["tiny", "--output", str(uninterrupted), "--no-analyses"], env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already done" in proc.stdout
    assert before == {p: p.stat().st_mtime for p in uninterrupted.glob("runs/*/results.json")}


def test_results_command_writes_csv_and_parquet(uninterrupted: Path, env: dict[str, str], tmp_path: Path) -> None:
    for fmt in ("csv", "parquet"):
        out = tmp_path / f"r.{fmt}"
        proc = subprocess.run([*CLI, "results", "tiny", "--output", str(uninterrupted), "--format", fmt, "--out",
                               str(out)], env=env, capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        df = pd.read_parquet(out) if fmt == "parquet" else pd.read_csv(out)
        assert len(df) == len(table(uninterrupted))


def test_per_item_results_average_to_the_table(uninterrupted: Path) -> None:
    """Every metric with per-item values is their mean in results.csv (the bootstrap resamples what the table shows)."""
    items = pd.read_parquet(uninterrupted / "items.parquet")
    df = pd.read_csv(uninterrupted / "results.csv")
    assert {"learning_code", "learning_math", "answer_nll_code", "answer_nll_math", "hellaswag_acc_norm",
            "winogrande_acc"} <= set(items.metric)
    means = items.groupby(["run_id", "checkpoint", "metric"]).value.mean().rename("mean").reset_index()
    both = means.merge(df, on=["run_id", "checkpoint", "metric"], how="left")
    assert both.value.notna().all() and len(both) > 0
    assert (both["mean"] - both.value).abs().max() < 1e-9
    n = items.groupby(["run_id", "checkpoint", "metric"]).item.nunique()
    profile = load_profile("tiny")
    assert n.xs("hellaswag_acc_norm", level="metric").eq(profile.eval.forgetting["hellaswag"].dataset.limit).all()
    nll = items[items.metric.str.startswith("answer_nll")].value
    assert (nll > 0).all() and nll.notna().all()


def test_claims_command_gives_verdicts_consistent_with_intervals(uninterrupted: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([*CLI, "claims", "tiny", "--output", str(uninterrupted)], env=env, capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from io import StringIO

    claims = pd.read_csv(StringIO(proc.stdout))
    assert list(claims.columns) == ["claim", "statement", "panel", "estimate", "ci_low", "ci_high", "n_bases",
                                    "n_items", "verdict", "paper", "per_base"]
    assert len(claims) > 0 and claims.claim.is_unique
    excludes_zero = (claims.ci_low > 0) | (claims.ci_high < 0)  # False where untestable (no interval)
    assert (claims.verdict[~excludes_zero] == "cannot tell").all()
    assert claims.verdict[excludes_zero].isin(["agrees", "disagrees"]).all()
    assert (claims.ci_low <= claims.ci_high)[claims.estimate.notna()].all()
    main = claims[~claims.claim.str.startswith("matched/")]  # a difference of means lies inside its interval
    assert ((main.ci_low <= main.estimate + 1e-9) & (main.estimate <= main.ci_high + 1e-9)).all()
    assert {c.split("/")[0] for c in claims.claim} >= {"full-learns-more", "lora-forgets-less", "matched"}


KILL_RUNS = ["math-cpt-full-lr0.001-s0", "code-ift-lora-r8-a16-all-lr0.003-s0", "code-ift-full-lr0.001-wd0.1-s0"]


def test_killed_sweep_resumes_to_the_same_table(uninterrupted: Path, env: dict[str, str],
                                                tmp_path: Path) -> None:
    out = tmp_path / "tiny-b"
    only = ["--no-analyses", "--only", *KILL_RUNS]
    proc = subprocess.Popen([*CLI, "sweep", "tiny", "--output", str(out), *only], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    try:  # kill once one run is done while another is under way (a fixed wait after the first let a fast host
        # finish all three)
        while time.time() < deadline and proc.poll() is None:
            finished = {p.parent for p in out.glob("runs/*/results.json")}
            if finished and {p.parent for p in out.glob("runs/*/attempts.jsonl")} - finished:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # into that run's training or evaluation
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = list(out.glob("runs/*/results.json"))
    assert 1 <= len(done) < len(KILL_RUNS), "the kill should land mid-sweep"
    resumed = sweep(["tiny", "--output", str(out), *only], env, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # no partial file survives the resume: every hidden name a write goes through (`.NAME.*.tmp` of an atomic
    # write, `.LABEL.tmp` of a checkpoint, `.NAME.PID.ipynb` of a notebook) is gone, only the run locks stay,
    # and every record reads whole
    hidden = sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.name != ".lock")
    assert not hidden, f"partial files left behind: {hidden}"
    assert all(Layout(out).run(r).done() for r in KILL_RUNS)  # results and both executed notebooks
    for path in [*out.rglob("*.json"), *out.rglob("*.ipynb")]:
        json.loads(path.read_text())
    a, b = table(uninterrupted), table(out)
    a = a[(a.method == "base") | a.run_id.isin(KILL_RUNS)]
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=False, rtol=1e-6)
    items_a, items_b = collect_items(load_profile("tiny"), uninterrupted), collect_items(load_profile("tiny"), out)
    items_a = items_a[items_a.run_id.isin(["base", "base-1", *KILL_RUNS])].reset_index(drop=True)
    pd.testing.assert_frame_equal(items_a, items_b.reset_index(drop=True), check_exact=False, rtol=1e-6)


def test_a_run_killed_before_its_notebook_was_saved_is_redone(uninterrupted: Path, env: dict[str, str],
                                                              tmp_path: Path) -> None:
    """Killed between the evaluation notebook's writing results.json and papermill's saving the notebook: the
    run is not done (the book could not show it), so the next sweep runs its notebooks again, from its cached
    training and evaluation, and the half-written notebook goes."""
    run_id = KILL_RUNS[1]
    out = tmp_path / "tiny-c"
    shutil.copytree(uninterrupted / "base", out / "base")
    shutil.copytree(uninterrupted / "runs" / run_id, out / "runs" / run_id)
    paths = Layout(out).run(run_id)
    trained = paths.train_record.read_text()
    stale = paths.dir / f".{Path(EVALUATE_NOTEBOOK).stem}.4242.ipynb"
    paths.notebook(EVALUATE_NOTEBOOK).rename(stale)
    assert paths.evaluated() and not paths.done()
    proc = sweep(["tiny", "--output", str(out), "--no-analyses", "--only", run_id], env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert paths.done() and not stale.exists()
    assert paths.train_record.read_text() == trained  # training was not redone
    assert len(paths.attempts.read_text().splitlines()) == 2


def test_continue_on_error_records_failure_and_goes_on(env: dict[str, str], tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw["data"]["math"]["cpt"]["source"] = str(tmp_path / "missing.jsonl")
    profile_path = tmp_path / "broken.yaml"
    profile_path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "broken-out"
    good, bad = "code-ift-lora-r8-a16-all-lr0.003-s0", "math-cpt-full-lr0.001-s0"
    proc = sweep([str(profile_path), "--output", str(out), "--continue-on-error", "--no-analyses",
                  "--only", bad, good], env, timeout=900)
    assert proc.returncode == 1
    assert f"FAILED {bad}" in proc.stderr and "FileNotFoundError" in proc.stderr
    assert (out / "runs" / bad / "failed.json").is_file()
    assert (out / "runs" / good / "results.json").is_file()
