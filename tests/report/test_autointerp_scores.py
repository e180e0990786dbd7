"""Chapter 6's tables, figure and quoted values on hand-made latent scores."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from sae_med.config import AutointerpConfig
from sae_med.interpret.autointerp import RunScores
from sae_med.report.autointerp_scores import (
    PER_LATENT_COLUMNS,
    SUMMARY_COLUMNS,
    budget_label,
    per_latent_table,
    run_values,
    score_figure,
    score_metrics,
    score_summary,
    score_values,
)


def frame(auroc: list[float], failures: int = 0) -> pd.DataFrame:
    """Latent scores: accuracy 0.5 throughout, one failure on the first latent."""
    n = len(auroc)
    return pd.DataFrame({
        "latent": range(n), "firing_rate": [0.01] * n, "explanation": ["fever"] * n,
        "detection_auroc": auroc, "accuracy": [0.5] * n, "f1": [0.0] * n,
        "fuzz_auroc": [float("nan")] * n, "fuzz_accuracy": [float("nan")] * n,
        "n_calls": [9] * n, "n_failures": [failures] + [0] * (n - 1),
        "n_p_failures": [0] * n})


@pytest.fixture
def run():
    scores = {"medical": frame([0.9, 0.8, 0.7], failures=1), "broad": frame([0.6, 0.5, 0.4])}
    budget = dataclasses.replace(AutointerpConfig(), n_latents=3, n_windows=4, n_score=2)
    return RunScores(scores, {"medical": 20.0, "broad": 21.0}, 20.0, "medical", budget)


def test_the_label_and_metrics_follow_the_budget(run):
    assert budget_label(run.budget).startswith("**Demo, not a result:** 3 latents per SAE "
                                               "family (spread over its seeds), "
                                               "4 explainer windows, 2 + 2 held-out")
    full = dataclasses.replace(run.budget, demo=False, fuzzing=True)
    assert budget_label(full) == ("Full budget: 3 latents per SAE family (spread over its "
                                  "seeds), judged by "
                                  f"`{full.model}`.")
    assert list(score_metrics(run.budget)) == ["detection_auroc", "accuracy", "f1"]
    assert list(score_metrics(full))[-2:] == ["fuzz_auroc", "fuzz_accuracy"]


def test_summary_stacks_the_metrics_with_each_sae_s_l0(run):
    tables, summary = score_summary(run, run.scores, seed=0)
    assert list(tables) == ["detection_auroc", "accuracy", "f1"]
    assert set(SUMMARY_COLUMNS) <= set(summary.columns)
    auroc = summary[summary.metric == "detection AUROC"].set_index("SAE")
    assert auroc.loc["medical", "mean"] == pytest.approx(0.8)
    assert auroc.loc["medical − broad", "mean"] == pytest.approx(0.3)
    assert auroc.loc["broad", "L0"] == 21.0 and math.isnan(auroc.loc["medical − broad", "L0"])


def test_quoted_values_by_glue_name(run):
    tables, _ = score_summary(run, run.scores, seed=0)
    values = score_values(tables, "medical", "broad")
    assert len(values) == 2 * 3 * 3
    assert values["autointerp_auroc_diff_mean"] == pytest.approx(0.3)
    assert values["autointerp_accuracy_broad_mean"] == pytest.approx(0.5)
    one = score_values({m: t[t.SAE == "medical"] for m, t in tables.items()}, "medical",
                       "broad")
    assert math.isnan(one["autointerp_auroc_broad_ci_low"])
    assert run_values(run, run.scores) == {
        "autointerp_l0_target": "20", "autointerp_backend": f"local:{run.budget.model}",
        "autointerp_budget": "a demo of 3 latents per SAE family, not a result",
        "autointerp_n_latents": 6, "autointerp_n_failures": 1, "autointerp_n_p_failures": 0}


def test_figure_and_per_latent_table(run):
    _, summary = score_summary(run, run.scores, seed=0)
    fig = score_figure(summary, run.scores, run, "judge")
    assert [t.name for t in fig.data] == ["medical SAE", "broad SAE"]
    assert list(fig.data[0].y) == pytest.approx([0.8, 0.5, 0.0])
    assert fig.layout.title.text == "Autointerp scores at target L0 20 (on medical text; judge)"
    per_latent = per_latent_table(run.scores)
    assert list(per_latent.SAE) == ["medical"] * 3 + ["broad"] * 3
    assert set(PER_LATENT_COLUMNS) <= set(per_latent.columns)
