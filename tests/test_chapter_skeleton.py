"""Every chapter reads like a section of the paper: a question as its title, a parameters cell papermill can
set, and "What our runs say" as its last section."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("1[0-9]_*.ipynb"))


def headings(nb: nbformat.NotebookNode) -> list[str]:
    return [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
            if re.match(r"#{1,3} ", line)]


def test_there_are_chapters() -> None:
    assert len(CHAPTERS) >= 7


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_a_chapter_has_the_skeleton(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    heads = headings(nb)
    assert heads and heads[0].startswith("# ") and heads[0].rstrip().endswith("?"), f"title: {heads[:1]}"
    assert sum(h.startswith("# ") for h in heads) == 1, "one title"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell is the parameters cell"
    assert "open_chapter(" in "".join(c.source for c in code), "it opens with open_chapter"
    assert heads[-1] == "## What our runs say", f"last section: {heads[-1]}"


def test_the_skeleton_check_fails_on_a_chapter_without_its_verdict_section() -> None:
    nb = nbformat.read(CHAPTERS[0], as_version=4)
    for c in nb.cells:
        if c.cell_type == "markdown":
            c.source = c.source.replace("## What our runs say", "## Conclusion")
    assert headings(nb)[-1] != "## What our runs say"
