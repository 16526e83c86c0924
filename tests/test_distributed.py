"""Multi-process training: a 2-process data-parallel run (torchrun, gloo, CPU) through lorastudy.train.launch gives
the loss curve of a 1-process run with the same global batch; the committed FSDP config builds the plugin
accelerate would give each process, and wraps the decoder layers of Llama and Qwen2 models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lorastudy.config import load_profile
from lorastudy.data.tokenizer import build_tokenizer
from lorastudy.layout import Layout
from lorastudy.plan import find_run
from lorastudy.train.finetune import train_in_process
from lorastudy.train.launch import (
    FSDP_CONFIG,
    fsdp_dry_run,
    inside_launcher,
    launch_command,
    run_profile,
    train_distributed,
)

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
SEQ = 32  # each document is bos + 30 words + eos: exactly one full block, so no batch is padded


def _docs(n: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    return [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (SEQ - 2,), generator=g)) for _ in range(n)]


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random-init Llama and its tokenizer saved as a hub-style folder, and a text corpus beside it."""
    root = tmp_path_factory.mktemp("dist")
    docs = _docs(16)
    tok = build_tokenizer(docs)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return root / "model", corpus


def _profile_file(tmp: Path, model: Path, corpus: Path, *, processes: int, batch: int) -> Path:
    raw = {
        "name": f"dist{processes}", "base": {"kind": "pretrained", "model": str(model), "dtype": "float32"},
        "data": {"code": {"cpt": {"adapter": "text", "source": str(corpus)}}},
        "training": {"seq_len": SEQ, "batch_size": batch, "num_processes": processes, "precision": "fp32",
                     "warmup_ratio": 0.0, "durations": {"cpt": [SEQ * 4 * 4, SEQ * 4 * 8]}},
        "eval": {"learning": {}, "forgetting": {}},
        "sweep": [{"domain": "code", "regime": "cpt", "method": "full", "learning_rate": 3e-3}],
    }
    path = tmp / f"dist{processes}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_two_processes_match_one(hub_folder: tuple[Path, Path], tmp_path: Path) -> None:
    model, corpus = hub_folder
    one = load_profile(_profile_file(tmp_path, model, corpus, processes=1, batch=4))
    two = load_profile(_profile_file(tmp_path, model, corpus, processes=2, batch=2))
    spec = find_run(one, "code-cpt-full-lr0.003-s0")
    single = train_in_process(one, spec, Layout(tmp_path / "one").run(spec.run_id).dir, progress=False)

    lines: list[str] = []
    double = train_distributed(two, spec, Layout(tmp_path / "two").run(spec.run_id).dir, echo=lines.append, cpu=True)

    assert "torch.distributed.run" in lines[0] and "--nproc_per_node=2" in lines[0]
    a = [p["loss"] for p in single["loss_curve"]]
    b = [p["loss"] for p in double["loss_curve"]]
    assert len(a) == len(b) == 8
    assert b == pytest.approx(a, rel=1e-4), (a, b)
    assert a[-1] < a[0]  # it learned something
    # both processes' tokens are counted, and the checkpoints were written once, by the main process
    assert [c["tokens_seen"] for c in double["checkpoints"]] == [c["tokens_seen"] for c in single["checkpoints"]]
    saved = sorted(p.name for p in Layout(tmp_path / "two").run(spec.run_id).checkpoints.iterdir())
    assert saved == ["tokens-1024", "tokens-512"]


def test_launch_commands_and_run_profile(hub_folder: tuple[Path, Path], tmp_path: Path) -> None:
    model, corpus = hub_folder
    profile = load_profile(_profile_file(tmp_path, model, corpus, processes=8, batch=2))
    spec = find_run(profile, "code-cpt-full-lr0.003-s0")
    assert run_profile(profile, spec).sweep[0].learning_rate == [3e-3]
    gpu = launch_command(Path("p.yaml"), spec.run_id, tmp_path, num_processes=8, cpu=False)
    assert gpu[1:3] == ["-m", "accelerate.commands.launch"] and str(FSDP_CONFIG) in gpu
    assert gpu[gpu.index("--num_processes") + 1] == "8"
    assert gpu[-7:] == ["-m", "lorastudy.cli", "train", "p.yaml", spec.run_id, "--output", str(tmp_path)]
    cpu = launch_command(Path("p.yaml"), spec.run_id, tmp_path, num_processes=8, cpu=True)
    assert cpu[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8"]
    assert not inside_launcher()


def _wrapped_classes(plugin, model: torch.nn.Module) -> set[str]:
    plugin.set_auto_wrap_policy(model)
    return {cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]}


def test_fsdp_config_builds_the_plugin_accelerate_would() -> None:
    plugin, env = fsdp_dry_run(num_processes=8)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert plugin.sharding_strategy.name == "FULL_SHARD"
    assert plugin.activation_checkpointing and plugin.state_dict_type.name == "FULL_STATE_DICT"
    plugin.set_mixed_precision("bf16")
    assert plugin.mixed_precision_policy.param_dtype == torch.bfloat16
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    assert _wrapped_classes(plugin, llama) == {"LlamaDecoderLayer"}
    assert _wrapped_classes(fsdp_dry_run()[0], qwen) == {"Qwen2DecoderLayer"}
