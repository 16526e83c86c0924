"""Every path of the output tree, in one place: no other module spells a file or folder name of it.

    OUT/                              a profile's output folder (Profile.out_dir)
      base/00_base_model.ipynb        the executed base notebook
      base/eval.json                  the base model's result rows
      runs/RUN_ID/                    one fine-tuning run (RunPaths)
        01_finetune.ipynb, 02_evaluate.ipynb   executed notebooks (NAME.failed.ipynb when one failed)
        train.json                    training summary, written last: the run is trained
        results.json                  result rows, written last: the run is done
        failed.json                   a recorded failure
        checkpoints/LABEL/            saved weights + checkpoint.json (tokens, time, memory)
        eval/LABEL.json, eval/LABEL/  one checkpoint's result rows, and its predictions
        .lock, attempts.jsonl         the run's lock, and one line per training attempt
        sweep.json, sweep.log         what the sweep measured of the run, and its output
      released/ID/eval.json           a released checkpoint's result rows
      analyses/NAME.ipynb, NAME/      an executed chapter and its cache
      results.csv                     the tidy results table
      items.parquet                   per-item results behind it (the bootstrap's input)
      claims.csv                      every claim with its interval and verdict
      summaries/NAME.parquet, NAME.json  what a chapter computed from weights (spectra, samples, ...) and
                                      the settings it was computed with: the chapters' only input besides
                                      the tables above, so a snapshot of these files renders the book
      provenance.json                 where the tables came from (a sweep here, or a committed snapshot)
      sweep.json                      the last sweep's phase times, workers and threads
      jobs/                           submitit's job folders of a cluster sweep
      book_src/                       the assembled book source
    CACHE/                            built worlds and mini bases (env LORASTUDY_CACHE)
    results/PROFILE/                  the committed snapshot: the same files as OUT's tables, summaries and
                                      provenance (SNAPSHOT_FILES), a few MB
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = PROJECT_ROOT / "notebooks"
CHECKPOINT_RECORD = "checkpoint.json"  # inside every checkpoint folder
TRAINER_DIR = "trainer"  # Trainer's own scratch folder inside a run (removed after training)
RUN_STAMP = "attempt.json"  # in TRAINER_DIR: the settings its states were trained with (a resume must match)
BASE_ID = "base"  # the (first) base model's run id in the results table


def base_run_id(index: int) -> str:
    """Base model `index`'s run id in the results table: `base`, `base-1`, `base-2`, ..."""
    return BASE_ID if index == 0 else f"{BASE_ID}-{index}"
FINETUNE_NOTEBOOK, EVALUATE_NOTEBOOK, BASE_NOTEBOOK = "01_finetune.ipynb", "02_evaluate.ipynb", "00_base_model.ipynb"
PROGRESS_ENV = "LORASTUDY_PROGRESS"  # names a JSON file a notebook's Trainer reports its progress to
SNAPSHOTS = PROJECT_ROOT / "results"  # results/PROFILE: the committed snapshot of a profile's study
SNAPSHOT_FILES = ("results.csv", "items.parquet", "claims.csv", "claims.json", "summaries", "provenance.json")


def cache_root() -> Path:
    """Where built worlds and bases are cached (env LORASTUDY_CACHE, default outputs/cache)."""
    return Path(os.environ.get("LORASTUDY_CACHE", PROJECT_ROOT / "outputs" / "cache"))


def world_cache(key: str) -> Path:
    return cache_root() / f"world-{key}"


def base_cache(key: str) -> Path:
    return cache_root() / f"base-{key}"


def failed_notebook(path: Path) -> Path:
    """Where a notebook that raised is kept for the reader: NAME.failed.ipynb beside NAME.ipynb."""
    return path.with_name(path.stem + ".failed.ipynb")


@dataclass(frozen=True)
class RunPaths:
    """The files of one run folder."""

    dir: Path

    @property
    def run_id(self) -> str:
        return self.dir.name

    @property
    def train_record(self) -> Path:
        return self.dir / "train.json"

    @property
    def results_record(self) -> Path:
        return self.dir / "results.json"

    @property
    def failure_record(self) -> Path:
        return self.dir / "failed.json"

    @property
    def lock_file(self) -> Path:
        """Held (an OS file lock) by the one process that trains and evaluates this run."""
        return self.dir / ".lock"

    @property
    def attempts(self) -> Path:
        """One line per training attempt: host, pid, time."""
        return self.dir / "attempts.jsonl"

    @property
    def sweep_record(self) -> Path:
        """What the sweep measured of this run: each notebook's wall time, threads, worker."""
        return self.dir / "sweep.json"

    @property
    def sweep_log(self) -> Path:
        """The run's notebooks' and libraries' output while the sweep ran it."""
        return self.dir / "sweep.log"

    @property
    def launch_profile(self) -> Path:
        return self.dir / "profile.yaml"

    @property
    def trainer_dir(self) -> Path:
        return self.dir / TRAINER_DIR

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    def checkpoint(self, label: str) -> Path:
        return self.checkpoints / label

    def checkpoint_record(self, label: str) -> Path:
        return self.checkpoint(label) / CHECKPOINT_RECORD

    def eval_record(self, label: str) -> Path:
        return self.dir / "eval" / f"{label}.json"

    def eval_outputs(self, label: str) -> Path:
        return self.dir / "eval" / label

    def notebook(self, name: str) -> Path:
        return self.dir / name

    def trained(self) -> bool:
        return self.train_record.is_file()

    def evaluated(self) -> bool:
        """Results written: what an analysis reads."""
        return self.results_record.is_file()

    def done(self) -> bool:
        """Results written and both executed notebooks saved: what a sweep skips. A sweep killed after the
        evaluation notebook wrote its results but before papermill saved the notebook left a run the book
        cannot show; the next sweep redoes it (training and evaluation are cached, so only the notebooks run)."""
        return self.evaluated() and all(self.notebook(n).is_file() for n in (FINETUNE_NOTEBOOK, EVALUATE_NOTEBOOK))


@dataclass(frozen=True)
class Layout:
    """The output tree of one profile."""

    root: Path

    def run(self, run_id: str) -> RunPaths:
        return RunPaths(self.root / "runs" / run_id)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def base_dir(self) -> Path:
        return self.root / BASE_ID

    @property
    def base_notebook(self) -> Path:
        return self.base_dir / BASE_NOTEBOOK

    @property
    def base_log(self) -> Path:
        return self.base_dir / "base.log"

    @property
    def base_progress(self) -> Path:
        """The base pre-training's progress while it runs (lorastudy.train.training.ProgressFile)."""
        return self.base_dir / "progress.json"

    @property
    def base_lock(self) -> Path:
        return self.base_dir / ".lock"

    def worker_log(self, name: str) -> Path:
        """What a local sweep worker prints outside its runs (each run's output goes to its own sweep.log)."""
        return self.root / "workers" / f"worker-{name}.log"

    @property
    def jobs_dir(self) -> Path:
        """submitit's job folders (scripts, logs, pickled results) of a cluster sweep."""
        return self.root / "jobs"

    @property
    def base_eval(self) -> Path:
        return self.base_eval_of(0)

    def base_eval_of(self, index: int) -> Path:
        """Base model `index`'s evaluation (the first base's keeps the name it had when there was one)."""
        return self.base_dir / ("eval.json" if index == 0 else f"eval-{index}.json")

    def released_eval(self, checkpoint_id: str) -> Path:
        return self.root / "released" / checkpoint_id / "eval.json"

    def released_evals(self) -> list[Path]:
        return sorted((self.root / "released").glob("*/eval.json"))

    @property
    def analyses_dir(self) -> Path:
        return self.root / "analyses"

    def analysis_notebook(self, name: str) -> Path:
        return self.analyses_dir / f"{name}.ipynb"

    def analysis_log(self, name: str) -> Path:
        """The chapter's kernel and library output while the sweep executed it."""
        return self.analyses_dir / f"{name}.log"

    def analysis_cache(self, name: str) -> Path:
        return self.analyses_dir / name

    def chapter_verdict(self, name: str) -> Path:
        """A measurement chapter's verdict table, which the landing page's scorecard reads."""
        return self.analysis_cache(name) / "verdict.csv"

    @property
    def sweep_record(self) -> Path:
        """The last sweep's phases (base, runs, analyses) in seconds, its workers and threads."""
        return self.root / "sweep.json"

    @property
    def results_table(self) -> Path:
        return self.root / "results.csv"

    @property
    def items_table(self) -> Path:
        """Per-item results (run, checkpoint, metric, item, value): what every interval resamples."""
        return self.root / "items.parquet"

    @property
    def claims_table(self) -> Path:
        """Every claim with its interval and verdict (`lorastudy claims`), computed once from the two above."""
        return self.root / "claims.csv"

    @property
    def summaries_dir(self) -> Path:
        return self.root / "summaries"

    @property
    def run_records(self) -> Path:
        """One row per trained run (parameters, times): the run folders' facts a snapshot keeps."""
        return self.summary_table("runs")

    def summary_table(self, name: str) -> Path:
        """One chapter summary computed from weights or samples (lorastudy.analysis.summaries)."""
        return self.summaries_dir / f"{name}.parquet"

    def summary_record(self, name: str) -> Path:
        """The settings and sources the summary of the same name was computed with."""
        return self.summaries_dir / f"{name}.json"

    @property
    def provenance(self) -> Path:
        """Where this folder's tables came from: the sweep that wrote them, or the snapshot they were copied from."""
        return self.root / "provenance.json"

    @property
    def claims_record(self) -> Path:
        """The fingerprints of the two tables claims.csv was computed from: when they match, it is current."""
        return self.root / "claims.json"

    @property
    def book_source(self) -> Path:
        return self.root / "book_src"


def snapshot_layout(profile_name: str) -> Layout:
    """results/PROFILE: a committed snapshot has an output folder's layout, without runs or checkpoints."""
    return Layout(SNAPSHOTS / profile_name)
