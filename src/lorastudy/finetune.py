"""One planned fine-tuning run: the base (+ LoRA), the run's examples, training, and the run's summary.

CPT packs unstructured text and learns every token; IFT learns the response tokens only. Checkpoints are
written at the profile's durations (tokens for CPT, epochs for IFT). A profile with several processes trains
under a launcher (lorastudy.launch), which runs this same code in every process.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import set_seed

from lorastudy.config import Profile

from lorastudy.plan import RunSpec
from lorastudy.data.examples import pack_cpt, to_pair, to_text, tokenize_ift
from lorastudy.data.records import Record
from lorastudy.data.sources import load_spec
from lorastudy.io import read_json, write_json
from lorastudy.launch import inside_launcher, train_distributed
from lorastudy.layout import RunPaths
from lorastudy.modeling import apply_lora, count_parameters, load_base, set_attention_dropout
from lorastudy.provenance import provenance
from lorastudy.training import branch_points, checkpoint_steps, fit, ordered, training_arguments


def load_training_records(profile: Profile, spec: RunSpec) -> list[Record]:
    return load_spec(profile, profile.data[spec.domain][spec.regime])


def train_examples(profile: Profile, spec: RunSpec, tok: Any) -> tuple[list[dict[str, list[int]]], str]:
    """The run's tokenised training examples and the unit of its durations ('tokens' or 'epochs')."""
    t = profile.training.for_task(spec.domain, spec.regime)
    records = load_training_records(profile, spec)
    if spec.regime == "cpt":
        return pack_cpt([to_text(r) for r in records], tok, t.seq_len), "tokens"
    return tokenize_ift([to_pair(r, spec.domain) for r in records], tok, t.seq_len), "epochs"


def fresh_model(profile: Profile, spec: RunSpec) -> Any:
    """The run's starting model: the base, its attention dropout, LoRA (initialised from the run's seed)."""
    model, tok = load_base(profile)
    if spec.attention_dropout:
        set_attention_dropout(model, spec.attention_dropout)
    if spec.method == "lora":
        model = apply_lora(model, spec, profile)
    return model, tok


def train_run(profile: Profile, spec: RunSpec, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Fine-tune one run and write `train.json` last (its presence means the run is trained).

    Every duration is annealed: one warmup-stable-decay schedule to the longest duration, and for each shorter
    one a cooldown branch from the shared stable phase (training.branch_points), as the paper's CPT."""
    paths = RunPaths(run_dir)
    t = profile.training.for_task(spec.domain, spec.regime)
    phases, mark = {}, time.perf_counter()
    set_seed(spec.seed)
    model, tok = fresh_model(profile, spec)
    phases["load_model"], mark = time.perf_counter() - mark, time.perf_counter()
    examples, unit = train_examples(profile, spec, tok)
    phases["tokenize"] = time.perf_counter() - mark
    if not examples:
        raise ValueError(f"run {spec.run_id}: no training examples from {profile.data[spec.domain][spec.regime].source}")
    durations = t.durations[spec.regime]
    per_step = t.batch_size * t.grad_accum * t.num_processes
    at_steps = checkpoint_steps(durations, unit, examples, per_step)
    max_steps = max(at_steps)
    shutil.rmtree(paths.checkpoints, ignore_errors=True)
    shutil.rmtree(paths.trainer_dir, ignore_errors=True)

    def arguments(steps: int, decay: int | None = None) -> Any:
        return training_arguments(run_dir, lr=spec.learning_rate, batch=t.batch_size, accum=t.grad_accum,
                                  max_steps=steps, seed=spec.seed, schedule="wsd", profile=profile,
                                  weight_decay=spec.weight_decay, progress=progress,
                                  warmup_steps=int(t.warmup_ratio * max_steps), decay_steps=decay)

    def branch(start: int, final: int) -> tuple[Any, Any]:
        return fresh_model(profile, spec)[0], arguments(final, final - start)

    args = arguments(max_steps)
    branches = branch_points(at_steps, t.cooldown_ratio, args.warmup_steps)
    start = time.perf_counter()
    ckpt = fit(model, ordered(examples, max_steps * per_step, spec.seed), out=run_dir, args=args,
               pad_id=tok.pad_token_id, at_steps=at_steps, unit=unit, optimizer=spec.optimizer, branches=branches,
               branch=branch)
    summary = {
        "status": "diverged" if ckpt.diverged_at is not None else "completed",
        "diverged_at_step": ckpt.diverged_at,
        "spec": spec.to_dict(),
        "parameters": count_parameters(model),
        "n_examples": len(examples),
        "checkpoints": ckpt.saved,
        "loss_curve": [{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate")}
                       for h in ckpt.log_history if "loss" in h],
        "wall_time_s": time.perf_counter() - start,
        "phases_s": {**phases, "train": time.perf_counter() - start},  # train includes the checkpoint saves
        "provenance": provenance(profile, seed=spec.seed),
    }
    shutil.rmtree(paths.trainer_dir, ignore_errors=True)
    if args.process_index == 0:  # under a multi-process launch the main process writes for all
        write_json(paths.train_record, summary)
    return summary


def read_train_summary(run_dir: Path) -> dict[str, Any] | None:
    path = RunPaths(run_dir).train_record
    return read_json(path) if path.is_file() else None


def run_training(profile: Profile, spec: RunSpec, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train here, or in a launcher when the profile asks for several processes and we are not in one yet."""
    if profile.training.num_processes > 1 and not inside_launcher():
        return train_distributed(profile, spec, run_dir)
    return train_run(profile, spec, run_dir, progress=progress)


def ensure_trained(profile: Profile, spec: RunSpec, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """The run's training summary, training it first unless a finished (or diverged) run is already there;
    a profile with several processes trains under `accelerate launch` (lorastudy.launch)."""
    return read_train_summary(run_dir) or run_training(profile, spec, run_dir, progress=progress)


def checkpoint_table(summary: dict[str, Any]) -> pd.DataFrame:
    """The run's checkpoints: step, tokens seen, throughput, loss and peak memory (in MiB)."""
    ckpts = pd.DataFrame(summary["checkpoints"])
    return ckpts.assign(peak_memory_MiB=ckpts.peak_memory_bytes / 2**20).drop(columns="peak_memory_bytes")
