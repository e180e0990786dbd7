"""A tiny SAE of every architecture, as a trained one would be, for the export tests."""

from __future__ import annotations

from pathlib import Path

import torch

from sae_med.config import load_config
from sae_med.sae.base import LinearSAE
from sae_med.sae.factory import CLASSES
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.sae.relu import ReLUSAE
from sae_med.sae.topk import BatchTopKSAE, MatryoshkaSAE, TopKSAE

ARCHITECTURES = tuple(CLASSES)
K = 4


def tiny_sae(arch: str, d_model: int = 16, d_sae: int = 32, scale: float = 0.05,
             seed: int = 0) -> LinearSAE:
    """Random weights with non-trivial biases, decoder rows of norms in [1, 2) and
    thresholds where they have one, trained on inputs scaled by ``scale`` (not folded):
    on raw inputs x / ``scale`` some latents fire and some do not."""
    gen = torch.Generator().manual_seed(seed)
    common = {"input_scale": scale, "generator": gen}
    sae = {"jumprelu": lambda: JumpReLUSAE(d_model, d_sae, **common),
           "relu": lambda: ReLUSAE(d_model, d_sae, **common),
           "topk": lambda: TopKSAE(d_model, d_sae, K, **common),
           "batchtopk": lambda: BatchTopKSAE(d_model, d_sae, K, **common),
           "matryoshka_batchtopk": lambda: MatryoshkaSAE(
               d_model, d_sae, K, (d_sae // 4, d_sae // 2), **common)}[arch]()
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(d_model, generator=gen))
        sae.W_dec.mul_(1 + torch.rand(d_sae, 1, generator=gen))
        if isinstance(sae, JumpReLUSAE):
            sae.log_threshold.copy_((0.2 + 0.3 * torch.rand(d_sae, generator=gen)).log())
        elif isinstance(sae, BatchTopKSAE):
            sae.threshold.fill_(0.3)  # what the EMA would have learnt
    return sae


def raw_activations(d_model: int = 16, scale: float = 0.05, n: int = 64) -> torch.Tensor:
    """A fixed batch of raw activations (the SAEs above train on them times ``scale``)."""
    return torch.randn(n, d_model, generator=torch.Generator().manual_seed(1)) / scale


def sae_folder(sae: LinearSAE, run: Path, sae_id: str = "medical/seed_0/l0_4") -> Path:
    """``sae`` saved as ``sae-med train`` lays it out in the run folder ``run``."""
    sae_dir = run / "saes" / sae_id
    sae.save(sae_dir, metadata={"train_corpus": "medical", "l0_target": float(K),
                                "replicate": 0, "tokens": 640,
                                "input_scale": float(sae.input_scale)})
    cfg = load_config(None, ["name=demo", "seed=7", "cache.ctx_len=64",
                             f"sae.architecture={sae.architecture}"])
    (sae_dir / "config.json").write_text(cfg.to_json())
    return sae_dir
