"""The one verdict type of the book: the paper's statement, what our runs say, and whether they agree.

Every claim a chapter makes about agreement with the paper comes from here, never from hand-typed numbers, so
the text stays true when the results change.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lorastudy.analysis.arm_claims import arm_claims
from lorastudy.analysis.intervals import AGREES, CANNOT_TELL, DISAGREES
from lorastudy.analysis.learning_forgetting import CLAIM_COLUMNS, main_claims
from lorastudy.analysis.matched import matched_claims
from lorastudy.analysis.transitions import transition_claims
from lorastudy.config import Profile
from lorastudy.io import file_sha256, read_json, write_json
from lorastudy.layout import Layout
from lorastudy.paper import paper_tables
from lorastudy.results import collect, collect_items, write_table


def not_run(what: str) -> str:
    """The markdown note a chapter shows where runs are missing (one wording for every chapter)."""
    return (f"**{what}: not run in this profile** — the default profile `mini` runs every arm "
            "(`make mini`); add the arm to this profile's sweep to fill it.")


def claim(statement: str, paper: bool, ours: bool | None, detail: str) -> dict:
    """One row of a measurement chapter's verdict table (spectra, memory, beyond: deterministic measures, no
    items to resample): the paper's statement, ours (None = cannot tell) and the three-way verdict."""
    word = CANNOT_TELL if ours is None else AGREES if bool(ours) == bool(paper) else DISAGREES
    return {"statement": statement, "paper": paper, "ours": ours, "verdict": word, "detail": detail}


def claims_table(profile: Profile, out_root: Path) -> pd.DataFrame:
    """Every claim with an interval, one row each (analysis.learning_forgetting.CLAIM_COLUMNS): the sweep's
    claims.csv when it was computed from the results and per-item tables as they are now, else computed now."""
    layout = Layout(out_root)
    if layout.claims_table.is_file() and layout.claims_record.is_file() and (
            read_json(layout.claims_record).get("sources") == claims_sources(layout)):
        return pd.read_csv(layout.claims_table)
    return compute_claims(profile, out_root)


def write_claims(profile: Profile, out_root: Path) -> pd.DataFrame:
    """Compute the claims and store them with the fingerprints of their two source tables (what the sweep
    does once its results are in): chapters and the landing page then read, never recompute, them."""
    layout = Layout(out_root)
    table = compute_claims(profile, out_root)
    write_table(table, layout.claims_table)
    write_json(layout.claims_record, {"sources": claims_sources(layout)})
    return table


def claims_sources(layout: Layout) -> dict[str, str | None]:
    """Content hashes of the results and per-item tables (file times do not survive git or a copy)."""
    return {p.name: (file_sha256(p) if p.is_file() else None)
            for p in (layout.results_table, layout.items_table)}


def compute_claims(profile: Profile, out_root: Path) -> pd.DataFrame:
    """The main grid's claims at the chosen rates, forgetting at matched learning, the main claims again with
    LoRA at its other candidate rate, the extra arms' claims and per-item transitions against the base, from the sweep's results and per-item tables
    (collected from the runs when the sweep has not written them)."""
    layout = Layout(out_root)
    df = pd.read_csv(layout.results_table) if layout.results_table.is_file() else collect(profile, out_root)
    items = (pd.read_parquet(layout.items_table) if layout.items_table.is_file()
             else collect_items(profile, out_root))
    if items.empty:
        raise FileNotFoundError(f"no per-item results under {out_root}: run `lorastudy sweep {profile.name}` first")
    paper = paper_tables()
    parts = [main_claims(df, items, profile, paper), matched_claims(df, items, profile),
             main_claims(df, items, profile, paper, lora_rate="other"), arm_claims(df, items, profile),
             transition_claims(df, items, profile)]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=CLAIM_COLUMNS)


MAIN_KINDS = ("full-learns-more", "full-learns-more-nll", "lora-forgets-less", "cpt-learns", "cpt-learns-nll",
              "ift-learns", "ift-learns-nll")


def kind(claim_id: str) -> str:
    """A claim's family: 'main' (the headline claims at the chosen rates), else its id's first part
    ('matched', 'other-rate', 'fig4', 'fig7', 'figS3', 'transitions')."""
    head = claim_id.split("/")[0]
    return "main" if head in MAIN_KINDS else head


def claims_of(table: pd.DataFrame, family: str) -> pd.DataFrame:
    """The rows of one family (see `kind`), index reset."""
    return table[[kind(c) == family for c in table.claim]].reset_index(drop=True)


def verdict_text(table: pd.DataFrame, what: str = "claims") -> str:
    """One sentence counting the verdicts of these claims, naming the ones that disagree (markdown)."""
    if table.empty:
        return f"No {what} in this profile's runs."
    counts = table.verdict.value_counts()
    parts = [f"{counts.get(v, 0)} {w}" for v, w in (("agrees", "agree"), ("disagrees", "disagree"),
                                                     ("cannot tell", "cannot tell"))]
    text = f"Of {len(table)} {what}, " + ", ".join(parts) + "."
    against = table[table.verdict == "disagrees"]
    if len(against) and {"panel", "estimate"} <= set(table.columns):
        text += " Against the paper: " + "; ".join(f"{s} ({p}: {e:+.3f} [{lo:+.3f}, {hi:+.3f}])" for s, p, e, lo, hi in
                                                 zip(against.statement, against.panel, against.estimate,
                                                     against.ci_low, against.ci_high)) + "."
    elif len(against):
        text += " Against the paper: " + "; ".join(against.statement) + "."
    return text


def verdict_sentences(table: pd.DataFrame, what: str = "claims") -> str:
    """The verdicts as sentences, one bullet per claim (markdown), from a claims table (estimate and interval)
    or a measurement chapter's verdict table (`claim` rows: ours and a detail): what a chapter ends with, so
    that its text says what its tables say."""
    if table.empty:
        return f"No {what} could be computed from this profile's runs."
    lines = []
    for row in table.to_dict("records"):
        where = f"{row['panel']}: " if pd.notna(row.get("panel", None)) and row.get("panel") else ""
        if "estimate" in row:
            est, lo, hi = row["estimate"], row.get("ci_low"), row.get("ci_high")
            ours = (f"ours {est:+.3f}, 95% interval [{lo:+.3f}, {hi:+.3f}]" if pd.notna(est) and pd.notna(lo)
                    else f"ours {est:+.3f}" if pd.notna(est) else "not measurable here")
            if pd.notna(row.get("n_bases", None)):
                ours += f", {int(row['n_bases'])} base{'s' * (int(row['n_bases']) != 1)}"
            paper = pd.to_numeric(pd.Series([row.get("paper")]), errors="coerce").iloc[0]
            ours += f"; paper {paper:+.3f}" if pd.notna(paper) else ""
        else:
            ours = str(row.get("detail") or "")
        lines.append(f"- **{row['verdict']}**: {where}{row['statement']} ({ours}).")
    counts = verdict_text(table, what).split(" Against the paper:")[0]  # the bullets name each claim
    return counts + "\n\n" + "\n".join(lines)


def rate_dependence_text(table: pd.DataFrame) -> str:
    """How the headline verdicts move when LoRA trains at its other candidate rate (markdown), per claim type."""
    main, other = claims_of(table, "main"), claims_of(table, "other-rate")
    if main.empty or other.empty:
        return "No second learning-rate ratio in this profile's runs."
    other = other.assign(claim=other.claim.str.removeprefix("other-rate/").str.replace(r"/lr[^/]+$", "", regex=True))
    both = main.merge(other, on="claim", suffixes=("", "_other"))
    parts = []
    for head, what in (("lora-forgets-less", "LoRA forgets less"), ("full-learns-more", "full FT learns more")):
        g = both[both.claim.str.startswith(head + "/")]
        if len(g):
            parts.append(f"*{what}* agrees in {(g.verdict == 'agrees').sum()} of {len(g)} comparisons at the chosen "
                         f"rates and in {(g.verdict_other == 'agrees').sum()} of {len(g)} at LoRA's other rates "
                         f"({(g.verdict != g.verdict_other).sum()} verdicts change)")
    return "; ".join(parts) + "." if parts else ""


def compact(table: pd.DataFrame) -> pd.DataFrame:
    """Claims as a reader reads them: panel, statement, estimate with its interval, the estimate on each base,
    verdict, paper."""
    fmt = lambda v: "" if pd.isna(v) else f"{v:+.3f}"  # noqa: E731
    return pd.DataFrame({
        "panel": table.panel, "claim": table.statement,
        "ours [95% interval]": [f"{fmt(e)} [{fmt(lo)}, {fmt(hi)}]" if pd.notna(e) else "untestable"
                                for e, lo, hi in zip(table.estimate, table.ci_low, table.ci_high)],
        "bases": [("" if pd.isna(n) else str(int(n))) for n in table.n_bases],
        "per base": table.per_base.fillna("") if "per_base" in table else "", "verdict": table.verdict,
        "paper": [fmt(v) for v in pd.to_numeric(table.paper, errors="coerce")]}).reset_index(drop=True)
