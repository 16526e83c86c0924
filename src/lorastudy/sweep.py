"""Execute a profile: base notebook, then 01_finetune and 02_evaluate for every planned run, then the analyses.

Every step is a papermill-executed notebook written atomically into the output folder, so the executed
notebooks are the book's appendix. A run is done when its `results.json` exists; re-running skips done runs
and redoes failed or interrupted ones.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lorastudy.config import PROJECT_ROOT, Profile, RunSpec, plan_runs
from lorastudy.io import read_json, write_json
from lorastudy.results import collect, run_dir, write_table

NOTEBOOKS = PROJECT_ROOT / "notebooks"


@dataclass
class SweepReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def execute(notebook: str, out: Path, parameters: dict[str, Any]) -> Path:
    """papermill into a temporary file, renamed over `out` only when the notebook finished; a failed
    notebook is kept beside it as NAME.failed.ipynb for the reader."""
    import papermill as pm

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.ipynb")
    try:
        pm.execute_notebook(str(NOTEBOOKS / notebook), str(tmp), parameters=parameters, kernel_name="python3",
                            progress_bar=False, cwd=str(PROJECT_ROOT))
    except BaseException:
        if tmp.exists():
            os.replace(tmp, out.with_name(out.stem + ".failed.ipynb"))
        raise
    os.replace(tmp, out)
    return out


def clean_stale(folder: Path) -> None:
    """Remove what an interrupted attempt left half-written (temporary files, notebooks and checkpoints)."""
    import shutil

    for path in [*folder.rglob(".*.tmp"), *folder.rglob(".*.tmp*"), *folder.rglob(".*.ipynb")]:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def run_status(out_root: Path, spec: RunSpec) -> str:
    """'done' (results written), 'failed' (recorded failure) or 'todo'."""
    d = run_dir(out_root, spec.run_id)
    if (d / "results.json").is_file():
        return "done"
    return "failed" if (d / "failed.json").is_file() else "todo"


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
    d = run_dir(out_root, spec.run_id)
    (d / "failed.json").unlink(missing_ok=True)
    clean_stale(d)
    execute("01_finetune.ipynb", d / "01_finetune.ipynb", _params(profile_ref, out_root, spec))
    execute("02_evaluate.ipynb", d / "02_evaluate.ipynb", _params(profile_ref, out_root, spec))
    if not (d / "results.json").is_file():
        raise RuntimeError(f"02_evaluate finished without writing {d / 'results.json'}")


def run_sweep(profile: Profile, profile_ref: str, *, out_root: Path | None = None, continue_on_error: bool = False,
              analyses: bool = True, only: list[str] | None = None) -> SweepReport:
    """Base, runs and analyses; resumable and atomic. Raises nothing for a failed run when continuing."""
    out_root = out_root or profile.out_dir()
    out_root.mkdir(parents=True, exist_ok=True)
    report = SweepReport()
    if not (out_root / "base" / "00_base_model.ipynb").is_file():
        print("[base] building / evaluating the base model")
        execute("00_base_model.ipynb", out_root / "base" / "00_base_model.ipynb", _params(profile_ref, out_root))
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
            write_json(run_dir(out_root, spec.run_id) / "failed.json",
                       {"run_id": spec.run_id, "error": describe_error(err),
                        "traceback": traceback.format_exc(), "time": time.time()})
            report.failed[spec.run_id] = describe_error(err)
            if not continue_on_error:
                raise
    if profile.released:
        from lorastudy.released import evaluate_released

        print(f"[released] evaluating {len(profile.released)} released checkpoints")
        evaluate_released(profile, out_root)
    write_table(collect(profile, out_root), out_root / "results.csv")
    if analyses:
        for name in profile.analyses:
            print(f"[analysis] {name}")
            params = {**_params(profile_ref, out_root), **profile.analysis_params.get(name, {})}
            execute(f"{name}.ipynb", out_root / "analyses" / f"{name}.ipynb", params)
    return report


def describe_error(err: BaseException) -> str:
    """One line: for a failed notebook, the exception raised inside it rather than papermill's wrapper."""
    name, value = getattr(err, "ename", None), getattr(err, "evalue", None)
    if name:
        return f"{name}: {value} (in the executed notebook)"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def finish_run(profile: Profile, spec: RunSpec, out_root: Path, rows: list[dict[str, Any]]) -> Path:
    """Write the run's results.json (its 'done' marker) with provenance from training."""
    d = run_dir(out_root, spec.run_id)
    summary = read_json(d / "train.json")
    path = d / "results.json"
    write_json(path, {"run_id": spec.run_id, "status": summary["status"], "rows": rows,
                      "provenance": summary["provenance"], "train_wall_time_s": summary["wall_time_s"]})
    return path
