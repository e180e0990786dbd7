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

Input normalisation, folding, the decoder constraint and checkpoints are every SAE's
(:class:`sae_med.sae.base.LinearSAE`); the threshold is saved as ``threshold``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sae_med.sae.base import LinearSAE, SAEOutput
from sae_med.sae.kernels import SparseJumpReLUSAEFn, csr, heaviside, jumprelu, pre_acts

# The CSR kernels used here are stable in practice; the blanket beta notice is noise.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


class JumpReLUSAE(LinearSAE):
    """JumpReLU SAE: :class:`~sae_med.sae.base.LinearSAE`'s parameters and log_threshold
    (d_sae,) in fp32.

    ``input_scale`` (a buffer) is the scalar the inputs must be multiplied by before
    :meth:`forward`; 1.0 for a folded SAE that works on raw activations.
    """

    architecture = "jumprelu"
    CONFIG_KEYS = ("bandwidth",)
    EXTRA_TENSORS = ("threshold",)
    KEEP_DTYPES: ClassVar[dict[str, torch.dtype]] = {"input_scale": torch.float64,
                                                     "log_threshold": torch.float32}

    def __init__(self, d_model: int, d_sae: int, bandwidth: float = 0.001,
                 init_threshold: float = 0.001, input_scale: float = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None):
        super().__init__(d_model, d_sae, input_scale, device, dtype, generator)
        if bandwidth <= 0 or init_threshold <= 0:
            raise ValueError("bandwidth and init_threshold must be > 0")
        self.bandwidth = float(bandwidth)
        self.log_threshold = nn.Parameter(
            torch.full((d_sae,), math.log(init_threshold), device=device, dtype=torch.float32))

    # ---- core -------------------------------------------------------------------------
    @property
    def threshold(self) -> Float[Tensor, " d_sae"]:
        return self.log_threshold.exp()

    def activate(self, z: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        """f = jumprelu(z) with the straight-through threshold gradient."""
        return jumprelu(z, self.threshold, self.bandwidth)

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
        return csr(rows, cols, z[rows, cols], z.shape[0], self.d_sae)

    def forward(self, x: Float[Tensor, "batch d_model"], fast: bool = False) -> SAEOutput:
        """Reconstruct ``x``; ``fast`` uses the sparse CSR path (fp32, CPU-oriented)."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"input has d_model={x.shape[-1]}, this SAE expects {self.d_model}")
        if fast:
            if x.dim() != 2:
                raise ValueError("the fast path takes a 2-D (batch, d_model) input")
            dt = self.W_enc.dtype
            with torch.autocast(x.device.type, enabled=False):  # CSR kernels want one dtype
                x_hat, l0, crow, col, val = SparseJumpReLUSAEFn.apply(
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

    # ---- folding and checkpoints: the threshold ---------------------------------------
    def _fold_scale_extra_(self, s: float) -> None:
        self.log_threshold.sub_(math.log(s))

    @classmethod
    def extra_shapes(cls, d_sae: int) -> dict[str, tuple[int, ...]]:
        return {"threshold": (d_sae,)}

    @torch.no_grad()
    def load_extra_(self, t: dict[str, Tensor]) -> None:
        # theta must stay positive; a zero threshold (ReLU) becomes the smallest normal.
        th = t["threshold"].float().clamp_min(torch.finfo(torch.float32).tiny)
        self.log_threshold.copy_(th.log())

    def config_extra(self) -> dict[str, Any]:
        return {"bandwidth": self.bandwidth}


def to_sae_lens(sae: JumpReLUSAE) -> Any:
    """An equivalent ``sae_lens.saes.jumprelu_sae.JumpReLUSAE`` on raw activations
    (input scale folded in, ``apply_b_dec_to_input=False``)."""
    # deferred: sae-lens is heavy (and optional here); only interop needs it
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE as LensSAE
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig

    kwargs, state = sae.sae_lens_form()
    out = LensSAE(JumpReLUSAEConfig(**kwargs))
    state["threshold"] = sae.folded().threshold.detach().to(state["W_enc"].dtype)
    out.load_state_dict(state)
    return out
