"""Execute a profile: base notebook, then 01_finetune and 02_evaluate for every planned run, then the analyses.

Every step is a papermill-executed notebook written atomically into the output folder, so the executed
notebooks are the book's appendix. A run is done when its results record exists (lorastudy.layout); re-running skips done runs
and redoes failed or interrupted ones.
"""
from __future__ import annotations

import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lorastudy.config import Profile, RunSpec, plan_runs
from lorastudy.io import write_json
from lorastudy.layout import (BASE_NOTEBOOK, EVALUATE_NOTEBOOK, FINETUNE_NOTEBOOK, NOTEBOOKS, PROJECT_ROOT, Layout,
                              failed_notebook)
from lorastudy.results import collect, write_table


@dataclass
class SweepReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


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
    return out


def clean_stale(folder: Path) -> None:
    """Remove what an interrupted attempt left half-written (temporary files, notebooks and checkpoints)."""
    for path in [*folder.rglob(".*.tmp"), *folder.rglob(".*.tmp*"), *folder.rglob(".*.ipynb")]:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def run_status(out_root: Path, spec: RunSpec) -> str:
    """'done' (results written), 'failed' (recorded failure) or 'todo'."""
    paths = Layout(out_root).run(spec.run_id)
    if paths.done():
        return "done"
    return "failed" if paths.failure_record.is_file() else "todo"


def plan_table(profile: Profile, out_root: Path | None = None) -> list[dict[str, Any]]:
    out_root = out_root or profile.out_dir()
    return [{**spec.to_dict(), "status": run_status(out_root, spec)} for spec in plan_runs(profile)]


def _params(profile_ref: str, out_root: Path, spec: RunSpec | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"profile": profile_ref, "output_dir": str(out_root)}
    if spec is not None:
        p["run_id"] = spec.run_id
    return p


def run_one(profile_ref: str, out_root: Path, spec: RunSpec) -> None:
    """Train and evaluate one run through its two notebooks."""
    paths = Layout(out_root).run(spec.run_id)
    paths.failure_record.unlink(missing_ok=True)
    clean_stale(paths.dir)
    for notebook in (FINETUNE_NOTEBOOK, EVALUATE_NOTEBOOK):
        execute(notebook, paths.notebook(notebook), _params(profile_ref, out_root, spec))
    if not paths.done():
        raise RuntimeError(f"{EVALUATE_NOTEBOOK} finished without writing {paths.results_record}")


def run_sweep(profile: Profile, profile_ref: str, *, out_root: Path | None = None, continue_on_error: bool = False,
              analyses: bool = True, only: list[str] | None = None) -> SweepReport:
    """Base, runs and analyses; resumable and atomic. Raises nothing for a failed run when continuing."""
    out_root = out_root or profile.out_dir()
    out_root.mkdir(parents=True, exist_ok=True)
    layout = Layout(out_root)
    report = SweepReport()
    if not layout.base_notebook.is_file():
        print("[base] building / evaluating the base model")
        execute(BASE_NOTEBOOK, layout.base_notebook, _params(profile_ref, out_root))
    specs = [s for s in plan_runs(profile) if not only or s.run_id in only]
    todo = [s for s in specs if run_status(out_root, s) != "done"]
    report.skipped = [s.run_id for s in specs if s not in todo]
    if report.skipped:
        print(f"[sweep] {len(report.skipped)} of {len(specs)} runs already done; skipping them")
    bar = tqdm(todo, desc="runs", unit="run")
    for spec in bar:
        bar.set_postfix_str(spec.run_id)
        try:
            run_one(profile_ref, out_root, spec)
            report.done.append(spec.run_id)
        except Exception as err:  # noqa: BLE001 - a failed run is recorded, the sweep decides whether to go on
            write_json(layout.run(spec.run_id).failure_record,
                       {"run_id": spec.run_id, "error": describe_error(err),
                        "traceback": traceback.format_exc(), "time": time.time()})
            report.failed[spec.run_id] = describe_error(err)
            if not continue_on_error:
                raise
    if profile.released:
        from lorastudy.evaluation.released import evaluate_released  # heavy (torch): only released profiles

        print(f"[released] evaluating {len(profile.released)} released checkpoints")
        evaluate_released(profile, out_root)
    write_table(collect(profile, out_root), layout.results_table)
    if analyses:
        for name in profile.analyses:
            print(f"[analysis] {name}")
            params = {**_params(profile_ref, out_root), **profile.analysis_params.get(name, {})}
            execute(f"{name}.ipynb", layout.analysis_notebook(name), params)
    return report


def describe_error(err: BaseException) -> str:
    """One line: for a failed notebook, the exception raised inside it rather than papermill's wrapper."""
    name, value = getattr(err, "ename", None), getattr(err, "evalue", None)
    if name:
        return f"{name}: {value} (in the executed notebook)"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
