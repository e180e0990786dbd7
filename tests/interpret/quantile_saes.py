"""A random JumpReLU SAE whose latents each fire on a set share of a cache's tokens."""

from __future__ import annotations

import torch

from sae_med.sae.jumprelu import JumpReLUSAE


def quantile_sae(cache, d_sae: int, quantile: float, seed: int = 0) -> JumpReLUSAE:
    """Random weights (generator seeded ``seed``), each latent's threshold at the
    ``quantile`` of its pre-activations over ``cache``: every latent fires on about
    1 − ``quantile`` of the tokens."""
    s = JumpReLUSAE(cache.d_model, d_sae, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        z = cache.activations() @ s.W_enc + s.b_enc
        s.log_threshold.copy_(torch.quantile(z, quantile, dim=0).clamp_min(1e-3).log())
    return s
