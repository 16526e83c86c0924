"""The book a reader gets from a fresh clone: `lorastudy book mini` on the committed snapshot renders every
chapter with its figures (no training, no placeholder), the scorecard lists every claim, every figure loads
in a browser, and the chapters' prose cites our numbers only through glue."""
from __future__ import annotations

import html as html_lib
import re
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from lorastudy.analysis.robustness import paired_verdicts, replicate_layouts, settled
from lorastudy.config import load_profile
from lorastudy.layout import NOTEBOOKS, snapshot_layout
from lorastudy.publish import browser
from lorastudy.publish.book import BOOK_DIR, check_images, render_book

PROFILE = load_profile("mini")
SNAPSHOT = snapshot_layout("mini")


@pytest.fixture(scope="module")
def snapshot_book(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The mini book rendered from results/mini into a temporary output folder (about two minutes)."""
    if not (SNAPSHOT.results_table.is_file() and SNAPSHOT.summaries_dir.is_dir()):
        pytest.fail(f"the committed snapshot {SNAPSHOT.root} is incomplete: run `make mini` and `lorastudy snapshot mini`")
    tmp = tmp_path_factory.mktemp("snapshot-book")
    book_dir = Path(shutil.copytree(BOOK_DIR, tmp / "book", ignore=shutil.ignore_patterns("_build")))
    html = render_book(PROFILE, "mini", tmp / "out", book_dir=book_dir, say=lambda _line: None)
    return html, tmp / "out"


def test_every_chapter_renders_with_its_figures_and_no_placeholder(snapshot_book):
    html, out = snapshot_book
    assert not list((out / "analyses").glob("*.failed.ipynb"))
    for name in PROFILE.analyses:
        page = (html / f"{name}.html").read_text()
        assert "<img" in page, f"{name} has no figure"
        assert "not run in this profile" not in page, f"{name} shows a placeholder"
        assert "{glue" not in page and "glue:md" not in page, f"{name} has an unresolved glue reference"
        assert re.search(r"Fig\. \d+", page), f"{name} has no numbered figure caption"
    assert check_images(html) == []


def test_the_scorecard_lists_every_claim(snapshot_book):
    html, _ = snapshot_book
    intro = html_lib.unescape((html / "intro.html").read_text()).replace("\u2019", "'")  # Sphinx's smart quotes
    claims = pd.read_csv(SNAPSHOT.claims_table)
    missing = [s for s in claims.statement.unique() if s not in intro]
    assert not missing, f"claims missing from the scorecard: {missing[:5]}"
    assert "Scorecard" in intro and intro.count("Fig. ") >= 5  # links to the figures that show the claims


def test_the_landing_page_says_how_many_verdicts_each_replicate_keeps(snapshot_book):
    html, _ = snapshot_book
    intro = html_lib.unescape((html / "intro.html").read_text()).replace("\u2019", "'")
    intro = intro[intro.index("<article"):intro.index("</article>")]  # the page, not its tables of contents
    replicates = replicate_layouts("mini")
    if not replicates:  # no other run of this study is committed: the page claims no comparison
        assert "Does a verdict survive another base model?" not in intro
        assert "Verdicts that every base model gives" not in intro
        return
    claims = pd.read_csv(SNAPSHOT.claims_table)
    kept = settled(claims, [pd.read_csv(r.claims_table) for r in replicates])
    assert f"Of {len(claims)} claims, {len(kept)} are decided, and decided the same way, on every base" in intro
    assert all(c in intro.split("Verdicts that every base model gives")[1] for c in kept.claim)
    sections = intro.split("Does a verdict survive another base model?")[1:]
    assert len(sections) == len(replicates)
    for replicate, section in zip(replicates, sections):
        paired = paired_verdicts(pd.read_csv(SNAPSHOT.claims_table), pd.read_csv(replicate.claims_table))
        assert replicate.root.name in section.split("\n")[0]
        assert f"Of {len(paired)} claims, {(paired.relation == 'same').sum()} keep their verdict" in section
        for statement in paired[paired.relation == "opposite"].statement:
            assert statement in section.split("reverses:")[1]


def test_the_appendix_lists_the_runs_and_says_where_their_notebooks_come_from(snapshot_book):
    html, _ = snapshot_book
    page = (html / "runs" / "index.html").read_text()
    runs = pd.read_csv(SNAPSHOT.results_table).query("method != 'base'").run_id.unique()
    assert all(r in page for r in runs) and "keeps every run" in page and "01_finetune.ipynb" in page


def test_every_figure_loads_in_a_browser(snapshot_book, tmp_path):
    if not browser.CHROMIUM.is_file():
        pytest.skip(f"{browser.CHROMIUM} is not installed (Debian package chromium): no browser to check with")
    html, _ = snapshot_book
    pages = [f"{name}.html" for name in PROFILE.analyses]
    failed = browser.check_pages(html, pages, screenshots=tmp_path)
    assert failed == {p: [] for p in pages}
    assert all((tmp_path / f"{Path(p).stem}.png").stat().st_size > 10_000 for p in pages)


GLUE = re.compile(r"\{glue:\w+\}`[^`]*`|```\{glue:[^`]*```", re.S)
CODE = re.compile(r"`[^`]*`")
FIGURE_NAMES = re.compile(r"\b(Figs?|Tables?|chapters?|Llama-2-\d+B)\s*S?\d+(\s*(–|-|,|and)\s*S?\d+)*")


@pytest.mark.parametrize("name", PROFILE.analyses)
def test_closing_prose_cites_our_numbers_only_through_glue(name):
    """The chapter's closing section is about this run: any number in it comes from glue, except in sentences
    that quote the paper."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    closing = [c.source for c in nb.cells if c.cell_type == "markdown" and "## What our runs say" in c.source]
    assert closing, f"{name} has no closing 'What our runs say' section"
    text = FIGURE_NAMES.sub("", CODE.sub("", GLUE.sub("", closing[0].split("## What our runs say", 1)[1])))
    for sentence in re.split(r"(?<=\.)\s+", text):
        if "paper" not in sentence.lower() and "Llama" not in sentence:
            assert not re.search(r"\d", sentence), f"{name}: a hand-written number in {sentence!r}"
    assert "glue:md" in closing[0]  # its verdicts are computed
