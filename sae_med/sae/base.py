"""What every SAE architecture shares (JumpReLU, ReLU, the TopK family): a linear encoder
and decoder, the split between the training forward and the inference encoding, the
decoder constraint, folding, checkpoints.

z = x W_enc + b_enc;  f = act(z);  x_hat = f W_dec + b_dec, with ``act`` the architecture's.

W_enc (d_model, d_sae) is stored transposed (see :class:`LinearSAE`), decoder rows are
unit norm (kept so by the trainer through :meth:`LinearSAE.remove_parallel_grad_` and
:meth:`LinearSAE.unit_norm_decoder_`), an ``input_scale`` buffer the inputs are multiplied
by in training is folded into the weights by :meth:`LinearSAE.save` so a loaded SAE takes
raw activations, and ``fold_input_mean_`` serves SAEs trained on centred inputs. Every
``act`` commutes with a positive input scale (ReLU, top-k, a threshold folded with the
biases), so folding is exact.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Self

import torch
from jaxtyping import Bool, Float
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sae_med.artifacts import atomic_path, file_sha256, write_json_atomic
from sae_med.layout import CFG_FILENAME, WEIGHTS_FILENAME
from sae_med.sae.kernels import Pattern, gathered_pre_acts, pre_acts, sparse_decode

BASE_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")
FORMAT_VERSION = 1


class SAECheckpointError(RuntimeError):
    """A saved SAE is missing, incomplete, corrupted or of an unknown format."""


class SAEOutput(NamedTuple):
    """Result of an SAE's ``forward``.

    x_hat: (batch, d_model) reconstruction.
    acts: (batch, d_sae) latents f; dense on the naive path, a CSR tensor (active entries
        only, no gradient) on JumpReLU's fast path.
    l0: scalar, mean number of active latents per token; differentiable w.r.t. a JumpReLU
        threshold through the Heaviside straight-through estimator, detached elsewhere.
    pre_acts: (batch, d_sae) z on the naive path; None on the fast path.
    """

    x_hat: Tensor
    acts: Tensor
    l0: Tensor
    pre_acts: Tensor | None


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


class Latents(NamedTuple):
    """One training forward's latents (:meth:`LinearSAE.training_latents`), dense or at a
    sparse pattern, with what the losses need of them."""

    x_hat: Float[Tensor, "batch d_model"]
    part: Callable[[int, int], Tensor]
    """part(lo, hi): the decode (no bias) of latents [lo, hi), with gradient."""
    weighted: Callable[[Tensor], Tensor]
    """weighted(w): mean over rows of sum_i f_i w_i for a (d_sae,) w, with gradient."""
    kept: Tensor
    """The latents' values (dense, or one per pattern entry)."""
    l0: Tensor
    fired: Bool[Tensor, " d_sae"]


def sq_err(x_hat: Tensor, x: Tensor) -> Tensor:
    """Scalar: mean over rows of sum_dims (x - x_hat)^2 (sae-lens's ``mse_loss``)."""
    return (x_hat - x).pow(2).sum(-1).mean()


class LinearSAE(nn.Module):
    """Base of every SAE: parameters W_enc (d_model, d_sae), b_enc, W_dec (d_sae, d_model),
    b_dec; buffer ``input_scale`` (fp64; 1.0 for a folded SAE that takes raw activations).

    A subclass sets :attr:`architecture`, :meth:`activate` (the training activation) and
    :meth:`training_loss`; one whose inference encoding differs from its training forward
    (BatchTopK's threshold) overrides :meth:`infer`. Constructor keywords named in
    :attr:`CONFIG_KEYS` are saved in ``cfg.json`` and passed back on load; attributes named
    in :attr:`EXTRA_TENSORS` are saved beside the weights (read back by
    :meth:`load_extra_`); :attr:`KEEP_DTYPES` names tensors that ``.to(dtype)`` must not
    change.
    """

    architecture: ClassVar[str] = ""
    SPARSE_MAX_DENSITY: ClassVar[float] = 0.05
    """:meth:`training_latents` takes the sparse path (by default) while at most this
    fraction of the (batch, d_sae) latents is active; denser ones are faster dense."""
    CONFIG_KEYS: ClassVar[tuple[str, ...]] = ()
    EXTRA_TENSORS: ClassVar[tuple[str, ...]] = ()
    KEEP_DTYPES: ClassVar[dict[str, torch.dtype]] = {"input_scale": torch.float64}

    def __init__(self, d_model: int, d_sae: int, input_scale: float = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None):
        super().__init__()
        if d_model <= 0 or d_sae <= 0:
            raise ValueError(f"d_model and d_sae must be > 0, got {d_model}, {d_sae}")
        self.d_model, self.d_sae = d_model, d_sae
        # one initialisation (unit-norm random decoder rows, W_enc = W_dec^T), so that
        # architectures differ only in their activation
        gen_device = generator.device if generator is not None else device
        W_dec = torch.randn(d_sae, d_model, generator=generator, dtype=torch.float32,
                            device=gen_device)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec.to(device=device, dtype=dtype))
        # Stored as the transpose of a contiguous (d_sae, d_model) tensor: JumpReLU's sparse
        # backward builds its gradient latent by latent in that layout, and a gradient whose
        # strides differ from its parameter's is copied by autograd (a full transpose of
        # the largest tensor every step). The dense products take either layout alike.
        self.W_enc = nn.Parameter(self.W_dec.detach().clone().t())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_model, device=device, dtype=dtype))
        self.register_buffer("input_scale",
                             torch.tensor(float(input_scale), dtype=torch.float64, device=device))

    def _apply(self, fn: Any, recurse: bool = True) -> Self:
        # .to(bfloat16) must not lower the scale, a threshold or a threshold's EMA
        out = super()._apply(fn, recurse)
        for name, dtype in self.KEEP_DTYPES.items():
            t = getattr(self, name)
            if t.dtype != dtype:
                t.data = t.data.to(dtype)
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

    @classmethod
    def extra_shapes(cls, d_sae: int) -> dict[str, tuple[int, ...]]:
        """The shape of each of :attr:`EXTRA_TENSORS` in a saved SAE of width ``d_sae``."""
        return {}

    @torch.no_grad()
    def load_extra_(self, t: dict[str, Tensor]) -> None:
        """Read :attr:`EXTRA_TENSORS` from saved tensors ``t`` (checked by name and shape)."""
        for k in self.EXTRA_TENSORS:
            getattr(self, k).copy_(t[k])

    # ---- encode / decode / forward ----------------------------------------------------
    def select(self, z: Float[Tensor, "batch d_sae"]) -> Pattern:
        """The entries :meth:`activate` keeps (no gradient), for the sparse training path."""
        raise NotImplementedError

    def training_latents(self, x: Float[Tensor, "batch d_model"], fast: bool | None = None
                         ) -> Latents:
        """The training forward's latents. ``fast`` True: :meth:`sparse_latents`; False:
        :meth:`dense_latents`, the naive twin; None: sparse in fp32 without autocast while
        at most :attr:`SPARSE_MAX_DENSITY` of the latents are active."""
        ok = x.dtype == self.W_enc.dtype == torch.float32 and x.dim() == 2 and not (
            torch.is_autocast_enabled(x.device.type))
        if fast is False or (fast is None and not ok):
            return self.dense_latents(x)
        with torch.no_grad():
            z = pre_acts(x, self.W_enc, self.b_enc)
            p = self.select(z)
        if fast is None and p.flat.numel() > self.SPARSE_MAX_DENSITY * z.numel():
            return self.dense_latents(x)
        return self.sparse_latents(x, z, p)

    def dense_latents(self, x: Float[Tensor, "batch d_model"]) -> Latents:
        """The naive training forward: dense latents, dense products."""
        out = self(x)
        acts = out.acts
        return Latents(out.x_hat, lambda lo, hi: acts[:, lo:hi] @ self.W_dec[lo:hi],
                       lambda w: (acts * w).sum(-1).mean(), acts, out.l0, (acts > 0).any(0))

    def sparse_latents(self, x: Float[Tensor, "batch d_model"], z: Tensor, p: Pattern
                       ) -> Latents:
        """The same forward from the encoder product ``z`` (no gradient) and its kept
        entries ``p``: their pre-activations, the decoder and every gradient touch those
        entries alone."""
        vals = gathered_pre_acts(x, self.W_enc, self.b_enc, z, p).relu()
        on = vals > 0
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=x.device)
        fired[p.cols[on]] = True
        batch = x.shape[0]

        def part(lo: int, hi: int) -> Tensor:
            m = (p.cols >= lo) & (p.cols < hi)
            return sparse_decode(vals[m], self.W_dec, p.subset(m))

        return Latents(sparse_decode(vals, self.W_dec, p) + self.b_dec, part,
                       lambda w: (vals * w[p.cols]).sum() / batch, vals, on.sum() / batch,
                       fired)

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
        """The training forward (dense). ``fast`` is JumpReLUSAE's sparse path, which the
        other architectures do not have yet. ``l0`` carries no gradient here."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"input has d_model={x.shape[-1]}, this SAE expects {self.d_model}")
        if fast:
            raise NotImplementedError(f"no sparse fast path for the {self.architecture} SAE")
        z = pre_acts(x, self.W_enc, self.b_enc)
        acts = self.activate(z)
        x_hat = acts @ self.W_dec + self.b_dec
        l0 = (acts != 0).sum(-1).float().mean()
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
    def fold_input_scale_(self, scale: float | None = None) -> Self:
        """Fold the input scale s into the weights, in place, so the SAE takes raw x:
        z(s x) = s (x W_enc + b_enc/s), and every activation commutes with a positive
        factor, so b_enc/s, b_dec/s (and a threshold/s) give the same active set and
        x_hat/s; W_enc, W_dec are unchanged (decoder rows stay unit norm). ``scale``
        defaults to ``input_scale``; the buffer is divided by it (so folding 1/s undoes a
        fold)."""
        s = float(self.input_scale) if scale is None else float(scale)
        self.b_enc.div_(s)
        self.b_dec.div_(s)
        self._fold_scale_extra_(s)
        self.input_scale.div_(s)
        return self

    @torch.no_grad()
    def fold_input_mean_(self, mean: Tensor) -> Self:
        """Fold an input offset in place, so the SAE computes ``sae(x - mean) + mean``: the
        encoder bias absorbs ``-mean @ W_enc`` and the decoder bias ``+mean`` (same active
        set, same latents). Folding ``-mean`` undoes it. Needs ``input_scale == 1``."""
        if float(self.input_scale) != 1.0:
            raise ValueError("fold the input scale first (folded()), then the mean")
        mean = mean.to(self.b_dec.device, torch.float32)
        self.b_enc.sub_((mean @ self.W_enc.float()).to(self.b_enc.dtype))
        self.b_dec.add_(mean.to(self.b_dec.dtype))
        return self

    def folded(self) -> Self:
        """A copy with the input scale folded in (``input_scale == 1``)."""
        return copy.deepcopy(self).fold_input_scale_()

    def sae_lens_form(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(config keywords, state dict) of the equivalent sae-lens inference SAE on raw
        activations: input scale folded in, ``apply_b_dec_to_input=False``, no
        normalisation; the state holds the four weights (an exporter adds the rest)."""
        f = self.folded()
        kwargs = {"d_in": self.d_model, "d_sae": self.d_sae, "device": str(f.W_enc.device),
                  "dtype": str(f.W_enc.dtype).removeprefix("torch."),
                  "apply_b_dec_to_input": False, "normalize_activations": "none"}
        return kwargs, {k: getattr(f, k).detach().clone() for k in BASE_TENSORS}

    # ---- checkpoints -----------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "format_version": FORMAT_VERSION,
                "d_model": self.d_model, "d_sae": self.d_sae,
                "dtype": str(self.W_enc.dtype).removeprefix("torch."), **self.config_extra()}

    def save(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``cfg.json`` + ``sae.safetensors`` (input scale folded in) atomically.

        The weights go first, then ``cfg.json`` with their sha256, so a directory with a
        ``cfg.json`` is complete. ``metadata`` (JSON-able) is stored under ``metadata``.
        """
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
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> Self:
        """Load a directory written by :meth:`save` of this class, verifying the sha256."""
        cfg, weights = read_checkpoint_cfg(directory)
        cfg_path = Path(directory) / CFG_FILENAME
        if cfg.get("architecture") != cls.architecture:
            raise SAECheckpointError(f"{cfg_path}: a {cfg.get('architecture')!r} SAE, not "
                                     f"{cls.architecture!r}")
        if missing := [k for k in cls.CONFIG_KEYS if k not in cfg]:
            raise SAECheckpointError(f"{cfg_path} lacks {', '.join(missing)}: not written by "
                                     f"{cls.__name__}.save (or edited); save it again")
        return cls.from_tensors(load_file(str(weights)), cfg, device, source=str(weights))

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], cfg: dict[str, Any],
                     device: torch.device | str = "cpu", source: str = "weights") -> Self:
        """An SAE on raw activations from its saved tensors ``t`` (the names of
        :meth:`save`) and the constructor keywords of :attr:`CONFIG_KEYS` in ``cfg``;
        ``source`` names where they came from in errors."""
        missing = {*BASE_TENSORS, *cls.EXTRA_TENSORS} - set(t)
        if missing:
            raise SAECheckpointError(f"{source}: missing tensors {sorted(missing)}")
        d_model, d_sae = t["W_enc"].shape
        shapes = {"W_dec": (d_sae, d_model), "b_enc": (d_sae,), "b_dec": (d_model,),
                  **cls.extra_shapes(d_sae)}
        for k, shape in shapes.items():
            if tuple(t[k].shape) != shape:
                raise SAECheckpointError(f"{source}: {k} has shape {tuple(t[k].shape)}, "
                                         f"expected {shape} for W_enc {(d_model, d_sae)}")
        dtype = t["W_enc"].dtype if t["W_enc"].is_floating_point() else torch.float32
        kwargs = {k: cfg[k] for k in cls.CONFIG_KEYS}
        sae = cls(d_model, d_sae, device="meta", dtype=dtype, **kwargs)
        sae = sae.to_empty(device=device)
        with torch.no_grad():
            for k in BASE_TENSORS:
                getattr(sae, k).copy_(t[k])
            sae.load_extra_(t)
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
    if not isinstance(cfg.get("weights_sha256"), str):
        raise SAECheckpointError(f"{cfg_path} lacks weights_sha256: not written by an SAE's "
                                 f"save (or edited); save it again")
    digest = file_sha256(weights)
    if digest != cfg.get("weights_sha256"):
        raise SAECheckpointError(
            f"{weights} is corrupted: sha256 {digest[:16]}... does not match "
            f"{str(cfg.get('weights_sha256'))[:16]}... recorded in {cfg_path}")
    return cfg, weights
