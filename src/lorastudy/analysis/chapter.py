"""What every notebook opens with, in one call: the profile, its output tree, the results and the paper's
tables, and the house style. Notebooks then hold calls, display and prose only."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from IPython.display import Markdown
from myst_nb import glue

from lorastudy.analysis.summaries import checkpoint_sources, summary
from lorastudy.config import Profile, load_profile
from lorastudy.figures.style import style
from lorastudy.layout import Layout, RunPaths
from lorastudy.paper import paper_tables
from lorastudy.plan import RunSpec, resolve_run
from lorastudy.publish.snapshot import verify_inputs
from lorastudy.results import collect, collect_items


@dataclass
class Chapter:
    """One analysis chapter of a profile: read its results lazily, cache its work under OUT/analyses/NAME/."""

    profile: Profile
    layout: Layout
    name: str = ""

    @property
    def out(self) -> Path:
        return self.layout.root

    @property
    def cache(self) -> Path:
        """This chapter's cache folder (rank tables, samples, measurements)."""
        return self.layout.analysis_cache(self.name)

    @property
    def hidden(self) -> int | None:
        """The mini base's hidden size d (LoRA ranks are shown as fractions of it); None for pretrained bases."""
        return self.profile.base.architecture.hidden_size if self.profile.base.kind == "mini" else None

    @property
    def alpha_ratio(self) -> float:
        return self.profile.training.lora.alpha_ratio

    @cached_property
    def results(self) -> pd.DataFrame:
        """The long results table of every finished run, the base and released checkpoints: the sweep's
        results.csv (or the snapshot's), else collected from the run folders when one is newer than it."""
        table = self.layout.results_table
        if table.is_file() and not _newer_than(self.layout.runs_dir.glob("*/results.json"), table):
            return pd.read_csv(table)
        return collect(self.profile, self.out)

    @cached_property
    def items(self) -> pd.DataFrame:
        """Per-item results (run, checkpoint, metric, item, value): the sweep's table, else collected."""
        table = self.layout.items_table
        return pd.read_parquet(table) if table.is_file() else collect_items(self.profile, self.out)

    @cached_property
    def sources(self) -> dict[str, str] | None:
        """The checkpoints here (None in a snapshot): what the chapter's summaries are computed from."""
        return checkpoint_sources(self.out)

    def summary(self, name: str, settings: dict[str, Any], compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """This chapter's summary `name` (stored under OUT/summaries/CHAPTER-NAME): read when stored with these
        settings, else computed from the checkpoints here (lorastudy.analysis.summaries)."""
        return summary(self.layout, f"{self.name}-{name}" if self.name else name, settings, compute,
                       sources=self.sources)

    @cached_property
    def paper(self) -> pd.DataFrame:
        """The paper's Tables S1–S8 in the results table's columns."""
        return paper_tables()


def glue_text(**facts: Any) -> None:
    """Glue each fact as inline markdown, not shown where computed: a chapter's prose cites it as
    {glue:md}`key`, so every number in the text is the run's."""
    for key, value in facts.items():
        glue(key, Markdown(str(value)), display=False)


def _newer_than(paths: Any, reference: Path) -> bool:
    mtime = reference.stat().st_mtime
    return any(p.stat().st_mtime > mtime for p in paths)


def open_chapter(profile: str, output_dir: str = "", name: str = "") -> Chapter:
    """The chapter `name` of a profile (a name or a YAML path) over OUT (empty: the profile's default), with
    the house style applied."""
    prof = load_profile(profile)
    layout = prof.layout(output_dir or None)
    verify_inputs(prof.name, layout)  # a snapshot file that is not what was recorded stops the chapter here
    style()
    pd.set_option("display.max_colwidth", 160)  # claim statements are read whole, not cut at pandas' 50
    return Chapter(prof, layout, name)


@dataclass
class RunContext:
    """One run as the fine-tuning and evaluation notebooks see it."""

    profile: Profile
    spec: RunSpec
    layout: Layout
    paths: RunPaths = field(init=False)

    def __post_init__(self) -> None:
        self.paths = self.layout.run(self.spec.run_id)

    @property
    def out(self) -> Path:
        return self.layout.root


def open_run(profile: str, output_dir: str = "", run_id: str = "", durations: list[float] | None = None,
             **explicit: Any) -> RunContext:
    """A planned run by id, or one set by explicit settings (domain, regime, method, lora_rank, ...) validated
    like a sweep arm; `durations` replaces the profile's checkpoints for the run's regime."""
    prof = load_profile(profile)
    spec = resolve_run(prof, run_id or None, **explicit)
    if durations:
        prof = load_profile(profile, {f"training.durations.{spec.regime}": list(durations)})
    style()
    return RunContext(prof, spec, prof.layout(output_dir or None))
