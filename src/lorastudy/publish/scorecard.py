"""The book's landing-page scorecard: every claim of the study with the paper's number, ours with its
interval, the verdict and a link to the figure that shows it.

It reads the same tables the chapters read (claims.csv, and the verdict tables the measurement chapters
write), so the landing page and the chapters cannot disagree.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nbformat
import pandas as pd

from lorastudy.analysis.claims import claims_of, compact, verdict_text
from lorastudy.analysis.intervals import CANNOT_TELL
from lorastudy.analysis.robustness import agreement_table

__all__ = ["FIGURE_OF", "FAMILIES", "CHAPTER_VERDICTS", "figure_labels", "figure_for", "scorecard", "replicate_section",
           "settled_section"]

# claim id prefix → the named figure that shows it (longest prefix first: '-nll' before its score claim)
FIGURE_OF = [("full-learns-more-nll", "fig-answer-nll"), ("cpt-learns-nll", "fig-answer-nll"),
             ("ift-learns-nll", "fig-answer-nll"), ("full-learns-more", "fig-learning"), ("cpt-learns", "fig-learning"),
             ("ift-learns", "fig-learning"),
             ("lora-forgets-less", "fig-forgetting"), ("matched", "fig-tradeoff"), ("other-rate", "fig-lr-sweep"),
             ("fig4", "fig-regularization-tradeoff"), ("fig7", "fig-modules"), ("figS3", "fig-alpha"),
             ("transitions", "fig-transitions")]
FAMILIES = {"main": "Headline claims at the chosen learning rates (chapter 10, Figs 2–3)",
            "matched": "Forgetting at matched learning (chapter 10, Fig 3 read at equal learning)",
            "other-rate": "The headline claims again at LoRA's other candidate rate (chapter 14, Fig S1)",
            "fig4": "LoRA against weight decay and attention dropout (chapter 11, Fig 4)",
            "fig7": "Which modules LoRA adapts (chapter 14, Fig 7)",
            "figS3": "α and rsLoRA (chapter 14, Fig S3)",
            "transitions": "Per-item forgetting: the base's right answers LoRA and full FT lose (chapter 16)"}
# chapters whose claims are measurements of weights or samples: their verdict table and its figure
CHAPTER_VERDICTS = {"12_diversity": ("Diversity of generations (chapter 12, Figs 5 and S9)", "fig-unique"),
                    "13_spectra": ("The rank of full fine-tuning's update (chapter 13, Figs 6, S7, S8)",
                                   "fig-rank-duration"),
                    "15_memory": ("Memory and throughput (chapter 15, Fig S10)", "fig-memory"),
                    "16_beyond": ("Beyond the paper: intruder dimensions and KL (chapter 16)", "fig-intruders")}


def figure_labels(notebooks: list[Path]) -> dict[str, str]:
    """The figure names (`mystnb.figure.name` cell metadata) of the executed notebooks whose cell drew an
    image, each with its chapter's number ('10' for 10_learning_forgetting): the labels a page may link to
    without a dangling reference."""
    labels = {}
    for path in notebooks:
        for cell in nbformat.read(path, as_version=4).cells:
            name = cell.get("metadata", {}).get("mystnb", {}).get("figure", {}).get("name")
            if name and any("image/png" in o.get("data", {}) for o in cell.get("outputs", [])):
                labels[name] = path.stem.split("_", 1)[0]
    return labels


def figure_for(claim_id: str) -> str | None:
    return next((label for prefix, label in FIGURE_OF if claim_id.split("/")[0] == prefix), None)


def _link(label: str | None, labels: Mapping[str, str] | set[str]) -> str:
    """A numbered link that names the chapter ("ch. 10, Fig. 3"): a figure number alone does not say where."""
    if label not in labels:
        return ""
    chapter = labels[label] if isinstance(labels, Mapping) else ""
    return f"{{numref}}`ch. {chapter}, Fig. %s <{label}>`" if chapter else f"{{numref}}`{label}`"


def scorecard(profile_name: str, claims: pd.DataFrame, labels: Mapping[str, str] | set[str],
              chapter_verdicts: dict[str, pd.DataFrame] | None = None) -> str:
    """The scorecard section (markdown): a count per family, then every claim by family, then the measurement
    chapters' verdicts."""
    families = [f for f in FAMILIES if len(claims_of(claims, f))]
    counts = pd.DataFrame([{"claims": FAMILIES[f], "n": len(g := claims_of(claims, f)),
                            **{v: int((g.verdict == v).sum()) for v in ("agrees", "disagrees", "cannot tell")}}
                           for f in families])
    text = [f"\n\n## Scorecard: what our runs say (`{profile_name}`)\n",
            f"{verdict_text(claims_of(claims, 'main'), 'headline claims')} A claim *agrees* or *disagrees* with "
            "the paper only when its 95% interval (over base models and test items, both paired between arms; "
            "`bases` says how many) excludes zero; otherwise we *cannot tell*, and a tie never agrees. `paper` is the same "
            "difference on the paper's tables (Llama-2-7B) at the rank with the same share of the width, where "
            f"the paper reports one. The same table is `lorastudy claims {profile_name}`.\n",
            counts.to_markdown(index=False) if len(counts) else "No claims in this profile's runs."]
    for family in families:
        rows = claims_of(claims, family)
        table = compact(rows).drop(columns="per base")
        table["figure"] = [_link(figure_for(c), labels) for c in rows.claim]
        text += [f"\n### {FAMILIES[family]}\n", table.to_markdown(index=False)]
    for name, verdict in (chapter_verdicts or {}).items():
        title, label = CHAPTER_VERDICTS[name]
        shown = verdict.assign(figure=_link(label, labels))
        columns = [c for c in ("statement", "ours", "estimate", "ci_low", "ci_high", "verdict", "figure")
                   if c in shown]
        text += [f"\n### {title}\n", shown[columns].round(3).to_markdown(index=False)]
    return "\n".join(text) + "\n"


def bases_section(claims: pd.DataFrame) -> str:
    """The landing page's section on the designed robustness check (markdown): per headline claim, whether
    every base's own estimate has the sign of the pooled one, and the claims where the bases disagree."""
    main = claims_of(claims, "main")
    if main.empty or "per_base" not in main or not (main.n_bases > 1).any():
        return ""
    per_base = main.per_base.fillna("").astype(str).str.split()
    signs = [{float(v) > 0 for v in vals if float(v) != 0} for vals in per_base]
    split = main[[len(s) > 1 for s in signs]]
    text = ["\n\n## Across bases: where the base models disagree\n",
            f"Every arm of the main grid is fine-tuned from {int(main.n_bases.max())} base models pre-trained from "
            "different seeds, and each claim's interval covers the spread between them. Of "
            f"{len(main)} headline claims, {len(main) - len(split)} have the same sign on every base; on "
            f"{len(split)} the bases point different ways, so no verdict there can be more than *cannot tell*"
            + (":\n" if len(split) else ".\n")]
    if len(split):
        text.append(pd.DataFrame({"panel": split.panel, "claim": split.statement, "per base": split.per_base,
                                  "verdict": split.verdict}).to_markdown(index=False))
    return "\n".join(text) + "\n"


def replicate_section(paired: pd.DataFrame, replicate_name: str, replicate_origin: str) -> str:
    """The landing page's section on a replicate of the study (markdown; `paired` from
    analysis.robustness.paired_verdicts): how many verdicts it keeps, per family, and the ones it reverses."""
    if paired.empty:
        return ""
    decided = paired[paired.verdict != CANNOT_TELL]
    counts = agreement_table(paired)
    counts.insert(0, "claims", [FAMILIES.get(f, f) for f in counts.pop("family")])
    text = [f"\n\n## Across hosts: does a verdict survive another machine? (`{replicate_name}`)\n",
            f"An incidental check, apart from the designed one across bases above. `{replicate_name}` "
            f"is the same study run again ({replicate_origin}): with the same code and profile the base comes out "
            "differently on another CPU, which rounds differently, and pre-training carries that into other "
            "weights. Of "
            f"{len(paired)} claims, {int((paired.relation == 'same').sum())} keep their verdict; of the "
            f"{len(decided)} that agree or disagree here, {int((decided.relation == 'same').sum())} do so in the "
            "replicate too. A verdict that changes is one this study cannot settle.\n",
            counts.to_markdown(index=False)]
    opposite = paired[paired.relation == "opposite"]
    if len(opposite):
        def side(suffix: str) -> list[str]:
            return [f"{v}: {e:+.3f} [{lo:+.3f}, {hi:+.3f}]" for v, e, lo, hi in zip(
                *(opposite[c + suffix] for c in ("verdict", "estimate", "ci_low", "ci_high")))]
        table = pd.DataFrame({"panel": opposite.panel, "claim": opposite.statement, "here": side(""),
                              "replicate": side("_replicate")})
        text += ["\nClaims whose verdict the replicate reverses:\n", table.to_markdown(index=False)]
    return "\n".join(text) + "\n"


def settled_section(settled: pd.DataFrame, n_claims: int, replicate_names: list[str]) -> str:
    """The landing page's list of the verdicts every base model gives alike (`settled` from
    analysis.robustness.settled), before the section on each replicate."""
    if not replicate_names:
        return ""
    names = ", ".join(f"`{n}`" for n in replicate_names)
    text = ["\n\n## Across hosts: verdicts that every host gives\n",
            f"The study was also run on {len(replicate_names)} other host{'s' if len(replicate_names) > 1 else ''}"
            f" ({names}; the sections below compare each with this one): an incidental check, apart from the "
            f"designed one across bases. Of {n_claims} claims, {len(settled)} are decided, and decided the same way, "
            "on every host. Every other verdict depends on where it was measured.\n"]
    if len(settled):
        shown = settled.assign(ours=[f"{e:+.3f} [{lo:+.3f}, {hi:+.3f}]" for e, lo, hi in
                                     zip(settled.estimate, settled.ci_low, settled.ci_high)])
        text.append(shown[["claim", "statement", "verdict", "ours"]].to_markdown(index=False))
    return "\n".join(text) + "\n"
