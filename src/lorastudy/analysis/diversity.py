"""Chapter 12 (the paper's Fig 5 and Fig S9): generation diversity of code models.

The paper samples HumanEval completions at a low temperature (0.2, top_p 0.95) and counts the distinct
completions among the passing and among the failing samples of each task: the base model is the most
diverse, then LoRA, then full fine-tuning. At a higher temperature (0.8) it draws pass@k for k = 1…n with the
unbiased estimator: LoRA's curve approaches full fine-tuning's as k grows.

`sample_diversity` samples and scores one model (cached per model and temperature); `unique_counts`,
`diversity_summary` and `pass_at_k_curve` aggregate sample records {task_id, completion, passed}, so they
can be checked on hand-made records.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lorastudy.analysis.chapter import Chapter
from lorastudy.analysis.checkpoints import (
    fingerprint,
    finished_runs,
    load_base_on_device,
    load_checkpoint,
    missing_runs_note,
    run_checkpoints,
)
from lorastudy.analysis.intervals import CANNOT_TELL, bootstrap_difference, verdict
from lorastudy.config import Profile
from lorastudy.data import prompts
from lorastudy.data.sources import load_spec
from lorastudy.evaluation.code import evaluate_samples
from lorastudy.evaluation.generate import generate
from lorastudy.evaluation.passk import pass_at_k, unique_count
from lorastudy.io import config_hash, read_json, write_json
from lorastudy.plan import RunSpec, method_label
from lorastudy.train.modeling import profile_tokenizer, small_model_threads

__all__ = ["chapter_samples", "samples_frame", "per_subject_of", "Subject", "RUNS_NEEDED", "PASSK_CLAIM", "code_tasks", "diversity_subjects", "samples_line",
           "missing_note", "sample_diversity", "sample_all", "unique_counts", "diversity_summary", "pass_at_k_curve",
           "pass_at_k_curves", "pass_at_k_table", "diversity_verdict"]

RUNS_NEEDED = {"full": "Full fine-tuning on code IFT (the full arm)", "lora": "LoRA on code IFT (the lora arm)"}
PASSK_CLAIM = "full FT's pass@k lead over LoRA shrinks as k grows"
PASSK_SHOWN = (1, 2, 4, 8, 16, 32)  # the k of the pass@k table, beside the largest

Records = list[dict[str, Any]]
PerSubject = dict[str, tuple["Subject", Records]]  # legend label → (model, its sample records)


@dataclass(frozen=True)
class Subject:
    """A model to sample from: the base, or one checkpoint of a run."""

    key: str                   # cache folder name: 'base' or RUN_ID/CHECKPOINT
    label: str                 # legend label
    method: str                # 'base', 'full' or 'lora'
    lora_rank: int | None = None
    spec: RunSpec | None = None
    checkpoint: str | None = None


# ----------------------------------------------------------------------------- the models and their samples
def code_tasks(profile: Profile, n_tasks: int) -> list[Any]:
    """The first n_tasks of the profile's code test set (what chapter 12 samples on)."""
    return load_spec(profile, profile.eval.learning["code"].dataset)[:n_tasks]


def diversity_subjects(profile: Profile, out_root: Path, *, domain: str = "code", regime: str = "ift",
                       arms: Sequence[str] = ("full", "lora"), hidden_size: int | None = None,
                       checkpoint_index: int = -1) -> list[Subject]:
    """The base and one checkpoint (default the last) of every main-grid full-FT and LoRA run of the panel
    (first seed), ordered base, full, LoRA by rank: the models the paper compares in Figs 5 and S9."""
    subjects = [Subject("base", "base", "base")]
    specs = finished_runs(profile, out_root, domain=domain, regime=regime, arm=list(arms))
    if specs:
        seed = min(s.seed for s in specs)
        specs = sorted((s for s in specs if s.seed == seed), key=lambda s: (s.method != "full", s.lora_rank or 0))
    for spec in specs:
        ckpts = run_checkpoints(out_root, spec.run_id)
        if not ckpts:
            continue
        label = ckpts[max(-len(ckpts), min(checkpoint_index, len(ckpts) - 1))]["checkpoint"]
        name = method_label(spec.method, spec.lora_rank, hidden_size)
        if checkpoint_index != -1:
            name += f" at {label}"
        subjects.append(Subject(f"{spec.run_id}/{label}", name, spec.method, spec.lora_rank, spec, label))
    return subjects


def samples_line(tasks: Sequence[Any], subjects: Sequence[Subject], n_samples: int) -> str:
    """'N code tasks x S samples per temperature; models: base, full, ...'."""
    return (f"{len(tasks)} code tasks x {n_samples} samples per temperature; models: "
            + ", ".join(s.label for s in subjects))


def missing_note(subjects: Iterable[Subject]) -> str:
    """The not-run notes for the methods the chapter compares but found no run of (empty when none)."""
    return missing_runs_note(subjects, RUNS_NEEDED)


def _load(profile: Profile, out_root: Path, subject: Subject) -> Any:
    if subject.spec is None:
        return load_base_on_device(profile)[0]
    # merged LoRA samples the same distribution (fp32 logits agree to ~3e-6) and generates faster
    return load_checkpoint(profile, out_root, subject.spec, str(subject.checkpoint), dtype=None, merge=True)


def _fingerprint(out_root: Path, subject: Subject) -> str:
    """The checkpoint's fingerprint (changes when it is retrained); 'base' for the base model."""
    if subject.spec is None:
        return "base"
    return fingerprint(out_root, subject.spec.run_id, str(subject.checkpoint))


def sample_diversity(profile: Profile, out_root: Path, subject: Subject, tasks: Sequence[Any], *, n_samples: int,
                     temperature: float, top_p: float = 0.95, batch_size: int = 0, seed: int = 0,
                     cache_dir: Path | None = None, progress: bool = False) -> Records:
    """n_samples completions per task from one model at one temperature, each run in the sandbox; records
    {task_id, completion, passed}, cached under cache_dir/SUBJECT/ keyed by every setting that shapes them."""
    cfg = profile.eval.learning["code"]
    settings = {"tasks": [t.task_id for t in tasks], "n": n_samples, "temperature": temperature, "top_p": top_p,
                "max_new_tokens": cfg.max_new_tokens, "seed": seed, "timeout": cfg.timeout}
    stamp = _fingerprint(out_root, subject)
    path = (cache_dir / subject.key / f"T{temperature:g}-n{n_samples}-{config_hash(settings, 8)}.json"
            if cache_dir else None)
    if path is not None and path.is_file():
        saved = read_json(path)
        if saved.get("settings") == settings and saved.get("fingerprint") == stamp:
            return saved["records"]
    model, tok = _load(profile, out_root, subject), profile_tokenizer(profile)
    with small_model_threads(profile):
        comps = generate(model, tok, [t.prompt for t in tasks], max_new_tokens=cfg.max_new_tokens,
                         temperature=temperature, top_p=top_p, n=n_samples, stop=prompts.CODE_STOP,
                         batch_size=batch_size or cfg.batch_size, seed=seed, progress=progress, desc=subject.label)
    samples = [{"task_id": t.task_id, "completion": c} for t, cs in zip(tasks, comps) for c in cs]
    scored = evaluate_samples(samples, {t.task_id: t for t in tasks}, timeout=cfg.timeout, progress=progress)
    records = [{**s, "passed": bool(r["passed"])} for s, r in zip(samples, scored["samples"])]
    if path is not None:
        write_json(path, {"settings": settings, "fingerprint": stamp, "records": records})
    return records


def sample_all(profile: Profile, out_root: Path, subjects: Sequence[Subject], tasks: Sequence[Any],
               **settings: Any) -> PerSubject:
    """`sample_diversity` (same settings) for every subject, by legend label."""
    return {s.label: (s, sample_diversity(profile, out_root, s, tasks, **settings)) for s in subjects}


def chapter_samples(ch: Chapter, *, n_tasks: int, n_samples: int, temperatures: Sequence[float], top_p: float,
                    checkpoint_index: int, batch_size: int, seed: int) -> list[PerSubject]:
    """The chapter's samples at each temperature, one summary each: read from OUT/summaries when stored with
    these settings (a snapshot), else sampled from the base and the runs' checkpoints and scored."""
    tasks = cache(lambda: code_tasks(ch.profile, n_tasks))
    subjects = cache(lambda: diversity_subjects(ch.profile, ch.out, hidden_size=ch.hidden,
                                                checkpoint_index=checkpoint_index))
    shared = {"n_tasks": n_tasks, "n_samples": n_samples, "top_p": top_p, "checkpoint_index": checkpoint_index,
              "batch_size": batch_size, "seed": seed}
    out = []
    for t in temperatures:
        frame = ch.summary(f"samples-T{t:g}", {**shared, "temperature": t}, lambda t=t: samples_frame(sample_all(
            ch.profile, ch.out, subjects(), tasks(), temperature=t, n_samples=n_samples, top_p=top_p,
            batch_size=batch_size, seed=seed, cache_dir=ch.cache)))
        out.append(per_subject_of(frame))
    return out


def samples_frame(per_subject: PerSubject) -> pd.DataFrame:
    """Sample records of every model as one table (model order kept): what the chapter stores."""
    rows = [{"model": label, "key": s.key, "method": s.method, "lora_rank": s.lora_rank, **r}
            for label, (s, records) in per_subject.items() for r in records]
    return pd.DataFrame(rows, columns=["model", "key", "method", "lora_rank", "task_id", "completion", "passed"])


def per_subject_of(frame: pd.DataFrame) -> PerSubject:
    """The inverse of `samples_frame`: models (without their run specs) and their records, in stored order."""
    out: PerSubject = {}
    for label, rows in frame.groupby("model", sort=False):
        first = rows.iloc[0]
        rank = None if pd.isna(first.lora_rank) else int(first.lora_rank)
        records = rows[["task_id", "completion", "passed"]].to_dict("records")
        out[str(label)] = (Subject(str(first.key), str(label), str(first.method), rank), records)
    return out


# ----------------------------------------------------------------------------- aggregation
def unique_counts(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Per task: samples, passing and failing samples, and distinct completions (whitespace-normalised)
    among all, the passing and the failing ones — the counts behind Fig 5."""
    by_task: dict[str, list[tuple[str, bool]]] = {}
    for r in records:
        by_task.setdefault(r["task_id"], []).append((r["completion"], bool(r["passed"])))
    rows = []
    for tid, rows_ in by_task.items():
        passing = [c for c, ok in rows_ if ok]
        failing = [c for c, ok in rows_ if not ok]
        rows.append({"task_id": tid, "n": len(rows_), "n_passing": len(passing), "n_failing": len(failing),
                     "unique_all": unique_count(c for c, _ in rows_), "unique_passing": unique_count(passing),
                     "unique_failing": unique_count(failing)})
    return pd.DataFrame(rows, columns=["task_id", "n", "n_passing", "n_failing", "unique_all", "unique_passing",
                                       "unique_failing"])


def diversity_summary(per_subject: PerSubject) -> pd.DataFrame:
    """Per model: mean per task of samples and distinct completions, all / passing / failing, the share of
    samples that are distinct, and pass@1 of these samples."""
    rows = []
    for label, (subject, records) in per_subject.items():
        counts = unique_counts(records)
        if counts.empty:
            continue
        mean = counts.drop(columns="task_id").mean()
        rows.append({"model": label, "method": subject.method, "lora_rank": subject.lora_rank,
                     "tasks": len(counts), "samples_per_task": mean.n,
                     "pass@1": float((counts.n_passing / counts.n).mean()),
                     "passing_per_task": mean.n_passing, "unique_passing": mean.unique_passing,
                     "failing_per_task": mean.n_failing, "unique_failing": mean.unique_failing,
                     "unique_all": mean.unique_all, "unique_share": float((counts.unique_all / counts.n).mean())})
    return pd.DataFrame(rows)


def pass_at_k_curve(records: Iterable[dict[str, Any]], ks: Iterable[int] | None = None) -> pd.DataFrame:
    """pass@k averaged over tasks for k = 1…n (or `ks`) with the unbiased estimator (Chen et al. 2021), from
    each task's n samples and c passing ones (Fig S9)."""
    counts = unique_counts(records)
    if counts.empty:
        return pd.DataFrame(columns=["k", "pass@k"])
    n_min = int(counts.n.min())
    ks = list(range(1, n_min + 1)) if ks is None else [k for k in ks if 1 <= k <= n_min]
    return pd.DataFrame({"k": ks, "pass@k": [float(np.mean([pass_at_k(int(n), int(c), k)
                                                             for n, c in zip(counts.n, counts.n_passing)]))
                                              for k in ks]})


def pass_at_k_curves(per_subject: PerSubject) -> dict[str, pd.DataFrame]:
    """`pass_at_k_curve` of every model, by legend label."""
    return {label: pass_at_k_curve(records) for label, (_, records) in per_subject.items()}


def pass_at_k_table(curves: dict[str, pd.DataFrame], n_samples: int) -> pd.DataFrame:
    """pass@k of every model (columns) at k = 1, 2, 4, … 32 and n_samples (rows), where drawn."""
    passk = pd.DataFrame({label: c.set_index("k")["pass@k"] for label, c in curves.items()})
    return passk.loc[[k for k in sorted({*PASSK_SHOWN, n_samples}) if k in passk.index]]


# ----------------------------------------------------------------------------- the verdict
VERDICT_COLUMNS = ["statement", "estimate", "ci_low", "ci_high", "n_tasks", "verdict", "detail"]


def _per_task(per_subject: PerSubject, labels: Sequence[str], col: str) -> np.ndarray:
    """(models, tasks) values of one unique_counts column, tasks in one shared order."""
    tables = [unique_counts(per_subject[label][1]).set_index("task_id")[col] for label in labels]
    tasks = sorted(set.intersection(*(set(t.index) for t in tables)))
    return np.stack([t.loc[tasks].to_numpy(dtype=float) for t in tables])


def _compare(statement: str, a: np.ndarray, b: np.ndarray, names: tuple[str, str], seed: int) -> dict:
    """mean(a) - mean(b) over tasks (paired) with a bootstrap interval; rows of an arm (LoRA's ranks) resampled
    like seeds. Agrees with the paper (a > b) only when the interval excludes zero."""
    iv = bootstrap_difference([a], [b], seed=seed)
    return {"statement": statement, "estimate": iv.estimate, "ci_low": iv.low, "ci_high": iv.high,
            "n_tasks": iv.n_items, "verdict": verdict(iv, +1),
            "detail": f"{names[0]} {a.mean():.2f} vs {names[1]} {b.mean():.2f} per task"}


def _untested(statement: str, why: str) -> dict:
    return {"statement": statement, "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_tasks": 0,
            "verdict": CANNOT_TELL, "detail": why}


def _passk_per_task(records: Records, k: int) -> pd.Series:
    counts = unique_counts(records).set_index("task_id")
    return pd.Series([pass_at_k(int(n), int(c), k) for n, c in zip(counts.n, counts.n_passing)], index=counts.index)


def diversity_verdict(per_subject: PerSubject, high: PerSubject | None = None) -> pd.DataFrame:
    """The paper's statements on our samples, each with a 95% interval over tasks (paired between models):
    base > LoRA > full FT in distinct completions per task, among passing and among failing samples apart
    (Fig 5, at the low temperature), and full FT's pass@k lead over LoRA smaller at the largest k than at
    k = 1 (Fig S9, on `high`: the samples at the higher temperature; default `per_subject`). LoRA is the mean
    over its ranks."""
    high = per_subject if high is None else high
    by_method: dict[str, list[str]] = {}
    for label, (subject, records) in per_subject.items():
        if records:
            by_method.setdefault(subject.method, []).append(label)
    base, full, lora = (by_method.get(m, []) for m in ("base", "full", "lora"))
    out = []
    # Fig 5 compares passing and failing samples apart: pooled, a model that passes more would look less diverse
    for group in ("passing", "failing"):
        col = f"unique_{group}"
        for (name_a, a), (name_b, b) in ((("base", base[:1]), ("LoRA (mean over ranks)", lora)),
                                         (("LoRA (mean over ranks)", lora), ("full", full[:1]))):
            statement = f"{'the base gives' if name_a == 'base' else 'LoRA gives'} more distinct {group} completions than {'LoRA' if name_b.startswith('LoRA') else 'full FT'}"
            if not a or not b:
                out.append(_untested(statement, f"needs {name_a} and {name_b} samples"))
                continue
            values = _per_task(per_subject, [*a, *b], col)
            out.append(_compare(statement, values[:len(a)], values[len(a):], (name_a, name_b), seed=len(out)))
    if full and lora:
        n_min = min(int(unique_counts(high[x][1]).n.min()) if high.get(x) and high[x][1] else 0
                    for x in [*full[:1], *lora])
        if n_min > 1:
            # full FT's lead (full - LoRA) at k = 1 minus its lead at the largest k: positive when it shrinks
            def drop(label: str) -> pd.Series:
                records = high[label][1]
                return _passk_per_task(records, 1) - _passk_per_task(records, n_min)
            tasks = sorted(set.intersection(*(set(drop(x).index) for x in [*full[:1], *lora])))
            a = np.stack([drop(full[0]).loc[tasks].to_numpy()])
            b = np.stack([drop(x).loc[tasks].to_numpy() for x in lora])
            row = _compare(PASSK_CLAIM, a, b, ("full FT's pass@1 - pass@k", "LoRA's"), seed=len(out))
            row["detail"] = f"k = {n_min}: " + row["detail"]
            out.append(row)
        else:
            out.append(_untested(PASSK_CLAIM, "needs n > 1 samples"))
    else:
        out.append(_untested(PASSK_CLAIM, "needs full FT and LoRA"))
    return pd.DataFrame(out, columns=VERDICT_COLUMNS)
