"""The book without training: chapter summaries stored with their settings, a snapshot taken from an output
folder and seeded into an empty one, the scorecard and the verdict sentences the chapters end with."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lorastudy.analysis.chapter import Chapter
from lorastudy.analysis.claims import verdict_sentences
from lorastudy.analysis.robustness import replicate_layouts
from lorastudy.analysis.summaries import SummaryUnavailable, checkpoint_sources, summary
from lorastudy.config import load_profile
from lorastudy.io import read_json, write_json
from lorastudy.layout import CHECKPOINT_RECORD, SNAPSHOT_FILES, Layout, snapshot_layout
from lorastudy.publish import snapshot as snapshot_module
from lorastudy.publish.scorecard import FAMILIES, figure_for, scorecard
from lorastudy.publish.snapshot import SnapshotDamaged, from_snapshot, seed, stale_copy, take, verify, verify_inputs

CLAIMS = pd.DataFrame([
    {"claim": "full-learns-more/code-ift/r2", "statement": "full fine-tuning learns more than LoRA r=2",
     "panel": "code IFT", "estimate": 0.12, "ci_low": 0.05, "ci_high": 0.19, "n_bases": 3, "n_items": 210,
     "verdict": "agrees", "paper": 0.03},
    {"claim": "lora-forgets-less/code-ift/r2", "statement": "LoRA r=2 forgets less than full fine-tuning",
     "panel": "code IFT", "estimate": -0.01, "ci_low": -0.04, "ci_high": 0.02, "n_bases": 3, "n_items": 600,
     "verdict": "cannot tell", "paper": float("nan")},
    {"claim": "matched/math-cpt/r8", "statement": "LoRA r=8 forgets less at matched learning", "panel": "math CPT",
     "estimate": -0.2, "ci_low": -0.3, "ci_high": -0.1, "n_bases": 2, "n_items": 600, "verdict": "disagrees",
     "paper": float("nan")},
])


class Counter:
    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame, self.calls = frame, 0

    def __call__(self) -> pd.DataFrame:
        self.calls += 1
        return self.frame


def fake_checkpoint(out: Path, run_id: str, label: str, text: str = "{}") -> Path:
    record = Layout(out).run(run_id).checkpoint(label) / CHECKPOINT_RECORD
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(text)
    return record


def test_a_summary_is_computed_once_and_read_back_with_the_same_settings(tmp_path):
    layout = Layout(tmp_path)
    fake_checkpoint(tmp_path, "run-a", "ckpt-1")
    compute = Counter(pd.DataFrame({"layer": [0, 1], "rank90": [3, 5]}))
    first = summary(layout, "ranks", {"threshold": 0.9, "ks": (1, 2)}, compute, sources=checkpoint_sources(tmp_path))
    again = summary(layout, "ranks", {"threshold": 0.9, "ks": [1, 2]}, compute, sources=checkpoint_sources(tmp_path))
    assert compute.calls == 1 and again.equals(first)  # a tuple and a list are the same setting once stored
    summary(layout, "ranks", {"threshold": 0.8, "ks": [1, 2]}, compute, sources=checkpoint_sources(tmp_path))
    assert compute.calls == 2  # other settings: computed again


def test_a_retrained_checkpoint_makes_the_summary_stale(tmp_path):
    layout = Layout(tmp_path)
    record = fake_checkpoint(tmp_path, "run-a", "ckpt-1")
    compute = Counter(pd.DataFrame({"x": [1]}))
    summary(layout, "kl", {}, compute, sources=checkpoint_sources(tmp_path))
    record.write_text('{"retrained": true}')
    summary(layout, "kl", {}, compute, sources=checkpoint_sources(tmp_path))
    fake_checkpoint(tmp_path, "run-b", "ckpt-1")  # a new run
    summary(layout, "kl", {}, compute, sources=checkpoint_sources(tmp_path))
    assert compute.calls == 3


def test_without_checkpoints_a_stored_summary_is_read_and_other_settings_fail_clearly(tmp_path):
    layout = Layout(tmp_path)
    fake_checkpoint(tmp_path, "run-a", "ckpt-1")
    compute = Counter(pd.DataFrame({"x": [1, 2]}))
    summary(layout, "samples", {"n": 16}, compute, sources=checkpoint_sources(tmp_path))
    snap = tmp_path / "snap"
    (snap / "summaries").mkdir(parents=True)
    for path in layout.summaries_dir.iterdir():
        (snap / "summaries" / path.name).write_bytes(path.read_bytes())
    assert checkpoint_sources(snap) is None
    read = summary(Layout(snap), "samples", {"n": 16}, compute, sources=None)
    assert compute.calls == 1 and list(read.x) == [1, 2]
    with pytest.raises(SummaryUnavailable, match=r"n.: 32.*lorastudy sweep"):
        summary(Layout(snap), "samples", {"n": 32}, compute, sources=None)
    with pytest.raises(SummaryUnavailable, match="has none"):
        summary(Layout(snap), "other", {}, compute, sources=None)


def sweep_output(out: Path) -> None:
    """What a finished sweep leaves for a snapshot: the three tables and a summary."""
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"run_id": ["base", "r1"], "method": ["base", "full"], "metric": ["learning_code"] * 2,
                  "value": [0.1, 0.4]}).to_csv(out / "results.csv", index=False)
    pd.DataFrame({"run_id": ["r1"], "checkpoint": ["c"], "metric": ["m"], "item": ["0"], "value": [1.0]}).to_parquet(
        out / "items.parquet")
    CLAIMS.to_csv(out / "claims.csv", index=False)
    fake_checkpoint(out, "r1", "c")
    summary(Layout(out), "13_spectra-ranks", {"threshold": 0.9}, lambda: pd.DataFrame({"rank90": [4]}),
            sources=checkpoint_sources(out))


def test_a_snapshot_round_trips_into_an_empty_output_folder(tmp_path):
    profile = load_profile("tiny")
    sweep_output(tmp_path / "out")
    snap = take(profile, tmp_path / "out", tmp_path / "results" / "tiny")
    assert sorted(p.name for p in snap.iterdir()) == sorted(SNAPSHOT_FILES)
    assert not (snap / "runs").exists()  # weights and run folders stay out of the snapshot
    fresh = tmp_path / "fresh"
    assert seed(profile, fresh, snap)
    for name in ("results.csv", "items.parquet", "claims.csv", "summaries/13_spectra-ranks.parquet"):
        assert (fresh / name).read_bytes() == (snap / name).read_bytes()
    record = from_snapshot(Layout(fresh))
    assert record["runs"] == 1 and record["seeded_from"] == str(snap) and record["profile"] == "tiny"
    assert not seed(profile, fresh, snap)  # an output folder with results is never overwritten
    assert from_snapshot(Layout(tmp_path / "out")) is None
    ch = Chapter(profile, Layout(fresh), "13_spectra")
    assert ch.sources is None and list(ch.results.run_id) == ["base", "r1"]
    assert list(ch.summary("ranks", {"threshold": 0.9}, lambda: pytest.fail("must not compute")).rank90) == [4]


def test_a_snapshot_needs_a_finished_sweep(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.csv"):
        take(load_profile("tiny"), tmp_path / "empty", tmp_path / "dest")


def test_the_committed_mini_snapshot_has_what_the_chapters_read():
    snap = snapshot_layout("mini")
    for path in (snap.results_table, snap.items_table, snap.claims_table, snap.provenance, snap.run_records):
        assert path.is_file(), f"{path} is missing from the committed snapshot"
    names = {p.stem for p in snap.summaries_dir.glob("*.parquet")}
    for chapter in ("12_diversity", "13_spectra", "15_memory", "16_beyond"):
        assert any(n.startswith(chapter) for n in names), f"no summary of {chapter} in {snap.summaries_dir}"
    size = sum(p.stat().st_size for p in snap.root.rglob("*") if p.is_file())
    assert size < 10 * 2**20, f"the snapshot is {size / 2**20:.1f} MiB: it should stay a few MB"


def test_verdict_sentences_say_what_the_table_says():
    text = verdict_sentences(CLAIMS, "claims")
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(bullets) == len(CLAIMS)
    assert text.startswith("Of 3 claims, 1 agree, 1 disagree, 1 cannot tell.")
    assert "- **agrees**: code IFT: full fine-tuning learns more than LoRA r=2 (ours +0.120, 95% interval " \
           "[+0.050, +0.190], 3 bases; paper +0.030)." in bullets
    assert "paper" not in bullets[1]  # no paper number: none is printed
    measured = pd.DataFrame([{"statement": "ΔW is below the base's rank", "paper": True, "ours": False,
                              "verdict": "disagrees", "detail": "mean 40 against 30"}])
    assert verdict_sentences(measured).endswith("- **disagrees**: ΔW is below the base's rank (mean 40 against 30).")
    assert "No claims" in verdict_sentences(CLAIMS.iloc[:0])


def test_the_scorecard_lists_every_claim_and_links_only_drawn_figures():
    card = scorecard("mini", CLAIMS, labels={"fig-learning"})
    for statement in CLAIMS.statement:
        assert statement in card
    assert "{numref}`fig-learning`" in card and "fig-forgetting" not in card and "fig-tradeoff" not in card
    assert FAMILIES["main"] in card and FAMILIES["matched"] in card and FAMILIES["fig4"] not in card
    assert figure_for("full-learns-more-nll/code-cpt/r1") == "fig-answer-nll"
    assert figure_for("full-learns-more/code-cpt/r1") == "fig-learning"
    assert figure_for("unknown/x") is None


def test_stored_claims_are_read_when_their_tables_match_whatever_the_file_times(tmp_path, monkeypatch):
    import os

    from lorastudy.analysis import claims as claims_module

    sweep_output(tmp_path)
    layout = Layout(tmp_path)
    claims_module.write_json(layout.claims_record, {"sources": claims_module.claims_sources(layout)})
    os.utime(layout.claims_table, (1, 1))  # older than its tables, as a git checkout may leave it
    monkeypatch.setattr(claims_module, "compute_claims", lambda *a: pytest.fail("recomputed"))
    assert list(claims_module.claims_table(load_profile("tiny"), tmp_path).claim) == list(CLAIMS.claim)
    (layout.results_table).write_text(layout.results_table.read_text() + "extra,row\n")  # the results changed
    monkeypatch.setattr(claims_module, "compute_claims", lambda *a: CLAIMS.iloc[:1])
    assert len(claims_module.claims_table(load_profile("tiny"), tmp_path)) == 1


# ---------------------------------------------------------------- a snapshot is verified before use
def committed_copy(tmp_path: Path, name: str = "mini") -> Path:
    """A copy of a committed snapshot, to damage."""
    return Path(shutil.copytree(snapshot_layout(name).root, tmp_path / "results" / name))


def test_every_committed_snapshot_records_and_matches_its_files():
    for layout in [snapshot_layout("mini"), *replicate_layouts("mini")]:
        record = read_json(layout.provenance)["files"]
        assert {"results.csv", "items.parquet", "claims.csv"} <= set(record), layout.root
        assert verify(layout.root) is True


def test_truncating_any_snapshot_file_stops_the_check_naming_that_file(tmp_path):
    snap = committed_copy(tmp_path)
    files = read_json(snap / "provenance.json")["files"]
    assert len(files) > 5 and any(rel.startswith("summaries/") for rel in files)
    for rel in files:
        path = snap / rel
        original = path.read_bytes()
        path.write_bytes(original[: len(original) // 2])
        with pytest.raises(SnapshotDamaged, match=re.escape(str(path)) + r" has [\d,]+ bytes, the snapshot "
                                                  r"recorded [\d,]+: restore the snapshot's files"):
            verify(snap)
        path.write_bytes(original)
    assert verify(snap)


def test_an_edited_or_missing_file_is_found_and_the_hint_says_git_checkout_for_a_committed_one(tmp_path):
    snap = committed_copy(tmp_path)
    table = snap / "claims.csv"
    table.write_bytes(table.read_bytes().replace(b"agrees", b"AGREES", 1))  # same size, other bytes
    with pytest.raises(SnapshotDamaged, match="claims.csv differs from the snapshot's record"):
        verify(snap)
    table.unlink()
    with pytest.raises(SnapshotDamaged, match="claims.csv is missing"):
        verify(snap)
    assert "git checkout results/mini" in snapshot_module._restore_hint(snapshot_layout("mini").root)
    (snap / "provenance.json").write_text("{")
    with pytest.raises(SnapshotDamaged, match="provenance.json is not readable JSON"):
        verify(snap)


def test_take_records_every_file_and_seed_refuses_a_damaged_snapshot(tmp_path):
    profile = load_profile("tiny")
    sweep_output(tmp_path / "out")
    snap = take(profile, tmp_path / "out", tmp_path / "results" / "tiny")
    record = read_json(snap / "provenance.json")["files"]
    assert set(record) == {"results.csv", "items.parquet", "claims.csv", "claims.json",
                           "summaries/13_spectra-ranks.parquet", "summaries/13_spectra-ranks.json"}
    assert record["results.csv"]["bytes"] == (snap / "results.csv").stat().st_size
    (snap / "items.parquet").write_bytes(b"PAR1")
    with pytest.raises(SnapshotDamaged, match="items.parquet has 4 bytes"):
        seed(profile, tmp_path / "fresh", snap)
    assert not (tmp_path / "fresh" / "results.csv").exists()  # nothing copied


def test_a_seeded_folder_is_checked_and_its_damage_is_named(tmp_path):
    profile = load_profile("tiny")
    sweep_output(tmp_path / "out")
    snap = take(profile, tmp_path / "out", tmp_path / "results" / "tiny")
    fresh = tmp_path / "fresh"
    assert seed(profile, fresh, snap) and verify(fresh)
    (fresh / "results.csv").write_text("run_id\n")
    with pytest.raises(SnapshotDamaged, match=r"fresh/results.csv has .*a copy of the snapshot .*remove "):
        verify(fresh)


def test_the_book_command_stops_at_once_on_a_damaged_snapshot(tmp_path, monkeypatch, capsys):
    from lorastudy import cli, layout

    committed_copy(tmp_path)
    monkeypatch.setattr(layout, "SNAPSHOTS", tmp_path / "results")
    items = tmp_path / "results" / "mini" / "items.parquet"
    items.write_bytes(items.read_bytes()[:1000])
    out = tmp_path / "out"
    assert cli.main(["book", "mini", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: {items} has 1,000 bytes, the snapshot recorded "
                           f"{read_json(snapshot_layout('mini').provenance)['files']['items.parquet']['bytes']:,}: "
                           "restore the snapshot's files from where they came")
    assert not (out / "results.csv").exists() and not (out / "analyses").exists()


def test_a_seeded_folder_whose_snapshot_changed_is_stale(tmp_path, monkeypatch):
    from lorastudy import layout as layout_module

    committed_copy(tmp_path)
    monkeypatch.setattr(layout_module, "SNAPSHOTS", tmp_path / "results")
    profile, out = load_profile("mini"), Layout(tmp_path / "out")
    assert seed(profile, out.root) and not stale_copy("mini", out)
    verify_inputs("mini", out)
    snap = tmp_path / "results" / "mini"
    record = read_json(snap / "provenance.json")
    record["files"]["claims.csv"]["sha256"] = "0" * 64  # a newer snapshot, as a new commit brings
    write_json(snap / "provenance.json", record)
    assert stale_copy("mini", out)
