"""The results table on a hand-made output tree: the base's rows, each finished run's rows with its planned
settings beside them (an unplanned or unfinished run left out), released checkpoints; the per-item table and
the mean of its items; the run records; tables written atomically as CSV or parquet; the wide view."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lorastudy.config import load_profile
from lorastudy.io import write_json
from lorastudy.layout import BASE_ID, EVALUATE_NOTEBOOK, FINETUNE_NOTEBOOK, Layout
from lorastudy.plan import find_run
from lorastudy.results import (
    COLUMNS,
    ITEM_COLUMNS,
    RUN_RECORD_COLUMNS,
    collect,
    collect_items,
    known_runs,
    run_records,
    wide,
    write_table,
)

PROFILE = load_profile("tiny")
FULL, LORA = "math-ift-full-lr0.001-s0", "code-ift-lora-r8-a16-all-lr0.003-s0"


def row(run_id: str, checkpoint: str, metric: str, value: float, tokens: int, duration: float = 1.0) -> dict:
    return {"run_id": run_id, "checkpoint": checkpoint, "duration": duration, "duration_unit": "epochs",
            "tokens_seen": tokens, "step": tokens // 10, "eval_seconds": 1.0, "metric": metric, "value": value}


def items(metric: str, values: list[float]) -> list[dict]:
    return [{"item": f"i{k}", "metric": metric, "value": v} for k, v in enumerate(values)]


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    """The base, a finished full run (two checkpoints, the longer first in its rows), a finished LoRA run that
    diverged, a trained run with no results yet, a folder the profile does not plan, and a released checkpoint."""
    layout = Layout(tmp_path)
    write_json(layout.base_eval, {"rows": [row(BASE_ID, "base", "learning_math", 0.1, 0, 0),
                                           row(BASE_ID, "base", "forgetting_avg", 0.9, 0, 0)],
                                  "items": items("learning_math", [0.0, 0.2])})
    full = layout.run(FULL)
    full_rows = [row(FULL, "epochs-1", "learning_math", 0.5, 2000), row(FULL, "epochs-1", "forgetting_avg", 0.7, 2000),
                 row(FULL, "epochs-0.5", "learning_math", 0.3, 1000, 0.5)]
    write_json(full.results_record, {"run_id": FULL, "status": "completed", "rows": full_rows})
    write_json(full.eval_record("epochs-1"), {"rows": full_rows[:2], "items": items("learning_math", [1.0, 0.0])})
    write_json(full.eval_record("epochs-0.5"), {"rows": full_rows[2:], "items": items("learning_math", [0.5, 0.1])})
    write_json(full.train_record, {"status": "completed", "parameters": {"trainable": 10, "total": 10},
                                   "n_examples": 200, "wall_time_s": 12.5, "diverged_at_step": None,
                                   "provenance": {"git": {"commit": "0123456789abcdef0123", "dirty": True}}})
    write_json(full.sweep_record, {"threads": 1, "notebook_seconds": {FINETUNE_NOTEBOOK: 30.0,
                                                                      EVALUATE_NOTEBOOK: 20.0}})
    lora = layout.run(LORA)
    write_json(lora.results_record, {"run_id": LORA, "status": "diverged",
                                     "rows": [row(LORA, "epochs-1", "learning_code", 0.0, 500)]})
    write_json(lora.eval_record("epochs-1"), {"rows": [], "items": []})
    write_json(lora.train_record, {"status": "diverged", "parameters": {"trainable": 2, "total": 12},
                                   "diverged_at_step": 3, "provenance": {"git": {}}})
    unfinished = layout.run("code-ift-full-lr0.001-s0")
    write_json(unfinished.train_record, {"status": "completed"})  # an older record: no provenance
    (layout.runs_dir / "aaa-never-trained").mkdir()  # a folder a killed run left before training ended
    (layout.runs_dir / "aaa-never-trained" / "sweep.log").write_text("killed\n")
    write_json(layout.run("not-planned-s9").results_record, {"status": "completed", "rows": [row(
        "not-planned-s9", "epochs-1", "learning_code", 1.0, 1)]})
    write_json(layout.released_eval("released-math-full"), {
        "rows": [{**row("released-math-full", "final", "learning_math", 0.4, 0), "arm": "released",
                  "method": "full", "status": "completed"}], "items": items("learning_math", [0.4])})
    return tmp_path


def test_collect_joins_each_run_s_settings_to_its_rows(out: Path) -> None:
    df = collect(PROFILE, out)
    assert list(df.columns) == COLUMNS
    assert set(df.run_id) == {BASE_ID, FULL, LORA, "released-math-full"}  # unplanned / unfinished left out
    base = df[df.run_id == BASE_ID]
    assert set(base.method) == {"base"} and set(base.status) == {"completed"} and len(base) == 2
    full = df[df.run_id == FULL]
    spec = find_run(PROFILE, FULL)
    assert set(full.method) == {"full"} and set(full.domain) == {"math"} and set(full.regime) == {"ift"}
    assert set(full.learning_rate) == {spec.learning_rate} and set(full.arm) == {spec.arm}
    assert set(full.status) == {"completed"} and set(df[df.run_id == LORA].status) == {"diverged"}
    assert set(df[df.run_id == LORA].lora_rank) == {8}
    # sorted by run, then tokens seen (so a run's checkpoints are in training order), then metric
    assert full[["checkpoint", "metric"]].values.tolist() == [["epochs-0.5", "learning_math"],
                                                              ["epochs-1", "forgetting_avg"],
                                                              ["epochs-1", "learning_math"]]
    assert df.run_id.tolist() == sorted(df.run_id) and full.value.tolist() == [0.3, 0.7, 0.5]
    released = df[df.run_id == "released-math-full"]
    assert released.arm.tolist() == ["released"] and released.value.tolist() == [0.4]


def test_collect_of_an_empty_folder_has_the_columns(tmp_path: Path) -> None:
    df = collect(PROFILE, tmp_path)
    assert df.empty and list(df.columns) == COLUMNS


def test_items_are_the_values_behind_each_checkpoint(out: Path) -> None:
    df = collect_items(PROFILE, out)
    assert list(df.columns) == ITEM_COLUMNS
    got = {(r.run_id, r.checkpoint): [] for r in df.itertuples()}
    for r in df.itertuples():
        got[(r.run_id, r.checkpoint)].append(r.value)
    assert got == {(BASE_ID, "base"): [0.0, 0.2], (FULL, "epochs-0.5"): [0.5, 0.1], (FULL, "epochs-1"): [1.0, 0.0],
                   ("released-math-full", "final"): [0.4]}
    assert df.item.map(type).eq(str).all() and df.run_id.tolist() == sorted(df.run_id)
    assert collect_items(PROFILE, out / "nothing").columns.tolist() == ITEM_COLUMNS


def test_run_records_read_every_trained_folder(out: Path) -> None:
    runs = run_records(PROFILE, out).set_index("run_id")
    assert list(run_records(PROFILE, out).columns) == RUN_RECORD_COLUMNS
    assert set(runs.index) == {FULL, LORA, "code-ift-full-lr0.001-s0"}  # trained, planned or not; not the base
    full = runs.loc[FULL]
    assert (full.status, full.trainable, full.total, full.n_examples, full.train_s) == ("completed", 10, 10, 200, 12.5)
    assert (full.finetune_notebook_s, full.evaluate_notebook_s, full.threads) == (30.0, 20.0, 1)
    assert full.commit == "0123456789ab (dirty)"
    assert runs.loc[LORA, "commit"] == "unknown" and runs.loc[LORA, "diverged_at_step"] == 3
    assert runs.loc[LORA, "trainable"] == 2 and pd.isna(runs.loc[LORA, "threads"])
    assert runs.loc["code-ift-full-lr0.001-s0", "commit"] == "unknown"


def test_known_runs_fall_back_to_the_stored_table(out: Path, tmp_path_factory) -> None:
    here = known_runs(PROFILE, out)
    assert set(here.run_id) == {FULL, LORA, "code-ift-full-lr0.001-s0"}
    snapshot = tmp_path_factory.mktemp("snap")
    write_table(here, Layout(snapshot).run_records)
    pd.testing.assert_frame_equal(known_runs(PROFILE, snapshot), here)
    write_table(here.iloc[:1], Layout(out).run_records)  # the folders win where they are here
    assert len(known_runs(PROFILE, out)) == 3
    assert known_runs(PROFILE, tmp_path_factory.mktemp("empty")).empty


@pytest.mark.parametrize("name, fmt", [("t.csv", None), ("t.parquet", None), ("t.data", "parquet"),
                                       ("t.out", "csv")])
def test_write_table_by_suffix_or_format(tmp_path: Path, name: str, fmt: str | None) -> None:
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    path = write_table(df, tmp_path / "sub" / name, fmt)
    assert path == tmp_path / "sub" / name and sorted(p.name for p in path.parent.iterdir()) == [name]
    parquet = fmt == "parquet" or name.endswith(".parquet")
    assert path.read_bytes().startswith(b"PAR1") == parquet
    back = pd.read_parquet(path) if parquet else pd.read_csv(path)
    pd.testing.assert_frame_equal(back, df)  # no index column
    write_table(df.iloc[[1, 0]], path, fmt)  # a filtered frame: its index is not kept either
    back = pd.read_parquet(path) if parquet else pd.read_csv(path)
    pd.testing.assert_frame_equal(back, df.iloc[[1, 0]].reset_index(drop=True))


def test_write_table_refuses_other_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="csv or parquet"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv", "json")
    assert not list(tmp_path.iterdir())


def test_wide_has_a_row_per_checkpoint_and_a_column_per_metric(out: Path) -> None:
    df = collect(PROFILE, out)
    w = wide(df)
    assert len(w) == 5 and {"learning_math", "forgetting_avg", "learning_code"} <= set(w.columns)
    full = w[w.run_id == FULL].set_index("checkpoint")
    assert full.loc["epochs-1", "learning_math"] == 0.5 and full.loc["epochs-1", "forgetting_avg"] == 0.7
    assert pd.isna(full.loc["epochs-0.5", "forgetting_avg"]) and full.loc["epochs-0.5", "duration"] == 0.5
    only = wide(df, ["forgetting_avg"])
    assert set(only.columns) - set(COLUMNS) == {"forgetting_avg"} and set(only.run_id) == {BASE_ID, FULL}
