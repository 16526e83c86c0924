"""The paper's own numbers (v2, Tables S1–S8) in the column names our results table uses, so every figure
can draw them beside ours with the same code."""
from __future__ import annotations

from importlib.resources import files

import pandas as pd

PAPER_MODEL = "Llama-2-7B"
PAPER_HIDDEN_SIZE = 4096
_LEARNING = {"humaneval_pass@1", "gsm8k_acc"}
_UNITS = {"billion_tokens": ("tokens", 1e9), "epochs": ("epochs", 1.0)}


def paper_tables() -> pd.DataFrame:
    """Tables S1–S8 as long rows: domain, regime, method, lora_rank, duration (tokens or epochs), metric
    ('learning' = HumanEval pass@1 or GSM8K accuracy, or 'forgetting_avg') and value.

    A `run_id` per condition and `seed` 0 make the rows look like one seed of our own runs; `table`,
    `dataset` and `benchmark` keep where each number came from.
    """
    raw = pd.read_csv(files("lorastudy") / "resources" / "paper_v2_tables.csv")
    unit = raw.x_unit.map(lambda u: _UNITS[u][0])
    scale = raw.x_unit.map(lambda u: _UNITS[u][1])
    rank = raw.lora_rank.astype("Int64")
    run_id = ("paper-" + raw.domain + "-" + raw.regime + "-" + raw.method
              + rank.map(lambda r: "" if pd.isna(r) else f"-r{r}"))
    return pd.DataFrame({
        "run_id": run_id,
        "domain": raw.domain,
        "regime": raw.regime,
        "method": raw.method,
        "lora_rank": raw.lora_rank.astype(float),
        "seed": 0,
        "duration_unit": unit,
        "duration": raw.x * scale,
        "metric": raw.metric.where(~raw.metric.isin(_LEARNING), "learning"),
        "benchmark": raw.metric,
        "value": raw.value.astype(float),
        "table": raw.table,
        "dataset": raw.dataset,
    })
