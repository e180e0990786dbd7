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
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sae_med.artifacts import atomic_path, file_sha256, write_json_atomic
from sae_med.layout import CFG_FILENAME, WEIGHTS_FILENAME
from sae_med.sae.kernels import SparseJumpReLUSAEFn, csr, heaviside, jumprelu, pre_acts

# The CSR kernels used here are stable in practice; the blanket beta notice is noise.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
FORMAT_VERSION = 1


class SAECheckpointError(RuntimeError):
    """A saved SAE is missing, incomplete, corrupted or of an unknown format."""


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
        return csr(rows, cols, z[rows, cols], z.shape[0], self.d_sae)

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
