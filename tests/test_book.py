"""Build the book from a synthetic output folder: executed notebooks become pages, figures are embedded,
papermill's injected parameters are hidden, and a missing image is caught."""
from __future__ import annotations

import ast
import base64
import io
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from lorastudy.publish import book, browser
from lorastudy.publish.book import BOOK_DIR, build_book, check_images
from lorastudy.results import COLUMNS

RUN_ID = "code-cpt-full-lr0.001-s0"
INJECTED = "injected_marker_value = 7"


def png_bytes() -> str:
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def executed_notebook(title: str | None) -> nbformat.NotebookNode:
    """What papermill leaves behind: a parameters cell, its injected override, and a figure output."""
    params = new_code_cell("profile = 'tiny'  # profile name", metadata={"tags": ["parameters"]})
    injected = new_code_cell(f"# Parameters\n{INJECTED}\n", metadata={"tags": ["injected-parameters"]})
    figure = new_code_cell("fig = metric_vs_duration(df, 'learning')", execution_count=3, outputs=[
        new_output("display_data", data={"image/png": png_bytes(), "text/plain": "<Figure size 200x150>"})])
    cells = [params, injected, figure, new_markdown_cell("The figure shows a line.")]
    if title:
        cells.insert(0, new_markdown_cell(f"# {title}\n\nWhat this notebook answers."))
    nb = new_notebook(cells=cells)
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.language_info = {"name": "python", "pygments_lexer": "ipython3"}
    return nb


def results_table() -> pd.DataFrame:
    base = {"run_id": "base", "method": "base", "status": "completed", "checkpoint": "base", "duration": 0.0}
    run = {"run_id": RUN_ID, "domain": "code", "regime": "cpt", "method": "full", "learning_rate": 1e-3, "seed": 0,
           "weight_decay": 0.0, "attention_dropout": 0.0, "use_rslora": False, "arm": "full", "status": "completed",
           "checkpoint": "ckpt-1", "duration_unit": "tokens", "duration": 100000.0}
    rows = [{**base, "metric": "learning_code", "value": 0.01}, {**base, "metric": "forgetting_avg", "value": 0.9},
            {**run, "metric": "learning_code", "value": 0.4}, {**run, "metric": "forgetting_avg", "value": 0.6}]
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One build for the module (a few seconds): the project's static pages plus a synthetic output folder."""
    tmp = tmp_path_factory.mktemp("book")
    book_dir, out = tmp / "book", tmp / "out"
    shutil.copytree(BOOK_DIR, book_dir, ignore=shutil.ignore_patterns("_build"))
    for path, title in [(out / "analyses" / "10_learning_forgetting.ipynb", "Does LoRA forget less?"),
                        (out / "base" / "00_base_model.ipynb", None),
                        (out / "runs" / RUN_ID / "01_finetune.ipynb", "Fine-tune one run"),
                        (out / "runs" / RUN_ID / "02_evaluate.failed.ipynb", "Evaluate one run")]:
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(executed_notebook(title), path)
    results_table().to_csv(out / "results.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:  # a module-scoped fixture: the function-scoped monkeypatch is not
        mp.setenv("LORASTUDY_REPOSITORY_URL", "https://github.com/OWNER/lorastudy")  # the launch buttons' target
        html = build_book("tiny", out, book_dir=book_dir)
    return html, out


def test_toc_orders_pages_and_puts_runs_in_the_appendix(built):
    _, out = built
    toc = yaml.safe_load((out / "book_src" / "_toc.yml").read_text())
    study, appendix = toc["parts"]
    assert toc["root"] == "intro"
    assert [c["file"] for c in study["chapters"]] == ["methods", "10_learning_forgetting", "results", "figure_map"]
    assert appendix["chapters"][0] == {"file": "00_base_model"}
    run = appendix["chapters"][1]["sections"][0]
    assert run["file"] == f"runs/{RUN_ID}/index"
    assert [s["file"] for s in run["sections"]] == [f"runs/{RUN_ID}/01_finetune", f"runs/{RUN_ID}/02_evaluate_failed"]
    config = yaml.safe_load((out / "book_src" / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off" and config["only_build_toc_files"] is True


def test_figures_are_embedded_and_injected_parameters_hidden(built):
    html, _ = built
    chapter = (html / "10_learning_forgetting.html").read_text()
    assert "<img" in chapter and "profile" in chapter  # the figure, and the parameters cell itself
    assert "injected_marker_value" not in chapter
    assert check_images(html) == []
    untitled = (html / "00_base_model.html").read_text()
    assert "The base model" in untitled  # a title was given to a notebook without one
    failed = (html / "runs" / RUN_ID / "02_evaluate_failed.html").read_text()
    assert "stopped with an error" in failed


def test_launch_buttons_open_the_source_notebooks(built):
    html, _ = built
    chapter = (html / "10_learning_forgetting.html").read_text()
    source = "OWNER/lorastudy/main?urlpath=tree/notebooks/10_learning_forgetting.ipynb"
    assert f"mybinder.org/v2/gh/{source}" in chapter
    assert "colab.research.google.com/github/OWNER/lorastudy/blob/main/notebooks/10_learning_forgetting" in chapter
    run = (html / "runs" / RUN_ID / "02_evaluate_failed.html").read_text()
    assert "urlpath=tree/notebooks/02_evaluate.ipynb" in run and "notebooks/runs/" not in run


def test_results_page_has_the_table_and_the_csv(built):
    html, _ = built
    page = (html / "results.html").read_text()
    assert RUN_ID in page and "forgetting_avg" in page and "100,000 tokens" in page
    assert "the base model and 1 run, 2 checkpoints" in page and "<th>metric</th>" not in page
    assert (html / "_static" / "results.csv").is_file()
    assert "results.csv" in page and check_images(html) == []
    run_page = (html / "runs" / RUN_ID / "index.html").read_text()
    assert "learning_rate" in run_page and "0.001" in run_page


def test_a_deleted_image_is_reported(built, tmp_path):
    html = Path(shutil.copytree(built[0], tmp_path / "html"))
    images = sorted((html / "_images").glob("*.png"))
    assert images, "the notebook's figure should be written to _images"
    images[0].unlink()
    missing = check_images(html)
    assert missing and all(images[0].name in m for m in missing)
    assert any(m.startswith("10_learning_forgetting.html: ") for m in missing)


def test_check_images_accepts_data_uris_and_rejects_remote_ones(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "page.html").write_text(
        '<img src="a.png"><img src="data:image/png;base64,AAAA"><img src="https://example.org/x.png">'
        '<img src="gone%20too.png"/>')
    assert check_images(tmp_path) == ["page.html: https://example.org/x.png", "page.html: gone%20too.png"]


def test_a_warning_fails_the_build(tmp_path):
    book_dir = Path(shutil.copytree(BOOK_DIR, tmp_path / "book", ignore=shutil.ignore_patterns("_build")))
    with (book_dir / "methods.md").open("a") as fh:
        fh.write("\nSee {doc}`no_such_page`.\n")
    with pytest.raises(RuntimeError, match="no_such_page"):
        build_book("tiny", tmp_path / "out", book_dir=book_dir)
    results = (tmp_path / "out" / "book_src" / "results.md").read_text()
    assert "No results table" in results  # an output folder without results.csv still gets its page


def test_every_image_of_the_chapter_pages_loads_in_a_browser(built, tmp_path):
    """Headless Chromium opens every chapter page: each <img> has loaded (`complete`, a non-zero natural width);
    with one figure's file deleted, the same check fails on exactly that figure."""
    if not browser.CHROMIUM.is_file():
        pytest.skip(f"{browser.CHROMIUM} is not installed (Debian package chromium): no browser to check with")
    html, page = built[0], "10_learning_forgetting.html"
    report = browser.image_report(html)
    assert page in report and report[page], "the chapter's figure should be an <img> on its page"
    assert {p: [src for src, ok in images if not ok] for p, images in report.items()} == {p: [] for p in report}
    assert browser.check_pages(html) == {p: [] for p in report}
    broken = Path(shutil.copytree(html, tmp_path / "html"))
    figure = next(src for src, _ in report[page] if src.startswith("_images/"))
    (broken / figure).unlink()
    assert browser.check_pages(broken, [page]) == {page: [src for src, _ in report[page] if src == figure]}
    assert browser.main([str(broken)]) == 1




def figure_cell(outputs: list) -> nbformat.NotebookNode:
    return new_code_cell("fig = draw()", outputs=outputs,
                         metadata={"mystnb": {"figure": {"name": "fig-x", "caption": "A figure."}}})


def test_a_figure_cell_with_a_note_beside_its_image_is_refused_by_name(tmp_path):
    """myst-nb labels every rich output of a figure cell: a "not run" note beside the image duplicated the label
    and failed `make tiny`'s book; a note alone made a labelled "figure" of text."""
    image = new_output("display_data", data={"image/png": png_bytes(), "text/plain": "<Figure>"})
    note = new_output("display_data", data={"text/markdown": "**not run**", "text/plain": "<Markdown>"})
    stream = new_output("stream", name="stdout", text="rho = 0.5\n")
    ok = new_notebook(cells=[new_markdown_cell("# T"), figure_cell([image]), figure_cell([]), figure_cell([stream])])
    assert book.crowded_figure_cells(ok) == []
    bad = new_notebook(cells=[new_markdown_cell("# T"), figure_cell([note, image]), figure_cell([note])])
    assert book.crowded_figure_cells(bad) == ["cell 1 (fig-x) shows text/markdown, image/png",
                                              "cell 2 (fig-x) shows text/markdown"]
    nbformat.write(bad, tmp_path / "14_x.ipynb")
    with pytest.raises(ValueError, match=r"14_x.ipynb: cell 1 \(fig-x\) shows .*Move the note to a cell of its own"):
        book._copy_notebook(tmp_path / "14_x.ipynb", tmp_path / "src", "x")


@pytest.mark.parametrize("path", sorted((BOOK_DIR.parent / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_every_figure_cell_of_the_notebooks_only_draws_its_figure(path):
    """The source side of the rule above, for every branch a chapter may take: a figure cell ends with
    `fig = ...` and calls nothing that shows a note (display, print, Markdown), so no "not run" note or printed
    line can land in it whatever a profile runs."""
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.metadata.get("mystnb", {}).get("figure"):
            tree = ast.parse(cell.source)
            last = tree.body[-1]
            assert isinstance(last, ast.Assign) and [getattr(t, "id", None) for t in last.targets] == ["fig"], \
                f"{path.name} cell {i} does not end with `fig = ...`"
            shown = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                     and n.func.id in ("display", "print", "Markdown")]
            assert not shown, f"{path.name} cell {i} calls {shown}"


@pytest.mark.parametrize("env, origin, expected", [
    ({"LORASTUDY_REPOSITORY_URL": "https://github.com/a/b"}, "", "https://github.com/a/b"),
    ({"GITHUB_REPOSITORY": "lab/lorastudy"}, "", "https://github.com/lab/lorastudy"),
    ({}, "git@github.com:lab/lorastudy.git", "https://github.com/lab/lorastudy"),
    ({}, "https://github.com/lab/lorastudy.git", "https://github.com/lab/lorastudy"),
    ({}, "/srv/mirror/lorastudy", None),
])
def test_the_repository_comes_from_the_environment_or_a_github_origin(monkeypatch, env, origin, expected):
    for key in ("LORASTUDY_REPOSITORY_URL", "GITHUB_REPOSITORY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(book.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, origin + "\n", ""))
    assert book.repository_url() == expected


def test_without_a_repository_the_book_has_no_launch_buttons(monkeypatch, tmp_path):
    monkeypatch.setattr(book, "repository_url", lambda: None)
    book._write_config(BOOK_DIR / "_config.yml", tmp_path / "_config.yml")
    config = yaml.safe_load((tmp_path / "_config.yml").read_text())
    assert "launch_buttons" not in config and "url" not in config["repository"]
    assert config["html"]["use_repository_button"] is False
    monkeypatch.setattr(book, "repository_url", lambda: "https://github.com/lab/lorastudy")
    book._write_config(BOOK_DIR / "_config.yml", tmp_path / "_config.yml")
    config = yaml.safe_load((tmp_path / "_config.yml").read_text())
    assert config["repository"]["url"] == "https://github.com/lab/lorastudy" and config["launch_buttons"]
