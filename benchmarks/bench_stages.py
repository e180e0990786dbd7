"""The default's stages at reduced size on this machine: throughput per stage and the
projected time of `make run`'s experiment (cache, train, evaluate; both models).

Each stage runs through the package's own functions on a config's model, in a temporary
cache and run folder, at two sizes (a quarter and all of the size asked for), so that its
cost splits into a fixed part (start-up, reading the corpus) and a marginal one: caching
``--cache-tokens`` of the first training corpus, training one sweep (``sae.l0_targets`` at
``sae.width``, ``train.batch_size``) for ``--steps`` steps, and scoring as many SAEs as
the config's experiment has (copies of that sweep's) on ``--eval-tokens`` eval tokens with
``--ce-tokens`` spliced-CE tokens (spliced CE timed apart from the rest). The projection
scales each cost to the config's own sizes: caching by tokens per corpus and split,
training by steps (every sweep one after another at the measured rate: ``train.workers``
is not counted), scoring by tokens per eval corpus. The notebooks and the book are not
included.

    .venv/bin/python benchmarks/bench_stages.py [--config configs/default.yaml]

Prints the CPU (model name, native bf16 or not, ISA limits) and what ``model.dtype``
resolved to; last line ``projected_experiment_minutes=<total>``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch

from sae_med.cache.activations import build_cache
from sae_med.config import Config, load_config
from sae_med.lm.load import load_model
from sae_med.measure import scoring
from sae_med.measure.scoring import score_saes
from sae_med.runtime import cpu_bf16_capability, isa_limits, machine_profile
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.train.schedule import total_steps
from sae_med.train.sweep import train_saes


def n_saes(cfg: Config) -> int:
    """SAEs the config's experiment trains (and scores on every eval corpus)."""
    return len(cfg.train_corpora) * cfg.sae.seeds * len(cfg.sae.l0_targets)


class Cost(NamedTuple):
    """A stage's seconds as ``fixed + per_unit * units``, from two timed sizes."""

    fixed: float
    per_unit: float

    def seconds(self, units: float) -> float:
        return self.fixed + self.per_unit * units


def two_sizes(run: Callable[[int], float], small_n: int, large_n: int) -> Cost:
    """Time ``run(n)`` (which returns its own seconds) at two sizes, after one untimed
    warm-up at the small size (what a process pays once: reading corpora, first calls);
    the difference is the marginal cost per unit, the rest the fixed cost."""
    run(small_n)
    t1, t2 = run(small_n), run(large_n)
    per = max(t2 - t1, 1e-9) / (large_n - small_n)
    return Cost(max(t1 - per * small_n, 0.0), per)


class StageCosts(NamedTuple):
    """One model's measured costs; units in each field's docstring."""

    cache: Cost
    """Per cached token (one corpus)."""
    train: Cost
    """Per sweep step (every target's SAE on one batch)."""
    ce: Cost
    """Spliced CE per scored token, for all the config's SAEs (:func:`n_saes`)."""
    other: Cost
    """The rest of scoring per eval token, for all the config's SAEs."""


def small(cfg: Config, root: Path, steps: int, a: argparse.Namespace) -> Config:
    """``cfg`` at the benchmark's sizes, its caches and runs under ``root``."""
    train = replace(cfg.train, workers=1, n_tokens=steps * cfg.train.batch_size,
                    checkpoint_every=10**9, dead_window_tokens=cfg.train.batch_size,
                    snapshot_tokens=())
    return replace(cfg, name="bench_stages", output_dir=str(root / "runs"),
                   cache_dir=str(root / "cache"), replications={}, learning_curve={},
                   train=train, eval=replace(cfg.eval, ce_tokens=a.ce_tokens))


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(cfg: Config, a: argparse.Namespace, root: Path) -> StageCosts:
    """Run ``cfg``'s stages small, each at two sizes, and return their costs."""
    model = load_model(cfg.model.name, cfg.model.device, cfg.cache_path, cfg.model.dtype)
    print(f"{cfg.model.name}: forwards in {model.dtype_choice.dtype} "
          f"({model.dtype_choice.reason})")
    sc = small(cfg, root, a.steps, a)
    corpus = sc.train_corpora[0]
    def cache(n: int) -> float:  # a fresh cache folder each time: nothing reused
        fresh = replace(sc, cache_dir=str(root / f"cache_{n}_{time.perf_counter_ns()}"))
        return timed(lambda: build_cache(model, fresh, corpus, "train", n_tokens=n,
                                         progress=False))
    cache_cost = two_sizes(cache, a.cache_tokens // 4, a.cache_tokens)
    source = build_cache(model, sc, corpus, "train", n_tokens=a.cache_tokens, progress=False)
    results = []

    def train(steps: int) -> float:
        run = small(cfg, root, steps, a)
        out = root / f"sweep_{steps}_{len(results)}"  # a new run each time, never reused
        t = time.perf_counter()
        results.append(train_saes(run, source, out, progress=False, train_corpus=corpus))
        return time.perf_counter() - t
    train_cost = two_sizes(train, max(a.steps // 4, 1), a.steps)
    # as many SAEs as the config's experiment scores (copies of this sweep's), since the
    # clean forward of spliced CE is shared by all of them
    trained = [JumpReLUSAE.load(r.path) for r in results[-1]]
    saes = {f"sae_{i}": trained[i % len(trained)] for i in range(n_saes(cfg))}
    ce_s, scored = _timing_spliced_losses()
    timings = []

    def score(n: int) -> float:
        ev = replace(sc, eval=replace(sc.eval, n_tokens=n))
        eval_cache = build_cache(model, ev, corpus, "eval", n_tokens=n, progress=False)
        before = ce_s[0]
        total = timed(lambda: score_saes(saes, model, ev, corpus, eval_cache, progress=False))
        timings.append(ce_s[0] - before)
        return total - timings[-1]
    other = two_sizes(score, a.eval_tokens // 4, a.eval_tokens)
    # the CE tokens are the same at both sizes: its cost is per scored token, no fixed part
    ce = Cost(0.0, statistics.median(timings) / (scored[0] / len(timings)))
    return StageCosts(cache_cost, train_cost, ce, other)


def _timing_spliced_losses() -> tuple[list[float], list[int]]:
    """Wrap the scoring stage's ``spliced_losses`` to add up its seconds and scored
    tokens."""
    seconds, scored = [0.0], [0]
    inner = scoring.spliced_losses

    def wrapped(*args, **kwargs):
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        seconds[0] += time.perf_counter() - t
        scored[0] += int(next(iter(out.values())).mask.sum())
        return out

    scoring.spliced_losses = wrapped
    return seconds, scored


def project(cfg: Config, c: StageCosts) -> dict[str, float]:
    """Minutes per stage of ``cfg``'s own experiment at costs ``c``."""
    corpora = set(cfg.train_corpora) | set(cfg.eval_corpora)
    sweeps = len(cfg.train_corpora) * cfg.sae.seeds
    cache = (len(cfg.train_corpora) * c.cache.seconds(cfg.cache.n_tokens)
             + len(corpora) * c.cache.seconds(cfg.eval.n_tokens))
    evaluate = len(cfg.eval_corpora) * (c.ce.seconds(cfg.eval.ce_tokens)
                                        + c.other.seconds(cfg.eval.n_tokens))
    return {"cache": cache / 60, "train": sweeps * c.train.seconds(total_steps(cfg.train)) / 60,
            "evaluate": evaluate / 60}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--cache-tokens", type=int, default=16384)
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--ce-tokens", type=int, default=256)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = load_config(a.config)
    prof = machine_profile()
    native = cpu_bf16_capability()
    print(f"CPU: {prof.cpu}; native bf16: {'ambiguous' if native is None else native}; "
          f"ISA limits: {isa_limits() or 'none'}; {torch.get_num_threads()} threads")
    total = 0.0
    for cfg in [base, *base.replication_configs().values()]:
        with tempfile.TemporaryDirectory() as tmp:
            c = measure(cfg, a, Path(tmp))
        minutes = project(cfg, c)
        total += sum(minutes.values())
        print(f"  caching {1 / c.cache.per_unit:6.0f} tok/s | training "
              f"{1 / c.train.per_unit:5.2f} steps/s | spliced CE {1 / c.ce.per_unit:5.1f} "
              f"scored tok/s ({n_saes(cfg)} SAEs) | other scoring {1 / c.other.per_unit:6.0f} "
              f"tok/s ({n_saes(cfg)} SAEs); fixed s: cache {c.cache.fixed:.1f}, train "
              f"{c.train.fixed:.1f}, scoring {c.other.fixed:.1f}")
        print("  projected minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items())
              + f" (total {sum(minutes.values()):.1f})")
    print(f"projected_experiment_minutes={total:.1f}")


if __name__ == "__main__":
    main()
