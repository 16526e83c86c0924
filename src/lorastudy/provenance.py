"""What produced a result: package versions, git commit and dirty flag, hardware, seed."""
from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from typing import Any

from lorastudy.config import PROJECT_ROOT, Profile

PACKAGES = ["lorastudy", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers"]


@lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def hardware() -> dict[str, Any]:
    import torch  # heavy: the snapshot and book commands record versions and git state without it

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count())
    return info


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(profile: Profile, seed: int | None = None) -> dict[str, Any]:
    return {"profile": profile.model_dump(mode="json"), "seed": seed, "versions": versions(),
            "git": git_state(), "hardware": hardware()}
