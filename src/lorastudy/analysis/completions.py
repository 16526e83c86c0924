"""What the models wrote: the greedy completions of the first test items, for the base and every main-grid run at
its longest duration, so that a reader sees what a score counts (a right answer, a near miss, the wrong format)
and not only the score. Kept in the snapshot as a chapter summary: the runs' own prediction files stay behind."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lorastudy.analysis.learning_forgetting import main_grid
from lorastudy.config import Profile
from lorastudy.io import numbered_jsonl
from lorastudy.layout import BASE_ID, Layout

COLUMNS = ["run_id", "domain", "item", "completion", "correct"]
FILES = {"math": "math_predictions.jsonl", "code": "code_samples.jsonl"}


def completions_sample(profile: Profile, out_root: Path, results: pd.DataFrame, items: pd.DataFrame, n: int = 8
                       ) -> pd.DataFrame:
    """The first `n` test items' completions per domain: the base's (both domains) and each main-grid run's at its
    longest checkpoint (its own domain), with whether each was right (strict match; all tests passed)."""
    layout = Layout(out_root)
    rows = [r for domain in FILES for r in _read(layout.base_dir, BASE_ID, domain, n)]
    grid = main_grid(profile, results, items)
    grid = grid[grid.method != "base"]
    for run_id, run in grid.groupby("run_id", sort=True):
        label = run.sort_values("duration").checkpoint.iloc[-1]
        rows += _read(layout.run(run_id).eval_outputs(label), run_id, run.domain.iloc[0], n)
    return pd.DataFrame(rows, columns=COLUMNS)


def _read(folder: Path, run_id: str, domain: str, n: int) -> list[dict]:
    """One model's first n completions of one domain from the prediction file its evaluation wrote."""
    path = folder / FILES[domain]
    if not path.is_file():
        return []
    rows = [row for _, row in numbered_jsonl(path)][:n]
    if domain == "math":
        return [{"run_id": run_id, "domain": domain, "item": f"gsm8k/{r['idx']}", "completion": r["completion"],
                 "correct": bool(r.get("strict_correct"))} for r in rows]
    return [{"run_id": run_id, "domain": domain, "item": r["task_id"], "completion": r["completion"],
             "correct": bool(r.get("passed"))} for r in rows]


def completions_table(sample: pd.DataFrame, grid: pd.DataFrame, items: int = 4) -> pd.DataFrame:
    """The first `items` items of each panel side by side: the base's completion, then full fine-tuning's and each
    LoRA rank's (seed 0 of the main grid, at the chosen rate and the longest duration); ✓ marks a right one."""
    runs = grid[grid.method != "base"].drop_duplicates("run_id")
    runs = runs[runs.seed == runs.seed.min()]  # the first seed: base 0, whose completions are BASE_ID's
    rows = []
    for (domain, regime), group in runs.groupby(["domain", "regime"], sort=True):
        arms = {rid: _arm(rid, m, r) for rid, m, r in zip(group.run_id, group.method, group.lora_rank)}
        shown = sample[(sample.domain == domain) & sample.run_id.isin([BASE_ID, *arms])]
        for item in list(dict.fromkeys(shown[shown.run_id == BASE_ID].item))[:items]:
            row = {"panel": f"{domain} {regime.upper()}", "item": item}
            for rid in [BASE_ID, *sorted(arms, key=lambda k: _arm_order(arms[k]))]:
                hit = shown[(shown.run_id == rid) & (shown.item == item)]
                if len(hit):
                    mark = "✓ " if hit.correct.iloc[0] else "✗ "
                    row["base" if rid == BASE_ID else arms[rid]] = mark + hit.completion.iloc[0].strip("\n")
            rows.append(row)
    return pd.DataFrame(rows)


def completions_view(sample: pd.DataFrame, grid: pd.DataFrame, items: int = 4) -> Any:
    """`completions_table` as the chapter shows it: whole completions, line breaks kept, left-aligned."""
    table = completions_table(sample, grid, items)
    return table.style.hide(axis="index").set_properties(
        **{"white-space": "pre-wrap", "text-align": "left", "font-family": "monospace", "font-size": "0.8em"})


def nll_readings(grid: pd.DataFrame) -> pd.DataFrame:
    """Per panel and arm at its longest duration (mean over bases): the answer NLL per token of the answer's own
    tokens, and with the end-of-sequence token as fine-tuning trains it; where they part, the ending is what moved."""
    rows = grid[grid.metric.str.startswith(("answer_nll_", "answer_eos_nll_"))].copy()
    if rows.empty:
        return pd.DataFrame(columns=["panel", "arm", "answer", "with_eos"])
    rows["reading"] = rows.metric.str.startswith("answer_eos_nll_").map({True: "with_eos", False: "answer"})
    rows["domain"] = rows.metric.str.rsplit("_", n=1).str[-1]
    rows["arm"] = [_arm(rid, m, r) for rid, m, r in zip(rows.run_id, rows.method, rows.lora_rank)]
    base, runs = rows[rows.method == "base"], rows[rows.method != "base"]  # every base, as every seed
    runs = runs[runs.duration == runs.groupby(["domain", "regime"]).duration.transform("max")]
    out = []
    for (domain, regime), group in runs.groupby(["domain", "regime"], sort=True):
        panel = f"{domain} {regime.upper()}"
        both = pd.concat([base[base.domain == domain], group])
        table = both.pivot_table(index="arm", columns="reading", values="value", aggfunc="mean").reset_index()
        out.append(table.assign(panel=panel))
    frame = pd.concat(out, ignore_index=True)
    frame = frame.iloc[sorted(range(len(frame)), key=lambda i: (frame.panel[i], _arm_order(frame.arm[i])))]
    return frame[["panel", "arm", "answer", "with_eos"]].rename_axis(columns=None).reset_index(drop=True)


def _arm(run_id: str, method: str, rank: Any) -> str:
    """A run's arm as the chapter names it: base, full, or LoRA r=N."""
    return "base" if method == "base" else "full" if method == "full" else f"LoRA r={int(rank)}"


def _arm_order(arm: str) -> tuple:
    """base, full, then LoRA by rank (r=2 before r=16: shorter labels first)."""
    return arm != "base", arm != "full", len(arm), arm
