"""Learning rates chosen as the paper did, on validation data and never on the test items.

An arm with `select_learning_rate` lists candidate rates. Every candidate trains with the arm's first seed (the
learning-rate sweep, the book's Fig S1); the rate whose run has the lowest validation answer NLL at the longest
duration is the arm's rate for each group (domain, regime, method, rank, ...), and only that rate trains the
other seeds. A continuous, decoding-free criterion: with 100-odd validation items, pass rates tie too often.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from lorastudy.config import Profile
from lorastudy.plan import RunSpec, plan_runs

GROUP = ["arm", "domain", "regime", "method", "lora_rank", "lora_alpha", "target_modules", "weight_decay",
         "attention_dropout", "use_rslora", "optimizer"]


def selection_metric(domain: str) -> str:
    return f"val_answer_nll_{domain}"


def awaits_selection(spec: RunSpec) -> bool:
    """A run of a selecting arm beyond its first seed: it trains only if its rate is the chosen one."""
    return spec.selection == "seed"


def group_key(row: dict[str, Any] | pd.Series | RunSpec) -> tuple:
    get = row.__getitem__ if not isinstance(row, RunSpec) else lambda k: getattr(row, k)
    return tuple(None if pd.isna(v := get(k)) else v for k in GROUP)


def candidates(profile: Profile, df: pd.DataFrame) -> pd.DataFrame:
    """Per group and candidate rate: the first-seed run's validation score at its longest duration (NaN until
    it is done). Columns: the group's settings, learning_rate, run_id, score, chosen."""
    rows = []
    for spec in plan_runs(profile):
        if spec.selection != "candidate":
            continue
        mine = df[(df.run_id == spec.run_id) & (df.metric == selection_metric(spec.domain))]
        score = float(mine.loc[mine.duration.idxmax(), "value"]) if len(mine) else float("nan")
        rows.append({**{k: getattr(spec, k) for k in GROUP}, "learning_rate": spec.learning_rate,
                     "run_id": spec.run_id, "score": score})
    table = pd.DataFrame(rows, columns=[*GROUP, "learning_rate", "run_id", "score"])
    table["chosen"] = False
    for _, g in table.groupby(GROUP, dropna=False, sort=False):
        if g.score.notna().all():  # a group is decided once every candidate has its score
            best = g.sort_values(["score", "learning_rate"]).index[0]  # a tie goes to the smaller rate
            table.loc[best, "chosen"] = True
    return table


def chosen_rates(profile: Profile, df: pd.DataFrame) -> dict[tuple, float]:
    """The chosen rate of every decided group."""
    table = candidates(profile, df)
    return {group_key(r): float(r.learning_rate) for _, r in table[table.chosen].iterrows()}


def runs_to_train(profile: Profile, df: pd.DataFrame | None) -> list[RunSpec]:
    """The planned runs a sweep trains: everything, except other seeds of a selecting arm at a rate that is not
    (or not yet, with df None or undecided) the chosen one."""
    chosen = chosen_rates(profile, df) if df is not None else {}
    return [s for s in plan_runs(profile) if not awaits_selection(s) or chosen.get(group_key(s)) == s.learning_rate]


def keep_chosen(profile: Profile, df: pd.DataFrame) -> pd.DataFrame:
    """Rows of runs a main comparison may use: in a selecting group, only the chosen rate's (none while the
    group is undecided); every other run as it is."""
    groups = {group_key(s) for s in plan_runs(profile) if s.selection}
    if not groups or df.empty:
        return df
    chosen = chosen_rates(profile, df)
    keys = [group_key(r) for _, r in df[GROUP].iterrows()]
    ok = [k not in groups or chosen.get(k) == lr for k, lr in zip(keys, df.learning_rate)]
    return df[ok]


def runs_expected(profile: Profile) -> list[RunSpec]:
    """The runs a sweep will train, for estimates before any choice: each selecting group's other seeds counted
    once (the group's first candidate rate stands in for the one validation will choose)."""
    first: dict[tuple, float] = {}
    for s in plan_runs(profile):
        if s.selection == "candidate":
            first.setdefault(group_key(s), s.learning_rate)
    return [s for s in plan_runs(profile) if not awaits_selection(s) or first.get(group_key(s)) == s.learning_rate]
