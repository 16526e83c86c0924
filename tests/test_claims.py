"""analysis.claims on hand-made tables: the three-way verdict of a measured claim, which stored claims are current
(content hashes of their two tables), what compute_claims reads and puts together, the families, and the
sentences, counts and compact view a chapter shows."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lorastudy.analysis import claims
from lorastudy.analysis.learning_forgetting import CLAIM_COLUMNS
from lorastudy.config import load_profile
from lorastudy.io import read_json, write_json
from lorastudy.layout import Layout
from lorastudy.results import write_table

PROFILE = load_profile("tiny")


def table(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame([{c: r.get(c) for c in CLAIM_COLUMNS} for r in rows], columns=CLAIM_COLUMNS)


AGREE = {"claim": "full-learns-more/code-ift/r2", "statement": "full FT learns more than LoRA r=2",
         "panel": "code IFT", "estimate": 0.12, "ci_low": 0.05, "ci_high": 0.19, "n_bases": 3, "n_items": 30,
         "verdict": "agrees", "paper": 0.03}
AGAINST = {"claim": "lora-forgets-less/math-ift/r8", "statement": "LoRA r=8 forgets less than full FT",
           "panel": "math IFT", "estimate": -0.2, "ci_low": -0.3, "ci_high": -0.1, "n_bases": 1, "n_items": 24,
           "verdict": "disagrees", "paper": 0.1}
TIE = {"claim": "matched/code-ift/r2", "statement": "at matched learning LoRA r=2 forgets less",
       "panel": "code IFT", "estimate": 0.01, "ci_low": -0.05, "ci_high": 0.07, "n_bases": 2, "n_items": 30,
       "verdict": "cannot tell", "paper": np.nan}
CLAIMS = table(AGREE, AGAINST, TIE)


def test_the_not_run_note_names_what_is_missing() -> None:
    assert claims.not_run("Weight decay") == (
        "**Weight decay: not run in this profile** — the default profile `mini` runs every arm (`make mini`); "
        "add the arm to this profile's sweep to fill it.")


@pytest.mark.parametrize("paper, ours, verdict", [(True, True, "agrees"), (False, False, "agrees"),
                                                  (True, False, "disagrees"), (False, True, "disagrees"),
                                                  (True, None, "cannot tell"), (False, None, "cannot tell")])
def test_a_measured_claim_agrees_only_when_both_say_the_same(paper, ours, verdict) -> None:
    assert claims.claim("s", paper, ours, "d") == {"statement": "s", "paper": paper, "ours": ours,
                                                   "verdict": verdict, "detail": "d"}
    assert claims.claim("s", paper, 1 if ours else 0 if ours is not None else None, "d")["verdict"] == verdict


def _tables(out: Path) -> Layout:
    layout = Layout(out)
    write_table(pd.DataFrame({"run_id": ["base"], "metric": ["learning_code"], "value": [0.1]}), layout.results_table)
    write_table(pd.DataFrame({"run_id": ["base"], "checkpoint": ["base"], "metric": ["learning_code"],
                              "item": ["0"], "value": [0.1]}), layout.items_table)
    return layout


def test_sources_are_the_content_hashes_of_the_two_tables(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    assert claims.claims_sources(layout) == {"results.csv": None, "items.parquet": None}
    _tables(tmp_path)
    assert claims.claims_sources(layout) == {
        "results.csv": hashlib.sha256(layout.results_table.read_bytes()).hexdigest(),
        "items.parquet": hashlib.sha256(layout.items_table.read_bytes()).hexdigest()}


def test_written_claims_are_read_back_until_a_table_changes(tmp_path: Path, monkeypatch) -> None:
    layout = _tables(tmp_path)
    asked = []
    monkeypatch.setattr(claims, "compute_claims", lambda profile, out: (asked.append((profile, out)), CLAIMS)[1])
    written = claims.write_claims(PROFILE, tmp_path)
    assert asked == [(PROFILE, tmp_path)]
    pd.testing.assert_frame_equal(written, CLAIMS)
    assert read_json(layout.claims_record) == {"sources": claims.claims_sources(layout)}
    monkeypatch.setattr(claims, "compute_claims", lambda profile, out: (asked.append((profile, out)), CLAIMS.iloc[:1])[1])
    assert list(claims.claims_table(PROFILE, tmp_path).claim) == list(CLAIMS.claim)  # read, not computed
    write_table(pd.DataFrame({"run_id": ["base"], "metric": ["learning_code"], "value": [0.2]}), layout.results_table)
    assert list(claims.claims_table(PROFILE, tmp_path).claim) == [AGREE["claim"]]  # stale: computed again
    assert asked[1:] == [(PROFILE, tmp_path)]
    claims.write_claims(PROFILE, tmp_path)
    layout.claims_record.unlink()  # no record: never trusted
    monkeypatch.setattr(claims, "compute_claims", lambda profile, out: CLAIMS.iloc[:2])
    assert len(claims.claims_table(PROFILE, tmp_path)) == 2
    layout.claims_table.unlink()
    claims.write_json(layout.claims_record, {"sources": claims.claims_sources(layout)})  # no table: computed
    assert len(claims.claims_table(PROFILE, tmp_path)) == 2


def test_compute_claims_puts_the_four_families_together(tmp_path: Path, monkeypatch) -> None:
    layout = _tables(tmp_path)
    calls = []

    def part(name: str, rows: list[dict]):
        def fn(df, items, profile, *rest, **kw):
            calls.append((name, list(df.columns), len(items), profile.name, kw.get("lora_rate", "chosen"),
                          len(rest)))
            return table(*rows)
        return fn

    monkeypatch.setattr(claims, "main_claims", lambda df, items, profile, paper, lora_rate="chosen": (
        calls.append(("main", lora_rate, len(paper) > 0, list(df.columns), len(items), profile.name, len(df))),
        table(AGREE if lora_rate == "chosen" else {**AGREE, "claim": "other-rate/" + AGREE["claim"]}))[1])
    monkeypatch.setattr(claims, "matched_claims", part("matched", [TIE]))
    monkeypatch.setattr(claims, "arm_claims", part("arms", []))
    out = claims.compute_claims(PROFILE, tmp_path)
    assert list(out.claim) == [AGREE["claim"], TIE["claim"], "other-rate/" + AGREE["claim"]]
    assert out.index.tolist() == [0, 1, 2]
    columns = ["run_id", "metric", "value"]
    assert calls[0] == ("main", "chosen", True, columns, 1, "tiny", 1)
    assert calls[2] == ("main", "other", True, columns, 1, "tiny", 1)
    assert calls[1] == ("matched", ["run_id", "metric", "value"], 1, "tiny", "chosen", 0)
    assert calls[3][0] == "arms" and calls[3][1:4] == (["run_id", "metric", "value"], 1, "tiny")
    # without the stored tables the output tree is collected (here: the base's record)
    layout.results_table.unlink()
    layout.items_table.unlink()
    write_json(layout.base_eval, {"rows": [{"run_id": "base", "checkpoint": "base", "duration": 0, "tokens_seen": 0,
                                            "metric": "learning_code", "value": 0.5}],
                                  "items": [{"item": "a", "metric": "learning_code", "value": 0.5},
                                            {"item": "b", "metric": "learning_code", "value": 0.5}]})
    calls.clear()
    claims.compute_claims(PROFILE, tmp_path)
    assert calls[0][3][:3] == ["run_id", "domain", "regime"] and calls[0][4] == 2 and calls[0][6] == 1  # the base row
    layout.base_eval.unlink()  # and with no items there is nothing to claim
    with pytest.raises(FileNotFoundError, match="no per-item results"):
        claims.compute_claims(PROFILE, tmp_path)


def test_compute_claims_with_no_claims_has_the_columns(tmp_path: Path, monkeypatch) -> None:
    _tables(tmp_path)
    for name in ("main_claims", "matched_claims", "arm_claims"):
        monkeypatch.setattr(claims, name, lambda *a, **k: table())
    out = claims.compute_claims(PROFILE, tmp_path)
    assert out.empty and list(out.columns) == CLAIM_COLUMNS


@pytest.mark.parametrize("claim_id, family", [
    ("full-learns-more/code-ift/r2", "main"), ("full-learns-more-nll/code-cpt/r1", "main"),
    ("lora-forgets-less/math-ift/r8", "main"), ("cpt-learns/code-cpt", "main"), ("cpt-learns-nll/math-cpt", "main"),
    ("matched/code-ift/r2", "matched"), ("other-rate/full-learns-more/code-ift/r2", "other-rate"),
    ("fig4/lora-forgets-less/wd0.05", "fig4"), ("figS3/alpha", "figS3")])
def test_claim_families(claim_id: str, family: str) -> None:
    assert claims.kind(claim_id) == family


def test_claims_of_a_family_keep_their_order() -> None:
    mixed = table(TIE, AGREE, {**AGREE, "claim": "fig4/x"}, AGAINST)
    main = claims.claims_of(mixed, "main")
    assert list(main.claim) == [AGREE["claim"], AGAINST["claim"]] and main.index.tolist() == [0, 1]
    assert list(main.columns) == CLAIM_COLUMNS
    assert list(claims.claims_of(mixed, "fig4").claim) == ["fig4/x"]
    assert claims.claims_of(mixed, "figS3").empty


def test_verdict_text_counts_and_names_the_disagreements() -> None:
    assert claims.verdict_text(CLAIMS.iloc[:0], "headline claims") == "No headline claims in this profile's runs."
    assert claims.verdict_text(CLAIMS) == (
        "Of 3 claims, 1 agree, 1 disagree, 1 cannot tell. Against the paper: LoRA r=8 forgets less than full FT "
        "(math IFT: -0.200 [-0.300, -0.100]).")
    assert claims.verdict_text(CLAIMS.iloc[[0, 2]]) == "Of 2 claims, 1 agree, 0 disagree, 1 cannot tell."
    two = table(AGAINST, {**AGAINST, "statement": "LoRA r=2 forgets less", "estimate": -0.1})
    assert claims.verdict_text(two).endswith("full FT (math IFT: -0.200 [-0.300, -0.100]); LoRA r=2 forgets less "
                                             "(math IFT: -0.100 [-0.300, -0.100]).")
    measured = pd.DataFrame([claims.claim("ranks are low", True, False, "40"), claims.claim("x", True, True, ""),
                             claims.claim("y", True, False, "")])
    assert claims.verdict_text(measured, "statements") == (
        "Of 3 statements, 1 agree, 2 disagree, 0 cannot tell. Against the paper: ranks are low; y.")
    assert claims.verdict_sentences(measured, "statements").splitlines()[3] == "- **agrees**: x ()."


def test_verdict_sentences_for_every_kind_of_row() -> None:
    rows = table(AGAINST, {**TIE, "ci_low": np.nan, "ci_high": np.nan},
                 {**AGREE, "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "panel": None, "n_bases": np.nan})
    lines = claims.verdict_sentences(rows, "verdicts").splitlines()
    assert lines[0] == "Of 3 verdicts, 1 agree, 1 disagree, 1 cannot tell." and lines[1] == ""
    assert lines[2] == ("- **disagrees**: math IFT: LoRA r=8 forgets less than full FT (ours -0.200, 95% interval "
                        "[-0.300, -0.100], 1 base; paper +0.100).")
    assert lines[3] == "- **cannot tell**: code IFT: at matched learning LoRA r=2 forgets less (ours +0.010, 2 bases)."
    assert lines[4] == "- **agrees**: full FT learns more than LoRA r=2 (not measurable here; paper +0.030)."
    assert len(lines) == 5
    unnumbered = claims.verdict_sentences(table({**AGREE, "paper": "n/a"})).splitlines()[2]
    assert unnumbered.endswith("3 bases).")  # a paper value that is not a number is left out
    assert claims.verdict_sentences(rows.iloc[:0], "verdicts") == "No verdicts could be computed from this profile's runs."


def test_rate_dependence_counts_verdicts_that_change_with_loras_other_rate() -> None:
    assert claims.rate_dependence_text(CLAIMS) == "No second learning-rate ratio in this profile's runs."
    other = [{**AGREE, "claim": "other-rate/" + AGREE["claim"], "verdict": "cannot tell"},
             {**AGAINST, "claim": "other-rate/" + AGAINST["claim"], "verdict": "agrees"}]
    text = claims.rate_dependence_text(table(AGREE, AGAINST, TIE, *other))
    assert text == ("*LoRA forgets less* agrees in 0 of 1 comparisons at the chosen rates and in 1 of 1 at LoRA's "
                    "other rates (1 verdicts change); *full FT learns more* agrees in 1 of 1 comparisons at the chosen "
                    "rates and in 0 of 1 at LoRA's other rates (1 verdicts change).")
    beyond_base = table({**AGREE, "claim": "cpt-learns/code-cpt"}, {**AGREE, "claim": "other-rate/cpt-learns/code-cpt"})
    assert claims.rate_dependence_text(beyond_base) == ""  # neither LoRA claim to compare


def test_compact_view() -> None:
    view = claims.compact(table(AGREE, {**TIE, "estimate": np.nan, "n_bases": np.nan}))
    assert list(view.columns) == ["panel", "claim", "ours [95% interval]", "bases", "per base", "verdict", "paper"]
    assert view.iloc[0].tolist() == ["code IFT", AGREE["statement"], "+0.120 [+0.050, +0.190]", "3", "", "agrees",
                                     "+0.030"]
    assert view.iloc[1].tolist() == ["code IFT", TIE["statement"], "untestable", "", "", "cannot tell", ""]
    spread = claims.compact(table({**AGREE, "per_base": "+0.1000 +0.0500 +0.2100"}))
    assert spread["per base"].tolist() == ["+0.1000 +0.0500 +0.2100"]
    assert claims.compact(table({**AGREE, "paper": "n/a"})).paper.tolist() == [""]
