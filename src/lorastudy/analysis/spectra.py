"""Chapter 13 (the paper's Figs 6, S7, S8): how high is the rank of the update ΔW that full fine-tuning learns,
beside the base weights', a same-shape Gaussian's and LoRA's own?

Weights are compared in fp32 whatever the profile's dtype (a ΔW of bf16 weights is mostly rounding noise).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lorastudy.analysis import linalg
from lorastudy.analysis.chapter import Chapter
from lorastudy.analysis.checkpoints import (
    CKPT_FIELDS,
    RUN_FIELDS,
    base_identity,
    cached,
    finished_runs,
    load_base_fp32,
    load_checkpoint,
    missing_runs_note,
    per_checkpoint,
    run_checkpoints,
    weight_measure,
)
from lorastudy.analysis.claims import claim
from lorastudy.config import Profile
from lorastudy.plan import RunSpec, plan_runs
from lorastudy.train.base import base_source
from lorastudy.train.modeling import base_matrices, one_thread, small_model_threads, weight_deltas

__all__ = ["SpectraTables", "chapter_tables", "delta_ranks", "rank_table", "chapter_ranks", "reference_ranks",
           "reference_rows", "reference_row", "reference_by_type", "matrix_spectra", "spectra_frame",
           "MatrixDetail", "representative_spectra", "spectrum_ranks", "representative_full_run", "gaussian_tables",
           "rank_summary", "rank_pivot", "lora_rank_table", "missing_note", "profile_lora_ranks", "spectra_verdict"]

RUNS_NEEDED = {"full": "Full fine-tuning"}  # the chapter's subject, as its not-run note names it
PANEL_ORDER = {("code", "cpt"): 0, ("code", "ift"): 1, ("math", "cpt"): 2, ("math", "ift"): 3}  # the paper's order


# ----------------------------------------------------------------------------- rank of ΔW
def delta_ranks(base: torch.nn.Module, tuned: torch.nn.Module, threshold: float = 0.9) -> list[dict[str, Any]]:
    """Per matrix, the rank explaining `threshold` of ΔW's Σσ² (Fig 6), with its shape and norm: how far
    from low rank the fine-tuning update is."""
    rows = linalg.spectrum_table(weight_deltas(base, tuned), threshold)
    for r in rows:
        r["n_out"], r["n_in"] = (int(x) for x in r.pop("shape"))
    return rows


def rank_table(profile: Profile, out_root: Path, specs: Iterable[RunSpec] | None = None, *, threshold: float = 0.9,
               checkpoints: str = "all", cache_dir: Path | None = None,
               base: torch.nn.Module | None = None) -> pd.DataFrame:
    """rank90 of ΔW per (run, checkpoint, layer, module) for the given runs (default: every finished run),
    the data of Fig 6; each (run, checkpoint) cached under cache_dir/ranks/."""
    measure = weight_measure(profile, out_root, base, lambda b, t: delta_ranks(b, t, threshold))
    rows = per_checkpoint(profile, out_root, specs, checkpoints=checkpoints, cache_dir=cache_dir, kind="ranks",
                          settings=lambda _spec: {"threshold": threshold}, measure=measure, suffix=f"t{threshold:g}")
    cols = [*RUN_FIELDS, *CKPT_FIELDS, "layer", "module", "module_type", "n_out", "n_in", "threshold", "rank90",
            "rank90_fraction", "frobenius"]
    return pd.DataFrame(rows, columns=cols)


def chapter_ranks(profile: Profile, out_root: Path, *, threshold: float = 0.9, cache_dir: Path | None = None,
                  base: torch.nn.Module | None = None) -> tuple[list[RunSpec], list[RunSpec], pd.DataFrame]:
    """The finished full-FT and LoRA runs, and one rank table of every checkpoint of the full-FT runs and
    the last checkpoint of the LoRA runs (LoRA's ΔW is the contrast, not the subject)."""
    full_runs = finished_runs(profile, out_root, method="full")
    lora_runs = finished_runs(profile, out_root, method="lora")
    parts = [rank_table(profile, out_root, full_runs, threshold=threshold, cache_dir=cache_dir, base=base),
             rank_table(profile, out_root, lora_runs, threshold=threshold, checkpoints="last", cache_dir=cache_dir,
                        base=base)]
    ranks = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else parts[0]
    return full_runs, lora_runs, ranks


def reference_ranks(profile: Profile, *, threshold: float = 0.9, seed: int = 0, cache_dir: Path | None = None,
                    base: torch.nn.Module | None = None) -> pd.DataFrame:
    """Per (layer, module): rank90 of the base weight and of an i.i.d. Gaussian of the same shape, the two
    yardsticks the paper sets ΔW's rank against (a Gaussian's depends only on its shape)."""
    key = {"threshold": threshold, "seed": seed, "base": base_source(profile),
           "identity": base_identity(profile.base.model_dump(mode="json"))}
    path = cache_dir / f"reference-t{threshold:g}.json" if cache_dir else None

    def compute() -> list[dict[str, Any]]:
        weights = base_matrices(base if base is not None else load_base_fp32(profile))
        return reference_rows(sorted(weights.items()), threshold=threshold, seed=seed)

    with small_model_threads(profile):
        return pd.DataFrame(cached(path, key, compute))


def reference_rows(weights: Iterable[tuple[tuple[int, str], torch.Tensor]], *, threshold: float = 0.9,
                   seed: int = 0) -> list[dict[str, Any]]:
    """`reference_ranks`' rows for ((layer, module), W) pairs, read one at a time (so a caller may stream a
    7B model's matrices from disk): W's rank90 and a same-shape Gaussian's, computed once per shape."""
    gauss: dict[tuple[int, int], int] = {}
    rows = []
    for (layer, module), w in weights:
        shape = (int(w.shape[0]), int(w.shape[1]))
        if shape not in gauss:
            gauss[shape] = linalg.rank_for_variance(linalg.gaussian_like(shape, seed).to(w.device), threshold)
        rows.append(reference_row(layer, module, shape, linalg.rank_for_variance(w, threshold), gauss[shape]))
    return rows


def reference_row(layer: int, module: str, shape: tuple[int, int], base_rank: int,
                  gaussian_rank: int) -> dict[str, Any]:
    """One row of `reference_ranks`: the base weight's and a same-shape Gaussian's rank90, and their fractions."""
    return {"layer": layer, "module": module, "module_type": linalg.module_type(module), "n_out": shape[0],
            "n_in": shape[1], "base_rank90": base_rank, "base_fraction": base_rank / min(shape),
            "gaussian_rank90": gaussian_rank, "gaussian_fraction": gaussian_rank / min(shape)}


def reference_by_type(reference: pd.DataFrame) -> pd.DataFrame:
    """The two yardsticks per module type: mean rank90 and fraction of min(shape), base and Gaussian."""
    return reference.groupby("module_type")[["base_rank90", "base_fraction", "gaussian_rank90",
                                             "gaussian_fraction"]].mean()


# ----------------------------------------------------------------------------- one matrix in detail (Fig S7)
def matrix_spectra(profile: Profile, out_root: Path, spec: RunSpec, label: str, layer: int, module: str, *,
                   base: torch.nn.Module | None = None) -> pd.DataFrame:
    """Singular values and cumulative explained variance of W_base, W_ft and ΔW for one matrix (Fig S7):
    whether the update is as high-rank as the weights themselves."""
    base = base if base is not None and profile.base.index(spec.seed) == 0 else load_base_fp32(
        profile, profile.base.index(spec.seed))  # `base`: the first base, given to spare a load
    w0 = base_matrices(base)[(layer, module)]
    tuned = load_checkpoint(profile, out_root, spec, label)
    delta = next(d for lay, mod, d in weight_deltas(base, tuned) if (lay, mod) == (layer, module))
    with small_model_threads(profile):
        return spectra_frame([("W_base", w0), ("W_ft", w0 + delta.to(w0.device)), ("ΔW", delta)])


def spectra_frame(matrices: Iterable[tuple[str, torch.Tensor]]) -> pd.DataFrame:
    """`matrix_spectra`'s long table (matrix, index, sigma, explained) for named matrices, or their singular
    values when 1-D (computed once for other uses too), taken one at a time (a lazy iterable keeps only the
    matrix at hand in memory)."""
    frames = []
    for name, m in matrices:
        s = (m if m.ndim == 1 else linalg.singular_values(m)).cpu()
        frames.append(pd.DataFrame({"matrix": name, "index": np.arange(1, len(s) + 1), "sigma": s.numpy(),
                                    "explained": linalg.explained_variance(s).numpy()}))
    return pd.concat(frames, ignore_index=True)


def representative_full_run(specs: Sequence[RunSpec]) -> RunSpec | None:
    """The full-FT run to show in detail: plain (no weight decay or dropout), code CPT first as in the
    paper's Figs 6 and S7, then code IFT, math CPT, math IFT."""
    full = [s for s in specs if s.method == "full"]
    plain = [s for s in full if not s.weight_decay and not s.attention_dropout] or full
    return min(plain, key=lambda s: (PANEL_ORDER.get((s.domain, s.regime), 9), s.seed), default=None)


@dataclass(frozen=True)
class MatrixDetail:
    """The spectra of one matrix (`matrix_spectra`'s table, empty when there is no full-FT run) and a title."""

    table: pd.DataFrame
    title: str


def representative_spectra(profile: Profile, out_root: Path, specs: Sequence[RunSpec], layer: int, module: str, *,
                           base: torch.nn.Module | None = None) -> MatrixDetail:
    """`matrix_spectra` of one module at the last checkpoint of the representative full-FT run; a negative
    layer counts from the last."""
    spec = representative_full_run(specs)
    if spec is None:
        return MatrixDetail(pd.DataFrame(columns=["matrix", "index", "sigma", "explained"]),
                            "no full fine-tuning run")
    base = base if base is not None else load_base_fp32(profile)
    last = run_checkpoints(out_root, spec.run_id)[-1]["checkpoint"]
    layer = layer % (max(lay for lay, _ in base_matrices(base)) + 1)
    return MatrixDetail(matrix_spectra(profile, out_root, spec, last, layer, module, base=base),
                        f"{spec.run_id} at {last}: layer {layer} {module}")


def spectrum_ranks(detail: pd.DataFrame, threshold: float = 0.9) -> pd.DataFrame:
    """Per matrix of a `matrix_spectra` table: the rank reaching `threshold` and its fraction of min(shape)."""
    out = detail.groupby("matrix", sort=False).agg(
        rank90=("explained", lambda e: int((e < threshold - 1e-9).sum()) + 1), min_shape=("index", "max"))
    out["of_min_shape"] = out.rank90 / out.min_shape
    return out


# ----------------------------------------------------------------------------- a random-matrix toy (Fig S8)
def gaussian_tables(n: int = 1000, cs: Sequence[float] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fig S8 as two tables: per c the mean |Δσ| and rank90s (summary), and the spectra of A, A + cB and cB
    (long): how a full-rank random update moves a random matrix's spectrum."""
    with one_thread(n <= 2048):  # at n = 1000 one thread takes well under a second
        rows = linalg.gaussian_experiment(n, cs, seed)
    summary = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("s_")} for r in rows])
    summary["n"] = n
    long = pd.concat([pd.DataFrame({"c": r["c"], "matrix": name, "index": np.arange(1, n + 1),
                                    "sigma": r[key].cpu().numpy()})
                      for r in rows for name, key in (("A", "s_a"), ("A + cB", "s_a_plus_cb"), ("cB", "s_cb"))],
                     ignore_index=True)
    return summary, long


# ----------------------------------------------------------------------------- summaries and the verdict
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


def lora_rank_table(ranks: pd.DataFrame, hidden_size: int | None = None) -> pd.DataFrame:
    """Per LoRA run (its last checkpoint): mean and largest rank90 of ΔW over its matrices, whether the
    largest stays within r, the mean as a fraction of r and, given the hidden size d, r as a fraction of d."""
    lora = ranks[ranks.method == "lora"]
    if lora.empty:
        return pd.DataFrame()
    table = (lora.groupby(["run_id", "lora_rank", "target_modules", "checkpoint"], dropna=False)
             .agg(mean_rank90=("rank90", "mean"), max_rank90=("rank90", "max"), matrices=("rank90", "size"))
             .reset_index())
    table["max_within_r"] = table.max_rank90 <= table.lora_rank
    table["mean_over_r"] = table.mean_rank90 / table.lora_rank
    if hidden_size:
        table["r_of_d"] = table.lora_rank / hidden_size
    return table


@dataclass(frozen=True)
class SpectraTables:
    """What chapter 13 computes from weights: the yardsticks, the rank of every ΔW, one matrix in detail."""

    reference: pd.DataFrame
    ranks: pd.DataFrame
    detail: MatrixDetail

    def runs(self, method: str) -> list[Any]:
        """The analysed runs of one method, one row each (with `.method`, for the not-run notes)."""
        rows = self.ranks[self.ranks.method == method].drop_duplicates("run_id")
        return list(rows.itertuples(index=False))


def chapter_tables(ch: Chapter, *, threshold: float, spectrum_layer: int, spectrum_module: str) -> SpectraTables:
    """The chapter's three summaries: read from OUT/summaries when stored with these settings (a snapshot),
    else computed from the checkpoints, loading the base once for all three."""
    base = cache(lambda: load_base_fp32(ch.profile))

    def detail() -> pd.DataFrame:
        full = finished_runs(ch.profile, ch.out, method="full")
        d = representative_spectra(ch.profile, ch.out, full, spectrum_layer, spectrum_module, base=base())
        return d.table.assign(title=d.title)

    settings = {"threshold": threshold}
    reference = ch.summary("reference", settings, lambda: reference_ranks(
        ch.profile, threshold=threshold, cache_dir=ch.cache, base=base()))
    ranks = ch.summary("ranks", settings, lambda: chapter_ranks(
        ch.profile, ch.out, threshold=threshold, cache_dir=ch.cache, base=base())[2])
    table = ch.summary("detail", {"layer": spectrum_layer, "module": spectrum_module}, detail)
    title = str(table.title.iloc[0]) if len(table) else "no full fine-tuning run"
    return SpectraTables(reference, ranks, MatrixDetail(table.drop(columns="title"), title))


def missing_note(runs: Iterable[RunSpec]) -> str:
    """The not-run notes for the methods the chapter needs but found no finished run of (empty when none)."""
    return missing_runs_note(runs, RUNS_NEEDED)


def profile_lora_ranks(profile: Profile) -> list[int]:
    """The LoRA ranks the profile plans (what 'typical LoRA ranks' means for this profile)."""
    return sorted({s.lora_rank for s in plan_runs(profile) if s.method == "lora"})


def spectra_verdict(ranks: pd.DataFrame, reference: pd.DataFrame, lora_ranks: Sequence[int]) -> pd.DataFrame:
    """The paper's Fig 6 statements computed on our full-FT ΔW at each run's last checkpoint (None where
    the runs are missing): far above LoRA's ranks, below the base's and a Gaussian's, MLP > attention,
    growing with training."""
    full = ranks[ranks.method == "full"]
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
    # no claim that LoRA's ΔW = BA needs at most rank r: it cannot fail (the contrast figure still shows it)
    return pd.DataFrame(claims)
