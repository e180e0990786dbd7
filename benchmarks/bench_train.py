"""Training-step throughput: sae_med's step vs sae-lens's, per SAE architecture, on the same
activations.

Each side runs in its own subprocess (so peak RSS is its own) on the same batches from
the same initial weights. A step is forward + backward + Adam update (+ for sae_med:
decoder-parallel gradient removal, grad clipping and decoder renormalisation; for
sae-lens: its trainer's ``_train_step``: firing statistics and grad clipping). JumpReLU:
thresholds warmed so that L0 ~ --target-l0 (an SAE at init fires on about half its
latents, which is not what training time is spent on), our sparse CSR kernel against
sae-lens's quadratic target-L0 loss; a ReLU SAE's encoder biases are warmed the same way.
ReLU, TopK, BatchTopK, Matryoshka-BatchTopK (``--arch``; ``all`` runs the five one after
another): our ``train_step`` (the SAE's own ``training_loss`` on its sparse latents)
against sae-lens's training SAE of that architecture with its defaults (k = --target-l0,
AuxK with sae-lens's dead mask, the same L1 coefficient for both ReLU sides). The
dense-equivalent FLOP count is 12 * d_in * width per token,
compared with the fp32 matmul FLOP/s of a (batch, d_in) @ (d_in, width) product measured
in the same run (best of the parent process and of each side, before and after its timed
steps).

    .venv/bin/python benchmarks/bench_train.py [--arch all] [--steps 6] [--cache acts.pt]

Last line: ``speedup_vs_sae_lens=<ratio> peak_fraction=<fraction>`` (one architecture)
or ``speedups_vs_sae_lens arch=<ratio> ...`` (``all``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _batches(args: argparse.Namespace) -> list[torch.Tensor]:
    """``warmup + steps`` batches scaled so E||x||^2 = 1 (the training-time normalisation)."""
    n = (args.warmup + args.steps) * args.batch
    if args.cache:
        p = Path(args.cache)
        data = torch.load(p) if p.suffix == ".pt" else torch.from_numpy(np.load(p))
        data = data.float().reshape(-1, data.shape[-1])
        if data.shape[1] != args.d_in:
            raise SystemExit(f"--cache has d_model {data.shape[1]}, --d-in is {args.d_in}")
        data = data[torch.arange(n) % data.shape[0]]
    else:
        g = torch.Generator().manual_seed(0)
        data = torch.randn(n, args.d_in, generator=g)
    data = data / data.pow(2).sum(-1).mean().sqrt()
    return list(data.split(args.batch))


ARCHS = ("jumprelu", "relu", "topk", "batchtopk", "matryoshka_batchtopk")
L1_COEFF = 0.01
"""The ReLU sides' L1 coefficient (our trainer's starting one)."""


def _initial_sae(args: argparse.Namespace, calib: torch.Tensor):
    """sae_med SAE of ``args.arch`` at init; a JumpReLU SAE's per-latent thresholds (a ReLU
    SAE's encoder biases) at the (1 - L0/width) quantile, so L0 starts near --target-l0."""
    # imported in the side's own process, so its RSS counts one library
    from sae_med.config import SAEConfig
    from sae_med.sae.factory import build_sae

    sc = SAEConfig(width=args.width, l0_targets=(args.target_l0,), architecture=args.arch,
                   bandwidth=0.001)
    sae = build_sae(sc, args.d_in, args.target_l0, generator=torch.Generator().manual_seed(1))
    if args.arch in ("jumprelu", "relu"):
        with torch.no_grad():
            z = calib @ sae.W_enc
            q = torch.quantile(z, 1 - args.target_l0 / args.width, dim=0)
            if args.arch == "jumprelu":
                sae.log_threshold.copy_(q.clamp_min(1e-4).log())
            else:  # each latent fires on L0/width of the rows, as once the L1 has acted
                sae.b_enc.copy_(-q)
    return sae


def _our_step(args: argparse.Namespace, sae, l0s: list[float]):
    # imported in the side's own process, so its RSS counts one library
    from sae_med.config import TrainConfig
    from sae_med.train.step import SweepMember, train_step

    fast = args.arch == "jumprelu"
    tc = TrainConfig(batch_size=args.batch, lr=3e-4, kernel="sparse" if fast else "dense")
    member = SweepMember(sae, args.target_l0, tc, Path("unused"))
    coeff = 1.0 if fast else L1_COEFF

    def step(x: torch.Tensor) -> None:
        r = train_step(member, x, 3e-4, coeff, tc, fast=fast)
        member.last_fired.masked_fill_(r.fired, 1)
        l0s.append(float(r.l0))
    return step


def _lens_sae(args: argparse.Namespace, sae):
    """sae-lens's training SAE of ``args.arch`` (its defaults) holding ``sae``'s weights."""
    # imported in the side's own process, so its RSS counts one library
    from sae_lens.saes import (
        batchtopk_sae,
        jumprelu_sae,
        matryoshka_batchtopk_sae,
        standard_sae,
        topk_sae,
    )

    common = {"d_in": args.d_in, "d_sae": args.width, "apply_b_dec_to_input": False}
    k = {"k": int(args.target_l0) if args.target_l0 == int(args.target_l0) else args.target_l0}
    made = {
        "jumprelu": lambda: jumprelu_sae.JumpReLUTrainingSAE(
            jumprelu_sae.JumpReLUTrainingSAEConfig(
                **common, jumprelu_bandwidth=0.001, jumprelu_sparsity_loss_mode="quadratic",
                target_l0=args.target_l0, l0_coefficient=1.0, decoder_init_norm=None)),
        "relu": lambda: standard_sae.StandardTrainingSAE(
            standard_sae.StandardTrainingSAEConfig(**common, l1_coefficient=L1_COEFF)),
        "topk": lambda: topk_sae.TopKTrainingSAE(
            topk_sae.TopKTrainingSAEConfig(**common, **k)),
        "batchtopk": lambda: batchtopk_sae.BatchTopKTrainingSAE(
            batchtopk_sae.BatchTopKTrainingSAEConfig(**common, **k)),
        "matryoshka_batchtopk": lambda: matryoshka_batchtopk_sae.MatryoshkaBatchTopKTrainingSAE(
            matryoshka_batchtopk_sae.MatryoshkaBatchTopKTrainingSAEConfig(
                **common, **k, matryoshka_widths=[*sae.prefixes, args.width]))}
    lens = made[args.arch]()
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(lens, name).copy_(getattr(sae, name))
        if args.arch == "jumprelu":
            lens.threshold.copy_(sae.threshold)
    return lens


def _lens_step(args: argparse.Namespace, sae, l0s: list[float]):
    # imported in the side's own process, so its RSS counts one library
    from sae_lens.saes.sae import TrainStepInput

    lens = _lens_sae(args, sae)
    opt = torch.optim.Adam(lens.parameters(), lr=3e-4, betas=(0.0, 0.999))
    since_fired = torch.zeros(args.width)
    coefficients = {"l0": 1.0} if args.arch == "jumprelu" else {"l1": L1_COEFF}

    def step(x: torch.Tensor) -> None:
        # sae-lens's SAETrainer._train_step, minus logging and schedulers
        out = lens.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients=coefficients, dead_neuron_mask=since_fired > 1000,
            n_training_steps=0, is_logging_step=False))
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        l0s.append(float((out.feature_acts > 0).float().sum(-1).mean()))
    return step


def run_side(args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps of one side in this process."""
    torch.set_num_threads(args.threads)
    batches = _batches(args)
    sae = _initial_sae(args, batches[0])
    l0s: list[float] = []
    step = (_our_step if args.side == "sae_med" else _lens_step)(args, sae, l0s)
    rss_before = _maxrss_mib()  # data, weights and imports; the delta is the steps' own
    for x in batches[:args.warmup]:
        step(x)
    peak = matmul_flops(args)
    t0 = time.perf_counter()
    for x in batches[args.warmup:]:
        step(x)
    elapsed = time.perf_counter() - t0
    return {"side": args.side, "tokens_per_s": args.steps * args.batch / elapsed,
            "s_per_step": elapsed / args.steps, "l0": float(np.mean(l0s[args.warmup:])),
            "maxrss_mib": _maxrss_mib(), "maxrss_delta_mib": _maxrss_mib() - rss_before,
            "matmul_flops": max(peak, matmul_flops(args))}


def matmul_flops(args: argparse.Namespace, reps: int = 8) -> float:
    """Best-of fp32 FLOP/s of a (batch, d_in) @ (d_in, width) matmul."""
    torch.set_num_threads(args.threads)
    a, b = torch.randn(args.batch, args.d_in), torch.randn(args.d_in, args.width)
    out = torch.empty(args.batch, args.width)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * args.batch * args.d_in * args.width / best


def _run_arch(args: argparse.Namespace, arch: str) -> tuple[float, float]:
    """Both sides of ``arch`` in subprocesses; prints their table, returns (speedup,
    peak fraction)."""
    # the parent's arguments with this architecture's --arch last (argparse keeps the last)
    base = [sys.executable, __file__, *sys.argv[1:], "--arch", arch]
    res = {}
    for side in ("sae_med", "sae_lens"):
        out = subprocess.run(base + ["--side", side], capture_output=True, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        if out.returncode:
            raise SystemExit(f"{arch} {side} failed:\n{out.stderr}")
        res[side] = json.loads(out.stdout.strip().splitlines()[-1])
    # Best of the parent's and each side's measurements (before and after its timed
    # steps): the machine's dense fp32 capability, robust to other load at one moment.
    peak = max([matmul_flops(args)] + [r["matmul_flops"] for r in res.values()])
    dense_eq = 12 * args.d_in * args.width
    print(f"{arch}: fp32 matmul ({args.batch}x{args.d_in} @ {args.d_in}x{args.width}): "
          f"{peak / 1e9:.0f} GFLOP/s")
    print(f"{'side':<10}{'tok/s':>10}{'s/step':>9}{'L0':>7}{'GFLOP/s*':>10}{'of peak':>9}"
          f"{'maxRSS MiB':>12}{'dRSS MiB':>10}")
    for side, r in res.items():
        fl = r["tokens_per_s"] * dense_eq
        print(f"{side:<10}{r['tokens_per_s']:>10.0f}{r['s_per_step']:>9.3f}{r['l0']:>7.1f}"
              f"{fl / 1e9:>10.0f}{fl / peak:>9.2f}{r['maxrss_mib']:>12.0f}"
              f"{r['maxrss_delta_mib']:>10.0f}")
    speedup = res["sae_med"]["tokens_per_s"] / res["sae_lens"]["tokens_per_s"]
    return speedup, res["sae_med"]["tokens_per_s"] * dense_eq / peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=[*ARCHS, "all"], default="jumprelu")
    p.add_argument("--d-in", type=int, default=640)
    p.add_argument("--width", type=int, default=5120)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--target-l0", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--cache", default="", help="activations (.pt tensor or .npy), optional")
    p.add_argument("--side", choices=["sae_med", "sae_lens"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        print(json.dumps(run_side(args)))
        return
    print(f"d_in {args.d_in}, width {args.width}, batch {args.batch}, {args.steps} timed steps "
          f"(+{args.warmup} warmup), fp32, {args.threads} threads, "
          f"data {'cache ' + args.cache if args.cache else 'gaussian'}")
    archs = ARCHS if args.arch == "all" else (args.arch,)
    ratios = {arch: _run_arch(args, arch) for arch in archs}
    print("* dense-equivalent: 12 * d_in * width FLOPs per token")
    if len(archs) == 1:
        speedup, frac = ratios[archs[0]]
        print(f"speedup_vs_sae_lens={speedup:.2f} peak_fraction={frac:.2f}")
    else:
        print("speedups_vs_sae_lens " + " ".join(f"{a}={r[0]:.2f}" for a, r in ratios.items()))


if __name__ == "__main__":
    main()
