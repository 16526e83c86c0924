"""The memory allocator of the processes that train and evaluate: tcmalloc when it is installed.

On a CPU, PyTorch allocates and frees many activation-sized buffers every step; glibc's malloc hands large ones
back to the kernel and faults them in again, tcmalloc keeps them: the mini model trains faster, with
bit-identical checkpoints (the measurements: LOG.md, "Undated"). The allocator is chosen
by preloading it, the way PyTorch's CPU performance guide does; `LORASTUDY_MALLOC=system` keeps glibc's.
"""
from __future__ import annotations

import ctypes.util
import functools
import os
import sys
from pathlib import Path

MALLOC_ENV = "LORASTUDY_MALLOC"  # unset: tcmalloc if installed; "system": glibc's malloc; a path: that library
TCMALLOC = "tcmalloc_minimal"  # Debian's libtcmalloc-minimal4, conda-forge's gperftools


@functools.lru_cache(maxsize=1)
def find_tcmalloc() -> str | None:
    """tcmalloc's shared library: in this Python's environment (conda), else where the loader looks."""
    for folder in dict.fromkeys((Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib")):
        found = sorted(folder.glob(f"lib{TCMALLOC}.so*"))
        if found:
            return str(found[0])
    return ctypes.util.find_library(TCMALLOC)


def allocator_env() -> dict[str, str]:
    """Environment that preloads the allocator into a child process (kept beside an LD_PRELOAD already set);
    {} for glibc's malloc."""
    choice = os.environ.get(MALLOC_ENV, "")
    if choice == "system":
        return {}
    library = choice or find_tcmalloc()
    if not library:
        return {}
    if choice and not Path(choice).is_file():
        raise FileNotFoundError(f"{MALLOC_ENV}={choice}: no such library (a path, or 'system')")
    preload = os.environ.get("LD_PRELOAD", "").split()
    return {"LD_PRELOAD": " ".join(dict.fromkeys([library, *preload])),
            "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}  # no stderr line per large allocation
