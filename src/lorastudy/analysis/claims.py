"""The one verdict type of the book: the paper's statement, what our runs say, and whether they agree.

Every claim a chapter makes about agreement with the paper comes from here, never from hand-typed numbers, so
the text stays true when the results change.
"""
from __future__ import annotations

EXTENDED_PROFILE = "mini-extended"  # the profile that runs every arm of the regularisation and sensitivity chapters


def not_run(what: str) -> str:
    """The markdown note a chapter shows where runs are missing (one wording for every chapter)."""
    return (f"**{what}: not run in this profile** — run `make reproduce PROFILE={EXTENDED_PROFILE}` "
            "(or a profile with these runs) to add it.")


def claim(statement: str, paper: bool, ours: bool | None, detail: str) -> dict:
    """One row of a chapter's verdict table: the paper's statement, ours (None = cannot tell), agreement."""
    return {"statement": statement, "paper": paper, "ours": ours,
            "agrees": None if ours is None else bool(ours == paper), "detail": detail}
