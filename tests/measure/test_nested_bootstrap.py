"""The two-level bootstrap (seed replicates, then values within each drawn replicate):
its looped twin, its reduction to the one-level resample with one replicate, and what the
second level buys when replicates differ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_med.measure.bootstrap import (
    bootstrap_mean,
    independent_difference,
    nested_mean_draws,
)


def _looped_nested_draws(x: torch.Tensor, groups: torch.Tensor, n_boot: int,
                         gen: torch.Generator) -> np.ndarray:
    """The naive twin: the same random numbers as :func:`nested_mean_draws`, one replicate
    and one drawn group at a time."""
    members = [x[groups == g] for g in torch.unique(groups)]
    k, m = len(members), max(len(v) for v in members)
    drawn = torch.randint(k, (n_boot, k), generator=gen)
    u = torch.rand(n_boot, k, m, generator=gen, dtype=torch.float64)
    out = np.empty(n_boot)
    for b in range(n_boot):
        picked = []
        for j in range(k):
            vals = members[int(drawn[b, j])]
            picked += [float(vals[int(u[b, j, i] * len(vals))]) for i in range(len(vals))]
        out[b] = np.mean(picked)
    return out


def _seeded_sample(seed_means, per_seed, sd, rng):
    values = np.concatenate([rng.normal(mu, sd, per_seed) for mu in seed_means])
    return values, np.repeat(np.arange(len(seed_means)), per_seed)


def test_nested_draws_equal_their_looped_twin():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=11))
    groups = torch.tensor([5, 5, 2, 2, 2, 2, 9, 5, 9, 2, 5])  # any codes, unequal sizes
    fast = nested_mean_draws(x, groups, 50, torch.Generator().manual_seed(4))
    slow = _looped_nested_draws(x, groups, 50, torch.Generator().manual_seed(4))
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    assert fast.std() > 0


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_one_replicate_is_the_latent_bootstrap(seed):
    """With every value from one seed the two-level interval is the one-level one, draw
    for draw (and so equal to it in expectation)."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.5, 1.0, 12), rng.uniform(0.3, 0.8, 9)
    one = independent_difference(a, b, 300, seed, groups_a=np.full(12, 3),
                                 groups_b=np.zeros(9, int))
    assert one == independent_difference(a, b, 300, seed)
    assert bootstrap_mean(a, 300, seed, groups=np.zeros(12, int)) == bootstrap_mean(a, 300,
                                                                                    seed)
    assert one.low < one.value < one.high


def test_seed_variance_widens_the_interval():
    """Three seeds whose latents sit around 0.6, 0.8 and 1.0 (within-seed sd 0.05): the
    latents alone look precise, but which seeds were trained moves the mean by far more."""
    rng = np.random.default_rng(1)
    a, ga = _seeded_sample([0.6, 0.8, 1.0], 10, 0.05, rng)
    b, gb = _seeded_sample([0.68, 0.68, 0.68], 10, 0.05, rng)
    flat = independent_difference(a, b, 2000, 0)
    nested = independent_difference(a, b, 2000, 0, groups_a=ga, groups_b=gb)
    assert nested.value == flat.value
    assert nested.high - nested.low > 3 * (flat.high - flat.low)
    assert flat.excludes_zero and not nested.excludes_zero
    # where seeds agree, the second level adds little
    same, gs = _seeded_sample([0.8, 0.8, 0.8], 10, 0.05, rng)
    flat_same = bootstrap_mean(same, 2000, 0)
    nested_same = bootstrap_mean(same, 2000, 0, groups=gs)
    assert nested_same.high - nested_same.low < 1.6 * (flat_same.high - flat_same.low)


def test_two_levels_cover_the_family_mean_where_one_level_does_not():
    """Seed means drawn around a family mean of 0.7 (sd 0.1), latents around each (sd
    0.05), 3 seeds x 10 latents: the latent-only interval rarely covers 0.7; resampling
    seeds first covers it far more often."""
    rng = np.random.default_rng(2)
    covered = {"latents": 0, "seeds then latents": 0}
    n_sim = 150
    for i in range(n_sim):
        values, groups = _seeded_sample(rng.normal(0.7, 0.1, 3), 10, 0.05, rng)
        for key, g in (("latents", None), ("seeds then latents", groups)):
            iv = bootstrap_mean(values, 400, i, groups=g)
            covered[key] += iv.low <= 0.7 <= iv.high
    assert covered["latents"] / n_sim < 0.5
    assert covered["seeds then latents"] / n_sim > covered["latents"] / n_sim + 0.25


def test_groups_follow_their_values_when_nans_are_dropped():
    values = [0.2, np.nan, 0.4, 0.9, np.nan, 1.0]
    groups = [0, 1, 0, 1, 1, 1]
    kept = bootstrap_mean([0.2, 0.4, 0.9, 1.0], 300, 0, groups=[0, 0, 1, 1])
    assert bootstrap_mean(values, 300, 0, groups=groups) == kept
    with pytest.raises(ValueError, match="groups"):
        bootstrap_mean(values, 300, 0, groups=[0, 1])
