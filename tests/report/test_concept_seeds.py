"""The concept claim's interval holds seed variance: each side resamples its seed
replicates, then latents within each drawn seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sae_med.interpret.autointerp import REPLICATE, compare_scores
from sae_med.measure.bootstrap import independent_difference
from sae_med.report.claims import CONCEPT, concept_verdict


def _table(seed_means, per_seed=8, sd=0.02, rng=None):
    """Latent scores around each seed's mean, with their seed in the replicate column."""
    rng = rng or np.random.default_rng(0)
    return pd.DataFrame({
        "detection_auroc": np.concatenate([rng.normal(m, sd, per_seed) for m in seed_means]),
        REPLICATE: np.repeat(np.arange(len(seed_means)), per_seed), "n_failures": 0})


def test_seeds_that_disagree_leave_the_concept_claim_unsupported():
    """The domain's three seeds average 0.7 over the broad side's 0.6, but one seed sits
    below it: the latents alone would support the claim, the seeds do not."""
    rng = np.random.default_rng(3)
    scores = {"medical": _table([0.55, 0.75, 0.8], rng=rng),
              "broad": _table([0.6, 0.6, 0.6], rng=rng)}
    pooled = {n: f.drop(columns=REPLICATE) for n, f in scores.items()}
    assert concept_verdict(pooled, pd.DataFrame(), "medical", "broad") == "supported"
    assert concept_verdict(scores, pd.DataFrame(), "medical", "broad") == "not supported"
    # seeds that agree keep the claim supported
    agree = {"medical": _table([0.7, 0.7, 0.7], rng=rng), "broad": scores["broad"]}
    assert concept_verdict(agree, pd.DataFrame(), "medical", "broad") == "supported"


def test_the_concept_interval_is_the_two_level_difference():
    rng = np.random.default_rng(4)
    scores = {"medical": _table([0.6, 0.8, 0.9], rng=rng), "broad": _table([0.5, 0.55],
                                                                          rng=rng)}
    row = compare_scores(scores, CONCEPT.metric, 500, 2).set_index("SAE").loc[
        "medical − broad"]
    a, b = scores["medical"], scores["broad"]
    want = independent_difference(a[CONCEPT.metric], b[CONCEPT.metric], 500, 2,
                                  groups_a=a[REPLICATE], groups_b=b[REPLICATE])
    assert (row["mean"], row["ci_low"], row["ci_high"]) == tuple(want[:3])
    flat = independent_difference(a[CONCEPT.metric], b[CONCEPT.metric], 500, 2)
    assert want.high - want.low > 2 * (flat.high - flat.low)
    assert CONCEPT.version >= 2  # the rule changed after version 1 was recorded
