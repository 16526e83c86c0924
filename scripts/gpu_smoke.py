"""GPU smoke test: does the study's code run on this GPU, how fast, and in how much memory? (one GPU, no network)

1. builds the tiny profile's base offline (the project's own generated world and small Llama);
2. trains a ~86M-parameter random-init Llama (hidden 768, 12 layers, seq 1024) and a random-init model of
   Qwen2.5-0.5B's shape (494M, GQA, vocabulary 151,936) in bf16 through the project's Trainer path, full FT and
   LoRA, each in its own process: tokens/s, peak memory (torch.cuda.max_memory_allocated) against the analytical
   model (lorastudy.perf.memory_model: Appendix H's states + activations; logits are not in it), and
   MFU = 6·N·tokens/s over the GPU's dense bf16 peak (989 TFLOPS for H100/H200, 312 for A100, from NVIDIA's
   data sheets; LORASTUDY_PEAK_TFLOPS overrides; LoRA's MFU uses the same 6·N, so it shows LoRA's slowdown);
3. evaluates the tiny base once per kind: generation + sandboxed HumanEval-format scoring on the tiny world's
   code tasks, GSM8K-format generation and scoring, and log-likelihood multiple choice;
4. prints a table and writes it to OUT/smoke.json. Exits 2 with a message when no CUDA GPU is visible.
`--device cpu --tiny` runs the same code paths on small shapes (what the test suite does, so that a GPU session
never spends its draw on a crash).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 2048,
                "max_position_embeddings": 1024}
SEQ_LEN = 1024


def peak_flops(name: str) -> float | None:
    """Dense bf16 peak of this GPU by its name (lorastudy.perf.estimate's table), or $LORASTUDY_PEAK_TFLOPS."""
    from lorastudy.perf.estimate import GPU_PEAK_BF16_FLOPS

    if os.environ.get("LORASTUDY_PEAK_TFLOPS"):
        return float(os.environ["LORASTUDY_PEAK_TFLOPS"]) * 1e12
    return next((flops for key, flops in GPU_PEAK_BF16_FLOPS.items() if key in name.upper()), None)


TINY_ARCHITECTURE = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
                     "max_position_embeddings": 256}


def bench_profile(out: Path, tiny: bool) -> Path:
    """A profile file with the ~86M architecture at seq 1024 (or a small one at 128), for lorastudy.perf.bench."""
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw["name"] = "gpu-smoke"
    raw["base"]["architecture"] = TINY_ARCHITECTURE if tiny else ARCHITECTURE
    raw["training"]["seq_len"] = 128 if tiny else SEQ_LEN
    raw["training"]["precision"] = "bf16" if torch.cuda.is_available() else "fp32"
    path = out / "gpu-smoke.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def measure(profile: Path, mode: str, rank: int, batch: int, steps: int, shape: str | None) -> dict[str, Any]:
    """One training measurement in a fresh process, so that its peak memory is its own."""
    code = ("import json, lorastudy.perf.bench as b; "
            f"print(json.dumps(b.measure({str(profile)!r}, {mode!r}, {rank}, {batch}, {steps}, {shape!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def predicted_bytes(model: str, mode: str, r: dict[str, Any], batch: int, seq: int, tiny: bool) -> float:
    """Appendix H's model states (fp32 weights, grads and Adam for what trains; the frozen rest in fp32) plus
    the bf16 activations lorastudy.perf.memory_model counts for this shape."""
    from lorastudy.perf.bench import SHAPES
    from lorastudy.perf.memory_model import activation_bytes, model_state_bytes

    if model == "llama":
        a = TINY_ARCHITECTURE if tiny else ARCHITECTURE
        hidden, layers, inter = a["hidden_size"], a["num_layers"], a["intermediate_size"]
    else:
        c = SHAPES[model]
        hidden, layers, inter = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    method = "full" if mode.endswith("full") else "lora"
    states = model_state_bytes(r["total_params"], method=method, optimizer="adam", frozen_dtype_bytes=4,
                               lora_fraction=r["trainable_params"] / r["total_params"])["total_bytes"]
    return states + activation_bytes(batch, seq, hidden, layers, inter, dtype_bytes=2)


def train_rows(out: Path, batch: int, steps: int, rank: int, tiny: bool) -> list[dict[str, Any]]:
    profile = bench_profile(out, tiny)
    seq = 128 if tiny else SEQ_LEN
    peak = peak_flops(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    rows = []
    for model, shape in (("llama", None), ("qwen2-tiny" if tiny else "qwen2.5-0.5b", "qwen2-tiny" if tiny else
                                           "qwen2.5-0.5b")):
        n = 0
        for mode in ("trainer-full", "trainer-lora"):
            r = measure(profile, mode, rank, batch, steps, shape)
            n = n or r["trainable_params"]  # full FT trains every parameter: N of 6·N
            mfu = 6 * n * r["tokens_per_s"] / peak if peak else None
            predicted = predicted_bytes(model, mode, r, batch, seq, tiny)
            rows.append({"what": f"train {model} {mode.split('-')[1]}" + (f" r={rank}" if "lora" in mode else ""),
                         "params": n, "batch": batch, "seq": seq, "tokens_per_s": round(r["tokens_per_s"]),
                         "peak_memory_GiB": round(r["peak_memory_MiB"] / 1024, 2),
                         "model_GiB": round(predicted / 2**30, 3),
                         "mfu": round(mfu, 3) if mfu is not None else None})
    return rows


def eval_rows(device: str) -> list[dict[str, Any]]:
    """The tiny base (built here if missing) evaluated once per kind through lorastudy.evaluation."""
    from lorastudy.config import load_profile
    from lorastudy.data.sources import load_spec
    from lorastudy.evaluation.choice import score_choice
    from lorastudy.evaluation.run import evaluate_code, evaluate_math
    from lorastudy.train.modeling import load_base

    profile = load_profile("tiny")
    start = time.perf_counter()
    model, tok = load_base(profile)  # builds the generated world and pre-trains the tiny base when not cached
    rows = [{"what": "tiny base (build or load)", "seconds": round(time.perf_counter() - start, 1)}]
    model = model.to(device)
    code, math = profile.eval.learning["code"], profile.eval.learning["math"]
    timed = {
        "eval code (generate + sandbox)": lambda: evaluate_code(
            model, tok, code, load_spec(profile, code.dataset), progress=False)["pass@1"],
        "eval math (generate + GSM8K score)": lambda: evaluate_math(
            model, tok, math, profile, load_spec(profile, math.dataset), progress=False)["strict_match"],
        "eval multiple choice": lambda: score_choice(
            model, tok, load_spec(profile, profile.eval.forgetting["hellaswag"].dataset),
            batch_size=profile.eval.batch_size, progress=False)["acc_norm"],
    }
    for what, run in timed.items():
        start = time.perf_counter()
        value = run()
        rows.append({"what": what, "score": round(float(value), 3), "seconds": round(time.perf_counter() - start, 1)})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    widths = {c: max(len(c), *(len(str(r.get(c, "-"))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "-")).ljust(widths[c]) for c in columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "outputs" / "gpu_smoke"), help="folder for smoke.json")
    parser.add_argument("--batch", type=int, default=8, help="sequences of 1024 tokens per step")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per measurement (2 are warm-up)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu only to test this script's code paths (with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="small shapes: the code paths in a minute on a CPU")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU is visible (torch.cuda.is_available() is False); this smoke test needs one "
              "GPU and a CUDA build of torch. Nothing was run.", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    rows = eval_rows(args.device) + train_rows(out, args.batch, args.steps, args.rank, args.tiny)
    result = {"device": device, "peak_bf16_flops": peak_flops(device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "wall_s": round(time.perf_counter() - start, 1), "rows": rows}
    (out / "smoke.json").write_text(json.dumps(result, indent=1))
    print(f"GPU smoke test on {device} (torch {torch.__version__}, CUDA {torch.version.cuda}), "
          f"{result['wall_s']} s:")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
