"""Chapter 0's tables and figures (an SAE on planted features): the synthetic data, what
was planted, the SAEs' scores, recovery by role and absorption against the truth."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go

from sae_med.interpret.synthetic import (
    Recovery,
    SAEScore,
    SyntheticBatch,
    SyntheticTruth,
    feature_roles,
    true_l0,
)

ABSORPTION_COLUMNS = ["parent", "child", "child_share", "parent_latent", "miss_rate",
                      "absorption_rate"]
"""The columns of :func:`sae_med.interpret.synthetic.absorption_table` the chapter shows."""
_LEGEND_BELOW = {"orientation": "h", "y": -0.25}


def data_table(truth: SyntheticTruth, n_rows: int, test: SyntheticBatch) -> pd.DataFrame:
    """The synthetic data's sizes, its pairs and the true L0 on the held-out rows."""
    return pd.Series({
        "d_model": truth.spec.d_model, "planted features": truth.spec.n_features,
        "parent/child pairs": len(truth.hierarchy), "correlated pairs": len(truth.correlated),
        "training rows": n_rows,
        "mean active features per row (true L0)": round(true_l0(test), 2),
    }, name="synthetic data").to_frame()


def planted_table(truth: SyntheticTruth) -> pd.DataFrame:
    """One row per planted feature: its id, role and firing probability."""
    return pd.DataFrame({"feature": range(truth.spec.n_features), "role": feature_roles(truth),
                         "frequency": truth.frequency.numpy()})


def frequency_figure(planted: pd.DataFrame) -> go.Figure:
    """Bar chart of each planted feature's firing probability, one trace per role."""
    fig = go.Figure([go.Bar(x=g.feature, y=g.frequency, name=role)
                     for role, g in planted.groupby("role")])
    fig.update_layout(xaxis_title="planted feature", yaxis_title="firing probability",
                      height=350, legend=_LEGEND_BELOW)
    return fig


def score_table(scores: Mapping[str, SAEScore]) -> pd.DataFrame:
    """One row per scored SAE, indexed by its label."""
    return pd.DataFrame([s._asdict() for s in scores.values()], index=list(scores))


def recovery_table(planted: pd.DataFrame, rec: Recovery) -> pd.DataFrame:
    """``planted`` with each feature's best decoder cosine, best latent and the number of
    latents at the recovery bar."""
    return planted.assign(**{"best cosine": rec.best_cosine.numpy(),
                             "best latent": rec.best_latent.numpy(),
                             f"latents ≥ {rec.at:g}": rec.n_at_bar.numpy()})


def recovery_figure(recovered: pd.DataFrame, bar: float) -> go.Figure:
    """Best decoder cosine against firing probability (log), one trace per role, the
    recovery ``bar`` marked; ``recovered`` is a :func:`recovery_table`."""
    fig = go.Figure([go.Scatter(x=g.frequency, y=g["best cosine"], mode="markers", name=role,
                                text=[f"feature {i}" for i in g.feature])
                     for role, g in recovered.groupby("role")])
    fig.add_hline(y=bar, line_dash="dash", annotation_text=f"recovered (≥ {bar:g})")
    fig.update_layout(xaxis_type="log", xaxis_title="planted firing probability",
                      yaxis_title="best decoder cosine", height=400, legend=_LEGEND_BELOW)
    return fig


def recovery_by_role(recovered: pd.DataFrame, bar: float) -> pd.DataFrame:
    """Per role: features planted and recovered (best cosine ≥ ``bar``), the median best
    cosine and the features ``split`` over more than one latent at the bar."""
    by_role = recovered.groupby("role")
    at_bar = recovered[f"latents ≥ {bar:g}"]
    return pd.DataFrame({
        "planted": by_role.size(),
        "recovered": (recovered["best cosine"] >= bar).groupby(recovered.role).sum(),
        "median_cosine": by_role["best cosine"].median(),
        "split": (at_bar > 1).groupby(recovered.role).sum()})


def absorption_comparison(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """:data:`ABSORPTION_COLUMNS` of each SAE's absorption table, stacked under its label."""
    return pd.concat({label: t[ABSORPTION_COLUMNS] for label, t in tables.items()})
