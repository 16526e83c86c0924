"""What the base knows before fine-tuning, probed on the validation split and on single facts only (never the
test items): the base chapter records it, and the mini world's design was decided on it (book: methods).

Llama-2-7B follows GSM8K's and HumanEval's layouts and scores above zero in both; a base at the floor leaves no
score for fine-tuning to move, and one whose single arithmetic facts are a coin toss cannot solve the steps that
a word problem chains, whatever fine-tuning teaches it."""
from __future__ import annotations

import random
from typing import Any

import pandas as pd

from lorastudy.config import Profile
from lorastudy.data.sources import load_spec
from lorastudy.data.world import arithmetic_facts
from lorastudy.evaluation.generate import generate
from lorastudy.evaluation.run import evaluate_code, evaluate_math

FACT_CONTEXT = "7 + 5 = 12. 9 - 4 = 5. "  # two facts before the asked one, as pre-training's arithmetic lines run


def probe_base(model: Any, tok: Any, profile: Profile, n_facts: int = 100, seed: int = 0) -> pd.DataFrame:
    """(probe, value, n): validation strict match and pass@1 as the study scores them, and, for a mini world, the
    share of `n_facts` single arithmetic facts per operation the base completes right (`a op b =` -> ` c.`) in
    their pre-training layout, after two other facts (FACT_CONTEXT): at a sequence's first position, where
    pre-training never puts an equation, the same base is near chance."""
    rows = []
    for domain, spec in profile.eval.validation.items():
        cfg, records = profile.eval.learning[domain], load_spec(profile, spec)
        if domain == "math":
            value = evaluate_math(model, tok, cfg, profile, records, progress=False)["strict_match"]
            rows.append({"probe": "validation math: strict match", "value": value, "n": len(records)})
        else:
            value = evaluate_code(model, tok, cfg, records, progress=False, context=profile.trained_context)["pass@1"]
            rows.append({"probe": "validation code: pass@1", "value": value, "n": len(records)})
    if profile.base.kind == "mini":
        facts, rng = arithmetic_facts(profile.base.world), random.Random(seed)
        for op in "+-*/":
            pool = [f for f in facts if f[1] == op]
            chosen = rng.sample(pool, min(n_facts, len(pool)))
            outs = generate(model, tok, [f"{FACT_CONTEXT}{a} {op} {b} =" for a, _, b, _ in chosen], max_new_tokens=2,
                            progress=False)
            right = sum(o[0].split(".")[0].strip() == str(c) for o, (_, _, _, c) in zip(outs, chosen))
            rows.append({"probe": f"single facts {op}", "value": right / len(chosen), "n": len(chosen)})
    return pd.DataFrame(rows)
