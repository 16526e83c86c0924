"""The order in which a local sweep starts its runs: the longest first.

A sweep on several workers ends when its last worker does. Started in the plan's order, the long runs can come
last and leave cores idle: on the issue-era mini profile one worker finished 59 s before the other. Starting
the longest remaining run whenever a worker is free (longest-processing-time list scheduling) leaves a tail of
at most about one short run. The order moves no number: every run is seeded and single-threaded.

A run's length is estimated from its training work, the bulk of a CPU run: tokens of its longest duration
(an IFT example counted at the full sequence length, an upper bound), plus its cooldown branches, times what
a LoRA step costs over a full fine-tuning step. Only the ranking matters, so the estimate is rough and says so.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lorastudy.config import Profile
from lorastudy.data.sources import load_spec, resolve_source
from lorastudy.plan import RunSpec

# A LoRA step's cost over a full-FT step at one thread on the mini model, as `lorastudy bench-sweep` measured it
# (LOG.md, 2026-12-03, "the whole issue-era profile"). Only the order runs start in uses it.
LORA_STEP_COST = 1.3
LORA_RANK_COST = 0.6  # per unit of rank / hidden size: r=64 of 128 adds 0.3


def local_records(profile: Profile, domain: str) -> int | None:
    """How many IFT examples a domain trains on, when its set is a local file (a hub set is not downloaded
    just to order runs); None if not known here."""
    spec = profile.data[domain]["ift"]
    if not Path(resolve_source(profile, spec.source)).exists():
        return spec.limit
    return len(load_spec(profile, spec))


def run_cost(profile: Profile, spec: RunSpec, records: int | None) -> float | None:
    """A run's estimated training work in full-FT token steps (see the module docstring); None if unknown."""
    t = profile.training.for_task(spec.domain, spec.regime)
    durations = t.durations[spec.regime]  # as the run reads them (lorastudy.train.finetune): task overrides included
    longest = durations[-1]
    if spec.regime == "cpt":
        tokens = float(longest)
    elif records is None:
        return None
    else:
        tokens = longest * records * t.seq_len
    tokens *= 1 + t.cooldown_ratio * sum(durations[:-1]) / longest  # each shorter duration's own cooldown
    if spec.method == "lora":  # the rank's share of the width is known for the mini model only
        share = (spec.lora_rank or 0) / profile.base.architecture.hidden_size if profile.base.kind == "mini" else 0
        tokens *= LORA_STEP_COST + LORA_RANK_COST * share
    return tokens


def run_costs(profile: Profile, specs: Iterable[RunSpec]) -> dict[str, float]:
    """Estimated cost of every run by id; empty when any is unknown (the plan's order is kept then)."""
    specs = list(specs)
    records = {d: local_records(profile, d) for d in {s.domain for s in specs if s.regime == "ift"}}
    costs = {s.run_id: run_cost(profile, s, records.get(s.domain)) for s in specs}
    return {} if None in costs.values() else costs  # type: ignore[return-value]


def longest_first(run_ids: Iterable[str], costs: dict[str, float]) -> list[str]:
    """`run_ids` by estimated cost, the longest first; ties, and runs without a cost, keep their order."""
    return sorted(run_ids, key=lambda r: -costs.get(r, 0.0))
