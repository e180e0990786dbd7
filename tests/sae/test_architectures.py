"""The ReLU, TopK, BatchTopK and Matryoshka SAEs against sae-lens's training SAEs (the
reference): the same weights give the same forward, losses and gradients on a fixed batch
in fp32, and the export reloads in sae-lens with the same encodings."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.saes.sae import TrainingSAE, TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from torch import Tensor

from sae_med.config import SAE_ARCHITECTURES, ConfigError, SAEConfig, load_config
from sae_med.sae.base import LinearSAE, SAECheckpointError
from sae_med.sae.factory import CLASSES, build_sae, load_sae, to_sae_lens
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.sae.relu import ReLUSAE
from sae_med.sae.topk import BatchTopKSAE, MatryoshkaSAE, TopKSAE

# seeding comes from conftest's autouse fixture
pytestmark = pytest.mark.usefixtures("one_thread")

D_MODEL, D_SAE, BATCH, K = 32, 64, 48, 6
PREFIXES = (8, 24)
L1_COEFF = 0.3
TOL = {"atol": 1e-5, "rtol": 1e-5}  # fp32, as issue 32 asks
ARCHS = ("relu", "topk", "batchtopk", "matryoshka_batchtopk")
TOPK_FAMILY = ARCHS[1:]
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _ours(arch: str, seed: int = 0) -> LinearSAE:
    """An SAE with untied, non-zero weights, as after some training (unit-norm rows)."""
    gen = torch.Generator().manual_seed(seed)
    sc = SAEConfig(width=D_SAE, l0_targets=(K,), architecture=arch,
                   matryoshka_prefixes=tuple(p / D_SAE for p in PREFIXES))
    sae = build_sae(sc, D_MODEL, K, generator=gen)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn(D_MODEL, D_SAE, generator=gen))
        sae.W_dec.add_(0.3 * torch.randn(D_SAE, D_MODEL, generator=gen))
        sae.unit_norm_decoder_()
        sae.b_enc.copy_(0.2 * torch.randn(D_SAE, generator=gen))
        sae.b_dec.copy_(0.2 * torch.randn(D_MODEL, generator=gen))
        if isinstance(sae, BatchTopKSAE):
            sae.threshold.fill_(0.4)
    return sae


def _lens(sae: LinearSAE, rescale: bool = False) -> TrainingSAE:
    """sae-lens's training SAE of the same architecture holding ``sae``'s weights, with
    b_dec off the input (our parametrisation; sae-lens folds it the same way)."""
    common: dict[str, Any] = {"d_in": D_MODEL, "d_sae": D_SAE, "apply_b_dec_to_input": False}
    if isinstance(sae, ReLUSAE):
        lens: TrainingSAE = StandardTrainingSAE(
            StandardTrainingSAEConfig(**common, l1_coefficient=L1_COEFF))
    else:
        topk = {**common, "k": sae.k, "aux_loss_coefficient": sae.aux_coeff,
                "rescale_acts_by_decoder_norm": rescale}
        if isinstance(sae, MatryoshkaSAE):
            lens = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
                **topk, matryoshka_widths=[*sae.prefixes, D_SAE]))
        elif isinstance(sae, BatchTopKSAE):
            lens = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**topk))
        else:
            lens = TopKTrainingSAE(TopKTrainingSAEConfig(**topk))
    state = {k: getattr(sae, k).detach().clone() for k in PARAMS}
    if isinstance(sae, BatchTopKSAE):
        state["topk_threshold"] = sae.threshold.clone()
    lens.load_state_dict(state)
    return lens


def _batch(n_dead: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, D_MODEL, generator=gen) * 1.5 + 0.3
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[torch.randperm(D_SAE, generator=gen)[:n_dead]] = True
    return x, dead


def _without_parallel(grad: Tensor, W: Tensor) -> Tensor:
    """``grad`` less its component along each row of ``W`` (what the trainer applies)."""
    coef = (grad * W).sum(1, keepdim=True) / W.pow(2).sum(1, keepdim=True)
    return grad - coef * W


def _both_steps(arch: str, n_dead: int, rescale: bool = False, fast: bool = True
                ) -> tuple[LinearSAE, Any, TrainingSAE, Any, Tensor]:
    """One training forward + backward of ours (the sparse path with ``fast``, its naive
    dense twin without) and sae-lens's on the same batch."""
    sae = _ours(arch)
    lens = _lens(sae, rescale)
    x, dead = _batch(n_dead)
    ours = sae.training_loss(x, coeff=L1_COEFF, dead=dead, fast=fast)
    ours.loss.backward()
    step = TrainStepInput(sae_in=x, coefficients={"l1": L1_COEFF}, dead_neuron_mask=dead,
                          n_training_steps=0, is_logging_step=False)
    theirs = lens.training_forward_pass(step)
    theirs.loss.backward()
    return sae, ours, lens, theirs, x


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("n_dead", [5, 40])
@pytest.mark.parametrize("arch", ARCHS)
def test_training_step_matches_sae_lens(arch: str, n_dead: int, fast: bool):
    sae, ours, lens, theirs, x = _both_steps(arch, n_dead, fast=fast)
    acts, pre = lens.encode_with_hidden_pre(x)
    out = sae(x)
    torch.testing.assert_close(out.pre_acts, pre, **TOL)
    torch.testing.assert_close(out.acts, acts, **TOL)
    torch.testing.assert_close(ours.x_hat, theirs.sae_out.detach(), **TOL)
    losses = {k: float(v.detach()) for k, v in theirs.losses.items()}
    inner = sum(v for k, v in losses.items() if k.startswith("inner_mse_loss"))
    assert (arch == "matryoshka_batchtopk") == (inner > 0)
    torch.testing.assert_close(float(ours.inner_mse), float(inner), **TOL)
    torch.testing.assert_close(float(ours.mse), losses["mse_loss"], **TOL)
    torch.testing.assert_close(float(ours.sparsity_loss), losses.get("l1_loss", 0.0), **TOL)
    aux = losses.get("auxiliary_reconstruction_loss", 0.0)
    torch.testing.assert_close(float(ours.aux_loss), aux, **TOL)
    assert (arch != "relu") == (aux > 0)  # AuxK is exercised where the reference has it
    torch.testing.assert_close(float(ours.loss), float(theirs.loss), **TOL)
    for name in PARAMS:
        torch.testing.assert_close(getattr(sae, name).grad, getattr(lens, name).grad,
                                   **TOL, msg=name)
    if isinstance(sae, BatchTopKSAE):  # the inference threshold's EMA moved the same way
        assert float(sae.threshold) != 0.4
        torch.testing.assert_close(sae.threshold, lens.topk_threshold, atol=1e-12, rtol=0)


@pytest.mark.parametrize("arch", TOPK_FAMILY)
def test_sae_lens_default_rescaling_agrees_under_unit_norm_decoder(arch: str):
    """sae-lens's default ``rescale_acts_by_decoder_norm`` divides by norms that the
    trainer keeps at 1: the same forward and loss, and gradients that differ only along
    the decoder rows, which the trainer removes."""
    sae, ours, lens, theirs, _ = _both_steps(arch, n_dead=40, rescale=True)
    torch.testing.assert_close(ours.x_hat, theirs.sae_out.detach(), **TOL)
    torch.testing.assert_close(float(ours.loss), float(theirs.loss), **TOL)
    for name in ("W_enc", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(sae, name).grad, getattr(lens, name).grad, **TOL)
    W = sae.W_dec.detach()
    sae.remove_parallel_grad_()
    torch.testing.assert_close(sae.W_dec.grad, _without_parallel(lens.W_dec.grad, W), **TOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_export_reloads_in_sae_lens_with_equal_encodings(arch: str, tmp_path):
    sae = _ours(arch)
    scale = 0.37
    sae.input_scale.fill_(scale)  # trained on x * scale; the export takes raw x
    x_raw = _batch(0)[0] / scale
    to_sae_lens(sae).save_model(tmp_path)
    lens = SAE.load_from_disk(str(tmp_path))
    expected = {"relu": "standard", "topk": "topk"}.get(arch, "jumprelu")
    assert lens.cfg.architecture() == expected
    with torch.no_grad():
        ours = sae.encode(x_raw * scale) / scale
        theirs = lens.encode(x_raw)
        assert 0 < (ours > 0).sum() < ours.numel()
        torch.testing.assert_close(theirs, ours, **TOL)
        torch.testing.assert_close(lens.decode(theirs), sae.decode(ours * scale) / scale,
                                   atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_folded_on_raw_and_centred_inputs_matches_training_space(arch: str):
    sae = _ours(arch)
    scale, mean = 0.37, torch.randn(D_MODEL)
    sae.input_scale.fill_(scale)
    x_raw = _batch(0)[0] / scale + mean
    folded = sae.folded().fold_input_mean_(mean)
    with torch.no_grad():
        torch.testing.assert_close(folded.encode(x_raw),
                                   sae.encode((x_raw - mean) * scale) / scale, **TOL)
        torch.testing.assert_close(folded(x_raw).x_hat,
                                   sae((x_raw - mean) * scale).x_hat / scale + mean,
                                   atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_roundtrip(arch: str, tmp_path):
    sae = _ours(arch)
    sae.input_scale.fill_(2.0)
    sae.save(tmp_path / "sae", metadata={"l0_target": K})
    back = load_sae(tmp_path / "sae")
    assert type(back) is type(sae) and float(back.input_scale) == 1.0
    assert back.config_dict() == sae.config_dict()
    x = _batch(0)[0]
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), sae.encode(x * 2.0) / 2.0, **TOL)
        csr = back.latents(x)
        assert csr.layout == torch.sparse_csr
        torch.testing.assert_close(back.decode(csr), back.decode(back.encode(x)), **TOL)
    weights = tmp_path / "sae" / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(SAECheckpointError, match="corrupted"):
        load_sae(tmp_path / "sae")


def test_batchtopk_inference_threshold_reproduces_the_batch_top_k():
    """Trained on one batch, the EMA threshold converges to the smallest activation the
    batch top-k keeps, so the inference encoding keeps the same latents (L0 = k)."""
    sae = BatchTopKSAE(D_MODEL, D_SAE, k=K, threshold_lr=0.5)
    x = _batch(0)[0]
    with torch.no_grad():
        train_acts = sae(x).acts
        for _ in range(80):
            sae.observe_(train_acts)
        assert float(sae.threshold) == pytest.approx(float(train_acts[train_acts > 0].min()))
        # a hair below the smallest kept value: the strict z > threshold keeps it
        sae.threshold.mul_(1 - 1e-6)
        infer = sae.encode(x)
    assert torch.equal(infer > 0, train_acts > 0)
    assert float((infer > 0).sum(-1).float().mean()) == K


@pytest.mark.parametrize("crowded", [False, True])
def test_batchtopk_selects_the_batch_top_k_through_its_candidates(crowded: bool):
    """select is the whole batch's top k x batch of relu(z), by candidates or (a row
    holding more than 4k of them) by the fallback."""
    sae = BatchTopKSAE(D_MODEL, 256, 5.0)
    z = torch.randn(BATCH, 256)
    if crowded:
        z[3] += 10.0  # row 3 holds every one of the batch's top entries
    p = sae.select(z)
    expected = z.relu().flatten().topk(int(5.0 * BATCH)).indices.sort().values
    assert torch.equal(p.flat, expected)
    assert (p.rows == 3).all() == crowded


def test_topk_keeps_k_per_row_and_batchtopk_k_per_row_on_average():
    x = _batch(0)[0]
    with torch.no_grad():
        per_row = (_ours("topk")(x).acts != 0).sum(-1)
        batch = (_ours("batchtopk")(x).acts != 0).sum(-1)
    assert per_row.max() <= K and per_row.float().mean() > K - 1
    assert int(batch.sum()) == K * BATCH and batch.min() != batch.max()


def test_build_sae_maps_each_architecture_and_target():
    assert set(CLASSES) == set(SAE_ARCHITECTURES)
    for arch in SAE_ARCHITECTURES:
        sc = SAEConfig(width=128, l0_targets=(12,), architecture=arch)
        sae = build_sae(sc, D_MODEL, 12)
        assert type(sae) is CLASSES[arch] and sae.d_sae == 128
        if arch in TOPK_FAMILY:
            assert sae.k == 12
    mat = build_sae(SAEConfig(width=128, architecture="matryoshka_batchtopk"), D_MODEL, 20)
    assert mat.prefixes == (8, 32)  # the default fractions 1/16, 1/4 of the width


def test_config_validates_architecture_fields():
    with pytest.raises(ConfigError) as err:
        SAEConfig(architecture="gated")  # type: ignore[arg-type]
    assert str(err.value).count("\n") == 0
    assert all(name in str(err.value) for name in SAE_ARCHITECTURES)
    with pytest.raises(ConfigError, match="sae.l0_targets"):
        load_config(None, ["sae.architecture=topk", "sae.l0_targets=[2.5]"])
    with pytest.raises(ConfigError, match="sae.matryoshka_prefixes"):
        load_config(None, ["sae.architecture=matryoshka_batchtopk",
                           "sae.matryoshka_prefixes=[0.5, 0.25]"])
    # the new fields at their defaults leave the config (and every artefact key) unchanged
    assert "architecture" not in load_config(None).to_dict()["sae"]
    assert load_config(None, ["sae.architecture=relu"]).to_dict()["sae"]["architecture"] \
        == "relu"


def test_constructor_errors():
    with pytest.raises(ValueError, match="whole number"):
        TopKSAE(D_MODEL, D_SAE, k=2.5)
    with pytest.raises(ValueError, match="strictly increasing"):
        MatryoshkaSAE(D_MODEL, D_SAE, k=4, prefixes=(24, 8))
    with pytest.raises(NotImplementedError, match="fast path"):
        ReLUSAE(D_MODEL, D_SAE)(torch.randn(2, D_MODEL), fast=True)


def _sparse_data(n: int, gen: torch.Generator, dirs: Tensor) -> Tensor:
    """Rows that are sums of ~4 of ``dirs`` with positive weights: a ground truth an SAE
    of L0 4 can recover."""
    on = torch.rand(n, dirs.shape[0], generator=gen) < 4 / dirs.shape[0]
    return (on * torch.rand(n, dirs.shape[0], generator=gen) * 2) @ dirs


@pytest.mark.parametrize("arch", ARCHS)
def test_training_loss_with_the_decoder_constraint_learns(arch: str):
    """The loop the trainer will run (Adam, parallel gradient removed, rows renormalised)
    recovers sparse data: MSE falls by far, L0 stays at k (at inference too)."""
    gen = torch.Generator().manual_seed(2)
    dirs = torch.nn.functional.normalize(torch.randn(48, 16, generator=gen), dim=1)
    sae = build_sae(SAEConfig(width=64, l0_targets=(4,), architecture=arch,
                              matryoshka_prefixes=(0.125, 0.5)), 16, 4, generator=gen)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    dead = torch.zeros(64, dtype=torch.bool)
    mses = []
    for _ in range(300):
        r = sae.training_loss(_sparse_data(256, gen, dirs), coeff=0.05, dead=dead)
        opt.zero_grad()
        r.loss.backward()
        sae.remove_parallel_grad_()
        opt.step()
        sae.unit_norm_decoder_()
        dead = ~r.fired  # exercises AuxK on whatever did not fire in the last batch
        mses.append(float(r.mse))
    assert mses[-1] < 0.35 * mses[0]  # rows with more than k parts stay approximate
    with torch.no_grad():
        infer_l0 = float((sae.encode(_sparse_data(512, gen, dirs)) > 0).sum(-1).float().mean())
    if arch in TOPK_FAMILY:
        assert float(r.l0) == pytest.approx(4, abs=0.05) and 3 < infer_l0 < 5.5
    else:
        assert infer_l0 < 32  # the L1 penalty turned off half of the latents at least


def test_jumprelu_forward_and_straight_through_gradients_match_sae_lens():
    """The JumpReLU SAE under the trainer's ``l0_penalty`` loss (mse + lambda L0) against
    sae-lens's DeepMind-style training SAE (step loss, no STE to the input). sae-lens
    trains theta itself and we log theta, so our threshold gradient is theta times its."""
    sae = JumpReLUSAE(D_MODEL, D_SAE, bandwidth=0.05, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        sae.log_threshold.copy_(torch.empty(D_SAE).uniform_(0.05, 0.8).log())
        sae.b_enc.copy_(0.2 * torch.randn(D_SAE))
        sae.b_dec.copy_(0.2 * torch.randn(D_MODEL))
    lens = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        d_in=D_MODEL, d_sae=D_SAE, apply_b_dec_to_input=False, jumprelu_bandwidth=0.05,
        jumprelu_sparsity_loss_mode="step", l0_coefficient=L1_COEFF))
    lens.load_state_dict({k: getattr(sae, k).detach().clone() for k in PARAMS}
                         | {"threshold": sae.threshold.detach().clone()})
    x = _batch(0)[0]
    out = sae(x)
    loss = (out.x_hat - x).pow(2).sum(-1).mean() + L1_COEFF * out.l0
    loss.backward()
    theirs = lens.training_forward_pass(TrainStepInput(
        sae_in=x, coefficients={"l0": L1_COEFF}, dead_neuron_mask=None, n_training_steps=0,
        is_logging_step=False))
    theirs.loss.backward()
    band = ((out.pre_acts - sae.threshold).abs() < 0.025).sum()
    assert band > 10 and 0 < float(out.l0) < D_SAE  # the threshold gradient is exercised
    torch.testing.assert_close(out.x_hat, theirs.sae_out, **TOL)
    torch.testing.assert_close(float(loss), float(theirs.loss), **TOL)
    for name in PARAMS:
        torch.testing.assert_close(getattr(sae, name).grad, getattr(lens, name).grad, **TOL)
    torch.testing.assert_close(sae.log_threshold.grad,
                               sae.threshold.detach() * lens.threshold.grad, **TOL)
