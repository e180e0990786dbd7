"""Streamed vs cached training throughput on the embedded model, in one process.

The same sweep (configs/smoke.yaml's SAEs, ``--tokens`` training tokens) trains twice on
the medical corpus: from an activation cache built first (its build timed on its own),
and from :class:`sae_med.cache.stream.ActivationStream`, where the model's forward runs inside
training. Tokens/s of each, and the ratios streamed / cached (training only) and streamed
/ cached (cache build + training, the cost of a run that has no cache yet). The LM forward
per token (the build's rate) is what the planning numbers of book/reproduce_gemma2.md
scale from.

    .venv/bin/python benchmarks/bench_stream.py [--tokens 20480] [--threads 2]

Last line: ``stream_vs_cache=<ratio> stream_vs_cache_build_and_train=<ratio>``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=20480, help="training tokens per run")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from sae_med.cache.activations import build_cache
    from sae_med.cache.stream import ActivationStream
    from sae_med.config import load_config
    from sae_med.lm.load import load_model
    from sae_med.train.sweep import train_saes

    model = load_model(device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    overrides = [f"cache_dir={tmp / 'cache'}", "train_corpora=[medical]",
                 f"cache.n_tokens={a.tokens}", f"train.n_tokens={a.tokens}",
                 "train.checkpoint_every=0", "train.device=cpu",
                 "train.stream_buffer_tokens=8192"]
    cfg = load_config(REPO / "configs/smoke.yaml", overrides)
    timings = {}
    t0 = time.perf_counter()
    cache = build_cache(model, cfg, "medical", "train", progress=False)
    timings["cache build (LM forward, stops at the hook)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_saes(cfg, cache, tmp / "cached", progress=False, train_corpus="medical")
    timings["train from the cache"] = time.perf_counter() - t0
    streamed = load_config(REPO / "configs/smoke.yaml", [*overrides, "train.source=stream"])
    t0 = time.perf_counter()
    train_saes(streamed, ActivationStream(model, streamed, "medical"), tmp / "streamed",
               progress=False, train_corpus="medical")
    timings["train from the stream (LM forward inside)"] = time.perf_counter() - t0

    n = a.tokens
    print(f"# bench_stream {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
          f"{a.threads} threads, {model.name} block {cfg.model.hook_layer}, "
          f"SAE width {cfg.sae.width} x {len(cfg.sae.l0_targets)} targets, {n} tokens")
    print(f"| {'what':<44} | {'seconds':>7} | {'tok/s':>7} |")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 9}|")
    for what, s in timings.items():
        print(f"| {what:<44} | {s:>7.2f} | {n / s:>7.0f} |")
    build, cached, stream = timings.values()
    print(f"stream_vs_cache={cached / stream:.3f} "
          f"stream_vs_cache_build_and_train={(build + cached) / stream:.3f}")


if __name__ == "__main__":
    main()
