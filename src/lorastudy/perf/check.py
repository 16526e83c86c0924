"""Is this machine ready for a profile? Checked before `make reproduce` spends any compute.

GPUs (count ≥ training.num_processes, memory ≥ an estimate of what a run needs), free disk for checkpoints
and downloads, host memory for the training data held in memory (a streamed CPT corpus is not), the hub (reachable; gated models such as
Llama-2 need a token with access) and every hub model and dataset the profile reads, local data files, and
the multi-GPU launch config. The mini profiles run on CPU and need none of the GPU or hub items.
Memory and disk needs are estimates (lorastudy.perf.memory_model's Appendix H model, lorastudy.perf.estimate's sizes).
"""
from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from lorastudy.config import TARGET_MODULES, ConfigError, DatasetSpec, Profile, load_profile
from lorastudy.data.rows import looks_like_path
from lorastudy.data.sources import streams
from lorastudy.perf.estimate import ModelSize, data_tokens, model_size
from lorastudy.perf.memory_model import activation_bytes, lora_fraction, model_state_bytes
from lorastudy.plan import plan_runs
from lorastudy.train.launch import FSDP_CONFIG, fsdp_dry_run

GB = 1e9
BYTES_PER_HELD_TOKEN = 100  # Python lists of int hold a token ~3 times (stream, input_ids, labels) at ~36 B each
GPU_MEMORY_HEADROOM = 0.9  # CUDA context, allocator fragmentation and temporaries take the rest


@dataclass(frozen=True)
class Check:
    """One requirement: met or not, and why."""

    name: str
    ok: bool
    detail: str


def needs_gpu(profile: Profile) -> bool:
    """Profiles on a pretrained model (hub id or folder) are GPU work; the mini profiles run on CPU."""
    return profile.base.kind == "pretrained"


# ---------------------------------------------------------------- GPUs
def _gpus() -> list[tuple[str, int]]:
    import torch  # heavy: only the GPU profiles ask, so the mini profiles' check stays fast

    if not torch.cuda.is_available():
        return []
    return [(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory)
            for i in range(torch.cuda.device_count())]


def training_memory_need(profile: Profile, size: ModelSize) -> tuple[float, str]:
    """Bytes one GPU needs for the most demanding planned run, with the breakdown (0 without runs).

    Model states follow Appendix H (trained parameters in fp32 with Adam's or Lion's moments, frozen weights
    in the base dtype) sharded over the processes; activations are one micro-batch's (checkpointed under
    FSDP, which the launch config turns on) plus fp32 logits for the loss.
    """
    t = profile.training
    n, s = size.n_params, size.shapes
    optimizer = "lion" if t.optimizer == "lion" else "adam"
    worst, why = 0.0, "no training"
    for run in plan_runs(profile):
        task = t.for_task(run.domain, run.regime)
        if run.method == "full":
            states = model_state_bytes(n, method="full", optimizer=optimizer, n_gpus=t.num_processes)
        else:
            frac = lora_fraction(s, int(run.lora_rank or 16), TARGET_MODULES[run.target_modules or "all"])
            states = model_state_bytes(n, method="lora", optimizer=optimizer, lora_fraction=frac,
                                       frozen_dtype_bytes=_weight_bytes(profile), n_gpus=t.num_processes)
        act = activation_bytes(task.batch_size, task.seq_len, s.hidden, s.n_layers, s.intermediate,
                               checkpointing=t.gradient_checkpointing or t.num_processes > 1)
        logits = task.batch_size * task.seq_len * s.vocab * 4
        need = states["total_bytes"] + act + logits
        if need > worst:
            worst = need
            why = (f"{run.run_id}: model states {states['total_bytes'] / GB:.1f} + activations {act / GB:.1f} "
                   f"+ logits {logits / GB:.1f} GB")
    return worst, why


def _weight_bytes(profile: Profile) -> int:
    return 4 if profile.base.dtype == "float32" else 2


def gpu_memory_need(profile: Profile, size: ModelSize) -> tuple[float, str]:
    """The larger of training's need per GPU and evaluation's: the whole model on one GPU (+20% for the
    KV cache and activations of generation)."""
    train, why = training_memory_need(profile, size)
    evaluate = size.n_params * _weight_bytes(profile) * 1.2
    if evaluate > train:
        return evaluate, f"evaluation: the whole model in {profile.base.dtype} on one GPU, +20%"
    return train, why


def check_gpus(profile: Profile, size: ModelSize | None) -> list[Check]:
    if not needs_gpu(profile):
        return [Check("gpu", True, "not needed: the mini profiles run on CPU")]
    want = profile.training.num_processes
    gpus = _gpus()
    found = ", ".join(sorted({name for name, _ in gpus})) or "none (torch.cuda.is_available() is False)"
    checks = [Check("gpu", len(gpus) >= want, f"need {want}, found {len(gpus)}: {found}")]
    if size is None:
        checks.append(Check("gpu memory", True, f"not estimated: size of {profile.base.model} unknown offline"))
        return checks
    need, why = gpu_memory_need(profile, size)
    have = min((mem for _, mem in gpus[:want]), default=0)
    checks.append(Check("gpu memory", bool(gpus) and need <= GPU_MEMORY_HEADROOM * have,
                        f"need ~{need / GB:.0f} GB per GPU ({why}), have {have / GB:.0f} GB"))
    return checks


# ---------------------------------------------------------------- disk and host memory
def _free_bytes(path: Path) -> tuple[Path, int]:
    """Free space on the filesystem that will hold `path` (its nearest existing ancestor)."""
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path, shutil.disk_usage(path).free


def _state_bytes(profile: Profile, run: Any, size: ModelSize) -> float:
    """Trainer's states a running run keeps on disk until it is trained: one per shorter duration (its cooldown
    branch resumes it) and the newest periodic one; each is the trainable weights in fp32 plus Adam's two moments."""
    trainable = size.n_params if run.method == "full" else size.n_params * lora_fraction(
        size.shapes, int(run.lora_rank or 16), TARGET_MODULES[run.target_modules or "all"])
    kept = len(profile.training.durations[run.regime]) - 1 + bool(profile.training.save_every_steps)
    return kept * trainable * 12 + (kept * size.n_params * 2 if run.method == "lora" else 0)


def disk_needs(profile: Profile, size: ModelSize | None) -> dict[str, float]:
    """Bytes to write: checkpoints under the output folder (with the largest run's Trainer states, kept while it
    trains), and model downloads into the hub cache."""
    if size is None:
        return {"outputs": 0.0, "hub cache": 0.0}
    n, weight_bytes = size.n_params, 4 if profile.base.dtype == "float32" else 2
    outputs = 0.0
    for run in plan_runs(profile):
        ckpts = len(profile.training.durations[run.regime])
        if run.method == "full":
            outputs += ckpts * n * weight_bytes
        else:
            frac = lora_fraction(size.shapes, int(run.lora_rank or 16), TARGET_MODULES[run.target_modules or "all"])
            outputs += ckpts * frac * n * 4
    outputs += max((_state_bytes(profile, run, size) for run in plan_runs(profile)), default=0.0)
    downloads = n * 2 if needs_gpu(profile) and not Path(str(profile.base.model)).is_dir() else 0.0
    downloads += sum(n * 2 for c in profile.released if c.method == "full" and not Path(c.model).is_dir())
    return {"outputs": outputs, "hub cache": downloads}


def check_disk(profile: Profile, size: ModelSize | None, out_root: Path) -> list[Check]:
    from huggingface_hub import constants  # heavy: imported only when a check runs

    needs = disk_needs(profile, size)
    places = {"outputs": _free_bytes(out_root), "hub cache": _free_bytes(Path(constants.HF_HUB_CACHE))}
    by_device: dict[int, list[str]] = {}
    for what, (existing, _) in places.items():
        by_device.setdefault(os.stat(existing).st_dev, []).append(what)
    checks = []
    for whats in by_device.values():
        need = sum(needs[w] for w in whats) * 1.1
        existing, free = places[whats[0]]
        checks.append(Check(f"disk ({' + '.join(whats)})", need <= free,
                            f"need ~{need / GB:.1f} GB, free {free / GB:.0f} GB at {existing}"))
    return checks


def check_host_memory(profile: Profile) -> Check:
    """A run's tokenized training set is held in memory unless its CPT corpus streams (data.stream: a few
    blocks at a time); the largest held one must fit in RAM."""
    worst, which, streamed = 0.0, "", set()
    for run in plan_runs(profile):
        if streams(profile, run.domain, run.regime):
            streamed.add(f"{run.domain} {run.regime}")
            continue
        task = profile.training.for_task(run.domain, run.regime)
        tokens = data_tokens(profile.data[run.domain][run.regime], task.seq_len if run.regime == "ift" else None)
        if tokens and tokens > worst:
            worst, which = tokens, f"{run.domain} {run.regime}"
    total = psutil.virtual_memory().total
    need = worst * BYTES_PER_HELD_TOKEN
    note = f"; {', '.join(sorted(streamed))} streamed" if streamed else ""
    if not worst:
        return Check("host memory", True, f"training data size unknown or small{note}; {total / GB:.0f} GB RAM")
    return Check("host memory", need <= 0.8 * total,
                 f"{which} holds ~{worst / 1e6:,.0f}M tokens in memory: ~{need / GB:.0f} GB{note}; "
                 f"RAM {total / GB:.0f} GB" + ("" if need <= 0.8 * total else
                                               " (set a `limit`, or `streaming: true` for a CPT corpus)"))


# ---------------------------------------------------------------- hub and local data
def _is_hub_id(source: str) -> bool:
    return "{world}" not in source and not Path(source).expanduser().exists() and not looks_like_path(source)


def _dataset_specs(profile: Profile) -> list[DatasetSpec]:
    specs = [s for by_regime in profile.data.values() for s in by_regime.values()]
    specs += [g.dataset for g in profile.eval.learning.values()] + [c.dataset for c in profile.eval.forgetting.values()]
    return specs + list(profile.eval.heldout.values())


def hub_repos(profile: Profile) -> list[tuple[str, str, str | None]]:
    """(repo type, repo id, revision) of everything the profile reads from the hub, in order, once each."""
    repos: list[tuple[str, str, str | None]] = []
    if profile.base.kind == "pretrained":
        repos += [("model", m, profile.base.revision) for m in (profile.base.model, profile.base.tokenizer)
                  if m and _is_hub_id(m)]
    repos += [("model", c.model, c.revision) for c in profile.released if _is_hub_id(c.model)]
    repos += [("dataset", s.source, None) for s in _dataset_specs(profile) if _is_hub_id(s.source)]
    return list(dict.fromkeys(repos))


def check_local_files(profile: Profile) -> Check:
    local = [s.source for s in _dataset_specs(profile) if "{world}" not in s.source and not _is_hub_id(s.source)]
    local += [m for m in (profile.base.model, profile.base.tokenizer) if m and not _is_hub_id(m)]
    missing = [p for p in dict.fromkeys(local) if not Path(p).expanduser().exists()]
    found = f"{len(local)} present" if local else "none used"
    return Check("local files", not missing, f"missing: {missing}" if missing else found)


def hub_reachable(timeout: float) -> tuple[bool, str]:
    """One HEAD request to the hub endpoint, so that an offline machine fails fast and once."""
    from huggingface_hub import constants  # heavy: imported only when a check runs

    if constants.HF_HUB_OFFLINE:
        return False, "HF_HUB_OFFLINE is set"
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout)
        return True, constants.ENDPOINT
    except OSError as err:  # URLError, timeouts and HTTP errors are all OSErrors
        return False, f"{constants.ENDPOINT}: {getattr(err, 'reason', err)}"


def check_repo(repo_type: str, repo_id: str, revision: str | None, timeout: float) -> Check:
    """Exists at this revision, and if gated, the current token has been granted access."""
    from huggingface_hub import HfApi, get_token  # heavy: imported only when a check runs
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    name = f"{repo_type} {repo_id}" + (f"@{revision}" if revision else "")
    api, token = HfApi(), get_token()
    info_of = api.model_info if repo_type == "model" else api.dataset_info
    try:
        info = info_of(repo_id, revision=revision, timeout=timeout, token=token)
        if not info.gated:
            return Check(name, True, "public")
        api.auth_check(repo_id, repo_type=repo_type, token=token)
        return Check(name, True, "gated; this token has access")
    except GatedRepoError:
        how = "log in (`hf auth login` or HF_TOKEN) and " if token is None else ""
        return Check(name, False, f"gated: {how}request access at https://huggingface.co/"
                                  f"{'datasets/' if repo_type == 'dataset' else ''}{repo_id}")
    except RevisionNotFoundError:
        return Check(name, False, f"revision {revision!r} not found")
    except RepositoryNotFoundError:
        return Check(name, False, "not found (or private without access)")
    except (HfHubHTTPError, OSError) as err:
        return Check(name, False, f"{type(err).__name__}: {err}")


def check_hub(profile: Profile, timeout: float) -> list[Check]:
    repos = hub_repos(profile)
    if not repos:
        return [Check("hub", True, "not needed: every source is local")]
    ok, where = hub_reachable(timeout)
    if not ok:
        return [Check("hub", False, f"unreachable ({where}); the profile reads {len(repos)} hub repositories: "
                                    + ", ".join(r for _, r, _ in repos))]
    return [Check("hub", True, f"reachable: {where}")] + [check_repo(*r, timeout=timeout) for r in repos]


# ---------------------------------------------------------------- launch
def check_launch(profile: Profile) -> Check | None:
    """Several processes: the FSDP launch config must load, and activation checkpointing come from it alone."""
    t = profile.training
    if t.num_processes == 1:
        return None
    if t.gradient_checkpointing:
        return Check("launch", False, "training.gradient_checkpointing must be false with several processes: "
                                      "the FSDP config checkpoints activations (the Trainer refuses both)")
    try:
        plugin, _ = fsdp_dry_run(num_processes=t.num_processes)
    except Exception as err:  # noqa: BLE001 - any failure of accelerate's own validation is the finding
        return Check("launch", False, f"{FSDP_CONFIG}: {type(err).__name__}: {err}")
    return Check("launch", True, f"{FSDP_CONFIG.name}: FSDP {plugin.sharding_strategy.name}, "
                                 f"{t.num_processes} processes")


def check_environment(profile: Profile, *, out_root: Path | None = None, timeout: float = 5.0) -> list[Check]:
    """Every requirement of `profile` on this machine, cheapest first; nothing is downloaded."""
    size = model_size(profile)
    checks = check_gpus(profile, size)
    checks += check_disk(profile, size, out_root or profile.out_dir())
    checks += [check_host_memory(profile), check_local_files(profile)]
    launch = check_launch(profile)
    checks += [launch] if launch else []
    return checks + check_hub(profile, timeout)


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{'ok' if c.ok else 'MISSING':<8}{c.name:<{width + 2}}{c.detail}" for c in checks)


def main(profile_ref: str, out_root: str | None = None) -> int:
    """Print the checks; 0 when everything is there, 1 (naming what is missing) otherwise, 2 for a bad profile."""
    try:
        profile = load_profile(profile_ref)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    checks = check_environment(profile, out_root=profile.out_dir(out_root))
    print(f"environment check for profile {profile.name}:")
    print(format_table(checks))
    missing = [c.name for c in checks if not c.ok]
    if missing:
        print(f"\nprofile {profile.name} cannot run here; missing: {', '.join(missing)}. Nothing was run.",
              file=sys.stderr)
        return 1
    print(f"\nprofile {profile.name}: everything needed is here.")
    return 0
