"""The multiple-choice scorer equals a brute-force per-option computation; batched generation with left
padding equals one-prompt-at-a-time generation; held-out loss equals the model's own loss."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lorastudy.data import prompts
from lorastudy.data.adapters import load_records
from lorastudy.data.records import MCItem
from lorastudy.data.tokenizer import build_tokenizer
from lorastudy.evaluation.choice import answer_nll, fewshot_prefix, heldout_loss, score_choice
from lorastudy.evaluation.generate import generate, truncate_at_stop

ITEMS = [
    MCItem(options=(("Alice lives in", " Paris."), ("Alice lives in", " Rome."), ("Alice lives in", " Oslo and Rome."))
           , gold=0, id="a"),
    MCItem(options=(("Question: What pet does Bob have?\nAnswer:", " a cat"),
                    ("Question: What pet does Bob have?\nAnswer:", " a big dog")), gold=1, id="b"),
    MCItem(options=(("Alice said that Bob", " is a baker."), ("Carol said that Bob", " is a baker.")), gold=0, id="c",
           meta={"partial": True}),
]


@pytest.fixture(scope="module")
def tok():
    texts = [c + x for it in ITEMS for c, x in it.options] + ["Tom has 3 apples. 3 + 4 = 7.\n#### 7\n\nQuestion:"]
    return build_tokenizer(texts)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def brute_force_loglik(model, tok, context: str, continuation: str) -> float:
    ctx = [tok.bos_token_id] + tok(context, add_special_tokens=False)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    total = 0.0
    with torch.no_grad():
        for i, token in enumerate(cont):  # one forward per token, no batching, no padding
            logits = model(torch.tensor([ctx + cont[:i]])).logits[0, -1]
            total += float(torch.log_softmax(logits.float(), -1)[token])
    return total


def test_choice_scorer_equals_brute_force(model, tok) -> None:
    res = score_choice(model, tok, ITEMS, batch_size=3, progress=False)
    for item, rec in zip(ITEMS, res["records"]):
        expected = [brute_force_loglik(model, tok, c, x) for c, x in item.options]
        assert rec["loglik"] == pytest.approx(expected, abs=1e-4)
        assert rec["pred"] == max(range(len(expected)), key=expected.__getitem__)
        norm = [v / len(x.encode()) for v, (_, x) in zip(expected, item.options)]
        assert rec["pred_norm"] == max(range(len(norm)), key=norm.__getitem__)
    assert res["acc"] == sum(r["pred"] == it.gold for r, it in zip(res["records"], ITEMS)) / 3
    assert res["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert set(res) == {"acc", "acc_norm", "n", "chance", "records"} and res["n"] == 3
    assert [r["id"] for r in res["records"]] == ["a", "b", "c"] and [r["gold"] for r in res["records"]] == [0, 1, 0]


def test_accuracies_count_the_items_whose_choice_is_gold(model, tok) -> None:
    """With each item's gold moved to the option the model picks, acc is 1; acc_norm is the share of items
    whose length-normalised pick is that option too; with gold elsewhere, acc is 0."""
    first = score_choice(model, tok, ITEMS, progress=False)["records"]
    picked = [MCItem(options=it.options, gold=r["pred"], id=it.id) for it, r in zip(ITEMS, first)]
    res = score_choice(model, tok, picked, progress=False)
    assert res["acc"] == 1.0
    assert res["acc_norm"] == pytest.approx(sum(r["pred_norm"] == r["pred"] for r in first) / 3)
    missed = [MCItem(options=it.options, gold=(r["pred"] + 1) % len(it.options), id=it.id)
              for it, r in zip(ITEMS, first)]
    assert score_choice(model, tok, missed, progress=False)["acc"] == 0.0
    with pytest.raises(ValueError, match="no multiple-choice items"):
        score_choice(model, tok, [], progress=False)


def test_the_normalised_choice_is_the_best_score_per_byte(model, tok) -> None:
    """Each item's options reordered so that the best log-likelihood per byte comes first, then last: acc_norm
    picks it wherever it stands."""
    first = score_choice(model, tok, ITEMS[:2], progress=False)["records"]
    for where in (0, -1):
        items = []
        for it, r in zip(ITEMS[:2], first):
            per_byte = [s / len(cont.encode()) for s, (_, cont) in zip(r["loglik"], it.options)]
            best = max(range(len(per_byte)), key=per_byte.__getitem__)
            rest = [o for k, o in enumerate(it.options) if k != best]
            options = (it.options[best], *rest) if where == 0 else (*rest, it.options[best])
            items.append(MCItem(options=options, gold=0 if where == 0 else len(options) - 1, id=it.id))
        res = score_choice(model, tok, items, progress=False)
        assert res["acc_norm"] == 1.0 and [r["pred_norm"] for r in res["records"]] == [i.gold for i in items]


def test_a_sequence_past_the_trained_context_is_refused_never_cut(tok) -> None:
    """Without max_len the model's max_position_embeddings bounds a request; with it, the trained context does.
    A longer sequence is an error naming the item and both lengths: read past the trained positions, a score
    measures nothing, and cutting the context would score another question."""
    torch.manual_seed(3)
    short = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=12, tie_word_embeddings=True)).eval()
    item = MCItem(options=(("Alice lives in Paris. " * 4 + "Alice lives in", " Oslo and Rome."),), gold=0, id="l")
    with pytest.raises(ValueError, match=r"multiple-choice item l, option 0: \d+ tokens exceed the trained context of 12"):
        score_choice(short, tok, [item], progress=False)
    fits = MCItem(options=(("Alice lives in", " Oslo."),), gold=0, id="f")
    assert score_choice(short, tok, [fits], progress=False)["n"] == 1
    with pytest.raises(ValueError, match="item f, option 0: .* the trained context of 3"):
        score_choice(short, tok, [fits], max_len=3, progress=False)
    pairs = [("Alice lives in Paris. " * 4 + "Alice lives in", " Oslo and Rome.")]
    with pytest.raises(ValueError, match=r"reference answer of item q7: \d+ tokens exceed the trained context of 64"):
        long = [("Alice lives in", " Oslo.")] * 7 + [(pairs[0][0] * 3, pairs[0][1])]  # only the last is too long
        answer_nll(short, tok, long, max_len=64, progress=False, ids=[f"q{i}" for i in range(8)])
    with pytest.raises(ValueError, match=r"code prompt T/1 plus max_new_tokens 8: \d+ tokens exceed the trained context of 12"):
        generate(short, tok, ["Alice", "Alice lives in Paris."], max_new_tokens=8, progress=False, desc="code",
                 names=["T/0", "T/1"])


def test_multiple_choice_shots_are_a_stable_draw(tok) -> None:
    """k of the other items, drawn by random.Random(1234 + the item's index): the same shots in every version,
    so that numbers stay comparable; one shot is one block."""
    items = [MCItem(options=((f"Item {k} is", f" number {k}."),), gold=0, id=str(k)) for k in range(6)]
    for i in (0, 3):
        pool = [k for k in range(6) if k != i]
        drawn = random.Random(1234 + i).sample(pool, 2)
        assert fewshot_prefix(i, items, 2) == "".join(f"Item {k} is number {k}.\n\n" for k in drawn)
    assert fewshot_prefix(2, items, 1).count("\n\n") == 1 and "Item 2 " not in fewshot_prefix(2, items, 5)
    assert fewshot_prefix(2, items, 9).count("\n\n") == 5  # at most the other items


def test_answer_nll_is_the_mean_loss_per_answer_token_with_and_without_eos(model, tok) -> None:
    pairs = [("Question: What pet does Bob have?\nAnswer:", " a cat"), ("Alice lives in", " Paris.")]
    answer, with_eos = answer_nll(model, tok, pairs, batch_size=2, progress=False)
    for (prompt, reference), value, value_eos in zip(pairs, answer, with_eos):
        ctx = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]
        cont = [*tok(reference, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
        per_token = [float(logp[len(ctx) + k - 1, t]) for k, t in enumerate(cont)]
        assert value_eos == pytest.approx(-sum(per_token) / len(cont), rel=1e-5) and value_eos > 0
        assert value == pytest.approx(-sum(per_token[:-1]) / (len(cont) - 1), rel=1e-5) and value > 0
    assert model.training is False
    model.train()
    answer_nll(model, tok, pairs, progress=False)
    assert model.training is True  # the caller's mode is given back
    model.eval()


def test_choice_scorer_on_real_gauntlet_file(model, tok, shared_data) -> None:
    items = load_records("hellaswag", str(shared_data / "hellaswag" / "hellaswag_small.jsonl"))
    real_tok = build_tokenizer([c + x for it in items for c, x in it.options])
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(real_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    m = LlamaForCausalLM(cfg).eval()
    res = score_choice(m, real_tok, items, batch_size=5, progress=False)
    first = items[0]
    expected = [brute_force_loglik(m, real_tok, c, x) for c, x in first.options]
    assert res["records"][0]["loglik"] == pytest.approx(expected, abs=1e-3)
    assert res["n"] == 4 and 0 <= res["acc_norm"] <= 1


def test_batched_generation_equals_single(model, tok) -> None:
    prompts = ["Alice lives in", "Question: What pet does Bob have?\nAnswer:", "Tom has 3 apples."]
    batched = generate(model, tok, prompts, max_new_tokens=8, batch_size=3, progress=False)
    single = [generate(model, tok, [p], max_new_tokens=8, batch_size=1, progress=False)[0] for p in prompts]
    assert batched == single


def test_sampling_gives_n_completions_and_is_seeded(model, tok) -> None:
    a = generate(model, tok, ["Alice lives in"], max_new_tokens=6, temperature=1.0, n=4, seed=3, progress=False)
    b = generate(model, tok, ["Alice lives in"], max_new_tokens=6, temperature=1.0, n=4, seed=3, progress=False)
    assert len(a) == 1 and len(a[0]) == 4 and a == b
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tok, ["x"], n=2, progress=False)


PROMPTS = ["Alice lives in", "Question: What pet does Bob have?\nAnswer:"]


def _sample(model, tok, **kw):
    return generate(model, tok, PROMPTS, max_new_tokens=8, n=4, progress=False, **{"temperature": 1.0, **kw})


def test_the_seed_changes_the_samples(model, tok) -> None:
    """A random model's next-token distribution is nearly flat: two seeds never draw the same 64 tokens."""
    assert _sample(model, tok, seed=1) != _sample(model, tok, seed=2)
    assert _sample(model, tok, seed=2) == _sample(model, tok, seed=2)


def test_temperature_and_top_p_shape_the_samples(model, tok) -> None:
    """Near zero temperature, or a top_p that keeps only the likeliest token, samples the greedy completion;
    at temperature 1 with top_p 1 the samples are spread (the distribution is nearly flat)."""
    greedy = [[g[0]] * 4 for g in generate(model, tok, PROMPTS, max_new_tokens=8, progress=False)]
    assert _sample(model, tok, temperature=1e-4, seed=1) == greedy
    assert _sample(model, tok, top_p=1e-6, seed=1) == greedy
    spread = _sample(model, tok, seed=1)
    assert spread != greedy and all(len(set(samples)) > 1 for samples in spread)
    assert _sample(model, tok, top_p=0.5, seed=1) != spread  # the nucleus cuts the flat distribution


def test_stop_sequences_cut_completions() -> None:
    assert truncate_at_stop("    return x\ndef other():", ["\ndef", "\nclass"]) == "    return x"
    assert truncate_at_stop(" 7.\n#### 7\n\nQuestion: next", ["\n\n", "Question:"]) == " 7.\n#### 7"
    assert truncate_at_stop("no stop here", ["\n\n"]) == "no stop here"


def test_code_completions_end_where_the_function_ends() -> None:
    body = "    ys = [x + 1 for x in xs]\n\n    return ys\n"
    for after in ["assert f([1]) == [2]\n", "def g(x):\n    return x\n", "# note\n", "print(f([1]))", "if x:\n"]:
        assert truncate_at_stop(body + after, prompts.CODE_STOP) == body.rstrip("\n")
        assert truncate_at_stop(body + "\n\n" + after, prompts.CODE_STOP) == body + "\n"
    assert truncate_at_stop(body, prompts.CODE_STOP) == body  # indented and blank lines stay


def test_heldout_loss_matches_model_loss(model, tok) -> None:
    text = "Alice lives in Paris. Bob is a baker."
    res = heldout_loss(model, tok, [text], seq_len=128)
    ids = torch.tensor([[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]])
    with torch.no_grad():
        expected = float(model(ids, labels=ids).loss)
    assert res["loss"] == pytest.approx(expected, rel=1e-5)
