"""The paper's printed numbers, in one place: Tables S1–S8 (v2) in the column names our results table uses,
so every figure can draw them beside ours with the same code, and the numbers the regularisation,
sensitivity and memory chapters compare with (Figs S1, S10, Appendix H's Tables S14–S16)."""
from __future__ import annotations

from importlib.resources import files

import pandas as pd

PAPER_MODEL = "Llama-2-7B"
PAPER_HIDDEN_SIZE = 4096
PAPER_RANKS = (16, 64, 256)  # the LoRA ranks of the paper's sweeps
PAPER_LR_RATIO = 10  # Fig S1: LoRA's best learning rate over full FT's, about 10 (as LoRA Without Regret reports)

# Fig S10 (Llama-2-7B on one node of 8×H100): LoRA's throughput and peak memory as fractions of full FT's
PAPER_LORA_THROUGHPUT_RATIO = 0.85
PAPER_LORA_MEMORY_RATIO = {"small batch": 0.6, "large batch": 0.85}
PAPER_NODE_GPUS = 8
PAPER_NODE_TOKENS_PER_S = 42_500  # whole-node throughput of full FT at the fastest settings (~25k at the slowest)

# Appendix H's memory model: nominal sizes Ψ, the fraction of Ψ that LoRA trains, and the GPU counts of its tables
PAPER_PARAMS = {"7B": 7e9, "70B": 70e9, "405B": 405e9}
PAPER_LORA_FRACTION = 0.01
PAPER_GPUS = {"7B": (1, 8, 16, 32, 64), "70B": (1, 8, 16, 32, 64), "405B": (1, 8, 16, 32, 64, 128, 256)}
# GB per GPU as printed in Tables S14–S16, as strings so that the printed precision is kept (Table S16 only
# has its Adam rows)
PAPER_PRINTED_GB: dict[tuple[str, str], list[str]] = {
    ("7B", "Adam"): ["112", "14", "7", "3.5", "1.75"],
    ("7B", "Adam + LoRA"): ["15.12", "1.89", "0.945", "0.4725", "0.236"],
    ("7B", "Lion"): ["84", "10.5", "5.25", "2.625", "1.3125"],
    ("7B", "Lion + LoRA"): ["14.84", "1.855", "0.9275", "0.464", "0.232"],
    ("70B", "Adam"): ["1120", "140", "70", "35", "17.5"],
    ("70B", "Adam + LoRA"): ["151.2", "18.9", "9.45", "4.725", "2.36"],
    ("70B", "Lion"): ["840", "105", "52.5", "26.25", "13.125"],
    ("70B", "Lion + LoRA"): ["148.4", "18.55", "9.275", "4.64", "2.32"],
    ("405B", "Adam"): ["6480", "810", "405", "202.5", "101.25", "50.625", "25.3"],
    ("405B", "Adam + LoRA"): ["874.8", "109.35", "54.65", "27.34", "13.67", "6.83", "3.42"],
}
PAPER_FP32_FROZEN_7B_GB = "29.12"  # Appendix H: 7B, Adam + 1% LoRA with the frozen weights kept in fp32

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


def agrees_to_printed(value: float, printed: str) -> bool:
    """Equal to a printed number within half a unit of its last printed digit."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return abs(value - float(printed)) <= 0.5 * 10**-decimals + 1e-9
