"""Wiring: every path from a checkpoint to a number in the results table, on the tiny profile's data with a small
random Llama as its base. Which checkpoint is evaluated (full FT weights, base + LoRA adapter), the exact prompts
(math k-shot from the training split, code as the task's prompt, multiple choice with shots from the other items),
which score feeds `learning_*` and `forgetting_avg`, the rows a checkpoint becomes in the results table, the exact
count of tokens a run trains on, and what a run's seed changes."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from lorastudy.config import load_profile
from lorastudy.data import prompts
from lorastudy.data.examples import to_text
from lorastudy.data.records import MathProblem, MCItem
from lorastudy.data.sources import load_spec, world_dir
from lorastudy.data.tokenizer import build_tokenizer
from lorastudy.evaluation import run as evaluation
from lorastudy.evaluation.choice import continuation_logprobs, fewshot_prefix, heldout_loss, score_choice
from lorastudy.io import read_json, read_jsonl, write_json
from lorastudy.layout import BASE_ID, Layout, RunPaths
from lorastudy.plan import RunSpec, find_run
from lorastudy.results import collect, collect_items
from lorastudy.train import finetune
from lorastudy.train.base import world_texts
from lorastudy.train.modeling import apply_lora
from lorastudy.train.training import ordered

FULL = "code-ift-full-lr0.001-s0"
LORA = "code-ift-lora-r8-a16-all-lr0.003-s0"


def random_llama(tok: Any, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny profile on a random Llama (saved as a pretrained base) with the tiny world's tokenizer; the world
    built into a private cache unless LORASTUDY_CACHE names one."""
    root = tmp_path_factory.mktemp("wiring")
    patch = pytest.MonkeyPatch()
    if not os.environ.get("LORASTUDY_CACHE"):
        patch.setenv("LORASTUDY_CACHE", str(root / "cache"))
    world = world_dir(load_profile("tiny"))
    tok = build_tokenizer(world_texts(world))
    model = random_llama(tok)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    profile = load_profile("tiny", {"base.kind": "pretrained", "base.count": 1, "base.model": str(root / "base"),
                                    "base.dtype": "float32"})
    yield SimpleNamespace(root=root, world=world, tok=tok, model=model, profile=profile)
    patch.undo()


class FakeGenerate:
    """Stands in for evaluation.generate: records every call and answers each prompt with `answer(prompt)`."""

    def __init__(self, answer: Any) -> None:
        self.answer, self.calls = answer, []

    def __call__(self, model: Any, tok: Any, texts: list[str], **kwargs: Any) -> list[list[str]]:
        self.calls.append({"texts": list(texts), **kwargs})
        return [[self.answer(t, j) for j in range(kwargs["n"])] for t in texts]


def hand_math_prompt(question: str, shots: list[dict[str, str]]) -> str:
    """lm-eval's GSM8K k-shot layout, written out by hand."""
    blocks = [f"Question: {s['question'].strip()}\nAnswer: {s['answer'].strip()}" for s in shots]
    return "\n\n".join([*blocks, f"Question: {question.strip()}\nAnswer:"])


# ----------------------------------------------------------------------------- prompts
def test_math_prompts_are_k_shot_from_the_training_split(tiny, monkeypatch) -> None:
    cfg = tiny.profile.eval.learning["math"]
    assert cfg.shots == 2
    test = load_spec(tiny.profile, cfg.dataset)
    train = read_jsonl(tiny.world / "math_train.jsonl")
    fake = FakeGenerate(lambda prompt, j: " 1 + 1 = 2.\n#### 2")
    monkeypatch.setattr(evaluation, "generate", fake)
    out = evaluation.evaluate_math(tiny.model, tiny.tok, cfg, tiny.profile, test, progress=False,
                                   out_dir=tiny.root / "math-out")
    right = sum(_gold(p) == "2" for p in test) / len(test)  # every completion answers 2, strictly
    assert out["strict_match"] == out["flexible_extract"] == pytest.approx(right) and 0 < right < 1
    (call,) = fake.calls
    assert call["texts"] == [hand_math_prompt(p.question, train[:2]) for p in test]
    assert call["texts"][0].count("Question: ") == 3 and call["texts"][0].count("#### ") == 2
    test_questions = {row["question"] for row in read_jsonl(tiny.world / "math_test.jsonl")}
    assert not {s["question"] for s in train[:2]} & test_questions  # the shots are never test items
    assert (call["max_new_tokens"], call["temperature"], call["top_p"], call["n"], call["batch_size"]) == (
        cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.n_samples, cfg.batch_size)
    assert call["stop"] == prompts.MATH_STOP
    # what was generated is what was scored and stored, item by item
    stored = read_jsonl(tiny.root / "math-out" / "math_predictions.jsonl")
    assert [r["completion"] for r in stored] == [" 1 + 1 = 2.\n#### 2"] * len(test)
    assert [r["question"] for r in stored] == [p.question for p in test]
    assert out["n"] == len(test) == cfg.dataset.limit
    # the answer NLL is read after the same k-shot prompt, the reference answer after it
    ids, pairs = evaluation.reference_answers(tiny.profile, "math", test)
    assert [p for p, _ in pairs] == call["texts"]
    assert [a for _, a in pairs] == [" " + p.answer.strip() for p in test]
    assert ids == [p.id for p in test] and len(set(ids)) == len(ids)


def test_one_shot_from_a_training_set_of_problems(tiny) -> None:
    """A math training set read as GSM8K problems (not instruction pairs) gives its shots the same way."""
    profile = load_profile("tiny", {"base.kind": "pretrained", "base.count": 1, "base.model": tiny.profile.base.model,
                                    "eval.learning.math.shots": 1,
                                    "data.math.ift": {"adapter": "gsm8k", "source": "{world}/math_train.jsonl"}})
    test = load_spec(profile, profile.eval.learning["math"].dataset)[:3]
    train = read_jsonl(tiny.world / "math_train.jsonl")
    _, pairs = evaluation.reference_answers(profile, "math", test)
    assert [p for p, _ in pairs] == [hand_math_prompt(p.question, train[:1]) for p in test]


def test_items_without_ids_are_named_by_position() -> None:
    problems = [MathProblem(question="Ann has 2. How many?", answer="2.\n#### 2", id=""),
                MathProblem(question="Bob has 3. How many?", answer="3.\n#### 3", id="")]
    ids, _ = evaluation.reference_answers(load_profile("tiny", {"eval.learning.math.shots": 0}), "math", problems)
    assert ids == ["0", "1"] and evaluation.item_id("", 7) == "7" and evaluation.item_id("x/1", 7) == "x/1"


def test_zero_shots_give_the_plain_prompt(tiny) -> None:
    profile = load_profile("tiny", {"base.kind": "pretrained", "base.count": 1, "base.model": tiny.profile.base.model,
                                    "eval.learning.math.shots": 0})
    test = load_spec(profile, profile.eval.learning["math"].dataset)[:2]
    _, pairs = evaluation.reference_answers(profile, "math", test)
    assert [p for p, _ in pairs] == [f"Question: {p.question.strip()}\nAnswer:" for p in test]


def test_code_prompts_are_the_task_prompts_and_sampling_follows_the_profile(tiny, monkeypatch) -> None:
    profile = load_profile("tiny", {"base.kind": "pretrained", "base.count": 1, "base.model": tiny.profile.base.model,
                                    "eval.learning.code.n_samples": 3, "eval.learning.code.temperature": 0.7,
                                    "eval.learning.code.top_p": 0.9, "eval.learning.code.ks": [1, 2]})
    cfg = profile.eval.learning["code"]
    tasks = load_spec(profile, cfg.dataset)[:4]
    fake = FakeGenerate(lambda prompt, j: "    return None\n")
    monkeypatch.setattr(evaluation, "generate", fake)
    evaluation.evaluate_code(tiny.model, tiny.tok, cfg, tasks, progress=False)
    (call,) = fake.calls
    raw = read_jsonl(tiny.world / "code_test.jsonl")[:4]
    assert call["texts"] == [r["prompt"] for r in raw]
    assert (call["temperature"], call["top_p"], call["n"], call["max_new_tokens"]) == (0.7, 0.9, 3, 32)
    assert call["stop"] == prompts.CODE_STOP


def test_several_code_samples_are_scored_each_and_pass_at_k_follows_the_profile(tiny, monkeypatch) -> None:
    """Three samples per task, the first and last right: pass@1 is 2/3 per task, pass@2 is 1 (one wrong sample
    cannot fill two draws); the sandbox is asked for the profile's ks and timeout; distinct completions counted."""
    profile = load_profile("tiny", {"base.kind": "pretrained", "base.count": 1, "base.model": tiny.profile.base.model,
                                    "eval.learning.code.n_samples": 3, "eval.learning.code.temperature": 0.7,
                                    "eval.learning.code.ks": [1, 2], "eval.learning.code.timeout": 2.5,
                                    "eval.learning.code.dataset.limit": 4})
    tasks = load_spec(profile, profile.eval.learning["code"].dataset)
    solution = {t.prompt: t.canonical_solution for t in tasks}
    monkeypatch.setattr(evaluation, "generate", FakeGenerate(
        lambda prompt, j: solution[prompt] if j != 1 else "    return None\n"))
    asked = []
    real = evaluation.evaluate_samples

    def recording(samples, problems, **kw):
        asked.append(kw)
        return real(samples, problems, **kw)

    monkeypatch.setattr(evaluation, "evaluate_samples", recording)
    direct = evaluation.evaluate_code(tiny.model, tiny.tok, profile.eval.learning["code"], tasks, progress=False)
    assert "samples" not in direct and direct["items"] == {"pass@1": [pytest.approx(2 / 3)] * 4}
    assert (asked[0]["ks"], asked[0]["timeout"]) == ((1, 2), 2.5)
    metrics, items = evaluation.evaluate_model(tiny.model, tiny.tok, profile, domains=["code"], progress=False,
                                               validation=False)
    assert metrics["humaneval_pass@1"] == metrics["learning_code"] == pytest.approx(2 / 3)
    assert metrics["humaneval_pass@2"] == pytest.approx(1.0)
    assert metrics["humaneval_unique_passing"] == pytest.approx(1.0)  # the two right samples are the same text
    assert metrics["humaneval_unique_failing"] == pytest.approx(1.0)
    assert [x["value"] for x in items if x["metric"] == "learning_code"] == [pytest.approx(2 / 3)] * 4
    assert not any(m.startswith("val_") for m in metrics)  # validation=False: no validation NLL


# ----------------------------------------------------------------------------- which score feeds which metric
def _gold(problem: Any) -> str:
    return problem.answer.split("####")[-1].strip()


def test_learning_math_is_strict_match(tiny, monkeypatch) -> None:
    """Items 0, 3, 6, ...: `#### gold` (strict and flexible right); 1, 4, ...: the gold number without `####`
    (flexible only); 2, 5, ...: a wrong `####` answer (neither)."""
    test = load_spec(tiny.profile, tiny.profile.eval.learning["math"].dataset)
    by_question = {p.question: p for p in test}

    def answer(prompt: str, j: int) -> str:
        problem = by_question[prompt.rsplit("Question: ", 1)[1].removesuffix("\nAnswer:")]
        i = test.index(problem)
        return [f" so.\n#### {_gold(problem)}", f" it is {_gold(problem)}", f" {_gold(problem)}\n#### 99999"][i % 3]

    monkeypatch.setattr(evaluation, "generate", FakeGenerate(answer))
    metrics, items = evaluation.evaluate_model(tiny.model, tiny.tok, tiny.profile, domains=["math"],
                                               progress=False)
    n = len(test)
    strict, flexible = sum(i % 3 == 0 for i in range(n)) / n, sum(i % 3 != 2 for i in range(n)) / n
    assert metrics["gsm8k_strict_match"] == pytest.approx(strict)
    assert metrics["gsm8k_flexible_extract"] == pytest.approx(flexible)
    assert metrics["learning_math"] == pytest.approx(strict) and strict != flexible
    per_item = [x["value"] for x in items if x["metric"] == "learning_math"]
    assert per_item == [float(i % 3 == 0) for i in range(n)]
    assert "learning_code" not in metrics and not any(m.startswith("humaneval") for m in metrics)


def test_learning_code_is_pass_at_1_in_the_sandbox(tiny, monkeypatch) -> None:
    """Even tasks answered with their canonical solution, odd ones wrongly: pass@1 is the share of even tasks,
    item by item, as the sandbox ran them."""
    tasks = load_spec(tiny.profile, tiny.profile.eval.learning["code"].dataset)
    solution = {t.prompt: t.canonical_solution for t in tasks}
    order = [t.prompt for t in tasks]
    monkeypatch.setattr(evaluation, "generate", FakeGenerate(
        lambda prompt, j: solution[prompt] if order.index(prompt) % 2 == 0 else "    return None\n"))
    metrics, items = evaluation.evaluate_model(tiny.model, tiny.tok, tiny.profile, domains=["code"],
                                               progress=False, out_dir=tiny.root / "code-out")
    assert metrics["learning_code"] == metrics["humaneval_pass@1"] == pytest.approx(0.5)
    per_item = {x["item"]: x["value"] for x in items if x["metric"] == "learning_code"}
    assert per_item == {t.task_id: float(i % 2 == 0) for i, t in enumerate(tasks)}
    samples = read_jsonl(tiny.root / "code-out" / "code_samples.jsonl")
    assert [s["passed"] for s in samples] == [i % 2 == 0 for i in range(len(tasks))]
    assert "learning_math" not in metrics and not any(k.startswith("humaneval_unique_") for k in metrics)  # 1 sample


class FakeChoice:
    """Stands in for score_choice: per set (recognised by its first item), records whose acc and acc_norm are
    the given shares."""

    def __init__(self, profile: Any, shares: dict[str, tuple[float, float]]) -> None:
        self.by_first, self.shares, self.calls = {}, shares, []
        for name, cfg in profile.eval.forgetting.items():
            self.by_first[load_spec(profile, cfg.dataset)[0]] = name

    def __call__(self, model: Any, tok: Any, items: list[MCItem], *, shots: int, **kw: Any) -> dict[str, Any]:
        name = self.by_first[items[0]]
        self.calls.append((name, shots, len(items)))
        acc, norm = self.shares[name]
        n = len(items)
        records = [{"id": it.id, "gold": it.gold, "pred": it.gold if i < round(acc * n) else (it.gold + 1) % 2,
                    "pred_norm": it.gold if i < round(norm * n) else (it.gold + 1) % 2}
                   for i, it in enumerate(items)]
        return {"records": records}


def test_forgetting_avg_is_the_mean_of_each_sets_named_metric(tiny, monkeypatch) -> None:
    """tiny scores HellaSwag and ARC by acc_norm and WinoGrande by acc: with those at 1, 0.5 and 0.25 (and the
    other metric of each set elsewhere), forgetting_avg is their mean, 0.5833."""
    profile = load_profile("tiny", {"base.kind": "pretrained", "base.count": 1, "base.model": tiny.profile.base.model,
                                    "base.dtype": "float32", "eval.forgetting.arc_challenge.shots": 3,
                                    "training.seq_len": 32})
    fake = FakeChoice(profile, {"hellaswag": (0.0, 1.0), "arc_challenge": (1.0, 0.5), "winogrande": (0.25, 0.75)})
    monkeypatch.setattr(evaluation, "score_choice", fake)
    monkeypatch.setattr(evaluation, "generate", FakeGenerate(lambda prompt, j: " #### 0"))
    metrics, items = evaluation.evaluate_model(tiny.model, tiny.tok, profile, domains=["math"], progress=False)
    assert sorted(fake.calls) == [("arc_challenge", 3, 24), ("hellaswag", 0, 24), ("winogrande", 0, 24)]
    assert metrics["hellaswag_acc_norm"] == 1.0 and metrics["hellaswag_acc"] == 0.0
    assert metrics["arc_challenge_acc_norm"] == 0.5 and metrics["winogrande_acc"] == 0.25
    assert metrics["forgetting_avg"] == pytest.approx((1.0 + 0.5 + 0.25) / 3)
    for name in ("hellaswag_acc_norm", "arc_challenge_acc", "winogrande_acc"):
        values = [x["value"] for x in items if x["metric"] == name]
        assert len(values) == 24 and sum(values) / 24 == pytest.approx(metrics[name])
    mc = load_spec(profile, profile.eval.forgetting["winogrande"].dataset)
    assert [x["item"] for x in items if x["metric"] == "winogrande_acc"] == [it.id or str(i) for i, it in enumerate(mc)]
    # the held-out loss is read in windows of the profile's training length
    texts = [to_text(r) for r in load_spec(profile, profile.eval.heldout["source"])]
    at_32 = heldout_loss(tiny.model, tiny.tok, texts, seq_len=32)["loss"]
    assert metrics["heldout_source_loss"] == pytest.approx(at_32, rel=1e-6)
    assert at_32 != pytest.approx(heldout_loss(tiny.model, tiny.tok, texts, seq_len=128)["loss"], rel=1e-6)


# ----------------------------------------------------------------------------- multiple-choice shots
def test_choice_shots_are_solved_examples_of_the_other_items(tiny) -> None:
    items = load_spec(tiny.profile, tiny.profile.eval.forgetting["hellaswag"].dataset)
    solved = {"".join(it.options[it.gold]) + "\n\n": i for i, it in enumerate(items)}
    for i in range(len(items)):
        prefix = fewshot_prefix(i, items, 3)
        blocks = [b + "\n\n" for b in prefix.split("\n\n")[:-1]]
        assert len(blocks) == 3 and "".join(blocks) == prefix
        drawn = [solved[b] for b in blocks]  # each block is another item, solved with its gold option
        assert i not in drawn and len(set(drawn)) == 3
        assert fewshot_prefix(i, items, 3) == prefix  # deterministic
    assert fewshot_prefix(0, items, 0) == ""
    assert len({fewshot_prefix(i, items, 3) for i in range(len(items))}) > 1


def test_choice_scores_read_the_continuation_after_the_shots(tiny) -> None:
    """score_choice with shots equals the log-likelihood of each option after `prefix + context`, scored one
    option at a time; and differs from the 0-shot scores."""
    items = load_spec(tiny.profile, tiny.profile.eval.forgetting["arc_challenge"].dataset)[:6]
    shot = score_choice(tiny.model, tiny.tok, items, shots=2, batch_size=5, progress=False)
    plain = score_choice(tiny.model, tiny.tok, items, shots=0, batch_size=5, progress=False)
    for i, item in enumerate(items):
        prefix = fewshot_prefix(i, items, 2)
        assert prefix.count("\n\n") == 2
        for j, (context, continuation) in enumerate(item.options):
            ids = [tiny.tok.bos_token_id, *tiny.tok(prefix + context, add_special_tokens=False)["input_ids"]]
            cont = tiny.tok(continuation, add_special_tokens=False)["input_ids"]
            alone = continuation_logprobs(tiny.model, tiny.tok, [(0, 0, ids + cont, len(cont))], progress=False)
            assert shot["records"][i]["loglik"][j] == pytest.approx(alone[(0, 0)], abs=1e-4)
    assert [r["loglik"] for r in shot["records"]] != [r["loglik"] for r in plain["records"]]


# ----------------------------------------------------------------------------- the base, end to end
def test_the_base_is_evaluated_on_everything_once(tiny, monkeypatch) -> None:
    out = tiny.root / "base-out"
    start = time.perf_counter()
    rows = evaluation.evaluate_base(tiny.profile, out, progress=False)
    elapsed = time.perf_counter() - start
    metrics = {r["metric"]: r["value"] for r in rows}
    assert {r["step"] for r in rows} == {0} and all(0 <= r["eval_seconds"] <= elapsed for r in rows)
    base_dir = Layout(out).base_dir  # what the base generated is kept beside its record
    assert len(read_jsonl(base_dir / "math_predictions.jsonl")) == tiny.profile.eval.learning["math"].dataset.limit
    assert len(read_jsonl(base_dir / "code_samples.jsonl")) == tiny.profile.eval.learning["code"].dataset.limit
    assert {r["run_id"] for r in rows} == {BASE_ID} and {r["checkpoint"] for r in rows} == {"base"}
    assert {r["tokens_seen"] for r in rows} == {0} and {r["duration"] for r in rows} == {0}
    assert {"learning_code", "learning_math", "gsm8k_strict_match", "humaneval_pass@1", "answer_nll_code",
            "answer_nll_math", "val_answer_nll_code", "val_answer_nll_math", "forgetting_avg",
            "heldout_source_loss", "hellaswag_acc_norm", "arc_challenge_acc_norm", "winogrande_acc"} <= set(metrics)
    assert metrics["forgetting_avg"] == pytest.approx(
        (metrics["hellaswag_acc_norm"] + metrics["arc_challenge_acc_norm"] + metrics["winogrande_acc"]) / 3)
    assert metrics["learning_math"] == metrics["gsm8k_strict_match"]
    assert math.isfinite(metrics["heldout_source_loss"]) and metrics["answer_nll_math"] > 0
    # the base evaluated is the profile's base: its held-out loss is this model's
    texts = [to_text(r) for r in load_spec(tiny.profile, tiny.profile.eval.heldout["source"])]
    assert metrics["heldout_source_loss"] == pytest.approx(
        heldout_loss(tiny.model, tiny.tok, texts, seq_len=tiny.profile.training.seq_len)["loss"], rel=1e-5)
    # the per-item values average to each metric, and the cache answers a second call
    record = read_json(Layout(out).base_eval)
    frame = pd.DataFrame(record["items"])
    means = frame.groupby("metric").value.mean()
    assert all(means[m] == pytest.approx(metrics[m]) for m in means.index)
    monkeypatch.setattr(evaluation, "evaluate_model", lambda *a, **k: pytest.fail("evaluated twice"))
    assert evaluation.evaluate_base(tiny.profile, out, progress=False) == rows


# ----------------------------------------------------------------------------- a run's checkpoints
def _write_run(tiny: Any, out: Path, run_id: str, models: dict[str, Any]) -> RunSpec:
    """A trained run as training leaves it: a checkpoint per label (duration 0.5 and 1 epochs), train.json."""
    spec = find_run(tiny.profile, run_id)
    paths = Layout(out).run(run_id)
    metas = []
    for k, (label, model) in enumerate(models.items()):
        model.save_pretrained(paths.checkpoint(label))
        metas.append({"checkpoint": label, "duration": float(label.split("-")[1]), "duration_unit": "epochs",
                      "step": 5 * (k + 1), "tokens_seen": 1000 * (k + 1)})
    write_json(paths.train_record, {"status": "completed", "checkpoints": metas, "wall_time_s": 1.0,
                                    "provenance": {"seed": spec.seed}})
    return spec


class FakeEvaluateModel:
    """Stands in for evaluate_model: records each model and its arguments; metrics fingerprint the weights."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, model: Any, tok: Any, profile: Any, **kw: Any) -> tuple[dict[str, float], list]:
        self.calls.append({"model": model, "tok": tok, "profile": profile, **kw})
        with torch.no_grad():
            value = float(sum(p.double().sum() for p in model.parameters()))
        return {"learning_code": value, "forgetting_avg": 0.5}, [{"item": "t", "metric": "learning_code",
                                                                  "value": value}]


def _perturbed(model: Any, seed: int) -> Any:
    copy = random_llama_like(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return copy


def random_llama_like(model: Any) -> Any:
    copy = LlamaForCausalLM(model.config)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def test_each_checkpoint_of_a_full_run_is_evaluated_with_its_own_weights(tiny, monkeypatch) -> None:
    out = tiny.root / "full-out"
    models = {"epochs-0.5": _perturbed(tiny.model, 1), "epochs-1": _perturbed(tiny.model, 2)}
    spec = _write_run(tiny, out, FULL, models)
    fake = FakeEvaluateModel()
    monkeypatch.setattr(evaluation, "evaluate_model", fake)
    start = time.perf_counter()
    rows = evaluation.evaluate_run(tiny.profile, spec, Layout(out).run(FULL).dir, progress=False)
    elapsed = time.perf_counter() - start
    assert len(fake.calls) == 2
    paths = Layout(out).run(FULL)
    for call, (label, saved) in zip(fake.calls, models.items()):
        assert call["profile"] is tiny.profile and call["tok"].get_vocab() == tiny.tok.get_vocab()
        record = read_json(paths.eval_record(label))
        assert 0 <= record["load_seconds"] <= elapsed and all(0 <= r["eval_seconds"] <= elapsed for r in record["rows"])
        got = dict(call["model"].named_parameters())
        assert all(torch.equal(got[n], p) for n, p in saved.named_parameters())
        assert call["domains"] == ["code"] and call["out_dir"] == RunPaths(Layout(out).run(FULL).dir).eval_outputs(label)
        assert call["validation"] is (label == "epochs-1")  # the validation NLL only at the longest duration
    table = pd.DataFrame(rows)
    assert list(table.checkpoint.unique()) == ["epochs-0.5", "epochs-1"]
    assert table.groupby("checkpoint").tokens_seen.first().to_dict() == {"epochs-0.5": 1000, "epochs-1": 2000}
    assert table.groupby("checkpoint").step.first().to_dict() == {"epochs-0.5": 5, "epochs-1": 10}
    assert set(table.duration_unit) == {"epochs"} and set(table.run_id) == {FULL}
    learning = table[table.metric == "learning_code"].set_index("checkpoint").value
    assert learning["epochs-0.5"] != learning["epochs-1"]
    # cached per checkpoint: a second evaluation reads the records, and the run's rows reach the table
    assert evaluation.evaluate_run(tiny.profile, spec, Layout(out).run(FULL).dir, progress=False) == rows
    assert len(fake.calls) == 2
    evaluation.finish_run(tiny.profile, spec, out, rows)
    done = read_json(paths.results_record)
    assert (done["run_id"], done["status"], done["rows"]) == (FULL, "completed", rows)
    assert done["provenance"] == {"seed": 0} and done["train_wall_time_s"] == 1.0
    wide = evaluation.run_table(rows)  # one line per checkpoint in training order, a column per metric
    assert wide.index.tolist() == [("epochs-0.5", 1000), ("epochs-1", 2000)]
    assert wide.loc[("epochs-1", 2000), "learning_code"] == learning["epochs-1"]
    assert list(wide.columns) == ["forgetting_avg", "learning_code"]
    cpt = [{"checkpoint": label, "tokens_seen": tokens, "metric": "learning_code", "value": v}
           for label, tokens, v in (("tokens-16000", 16000, 0.2), ("tokens-8000", 8000, 0.1))]
    assert evaluation.run_table(cpt).index.tolist() == [("tokens-8000", 8000), ("tokens-16000", 16000)]  # not by name
    df = collect(tiny.profile, out)
    mine = df[df.run_id == FULL]
    assert set(mine.method) == {"full"} and set(mine.learning_rate) == {spec.learning_rate}
    assert mine.set_index(["checkpoint", "metric"]).value.to_dict() == {
        (r["checkpoint"], r["metric"]): r["value"] for r in rows}
    items = collect_items(tiny.profile, out)
    assert items[items.run_id == FULL].groupby("checkpoint").value.first().to_dict() == learning.to_dict()


def test_a_lora_checkpoint_is_evaluated_as_the_base_plus_its_adapter(tiny, monkeypatch) -> None:
    out = tiny.root / "lora-out"
    spec = find_run(tiny.profile, LORA)
    adapters = {}
    for label, seed in (("epochs-0.5", 1), ("epochs-1", 2)):
        lora = apply_lora(random_llama_like(tiny.model), spec, tiny.profile)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.5 * torch.randn(p.shape, generator=g))
        adapters[label] = lora.eval()
    _write_run(tiny, out, LORA, adapters)
    fake = FakeEvaluateModel()
    monkeypatch.setattr(evaluation, "evaluate_model", fake)
    evaluation.evaluate_run(tiny.profile, spec, Layout(out).run(LORA).dir, progress=False)
    ids = torch.tensor([[tiny.tok.bos_token_id, 5, 6, 7, 8]])
    with torch.no_grad():
        base_logits = tiny.model(ids).logits
        for call, (label, lora) in zip(fake.calls, adapters.items()):
            got = call["model"].eval()(ids).logits
            assert torch.allclose(got, lora(ids).logits, atol=1e-5), label
            # merged into the weights: evaluation pays no adapter dispatch per layer
            assert not any("lora_" in name for name, _ in call["model"].named_parameters()), label
            assert not torch.allclose(got, base_logits, atol=1e-3), label


# ----------------------------------------------------------------------------- training: tokens and seeds
@pytest.fixture(scope="module")
def trained(tiny) -> dict[str, Any]:
    """The tiny code IFT LoRA run trained on the random base with seeds 0 and 1, and seed 0 again."""
    base = find_run(tiny.profile, LORA)
    runs = {}
    for name, seed in (("a", 0), ("b", 1), ("again", 0)):
        spec = dataclasses.replace(base, seed=seed)
        run_dir = tiny.root / "train" / name
        runs[name] = (spec, finetune.train_in_process(tiny.profile, spec, run_dir, progress=False), run_dir)
    return runs


def test_tokens_seen_are_the_tokens_of_the_examples_trained_on(tiny, trained) -> None:
    """IFT examples differ in length, so batches are padded: each checkpoint counts exactly the tokens of the
    examples its steps read, in the run's seeded order, and no padding."""
    spec, summary, _ = trained["b"]
    examples, unit = finetune.train_examples(tiny.profile, spec, tiny.tok)
    assert unit == "epochs" and len({len(e["input_ids"]) for e in examples}) > 1
    batch = tiny.profile.training.batch_size
    run_order = ordered(examples, 10 * batch, spec.seed)
    for meta in summary["checkpoints"]:
        consumed = run_order[:meta["step"] * batch]
        assert meta["tokens_seen"] == sum(len(e["input_ids"]) for e in consumed), meta["checkpoint"]
        padded = sum(batch * max(len(e["input_ids"]) for e in consumed[i:i + batch])
                     for i in range(0, len(consumed), batch))
        assert padded > meta["tokens_seen"]  # there was padding to leave out
    assert [m["step"] for m in summary["checkpoints"]] == [5, 10]
    assert summary["n_examples"] == len(examples) == 150


def test_a_runs_seed_orders_its_data_and_initialises_its_adapter(tiny, trained) -> None:
    """Seed 1 reads another order (another token count at the half epoch) from another LoRA init and ends
    elsewhere; seed 0 twice ends bit for bit the same."""
    (spec_a, a, dir_a), (spec_b, b, dir_b), (_, again, dir_again) = trained["a"], trained["b"], trained["again"]
    examples, _ = finetune.train_examples(tiny.profile, spec_a, tiny.tok)
    half = 5 * tiny.profile.training.batch_size
    expected = {s: sum(len(e["input_ids"]) for e in ordered(examples, half, s)) for s in (0, 1)}
    assert expected[0] != expected[1]
    assert [a["checkpoints"][0]["tokens_seen"], b["checkpoints"][0]["tokens_seen"]] == [expected[0], expected[1]]

    def weights(run_dir: Path, label: str = "epochs-1") -> dict[str, torch.Tensor]:
        return load_file(RunPaths(run_dir).checkpoint(label) / "adapter_model.safetensors")

    wa, wb, w_again = weights(dir_a), weights(dir_b), weights(dir_again)
    assert wa.keys() == w_again.keys() and all(torch.equal(wa[k], w_again[k]) for k in wa)
    assert [p["loss"] for p in a["loss_curve"]] == [p["loss"] for p in again["loss_curve"]]
    assert not any(torch.equal(wa[k], wb[k]) for k in wa if "lora_A" in k)
    assert a["spec"]["seed"] == 0 and b["spec"]["seed"] == 1 and b["provenance"]["seed"] == 1
    # the adapter's initial A matrices come from the seed (B starts at zero)
    init = {s: {n: p.detach().clone() for n, p in finetune.fresh_model(tiny.profile, spec)[0].named_parameters()
                if "lora_A" in n} for s, spec in ((0, spec_a), (1, spec_b))}
    assert all(not torch.equal(init[0][n], init[1][n]) for n in init[0])


def test_a_runs_seed_reaches_trainer(tiny, trained, monkeypatch, tmp_path: Path) -> None:
    """The seed Trainer draws dropout masks (and its data seed) from is the run's, in the main run and the
    cooldown branch."""
    spec, _, _ = trained["b"]
    seen = []

    def recording(model, data, *, args, branch, **kw):
        seen.append((args.seed, args.data_seed))
        result = branch(5, 6)[1]
        seen.append((result.seed, result.data_seed))
        raise RuntimeError("stop here")

    monkeypatch.setattr(finetune, "fit", recording)
    with pytest.raises(RuntimeError, match="stop here"):
        finetune.train_in_process(tiny.profile, spec, tmp_path / "run", progress=False)
    assert seen == [(1, 1), (1, 1)]
