"""Damage diagnostics on a tiny random Gemma-3 (known answers) and their arithmetic."""

from __future__ import annotations

import pytest
import torch

from sae_med.measure.diagnose import (
    breakdown,
    decile_edges,
    dimension_damage,
    error_subspace,
    massive_dimensions,
    mean_ablation_ce,
    random_error,
    random_error_damage,
    token_damage,
    token_frequency,
)

LAYER = 1


@pytest.fixture(scope="module")
def tiny():
    """A 3-block Gemma-3 with random weights (from a config) and two token batches."""
    from types import SimpleNamespace

    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from sae_med.lm.model import LanguageModel, TokenBatch

    torch.manual_seed(0)
    hf = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        initializer_range=0.2, pad_token_id=0, eos_token_id=1, bos_token_id=2))
    lm = LanguageModel(hf, SimpleNamespace(bos_token_id=2, eos_token_id=1, pad_token_id=0),
                       "tiny", "random")
    g = torch.Generator().manual_seed(1)
    batches = []
    for n in (3, 2):
        tokens = torch.randint(3, 97, (n, 12), generator=g)
        tokens[:, 0] = 2
        attn = torch.ones_like(tokens)
        batches.append(TokenBatch(tokens, attn, tokens != 2))
    return lm, batches


def _shrink(x):
    return 0.6 * x


def test_a_perfect_reconstruction_does_no_damage_anywhere(tiny):
    lm, batches = tiny
    d = token_damage(lm, batches, LAYER, lambda x: x)
    assert len(d.delta_ce) == 5 * 11 - 5  # every position but BOS's prediction
    assert d.delta_ce.abs().max() < 1e-5 and d.kl.abs().max() < 1e-5
    for key, edges in ((d.position, [1, 4, 8, 11]), (d.norm, decile_edges(d.norm))):
        assert all(abs(b.delta_ce) < 1e-5 for b in breakdown(d, key, edges) if b.n_tokens)
    zero_err = random_error(lambda x: x, seed=0)
    x = torch.randn(7, 32)
    torch.testing.assert_close(zero_err(x), x)  # zero-norm error stays zero
    assert dimension_damage(lm, batches, LAYER, lambda x: x, [0, 1]).delta_ce_full < 1e-5


def test_breakdown_partitions_the_damage(tiny):
    lm, batches = tiny
    d = token_damage(lm, batches, LAYER, _shrink)
    assert d.kl.mean() > 1e-3 and d.delta_ce.abs().mean() > 1e-3  # the shrink really acts
    bins = breakdown(d, d.position, [1, 3, 6, 11])
    assert sum(b.n_tokens for b in bins) == len(d.delta_ce)
    assert sum(b.share for b in bins) == pytest.approx(1.0)
    first = d.delta_ce[(d.position >= 1) & (d.position < 3)].double().mean()
    assert bins[0].delta_ce == pytest.approx(float(first))
    freq = token_frequency(torch.tensor([3, 3, 4, 5]), 8)
    assert freq.tolist() == [0, 0, 0, 0.5, 0.25, 0.25, 0, 0]


def test_correcting_every_dimension_removes_all_damage(tiny):
    lm, batches = tiny
    out = dimension_damage(lm, batches, LAYER, _shrink, list(range(32)))
    assert abs(out.delta_ce_full) > 1e-3 and abs(out.delta_ce_without) < 1e-5
    assert out.error_share == pytest.approx(1.0)
    part = dimension_damage(lm, batches, LAYER, _shrink, [0, 5])
    assert 0 < part.error_share < 1 and part.delta_ce_full == pytest.approx(out.delta_ce_full)
    x = torch.zeros(4, 8)
    x[:, 3], x[:, 6] = 100.0, -50.0
    assert massive_dimensions(x, 2) == [3, 6]


def test_random_error_keeps_norms_and_subspace():
    g = torch.Generator().manual_seed(0)
    plane = torch.linalg.qr(torch.randn(16, 2, generator=g))[0]  # (16, 2) orthonormal
    errors = torch.randn(200, 2, generator=g) @ plane.T
    basis = error_subspace(errors)
    assert basis.shape == (16, 2)
    torch.testing.assert_close(basis @ basis.T @ plane, plane, atol=1e-5, rtol=1e-5)
    x = torch.randn(50, 16, generator=g)
    fn = random_error(_shrink, seed=1, basis=basis)
    eps = fn(x) - x
    torch.testing.assert_close(eps.norm(dim=-1), (0.4 * x).norm(dim=-1))
    torch.testing.assert_close(eps @ basis @ basis.T, eps, atol=1e-5, rtol=1e-4)


def test_random_error_and_mean_ablation_baselines_run(tiny):
    lm, batches = tiny
    xs = torch.cat([lm.resid(b.tokens, b.attention_mask, LAYER)[b.keep] for b in batches])
    out = random_error_damage(lm, batches, LAYER, _shrink, xs - _shrink(xs), seed=0)
    assert min(abs(out.sae), abs(out.isotropic), abs(out.in_subspace)) > 1e-4
    assert 1 <= out.subspace_dim <= 32
    mean = xs.mean(0)
    expected = token_damage(lm, batches, LAYER, lambda x: mean.expand_as(x)).delta_ce.mean()
    assert mean_ablation_ce(lm, batches, LAYER, mean) == pytest.approx(float(expected))


def test_diagnose_sae_known_answers(tiny):
    from sae_med.measure.diagnose import diagnose_sae

    lm, batches = tiny
    xs = torch.cat([lm.resid(b.tokens, b.attention_mask, LAYER)[b.keep] for b in batches])
    toks = torch.cat([b.tokens[b.keep] for b in batches])
    perfect = diagnose_sae(lm, batches, LAYER, lambda x: x, xs, toks)
    assert perfect.loss_recovered_vs_zero == pytest.approx(1.0, abs=1e-5)
    assert perfect.loss_recovered_vs_mean == pytest.approx(1.0, abs=1e-4)
    assert perfect.random.isotropic == pytest.approx(0.0, abs=1e-5)
    for bins in (perfect.by_position, perfect.by_norm_decile, perfect.by_frequency):
        assert sum(b.n_tokens for b in bins) == perfect.n_tokens
        assert all(abs(b.delta_ce) < 1e-5 for b in bins if b.n_tokens)
    shrunk = diagnose_sae(lm, batches, LAYER, _shrink, xs, toks)
    assert shrunk.ce_spliced != pytest.approx(shrunk.ce_clean, abs=1e-4)
    assert len(shrunk.massive.dims) == 4 and 0 < shrunk.massive.error_share < 1


def test_diagnosing_two_saes_together_is_diagnosing_each_alone(tiny):
    """diagnose_saes shares the clean and zero passes across SAEs; nothing else changes."""
    from sae_med.measure.diagnose import Subject, diagnose_sae, diagnose_saes

    lm, batches = tiny
    xs = torch.cat([lm.resid(b.tokens, b.attention_mask, LAYER)[b.keep] for b in batches])
    toks = torch.cat([b.tokens[b.keep] for b in batches])
    both = diagnose_saes(lm, batches, LAYER, {"a": Subject(_shrink, xs, toks),
                                               "b": Subject(lambda x: 0.9 * x, xs[::2],
                                                            toks)}, seed=3)
    # repr: empty bins hold NaN, which == would call different
    assert repr(both["a"]) == repr(diagnose_sae(lm, batches, LAYER, _shrink, xs, toks, seed=3))
    assert repr(both["b"]) == repr(diagnose_sae(lm, batches, LAYER, lambda x: 0.9 * x,
                                                xs[::2], toks, seed=3))
    assert both["a"].ce_spliced != both["b"].ce_spliced
