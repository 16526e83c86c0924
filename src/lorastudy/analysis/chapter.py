"""What every notebook opens with, in one call: the profile, its output tree, the results and the paper's
tables, the claims and the facts the prose cites, and the house style. A chapter notebook imports this and its
own analysis and figures modules only; it then holds calls, display and prose."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from lorastudy.analysis import claims as claim_text
from lorastudy.analysis import learning_forgetting, selection
from lorastudy.analysis.summaries import checkpoint_sources, summary
from lorastudy.config import Profile, load_profile
from lorastudy.figures.style import style
from lorastudy.layout import Layout, RunPaths
from lorastudy.paper import paper_tables
from lorastudy.plan import RunSpec, resolve_run
from lorastudy.publish.snapshot import verify_inputs
from lorastudy.results import collect, collect_items, write_table


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

    # ------------------------------------------------------------------ claims: what the chapter can say
    @cached_property
    def claims(self) -> pd.DataFrame:
        """Every claim of the sweep (claims.csv, or computed when it is missing)."""
        return claim_text.claims_table(self.profile, self.out)

    def claims_of(self, family: str) -> pd.DataFrame:
        """The claims of one family: 'main', 'matched', 'other-rate', 'fig4', 'fig7', 'figS3', ..."""
        return claim_text.claims_of(self.claims, family)

    def show_claims(self, table: pd.DataFrame, what: str, extra: str = "") -> pd.DataFrame:
        """The verdict count as a sentence (and `extra`), shown; the claims' compact table, returned for display."""
        self.say(claim_text.verdict_text(table, what) + (f" {extra}" if extra else ""))
        return claim_text.compact(table)

    @staticmethod
    def sentences(table: pd.DataFrame, what: str = "claims") -> str:
        """The verdicts as sentences, for the prose of "What our runs say"."""
        return claim_text.verdict_sentences(table, what)

    def rate_dependence(self) -> str:
        """Which headline verdicts change when LoRA runs at its other candidate rate."""
        return claim_text.rate_dependence_text(self.claims)

    # ------------------------------------------------------------------ facts shared by chapters
    def base_values(self, domain: str) -> dict[str, float]:
        """The base model's learning, forgetting and source loss in `domain`: the comparisons' reference."""
        return selection.base_values(self.results, domain)

    panel_name = staticmethod(selection.panel_name)
    measured_metrics = staticmethod(selection.measured_metrics)

    def chosen_rates(self) -> pd.DataFrame:
        """Every candidate rate of the main grid with its validation score, and which one was chosen."""
        return learning_forgetting.chosen_rates_table(self.profile, self.results, self.items)

    def scale_facts(self) -> dict[str, str]:
        """The study's scale (parameters, width, tokens, ranks, bases, rate ratios) as text for the prose."""
        return learning_forgetting.scale_facts(self.profile, self.results, self.items, self.claims, self.out)

    # ------------------------------------------------------------------ display and what the chapter keeps
    @staticmethod
    def md(text: str) -> Markdown:
        return Markdown(text)

    @staticmethod
    def say(*shown: Any) -> None:
        """Display each: text as Markdown, anything else as itself."""
        display(*(Markdown(x) if isinstance(x, str) else x for x in shown))

    @staticmethod
    def not_run(what: str) -> Markdown:
        """The note for an arm this profile does not run."""
        return Markdown(claim_text.not_run(what))

    @staticmethod
    def glue(**facts: Any) -> None:
        glue_text(**facts)

    def keep(self, table: pd.DataFrame, filename: str) -> None:
        """A table into this chapter's cache folder."""
        write_table(table, self.cache / filename)

    def keep_verdict(self, verdict: pd.DataFrame) -> None:
        """This chapter's verdict table, where the landing page's scorecard reads it."""
        write_table(verdict, self.layout.chapter_verdict(self.name))


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
