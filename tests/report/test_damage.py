"""Chapter 7's sentences, quoted values and breakdown figures on hand-made damage
reports."""

from __future__ import annotations

import pytest

from sae_med.measure.diagnose import Bin, DamageReport, DimensionDamage, RandomErrorDamage
from sae_med.report.damage import (
    BREAKDOWNS,
    breakdown_figures,
    damage_sentence,
    damage_text,
    damage_values,
    delta_ce,
)


def report(ce_spliced: float, isotropic: float, in_subspace: float) -> DamageReport:
    """Clean CE 2, zero-ablation 6, mean-ablation 3; two bins per breakdown."""
    bins = [Bin("low", 10, 0.2, 0.25), Bin("high", 10, 0.6, 0.75)]
    return DamageReport(
        ce_clean=2.0, ce_spliced=ce_spliced, ce_zero=6.0, ce_mean_ablation=3.0,
        loss_recovered_vs_zero=(6.0 - ce_spliced) / 4.0,
        loss_recovered_vs_mean=(3.0 - ce_spliced) / 1.0,
        by_position=bins, by_norm_decile=bins, by_frequency=bins,
        massive=DimensionDamage([3], 0.5, 0.4, 0.2),
        random=RandomErrorDamage(ce_spliced - 2.0, isotropic, in_subspace, 5),
        n_tokens=20, mean_share=0.456)


@pytest.fixture
def reports():
    return {"medical": report(2.5, 0.25, 0.375), "broad": report(2.75, 0.5, 1.0)}


def test_sentence_says_the_damage_against_random_error_and_both_baselines(reports):
    assert delta_ce(reports["medical"]) == 0.5
    assert damage_sentence("medical", reports["medical"]) == (
        "medical SAE: ΔCE 0.500 nats against 0.250 for random error of the same per-token "
        "norm (0.375 inside its error subspace, 5 dimensions); loss recovered 0.875 against "
        "zero ablation, 0.500 against mean ablation.")
    assert damage_text(reports).splitlines() == [damage_sentence(k, r)
                                                 for k, r in reports.items()]


def test_values_are_the_excess_over_random_error(reports):
    assert damage_values(reports) == {"damage_excess": "medical +0.25, broad +0.25",
                                      "damage_excess_subspace": "medical +0.12, broad -0.25",
                                      "mean_share": "0.46"}


def test_one_grouped_bar_figure_per_breakdown(reports):
    figs = breakdown_figures(reports)
    assert [f.layout.title.text for f in figs] == [f"Mean ΔCE by {t}"
                                                  for t in BREAKDOWNS.values()]
    assert [t.name for t in figs[0].data] == ["medical", "broad"]
    assert list(figs[0].data[0].y) == [0.2, 0.6] and figs[0].layout.barmode == "group"
