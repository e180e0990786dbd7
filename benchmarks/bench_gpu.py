"""GPU training-step throughput of the dense bf16 path, eager against ``train.compile``.

For each width (16k and 65k latents at Gemma-2-2B's d_model 2304 by default) one JumpReLU
SAE takes ``--steps`` timed training steps through :func:`sae_med.train.step.train_step` (bf16
autocast with fp32 thresholds, Adam, decoder-parallel gradient removal, renormalisation),
after ``--warmup`` untimed ones (which include compilation). Batches live in pinned host
memory and are copied with ``non_blocking=True`` every step, as in training. Thresholds
start at the per-latent quantile that makes L0 about ``--target-l0``.

Throughput is reported as tokens/s and as a fraction of bf16 peak, counting the
dense-equivalent 12 * d_model * width FLOPs per token (encoder and decoder matmuls, each
forward + two backward products). "Peak" is both the best bf16 matmul FLOP/s measured on
this device for a (batch, d_model) @ (d_model, width) product and, for known GPUs, the
vendor's dense bf16 figure.

    .venv/bin/python benchmarks/bench_gpu.py                       # needs a CUDA GPU
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --small  # checks the script on CPU
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --small --dtype fp32

Last line: ``best_tokens_per_s=<N> best_peak_fraction=<F>`` (measured-matmul peak).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NOMINAL_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0,
                       "A10": 125.0, "4090": 165.0}
"""Dense bf16 tensor-core TFLOP/s from vendor data sheets (SXM parts; no sparsity)."""


def nominal_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v * 1e12 for k, v in NOMINAL_BF16_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, batch: int, d: int, width: int, reps: int,
                dtype: torch.dtype) -> float:
    """Best FLOP/s of a (batch, d) @ (d, width) product in ``dtype`` on ``device``."""
    a = torch.randn(batch, d, device=device, dtype=dtype)
    b = torch.randn(d, width, device=device, dtype=dtype)
    best = 0.0
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * batch * d * width / (time.perf_counter() - t0))
    return best


def time_steps(args: argparse.Namespace, device: torch.device, width: int, compiled: bool
               ) -> dict:
    from sae_med.config import TrainConfig
    from sae_med.sae.jumprelu import JumpReLUSAE
    from sae_med.train.step import SweepMember, compile_available, dense_terms, train_step
    from sae_med.train.sweep import init_threshold_at_target_

    if compiled and not compile_available():
        return {"mode": "compiled", "width": width, "error": "torch.compile unusable"}
    g = torch.Generator().manual_seed(0)
    host = torch.randn(args.warmup + args.steps, args.batch, args.d_model, generator=g)
    host /= host.pow(2).sum(-1).mean().sqrt()
    if device.type == "cuda":
        host = host.pin_memory()
    sae = JumpReLUSAE(args.d_model, width, generator=torch.Generator().manual_seed(1))
    init_threshold_at_target_(sae, host[0], args.target_l0, 1e-3)
    sae = sae.to(device)
    bf16 = args.dtype == "bf16"
    tc = TrainConfig(batch_size=args.batch, kernel="dense", autocast_bf16=bf16,
                     compile=compiled, device=str(device))
    m = SweepMember(sae, args.target_l0, tc, Path("unused"))
    if compiled:
        m.compiled = torch.compile(functools.partial(dense_terms, sae))
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    l0s = []
    t0 = 0.0
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        x = host[i].to(device, non_blocking=True)
        _, _, _, l0, _, _ = train_step(m, x, 3e-4, 1.0, tc, False, autocast)
        l0s.append(l0)
    sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    tok_s = args.batch / dt
    row = {"mode": "compiled" if compiled else "eager", "width": width,
           "d_model": args.d_model, "batch": args.batch, "s_per_step": dt,
           "tokens_per_s": tok_s, "flop_per_s": 12 * args.d_model * width * tok_s,
           "l0": float(torch.stack(l0s[args.warmup:]).mean())}
    if device.type == "cuda":
        row["max_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    del m, sae
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA required), cuda[:N] or cpu")
    p.add_argument("--small", action="store_true",
                   help="tiny sizes (d_model 128, widths 1024/4096, batch 512) for a CPU check")
    p.add_argument("--d-model", type=int, default=2304)
    p.add_argument("--widths", type=int, nargs="+", default=[16384, 65536])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--target-l0", type=float, default=80.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"],
                   choices=["eager", "compiled"])
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                   help="bf16 autocast (the GPU path) or plain fp32 (peak is then fp32)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    if args.small:
        args.d_model, args.widths, args.batch = 128, [1024, 4096], 512
        args.target_l0 = min(args.target_l0, 32.0)
        args.steps, args.warmup = min(args.steps, 10), min(args.warmup, 3)

    if args.device == "auto":
        if not torch.cuda.is_available():
            print("bench_gpu: no CUDA GPU is visible (torch "
                  f"{torch.__version__}, cuda available: False). This benchmark measures "
                  "the GPU path; run it on a GPU machine, or check the script on CPU with "
                  "`--device cpu --small`.", file=sys.stderr)
            return 2
        args.device = "cuda"
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({torch.get_num_threads()} threads)"
    nominal = nominal_peak(device) if args.dtype == "bf16" else None
    print(f"device: {name}, torch {torch.__version__}")
    rows = []
    for width in args.widths:
        peak = matmul_peak(device, args.batch, args.d_model, width, reps=10,
                           dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32)
        print(f"{args.dtype} matmul ({args.batch}x{args.d_model} @ {args.d_model}x{width}): "
              f"{peak / 1e9:.1f} GFLOP/s" + (f" (nominal {nominal / 1e9:.0f})"
                                               if nominal else ""))
        for mode in args.modes:
            row = time_steps(args, device, width, compiled=mode == "compiled")
            if "error" not in row:
                row["peak_fraction"] = row["flop_per_s"] / peak
                if nominal:
                    row["nominal_fraction"] = row["flop_per_s"] / nominal
            rows.append(row)

    print(f"{'width':>7} {'mode':>9} {'tok/s':>10} {'s/step':>8} {'GFLOP/s*':>9} "
          f"{'of peak':>8} {'of nominal':>10} {'L0':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['width']:>7} {r['mode']:>9}  {r['error']}")
            continue
        print(f"{r['width']:>7} {r['mode']:>9} {r['tokens_per_s']:>10.0f} "
              f"{r['s_per_step']:>8.4f} {r['flop_per_s'] / 1e9:>9.1f} "
              f"{r['peak_fraction']:>8.3f} {r.get('nominal_fraction', float('nan')):>10.3f} "
              f"{r['l0']:>6.1f}")
    print("* dense-equivalent: 12 * d_model * width FLOPs per token")
    for width in args.widths:
        by_mode = {r["mode"]: r for r in rows if r["width"] == width and "error" not in r}
        if {"eager", "compiled"} <= set(by_mode):
            print(f"width {width}: compiled/eager speedup "
                  f"{by_mode['compiled']['tokens_per_s'] / by_mode['eager']['tokens_per_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=2))
    good = [r for r in rows if "error" not in r]
    best = max(good, key=lambda r: r["tokens_per_s"]) if good else None
    if best is None:
        return 1
    print(f"best_tokens_per_s={best['tokens_per_s']:.0f} "
          f"best_peak_fraction={best['peak_fraction']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
