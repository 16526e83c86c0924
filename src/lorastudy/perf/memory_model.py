"""Analytical training-memory model of the paper's Appendix H (Tables S14–S16), plus exact LoRA sizes.

Model states only, as in the paper: everything trained is kept in fp32 (4-byte master weights,
4-byte gradients, optimizer moments: 8 bytes for Adam's two, 4 for Lion's one); LoRA's frozen base
weights are stored in `frozen_dtype_bytes` (bf16 = 2). FSDP shards every state evenly over the GPUs.
GB means 1e9 bytes, as the paper's tables do. The paper's printed numbers live in `lorastudy.paper`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lorastudy.config import TARGET_MODULES
from lorastudy.paper import PAPER_LORA_FRACTION, PAPER_PARAMS

GB = 1e9
FP32_BYTES = 4
OPTIMIZER_BYTES = {"adam": 8, "lion": 4}  # fp32 moments per trained parameter

Method = Literal["full", "lora"]
Optimizer = Literal["adam", "lion"]


def model_state_bytes(
    n_params: float,
    *,
    method: Method,
    optimizer: Optimizer,
    lora_fraction: float = PAPER_LORA_FRACTION,
    frozen_dtype_bytes: int = 2,
    n_gpus: int = 1,
) -> dict:
    """Per-GPU bytes (and GB) of weights, gradients and optimizer states, Appendix H's model.

    full: 4Ψ + 4Ψ + 8Ψ (Adam) = 16Ψ, or 12Ψ with Lion.
    lora: frozen_dtype_bytes·Ψ frozen weights + (16 or 12)·fΨ for the trained fraction f.
    Ψ counts the base model; LoRA's own parameters are the extra fΨ, as the paper assumes.
    """
    if method not in ("full", "lora"):
        raise ValueError(f"method must be 'full' or 'lora', got {method!r}")
    if optimizer not in OPTIMIZER_BYTES:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_BYTES)}, got {optimizer!r}")
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    trained = n_params if method == "full" else lora_fraction * n_params
    frozen = 0.0 if method == "full" else frozen_dtype_bytes * n_params
    parts = {
        "frozen_weights": frozen,
        "trained_weights": FP32_BYTES * trained,
        "grads": FP32_BYTES * trained,
        "optimizer": OPTIMIZER_BYTES[optimizer] * trained,
    }
    parts["weights"] = parts["frozen_weights"] + parts["trained_weights"]
    parts["total"] = parts["weights"] + parts["grads"] + parts["optimizer"]
    per_gpu = {f"{k}_bytes": v / n_gpus for k, v in parts.items()}
    per_gpu.update({f"{k}_gb": v / n_gpus / GB for k, v in parts.items()})
    return {"method": method, "optimizer": optimizer, "n_gpus": n_gpus, **per_gpu}


def paper_table(model: Literal["7B", "70B", "405B"], gpus: Sequence[int] = (1, 8, 16, 32, 64)) -> list[dict]:
    """Tables S14–S16: GB per GPU for {Adam, Lion} × {full, 1% LoRA}, keyed by GPU count.

    Ψ is the nominal size (7e9, 70e9, 405e9), as in the paper. Table S16 (405B) prints only its Adam
    rows; the Lion rows are computed all the same.
    """
    n_params = PAPER_PARAMS[model]
    rows = []
    for optimizer in ("adam", "lion"):
        for method in ("full", "lora"):
            label = optimizer.capitalize() + (" + LoRA" if method == "lora" else "")
            row: dict = {"model": model, "setting": label, "optimizer": optimizer, "method": method}
            for g in gpus:
                row[g] = model_state_bytes(n_params, method=method, optimizer=optimizer, n_gpus=g)["total_gb"]
            rows.append(row)
    return rows


@dataclass(frozen=True)
class ModelShapes:
    """Linear-layer shapes of a Llama-style decoder: `modules` maps name -> (out, in) per block."""

    hidden: int
    intermediate: int
    n_layers: int
    vocab: int
    modules: dict[str, tuple[int, int]]

    @property
    def n_params(self) -> int:
        """Exact parameter count: blocks, two RMSNorms per block, untied embeddings and lm_head, final norm."""
        per_block = sum(o * i for o, i in self.modules.values()) + 2 * self.hidden
        return self.n_layers * per_block + 2 * self.vocab * self.hidden + self.hidden


def llama_shapes(
    hidden: int,
    intermediate: int,
    n_layers: int,
    n_kv_heads: int | None = None,
    head_dim: int | None = None,
    vocab: int = 32000,
) -> ModelShapes:
    """Shapes of a Llama(-2) model; n_kv_heads enables grouped-query attention (head_dim defaults to 128)."""
    kv_dim = hidden if n_kv_heads is None else n_kv_heads * (head_dim or 128)
    modules = {
        "q_proj": (hidden, hidden),
        "k_proj": (kv_dim, hidden),
        "v_proj": (kv_dim, hidden),
        "o_proj": (hidden, hidden),
        "gate_proj": (intermediate, hidden),
        "up_proj": (intermediate, hidden),
        "down_proj": (hidden, intermediate),
    }
    return ModelShapes(hidden, intermediate, n_layers, vocab, modules)


LLAMA2_7B = llama_shapes(4096, 11008, 32)
LLAMA2_70B = llama_shapes(8192, 28672, 80, n_kv_heads=8)


def lora_param_count(shapes: dict[str, tuple[int, int]], n_layers: int, rank: int) -> int:
    """Exact LoRA parameters: r·(in + out) per adapted (out, in) matrix (A is r×in, B is out×r), per block."""
    return n_layers * sum(rank * (o + i) for o, i in shapes.values())


def lora_fraction(model: ModelShapes, rank: int, modules: Sequence[str] = TARGET_MODULES["all"]) -> float:
    """LoRA parameters over base parameters Ψ, the quantity the paper assumes to be 1%."""
    adapted = {name: model.modules[name] for name in modules}
    return lora_param_count(adapted, model.n_layers, rank) / model.n_params


def activation_bytes(
    batch: int,
    seq: int,
    hidden: int,
    n_layers: int,
    intermediate: int,
    dtype_bytes: int = 2,
    checkpointing: bool = False,
) -> float:
    """Rough estimate of the activations a Llama block keeps for backward; an estimate, not a measurement.

    Counted per token and layer: RMSNorm inputs and outputs (4h), q, k, v (3h, full multi-head width),
    the attention output (h), and the MLP's gate, up, SiLU(gate) and product (4·intermediate), so
    8h + 4i values. Attention scores are not stored (fused/flash attention). Not counted: logits and
    loss buffers, dropout masks, LoRA's rank-r intermediates, allocator fragmentation and temporaries.
    With checkpointing only each block's input (h) is kept, plus one block recomputed during backward.
    """
    tokens = batch * seq
    per_layer = tokens * (8 * hidden + 4 * intermediate) * dtype_bytes
    if not checkpointing:
        return float(n_layers * per_layer)
    return float(n_layers * tokens * hidden * dtype_bytes + per_layer)
