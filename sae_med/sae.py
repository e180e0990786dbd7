"""The JumpReLU sparse autoencoder: model, straight-through estimators, checkpoints, interop.

z = x W_enc + b_enc;  f = z * H(z - theta);  x_hat = f W_dec + b_dec  (H = Heaviside step).

Gradients use the rectangle-kernel pseudo-derivatives of PAPER.md, K(u) = 1[|u| < 1/2]:
df/dtheta = -(theta/eps) K((z - theta)/eps),  dH/dtheta = -(1/eps) K((z - theta)/eps),
df/dz = H(z - theta); the step passes no gradient to z. theta is stored as log theta in
fp32, so it stays positive and full precision under any autocast.

Two paths compute the same function and gradients:
- the naive dense path (:meth:`JumpReLUSAE.forward`), two small autograd Functions;
- a sparse fast path (``forward(x, fast=True)``) for CPU training: the encoder matmul is
  dense, but the latents become a CSR matrix, so the decoder, the W_dec gradient, the
  latent gradient (a sampled matmul) and the W_enc gradient only touch active latents (and
  the threshold-kernel band, for the theta gradient). Tests check it against the dense path.

Input normalisation: the SAE trains on ``x * input_scale`` (E||x * scale||^2 = 1).
:meth:`JumpReLUSAE.save` folds the scale into the weights, so a loaded SAE works on raw
activations; the decoder rows stay unit norm (latent values come out in raw units).
"""

from __future__ import annotations

import copy
import json
import math
import warnings
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sae_med.artifacts import atomic_path, file_sha256, write_json_atomic
from sae_med.runtime import use_onednn_linear

# The CSR kernels used here are stable in practice; the blanket beta notice is noise.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae.safetensors"
FORMAT_VERSION = 1


class SAECheckpointError(RuntimeError):
    """A saved SAE is missing, incomplete, corrupted or of an unknown format."""


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

def _csr(rows: Tensor, cols: Tensor, vals: Tensor, n_rows: int, n_cols: int) -> Tensor:
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
        return torch.ops.mkldnn._linear_pointwise(x, W.t(), b, "none", [], "")

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


class _SparseJumpReLUSAEFn(torch.autograd.Function):
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
        acts = _csr(rows_a, cols_a, vals_a, batch, d_sae)
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
        pattern = _csr(rows, cols, torch.zeros_like(rows, dtype=x.dtype), batch, d_sae)
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
# The model
# --------------------------------------------------------------------------------------

class SAEOutput(NamedTuple):
    """Result of :meth:`JumpReLUSAE.forward`.

    x_hat: (batch, d_model) reconstruction.
    acts: (batch, d_sae) latents f; dense on the naive path, a CSR tensor (active entries
        only, no gradient) on the fast path.
    l0: scalar, mean number of active latents per token; differentiable w.r.t. theta
        through the Heaviside straight-through estimator.
    pre_acts: (batch, d_sae) z on the naive path; None on the fast path.
    """

    x_hat: Tensor
    acts: Tensor
    l0: Tensor
    pre_acts: Tensor | None


class JumpReLUSAE(nn.Module):
    """JumpReLU SAE with parameters W_enc (d_model, d_sae), b_enc (d_sae,),
    W_dec (d_sae, d_model), b_dec (d_model,) and log_threshold (d_sae,) in fp32.

    ``input_scale`` (a buffer) is the scalar the inputs must be multiplied by before
    :meth:`forward`; 1.0 for a folded SAE that works on raw activations.
    """

    def __init__(self, d_model: int, d_sae: int, bandwidth: float = 0.001,
                 init_threshold: float = 0.001, input_scale: float = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None):
        super().__init__()
        if d_model <= 0 or d_sae <= 0:
            raise ValueError(f"d_model and d_sae must be > 0, got {d_model}, {d_sae}")
        if bandwidth <= 0 or init_threshold <= 0:
            raise ValueError("bandwidth and init_threshold must be > 0")
        self.d_model, self.d_sae, self.bandwidth = d_model, d_sae, float(bandwidth)
        gen_device = generator.device if generator is not None else device
        W_dec = torch.randn(d_sae, d_model, generator=generator, dtype=torch.float32,
                            device=gen_device)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec.to(device=device, dtype=dtype))
        # Stored as the transpose of a contiguous (d_sae, d_model) tensor: the sparse
        # backward builds its gradient latent by latent in that layout, and a gradient whose
        # strides differ from its parameter's is copied by autograd (a full transpose of
        # the largest tensor every step). The dense products take either layout alike.
        self.W_enc = nn.Parameter(self.W_dec.detach().clone().t())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_model, device=device, dtype=dtype))
        self.log_threshold = nn.Parameter(
            torch.full((d_sae,), math.log(init_threshold), device=device, dtype=torch.float32))
        self.register_buffer("input_scale",
                             torch.tensor(float(input_scale), dtype=torch.float64, device=device))

    # ---- core -------------------------------------------------------------------------
    @property
    def threshold(self) -> Float[Tensor, " d_sae"]:
        return self.log_threshold.exp()

    def _apply(self, fn: Any, recurse: bool = True) -> JumpReLUSAE:
        # .to(bfloat16) must not lower the threshold or the scale.
        out = super()._apply(fn, recurse)
        if self.log_threshold.dtype != torch.float32:
            self.log_threshold.data = self.log_threshold.data.float()
        if self.input_scale.dtype != torch.float64:
            self.input_scale.data = self.input_scale.data.double()
        return out

    def encode(self, x: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_sae"]:
        """Latents f = jumprelu(x W_enc + b_enc) (dense)."""
        return jumprelu(pre_acts(x, self.W_enc, self.b_enc), self.threshold, self.bandwidth)

    @torch.no_grad()
    def latents(self, x: Float[Tensor, "batch d_model"]) -> Tensor:
        """:meth:`encode` for scoring: the same active latents and values, as a CSR matrix
        when the SAE is fp32 (torch decodes CSR only in fp32 on CPU), so that
        :meth:`decode` touches only the active latents instead of a dense product as large
        as the encoder's; dense otherwise. No gradient."""
        if self.W_enc.dtype != torch.float32:
            return self.encode(x)
        z = pre_acts(x, self.W_enc, self.b_enc)
        rows, cols = (z > self.threshold).nonzero(as_tuple=True)
        return _csr(rows, cols, z[rows, cols], z.shape[0], self.d_sae)

    def decode(self, acts: Tensor) -> Float[Tensor, "batch d_model"]:
        """x_hat = f W_dec + b_dec; ``acts`` (batch, d_sae) may be dense or sparse CSR."""
        if acts.layout == torch.sparse_csr:
            return torch.sparse.mm(acts, self.W_dec) + self.b_dec
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "batch d_model"], fast: bool = False) -> SAEOutput:
        """Reconstruct ``x``; ``fast`` uses the sparse CSR path (fp32, CPU-oriented)."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"input has d_model={x.shape[-1]}, this SAE expects {self.d_model}")
        if fast:
            if x.dim() != 2:
                raise ValueError("the fast path takes a 2-D (batch, d_model) input")
            dt = self.W_enc.dtype
            with torch.autocast(x.device.type, enabled=False):  # CSR kernels want one dtype
                x_hat, l0, crow, col, val = _SparseJumpReLUSAEFn.apply(
                    x.to(dt), self.W_enc, self.b_enc, self.threshold.to(dt), self.W_dec,
                    self.b_dec, self.bandwidth)
            acts = torch.sparse_csr_tensor(crow, col, val, (x.shape[0], self.d_sae),
                                           check_invariants=False)
            return SAEOutput(x_hat, acts, l0, None)
        threshold = self.threshold
        z = pre_acts(x, self.W_enc, self.b_enc)
        acts = jumprelu(z, threshold, self.bandwidth)
        x_hat = acts @ self.W_dec + self.b_dec
        l0 = heaviside(z, threshold, self.bandwidth).sum(-1).mean()
        return SAEOutput(x_hat, acts, l0, z)

    # ---- decoder constraint ----------------------------------------------------------
    @torch.no_grad()
    def unit_norm_decoder_(self) -> None:
        """Renormalise every W_dec row to unit norm, in place."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Remove from W_dec.grad the component parallel to each W_dec row, in place."""
        if self.W_dec.grad is None:
            return
        W, G = self.W_dec, self.W_dec.grad
        # Row dot products with vecdot and the update as one addcmul_: a few passes over
        # the (d_sae, d_model) tensors where products through temporaries took a dozen (a
        # sixth of the CPU training step); vecdot, not a batched (1 x d) @ (d x 1) bmm,
        # which is 4x slower on CPU for d_sae tiny products (benchmarks/RESULTS.md)
        dot = torch.linalg.vecdot(G, W, dim=1)
        coef = dot / torch.linalg.vector_norm(W, dim=1).square().clamp_min(1e-12)
        G.addcmul_(coef.unsqueeze(1), W, value=-1.0)

    # ---- normalisation folding -------------------------------------------------------
    @torch.no_grad()
    def fold_input_scale_(self, scale: float | None = None) -> JumpReLUSAE:
        """Fold the input scale s into the weights, in place, so the SAE takes raw x.

        With z = (s x) W_enc + b_enc = s (x W_enc + b_enc/s): theta/s, b_enc/s, b_dec/s and
        latents/s give the same active set and x_hat/s; W_enc, W_dec are unchanged (decoder
        rows stay unit norm). ``scale`` defaults to ``input_scale``; the buffer is divided by
        it (so folding 1/s undoes a fold).
        """
        s = float(self.input_scale) if scale is None else float(scale)
        self.log_threshold.sub_(math.log(s))
        self.b_enc.div_(s)
        self.b_dec.div_(s)
        self.input_scale.div_(s)
        return self

    @torch.no_grad()
    def fold_input_mean_(self, mean: Tensor) -> JumpReLUSAE:
        """Fold an input offset in place, so the SAE computes ``sae(x - mean) + mean``: the
        encoder bias absorbs ``-mean @ W_enc`` and the decoder bias ``+mean`` (same active
        set, same latents). Folding ``-mean`` undoes it. Needs ``input_scale == 1``."""
        if float(self.input_scale) != 1.0:
            raise ValueError("fold the input scale first (folded()), then the mean")
        mean = mean.to(self.b_dec.device, torch.float32)
        self.b_enc.sub_((mean @ self.W_enc.float()).to(self.b_enc.dtype))
        self.b_dec.add_(mean.to(self.b_dec.dtype))
        return self

    def folded(self) -> JumpReLUSAE:
        """A copy with the input scale folded in (``input_scale == 1``)."""
        return copy.deepcopy(self).fold_input_scale_()

    # ---- checkpoints -----------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"architecture": "jumprelu", "format_version": FORMAT_VERSION,
                "d_model": self.d_model, "d_sae": self.d_sae, "bandwidth": self.bandwidth,
                "dtype": str(self.W_enc.dtype).removeprefix("torch.")}

    def save(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``cfg.json`` + ``sae.safetensors`` (input scale folded in) atomically.

        The weights go first, then ``cfg.json`` with their sha256, so a directory with a
        ``cfg.json`` is complete. ``metadata`` (JSON-able) is stored under ``metadata``.
        """
        directory = Path(directory)
        folded = self.folded()
        tensors = {"W_enc": folded.W_enc, "b_enc": folded.b_enc, "W_dec": folded.W_dec,
                   "b_dec": folded.b_dec, "threshold": folded.threshold}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        weights = directory / WEIGHTS_FILENAME
        with atomic_path(weights) as tmp:
            save_file(tensors, str(tmp))
        cfg = {**self.config_dict(), "folded_input_scale": float(self.input_scale),
               "weights_file": WEIGHTS_FILENAME, "weights_sha256": file_sha256(weights),
               "metadata": metadata or {}}
        write_json_atomic(directory / CFG_FILENAME, cfg)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> JumpReLUSAE:
        """Load a directory written by :meth:`save`, verifying the weights' sha256."""
        directory = Path(directory)
        cfg_path = directory / CFG_FILENAME
        if not cfg_path.exists():
            raise SAECheckpointError(f"{cfg_path} not found: not a saved SAE (or incomplete)")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise SAECheckpointError(f"{cfg_path} is not valid JSON: {e}") from e
        if cfg.get("architecture") != "jumprelu" or cfg.get("format_version") != FORMAT_VERSION:
            raise SAECheckpointError(f"{cfg_path}: unknown architecture/format "
                                     f"{cfg.get('architecture')!r}/{cfg.get('format_version')!r}")
        weights = directory / cfg.get("weights_file", WEIGHTS_FILENAME)
        if not weights.exists():
            raise SAECheckpointError(f"{weights} is missing (named by {cfg_path})")
        if not isinstance(cfg.get("weights_sha256"), str) or "bandwidth" not in cfg:
            raise SAECheckpointError(f"{cfg_path} lacks weights_sha256 or bandwidth: not "
                                     f"written by JumpReLUSAE.save (or edited); save it again")
        digest = file_sha256(weights)
        if digest != cfg["weights_sha256"]:
            raise SAECheckpointError(
                f"{weights} is corrupted: sha256 {digest[:16]}... does not match "
                f"{cfg['weights_sha256'][:16]}... recorded in {cfg_path}")
        tensors = load_file(str(weights))
        return cls._from_tensors(tensors, cfg["bandwidth"], device, source=str(weights))

    @classmethod
    def _from_tensors(cls, t: dict[str, Tensor], bandwidth: float,
                      device: torch.device | str = "cpu", source: str = "weights"
                      ) -> JumpReLUSAE:
        missing = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"} - set(t)
        if missing:
            raise SAECheckpointError(f"{source}: missing tensors {sorted(missing)}")
        d_model, d_sae = t["W_enc"].shape
        shapes = {"W_dec": (d_sae, d_model), "b_enc": (d_sae,), "b_dec": (d_model,),
                  "threshold": (d_sae,)}
        for k, shape in shapes.items():
            if tuple(t[k].shape) != shape:
                raise SAECheckpointError(f"{source}: {k} has shape {tuple(t[k].shape)}, "
                                         f"expected {shape} for W_enc {(d_model, d_sae)}")
        dtype = t["W_enc"].dtype if t["W_enc"].is_floating_point() else torch.float32
        sae = cls(d_model, d_sae, bandwidth=bandwidth, device="meta", dtype=dtype)
        sae = sae.to_empty(device=device)
        with torch.no_grad():
            for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(sae, k).copy_(t[k])
            # theta must stay positive; a zero threshold (ReLU) becomes the smallest normal.
            th = t["threshold"].float().clamp_min(torch.finfo(torch.float32).tiny)
            sae.log_threshold.copy_(th.log())
            sae.input_scale.fill_(1.0)
        return sae


# --------------------------------------------------------------------------------------
# Interop: Gemma Scope params.npz and sae-lens
# --------------------------------------------------------------------------------------

def from_gemma_scope_npz(path: str | Path, bandwidth: float = 0.001,
                         device: torch.device | str = "cpu") -> JumpReLUSAE:
    """Load Gemma Scope's ``params.npz`` (W_enc (d_model, d_sae), W_dec (d_sae, d_model),
    b_enc, b_dec, threshold); Gemma Scope SAEs work on raw activations."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            t = {k: torch.from_numpy(np.asarray(npz[k], dtype=np.float32)) for k in npz.files}
    except (ValueError, OSError, TypeError, zipfile.BadZipFile) as err:
        raise SAECheckpointError(f"{path} is not a readable params.npz of float arrays "
                                 f"({type(err).__name__}); download it again") from None
    return JumpReLUSAE._from_tensors(t, bandwidth, device, source=str(path))


GEMMA_SCOPE_2_PARAMS = "params.safetensors"
"""Gemma Scope 2's weights file (one folder per SAE on the hub, e.g.
``resid_post_all/layer_13_width_16k_l0_small/``): ``w_enc`` (d_model, d_sae), ``w_dec``
(d_sae, d_model), ``b_enc``, ``b_dec``, ``threshold``, on raw activations; a
``config.json`` beside it names the architecture and model (sae-lens's ``gemma_3`` loader
reads the same files)."""


def from_gemma_scope_2(path: str | Path, bandwidth: float = 0.001,
                       device: torch.device | str = "cpu") -> JumpReLUSAE:
    """Load a Gemma Scope 2 SAE from its ``params.safetensors`` (or the folder holding it)."""
    path = Path(path)
    file = path / GEMMA_SCOPE_2_PARAMS if path.is_dir() else path
    try:
        raw = load_file(str(file))
    except Exception as err:  # safetensors raises its own error types on a bad header
        raise SAECheckpointError(f"{file} is not a readable safetensors file "
                                 f"({type(err).__name__}); download it again") from None
    keys = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    if missing := [k for k in keys if k.lower() not in raw]:
        raise SAECheckpointError(f"{file} lacks {missing} of a Gemma Scope 2 SAE "
                                 f"(w_enc, w_dec, b_enc, b_dec, threshold)")
    t = {k: raw[k.lower()].float() for k in keys}
    return JumpReLUSAE._from_tensors(t, bandwidth, device, source=str(file))


def save_gemma_scope_2(sae: JumpReLUSAE, folder: str | Path, model_name: str,
                       hook_layer: int) -> Path:
    """Write ``sae`` as a Gemma Scope 2 folder (``params.safetensors`` + ``config.json``,
    their key names and schema) on raw activations; returns the folder. What the offline
    rehearsal of a ``baselines:`` entry reads, and a way to hand our SAEs to Gemma Scope
    tooling."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = sae.folded()
    tensors = {"w_enc": f.W_enc, "w_dec": f.W_dec, "b_enc": f.b_enc, "b_dec": f.b_dec,
               "threshold": f.threshold}
    with atomic_path(folder / GEMMA_SCOPE_2_PARAMS) as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
                  str(tmp))
    write_json_atomic(folder / "config.json", {
        "architecture": "jump_relu", "model_name": model_name,
        "hf_hook_point_in": f"model.layers.{hook_layer}.output"})
    return folder


def to_sae_lens(sae: JumpReLUSAE) -> Any:
    """An equivalent ``sae_lens.saes.jumprelu_sae.JumpReLUSAE`` on raw activations
    (input scale folded in, ``apply_b_dec_to_input=False``)."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE as LensSAE
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig

    f = sae.folded()
    cfg = JumpReLUSAEConfig(d_in=sae.d_model, d_sae=sae.d_sae,
                            dtype=str(f.W_enc.dtype).removeprefix("torch."),
                            device=str(f.W_enc.device), apply_b_dec_to_input=False,
                            normalize_activations="none")
    out = LensSAE(cfg)
    state = {"W_enc": f.W_enc, "b_enc": f.b_enc, "W_dec": f.W_dec, "b_dec": f.b_dec,
             "threshold": f.threshold.to(f.W_enc.dtype)}
    out.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return out


def from_sae_lens(lens_sae: Any, bandwidth: float | None = None) -> JumpReLUSAE:
    """Convert a sae-lens JumpReLU SAE (inference or training class).

    ``apply_b_dec_to_input`` is folded into b_enc (z = (x - b_dec) W_enc + b_enc); a
    non-trivial ``normalize_activations`` is refused. The bandwidth defaults to the
    training SAE's, else 0.001.
    """
    cfg = lens_sae.cfg
    if getattr(cfg, "architecture", lambda: None)() != "jumprelu":
        raise ValueError(f"not a JumpReLU SAE: architecture {cfg.architecture()!r}")
    if cfg.normalize_activations != "none":
        raise ValueError(f"sae-lens SAE uses normalize_activations="
                         f"{cfg.normalize_activations!r}; fold it first")
    if bandwidth is None:
        bandwidth = getattr(cfg, "jumprelu_bandwidth", 0.001)
    with torch.no_grad():
        W_enc = lens_sae.W_enc.detach().float().cpu()
        b_enc = lens_sae.b_enc.detach().float().cpu()
        b_dec = lens_sae.b_dec.detach().float().cpu()
        if cfg.apply_b_dec_to_input:
            b_enc = b_enc - b_dec @ W_enc
        t = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": lens_sae.W_dec.detach().float().cpu(),
             "b_dec": b_dec, "threshold": lens_sae.threshold.detach().float().cpu()}
    return JumpReLUSAE._from_tensors(t, bandwidth, source="sae-lens SAE")


SAE_SPEC_HELP = (
    "an SAE is given as: a folder saved by sae-med (cfg.json + sae.safetensors); a Gemma "
    "Scope params.npz (or a folder holding one); a Gemma Scope 2 params.safetensors (or a "
    "folder holding one); a folder saved by sae-lens "
    "(cfg.json + sae_weights.safetensors); or sae_lens:RELEASE/SAE_ID for a sae-lens "
    "pretrained release (hub path, needs internet), e.g. "
    "sae_lens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical")


def sae_format(spec: str | Path) -> str:
    """Which loader :func:`load_any_sae` uses for ``spec``: "sae_med", "gemma_scope",
    "gemma_scope_2", "sae_lens_disk" or "sae_lens_pretrained"; raises with
    :data:`SAE_SPEC_HELP` if none."""
    text = str(spec)
    if text.startswith("sae_lens:"):
        return "sae_lens_pretrained"
    path = Path(spec)
    if path.is_file() and path.suffix == ".npz":
        return "gemma_scope"
    if path.is_file() and path.name == GEMMA_SCOPE_2_PARAMS:
        return "gemma_scope_2"
    if path.is_dir():
        if (path / "params.npz").exists():
            return "gemma_scope"
        if (path / GEMMA_SCOPE_2_PARAMS).exists():
            return "gemma_scope_2"
        cfg = path / CFG_FILENAME
        if cfg.exists():
            try:
                arch = json.loads(cfg.read_text()).get("architecture")
            except json.JSONDecodeError as e:
                raise SAECheckpointError(f"{cfg} is not valid JSON: {e}") from e
            if arch == "jumprelu" and (path / WEIGHTS_FILENAME).exists():
                return "sae_med"
            if (path / "sae_weights.safetensors").exists():
                return "sae_lens_disk"
    if not path.exists():
        raise FileNotFoundError(f"{spec}: no such file or folder; {SAE_SPEC_HELP}")
    raise SAECheckpointError(f"{spec}: not a recognised SAE; {SAE_SPEC_HELP}")


def load_any_sae(spec: str | Path, device: torch.device | str = "cpu") -> JumpReLUSAE:
    """Load an SAE from any format of :func:`sae_format` as a :class:`JumpReLUSAE` on raw
    activations (sae-lens SAEs must be JumpReLU; see :func:`from_sae_lens`)."""
    kind = sae_format(spec)
    if kind == "sae_med":
        return JumpReLUSAE.load(spec, device=device)
    if kind == "gemma_scope":
        path = Path(spec)
        return from_gemma_scope_npz(path / "params.npz" if path.is_dir() else path,
                                    device=device)
    if kind == "gemma_scope_2":
        return from_gemma_scope_2(spec, device=device)
    from sae_lens import SAE

    if kind == "sae_lens_disk":
        return from_sae_lens(SAE.load_from_disk(str(spec))).to(device)
    release, _, sae_id = str(spec).removeprefix("sae_lens:").partition("/")
    if not release or not sae_id:
        raise ValueError(f"{spec}: expected sae_lens:RELEASE/SAE_ID")
    try:
        lens = SAE.from_pretrained(release, sae_id)
    except Exception as e:  # offline, unknown release/id: say what to do
        raise SAECheckpointError(
            f"could not load sae-lens release {release!r} id {sae_id!r} ({e}); this needs "
            "internet access to the Hugging Face hub, or download the SAE and pass its "
            "folder or params.npz") from e
    return from_sae_lens(lens).to(device)
