"""Learning rates chosen as the paper did, on validation data and never on the test items.

An arm with `select_learning_rate` lists candidate rates. Every candidate trains with the arm's first seed (the
learning-rate sweep, the book's Fig S1); the rate whose run has the lowest validation answer NLL at the longest
duration is the arm's rate for each group (domain, regime, method, rank, ...), and only that rate trains the
other seeds. A continuous, decoding-free criterion: with 100-odd validation items, pass rates tie too often.

Bracketing: when the best listed candidate sits at an edge of its grid, the rate one step beyond that edge
(`plan.beyond`) trains once with the first seed, so that the optimum is inside what was trained or the edge
beyond it is shown to be worse (or to diverge). A diverged candidate is never chosen.

The tie rule: a candidate whose validation NLL is above the best one's by less than one standard error of their
paired difference (over the validation items) ties with it, and of tied candidates the lowest rate is chosen -
validation cannot tell them apart, and the lower rate is the conservative choice.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from lorastudy.config import Profile
from lorastudy.plan import EDGES, RunSpec, plan_runs, selection_runs

GROUP = ["arm", "domain", "regime", "method", "lora_rank", "lora_alpha", "target_modules", "weight_decay",
         "attention_dropout", "use_rslora", "optimizer"]
TIE_SE = 1.0  # a candidate within this many paired standard errors of the best validation NLL ties with it
COLUMNS = [*GROUP, "learning_rate", "role", "run_id", "score", "diverged", "tie_se", "needed", "chosen"]


def selection_metric(domain: str) -> str:
    return f"val_answer_nll_{domain}"


def awaits_selection(spec: RunSpec) -> bool:
    """A run of a selecting arm that trains only if the choice asks for it: another seed (at the chosen rate) or
    an edge rate (when the grid's best is at that edge)."""
    return spec.selection == "seed" or spec.selection in EDGES


def group_key(row: dict[str, Any] | pd.Series | RunSpec) -> tuple:
    get = row.__getitem__ if not isinstance(row, RunSpec) else lambda k: getattr(row, k)
    return tuple(None if pd.isna(v := get(k)) else v for k in GROUP)


def _scored(spec: RunSpec, df: pd.DataFrame, items: pd.DataFrame) -> dict[str, Any]:
    """A first-seed run's validation score at its longest duration, its per-item values there, and whether it
    diverged (NaN score and no values until it is done)."""
    mine = df[df.run_id == spec.run_id]
    diverged = bool(len(mine)) and bool((mine.status == "diverged").any())
    val = mine[mine.metric == selection_metric(spec.domain)]
    if diverged or val.empty:
        return {"score": math.inf if diverged else math.nan, "diverged": diverged, "values": None}
    last = val.loc[val.duration.idxmax()]
    per_item = items[(items.run_id == spec.run_id) & (items.metric == last.metric)
                     & (items.checkpoint == last.checkpoint)].set_index("item").value
    return {"score": float(last.value), "diverged": False, "values": per_item}


def _paired_se(a: pd.Series | None, b: pd.Series | None) -> float:
    """Standard error of the mean paired difference of two runs' per-item values (NaN without them)."""
    if a is None or b is None:
        return math.nan
    d = (a - b).dropna()
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else math.nan


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The strict best (lowest validation NLL, a tie to the lower rate) of scored, not diverged candidates."""
    ok = [r for r in rows if math.isfinite(r["score"])]
    return min(ok, key=lambda r: (r["score"], r["learning_rate"])) if ok else None


def _decide(rows: list[dict[str, Any]]) -> tuple[bool, str | None]:
    """(decided, edge needed): undecided while a listed candidate or a needed edge awaits its score."""
    listed = [r for r in rows if r["role"] == "candidate"]
    if any(math.isnan(r["score"]) for r in listed):
        return False, None
    best = _best(listed)
    if best is None:  # every listed rate diverged: nothing to choose
        return False, None
    rates = sorted(r["learning_rate"] for r in listed)
    edge = "edge-low" if best["learning_rate"] == rates[0] else "edge-high" if best["learning_rate"] == rates[-1] else None
    needed = [r for r in rows if r["role"] == edge]
    if needed and math.isnan(needed[0]["score"]):
        return False, edge
    return True, edge


def candidates(profile: Profile, df: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Per group and candidate rate (listed and edge): the first-seed run's validation score at its longest
    duration (NaN until it is done, inf if it diverged), whether it diverged, its paired standard errors' tie
    margin against the best, `needed` (an edge rate the listed candidates ask for) and `chosen`. `items`:
    per-item rows holding at least the validation metric."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for spec in selection_runs(profile):
        if spec.selection not in ("candidate", *EDGES):
            continue
        row = {**{k: getattr(spec, k) for k in GROUP}, "learning_rate": spec.learning_rate, "role": spec.selection,
               "run_id": spec.run_id, **_scored(spec, df, items)}
        groups.setdefault(group_key(spec), []).append(row)
    out = []
    for rows in groups.values():
        decided, edge = _decide(rows)
        trained = [r for r in rows if r["role"] == "candidate" or (decided and r["role"] == edge)]
        best = _best(trained) if decided else None
        for r in rows:
            r["tie_se"] = _paired_se(r["values"], best["values"]) if best and r is not best else math.nan
            r["needed"] = edge is not None and r["role"] == edge
            r["chosen"] = False
        if best is not None:
            tied = [r for r in trained if r is best or (math.isfinite(r["score"]) and
                                                       r["score"] - best["score"] <= TIE_SE * r["tie_se"])]
            min(tied, key=lambda r: r["learning_rate"])["chosen"] = True
        out += [{k: v for k, v in r.items() if k != "values"} for r in rows]
    # an empty table's flag columns are object-typed: typed here, so a mask on them never selects columns
    return pd.DataFrame(out, columns=COLUMNS).astype({"needed": bool, "chosen": bool, "diverged": bool})


def _chosen(table: pd.DataFrame) -> dict[tuple, float]:
    return {group_key(r): float(r.learning_rate) for _, r in table[table.chosen].iterrows()}


def chosen_rates(profile: Profile, df: pd.DataFrame, items: pd.DataFrame) -> dict[tuple, float]:
    """The chosen rate of every decided group."""
    return _chosen(candidates(profile, df, items))


def runs_to_train(profile: Profile, df: pd.DataFrame | None, items: pd.DataFrame | None = None) -> list[RunSpec]:
    """The planned runs a sweep trains: everything, except other seeds of a selecting arm at a rate that is not
    (or not yet, with df None or undecided) the chosen one, and edge rates the candidates do not ask for."""
    if df is None or items is None:
        chosen, edges = {}, set()
    else:
        table = candidates(profile, df, items)  # once: it reads every candidate's rows
        chosen, edges = _chosen(table), set(table[table.needed].run_id)
    return [s for s in plan_runs(profile) if not awaits_selection(s) or s.run_id in edges
            or (s.selection == "seed" and chosen.get(group_key(s)) == s.learning_rate)]


def keep_chosen(profile: Profile, df: pd.DataFrame, items: pd.DataFrame, results: pd.DataFrame | None = None
                ) -> pd.DataFrame:
    """Rows of runs a main comparison may use: in a selecting group, only the chosen rate's (none while the
    group is undecided); every other run as it is. The choice reads `results` (default: df), which must hold
    every candidate's rows, also those another arm lists."""
    groups = {group_key(s) for s in plan_runs(profile) if s.selection}
    if not groups or df.empty:
        return df
    chosen = chosen_rates(profile, df if results is None else results, items)
    keys = [group_key(r) for _, r in df[GROUP].iterrows()]
    ok = [k not in groups or chosen.get(k) == lr for k, lr in zip(keys, df.learning_rate)]
    return df[ok]


def runs_expected(profile: Profile) -> list[RunSpec]:
    """The runs a sweep will train, for estimates before any choice: each selecting group's other seeds counted
    once (the group's first candidate rate stands in for the one validation will choose), no edge rate."""
    first: dict[tuple, float] = {}
    for s in plan_runs(profile):
        if s.selection == "candidate":
            first.setdefault(group_key(s), s.learning_rate)
    return [s for s in plan_runs(profile) if not awaits_selection(s)
            or (s.selection == "seed" and first.get(group_key(s)) == s.learning_rate)]
