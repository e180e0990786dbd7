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

With ``--architectures relu,topk,...`` it compares instead one sweep per architecture (the
config's targets and width, ``--steps`` steps each, one after another through
``train_saes``) against all of them from one pass over the activations
(``train_sweeps``), on ``--d-model``-wide gaussian activations held in memory in
cache-sized shards (the same two-level shuffle as a cache; no disk reads), with
``--threads`` torch threads (1: what each of the default's workers has). Last line:
``speedup_shared_pass=<median time separate / median time one pass>``.
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
from sae_med.cache.batches import TensorBatchSource
from sae_med.config import Config, load_config
from sae_med.train.sweep import SweepRun, train_saes, train_sweeps


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
        experiment._train_sweep([cfg], sw, experiment.train_source(cfg, sw.corpus), False)
    return time.perf_counter() - start


def side_by_side(cfg: Config) -> float:
    roots = {c: experiment.train_source(cfg, c).root for c in cfg.train_corpora[:2]}
    start = time.perf_counter()
    experiment._train_parallel([cfg], _sweeps(cfg), roots, False)
    return time.perf_counter() - start


def _arch_runs(args: argparse.Namespace, out: Path) -> list[SweepRun]:
    """One run per architecture, differing from the config only there."""
    return [SweepRun(load_config(args.config, [
        f"train.n_tokens={args.steps * load_config(args.config, []).train.batch_size}",
        "train.checkpoint_every=0", "train.snapshot_tokens=[]", "train.workers=1",
        f"sae.architecture={a}"]), out / a) for a in args.architectures.split(",")]


def separate(runs: list[SweepRun], source: TensorBatchSource) -> tuple[float, float]:
    """Wall and CPU seconds of one sweep per run, one after another."""
    wall, cpu = time.perf_counter(), time.process_time()
    for r in runs:
        train_saes(r.cfg, source, r.out_dir, progress=False, train_corpus="bench")
    return time.perf_counter() - wall, time.process_time() - cpu


def one_pass(runs: list[SweepRun], source: TensorBatchSource) -> tuple[float, float]:
    """Wall and CPU seconds of every run's sweep from one pass."""
    wall, cpu = time.perf_counter(), time.process_time()
    train_sweeps(runs, source, "bench", progress=False)
    return time.perf_counter() - wall, time.process_time() - cpu


def architectures_main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_shared_pass_"))
    cfg = _arch_runs(args, tmp)[0].cfg
    acts = torch.randn(cfg.cache.n_tokens, args.d_model,
                       generator=torch.Generator().manual_seed(0))
    source = TensorBatchSource(acts, chunk_rows=cfg.cache.shard_tokens)
    times: dict[str, list[tuple[float, float]]] = {"separate": [], "one pass": []}
    for r in range(args.rounds):
        times["separate"].append(separate(_arch_runs(args, tmp / f"sep{r}"), source))
        times["one pass"].append(one_pass(_arch_runs(args, tmp / f"one{r}"), source))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1][0]:.1f} s ({v[-1][1]:.1f} s CPU)"
                                         for k, v in times.items()), flush=True)
    n = len(args.architectures.split(",")) * args.steps
    print(f"{args.architectures} x {len(cfg.sae.l0_targets)} SAEs of width {cfg.sae.width} "
          f"x {args.steps} steps of {cfg.train.batch_size}, d_model {args.d_model}, "
          f"{torch.get_num_threads()} torch threads")
    med = {k: [statistics.median(t[i] for t in v) for i in (0, 1)] for k, v in times.items()}
    for k, (wall, cpu) in med.items():
        print(f"{k:9s} median {wall:6.1f} s wall ({n / wall:5.2f} sweep steps/s), "
              f"{cpu:6.1f} s CPU ({n / cpu:5.2f} per CPU s)")
    print(f"cpu_ratio={med['separate'][1] / med['one pass'][1]:.2f} "
          f"speedup_shared_pass={med['separate'][0] / med['one pass'][0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--architectures", default="",
                    help="comma-separated: time one pass for all against one per each")
    ap.add_argument("--d-model", type=int, default=640)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.architectures:
        return architectures_main(args)
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
