"""Tiny training inputs the training tests share: synthetic activations, a tiny config."""

from __future__ import annotations

import torch

from sae_med.config import Config, SAEConfig, TrainConfig


def synthetic_acts(n: int = 2048, d: int = 16, n_atoms: int = 64, k: int = 3,
                   seed: int = 0) -> torch.Tensor:
    """Sparse non-negative combinations of random unit directions, at a large raw norm."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(n_atoms, generator=g)[:k] for _ in range(n)])
    mags = torch.rand(n, k, generator=g) + 0.5
    codes = torch.zeros(n, n_atoms).scatter_(1, idx, mags)
    return 300.0 * (codes @ atoms + 0.01 * torch.randn(n, d, generator=g))


def tiny_config(**train: object) -> Config:
    tc = dict(n_tokens=32 * 40, batch_size=32, lr=3e-3, lr_warmup_steps=5,
              sparsity_warmup_steps=10, norm_batches=2, checkpoint_every=10, log_every=5,
              device="cpu")
    tc.update(train)
    return Config(seed=3, sae=SAEConfig(width=64, l0_targets=(4.0, 8.0), bandwidth=0.01),
                  train=TrainConfig(**tc))
