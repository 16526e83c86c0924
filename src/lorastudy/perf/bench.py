"""Training benchmark: tokens/s and peak memory of full FT vs LoRA (several ranks) through the project's
Trainer path, against a bare PyTorch loop on the same model and batches (the paper's Fig S10).

Each measurement runs in its own process so that peak memory (CUDA max allocated, or peak RSS on CPU) is
its own: `run_bench` starts `python -m lorastudy.perf.bench forked ...`, one process that imports once and forks
a child per measurement, or (isolation 'process') `python -m lorastudy.perf.bench measure ...` per measurement,
and caches every result. Numbers are printed or tabled, never asserted.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback

from lorastudy.config import Profile, load_profile
from lorastudy.data.examples import PadCollator
from lorastudy.engine.notebook_exec import compute_env
from lorastudy.io import config_hash, write_json
from lorastudy.plan import RunSpec
from lorastudy.train.modeling import apply_lora, device
from lorastudy.train.training import peak_memory_bytes, training_arguments

Config = tuple[str, int, int]  # (mode, rank, batch) of one measurement; rank 0 for full FT
WARM_STEPS = 2  # steps not timed
VOCAB = 1024  # the benchmark model's vocabulary (random tokens)


SHAPES = {  # random-init models of real shapes (their config.json), for GPU benchmarks
    "qwen2.5-0.5b": {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                     "tie_word_embeddings": True, "rope_theta": 1e6},
    "qwen2-tiny": {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
                   "tie_word_embeddings": True},  # the same code path, small enough for a CPU test
}


def bench_model(profile_name: str, shape: str | None = None) -> tuple[Profile, Any]:
    """The profile's mini Llama, or a Qwen2 model of a named shape, randomly initialised."""
    profile = load_profile(profile_name)
    torch.manual_seed(0)
    if shape is not None:
        from transformers import Qwen2Config, Qwen2ForCausalLM  # only the shape benchmarks build one

        return profile, Qwen2ForCausalLM(Qwen2Config(**SHAPES[shape]))
    a = profile.base.architecture
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
                      num_hidden_layers=a.num_layers, num_attention_heads=a.num_heads, num_key_value_heads=a.num_heads,
                      max_position_embeddings=a.max_position_embeddings, tie_word_embeddings=True)
    return profile, LlamaForCausalLM(cfg)


def random_batches(n: int, batch: int, seq: int) -> list[dict[str, list[int]]]:
    """`n * batch` random sequences (the same every call): examples for PadCollator, `batch` a step."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (n * batch, seq), generator=g).tolist()
    return [{"input_ids": x, "labels": x} for x in ids]


def with_lora(model: Any, profile: Profile, rank: int) -> Any:
    """The model wrapped as a run's LoRA on every linear map (alpha 2r, the profile's dropout)."""
    spec = RunSpec(domain="code", regime="ift", method="lora", learning_rate=1e-3, seed=0, lora_rank=rank,
                   lora_alpha=2 * rank, target_modules="all")
    return apply_lora(model, spec, profile)


def trainable_optimizer(model: Any) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, the betas of the training runs."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.95))


def bare_step(model: Any, opt: torch.optim.Optimizer, examples: list[dict[str, list[int]]]) -> None:
    """One plain PyTorch training step: forward, backward, clip, AdamW, zero the gradients."""
    loss = model(**PadCollator(0)(examples)).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


class _Clock(TrainerCallback):
    """The time at the end of every optimizer step."""

    def __init__(self, times: list[float]) -> None:
        self.times = times

    def on_step_end(self, *a: Any, **k: Any) -> None:
        self.times.append(time.perf_counter())


def measure(profile_name: str, mode: str, rank: int, batch: int, steps: int,
            shape: str | None = None) -> dict[str, Any]:
    """One configuration: mode 'trainer-full', 'trainer-lora' or 'bare-full'/'bare-lora'; `shape`: a model of
    SHAPES instead of the profile's mini Llama."""
    profile, model = bench_model(profile_name, shape)
    total = sum(p.numel() for p in model.parameters())
    seq = profile.training.seq_len
    method = mode.split("-")[1]
    if method == "lora":
        model = with_lora(model, profile, rank)
    examples = random_batches(steps, batch, seq)
    times: list[float] = []
    if mode.startswith("trainer"):
        with tempfile.TemporaryDirectory() as tmp:
            args = training_arguments(Path(tmp), lr=1e-3, batch=batch, accum=1, max_steps=steps, seed=0,
                                      schedule="cosine", profile=profile, weight_decay=0.0, progress=False)
            trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=PadCollator(0),
                              callbacks=[_Clock(times)])
            trainer.train()
    else:
        opt = trainable_optimizer(model)
        model.train()
        for i in range(steps):
            bare_step(model, opt, examples[i * batch:(i + 1) * batch])
            times.append(time.perf_counter())
    elapsed = times[-1] - times[WARM_STEPS - 1]
    tokens = (len(times) - WARM_STEPS) * batch * seq
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"mode": mode, "rank": rank if method == "lora" else None, "batch": batch, "tokens_per_s": tokens / elapsed,
            "peak_memory_MiB": peak_memory_bytes() / 2**20, "trainable_params": trainable, "total_params": total,
            "threads": torch.get_num_threads()}


def _failed(mode: str, rank: int, batch: int, error: str) -> dict[str, Any]:
    return {"mode": mode, "rank": rank or None, "batch": batch, "error": error}


def serve_forked(profile_name: str, steps: int, configs: Sequence[Config]) -> None:
    """Measure each configuration in a forked child of this process and print its row as 'RESULT {json}'.

    Imports once, then forks a child per measurement: each child is its own process (its peak memory
    counter starts from the parent's resident set, as a fresh process's would after the same imports)
    without paying the imports (seconds) again. The parent runs no tensor code, so no thread pool or CUDA
    context is forked."""
    importlib.import_module("peft")  # optional (see modeling.apply_lora): preloaded so that no child pays its import

    for mode, rank, batch in configs:
        start = time.perf_counter()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                out = measure(profile_name, mode, rank, batch, steps)
            except BaseException:
                out = _failed(mode, rank, batch, traceback.format_exc()[-400:])
            with os.fdopen(w, "wb") as fh:
                fh.write(json.dumps(out).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as fh:
            data = fh.read()
        _, status = os.waitpid(pid, 0)
        try:
            out = json.loads(data)
        except ValueError:
            out = _failed(mode, rank, batch, f"measurement process ended with status {status}")
        out["wall_s"] = time.perf_counter() - start
        print("RESULT " + json.dumps(out), flush=True)


def _env(threads: int | None) -> dict[str, str] | None:
    """The environment of a measuring process, as a sweep's: `threads` intra-op threads (None: the torch
    default) and the sweep's allocator."""
    return {**os.environ, **compute_env(threads)}


def _bench_process(command: str, args: list[Any], *, timeout: float | None = None,
                   threads: int | None = None) -> subprocess.CompletedProcess:
    """`python -m lorastudy.perf.bench COMMAND ARGS-AS-JSON`, its output captured."""
    return subprocess.run([sys.executable, "-m", "lorastudy.perf.bench", command, json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout, env=_env(threads))


def _measure_forked(profile_name: str, configs: list[Config], steps: int, timeout: float,
                    threads: int | None) -> list[dict[str, Any]]:
    try:
        proc = _bench_process("forked", [profile_name, steps, configs], timeout=timeout, threads=threads)
    except subprocess.TimeoutExpired:
        return [_failed(m, r, b, f"timeout after {timeout} s") for m, r, b in configs]
    rows = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    done = {(row["mode"], row.get("rank") or 0, row["batch"]) for row in rows}
    error = proc.stderr.strip()[-400:] or "no result"
    rows += [_failed(m, r, b, error) for m, r, b in configs if (m, r, b) not in done]
    return rows


def _measure_process(profile_name: str, mode: str, rank: int, batch: int, steps: int, timeout: float,
                     threads: int | None) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        proc = _bench_process("measure", [profile_name, mode, rank, batch, steps], timeout=timeout, threads=threads)
        row = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else
               _failed(mode, rank, batch, proc.stderr.strip()[-400:]))
    except subprocess.TimeoutExpired:
        row = _failed(mode, rank, batch, f"timeout after {timeout} s")
    return {**row, "wall_s": time.perf_counter() - start}


def bench_configs(ranks: Sequence[int], batch_sizes: Sequence[int], mode: str = "trainer") -> list[Config]:
    """(mode, rank, batch) of every measurement: full FT and LoRA at each rank, at each batch size."""
    if mode not in {"trainer", "bare"}:
        raise ValueError(f"mode must be 'trainer' or 'bare', not {mode!r}")
    return [(f"{mode}-full", 0, b) for b in batch_sizes] + [(f"{mode}-lora", r, b) for b in batch_sizes for r in ranks]


def bench_key(profile: Profile, threads: int | None) -> str:
    """The cache-file prefix of a profile's measurements: a hash of everything that shapes them (model
    shape, sequence length, LoRA settings, torch version, device, threads)."""
    arch = profile.base.architecture
    return config_hash([arch.model_dump(), profile.training.seq_len, profile.training.lora.model_dump(),
                        torch.__version__, str(device()), threads]) + "-"


def run_bench(profile_name: str, *, ranks: Sequence[int], batch_sizes: Sequence[int], steps: int,
              cache_dir: Path | None = None, mode: str = "trainer", key: str = "", timeout: float = 600,
              isolation: str = "fork", threads: int | None = None) -> pd.DataFrame:
    """Measure each configuration with `measure` in a process of its own, so that its peak memory is its
    own, and cache each result as JSON in `cache_dir` (file name: `key`, e.g. `bench_key`, then mode, rank,
    batch and steps); a failed measurement becomes a row with its `error`.

    isolation: 'fork' (one helper process imports torch and transformers once and forks a child per
    measurement: seconds saved per measurement; POSIX only) or 'process' (a fresh interpreter each).
    threads: intra-op threads of the measuring processes (None: torch's default, one per core). On a
    shared machine one thread is far steadier: with every core busy, a 2-thread step can take 10× longer.
    Returns one row per configuration with `wall_s` (the measurement's own time) and `cached`."""
    if steps < WARM_STEPS + 1:
        raise ValueError("bench steps must be at least 3 (the first two are warm-up)")
    if isolation not in {"fork", "process"}:
        raise ValueError(f"isolation must be 'fork' or 'process', not {isolation!r}")
    configs = bench_configs(ranks, batch_sizes, mode)

    def path(m: str, rank: int, batch: int) -> Path | None:
        return cache_dir / f"{key}{m}-r{rank}-b{batch}-s{steps}.json" if cache_dir else None

    cached = {c: json.loads(path(*c).read_text()) for c in configs if path(*c) is not None and path(*c).is_file()}
    todo = [c for c in configs if c not in cached]
    fresh: dict[Config, dict[str, Any]] = {}
    if todo and isolation == "fork" and hasattr(os, "fork"):
        for row in _measure_forked(profile_name, todo, steps, timeout, threads):
            fresh[(row["mode"], row.get("rank") or 0, row["batch"])] = row
    else:
        for c in todo:
            fresh[c] = _measure_process(profile_name, *c, steps, timeout, threads)
    rows = []
    for c in configs:
        if c in cached:
            rows.append({**cached[c], "cached": True})
            continue
        row = fresh[c]
        if "error" not in row and path(*c) is not None:
            write_json(path(*c), row)
        rows.append({**row, "cached": False})
    out = pd.DataFrame(rows)
    out["method"] = out["mode"].str.split("-").str[1]
    return out


def bench_train(profile_name: str, *, batch_sizes: list[int], ranks: list[int], steps: int = 20) -> list[dict]:
    """Run every configuration in a subprocess and print a table with the Trainer/bare ratio."""
    configs = [(m, 0, b) for b in batch_sizes for m in ("bare-full", "trainer-full")]
    configs += [(m, r, b) for b in batch_sizes for r in ranks for m in ("bare-lora", "trainer-lora")]
    rows = []
    for mode, rank, batch in configs:
        proc = _bench_process("measure", [profile_name, mode, rank, batch, steps])
        if proc.returncode:
            raise RuntimeError(f"benchmark {mode} r={rank} b={batch} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    bare = {(r["mode"].split("-")[1], r["rank"], r["batch"]): r["tokens_per_s"] for r in rows if r["mode"].startswith("bare")}
    print(f"{'mode':<14}{'rank':>6}{'batch':>7}{'tokens/s':>11}{'vs bare':>9}{'peak MiB':>10}{'trainable':>11}")
    for r in rows:
        ratio = r["tokens_per_s"] / bare[(r["mode"].split("-")[1], r["rank"], r["batch"])]
        print(f"{r['mode']:<14}{str(r['rank'] or '-'):>6}{r['batch']:>7}{r['tokens_per_s']:>11.0f}{ratio:>9.2f}"
              f"{r['peak_memory_MiB']:>10.0f}{r['trainable_params']:>11,}")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m lorastudy.perf.bench forked '[profile, steps, configs]'` (`serve_forked`) or
    `python -m lorastudy.perf.bench measure '[profile, mode, rank, batch, steps]'` (one row as JSON)."""
    command, payload = argv if argv is not None else sys.argv[1:]
    args = json.loads(payload)
    if command == "forked":
        profile_name, steps, configs = args
        serve_forked(profile_name, steps, [tuple(c) for c in configs])
    elif command == "measure":
        print(json.dumps(measure(*args)))
    else:
        raise SystemExit(f"unknown command {command!r}: 'forked' or 'measure'")


if __name__ == "__main__":
    main()
