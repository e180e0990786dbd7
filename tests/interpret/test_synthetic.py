"""Synthetic activations with planted features: the generator follows its spec, and the
package's recovery and absorption measures track the planted truth across settings; the
trainer finds the planted directions; chapter 0 runs in under a minute."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from sae_med.config import ConfigError, load_config
from sae_med.experiment import recipe_config, train_synthetic
from sae_med.interpret.synthetic import (
    SyntheticBatch,
    SyntheticSpec,
    absorption_table,
    feature_roles,
    plant,
    recovery,
    sample,
    score_sae,
    synthetic_config,
    true_l0,
    truth_sae,
)
from sae_med.report.book import PROJECT_ROOT

SMALL = SyntheticSpec(d_model=32, n_features=24, n_hierarchies=3, n_correlated=3,
                      freq_min=0.02, freq_max=0.1)


def test_sample_follows_the_planted_spec():
    truth = plant(SMALL)
    batch = sample(truth, 40_000, seed=0)
    on = batch.codes > 0
    measured = on.float().mean(0)
    assert torch.allclose(measured, truth.frequency, atol=0.01)  # 3 sd at p = 0.1
    for parent, child in truth.hierarchy:
        assert not (on[:, child] & ~on[:, parent]).any()  # a child only with its parent
    for leader, follower in truth.correlated:
        both = (on[:, leader] & on[:, follower]).sum() / on[:, leader].sum()
        assert abs(float(both) - SMALL.co_fire) < 0.1 + float(truth.frequency[follower])
    assert torch.allclose(truth.directions.norm(dim=1), torch.ones(SMALL.n_features))
    again = sample(plant(SMALL), 40_000, seed=0)
    assert torch.equal(again.acts, batch.acts)  # seeded
    assert not torch.equal(sample(truth, 100, seed=1).acts, batch.acts[:100])


def test_bad_specs_are_refused_naming_the_field():
    for bad, field in (({"freq_min": 0.5, "freq_max": 0.1}, "freq_min"),
                       ({"n_features": 8, "n_hierarchies": 3, "n_correlated": 3},
                        "n_hierarchies"),
                       ({"child_given_parent": (0.2, 0.3)}, "child_given_parent")):
        with pytest.raises(ConfigError, match=f"synthetic.{field}"):
            SyntheticSpec(**bad)


def test_the_truth_sae_scores_as_the_truth():
    truth = plant(SMALL)
    batch = sample(truth, 8192, seed=1)
    score = score_sae(truth_sae(truth), truth, batch)
    true_l0 = float((batch.codes > 0).sum(1).float().mean())
    noise_share = SMALL.noise ** 2 * SMALL.d_model / float(batch.acts.var(0).sum())
    assert score.recovered_share == 1.0 and score.dead_frac == 0.0
    assert score.l0 == pytest.approx(true_l0, rel=0.02)
    assert score.fve == pytest.approx(1 - noise_share, abs=0.01)


def _decoder_with_cosines(truth, cosines: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Decoder rows at a planted cosine to each direction, plus as many random rows."""
    d = truth.directions
    u = torch.randn(d.shape, generator=g)
    u -= (u * d).sum(1, keepdim=True) * d  # orthogonal to its own direction
    u /= u.norm(dim=1, keepdim=True)
    rows = cosines[:, None] * d + (1 - cosines[:, None] ** 2).sqrt() * u
    distractors = torch.randn(d.shape, generator=g)
    return torch.cat([rows, distractors / distractors.norm(dim=1, keepdim=True)])


def test_measured_recovery_tracks_the_planted_cosines():
    planted, measured, shares = [], [], []
    for seed in range(4):
        truth = plant(dataclasses.replace(SMALL, d_model=128, seed=seed))
        g = torch.Generator().manual_seed(seed)
        cos = 0.5 + 0.5 * torch.rand(SMALL.n_features, generator=g)
        rec = recovery(_decoder_with_cosines(truth, cos, g), truth)
        planted.append(cos)
        measured.append(rec.best_cosine)
        shares.append((float((cos >= 0.9).float().mean()), rec.share))
    planted, measured = torch.cat(planted), torch.cat(measured)
    assert np.corrcoef(planted, measured)[0, 1] >= 0.9
    # a random row can only raise a best cosine, never lower it, and rarely by much
    assert (measured >= planted - 1e-5).all() and (measured - planted).median() < 0.01
    assert all(abs(p - m) <= 1 / SMALL.n_features + 1e-9 for p, m in shares)


def test_a_feature_held_by_two_latents_counts_as_split():
    truth = plant(SMALL)
    one = recovery(truth.directions, truth)
    two = recovery(torch.cat([truth.directions, truth.directions[:5]]), truth)
    assert one.n_at_bar.tolist() == [1] * SMALL.n_features
    assert two.n_at_bar.tolist() == [2] * 5 + [1] * (SMALL.n_features - 5)


def test_recovery_carries_its_bar():
    truth = plant(SMALL)
    assert recovery(truth.directions, truth).at == 0.9
    assert recovery(truth.directions, truth, at=0.8).at == 0.8


def test_each_planted_feature_has_its_role():
    roles = feature_roles(plant(SMALL))  # 3 parent/child pairs, then 3 correlated pairs
    assert roles == (("parent",) * 3 + ("child",) * 3 + ("correlated pair",) * 6
                     + ("independent",) * (SMALL.n_features - 12))


def test_the_true_l0_counts_the_active_features_per_row():
    codes = torch.tensor([[0.0, 1.2, 0.3], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    assert true_l0(SyntheticBatch(torch.zeros(3, 4), codes)) == pytest.approx(1.0)


def test_measured_absorption_tracks_the_planted_child_share():
    """The truth SAE with each child absorbing its parent: the measured absorption rate is
    the share of the parent's rows where the child fires; without absorption it is ~0."""
    planted, measured, clean = [], [], []
    for seed, probs in enumerate([(0.1, 0.25, 0.4), (0.15, 0.3, 0.4), (0.05, 0.2, 0.35)]):
        spec = dataclasses.replace(SMALL, child_given_parent=probs, seed=seed)
        truth = plant(spec)
        batch = sample(truth, 30_000, seed=1)
        absorbed = absorption_table(truth_sae(truth, truth.hierarchy), truth, batch)
        planted += list(probs)
        measured += absorbed.sort_values("child").absorption_rate.tolist()
        clean += absorption_table(truth_sae(truth), truth, batch).absorption_rate.tolist()
    assert len(measured) == len(planted) == 9
    assert np.corrcoef(planted, measured)[0, 1] >= 0.9
    assert np.abs(np.array(planted) - measured).max() < 0.06
    assert max(clean) < 0.02


def test_the_trainer_recovers_the_planted_features(tmp_path):
    recipe = load_config(PROJECT_ROOT / "configs" / "default.yaml")
    cfg = synthetic_config(load_config(PROJECT_ROOT / "configs" / "smoke.yaml",
                                       ["train.device=cpu"]),
                           width=128, l0_targets=(2.0,), n_tokens=200_000, recipe=recipe)
    truth = plant(SyntheticSpec())
    true_l0 = float((sample(truth, 4096, seed=1).codes > 0).sum(1).float().mean())
    [sae] = train_synthetic(cfg, sample(truth, 32_768, seed=0), tmp_path / "run")
    score = score_sae(sae, truth, sample(truth, 4096, seed=1))
    assert score.recovered_share >= 0.8
    assert score.fve >= 0.9
    assert true_l0 < score.l0 < 2.0 * 1.2  # at its target, above the planted L0


def test_the_recipe_is_found_from_anywhere_and_takes_only_sae_and_train_overrides(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the book may run where configs/ is not
    cfg = recipe_config("configs/default.yaml",
                        ["train.lr=0.01", "sae.bandwidth=0.01", "train_corpora=[nowhere]"])
    assert cfg.train.lr == 0.01 and cfg.sae.bandwidth == 0.01
    assert cfg.train_corpora == load_config(PROJECT_ROOT / "configs" / "default.yaml"
                                            ).train_corpora


def test_chapter_0_runs_in_under_a_minute(tmp_path):
    from sae_med.report.rerun import run_notebook

    start = time.perf_counter()
    out = run_notebook("00", str(PROJECT_ROOT / "configs" / "smoke.yaml"),
                       [f"output_dir={tmp_path}"], tmp_path / "00.ipynb")
    assert out.exists()
    assert time.perf_counter() - start < 60
