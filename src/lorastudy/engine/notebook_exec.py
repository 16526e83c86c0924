"""Executing the project's notebooks with papermill: atomically, with a failed notebook kept for the reader.

Every step of a sweep is an executed notebook written into the output folder, so the executed notebooks are
the book's appendix. Notebooks may share one kernel (`kernel()`), its namespace cleared between them
(`reset`): the next then starts without a kernel start-up or a second import of torch, and without any
variable of the one before. A sweep worker keeps one kernel for all the runs it is given."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lorastudy.engine.allocator import allocator_env
from lorastudy.layout import NOTEBOOKS, PROJECT_ROOT, failed_notebook


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment that fixes the CPU thread count of every library (torch's OpenMP pool, MKL), with MKL's
    dynamic thread adjustment off: under load MKL would otherwise use fewer threads than asked, which
    changes the order of floating-point sums and so the numbers of a run."""
    env = {"MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def compute_env(threads: int | None) -> dict[str, str]:
    """The environment of a process that trains or evaluates: fixed thread counts and the allocator."""
    return {**thread_env(threads), **allocator_env()}


def start_kernel(**launch: Any) -> Any:
    """A started python3 kernel in the project root; `launch`: Popen arguments (e.g. stdout, stderr)."""
    from jupyter_client.manager import KernelManager  # heavy: jupyter machinery, only when executing

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(PROJECT_ROOT), **launch)
    return km


@contextmanager
def kernel(**launch: Any) -> Iterator[Any]:
    """A started python3 kernel in the project root, shut down on leaving."""
    km = start_kernel(**launch)
    try:
        yield km
    finally:
        km.shutdown_kernel(now=True)


def reset(km: Any) -> None:
    """Clear the kernel's namespace (`%reset -f`): imported modules stay loaded, no variable survives."""
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        code = "get_ipython().run_line_magic('reset', '-f'); get_ipython().execution_count = 1"
        reply = kc.execute_interactive(code, silent=True, store_history=False, timeout=60,
                                       output_hook=lambda msg: None)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"could not reset the kernel: {reply['content']}")
    finally:
        kc.stop_channels()


def execute(notebook: str, out: Path, parameters: dict[str, Any], km: Any = None) -> Path:
    """papermill into a temporary file, renamed over `out` only when the notebook finished; a failed
    notebook is kept beside it as NAME.failed.ipynb for the reader. `km`: a running kernel to use (and
    leave running), else a fresh one."""
    import papermill as pm  # heavy: imports jupyter machinery that `lorastudy sweep --dry-run` never needs

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.ipynb")
    try:
        extra = {"km": km} if km is not None else {}
        pm.execute_notebook(str(NOTEBOOKS / notebook), str(tmp), parameters=parameters, kernel_name="python3",
                            progress_bar=False, cwd=str(PROJECT_ROOT), **extra)
    except BaseException:
        if tmp.exists():
            os.replace(tmp, failed_notebook(out))
        raise
    os.replace(tmp, out)
    failed_notebook(out).unlink(missing_ok=True)
    return out


def notebook_parameters(profile_ref: str, out_root: Path, run_id: str | None = None) -> dict[str, Any]:
    """The parameters every notebook takes: the profile, the output folder and, for a run, its id."""
    p: dict[str, Any] = {"profile": profile_ref, "output_dir": str(out_root)}
    if run_id is not None:
        p["run_id"] = run_id
    return p


def clean_stale(folder: Path) -> None:
    """Remove what an interrupted attempt left half-written (temporary files, notebooks and checkpoints)."""
    for path in [*folder.rglob(".*.tmp"), *folder.rglob(".*.tmp*"), *folder.rglob(".*.ipynb")]:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def describe_error(err: BaseException) -> str:
    """One line: for a failed notebook, the exception raised inside it rather than papermill's wrapper."""
    name, value = getattr(err, "ename", None), getattr(err, "evalue", None)
    if name:
        return f"{name}: {value} (in the executed notebook)"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def execute_in_process(notebook: str, out: Path, parameters: dict[str, Any], *, log: Path,
                       threads: int | None, env: dict[str, str] | None = None,
                       poll: Callable[[], None] | None = None) -> str | None:
    """`execute` in a process of its own at a fixed thread count, its output in `log`; None, or the error.
    `env`: more environment for it; `poll`: called about once a second while it runs (a progress display)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lorastudy.engine.notebook_exec", notebook, str(out), json.dumps(parameters)]
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT,
                                env={**os.environ, **compute_env(threads), **(env or {})})
        stderr = ""
        while True:
            try:
                stderr = proc.communicate(timeout=1.0)[1]
                break
            except subprocess.TimeoutExpired:
                if poll is not None:
                    poll()
    return None if proc.returncode == 0 else (stderr.strip().splitlines() or ["failed"])[-1]


def is_exclusive(notebook: str) -> bool:
    """Whether a notebook must run alone (it measures speed or memory): `lorastudy.exclusive` in its metadata."""
    import nbformat  # light, but only the sweep's analysis step reads notebook metadata

    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    return bool(nb.metadata.get("lorastudy", {}).get("exclusive", False))


def main(argv: list[str] | None = None) -> int:
    """`python -m lorastudy.engine.notebook_exec NOTEBOOK OUT.ipynb '{"param": value}'`: one notebook in a process of its
    own (how the sweep runs analyses side by side); exit code 1 and the error on stderr when it fails."""
    notebook, out, params = argv if argv is not None else sys.argv[1:]
    try:
        execute(notebook, Path(out), json.loads(params))
    except Exception as err:  # noqa: BLE001 - reported to the parent in one line
        print(describe_error(err), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
