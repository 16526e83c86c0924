"""The offline mini world: a generated stand-in for pre-training knowledge (source), math and code.

Why generated: the study needs a base model that *knows* something before fine-tuning (facts about people,
arithmetic, Python syntax) so that forgetting can be measured, and two target domains it can still learn, all
offline and small enough for 2 CPU cores. Every part draws from its own `random.Random(f"{seed}:{part}")`, never
global state, so one config gives byte-identical files, and resizing one part leaves the others unchanged.

Formats the trainer and evaluator rely on (the same as for the real datasets):
- math: prompt `lorastudy.data.prompts.math_prompt(q)` = "Question: {q}\\nAnswer:" (0-shot), response " " + worked
  answer whose lines are "<sentence>. a op b = c." and whose last line is "#### n";
- code: prompt = task.prompt (signature + docstring), response = task.canonical_solution (4-space body);
- multiple choice: exactly what `lorastudy.data.adapters` reads from the written Gauntlet files, ids included.

Rooms: `settings` (sizes, presets, seeding), `vocabulary` (word lists), `people` (source facts and
multiple choice), `arithmetic` (arithmetic and word problems), `parts` + `code` (code tasks); this module
joins them into a `MiniWorld` and writes it once per config into the cache (`ensure_world`).
"""
from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lorastudy.data.prompts import math_prompt, math_response
from lorastudy.data.records import CodeTask, InstructionPair, MathProblem, MCItem, TextDoc
from lorastudy.data.tokenizer import PIECES
from lorastudy.data.world.arithmetic import arithmetic_docs, arithmetic_facts, word_problems
from lorastudy.data.world.code import code_tasks
from lorastudy.data.world.people import Person, heldout_docs, make_people, source_docs, source_mc
from lorastudy.data.world.settings import MINI, PRESETS, TINY, WorldConfig, part_rng
from lorastudy.data.world.vocabulary import ATTRIBUTES, VALUES
from lorastudy.io import config_hash, write_json, write_jsonl
from lorastudy.layout import world_cache

_PIECE = re.compile(PIECES)

__all__ = ["ATTRIBUTES", "MINI", "PRESETS", "TINY", "VALUES", "MiniWorld", "Person", "WorldConfig", "arithmetic_facts",
           "ensure_world", "generate_world"]


@dataclass
class MiniWorld:
    """Every part of the world as records; `write` saves them in the real datasets' file layouts."""

    config: WorldConfig
    people: list[Person]
    pretrain: list[TextDoc]
    source_heldout: list[TextDoc]
    source_mc: dict[str, list[MCItem]]
    math_train: list[MathProblem]
    math_test: list[MathProblem]
    math_val: list[MathProblem]
    math_cpt: list[TextDoc]
    code_train: list[CodeTask]
    code_test: list[CodeTask]
    code_val: list[CodeTask]
    code_cpt: list[TextDoc]

    def ift_pairs(self, domain: str) -> list[InstructionPair]:
        """Instruction pairs in the evaluation's own prompt format (math 0-shot Question/Answer; code = prompt)."""
        if domain == "math":
            return [InstructionPair(math_prompt(p.question), math_response(p.answer), p.id) for p in self.math_train]
        if domain == "code":
            return [InstructionPair(t.prompt, t.canonical_solution, t.task_id) for t in self.code_train]
        raise ValueError(f"unknown domain {domain!r}; choose 'math' or 'code'")

    def target_texts(self) -> dict[str, list[str]]:
        """Every text a model reads outside pre-training: fine-tuning pairs, CPT, test prompts and references,
        the forgetting sets and the held-out source text (a test's programs, run but never read, are not)."""
        mc = {f"forgetting_{k}": [x for it in v for option in it.options for x in option]
              for k, v in self.source_mc.items()}
        return {
            **{f"{d}_ift": [x for p in self.ift_pairs(d) for x in (p.prompt, p.response)] for d in ("code", "math")},
            "code_cpt": [d.text for d in self.code_cpt], "math_cpt": [d.text for d in self.math_cpt],
            "code_test": [x for t in self.code_test + self.code_val for x in (t.prompt, t.canonical_solution)],
            "math_test": [x for p in self.math_test + self.math_val
                          for x in (math_prompt(p.question), math_response(p.answer))],
            **mc, "source_heldout": [d.text for d in self.source_heldout],
        }

    def unseen_tokens(self) -> dict[str, Counter[str]]:
        """Per part, the tokens (tokenizer pieces) that never occur in pre-training: their embedding rows stay
        untrained, which full fine-tuning can repair and LoRA (embeddings frozen) cannot."""
        seen = pieces(d.text for d in self.pretrain)
        out = {}
        for part, texts in self.target_texts().items():
            unseen = Counter({k: v for k, v in pieces(texts).items() if k not in seen})
            if unseen:
                out[part] = unseen
        return out

    def write(self, folder: str | Path) -> dict[str, str]:
        """Write every part (atomic files) in the layouts the adapters read; returns part -> path."""
        folder = Path(folder)
        mc = self.source_mc
        rows: dict[str, list[dict]] = {
            "pretrain": [{"text": d.text} for d in self.pretrain],
            "source_heldout": [{"text": d.text} for d in self.source_heldout],
            "math_cpt": [{"text": d.text} for d in self.math_cpt],
            "code_cpt": [{"text": d.text} for d in self.code_cpt],
            "math_train": [{"question": p.question, "answer": p.answer} for p in self.math_train],
            "math_test": [{"question": p.question, "answer": p.answer} for p in self.math_test],
            "math_val": [{"question": p.question, "answer": p.answer} for p in self.math_val],
            "code_train": [_humaneval_row(t) for t in self.code_train],
            "code_test": [_humaneval_row(t) for t in self.code_test],
            "code_val": [_humaneval_row(t) for t in self.code_val],
            "source_completion": [{"query": i.options[0][0], "choices": [c[1:] for _, c in i.options], "gold": i.gold}
                                  for i in mc["completion"]],
            "source_question": [{"choices": [c[1:] for _, c in i.options],
                                 "query": i.options[0][0].removesuffix("\nAnswer:"), "gold": i.gold}
                                for i in mc["question"]],
            "source_fillin": [{"context_options": [ctx for ctx, _ in i.options], "continuation": i.options[0][1][1:],
                               "gold": i.gold} for i in mc["fill_in"]],
        }
        paths = {part: str(folder / f"{part}.jsonl") for part in rows}
        for part, part_rows in rows.items():
            write_jsonl(paths[part], part_rows)
        paths["world"] = str(folder / "world.json")
        write_json(paths["world"], {"config": self.config.model_dump(), "counts": {p: len(r) for p, r in rows.items()},
                                    "people": len(self.people)})
        return paths


def _humaneval_row(t: CodeTask) -> dict[str, str]:
    """HumanEval's own key order."""
    return {"task_id": t.task_id, "prompt": t.prompt, "entry_point": t.entry_point,
            "canonical_solution": t.canonical_solution, "test": t.test}


def generate_world(cfg: WorldConfig) -> MiniWorld:
    """The whole world for one config (deterministic; about a second for `mini`)."""
    people = make_people(cfg)
    source = source_docs(cfg, people)
    math_train, math_test, math_val, math_cpt, stories = word_problems(cfg)
    code_train, code_test, code_val, code_cpt, code_docs = code_tasks(cfg)
    pretrain = source + arithmetic_docs(cfg) + stories + code_docs
    part_rng(cfg, "pretrain-order").shuffle(pretrain)
    return MiniWorld(
        config=cfg, people=people, pretrain=_ids(pretrain), source_heldout=_ids(heldout_docs(cfg, people)),
        source_mc=source_mc(cfg, people), math_train=math_train, math_test=math_test, math_val=math_val,
        math_cpt=_ids(math_cpt), code_train=code_train, code_test=code_test, code_val=code_val,
        code_cpt=_ids(code_cpt))


def pieces(texts: Iterable[str]) -> Counter[str]:
    """How often each tokenizer piece occurs in `texts` (the word-level tokenizer's vocabulary is its pieces).
    The tokenizer's own pattern through `re`: its matches are the pieces (it covers every character), 3x faster."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(_PIECE.findall(text))
    return counts


def _ids(docs: list[str]) -> list[TextDoc]:
    """TextDocs with the ids the `text` adapter gives when it reads them back."""
    return [TextDoc(text, f"text/{i}") for i, text in enumerate(docs)]


def ensure_world(cfg: WorldConfig) -> Path:
    """The world's files, generated once per config into the cache (atomic: built beside, then renamed)."""
    path = world_cache(config_hash(cfg.model_dump()))
    if not (path / "world.json").is_file():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        generate_world(cfg).write(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return path
