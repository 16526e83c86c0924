"""Fine-tuning one planned run through transformers' Trainer (+ peft for LoRA).

CPT packs unstructured text and learns every token; IFT learns the response tokens only. Checkpoints are
written at the profile's durations (tokens for CPT, epochs for IFT) with what they cost (tokens, time, memory).
A non-finite loss stops the run and records it as diverged instead of raising.
"""
from __future__ import annotations

import math
import os
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    ProgressCallback,
    TrainingArguments,
    set_seed,
)

from lorastudy import prompts
from lorastudy.config import Profile, RunSpec
from lorastudy.data.records import CodeTask, InstructionPair, MathProblem, Record, TextDoc
from lorastudy.io import read_json, write_json

IGNORE = -100


# ----------------------------------------------------------------------------- examples
def to_text(record: Record) -> str:
    """A record as unstructured text for continued pre-training."""
    if isinstance(record, TextDoc):
        return record.text
    if isinstance(record, CodeTask):
        return record.prompt + record.canonical_solution
    if isinstance(record, InstructionPair):
        return record.prompt + "\n" + record.response
    if isinstance(record, MathProblem):
        return record.question + "\n" + record.answer
    raise TypeError(f"cannot use {type(record).__name__} as CPT text")


def to_pair(record: Record, domain: str) -> tuple[str, str]:
    """A record as (prompt, response) in the same prompt format the evaluation uses."""
    if isinstance(record, CodeTask):
        return record.prompt, record.canonical_solution
    if isinstance(record, MathProblem):
        return prompts.math_prompt(record.question), prompts.math_response(record.answer)
    if isinstance(record, InstructionPair):
        if domain == "math":
            return prompts.math_prompt(record.prompt), prompts.math_response(record.response)
        return prompts.code_instruction(record.prompt), record.response
    raise TypeError(f"cannot use {type(record).__name__} as an instruction pair")


def _bos(tok: PreTrainedTokenizerBase) -> list[int]:
    """[bos], or [] for tokenizers without one (Qwen2's), as generation and scoring already do."""
    return [tok.bos_token_id] if tok.bos_token_id is not None else []


def pack_cpt(texts: Sequence[str], tok: PreTrainedTokenizerBase, seq_len: int) -> list[dict[str, list[int]]]:
    """Concatenate bos+doc+eos for every doc and cut into seq_len blocks; the last block is kept short,
    so every token is used exactly once."""
    stream: list[int] = []
    for text in texts:
        stream += [*_bos(tok), *tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    return [{"input_ids": stream[i:i + seq_len], "labels": stream[i:i + seq_len]} for i in range(0, len(stream), seq_len)]


def tokenize_ift(pairs: Sequence[tuple[str, str]], tok: PreTrainedTokenizerBase, seq_len: int) -> list[dict[str, list[int]]]:
    """bos + prompt + response + eos, labels masked (IGNORE) on bos and prompt; truncated to seq_len.
    Pairs whose prompt fills the whole window teach nothing and are dropped."""
    out = []
    for prompt, response in pairs:
        p = [*_bos(tok), *tok(prompt, add_special_tokens=False)["input_ids"]]
        r = [*tok(response, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        ids = (p + r)[:seq_len]
        labels = ([IGNORE] * len(p) + r)[:seq_len]
        if any(x != IGNORE for x in labels):
            out.append({"input_ids": ids, "labels": labels})
    return out


@dataclass
class PadCollator:
    """Right-pads a batch; padded positions are ignored by the loss and the attention."""

    pad_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# ----------------------------------------------------------------------------- measurement
def peak_memory_bytes() -> int:
    """CUDA max allocated on a GPU, else the process' peak resident set size."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class Checkpointer(TrainerCallback):
    """Saves the model at chosen optimizer steps (atomically) and stops on a non-finite loss."""

    def __init__(self, run_dir: Path, at_steps: dict[int, float], unit: str, counter: "CountingCollator") -> None:
        self.run_dir, self.at_steps, self.unit, self.counter = run_dir, at_steps, unit, counter
        self.start = time.perf_counter()
        self.saved: list[dict[str, Any]] = []
        self.diverged_at: int | None = None
        self.trainer: Trainer | None = None  # set by `fit`; saves the model when several processes train

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001 - Trainer's callback signature
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.diverged_at = state.global_step
            control.should_training_stop = True

    def on_step_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
        if self.diverged_at is None and state.global_step in self.at_steps:
            self.save(model, state, args)

    def save(self, model: PreTrainedModel, state: Any, args: TrainingArguments) -> None:
        """Every process calls this (FSDP gathers the sharded weights collectively); only the main one writes."""
        duration = self.at_steps[state.global_step]
        label = f"{self.unit}-{duration:g}"
        wall = time.perf_counter() - self.start
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        tokens = _sum_over_processes(self.counter.tokens, args)
        meta = {
            "checkpoint": label, "duration": duration, "duration_unit": self.unit, "step": state.global_step,
            "tokens_seen": tokens, "wall_time_s": wall, "peak_memory_bytes": peak_memory_bytes(),
            "tokens_per_s": tokens / wall if wall else None,
            "train_loss": losses[-1] if losses else None,
        }
        final = self.run_dir / "checkpoints" / label
        tmp = final.with_name(f".{label}.tmp")
        if state.is_world_process_zero:
            shutil.rmtree(tmp, ignore_errors=True)
        if args.world_size > 1 and self.trainer is not None:
            self.trainer.save_model(str(tmp))
        else:
            model.save_pretrained(tmp)
        if state.is_world_process_zero:
            write_json(tmp / "checkpoint.json", meta)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        self.saved.append(meta)


def _sum_over_processes(count: int, args: TrainingArguments) -> int:
    """A per-process count summed over every process (each one counts only the batches it was handed)."""
    if args.world_size == 1:
        return count
    total = torch.tensor([count], dtype=torch.long, device=args.device)
    torch.distributed.all_reduce(total)
    return int(total.item())


class QuietProgress(ProgressCallback):
    """Trainer's progress bar without a printed dict per logging step (the loss curve is stored instead)."""

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)


class CountingCollator(PadCollator):
    """PadCollator that also counts the real tokens handed to the model."""

    tokens: int = 0

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        out = super().__call__(batch)
        self.tokens += int(out["attention_mask"].sum())
        return out


# ----------------------------------------------------------------------------- run
def checkpoint_steps(durations: Sequence[float], unit: str, examples: Sequence[dict], batch: int) -> dict[int, float]:
    """Map each duration (tokens or epochs) to the optimizer step where it is reached."""
    per_step_examples = batch
    if unit == "epochs":
        steps_per_epoch = math.ceil(len(examples) / per_step_examples)
        steps = {max(1, round(d * steps_per_epoch)): d for d in durations}
    else:
        tokens_per_example = sum(len(e["input_ids"]) for e in examples) / max(len(examples), 1)
        steps = {max(1, math.ceil(d / (tokens_per_example * per_step_examples))): d for d in durations}
    if len(steps) < len(durations):
        raise ValueError(f"durations {list(durations)} map to the same optimizer steps {sorted(steps)}; spread them out")
    return steps


def training_arguments(out: Path, *, lr: float, batch: int, accum: int, max_steps: int, seed: int, regime: str,
                       profile: Profile, weight_decay: float, progress: bool,
                       warmup_ratio: float | None = None) -> TrainingArguments:
    t = profile.training
    cuda = torch.cuda.is_available()
    bf16 = t.precision == "bf16" or (t.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    warmup = int((t.warmup_ratio if warmup_ratio is None else warmup_ratio) * max_steps)
    if regime == "cpt":  # the paper's CPT: warmup, then a cooldown over the last part of the budget
        sched, kwargs = "warmup_stable_decay", {"num_decay_steps": max(1, int(t.cooldown_ratio * max_steps)),
                                                "decay_type": "linear"}
    else:
        sched, kwargs = "cosine", {}
    return TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
        learning_rate=lr, weight_decay=weight_decay, adam_beta1=t.adam_betas[0], adam_beta2=t.adam_betas[1],
        max_grad_norm=t.max_grad_norm, lr_scheduler_type=sched, lr_scheduler_kwargs=kwargs, warmup_steps=warmup,
        max_steps=max_steps, logging_steps=1, logging_nan_inf_filter=False, save_strategy="no", report_to=[],
        seed=seed, data_seed=seed, bf16=bf16, use_cpu=not cuda, dataloader_num_workers=0,
        disable_tqdm=not progress, remove_unused_columns=False, optim="adamw_torch",  # Lion: optimizer_spec
        activation_checkpointing=t.gradient_checkpointing,
    )


def optimizer_spec(name: str, args: TrainingArguments) -> tuple[type, dict[str, Any]] | None:
    """The paper's decoupled LionW (lion-pytorch, decay scaled by lr/peak lr as in composer), or None = AdamW."""
    if name != "lion":
        return None
    from lion_pytorch import Lion

    return Lion, {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2),
                  "weight_decay": args.weight_decay, "decoupled_weight_decay": True}


def fit(model: PreTrainedModel, examples: list[dict], *, out: Path, args: TrainingArguments, pad_id: int,
        at_steps: dict[int, float], unit: str, optimizer: str = "adamw") -> Checkpointer:
    """Train with Trainer, saving checkpoints at `at_steps`; returns the callback with what was saved."""
    collator = CountingCollator(pad_id)
    ckpt = Checkpointer(out, at_steps, unit, collator)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator, callbacks=[ckpt],
                      optimizer_cls_and_kwargs=optimizer_spec(optimizer, args))
    ckpt.trainer = trainer
    if not args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(QuietProgress())
    trainer.train()
    ckpt.log_history = trainer.state.log_history  # type: ignore[attr-defined]
    ckpt.trainer_optimizer = trainer.optimizer  # type: ignore[attr-defined]
    return ckpt


def load_training_records(profile: Profile, spec: RunSpec) -> list[Record]:
    from lorastudy.sources import load_spec

    return load_spec(profile, profile.data[spec.domain][spec.regime])


def train_run(profile: Profile, spec: RunSpec, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Fine-tune one run and write `train.json` last (its presence means the run is done)."""
    from lorastudy.modeling import apply_lora, count_parameters, load_base, set_attention_dropout
    from lorastudy.provenance import provenance

    t = profile.training.for_task(spec.domain, spec.regime)
    set_seed(spec.seed)
    model, tok = load_base(profile)
    if spec.attention_dropout:
        set_attention_dropout(model, spec.attention_dropout)
    if spec.method == "lora":
        model = apply_lora(model, spec, profile)
    records = load_training_records(profile, spec)
    if spec.regime == "cpt":
        examples = pack_cpt([to_text(r) for r in records], tok, t.seq_len)
        unit = "tokens"
    else:
        examples = tokenize_ift([to_pair(r, spec.domain) for r in records], tok, t.seq_len)
        unit = "epochs"
    if not examples:
        raise ValueError(f"run {spec.run_id}: no training examples from {profile.data[spec.domain][spec.regime].source}")
    durations = t.durations[spec.regime]
    at_steps = checkpoint_steps(durations, unit, examples, t.batch_size * t.grad_accum * t.num_processes)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    args = training_arguments(run_dir, lr=spec.learning_rate, batch=t.batch_size, accum=t.grad_accum,
                              max_steps=max(at_steps), seed=spec.seed, regime=spec.regime, profile=profile,
                              weight_decay=spec.weight_decay, progress=progress)
    start = time.perf_counter()
    ckpt = fit(model, examples, out=run_dir, args=args, pad_id=tok.pad_token_id, at_steps=at_steps, unit=unit,
               optimizer=t.optimizer)
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
        "provenance": provenance(profile, seed=spec.seed),
    }
    shutil.rmtree(run_dir / "trainer", ignore_errors=True)
    if args.process_index == 0:  # under a multi-process launch the main process writes for all
        write_json(run_dir / "train.json", summary)
    return summary


def read_train_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "train.json"
    return read_json(path) if path.is_file() else None


def ensure_trained(profile: Profile, spec: RunSpec, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """The run's training summary, training it first unless a finished (or diverged) run is already there;
    a profile with several processes trains under `accelerate launch` (lorastudy.launch)."""
    from lorastudy.launch import run_training

    return read_train_summary(run_dir) or run_training(profile, spec, run_dir, progress=progress)
