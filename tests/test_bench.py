"""The training benchmark's bookkeeping (`lorastudy.perf.bench`: configurations, cache, processes) and the memory
chapter's summaries of it (`lorastudy.analysis.memory`, `lorastudy.figures.memory`)."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lorastudy.analysis import memory
from lorastudy.config import load_profile
from lorastudy.figures.memory import plot_bench
from lorastudy.perf import bench as harness
from lorastudy.perf.memory_model import llama_shapes


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _prefill(folder, ranks, batch_sizes, steps, key="k-", full_params=100):
    """A cache of measurements (LoRA 15% slower, 1 MiB less per sequence), so that no process is started."""
    for mode, rank, batch in harness.bench_configs(ranks, batch_sizes):
        tps = 1000.0 * (0.85 if rank else 1.0)
        mem = 500.0 + batch * (9 if rank else 10)
        (folder / f"{key}{mode}-r{rank}-b{batch}-s{steps}.json").write_text(json.dumps(
            {"mode": mode, "rank": rank or None, "batch": batch, "tokens_per_s": tps, "peak_memory_MiB": mem,
             "trainable_params": 10 if rank else full_params, "threads": 2}))


def test_bench_bookkeeping_uses_the_cache_and_compares_with_full(tmp_path):
    assert harness.bench_configs([4, 64], [8, 32]) == [
        ("trainer-full", 0, 8), ("trainer-full", 0, 32), ("trainer-lora", 4, 8), ("trainer-lora", 64, 8),
        ("trainer-lora", 4, 32), ("trainer-lora", 64, 32)]
    with pytest.raises(ValueError):
        harness.bench_configs([4], [8], mode="fast")
    _prefill(tmp_path, [4], [8, 32], 5)
    bench = harness.run_bench("tiny", ranks=[4], batch_sizes=[8, 32], steps=5, cache_dir=tmp_path, key="k-")
    assert bench.cached.all() and len(bench) == 4
    summary = memory.bench_summary(bench)
    lora = summary[summary.method == "lora"].set_index("batch")
    assert lora.throughput_vs_full.tolist() == pytest.approx([0.85, 0.85])
    assert lora.loc[8, "memory_vs_full"] == pytest.approx(572 / 580)
    assert isinstance(plot_bench(bench), Figure)
    assert memory.bench_errors(bench).empty
    with pytest.raises(ValueError):
        harness.run_bench("tiny", ranks=[4], batch_sizes=[8], steps=2)
    with pytest.raises(ValueError):
        harness.run_bench("tiny", ranks=[4], batch_sizes=[8], steps=5, isolation="thread")


def test_the_chapter_measures_under_a_key_of_the_setup_and_splits_each_peak(tmp_path):
    profile = load_profile("tiny")
    key = harness.bench_key(profile, 1)
    assert key.endswith("-") and key != harness.bench_key(profile, 0)
    a = profile.base.architecture
    n_full = llama_shapes(a.hidden_size, a.intermediate_size, a.num_layers, vocab=0).n_params + 1024 * a.hidden_size
    _prefill(tmp_path, [4], [8], 5, key=key, full_params=n_full)
    bench = memory.measure_bench("tiny", tmp_path, ranks=[4], batch_sizes=[8], steps=5, threads=1)
    assert bench.cached.all() and memory.measure_text(bench).startswith("2 measurements, 2 from the cache, ")
    assert "1 threads per measurement" in memory.setup_text(profile, 1)
    parts = memory.memory_breakdown(bench, profile, [8], [4]).set_index("method")
    assert parts.loc["full", "peak_memory_MiB"] == 580 and parts.loc["lora", "peak_memory_MiB"] == 572
    explained = parts[["model_state_MiB", "activations_MiB", "logits_MiB", "lora_extra_MiB"]].sum(axis=1)
    assert (parts.unexplained_MiB == parts.peak_memory_MiB - explained).all()
    failed = pd.DataFrame({"mode": ["trainer-full"], "rank": [None], "batch": [8], "error": ["boom"],
                           "cached": [False], "method": ["full"]})
    assert memory.memory_breakdown(failed, profile, [8], [4]).empty and len(memory.bench_errors(failed)) == 1


def test_bench_verdict():
    summary = pd.DataFrame({"batch": [8, 8, 32, 32], "method": ["full", "lora"] * 2, "rank": [None, 4] * 2,
                            "throughput_vs_full": [1, 0.85, 1, 0.9], "memory_vs_full": [1, 0.6, 1, 0.85]})
    verdict = memory.bench_verdict(summary)
    assert verdict.ours.tolist() == [True, True, True]
    assert "(paper ~0.85)" in verdict.detail[0] and "(paper ~0.6 small batch, ~0.85 large)" in verdict.detail[1]
    assert memory.bench_verdict(summary[summary.method == "full"]).ours.isna().all()
    more = summary.assign(memory_vs_full=[1, 1.1, 1, 1.2])
    assert memory.bench_verdict(more).ours.tolist()[1:] == [False, None]


@pytest.mark.slow
def test_run_bench_measures_in_forked_processes(tmp_path):
    bench = harness.run_bench("tiny", ranks=[4], batch_sizes=[2], steps=3, cache_dir=tmp_path, threads=1)
    assert "error" not in bench or bench.error.isna().all()
    assert (bench.tokens_per_s > 0).all() and (bench.threads == 1).all() and not bench.cached.any()
    assert len(list(tmp_path.glob("*.json"))) == 2
    again = harness.run_bench("tiny", ranks=[4], batch_sizes=[2], steps=3, cache_dir=tmp_path, threads=1)
    assert again.cached.all()


@pytest.mark.slow
def test_run_bench_measures_in_fresh_processes_and_reports_failures(tmp_path):
    bench = harness.run_bench("tiny", ranks=[4], batch_sizes=[2], steps=3, threads=1, isolation="process")
    assert "error" not in bench or bench.error.isna().all()
    assert (bench.tokens_per_s > 0).all() and (bench.wall_s > 0).all()
    failed = harness.run_bench("no-such-profile", ranks=[], batch_sizes=[2], steps=3, isolation="process")
    assert failed.error.str.contains("not found").all() and "tokens_per_s" not in failed
