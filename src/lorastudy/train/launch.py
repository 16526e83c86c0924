"""Multi-process training: a profile with `training.num_processes > 1` trains in a child launcher.

On GPUs the child is `accelerate launch` with the committed FSDP config (configs/accelerate/fsdp.yaml:
full sharding of each decoder layer, bf16, activation checkpointing); without GPUs it is torchrun with gloo,
plain data parallelism, which is what the tests exercise. The child runs `lorastudy train` on a copy of
the resolved profile holding just this run, so overrides and explicit run settings survive the hop, and its
output is streamed line by line so that a notebook shows the progress bar while it trains.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from lorastudy.config import Arm, Profile
from lorastudy.io import read_json
from lorastudy.layout import PROJECT_ROOT, Layout
from lorastudy.plan import RunSpec, plan_runs

FSDP_CONFIG = PROJECT_ROOT / "configs" / "accelerate" / "fsdp.yaml"


def inside_launcher() -> bool:
    """True in a process started by accelerate launch or torchrun (both set WORLD_SIZE and LOCAL_RANK)."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def gpu_count() -> int:
    import torch  # heavy: launching a child needs no torch in this process unless asked for GPUs

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_profile(profile: Profile, spec: RunSpec) -> Profile:
    """The profile with a sweep of exactly this run, so that `lorastudy train FILE RUN_ID` finds it."""
    arm: dict[str, Any] = dict(name=spec.arm, domain=spec.domain, regime=spec.regime, method=spec.method,
                               learning_rate=spec.learning_rate, seed=spec.seed, weight_decay=spec.weight_decay,
                               attention_dropout=spec.attention_dropout)
    if spec.method == "lora":
        arm.update(lora_rank=spec.lora_rank, lora_alpha=spec.lora_alpha, target_modules=spec.target_modules,
                   use_rslora=spec.use_rslora)
    single = profile.model_copy(update={"sweep": [Arm.model_validate(arm)]})
    (planned,) = plan_runs(single)
    if planned.run_id != spec.run_id:
        raise ValueError(f"run {spec.run_id} does not survive the copy into a one-run profile ({planned.run_id})")
    return single


def launch_command(profile_file: Path, run_id: str, out_root: Path, *, num_processes: int,
                   cpu: bool | None = None, config_file: Path = FSDP_CONFIG) -> list[str]:
    """`accelerate launch` (FSDP) on GPUs, torchrun (gloo data parallel) on CPU, each running `lorastudy train`."""
    cpu = gpu_count() == 0 if cpu is None else cpu
    train = ["-m", "lorastudy.cli", "train", str(profile_file), run_id, "--output", str(out_root)]
    if cpu:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
                *train]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "--num_processes", str(num_processes), *train]


def stream(cmd: Sequence[str], *, echo: Callable[[str], Any] = print, tail: int = 40,
           env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run `cmd`, echoing its merged stdout and stderr line by line as they come (a progress bar's
    carriage-return updates count as lines); returns the exit code and the last `tail` lines."""
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    last: deque[str] = deque(maxlen=tail)
    with subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.strip():
                last.append(line)
                echo(line)
        return proc.wait(), list(last)


def train_distributed(profile: Profile, spec: RunSpec, run_dir: Path, *, echo: Callable[[str], Any] = print,
                      cpu: bool | None = None) -> dict[str, Any]:
    """Train one run in `training.num_processes` processes and return its summary (train.json)."""
    out_root = run_dir.parents[1]
    paths = Layout(out_root).run(spec.run_id)
    if paths.dir != run_dir:
        raise ValueError(f"{run_dir} is not a run folder (OUT/runs/{spec.run_id}) of the lorastudy layout")
    run_dir.mkdir(parents=True, exist_ok=True)
    profile_file = paths.launch_profile
    profile_file.write_text(yaml.safe_dump(run_profile(profile, spec).model_dump(mode="json"), sort_keys=False))
    cmd = launch_command(profile_file, spec.run_id, out_root, num_processes=profile.training.num_processes, cpu=cpu)
    echo("[launch] " + " ".join(cmd))
    code, last = stream(cmd, echo=echo)
    summary = read_json(paths.train_record) if paths.trained() else None
    if code != 0 or summary is None:
        raise RuntimeError(f"distributed training of {spec.run_id} failed (exit code {code}); last lines:\n"
                           + "\n".join(last))
    return summary


def fsdp_dry_run(config_file: Path = FSDP_CONFIG, num_processes: int = 2) -> tuple[Any, dict[str, str]]:
    """The FSDP plugin each process of `accelerate launch --config_file FILE` would build, without launching
    or needing a GPU: accelerate's own argument validation and launch environment, then the plugin read
    from that environment. Returns (plugin, the FSDP_*/ACCELERATE_* variables the launcher would set)."""
    # heavy: accelerate's launcher internals, needed only for the dry run of the FSDP config
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    argv = ["--config_file", str(config_file), "--num_processes", str(num_processes), "-m", "lorastudy.cli"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    if not args.use_fsdp:
        raise ValueError(f"{config_file} does not configure FSDP (distributed_type: FSDP)")
    env = prepare_multi_gpu_env(args)
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    return plugin, {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_"))}
