"""The word-level tokenizer: exact round trip on every world text, every evaluation token seen in
pre-training, a small vocabulary, fixed special tokens, and a save/load round trip."""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lorastudy.data.tokenizer import SPECIAL_TOKENS, build_tokenizer
from lorastudy.data.world import MINI, TINY, MiniWorld, generate_world


def world_texts(world: MiniWorld) -> dict[str, list[str]]:
    """Every string of every part, by part (what the written files hold)."""
    mc = {f"mc_{kind}": [s for item in items for option in item.options for s in option]
          for kind, items in world.source_mc.items()}
    return {
        "pretrain": [d.text for d in world.pretrain],
        "source_heldout": [d.text for d in world.source_heldout],
        "math_cpt": [d.text for d in world.math_cpt],
        "code_cpt": [d.text for d in world.code_cpt],
        "math_train": [s for p in world.math_train for s in (p.question, p.answer)],
        "math_test": [s for p in world.math_test for s in (p.question, p.answer)],
        "code_train": [s for t in world.code_train for s in (t.prompt, t.canonical_solution, t.test)],
        "code_test": [s for t in world.code_test for s in (t.prompt, t.canonical_solution, t.test)],
        **mc,
    }


def eval_prompts(world: MiniWorld) -> list[str]:
    """What the model reads at evaluation: math test questions in their prompt, code test prompts, MC options."""
    return ([f"Question: {p.question}\nAnswer:" for p in world.math_test] + [t.prompt for t in world.code_test]
            + [s for items in world.source_mc.values() for item in items for option in item.options for s in option])


def all_texts(world: MiniWorld) -> list[str]:
    return [s for texts in world_texts(world).values() for s in texts]


@pytest.fixture(scope="module", params=["tiny", "mini"])
def built(request: pytest.FixtureRequest) -> tuple[MiniWorld, PreTrainedTokenizerFast]:
    world = generate_world(TINY if request.param == "tiny" else MINI)
    return world, build_tokenizer(all_texts(world))


@pytest.fixture(scope="module")
def encoded(built: tuple[MiniWorld, PreTrainedTokenizerFast]) -> dict[str, list[list[int]]]:
    """Token ids of every text, by part (encoded once per world)."""
    world, tok = built
    return {part: ids(tok, texts) for part, texts in world_texts(world).items()}


def ids(tok: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]


def test_round_trip_is_exact_on_every_world_text(built: tuple[MiniWorld, PreTrainedTokenizerFast],
                                                  encoded: dict[str, list[list[int]]]) -> None:
    world, tok = built
    texts, flat = all_texts(world), [e for part in encoded.values() for e in part]
    assert not any(tok.unk_token_id in e for e in flat)
    assert tok.batch_decode(flat) == texts
    sample = texts[:: max(1, len(texts) // 200)]
    assert [tok.decode(tok.encode(x, add_special_tokens=False)) for x in sample] == sample


def test_every_evaluation_token_occurs_in_pretraining(built: tuple[MiniWorld, PreTrainedTokenizerFast],
                                                      encoded: dict[str, list[list[int]]]) -> None:
    world, tok = built
    seen = {i for e in encoded["pretrain"] for i in e}
    missing = {i for e in ids(tok, eval_prompts(world)) for i in e} - seen
    assert not missing, tok.convert_ids_to_tokens(sorted(missing))


def test_vocabulary_and_special_tokens(built: tuple[MiniWorld, PreTrainedTokenizerFast]) -> None:
    world, tok = built
    assert 200 <= len(tok) <= 1000
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == list(SPECIAL_TOKENS)
    text = world.code_test[0].prompt
    assert tok(text)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]  # no BOS/EOS is added
    assert tok("<bos>Question<eos>")["input_ids"][::2] == [1, 2]  # special tokens are never split


def test_pieces(built: tuple[MiniWorld, PreTrainedTokenizerFast]) -> None:
    _, tok = built
    pieces = tok.convert_ids_to_tokens(tok.encode('def int_plus_2(x):\n    """Return 12."""\n    x = x + 12\n',
                                                  add_special_tokens=False))
    assert pieces == ["def", " int", "_", "plus", "_", "2", "(", "x", ")", ":", "\n", "    ", '"', '"', '"', "Return",
                      " 1", "2", ".", '"', '"', '"', "\n", "    ", "x", " =", " x", " +", " 1", "2", "\n"]


def test_any_whitespace_and_symbol_round_trips() -> None:
    text = "a\tb  c\r\n     d \u00e9t\u00e9 [x]_{y}!\n\n        z "
    tok = build_tokenizer([text])
    assert tok.decode(tok.encode(text)) == text and tok.unk_token_id not in tok.encode(text)
    assert tok.decode(tok.encode("b a")) == "b<unk>"  # unseen pieces become <unk>


def test_a_tokenizer_built_from_the_written_files_covers_what_the_adapters_read(tmp_path: Path) -> None:
    """The base is built from the files (every string of every row), not from the records: same coverage."""
    from lorastudy.data.adapters import load_records
    from lorastudy.io import read_jsonl

    world = generate_world(TINY)
    paths = world.write(tmp_path)
    values = [v for part, path in paths.items() if part != "world" for row in read_jsonl(path) for v in row.values()]
    strings = [s for v in values for s in (v if isinstance(v, list) else [v]) if isinstance(s, str)]
    tok = build_tokenizer(strings)
    read = [s for name, adapter in (("source_completion", "hellaswag"), ("source_question", "arc_challenge"),
                                    ("source_fillin", "winogrande"))
            for item in load_records(adapter, paths[name]) for option in item.options for s in option]
    read += [f"Question: {p.question}\nAnswer: {p.answer}" for p in world.math_train + world.math_test]
    read += [d.text for d in world.pretrain + world.code_cpt + world.math_cpt]
    assert not any(tok.unk_token_id in e for e in ids(tok, read))


def test_vocabulary_is_deterministic() -> None:
    texts = all_texts(generate_world(TINY))
    a, b = build_tokenizer(texts), build_tokenizer(list(reversed(texts)))
    assert a.get_vocab() == b.get_vocab()


def test_save_and_load_round_trip(built: tuple[MiniWorld, PreTrainedTokenizerFast], tmp_path: Path) -> None:
    world, tok = built
    tok.save_pretrained(tmp_path)
    texts = eval_prompts(world)[:50] + [world.pretrain[0].text]
    for loaded in (AutoTokenizer.from_pretrained(tmp_path), PreTrainedTokenizerFast.from_pretrained(tmp_path)):
        assert loaded.get_vocab() == tok.get_vocab()
        assert [loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id] == [0, 1, 2, 3]
        encoded = [loaded.encode(x) for x in texts]
        assert encoded == [tok.encode(x) for x in texts]
        assert [loaded.decode(e) for e in encoded] == texts
