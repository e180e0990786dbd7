"""Chapter 2's figure and table (training the SAEs): the training curves of every SAE of
the sweeps and their last logged metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sae_med.report.notebook import CORPUS_COLORS
from sae_med.train.records import TrainResult


class Panel(NamedTuple):
    """One panel of the training-curve figure."""

    metric: str
    """A ``metrics.jsonl`` field."""
    title: str
    row: int
    col: int


CURVE_PANELS = (Panel("loss", "training loss (MSE + sparsity)", 1, 1),
                Panel("l0", "L0 (active latents per token)", 1, 2),
                Panel("fve", "FVE on the batch", 2, 1),
                Panel("dead_frac", "dead latent fraction", 2, 2))
TARGET_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
"""Line dash of the i-th target L0 (cycling)."""
FINAL_COLUMNS = ["train corpus", "target L0", "seed replicate", "tokens", "loss", "mse", "l0",
                 "fve", "dead_frac"]


def training_curve_figure(curves: pd.DataFrame, l0_targets: Sequence[float]) -> go.Figure:
    """A 2 x 2 grid of :data:`CURVE_PANELS` against training tokens, one line per SAE
    (colour: its corpus; dash: its target's place in ``l0_targets``); the loss on a log
    axis. ``curves`` is :func:`sae_med.report.notebook.training_curves`."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p.title for p in CURVE_PANELS],
                        horizontal_spacing=0.1, vertical_spacing=0.15)
    for panel in CURVE_PANELS:
        _add_panel(fig, curves, panel, list(l0_targets))
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(height=750, legend={"orientation": "h", "y": -0.12})
    return fig


def _add_panel(fig: go.Figure, curves: pd.DataFrame, panel: Panel, l0_targets: list[float]
               ) -> None:
    """One line per (corpus, target, replicate); the first panel carries the legend."""
    first = (panel.row, panel.col) == (1, 1)
    for (corpus, target, rep), g in curves.groupby(["train_corpus", "l0_target", "replicate"],
                                                   sort=True):
        dash = TARGET_DASHES[l0_targets.index(target) % len(TARGET_DASHES)]
        fig.add_trace(go.Scatter(
            x=g.tokens, y=g[panel.metric], mode="lines",
            name=f"{corpus}, target L0 {target:g}, seed {rep}",
            legendgroup=f"{corpus}{target}", showlegend=first and rep == 0,
            line={"color": CORPUS_COLORS.get(corpus), "dash": dash}),
            row=panel.row, col=panel.col)
    fig.update_xaxes(title_text="training tokens", row=panel.row, col=panel.col)
    fig.update_yaxes(title_text=panel.title, row=panel.row, col=panel.col)


def final_metrics_table(results: Mapping[str, Sequence[TrainResult]]) -> pd.DataFrame:
    """One row per SAE: its corpus, target, replicate and last logged training metrics
    (:data:`FINAL_COLUMNS` that are present)."""
    final = pd.DataFrame([{"train corpus": corpus, "target L0": r.l0_target,
                           "seed replicate": r.replicate, **r.final}
                          for corpus, runs in results.items() for r in runs])
    return final[[c for c in FINAL_COLUMNS if c in final.columns]]
