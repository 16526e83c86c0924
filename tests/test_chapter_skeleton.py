"""Every chapter reads like a section of the paper: a question as its title, a parameters cell papermill can
set, and "What our runs say" as its last section; it imports `open_chapter` and its own analysis and figures
modules only (the chapter object gives the claims, the shared facts and display)."""
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


# each chapter's own modules: lorastudy.analysis.X and lorastudy.figures.Y
OWN = {
    "10_learning_forgetting": ({"learning_forgetting", "completions"}, {"learning_forgetting"}),
    "11_regularization": ({"regularization"}, {"comparisons"}),
    "12_diversity": ({"diversity"}, {"diversity"}),
    "13_spectra": ({"spectra"}, {"spectra"}),
    "14_sensitivity": ({"sensitivity"}, {"comparisons", "sensitivity"}),
    "15_memory": ({"memory"}, {"memory"}),
    "16_beyond": ({"beyond", "transitions"}, {"beyond"}),
}


def foreign_imports(nb: nbformat.NotebookNode, own: tuple[set[str], set[str]]) -> list[str]:
    analysis, figures = own
    bad = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            if not re.match(r"\s*(from|import)\s", line):
                continue
            if line.strip() == "from lorastudy.analysis.chapter import open_chapter":
                continue
            if m := re.fullmatch(r"\s*from lorastudy\.analysis import ([\w, ]+)", line):
                if {n.strip() for n in m.group(1).split(",")} <= analysis:
                    continue
            if m := re.fullmatch(r"\s*from lorastudy\.figures\.(\w+) import [\w, ]+", line):
                if m.group(1) in figures:
                    continue
            bad.append(line.strip())
    return bad


def test_every_chapter_has_its_own_modules_listed() -> None:
    assert {p.stem for p in CHAPTERS} == set(OWN)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_a_chapter_imports_open_chapter_and_its_own_modules_only(path: Path) -> None:
    bad = foreign_imports(nbformat.read(path, as_version=4), OWN[path.stem])
    assert not bad, f"{path.name} imports beyond open_chapter and its own modules: {bad}"


def test_the_import_check_catches_another_chapters_module() -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from lorastudy.analysis.chapter import open_chapter\nfrom lorastudy.analysis import learning_forgetting\n"
        "from IPython.display import display")])
    assert foreign_imports(nb, OWN["14_sensitivity"]) == ["from lorastudy.analysis import learning_forgetting",
                                                          "from IPython.display import display"]
