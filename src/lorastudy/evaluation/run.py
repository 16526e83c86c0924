"""Per-run evaluation: every checkpoint of a trained run (and the base, once, cached) on the profile's sets.

Writes tidy rows (run, checkpoint, metric, value) atomically, one file per checkpoint, so an interrupted
evaluation resumes where it stopped.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from lorastudy.config import GenerationEval, Profile
from lorastudy.data import prompts
from lorastudy.data.examples import to_text
from lorastudy.data.records import InstructionPair, MathProblem
from lorastudy.data.sources import load_spec
from lorastudy.evaluation.choice import answer_nll, heldout_loss, score_choice
from lorastudy.evaluation.code import evaluate_samples
from lorastudy.evaluation.generate import Stop, generate
from lorastudy.evaluation.math import score_gsm8k
from lorastudy.io import read_json, write_json, write_jsonl
from lorastudy.layout import Layout, RunPaths, base_run_id
from lorastudy.plan import RunSpec
from lorastudy.train.modeling import device, load_base, load_finetuned, profile_tokenizer


def evaluate_math(model: Any, tok: Any, cfg: GenerationEval, profile: Profile, problems: list[MathProblem], *,
                  progress: bool = True, out_dir: Path | None = None) -> dict[str, Any]:
    """GSM8K-style (on cfg.dataset's `problems`): k-shot prompts, greedy by default, strict and flexible
    extraction; per-item results."""
    ids, pairs = reference_answers(profile, "math", problems)
    comps = generate_for(model, tok, [prompt for prompt, _ in pairs], cfg, prompts.MATH_STOP, progress, "math",
                         profile.trained_context, ids)
    preds = [{"idx": i, "question": p.question, "completion": c[0]} for i, (p, c) in enumerate(zip(problems, comps))]
    scored = score_gsm8k(preds, problems)
    if out_dir is not None:  # with the scorer's verdicts, so a reader of the file sees what counted
        write_jsonl(out_dir / "math_predictions.jsonl",
                    [{**p, "gold": r["gold"], "strict_correct": r["strict_correct"]} for p, r in zip(preds, scored["records"])])
    items = {"strict_match": [float(r["strict_correct"]) for r in scored["records"]],
             "flexible_extract": [float(r["flexible_correct"]) for r in scored["records"]]}
    return {"strict_match": scored["strict_match"], "flexible_extract": scored["flexible_extract"], "n": scored["n"],
            "items": items}


def reference_answers(profile: Profile, domain: str, records: list[Any]) -> tuple[list[str], list[tuple[str, str]]]:
    """Item ids and (prompt, reference answer) pairs in the learning benchmark's own prompt format (math with
    its shots), for the answer-NLL measure."""
    if domain == "math":
        shots = _math_shots(profile, profile.eval.learning["math"])
        pairs = [(prompts.math_fewshot(p.question, shots), prompts.math_response(p.answer)) for p in records]
        return [item_id(p.id, i) for i, p in enumerate(records)], pairs
    return [t.task_id for t in records], [(t.prompt, t.canonical_solution) for t in records]


def item_id(given: str, index: int) -> str:
    """An item's stable id: its own, else its position in the (deterministic) evaluation set."""
    return given or str(index)


def _math_shots(profile: Profile, cfg: GenerationEval) -> list[tuple[str, str]]:
    """Few-shot (question, worked answer) examples from the math training set (never the test set)."""
    if cfg.shots == 0:
        return []
    shots = []
    for r in load_spec(profile, profile.data["math"]["ift"])[:cfg.shots]:
        if isinstance(r, MathProblem):
            shots.append((r.question, r.answer))
        elif isinstance(r, InstructionPair):
            shots.append((r.prompt, r.response))
    return shots


def evaluate_code(model: Any, tok: Any, cfg: GenerationEval, tasks: list[Any], *, progress: bool = True,
                  out_dir: Path | None = None, context: int | None = None) -> dict[str, Any]:
    """HumanEval-style (on cfg.dataset's `tasks`): n samples per task, each run in the sandbox; pass@k, unique
    completions, per-task pass rates (the per-item pass@1)."""
    comps = generate_for(model, tok, [t.prompt for t in tasks], cfg, prompts.CODE_STOP, progress, "code", context,
                         [t.task_id for t in tasks])
    samples = [{"task_id": t.task_id, "completion": c} for t, cs in zip(tasks, comps) for c in cs]
    result = evaluate_samples(samples, {t.task_id: t for t in tasks}, ks=tuple(cfg.ks), timeout=cfg.timeout,
                              progress=progress)
    if out_dir is not None:
        write_jsonl(out_dir / "code_samples.jsonl",
                    [{**s, **r} for s, r in zip(samples, result["samples"])])
    passed: dict[str, list[bool]] = {t.task_id: [] for t in tasks}
    for rec in result["samples"]:
        passed[rec["task_id"]].append(rec["passed"])
    out = {k: v for k, v in result.items() if k != "samples"}
    out["items"] = {"pass@1": [sum(v) / len(v) for v in passed.values()]}
    return out


def generate_for(model: Any, tok: Any, texts: list[str], cfg: GenerationEval, stop: list[Stop], progress: bool,
                 desc: str, context: int | None = None, names: list[str] | None = None) -> list[list[str]]:
    return generate(model, tok, texts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                    top_p=cfg.top_p, n=cfg.n_samples, stop=stop, batch_size=cfg.batch_size, progress=progress,
                    desc=desc, context=context, names=names)


Items = list[dict[str, Any]]  # per-item results: {"item", "metric", "value"}, the metric named as in the rows


def evaluate_model(model: Any, tok: Any, profile: Profile, *, domains: list[str], progress: bool = True,
                   out_dir: Path | None = None, validation: bool = True) -> tuple[dict[str, float], Items]:
    """All metrics of one model - learning on `domains` (and the reference answers' NLL), forgetting (and its
    mean), held-out losses - and the per-item values behind each mean. `validation`: also the validation
    answer NLL (learning rates are chosen on it at a run's longest duration only)."""
    metrics: dict[str, float] = {}
    items: Items = []

    def record(metric: str, ids: list[str], values: list[float]) -> None:
        metrics[metric] = sum(values) / len(values)
        items.extend({"item": i, "metric": metric, "value": float(v)} for i, v in zip(ids, values))

    def nll(metric: str, domain: str, records: list[Any]) -> None:
        """`metric` (the answer's own tokens: what learning and the rate choice read) and its `_eos` reading."""
        ids, pairs = reference_answers(profile, domain, records)
        answer, with_eos = answer_nll(model, tok, pairs, batch_size=profile.eval.batch_size, progress=progress,
                                      max_len=profile.trained_context, ids=ids)
        record(metric, ids, answer)
        record(metric.replace("answer_nll", "answer_eos_nll"), ids, with_eos)

    for domain in domains:
        cfg = profile.eval.learning[domain]
        test = load_spec(profile, cfg.dataset)
        ids = reference_answers(profile, domain, test)[0]
        if domain == "math":
            r = evaluate_math(model, tok, cfg, profile, test, progress=progress, out_dir=out_dir)
            record("gsm8k_strict_match", ids, r["items"]["strict_match"])
            record("gsm8k_flexible_extract", ids, r["items"]["flexible_extract"])
            record(f"learning_{domain}", ids, r["items"]["strict_match"])
        else:
            r = evaluate_code(model, tok, cfg, test, progress=progress, out_dir=out_dir, context=profile.trained_context)
            # distinct completions per task mean something only with several samples (chapter 12 draws them)
            kinds = ("pass@", "unique_") if cfg.n_samples > 1 else ("pass@",)
            metrics.update({f"humaneval_{k}": v for k, v in r.items() if k.startswith(kinds)})
            record(f"learning_{domain}", ids, r["items"]["pass@1"])
        nll(f"answer_nll_{domain}", domain, test)
        if validation and domain in profile.eval.validation:
            nll(f"val_answer_nll_{domain}", domain, load_spec(profile, profile.eval.validation[domain]))
    forgetting = []
    for name, cfg in profile.eval.forgetting.items():
        mc_items = load_spec(profile, cfg.dataset)
        r = score_choice(model, tok, mc_items, shots=cfg.shots, batch_size=profile.eval.batch_size,
                         progress=progress, max_len=profile.trained_context)
        ids = [item_id(it.id, i) for i, it in enumerate(mc_items)]
        record(f"{name}_acc", ids, [float(x["pred"] == x["gold"]) for x in r["records"]])
        record(f"{name}_acc_norm", ids, [float(x["pred_norm"] == x["gold"]) for x in r["records"]])
        forgetting.append(metrics[f"{name}_{cfg.metric}"])
    if forgetting:
        metrics["forgetting_avg"] = sum(forgetting) / len(forgetting)
    for name, spec in profile.eval.heldout.items():
        texts = [to_text(r) for r in load_spec(profile, spec)]
        metrics[f"heldout_{name}_loss"] = heldout_loss(model, tok, texts, seq_len=profile.training.seq_len,
                                                       batch_size=profile.eval.batch_size)["loss"]
    return metrics, items


def result_rows(run_id: str, meta: dict[str, Any], metrics: dict[str, float], seconds: float) -> list[dict[str, Any]]:
    """Tidy rows (run, checkpoint, metric, value) of one evaluated model."""
    keep = ("checkpoint", "duration", "duration_unit", "tokens_seen", "step")
    base = {"run_id": run_id, **{k: meta.get(k) for k in keep}, "eval_seconds": seconds}
    return [{**base, "metric": m, "value": float(v)} for m, v in metrics.items()]


def evaluate_base(profile: Profile, out_root: Path, *, progress: bool = True, index: int = 0
                  ) -> list[dict[str, Any]]:
    """Base model `index` on everything (both domains), cached at OUT/base/eval.json (eval-N.json for N > 0)."""
    path = Layout(out_root).base_eval_of(index)
    if path.is_file():
        return read_json(path)["rows"]
    model, tok = load_base(profile, index=index)
    model = model.to(device())
    start = time.perf_counter()
    out_dir = path.parent if index == 0 else path.parent / base_run_id(index)  # each base's completions apart
    metrics, items = evaluate_model(model, tok, profile, domains=list(profile.eval.learning), progress=progress,
                                    out_dir=out_dir)
    meta = {"checkpoint": "base", "duration": 0, "duration_unit": None, "tokens_seen": 0, "step": 0}
    rows = result_rows(base_run_id(index), meta, metrics, time.perf_counter() - start)
    write_json(path, {"rows": rows, "items": items})
    return rows


def evaluate_run(profile: Profile, spec: RunSpec, run_dir: Path, *, progress: bool = True) -> list[dict[str, Any]]:
    """Every checkpoint of a trained run; each checkpoint's rows are cached in RUN/eval/<checkpoint>.json."""
    paths = RunPaths(run_dir)
    summary = read_json(paths.train_record)
    tok = profile_tokenizer(profile)
    rows: list[dict[str, Any]] = []
    longest = max(meta["duration"] for meta in summary["checkpoints"])
    for meta in summary["checkpoints"]:
        label = meta["checkpoint"]
        path = paths.eval_record(label)
        if not path.is_file():
            start = time.perf_counter()
            # merged: base + adapter as one set of weights, the same function up to rounding (scores equal, NLLs
            # ~1e-8 apart) and, on CPU, ~17% less evaluation time for a LoRA run (no adapter dispatch per layer)
            model = load_finetuned(profile, spec.method, paths.checkpoint(label), merge=True,
                                   base_index=profile.base.index(spec.seed)).to(device())
            loaded = time.perf_counter()
            metrics, items = evaluate_model(model, tok, profile, domains=[spec.domain], progress=progress,
                                            out_dir=paths.eval_outputs(label),
                                            validation=meta["duration"] == longest)  # where tuning reads it
            write_json(path, {"rows": result_rows(spec.run_id, meta, metrics, time.perf_counter() - loaded),
                              "items": items, "load_seconds": loaded - start})
            del model
        rows += read_json(path)["rows"]
    return rows


def finish_run(profile: Profile, spec: RunSpec, out_root: Path, rows: list[dict[str, Any]]) -> Path:
    """Write the run's results.json (its 'done' marker) with provenance from training."""
    paths = Layout(out_root).run(spec.run_id)
    summary = read_json(paths.train_record)
    path = paths.results_record
    write_json(path, {"run_id": spec.run_id, "status": summary["status"], "rows": rows,
                      "provenance": summary["provenance"], "train_wall_time_s": summary["wall_time_s"]})
    return path


def run_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A run's rows as one line per checkpoint (by tokens seen) and a column per metric."""
    table = pd.DataFrame(rows).pivot_table(index=["checkpoint", "tokens_seen"], columns="metric", values="value")
    return table.sort_index(level="tokens_seen")
