"""The ReLU SAE with an L1 penalty: the classic baseline (sae-lens's ``standard`` SAE).

f = relu(x W_enc + b_enc);  x_hat = f W_dec + b_dec;
loss = mean_rows sum_dims (x - x_hat)^2 + lambda mean_rows sum_i f_i ||W_dec_i||.

The L1 term weights each latent by its decoder row norm (Anthropic's April 2024 update,
sae-lens's ``StandardTrainingSAE``), so the penalty cannot be dodged by shrinking f and
growing W_dec; with the trainer's unit-norm rows it is the plain L1. A target L0 is the
trainer's to reach by its choice of lambda: the SAE has no L0 gradient. There is no
dead-latent remedy, as in the reference.
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Bool, Float
from torch import Tensor

from sae_med.sae.base import LinearSAE, TrainLoss, sq_err
from sae_med.sae.kernels import Pattern


class ReLUSAE(LinearSAE):
    """ReLU SAE; see the module docstring and :class:`~sae_med.sae.base.LinearSAE`."""

    architecture = "relu"

    def activate(self, z: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        return z.relu()

    def select(self, z: Float[Tensor, "batch d_sae"]) -> Pattern:
        """The active entries (z > 0), for the sparse training path."""
        return Pattern.of((z > 0).view(-1).nonzero().squeeze(1), z.shape[0], self.d_sae)

    def training_loss(self, x: Float[Tensor, "batch d_model"], coeff: float = 1.0,
                      dead: Bool[Tensor, " d_sae"] | None = None, fast: bool | None = None
                      ) -> TrainLoss:
        """MSE + ``coeff`` times the decoder-weighted L1 of the latents; ``dead`` unused.
        ``fast``: as :meth:`~sae_med.sae.base.LinearSAE.training_latents` (sparse once
        the L1 has made the latents sparse)."""
        lat = self.training_latents(x, fast)
        mse = sq_err(lat.x_hat, x)
        l1 = coeff * lat.weighted(self.W_dec.norm(dim=1))
        zero = mse.new_zeros(())
        return TrainLoss(mse + l1, mse.detach(), zero, l1.detach(), zero, lat.l0.detach(),
                         lat.x_hat.detach(), lat.fired)


def to_sae_lens(sae: ReLUSAE) -> Any:
    """An equivalent ``sae_lens.saes.standard_sae.StandardSAE`` on raw activations (input
    scale folded in, ``apply_b_dec_to_input=False``)."""
    # sae-lens is imported here: it pulls in transformer-lens, which nothing else needs
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    kwargs, state = sae.sae_lens_form()
    out = StandardSAE(StandardSAEConfig(**kwargs))
    out.load_state_dict(state)
    return out
