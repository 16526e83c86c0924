"""The training engine: transformers' Trainer set up for the study (schedules, optimizer, progress),
checkpoints at chosen steps with what they cost (tokens, time, memory), and divergence detection.

A non-finite loss stops training and is recorded as divergence instead of raising. Used by fine-tuning
(lorastudy.train.finetune) and by the mini base's pre-training (lorastudy.train.base).
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
from lorastudy.io import read_json, write_json
from lorastudy.layout import CHECKPOINT_RECORD, PROGRESS_ENV, TRAINER_DIR, RunPaths


# ----------------------------------------------------------------------------- measurement
def peak_memory_bytes() -> int:
    """CUDA max allocated on a GPU, else the process' peak resident set size."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


RESUME_RECORD = "lorastudy_resume.json"  # written last into a Trainer checkpoint: the checkpoint is complete


class Checkpointer(TrainerCallback):
    """Saves the model at chosen optimizer steps (atomically), stops on a non-finite loss, and completes each of
    Trainer's own checkpoints with what a resumed run needs beyond it (elapsed time, the data position)."""

    def __init__(self, checkpoint_dir: Callable[[str], Path], at_steps: dict[int, float], unit: str, *,
                 data: "TrainData", per_step: int, save_state_at: set[int] = frozenset(),
                 keep_states: set[int] = frozenset(), elapsed: float = 0.0) -> None:
        self.checkpoint_dir, self.at_steps, self.unit = checkpoint_dir, at_steps, unit
        self.data, self.per_step = data, per_step
        self.save_state_at, self.keep_states = save_state_at, keep_states  # branch points; states never pruned
        self.start = time.perf_counter() - elapsed  # a resumed run counts its earlier attempts' time too
        self.saved: list[dict[str, Any]] = []
        self.diverged_at: int | None = None
        self.trainer: Trainer | None = None  # set by `fit`; saves the model when several processes train
        self.rng_from: str | None = None  # a resumed stream's checkpoint: its RNG is restored at the first step

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001 - Trainer's callback signature
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.diverged_at = state.global_step
            control.should_training_stop = True

    def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
        if self.rng_from and self.trainer is not None:
            # Trainer restores the RNG before the DataLoader's iterator draws its seed from it unless it skips
            # batches itself; restored again here, where it restores them after skipping: the masks then match
            self.trainer._load_rng_state(self.rng_from)
            self.rng_from = None

    def on_step_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
        if self.diverged_at is None and state.global_step in self.at_steps:
            self.save(model, state, args)
        if state.global_step in self.save_state_at:  # Trainer's own full checkpoint: a cooldown branch resumes it
            control.should_save = True
        if self.diverged_at is not None:
            control.should_save = False  # a diverged state is not worth resuming

    def on_save(self, args, state, control, **kw):  # noqa: ANN001 - called once Trainer's checkpoint is written
        if args.world_size > 1:  # every process has written its own files (its RNG state) before it is complete
            torch.distributed.barrier()
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        write_json(folder / RESUME_RECORD, {"step": state.global_step, "elapsed_s": time.perf_counter() - self.start,
                                            "data": self.data.position(state.global_step * self.per_step)})
        for old, _ in resumable_states(Path(args.output_dir)):  # keep the newest state and the branch points
            if old < state.global_step and old not in self.keep_states:
                shutil.rmtree(Path(args.output_dir) / f"checkpoint-{old}", ignore_errors=True)

    def save(self, model: PreTrainedModel, state: Any, args: TrainingArguments) -> None:
        """Every process calls this (FSDP gathers the sharded weights collectively); only the main one writes."""
        duration = self.at_steps[state.global_step]
        label = f"{self.unit}-{duration:g}"
        wall = time.perf_counter() - self.start
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        tokens = int(state.num_input_tokens_seen)  # Trainer's count of the batches trained on, over all processes
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


def resumable_states(folder: Path) -> list[tuple[int, Path]]:
    """Trainer's complete checkpoints in `folder` (those Checkpointer finished with RESUME_RECORD), by step."""
    found = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / RESUME_RECORD).is_file():
            found.append((int(step), path))
    return sorted(found)


class QuietProgress(ProgressCallback):
    """Trainer's progress bar without a printed dict per logging step (the loss curve is stored instead)."""

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)


class ProgressFile(TrainerCallback):
    """Step, steps, tokens and seconds written atomically to a JSON file every few seconds, so that the process
    that started a notebook can show training progress (the notebook's own output stays in the notebook)."""

    def __init__(self, path: Path, every: float = 2.0) -> None:
        self.path, self.every = path, every
        self.start = self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001 - Trainer's callback signature
        now = time.perf_counter()
        if now - self.last >= self.every or state.global_step >= state.max_steps:
            self.last = now
            write_json(self.path, {"step": state.global_step, "steps": state.max_steps,
                                   "tokens": int(state.num_input_tokens_seen), "seconds": now - self.start})


class ListData:
    """A run's examples held in memory, in the run's order (`ordered`): Trainer skips the batches a resumed
    run has already seen, so no data position needs storing."""

    skips_itself = False

    def __init__(self, examples: Sequence[dict]) -> None:
        self.examples = list(examples)

    def dataset(self, position: dict | None, n_examples: int) -> list[dict]:
        del position
        return self.examples[:n_examples]

    def position(self, consumed: int) -> None:
        return None


TrainData = Any  # ListData or data.stream.StreamData: dataset(position, n_examples), position(consumed), skips_itself


# ----------------------------------------------------------------------------- run
def checkpoint_steps(durations: Sequence[float], unit: str, examples: Sequence[dict], batch: int, *,
                     tokens_per_example: float | None = None) -> dict[int, float]:
    """Map each duration (tokens or epochs) to the optimizer step where it is reached (a stream's examples are
    not held: it gives `tokens_per_example`, its block length)."""
    per_step_examples = batch
    if unit == "epochs":
        steps_per_epoch = math.ceil(len(examples) / per_step_examples)
        steps = {max(1, round(d * steps_per_epoch)): d for d in durations}
    else:
        if tokens_per_example is None:
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
                       warmup_steps: int | None = None, decay_steps: int | None = None,
                       save_every: int | None = None) -> TrainingArguments:
    """`wsd` (fine-tuning): warmup, stable, a linear cooldown over the last `cooldown_ratio` (or `decay_steps`),
    data read in the order given; `cosine` (the mini base's pre-training): Trainer's shuffled order. `save_every`:
    Trainer's full state (weights, optimizer, schedule, RNG) every that many steps, what a killed run resumes."""
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
        max_steps=max_steps, logging_steps=1, logging_nan_inf_filter=False, report_to=[],
        save_strategy="steps" if save_every else "no", save_steps=save_every or 500,
        include_num_input_tokens_seen="non_padding",  # counted where batches are trained: exact on resume too
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


MAIN_RECORD = "main.json"  # in Trainer's folder: the main run finished (its log, time, divergence)


def _trainer(model: PreTrainedModel, dataset: Any, args: TrainingArguments, pad_id: int, ckpt: Checkpointer,
             optimizer: str) -> Trainer:
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=PadCollator(pad_id),
                      callbacks=[ckpt], optimizer_cls_and_kwargs=optimizer_spec(optimizer, args))
    ckpt.trainer = trainer
    if os.environ.get(PROGRESS_ENV):
        trainer.add_callback(ProgressFile(Path(os.environ[PROGRESS_ENV])))
    if not args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(QuietProgress())
    return trainer


def _resume_point(folder: Path, fallback: Path | None = None) -> tuple[str | None, dict[str, Any]]:
    """(Trainer checkpoint to resume, its resume record): the newest complete state in `folder`, else
    `fallback` (a branch point of the main run), else nothing (start afresh)."""
    states = resumable_states(folder)
    path = states[-1][1] if states else fallback
    if path is None or not (path / RESUME_RECORD).is_file():
        return None, {}
    return str(path), read_json(path / RESUME_RECORD)


def fit(model: PreTrainedModel, examples: Sequence[dict] | TrainData, *, out: Path, args: TrainingArguments,
        pad_id: int, at_steps: dict[int, float], unit: str, optimizer: str = "adamw",
        branches: dict[int, int] | None = None,
        branch: Callable[[int, int], tuple[PreTrainedModel, TrainingArguments]] | None = None,
        resume: bool = False) -> Checkpointer:
    """Train with Trainer, saving checkpoints at `at_steps`; returns the callback with what was saved.

    With `branches` (branch step -> final step, see branch_points) only the longest duration is saved by the main
    run, which also keeps Trainer's full state at each branch step; then each branch resumes that state (weights,
    optimizer, schedule, RNG, data position) with a fresh model and arguments from `branch(start, final)`, cools
    down to its final step, and saves that duration. `examples` must be in the run's order (`ordered`), or a
    stream (data.stream.StreamData). With `resume`, what an earlier attempt finished is kept: the main run and
    each branch go on from their newest complete Trainer state (`save_steps` of `args` sets how often one is
    written), so a killed run loses at most that many steps."""
    data = examples if hasattr(examples, "skips_itself") else ListData(examples)
    if data.skips_itself:
        args.ignore_data_skip = True  # the stream starts at the checkpoint's data position itself
    branches = branches or {}
    paths, root = RunPaths(out), Path(args.output_dir)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    main_at = {max(at_steps): at_steps[max(at_steps)]} if branches else at_steps
    finished = read_json(root / MAIN_RECORD) if resume and (root / MAIN_RECORD).is_file() else None
    state, record = _resume_point(root) if resume and finished is None else (None, {})
    ckpt = Checkpointer(paths.checkpoint, main_at, unit, data=data, per_step=per_step, save_state_at=set(branches),
                        keep_states=set(branches), elapsed=(finished or record).get("elapsed_s", 0.0))
    if finished is None:
        trainer = _trainer(model, data.dataset(record.get("data"), args.max_steps * per_step), args, pad_id, ckpt,
                           optimizer)
        ckpt.rng_from = state if data.skips_itself else None
        trainer.train(resume_from_checkpoint=state)
        ckpt.trainer_optimizer = trainer.optimizer  # type: ignore[attr-defined]
        finished = {"log_history": trainer.state.log_history, "diverged_at": ckpt.diverged_at,
                    "tokens_seen": int(trainer.state.num_input_tokens_seen),
                    "elapsed_s": time.perf_counter() - ckpt.start}
        if args.process_index == 0:
            write_json(root / MAIN_RECORD, finished)
    ckpt.log_history, ckpt.diverged_at = finished["log_history"], finished["diverged_at"]  # type: ignore[attr-defined]
    ckpt.tokens_seen = finished["tokens_seen"]  # type: ignore[attr-defined]  # the main run's, to its last step
    for start, final in sorted(branches.items()):
        label = f"{unit}-{at_steps[final]:g}"
        if branch is None or (resume and paths.checkpoint_record(label).is_file()):
            continue
        b_root = root / f"branch-{final}"
        b_state, b_record = _resume_point(b_root, fallback=root / f"checkpoint-{start}")
        if b_state is None:  # the main run diverged before this branch point
            continue
        b_model, b_args = branch(start, final)
        b_args.output_dir, b_args.ignore_data_skip = str(b_root), data.skips_itself
        b_ckpt = Checkpointer(paths.checkpoint, {final: at_steps[final]}, unit, data=data, per_step=per_step,
                              elapsed=b_record.get("elapsed_s", 0.0))
        b_ckpt.rng_from = b_state if data.skips_itself else None
        _trainer(b_model, data.dataset(b_record.get("data"), final * per_step), b_args, pad_id, b_ckpt,
                 optimizer).train(resume_from_checkpoint=b_state)
        del b_model
    ckpt.saved = [read_json(paths.checkpoint_record(f"{unit}-{at_steps[s]:g}")) for s in sorted(at_steps)
                  if paths.checkpoint_record(f"{unit}-{at_steps[s]:g}").is_file()]
    return ckpt
