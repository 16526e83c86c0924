"""Chapter 10's tables beside the claims: ranks as shares, headroom against the bounds."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lorastudy.analysis.learning_forgetting import headroom, ranks_table
from lorastudy.config import load_profile
from lorastudy.layout import Layout

PROFILE = load_profile("mini")


def _rows(run_id: str, method: str, rank: float | None, learn: float, keep: float, duration: float = 2.0) -> list[dict]:
    common = {"run_id": run_id, "domain": "code", "regime": "ift", "method": method, "lora_rank": rank,
              "arm": "base" if method == "base" else method, "status": "completed", "duration": duration,
              "checkpoint": f"epochs-{duration:g}", "learning_rate": 1e-3, "lora_alpha": None if rank is None else 2 * rank,
              "target_modules": None if rank is None else "all", "weight_decay": 0.0, "attention_dropout": 0.0,
              "use_rslora": False, "optimizer": "adamw", "seed": 0, "base_id": "b0"}
    return [{**common, "metric": "learning_code", "value": learn}, {**common, "metric": "forgetting_avg", "value": keep}]


def test_ranks_are_reported_as_shares_of_the_width_and_of_the_parameters(tmp_path: Path) -> None:
    df = pd.DataFrame(_rows("code-ift-lora-r2", "lora", 2, 0.1, 0.9) + _rows("code-ift-lora-r8", "lora", 8, 0.2, 0.8))
    for run_id, trainable in (("code-ift-lora-r2", 20_480), ("code-ift-lora-r8", 81_920)):
        record = Layout(tmp_path).run(run_id).train_record
        record.parent.mkdir(parents=True)
        record.write_text(json.dumps({"parameters": {"total": 944_128 + trainable, "trainable": trainable}}))
    table = ranks_table(PROFILE, df, tmp_path).set_index("rank")
    assert table.loc[2, "r_over_d"] == pytest.approx(2 / 128) and table.loc[8, "paper_rank"] == 256
    assert table.loc[8, "trainable_share"] == pytest.approx(81_920 / 944_128)
    assert table.loc[2, "paper_trainable_share"] == pytest.approx(0.024)


def test_headroom_flags_the_ceiling_the_floor_and_chance() -> None:
    df = pd.DataFrame(_rows("base", "base", None, 0.01, 0.95, duration=0.0) + _rows("full", "full", None, 0.99, 0.34)
                      + _rows("lora", "lora", 4, 0.03, 0.9))
    room = headroom(df, pd.DataFrame(columns=["run_id", "checkpoint", "metric", "item", "value"]),
                    load_profile("tiny")).set_index("arm")  # tiny: these arms choose no rate on validation
    assert room.loc["full", "at_ceiling"] and room.loc["full", "near_chance"] and not room.loc["full", "near_base"]
    assert room.loc["LoRA r=4", "near_base"] and not room.loc["LoRA r=4", "at_ceiling"]
    assert room.loc["full", "chance"] == pytest.approx((0.25 + 0.25 + 0.5) / 3, abs=0.02)


def test_nll_readings_put_the_answer_and_the_eos_reading_side_by_side() -> None:
    from lorastudy.analysis.completions import nll_readings

    def row(run_id, method, rank, duration, metric, value, regime="ift"):
        return {"run_id": run_id, "method": method, "lora_rank": rank, "domain": "code" if run_id != "base" else None,
                "regime": regime if run_id != "base" else None, "duration": duration, "metric": metric, "value": value}

    grid = pd.DataFrame([
        row("base", "base", None, 0, "answer_nll_code", 2.0), row("base", "base", None, 0, "answer_eos_nll_code", 3.0),
        row("f0", "full", None, 1, "answer_nll_code", 1.5), row("f0", "full", None, 2, "answer_nll_code", 1.0),
        row("f0", "full", None, 2, "answer_eos_nll_code", 1.1), row("f1", "full", None, 2, "answer_nll_code", 1.2),
        row("f1", "full", None, 2, "answer_eos_nll_code", 1.3), row("l0", "lora", 8, 2, "answer_nll_code", 1.8),
        row("l0", "lora", 8, 2, "answer_eos_nll_code", 2.5), row("f0", "full", None, 2, "learning_code", 0.4)])
    table = nll_readings(grid)
    assert list(table.arm) == ["base", "full", "LoRA r=8"] and set(table.panel) == {"code IFT"}
    assert table.answer.tolist() == pytest.approx([2.0, 1.1, 1.8])  # the longest duration, mean over seeds
    assert table.with_eos.tolist() == pytest.approx([3.0, 1.2, 2.5])
