"""Chapter 15 (the paper's Fig S10 and Tables S14–S16): what LoRA saves in memory and costs in speed.

Measurements of our own training path (`lorastudy.perf.bench`) summarised against full FT, split into estimates
of what a peak is made of, and the analytical model of model states (`lorastudy.perf.memory_model`) beside the
paper's printed tables and with LoRA's exact sizes.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import AutoConfig

from lorastudy.analysis.claims import claim
from lorastudy.config import Architecture, Profile, load_profile
from lorastudy.paper import (
    PAPER_FP32_FROZEN_7B_GB,
    PAPER_GPUS,
    PAPER_LORA_FRACTION,
    PAPER_LORA_MEMORY_RATIO,
    PAPER_LORA_THROUGHPUT_RATIO,
    PAPER_PRINTED_GB,
    agrees_to_printed,
)
from lorastudy.perf.bench import bench_key, run_bench
from lorastudy.perf.memory_model import (
    GB,
    LLAMA2_7B,
    LLAMA2_70B,
    ModelShapes,
    activation_bytes,
    llama_shapes,
    lora_param_count,
    model_state_bytes,
    paper_table,
)
from lorastudy.train.base import mini_base_dir
from lorastudy.train.modeling import device, resolve_dtype

# how the LoRA size table is shown
SIZE_FORMATS = {"rank_of_d": "{:.1%}", "lora_fraction": "{:.2%}", "paper_assumes": "{:.0%}", "lora_saves": "{:.0%}",
                "params": "{:,}", "lora_params": "{:,}", "full_state_GB": "{:.4g}", "lora_state_GB": "{:.4g}"}
PAPER_MODELS = {"Llama-2-7B": LLAMA2_7B, "Llama-2-70B": LLAMA2_70B}  # frozen weights in bf16, as in the paper


# ----------------------------------------------------------------------------- Fig S10: measurements
def setup_text(profile: Profile, threads: int) -> str:
    """The model and machine the measurements run on (threads 0: torch's default)."""
    arch = profile.base.architecture
    return (f"profile {profile.name}: hidden {arch.hidden_size}, {arch.num_layers} layers, "
            f"seq {profile.training.seq_len}; device {device()}, "
            f"{threads or torch.get_num_threads()} threads per measurement")


def measure_bench(profile_ref: str, cache_dir: Path, *, ranks: Sequence[int], batch_sizes: Sequence[int],
                  steps: int, mode: str = "trainer", threads: int = 0) -> pd.DataFrame:
    """`bench.run_bench` for a profile (a name or a YAML path), cached in `cache_dir` under `bench.bench_key`;
    threads 0 is torch's default. Column `call_s` holds how long the whole call took."""
    start = time.perf_counter()
    key = bench_key(load_profile(profile_ref), threads)
    bench = run_bench(profile_ref, ranks=ranks, batch_sizes=batch_sizes, steps=steps, cache_dir=cache_dir,
                      mode=mode, key=key, threads=threads or None)
    return bench.assign(call_s=time.perf_counter() - start)  # a column: it survives the stored summary


def bench_errors(bench: pd.DataFrame) -> pd.DataFrame:
    """The failed measurements and why (empty when none failed)."""
    if "error" not in bench:
        return pd.DataFrame(columns=["mode", "rank", "batch", "error"])
    return bench[bench.error.notna()][["mode", "rank", "batch", "error"]]


def measure_text(bench: pd.DataFrame) -> str:
    """'6 measurements, 2 from the cache, 41 s' (the time from `measure_bench`)."""
    took = float(bench.call_s.iloc[0]) if "call_s" in bench and len(bench) else float("nan")
    return f"{len(bench)} measurements, {int(bench.cached.sum())} from the cache, {took:.0f} s"


def bench_summary(bench: pd.DataFrame) -> pd.DataFrame:
    """Per batch size and configuration: tokens/s and peak memory, and each as a ratio to full FT at the
    same batch size (the paper, Fig S10: throughput ~0.85, memory ~0.6 at small and ~0.85 at large batch)."""
    ok = bench[bench.get("tokens_per_s", pd.Series(np.nan, index=bench.index)).notna()].copy()
    if ok.empty:
        return pd.DataFrame()
    full = ok[ok.method == "full"].set_index("batch")
    ok["throughput_vs_full"] = ok.tokens_per_s / ok.batch.map(full.tokens_per_s)
    ok["memory_vs_full"] = ok.peak_memory_MiB / ok.batch.map(full.peak_memory_MiB)
    ok["rank"] = ok["rank"].astype("Int64")
    cols = ["batch", "method", "rank", "trainable_params", "tokens_per_s", "peak_memory_MiB",
            "throughput_vs_full", "memory_vs_full", *(["threads"] if "threads" in ok else [])]
    return ok.sort_values(["batch", "method", "rank"], na_position="first")[cols].reset_index(drop=True)


def bench_verdict(summary: pd.DataFrame) -> pd.DataFrame:
    """Fig S10's statements on `bench_summary`: LoRA slower; LoRA less peak memory; the memory saving
    smaller at the largest batch than at the smallest (None where there is nothing to compare)."""
    slower, smaller, shrinks = ("LoRA trains slower than full FT", "LoRA needs less peak memory than full FT",
                                "LoRA's memory saving shrinks as the batch grows")
    lora = summary[summary.method == "lora"] if len(summary) else summary
    if lora.empty:
        return pd.DataFrame([claim(s, True, None, "no LoRA measurement") for s in (slower, smaller, shrinks)])
    thr, mem = lora.throughput_vs_full, lora.memory_vs_full
    by_batch = lora.groupby("batch").memory_vs_full.mean().sort_index()
    paper_mem = PAPER_LORA_MEMORY_RATIO
    claims = [
        claim(slower, True, bool(thr.mean() < 1),
              f"LoRA/full tokens per s: {thr.min():.2f}–{thr.max():.2f} (paper ~{PAPER_LORA_THROUGHPUT_RATIO:g})"),
        claim(smaller, True, bool((mem < 1).all()),
              f"LoRA/full peak memory: {mem.min():.2f}–{mem.max():.2f} (paper ~{paper_mem['small batch']:g} small "
              f"batch, ~{paper_mem['large batch']:g} large)"),
    ]
    if len(by_batch) >= 2 and by_batch.iloc[0] >= 1:
        claims.append(claim(shrinks, True, None,
                            f"LoRA saves no memory at the smallest batch (ratio {by_batch.iloc[0]:.2f} at batch "
                            f"{by_batch.index[0]}), so there is no saving to shrink"))
    elif len(by_batch) >= 2:
        claims.append(claim(shrinks, True, bool(by_batch.iloc[-1] > by_batch.iloc[0]),
                            f"ratio {by_batch.iloc[0]:.2f} at batch {by_batch.index[0]}, "
                            f"{by_batch.iloc[-1]:.2f} at batch {by_batch.index[-1]}"))
    else:
        claims.append(claim(shrinks, True, None, "one batch size only"))
    return pd.DataFrame(claims)


# ----------------------------------------------------------------------------- what a peak is made of
def shapes_with_count(architecture: Architecture, n_params: int) -> ModelShapes:
    """The shapes of a mini Llama (`config.Architecture`) whose tied-embedding model has `n_params`
    parameters: the vocabulary is what the count leaves (e.g. the benchmark's model, from its full-FT
    trainable parameter count)."""
    a = architecture
    blocks = llama_shapes(a.hidden_size, a.intermediate_size, a.num_layers, vocab=0)
    vocab = (n_params - blocks.n_params) / a.hidden_size
    if vocab <= 0 or abs(vocab - round(vocab)) > 1e-6:
        raise ValueError(f"{n_params} parameters do not fit the architecture {a} with tied embeddings")
    return llama_shapes(a.hidden_size, a.intermediate_size, a.num_layers, vocab=int(round(vocab)))


def state_vs_activations(shapes: ModelShapes, n_params: int, batch_sizes: Sequence[int], seq: int,
                         ranks: Sequence[int], dtype_bytes: int = 4, optimizer: str = "adam",
                         lora_dropout: bool = True) -> pd.DataFrame:
    """For our own model: model states (weights, gradients, optimizer) of full FT and LoRA beside estimates
    of what one batch keeps for backward, in MiB: what a peak-memory measurement at these batch sizes is
    made of. Estimates, not measurements:

    activations_MiB: `memory_model.activation_bytes` (the frozen or trained blocks, the same for both methods);
    logits_MiB: the logits and their gradient (batch·seq·vocab, twice);
    lora_extra_MiB: what LoRA adds on top: the rank-r intermediate of each adapted matrix and, with LoRA
    dropout (peft applies it to the input of every adapted module separately), a dropped-out copy of each
    module's input and its mask."""
    rows = []
    configs = [("full", None)] + [("lora", r) for r in ranks]
    in_dims = sum(i for _o, i in shapes.modules.values())
    for b in batch_sizes:
        tokens = b * seq
        act = activation_bytes(b, seq, shapes.hidden, shapes.n_layers, shapes.intermediate, dtype_bytes=dtype_bytes)
        logits = tokens * shapes.vocab * dtype_bytes * 2
        for method, r in configs:
            frac = 0.0 if r is None else lora_param_count(shapes.modules, shapes.n_layers, r) / n_params
            state = model_state_bytes(n_params, method=method, optimizer=optimizer,  # type: ignore[arg-type]
                                      lora_fraction=frac, frozen_dtype_bytes=dtype_bytes)["total_bytes"]
            extra = 0.0
            if r is not None:
                extra = tokens * shapes.n_layers * (len(shapes.modules) * r * dtype_bytes
                                                    + (in_dims * (dtype_bytes + 1) if lora_dropout else 0))
            rows.append({"batch": b, "method": method, "rank": r, "model_state_MiB": state / 2**20,
                         "activations_MiB": act / 2**20, "logits_MiB": logits / 2**20, "lora_extra_MiB": extra / 2**20,
                         "state_share": state / (state + act + logits + extra)})
    return pd.DataFrame(rows)


def memory_breakdown(bench: pd.DataFrame, profile: Profile, batch_sizes: Sequence[int],
                     ranks: Sequence[int]) -> pd.DataFrame:
    """`state_vs_activations` of the benchmark's model (its shape from full FT's measured parameter count)
    beside each measured peak, and what the estimates leave unexplained (runtime, allocator caches,
    temporaries); empty without a full-FT measurement."""
    full_rows = bench[(bench.method == "full") & bench.get("trainable_params", pd.Series(dtype=float)).notna()]
    if not len(full_rows):
        return pd.DataFrame()
    n_params = int(full_rows.trainable_params.iloc[0])
    shapes = shapes_with_count(profile.base.architecture, n_params)
    parts = state_vs_activations(shapes, n_params, batch_sizes, profile.training.seq_len, ranks,
                                 lora_dropout=profile.training.lora.dropout > 0)
    measured = bench.assign(rank=bench["rank"].fillna(0).astype(int))[["method", "rank", "batch", "peak_memory_MiB"]]
    parts = parts.assign(rank=parts["rank"].fillna(0).astype(int)).merge(measured, on=["method", "rank", "batch"], how="left")
    parts["unexplained_MiB"] = (parts.peak_memory_MiB - parts.model_state_MiB - parts.activations_MiB
                                - parts.logits_MiB - parts.lora_extra_MiB)
    return parts


# ----------------------------------------------------------------------------- Tables S14–S16
def paper_memory_comparison(model: str) -> pd.DataFrame:
    """Table S14 (7B), S15 (70B) or S16 (405B, Adam rows only): GB per GPU from `memory_model.paper_table`
    beside the printed numbers, with a `matches` column (every GPU count agrees to the printed precision)
    and `mismatches` listing the GPU counts that do not."""
    gpus = PAPER_GPUS[model]
    rows = []
    for r in paper_table(model, gpus):  # type: ignore[arg-type]
        printed = PAPER_PRINTED_GB.get((model, r["setting"]))
        if printed is None:
            continue
        row: dict[str, Any] = {"setting": r["setting"]}
        bad = []
        for g, p in zip(gpus, printed):
            row[(f"{g} GPU" if g == 1 else f"{g} GPUs", "ours")] = round(r[g], 6)
            row[(f"{g} GPU" if g == 1 else f"{g} GPUs", "paper")] = float(p)
            if not agrees_to_printed(r[g], p):
                bad.append(str(g))
        row[("matches", "")] = not bad
        row[("mismatches", "")] = ", ".join(f"{b} GPUs" for b in bad)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("setting")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def fp32_frozen_text() -> str:
    """Appendix H's variant: 7B, Adam + 1% LoRA with the frozen weights in fp32, ours beside the paper's."""
    ours = model_state_bytes(7e9, method="lora", optimizer="adam", frozen_dtype_bytes=4)["total_gb"]
    return (f"7B, Adam + 1% LoRA with the frozen weights in fp32: {ours:.2f} GB (the paper: {PAPER_FP32_FROZEN_7B_GB} "
            f"GB; matches: {agrees_to_printed(ours, PAPER_FP32_FROZEN_7B_GB)})")


# ----------------------------------------------------------------------------- LoRA's true size
def profile_model(profile: Profile) -> tuple[ModelShapes | None, int | None, str]:
    """The shapes and exact parameter count of a profile's base model, without building or downloading it:
    the mini base's `config.json` / `base.json` in the cache, or a pretrained model's config if available
    locally. Returns (None, None, why) when neither can be read."""
    if profile.base.kind == "mini":
        folder = mini_base_dir(profile)
        cfg_path, info_path = folder / "config.json", folder / "base.json"
        if not cfg_path.is_file():
            return None, None, f"the mini base is not built yet ({folder})"
        cfg = json.loads(cfg_path.read_text())
    else:
        try:
            cfg = AutoConfig.from_pretrained(profile.base.model, revision=profile.base.revision,
                                             local_files_only=True).to_dict()
        except Exception as err:  # noqa: BLE001 - no local copy: say so, do not download
            return None, None, f"no local config for {profile.base.model}: {type(err).__name__}"
        info_path = None
    heads = cfg.get("num_attention_heads")
    kv = cfg.get("num_key_value_heads")
    head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // heads if heads else None)
    shapes = llama_shapes(cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"],
                          n_kv_heads=kv if kv and kv != heads else None, head_dim=head_dim, vocab=cfg["vocab_size"])
    n_params = shapes.n_params - (cfg["vocab_size"] * cfg["hidden_size"] if cfg.get("tie_word_embeddings") else 0)
    if info_path is not None and info_path.is_file():
        n_params = int(json.loads(info_path.read_text()).get("parameters", n_params))
    return shapes, n_params, "read from the base's config"


def base_size_text(profile: Profile) -> str:
    """The profile base's exact parameter count and where it was read, or why it could not be read."""
    shapes, n_params, why = profile_model(profile)
    if shapes is None:
        return f"This profile base could not be read without building or downloading it: {why}."
    return f"{profile.name} base: {n_params:,} parameters ({why})"


def lora_size_table(models: dict[str, tuple[ModelShapes, int, int]], ranks: Sequence[int] = (16, 64, 256),
                    optimizer: str = "adam", paper_fraction: float = PAPER_LORA_FRACTION) -> pd.DataFrame:
    """Per model and rank: exact LoRA parameters (all seven linear modules), their fraction of the base
    (the paper assumes 1%), and the model-state memory of full FT vs LoRA with that true fraction.

    models: name → (shapes, exact parameter count Ψ, bytes per frozen weight: 2 for bf16, 4 for fp32)."""
    rows = []
    for name, (shapes, n_params, frozen_bytes) in models.items():
        full = model_state_bytes(n_params, method="full", optimizer=optimizer)["total_bytes"]  # type: ignore[arg-type]
        for r in ranks:
            n_lora = lora_param_count(shapes.modules, shapes.n_layers, r)
            frac = n_lora / n_params
            lora = model_state_bytes(n_params, method="lora", optimizer=optimizer, lora_fraction=frac,  # type: ignore[arg-type]
                                     frozen_dtype_bytes=frozen_bytes)["total_bytes"]
            rows.append({"model": name, "hidden": shapes.hidden, "rank": r, "rank_of_d": r / shapes.hidden,
                         "params": n_params, "lora_params": n_lora, "lora_fraction": frac,
                         "paper_assumes": paper_fraction, "frozen_bytes": frozen_bytes,
                         "full_state_GB": full / GB, "lora_state_GB": lora / GB,
                         "lora_saves": 1 - lora / full})
    return pd.DataFrame(rows)


def frozen_weight_bytes(profile: Profile) -> int:
    """Bytes per frozen base weight in the profile's dtype on this machine (fp32 on a CPU)."""
    return torch.tensor([], dtype=resolve_dtype(profile.base.dtype)).element_size()


def lora_sizes(profile: Profile, paper_ranks: Sequence[int]) -> pd.DataFrame:
    """`lora_size_table` of Llama-2-7B and -70B at `paper_ranks` (bf16 frozen weights), then of the
    profile's base at the LoRA ranks of its sweep (where its size can be read)."""
    sizes = [lora_size_table({name: (s, s.n_params, 2) for name, s in PAPER_MODELS.items()}, ranks=paper_ranks)]
    shapes, n_params, _why = profile_model(profile)
    if shapes is not None:
        ranks = sorted({r for arm in profile.sweep if "lora" in arm.method for r in arm.lora_rank})
        sizes.append(lora_size_table({f"{profile.name} base": (shapes, n_params, frozen_weight_bytes(profile))},
                                     ranks=ranks))
    return pd.concat(sizes, ignore_index=True)
