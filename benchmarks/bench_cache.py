"""Caching throughput: sae_med's activation cache vs TransformerLens ``run_with_cache``.

Both sides see the same documents in the same batches. sae_med's forward stops at the
hook block (no later blocks, no unembedding) and writes hashed shards to disk;
TransformerLens runs the full model with ``names_filter=hook`` and the kept positions are
gathered in memory (no disk writes: the comparison is generous to it). Both sides run
the same length-sorted batches, so the ratio is the forward itself, not padding. Each side runs in
its own subprocess; peak memory is the resident-set growth during the timed pass,
sampled every 5 ms. Last line: ``speedup_vs_transformer_lens=<ratio>``. ``--bf16`` adds a
third side, sae_med with ``model.dtype: bfloat16`` (same documents), and its speed-up over
fp32 and fraction of this machine's bf16 matmul peak.

    .venv/bin/python benchmarks/bench_cache.py [--docs 256] [--ctx 128] [--batch 16] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    def __enter__(self):
        self.base = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mb())


def run_side(side: str, docs: int, ctx: int, batch: int) -> dict:
    import torch

    from sae_med.cache.activations import SORT_CHUNK, build_cache, packed_batches
    from sae_med.config import load_config
    from sae_med.lm.load import load_model

    torch.manual_seed(0)
    dtype = "bfloat16" if side == "sae_med_bf16" else "float32"
    model = load_model(device="cpu", dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        from sae_med.corpora.registry import iter_documents

        texts = [d.text for _, d in zip(range(docs), iter_documents("medical", "train"),
                                        strict=False)]
        tl = model.transformer_lens() if side == "tl" else None
        # one untimed warm-up batch for both sides
        tok, mask, _ = model.tokenize(texts[:batch], ctx)
        model.resid(tok, mask, 1)
        # the sae_med side caches exactly these documents: count their kept tokens
        n = sum(int(model.tokenize(texts[i:i + batch], ctx).keep.sum())
                for i in range(0, len(texts), batch))
        cfg = load_config(None, [f"cache_dir={tmp}", f"cache.ctx_len={ctx}",
                                 f"cache.batch_size={batch}", f"cache.n_tokens={n}",
                                 "cache.shard_tokens=16384"])
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            if side != "tl":
                tokens = build_cache(model, cfg, "medical", "train", progress=False).n_tokens
            else:
                hook = cfg.model.hook_name
                tokens = 0
                # the same chunks and packed batches as build_cache makes
                step = batch * SORT_CHUNK
                for i in range(0, len(texts), step):
                    for _, (tok, mask, keep) in packed_batches(model, texts[i:i + step],
                                                               cfg.cache):
                        with torch.no_grad():
                            _, c = tl.run_with_cache(tok, attention_mask=mask,
                                                     names_filter=hook)
                        tokens += c[hook][keep].clone().shape[0]
            dt = time.perf_counter() - t0
    return {"side": side, "tokens": tokens, "seconds": dt, "tok_per_s": tokens / dt,
            "peak_rss_growth_mb": mem.peak - mem.base,
            "flop_per_token": forward_flop_per_token(model, cfg.model.hook_layer)}


def forward_flop_per_token(model, layer: int) -> float:
    """2 × the weights a token multiplies through blocks 0..``layer`` (the matmul FLOPs of
    the forward to the hook; attention scores at ctx 128 add < 3% and are left out)."""
    from sae_med.lm.model import decoder_layers

    blocks = list(decoder_layers(model.hf_model))[:layer + 1]
    return 2.0 * sum(p.numel() for b in blocks for n, p in b.named_parameters()
                     if p.dim() == 2)


def matmul_flops(dtype: str = "float32") -> float:
    """This machine's matmul FLOP/s in ``dtype`` on forward-sized products (best of 5)."""
    import torch

    a, b = (torch.randn(shape).to(getattr(torch, dtype)) for shape in ((2048, 640), (640, 2048)))
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 10 * 2 * 2048 * 640 * 2048 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--side", choices=["sae_med", "tl", "sae_med_bf16"])
    ap.add_argument("--bf16", action="store_true", help="add the bf16 sae_med side")
    a = ap.parse_args()
    if a.side:
        print(json.dumps(run_side(a.side, a.docs, a.ctx, a.batch)))
        return
    rows = []
    for side in ("sae_med", "tl", *(["sae_med_bf16"] if a.bf16 else [])):
        out = subprocess.run([sys.executable, __file__, "--side", side, "--docs", str(a.docs),
                              "--ctx", str(a.ctx), "--batch", str(a.batch)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "TQDM_DISABLE": "1"})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch

    print(f"# bench_cache {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, "
          f"{a.docs} medical docs, ctx {a.ctx}, batch {a.batch}")
    print(f"| {'side':<36} | {'tokens':>7} | {'seconds':>7} | {'tok/s':>7} | "
          f"{'peak RSS growth MB':>18} |")
    print(f"|{'-' * 38}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 20}|")
    names = {"sae_med": "sae_med build_cache (stops at hook)",
             "tl": "TransformerLens run_with_cache",
             "sae_med_bf16": "sae_med build_cache, bf16 forwards"}
    for r in rows:
        print(f"| {names[r['side']]:<36} | {r['tokens']:>7} | {r['seconds']:>7.2f} | "
              f"{r['tok_per_s']:>7.0f} | {r['peak_rss_growth_mb']:>18.0f} |")
    assert rows[0]["tokens"] == rows[1]["tokens"], "the two sides saw different tokens"
    peak = matmul_flops()
    frac = rows[0]["tok_per_s"] * rows[0]["flop_per_token"] / peak
    print(f"fp32 matmul {peak / 1e9:.0f} GFLOP/s; forward to the hook "
          f"{rows[0]['flop_per_token'] / 1e6:.0f} MFLOP/token")
    if a.bf16:
        assert rows[2]["tokens"] == rows[0]["tokens"], "the bf16 side saw different tokens"
        bf_peak = matmul_flops("bfloat16")
        print(f"bf16 matmul {bf_peak / 1e9:.0f} GFLOP/s; bf16_speedup_vs_fp32="
              f"{rows[2]['tok_per_s'] / rows[0]['tok_per_s']:.2f} bf16_peak_fraction="
              f"{rows[2]['tok_per_s'] * rows[2]['flop_per_token'] / bf_peak:.2f}")
    print(f"speedup_vs_transformer_lens={rows[0]['tok_per_s'] / rows[1]['tok_per_s']:.2f} "
          f"peak_fraction={frac:.2f}")


if __name__ == "__main__":
    main()
