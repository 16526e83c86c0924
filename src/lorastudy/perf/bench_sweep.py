"""Where a finished sweep's time went (`lorastudy bench-sweep PROFILE`): runs per hour, each run's phases
(kernel start-up and imports, model loads, tokenisation, training, evaluation), and training throughput
against the machine's matmul peak by the FLOPs-per-token rule.

Read from what every run records (sweep.json, train.json, eval/LABEL.json); it prints numbers and asserts none.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd

from lorastudy.config import Profile
from lorastudy.io import read_json
from lorastudy.layout import EVALUATE_NOTEBOOK, FINETUNE_NOTEBOOK, Layout
from lorastudy.plan import plan_runs

# FLOPs per token and parameter: forward 2, backward 4 (activation and weight gradients); frozen weights
# (LoRA's base) need no weight gradient, so about 4 (Kaplan et al. 2020's 6N rule, less the 2N weight grads)
FLOPS_PER_TOKEN_PARAM = {"full": 6, "lora": 4}


def run_phases(profile: Profile, out_root: Path) -> pd.DataFrame:
    """One row per run the sweep finished: seconds per phase; `startup_*` is each notebook's wall time less
    the phases measured inside it (kernel start, imports, reading and writing records)."""
    layout, rows = Layout(out_root), []
    for spec in plan_runs(profile):
        paths = layout.run(spec.run_id)
        if not (paths.sweep_record.is_file() and paths.trained()):
            continue
        sweep, train = read_json(paths.sweep_record), read_json(paths.train_record)
        phases = train.get("phases_s", {})
        evals = [read_json(paths.eval_record(c["checkpoint"])) for c in train["checkpoints"]
                 if paths.eval_record(c["checkpoint"]).is_file()]
        eval_s = sum(float(e["rows"][0]["eval_seconds"]) for e in evals if e["rows"])
        load_s = sum(float(e.get("load_seconds", 0.0)) for e in evals)
        nb = sweep["notebook_seconds"]
        last = train["checkpoints"][-1] if train["checkpoints"] else {}
        rows.append({
            "run_id": spec.run_id, "method": spec.method, "threads": sweep.get("threads"),
            "total_s": sum(nb.values()), "train_s": phases.get("train", train["wall_time_s"]),
            "load_model_s": phases.get("load_model", float("nan")), "tokenize_s": phases.get("tokenize", float("nan")),
            "eval_s": eval_s, "eval_load_s": load_s,
            "startup_finetune_s": nb.get(FINETUNE_NOTEBOOK, 0.0) - sum(phases.values()),
            "startup_evaluate_s": nb.get(EVALUATE_NOTEBOOK, 0.0) - eval_s - load_s,
            "tokens": last.get("tokens_seen"), "parameters": train["parameters"]["total"],
            "tokens_per_s": (last.get("tokens_seen") or 0) / max(train["wall_time_s"], 1e-9),
            "started": sweep.get("started"), "finished": sweep.get("finished"),
            "commit": ((train.get("provenance") or {}).get("git") or {}).get("commit"),  # the code that trained it
        })
    return pd.DataFrame(rows)


def matmul_peak(threads: int | None = None, sizes: tuple[tuple[int, int, int], ...] = (
        (1024, 1024, 1024), (2048, 2048, 2048), (2048, 128, 384))) -> float:
    """This machine's fp32 matmul FLOP/s at `threads` (the best of a few shapes, the best of 5 repeats)."""
    import torch  # heavy: only the efficiency part of the report needs it

    old = torch.get_num_threads()
    torch.set_num_threads(threads or old)
    try:
        best = 0.0
        for m, k, n in sizes:
            a, b = torch.randn(m, k), torch.randn(k, n)
            a @ b  # warm-up
            for _ in range(5):
                start = time.perf_counter()
                a @ b
                best = max(best, 2 * m * k * n / (time.perf_counter() - start))
        return best
    finally:
        torch.set_num_threads(old)


def efficiency(runs: pd.DataFrame, peak: float) -> pd.DataFrame:
    """Per method: median training tokens/s, the FLOP/s it implies and its share of the matmul peak."""
    if runs.empty:
        return pd.DataFrame()
    out = []
    for method, g in runs.groupby("method"):
        tps = float(g.tokens_per_s.median())
        flops = FLOPS_PER_TOKEN_PARAM[method] * float(g.parameters.median()) * tps
        out.append({"method": method, "runs": len(g), "tokens_per_s": tps,
                    "rule": f"{FLOPS_PER_TOKEN_PARAM[method]}N", "achieved_GFLOPs": flops / 1e9,
                    "peak_GFLOPs": peak / 1e9, "share_of_peak": flops / peak})
    return pd.DataFrame(out)


def summary(profile: Profile, out_root: Path) -> dict[str, Any]:
    """Runs per hour of the last sweep (its runs phase), its workers, and the median phase breakdown."""
    runs = run_phases(profile, out_root)
    record = Layout(out_root).sweep_record
    sweep = read_json(record) if record.is_file() else {}
    wall = (sweep.get("seconds") or {}).get("runs")
    if not wall and len(runs):
        wall = float(runs.finished.max() - runs.started.min())
    n = int(sweep.get("runs_done", len(runs)))
    phases = ["total_s", "startup_finetune_s", "load_model_s", "tokenize_s", "train_s", "startup_evaluate_s",
              "eval_load_s", "eval_s"]
    return {"runs": n, "workers": sweep.get("workers"), "threads_per_run": sweep.get("threads_per_run"),
            "trained_at_commits": sorted(set(runs.commit.dropna())) if len(runs) else [],
            "sweep_seconds": sweep.get("seconds"), "runs_wall_s": wall,
            "runs_per_hour": 3600 * n / wall if wall else None,
            "median_phase_s": {p: statistics.median(runs[p]) for p in phases if len(runs)},
            "sum_phase_s": {p: float(runs[p].sum()) for p in phases if len(runs)}}


def print_report(profile: Profile, out_root: Path, *, peak: bool = True) -> dict[str, Any]:
    """The summary, the per-run phase table and (with `peak`) the training efficiency, printed."""
    s = summary(profile, out_root)
    print(f"profile {profile.name}, {out_root}: {s['runs']} runs on {s['workers']} worker(s) × "
          f"{s['threads_per_run']} thread(s); runs phase {s['runs_wall_s'] or 0:.0f} s -> "
          f"{s['runs_per_hour'] or 0:.1f} runs/hour; sweep phases {s['sweep_seconds']}")
    runs = run_phases(profile, out_root)
    if runs.empty:
        print("no run of this folder has a sweep record (sweep it with this version first)")
        return s
    cols = ["run_id", "total_s", "startup_finetune_s", "load_model_s", "tokenize_s", "train_s",
            "startup_evaluate_s", "eval_load_s", "eval_s", "tokens_per_s"]
    print(runs[cols].round(1).to_string(index=False))
    print("sum over runs (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in s["sum_phase_s"].items()))
    if peak:
        threads = int(runs.threads.dropna().iloc[0]) if runs.threads.notna().any() else os.cpu_count()
        peak_flops = matmul_peak(threads)
        s["matmul_peak_gflops"] = peak_flops / 1e9
        eff = efficiency(runs, peak_flops)
        print(f"training against the fp32 matmul peak at {threads} thread(s):")
        print(eff.round(3).to_string(index=False))
        s["efficiency"] = eff.to_dict("records")
    return s
