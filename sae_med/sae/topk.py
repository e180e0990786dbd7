"""The TopK family: TopK, BatchTopK (with its inference threshold) and Matryoshka-BatchTopK.

One file because each is the one before it plus one idea, as in sae-lens (whose classes
subclass each other the same way): TopK keeps the k largest pre-activations of each row;
BatchTopK keeps the k x batch largest of the whole batch and learns, for inference, one
threshold (an EMA of the smallest activation a batch kept), so a saved BatchTopK SAE is a
JumpReLU SAE with that threshold on every latent; Matryoshka adds a reconstruction loss for
each declared prefix of the latents. All three share AuxK, the dead-latent remedy of the
TopK paper (Gao et al. 2024) as sae-lens implements it: the top d_model/2 dead latents
reconstruct the live latents' residual, with weight min(n_dead / (d_model/2), 1).

The target L0 is k. Decoder rows are kept unit norm by the trainer, so sae-lens's
``rescale_acts_by_decoder_norm`` is the identity here; its gradient differs from ours only
along the decoder rows, which :meth:`~sae_med.sae.base.LinearSAE.remove_parallel_grad_`
removes (tests/sae/test_architectures.py checks both).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sae_med.sae.base import Latents, LinearSAE, TrainLoss, sq_err
from sae_med.sae.kernels import Pattern, pre_acts


def topk_acts(z: Float[Tensor, "batch d_sae"], k: int) -> Float[Tensor, "batch d_sae"]:
    """relu of each row's k largest entries of z, zero elsewhere."""
    vals, idx = z.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(z).scatter(-1, idx, vals.relu())


def batch_topk_acts(z: Float[Tensor, "batch d_sae"], k: float) -> Float[Tensor, "batch d_sae"]:
    """relu(z) kept at the floor(k x batch) largest entries of the whole batch."""
    acts = z.relu()
    flat = acts.flatten()
    top = flat.topk(int(k * acts.shape[:-1].numel()), dim=-1)
    return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)


def auxk_loss(x: Float[Tensor, "batch d_model"], x_hat: Float[Tensor, "batch d_model"],
              sae: LinearSAE, dead: Bool[Tensor, " d_sae"] | None, coeff: float) -> Tensor:
    """Scalar AuxK loss: coeff min(n_dead/k_aux, 1) mean_rows ||e - f_aux W_dec||^2, with
    e = x - x_hat detached, k_aux = d_model // 2 and f_aux the top min(k_aux, n_dead)
    pre-activations z of the dead latents (not relu'd: sae-lens's choice); 0 if none.
    z is computed for the dead latents alone, so the cost shrinks with their number."""
    n_dead = 0 if dead is None else int(dead.sum())
    if n_dead == 0:
        return x_hat.new_zeros(())
    residual = (x - x_hat).detach()
    k_aux = x.shape[-1] // 2
    scale = min(n_dead / k_aux, 1.0)
    idx = dead.nonzero().squeeze(1)
    # the dead columns of W_enc in its transposed layout (see LinearSAE)
    z = pre_acts(x, sae.W_enc.t().index_select(0, idx).t(), sae.b_enc.index_select(0, idx))
    top = z.topk(min(k_aux, n_dead), sorted=False)
    aux = torch.zeros_like(z).scatter(-1, top.indices, top.values)
    recon = aux @ sae.W_dec.index_select(0, idx)
    return coeff * scale * (recon - residual).pow(2).sum(-1).mean()


class TopKSAE(LinearSAE):
    """TopK SAE (k active latents per row) with AuxK weighted by ``aux_coeff``."""

    architecture = "topk"
    CONFIG_KEYS = ("k", "aux_coeff")
    SPARSE_MAX_DENSITY = 1.0  # k latents of d_sae: the kept entries are few by design
    WHOLE_K: ClassVar[bool] = True
    """k is per row (a whole number); the batch-level subclasses take a mean (a float)."""

    def __init__(self, d_model: int, d_sae: int, k: float, aux_coeff: float = 1.0,
                 input_scale: float = 1.0, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None):
        super().__init__(d_model, d_sae, input_scale, device, dtype, generator)
        if not 0 < k <= d_sae:
            raise ValueError(f"k must be in (0, d_sae={d_sae}], got {k}")
        if self.WHOLE_K and k != int(k):
            raise ValueError(f"a TopK SAE keeps a whole number of latents per row, got k={k}")
        self.k = int(k) if self.WHOLE_K else float(k)
        self.aux_coeff = float(aux_coeff)

    def activate(self, z: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        return topk_acts(z, int(self.k))

    def select(self, z: Float[Tensor, "batch d_sae"]) -> Pattern:
        """The entries :meth:`activate` keeps (no gradient): each row's k largest."""
        idx = z.topk(int(self.k), dim=-1, sorted=False).indices
        rows = torch.arange(z.shape[0], device=z.device)[:, None]
        return Pattern.of((idx + rows * self.d_sae).reshape(-1), z.shape[0], self.d_sae)

    def recon_terms(self, x: Float[Tensor, "batch d_model"], lat: Latents
                    ) -> tuple[Tensor, Tensor]:
        """(the reconstruction's MSE, the inner prefixes' summed MSEs: 0 but Matryoshka)."""
        mse = sq_err(lat.x_hat, x)
        return mse, mse.new_zeros(())

    def observe_(self, acts: Tensor) -> None:
        """Update state learnt outside the gradient from a training batch's latents."""

    def training_loss(self, x: Float[Tensor, "batch d_model"], coeff: float = 1.0,
                      dead: Bool[Tensor, " d_sae"] | None = None, fast: bool | None = None
                      ) -> TrainLoss:
        """MSE (+ the inner prefixes' MSEs) + AuxK on ``dead``; ``coeff`` unused (k sets
        the sparsity). Updates what :meth:`observe_` learns (BatchTopK's threshold).
        ``fast``: as :meth:`~sae_med.sae.base.LinearSAE.training_latents`."""
        lat = self.training_latents(x, fast)
        mse, inner = self.recon_terms(x, lat)
        aux = auxk_loss(x, lat.x_hat, self, dead, self.aux_coeff)
        self.observe_(lat.kept.detach())
        zero = mse.new_zeros(())
        return TrainLoss(mse + inner + aux, mse.detach(), inner.detach(), zero, aux.detach(),
                         lat.l0.detach(), lat.x_hat.detach(), lat.fired)


class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE: k active latents per row on average over a training batch; encodes
    at inference with ``threshold`` (a JumpReLU with one threshold for every latent)."""

    architecture = "batchtopk"
    CONFIG_KEYS = ("k", "aux_coeff", "threshold_lr")
    EXTRA_TENSORS = ("threshold",)
    KEEP_DTYPES: ClassVar[dict[str, torch.dtype]] = {"input_scale": torch.float64,
                                                     "threshold": torch.float64}
    WHOLE_K = False

    def __init__(self, d_model: int, d_sae: int, k: float, aux_coeff: float = 1.0,
                 threshold_lr: float = 0.01, input_scale: float = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None):
        super().__init__(d_model, d_sae, k, aux_coeff, input_scale, device, dtype, generator)
        if not 0 < threshold_lr <= 1:
            raise ValueError(f"threshold_lr must be in (0, 1], got {threshold_lr}")
        self.threshold_lr = float(threshold_lr)
        # fp64, as sae-lens keeps it: an EMA with rate 0.01 loses its small steps in fp32
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64, device=device))

    def activate(self, z: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        return batch_topk_acts(z, self.k)

    CANDIDATES_PER_K: ClassVar[int] = 4

    def select(self, z: Float[Tensor, "batch d_sae"]) -> Pattern:
        """The entries :meth:`activate` keeps (no gradient): the floor(k x batch) largest
        of relu(z) in the whole batch. Found among each row's m = 4k largest (a top-k of
        batch x m candidates instead of batch x d_sae entries), which holds them all when
        every row's m-th largest is below the n-th largest candidate t > 0; otherwise (a
        row with more than m of them, or ties at 0) over the whole batch."""
        batch, n = z.shape[0], int(self.k * z.shape[0])
        acts = z.relu()
        m = self.CANDIDATES_PER_K * math.ceil(self.k)
        if m < self.d_sae:
            cand = acts.topk(m, dim=-1, sorted=False)
            top = cand.values.flatten().topk(n)  # sorted: the last is the n-th largest
            t = top.values[-1]
            if t > 0 and bool((cand.values.min(-1).values < t).all()):
                rows = top.indices // m
                cols = cand.indices.flatten()[top.indices]
                return Pattern.of(rows * self.d_sae + cols, batch, self.d_sae)
        return Pattern.of(acts.flatten().topk(n).indices, batch, self.d_sae)

    def infer(self, z: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        """relu(z) where z > threshold (sae-lens's JumpReLU inference, as exported)."""
        return z.relu() * (z > self.threshold.to(z.dtype)).to(z.dtype)

    @torch.no_grad()
    def observe_(self, acts: Tensor) -> None:
        """threshold <- (1 - lr) threshold + lr min(positive acts), in fp64."""
        kept = acts[acts > 0]
        if kept.numel():
            lr = self.threshold_lr
            self.threshold.copy_((1 - lr) * self.threshold + lr * kept.min().double())

    def _fold_scale_extra_(self, s: float) -> None:
        self.threshold.div_(s)


class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka-BatchTopK SAE: BatchTopK plus the MSE of each prefix of the latents
    ending at ``prefixes`` (strictly increasing, < d_sae; the full width is the outer
    level, whose MSE is the BatchTopK one)."""

    architecture = "matryoshka_batchtopk"
    CONFIG_KEYS = ("k", "aux_coeff", "threshold_lr", "prefixes")

    def __init__(self, d_model: int, d_sae: int, k: float, prefixes: tuple[int, ...],
                 aux_coeff: float = 1.0, threshold_lr: float = 0.01, input_scale: float = 1.0,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None):
        super().__init__(d_model, d_sae, k, aux_coeff, threshold_lr, input_scale, device,
                         dtype, generator)
        prefixes = tuple(int(p) for p in prefixes)
        bounds = (0, *prefixes, d_sae)
        if not prefixes or any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"prefixes must be strictly increasing in (0, d_sae={d_sae}), "
                             f"got {prefixes}")
        self.prefixes = prefixes

    def recon_terms(self, x: Float[Tensor, "batch d_model"], lat: Latents
                    ) -> tuple[Tensor, Tensor]:
        """The MSE of the reconstruction from latents [0, width) for each inner prefix,
        each built on the one before (sae-lens's order of sums), summed."""
        decoded, prev, inner = self.b_dec, 0, x.new_zeros(())
        for width in self.prefixes:
            decoded = lat.part(prev, width) + decoded
            inner = inner + sq_err(decoded, x)
            prev = width
        return sq_err(lat.x_hat, x), inner


def to_sae_lens(sae: TopKSAE) -> Any:
    """An equivalent sae-lens inference SAE on raw activations (input scale folded in,
    ``apply_b_dec_to_input=False``): a ``TopKSAE`` for TopK; for BatchTopK and Matryoshka a
    ``JumpReLUSAE`` with the inference threshold on every latent, which is how sae-lens
    itself saves them."""
    # sae-lens is imported here: it pulls in transformer-lens, which nothing else needs
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig

    # deferred: sae-lens is heavy (and optional here); only interop needs it
    from sae_lens.saes.topk_sae import TopKSAE as LensTopK

    # deferred: sae-lens is heavy (and optional here); only interop needs it
    from sae_lens.saes.topk_sae import TopKSAEConfig

    kwargs, state = sae.sae_lens_form()
    if isinstance(sae, BatchTopKSAE):
        out = JumpReLUSAE(JumpReLUSAEConfig(**kwargs))
        threshold = float(sae.folded().threshold)
        state["threshold"] = torch.full_like(state["b_enc"], threshold)
    else:
        out = LensTopK(TopKSAEConfig(**kwargs, k=int(sae.k), rescale_acts_by_decoder_norm=False))
    out.load_state_dict(state)
    return out
