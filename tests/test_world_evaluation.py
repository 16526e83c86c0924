"""What the study evaluates on the generated world is measurable: every evaluated sequence of `mini` and `tiny`
fits the context the models were trained on, and no test or validation item (its prompt or its answer) occurs
in any text a model trains on (pre-training, fine-tuning pairs, CPT documents)."""
from __future__ import annotations

from pathlib import Path

import pytest

from lorastudy.config import load_profile
from lorastudy.data.examples import to_text
from lorastudy.data.prompts import math_prompt, math_response
from lorastudy.data.sources import load_spec
from lorastudy.data.world import MiniWorld, generate_world, pieces
from lorastudy.evaluation.context import within
from lorastudy.evaluation.run import reference_answers


@pytest.fixture(scope="module", params=["tiny", "mini"])
def profile(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LORASTUDY_CACHE", str(tmp_path_factory.mktemp("cache")))  # the world only: no base is built
    yield load_profile(request.param)
    mp.undo()


def n_tokens(text: str) -> int:
    """Token count as the mini tokenizer gives it: one per word-level piece, plus the bos every sequence starts with."""
    return 1 + sum(pieces([text]).values())


def test_the_trained_context_is_the_pretraining_and_fine_tuning_length(profile) -> None:
    assert profile.trained_context == 256 == profile.base.pretrain.seq_len
    assert profile.trained_context <= profile.base.architecture.max_position_embeddings


def test_every_evaluated_sequence_fits_the_trained_context(profile) -> None:
    ctx, longest = profile.trained_context, {}
    for domain, cfg in profile.eval.learning.items():
        sets = {"test": load_spec(profile, cfg.dataset)}
        if domain in profile.eval.validation:
            sets["validation"] = load_spec(profile, profile.eval.validation[domain])
        for split, records in sets.items():
            ids, pairs = reference_answers(profile, domain, records)
            for item, (prompt, answer) in zip(ids, pairs):
                generated = n_tokens(prompt) + cfg.max_new_tokens
                scored = n_tokens(prompt) + sum(pieces([answer]).values()) + 1  # + eos
                within(generated, ctx, f"{profile.name} {domain} {split} {item} generation")
                within(scored, ctx, f"{profile.name} {domain} {split} {item} answer NLL")
                longest[f"{domain} {split}"] = max(longest.get(f"{domain} {split}", 0), generated, scored)
    for name, cfg in profile.eval.forgetting.items():
        for item in load_spec(profile, cfg.dataset):
            for context, continuation in item.options:
                within(n_tokens(context + continuation), ctx, f"{profile.name} {name} {item.id}")
    assert longest["math test"] > ctx / 2  # the k-shot prompts are long: the check is not vacuous


def test_a_sequence_past_the_trained_context_is_refused_naming_item_and_lengths() -> None:
    with pytest.raises(ValueError, match=r"math test gsm8k/7: 300 tokens exceed the trained context of 256"):
        within(300, 256, "math test gsm8k/7")


def _training_texts(world: MiniWorld) -> str:
    texts = [d.text for d in world.pretrain + world.math_cpt + world.code_cpt]
    texts += [x for d in ("math", "code") for p in world.ift_pairs(d) for x in (p.prompt, p.response)]
    return "\0".join(texts)


@pytest.mark.parametrize("preset", ["tiny", "mini"])
def test_no_test_or_validation_item_occurs_in_any_training_text(preset: str) -> None:
    world = generate_world(load_profile(preset).base.world)
    seen = _training_texts(world)
    for p in world.math_test + world.math_val:
        assert p.question not in seen, f"math item {p.id}'s question is in training text"
        # the whole worked answer (a one-step answer's line may end a longer training answer: that is no leak)
        assert "Answer:" + math_response(p.answer) not in seen, f"math item {p.id}'s worked answer is in training text"
    for t in world.code_test + world.code_val:
        assert t.prompt not in seen, f"code task {t.task_id}'s prompt is in training text"
        assert t.canonical_solution not in seen, f"code task {t.task_id}'s body is in training text"


def test_pretraining_shows_the_evaluated_layouts_and_cpt_is_written_in_them() -> None:
    world = generate_world(load_profile("mini").base.world)
    pretrain = [d.text for d in world.pretrain]
    worked = [t for t in pretrain if t.startswith("Question: ") and "\n#### " in t]
    assert 0 < len(worked) <= 0.05 * len(pretrain)  # a little, as the paper's base saw a little GSM8K-like text
    cpt = [d.text for d in world.math_cpt]
    assert all(t.startswith("Question: ") and t.split("\n")[-1].startswith("#### ") for t in cpt)
    assert all(t == math_prompt(t[len("Question: "):t.index("\nAnswer:")]) + t[t.index("\nAnswer:") + 8:]
               for t in cpt[:50])
    code_tokens = sum(sum(pieces([d.text]).values()) for d in world.code_cpt)
    body_tokens = sum(sum(pieces([line]).values()) for d in world.code_cpt for line in d.text.split("\n")
                      if line.startswith("    ") and not line.strip().startswith('"""'))
    assert body_tokens / code_tokens > 0.3  # bodies a fair share of the code CPT tokens (was 13.6%)
    assert all(d.text.rstrip("\n").split("\n")[-1].startswith("    return ") for d in world.code_cpt)


def test_to_text_of_a_cpt_document_is_the_document(tmp_path: Path) -> None:
    world = generate_world(load_profile("tiny").base.world)
    assert to_text(world.math_cpt[0]) == world.math_cpt[0].text
