"""Known answers for sae_med.measure.bootstrap, and a cross-check against scipy.stats.bootstrap."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
import torch
from scipy import stats
from test_metrics import _doc_stats

from sae_med.measure.bootstrap import (
    bootstrap_ci,
    bootstrap_mean,
    doc_resample,
    group_counts,
    independent_difference,
    paired_difference,
    percentile_interval,
    resample_indices,
    statistic_draws,
)
from sae_med.measure.metrics import metrics_from_doc_sums


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


# ------------------------------------------------------------------ document groups

class DocValues(NamedTuple):
    """Per-document sums of a plain mean: documents and their values."""

    n: torch.Tensor
    total: torch.Tensor


def _mean(s: DocValues) -> dict[str, float]:
    return {"mean": float(s.total.sum() / s.n.sum())}


def clustered(n_groups: int, size: int, rho: float, seed: int = 0
              ) -> tuple[DocValues, torch.Tensor]:
    """Per-document values u_g + e_d with intra-group correlation ``rho`` (unit variance),
    ``size`` documents per group, and each document's group."""
    g = torch.Generator().manual_seed(seed)
    group = torch.arange(n_groups).repeat_interleave(size)
    u = torch.randn(n_groups, generator=g, dtype=torch.float64) * math.sqrt(rho)
    e = torch.randn(len(group), generator=g, dtype=torch.float64) * math.sqrt(1 - rho)
    return DocValues(torch.ones(len(group), dtype=torch.float64), u[group] + e), group


def width(d) -> float:
    iv = percentile_interval(d)
    return iv.high - iv.low


def test_group_counts_are_the_naive_loop():
    """The vectorised draw equals drawing each replicate's groups with
    :func:`resample_indices` and counting every document as often as its group."""
    group = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    naive = torch.stack([torch.bincount(idx, minlength=4)[group]
                         for idx in resample_indices(4, 9, seed=11)]).double()
    assert torch.equal(group_counts(group, 9, seed=11), naive)


def test_one_document_per_group_is_the_document_bootstrap():
    s, _ = clustered(30, 1, 0.0)
    codes = torch.arange(30) * 7 + 3  # distinct codes, in document order: own groups
    grouped = doc_resample([torch.arange(30)], 200, seed=2, group_of=codes)
    plain = doc_resample([torch.arange(30)], 200, seed=2)
    assert grouped.n_groups == plain.n_groups == 30
    assert torch.equal(grouped.counts, plain.counts)
    ref = bootstrap_ci(s, lambda x: _mean(x)["mean"], 200, seed=2)
    assert percentile_interval(statistic_draws(s, _mean, grouped.counts)["mean"]) == ref


def test_group_bootstrap_widens_by_the_design_effect():
    """Documents correlated within groups: the group bootstrap's variance of the mean is
    the document bootstrap's times the sample design effect m·Var(group means)/Var(docs)
    (≈ 1 + (m − 1)ρ = 5.5 here), so its interval is √deff wider."""
    n_groups, size, rho = 120, 10, 0.5
    s, group = clustered(n_groups, size, rho)
    ids = [torch.arange(len(group))]
    by_group = statistic_draws(s, _mean, doc_resample(ids, 2000, 3, group_of=group).counts)
    by_doc = statistic_draws(s, _mean, doc_resample(ids, 2000, 3).counts)
    v = s.total
    deff = size * float(v.reshape(n_groups, size).mean(1).var(unbiased=False)) \
        / float(v.var(unbiased=False))
    assert deff == pytest.approx(1 + (size - 1) * rho, rel=0.3)  # the sample's ρ ≈ 0.5
    assert width(by_group["mean"]) / width(by_doc["mean"]) == pytest.approx(
        math.sqrt(deff), rel=0.1)
    assert by_group["mean"].point == by_doc["mean"].point


def test_doc_resample_names_a_document_without_group():
    with pytest.raises(ValueError, match="has no group"):
        doc_resample([torch.arange(5)], 10, 0, group_of=torch.zeros(3))
