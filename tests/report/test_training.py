"""Chapter 2's figure and table on hand-made training logs: one line per SAE in each of
the four panels, dashes by target, the legend once per (corpus, target); the last logged
metrics per SAE."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sae_med.report.training import (
    CURVE_PANELS,
    FINAL_COLUMNS,
    final_metrics_table,
    training_curve_figure,
)
from sae_med.train.records import TrainMetrics, TrainResult


def _curves() -> pd.DataFrame:
    rows = [{"train_corpus": c, "replicate": rep, "l0_target": t, "tokens": n, "loss": 1.0,
             "l0": t, "fve": 0.5, "dead_frac": 0.0}
            for c in ("medical", "broad") for t in (10.0, 40.0) for rep in (0, 1)
            for n in (100, 200)]
    return pd.DataFrame(rows)


def test_the_curve_figure_draws_each_sae_in_each_panel():
    fig = training_curve_figure(_curves(), [10.0, 40.0])
    assert len(fig.data) == 4 * 8  # panels x (corpus, target, replicate)
    first_panel = [t for t in fig.data if t.xaxis == "x"]
    assert [t.name for t in first_panel if t.showlegend] == [
        "broad, target L0 10, seed 0", "broad, target L0 40, seed 0",
        "medical, target L0 10, seed 0", "medical, target L0 40, seed 0"]
    assert not any(t.showlegend for t in fig.data if t.xaxis != "x")
    assert {t.line.dash for t in fig.data if "target L0 40" in t.name} == {"dash"}
    assert [a.text for a in fig.layout.annotations] == [p.title for p in CURVE_PANELS]
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis4.title.text == \
        "dead latent fraction"


def test_the_final_table_holds_each_saes_last_metrics():
    m = TrainMetrics(step=5, tokens=500, lr=1e-3, sparsity_coeff=1.0, loss=0.2, mse=0.1,
                     sparsity_loss=0.1, l0=12.0, fve=0.8, dead_frac=0.01)
    runs = {"medical": [TrainResult(10.0, Path("a"), 5, 500, 1.0, m, "medical", 0),
                        TrainResult(10.0, Path("b"), 5, 500, 1.0, m, "medical", 1)]}
    final = final_metrics_table(runs)
    assert list(final.columns) == FINAL_COLUMNS
    assert final["seed replicate"].tolist() == [0, 1]
    assert final.iloc[0].tolist() == ["medical", 10.0, 0, 500, 0.2, 0.1, 12.0, 0.8, 0.01]
