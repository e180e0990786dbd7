"""One-off quality check of the trainer on synthetic-but-structured activations.

Tokens are sparse non-negative combinations of random unit "true features" plus noise, at
a large raw norm (so normalisation matters). A sweep is trained with the paper's recipe
and each SAE is scored on held-out tokens: L0 vs target, FVE, dead fraction, and how many
true features a decoder row recovers (max cosine > 0.9). With ``--cache`` the same sweep
runs on real activations (a .pt/.npy (tokens, d_model) array) and only L0/FVE/dead are
reported.

    .venv/bin/python benchmarks/quality_train.py [--steps 2000] [--cache acts.pt]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sae_med.cache.batches import TensorBatchSource
from sae_med.config import Config, SAEConfig, TrainConfig
from sae_med.measure.metrics import fve
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.train.sweep import train_saes


def synthetic(n: int, d: int, n_feats: int, mean_k: float, seed: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_feats, d, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    gf = torch.Generator().manual_seed(seed + 1)
    # Zipf-ish feature frequencies, like real SAE features
    p = 1.0 / torch.arange(1, n_feats + 1).float() ** 0.7
    p = (p / p.sum() * mean_k).clamp(max=0.5)
    on = torch.rand(n, n_feats, generator=gf) < p
    mags = torch.empty(n, n_feats).exponential_(1.0, generator=gf) + 0.2
    x = (on * mags) @ feats + 0.02 * torch.randn(n, d, generator=gf)
    return 500.0 * x, feats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--feats", type=int, default=1024)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--mean-k", type=float, default=10.0)
    ap.add_argument("--targets", default="5,10,20")
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threshold-lr-mult", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--cache", default="")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)

    if args.cache:
        p = Path(args.cache)
        acts = torch.load(p) if p.suffix == ".pt" else torch.from_numpy(np.load(p))
        acts = acts.float().reshape(-1, acts.shape[-1])
        feats = None
    else:
        acts, feats = synthetic(args.tokens + 20_000, args.d, args.feats, args.mean_k, 0)
    train, held = acts[:-20_000], acts[-20_000:]
    targets = tuple(float(t) for t in args.targets.split(","))
    cfg = Config(seed=0, sae=SAEConfig(width=args.width, l0_targets=targets),
                 train=TrainConfig(n_tokens=args.steps * args.batch, batch_size=args.batch,
                                   lr=args.lr, lr_warmup_steps=args.steps // 20,
                                   sparsity_warmup_steps=args.steps // 4, norm_batches=20,
                                   checkpoint_every=0, log_every=50, device="cpu",
                                   threshold_lr_mult=args.threshold_lr_mult))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = train_saes(cfg, TensorBatchSource(train), Path(tmp) / "q",
                             progress=args.progress)
        elapsed = time.perf_counter() - t0
        print(f"trained {len(results)} SAEs, {cfg.train.n_tokens} tokens each, in "
              f"{elapsed:.0f}s ({len(results) * cfg.train.n_tokens / elapsed:.0f} SAE-tok/s)")
        print(f"{'target':>7}{'L0':>7}{'FVE':>7}{'dead':>7}{'recovered':>11}  (held-out)")
        for r in results:
            sae = JumpReLUSAE.load(r.path)
            with torch.no_grad():
                out = sae(held)
            l0 = float((out.acts > 0).float().sum(-1).mean())
            dead = float(((out.acts > 0).sum(0) == 0).float().mean())
            rec = ""
            if feats is not None:
                cos = feats @ sae.W_dec.detach().t()
                rec = f"{float((cos.max(1).values > 0.9).float().mean()):.3f}"
            print(f"{r.l0_target:>7g}{l0:>7.1f}{fve(held, out.x_hat):>7.3f}"
                  f"{dead:>7.3f}{rec:>11}")


if __name__ == "__main__":
    main()
