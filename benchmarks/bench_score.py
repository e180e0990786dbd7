"""Spliced-CE scoring of this checkout against an older revision's, in one process.

Both sides run ``LanguageModel.spliced_losses`` on the same batch of the first eval corpus
with the same splices (a few scaled copies of x, like SAEs of differing quality), on the
same loaded weights, interleaved round by round so that machine load hits both alike. The
baseline's ``LanguageModel`` comes from ``git show REV:sae_med/lm/model.py`` (before the fp32
unembedding went through this machine's faster kernel and linear logits were scored from
their log-sum-exp). Prints the largest per-token CE and KL difference between the sides.

    .venv/bin/python benchmarks/bench_score.py [--config configs/default.yaml]
        [--baseline ddce679] [--dtype float32] [--rounds 2] [--ce-tokens 1024]

Last line: ``speedup_vs_baseline=<median ratio>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from revision import module_at  # benchmarks/revision.py, beside this script

from sae_med.config import load_config
from sae_med.experiment import load_model_for
from sae_med.measure.scoring import ce_batches
from sae_med.measure.spliced import spliced_losses
from sae_med.runtime import isa_limits, machine_profile

CHUNK = 128


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--baseline", default="ddce679")
    p.add_argument("--dtype", default="float32", help="model.dtype for both sides")
    p.add_argument("--variants", type=int, default=4, help="splices besides the zero one")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--ce-tokens", type=int, default=1024, help="scored tokens (one batch)")
    a = p.parse_args()
    cfg = load_config(a.config, [f"model.dtype={a.dtype}", f"eval.ce_tokens={a.ce_tokens}"])
    model = load_model_for(cfg)
    old = module_at(a.baseline, "sae_med/lm/model.py").LanguageModel(
        model.hf_model, model.tokenizer, model.name, model.weights_hash)
    batch = ce_batches(model, cfg, cfg.eval_corpora[0])[0]
    fns = {f"x*{1 + 0.05 * i:g}": (lambda x, s=1 + 0.05 * i: x * s) for i in range(a.variants)}
    sides = {"this checkout": model, f"baseline {a.baseline}": old}
    times: dict[str, list[float]] = {k: [] for k in sides}
    out = {}
    for _ in range(a.rounds):
        for name, lm in sides.items():
            t = time.perf_counter()
            out[name] = spliced_losses(lm, batch, cfg.model.hook_layer, fns, CHUNK)
            times[name].append(time.perf_counter() - t)
    ours, peer = out.values()
    diff = {f: max(float((getattr(ours[k], f) - getattr(peer[k], f)).abs().max()) for k in fns)
            for f in ("ce_clean", "ce_spliced", "kl_spliced")}
    n = int(next(iter(ours.values())).mask.sum())
    prof = machine_profile()
    print(f"{cfg.model.name} ({model.dtype_choice.dtype}), {n} scored tokens of "
          f"{cfg.eval_corpora[0]}/eval, clean + zero + {len(fns)} splices, chunks of {CHUNK}, "
          f"{torch.get_num_threads()} threads, {prof.cpu}, ISA limits {isa_limits() or 'none'}"
          f"; seconds per spliced_losses call over {a.rounds} interleaved rounds")
    for name, v in times.items():
        print(f"{name:24s} median {statistics.median(v):6.1f}  min {min(v):6.1f}")
    print("largest per-token difference: " + ", ".join(f"{k} {v:.1e}" for k, v in diff.items()))
    base, new = (statistics.median(v) for v in reversed(times.values()))
    print(f"speedup_vs_baseline={base / new:.2f}")


if __name__ == "__main__":
    main()
