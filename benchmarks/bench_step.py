"""The sparse training step of this checkout against an older revision's, in one process.

Both sides run one optimiser step per batch (forward on the CSR fast path, MSE + target-L0
loss, backward, decoder-parallel gradient removal, grad-norm clipping at 1, Adam, decoder
renormalisation) on the same batches from the same initial weights, interleaved round by
round so that machine load hits both alike. The baseline's ``JumpReLUSAE`` comes from
``git show REV:sae_med/sae/jumprelu.py`` and steps as that revision's trainer did (fused Adam over
the SAE's parameters, ``torch.nn.utils.clip_grad_norm_``; ``--plain-adam`` for revisions
before fused Adam, e.g. d549a1e); this checkout's side is ``sae_med.train.step.train_step`` on a
``SweepMember``.

    .venv/bin/python benchmarks/bench_step.py [--baseline 164c130] [--rounds 6]

Last line: ``speedup_vs_baseline=<median ratio>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from revision import module_at  # benchmarks/revision.py, beside this script

REPO = Path(__file__).resolve().parents[1]


def make_step(sae, opt: torch.optim.Optimizer, target: float) -> Callable[[torch.Tensor], None]:
    """A step as the baseline revision's trainer took it."""
    def step(x: torch.Tensor) -> None:
        out = sae(x, fast=True)
        loss = (out.x_hat - x).pow(2).sum(-1).mean() + (out.l0 / target - 1) ** 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad_()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        sae.unit_norm_decoder_()

    return step


def warmed(cls, args: argparse.Namespace, calib: torch.Tensor):
    """An SAE at init with per-latent thresholds at the (1 - L0/width) quantile."""
    sae = cls(args.d_in, args.width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = calib @ sae.W_enc + sae.b_enc
        q = torch.quantile(z, 1 - args.target_l0 / args.width, dim=0)
        sae.log_threshold.copy_(q.clamp_min(1e-4).log())
    return sae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="164c130", help="git revision to compare against")
    p.add_argument("--plain-adam", action="store_true",
                   help="the baseline steps with unfused Adam (revisions before 2026-12-02)")
    p.add_argument("--d-in", type=int, default=640)
    p.add_argument("--width", type=int, default=5120)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--target-l0", type=float, default=40.0)
    p.add_argument("--steps", type=int, default=40, help="steps per side per round")
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from sae_med.config import TrainConfig
    from sae_med.sae.jumprelu import JumpReLUSAE
    from sae_med.train.step import SweepMember, train_step

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.steps * args.batch, args.d_in, generator=g)
    batches = list((x / x.pow(2).sum(-1).mean().sqrt()).split(args.batch))
    tc = TrainConfig(batch_size=args.batch, lr=1e-4, grad_clip=1.0)
    old = warmed(module_at(args.baseline, "sae_med/sae/jumprelu.py").JumpReLUSAE, args, batches[0])
    old_opt = torch.optim.Adam(old.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                               fused=not args.plain_adam)
    member = SweepMember(warmed(JumpReLUSAE, args, batches[0]), args.target_l0, tc,
                         Path("unused"))
    adam = "plain" if args.plain_adam else "fused"
    sides = {f"{args.baseline} ({adam} Adam)": make_step(old, old_opt, args.target_l0),
             "this checkout": lambda b: train_step(member, b, tc.lr, 1.0, tc, fast=True)}
    times: dict[str, list[float]] = {k: [] for k in sides}
    for step in sides.values():
        for b in batches[:5]:
            step(b)
    # the same 5 steps from the same weights: the same update to rounding
    with torch.no_grad():
        diff = max(float((p - q).abs().max())
                   for p, q in zip(old.parameters(), member.sae.parameters(), strict=True))
    for _ in range(args.rounds):
        for name, step in sides.items():
            t = time.perf_counter()
            for b in batches:
                step(b)
            times[name].append((time.perf_counter() - t) / len(batches) * 1e3)
    print(f"d_in {args.d_in}, width {args.width}, batch {args.batch}, target L0 "
          f"{args.target_l0:g}, {torch.get_num_threads()} threads; ms per step over "
          f"{args.rounds} interleaved rounds of {args.steps} steps")
    for name, v in times.items():
        print(f"{name:28s} median {statistics.median(v):6.1f}  min {min(v):6.1f}")
    print(f"max |parameter difference| after the same 5 steps: {diff:.2e}")
    base, ours = (statistics.median(v) for v in times.values())
    print(f"speedup_vs_baseline={base / ours:.2f}")


if __name__ == "__main__":
    main()
