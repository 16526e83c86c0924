"""What a profile will cost before any compute: tokens to train and evaluate, and GPU-hours.

GPU-hours come from FLOPs: training costs 6·N FLOPs per token (N parameters; forward and backward), run at a
model-FLOPs utilisation (MFU) of the GPU's dense bf16 peak; LoRA trains ~15% slower than full fine-tuning
(the paper's Fig S10). Evaluation costs 2·N FLOPs per scored token plus, for generation, one decoding step
per new token per batch, each at least a fixed overhead or the time to read the weights from memory.
Every number below says where it comes from; `scripts/gpu_smoke.sh` measures MFU on the machine at hand.
The mini profiles run on CPU and are costed from the tokens/s measured on the 2-core laptop instead.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from lorastudy.config import DatasetSpec, GenerationEval, Profile
from lorastudy.paper import PAPER_LORA_THROUGHPUT_RATIO, PAPER_NODE_GPUS, PAPER_NODE_TOKENS_PER_S
from lorastudy.perf.memory_model import ModelShapes, llama_shapes
from lorastudy.plan import RunSpec
from lorastudy.tuning import runs_expected

# ---------------------------------------------------------------- hardware (NVIDIA data sheets, dense bf16)
GPU_PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # SXM parts; H100 PCIe: 756e12
GPU_MEMORY_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}  # HBM bandwidth (SXM parts)
REFERENCE_GPU = "H100"

# ---------------------------------------------------------------- throughput
# Fig S10 of the paper: Llama-2-7B on one node of 8×H100, whole-node throughput up to ~42.5k tokens/s (full
# FT; ~25k at the slowest settings): 6 × 6.74e9 × 42.5e3 / (8 × 989e12) ≈ 0.22 of peak.
MFU_PAPER_7B = 6 * 6.74e9 * PAPER_NODE_TOKENS_PER_S / (PAPER_NODE_GPUS * 989e12)
# Models below ~3B parameters: an assumption, not a measurement. Their narrow matrices (hidden ≤ 2048) keep
# a GPU busy less well than 7B's; 0.15 is a conservative guess until scripts/gpu_smoke.sh measures it.
MFU_SMALL_MODEL = 0.15
LORA_SLOWDOWN = PAPER_LORA_THROUGHPUT_RATIO  # Fig S10: LoRA's throughput ~15% below full FT's (peft, unoptimised)
CPU_TOKENS_PER_S = 12_000.0  # measured in the pilot: the 0.9M-parameter mini Llama on 2 CPU threads
GENERATION_STEP_S = 0.03  # assumed floor per decoding step of transformers' generate (Python/launch overhead)

# ---------------------------------------------------------------- data (tokens per record)
# Instruction sets: the paper's Appendix A totals (Llama-2 tokenizer) over their sizes; corpora: typical
# document lengths, assumed. Used only when a profile does not say how much data it loads.
DATASET_RECORDS = {"metamathqa": 395_000, "magicoder": 110_000}
TOKENS_PER_RECORD = {"metamathqa": 103e6 / 395_000, "magicoder": 73e6 / 110_000, "openwebmath": 2_300.0,
                     "starcoder_python": 1_500.0}
CORPUS_TOKENS = {"openwebmath": 14.7e9, "starcoder_python": 20e9}  # the paper: OpenWebMath has 14.7B tokens

# Evaluation sets: full sizes of the splits the profiles use, and assumed tokens per item (Llama tokenizer).
EVAL_ITEMS = {"gsm8k": 1319, "humaneval": 164, "hellaswag": 10_042, "arc_challenge": 1172, "winogrande": 1267}
PROMPT_TOKENS = {"gsm8k": 150, "humaneval": 150}  # per problem; a k-shot prompt holds k + 1 of them
CHOICE_TOKENS = {"hellaswag": (4, 100), "arc_challenge": (4, 60), "winogrande": (2, 40)}  # (options, tokens)

# ---------------------------------------------------------------- model sizes
# config.json of each hub model (hidden, intermediate, layers, kv heads, head dim, vocab, tied embeddings),
# so that a dry run needs no download; a local folder's own config.json is read instead.
KNOWN_MODELS = {
    "meta-llama/Llama-2-7b-hf": (4096, 11008, 32, 32, 128, 32000, False),
    "Qwen/Qwen2.5-0.5B": (896, 4864, 24, 2, 64, 151936, True),
    "HuggingFaceTB/SmolLM2-360M": (960, 2560, 32, 5, 64, 49152, True),
}
MINI_VOCAB = 1000  # the mini tokenizers have ~460-820 tokens; an upper bound is enough here


@dataclass(frozen=True)
class ModelSize:
    """Shapes and parameter count of a profile's base model, and where they come from."""

    shapes: ModelShapes
    n_params: int
    source: str


def _size(shapes: ModelShapes, tied: bool, source: str) -> ModelSize:
    return ModelSize(shapes, shapes.n_params - (shapes.vocab * shapes.hidden if tied else 0), source)


def model_size(profile: Profile) -> ModelSize | None:
    """The base model's size from the profile (mini), a local config.json, or KNOWN_MODELS; None if unknown."""
    b = profile.base
    if b.kind == "mini":
        a = b.architecture
        return _size(llama_shapes(a.hidden_size, a.intermediate_size, a.num_layers, a.num_heads,
                                  a.hidden_size // a.num_heads, MINI_VOCAB), True, "the profile's architecture")
    config = Path(str(b.model)) / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        heads = c["num_attention_heads"]
        shapes = llama_shapes(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
                              c.get("num_key_value_heads", heads), c.get("head_dim") or c["hidden_size"] // heads,
                              c["vocab_size"])
        return _size(shapes, bool(c.get("tie_word_embeddings", False)), str(config))
    if b.model in KNOWN_MODELS:
        hidden, inter, layers, kv, head_dim, vocab, tied = KNOWN_MODELS[b.model]
        return _size(llama_shapes(hidden, inter, layers, kv, head_dim, vocab), tied, f"{b.model} config.json")
    return None


def mfu(n_params: float) -> tuple[float, str]:
    """Assumed model-FLOPs utilisation of training for a model of this size, with its source."""
    if n_params >= 3e9:
        return MFU_PAPER_7B, "paper Fig S10 (Llama-2-7B, 8xH100, ~42.5k tokens/s per node)"
    return MFU_SMALL_MODEL, "assumed for models < 3B (measure with scripts/gpu_smoke.sh)"


def training_tokens_per_s(n_params: float, method: str, gpu: str = REFERENCE_GPU) -> float:
    """Tokens per second per GPU: MFU × peak / 6N, times LoRA's slowdown."""
    rate = mfu(n_params)[0] * GPU_PEAK_BF16_FLOPS[gpu] / (6 * n_params)
    return rate * (LORA_SLOWDOWN if method == "lora" else 1.0)


# ---------------------------------------------------------------- tokens
def data_tokens(spec: DatasetSpec, seq_len: int | None = None) -> float | None:
    """Tokens a training set holds once loaded (IFT examples truncated at seq_len); None if unknown."""
    per = TOKENS_PER_RECORD.get(spec.adapter)
    if per is None:
        return None
    if seq_len:
        per = min(per, seq_len)
    if spec.limit:
        return spec.limit * per
    n = DATASET_RECORDS.get(spec.adapter)
    return n * per if n else CORPUS_TOKENS.get(spec.adapter)


def run_tokens(profile: Profile, spec: RunSpec) -> float | None:
    """Tokens one run trains on: its last CPT duration, or epochs × tokens per epoch."""
    last = profile.training.durations[spec.regime][-1]
    if spec.regime == "cpt":
        return last
    seq = profile.training.for_task(spec.domain, spec.regime).seq_len
    per_epoch = data_tokens(profile.data[spec.domain][spec.regime], seq)
    return None if per_epoch is None else last * per_epoch


# ---------------------------------------------------------------- evaluation
def _items(spec: DatasetSpec) -> int:
    full = EVAL_ITEMS.get(spec.adapter, spec.limit or 0)
    return min(full, spec.limit) if spec.limit else full


def generation_seconds(cfg: GenerationEval, n_params: float, gpu: str = REFERENCE_GPU) -> float:
    """Prefill FLOPs plus decoding steps (each the larger of the overhead floor and one read of bf16 weights)."""
    adapter = cfg.dataset.adapter
    sequences = _items(cfg.dataset) * cfg.n_samples
    prompt = PROMPT_TOKENS.get(adapter, 150) * (cfg.shots + 1)
    prefill = 2 * n_params * prompt * _items(cfg.dataset) / (mfu(n_params)[0] * GPU_PEAK_BF16_FLOPS[gpu])
    step = max(GENERATION_STEP_S, 2 * n_params / GPU_MEMORY_BYTES_PER_S[gpu])
    return prefill + math.ceil(sequences / cfg.batch_size) * cfg.max_new_tokens * step


def forgetting_seconds(profile: Profile, n_params: float, gpu: str = REFERENCE_GPU) -> float:
    """Multiple choice: 2N FLOPs per scored token (k-shot contexts included) at the training MFU."""
    tokens = 0.0
    for cfg in profile.eval.forgetting.values():
        options, per = CHOICE_TOKENS.get(cfg.dataset.adapter, (4, 80))
        tokens += _items(cfg.dataset) * options * per * (cfg.shots + 1)
    return 2 * n_params * tokens / (mfu(n_params)[0] * GPU_PEAK_BF16_FLOPS[gpu])


def checkpoint_eval_seconds(profile: Profile, domains: list[str], n_params: float) -> float:
    """One checkpoint's evaluation: learning on `domains` and every forgetting set (sandbox time not counted)."""
    learning = sum(generation_seconds(profile.eval.learning[d], n_params) for d in domains
                   if d in profile.eval.learning)
    return learning + forgetting_seconds(profile, n_params)


# ---------------------------------------------------------------- report
def _gpu_estimate(profile: Profile, size: ModelSize) -> list[str]:
    n = size.n_params
    rate, source = mfu(n)
    runs = runs_expected(profile)
    lines = [f"  base {profile.base.model}: {n / 1e9:.2f}B parameters ({size.source})",
             f"  on {REFERENCE_GPU} ({GPU_PEAK_BF16_FLOPS[REFERENCE_GPU] / 1e12:.0f} TFLOPS bf16 dense): "
             f"MFU {rate:.2f} - {source}"]
    if runs:
        lines.append(f"  training: full FT {training_tokens_per_s(n, 'full'):,.0f} tokens/s per GPU, "
                     f"LoRA x{LORA_SLOWDOWN} (paper Fig S10)")
    train_h = 0.0
    for domain in ("code", "math"):
        for regime in ("cpt", "ift"):
            group = [r for r in runs if (r.domain, r.regime) == (domain, regime)]
            if not group:
                continue
            hours = [(run_tokens(profile, r) or math.nan) / training_tokens_per_s(n, r.method) / 3600 for r in group]
            tokens = run_tokens(profile, group[0])
            size_txt = f"{tokens / 1e6:,.0f}M tokens" if tokens else "unknown tokens"
            lines.append(f"  {domain} {regime}: {len(group)} runs x {size_txt} -> {sum(hours):,.1f} GPU-h")
            train_h += sum(hours)
    n_ckpts = sum(len(profile.training.durations[r.regime]) for r in runs)
    eval_s = sum(len(profile.training.durations[r.regime]) * checkpoint_eval_seconds(profile, [r.domain], n)
                 for r in runs)
    eval_s += checkpoint_eval_seconds(profile, list(profile.eval.learning), n)  # the base model, once
    for ckpt in profile.released:
        eval_s += checkpoint_eval_seconds(profile, [ckpt.domain], n)
        lines.append(f"  released {ckpt.model}{'@' + ckpt.revision if ckpt.revision else ''}: "
                     f"{ckpt.method}{' r' + str(ckpt.rank) if ckpt.rank else ''}, {ckpt.domain} {ckpt.regime}")
    evaluated = n_ckpts + 1 + len(profile.released)
    gpus = profile.training.num_processes
    eval_h = eval_s / 3600
    lines += [f"  evaluation: {evaluated} checkpoints (base included) -> {eval_h:,.1f} GPU-h (generation at >= "
              f"{GENERATION_STEP_S * 1e3:.0f} ms/step, assumed; HumanEval sandbox time not counted)",
              f"  total ~{train_h + eval_h:,.1f} GPU-h; ~{train_h / gpus + eval_h:,.1f} h wall with {gpus} "
              f"GPU{'s' if gpus > 1 else ''} (evaluation runs on one)"]
    return lines


def _cpu_estimate(profile: Profile) -> list[str]:
    runs = runs_expected(profile)
    lines = []
    for regime in ("cpt", "ift"):
        rs = [r for r in runs if r.regime == regime]
        if rs:
            unit = "tokens" if regime == "cpt" else "epochs"
            lines.append(f"  {regime}: {len(rs)} runs x {profile.training.durations[regime][-1]:g} {unit}")
    cpt_tokens = sum(profile.training.durations["cpt"][-1] for r in runs if r.regime == "cpt")
    lines.append(f"  CPT training alone: {cpt_tokens:,.0f} tokens ~ {cpt_tokens / CPU_TOKENS_PER_S / 3600:.2f} h "
                 f"at {CPU_TOKENS_PER_S:,.0f} tok/s (measured, 2 CPU threads)")
    return lines


def estimate_text(profile: Profile) -> str:
    """The dry run's cost block: CPU time for the mini profiles, GPU-hours with their sources otherwise."""
    if profile.base.kind == "mini":
        return "estimate:\n" + "\n".join(_cpu_estimate(profile))
    size = model_size(profile)
    if size is None:
        return (f"estimate: size of {profile.base.model} unknown offline (not a local folder, not in "
                f"lorastudy.perf.estimate.KNOWN_MODELS); no GPU-hours")
    return "estimate:\n" + "\n".join(_gpu_estimate(profile, size))
