"""Assemble and build the Jupyter Book (1.x) from the static pages in `book/` and a profile's executed notebooks.

The build never executes anything: the sweep already ran every notebook with papermill, so the book shows
exactly what ran. The source folder is generated afresh under the output folder (`OUT/book_src`), with a
generated `_toc.yml`, and the HTML lands in `book/_build/html`. Warnings are errors, so a broken
reference or a notebook without a title fails the build instead of shipping.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pandas as pd
import yaml

from lorastudy.analysis.robustness import base_forgetting, paired_verdicts, replicate_layouts, settled
from lorastudy.config import Profile
from lorastudy.engine.executors import plan_workers
from lorastudy.engine.sweep import run_analyses
from lorastudy.io import read_json, write_text
from lorastudy.layout import PROJECT_ROOT, Layout, RunPaths
from lorastudy.publish.scorecard import (
    CHAPTER_VERDICTS,
    bases_section,
    figure_labels,
    replicate_section,
    scorecard,
    settled_section,
)
from lorastudy.publish.snapshot import describe, from_snapshot, seed, stale_copy, verify_inputs
from lorastudy.results import RUN_COLUMNS, wide

BOOK_DIR = PROJECT_ROOT / "book"
PAGES_BEFORE = ["methods"]  # static pages between the intro and the chapters
PAGES_AFTER = ["figure_map"]  # static pages after the results page
HIDE_TAG = "remove-cell"  # papermill tags the cell it injects 'injected-parameters'; myst-nb drops 'remove-cell'
FIRST_METRICS = ["learning_code", "learning_math", "forgetting_avg", "heldout_source_loss"]


def render_book(profile: Profile, profile_ref: str, out_root: Path, *, book_dir: Path = BOOK_DIR,
                execute: bool = False, say: Callable[[str], None] = print) -> Path:
    """What `lorastudy book` does: seed an output folder without results from the committed snapshot, execute
    the chapters it lacks (all with `execute`) on its results, and build. Returns the HTML folder."""
    layout = Layout(out_root)
    verify_inputs(profile.name, layout)  # a damaged snapshot stops here, in a second, not chapters later
    if stale_copy(profile.name, layout):
        say(f"[book] results/{profile.name} changed since {out_root} was copied from it: copying it afresh and "
            "executing every chapter again")
        layout.results_table.unlink()
        execute = True
    if seed(profile, out_root):
        say(f"[book] {out_root} has no results: rendering the committed snapshot results/{profile.name}")
    todo = [n for n in profile.analyses if execute or not layout.analysis_notebook(n).is_file()]
    if todo:
        if not layout.results_table.is_file():
            raise FileNotFoundError(f"no results in {out_root} and no snapshot results/{profile.name}: run "
                                    f"`lorastudy sweep {profile_ref}` first")
        say(f"[book] executing {len(todo)} chapter(s) on the results in {out_root}")
        run_analyses(profile, profile_ref, out_root, plan_workers(profile, len(todo)), only=todo)
    return build_book(profile.name, out_root, book_dir=book_dir)


def build_book(profile_name: str, out_root: Path, *, book_dir: Path = BOOK_DIR, strict: bool = True) -> Path:
    """Assemble `out_root/book_src` and build it into `book_dir/_build/html`; returns that folder.

    strict: warnings are errors (`-W -n --keep-going`), as CI builds it.
    """
    src = assemble(profile_name, Path(out_root), book_dir=Path(book_dir))
    return run_jupyter_book(src, Path(book_dir), strict=strict)


def assemble(profile_name: str, out_root: Path, *, book_dir: Path = BOOK_DIR) -> Path:
    """The build source folder: static pages, executed notebooks (injected parameters hidden), the results
    page and a generated `_toc.yml`."""
    if not (book_dir / "intro.md").is_file():
        raise FileNotFoundError(f"{book_dir / 'intro.md'} is missing: the book needs its static pages")
    layout = Layout(out_root)
    src = layout.book_source
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(book_dir, src, ignore=shutil.ignore_patterns("_build", "_toc.yml", ".*"))
    _write_config(book_dir / "_config.yml", src / "_config.yml")

    chapters = [_copy_notebook(nb, src, nb.stem) for nb in _notebooks(layout.analyses_dir)]
    base_nb = layout.base_notebook
    base = _copy_notebook(base_nb, src, "The base model") if base_nb.is_file() else None
    results = pd.read_csv(layout.results_table) if layout.results_table.is_file() else None
    runs: dict[str, list[str]] = {}
    snapshot_runs = False
    for run in sorted(p for p in layout.runs_dir.glob("*") if p.is_dir() and _notebooks(p)):
        dest = src / "runs" / run.name
        runs[run.name] = [f"runs/{run.name}/{_copy_notebook(nb, dest, f'{nb.stem} ({run.name})')}"
                          for nb in _notebooks(run)]
        write_text(dest / "index.md", _run_page(run.name, results, run))
    if runs:
        write_text(src / "runs" / "index.md", _runs_index(profile_name, list(runs)))
    elif results is not None:  # a snapshot: the run table, and where the runs' notebooks come from
        runs_table = pd.read_parquet(layout.run_records) if layout.run_records.is_file() else None
        write_text(src / "runs" / "index.md", _snapshot_runs_page(profile_name, results, runs_table,
                                                                  from_snapshot(layout)))
        snapshot_runs = True
    write_text(src / "results.md", _results_page(profile_name, layout.results_table, results, src))
    if layout.claims_table.is_file():  # the landing page reads the same claims table as the chapters
        labels = figure_labels([src / f"{c}.ipynb" for c in chapters])
        verdicts = {name: pd.read_csv(layout.chapter_verdict(name)) for name in CHAPTER_VERDICTS
                    if name in chapters and layout.chapter_verdict(name).is_file()}
        claims = pd.read_csv(layout.claims_table)
        with (src / "intro.md").open("a", encoding="utf-8") as f:
            f.write(scorecard(profile_name, claims, labels, verdicts))
            f.write(bases_section(claims))
            f.write(_replicate(profile_name, layout, claims))
    toc = _toc([p for p in PAGES_BEFORE if (src / f"{p}.md").is_file()],
               chapters,
               [p for p in PAGES_AFTER if (src / f"{p}.md").is_file()],
               base, runs, snapshot_runs)
    write_text(src / "_toc.yml", yaml.safe_dump(toc, sort_keys=False))
    return src


def _replicate(profile_name: str, layout: Layout, claims: pd.DataFrame) -> str:
    """The landing page's replicate sections, one per results/PROFILE-replicate* (other runs of the study)."""
    replicates = replicate_layouts(profile_name)
    others = [pd.read_csv(r.claims_table) for r in replicates]
    text = [settled_section(settled(claims, others), len(claims), [r.root.name for r in replicates])]
    for replicate in replicates:
        record = read_json(replicate.provenance) if replicate.provenance.is_file() else {}
        origin = record.get("origin") or f"snapshot taken {record.get('taken', '?')}"
        bases = [base_forgetting(path) for path in (layout.results_table, replicate.results_table)]
        if None not in bases:
            origin += f"; its base scores {bases[1]:.3f} on the forgetting sets, this study's {bases[0]:.3f}"
        text.append(replicate_section(paired_verdicts(claims, pd.read_csv(replicate.claims_table)),
                                      replicate.root.name, origin))
    return "".join(text)


def run_jupyter_book(src: Path, book_dir: Path, *, strict: bool = True) -> Path:
    """`jupyter-book build SRC --path-output BOOK_DIR [-W -n --keep-going]` from a fresh `_build`."""
    shutil.rmtree(book_dir / "_build", ignore_errors=True)
    cmd = [_jupyter_book(), "build", str(src), "--path-output", str(book_dir), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr).splitlines()  # Sphinx colours its log
        problems = [line for line in log if "WARNING" in line or "ERROR" in line] or log[-40:]
        raise RuntimeError(f"book build failed ({' '.join(cmd)}):\n" + "\n".join(problems))
    return book_dir / "_build" / "html"


def check_images(html_dir: Path) -> list[str]:
    """Every `<img src>` of the built HTML that is not a file there, as 'page.html: src'.

    data: URIs count as present; a remote URL counts as missing, since the book must read offline.
    """
    html_dir = Path(html_dir)
    missing = []
    for page in sorted(html_dir.rglob("*.html")):
        parser = _ImageSources()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for src in parser.sources:
            if src.startswith("data:"):
                continue
            url = urlsplit(src)
            path = unquote(url.path)
            target = html_dir / path.lstrip("/") if path.startswith("/") else page.parent / path
            if url.scheme or url.netloc or not target.is_file():
                missing.append(f"{page.relative_to(html_dir)}: {src}")
    return missing


def setup(app: object) -> dict[str, bool]:
    """Sphinx extension (listed in book/_config.yml): launch buttons open the notebook a page was executed
    from (notebooks/01_finetune.ipynb for runs/ID/01_finetune), since the page's own path is not in the repo."""
    app.connect("html-page-context", _launch_sources, priority=502)  # after the theme adds its buttons (501)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def _launch_sources(app: object, pagename: str, templatename: str, context: dict, doctree: object) -> None:
    executed = f"{pagename}.ipynb"
    source = pagename.rsplit("/", 1)[-1].removesuffix("_failed") + ".ipynb"
    for group in context.get("header_buttons", []):
        if group.get("label") == "launch-buttons" and executed != source:
            for button in group["buttons"]:
                if "url" in button:
                    button["url"] = button["url"].replace(executed, source)


class _ImageSources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        src = dict(attrs).get("src") if tag == "img" else None
        if src:
            self.sources.append(src)


def _jupyter_book() -> str:
    beside = Path(sys.executable).with_name("jupyter-book")
    found = str(beside) if beside.exists() else shutil.which("jupyter-book")
    if not found:
        raise FileNotFoundError("jupyter-book (1.x) is not installed in this environment")
    return found


def repository_url() -> str | None:
    """The GitHub repository the book's buttons point at: $LORASTUDY_REPOSITORY_URL, else GitHub Actions'
    $GITHUB_REPOSITORY, else this clone's `origin` when it is on GitHub; None when none is known."""
    if url := os.environ.get("LORASTUDY_REPOSITORY_URL"):
        return url
    if slug := os.environ.get("GITHUB_REPOSITORY"):
        return f"https://github.com/{slug}"
    try:
        origin = subprocess.run(["git", "remote", "get-url", "origin"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if m := re.fullmatch(r"(?:https://github\.com/|git@github\.com:)([\w.-]+/[\w.-]+?)(?:\.git)?/?", origin):
        return f"https://github.com/{m.group(1)}"
    return None


def _write_config(source: Path, dest: Path) -> None:
    """Copy `_config.yml`, forcing what the build relies on: no execution, only the pages of the toc, and the
    repository its buttons point at (without one, no repository or launch buttons: never a dead link)."""
    config = yaml.safe_load(source.read_text()) if source.is_file() else {}
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    config["only_build_toc_files"] = True
    url = repository_url()
    if url:
        config.setdefault("repository", {})["url"] = url
    else:
        config.get("repository", {}).pop("url", None)
        config.pop("launch_buttons", None)
        config.setdefault("html", {})["use_repository_button"] = False
    write_text(dest, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def _notebooks(folder: Path) -> list[Path]:
    """Executed notebooks in name order; a NAME.failed.ipynb only where NAME.ipynb never succeeded; no
    hidden files (papermill's temporaries)."""
    found = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    done = {p.name for p in found}
    return [p for p in found if not p.name.endswith(".failed.ipynb") or p.name.replace(".failed", "") not in done]


def _copy_notebook(source: Path, dest_dir: Path, fallback_title: str) -> str:
    """Copy an executed notebook into the book: hide papermill's injected cell, make sure it has a title
    (Sphinx needs one for the toc) and flag a failed run. Returns its page name (no suffix, no dots)."""
    nb = nbformat.read(source, as_version=4)
    crowded = crowded_figure_cells(nb)
    if crowded:
        raise ValueError(f"{source}: {'; '.join(crowded)}. A cell that carries a figure label (mystnb.figure) may "
                         "show its image and nothing else: myst-nb labels every rich output of such a cell, so a "
                         "note beside the image duplicates the label. Move the note to a cell of its own.")
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and HIDE_TAG not in tags:
            cell.metadata["tags"] = [*tags, HIDE_TAG]
    if not any(c.cell_type == "markdown" and _has_heading(c.source) for c in nb.cells):
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {fallback_title}"))
    if source.name.endswith(".failed.ipynb"):
        title = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and _has_heading(c.source))
        nb.cells.insert(title + 1, nbformat.v4.new_markdown_cell(
            "```{warning}\nThis notebook stopped with an error; its last executed cell shows where.\n```"))
    nb.metadata.setdefault("language_info", {"name": "python", "pygments_lexer": "ipython3"})
    name = source.name.removesuffix(".ipynb").replace(".failed", "_failed")
    dest_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest_dir / f"{name}.ipynb")
    return name


def crowded_figure_cells(nb: nbformat.NotebookNode) -> list[str]:
    """The figure-labelled cells of an executed notebook that show more than their image, or a note without
    one ('cell 11 (fig-lr-sweep) shows text/markdown, image/png'): each would put a labelled figure in the book
    that is not the figure (a duplicate label, or a 'figure' of text the scorecard cannot link to)."""
    problems = []
    for i, cell in enumerate(nb.cells):
        name = cell.get("metadata", {}).get("mystnb", {}).get("figure", {}).get("name")
        rich = [o for o in cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")]
        if name and rich and (len(rich) > 1 or "image/png" not in rich[0].get("data", {})):
            shown = ", ".join(next((k for k in o.get("data", {}) if k != "text/plain"), "text/plain") for o in rich)
            problems.append(f"cell {i} ({name}) shows {shown}")
    return problems


def _has_heading(markdown: str) -> bool:
    return re.search(r"^#{1,6}\s", markdown, flags=re.MULTILINE) is not None


def _toc(before: list[str], chapters: list[str], after: list[str], base: str | None,
         runs: dict[str, list[str]], snapshot_runs: bool = False) -> dict:
    """intro → methods → analysis chapters → results → figure map; appendix: base model, then runs (or, from
    a snapshot, the run table)."""
    study = [*before, *chapters, "results", *after]
    parts = [{"caption": "The study", "chapters": [{"file": f} for f in study]}]
    appendix = [{"file": base}] if base else []
    if runs:
        appendix.append({"file": "runs/index", "sections": [
            {"file": f"runs/{run_id}/index", "sections": [{"file": p} for p in pages]}
            for run_id, pages in runs.items()
        ]})
    if snapshot_runs:
        appendix.append({"file": "runs/index"})
    if appendix:
        parts.append({"caption": "Appendix", "chapters": appendix})
    return {"format": "jb-book", "root": "intro", "parts": parts}


def _snapshot_runs_page(profile_name: str, results: pd.DataFrame, runs: pd.DataFrame | None,
                        provenance: dict | None) -> str:
    """The appendix from a snapshot: every run's settings and status (and its size and time where the
    snapshot kept them), and how to get the runs' own executed notebooks."""
    table = results[results.method != "base"].drop_duplicates("run_id")[[*RUN_COLUMNS, "status"]]
    if runs is not None and len(runs):
        table = table.merge(runs[["run_id", "trainable", "train_s"]], on="run_id", how="left")
    table = table.dropna(axis=1, how="all")
    source = describe(provenance) if provenance else f"the results of the `{profile_name}` profile"
    return (f"# Runs\n\nThis book was rendered from {source}, which keeps every run's results but not its "
            f"weights or executed notebooks. The {len(table)} runs are listed below with their settings. Each "
            "run was trained and evaluated by `notebooks/01_finetune.ipynb` and `notebooks/02_evaluate.ipynb`; "
            f"`make mini` (or `lorastudy sweep {profile_name}`) re-runs them here, and the book then shows every "
            "run's executed notebooks in this appendix.\n\n"
            f'<div style="overflow-x: auto">\n{table.to_html(index=False, na_rep="", border=0, classes="table")}'
            "\n</div>\n")


def _run_page(run_id: str, results: pd.DataFrame | None, run_dir: Path) -> str:
    """A run's page: its settings and status; its notebooks are the sub-pages."""
    rows = results[results.run_id == run_id] if results is not None else pd.DataFrame()
    if rows.empty:
        state = "failed" if RunPaths(run_dir).failure_record.is_file() else "no results yet"
        return f"# {run_id}\n\nStatus: {state}. The executed notebooks below show how far it got.\n"
    first = rows.iloc[0]
    shown = [c for c in [*RUN_COLUMNS[1:], "status"] if pd.notna(first.get(c))]
    settings = "\n".join(f"| {c} | {_format_value(first[c])} |" for c in shown)
    return (f"# {run_id}\n\nOne fine-tuning run: its resolved settings, then the executed notebooks that "
            f"trained and evaluated it.\n\n| setting | value |\n|---|---|\n{settings}\n")


def _format_value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _runs_index(profile_name: str, run_ids: list[str]) -> str:
    links = "\n".join(f"- [{run_id}]({run_id}/index.md)" for run_id in run_ids)
    return (f"# Runs\n\nEvery fine-tuning run of the `{profile_name}` profile: one page per run with its "
            f"settings and the executed notebooks that trained and evaluated it.\n\n{links}\n")


def _results_page(profile_name: str, csv: Path, results: pd.DataFrame | None, src: Path) -> str:
    """The whole results table as HTML, one row per checkpoint, with the long CSV to download."""
    head = "# Results table\n\n"
    if results is None:
        return head + f"No results table was found for the `{profile_name}` profile (`{csv.name}` is missing).\n"
    static = src / "_static"
    static.mkdir(exist_ok=True)
    shutil.copy2(csv, static / "results.csv")
    table = _display_table(results)
    html = table.to_html(index=False, na_rep="", classes="table", border=0)
    n_runs = results[results.method != "base"].run_id.nunique()
    runs = f"{n_runs} run{'s' * (n_runs != 1)}"
    return (head + f"Every measurement of the `{profile_name}` profile: the base model and {runs}, "
            f"{len(table)} checkpoints in all, one row each, values rounded to three decimals. The long "
            f"table, one row per run, checkpoint and metric with every setting, is "
            f"{{download}}`results.csv <_static/results.csv>`.\n\n"
            f'<div style="overflow-x: auto">\n{html}\n</div>\n')


def _display_table(results: pd.DataFrame) -> pd.DataFrame:
    """Wide form for reading: identity columns, then learning, forgetting and loss first, other metrics after."""
    table = wide(results)
    rank = {m: i for i, m in enumerate(FIRST_METRICS)}
    metrics = sorted(results.metric.unique(), key=lambda m: (rank.get(m, len(rank)), m))
    table["duration"] = [
        f"{d:,.0f} tokens" if unit == "tokens" else (f"{d:g} epochs" if unit == "epochs" else "")
        for d, unit in zip(table.duration, table.duration_unit)
    ]
    return table[["run_id", "status", "checkpoint", "duration", *metrics]].rename_axis(columns=None).round(3)
