"""Chapter 3's tables, figures and quoted values (reconstruction fidelity), from the run's
tidy results and comparison tables; and the paper's own numbers, typed in for reference."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from sae_med.measure.bootstrap import Interval
from sae_med.report.claims import claim_verdict, gap_intervals
from sae_med.report.domain_report import (
    own_text_table,
    training_dead_fractions,
    versus_clause,
)
from sae_med.report.notebook import CORPUS_COLORS, gap_sentence, gap_table, metric_value

PAPER_SAES = ("medical (paper)", "Gemma Scope, broad (paper)")
"""The paper's two SAE families, in the order of :func:`paper_table`'s rows."""


def joined(values: Iterable[float], fmt: str = ".3f") -> str:
    """``values`` formatted with ``fmt``, comma-separated."""
    return ", ".join(f"{v:{fmt}}" for v in values)


def family_values(families: pd.DataFrame, metric: str, train_corpus: str, eval_corpus: str
                  ) -> list[float]:
    """A family's across-seed means of ``metric`` on ``eval_corpus``, by target L0
    (the ``l0_target`` rows of the comparison's ``families`` table)."""
    sel = families[(families.basis == "l0_target") & (families.metric == metric)
                   & (families.train_corpus == train_corpus)
                   & (families.eval_corpus == eval_corpus)]
    return [float(v) for v in sel.sort_values("l0_target").value]


def value_range(ivs: Sequence[Interval]) -> tuple[float, float]:
    """(smallest, largest) of the intervals' values; (NaN, NaN) for none."""
    values = [iv.value for iv in ivs]
    return (min(values, default=float("nan")), max(values, default=float("nan")))


def targets_text(targets: Iterable[float], sep: str = ", ") -> str:
    """Target L0s as the book writes them (``3, 10, 30``)."""
    return sep.join(f"{t:g}" for t in targets)


def home_advantage_sentence(gaps: pd.DataFrame, sides: Sequence[str], first: str,
                            second: str, metrics: Sequence[str] = ("fve_typical", "delta_ce")
                            ) -> str:
    """Each side's own SAE against the other's on its own text, per metric
    (:func:`~sae_med.report.domain_report.versus_clause`), joined with ``;``."""
    return "; ".join(versus_clause(gaps, side, other, f"the {other} SAE", metric)
                     for metric in metrics
                     for side, other in ((first, second), (second, first)) if side in sides)


def own_text_baselines(families: pd.DataFrame, results: pd.DataFrame, sides: Sequence[str]
                       ) -> pd.DataFrame:
    """Each side's SAEs on their *own* held-out text at every target L0 (ΔCE, FVE,
    typical-token FVE, across-seed means with intervals) beside the dead fraction each SAE
    ended its training with: the equal baselines, whose dead fractions, unlike those counted
    on the evaluation corpora, compare across sides. ``results``:
    :func:`~sae_med.measure.results.load_results`'s frame (for the SAEs' folders)."""
    return own_text_table(families, sides, training_dead_fractions(results))


def fidelity_values(comparisons: Any, results: pd.DataFrame, med_gaps: pd.DataFrame,
                    targets: Sequence[float], medical: str, broad: str,
                    massive_norm_ratio: float) -> dict[str, Any]:
    """The values chapter 3 quotes by name (its myst-nb ``glue`` names): gap ranges,
    verdicts, the typical-token sentence and the families' ΔCE and recovered-vs-mean."""
    families = comparisons.families
    fve_lo, fve_hi = value_range(gap_intervals(med_gaps, "fve", medical))
    broad_lo, broad_hi = value_range(gap_intervals(med_gaps, "fve", broad))
    massive = metric_value(results, "massive_tokens", medical, medical, targets[0])
    typical = (gap_sentence(gap_intervals(med_gaps, "fve_typical", medical),
                            "Without massive-activation tokens the FVE gap is",
                            f"on {medical} text")
               + f" ({massive:.0f} of the {medical} evaluation tokens are above "
                 f"{massive_norm_ratio:g} × the median norm.)")
    values: dict[str, Any] = {
        "fve_gap_medical_min": fve_lo, "fve_gap_medical_max": fve_hi,
        "fve_gap_broad_min": broad_lo, "fve_gap_broad_max": broad_hi,
        "verdict_fve": claim_verdict(comparisons, "fve", medical, broad),
        "verdict_fve_typical": claim_verdict(comparisons, "fve_typical", medical, broad),
        "fve_typical_sentence": typical,
        "verdict_loss": claim_verdict(comparisons, "loss", medical, broad)}
    for c, key in ((medical, "medical"), (broad, "broad")):
        values[f"dce_{key}_sae_on_medical"] = joined(
            family_values(families, "delta_ce", c, medical))
    for c, key in ((medical, "medical"), (broad, "broad")):
        values[f"lr_mean_{key}_sae_on_medical"] = joined(
            family_values(families, "loss_recovered_mean", c, medical))
    values["fve_gap_table"] = gap_table(med_gaps, ["fve", "fve_typical", "delta_ce",
                                                   "loss_recovered"])
    return values


def paper_table() -> pd.DataFrame:
    """The paper's fidelity numbers (O'Neill et al. 2025, Gemma-2-2B, width 16,384, layer
    20, clinical QA text): its medical SAE and Gemma Scope, with ΔCE from the CE columns."""
    paper = pd.DataFrame({
        "SAE": [PAPER_SAES[0]] * 4 + [PAPER_SAES[1]] * 4,
        "L0": [18.8, 58.3, 122, 361, 22.6, 76.6, 152, 314],
        "FVE": [.860, .889, .907, .918, .642, .728, .772, .823],
        "CE clean": [1.818] * 4 + [1.824] * 4,
        "CE spliced": [1.994, 1.919, 1.885, 1.868, 2.472, 2.210, 2.115, 2.072],
        "loss recovered (range)": [".984–.995"] * 4 + [".939–.977"] * 4,
    })
    paper["ΔCE"] = (paper["CE spliced"] - paper["CE clean"]).round(3)
    return paper


def paper_fve_gap(paper: pd.DataFrame) -> tuple[float, float]:
    """(smallest, largest) FVE gap, medical minus Gemma Scope, row by row of
    :func:`paper_table`."""
    gap = paper.FVE[:4].to_numpy() - paper.FVE[4:].to_numpy()
    return float(gap.min()), float(gap.max())


def with_paper(fig: go.Figure, paper: pd.DataFrame) -> go.Figure:
    """``fig`` (FVE vs L0) with its traces named ``ours: …`` and the paper's two families
    added as dotted lines of open diamonds."""
    for trace in fig.data:
        trace.name = f"ours: {trace.name}"
    for name in PAPER_SAES:
        sub = paper[paper.SAE == name]
        color = CORPUS_COLORS["medical" if "medical" in name else "broad"]
        fig.add_scatter(x=sub.L0, y=sub.FVE, mode="lines+markers", name=name,
                        marker={"symbol": "diamond-open", "size": 10},
                        line={"dash": "dot", "color": color})
    return fig
