"""The paper's released checkpoints (hub organisation LoRA-TMLR-2024), evaluated and analysed without training.

Full fine-tuning repositories hold whole Llama-2-7B models; LoRA repositories hold peft adapters for the
profile's base. How they are published (looked up 2026; configs/released.yaml keeps the addresses): every
model card says intermediate checkpoints are branches of each repository, and the authors said the same in
github.com/danbider/lora-tradeoffs issue #2, but no stored page names a branch. So a profile lists the final
checkpoints (branch `main`), `list_revisions` reads the branch names from the hub, and `revision_entries` turns
them into profile entries by reading durations out of the names (`parse_revision`, the assumed naming forms).
A local copy is used instead of the hub when the profile names a folder, or when $LORASTUDY_RELEASED_DIR holds
`<repo name>` (or `<repo name>@<revision>`). Evaluation prints its memory and time estimate before it starts.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from lorastudy.config import Profile, ReleasedCheckpoint
from lorastudy.evaluation.run import evaluate_model, result_rows
from lorastudy.io import read_json, write_json
from lorastudy.layout import Layout
from lorastudy.perf.estimate import PROMPT_TOKENS, REFERENCE_GPU, checkpoint_eval_seconds, model_size
from lorastudy.perf.memory_model import lora_param_count
from lorastudy.train.modeling import device, load_finetuned, profile_tokenizer, resolve_dtype

MIRROR_ENV = "LORASTUDY_RELEASED_DIR"
# Tokens per optimizer step of both CPT runs: global batch 192 × sequence 4096 (the paper's Appendix A and the
# danbider/lora-tradeoffs README). It agrees with that README's CPT schedule: t_cooldown = 5086 batches is
# 20% of 20e9 / 786,432 = 25,431 batches, the paper's "last 20% of each budget".
CPT_TOKENS_PER_BATCH = 192 * 4096
_SCALE = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
# Assumed naming forms (no branch name is published): "4B-tokens", "tokens-0.25B", "0.5BT" (a token count);
# "ba6357", "step-6357", "ep0-ba6357" (composer's and Trainer's batch counters); "epoch-2", "ep4", "8-epochs".
_TOKENS = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)([kmbgt])(?:[-_]?(?:tok(?:en)?s?|t))?(?![a-z])", re.I)
_BATCHES = re.compile(r"(?:^|[^a-z])(?:ba|batch|batches|step|steps|checkpoint)[-_]?(\d+)(?![\d.])", re.I)
_EPOCHS = re.compile(r"(?:^|[^a-z])ep(?:och)?s?[-_]?(\d+(?:\.\d+)?)(?![\d.])"
                     r"|(?<![\w.])(\d+(?:\.\d+)?)[-_]?ep(?:och)?s?\b", re.I)


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


# ----------------------------------------------------------------------------- intermediate checkpoints
def list_revisions(repo_id: str) -> list[str]:
    """Branch names of a hub repository (the intermediate checkpoints); needs the network."""
    from huggingface_hub import list_repo_refs  # networked: only listing a repository's branches needs it

    return sorted(b.name for b in list_repo_refs(repo_id).branches)


def parse_revision(name: str, regime: str) -> float | None:
    """The training duration a branch name states, in the regime's unit (CPT: tokens, IFT: epochs), or None
    when the name states none we can read (`main`, a hash, an unknown form).

    CPT reads a token count first, else a batch or step counter × CPT_TOKENS_PER_BATCH; IFT reads an epoch
    count only (an IFT batch counter cannot become epochs offline: the packed epoch length is unknown).
    """
    if regime == "cpt":
        if m := _TOKENS.search(name):
            tokens = float(m.group(1)) * _SCALE[m.group(2).lower()]
        elif m := _BATCHES.search(name):
            tokens = float(m.group(1)) * CPT_TOKENS_PER_BATCH
        else:
            return None
        return tokens or None
    m = _EPOCHS.search(name)
    return (float(m.group(1) or m.group(2)) or None) if m else None


def revision_entries(ckpt: ReleasedCheckpoint, branches: Iterable[str]) -> tuple[list[ReleasedCheckpoint],
                                                                                     list[str]]:
    """Profile entries for a repository's branches (its entry with `revision` and the parsed duration),
    shortest first, and the branch names no duration could be read from (`main` is the entry itself)."""
    entries, unread = [], []
    for name in sorted(set(branches)):
        if name == "main":
            continue
        duration = parse_revision(name, ckpt.regime)
        if duration is None:
            unread.append(name)
        else:
            entries.append(ckpt.model_copy(update={"revision": name, "duration": duration}))
    return sorted(entries, key=lambda e: (e.duration or 0, e.revision or "")), unread


def entry_yaml(ckpt: ReleasedCheckpoint) -> str:
    """One `released:` list item in the profile's flow style (unset fields left out)."""
    fields = ckpt.model_dump(mode="json", exclude_none=True)
    return "  - " + yaml.safe_dump(fields, default_flow_style=True, sort_keys=False, width=10_000).strip()


# ----------------------------------------------------------------------------- evaluation
def load_released(profile: Profile, ckpt: ReleasedCheckpoint) -> Any:
    """The checkpoint as a model: a full model, or the base with the adapter (unmerged) for LoRA."""
    source, revision = resolve(ckpt)
    return load_finetuned(profile, ckpt.method, source, revision=revision)


def checkpoint_meta(ckpt: ReleasedCheckpoint) -> dict[str, Any]:
    """The checkpoint columns of a result or rank row (label, duration, unit, tokens seen)."""
    label = f"{ckpt.unit}-{ckpt.duration:g}" if ckpt.duration else "final"
    return {"checkpoint": label, "duration": ckpt.duration, "duration_unit": ckpt.unit,
            "tokens_seen": ckpt.duration if ckpt.unit == "tokens" else None, "step": None}


def evaluation_estimate(profile: Profile, todo: list[ReleasedCheckpoint]) -> str:
    """What evaluating `todo` costs, before anything loads: GPU memory per checkpoint (weights in the profile's
    dtype, a LoRA adapter, the KV cache of the largest generation batch) and time (lorastudy.perf.estimate's model
    of one checkpoint's evaluation on its reference GPU)."""
    size = model_size(profile)
    if size is None:
        return f"estimate: size of {profile.base.model} unknown offline; {len(todo)} checkpoints to evaluate"
    n, shapes = size.n_params, size.shapes
    width = resolve_dtype(profile.base.dtype).itemsize
    kv_per_token = 2 * shapes.n_layers * shapes.modules["k_proj"][0] * width  # keys and values of every layer
    lines, total_s = [f"estimate for {len(todo)} released checkpoints ({size.source}; weights in "
                      f"{profile.base.dtype}):"], 0.0
    for ckpt in todo:
        cfg = profile.eval.learning.get(ckpt.domain)
        kv = (kv_per_token * cfg.batch_size * (PROMPT_TOKENS.get(cfg.dataset.adapter, 150) * (cfg.shots + 1)
                                               + cfg.max_new_tokens)) if cfg else 0
        adapter = lora_param_count(shapes.modules, shapes.n_layers, ckpt.rank) * width if ckpt.rank else 0
        seconds = checkpoint_eval_seconds(profile, [ckpt.domain], n)
        total_s += seconds
        lines.append(f"  {checkpoint_id(ckpt)}: weights {n * width / 1e9:.1f} GB + adapter {adapter / 1e9:.2f} GB "
                     f"+ KV cache {kv / 1e9:.1f} GB (generation batch {cfg.batch_size if cfg else 0}) -> peak "
                     f"~{(n * width + adapter + kv) / 1e9:.0f} GB; ~{seconds / 60:.0f} min on {REFERENCE_GPU}")
    lines.append(f"  total ~{total_s / 3600:.1f} GPU-h on {REFERENCE_GPU} (HumanEval sandbox time not counted)")
    return "\n".join(lines)


def evaluate_released(profile: Profile, out_root: Path, *, progress: bool = True) -> list[dict[str, Any]]:
    """Every released checkpoint on its domain's learning benchmark and on forgetting, as tidy rows carrying
    the run columns of the results table; cached per checkpoint (Layout.released_eval). The estimate of what
    is left to evaluate is printed before the first model loads."""
    todo = [c for c in profile.released if not Layout(out_root).released_eval(checkpoint_id(c)).is_file()]
    if todo:
        print(evaluation_estimate(profile, todo), flush=True)
    tok = profile_tokenizer(profile) if todo else None
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
            seconds = time.perf_counter() - start
            write_json(path, {"model": ckpt.model, "revision": ckpt.revision,
                              "rows": [{**run, **r} for r in result_rows(cid, checkpoint_meta(ckpt), metrics, seconds)],
                              "items": items})
            del model
        rows += read_json(path)["rows"]
    return rows
