"""Chapter 6's tables, figure and quoted values (autointerp), from a run's scores
(:class:`~sae_med.interpret.autointerp.RunScores`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import pandas as pd
import plotly.graph_objects as go

from sae_med.config import AutointerpConfig, EvalConfig
from sae_med.interpret.autointerp import RunScores, compare_scores, replicates_of
from sae_med.report.notebook import CORPUS_COLORS

METRIC_LABELS = {"detection_auroc": "detection AUROC", "accuracy": "detection accuracy",
                 "f1": "detection F1"}
FUZZ_LABELS = {"fuzz_auroc": "fuzzing AUROC", "fuzz_accuracy": "fuzzing accuracy"}
SUMMARY_COLUMNS = ["metric", "SAE", "L0", "n_latents", "mean", "ci_low", "ci_high",
                   "n_unscored", "n_failures", "n_p_failures"]
PER_LATENT_COLUMNS = ["SAE", "replicate", "latent", "firing_rate", "explanation", "detection_auroc",
                      "accuracy", "f1", "fuzz_auroc", "fuzz_accuracy", "n_calls",
                      "n_failures"]
QUOTED = {"detection_auroc": "auroc", "accuracy": "accuracy"}
"""The metrics chapter 6 quotes, with their short names in the glue keys."""


class ScoreSummary(NamedTuple):
    """Mean scores per SAE family with bootstrap intervals over seeds, then latents."""

    tables: dict[str, pd.DataFrame]
    """Per metric, :func:`~sae_med.interpret.autointerp.compare_scores`' table."""
    summary: pd.DataFrame
    """The tables stacked, with a ``metric`` label and each SAE's end-of-training ``L0``."""


def budget_label(budget: AutointerpConfig) -> str:
    """A line (markdown) saying whether the scores are a demo or the full budget."""
    if budget.demo:
        return (f"**Demo, not a result:** {budget.n_latents} latents per SAE family "
                "(spread over its seeds), "
                f"{budget.n_windows} explainer windows, {budget.n_score} + {budget.n_score} "
                f"held-out windows, judged by `{budget.model}`. Rerun with "
                "`autointerp.demo=false` (and a strong model) for the comparison.")
    return (f"Full budget: {budget.n_latents} latents per SAE family (spread over its "
            f"seeds), judged by `{budget.model}`.")


def score_metrics(budget: AutointerpConfig) -> dict[str, str]:
    """The scored metrics and their labels: detection, and fuzzing when it is on."""
    return METRIC_LABELS | (FUZZ_LABELS if budget.fuzzing else {})


def score_summary(run: RunScores, scores: Mapping[str, pd.DataFrame], seed: int,
                  n_boot: int = EvalConfig.bootstrap) -> ScoreSummary:
    """Every metric of :func:`score_metrics` compared across the SAEs of ``scores``
    (``n_boot`` replicates: the run's ``eval.bootstrap``)."""
    metrics = score_metrics(run.budget)
    tables = {m: compare_scores(dict(scores), m, seed=seed, n_boot=n_boot) for m in metrics}
    summary = pd.concat([t.assign(metric=metrics[m]) for m, t in tables.items()],
                        ignore_index=True)
    summary["L0"] = summary["SAE"].map(run.l0)
    return ScoreSummary(tables, summary)


def score_values(tables: Mapping[str, pd.DataFrame], medical: str, broad: str
                 ) -> dict[str, float]:
    """Mean and interval of each :data:`QUOTED` metric for the two SAEs and their
    difference, by glue name (``autointerp_auroc_medical_mean``, ...; NaN when absent)."""
    values = {}
    for metric, short in QUOTED.items():
        table = tables[metric].set_index("SAE")
        for name, key in ((medical, "medical"), (broad, "broad"),
                          (f"{medical} − {broad}", "diff")):
            for col in ("mean", "ci_low", "ci_high"):
                values[f"autointerp_{short}_{key}_{col}"] = (
                    float(table.loc[name, col]) if name in table.index else float("nan"))
    return values


def run_values(run: RunScores, scores: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """The run's target, judge, budget and counts, by glue name."""
    budget = run.budget
    return {
        "autointerp_l0_target": f"{run.target:g}",
        "autointerp_backend": f"{budget.backend}:{budget.model}",
        "autointerp_budget": (f"a demo of {budget.n_latents} latents per SAE family, not a result"
                              if budget.demo else f"{budget.n_latents} latents per SAE family"),
        "autointerp_n_latents": int(sum(len(f) for f in scores.values())),
        "autointerp_n_failures": int(sum(f["n_failures"].sum() for f in scores.values())),
        "autointerp_n_p_failures": int(sum(f["n_p_failures"].sum()
                                           for f in scores.values()))}


def score_figure(summary: pd.DataFrame, names: Iterable[str], run: RunScores, model: str
                 ) -> go.Figure:
    """Each named SAE's mean score per metric with its 95% interval, chance marked;
    ``model`` names the judge in the title."""
    fig = go.Figure()
    for name in names:
        t = summary[summary.SAE == name]
        fig.add_trace(go.Scatter(
            x=t.metric, y=t["mean"], mode="markers", name=f"{name} SAE",
            marker={"size": 11, "color": CORPUS_COLORS.get(name)},
            error_y={"type": "data", "symmetric": False, "array": t.ci_high - t["mean"],
                     "arrayminus": t["mean"] - t.ci_low}))
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="chance (AUROC, accuracy)")
    fig.update_layout(title=f"Autointerp scores at target L0 {run.target:g} "
                            f"(on {run.eval_corpus} text; {model})",
                      yaxis_title="score (mean over latents, 95% CI)", yaxis_range=[0, 1],
                      scattermode="group", height=420)
    return fig


def per_latent_table(scores: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every SAE family's latent scores in one table, with ``SAE`` (the training corpus)
    and ``replicate`` (the seed whose SAE the latent is, 0 in tables without one)."""
    return pd.concat([f.assign(SAE=name, replicate=replicates_of(f))
                      for name, f in scores.items()], ignore_index=True)
