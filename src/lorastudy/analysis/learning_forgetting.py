"""Chapter 10 (the paper's Figs 1–3): does full fine-tuning learn more, and does LoRA forget less, at the
longest duration of each panel? Each claim as a difference with a bootstrap interval and a three-way verdict,
beside the same difference on the paper's Tables S1–S8."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lorastudy.analysis.intervals import (
    CANNOT_TELL,
    Interval,
    difference,
    verdict,
)
from lorastudy.config import Profile
from lorastudy.data.sources import load_spec
from lorastudy.layout import BASE_ID
from lorastudy.paper import PAPER_HIDDEN_SIZE
from lorastudy.plan import selection_runs
from lorastudy.results import known_runs
from lorastudy.tuning import GROUP, candidates, keep_chosen

MAIN_ARMS = ("full", "lora")  # the sweep arms of the main grid (regularisation and sensitivity arms are apart)
CLAIM_COLUMNS = ["claim", "statement", "panel", "estimate", "ci_low", "ci_high", "n_bases", "n_items", "verdict",
                 "paper", "per_base"]


def forgetting_metrics(profile: Profile) -> list[str]:
    """The per-set metrics whose mean is forgetting_avg (each set's metric as the profile names it)."""
    return [f"{name}_{cfg.metric}" for name, cfg in profile.eval.forgetting.items()]


def arm_values(mine: pd.DataFrame, cells: pd.DataFrame, metrics: list[str], universe: dict[str, list[str]],
               bases: list[str]) -> list[np.ndarray]:
    """One (bases, items) array per metric for the (run_id, checkpoint, base_id) cells of one arm (`mine`: their
    per-item rows, `arm_items`): rows in the order of `bases` (an arm's runs on one base averaged), columns in the
    order of `universe`."""
    out = []
    for metric in metrics:
        grid = mine[mine.metric == metric].pivot_table(index="base_id", columns="item", values="value")
        columns = universe[metric]
        missing = set(columns) - set(grid.columns)
        if grid.empty or missing or set(bases) - set(grid.index) or grid.isna().any().any():
            raise ValueError(f"per-item {metric} incomplete for runs {sorted(set(cells.run_id))[:2]}: "
                             f"{len(missing)} items absent")
        out.append(grid.loc[bases, columns].to_numpy(dtype=float))
    return out


def compare_arms(items: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame, metrics: list[str]) -> Interval:
    """score(a) - score(b) over the bases both arms were fine-tuned from and the items both answered: the
    claim's estimate and its 95% interval over bases and items (`intervals.difference`)."""
    mine_a, mine_b = arm_items(items, a), arm_items(items, b)  # once per arm: the items table is large
    bases = sorted(set(a.base_id) & set(b.base_id))
    if not bases:
        raise ValueError(f"the two arms share no base: {sorted(set(a.base_id))} and {sorted(set(b.base_id))}")
    shared = {}
    for m in metrics:
        shared[m] = sorted(set(mine_a[mine_a.metric == m].item) & set(mine_b[mine_b.metric == m].item))
        if not shared[m]:
            raise ValueError(f"the two arms share no {m} items")
    return difference(arm_values(mine_a, a, metrics, shared, bases), arm_values(mine_b, b, metrics, shared, bases))


def arm_items(items: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The per-item rows of these (run_id, checkpoint) cells with their base_id (their runs' rows first: a
    merge on the whole table costs more than the filter)."""
    mine = items[items.run_id.isin(set(cells.run_id))]
    keep = [c for c in ("run_id", "checkpoint", "base_id", "duration") if c in cells]
    return mine.merge(cells[keep].drop_duplicates(), on=["run_id", "checkpoint"])


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    return df[["run_id", "checkpoint", "base_id"]].drop_duplicates()


def _paper_panel(paper: pd.DataFrame, domain: str, regime: str) -> pd.DataFrame:
    g = paper[(paper.domain == domain) & (paper.regime == regime)]
    return g[g.duration == g.duration.max()]


def _paper_value(last: pd.DataFrame, method: str, rank: float | None, metric: str) -> float | None:
    rows = last[(last.method == method) & (last.metric == metric)]
    rows = rows[rows.lora_rank.isna()] if rank is None else rows[rows.lora_rank == rank]
    return float(rows.value.iloc[0]) if len(rows) else None


def verdict_row(claim: str, statement: str, panel: str, iv: Interval, expected: int, paper: float | None) -> dict:
    """One claim row; n_bases: the bases both arms were fine-tuned from; per_base: the estimate on each."""
    return {"claim": claim, "statement": statement, "panel": panel, "estimate": iv.estimate, "ci_low": iv.low,
            "ci_high": iv.high, "n_bases": iv.n_bases, "n_items": iv.n_items,
            "verdict": verdict(iv, expected), "paper": paper, "per_base": " ".join(f"{v:+.4f}" for v in iv.per_base)}


def _main_runs(df: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """Completed runs of the main grid, also a candidate another arm lists too (the `lr` arm's rates), under
    the main arm's name."""
    owners = {s.run_id: s.arm for s in selection_runs(profile) if s.arm in MAIN_ARMS}
    rows = df[(df.method != "base") & (df.status == "completed") & (df.arm.isin(MAIN_ARMS) | df.run_id.isin(owners))]
    return rows.assign(arm=[owners.get(r, a) for r, a in zip(rows.run_id, rows.arm)])


def claim_row(claim: str, statement: str, panel: str, items: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame,
              metrics: list[str], paper: float | None = None, expected: int = +1) -> dict:
    """One claim: score(a) - score(b) on `metrics` with its interval and verdict; `cannot tell` when the arms
    share no base (a comparison across bases is no comparison)."""
    if not set(a.base_id) & set(b.base_id):
        return {"claim": claim, "statement": statement + ": the arms share no base model", "panel": panel,
                "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_bases": 0, "n_items": np.nan,
                "verdict": CANNOT_TELL, "paper": paper, "per_base": ""}
    return verdict_row(claim, statement, panel, compare_arms(items, a, b, metrics), expected, paper)


def base_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The base models' rows (one run per base, `base`, `base-1`, ...)."""
    return df[df.method == "base"]


def chosen_runs(profile: Profile, df: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """The main grid's completed rows at the validation-chosen rates (every seed)."""
    return keep_chosen(profile, _main_runs(df, profile), items, results=df)


def main_grid(profile: Profile, df: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """What Figs 1-3 draw: the bases and the main grid at its validation-chosen rates (every seed), without the
    other candidates and the extra arms."""
    return pd.concat([base_rows(df), chosen_runs(profile, df, items)], ignore_index=True)


def other_rate_runs(profile: Profile, df: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Rows of the main grid's candidate runs at the rates validation did not choose (the first seed only)."""
    table = candidates(profile, df, items)
    decided = table.groupby(GROUP, dropna=False, sort=False).chosen.transform("any")
    other = set(table[decided & ~table.chosen].run_id)
    runs = _main_runs(df, profile)
    return runs[runs.run_id.isin(other)]


def main_claims(df: pd.DataFrame, items: pd.DataFrame, profile: Profile, paper: pd.DataFrame,
                lora_rate: str = "chosen") -> pd.DataFrame:
    """The paper's headline claims per panel at its longest duration, with intervals: full FT learns more than
    each LoRA rank, each LoRA rank forgets less than full FT, and full FT learns beyond the base.
    The paper's number is the same difference on its Tables S1-S8, at the rank with the same share of the width.
    `lora_rate="other"`: the same claims with LoRA at its other candidate rate (full FT at its chosen one), so a
    reader sees how much the verdicts hang on the LoRA/full learning-rate ratio (claim ids `other-rate/...`)."""
    chosen = chosen_runs(profile, df, items)
    if lora_rate not in ("chosen", "other"):
        raise ValueError(f"lora_rate must be 'chosen' or 'other', not {lora_rate!r}")
    lora_runs = chosen if lora_rate == "chosen" else other_rate_runs(profile, df, items)
    prefix, base = ("" if lora_rate == "chosen" else "other-rate/"), base_rows(df)
    forget = forgetting_metrics(profile)
    # the mini base's ranks map to the paper's by share of the width; a pretrained base is compared rank for rank
    width = profile.base.architecture.hidden_size if profile.base.kind == "mini" else PAPER_HIDDEN_SIZE
    rows = []
    for (domain, regime), g in chosen.groupby(["domain", "regime"]):
        last = g[g.duration == g.duration.max()]
        full = last[last.method == "full"]
        lg = lora_runs[(lora_runs.domain == domain) & (lora_runs.regime == regime) & (lora_runs.method == "lora")]
        if full.empty:
            continue
        panel, learn, nll = f"{domain} {regime.upper()}", [f"learning_{domain}"], [f"answer_nll_{domain}"]
        pp = _paper_panel(paper, domain, regime)
        paper_full = {m: _paper_value(pp, "full", None, m) for m in ("learning", "forgetting_avg")}
        full_lr = float(full.learning_rate.iloc[0])
        for (rank, lr), lora in lg[lg.duration == g.duration.max()].groupby(["lora_rank", "learning_rate"]):
            r, tag = int(rank), "" if lora_rate == "chosen" else f"/lr{lr:g}"  # other rates: one claim each
            paper_rank = r * PAPER_HIDDEN_SIZE / width
            pl = {m: _paper_value(pp, "lora", paper_rank, m) for m in ("learning", "forgetting_avg")}

            def gap(m: str, sign: int, pl: dict = pl) -> float | None:
                return None if None in (paper_full[m], pl[m]) else sign * (paper_full[m] - pl[m])
            at = "" if lora_rate == "chosen" else f" (LoRA at {lr / full_lr:.3g}x full FT's rate)"
            rows.append(claim_row(f"{prefix}full-learns-more/{domain}-{regime}/r{r}{tag}",
                                  f"full fine-tuning learns more than LoRA r={r}{at}", panel, items, _cells(full),
                                  _cells(lora), learn, gap("learning", 1)))
            if (items.metric == nll[0]).any():  # the same, decoding-free: LoRA's answer NLL above full FT's
                rows.append(claim_row(f"{prefix}full-learns-more-nll/{domain}-{regime}/r{r}{tag}",
                                      f"full fine-tuning learns more than LoRA r={r}{at} (answer NLL)", panel, items,
                                      _cells(lora), _cells(full), nll))
            rows.append(claim_row(f"{prefix}lora-forgets-less/{domain}-{regime}/r{r}{tag}",
                                  f"LoRA r={r} forgets less than full fine-tuning{at}", panel, items, _cells(lora),
                                  _cells(full), forget, gap("forgetting_avg", -1)))
        if not base.empty and lora_rate == "chosen":  # fine-tuning teaches the domain at all (each run vs its base)
            what = {"cpt": "continued pre-training", "ift": "instruction fine-tuning"}[regime]
            rows.append(claim_row(f"{regime}-learns/{domain}", f"{what} teaches the target domain (full FT at the "
                                  "longest duration beats the base)", panel, items, _cells(full), _cells(base), learn))
            if (items.metric == nll[0]).any():  # decoding-free: the reference answers' NLL falls if it taught
                rows.append(claim_row(f"{regime}-learns-nll/{domain}", f"{what} teaches the target domain (full "
                                      "FT's answer NLL on the test references below the base's)", panel, items,
                                      _cells(base), _cells(full), nll))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


# ----------------------------------------------------------------------------- what the study chose and where it sits
def chosen_rates_table(profile: Profile, df: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """The learning-rate candidates of the main grid (listed, and the edge rates that trained) with their
    validation score (answer NLL, lower is better; inf: diverged), the tie margin against the best, the chosen
    one marked, and each chosen LoRA rate's ratio to full FT's chosen rate in its panel."""
    table = candidates(profile, df, items)
    trained = table.score.notna()
    table = table[table.arm.isin(MAIN_ARMS) & trained][["domain", "regime", "method", "lora_rank", "learning_rate",
                                                        "role", "score", "tie_se", "chosen"]]
    table = table.sort_values(["domain", "regime", "method", "lora_rank", "learning_rate"]).reset_index(drop=True)
    full = table[(table.method == "full") & table.chosen].set_index(["domain", "regime"]).learning_rate
    table["ratio_to_full"] = [lr / full.get((d, r), np.nan) for d, r, lr in
                              zip(table.domain, table.regime, table.learning_rate)]
    return table.rename(columns={"score": "val_answer_nll"})


def chance_levels(profile: Profile) -> dict[str, float]:
    """Each forgetting set's accuracy by guessing (one over its number of options, averaged over items)."""
    return {f"{name}_{cfg.metric}": float(np.mean([1 / len(it.options) for it in load_spec(profile, cfg.dataset)]))
            for name, cfg in profile.eval.forgetting.items()}


def headroom(df: pd.DataFrame, items: pd.DataFrame, profile: Profile, ceiling: float = 0.95, margin: float = 0.05) -> pd.DataFrame:
    """Each main-grid arm at its panel's longest duration (mean over seeds): learning against the ceiling 1 and
    the base's score, the forgetting sets' mean against its chance level. `at_ceiling`: learning at or above
    `ceiling`; `near_base`: learning within `margin` of the base's (the floor: the score barely moved);
    `near_chance`: forgetting within `margin` of chance - where differences between arms vanish."""
    chance = chance_levels(profile)
    floor = float(np.mean(list(chance.values())))
    base = base_rows(df)
    runs = chosen_runs(profile, df, items)
    rows = []
    for (domain, regime), g in runs.groupby(["domain", "regime"]):
        last = g[g.duration == g.duration.max()]
        for (method, rank), a in last.groupby(["method", last.lora_rank.fillna(0)]):

            def value(m: str, a: pd.DataFrame = a) -> float:
                return float(a[a.metric == m].value.mean())
            learn, forget = value(f"learning_{domain}"), value("forgetting_avg")
            start = float(base[base.metric == f"learning_{domain}"].value.mean()) if len(base) else np.nan
            rows.append({"panel": f"{domain} {regime.upper()}", "arm": "full" if method == "full" else f"LoRA r={int(rank)}",
                         "duration": float(last.duration.iloc[0]), "learning": learn, "forgetting": forget,
                         "base_learning": start, "chance": floor, "at_ceiling": learn >= ceiling,
                         "near_base": bool(learn <= start + margin), "near_chance": forget <= floor + margin,
                         "n_bases": a.base_id.nunique()})
    return pd.DataFrame(rows)


PAPER_TRAINABLE_SHARE = {16: 0.006, 64: 0.024, 256: 0.095}  # Llama-2-7B, LoRA on all seven projections (issue 12)


def ranks_table(profile: Profile, df: pd.DataFrame, out_root: Path) -> pd.DataFrame:
    """Each main-grid LoRA rank as r, r/d and its trainable share of the base's parameters (from the runs' own
    parameter counts), beside the paper's rank with the same share of the width."""
    width = profile.base.architecture.hidden_size if profile.base.kind == "mini" else PAPER_HIDDEN_SIZE
    lora = _main_runs(df, profile)
    lora = lora[lora.method == "lora"].drop_duplicates("lora_rank").sort_values("lora_rank")
    runs = known_runs(profile, out_root).set_index("run_id")
    rows = []
    for rank, run_id in zip(lora.lora_rank.astype(int), lora.run_id):
        trainable, total = (runs.loc[run_id, ["trainable", "total"]] if run_id in runs.index else (np.nan, np.nan))
        paper_rank = rank * PAPER_HIDDEN_SIZE / width
        rows.append({"rank": rank, "r_over_d": rank / width, "trainable": trainable,
                     "trainable_share": trainable / (total - trainable), "paper_rank": paper_rank,
                     "paper_trainable_share": PAPER_TRAINABLE_SHARE.get(int(paper_rank), np.nan)})
    return pd.DataFrame(rows)


def scale_facts(profile: Profile, df: pd.DataFrame, items: pd.DataFrame, claims: pd.DataFrame,
                out_root: Path) -> dict[str, str]:
    """The numbers a chapter's prose cites about the study's scale, as text: model size and width, the longest
    training, evaluation set sizes, seeds, ranks and the chosen learning-rate ratios (glued into the prose)."""
    runs = known_runs(profile, out_root)
    full = runs.merge(df[["run_id", "method"]].drop_duplicates(), on="run_id")
    full = full[full.method == "full"]
    params = float(full.total.median()) if len(full) else np.nan
    grid = chosen_runs(profile, df, items)
    cpt, ift = grid[grid.regime == "cpt"], grid[grid.regime == "ift"]
    base = items[items.run_id == BASE_ID]  # every base answers the same items
    scored = base[base.metric.str.startswith(("learning_",)) | base.metric.isin(forgetting_metrics(profile))]
    sizes = scored.groupby("metric").item.nunique()
    seeds = grid.groupby(["domain", "regime", "method", grid.lora_rank.fillna(0)]).base_id.nunique()
    rates = chosen_rates_table(profile, df, items)
    ratios = rates[rates.chosen & (rates.method == "lora")].ratio_to_full.dropna()
    ranks = sorted(int(r) for r in grid[grid.method == "lora"].lora_rank.dropna().unique())
    width = profile.base.architecture.hidden_size if profile.base.kind == "mini" else PAPER_HIDDEN_SIZE
    return {
        "params": f"{params / 1e6:.2f} million" if np.isfinite(params) else "an unknown number of",
        "hidden": f"{width}",
        "cpt_tokens": f"{cpt.tokens_seen.max():,.0f}" if len(cpt) else "no",
        "ift_epochs": f"{ift.duration.max():g}" if len(ift) else "no",
        "items": _span(sizes.min(), sizes.max()) if len(sizes) else "no",
        "seeds": _span(seeds.min(), seeds.max()) if len(seeds) else "no",  # one run per base: bases = seeds
        "ranks": ", ".join(f"r = {r} ({100 * r / width:.3g}% of d)" for r in ranks) or "no LoRA ranks",
        "lr_ratios": _span(ratios.min(), ratios.max(), "{:.3g}") + "×" if len(ratios) else "not chosen",
        "n_claims": f"{len(claims)}",
    }


def _span(low: float, high: float, fmt: str = "{:.0f}") -> str:
    """'150 to 210', or one number when both ends agree."""
    a, b = fmt.format(low), fmt.format(high)
    return a if a == b else f"{a} to {b}"
