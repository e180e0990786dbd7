"""Training-recipe ablation on a real config: held-out FVE, L0, live latents and spliced ΔCE.

Each variant is the config plus ``section.field=value`` overrides; all train one
replicate at one target L0 (``--target``, or the variant's own ``sae.l0_targets=[t]``, so
that targets can be compared on paired tokens too) on the first training corpus, and all
are scored on the same held-out activations and the same CE tokens (one shared clean /
zero pass), so the ΔCE differences against the first variant are paired (per-token
mean ± 1.96 s.e.).

    .venv/bin/python benchmarks/bench_recipe.py [--config configs/default.yaml]
        [--learning-curve] [--target 80] [--out /tmp/recipes]
        NAME=k=v,k=v NAME2=... (first = reference)

``--learning-curve`` runs the variants on the config's learning-curve run instead (its
larger caches and budget; the overrides apply to that run; ``--config configs/long.yaml``),
as the dead-latent remedy in RESULTS.md was tested.

Without variants it runs the ablation recorded in RESULTS.md (the paper's plain recipe,
centring, centring at lr 3e-3, and that with twice the training tokens).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch

from sae_med.cache.activations import build_cache
from sae_med.config import Config, load_config
from sae_med.experiment import load_model_for, stage_train
from sae_med.layout import SAES_DIR, sae_id
from sae_med.measure.diagnose import token_damages
from sae_med.measure.metrics import fve
from sae_med.measure.scoring import ce_batches, reconstruction_fn
from sae_med.sae.jumprelu import JumpReLUSAE

DEFAULT_VARIANTS = (
    "plain=train.center_inputs=false,train.lr=1e-3",
    "centred=train.center_inputs=true,train.lr=1e-3",
    "centred_lr3e-3=train.center_inputs=true,train.lr=3e-3",
    "centred_lr3e-3_2x_tokens=train.center_inputs=true,train.lr=3e-3,train.n_tokens=1200000",
)


class Variant(NamedTuple):
    name: str
    cfg: Config
    sae: JumpReLUSAE
    train_seconds: float
    train_dead: float
    """Dead fraction over the last ``train.dead_window_tokens`` of training."""


def variant_config(config: str, overrides: list[str], curve: bool) -> Config:
    """The config (or its learning-curve run's) with ``overrides`` applied to that run."""
    if not curve:
        return load_config(config, overrides)
    cfg = load_config(config, [f"learning_curve.{o}" for o in overrides])
    curve_cfg = cfg.learning_curve_config()
    if curve_cfg is None:
        raise SystemExit(f"{config} has no learning_curve section")
    return curve_cfg


def train_variant(config: str, name: str, overrides: list[str], target: float, out: Path,
                  curve: bool = False) -> Variant:
    cfg = variant_config(config, [f"sae.l0_targets=[{target:g}]", "sae.seeds=1",
                                  f"output_dir={out / name}", *overrides], curve)
    cfg = dataclasses.replace(cfg, train_corpora=type(cfg.train_corpora)(cfg.train_corpora[:1]))
    t = time.perf_counter()
    result = stage_train(cfg, progress=False)[cfg.train_corpora[0]][0]
    target = cfg.sae.l0_targets[0]  # a variant may set its own (sae.l0_targets=[20])
    sae = JumpReLUSAE.load(cfg.run_path / SAES_DIR / sae_id(cfg.train_corpora[0], 0, target))
    return Variant(name, cfg, sae, time.perf_counter() - t,
                   result.metrics.dead_frac if result.metrics else math.nan)


@torch.no_grad()
def held_out(v: Variant, x: torch.Tensor) -> str:
    acts = v.sae.encode(x)
    score = fve(x, v.sae.decode(acts))
    alive = float((acts > 0).any(0).float().mean())
    return f"{score:.4f} | {float((acts > 0).sum(1).float().mean()):.1f} | {alive:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--learning-curve", action="store_true",
                    help="train on the config's learning-curve run (its caches and budget)")
    ap.add_argument("--target", type=float, default=80.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sae-med-recipes"))
    ap.add_argument("variants", nargs="*", default=list(DEFAULT_VARIANTS))
    a = ap.parse_args()
    variants = []
    for spec in a.variants:
        name, _, ov = spec.partition("=")
        variants.append(train_variant(a.config, name, [o for o in ov.split(",") if o],
                                      a.target, a.out, a.learning_curve))
    cfg = variants[0].cfg
    corpus, model = cfg.train_corpora[0], load_model_for(cfg)
    x = build_cache(model, cfg, corpus, "eval", n_tokens=cfg.eval.n_tokens,
                    progress=False).activations()
    damage = token_damages(model, ce_batches(model, cfg, corpus), cfg.model.hook_layer,
                           {v.name: reconstruction_fn(v.sae) for v in variants})
    ref = damage[variants[0].name].delta_ce
    print(f"# bench_recipe {time.strftime('%Y-%m-%d')}: {a.config}, trained on {corpus}, "
          f"target L0 {a.target:g} unless a variant sets its own; held-out {x.shape[0]} "
          f"activations, "
          f"{len(ref)} CE tokens of {corpus}/eval")
    print("| variant | train s | dead (training window) | held-out FVE | L0 | live latents "
          "| ΔCE nats | KL | ΔCE − first (paired) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for v in variants:
        d = damage[v.name]
        diff = d.delta_ce - ref
        half = 1.96 * float(diff.std()) / len(diff) ** 0.5
        print(f"| {v.name} | {v.train_seconds:.0f} | {v.train_dead:.3f} | {held_out(v, x)} | "
              f"{float(d.delta_ce.mean()):.3f} | {float(d.kl.mean()):.3f} | "
              f"{float(diff.mean()):+.3f} ± {half:.3f} |")


if __name__ == "__main__":
    main()
