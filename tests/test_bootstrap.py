"""Known answers for sae_med.bootstrap, and a cross-check against scipy.stats.bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from test_metrics import _doc_stats

from sae_med.bootstrap import (
    bootstrap_ci,
    bootstrap_mean,
    doc_resample,
    independent_difference,
    paired_difference,
    resample_indices,
)
from sae_med.metrics import metrics_from_doc_sums


def test_bootstrap_ci_contains_estimate_and_narrows():
    def stat(s):
        return metrics_from_doc_sums(s).fve

    small = bootstrap_ci(_doc_stats(20), stat, n_boot=200, seed=1)
    big = bootstrap_ci(_doc_stats(500), stat, n_boot=200, seed=1)
    for ci in (small, big):
        assert ci.low < ci.value < ci.high
    assert (big.high - big.low) < 0.5 * (small.high - small.low)
    again = bootstrap_ci(_doc_stats(20), stat, n_boot=200, seed=1)
    assert again == small  # seeded


def test_bootstrap_mean_known_answer():
    """Mean of 0..99 is 49.5; its standard error is sd/√n ≈ 2.89, so the 95% interval is
    about ±5.7; NaNs are dropped; an empty input gives NaNs."""
    vals = np.r_[np.arange(100.0), np.nan]
    est, lo, hi = bootstrap_mean(vals, n_boot=4000, seed=0)
    se = np.arange(100.0).std() / 10
    assert est == 49.5
    assert lo == pytest.approx(49.5 - 1.96 * se, abs=0.8)
    assert hi == pytest.approx(49.5 + 1.96 * se, abs=0.8)
    assert all(math.isnan(v) for v in bootstrap_mean([np.nan]))


def test_bootstrap_plain_tensor_mean():
    vals = torch.arange(100, dtype=torch.float64)
    ci = bootstrap_ci(vals, lambda v: float(v.mean()), n_boot=300, seed=0)
    assert ci.value == pytest.approx(49.5)
    se = float(vals.std()) / 10
    assert ci.low == pytest.approx(49.5 - 1.96 * se, abs=1.5)
    assert ci.high == pytest.approx(49.5 + 1.96 * se, abs=1.5)


def test_doc_resample_counts_are_the_direct_draws():
    idx = list(resample_indices(7, 5, seed=3))
    counts = doc_resample([torch.arange(7)], 5, seed=3).counts
    assert torch.equal(counts, torch.stack([torch.bincount(i, minlength=7) for i in idx]
                                           ).double())


def _scipy_percentile(data, statistic, paired):
    res = stats.bootstrap(data, statistic, n_resamples=20_000, paired=paired,
                          method="percentile", vectorized=False, rng=np.random.default_rng(0))
    return res.confidence_interval.low, res.confidence_interval.high


def test_differences_agree_with_scipy_bootstrap():
    """Same estimator, different random draws: the percentile intervals agree to a small
    fraction of their width (20,000 replicates on both sides)."""
    rng = np.random.default_rng(1)
    a = rng.normal(0.6, 0.2, 80)
    b = a - rng.normal(0.1, 0.05, 80)  # strongly paired: the paired interval is narrow
    ours = paired_difference(a, b, n_boot=20_000, seed=0)
    lo, hi = _scipy_percentile((a, b), lambda x, y: np.mean(x - y), paired=True)
    assert ours.value == pytest.approx(np.mean(a - b))
    assert ours.low == pytest.approx(lo, abs=0.03 * (hi - lo))
    assert ours.high == pytest.approx(hi, abs=0.03 * (hi - lo))
    ours = independent_difference(a, b, n_boot=20_000, seed=0)
    lo, hi = _scipy_percentile((a, b), lambda x, y: np.mean(x) - np.mean(y), paired=False)
    assert ours.low == pytest.approx(lo, abs=0.03 * (hi - lo))
    assert ours.high == pytest.approx(hi, abs=0.03 * (hi - lo))
    with pytest.raises(ValueError, match="align"):
        paired_difference(a, b[:-1])
