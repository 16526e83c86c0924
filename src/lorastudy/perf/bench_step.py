"""Where a training step's time goes: the bare full-FT or LoRA step of `lorastudy.perf.bench` on the profile's mini
Llama, timed, then profiled with torch.profiler, its ops grouped (matmuls, attention, elementwise, random
draws, copies, loss, optimizer), against this machine's matmul peak at the same thread count.

The FLOP rules are the ones the throughput targets are stated in: 6N per token for full fine-tuning, 4N for
LoRA (no weight gradients for frozen matrices), N the model's parameters. The profiler's own matmul FLOPs
are reported beside them: the adapters' matmuls are not in 4N. `lorastudy bench-step` runs this in a process
of its own with a sweep's thread count and allocator. Numbers are printed, never asserted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from lorastudy.engine.notebook_exec import compute_env
from lorastudy.perf.bench import WARM_STEPS, bare_step, bench_model, random_batches, trainable_optimizer, with_lora
from lorastudy.perf.bench_sweep import matmul_peak

# each group's ops: an aten name matches itself and its variants (`aten::mul` -> `aten::mul_`,
# `aten::silu_backward`); another fragment matches anywhere in the name; the first group that matches wins
CATEGORIES: dict[str, tuple[str, ...]] = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv"),
    "attention": ("scaled_dot_product", "flash_attention", "efficient_attention"),
    "random draws": ("aten::random_", "aten::bernoulli", "aten::uniform_", "aten::normal_"),
    "optimizer": ("_foreach_", "aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt", "clip_grad"),
    "loss": ("log_softmax", "nll_loss", "cross_entropy"),
    "copies and fills": ("aten::copy_", "aten::fill_", "aten::zero_", "aten::clone", "aten::empty", "aten::cat",
                         "aten::to", "aten::_to_copy", "aten::index", "aten::embedding"),
    "elementwise": ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::neg", "aten::pow",
                    "aten::rsqrt", "aten::mean", "aten::sum", "aten::ge", "aten::gt", "aten::lt", "aten::where",
                    "aten::threshold", "aten::sigmoid", "aten::exp", "aten::tanh", "aten::masked_fill"),
}


def category(op: str) -> str:
    """The group of a profiler op name ('other' when none matches)."""
    for name, fragments in CATEGORIES.items():
        if any(op == f or op.startswith(f + "_") or (not f.startswith("aten::") and f in op) for f in fragments):
            return name
    return "other"


def rule_flops_per_token(method: str, parameters: int) -> int:
    """6N for full fine-tuning (forward 2N, backward 4N), 4N for LoRA (no weight gradients for frozen N)."""
    return (6 if method == "full" else 4) * parameters


def profile_step(profile_name: str, method: str, rank: int = 16, batch: int = 16, steps: int = 4,
                 dropout: float | None = None) -> dict[str, Any]:
    """Time `steps` bare steps after the warm-up, then profile as many more; `dropout` overrides LoRA's."""
    if method not in {"full", "lora"}:
        raise ValueError(f"method must be 'full' or 'lora', not {method!r}")
    if steps < 1:
        raise ValueError("profile at least one step")
    profile_, model = bench_model(profile_name)
    parameters = sum(p.numel() for p in model.parameters())
    if method == "lora":
        if dropout is not None:
            lora = profile_.training.lora.model_copy(update={"dropout": dropout})
            profile_ = profile_.model_copy(update={"training": profile_.training.model_copy(update={"lora": lora})})
        model = with_lora(model, profile_, rank)
    seq = profile_.training.seq_len
    examples = random_batches(WARM_STEPS + 2 * steps, batch, seq)
    batches = [examples[i:i + batch] for i in range(0, len(examples), batch)]
    opt = trainable_optimizer(model)
    model.train()
    for b in batches[:WARM_STEPS]:
        bare_step(model, opt, b)
    start = time.perf_counter()
    for b in batches[WARM_STEPS:WARM_STEPS + steps]:
        bare_step(model, opt, b)
    step_s = (time.perf_counter() - start) / steps
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for b in batches[WARM_STEPS + steps:]:
            bare_step(model, opt, b)
    self_us: dict[str, float] = {}
    matmul_flops = 0.0
    for event in prof.key_averages():
        group = category(event.key)
        self_us[group] = self_us.get(group, 0.0) + event.self_cpu_time_total
        if group == "matmul":
            matmul_flops += event.flops or 0
    total_us = sum(self_us.values()) or 1.0
    tokens = batch * seq
    rule = rule_flops_per_token(method, parameters)
    return {
        "method": method, "rank": rank if method == "lora" else None, "batch": batch, "seq_len": seq,
        "dropout": profile_.training.lora.dropout if method == "lora" else None,
        "threads": torch.get_num_threads(), "parameters": parameters,
        "step_ms": 1e3 * step_s, "tokens_per_s": tokens / step_s,
        "rule_flops_per_token": rule, "rule_GFLOPs": rule * tokens / step_s / 1e9,
        "matmul_flops_per_step": matmul_flops / steps, "rule_flops_per_step": rule * tokens,
        "matmul_GFLOPs_while_in_matmul": matmul_flops / max(self_us.get("matmul", 0.0), 1e-9) / 1e3,
        "shares": {g: us / total_us for g, us in sorted(self_us.items(), key=lambda kv: -kv[1])},
    }


def run(profile_name: str, ranks: Sequence[int], batch: int, steps: int, without_dropout: bool) -> None:
    """Print the peak, then one 'RESULT {json}' line per configuration (full, then each rank)."""
    print("PEAK " + json.dumps(matmul_peak(torch.get_num_threads())), flush=True)
    configs: list[tuple[str, int, float | None]] = [("full", 0, None)]
    configs += [("lora", r, d) for r in ranks for d in ([None, 0.0] if without_dropout else [None])]
    for method, rank, dropout in configs:
        print("RESULT " + json.dumps(profile_step(profile_name, method, rank, batch, steps, dropout)), flush=True)


def report(lines: Sequence[str]) -> list[dict[str, Any]]:
    """Print the rows of `run`'s output as a table of rates and one of where each step's time goes."""
    peak = next(float(line[5:]) for line in lines if line.startswith("PEAK "))
    rows = [{**json.loads(line[7:]), "matmul_peak_flops": peak} for line in lines if line.startswith("RESULT ")]
    print(f"fp32 matmul peak at {rows[0]['threads'] if rows else '?'} thread(s): {peak / 1e9:.1f} GFLOP/s")
    print(f"{'method':<8}{'rank':>5}{'drop':>6}{'ms/step':>9}{'tok/s':>8}{'rule':>5}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'matmul G/step':>15}{'rule G/step':>13}{'in-matmul GFLOP/s':>19}")
    for r in rows:
        print(f"{r['method']:<8}{str(r['rank'] or '-'):>5}{str(r['dropout'] if r['dropout'] is not None else '-'):>6}"
              f"{r['step_ms']:>9.1f}{r['tokens_per_s']:>8.0f}{'6N' if r['method'] == 'full' else '4N':>5}"
              f"{r['rule_GFLOPs']:>9.1f}{r['rule_GFLOPs'] * 1e9 / peak:>9.1%}{r['matmul_flops_per_step'] / 1e9:>15.2f}"
              f"{r['rule_flops_per_step'] / 1e9:>13.2f}{r['matmul_GFLOPs_while_in_matmul']:>19.1f}")
    groups = list(dict.fromkeys(g for r in rows for g in r["shares"]))
    print("share of each step's profiled self time:")
    print(f"{'method':<8}{'rank':>5}{'drop':>6}" + "".join(f"{g:>18}" for g in groups))
    for r in rows:
        print(f"{r['method']:<8}{str(r['rank'] or '-'):>5}{str(r['dropout'] if r['dropout'] is not None else '-'):>6}"
              + "".join(f"{r['shares'].get(g, 0.0):>18.1%}" for g in groups))
    return rows


def bench_step(profile_name: str, *, ranks: Sequence[int], batch: int = 16, steps: int = 4,
               threads: int | None = 1, without_dropout: bool = False, timeout: float = 1800) -> list[dict[str, Any]]:
    """Run `run` in a process with a sweep's environment (`threads` intra-op threads, its allocator) and print
    the report; raises with the process's error output when it fails."""
    proc = subprocess.run([sys.executable, "-m", "lorastudy.perf.bench_step",
                           json.dumps([profile_name, list(ranks), batch, steps, without_dropout])],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **compute_env(threads)})
    if proc.returncode:
        raise RuntimeError(f"step profile failed:\n{proc.stderr[-2000:]}")
    return report(proc.stdout.splitlines())


if __name__ == "__main__":
    name, ranks_, batch_, steps_, without = json.loads(sys.argv[1])
    run(name, ranks_, batch_, steps_, without)
