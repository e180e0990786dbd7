"""Planning numbers for the paper's run (configs/paper_gemma2_2b.yaml) on one GPU: disk,
GPU memory and hours, computed from per-token costs — nothing here is measured on a GPU.

Inputs: the config (width, targets, token counts, batch, ctx), Gemma-2-2B's architecture
(its public config.json: vocab 256,000, d_model 2,304, 26 blocks, MLP 9,216, 8 query /
4 key-value heads of 256) and an assumed fraction of the GPU's dense bf16 peak (H100 SXM
and H200 share the same 989 TFLOP/s; the H200 has 141 GB instead of 80 GB).

Per-token FLOPs: the model's forward to the hook is 2 x (parameters of blocks 0..L) plus
attention (4 x heads x head_dim x mean context per block); one SAE training step is
12 x d_model x width per token (forward 4, backward 8; the dense-equivalent count of
bench_train.py), for every target L0 of the sweep. Evaluation adds full forwards with the
unembedding (2 + one per SAE, on ``eval.ce_docs`` documents) and the eval caches' forward.

    .venv/bin/python benchmarks/plan_gemma2.py [--utilisation 0.3] [--width 16384 65536]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GB = 1e9
PEAK_BF16 = 989e12  # H100 SXM / H200, dense bf16 tensor-core FLOP/s


@dataclass(frozen=True)
class Gemma2:
    vocab: int = 256_000
    d_model: int = 2304
    blocks: int = 26
    d_mlp: int = 9216
    heads: int = 8
    kv_heads: int = 4
    head_dim: int = 256

    @property
    def block_params(self) -> int:
        d, a = self.d_model, self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return d * a * 2 + d * kv * 2 + 3 * d * self.d_mlp

    @property
    def params(self) -> int:
        return self.blocks * self.block_params + self.vocab * self.d_model

    def forward_flops(self, through_block: int, mean_ctx: float, unembed: bool) -> float:
        """FLOPs per token of a forward through blocks 0..through_block."""
        n = through_block + 1
        attn = 4 * self.heads * self.head_dim * mean_ctx
        return n * (2 * self.block_params + attn) + (2 * self.d_model * self.vocab
                                                        if unembed else 0)


def plan(width: int, utilisation: float, overrides: list[str]) -> dict[str, float]:
    from sae_med.config import load_config

    cfg = load_config(REPO / "configs/paper_gemma2_2b.yaml",
                      [f"sae.width={width}", *overrides])
    m, d, n_sae = Gemma2(), Gemma2().d_model, len(cfg.sae.l0_targets)
    corpora = len(cfg.train_corpora)
    mean_ctx = cfg.cache.ctx_len / 4  # documents average about half the context
    lm = m.forward_flops(cfg.model.hook_layer, mean_ctx, unembed=False)
    sae = 12 * d * width * n_sae
    train = corpora * cfg.train.n_tokens * (sae + (lm if cfg.train.source == "stream" else 0))
    cache_build = 0 if cfg.train.source == "stream" else corpora * cfg.cache.n_tokens * lm
    ce_tokens = cfg.eval.ce_docs * mean_ctx * 2  # per eval corpus
    full = m.forward_flops(m.blocks - 1, mean_ctx, unembed=True)
    evaluate = len(cfg.eval_corpora) * (cfg.eval.n_tokens * lm
                                        + ce_tokens * full * (2 + corpora * n_sae))
    speed = utilisation * PEAK_BF16
    sae_params = 2 * d * width + 2 * width + d  # W_enc, W_dec, b_enc, threshold, b_dec
    fp32 = 4
    # GPU: the model in fp32; SAE weights, gradients and two Adam moments per target; one
    # SAE's step transients at a time (~6 (batch, width) fp32 tensors); CUDA context
    gpu = (m.params * fp32 + n_sae * sae_params * fp32 * 4
           + 6 * cfg.train.batch_size * width * fp32 + 1.5 * GB)
    eval_cache = len(cfg.eval_corpora) * cfg.eval.n_tokens * d * 2  # bf16
    saes = corpora * n_sae * sae_params * fp32
    checkpoints = corpora * 2 * n_sae * sae_params * fp32 * 3  # current + previous
    train_cache = 0 if cfg.train.source == "stream" else corpora * cfg.cache.n_tokens * d * 2
    model_files = m.params * fp32  # the hub repo holds fp32 safetensors
    host_buffer = 2 * cfg.train.stream_buffer_tokens * d * 2
    return {"width": width, "lm_gflop_per_token": lm / 1e9,
            "sae_gflop_per_token": sae / 1e9,
            "hours_train": train / speed / 3600,
            "hours_cache_build": cache_build / speed / 3600,
            "hours_evaluate": evaluate / speed / 3600,
            "gpu_gb": gpu / GB, "host_buffer_gb": host_buffer / GB,
            "disk_model_gb": model_files / GB, "disk_eval_caches_gb": eval_cache / GB,
            "disk_train_cache_gb": train_cache / GB, "disk_saes_gb": saes / GB,
            "disk_checkpoints_gb": checkpoints / GB,
            "cache_per_corpus_if_cached_gb": cfg.cache.n_tokens * d * 2 / GB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--utilisation", type=float, nargs="+", default=[0.1, 0.3])
    ap.add_argument("--width", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. train.source=cache")
    a = ap.parse_args()
    rows = [(u, plan(w, u, a.overrides)) for w in a.width for u in a.utilisation]
    cols = ["width", "utilisation", "hours_train", "hours_cache_build", "hours_evaluate",
            "gpu_gb", "disk_model_gb", "disk_eval_caches_gb", "disk_train_cache_gb",
            "disk_saes_gb", "disk_checkpoints_gb"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for u, r in rows:
        vals = [f"{r['width']:,}", f"{u:.0%}"] + [f"{r[c]:.1f}" for c in cols[2:]]
        print("| " + " | ".join(vals) + " |")
    r = rows[0][1]
    print(f"per token: LM forward to block 20 {r['lm_gflop_per_token']:.2f} GFLOP; "
          + "; ".join(f"SAE sweep at width {p['width']:,} {p['sae_gflop_per_token']:.2f} GFLOP"
                      for _, p in rows[::len(a.utilisation)])
          + f"; stream buffers in host RAM {r['host_buffer_gb']:.1f} GB; a training cache "
          f"would take {r['cache_per_corpus_if_cached_gb']:.0f} GB per corpus")


if __name__ == "__main__":
    main()
