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


class ReLUSAE(LinearSAE):
    """ReLU SAE; see the module docstring and :class:`~sae_med.sae.base.LinearSAE`."""

    architecture = "relu"

    def activate(self, z: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        return z.relu()

    def training_loss(self, x: Float[Tensor, "batch d_model"], coeff: float = 1.0,
                      dead: Bool[Tensor, " d_sae"] | None = None) -> TrainLoss:
        """MSE + ``coeff`` times the decoder-weighted L1 of the latents; ``dead`` unused."""
        out = self(x)
        mse = sq_err(out.x_hat, x)
        l1 = coeff * (out.acts * self.W_dec.norm(dim=1)).sum(-1).mean()
        zero = mse.new_zeros(())
        return TrainLoss(mse + l1, mse.detach(), zero, l1.detach(), zero, out.l0,
                         out.x_hat.detach(), (out.acts > 0).any(0))


def to_sae_lens(sae: ReLUSAE) -> Any:
    """An equivalent ``sae_lens.saes.standard_sae.StandardSAE`` on raw activations (input
    scale folded in, ``apply_b_dec_to_input=False``)."""
    # sae-lens is imported here: it pulls in transformer-lens, which nothing else needs
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    kwargs, state = sae.sae_lens_form()
    out = StandardSAE(StandardSAEConfig(**kwargs))
    out.load_state_dict(state)
    return out
