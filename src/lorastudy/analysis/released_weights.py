"""The `released` profile's weight analysis (the paper's Figs 6 and S7 on Llama-2-7B's own matrices): for the
released full fine-tuning checkpoints, ΔW = W_ft − W_base of chosen matrices, its singular values and the
rank explaining 90% of Σσ², beside the base matrix's and a same-shape Gaussian's.

The paper's facts it is set against (arXiv 2405.09673 v2): Fig S7 shows layer 26's W_q of code CPT full FT,
where W_base, W_ft and ΔW all need rank > 1500 of 4096; Fig 6 shows that rank per layer and module for each
token budget (0.25B–20B), growing with training, MLP above attention. The budgets need the intermediate
checkpoints (branches: see lorastudy.evaluation.released), so with `main` only Fig 6 has one budget.

Only the matrices asked for are read, one pair at a time: the shard index (model.safetensors.index.json, as
Llama-2-7b-hf and the released full-FT repositories ship it) names the shard of each weight, and
safetensors.safe_open reads that one tensor from it. From the hub the shards holding them are downloaded
whole first (hf_hub_download: the format is read from files, not from byte ranges). SVDs run in fp32 on the
analysis device; the estimate of bytes, memory and time is printed before any weight is read.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import safe_open
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from lorastudy.analysis import linalg, spectra
from lorastudy.analysis.checkpoints import CKPT_FIELDS, RUN_FIELDS
from lorastudy.config import ATTENTION_MODULES, Profile, ReleasedCheckpoint
from lorastudy.evaluation.released import checkpoint_id, checkpoint_meta, resolve
from lorastudy.io import read_json
from lorastudy.perf.estimate import model_size
from lorastudy.train.base import base_source
from lorastudy.train.modeling import device

__all__ = ["PAPER_LAYER", "PAPER_MODULE", "WeightFolder", "matrix_name", "full_checkpoints", "svd_seconds",
           "weights_estimate", "ReleasedSpectra", "released_weights"]

PAPER_LAYER, PAPER_MODULE = 26, "q_proj"  # Fig S7's matrix
STORED_BYTES = 2  # a weight on disk: the full-FT repositories' three shards hold 13.48 GB for 6.74B parameters
# fp32 torch.linalg.svdvals, 2 threads, measured once on this project's 2-core CPU host (torch 2.13 CPU,
# 2026-12): 4096×4096 took 7.3–7.8 s, 11008×4096 9.2–10.5 s; the call's peak memory was one more copy of the
# matrix (+72 MiB over a 64 MiB input, +188 over 172).
SVD_SECONDS = {(4096, 4096): 7.6, (11008, 4096): 9.9}
SVD_WORKSPACE = 1.1  # × the fp32 matrix


def matrix_name(layer: int, module: str) -> str:
    """The weight's name in a Hugging Face Llama checkpoint, e.g. model.layers.26.self_attn.q_proj.weight."""
    block = "self_attn" if module in ATTENTION_MODULES else "mlp"
    return f"model.layers.{layer}.{block}.{module}.weight"


class WeightFolder:
    """One checkpoint's safetensors weights (a local folder, or a hub id at a revision), read one tensor at a
    time; `read_names` records what was read (never the whole model)."""

    def __init__(self, source: str, revision: str | None = None) -> None:
        self.source, self.revision = source, revision
        self.read_names: list[str] = []
        self._map: dict[str, str] | None = None

    def _file(self, filename: str) -> Path:
        if Path(self.source).is_dir():
            return Path(self.source) / filename
        return Path(hf_hub_download(self.source, filename, revision=self.revision))  # cached after the first

    def weight_map(self) -> dict[str, str]:
        """Weight name -> shard file, from the shard index, else from a single model.safetensors."""
        if self._map is None:
            try:
                self._map = read_json(self._file(SAFE_WEIGHTS_INDEX_NAME))["weight_map"]
            except (FileNotFoundError, EntryNotFoundError):  # an unsharded checkpoint: one model.safetensors
                self._map = self._single_file_map()
        return self._map

    def _single_file_map(self) -> dict[str, str]:
        with safe_open(self._file(SAFE_WEIGHTS_NAME), framework="pt") as f:
            return dict.fromkeys(f.keys(), SAFE_WEIGHTS_NAME)

    def read(self, name: str) -> torch.Tensor:
        """One tensor as stored (its dtype), memory-mapped from its shard."""
        shard = self.weight_map().get(name)
        if shard is None:
            raise KeyError(f"{name} is not in {self.source}{'@' + self.revision if self.revision else ''}")
        with safe_open(self._file(shard), framework="pt") as f:
            tensor = f.get_tensor(name)
        self.read_names.append(name)
        return tensor


def full_checkpoints(profile: Profile, only: Sequence[str] = ()) -> list[ReleasedCheckpoint]:
    """The profile's full-FT checkpoints (the analysis' subject; a LoRA ΔW = BA has rank ≤ r by construction),
    those whose id or repository contains one of `only` when given."""
    full = [c for c in profile.released if c.method == "full"]
    return [c for c in full if not only or any(o in checkpoint_id(c) or o in c.model for o in only)]


def _run_fields(ckpt: ReleasedCheckpoint) -> dict[str, Any]:
    """The run columns of a rank table (lorastudy.analysis.checkpoints.RUN_FIELDS) for a released checkpoint:
    the learning rate from its repository name (`...-lr-1e-05-...`, else NaN), the paper's optimizer (LionW)."""
    lr = re.search(r"-lr-(\d+(?:\.\d+)?e-?\d+)", ckpt.model)
    return {**dict.fromkeys(RUN_FIELDS), "run_id": checkpoint_id(ckpt), "arm": "released", "domain": ckpt.domain,
            "regime": ckpt.regime, "method": ckpt.method, "learning_rate": float(lr.group(1)) if lr else float("nan"),
            "optimizer": "lion"}


# ----------------------------------------------------------------------------- the estimate
def svd_seconds(shape: tuple[int, int]) -> float:
    """fp32 singular values of a matrix on this project's CPU host: the two measured shapes (SVD_SECONDS), and
    between or beyond them n³ for the square part plus (m − n)·n² for a tall one's extra rows."""
    n, m = min(shape), max(shape)
    square = SVD_SECONDS[(4096, 4096)]
    tall = (SVD_SECONDS[(11008, 4096)] - square) / ((11008 - 4096) * 4096**2)
    return square * (n / 4096) ** 3 + tall * (m - n) * n**2


def weights_estimate(profile: Profile, ckpts: Sequence[ReleasedCheckpoint], pairs: Sequence[tuple[int, str]],
                     detail: tuple[int, str]) -> str:
    """Bytes read, peak memory and time of `released_weights`, from the base's shapes alone (no weight read)."""
    size = model_size(profile)
    if size is None:
        return f"estimate: shapes of {profile.base.model} unknown offline; {len(pairs)} matrices x {len(ckpts)}"
    shapes = {p: size.shapes.modules[p[1]] for p in pairs}
    per_matrix = {p: s[0] * s[1] * STORED_BYTES for p, s in shapes.items()}
    read = sum(per_matrix.values()) * (1 + len(ckpts))
    biggest = max(s[0] * s[1] for s in shapes.values()) * 4
    svds = [shapes[p] for p in pairs] * (1 + len(ckpts)) + list(set(shapes.values())) + [shapes[detail]] * len(ckpts)
    hub = [c.model for c in ckpts if not Path(resolve(c)[0]).is_dir()]
    base_hub = not Path(base_source(profile)).is_dir()
    lines = [f"estimate for the weight analysis ({size.source}), before any weight is read:",
             f"  {len(ckpts)} full-FT checkpoint(s) x {len(pairs)} matrices; detail (Fig S7) of layer {detail[0]} "
             f"{detail[1]} {shapes[detail][0]}x{shapes[detail][1]}",
             f"  reads {per_matrix[detail] / 1e6:.1f} MB per matrix and checkpoint ({STORED_BYTES} bytes a weight), "
             f"{read / 1e9:.2f} GB in all (base once, each checkpoint once)"]
    if hub or base_hub:
        lines.append(f"  from the hub ({len(hub)} checkpoint(s){' and the base' if base_hub else ''}): the shards "
                     "holding these matrices download whole first (up to 13.5 GB per model)")
    lines += [f"  peak memory ~{biggest * (3 + SVD_WORKSPACE) / 2**20:,.0f} MiB (W_base, W_ft, ΔW in fp32 and the "
              f"SVD's workspace, {SVD_WORKSPACE}x the matrix, measured)",
              f"  {len(svds)} SVDs ~{sum(svd_seconds(s) for s in svds) / 60:.1f} min at the measured CPU speed "
              f"(fp32, 2 threads: 4096x4096 {SVD_SECONDS[(4096, 4096)]} s, 11008x4096 "
              f"{SVD_SECONDS[(11008, 4096)]} s){'; on this GPU far less' if device().type == 'cuda' else ''}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the analysis
@dataclass(frozen=True)
class ReleasedSpectra:
    """Fig S7's spectra (long: run_id, checkpoint, duration, matrix W_base/W_ft/ΔW/Gaussian, index, sigma,
    explained) for the detail matrix, Fig 6's rank of ΔW per (checkpoint, layer, module) with the run columns
    of a rank table, and the base's and a Gaussian's rank90 per (layer, module)."""

    detail: pd.DataFrame
    ranks: pd.DataFrame
    reference: pd.DataFrame
    layer: int
    module: str

    def spectra_of(self, run_id: str) -> pd.DataFrame:
        """One checkpoint's four spectra, as lorastudy.figures.spectra.plot_matrix_spectra draws them."""
        return self.detail[self.detail.run_id == run_id].reset_index(drop=True)

    def detail_ranks(self) -> pd.DataFrame:
        """Per checkpoint and matrix: the rank reaching the threshold and its fraction of min(shape)."""
        threshold = float(self.ranks.threshold.iloc[0]) if len(self.ranks) else 0.9
        parts = [spectra.spectrum_ranks(g, threshold).reset_index().assign(run_id=rid)
                 for rid, g in self.detail.groupby("run_id", sort=False)]
        return pd.concat(parts, ignore_index=True)[["run_id", "matrix", "rank90", "min_shape", "of_min_shape"]]


def released_weights(profile: Profile, *, layer: int = PAPER_LAYER, module: str = PAPER_MODULE,
                     pairs: Iterable[tuple[int, str]] = (), only: Sequence[str] = (), threshold: float = 0.9,
                     seed: int = 0, printer: Callable[[str], Any] = print) -> ReleasedSpectra:
    """Figs 6 and S7 for the profile's full-FT checkpoints (or those matching `only`): every (layer, module)
    of `pairs` and the detail matrix (layer, module) always. Every spectrum is computed once, each weight read
    once, one base matrix and one fine-tuned matrix in memory at a time."""
    ckpts = full_checkpoints(profile, only)
    if not ckpts:
        raise ValueError(f"profile {profile.name!r} lists no full fine-tuning checkpoint"
                         + (f" matching {list(only)}" if only else ""))
    detail = (layer, module)
    todo = [detail, *(p for p in dict.fromkeys(pairs) if p != detail)]
    printer(weights_estimate(profile, ckpts, todo, detail))
    base = WeightFolder(base_source(profile), profile.base.revision)
    tuned = {checkpoint_id(c): WeightFolder(*resolve(c)) for c in ckpts}
    dev, gauss = device(), {}
    frames, ranks, reference = [], [], []
    for lay, mod in todo:
        name = matrix_name(lay, mod)
        w0 = base.read(name).to(dev, torch.float32)
        shape = (int(w0.shape[0]), int(w0.shape[1]))
        s_base = linalg.singular_values(w0)
        if shape not in gauss:
            gauss[shape] = linalg.singular_values(linalg.gaussian_like(shape, seed).to(dev))
        reference.append(spectra.reference_row(lay, mod, shape, linalg.rank_for_variance(s_base, threshold),
                                               linalg.rank_for_variance(gauss[shape], threshold)))
        for ckpt in ckpts:
            cid = checkpoint_id(ckpt)
            w1 = tuned[cid].read(name).to(dev, torch.float32)
            s_delta = linalg.singular_values(w1 - w0)
            meta = checkpoint_meta(ckpt)
            ranks.append({**_run_fields(ckpt), **meta, **linalg.spectrum_row(lay, mod, shape, s_delta, threshold),
                          "n_out": shape[0], "n_in": shape[1]})
            if (lay, mod) == detail:
                named = [("W_base", s_base), ("W_ft", linalg.singular_values(w1)), ("ΔW", s_delta),
                         ("Gaussian", gauss[shape])]
                frames.append(spectra.spectra_frame(named).assign(run_id=cid, checkpoint=meta["checkpoint"],
                                                                  duration=ckpt.duration, layer=lay, module=mod))
            del w1
        del w0
    cols = [*RUN_FIELDS, *CKPT_FIELDS, "layer", "module", "module_type", "n_out", "n_in", "threshold", "rank90",
            "rank90_fraction", "frobenius"]
    return ReleasedSpectra(pd.concat(frames, ignore_index=True), pd.DataFrame(ranks, columns=cols),
                           pd.DataFrame(reference), layer, module)
