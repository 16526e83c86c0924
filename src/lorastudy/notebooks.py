"""Executing the project's notebooks with papermill: atomically, with a failed notebook kept for the reader.

Every step of a sweep is an executed notebook written into the output folder, so the executed notebooks are
the book's appendix."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from lorastudy.layout import NOTEBOOKS, PROJECT_ROOT, failed_notebook


def execute(notebook: str, out: Path, parameters: dict[str, Any]) -> Path:
    """papermill into a temporary file, renamed over `out` only when the notebook finished; a failed
    notebook is kept beside it as NAME.failed.ipynb for the reader."""
    import papermill as pm  # heavy: imports jupyter machinery that `lorastudy sweep --dry-run` never needs

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.ipynb")
    try:
        pm.execute_notebook(str(NOTEBOOKS / notebook), str(tmp), parameters=parameters, kernel_name="python3",
                            progress_bar=False, cwd=str(PROJECT_ROOT))
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
