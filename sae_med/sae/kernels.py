"""Autograd functions and fused kernels behind the SAEs: JumpReLU's estimators and sparse
path, and the sparse latents of the TopK family's training step."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sae_med.runtime import onednn_linear, use_onednn_linear

# --------------------------------------------------------------------------------------
# Straight-through estimators
# --------------------------------------------------------------------------------------

def in_band(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """K((z - theta)/eps) as a bool tensor: |z - theta| < eps/2 (the rectangle kernel)."""
    return (z - threshold).abs() < 0.5 * bandwidth


class JumpReLUFn(torch.autograd.Function):
    """f = z * H(z - theta) with df/dz = H(z - theta), df/dtheta = -(theta/eps) K((z-theta)/eps).

    z: (..., d_sae); threshold: (d_sae,) positive; the theta gradient sums over leading dims
    and is computed in the threshold's dtype (fp32 under autocast).
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        zf = z.to(threshold.dtype)
        grad_z = grad * (z > threshold).to(grad.dtype)
        band = in_band(zf, threshold, eps).to(threshold.dtype)
        grad_theta = -(threshold / eps) * (band * grad.to(threshold.dtype))
        return grad_z, grad_theta.reshape(-1, threshold.shape[-1]).sum(0), None


class HeavisideFn(torch.autograd.Function):
    """H(z - theta) with dH/dtheta = -(1/eps) K((z - theta)/eps) and no gradient to z."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        # In the threshold's dtype (fp32): an L0 summed in bf16 is inexact above 256.
        return (z > threshold).to(threshold.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        band = in_band(z.to(threshold.dtype), threshold, eps).to(threshold.dtype)
        grad_theta = -(1.0 / eps) * (band * grad.to(threshold.dtype))
        return None, grad_theta.reshape(-1, threshold.shape[-1]).sum(0), None


def jumprelu(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    return JumpReLUFn.apply(z, threshold, bandwidth)


def heaviside(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    return HeavisideFn.apply(z, threshold, bandwidth)


# --------------------------------------------------------------------------------------
# Sparse fast path
# --------------------------------------------------------------------------------------

def csr(rows: Tensor, cols: Tensor, vals: Tensor, n_rows: int, n_cols: int) -> Tensor:
    """CSR matrix from COO triplets whose ``rows`` are sorted ascending."""
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=crow[1:])
    return torch.sparse_csr_tensor(crow, cols, vals, (n_rows, n_cols),
                                   check_invariants=False)


class _OneDNNLinear(torch.autograd.Function):
    """x W + b through oneDNN's fp32 linear (W in :class:`JumpReLUSAE`'s transposed
    layout); the backward is plain matmuls, W's gradient built in W's own layout."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, W)
        ctx.has_bias = b is not None
        return onednn_linear(x, W.t(), b)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, W = ctx.saved_tensors
        g_x = g @ W.t() if ctx.needs_input_grad[0] else None
        g_W = (g.t() @ x).t() if ctx.needs_input_grad[1] else None
        g_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return g_x, g_W, g_b


def pre_acts(x: Float[Tensor, "batch d_model"], W_enc: Tensor, b_enc: Tensor | None = None
             ) -> Float[Tensor, "batch d_sae"]:
    """x W_enc (+ b_enc): the encoder product, one definition for training, encoding and
    scoring. On CPU in fp32, with W_enc in :class:`JumpReLUSAE`'s transposed layout, it
    runs through oneDNN's linear where this machine's probe found that faster
    (:func:`sae_med.runtime.use_onednn_linear`), the same product to rounding. Under
    autocast or torch.compile it is a plain matmul (inductor picks its own kernel)."""
    if (x.device.type == "cpu" and x.dim() == 2 and x.dtype == W_enc.dtype == torch.float32
            and W_enc.t().is_contiguous() and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and use_onednn_linear()):
        return _OneDNNLinear.apply(x.contiguous(), W_enc, b_enc)
    z = x @ W_enc
    return z if b_enc is None else z + b_enc


def _coo_mm(sparse: Tensor, dense: Tensor) -> Tensor:
    """``sparse @ dense`` for a COO ``sparse``. ``torch.mm`` zero-fills a fresh ``self``
    and then the result, each a full pass over the (rows, d_model) output that costs as
    much as the product here; an expanded zero ``self`` with beta 0 leaves one fill."""
    zero = dense.new_zeros(()).expand(sparse.shape[0], dense.shape[1])
    return torch.addmm(zero, sparse, dense, beta=0)


def _stable_argsort(v: Tensor) -> Tensor:
    """Stable argsort; NumPy's integer sort is ~20x faster than torch's on CPU here."""
    if v.device.type == "cpu":
        return torch.from_numpy(np.argsort(v.numpy(), kind="stable"))
    return torch.argsort(v, stable=True)


class SparseJumpReLUSAEFn(torch.autograd.Function):
    """Fused JumpReLU SAE forward/backward over CSR latents (see module docstring).

    Returns x_hat (batch, d_model), l0 (scalar: mean active latents per token, with the
    Heaviside STE gradient), and the active latents as CSR parts (crow, col, val), which
    carry no gradient. The input x gets a gradient only through active latents.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, threshold: Tensor,
                W_dec: Tensor, b_dec: Tensor, bandwidth: float
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        batch, d_sae = x.shape[0], W_enc.shape[1]
        # The one dense product; b_enc is folded into the comparison instead of added to
        # all batch * d_sae entries (saves a full pass over the largest tensor).
        xw = pre_acts(x, W_enc)  # (batch, d_sae)
        # Pattern P = active ∪ band = {z - theta > -eps/2}; everything else has zero
        # gradient under the paper's estimators, so z is dropped after this.
        flat = (xw > (threshold - 0.5 * bandwidth) - b_enc).view(-1).nonzero().squeeze(1)
        rows, cols = flat // d_sae, flat % d_sae
        zp = xw.view(-1)[flat] + b_enc[cols]
        del xw
        th = threshold[cols]
        active = zp > th
        band = (zp - th).abs() < 0.5 * bandwidth
        rows_a, cols_a, vals_a = rows[active], cols[active], zp[active]
        acts = csr(rows_a, cols_a, vals_a, batch, d_sae)
        x_hat = torch.sparse.mm(acts, W_dec) + b_dec
        l0 = x.new_tensor(rows_a.numel() / batch)
        crow_a = acts.crow_indices()
        ctx.save_for_backward(x, W_enc, threshold, W_dec, rows, cols, active, band, rows_a,
                              cols_a, vals_a, crow_a)
        ctx.bandwidth = bandwidth
        ctx.mark_non_differentiable(crow_a, cols_a, vals_a)
        return x_hat, l0, crow_a, cols_a, vals_a

    @staticmethod
    def backward(ctx: Any, g_xhat: Tensor, g_l0: Tensor, *_unused: Any) -> tuple:
        (x, W_enc, threshold, W_dec, rows, cols, active, band, rows_a, cols_a, vals_a,
         crow_a) = ctx.saved_tensors
        eps = ctx.bandwidth
        batch, d_sae = x.shape[0], W_enc.shape[1]
        g_xhat = g_xhat.contiguous()

        # dL/df on the pattern P only: a sampled matmul g_xhat @ W_dec^T.
        pattern = csr(rows, cols, torch.zeros_like(rows, dtype=x.dtype), batch, d_sae)
        g_f = torch.sparse.sampled_addmm(pattern, g_xhat, W_dec.t(), beta=0.0).values()
        g_z = g_f[active]  # df/dz = H(z - theta): active entries only

        # theta: -(theta/eps) K * g_f (from f) and -(1/eps) K * g_l0/batch (from L0).
        cols_b = cols[band]
        th_b = threshold[cols_b]
        g_theta_vals = -(th_b / eps) * g_f[band] - (g_l0 / (eps * batch)).to(th_b.dtype)
        g_theta = torch.zeros_like(threshold).index_add_(0, cols_b, g_theta_vals)

        # The active set transposed to (d_sae, batch), sorted by latent: both weight grads.
        # COO, not CSR: torch's CSR product with a (d_sae, batch) left side is ~4x slower
        # on CPU for these shapes (benchmarks/RESULTS.md, training step).
        perm = _stable_argsort(cols_a)
        idx_t = torch.stack([cols_a[perm], rows_a[perm]])

        def by_latent(vals: Tensor) -> Tensor:
            return torch.sparse_coo_tensor(idx_t, vals[perm], (d_sae, batch),
                                           is_coalesced=True, check_invariants=False)

        g_W_dec = _coo_mm(by_latent(vals_a), g_xhat)  # (d_sae, d_model)
        # (d_model, d_sae) in W_enc's own transposed layout, so autograd keeps it uncopied
        g_W_enc = _coo_mm(by_latent(g_z), x).t()
        g_b_enc = torch.zeros(d_sae, dtype=x.dtype, device=x.device).index_add_(0, cols_a, g_z)
        g_b_dec = g_xhat.sum(0)
        g_x = None
        if ctx.needs_input_grad[0]:
            g_zc = torch.sparse_csr_tensor(crow_a, cols_a, g_z, (batch, d_sae),
                                           check_invariants=False)
            g_x = torch.sparse.mm(g_zc, W_enc.t())
        return g_x, g_W_enc, g_b_enc, g_theta, g_W_dec, g_b_dec, None


# --------------------------------------------------------------------------------------
# Sparse latents of a known pattern (the TopK family's training step)
# --------------------------------------------------------------------------------------

class Pattern(NamedTuple):
    """Which (row, latent) entries of a (batch, d_sae) matrix are active: ``flat`` sorted
    ascending (row-major), so ``rows`` ascend and each row's ``cols`` ascend; ``perm``
    orders the entries by latent (stable), and ``by_col`` holds (cols, rows) in that
    order, for the weight gradients."""

    rows: Tensor
    cols: Tensor
    flat: Tensor
    perm: Tensor
    by_col: Tensor
    batch: int
    d_sae: int

    @classmethod
    def of(cls, flat: Tensor, batch: int, d_sae: int, presorted: bool = False) -> Pattern:
        """The pattern of the row-major indices ``flat`` (no repeats; any order unless
        ``presorted``)."""
        flat = flat if presorted else flat.sort().values
        rows, cols = flat // d_sae, flat % d_sae
        perm = _stable_argsort(cols)
        return cls(rows, cols, flat, perm, torch.stack([cols[perm], rows[perm]]), batch,
                   d_sae)

    def subset(self, keep: Bool[Tensor, " nnz"]) -> Pattern:
        """The entries where ``keep`` holds."""
        return Pattern.of(self.flat[keep], self.batch, self.d_sae, presorted=True)

    def csr(self, vals: Tensor) -> Tensor:
        """(batch, d_sae) CSR matrix with ``vals`` (one per entry) at the pattern."""
        return csr(self.rows, self.cols, vals, self.batch, self.d_sae)

    def by_latent(self, vals: Tensor) -> Tensor:
        """(d_sae, batch) COO matrix, the transpose, with ``vals`` at the pattern."""
        return torch.sparse_coo_tensor(self.by_col, vals[self.perm], (self.d_sae, self.batch),
                                       is_coalesced=True, check_invariants=False)


class GatheredPreActsFn(torch.autograd.Function):
    """z at a :class:`Pattern`'s entries, from the dense z = x W_enc + b_enc computed
    without gradient, with the gradient of those entries alone: W_enc's and x's through
    sparse products, never a dense (batch, d_sae) one."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, z: Tensor,
                p: Pattern) -> Tensor:
        ctx.save_for_backward(x, W_enc)
        ctx.p = p
        return z.reshape(-1)[p.flat]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        x, W_enc = ctx.saved_tensors
        p = ctx.p
        g = g.contiguous()
        # (d_model, d_sae) in W_enc's own transposed layout, so autograd keeps it uncopied
        g_W = _coo_mm(p.by_latent(g), x).t() if ctx.needs_input_grad[1] else None
        g_b = (torch.zeros(p.d_sae, dtype=g.dtype, device=g.device).index_add_(0, p.cols, g)
               if ctx.needs_input_grad[2] else None)
        g_x = torch.sparse.mm(p.csr(g), W_enc.t()) if ctx.needs_input_grad[0] else None
        return g_x, g_W, g_b, None, None


class SparseDecodeFn(torch.autograd.Function):
    """f W_dec for latents f with values ``vals`` at a :class:`Pattern` (no bias): the
    products and both gradients touch the active entries only."""

    @staticmethod
    def forward(ctx: Any, vals: Tensor, W_dec: Tensor, p: Pattern) -> Tensor:
        ctx.save_for_backward(vals, W_dec)
        ctx.p = p
        return torch.sparse.mm(p.csr(vals), W_dec)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        vals, W_dec = ctx.saved_tensors
        p = ctx.p
        g = g.contiguous()
        g_vals = g_W = None
        if ctx.needs_input_grad[0]:  # a sampled matmul g @ W_dec^T at the pattern
            pattern = p.csr(torch.zeros_like(vals))
            g_vals = torch.sparse.sampled_addmm(pattern, g, W_dec.t(), beta=0.0).values()
        if ctx.needs_input_grad[1]:
            g_W = _coo_mm(p.by_latent(vals), g)
        return g_vals, g_W, None


def gathered_pre_acts(x: Float[Tensor, "batch d_model"], W_enc: Tensor, b_enc: Tensor,
                      z: Float[Tensor, "batch d_sae"], p: Pattern) -> Float[Tensor, " nnz"]:
    return GatheredPreActsFn.apply(x, W_enc, b_enc, z, p)


def sparse_decode(vals: Float[Tensor, " nnz"], W_dec: Tensor, p: Pattern
                  ) -> Float[Tensor, "batch d_model"]:
    return SparseDecodeFn.apply(vals, W_dec, p)
