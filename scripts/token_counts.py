"""How big the mini world is in tokens: for each profile's world, the vocabulary of its word-level tokenizer and,
per file, how many texts and tokens it holds (a report, not a check: tests/test_tokenizer.py checks the tokenizer).

    .venv/bin/python scripts/token_counts.py [PROFILE ...]     # default: tiny mini
"""
from __future__ import annotations

import sys

from lorastudy.config import load_profile
from lorastudy.data.sources import world_dir
from lorastudy.data.tokenizer import build_tokenizer
from lorastudy.io import read_jsonl
from lorastudy.train.base import strings, world_texts


def main(argv: list[str]) -> int:
    for name in argv or ["tiny", "mini"]:
        world = world_dir(load_profile(name))
        tok = build_tokenizer(world_texts(world))
        print(f"{name} ({world.name}): vocabulary {len(tok)}")
        for path in sorted(world.glob("*.jsonl")):
            texts = [s for row in read_jsonl(path) for s in strings(row)]
            ids = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
            print(f"  {path.stem:18s} {len(texts):7d} texts {sum(len(e.ids) for e in ids):10d} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
