"""The base model's source, and the mini base: a word-level tokenizer and a small Llama pre-trained on the
mini world, built once and cached.

It stands in for Llama-2-7B: it must *know* the source domain (facts about people) before fine-tuning,
so that forgetting can be measured; its source multiple-choice accuracy is printed and stored.

The repository ships the mini base the committed results were fine-tuned from (resources/bases/, with the
fingerprint of the world it was pre-trained on and a checksum per file). Another CPU rounds pre-training's sums
differently, and 1,442 steps turn that into another base model that moves many verdicts; so a fresh
clone whose generated world is the same fine-tunes the shipped weights, and `lorastudy base mini --rebuild`
pre-trains them here instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, set_seed

from lorastudy.config import Profile
from lorastudy.data.examples import pack_cpt
from lorastudy.data.sources import load_spec, world_dir
from lorastudy.data.tokenizer import build_tokenizer
from lorastudy.evaluation.choice import score_choice
from lorastudy.io import config_hash, file_sha256, read_jsonl, write_json
from lorastudy.layout import TRAINER_DIR, base_cache
from lorastudy.train.training import fit, training_arguments

BASE_VERSION = 1  # bump when the mini base recipe changes, so cached bases are rebuilt
SHIPPED = Path(__file__).parents[1] / "resources" / "bases"  # mini bases shipped with the code, by cache key
MANIFEST = "shipped.json"
PRETRAINED_HERE = "pretrained-here"  # marks a cached base pre-trained on this machine (kept over the shipped one)
log = logging.getLogger(__name__)


def mini_base_dir(profile: Profile, index: int = 0) -> Path:
    """Cache folder of mini base `index` (pre-trained from seed `index`), keyed by everything that shapes it."""
    b = profile.base
    recipe = [BASE_VERSION, b.world.model_dump(), b.architecture.model_dump(), b.pretrain.model_dump()]
    return base_cache(config_hash(recipe if index == 0 else [*recipe, {"seed": index}]))  # base 0 keeps its key


def base_id(profile: Profile, index: int = 0) -> str:
    """A base's name in results (`base_id`): the mini base's cache key, or the pretrained model's id."""
    return mini_base_dir(profile, index).name if profile.base.kind == "mini" else str(profile.base.model)


def base_record(profile: Profile, index: int = 0) -> dict[str, Any]:
    """What a run records of the base it fine-tunes: index, id and the sha256 of its weights (None for a hub
    model), so that a sweep can refuse runs fine-tuned from weights that are no longer the base."""
    weights = Path(base_source(profile, index=index)) / "model.safetensors"
    return {"index": index, "id": base_id(profile, index),
            "sha256": file_sha256(weights) if weights.is_file() else None}


def base_source(profile: Profile, *, rebuild: bool = False, index: int = 0) -> str:
    """Hub id or local folder of base `index`: the mini base from the cache, else the shipped one if it was
    pre-trained on this world, else (or with `rebuild`) pre-trained here."""
    if profile.base.kind == "pretrained":
        return str(profile.base.model)
    if not 0 <= index < profile.base.count:
        raise ValueError(f"profile {profile.name!r} has {profile.base.count} base(s): no base {index}")
    path = mini_base_dir(profile, index)
    cached = (path / "base.json").is_file()
    if cached and not rebuild and ((path / MANIFEST).is_file() or (path / PRETRAINED_HERE).is_file()):
        return str(path)  # installed or pre-trained here: no checksum on this path, every model load takes it
    shipped = None if rebuild else shipped_base(profile, index)  # checked once: it hashes the world and the weights
    if shipped is not None:
        if cached:  # a cache from before bases shipped: the shipped one replaces it
            log.warning("mini base: replacing a cached base pre-trained here before bases shipped with the shipped "
                        "one (`lorastudy base mini --rebuild` pre-trains it here)")
        install(shipped, path)
        return str(path)
    if rebuild or not cached:
        build_mini_base(profile, path, seed=index)
    (path / PRETRAINED_HERE).write_text("pre-trained on this machine, not the shipped base\n")
    return str(path)


def world_fingerprint(world: Path) -> str:
    """One checksum of the world's text files (what the tokenizer and pre-training read)."""
    digest = hashlib.sha256()
    for f in sorted(world.glob("*.jsonl")):
        digest.update(f"{f.name}\0{file_sha256(f)}\0".encode())
    return digest.hexdigest()


def shipped_base(profile: Profile, index: int = 0) -> Path | None:
    """The shipped mini base of this recipe, if there is one and it was pre-trained on the world this machine
    generates (else fine-tuning would read it with another tokenizer); a file that fails its checksum is an error."""
    folder = SHIPPED / mini_base_dir(profile, index).name
    if not (folder / MANIFEST).is_file():
        return None
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest["world"] != world_fingerprint(world_dir(profile)):
        log.warning("the shipped mini base was pre-trained on another world than the one generated here: "
                    "pre-training it here")
        return None
    bad = sorted(name for name, digest in manifest["files"].items() if file_sha256(folder / name) != digest)
    if bad:
        raise ValueError(f"shipped base {folder}: {bad} fail their checksums (a damaged checkout?)")
    return folder


def install(shipped: Path, out: Path) -> None:
    """Copy a shipped base into the cache atomically (beside, then renamed)."""
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(shipped, tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log.info("mini base: the shipped one (%s)", shipped.name)


def ship(profile: Profile, commit: str, index: int = 0) -> Path:
    """Put the cached mini base into resources/bases/ with its world's fingerprint, a checksum per file and where
    it was built (a maintainer's step, after `base --rebuild`, when the recipe or the world changes)."""
    built = Path(base_source(profile, index=index))
    if (built / MANIFEST).is_file():
        raise ValueError(f"{built} is the shipped base, not one pre-trained here: `lorastudy base "
                         f"{profile.name} --rebuild --ship`")
    folder = SHIPPED / built.name
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(built, tmp, ignore=shutil.ignore_patterns(MANIFEST, PRETRAINED_HERE))
    info = json.loads((tmp / "base.json").read_text())
    write_json(tmp / "base.json", {**info, "world": Path(info["world"]).name})  # no path of the building machine
    files = {f.name: file_sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
    write_json(tmp / MANIFEST, {"world": world_fingerprint(world_dir(profile)), "files": files, "built_by": commit,
                                "torch": torch.__version__, "machine": platform.machine(), "processor": _cpu_model()})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def base_info(profile: Profile, index: int = 0) -> dict[str, Any]:
    """What the mini base's build recorded (base.json: size, tokens, time, loss curve, source accuracy; and for a
    shipped base where it was built), or just the source of a pretrained base."""
    src = Path(base_source(profile, index=index))
    if not (src / "base.json").is_file():
        return {"source": str(src)}
    info = json.loads((src / "base.json").read_text())
    if (src / MANIFEST).is_file():
        shipped = json.loads((src / MANIFEST).read_text())
        info.update(shipped_by=shipped["built_by"], built_on=shipped["processor"])
    return info


def strings(obj: Any) -> list[str]:
    """Every string inside a JSON row (what the tokenizer and pre-training read of the world's files)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return []


def world_texts(world: Path) -> list[str]:
    """Every string in every file of the world: the tokenizer's closed vocabulary."""
    return [s for f in sorted(world.glob("*.jsonl")) for row in read_jsonl(f, allow_empty=True) for s in strings(row)]


def build_mini_base(profile: Profile, out: Path, *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Tokenizer + Llama pre-trained on `pretrain.jsonl` from `seed` (initialisation and data order); saved
    atomically to `out` with base.json."""
    arch, pre = profile.base.architecture, profile.base.pretrain
    world = world_dir(profile)
    tok = build_tokenizer(world_texts(world))
    texts = [r["text"] for r in read_jsonl(world / "pretrain.jsonl", required=("text",))]
    set_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    examples = pack_cpt(texts, tok, pre.seq_len)
    steps = max(1, math.ceil(pre.epochs * len(examples) / pre.batch_size))
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    args = training_arguments(tmp, lr=pre.learning_rate, batch=pre.batch_size, accum=1, max_steps=steps, seed=seed,
                              schedule="cosine", profile=profile, weight_decay=pre.weight_decay, progress=progress,
                              warmup_ratio=pre.warmup_ratio)
    start = time.perf_counter()
    ckpt = fit(model, examples, out=tmp, args=args, pad_id=tok.pad_token_id, at_steps={}, unit="tokens")
    wall = time.perf_counter() - start
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(tmp / TRAINER_DIR, ignore_errors=True)
    summary = {
        "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tok),
        "pretrain_tokens": ckpt.tokens_seen, "steps": steps, "wall_time_s": wall,
        "tokens_per_s": ckpt.tokens_seen / wall, "final_loss": next(
            (h["loss"] for h in reversed(ckpt.log_history) if "loss" in h), None),
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in ckpt.log_history if "loss" in h],
        "world": world.name, "seed": seed, "source_mc": source_mc_accuracy(profile, model, tok),
    }
    write_json(tmp / "base.json", summary)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    if progress:
        print(json.dumps({k: summary[k] for k in ("parameters", "pretrain_tokens", "wall_time_s", "source_mc")}, indent=1))
    return summary


@torch.no_grad()
def source_mc_accuracy(profile: Profile, model: torch.nn.Module, tok: Any) -> dict[str, float]:
    """Accuracy on the profile's forgetting sets: the base must know the source domain far above chance."""
    model.eval()
    return {name: score_choice(model, tok, load_spec(profile, cfg.dataset), shots=cfg.shots,
                               batch_size=profile.eval.batch_size, progress=False)[cfg.metric]
            for name, cfg in profile.eval.forgetting.items()}
