"""Tests for sae_med.sae: estimators, init, fast path vs naive path, folding, IO, interop."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from sae_med.sae.base import SAECheckpointError
from sae_med.sae.io import (
    from_gemma_scope_2,
    from_gemma_scope_npz,
    from_sae_lens,
    load_any_sae,
    sae_format,
    save_gemma_scope_2,
    to_sae_lens,
)
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.sae.kernels import HeavisideFn, JumpReLUFn, pre_acts

# seeding comes from conftest's autouse fixture
pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_like_sae(d_model: int = 16, d_sae: int = 48, bandwidth: float = 0.05) -> JumpReLUSAE:
    """An SAE with non-trivial biases and thresholds, so ~1/4 of latents fire."""
    sae = JumpReLUSAE(d_model, d_sae, bandwidth=bandwidth, init_threshold=0.3)
    with torch.no_grad():
        sae.W_enc.add_(0.1 * torch.randn_like(sae.W_enc))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae))
        sae.b_dec.copy_(0.1 * torch.randn(d_model))
        sae.log_threshold.copy_(torch.log(0.2 + 0.3 * torch.rand(d_sae)))
    return sae


# ---- straight-through estimators ------------------------------------------------------

def test_jumprelu_ste_matches_hand_computed():
    eps = 0.01
    theta = torch.tensor([1.0, 1.0, 1.0, 1.0], requires_grad=True)
    # in band & active, in band & inactive, far above, far below
    z = torch.tensor([[1.003, 0.997, 2.0, 0.5]], requires_grad=True)
    f = JumpReLUFn.apply(z, theta, eps)
    assert torch.equal(f.detach(), torch.tensor([[1.003, 0.0, 2.0, 0.0]]))
    f.sum().backward()
    # df/dz = H(z - theta); df/dtheta = -(theta/eps) K((z - theta)/eps)
    assert torch.equal(z.grad, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    assert torch.allclose(theta.grad, torch.tensor([-100.0, -100.0, 0.0, 0.0]))


def test_jumprelu_ste_scales_with_theta_and_upstream_grad_and_sums_batch():
    eps = 0.1
    theta = torch.tensor([2.0, 0.5], requires_grad=True)
    z = torch.tensor([[2.01, 0.46], [1.96, 0.9]], requires_grad=True)
    up = torch.tensor([[3.0, -1.0], [0.5, 7.0]])
    (JumpReLUFn.apply(z, theta, eps) * up).sum().backward()
    # theta0: both rows in band: -(2/0.1)*(3 + 0.5); theta1: row 0 in band: -(0.5/0.1)*(-1)
    assert torch.allclose(theta.grad, torch.tensor([-70.0, 5.0]))
    assert torch.equal(z.grad, torch.tensor([[3.0, 0.0], [0.0, 7.0]]))


def test_heaviside_ste_matches_hand_computed():
    eps = 0.01
    theta = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    z = torch.tensor([[1.004, 0.996, 3.0], [1.0, 0.0, 1.002]], requires_grad=True)
    h = HeavisideFn.apply(z, theta, eps)
    assert torch.equal(h.detach(), torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    (2.0 * h).sum().backward()
    # dH/dtheta = -(1/eps) K(.) summed over batch, times upstream 2; no gradient to z
    assert torch.allclose(theta.grad, torch.tensor([-400.0, -200.0, -200.0]))
    assert z.grad is None or torch.count_nonzero(z.grad) == 0


# ---- init and decoder helpers ----------------------------------------------------------

def test_init():
    sae = JumpReLUSAE(8, 32, init_threshold=0.001)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32))
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    assert torch.count_nonzero(sae.b_enc) == 0 and torch.count_nonzero(sae.b_dec) == 0
    assert torch.allclose(sae.threshold, torch.full((32,), 0.001))
    assert sae.log_threshold.dtype == torch.float32


def test_unit_norm_and_parallel_grad_removal():
    sae = JumpReLUSAE(8, 32)
    with torch.no_grad():  # rows of norm != 1: the projection must divide by |w|^2
        sae.W_dec.mul_(torch.rand(32, 1) + 0.5)
    g = torch.randn(32, 8)
    sae.W_dec.grad = g.clone()
    sae.remove_parallel_grad_()
    W = sae.W_dec.detach()
    expected = g - ((g * W).sum(1) / (W * W).sum(1)).unsqueeze(1) * W
    assert torch.allclose(sae.W_dec.grad, expected, atol=1e-6)
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(32), atol=1e-6)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.unit_norm_decoder_()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32))


def test_threshold_stays_fp32_under_bf16():
    sae = JumpReLUSAE(8, 32).to(torch.bfloat16)
    assert sae.W_enc.dtype == torch.bfloat16 and sae.log_threshold.dtype == torch.float32
    sae = JumpReLUSAE(8, 32, bandwidth=0.5, init_threshold=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(torch.randn(4, 8))
        loss = out.x_hat.float().pow(2).sum() + out.l0
    loss.backward()
    assert sae.log_threshold.grad.dtype == torch.float32
    assert torch.isfinite(sae.log_threshold.grad).all()


def test_scoring_latents_are_encode_as_csr():
    sae = _trained_like_sae()
    x = torch.randn(64, 16)
    with torch.no_grad():
        dense = sae.encode(x)
    csr = sae.latents(x)
    assert csr.layout == torch.sparse_csr and 0 < csr.values().numel() < dense.numel()
    assert torch.equal(csr.to_dense(), dense)  # the same active set and values, exactly
    assert torch.allclose(sae.decode(csr), sae.decode(dense), atol=1e-5)
    bf16 = copy.deepcopy(sae).to(torch.bfloat16)  # CSR products are fp32-only on CPU
    assert bf16.latents(x.bfloat16()).layout == torch.strided


def test_pre_acts_is_the_encoder_product_and_its_gradient():
    sae = _trained_like_sae()
    x = torch.randn(64, 16, requires_grad=True)
    z = pre_acts(x, sae.W_enc, sae.b_enc)  # oneDNN's linear where torch has it
    ref = x.detach().double() @ sae.W_enc.detach().double() + sae.b_enc.detach().double()
    torch.testing.assert_close(z.double(), ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(z)
    z.backward(g)
    gd = g.double()
    tol = {"rtol": 1e-5, "atol": 1e-5}  # fp32 products against fp64 ones
    torch.testing.assert_close(x.grad.double(), gd @ sae.W_enc.detach().double().t(), **tol)
    torch.testing.assert_close(sae.W_enc.grad.double(), x.detach().double().t() @ gd, **tol)
    torch.testing.assert_close(sae.b_enc.grad.double(), gd.sum(0), **tol)
    assert sae.W_enc.grad.stride() == sae.W_enc.stride()  # built in the parameter's layout


# ---- fast path vs naive ----------------------------------------------------------------

@pytest.mark.parametrize("x_requires_grad", [False, True])
def test_fast_path_matches_naive(x_requires_grad: bool):
    sae = _trained_like_sae()
    x = torch.randn(64, 16)
    grads, outs = [], []
    for fast in (False, True):
        sae.zero_grad(set_to_none=True)
        xin = x.clone().requires_grad_(x_requires_grad)
        out = sae(xin, fast=fast)
        loss = (out.x_hat - xin).pow(2).sum(-1).mean() + 0.7 * (out.l0 / 5.0 - 1) ** 2
        loss.backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()}
                     | ({"x": xin.grad.clone()} if x_requires_grad else {}))
    dense, fast = outs
    assert fast.acts.layout == torch.sparse_csr
    assert torch.allclose(dense.x_hat, fast.x_hat, atol=1e-5)
    assert torch.allclose(dense.l0, fast.l0)
    assert torch.allclose(dense.acts, fast.acts.to_dense(), atol=1e-6)
    # the band must be exercised for the theta gradient to be a real check
    band = ((dense.pre_acts - sae.threshold).abs() < sae.bandwidth / 2).sum()
    assert band > 10 and 0 < dense.l0 < 48
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5), name


# ---- normalisation folding and checkpoints --------------------------------------------

def test_folded_sae_on_raw_x_matches_unfolded_on_scaled_x():
    sae = _trained_like_sae()
    scale = 0.037
    sae.input_scale.fill_(scale)
    x_raw = torch.randn(50, 16) / scale
    ref = sae(x_raw * scale)
    folded = sae.folded()
    assert float(folded.input_scale) == pytest.approx(1.0)
    out = folded(x_raw)
    assert torch.allclose(out.x_hat, ref.x_hat / scale, rtol=1e-4, atol=1e-4 / scale)
    assert torch.equal(out.acts > 0, ref.acts > 0)
    assert torch.allclose(out.acts, ref.acts / scale, rtol=1e-4, atol=1e-3)
    assert torch.allclose(folded.W_dec.norm(dim=1), torch.ones(48))


def test_save_load_roundtrip_folds_scale(tmp_path):
    sae = _trained_like_sae()
    sae.input_scale.fill_(0.25)
    sae.save(tmp_path / "s", metadata={"l0_target": 20})
    loaded = JumpReLUSAE.load(tmp_path / "s")
    x = torch.randn(30, 16) * 4
    ref = sae(x * 0.25)
    out = loaded(x)
    assert torch.allclose(out.x_hat, ref.x_hat / 0.25, atol=1e-4)
    assert torch.equal(out.acts > 0, ref.acts > 0)
    assert loaded.bandwidth == sae.bandwidth
    # W_enc keeps the transposed storage the sparse backward writes its gradient in
    assert sae.W_enc.t().is_contiguous() and loaded.W_enc.t().is_contiguous()


def test_load_detects_corruption_and_missing_files(tmp_path):
    sae = _trained_like_sae()
    d = sae.save(tmp_path / "s")
    weights = d / "sae.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SAECheckpointError, match="sae.safetensors.*corrupted"):
        JumpReLUSAE.load(d)
    weights.unlink()
    with pytest.raises(SAECheckpointError, match="sae.safetensors"):
        JumpReLUSAE.load(d)
    with pytest.raises(SAECheckpointError, match="cfg.json"):
        JumpReLUSAE.load(tmp_path / "nothing")


# ---- interop ----------------------------------------------------------------------------

def test_from_gemma_scope_npz(tmp_path):
    d_model, d_sae = 12, 40
    rng = np.random.default_rng(0)
    params = {"W_enc": rng.normal(size=(d_model, d_sae)).astype(np.float32),
              "W_dec": rng.normal(size=(d_sae, d_model)).astype(np.float32),
              "b_enc": rng.normal(size=d_sae).astype(np.float32) * 0.1,
              "b_dec": rng.normal(size=d_model).astype(np.float32),
              "threshold": rng.uniform(0.5, 1.5, size=d_sae).astype(np.float32)}
    np.savez(tmp_path / "params.npz", **params)
    sae = from_gemma_scope_npz(tmp_path / "params.npz")
    x = rng.normal(size=(20, d_model)).astype(np.float32)
    # Gemma Scope's reference: pre = x W_enc + b_enc; acts = (pre > threshold) * relu(pre)
    pre = x @ params["W_enc"] + params["b_enc"]
    acts = (pre > params["threshold"]) * np.maximum(pre, 0)
    recon = acts @ params["W_dec"] + params["b_dec"]
    out = sae(torch.from_numpy(x))
    assert np.allclose(out.acts.detach().numpy(), acts, atol=1e-5)
    assert np.allclose(out.x_hat.detach().numpy(), recon, atol=1e-4)
    np.savez(tmp_path / "bad.npz", **{**params, "b_dec": params["b_dec"][:-1]})
    with pytest.raises(SAECheckpointError, match="b_dec"):
        from_gemma_scope_npz(tmp_path / "bad.npz")


def test_gemma_scope_2_files_round_trip_in_their_names(tmp_path):
    """Gemma Scope 2's params.safetensors (lower-case keys, raw activations), as sae-lens's
    gemma_3 loader reads it: written and read back, the SAE encodes as before."""
    from safetensors.torch import load_file, save_file

    sae = _trained_like_sae()
    folder = save_gemma_scope_2(sae, tmp_path / "layer_13", "google/gemma-3-270m", 13)
    raw = load_file(str(folder / "params.safetensors"))
    assert sorted(raw) == ["b_dec", "b_enc", "threshold", "w_dec", "w_enc"]
    assert raw["w_enc"].shape == (sae.d_model, sae.d_sae)
    assert sae_format(folder) == sae_format(folder / "params.safetensors") == "gemma_scope_2"
    x = torch.randn(32, sae.d_model)
    back = load_any_sae(folder)
    assert torch.allclose(back(x).x_hat, sae(x).x_hat, atol=1e-5)
    assert torch.equal(back(x).acts > 0, sae(x).acts > 0)
    save_file({k: v for k, v in raw.items() if k != "threshold"}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SAECheckpointError, match="lacks \\['threshold'\\]"):
        from_gemma_scope_2(tmp_path / "bad.safetensors")


def test_to_sae_lens_encodes_like_ours():
    sae = _trained_like_sae()
    sae.input_scale.fill_(0.5)
    lens = to_sae_lens(sae)
    x = torch.randn(40, 16) * 2
    ours = sae.folded()(x)
    with torch.no_grad():
        theirs = lens.encode(x)
        recon = lens.decode(theirs)
    assert torch.allclose(theirs, ours.acts.detach(), atol=1e-5)
    assert torch.allclose(recon, ours.x_hat.detach(), atol=1e-4)


def test_from_sae_lens_training_sae_with_b_dec_on_input():
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    cfg = JumpReLUTrainingSAEConfig(d_in=16, d_sae=48, jumprelu_bandwidth=0.02,
                                    jumprelu_init_threshold=0.2, apply_b_dec_to_input=True)
    lens = JumpReLUTrainingSAE(cfg)
    with torch.no_grad():
        lens.b_dec.copy_(torch.randn(16) * 0.3)
        lens.b_enc.copy_(torch.randn(48) * 0.05)
    sae = from_sae_lens(lens)
    assert sae.bandwidth == pytest.approx(0.02)
    x = torch.randn(40, 16)
    with torch.no_grad():
        theirs = lens.encode(x)
    ours = sae(x).acts.detach()
    assert torch.count_nonzero(theirs) > 0
    assert torch.allclose(theirs, ours, atol=1e-5)
    back = to_sae_lens(sae)
    with torch.no_grad():
        assert torch.allclose(back.encode(x), theirs, atol=1e-5)


def test_shape_errors():
    sae = JumpReLUSAE(8, 16)
    with pytest.raises(ValueError, match="expects 8"):
        sae(torch.randn(2, 9))
    assert math.isclose(float(sae.input_scale), 1.0)
