"""The trained context: every sequence a model is scored or generates on fits the positions it was trained on.

A model that never trained past position 256 (the mini base pre-trains 256-token blocks) reads later positions
as noise; a score read there measures nothing, so the one rule below refuses it instead of cutting the text.
"""
from __future__ import annotations


def within(n_tokens: int, context: int, what: str) -> None:
    """`what` (an item, named) fits `context` tokens, or a ValueError that names both lengths."""
    if n_tokens > context:
        raise ValueError(f"{what}: {n_tokens} tokens exceed the trained context of {context} (positions past it "
                         "were never trained): use fewer shots, shorter items or fewer new tokens, or train longer "
                         "sequences")
