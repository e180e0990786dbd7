"""The coverage simulation: grouped intervals keep their nominal 95% on clustered
documents, single-document intervals do not (small sizes; the full-size table is
benchmarks/interval_coverage.py's)."""

from __future__ import annotations

import math

import pytest

from sae_med.measure.coverage import CoverageSetup, by_document, coverage

SMALL = CoverageSetup(n_groups=40, group_size=5, rho=0.5, n_boot=400)
"""Design effect 1 + 4 · 0.5 = 3: single-document intervals √3 too narrow."""


def test_group_intervals_cover_at_the_nominal_rate_and_document_ones_do_not(one_thread):
    grouped = coverage(SMALL, runs=300, seed=1)
    single = coverage(by_document(SMALL), runs=300, seed=1)
    # 300 runs: binomial se ~1.4 points; a percentile bootstrap over 40 groups runs a
    # little narrow (its variance has a (G - 1)/G factor)
    assert 0.88 <= grouped.rate <= 0.99
    # √3 too narrow covers about P(|Z| < 1.96/√3) ≈ 74%
    assert single.rate < 0.84
    assert grouped.mean_width / single.mean_width == pytest.approx(3 ** 0.5, rel=0.15)


def test_setup_rejects_impossible_designs():
    with pytest.raises(ValueError, match="rho"):
        CoverageSetup(rho=1.0)
    with pytest.raises(ValueError, match="2 groups"):
        CoverageSetup(n_groups=1)


def test_seed_ratio_recovers_the_seed_effect_in_document_standard_errors():
    """An interval built from a documents' se of 0.05 and seed sds of 0.2 over 3 seeds
    reads as a ratio of 4 (the coverage table's seed-dominated rows); an interval the
    seeds alone fill reads as infinite."""
    from statistics import NormalDist

    from sae_med.measure.coverage import seed_ratio

    z = NormalDist().inv_cdf(0.975)
    se = math.sqrt(0.05 ** 2 + 2 * 0.2 ** 2 / 3)
    assert seed_ratio((0.2, 0.2), 3, 0.1 - z * se, 0.1 + z * se) == pytest.approx(4.0)
    assert seed_ratio((0.2, 0.0), 3, -0.1, 0.1) == math.inf


def test_seed_shares_pair_each_gap_with_its_two_families():
    from sae_med.measure.coverage import seed_shares

    def fam(corpus, sd, n=3, metric="delta_ce"):
        return {"train_corpus": corpus, "eval_corpus": "medical", "l0_target": 40.0,
                "metric": metric, "basis": "l0_target", "seed_sd": sd, "n_seeds": n}

    gap = {"train_corpus": "medical", "versus": "broad", "eval_corpus": "medical",
           "l0_target": 40.0, "metric": "delta_ce", "basis": "l0_target",
           "low": -0.5, "high": -0.3}
    doc = {"families": [fam("medical", 0.03), fam("broad", 0.04)],
           "gaps": [gap, {**gap, "metric": "ce_clean"}, {**gap, "basis": "fve"}]}
    [share] = seed_shares(doc)
    assert (share.pair, share.metric, share.n_seeds) == ("medical − broad", "delta_ce", 3)
    assert share.seed_sd == pytest.approx(math.sqrt((0.03 ** 2 + 0.04 ** 2) / 2))
    assert share.ratio > 0
    doc["families"][1]["n_seeds"] = 1  # one seed: no seed sd to read
    assert seed_shares(doc) == []
