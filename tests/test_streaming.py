"""Streaming CPT: a corpus read lazily, packed on the fly into the same blocks as the in-memory path, resumable
from any block, and trained by Trainer to the same weights as the in-memory path's cooldown-branch rule."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from lorastudy.config import load_profile
from lorastudy.data.adapters import iter_texts
from lorastudy.data.examples import pack_cpt, to_text
from lorastudy.data.sources import load_spec, stream_texts
from lorastudy.data.stream import PackedStream, StreamData
from lorastudy.data.tokenizer import build_tokenizer
from lorastudy.train.training import branch_points, fit, training_arguments


@pytest.fixture(scope="module")
def corpus() -> tuple:
    """The tiny world's code CPT corpus, as the in-memory path and as a stream, with a tokenizer trained on it."""
    profile = load_profile("tiny")
    spec = profile.data["code"]["cpt"].model_copy(update={"streaming": True})
    texts = [to_text(r) for r in load_spec(profile, spec.model_copy(update={"streaming": False}))]
    return profile, spec, texts, build_tokenizer(texts)


def test_the_stream_packs_the_in_memory_blocks(corpus) -> None:
    profile, spec, texts, tok = corpus
    for seq_len in (7, 128):
        listed = pack_cpt(texts, tok, seq_len)
        streamed = list(itertools.islice(PackedStream(stream_texts(profile, spec), tok, seq_len), len(listed)))
        assert streamed == listed
        assert sum(len(b["input_ids"]) for b in listed) > 10 * seq_len


def test_a_stream_resumes_at_any_block_even_past_the_end_of_the_corpus(corpus) -> None:
    profile, spec, texts, tok = corpus
    open_texts = stream_texts(profile, spec)
    per_pass = len(pack_cpt(texts, tok, 128))
    n = 2 * per_pass + 5  # two passes and a bit: the stream reads the corpus again once it ends
    whole = list(itertools.islice(PackedStream(open_texts, tok, 128), n))
    assert whole[per_pass] == whole[0]  # a new pass starts with the first block again
    for k in (1, per_pass - 1, per_pass, per_pass + 3, 2 * per_pass):
        first = PackedStream(open_texts, tok, 128)
        head = list(itertools.islice(first, k))
        pos = first.position_after(k)
        assert pos.block == k and pos.passes == (k - 1) // per_pass  # at a pass end: past its last document
        assert head + list(itertools.islice(PackedStream(open_texts, tok, 128, pos), n - k)) == whole


def test_the_corpus_is_read_lazily_and_up_to_its_limit(tmp_path: Path) -> None:
    """Documents come one at a time: a corpus whose tail is not JSON streams its head; `limit` stops the read."""
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"content": "a = 1"}\n{"content": "b = 2"}\n{"content": "c = 3"}\nnot json at all\n')
    assert list(itertools.islice(iter_texts("starcoder_python", str(path)), 3)) == ["a = 1", "b = 2", "c = 3"]
    assert list(iter_texts("starcoder_python", str(path), skip=1, limit=3)) == ["b = 2", "c = 3"]
    with pytest.raises(ValueError, match="line 4"):
        list(iter_texts("starcoder_python", str(path)))


def test_only_cpt_corpora_stream() -> None:
    with pytest.raises(ValueError, match="not a continued pre-training corpus"):
        iter_texts("gsm8k", "unused.jsonl")


def _llama(tok, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=128, tie_word_embeddings=True,
                                        pad_token_id=tok.pad_token_id, attention_dropout=0.1))


def test_a_streamed_cooldown_branch_equals_a_streamed_run_that_ends_there(corpus, tmp_path: Path) -> None:
    """The stream's branch resumes the main run's state at its data position, with the dropout RNG of that step."""
    profile, spec, texts, tok = corpus

    def args(out: Path, steps: int, decay: int):
        return training_arguments(out, lr=3e-3, batch=4, accum=1, max_steps=steps, seed=0, schedule="wsd",
                                  profile=profile, weight_decay=0.0, progress=False, warmup_steps=1, decay_steps=decay)

    def data() -> StreamData:
        return StreamData(stream_texts(profile, spec), tok, 16)

    at = {4: 256.0, 8: 512.0}
    branches = branch_points(at, 0.25, warmup_steps=1)
    main = fit(_llama(tok), data(), out=tmp_path / "a", args=args(tmp_path / "a", 8, 2), pad_id=tok.pad_token_id,
               at_steps=at, unit="tokens", branches=branches,
               branch=lambda start, final: (_llama(tok, seed=9), args(tmp_path / "a", final, final - start)))
    alone = fit(_llama(tok), data(), out=tmp_path / "b", args=args(tmp_path / "b", 4, 1), pad_id=tok.pad_token_id,
                at_steps={4: 256.0}, unit="tokens")
    assert [m["step"] for m in main.saved] == [4, 8]
    a, b = (load_file(next((tmp_path / d / "checkpoints" / "tokens-256").glob("*.safetensors"))) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main.saved[0]["tokens_seen"] == alone.saved[0]["tokens_seen"] == 4 * 4 * 16
    assert main.saved[1]["tokens_seen"] == 8 * 4 * 16
