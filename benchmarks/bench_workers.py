"""Training sweeps side by side (``train.workers``) against one after another, same run.

Two sweeps of the config (its first seed on each of its first two training corpora, all
its L0 targets) train ``--steps`` steps each on the config's activation caches, either one
after another in this process with all of torch's threads, or at the same time through
``sae_med.experiment``'s worker pool (``--workers`` processes, the threads divided between
them; process start-up included). Rounds alternate the two so that machine load hits both
alike; every round trains into a fresh folder, so nothing is reused.

    .venv/bin/python benchmarks/bench_workers.py [--config configs/default.yaml]
        [--steps 150] [--rounds 2] [--workers 2]

Last line: ``speedup_workers=<median time one after another / median time side by side>``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sae_med import experiment
from sae_med.cache.activations import ActivationCache
from sae_med.config import Config, load_config


def _config(args: argparse.Namespace, out: Path) -> Config:
    base = load_config(args.config, [])
    return load_config(args.config, [
        f"output_dir={out}", f"train.n_tokens={args.steps * base.train.batch_size}",
        "train.checkpoint_every=0", "train.snapshot_tokens=[]",
        f"train.dead_window_tokens={args.steps * base.train.batch_size}",
        f"train.workers={args.workers}"])


def _sweeps(cfg: Config) -> list[experiment.Sweep]:
    return [experiment.Sweep(c, 0) for c in cfg.train_corpora[:2]]


def one_after_another(cfg: Config) -> float:
    start = time.perf_counter()
    for sw in _sweeps(cfg):
        experiment._train_sweep(cfg, sw, experiment.train_source(cfg, sw.corpus), False)
    return time.perf_counter() - start


def side_by_side(cfg: Config) -> float:
    roots = {c: experiment.train_source(cfg, c).root for c in cfg.train_corpora[:2]}
    start = time.perf_counter()
    experiment._train_parallel(cfg, _sweeps(cfg), roots, False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_workers_"))
    cfg = _config(args, tmp / "warm")
    for c in cfg.train_corpora[:2]:  # build (or open) the caches before any timing
        assert isinstance(experiment.train_source(cfg, c), ActivationCache)
    times: dict[str, list[float]] = {"one after another": [], "side by side": []}
    for r in range(args.rounds):
        times["one after another"].append(one_after_another(_config(args, tmp / f"seq{r}")))
        times["side by side"].append(side_by_side(_config(args, tmp / f"par{r}")))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
              flush=True)
    n_saes = len(_sweeps(cfg)) * len(cfg.sae.l0_targets)
    print(f"{len(_sweeps(cfg))} sweeps x {len(cfg.sae.l0_targets)} SAEs x {args.steps} steps, "
          f"{torch.get_num_threads()} torch threads, {args.workers} workers")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k:18s} median {med:6.1f} s  {1e3 * med / (n_saes * args.steps):5.1f} ms "
              "per SAE step")
    ratio = statistics.median(times["one after another"]) / statistics.median(
        times["side by side"])
    print(f"speedup_workers={ratio:.2f}")


if __name__ == "__main__":
    main()
