"""Chapter 13's rank of ΔW on constructed models: a rank-2 update needs rank ≤ 2, LoRA's ΔW needs at most r;
the per-run rank table is cached per checkpoint and recomputed when the checkpoint changes."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from fake_runs import FULL_ID, LABEL, LORA_ID, rank2_update

from lorastudy.analysis import spectra
from lorastudy.layout import Layout


def test_rank2_update_needs_rank_at_most_2(base) -> None:
    rows = pd.DataFrame(spectra.delta_ranks(base, rank2_update(base)))
    assert len(rows) == 2 * 7
    hit = rows[(rows.layer == 1) & (rows.module == "q_proj")].iloc[0]
    assert 1 <= hit.rank90 <= 2 and hit.frobenius > 0
    assert hit.rank90_fraction == pytest.approx(hit.rank90 / 32)
    assert (rows.drop(hit.name).rank90 == 0).all()  # untouched matrices: ΔW = 0 needs rank 0
    assert set(rows.module_type) == {"attention", "mlp"}
    assert {(r.n_out, r.n_in) for r in rows[rows.module == "gate_proj"].itertuples()} == {(64, 32)}


def test_rank_table_on_runs_and_cache(fake, base) -> None:
    profile, out = fake
    cache = Layout(out).analysis_cache("13_spectra")
    table = spectra.rank_table(profile, out, cache_dir=cache)
    full = table[table.run_id == FULL_ID]
    assert full[(full.layer == 1) & (full.module == "q_proj")].rank90.item() <= 2
    assert (full.rank90 > 0).sum() == 1
    lora = table[table.run_id == LORA_ID]
    assert len(lora) == 14 and (lora.rank90 <= 8).all() and (lora.rank90 > 2).any()
    assert (lora.method == "lora").all() and set(table.checkpoint) == {LABEL}
    cached = sorted(p.name for p in (cache / "ranks").rglob("*.json"))
    assert cached == [f"{LABEL}-t0.9.json", f"{LABEL}-t0.9.json"]
    # a cached result is reused as long as the checkpoint is the same ...
    path = cache / "ranks" / FULL_ID / f"{LABEL}-t0.9.json"
    saved = json.loads(path.read_text())
    saved["rows"][0]["rank90"] = 99
    path.write_text(json.dumps(saved))
    assert 99 in spectra.rank_table(profile, out, cache_dir=cache).rank90.values
    # ... and recomputed when the checkpoint changes (retrained: a new checkpoint record)
    Layout(out).run(FULL_ID).checkpoint_record(LABEL).write_text('{"wall": 2}')
    assert 99 not in spectra.rank_table(profile, out, cache_dir=cache).rank90.values
    ref = spectra.reference_ranks(profile, base=base)
    assert len(ref) == 14 and (ref.base_rank90 > 0).all() and (ref.gaussian_rank90 <= 32).all()
    verdict = spectra.spectra_verdict(table, ref, [8])
    assert "LoRA's ΔW needs at most rank r" not in set(verdict.statement)  # a claim that cannot fail is no claim


def test_chapter_tables(fake, base) -> None:
    profile, out = fake
    full_runs, lora_runs, ranks = spectra.chapter_ranks(profile, out, base=base)
    assert [s.run_id for s in full_runs] == [FULL_ID] and [s.run_id for s in lora_runs] == [LORA_ID]
    assert set(ranks.run_id) == {FULL_ID, LORA_ID} and len(ranks) == 28
    lora = spectra.lora_rank_table(ranks, hidden_size=32).set_index("run_id")
    assert lora.loc[LORA_ID, "matrices"] == 14 and lora.loc[LORA_ID, "max_within_r"]
    assert lora.loc[LORA_ID, "r_of_d"] == pytest.approx(8 / 32)
    assert spectra.lora_rank_table(ranks[ranks.method == "full"]).empty
    detail = spectra.representative_spectra(profile, out, full_runs, -1, "q_proj", base=base)
    assert detail.title == f"{FULL_ID} at {LABEL}: layer 1 q_proj"
    by_matrix = spectra.spectrum_ranks(detail.table)
    assert list(by_matrix.index) == ["W_base", "W_ft", "ΔW"] and by_matrix.loc["ΔW", "rank90"] <= 2
    assert spectra.representative_spectra(profile, out, lora_runs, -1, "q_proj", base=base).table.empty
    ref = spectra.reference_ranks(profile, base=base)
    assert list(spectra.reference_by_type(ref).index) == ["attention", "mlp"]
