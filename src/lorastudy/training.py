"""The training engine: transformers' Trainer set up for the study (schedules, optimizer, progress),
checkpoints at chosen steps with what they cost (tokens, time, memory), and divergence detection.

A non-finite loss stops training and is recorded as divergence instead of raising. Used by fine-tuning
(lorastudy.finetune) and by the mini base's pre-training (lorastudy.base).
"""
from __future__ import annotations

import math
import os
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, ProgressCallback, Trainer, TrainerCallback, TrainingArguments

from lorastudy.config import Profile
from lorastudy.data.examples import PadCollator
from lorastudy.io import write_json
from lorastudy.layout import CHECKPOINT_RECORD, PROGRESS_ENV, TRAINER_DIR, RunPaths


# ----------------------------------------------------------------------------- measurement
def peak_memory_bytes() -> int:
    """CUDA max allocated on a GPU, else the process' peak resident set size."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class Checkpointer(TrainerCallback):
    """Saves the model at chosen optimizer steps (atomically) and stops on a non-finite loss."""

    def __init__(self, checkpoint_dir: Callable[[str], Path], at_steps: dict[int, float], unit: str,
                 counter: "CountingCollator", *, save_state_at: set[int] = frozenset(), token_offset: int = 0,
                 start: float | None = None) -> None:
        self.checkpoint_dir, self.at_steps, self.unit, self.counter = checkpoint_dir, at_steps, unit, counter
        self.save_state_at, self.token_offset = save_state_at, token_offset  # branch points; tokens before a branch
        self.start = time.perf_counter() if start is None else start
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
        if state.global_step in self.save_state_at:  # Trainer's own full checkpoint: a cooldown branch resumes it
            control.should_save = True

    def save(self, model: PreTrainedModel, state: Any, args: TrainingArguments) -> None:
        """Every process calls this (FSDP gathers the sharded weights collectively); only the main one writes."""
        duration = self.at_steps[state.global_step]
        label = f"{self.unit}-{duration:g}"
        wall = time.perf_counter() - self.start
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        tokens = self.token_offset + _sum_over_processes(self.counter.tokens, args)
        meta = {
            "checkpoint": label, "duration": duration, "duration_unit": self.unit, "step": state.global_step,
            "tokens_seen": tokens, "wall_time_s": wall, "peak_memory_bytes": peak_memory_bytes(),
            "tokens_per_s": tokens / wall if wall else None,
            "train_loss": losses[-1] if losses else None,
        }
        final = self.checkpoint_dir(label)
        tmp = final.with_name(f".{label}.tmp")
        if state.is_world_process_zero:
            shutil.rmtree(tmp, ignore_errors=True)
        if args.world_size > 1 and self.trainer is not None:
            self.trainer.save_model(str(tmp))
        else:
            model.save_pretrained(tmp)
        if state.is_world_process_zero:
            write_json(tmp / CHECKPOINT_RECORD, meta)
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


class ProgressFile(TrainerCallback):
    """Step, steps, tokens and seconds written atomically to a JSON file every few seconds, so that the process
    that started a notebook can show training progress (the notebook's own output stays in the notebook)."""

    def __init__(self, path: Path, counter: "CountingCollator", every: float = 2.0) -> None:
        self.path, self.counter, self.every = path, counter, every
        self.start = self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001 - Trainer's callback signature
        now = time.perf_counter()
        if now - self.last >= self.every or state.global_step >= state.max_steps:
            self.last = now
            write_json(self.path, {"step": state.global_step, "steps": state.max_steps,
                                   "tokens": self.counter.tokens, "seconds": now - self.start})


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


def ordered(examples: Sequence[dict], n: int, seed: int) -> list[dict]:
    """The first n examples of the run's data order: a fresh seeded permutation per epoch, concatenated. Fixed
    here (Trainer then reads it in sequence) so that a cooldown branch sees exactly the batches that follow its
    branch point."""
    import random  # stdlib; kept beside its one use

    rng, out = random.Random(seed), []
    while len(out) < n:
        order = list(range(len(examples)))
        rng.shuffle(order)
        out += [examples[i] for i in order]
    return out[:n]


def branch_points(at_steps: dict[int, float], cooldown_ratio: float, warmup_steps: int) -> dict[int, int]:
    """Every duration but the longest ends with its own cooldown: the step where its branch leaves the shared
    stable phase -> its final step (the longest duration's cooldown closes the main schedule)."""
    out = {}
    for final in sorted(at_steps)[:-1]:
        start = final - max(1, round(cooldown_ratio * final))
        if start < warmup_steps:
            raise ValueError(f"duration {at_steps[final]:g} ends at step {final}; its cooldown would start at step "
                             f"{start}, inside the {warmup_steps}-step warmup: lengthen it or shorten the warmup")
        out[start] = final
    return out


def training_arguments(out: Path, *, lr: float, batch: int, accum: int, max_steps: int, seed: int, schedule: str,
                       profile: Profile, weight_decay: float, progress: bool, warmup_ratio: float | None = None,
                       warmup_steps: int | None = None, decay_steps: int | None = None) -> TrainingArguments:
    """`wsd` (fine-tuning): warmup, stable, a linear cooldown over the last `cooldown_ratio` (or `decay_steps`),
    data read in the order given; `cosine` (the mini base's pre-training): Trainer's shuffled order."""
    t = profile.training
    cuda = torch.cuda.is_available()
    bf16 = t.precision == "bf16" or (t.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    warmup = warmup_steps if warmup_steps is not None else int(
        (t.warmup_ratio if warmup_ratio is None else warmup_ratio) * max_steps)
    if schedule == "wsd":  # the paper's CPT schedule, and ours for every fine-tuning run
        decay = decay_steps if decay_steps is not None else max(1, int(t.cooldown_ratio * max_steps))
        sched, kwargs, sampling = "warmup_stable_decay", {"num_decay_steps": decay, "decay_type": "linear"}, "sequential"
    elif schedule == "cosine":
        sched, kwargs, sampling = "cosine", {}, "random"
    else:
        raise ValueError(f"schedule must be 'wsd' or 'cosine', not {schedule!r}")
    return TrainingArguments(
        output_dir=str(out / TRAINER_DIR), per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
        learning_rate=lr, weight_decay=weight_decay, adam_beta1=t.adam_betas[0], adam_beta2=t.adam_betas[1],
        max_grad_norm=t.max_grad_norm, lr_scheduler_type=sched, lr_scheduler_kwargs=kwargs, warmup_steps=warmup,
        max_steps=max_steps, logging_steps=1, logging_nan_inf_filter=False, save_strategy="no", report_to=[],
        seed=seed, data_seed=seed, bf16=bf16, use_cpu=not cuda, dataloader_num_workers=0,
        disable_tqdm=not progress, remove_unused_columns=False, optim="adamw_torch",  # Lion: optimizer_spec
        activation_checkpointing=t.gradient_checkpointing, train_sampling_strategy=sampling,
    )


def optimizer_spec(name: str, args: TrainingArguments) -> tuple[type, dict[str, Any]] | None:
    """The paper's decoupled LionW (lion-pytorch, decay scaled by lr/peak lr as in composer), or None = AdamW."""
    if name != "lion":
        return None
    from lion_pytorch import Lion  # optional: only profiles that train with Lion need it

    return Lion, {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2),
                  "weight_decay": args.weight_decay, "decoupled_weight_decay": True}


def _trainer(model: PreTrainedModel, examples: list[dict], args: TrainingArguments, collator: "CountingCollator",
             ckpt: Checkpointer, optimizer: str) -> Trainer:
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator, callbacks=[ckpt],
                      optimizer_cls_and_kwargs=optimizer_spec(optimizer, args))
    ckpt.trainer = trainer
    if os.environ.get(PROGRESS_ENV):
        trainer.add_callback(ProgressFile(Path(os.environ[PROGRESS_ENV]), collator))
    if not args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(QuietProgress())
    return trainer


def fit(model: PreTrainedModel, examples: list[dict], *, out: Path, args: TrainingArguments, pad_id: int,
        at_steps: dict[int, float], unit: str, optimizer: str = "adamw", branches: dict[int, int] | None = None,
        branch: Callable[[int, int], tuple[PreTrainedModel, TrainingArguments]] | None = None) -> Checkpointer:
    """Train with Trainer, saving checkpoints at `at_steps`; returns the callback with what was saved.

    With `branches` (branch step -> final step, see branch_points) only the longest duration is saved by the main
    run, which also keeps Trainer's full state at each branch step; then each branch resumes that state (weights,
    optimizer, schedule, RNG, data position) with a fresh model and arguments from `branch(start, final)`, cools
    down to its final step, and saves that duration. `examples` must be in the run's order (`ordered`)."""
    branches = branches or {}
    collator = CountingCollator(pad_id)
    main_at = {max(at_steps): at_steps[max(at_steps)]} if branches else at_steps
    ckpt = Checkpointer(RunPaths(out).checkpoint, main_at, unit, collator, save_state_at=set(branches))
    trainer = _trainer(model, examples, args, collator, ckpt, optimizer)
    trainer.train()
    ckpt.log_history = trainer.state.log_history  # type: ignore[attr-defined]
    ckpt.trainer_optimizer = trainer.optimizer  # type: ignore[attr-defined]
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    for start, final in sorted(branches.items()):
        state = Path(args.output_dir) / f"checkpoint-{start}"
        if branch is None or not state.is_dir():  # the main run diverged before this branch point
            continue
        b_model, b_args = branch(start, final)
        b_collator = CountingCollator(pad_id)
        offset = sum(len(e["input_ids"]) for e in examples[:start * per_step])  # the main run's tokens up to there
        b_ckpt = Checkpointer(RunPaths(out).checkpoint, {final: at_steps[final]}, unit, b_collator,
                              token_offset=offset, start=ckpt.start)
        _trainer(b_model, examples[:final * per_step], b_args, b_collator, b_ckpt, optimizer).train(
            resume_from_checkpoint=str(state))
        ckpt.saved += b_ckpt.saved
        del b_model
    ckpt.saved.sort(key=lambda m: m["step"])
    return ckpt
