"""GPU profiles without a GPU: they validate, plan and cost themselves (`sweep --dry-run`), the machine check
stops a GPU profile at once on a CPU box and lets the mini profiles through, and the hub-loading paths (base
model, tokenizer, released checkpoints) work on local folders exactly as on hub ids."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lorastudy.config import ReleasedCheckpoint, load_profile
from lorastudy.data.examples import IGNORE, bos_ids, encode, pack_cpt, tokenize_ift
from lorastudy.perf.check import check_host_memory, check_launch, gpu_memory_need, hub_repos, training_memory_need
from lorastudy.perf.estimate import model_size
from lorastudy.plan import plan_runs
from lorastudy.train.modeling import load_base, load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["Question: Ann has 2 apples and buys 1 more. How many apples does she have?\nAnswer: 2 + 1 = 3.\n#### 3",
         "Question: Bob has 4 pens and loses 1. How many pens are left?\nAnswer: 4 - 1 = 3.\n#### 3"]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorastudy.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init Llama with a tokenizer, saved as a hub model folder is laid out."""
    from lorastudy.data.tokenizer import build_tokenizer

    path = tmp_path_factory.mktemp("hub") / "tiny-llama"
    tok = build_tokenizer(TEXTS)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=128, tie_word_embeddings=True,
                                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ---------------------------------------------------------------- profiles
def test_gpu_small_profile() -> None:
    p = load_profile("gpu-small")
    runs = plan_runs(p)
    assert len(runs) == 16 and {r.lora_rank for r in runs if r.method == "lora"} == {4, 16, 64}
    assert all(r.lora_alpha == 2 * r.lora_rank for r in runs if r.method == "lora")
    assert p.base.kind == "pretrained" and p.training.precision == "bf16" and p.training.num_processes == 1
    assert p.data["code"]["cpt"].data_dir == "python" and all(
        p.data[d][r].limit for d in ("code", "math") for r in ("cpt", "ift"))
    code, math = p.eval.learning["code"], p.eval.learning["math"]
    assert (code.temperature, code.top_p, code.ks, code.n_samples) == (0.2, 0.95, [1], 10)
    assert (math.shots, math.temperature, math.dataset.subset) == (5, 0.0, "main")
    assert set(p.eval.forgetting) == {"hellaswag", "arc_challenge", "winogrande"}
    assert p.training.for_task("code", "ift").seq_len == 2048 and p.training.for_task("math", "ift").seq_len == 1024


def test_paper_profile_has_the_papers_settings() -> None:
    p = load_profile("paper")
    t = p.training
    for (domain, regime), (seq, batch) in {("code", "cpt"): (4096, 192), ("math", "cpt"): (4096, 192),
                                           ("code", "ift"): (4096, 192), ("math", "ift"): (1024, 768)}.items():
        task = t.for_task(domain, regime)
        assert (task.seq_len, task.batch_size * task.grad_accum * t.num_processes) == (seq, batch)
    lr = {(r.domain, r.regime, r.method, r.lora_rank): r.learning_rate for r in plan_runs(p)}
    expected = {("code", "cpt", "full", None): 1e-5, ("code", "cpt", "lora", 16): 1e-5,
                ("math", "cpt", "full", None): 1e-5, ("math", "cpt", "lora", 256): 4e-5,
                ("code", "ift", "full", None): 5e-5, ("code", "ift", "lora", 64): 2e-4, ("code", "ift", "lora", 256): 1e-4,
                ("math", "ift", "full", None): 1e-5, ("math", "ift", "lora", 16): 1e-4, ("math", "ift", "lora", 256): 5e-5}
    assert {k: lr[k] for k in expected} == expected and len(lr) == 16
    assert t.durations["cpt"][-1] == 2e10 and t.durations["ift"] == [1, 2, 4, 8, 16]
    assert (t.lora.alpha_ratio, t.lora.dropout, t.optimizer, t.adam_betas) == (2.0, 0.05, "adamw", (0.9, 0.95))
    assert {r.target_modules for r in plan_runs(p) if r.method == "lora"} == {"all"}
    assert not t.gradient_checkpointing  # the FSDP config checkpoints activations


def test_released_profile_lists_the_hub_checkpoints() -> None:
    p = load_profile("released")
    assert plan_runs(p) == [] and len(p.released) == 16
    assert all(c.model.startswith("LoRA-TMLR-2024/") for c in p.released)
    assert {(c.domain, c.regime) for c in p.released} == {("code", "cpt"), ("math", "cpt"), ("code", "ift"),
                                                          ("math", "ift")}
    assert all((c.rank is None) == (c.method == "full") for c in p.released)
    assert {c.rank for c in p.released} == {None, 16, 64, 256}


@pytest.mark.parametrize("name, runs", [("gpu-small", 16), ("paper", 16), ("released", 0)])
def test_dry_run_prints_plan_and_cost(name: str, runs: int, tmp_path: Path) -> None:
    res = _cli("sweep", name, "--dry-run", "--output", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert f"{runs} runs" in res.stdout and "estimate:" in res.stdout and "MFU" in res.stdout
    hours = float(re.search(r"total ~([\d,.]+) GPU-h", res.stdout).group(1).replace(",", ""))
    assert hours > 0
    if name == "gpu-small":
        assert 1 <= hours <= 8, "the single-GPU profile promises a few hours"
    if name == "released":
        assert "starcoder-lora-rank-16-20B-tokens" in res.stdout


def test_estimates_state_their_throughput() -> None:
    from lorastudy.perf.estimate import LORA_SLOWDOWN, MFU_PAPER_7B, training_tokens_per_s

    assert 0.2 < MFU_PAPER_7B < 0.25  # Fig S10: ~42.5k tokens/s on 8xH100 for 7B
    assert training_tokens_per_s(6.74e9, "full") * 8 == pytest.approx(42_500, rel=1e-6)
    assert training_tokens_per_s(6.74e9, "lora") == pytest.approx(LORA_SLOWDOWN * 42_500 / 8, rel=1e-6)


# ---------------------------------------------------------------- the machine check
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_check_stops_a_gpu_profile_at_once_without_a_gpu(tmp_path: Path) -> None:
    start = time.perf_counter()
    res = _cli("check", "gpu-small", "--output", str(tmp_path))
    assert res.returncode == 1
    assert re.search(r"MISSING\s+gpu\s+need 1, found 0", res.stdout)
    assert "cannot run here; missing: gpu" in res.stderr and "Nothing was run" in res.stderr
    assert time.perf_counter() - start < 60


def test_check_passes_the_mini_profiles(tmp_path: Path) -> None:
    res = _cli("check", "tiny", "--output", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "everything needed is here" in res.stdout


def test_check_items_for_the_paper_profile() -> None:
    p = load_profile("paper")
    need, why = training_memory_need(p, model_size(p))
    assert "model states 13.5" in why  # Appendix H: 7B, Adam, 16 bytes/param over 8 GPUs (Table S14: 14 GB)
    assert 14e9 < need < 80e9
    assert gpu_memory_need(p, model_size(p))[0] == pytest.approx(6.74e9 * 4 * 1.2, rel=0.01)  # fp32 eval, 1 GPU
    memory = check_host_memory(p)  # the 20B-token CPT corpora stream; the IFT sets are held, and fit
    assert memory.ok and "code cpt, math cpt streamed" in memory.detail and "math ift holds" in memory.detail
    assert check_launch(p).ok
    assert ("model", "meta-llama/Llama-2-7b-hf", None) in hub_repos(p)
    assert ("dataset", "bigcode/starcoderdata", None) in hub_repos(p)


def test_gpu_smoke_script_parses_and_stops_without_a_gpu() -> None:
    import importlib.util

    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_smoke.sh")]).returncode == 0
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "scripts" / "gpu_smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    assert smoke.peak_flops("NVIDIA H200") == smoke.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert smoke.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12 and smoke.peak_flops("Tesla T4") is None
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the no-GPU path cannot be exercised here")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_smoke.sh")], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert res.returncode == 2 and "no CUDA GPU is visible" in res.stderr and "Nothing was run" in res.stderr


# ---------------------------------------------------------------- hub paths on local folders
def test_model_and_tokenizer_load_from_a_local_folder(tiny_folder: Path) -> None:
    tok = load_tokenizer(str(tiny_folder))
    model = load_model(str(tiny_folder), "float32")
    assert tok.pad_token is not None and tok.padding_side == "left"
    ids = torch.tensor([tok("Ann has 2 apples")["input_ids"]])
    reference = LlamaForCausalLM.from_pretrained(tiny_folder)
    assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-6)


def _local_profile(tmp: Path, model: Path, **extra: object) -> Path:
    import yaml

    math = tmp / "math_test.jsonl"
    math.write_text("".join(json.dumps({"question": t.split("\nAnswer:")[0].removeprefix("Question: "),
                                        "answer": t.split("\nAnswer:")[1]}) + "\n" for t in TEXTS))
    raw = {"name": "local", "base": {"kind": "pretrained", "model": str(model), "dtype": "float32"}, "data": {},
           "eval": {"learning": {"math": {"dataset": {"adapter": "gsm8k", "source": str(math)}, "max_new_tokens": 4}},
                    "forgetting": {}},
           "sweep": [], **extra}
    path = tmp / "local.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_base_of_a_pretrained_profile_loads_from_a_local_folder(tiny_folder: Path, tmp_path: Path) -> None:
    model, tok = load_base(load_profile(_local_profile(tmp_path, tiny_folder)))
    assert model.config.hidden_size == 32 and tok.bos_token_id is not None


def test_training_examples_without_a_bos_token(tiny_folder: Path) -> None:
    """Qwen2's tokenizer has no bos token: packing and masking start each sequence with the text itself."""
    tok = load_tokenizer(str(tiny_folder))
    tok.bos_token = None
    assert tok.bos_token_id is None and bos_ids(tok) == []
    blocks = pack_cpt(TEXTS, tok, seq_len=16)
    assert [t for b in blocks for t in b["input_ids"]] == [t for text in TEXTS for t in (*encode(tok, text),
                                                                                         tok.eos_token_id)]
    prompt = "Question: Ann has 2 apples?\nAnswer:"
    (ex,) = tokenize_ift([(prompt, " 3")], tok, seq_len=64)
    n = len(encode(tok, prompt))
    assert ex["input_ids"] == [*encode(tok, prompt), *encode(tok, " 3"), tok.eos_token_id]
    assert ex["labels"] == [IGNORE] * n + ex["input_ids"][n:]


def test_released_checkpoints_resolve_and_load_from_local_folders(tiny_folder: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import LoraConfig, get_peft_model

    from lorastudy.evaluation.released import MIRROR_ENV, checkpoint_id, evaluate_released, load_released, resolve
    from lorastudy.results import collect

    torch.manual_seed(1)
    adapter = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_folder),
                             LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    for name, p in adapter.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained-looking adapter (B starts at zero)
    adapter.save_pretrained(tmp_path / "mirror" / "math-lora-rank-2@step-1")

    full = ReleasedCheckpoint(model=str(tiny_folder), method="full", domain="math", regime="ift", unit="epochs")
    lora = ReleasedCheckpoint(model="LoRA-TMLR-2024/math-lora-rank-2", revision="step-1", method="lora", rank=2,
                              domain="math", regime="ift", duration=1, unit="epochs")
    assert resolve(full) == (str(tiny_folder), None)
    assert resolve(lora) == ("LoRA-TMLR-2024/math-lora-rank-2", "step-1")  # no mirror: the hub at that branch
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    assert resolve(lora) == (str(tmp_path / "mirror" / "math-lora-rank-2@step-1"), None)

    profile = load_profile(_local_profile(tmp_path, tiny_folder, released=[full.model_dump(), lora.model_dump()]))
    ids = torch.tensor([[1, 5, 6, 7]])
    base_logits = load_released(profile, full)(ids).logits
    assert not torch.allclose(load_released(profile, lora)(ids).logits, base_logits)

    rows = evaluate_released(profile, tmp_path / "out", progress=False)
    assert {r["run_id"] for r in rows} == {checkpoint_id(full), checkpoint_id(lora)}
    assert {r["metric"] for r in rows} >= {"gsm8k_strict_match", "learning_math"}
    table = collect(profile, tmp_path / "out")
    assert set(table[table.arm == "released"].run_id) == {checkpoint_id(full), checkpoint_id(lora)}
