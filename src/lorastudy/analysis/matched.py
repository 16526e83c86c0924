"""Forgetting at matched learning: the comparison that tells "forgets less" from "learns less". On each base,
each arm's (learning, forgetting) curve over its durations is interpolated at a learning level both arms reach."""
from __future__ import annotations

import numpy as np
import pandas as pd

from lorastudy.analysis.intervals import CANNOT_TELL, Interval, resample_draws, resampled_mean, t_interval
from lorastudy.analysis.learning_forgetting import (
    CLAIM_COLUMNS,
    arm_items,
    base_rows,
    chosen_runs,
    forgetting_metrics,
    verdict_row,
)
from lorastudy.config import Profile


def _stack(mine: pd.DataFrame, cells: pd.DataFrame, metric: str, columns: list[str], bases: list[str]) -> np.ndarray:
    """(bases, durations, items) values of one metric over an arm's cells (cells: run_id, checkpoint, duration,
    base_id; `mine`: the arm's per-item rows, `arm_items`), an arm's runs on one base averaged."""
    mine = mine[mine.metric == metric]
    grid = mine.pivot_table(index=["base_id", "duration"], columns="item", values="value")
    durations = sorted(cells.duration.unique())
    grid = grid.reindex(index=pd.MultiIndex.from_product([bases, durations]), columns=columns)
    if grid.isna().any().any():
        raise ValueError(f"per-item {metric} incomplete for runs {sorted(cells.run_id.unique())[:2]} "
                         f"at durations {durations}")
    return grid.to_numpy(dtype=float).reshape(len(bases), len(durations), len(columns))


def _curve(arrays: list[np.ndarray], rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Learning and forgetting (the mean of the sets) per duration over `rows` (bases), on the data as they are."""
    means = [a[rows].mean(axis=(0, 2)) for a in arrays]
    return means[0], np.mean(means[1:], axis=0)


def _resampled_curves(arrays: list[np.ndarray], items: list[np.ndarray], row: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Learning and forgetting of one base (`row`) per item resample and duration, (n_boot, durations) each."""
    only = np.zeros((len(items[0]), 1), dtype=int)
    means = [resampled_mean(a[row:row + 1], only, draw) for a, draw in zip(arrays, items)]
    return means[0], np.mean(means[1:], axis=0)


def _at(level: float, base: tuple[np.ndarray, np.ndarray], arm: tuple[np.ndarray, np.ndarray]) -> float:
    """Forgetting where the arm's learning curve (from the base, through its durations) reaches `level`."""
    xs, ys = np.concatenate([base[0], arm[0]]), np.concatenate([base[1], arm[1]])
    order = np.argsort(xs, kind="stable")
    return float(np.interp(level, xs[order], ys[order]))


def matched_forgetting(items: pd.DataFrame, full: pd.DataFrame, lora: pd.DataFrame, base: pd.DataFrame,
                       learn: str, forget: list[str], *, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[Interval | None, float]:
    """Forgetting of LoRA minus full FT at the same learning: on each base, each arm's curve of (learning,
    forgetting) over its durations, starting at that base, is interpolated at the highest learning both arms
    reach on average. The interval is `intervals.t_interval` of the per-base differences, its items' part the
    variance of the base-averaged difference over item resamples (paired: one draw for every arm and base).
    Returns (None, level) when that level is not above the bases', i.e. when there is no learning to match on."""
    metrics = [learn, *forget]
    arm_cells = {"full": full, "lora": lora, "base": base}
    bases = sorted(set(full.base_id) & set(lora.base_id) & set(base.base_id))
    if not bases:
        raise ValueError("the arms share no base")
    mine = {name: arm_items(items, cells) for name, cells in arm_cells.items()}
    universe = {m: sorted(set.intersection(*(set(rows[rows.metric == m].item) for rows in mine.values())))
                for m in metrics}
    arms = {name: [_stack(mine[name], cells, m, universe[m], bases) for m in metrics]
            for name, cells in arm_cells.items()}
    top = min(_curve(arms[a])[0].max() for a in ("full", "lora"))
    if top <= _curve(arms["base"])[0].max():
        return None, float(top)
    per_base = np.array([_at(top, _curve(arms["base"], slice(b, b + 1)), _curve(arms["lora"], slice(b, b + 1)))
                         - _at(top, _curve(arms["base"], slice(b, b + 1)), _curve(arms["full"], slice(b, b + 1)))
                         for b in range(len(bases))])
    draws = resample_draws(np.random.default_rng(seed), n_boot, [len(universe[m]) for m in metrics])
    resampled = np.zeros(n_boot)
    for b in range(len(bases)):
        on = {a: list(zip(*_resampled_curves(arms[a], draws, b))) for a in arms}  # resample -> its curve
        resampled += [_at(top, on["base"][i], on["lora"][i]) - _at(top, on["base"][i], on["full"][i])
                      for i in range(n_boot)]
    resampled /= len(bases)
    n_items = sum(len(universe[m]) for m in forget)
    est, low, high = t_interval(per_base, float(resampled.var(ddof=1)), n_items, level)
    return Interval(estimate=est, low=low, high=high, n_bases=len(bases), n_items=n_items,
                    per_base=tuple(float(v) for v in per_base)), float(top)


def matched_claims(df: pd.DataFrame, items: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """Per panel and rank: does LoRA forget less than full FT at the same learning (claim ids `matched/...`)?
    The comparison that tells "forgets less" from "learns less"; the paper reads it off its Fig 3. Learning is
    matched on the panel's score and, decoding-free, on the answer NLL (negated: higher is more learned)."""
    runs = chosen_runs(profile, df, items)
    base = base_rows(df)[["run_id", "checkpoint", "duration", "base_id"]].drop_duplicates()
    forget = forgetting_metrics(profile)
    rows = []
    for (domain, regime), g in runs.groupby(["domain", "regime"]):
        full = g[g.method == "full"][["run_id", "checkpoint", "duration", "base_id"]].drop_duplicates()
        if full.empty or base.empty:
            continue
        panel = f"{domain} {regime.upper()}"
        nll = f"answer_nll_{domain}"
        scored = items.assign(value=np.where(items.metric == nll, -items.value, items.value))
        for rank, lora in g[g.method == "lora"].groupby("lora_rank"):
            r = int(rank)
            cells = lora[["run_id", "checkpoint", "duration", "base_id"]].drop_duplicates()
            for learn, tag in ((f"learning_{domain}", ""), (nll, "-nll")):
                if not (items.metric == learn).any():
                    continue
                iv, top = matched_forgetting(scored, full, cells, base, learn, forget, seed=len(rows))
                level = f"{learn} {top:.3f}" if not tag else f"answer NLL {-top:.3f}"
                claim_id = f"matched/lora-forgets-less{tag}/{domain}-{regime}/r{r}"
                statement = f"LoRA r={r} forgets less than full fine-tuning at the same learning ({level})"
                if iv is None:
                    rows.append({"claim": claim_id, "panel": panel, "verdict": CANNOT_TELL, "paper": None,
                                 "statement": statement + ": neither arm learns beyond the base, nothing to match",
                                 "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_bases": np.nan,
                                 "n_items": np.nan, "per_base": ""})
                    continue
                rows.append(verdict_row(claim_id, statement, panel, iv, +1, None))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
