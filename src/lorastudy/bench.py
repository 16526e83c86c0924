"""Training benchmark: tokens/s and peak memory of full FT vs LoRA (several ranks) through the project's
Trainer path, against a bare PyTorch loop on the same model and batches.

Each measurement runs in its own process so that peak memory (CUDA max allocated, or peak RSS on CPU) is
its own. Numbers are printed, never asserted.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import torch


def _model(profile_name: str) -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorastudy.config import load_profile

    profile = load_profile(profile_name)
    a = profile.base.architecture
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
                      num_hidden_layers=a.num_layers, num_attention_heads=a.num_heads, num_key_value_heads=a.num_heads,
                      max_position_embeddings=a.max_position_embeddings, tie_word_embeddings=True)
    return profile, LlamaForCausalLM(cfg)


def _batches(n: int, batch: int, seq: int) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 1024, (n * batch, seq), generator=g).tolist()
    return [{"input_ids": x, "labels": x} for x in ids]


def measure(profile_name: str, mode: str, rank: int, batch: int, steps: int) -> dict[str, Any]:
    """One configuration: mode 'trainer-full', 'trainer-lora' or 'bare-full'/'bare-lora'."""
    from lorastudy.config import RunSpec
    from lorastudy.modeling import apply_lora
    from lorastudy.training import PadCollator, peak_memory_bytes, training_arguments

    profile, model = _model(profile_name)
    seq = profile.training.seq_len
    method = mode.split("-")[1]
    if method == "lora":
        spec = RunSpec(domain="code", regime="ift", method="lora", learning_rate=1e-3, seed=0, lora_rank=rank,
                       lora_alpha=2 * rank, target_modules="all")
        model = apply_lora(model, spec, profile)
    examples = _batches(steps, batch, seq)
    warm = 2
    if mode.startswith("trainer"):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            args = training_arguments(Path(tmp), lr=1e-3, batch=batch, accum=1, max_steps=steps, seed=0,
                                      regime="ift", profile=profile, weight_decay=0.0, progress=False)
            times: list[float] = []

            class Clock(__import__("transformers").TrainerCallback):
                def on_step_end(self, *a: Any, **k: Any) -> None:
                    times.append(time.perf_counter())

            from transformers import Trainer

            trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=PadCollator(0),
                              callbacks=[Clock()])
            trainer.train()
    else:
        collate = PadCollator(0)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.95))
        model.train()
        times = []
        for i in range(steps):
            b = collate(examples[i * batch:(i + 1) * batch])
            loss = model(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter())
    elapsed = times[-1] - times[warm - 1]
    tokens = (len(times) - warm) * batch * seq
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"mode": mode, "rank": rank if method == "lora" else None, "batch": batch, "tokens_per_s": tokens / elapsed,
            "peak_memory_MiB": peak_memory_bytes() / 2**20, "trainable_params": trainable,
            "threads": torch.get_num_threads()}


def bench_train(profile_name: str, *, batch_sizes: list[int], ranks: list[int], steps: int = 20) -> list[dict]:
    """Run every configuration in a subprocess and print a table with the Trainer/bare ratio."""
    configs = [(m, 0, b) for b in batch_sizes for m in ("bare-full", "trainer-full")]
    configs += [(m, r, b) for b in batch_sizes for r in ranks for m in ("bare-lora", "trainer-lora")]
    rows = []
    for mode, rank, batch in configs:
        code = f"import json,lorastudy.bench as b; print(json.dumps(b.measure({profile_name!r},{mode!r},{rank},{batch},{steps})))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
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
