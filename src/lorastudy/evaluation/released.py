"""The paper's released checkpoints (hub organisation LoRA-TMLR-2024), evaluated and analysed without training.

Full fine-tuning repositories hold whole Llama-2-7B models; LoRA repositories hold peft adapters for the
profile's base. The model cards say intermediate checkpoints are branches of each repository but do not name
them, so a profile lists the final checkpoints (branch `main`) and `list_revisions` reads the branch names from
the hub for a profile to add as `revision`. A local copy is used instead of the hub when the profile names a
folder, or when $LORASTUDY_RELEASED_DIR holds `<repo name>` (or `<repo name>@<revision>`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lorastudy.config import Profile, ReleasedCheckpoint
from lorastudy.evaluation.run import evaluate_model, result_rows
from lorastudy.io import read_json, write_json
from lorastudy.layout import Layout
from lorastudy.modeling import device, load_finetuned, profile_tokenizer

MIRROR_ENV = "LORASTUDY_RELEASED_DIR"


def checkpoint_id(ckpt: ReleasedCheckpoint) -> str:
    """A stable id in the style of run ids: released-DOMAIN-REGIME-METHOD[-rRANK]-REVISION."""
    rank = f"-r{ckpt.rank}" if ckpt.rank else ""
    return f"released-{ckpt.domain}-{ckpt.regime}-{ckpt.method}{rank}-{ckpt.revision or 'main'}"


def resolve(ckpt: ReleasedCheckpoint) -> tuple[str, str | None]:
    """(where to load from, hub revision): a local folder (revision None) or the hub id at its revision."""
    if Path(ckpt.model).expanduser().is_dir():
        return str(Path(ckpt.model).expanduser()), None
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        name = ckpt.model.rsplit("/", 1)[-1]
        copy = Path(mirror) / (f"{name}@{ckpt.revision}" if ckpt.revision else name)
        if copy.is_dir():
            return str(copy), None
    return ckpt.model, ckpt.revision


def list_revisions(repo_id: str) -> list[str]:
    """Branch names of a hub repository (the intermediate checkpoints); needs the network."""
    from huggingface_hub import list_repo_refs  # networked: only listing a repository's branches needs it

    return sorted(b.name for b in list_repo_refs(repo_id).branches)


def load_released(profile: Profile, ckpt: ReleasedCheckpoint) -> Any:
    """The checkpoint as a model: a full model, or the base with the adapter (unmerged) for LoRA."""
    source, revision = resolve(ckpt)
    return load_finetuned(profile, ckpt.method, source, revision=revision)


def _meta(ckpt: ReleasedCheckpoint) -> dict[str, Any]:
    label = f"{ckpt.unit}-{ckpt.duration:g}" if ckpt.duration else "final"
    return {"checkpoint": label, "duration": ckpt.duration, "duration_unit": ckpt.unit,
            "tokens_seen": ckpt.duration if ckpt.unit == "tokens" else None, "step": None}


def evaluate_released(profile: Profile, out_root: Path, *, progress: bool = True) -> list[dict[str, Any]]:
    """Every released checkpoint on its domain's learning benchmark and on forgetting, as tidy rows carrying
    the run columns of the results table; cached per checkpoint (Layout.released_eval)."""
    tok = profile_tokenizer(profile)
    rows: list[dict[str, Any]] = []
    for ckpt in profile.released:
        cid = checkpoint_id(ckpt)
        path = Layout(out_root).released_eval(cid)
        if not path.is_file():
            model = load_released(profile, ckpt).to(device())
            start = time.perf_counter()
            metrics, items = evaluate_model(model, tok, profile, domains=[ckpt.domain], progress=progress,
                                            out_dir=path.parent)
            run = {"domain": ckpt.domain, "regime": ckpt.regime, "method": ckpt.method, "lora_rank": ckpt.rank,
                   "lora_alpha": ckpt.alpha, "arm": "released", "status": "completed"}
            write_json(path, {"model": ckpt.model, "revision": ckpt.revision,
                              "rows": [{**run, **r} for r in result_rows(cid, _meta(ckpt), metrics,
                                                                   time.perf_counter() - start)],
                              "items": items})
            del model
        rows += read_json(path)["rows"]
    return rows
