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

``--validation`` chooses the recipe on training documents only, the same way on both sides
(issue 31, "equal baselines"): a grouped validation part (``--validation-frac`` of the
groups, carved by :func:`sae_med.corpora.documents.in_validation` with
``--validation-seed``) is held out of each corpus's training cache (``--corpora``, default
medical and broad); every variant trains on the rest of each corpus and is scored on that
corpus's own validation part (FVE and L0 on its cached activations, spliced ΔCE on its
documents, as many as ``eval.ce_tokens`` / ``eval.ce_docs`` asks of an eval corpus). The
variants are ranked by the declared criterion, :data:`CRITERION`: the mean over the sides
of the ΔCE on each side's own validation text (lower is better); FVE is reported beside it.
The full run (not yet made: eight sweeps, twice the plain ablation's four, so about two
hours on the 2-core machine kind if the plain ablation's hour scales):

    .venv/bin/python benchmarks/bench_recipe.py --validation --out /tmp/recipes-val

A smoke-sized check of the code path (minutes):

    .venv/bin/python benchmarks/bench_recipe.py --validation --config configs/smoke.yaml \
        --target 16 --validation-frac 0.25 --out /tmp/recipes-val-smoke \
        a=train.n_tokens=16384,train.dead_window_tokens=4096 \
        b=train.n_tokens=16384,train.dead_window_tokens=4096,train.lr=3e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from sae_med.artifacts import stable_hash
from sae_med.cache.activations import build_cache, packed_batches
from sae_med.cache.batches import ChunkedBatches
from sae_med.config import Config, load_config
from sae_med.corpora.documents import Document, in_validation
from sae_med.corpora.registry import documents_by_id
from sae_med.experiment import load_model_for, stage_train
from sae_med.layout import SAES_DIR, sae_id
from sae_med.lm.model import LanguageModel, TokenBatch
from sae_med.measure.diagnose import TokenDamage, token_damages
from sae_med.measure.metrics import fve
from sae_med.measure.scoring import ce_batches, reconstruction_fn
from sae_med.sae.base import LinearSAE
from sae_med.sae.factory import load_sae
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.train.sweep import train_saes

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


# --------------------------------------------------------------------------------------
# --validation: the recipe chosen on validation parts of the training documents
# --------------------------------------------------------------------------------------

CRITERION = "mean over the sides of ΔCE on each side's own validation text (lower is better)"
"""Declared before any validation run: what ranks the variants. ΔCE, not FVE, because the
claims are about what the model loses; averaged over the sides, so neither side's SAE is
tuned on its own text at the other's expense. A variant that changes the training budget
(``train.n_tokens``, like the default ablation's twice-the-tokens row) is ranked and shown
for scale but is not a recipe to choose: the budget is set by the time the default may
take, not by the validation text (declared 2026-12-07, before the first full run ended)."""


class Carved(NamedTuple):
    """A corpus's training cache with a grouped validation part held out."""

    fit: ChunkedBatches
    """The rows of documents outside the validation groups (what the variants train on)."""
    x_val: Float[Tensor, "n_val d_model"]
    """The cached activations of the validation documents."""
    texts: list[str]
    """Validation documents for the spliced ΔCE, in cache order."""
    groups: tuple[int, int]
    """Groups trained on, groups held out."""


def ce_budget(model: LanguageModel, cfg: Config, docs: list[Document]) -> list[str]:
    """The first of ``docs`` that give ``eval.ce_tokens`` scored tokens (if set, else the
    first ``eval.ce_docs``), counted as the eval corpora's CE documents are."""
    budget, ctx, texts, scored = cfg.eval.ce_tokens, cfg.cache.ctx_len, [], 0
    for d in docs:
        if (scored >= budget) if budget else len(texts) >= cfg.eval.ce_docs:
            break
        texts.append(d.text)
        scored += min(int(model.tokenize([d.text], ctx).attention_mask.sum()), ctx) - 2
    return texts


def carve(model: LanguageModel, cfg: Config, corpus: str, frac: float, seed: int) -> Carved:
    """``corpus``'s training cache (as the run builds it) split by validation group."""
    cache = build_cache(model, cfg, corpus, "train", n_tokens=cfg.cache.n_tokens,
                        progress=False)
    docs = documents_by_id(corpus, "train", cache.doc_ids())
    held = torch.tensor([in_validation(d.group_key, frac, seed) for d in docs])
    row_held = held[cache.tokens().doc_index]  # (n_tokens,)
    fit, val, start = [], [], 0
    for rows in cache.rows:  # a shard at a time: the cache is read once
        x, m = cache.activations(start, start + rows), row_held[start:start + rows]
        fit.append(x[~m])
        val.append(x[m])
        start += rows
    source = ChunkedBatches([c for c in fit if len(c)], window=cache.window)
    # a finished sweep is reused only for the same carving (train_saes keys runs by it)
    source.key = stable_hash({"cache": cache.key, "validation": [frac, seed]})  # type: ignore[attr-defined]
    groups = {d.group_key: bool(h) for d, h in zip(docs, held.tolist(), strict=True)}
    return Carved(source, torch.cat(val), ce_budget(model, cfg, [
        d for d, h in zip(docs, held.tolist(), strict=True) if h]),
        (sum(not h for h in groups.values()), sum(groups.values())))


class SideScore(NamedTuple):
    """One variant trained on one corpus, scored on that corpus's validation part."""

    train_seconds: float
    train_dead: float
    fve: float
    l0: float
    damage: TokenDamage


def train_side(cfg: Config, corpus: str, carved: Carved, out: Path) -> tuple[LinearSAE, float,
                                                                           float]:
    """(SAE, seconds, training-window dead fraction) of one variant on ``carved.fit``."""
    t = time.perf_counter()
    [result] = train_saes(cfg, carved.fit, out, resume=True, progress=False,
                          train_corpus=corpus)
    dead = result.metrics.dead_frac if result.metrics else math.nan
    return load_sae(result.path), time.perf_counter() - t, dead


@torch.no_grad()
def validation_side(model: LanguageModel, cfg: Config, carved: Carved,
                    trained: dict[str, tuple[LinearSAE, float, float]]) -> dict[str, SideScore]:
    """Every variant's FVE, L0 and per-token ΔCE on one corpus's validation part (its
    documents packed as ``cfg.cache`` packs them); one clean and zero pass for all, so ΔCE
    differences between variants are paired."""
    batches: list[TokenBatch] = [b for _, b in packed_batches(model, carved.texts, cfg.cache)]
    damage = token_damages(model, batches, cfg.model.hook_layer,
                           {n: reconstruction_fn(t[0]) for n, t in trained.items()})
    out = {}
    for name, (sae, seconds, dead) in trained.items():
        acts = sae.encode(carved.x_val)  # dense: L0 counts per row
        out[name] = SideScore(seconds, dead, fve(carved.x_val, sae.decode(acts)),
                              float((acts > 0).sum(1).float().mean()), damage[name])
    return out


def validation_config(config: str, name: str, overrides: list[str], target: float,
                      out: Path, curve: bool) -> Config:
    return variant_config(config, [f"sae.l0_targets=[{target:g}]", "sae.seeds=1",
                                   f"output_dir={out / name}", *overrides], curve)


def paired(damage: dict[str, TokenDamage], name: str, first: str) -> tuple[float, float]:
    """Mean per-token ΔCE of ``name`` minus ``first``'s on the same tokens, and its s.e."""
    diff = damage[name].delta_ce - damage[first].delta_ce
    return float(diff.mean()), float(diff.std()) / len(diff) ** 0.5


def print_validation(scores: dict[str, dict[str, SideScore]], names: list[str]) -> None:
    """Per side, then the ranking by :data:`CRITERION` (the mean over sides; its paired
    difference to the first variant with 1.96 s.e., sides independent)."""
    sides = list(scores)
    print("| variant | trained on | train s (0: reused) | dead (training window) "
          "| validation FVE | L0 | validation ΔCE nats |")
    print("|---|---|---|---|---|---|---|")
    for side in sides:
        for n in names:
            v = scores[side][n]
            print(f"| {n} | {side} | {v.train_seconds:.0f} | {v.train_dead:.3f} | "
                  f"{v.fve:.4f} | {v.l0:.1f} | {float(v.damage.delta_ce.mean()):.3f} |")
    mean = {n: sum(float(scores[s][n].damage.delta_ce.mean()) for s in sides) / len(sides)
            for n in names}
    print(f"\nRanked by the {CRITERION}:\n")
    print(f"| rank | variant | mean ΔCE | {' | '.join(f'ΔCE {s}' for s in sides)} | mean FVE "
          "| mean ΔCE − first (paired, 1.96 s.e.) |")
    print("|---|---|---|" + "---|" * len(sides) + "---|---|")
    for rank, n in enumerate(sorted(names, key=mean.__getitem__), 1):
        diffs = [paired({k: scores[s][k].damage for k in names}, n, names[0]) for s in sides]
        d = sum(m for m, _ in diffs) / len(sides)
        se = sum(e ** 2 for _, e in diffs) ** 0.5 / len(sides)
        cells = " | ".join(f"{float(scores[s][n].damage.delta_ce.mean()):.3f}" for s in sides)
        fves = sum(scores[s][n].fve for s in sides) / len(sides)
        print(f"| {rank} | {n} | {mean[n]:.3f} | {cells} | {fves:.4f} | "
              f"{d:+.3f} ± {1.96 * se:.3f} |")


def run_validation(a: argparse.Namespace, specs: list[tuple[str, list[str]]]) -> None:
    """Train every variant on each corpus's training cache less its validation groups and
    score it on those groups (:func:`carve`, :func:`validation_side`)."""
    cfgs = {n: validation_config(a.config, n, ov, a.target, a.out, a.learning_curve)
            for n, ov in specs}
    first = cfgs[specs[0][0]]
    model, corpora = load_model_for(first), a.corpora.split(",")
    scores: dict[str, dict[str, SideScore]] = {}
    for corpus in corpora:
        carved: dict[str, Carved] = {}  # by cache settings: variants may change them
        trained = {}
        for n, cfg in cfgs.items():
            key = stable_hash(cfg.to_dict()["cache"])
            if key not in carved:
                carved[key] = carve(model, cfg, corpus, a.validation_frac, a.validation_seed)
            trained[n] = train_side(cfg, corpus, carved[key], a.out / n / corpus)
        c = carved[stable_hash(first.to_dict()["cache"])]
        scores[corpus] = validation_side(model, first, c, trained)
        print(f"# {corpus}: {c.groups[1]} of {sum(c.groups)} groups held out "
              f"({c.x_val.shape[0]} cached tokens, {len(c.texts)} CE documents); trained "
              f"on {c.fit.n_tokens} tokens", flush=True)
    print(f"# bench_recipe --validation {time.strftime('%Y-%m-%d')}: {a.config}, target L0 "
          f"{a.target:g} unless a variant sets its own, validation share "
          f"{a.validation_frac:g} of groups (seed {a.validation_seed})")
    print_validation(scores, [n for n, _ in specs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--learning-curve", action="store_true",
                    help="train on the config's learning-curve run (its caches and budget)")
    ap.add_argument("--target", type=float, default=80.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sae-med-recipes"))
    ap.add_argument("--validation", action="store_true",
                    help="choose on grouped validation parts of the training corpora")
    ap.add_argument("--validation-frac", type=float, default=0.1)
    ap.add_argument("--validation-seed", type=int, default=0)
    ap.add_argument("--corpora", default="medical,broad",
                    help="--validation: the training corpora (comma-separated)")
    ap.add_argument("variants", nargs="*", default=list(DEFAULT_VARIANTS))
    a = ap.parse_args()
    specs = [(name, [o for o in ov.split(",") if o])
             for name, _, ov in (spec.partition("=") for spec in a.variants)]
    if a.validation:
        run_validation(a, specs)
        return
    variants = [train_variant(a.config, name, ov, a.target, a.out, a.learning_curve)
                for name, ov in specs]
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
