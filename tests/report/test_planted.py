"""Chapter 0's tables and figures on a small planted truth: the data and planted tables,
recovery per role (recovered, median cosine, splits), the score and absorption tables."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from sae_med.interpret.synthetic import (
    Recovery,
    SAEScore,
    SyntheticBatch,
    SyntheticSpec,
    plant,
)
from sae_med.report.planted import (
    ABSORPTION_COLUMNS,
    absorption_comparison,
    data_table,
    frequency_figure,
    planted_table,
    recovery_by_role,
    recovery_figure,
    recovery_table,
    score_table,
)

SPEC = SyntheticSpec(d_model=8, n_features=6, n_hierarchies=1, n_correlated=1)
"""Features 0/1: parent/child; 2/3: a correlated pair; 4, 5: independent."""


def _recovery() -> Recovery:
    cos = torch.tensor([0.95, 0.5, 0.92, 0.91, 0.3, 0.99])
    n_at_bar = torch.tensor([1, 0, 2, 1, 0, 3])
    return Recovery(cos, torch.arange(6), cos >= 0.9, n_at_bar)


def test_data_and_planted_tables_describe_the_truth():
    truth = plant(SPEC)
    test = SyntheticBatch(torch.zeros(2, 8), torch.tensor([[1.0, 1, 0, 0, 0, 0],
                                                           [0.0, 0, 0, 0, 0, 2]]))
    data = data_table(truth, 100, test)["synthetic data"]
    assert data["parent/child pairs"] == 1 and data["correlated pairs"] == 1
    assert data["training rows"] == 100
    assert data["mean active features per row (true L0)"] == 1.5
    planted = planted_table(truth)
    assert planted.role.tolist() == ["parent", "child", "correlated pair", "correlated pair",
                                     "independent", "independent"]
    assert planted.frequency.tolist() == pytest.approx(truth.frequency.tolist())
    fig = frequency_figure(planted)
    assert sorted(t.name for t in fig.data) == ["child", "correlated pair", "independent",
                                                "parent"]


def test_recovery_by_role_counts_recovered_and_split_features():
    recovered = recovery_table(planted_table(plant(SPEC)), _recovery())
    assert recovered["latents ≥ 0.9"].tolist() == [1, 0, 2, 1, 0, 3]
    by_role = recovery_by_role(recovered, 0.9)
    assert by_role.loc["correlated pair"].tolist() == [2, 2, pytest.approx(0.915), 1]
    assert by_role.loc["independent"].tolist() == [2, 1, pytest.approx(0.645), 1]
    assert by_role.loc["child"].tolist() == [1, 0, 0.5, 0]
    assert list(by_role.columns) == ["planted", "recovered", "median_cosine", "split"]
    fig = recovery_figure(recovered, 0.9)
    assert fig.layout.shapes[0].y0 == 0.9 and fig.layout.xaxis.type == "log"
    assert fig.layout.annotations[0].text == "recovered (≥ 0.9)"


def test_score_and_absorption_tables_keep_their_labels():
    scores = score_table({"trained": SAEScore(0.9, 2.0, 0.1, 0.75),
                          "truth SAE": SAEScore(0.99, 1.8, 0.0, 1.0)})
    assert scores.index.tolist() == ["trained", "truth SAE"]
    assert scores.loc["trained"].tolist() == [0.9, 2.0, 0.1, 0.75]
    table = pd.DataFrame({c: [1.0] for c in [*ABSORPTION_COLUMNS, "parent_auroc"]})
    both = absorption_comparison({"trained": table, "truth": table})
    assert list(both.columns) == ABSORPTION_COLUMNS
    assert both.index.get_level_values(0).tolist() == ["trained", "truth"]
