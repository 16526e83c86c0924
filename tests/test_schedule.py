"""Longest run first: the cost estimate ranks runs as their training work does, the local executor starts the
longest waiting run on each free worker (seeds released later included), and an unknown cost keeps the plan's
order."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lorastudy.config import load_profile
from lorastudy.engine.executors import LocalExecutor, Outcome, Plan
from lorastudy.engine.schedule import local_records, longest_first, run_cost, run_costs
from lorastudy.plan import plan_runs


def spec_of(profile, **want):
    return next(s for s in plan_runs(profile) if all(getattr(s, k) == v for k, v in want.items()))


def test_cost_follows_training_work() -> None:
    mini = load_profile("mini")
    records = local_records(mini, "code")
    assert records == 600  # the profile's limit on the world's code training set
    full = spec_of(mini, domain="code", regime="ift", method="full")
    r1, r8 = (spec_of(mini, domain="code", regime="ift", method="lora", lora_rank=r) for r in (1, 8))
    cpt = spec_of(mini, domain="code", regime="cpt", method="full")
    assert run_cost(mini, full, records) < run_cost(mini, r1, records) < run_cost(mini, r8, records)
    # IFT: 2 epochs x 600 examples, at most seq_len (256) tokens each, plus the cooldowns of 0.5 and 1 epoch (20% each)
    seq_len = mini.training.for_task("code", "ift").seq_len
    assert seq_len == 256 and run_cost(mini, full, records) == pytest.approx(2 * 600 * seq_len * (1 + 0.2 * 1.5 / 2))
    assert run_cost(mini, cpt, None) == pytest.approx(200_000 * (1 + 0.2 * 150_000 / 200_000))
    assert run_cost(mini, full, None) is None


def test_costs_are_all_or_nothing(tmp_path: Path) -> None:
    """A training set that is not a local file (a hub id) leaves IFT costs unknown: no reordering at all."""
    mini = load_profile("mini")
    assert len(run_costs(mini, plan_runs(mini))) == len(plan_runs(mini))
    text = (Path(__file__).resolve().parents[1] / "configs" / "mini.yaml").read_text()
    text = text.replace('source: "{world}/code_train.jsonl", limit: 600', 'source: "no/such-hub-dataset"')
    (tmp_path / "hub.yaml").write_text(text)
    hub = load_profile(str(tmp_path / "hub.yaml"))
    assert hub.data["code"]["ift"].source == "no/such-hub-dataset"
    assert run_costs(hub, plan_runs(hub)) == {}
    assert longest_first(["b", "a", "c"], {}) == ["b", "a", "c"]
    assert longest_first(["b", "a", "c"], {"a": 2.0, "c": 2.0, "b": 1.0}) == ["a", "c", "b"]  # ties keep order


def test_a_free_worker_takes_the_longest_waiting_run(monkeypatch, tmp_path: Path) -> None:
    """One worker: runs start by cost, and a seed released later with the largest cost goes next."""
    started: list[str] = []
    lock = threading.Lock()

    def one(self, profile_ref, out_root, run_id):
        with lock:
            started.append(run_id)
        time.sleep(0.01)
        return Outcome(run_id, "done")

    monkeypatch.setattr(LocalExecutor, "_one", one)
    costs = {"short": 1.0, "long": 9.0, "mid": 5.0, "seed": 7.0, "tiny-seed": 0.5}
    released = {"long": ["tiny-seed", "seed"]}
    done: list[str] = []
    LocalExecutor(Plan(workers=1, threads=1)).run("tiny", tmp_path, ["short", "long", "mid"],
                                                  lambda o: done.append(o.run_id),
                                                  more=lambda: released.pop(done[-1], []), costs=costs)
    assert started == ["long", "seed", "mid", "short", "tiny-seed"]
