"""The coverage simulation: grouped intervals keep their nominal 95% on clustered
documents, single-document intervals do not (small sizes; the full-size table is
benchmarks/interval_coverage.py's)."""

from __future__ import annotations

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
