"""One planned fine-tuning run: the base (+ LoRA), the run's examples, training, and the run's summary.

CPT packs unstructured text and learns every token; IFT learns the response tokens only. Checkpoints are
written at the profile's durations (tokens for CPT, epochs for IFT). A profile with several processes trains
under a launcher (lorastudy.train.launch), which runs this same code in every process.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import set_seed

from lorastudy.config import Profile
from lorastudy.data.examples import pack_cpt, to_pair, to_text, tokenize_ift
from lorastudy.data.records import Record
from lorastudy.data.sources import load_spec, stream_texts, streams
from lorastudy.data.stream import StreamData
from lorastudy.io import read_json, write_json
from lorastudy.layout import RUN_STAMP, RunPaths
from lorastudy.plan import RunSpec
from lorastudy.provenance import provenance
from lorastudy.train.base import base_record
from lorastudy.train.launch import inside_launcher, train_distributed
from lorastudy.train.modeling import apply_lora, count_parameters, load_base, set_attention_dropout
from lorastudy.train.training import RESUME_RECORD, branch_points, checkpoint_steps, fit, ordered, training_arguments


def load_training_records(profile: Profile, spec: RunSpec) -> list[Record]:
    return load_spec(profile, profile.data[spec.domain][spec.regime])


def train_examples(profile: Profile, spec: RunSpec, tok: Any) -> tuple[list[dict[str, list[int]]], str]:
    """The run's tokenised training examples and the unit of its durations ('tokens' or 'epochs')."""
    t = profile.training.for_task(spec.domain, spec.regime)
    records = load_training_records(profile, spec)
    if spec.regime == "cpt":
        return pack_cpt([to_text(r) for r in records], tok, t.seq_len), "tokens"
    return tokenize_ift([to_pair(r, spec.domain) for r in records], tok, t.seq_len), "epochs"


def train_stream(profile: Profile, spec: RunSpec, tok: Any) -> StreamData:
    """The run's CPT corpus packed on the fly, in its own order, from wherever a checkpoint left off."""
    t = profile.training.for_task(spec.domain, spec.regime)
    return StreamData(stream_texts(profile, profile.data[spec.domain][spec.regime]), tok, t.seq_len)


def _attempt_stamp(profile: Profile, spec: RunSpec) -> dict[str, Any]:
    """What an earlier attempt's Trainer states must match to be resumed (else the run starts afresh)."""
    dump = lambda m: m.model_dump(mode="json")  # noqa: E731
    return {"spec": spec.to_dict(), "base": dump(profile.base),
            "training": dump(profile.training.for_task(spec.domain, spec.regime)),
            "data": dump(profile.data[spec.domain][spec.regime])}


def prepare_attempt(profile: Profile, spec: RunSpec, run_dir: Path) -> None:
    """Keep what a killed attempt of this same run left (its Trainer states and saved durations), else clear the
    run's training folders. Called once before any training process starts (the launcher's ranks only read)."""
    paths, stamp = RunPaths(run_dir), _attempt_stamp(profile, spec)
    record = paths.trainer_dir / RUN_STAMP
    if record.is_file() and read_json(record) == stamp:
        return
    shutil.rmtree(paths.checkpoints, ignore_errors=True)
    shutil.rmtree(paths.trainer_dir, ignore_errors=True)
    write_json(record, stamp)


def fresh_model(profile: Profile, spec: RunSpec) -> Any:
    """The run's starting model: the base, its attention dropout, LoRA (initialised from the run's seed)."""
    model, tok = load_base(profile, index=profile.base.index(spec.seed))
    if spec.attention_dropout:
        set_attention_dropout(model, spec.attention_dropout)
    if spec.method == "lora":
        model = apply_lora(model, spec, profile)
    return model, tok


def train_in_process(profile: Profile, spec: RunSpec, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Fine-tune one run and write `train.json` last (its presence means the run is trained).

    Every duration is annealed: one warmup-stable-decay schedule to the longest duration, and for each shorter
    one a cooldown branch from the shared stable phase (training.branch_points), as the paper's CPT."""
    paths = RunPaths(run_dir)
    t = profile.training.for_task(spec.domain, spec.regime)
    phases, mark = {}, time.perf_counter()
    set_seed(spec.seed)
    model, tok = fresh_model(profile, spec)
    phases["load_model"], mark = time.perf_counter() - mark, time.perf_counter()
    per_step = t.batch_size * t.grad_accum * t.num_processes
    durations = t.durations[spec.regime]
    if streams(profile, spec.domain, spec.regime):
        data, n_examples, unit = train_stream(profile, spec, tok), None, "tokens"
        at_steps = checkpoint_steps(durations, unit, [], per_step, tokens_per_example=t.seq_len)
    else:
        examples, unit = train_examples(profile, spec, tok)
        if not examples:
            raise ValueError(f"run {spec.run_id}: no training examples from "
                             f"{profile.data[spec.domain][spec.regime].source}")
        at_steps = checkpoint_steps(durations, unit, examples, per_step)
        data, n_examples = ordered(examples, max(at_steps) * per_step, spec.seed), len(examples)
    phases["tokenize"] = time.perf_counter() - mark
    max_steps = max(at_steps)
    if not inside_launcher():
        prepare_attempt(profile, spec, run_dir)
    resumed = any(paths.trainer_dir.rglob(RESUME_RECORD))  # a killed attempt left states: training goes on from them

    def arguments(steps: int, decay: int | None = None) -> Any:
        return training_arguments(run_dir, lr=spec.learning_rate, batch=t.batch_size, accum=t.grad_accum,
                                  max_steps=steps, seed=spec.seed, schedule="wsd", profile=profile,
                                  weight_decay=spec.weight_decay, progress=progress,
                                  warmup_steps=int(t.warmup_ratio * max_steps), decay_steps=decay,
                                  save_every=t.save_every_steps)

    def branch(start: int, final: int) -> tuple[Any, Any]:
        return fresh_model(profile, spec)[0], arguments(final, final - start)

    args = arguments(max_steps)
    branches = branch_points(at_steps, t.cooldown_ratio, args.warmup_steps)
    start = time.perf_counter()
    ckpt = fit(model, data, out=run_dir, args=args, pad_id=tok.pad_token_id, at_steps=at_steps, unit=unit,
               optimizer=spec.optimizer, branches=branches, branch=branch, resume=True)
    summary = {
        "status": "diverged" if ckpt.diverged_at is not None else "completed",
        "diverged_at_step": ckpt.diverged_at,
        "spec": spec.to_dict(),
        "parameters": count_parameters(model),
        "n_examples": n_examples,  # None for a stream: it is never counted
        "resumed": resumed,
        "checkpoints": ckpt.saved,
        "loss_curve": [{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate")}
                       for h in ckpt.log_history if "loss" in h],
        "wall_time_s": time.perf_counter() - start,
        "phases_s": {**phases, "train": time.perf_counter() - start},  # train includes the checkpoint saves
        "provenance": provenance(profile, seed=spec.seed),
        "base": base_record(profile, profile.base.index(spec.seed)),  # which weights it was fine-tuned from
    }
    shutil.rmtree(paths.trainer_dir, ignore_errors=True)
    if args.process_index == 0:  # under a multi-process launch the main process writes for all
        write_json(paths.train_record, summary)
    return summary


def read_train_summary(run_dir: Path) -> dict[str, Any] | None:
    path = RunPaths(run_dir).train_record
    return read_json(path) if path.is_file() else None


def train_here_or_launched(profile: Profile, spec: RunSpec, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train here, or in a launcher when the profile asks for several processes and we are not in one yet."""
    if profile.training.num_processes > 1 and not inside_launcher():
        prepare_attempt(profile, spec, run_dir)
        return train_distributed(profile, spec, run_dir)
    return train_in_process(profile, spec, run_dir, progress=progress)


def ensure_trained(profile: Profile, spec: RunSpec, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """The run's training summary, training it first unless a finished (or diverged) run is already there;
    a profile with several processes trains under `accelerate launch` (lorastudy.train.launch)."""
    return read_train_summary(run_dir) or train_here_or_launched(profile, spec, run_dir, progress=progress)


def checkpoint_table(summary: dict[str, Any]) -> pd.DataFrame:
    """The run's checkpoints: step, tokens seen, throughput, loss and peak memory (in MiB)."""
    ckpts = pd.DataFrame(summary["checkpoints"])
    return ckpts.assign(peak_memory_MiB=ckpts.peak_memory_bytes / 2**20).drop(columns="peak_memory_bytes")
