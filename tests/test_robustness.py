"""analysis.robustness and the landing page's replicate section on hand-made claims: which verdicts a replicate
keeps, reverses or leaves undecided, counted per family, and the base's forgetting read from a results table."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from lorastudy.analysis import robustness
from lorastudy.analysis.claims import compute_claims
from lorastudy.analysis.learning_forgetting import CLAIM_COLUMNS
from lorastudy.analysis.robustness import agreement_table, base_forgetting, paired_verdicts, replicate_layouts
from lorastudy.config import load_profile
from lorastudy.publish.scorecard import replicate_section
from lorastudy.publish.snapshot import seed


def claims(*rows: tuple[str, str, float]) -> pd.DataFrame:
    """(claim id, verdict, estimate) rows with an interval of ±0.05 around the estimate."""
    return pd.DataFrame([{c: None for c in CLAIM_COLUMNS} | {
        "claim": cid, "statement": f"statement of {cid}", "panel": "code IFT", "verdict": v, "estimate": e,
        "ci_low": e - 0.05, "ci_high": e + 0.05} for cid, v, e in rows], columns=CLAIM_COLUMNS)


HERE = claims(("full-learns-more/code-ift/r2", "agrees", 0.1), ("lora-forgets-less/code-ift/r2", "agrees", 0.2),
              ("lora-forgets-less/math-ift/r8", "disagrees", -0.2), ("matched/lora-forgets-less/code-ift/r2",
                                                                      "cannot tell", 0.0),
              ("fig7/all-beats-attention/r2", "agrees", 0.1), ("only-here/x", "agrees", 0.3))
THERE = claims(("full-learns-more/code-ift/r2", "agrees", 0.08), ("lora-forgets-less/code-ift/r2", "disagrees", -0.1),
               ("lora-forgets-less/math-ift/r8", "cannot tell", -0.01), ("matched/lora-forgets-less/code-ift/r2",
                                                                          "cannot tell", 0.01),
               ("fig7/all-beats-attention/r2", "cannot tell", 0.02), ("only-there/y", "agrees", 0.3))


def test_each_shared_claim_is_same_opposite_or_undecided_on_one_side() -> None:
    paired = paired_verdicts(HERE, THERE).set_index("claim")
    assert list(paired.index) == list(HERE.claim[:5])  # claims only one side holds are left out
    assert paired.relation.to_dict() == {
        "full-learns-more/code-ift/r2": "same", "lora-forgets-less/code-ift/r2": "opposite",
        "lora-forgets-less/math-ift/r8": "one cannot tell", "matched/lora-forgets-less/code-ift/r2": "same",
        "fig7/all-beats-attention/r2": "one cannot tell"}
    assert paired.family.to_dict()["matched/lora-forgets-less/code-ift/r2"] == "matched"
    assert paired.loc["lora-forgets-less/code-ift/r2", "estimate_replicate"] == -0.1


def test_the_agreement_table_counts_per_family() -> None:
    table = agreement_table(paired_verdicts(HERE, THERE)).set_index("family")
    assert table.loc["main"].to_dict() == {"n": 3, "same verdict": 1, "opposite verdict": 1,
                                           "one side cannot tell": 1, "decided here": 3,
                                           "decided in the replicate": 2, "decided in both, same": 1}
    assert table.loc["matched", "same verdict"] == 1 and table.loc["matched", "decided in both, same"] == 0
    assert table.loc["fig7", "one side cannot tell"] == 1


def test_the_section_counts_kept_verdicts_and_lists_the_reversed_ones() -> None:
    text = replicate_section(paired_verdicts(HERE, THERE), "mini-replicate", "trained elsewhere")
    assert "Of 5 claims, 2 keep their verdict; of the 4 that agree or disagree here, 1 do so" in text
    assert "(trained elsewhere)" in text
    reversed_rows = text.split("reverses:")[1]
    assert "statement of lora-forgets-less/code-ift/r2" in reversed_rows
    assert "agrees: +0.200 [+0.150, +0.250]" in reversed_rows and "disagrees: -0.100 [-0.150, -0.050]" in reversed_rows
    assert "lora-forgets-less/math-ift/r8" not in reversed_rows  # undecided on one side is not a reversal
    assert replicate_section(paired_verdicts(HERE, THERE.iloc[:0]), "r", "o") == ""


def test_the_base_forgetting_comes_from_the_base_row(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    pd.DataFrame({"run_id": ["base", "base", "run-a"], "metric": ["learning_code", "forgetting_avg", "forgetting_avg"],
                  "value": [0.01, 0.945, 0.5]}).to_csv(path, index=False)
    assert base_forgetting(path) == 0.945
    assert base_forgetting(tmp_path / "missing.csv") is None
    pd.DataFrame({"run_id": ["run-a"], "metric": ["forgetting_avg"], "value": [0.5]}).to_csv(path, index=False)
    assert base_forgetting(path) is None


def test_the_replicates_of_a_profile_are_its_snapshot_folders_with_claims(tmp_path: Path, monkeypatch) -> None:
    for name in ("mini-replicate", "mini-replicate-2", "mini-replicate-b", "mini-replicated", "mini-replicate-3",
                 "mini-replicate-10", "tiny-replicate"):
        (tmp_path / name).mkdir()
        if name != "mini-replicate-3":  # no claims table: not a replicate
            (tmp_path / name / "claims.csv").write_text("claim\n")
    monkeypatch.setattr(robustness, "SNAPSHOTS", tmp_path)
    monkeypatch.setattr(robustness, "snapshot_layout", lambda name: robustness.Layout(tmp_path / name))
    assert [lay.root.name for lay in replicate_layouts("mini")] == ["mini-replicate", "mini-replicate-2",
                                                                   "mini-replicate-10", "mini-replicate-b"]
    assert [lay.root.name for lay in replicate_layouts("tiny")] == ["tiny-replicate"]


@pytest.mark.parametrize("replicate", [lay.root.name for lay in replicate_layouts("mini")])
def test_each_committed_replicate_is_compared_by_this_code(tmp_path: Path, replicate: str) -> None:
    """A replicate's stored claims are what this code computes from its own tables, so the landing page's
    comparison differs by the base model only, not by a change of the claims code (recompute and commit them
    when that code changes)."""
    profile = load_profile("mini")
    layout = robustness.snapshot_layout(replicate)
    assert seed(profile, tmp_path, layout.root)
    stored = pd.read_csv(layout.claims_table)
    computed = pd.read_csv(io.StringIO(compute_claims(profile, tmp_path).to_csv(index=False)))  # as stored
    pd.testing.assert_frame_equal(computed, stored)


def test_settled_claims_are_decided_alike_on_every_base() -> None:
    from lorastudy.analysis.robustness import settled
    from lorastudy.publish.scorecard import settled_section

    third = THERE.assign(verdict=["agrees", "disagrees", "disagrees", "cannot tell", "cannot tell", "agrees"])
    assert settled(HERE, [THERE]).claim.tolist() == ["full-learns-more/code-ift/r2"]
    assert settled(HERE, [THERE, third]).claim.tolist() == ["full-learns-more/code-ift/r2"]
    assert settled(HERE, [third.assign(verdict="disagrees")]).claim.tolist() == ["lora-forgets-less/math-ift/r8"]
    assert settled(HERE, []).claim.tolist() == [c for c, v in zip(HERE.claim, HERE.verdict) if v != "cannot tell"]
    text = settled_section(settled(HERE, [THERE, third]), len(HERE), ["mini-replicate", "mini-replicate-2"])
    assert "2 other hosts (`mini-replicate`, `mini-replicate-2`" in text and "Of 6 claims, 1 are" in text
    assert "full-learns-more/code-ift/r2" in text and "agrees" in text and "+0.100 [+0.050, +0.150]" in text
    assert settled_section(settled(HERE, []), len(HERE), []) == ""
