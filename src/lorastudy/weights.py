"""Analyses that open the fine-tuned weights: the rank of ΔW (paper Figs 6, S7, S8), intruder dimensions
(Shuttleworth et al. 2024) and KL(base ‖ fine-tuned) on target prompts as a forgetting predictor.

Three layers, each small:
* run discovery — `finished_runs`, `run_checkpoints`, `load_checkpoint`: which runs exist (a chapter renders
  with what exists), and their models. A run trained on another base than the profile's is skipped with a
  warning, because a weight delta or a KL against the wrong base means nothing;
* model-level math — `delta_ranks`, `intruder_rows`, `kl_between`: two models in, rows out (what the tests
  check on constructed models);
* profile-level tables — `rank_table`, `reference_ranks`, `matrix_spectra`, `intruder_counts`, `kl_to_base`:
  every finished run, each (run, checkpoint) cached as JSON under the chapter's folder, keyed by the settings
  and a fingerprint of the checkpoint, so a re-run only computes what is new.

Weights are compared in fp32 whatever the profile's dtype (a ΔW of bf16 weights is mostly rounding noise);
generation-free forward passes (KL) use the profile's dtype like evaluation does.
Plotting functions for chapters 13 and 16 sit at the end and use the house style of `lorastudy.plots`.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from lorastudy import plots, spectra
from lorastudy.config import Profile, RunSpec, config_hash, plan_runs
from lorastudy.findings import claim, not_run
from lorastudy.io import read_json, write_json
from lorastudy.results import run_dir, wide

__all__ = [
    "RUN_FIELDS", "not_run", "claim", "small_model_threads", "quiet_loading",
    "finished_runs", "same_base", "run_checkpoints", "load_checkpoint", "load_base_fp32",
    "base_matrices", "delta_ranks", "intruder_rows", "target_texts", "kl_between",
    "rank_table", "reference_ranks", "matrix_spectra", "spectrum_ranks", "representative_full_run", "gaussian_tables",
    "intruder_counts", "kl_to_base",
    "forgetting_drop", "spearman", "rank_summary", "rank_pivot", "spectra_verdict", "intruder_summary",
    "beyond_verdict",
    "plot_rank_by_layer", "plot_rank_by_duration", "plot_matrix_spectra", "plot_gaussian",
    "plot_intruders", "plot_kl_forgetting", "method_colour",
]

RUN_FIELDS = ["run_id", "arm", "domain", "regime", "method", "lora_rank", "lora_alpha", "target_modules",
              "learning_rate", "weight_decay", "attention_dropout", "use_rslora", "seed"]
CKPT_FIELDS = ["checkpoint", "duration", "duration_unit", "tokens_seen", "step"]
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_BASE_IDENTITY = ("kind", "model", "revision", "world", "architecture", "pretrain")


# ----------------------------------------------------------------------------- runs and models
@contextmanager
def small_model_threads(profile: Profile) -> Iterator[None]:
    """One CPU thread while working on a mini model: its matrices are too small to gain from a second
    thread, and on busy cores OpenMP's waiting made a 128×64 SVD 0.37 s instead of 0.0005 s (and sampling
    16×8 completions 48 s instead of 1.7 s). GPU runs and pretrained bases are left alone."""
    with _one_thread(profile.base.kind == "mini" and not torch.cuda.is_available()):
        yield


@contextmanager
def _one_thread(active: bool = True) -> Iterator[None]:
    if not active:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def same_base(profile: Profile, train_summary: dict[str, Any]) -> bool:
    """Whether a run was trained on this profile's base (what decides the base weights: model, revision,
    or the mini base's world, architecture and pre-training); runs without provenance are trusted."""
    trained = (train_summary.get("provenance") or {}).get("profile", {}).get("base")
    if trained is None:
        return True
    ours = profile.base.model_dump(mode="json")
    return all(trained.get(k) == ours.get(k) for k in _BASE_IDENTITY if k in trained or k in ours)


def finished_runs(profile: Profile, out_root: Path, **where: Any) -> list[RunSpec]:
    """Planned runs with results, filtered by RunSpec fields (a value or a list of values), so a chapter
    draws what exists; runs trained on another base are left out with a warning."""
    out = []
    for spec in plan_runs(profile):
        d = run_dir(out_root, spec.run_id)
        if not ((d / "results.json").is_file() and (d / "train.json").is_file()):
            continue
        if any(getattr(spec, k) not in (v if isinstance(v, (list, tuple, set)) else [v]) for k, v in where.items()):
            continue
        if not same_base(profile, read_json(d / "train.json")):
            warnings.warn(f"{spec.run_id} was trained on another base than profile {profile.name!r} now "
                          "describes (its provenance differs): left out", stacklevel=2)
            continue
        out.append(spec)
    return out


def run_checkpoints(out_root: Path, run_id: str) -> list[dict[str, Any]]:
    """The run's saved checkpoints (train.json entries whose folder exists), shortest duration first."""
    d = run_dir(out_root, run_id)
    ckpts = [c for c in read_json(d / "train.json")["checkpoints"] if (d / "checkpoints" / c["checkpoint"]).is_dir()]
    return sorted(ckpts, key=lambda c: (c.get("step") or 0, c.get("tokens_seen") or 0))


def _pick(ckpts: list[dict[str, Any]], which: str) -> list[dict[str, Any]]:
    if which not in {"all", "last"}:
        raise ValueError(f"checkpoints must be 'all' or 'last', not {which!r}")
    return ckpts[-1:] if which == "last" else ckpts


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No per-model progress bar or peft deprecation warning while loading dozens of checkpoints (a
    chapter's output would be mostly "Loading weights" lines otherwise)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_base_fp32(profile: Profile) -> torch.nn.Module:
    """The base model in fp32 on the analysis device (weight deltas of bf16 weights are rounding noise)."""
    from lorastudy.modeling import base_source, device, load_model

    with quiet_loading():
        return load_model(base_source(profile), "float32", profile.base.revision).to(device()).eval()


def load_checkpoint(profile: Profile, out_root: Path, spec: RunSpec, label: str, *, dtype: str | None = "float32",
                    merge: bool = False) -> torch.nn.Module:
    """A run's checkpoint on the analysis device, in eval mode: full FT weights, or the base plus the LoRA
    adapter (unmerged unless asked); dtype None = the profile's."""
    from peft import PeftModel

    from lorastudy.modeling import base_source, device, load_model

    dtype = dtype or profile.base.dtype
    path = run_dir(out_root, spec.run_id) / "checkpoints" / label
    with quiet_loading():
        if spec.method == "full":
            model = load_model(str(path), dtype)
        else:
            base = load_model(base_source(profile), dtype, profile.base.revision)
            model = PeftModel.from_pretrained(base, str(path))
            if merge:
                model = model.merge_and_unload()
    return model.to(device()).eval()


def _fingerprint(out_root: Path, run_id: str, label: str) -> str:
    """Changes when the checkpoint is retrained: its checkpoint.json (wall time, loss), else its file sizes."""
    folder = run_dir(out_root, run_id) / "checkpoints" / label
    meta = folder / "checkpoint.json"
    if meta.is_file():
        return config_hash(meta.read_text())
    return config_hash(sorted((p.name, p.stat().st_size) for p in folder.iterdir()))


def _cached(path: Path | None, key: dict[str, Any], compute: Any) -> list[dict[str, Any]]:
    """Rows from `path` when it was written with the same key, else computed and written atomically."""
    if path is not None and path.is_file():
        saved = read_json(path)
        if saved.get("key") == key:
            return saved["rows"]
    rows = compute()
    if path is not None:
        write_json(path, {"key": key, "rows": rows})
    return rows


def _run_fields(spec: RunSpec) -> dict[str, Any]:
    d = spec.to_dict()
    return {k: d.get(k) for k in RUN_FIELDS}


def _ckpt_fields(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta.get(k) for k in CKPT_FIELDS}


def _finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ----------------------------------------------------------------------------- model-level math
def base_matrices(model: torch.nn.Module) -> dict[tuple[int, str], torch.Tensor]:
    """(layer, module) → fp32 weight of every attention/MLP matrix of a (non-peft) model."""
    out = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if "layers" not in parts or not name.endswith("weight") or "lora_" in name:
            continue
        i = parts.index("layers")
        module = next((q for q in parts[i + 1:] if q in MODULES), None)
        if module:
            out[(int(parts[i + 1]), module)] = p.detach().float()
    return out


def delta_ranks(base: torch.nn.Module, tuned: torch.nn.Module, threshold: float = 0.9) -> list[dict[str, Any]]:
    """Per matrix, the rank explaining `threshold` of ΔW's Σσ² (Fig 6), with its shape and norm: how far
    from low rank the fine-tuning update is."""
    from lorastudy.modeling import weight_deltas

    rows = spectra.spectrum_table(weight_deltas(base, tuned), threshold)
    for r in rows:
        r["n_out"], r["n_in"] = (int(x) for x in r.pop("shape"))
    return rows


def intruder_rows(base: torch.nn.Module, tuned: torch.nn.Module, *, top_k: int = 10,
                  epsilon: float = 0.5) -> list[dict[str, Any]]:
    """Per matrix, how many of W_ft's top_k singular vectors are intruders (no base singular vector with
    |cos| ≥ epsilon), the sign Shuttleworth et al. tie to LoRA's forgetting."""
    from lorastudy.modeling import weight_deltas

    w0 = base_matrices(base)
    rows = []
    for layer, module, delta in weight_deltas(base, tuned):
        w = w0[(layer, module)].to(delta.device)
        res = spectra.intruder_dimensions(w, w + delta, top_k=min(top_k, min(w.shape)), epsilon=epsilon)
        sim = res["max_similarity"]
        rows.append({"layer": layer, "module": module, "module_type": spectra.module_type(module),
                     "intruders": res["count"], "top_k": res["top_k"], "epsilon": epsilon,
                     "min_similarity": float(sim.min()), "mean_similarity": float(sim.mean())})
    return rows


def target_texts(profile: Profile, domain: str, n: int) -> list[str]:
    """The first n test items of the domain as the text a fine-tuned model was taught to produce: the code
    prompt with its reference body, or the math question with its worked answer (the target distribution)."""
    from lorastudy import prompts
    from lorastudy.sources import load_spec

    items = load_spec(profile, profile.eval.learning[domain].dataset)[:n]
    if domain == "code":
        return [t.prompt + t.canonical_solution for t in items]
    return [prompts.math_prompt(p.question) + prompts.math_response(p.answer) for p in items]


@torch.no_grad()
def kl_between(base: torch.nn.Module, tuned: torch.nn.Module, tok: Any, texts: Sequence[str], *,
               batch_size: int = 32, max_len: int | None = None) -> dict[str, float]:
    """Mean per-token KL(base ‖ tuned) of next-token distributions over `texts` (bos + tokens, right-padded,
    padding masked): how far fine-tuning moved the model on the target data (RL's Razor)."""
    if not texts:
        raise ValueError("no texts to measure KL on")
    dev = next(tuned.parameters()).device
    max_len = max_len or int(getattr(base.config, "max_position_embeddings", 2048))
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    seqs = [(bos + tok(t, add_special_tokens=False)["input_ids"])[:max_len] for t in texts]
    total, count = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(chunk):
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        p = base(input_ids=ids, attention_mask=mask).logits
        q = tuned(input_ids=ids, attention_mask=mask).logits
        n = int(mask.sum())
        total += spectra.kl_divergence_from_logits(p, q, mask) * n
        count += n
    return {"kl": total / count, "tokens": count}


def _per_checkpoint(profile: Profile, out_root: Path, specs: Iterable[RunSpec] | None, checkpoints: str,
                    cache_dir: Path | None, base: torch.nn.Module | None, kind: str, suffix: str,
                    settings: dict[str, Any], measure: Any) -> list[dict[str, Any]]:
    """`measure(base, tuned)` rows for each chosen checkpoint of each run (default: every finished run), each
    (run, checkpoint) cached under cache_dir/KIND/ and keyed by the settings and the checkpoint's fingerprint;
    diverged checkpoints (non-finite weights) are left out with a warning."""
    specs = list(finished_runs(profile, out_root) if specs is None else specs)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        for meta in _pick(run_checkpoints(out_root, spec.run_id), checkpoints):
            label = meta["checkpoint"]
            key = {**settings, "fingerprint": _fingerprint(out_root, spec.run_id, label)}
            path = cache_dir / kind / spec.run_id / f"{label}-{suffix}.json" if cache_dir else None

            def compute(spec: RunSpec = spec, label: str = label) -> list[dict[str, Any]]:
                nonlocal base
                base = base if base is not None else load_base_fp32(profile)
                tuned = load_checkpoint(profile, out_root, spec, label)
                if not _finite(tuned):
                    warnings.warn(f"{spec.run_id}/{label} has non-finite weights (diverged): left out", stacklevel=3)
                    return []
                return measure(base, tuned)

            with small_model_threads(profile):
                rows += [{**_run_fields(spec), **_ckpt_fields(meta), **r} for r in _cached(path, key, compute)]
    return rows


# ----------------------------------------------------------------------------- profile-level tables
def rank_table(profile: Profile, out_root: Path, specs: Iterable[RunSpec] | None = None, *, threshold: float = 0.9,
               checkpoints: str = "all", cache_dir: Path | None = None,
               base: torch.nn.Module | None = None) -> pd.DataFrame:
    """rank90 of ΔW per (run, checkpoint, layer, module) for the given runs (default: every finished run),
    the data of Fig 6; each (run, checkpoint) cached under cache_dir/ranks/."""
    rows = _per_checkpoint(profile, out_root, specs, checkpoints, cache_dir, base, "ranks", f"t{threshold:g}",
                           {"threshold": threshold}, lambda b, t: delta_ranks(b, t, threshold))
    cols = [*RUN_FIELDS, *CKPT_FIELDS, "layer", "module", "module_type", "n_out", "n_in", "threshold", "rank90",
            "rank90_fraction", "frobenius"]
    return pd.DataFrame(rows, columns=cols)


def reference_ranks(profile: Profile, *, threshold: float = 0.9, seed: int = 0, cache_dir: Path | None = None,
                    base: torch.nn.Module | None = None) -> pd.DataFrame:
    """Per (layer, module): rank90 of the base weight and of an i.i.d. Gaussian of the same shape, the two
    yardsticks the paper sets ΔW's rank against (a Gaussian's depends only on its shape)."""
    from lorastudy.modeling import base_source

    key = {"threshold": threshold, "seed": seed, "base": base_source(profile),
           "identity": {k: profile.base.model_dump(mode="json").get(k) for k in _BASE_IDENTITY}}
    path = cache_dir / f"reference-t{threshold:g}.json" if cache_dir else None

    def compute() -> list[dict[str, Any]]:
        weights = base_matrices(base if base is not None else load_base_fp32(profile))
        gauss: dict[tuple[int, int], int] = {}
        rows = []
        for (layer, module), w in sorted(weights.items()):
            shape = tuple(w.shape)
            if shape not in gauss:
                gen = torch.Generator().manual_seed(seed)
                gauss[shape] = spectra.rank_for_variance(torch.randn(*shape, generator=gen).to(w.device), threshold)
            r_base = spectra.rank_for_variance(w, threshold)
            rows.append({"layer": layer, "module": module, "module_type": spectra.module_type(module),
                         "n_out": shape[0], "n_in": shape[1], "base_rank90": r_base,
                         "base_fraction": r_base / min(shape), "gaussian_rank90": gauss[shape],
                         "gaussian_fraction": gauss[shape] / min(shape)})
        return rows

    with small_model_threads(profile):
        return pd.DataFrame(_cached(path, key, compute))


def matrix_spectra(profile: Profile, out_root: Path, spec: RunSpec, label: str, layer: int, module: str, *,
                   base: torch.nn.Module | None = None) -> pd.DataFrame:
    """Singular values and cumulative explained variance of W_base, W_ft and ΔW for one matrix (Fig S7):
    whether the update is as high-rank as the weights themselves."""
    from lorastudy.modeling import weight_deltas

    base = base if base is not None else load_base_fp32(profile)
    w0 = base_matrices(base)[(layer, module)]
    tuned = load_checkpoint(profile, out_root, spec, label)
    delta = next(d for lay, mod, d in weight_deltas(base, tuned) if (lay, mod) == (layer, module))
    frames = []
    with small_model_threads(profile):
        for name, m in [("W_base", w0), ("W_ft", w0 + delta.to(w0.device)), ("ΔW", delta)]:
            s = spectra.singular_values(m).cpu()
            frames.append(pd.DataFrame({"matrix": name, "index": np.arange(1, len(s) + 1), "sigma": s.numpy(),
                                        "explained": spectra.explained_variance(s).numpy()}))
    return pd.concat(frames, ignore_index=True)


def spectrum_ranks(detail: pd.DataFrame, threshold: float = 0.9) -> pd.DataFrame:
    """Per matrix of a `matrix_spectra` table: the rank reaching `threshold` and its fraction of min(shape)."""
    out = detail.groupby("matrix", sort=False).agg(
        rank90=("explained", lambda e: int((e < threshold - 1e-9).sum()) + 1), min_shape=("index", "max"))
    out["of_min_shape"] = out.rank90 / out.min_shape
    return out


def representative_full_run(specs: Sequence[RunSpec]) -> RunSpec | None:
    """The full-FT run to show in detail: plain (no weight decay or dropout), code CPT first as in the
    paper's Figs 6 and S7, then code IFT, math CPT, math IFT."""
    order = {("code", "cpt"): 0, ("code", "ift"): 1, ("math", "cpt"): 2, ("math", "ift"): 3}
    full = [s for s in specs if s.method == "full"]
    plain = [s for s in full if not s.weight_decay and not s.attention_dropout] or full
    return min(plain, key=lambda s: (order.get((s.domain, s.regime), 9), s.seed), default=None)


def gaussian_tables(n: int = 1000, cs: Sequence[float] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fig S8 as two tables: per c the mean |Δσ| and rank90s (summary), and the spectra of A, A + cB and cB
    (long): how a full-rank random update moves a random matrix's spectrum."""
    with _one_thread(n <= 2048):  # see small_model_threads; at n = 1000 one thread takes well under a second
        rows = spectra.gaussian_experiment(n, cs, seed)
    summary = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("s_")} for r in rows])
    summary["n"] = n
    long = pd.concat([pd.DataFrame({"c": r["c"], "matrix": name, "index": np.arange(1, n + 1),
                                    "sigma": r[key].cpu().numpy()})
                      for r in rows for name, key in (("A", "s_a"), ("A + cB", "s_a_plus_cb"), ("cB", "s_cb"))],
                     ignore_index=True)
    return summary, long


def intruder_counts(profile: Profile, out_root: Path, specs: Iterable[RunSpec] | None = None, *, top_k: int = 10,
                    epsilon: float = 0.5, checkpoints: str = "last", cache_dir: Path | None = None,
                    base: torch.nn.Module | None = None) -> pd.DataFrame:
    """Intruder dimensions per (run, checkpoint, layer, module) for the given runs (default: every finished
    run), each (run, checkpoint) cached under cache_dir/intruders/."""
    rows = _per_checkpoint(profile, out_root, specs, checkpoints, cache_dir, base, "intruders",
                           f"k{top_k}-e{epsilon:g}", {"top_k": top_k, "epsilon": epsilon},
                           lambda b, t: intruder_rows(b, t, top_k=top_k, epsilon=epsilon))
    cols = [*RUN_FIELDS, *CKPT_FIELDS, "layer", "module", "module_type", "intruders", "top_k", "epsilon",
            "min_similarity", "mean_similarity"]
    return pd.DataFrame(rows, columns=cols)


def kl_to_base(profile: Profile, out_root: Path, specs: Iterable[RunSpec] | None = None, *, n_prompts: int = 64,
               checkpoints: str = "last", batch_size: int = 32, cache_dir: Path | None = None) -> pd.DataFrame:
    """KL(base ‖ fine-tuned) per (run, checkpoint) on the first n_prompts test items of the run's domain,
    each cached under cache_dir/kl/: the candidate forgetting predictor of chapter 16."""
    from lorastudy.modeling import base_source, load_model, load_tokenizer, device

    specs = list(finished_runs(profile, out_root) if specs is None else specs)
    base: torch.nn.Module | None = None
    tok = None
    texts: dict[str, list[str]] = {}
    rows: list[dict[str, Any]] = []
    for spec in specs:
        for meta in _pick(run_checkpoints(out_root, spec.run_id), checkpoints):
            label = meta["checkpoint"]
            key = {"n_prompts": n_prompts, "dtype": profile.base.dtype, "test_set": config_hash(
                profile.eval.learning[spec.domain].dataset.model_dump(mode="json")),
                "fingerprint": _fingerprint(out_root, spec.run_id, label)}
            path = cache_dir / "kl" / spec.run_id / f"{label}-{config_hash(key, 6)}.json" if cache_dir else None

            def compute(spec: RunSpec = spec, label: str = label) -> list[dict[str, Any]]:
                nonlocal base, tok
                if base is None:
                    src = base_source(profile)
                    with quiet_loading():
                        base = load_model(src, profile.base.dtype, profile.base.revision).to(device()).eval()
                    tok = load_tokenizer(profile.base.tokenizer or src, profile.base.revision)
                if spec.domain not in texts:
                    texts[spec.domain] = target_texts(profile, spec.domain, n_prompts)
                tuned = load_checkpoint(profile, out_root, spec, label, dtype=None)
                res = kl_between(base, tuned, tok, texts[spec.domain], batch_size=batch_size)
                return [{**res, "n_prompts": len(texts[spec.domain]), "finite": bool(math.isfinite(res["kl"]))}]

            with small_model_threads(profile):
                rows += [{**_run_fields(spec), **_ckpt_fields(meta), **r} for r in _cached(path, key, compute)]
    return pd.DataFrame(rows, columns=[*RUN_FIELDS, *CKPT_FIELDS, "kl", "tokens", "n_prompts", "finite"])


# ----------------------------------------------------------------------------- summaries and verdicts
def forgetting_drop(df: pd.DataFrame) -> pd.DataFrame:
    """Per (run, checkpoint): forgetting_avg, its drop from the base (base − run: more = forgot more) and,
    where measured, the rise of held-out source loss (run − base)."""
    w = wide(df)
    base = w[w.method == "base"]
    runs = w[w.method != "base"].copy()
    out = runs[["run_id", "checkpoint"]].copy()
    for col, name, sign in (("forgetting_avg", "forgetting_drop", 1), ("heldout_source_loss", "source_loss_rise", -1)):
        if col in w and len(base):
            out[col] = runs[col]
            out[name] = sign * (float(base[col].mean()) - runs[col])
        else:
            out[col], out[name] = np.nan, np.nan
    return out.reset_index(drop=True)


def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 pairs or a constant side."""
    frame = pd.DataFrame({"x": list(x), "y": list(y)}).dropna()
    if len(frame) < 3:
        return float("nan")
    rx, ry = frame.x.rank(), frame.y.rank()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def rank_summary(ranks: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per (run, checkpoint, module type): mean rank90 of ΔW, as a fraction of min(shape), beside the base
    weights' and a same-shape Gaussian's mean rank90 (Fig 6's comparison in one table)."""
    if ranks.empty:
        return pd.DataFrame(columns=["run_id", "method", "lora_rank", "domain", "regime", "checkpoint", "duration",
                                     "module_type", "rank90", "rank90_fraction", "base_rank90", "gaussian_rank90"])
    merged = ranks.merge(reference[["layer", "module", "base_rank90", "gaussian_rank90"]], on=["layer", "module"],
                         how="left")
    keys = ["run_id", "arm", "method", "lora_rank", "domain", "regime", "checkpoint", "duration", "step"]
    both = pd.concat([merged, merged.assign(module_type="all")], ignore_index=True)
    out = (both.groupby([*keys, "module_type"], dropna=False, sort=False)
           [["rank90", "rank90_fraction", "base_rank90", "gaussian_rank90"]].mean().reset_index())
    return out.sort_values(["run_id", "step", "module_type"], kind="stable").reset_index(drop=True)


def rank_pivot(summary: pd.DataFrame, method: str = "full") -> pd.DataFrame:
    """`rank_summary` of one method as one row per (run, duration): mean rank90 for attention, MLP and all
    matrices, and the same as fractions of min(shape), beside the base's and a Gaussian's (all matrices)."""
    sel = summary[summary.method == method]
    if sel.empty:
        return pd.DataFrame()
    index = ["run_id", "duration"]
    ranks = sel.pivot_table(index=index, columns="module_type", values="rank90")
    fracs = sel.pivot_table(index=index, columns="module_type", values="rank90_fraction").add_suffix(" (fraction)")
    refs = sel[sel.module_type == "all"].set_index(index)[["base_rank90", "gaussian_rank90"]]
    return ranks.join(fracs).join(refs).rename_axis(columns=None)


def spectra_verdict(ranks: pd.DataFrame, reference: pd.DataFrame, lora_ranks: Sequence[int]) -> pd.DataFrame:
    """The paper's Fig 6 statements computed on our full-FT ΔW at each run's last checkpoint (None where
    the runs are missing): far above LoRA's ranks, below the base's and a Gaussian's, MLP > attention,
    growing with training, and LoRA's own ΔW within its rank."""
    full = ranks[ranks.method == "full"]
    lora = ranks[ranks.method == "lora"]
    claims = []
    if full.empty:
        for s in ("ΔW of full FT needs a rank far above typical LoRA ranks (paper: 10–100×)",
                  "ΔW needs a lower rank than the base weights", "ΔW needs a lower rank than a same-shape Gaussian",
                  "MLP modules need a higher rank than attention", "the rank grows with training"):
            claims.append(claim(s, True, None, "no full fine-tuning run with checkpoints"))
    else:
        last = full[full.step == full.groupby("run_id").step.transform("max")]
        merged = last.merge(reference, on=["layer", "module"], how="left", suffixes=("", "_ref"))
        mean_rank = float(last.rank90.mean())
        typical = sorted(set(int(r) for r in lora_ranks))
        far = "ΔW of full FT needs a rank far above typical LoRA ranks (paper: 10–100×)"
        if typical:
            ratio = mean_rank / float(np.median(typical))
            claims.append(claim(far, True, bool(ratio >= 10),
                                f"mean rank90 {mean_rank:.1f} = {ratio:.1f}× the median LoRA rank {np.median(typical):g} "
                                f"(ranks {typical}; smallest min(shape) {int(last[['n_out', 'n_in']].min(axis=1).min())})"))
        else:
            claims.append(claim(far, True, None, f"mean rank90 {mean_rank:.1f}; no LoRA ranks in this profile"))
        share = float((merged.rank90 < merged.base_rank90).mean())
        claims.append(claim("ΔW needs a lower rank than the base weights", True, bool(share > 0.5),
                            f"lower in {share:.0%} of matrices (mean {merged.rank90.mean():.1f} vs "
                            f"{merged.base_rank90.mean():.1f})"))
        share = float((merged.rank90 < merged.gaussian_rank90).mean())
        claims.append(claim("ΔW needs a lower rank than a same-shape Gaussian", True, bool(share > 0.5),
                            f"lower in {share:.0%} of matrices (mean {merged.rank90.mean():.1f} vs "
                            f"{merged.gaussian_rank90.mean():.1f})"))
        by_type = last.groupby("module_type").rank90_fraction.mean()
        if {"mlp", "attention"} <= set(by_type.index):
            claims.append(claim("MLP modules need a higher rank than attention", True,
                                bool(by_type["mlp"] > by_type["attention"]),
                                f"mean fraction of min(shape): MLP {by_type['mlp']:.3f}, attention "
                                f"{by_type['attention']:.3f}"))
        per_ckpt = full.groupby(["run_id", "step"]).rank90.mean().reset_index()
        grows = [(g.sort_values("step").rank90.iloc[-1] > g.sort_values("step").rank90.iloc[0])
                 for _, g in per_ckpt.groupby("run_id") if len(g) > 1]
        claims.append(claim("the rank grows with training", True, bool(np.mean(grows) > 0.5) if grows else None,
                            f"last > first checkpoint in {sum(grows)} of {len(grows)} runs" if grows
                            else "needs runs with several checkpoints"))
    if lora.empty:
        claims.append(claim("LoRA's ΔW needs at most rank r", True, None, "no LoRA run"))
    else:
        ok = bool((lora.rank90 <= lora.lora_rank).all())
        claims.append(claim("LoRA's ΔW needs at most rank r", True, ok,
                            f"largest rank90/r: {float((lora.rank90 / lora.lora_rank).max()):.2f}"))
    return pd.DataFrame(claims)


def intruder_summary(counts: pd.DataFrame) -> pd.DataFrame:
    """Per (run, checkpoint): intruders summed over matrices, per matrix on average, and by module type."""
    keys = ["run_id", "arm", "method", "lora_rank", "target_modules", "domain", "regime", "checkpoint", "duration"]
    if counts.empty:
        return pd.DataFrame(columns=[*keys, "intruders", "matrices", "per_matrix", "attention", "mlp"])
    g = counts.groupby(keys, dropna=False, sort=False)
    out = g.intruders.agg(intruders="sum", matrices="size").reset_index()
    out["per_matrix"] = out.intruders / out.matrices
    by_type = counts.pivot_table(index=["run_id", "checkpoint"], columns="module_type", values="intruders",
                                 aggfunc="sum")
    index = pd.MultiIndex.from_frame(out[["run_id", "checkpoint"]])
    for t in ("attention", "mlp"):
        out[t] = by_type[t].reindex(index).to_numpy() if t in by_type else np.nan
    return out


def beyond_verdict(intruders: pd.DataFrame, kl: pd.DataFrame) -> pd.DataFrame:
    """Chapter 16's two statements: LoRA has more intruder dimensions than full FT (Shuttleworth et al.),
    and KL to the base on target data predicts forgetting (positive Spearman correlation, RL's Razor)."""
    claims = []
    full, lora = intruders[intruders.method == "full"], intruders[intruders.method == "lora"]
    if len(full) and len(lora):
        claims.append(claim("LoRA has more intruder dimensions per matrix than full FT", True,
                            bool(lora.per_matrix.mean() > full.per_matrix.mean()),
                            f"LoRA {lora.per_matrix.mean():.2f} vs full {full.per_matrix.mean():.2f} per matrix"))
    else:
        claims.append(claim("LoRA has more intruder dimensions per matrix than full FT", True, None,
                            "needs finished full-FT and LoRA runs"))
    ok = kl.dropna(subset=["kl", "forgetting_drop"]) if len(kl) else kl
    rho = spearman(ok.kl, ok.forgetting_drop) if len(ok) else float("nan")
    claims.append(claim("more KL(base ‖ fine-tuned) on target data, more forgetting (Spearman > 0)", True,
                        None if math.isnan(rho) else bool(rho > 0),
                        f"Spearman {rho:.2f} over {len(ok)} checkpoints" if not math.isnan(rho)
                        else f"needs at least 3 checkpoints with both numbers (have {len(ok)})"))
    if len(ok) and ok.source_loss_rise.notna().sum() >= 3:
        rho2 = spearman(ok.kl, ok.source_loss_rise)
        claims.append(claim("more KL, larger rise of held-out source loss (Spearman > 0)", True,
                            None if math.isnan(rho2) else bool(rho2 > 0), f"Spearman {rho2:.2f}"))
    return pd.DataFrame(claims)


# ----------------------------------------------------------------------------- figures
def method_colour(method: str, rank: float | None = None) -> Any:
    """Full FT red, LoRA by rank, base grey: the house colours."""
    if method == "full":
        return plots.FULL_COLOUR
    if method == "lora":
        return plots.rank_colour(rank or 16)
    return plots.BASE_COLOUR


def _blank(ax: Any, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=plots.BASE_COLOUR)


def _tokens(x: float) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:g}{suffix}"
    return f"{x:g}"


def _duration_axis(ax: Any, regime: str, durations: np.ndarray) -> None:
    """Tokens on a log axis for CPT, epochs on a linear one for IFT, ticks at the durations evaluated."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = sorted(set(float(d) for d in durations if d > 0))
    if regime == "cpt":
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: _tokens(x)))
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: f"{x:g}"))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xlabel("training tokens" if regime == "cpt" else "epochs")


def _module_colours() -> dict[str, Any]:
    """Attention modules in blues, MLP modules in oranges, so the two types read as groups."""
    import seaborn as sns

    blues, oranges = sns.color_palette("Blues", 6)[2:], sns.color_palette("Oranges", 5)[2:]
    return dict(zip(MODULES, [*blues, *oranges]))


def _run_title(row: pd.Series) -> str:
    extra = []
    if row.get("weight_decay"):
        extra.append(f"wd={row['weight_decay']:g}")
    if row.get("attention_dropout"):
        extra.append(f"dropout={row['attention_dropout']:g}")
    extra.append(f"lr={row['learning_rate']:g}")
    return f"{row['domain']} {str(row['regime']).upper()} full ({', '.join(extra)})"


def _duration_text(row: pd.Series) -> str:
    unit = row.get("duration_unit")
    d = float(row["duration"])
    if unit == "tokens":
        return f"{_tokens(d)} tokens"
    return f"{d:g} epochs" if unit == "epochs" else str(row["checkpoint"])


def plot_rank_by_layer(ranks: pd.DataFrame, *, arms: Sequence[str] = ("full",), max_runs: int = 6) -> Figure:
    """Fig 6: rank90 of ΔW against layer, one line per module, a row per full-FT run of the main grid
    (`arms`; every full-FT run if none) with code CPT first as in the paper, a column per checkpoint."""
    plots.style()
    full = ranks[ranks.method == "full"]
    if full.arm.isin(arms).any():
        full = full[full.arm.isin(arms)]
    order = {("code", "cpt"): 0, ("code", "ift"): 1, ("math", "cpt"): 2, ("math", "ift"): 3}
    runs = full.drop_duplicates("run_id")
    runs = (runs.assign(_o=[order.get((a, b), 9) for a, b in zip(runs.domain, runs.regime)])
            .sort_values(["_o", "run_id"]).head(max_runs))
    n_cols = int(full.groupby("run_id").checkpoint.nunique().max()) if len(full) else 1
    fig, axes = plt.subplots(max(len(runs), 1), n_cols, squeeze=False, sharey=True, layout="constrained",
                             figsize=(2.9 * n_cols + 1.6, 2.3 * max(len(runs), 1)))
    colours = _module_colours()
    for i, (_, run) in enumerate(runs.iterrows()):
        rows = full[full.run_id == run.run_id]
        ckpts = rows.drop_duplicates("checkpoint").sort_values("step")
        for j in range(n_cols):
            ax = axes[i, j]
            if j >= len(ckpts):
                ax.set_axis_off()
                continue
            c = ckpts.iloc[j]
            sel = rows[rows.checkpoint == c.checkpoint]
            for module in MODULES:
                m = sel[sel.module == module].sort_values("layer")
                if len(m):
                    ax.plot(m.layer, m.rank90, marker="o", color=colours[module], label=module,
                            ls="-" if module in spectra.ATTENTION_MODULES else ":")
            ax.set_title(f"{_run_title(run)}\n{_duration_text(c)}", fontsize="small")
            ax.set_xticks(sorted(sel.layer.unique()))
            if i == len(runs) - 1:
                ax.set_xlabel("layer")
            if j == 0:
                ax.set_ylabel("rank for 90% of Σσ²")
    if len(runs):
        axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), title="module")
    else:
        _blank(axes[0, 0], "no full fine-tuning run")
    return fig


def plot_rank_by_duration(ranks: pd.DataFrame, reference: pd.DataFrame, hidden_size: int | None = None) -> Figure:
    """rank90 of ΔW (mean over layers) against duration for attention (solid) and MLP (dotted), per (domain,
    regime) panel, beside the base weights' (dashed) and a Gaussian's (dash-dotted) rank90 of the same
    module type and each LoRA rank r (thin lines in the rank colours)."""
    plots.style()
    fig, axes = plt.subplots(2, 2, squeeze=False, layout="constrained", figsize=(9.6, 5.8))
    ref = reference.groupby("module_type")[["base_rank90", "gaussian_rank90"]].mean()
    styles = {"attention": "-", "mlp": ":"}
    handles: dict[str, Any] = {}
    for (i, domain), (j, regime) in [(a, b) for a in enumerate(plots.DOMAINS) for b in enumerate(plots.REGIMES)]:
        ax = axes[i, j]
        ax.set_title(f"{domain} {regime.upper()}")
        rows = ranks[(ranks.domain == domain) & (ranks.regime == regime)]
        full = rows[(rows.method == "full") & (rows.weight_decay.fillna(0) == 0)
                    & (rows.attention_dropout.fillna(0) == 0)]
        if full.empty:
            _blank(ax, "no full fine-tuning run")
            continue
        lrs = sorted(full.learning_rate.unique())
        for (lr, mtype), g in full[full.module_type.isin(styles)].groupby(["learning_rate", "module_type"]):
            stats = g.groupby("duration").rank90.mean().sort_index()
            label = f"full ΔW, {mtype}" + (f", lr={lr:g}" if len(lrs) > 1 else "")
            (line,) = ax.plot(stats.index, stats.values, marker="osD^v"[lrs.index(lr) % 5], color=plots.FULL_COLOUR,
                              ls=styles[mtype])
            handles.setdefault(label, line)
        for mtype, ls in styles.items():
            if mtype not in ref.index:
                continue
            for col, colour, name in (("base_rank90", plots.BASE_COLOUR, "base W"),
                                      ("gaussian_rank90", "0.72", "Gaussian W")):
                line = ax.axhline(ref.loc[mtype, col], color=colour, ls="--" if col == "base_rank90" else "-.", lw=1)
                ax.annotate(f"{name}, {mtype}", (1.0, ref.loc[mtype, col]), xycoords=("axes fraction", "data"),
                            xytext=(-2, 2), textcoords="offset points", ha="right", va="bottom", fontsize="x-small",
                            color=colour)
                handles.setdefault(f"{name} (same shape)", line)
        for r in sorted(rows[rows.method == "lora"].lora_rank.dropna().unique()):
            line = ax.axhline(r, color=plots.rank_colour(r), lw=1.2)
            handles.setdefault(plots.method_label("lora", r, hidden_size), line)
        _duration_axis(ax, regime, full.duration.to_numpy(dtype=float))
        ax.set_ylim(bottom=0)
        if j == 0:
            ax.set_ylabel("rank for 90% of Σσ²\n(mean over layers)")
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small")
    return fig


def plot_matrix_spectra(spec_df: pd.DataFrame, title: str = "") -> Figure:
    """Fig S7: singular values (left) and cumulative explained variance (right) of W_base, W_ft and ΔW."""
    plots.style()
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.2), layout="constrained")
    colours = {"W_base": "0.7", "W_ft": plots.FULL_COLOUR, "ΔW": "#4c72b0"}
    widths = {"W_base": 4.0}  # drawn wide underneath: W_ft often lies right on top of it
    for name, g in spec_df.groupby("matrix", sort=False):
        for ax, col in zip(axes, ["sigma", "explained"]):
            ax.plot(g["index"], g[col], color=colours.get(name), lw=widths.get(name, 1.5), label=name)
        r = int((g.explained >= 0.9 - 1e-9).to_numpy().argmax()) + 1
        axes[1].axvline(r, color=colours.get(name), lw=0.8, ls=":")
    axes[0].set(yscale="log", xlabel="index i", ylabel="singular value σᵢ")
    axes[1].axhline(0.9, color="0.6", lw=0.8)
    axes[1].set(xlabel="rank k", ylabel="Σᵢ≤k σᵢ² / Σ σ²", ylim=(0, 1.02))
    axes[1].legend(loc="lower right")
    fig.suptitle(title)
    return fig


def plot_gaussian(summary: pd.DataFrame, long: pd.DataFrame, c_show: float | None = None) -> Figure:
    """Fig S8: spectra of A, A + cB and cB for one c (left) and the mean |σ(A + cB) − σ(A)| against c."""
    plots.style()
    c_show = c_show if c_show is not None else float(summary.c.iloc[len(summary) // 2])
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.2), layout="constrained")
    colours = {"A": plots.BASE_COLOUR, "A + cB": plots.FULL_COLOUR, "cB": "#4c72b0"}
    for name, g in long[np.isclose(long.c, c_show)].groupby("matrix", sort=False):
        axes[0].plot(g["index"], g.sigma, color=colours[name], label=name)
    axes[0].set(xlabel="index i", ylabel="singular value σᵢ", title=f"c = {c_show:g}, n = {int(summary.n.iloc[0])}")
    axes[0].legend()
    axes[1].plot(summary.c, summary.mean_abs_diff, marker="o", color=plots.FULL_COLOUR)
    axes[1].set(xscale="log", yscale="log", xlabel="c", ylabel="mean |σ(A + cB) − σ(A)|")
    return fig


def plot_intruders(summary: pd.DataFrame, hidden_size: int | None = None) -> Figure:
    """Intruder dimensions per matrix against LoRA rank, one panel per (domain, regime); full FT as a red
    line at its own level (it has no rank)."""
    plots.style()
    fig, axes = plt.subplots(2, 2, squeeze=False, layout="constrained", figsize=(9.2, 5.6))
    for (i, domain), (j, regime) in [(a, b) for a in enumerate(plots.DOMAINS) for b in enumerate(plots.REGIMES)]:
        ax = axes[i, j]
        ax.set_title(f"{domain} {regime.upper()}")
        rows = summary[(summary.domain == domain) & (summary.regime == regime)]
        if rows.empty:
            _blank(ax, "not run")
            continue
        lora = rows[rows.method == "lora"].sort_values("lora_rank")
        for (tm, arm), g in lora.groupby([lora.target_modules.fillna("all"), lora.arm], sort=False):
            label = f"LoRA, {tm} modules" + ("" if arm in {"lora", "modules"} else f" ({arm} arm)")
            ax.plot(g.lora_rank, g.per_matrix, color="0.6", lw=0.8, zorder=1)
            ax.scatter(g.lora_rank, g.per_matrix, c=[plots.rank_colour(r) for r in g.lora_rank], zorder=3, s=40,
                       marker={"all": "o", "attention": "s", "mlp": "^"}.get(tm, "D"), label=label, edgecolors="white")
        for k, (_, f) in enumerate(rows[rows.method == "full"].iterrows()):
            ax.axhline(f.per_matrix, color=plots.FULL_COLOUR, ls=plots.LINESTYLES[k % len(plots.LINESTYLES)], lw=1.2,
                       label="full FT" + ("" if f.arm == "full" else f" ({f.arm} arm, {f.run_id})"))
        if lora.empty:
            ax.set_xticks([])
        else:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(lora.lora_rank.unique()))
            ax.set_xticklabels([plots.method_label("lora", r, hidden_size).removeprefix("LoRA r=").replace(" (", "\n(")
                                for r in sorted(lora.lora_rank.unique())])
            ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xlabel("LoRA rank r")
        ax.set_ylabel("intruder dimensions per matrix")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="x-small", loc="best")
    return fig


def plot_kl_forgetting(frame: pd.DataFrame, y: str = "forgetting_drop",
                       ylabel: str = "forgetting: base − run accuracy") -> Figure:
    """KL(base ‖ fine-tuned) on target data against a forgetting measure, one point per checkpoint coloured
    by method and rank, marker by domain; Spearman's ρ in the title."""
    plots.style()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    ok = frame.dropna(subset=["kl", y])
    if ok.empty:
        _blank(ax, "no checkpoint with both KL and forgetting")
        return fig
    markers = {"code": "o", "math": "s"}
    seen = set()
    for _, r in ok.iterrows():
        label = plots.method_label(r.method, r.lora_rank)
        lab = f"{label}, {r.domain}"
        ax.scatter(r.kl, r[y], color=method_colour(r.method, r.lora_rank), marker=markers.get(r.domain, "o"),
                   edgecolors="white", s=50, label=None if lab in seen else lab, zorder=3)
        seen.add(lab)
    if ok.kl.min() > 0 and ok.kl.max() / ok.kl.min() > 10:  # log only where KL spans more than a decade
        ax.set_xscale("log")
    rho = spearman(ok.kl, ok[y])
    title = (f"Spearman ρ = {rho:.2f} over {len(ok)} checkpoints" if not math.isnan(rho)
             else f"{len(ok)} checkpoints: too few (or constant) for a rank correlation")
    ax.set(xlabel="KL(base ‖ fine-tuned) on target prompts (nats/token)", ylabel=ylabel, title=title)
    ax.axhline(0, color=plots.BASE_COLOUR, ls="--", lw=1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), fontsize="small")
    return fig
