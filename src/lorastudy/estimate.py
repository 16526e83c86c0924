"""Rough cost of a sweep before spending compute: tokens to train and evaluate, and hours at a throughput."""
from __future__ import annotations

from lorastudy.config import Profile, plan_runs

# Measured on this project's machines (see README "Measured"); used only for the dry-run estimate.
TOKENS_PER_S = {"mini": 12_000.0, "gpu": 25_000.0}


def estimate_text(profile: Profile) -> str:
    """One line per regime: runs, training tokens or epochs, and an hours estimate."""
    runs = plan_runs(profile)
    lines = []
    for regime in ("cpt", "ift"):
        rs = [r for r in runs if r.regime == regime]
        if not rs:
            continue
        last = profile.training.durations[regime][-1]
        unit = "tokens" if regime == "cpt" else "epochs"
        lines.append(f"  {regime}: {len(rs)} runs x {last:g} {unit}")
    rate = TOKENS_PER_S["mini" if profile.base.kind == "mini" else "gpu"]
    cpt_tokens = sum(profile.training.durations["cpt"][-1] for r in runs if r.regime == "cpt")
    lines.append(f"  CPT training alone: {cpt_tokens:,.0f} tokens ~ {cpt_tokens / rate / 3600:.2f} h at {rate:,.0f} tok/s")
    return "estimate:\n" + "\n".join(lines)
