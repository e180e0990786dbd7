"""One optimiser step of one SAE: loss terms, kernels, and where it runs.

JumpReLU SAEs step through this module's own loss (MSE + the target-L0 or L0 term, the
sparse CSR kernel, data-parallel ranks); every other architecture through its own
``training_loss`` (:mod:`sae_med.sae.relu`, :mod:`sae_med.sae.topk`), with the same
optimiser, decoder constraint and clipping around it."""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from sae_med import runtime
from sae_med.config import TrainConfig
from sae_med.measure.metrics import centred_sum_of_squares
from sae_med.runtime import all_reduce_sum_, auto_dtype, pick_device, warn_if_bf16_slow
from sae_med.sae.base import LinearSAE
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.sae.relu import ReLUSAE
from sae_med.sae.topk import TopKSAE
from sae_med.train.records import TrainMetrics

log = logging.getLogger(__name__)


SPARSE_MAX_DENSITY = 0.05
"""With ``kernel: auto`` the CSR path is used only while the previous step's L0 was at most
this fraction of the width; denser latents (e.g. right after init, when about half fire) are
faster through plain matmuls."""


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------

FUSED_ADAM_DEVICES = ("cpu", "cuda")

L1_COEFF_START = 0.01
"""A ReLU SAE's L1 coefficient at step 0, on inputs scaled to E||x||^2 = 1: small enough
that the penalty kills no latent before the controller has seen the L0 it gives (a ReLU
latent that never fires gets no gradient and stays dead)."""
L1_CONTROLLER_GAIN = 0.05
"""How fast a ReLU SAE's L1 coefficient follows its target L0: each step multiplies it by
exp(gain * clamp(ln(L0 / target), -1, 1)) (an integral controller on ln lambda), so it can
change e-fold in 20 steps at most."""


class SweepMember:
    """One SAE of the sweep with its optimiser, dead-latent clock and metrics file."""

    def __init__(self, sae: LinearSAE, target: float, tc: TrainConfig, path: Path):
        self.sae, self.target, self.path = sae, target, path
        # Adam updates W_enc through a contiguous (d_sae, d_model) alias of its storage:
        # the fused kernel copies a transposed tensor (and its state) in and out on every
        # step, more than the layout saves (see LinearSAE.W_enc and :meth:`step`).
        self.enc_alias = nn.Parameter(sae.W_enc.data.t()) if sae.W_enc.t().is_contiguous() \
            else sae.W_enc
        others = [self.enc_alias if n == "W_enc" else p for n, p in sae.named_parameters()
                  if n != "log_threshold"]
        groups = [{"params": others, "lr_mult": 1.0}]
        if isinstance(sae, JumpReLUSAE):
            groups.append({"params": [sae.log_threshold], "lr_mult": tc.threshold_lr_mult})
        self.opt = torch.optim.Adam(
            groups, lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
            # one fused kernel instead of a dozen passes per tensor: 6x faster on CPU (a
            # third of the sparse step's time); the same update to rounding
            fused=sae.W_enc.device.type in FUSED_ADAM_DEVICES)
        # Tokens seen when each latent last fired (0: never).
        self.last_fired = torch.zeros(sae.d_sae, dtype=torch.int64,
                                      device=sae.W_enc.device)
        self.last: TrainMetrics | None = None  # the latest logged row
        self.prev_l0 = math.inf  # L0 of the previous step, for the kernel choice
        self.compiled: Any = None  # torch.compile'd dense_terms for this SAE, if enabled
        self.l1_coeff = L1_COEFF_START if isinstance(sae, ReLUSAE) else None
        """A ReLU SAE's L1 coefficient, set by :meth:`follow_target_`; None for the rest."""

    def sparsity_coeff(self, scheduled: float) -> float:
        """This SAE's sparsity coefficient at a step whose scheduled (warmed-up) one is
        ``scheduled``: a ReLU SAE's is its controller's instead."""
        return scheduled if self.l1_coeff is None else self.l1_coeff

    def follow_target_(self, l0: float) -> None:
        """After a step with L0 ``l0``, move a ReLU SAE's L1 coefficient toward its target
        (:data:`L1_CONTROLLER_GAIN`); no L0 at all counts as far below it."""
        if self.l1_coeff is not None:
            err = min(max(math.log(l0 / self.target), -1.0), 1.0) if l0 > 0 else -1.0
            self.l1_coeff *= math.exp(L1_CONTROLLER_GAIN * err)

    def uses_dead_mask(self, tc: TrainConfig) -> bool:
        """Whether this SAE's loss takes the dead latents: JumpReLU's pre-activation loss
        (when on), the TopK family's AuxK."""
        if isinstance(self.sae, JumpReLUSAE):
            return tc.pre_act_loss > 0
        return isinstance(self.sae, TopKSAE) and self.sae.aux_coeff > 0

    def zero_grad(self) -> None:
        """Drop the SAE's gradients (``opt.zero_grad`` would miss W_enc's: Adam holds the
        alias) and the alias's view of the last one."""
        self.sae.zero_grad(set_to_none=True)
        self.enc_alias.grad = None

    def step(self) -> None:
        """One Adam step on the SAE's current gradients."""
        if self.enc_alias is not self.sae.W_enc:
            g = self.sae.W_enc.grad
            self.enc_alias.grad = None if g is None else g.t()
        self.opt.step()

    def state(self) -> dict[str, Any]:
        extra = {"l1_coeff": self.l1_coeff} if self.l1_coeff is not None else {}
        return {"target": self.target, "sae": self.sae.state_dict(),
                "opt": self.opt.state_dict(), "last_fired": self.last_fired,
                "prev_l0": self.prev_l0, **extra}

    def dead(self, tokens: int, window: int) -> Bool[Tensor, " d_sae"]:
        """Latents that have not fired in the last ``window`` of the ``tokens`` trained on
        so far (early in a run, in all of them)."""
        return (tokens - self.last_fired) >= min(window, tokens)

    def load_state(self, st: dict[str, Any]) -> None:
        self.sae.load_state_dict(st["sae"])
        self.opt.load_state_dict(st["opt"])
        self.last_fired.copy_(st["last_fired"])
        self.prev_l0 = float(st["prev_l0"])
        if self.l1_coeff is not None:
            self.l1_coeff = float(st["l1_coeff"])


class StepTerms(NamedTuple):
    """Forward results of one SAE on this rank's rows, before any cross-rank reduction."""

    x_hat: Float[Tensor, "rows d_model"]
    sq_err: Tensor
    """Scalar: mean over rows of sum_dims (x - x_hat)^2."""
    l0: Tensor
    """Scalar: mean over rows of the number of active latents (STE gradient)."""
    fired: Bool[Tensor, " d_sae"]
    """Latents that fired on any row."""


def dense_terms(sae: JumpReLUSAE, x: Float[Tensor, "rows d_model"]) -> StepTerms:
    """The dense forward of one step (the part ``train.compile`` hands to torch.compile)."""
    out = sae(x)
    x_hat = out.x_hat.float()
    return StepTerms(x_hat, (x_hat - x).pow(2).sum(-1).mean(), out.l0.float(),
                     (out.acts > 0).any(0))


def pre_act_term(sae: JumpReLUSAE, x: Float[Tensor, "rows d_model"],
                 dead: Bool[Tensor, " d_sae"]) -> Tensor:
    """Scalar: mean over rows of sum over the ``dead`` latents of relu(theta - z), the
    pre-activation loss before its coefficient. Anthropic weights each latent by its
    decoder norm; decoder rows are kept at unit norm here, so the weight is 1."""
    idx = dead.nonzero().squeeze(1)
    z = x.float() @ sae.W_enc[:, idx].float() + sae.b_enc[idx].float()
    return (sae.threshold[idx] - z).relu().sum(-1).mean()


def sparse_terms(sae: JumpReLUSAE, x: Float[Tensor, "rows d_model"]) -> StepTerms:
    """The CSR fast path's forward of one step (fp32, CPU)."""
    out = sae(x, fast=True)
    x_hat = out.x_hat.float()
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
    fired[out.acts.col_indices()] = True
    return StepTerms(x_hat, (x_hat - x).pow(2).sum(-1).mean(), out.l0.float(), fired)


_COMPILE_OK: bool | None = None


def compile_available() -> bool:
    """Whether torch.compile (inductor) can build and run a forward+backward here; probed
    once per process on a tiny function, because a missing C++ compiler or Triton only
    shows up at the first call."""
    global _COMPILE_OK
    if _COMPILE_OK is None:
        try:
            w = torch.ones(3, requires_grad=True)
            torch.compile(lambda a: (a * w).relu().sum())(torch.ones(3)).backward()
            _COMPILE_OK = w.grad is not None
        except Exception as e:  # noqa: BLE001 - any compiler failure means "run eager"
            log.warning("torch.compile is unusable here (%s: %s); train.compile falls back to "
                        "the eager step", type(e).__name__, str(e).splitlines()[0][:200])
            _COMPILE_OK = False
    return _COMPILE_OK


def clip_grad_norm_(sae: LinearSAE, max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_``, but the gradients are rescaled only when their
    norm exceeds ``max_norm``: torch multiplies by a coefficient clamped to 1 on every
    step (to avoid a host sync), two full passes over each weight gradient for nothing
    on a CPU step where the norm is mostly below the bar. The same gradients to the bit."""
    grads = [p.grad for p in sae.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if norm > max_norm:
        torch.nn.utils.clip_grads_with_norm_(sae.parameters(), max_norm, norm)


class StepResult(NamedTuple):
    """One SAE's optimiser step (:func:`train_step`), detached; every value but ``x_hat``
    is that of the global batch."""

    loss: Tensor
    """Scalar: ``mse + sparsity_loss``."""
    mse: Tensor
    """Scalar: mean over rows of sum_dims (x - x_hat)^2."""
    sparsity_loss: Tensor
    """Scalar: the sparsity term, coefficient included."""
    l0: Tensor
    """Scalar: mean number of active latents per row."""
    x_hat: Float[Tensor, "rows d_model"]
    """The reconstruction of this rank's rows."""
    fired: Bool[Tensor, " d_sae"]
    """Latents that fired on any row."""


def train_step(m: SweepMember, x: Float[Tensor, "rows d_model"], lr: float, coeff: float,
               tc: TrainConfig, fast: bool,
               autocast: contextlib.AbstractContextManager | None = None,
               dead: Bool[Tensor, " d_sae"] | None = None) -> StepResult:
    """One optimiser step of one SAE on the (already scaled) rows ``x`` of this rank.

    In one process ``x`` is the whole batch. Under torchrun each of W ranks holds B/W rows
    of the global batch; the reconstruction term is divided by W and the sparsity term is
    built from the global L0 (one scalar all-reduce) with this rank's share of its gradient,
    so the gradients summed over ranks are exactly those of the global-batch loss.
    ``dead`` (the same on every rank) gets ``tc.pre_act_loss`` times :func:`pre_act_term`,
    which is optimised but, like an auxiliary loss, not part of the reported ``loss``.
    Another architecture steps through :func:`linear_step`.
    """
    if not isinstance(m.sae, JumpReLUSAE):
        return linear_step(m, x, lr, coeff, tc, autocast, dead)
    sae, ws = m.sae, runtime.world_size()
    terms_fn = m.compiled if (m.compiled is not None and not fast) else (
        (lambda x: sparse_terms(sae, x)) if fast else (lambda x: dense_terms(sae, x)))
    with autocast or contextlib.nullcontext():
        t = terms_fn(x)
    mse, l0 = t.sq_err / ws, t.l0
    if ws > 1:
        # the target-L0 penalty is nonlinear in the batch L0: evaluate it at the global L0,
        # while the gradient flows through this rank's rows only (1/W of the total)
        l0_global = runtime.all_reduce_sum_(l0.detach().clone()) / ws
        l0 = l0 / ws + (l0_global - l0 / ws).detach()
    sp = (l0 / m.target - 1) ** 2 if tc.sparsity == "target_l0" else l0
    sp = coeff * sp
    loss = mse + sp
    if dead is not None and bool(dead.any()):
        loss = loss + tc.pre_act_loss * pre_act_term(sae, x, dead) / ws
    for g in m.opt.param_groups:
        g["lr"] = lr * g["lr_mult"]
    m.zero_grad()
    loss.backward()
    mse_sum, fired = mse.detach().reshape(1), t.fired
    if ws > 1:  # one flat all-reduce: gradients, the mse shares and the fired counts
        extra = torch.cat([mse_sum, fired.to(mse_sum.dtype)])
        runtime.all_reduce_grads_(sae.parameters(), extra)
        mse_sum, fired = extra[:1], extra[1:] > 0
    sae.remove_parallel_grad_()
    if tc.grad_clip > 0:
        clip_grad_norm_(sae, tc.grad_clip)
    m.step()
    sae.unit_norm_decoder_()
    mse_g = mse_sum[0]
    sp_g = sp.detach()
    return StepResult(mse_g + sp_g, mse_g, sp_g, l0.detach(), t.x_hat.detach(), fired)


def linear_step(m: SweepMember, x: Float[Tensor, "rows d_model"], lr: float, coeff: float,
                tc: TrainConfig, autocast: contextlib.AbstractContextManager | None = None,
                dead: Bool[Tensor, " d_sae"] | None = None) -> StepResult:
    """One optimiser step of a ReLU or TopK-family SAE (one process) on the scaled rows
    ``x``: its own ``training_loss`` (``coeff`` its L1 coefficient, ``dead`` for AuxK),
    then :func:`train_step`'s decoder constraint, clipping and Adam. The reported ``loss``
    is ``mse`` + the Matryoshka prefixes' MSEs + the L1 term; AuxK is optimised, not
    reported (as JumpReLU's pre-activation loss)."""
    sae = m.sae
    with autocast or contextlib.nullcontext():
        r = sae.training_loss(x, coeff=coeff, dead=dead)
    for g in m.opt.param_groups:
        g["lr"] = lr * g["lr_mult"]
    m.zero_grad()
    r.loss.backward()
    sae.remove_parallel_grad_()
    if tc.grad_clip > 0:
        clip_grad_norm_(sae, tc.grad_clip)
    m.step()
    sae.unit_norm_decoder_()
    return StepResult(r.mse + r.inner_mse + r.sparsity_loss, r.mse, r.sparsity_loss, r.l0,
                      r.x_hat, r.fired)


class StepPolicy(NamedTuple):
    """Where and how the steps run, from ``train.device``, ``autocast_bf16``, ``compile``
    and ``kernel`` and what this machine offers."""

    device: torch.device
    bf16: bool
    """bf16 autocast: asked for, and on CUDA devices with native bf16."""
    compile: bool
    """The dense step goes through torch.compile: asked for and usable here."""
    sparse_ok: bool
    """The CSR kernel may run: always with ``kernel: sparse``; with ``auto`` on a CPU
    without autocast or compile, once latents are sparse enough (:func:`use_sparse`)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        return (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16
                else contextlib.nullcontext())


def step_policy(tc: TrainConfig) -> StepPolicy:
    device = pick_device(tc.device)
    # bf16 autocast by default only where it is fast (a CUDA GPU with native bf16); asked
    # for on a machine where it is slow, it runs and warns once
    if tc.autocast_bf16:
        warn_if_bf16_slow(device, "train.autocast_bf16")
    bf16 = tc.autocast_bf16 or (device.type == "cuda"
                                and auto_dtype(device).dtype == "bfloat16")
    return StepPolicy(device, bf16, tc.compile and compile_available(),
                      tc.kernel == "sparse" or (tc.kernel == "auto" and device.type == "cpu"
                                                and not bf16 and not tc.compile))


def use_sparse(policy: StepPolicy, m: SweepMember, tc: TrainConfig) -> bool:
    """Whether ``m``'s next step takes the CSR kernel (``auto``: while the previous step's
    L0 was at most :data:`SPARSE_MAX_DENSITY` of the width)."""
    return policy.sparse_ok and isinstance(m.sae, JumpReLUSAE) and (
        tc.kernel == "sparse" or m.prev_l0 <= SPARSE_MAX_DENSITY * m.sae.d_sae)


def global_fve(x: Float[Tensor, "rows d_model"], x_hat: Float[Tensor, "rows d_model"]
               ) -> float:
    """:func:`sae_med.measure.metrics.fve` of the whole global batch from each rank's rows: the sums
    of x, ‖x‖², r = x − x̂ and ‖r‖² are summed over ranks, then
    1 − SS(r) / SS(x) with SS the :func:`~sae_med.measure.metrics.centred_sum_of_squares`."""

    x, r = x.double(), (x - x_hat).double()
    sums = torch.cat([x.sum(0), r.sum(0), x.pow(2).sum()[None], r.pow(2).sum()[None],
                      torch.tensor([float(x.shape[0])], dtype=torch.float64, device=x.device)])
    all_reduce_sum_(sums)
    d = x.shape[1]
    x_sum, r_sum, (x_sq, r_sq, n) = sums[:d], sums[d:2 * d], sums[2 * d:]
    ss_x = centred_sum_of_squares(n, x_sum, x_sq)
    return float(1.0 - centred_sum_of_squares(n, r_sum, r_sq) / ss_x.clamp_min(1e-30))
