"""Spliced-CE scoring with ``lm.SCORE_ROWS`` rows per log-softmax/KL step against whole
chunks, in one process on the config's model and CE tokens.

Both sides run :meth:`LanguageModel.spliced_losses` on the same batch of the first eval
corpus with the same splices (a few scaled copies of x, like SAEs of differing quality),
interleaved round by round so that machine load hits both alike; the peer differs only
in scoring each unembedded chunk at once (``SCORE_ROWS`` = ``chunk_tokens``, what the
scorer did before). Per-token CE and KL must be bit for bit the same.

    .venv/bin/python benchmarks/bench_score.py [--config configs/default.yaml] [--rounds 2]

Last line: ``speedup_vs_whole_chunks=<median ratio>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import sae_med.lm as lm
from sae_med.config import load_config
from sae_med.evaluate import ce_batches
from sae_med.experiment import load_model_for

CHUNK = 128


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--variants", type=int, default=4, help="splices besides the zero one")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    cfg = load_config(a.config)
    model = load_model_for(cfg)
    batch = ce_batches(model, cfg, cfg.eval_corpora[0])[0]
    fns = {f"x*{1 + 0.05 * i:g}": (lambda x, s=1 + 0.05 * i: x * s) for i in range(a.variants)}
    sides = {f"{lm.SCORE_ROWS} rows at a time": lm.SCORE_ROWS, "whole chunks": CHUNK}
    times: dict[str, list[float]] = {k: [] for k in sides}
    out = {}
    for _ in range(a.rounds):
        for name, rows in sides.items():
            lm.SCORE_ROWS = rows
            t = time.perf_counter()
            out[name] = model.spliced_losses(batch, cfg.model.hook_layer, fns, CHUNK)
            times[name].append(time.perf_counter() - t)
    ours, peer = (out[k] for k in sides)
    same = all(torch.equal(ours[k].ce_spliced, peer[k].ce_spliced)
               and torch.equal(ours[k].kl_spliced, peer[k].kl_spliced) for k in fns)
    n = int(next(iter(ours.values())).mask.sum())
    print(f"{cfg.model.name} ({cfg.model.dtype}), {n} scored tokens of "
          f"{cfg.eval_corpora[0]}/eval, clean + zero + {len(fns)} splices, chunks of "
          f"{CHUNK}, {torch.get_num_threads()} threads; seconds per spliced_losses call over "
          f"{a.rounds} interleaved rounds")
    for name, v in times.items():
        print(f"{name:24s} median {statistics.median(v):6.1f}  min {min(v):6.1f}")
    print(f"bit_identical={same}")
    base, new = (statistics.median(times[k]) for k in ("whole chunks", next(iter(sides))))
    print(f"speedup_vs_whole_chunks={base / new:.2f}")


if __name__ == "__main__":
    main()
