"""What the SAE architectures beside JumpReLU share: a linear encoder and decoder, the
split between the training forward and the inference encoding, folding, checkpoints.

z = x W_enc + b_enc;  f = act(z);  x_hat = f W_dec + b_dec, with ``act`` the architecture's.

The conventions are :class:`sae_med.sae.jumprelu.JumpReLUSAE`'s: W_enc (d_model, d_sae) in its
transposed layout, decoder rows unit norm (kept so by the trainer through
:meth:`LinearSAE.remove_parallel_grad_` and :meth:`LinearSAE.unit_norm_decoder_`), an
``input_scale`` buffer the inputs are multiplied by in training, folded into the weights by
:meth:`LinearSAE.save` so a loaded SAE takes raw activations, and ``fold_input_mean_`` for
SAEs trained on centred inputs. Every ``act`` here commutes with a positive input scale
(ReLU, top-k, a threshold that is folded with the biases), so folding is exact.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from jaxtyping import Bool, Float
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sae_med.artifacts import atomic_path, file_sha256, write_json_atomic
from sae_med.layout import CFG_FILENAME, WEIGHTS_FILENAME
from sae_med.sae.jumprelu import FORMAT_VERSION, JumpReLUSAE, SAECheckpointError, SAEOutput
from sae_med.sae.kernels import pre_acts

BASE_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


class TrainLoss(NamedTuple):
    """One training forward's loss and what the trainer logs of it (:meth:`LinearSAE.
    training_loss`); ``loss`` carries the gradient, the rest is detached."""

    loss: Tensor
    """Scalar: ``mse + inner_mse + sparsity_loss + aux_loss``."""
    mse: Tensor
    """Scalar: mean over rows of sum_dims (x - x_hat)^2."""
    inner_mse: Tensor
    """Scalar: the same for each inner prefix's reconstruction, summed (Matryoshka); 0
    elsewhere."""
    sparsity_loss: Tensor
    """Scalar: the L1 penalty with its coefficient (ReLU); 0 where k sets the sparsity."""
    aux_loss: Tensor
    """Scalar: the dead-latent remedy (AuxK for the TopK family); 0 where there is none."""
    l0: Tensor
    """Scalar: mean number of active latents per row (no gradient)."""
    x_hat: Float[Tensor, "batch d_model"]
    fired: Bool[Tensor, " d_sae"]
    """Latents active on any row."""


def sq_err(x_hat: Tensor, x: Tensor) -> Tensor:
    """Scalar: mean over rows of sum_dims (x - x_hat)^2 (sae-lens's ``mse_loss``)."""
    return (x_hat - x).pow(2).sum(-1).mean()


class LinearSAE(nn.Module):
    """Base of the ReLU and TopK-family SAEs: parameters W_enc (d_model, d_sae), b_enc,
    W_dec (d_sae, d_model), b_dec; buffer ``input_scale`` (fp64).

    A subclass sets :attr:`architecture`, :meth:`activate` (the training activation) and
    :meth:`training_loss`; one whose inference encoding differs from its training forward
    (BatchTopK's threshold) overrides :meth:`infer`. Constructor keywords named in
    :attr:`CONFIG_KEYS` are saved in ``cfg.json`` and passed back on load; buffers named in
    :attr:`EXTRA_TENSORS` are saved beside the weights.
    """

    architecture: ClassVar[str] = ""
    CONFIG_KEYS: ClassVar[tuple[str, ...]] = ()
    EXTRA_TENSORS: ClassVar[tuple[str, ...]] = ()
    FP64_BUFFERS: ClassVar[tuple[str, ...]] = ("input_scale",)

    def __init__(self, d_model: int, d_sae: int, input_scale: float = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None):
        super().__init__()
        if d_model <= 0 or d_sae <= 0:
            raise ValueError(f"d_model and d_sae must be > 0, got {d_model}, {d_sae}")
        self.d_model, self.d_sae = d_model, d_sae
        # JumpReLUSAE's initialisation (unit-norm random decoder rows, W_enc = W_dec^T in
        # the transposed layout), so that architectures differ only in their activation
        gen_device = generator.device if generator is not None else device
        W_dec = torch.randn(d_sae, d_model, generator=generator, dtype=torch.float32,
                            device=gen_device)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec.to(device=device, dtype=dtype))
        self.W_enc = nn.Parameter(self.W_dec.detach().clone().t())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_model, device=device, dtype=dtype))
        self.register_buffer("input_scale",
                             torch.tensor(float(input_scale), dtype=torch.float64, device=device))

    def _apply(self, fn: Any, recurse: bool = True) -> LinearSAE:
        # .to(bfloat16) must not lower the scale (or a BatchTopK threshold's EMA)
        out = super()._apply(fn, recurse)
        for name in self.FP64_BUFFERS:
            buf = getattr(self, name)
            if buf.dtype != torch.float64:
                buf.data = buf.data.double()
        return out

    # ---- the architecture ------------------------------------------------------------
    def activate(self, z: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        """The training activation f = act(z)."""
        raise NotImplementedError

    def infer(self, z: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        """The inference activation (what :meth:`encode`, scoring and the export use)."""
        return self.activate(z)

    def training_loss(self, x: Float[Tensor, "batch d_model"], coeff: float = 1.0,
                      dead: Bool[Tensor, " d_sae"] | None = None) -> TrainLoss:
        """The architecture's training loss on the (already scaled) rows ``x``.
        ``coeff``: the sparsity coefficient at this step (the L1 lambda; unused where k
        sets the sparsity); ``dead``: latents the trainer counts as dead (for AuxK)."""
        raise NotImplementedError

    def config_extra(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.CONFIG_KEYS}

    def _fold_scale_extra_(self, s: float) -> None:
        """Fold the input scale into architecture-specific state (a threshold)."""

    # ---- encode / decode / forward ----------------------------------------------------
    def encode(self, x: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_sae"]:
        """Latents f of the inference encoding (dense)."""
        return self.infer(pre_acts(x, self.W_enc, self.b_enc))

    @torch.no_grad()
    def latents(self, x: Float[Tensor, "batch d_model"]) -> Tensor:
        """:meth:`encode` for scoring, as CSR when fp32 (torch decodes CSR only in fp32 on
        CPU), so :meth:`decode` touches only the active latents; dense otherwise."""
        f = self.encode(x)
        return f.to_sparse_csr() if f.dtype == torch.float32 and f.dim() == 2 else f

    def decode(self, acts: Tensor) -> Float[Tensor, "batch d_model"]:
        """x_hat = f W_dec + b_dec; ``acts`` (batch, d_sae) may be dense or sparse CSR."""
        if acts.layout == torch.sparse_csr:
            return torch.sparse.mm(acts, self.W_dec) + self.b_dec
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "batch d_model"], fast: bool = False) -> SAEOutput:
        """The training forward (dense). ``fast`` is JumpReLUSAE's sparse path, which
        these architectures do not have yet. ``l0`` carries no gradient here."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"input has d_model={x.shape[-1]}, this SAE expects {self.d_model}")
        if fast:
            raise NotImplementedError(f"no sparse fast path for the {self.architecture} SAE")
        z = pre_acts(x, self.W_enc, self.b_enc)
        acts = self.activate(z)
        x_hat = acts @ self.W_dec + self.b_dec
        l0 = (acts != 0).sum(-1).float().mean()
        return SAEOutput(x_hat, acts, l0, z)

    # ---- decoder constraint: JumpReLUSAE's own, which touches W_dec alone -------------
    unit_norm_decoder_ = JumpReLUSAE.unit_norm_decoder_
    remove_parallel_grad_ = JumpReLUSAE.remove_parallel_grad_

    # ---- normalisation folding -------------------------------------------------------
    @torch.no_grad()
    def fold_input_scale_(self, scale: float | None = None) -> LinearSAE:
        """Fold the input scale s into the weights, in place, so the SAE takes raw x:
        z(s x) = s (x W_enc + b_enc/s), and every activation here commutes with a positive
        factor, so b_enc/s, b_dec/s (and a threshold/s) give the same active set and
        x_hat/s. ``scale`` defaults to ``input_scale``; the buffer is divided by it."""
        s = float(self.input_scale) if scale is None else float(scale)
        self.b_enc.div_(s)
        self.b_dec.div_(s)
        self._fold_scale_extra_(s)
        self.input_scale.div_(s)
        return self

    @torch.no_grad()
    def fold_input_mean_(self, mean: Tensor) -> LinearSAE:
        """Fold an input offset in place, so the SAE computes ``sae(x - mean) + mean``
        (as :meth:`sae_med.sae.jumprelu.JumpReLUSAE.fold_input_mean_`). Needs ``input_scale ==
        1``."""
        if float(self.input_scale) != 1.0:
            raise ValueError("fold the input scale first (folded()), then the mean")
        mean = mean.to(self.b_dec.device, torch.float32)
        self.b_enc.sub_((mean @ self.W_enc.float()).to(self.b_enc.dtype))
        self.b_dec.add_(mean.to(self.b_dec.dtype))
        return self

    def folded(self) -> LinearSAE:
        """A copy with the input scale folded in (``input_scale == 1``)."""
        return copy.deepcopy(self).fold_input_scale_()

    # ---- checkpoints -----------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "format_version": FORMAT_VERSION,
                "d_model": self.d_model, "d_sae": self.d_sae,
                "dtype": str(self.W_enc.dtype).removeprefix("torch."), **self.config_extra()}

    def save(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``cfg.json`` + ``sae.safetensors`` (input scale folded in) atomically, the
        weights first and ``cfg.json`` with their sha256 last, as JumpReLUSAE.save."""
        directory = Path(directory)
        folded = self.folded()
        names = (*BASE_TENSORS, *self.EXTRA_TENSORS)
        tensors = {k: getattr(folded, k).detach().cpu().contiguous() for k in names}
        weights = directory / WEIGHTS_FILENAME
        with atomic_path(weights) as tmp:
            save_file(tensors, str(tmp))
        cfg = {**self.config_dict(), "folded_input_scale": float(self.input_scale),
               "weights_file": WEIGHTS_FILENAME, "weights_sha256": file_sha256(weights),
               "metadata": metadata or {}}
        write_json_atomic(directory / CFG_FILENAME, cfg)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> LinearSAE:
        """Load a directory written by :meth:`save` of this class, verifying the sha256."""
        cfg, weights = read_checkpoint_cfg(directory)
        if cfg.get("architecture") != cls.architecture:
            raise SAECheckpointError(f"{directory}: a {cfg.get('architecture')!r} SAE, not "
                                     f"{cls.architecture!r}")
        return cls._from_tensors(load_file(str(weights)), cfg, device, source=str(weights))

    @classmethod
    def _from_tensors(cls, t: dict[str, Tensor], cfg: dict[str, Any],
                      device: torch.device | str = "cpu", source: str = "weights"
                      ) -> LinearSAE:
        missing = {*BASE_TENSORS, *cls.EXTRA_TENSORS} - set(t)
        if missing:
            raise SAECheckpointError(f"{source}: missing tensors {sorted(missing)}")
        d_model, d_sae = t["W_enc"].shape
        shapes = {"W_dec": (d_sae, d_model), "b_enc": (d_sae,), "b_dec": (d_model,)}
        for k, shape in shapes.items():
            if tuple(t[k].shape) != shape:
                raise SAECheckpointError(f"{source}: {k} has shape {tuple(t[k].shape)}, "
                                         f"expected {shape} for W_enc {(d_model, d_sae)}")
        kwargs = {k: cfg[k] for k in cls.CONFIG_KEYS}
        sae = cls(d_model, d_sae, device="meta", dtype=t["W_enc"].dtype, **kwargs)
        sae = sae.to_empty(device=device)
        with torch.no_grad():
            for k in (*BASE_TENSORS, *cls.EXTRA_TENSORS):
                getattr(sae, k).copy_(t[k])
            sae.input_scale.fill_(1.0)
        return sae


def read_checkpoint_cfg(directory: str | Path) -> tuple[dict[str, Any], Path]:
    """``cfg.json`` of a saved SAE and the path of its weights, whose sha256 is checked."""
    cfg_path = Path(directory) / CFG_FILENAME
    if not cfg_path.exists():
        raise SAECheckpointError(f"{cfg_path} not found: not a saved SAE (or incomplete)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise SAECheckpointError(f"{cfg_path} is not valid JSON: {e}") from e
    if cfg.get("format_version") != FORMAT_VERSION:
        raise SAECheckpointError(f"{cfg_path}: unknown format {cfg.get('format_version')!r}")
    weights = Path(directory) / cfg.get("weights_file", WEIGHTS_FILENAME)
    if not weights.exists():
        raise SAECheckpointError(f"{weights} is missing (named by {cfg_path})")
    digest = file_sha256(weights)
    if digest != cfg.get("weights_sha256"):
        raise SAECheckpointError(
            f"{weights} is corrupted: sha256 {digest[:16]}... does not match "
            f"{str(cfg.get('weights_sha256'))[:16]}... recorded in {cfg_path}")
    return cfg, weights
