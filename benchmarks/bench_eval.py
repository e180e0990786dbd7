"""Spliced-CE throughput: sae_med's ``spliced_losses`` vs two peers, in one run.

All sides score the same SAEs on the same token batches (the config's first CE documents
of the eval corpus), with the model's forwards in fp32 (``model.dtype`` is overridden)
except on the bf16 side. The SAEs are untrained (decoder directions at random, encoder tied,
each threshold at the quantile that gives its target L0 on these activations): the
forward cost does not depend on training. Sides:

- ``sae_med``: one clean forward per batch, then for x → 0 and each SAE only the blocks
  after the hook (:meth:`LanguageModel.final_states_from`), unembedding in chunks shared
  across variants.
- ``full forwards``: the same scoring, but every variant runs the whole model again
  (:meth:`LanguageModel.final_states`; sae_med's evaluation before the prefix was reused).
- ``sae-lens``: ``sae_lens.evals.get_recons_loss`` per SAE on TransformerLens (clean,
  spliced and zero-ablated forwards with full logits, every position), ``--lens-rows``
  rows per call so that its logits fit in memory.
- ``sae_med bf16`` (``--bf16``): sae_med's scoring with the model's forwards in bfloat16
  (``model.dtype``), and, per SAE, its ΔCE against the fp32 side's on the same tokens
  (paired per token, ± 1.96 s.e.): what bf16 costs in accuracy for what it gains in time.
  ``--saes DIR ...`` scores trained SAE folders instead of the untrained ones.

    .venv/bin/python benchmarks/bench_eval.py [--config configs/default.yaml]
        [--corpus medical] [--ce-tokens 1024] [--targets 20,40,80] [--no-sae-lens]
        [--bf16] [--saes DIR ...]

Last line: ``speedup_vs_full_forwards=<ratio> speedup_vs_sae_lens=<ratio>``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from sae_med.config import load_config
from sae_med.experiment import load_model_for
from sae_med.lm.load import load_model
from sae_med.lm.model import LanguageModel, TokenBatch
from sae_med.measure.metrics import CELosses
from sae_med.measure.scoring import ce_batches, reconstruction_fn
from sae_med.measure.spliced import score, spliced_losses
from sae_med.sae.io import to_sae_lens
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.train.sweep import init_threshold_at_target_


def untrained_saes(x: torch.Tensor, width: int, targets: list[float]) -> list[JumpReLUSAE]:
    mean = x.mean(0)
    saes = []
    for i, target in enumerate(targets):
        sae = JumpReLUSAE(x.shape[1], width, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_enc.copy_(-(mean @ sae.W_enc))
            sae.b_dec.copy_(mean)
            init_threshold_at_target_(sae, x, target, 1e-6)
        saes.append(sae)
    return saes


def full_forwards(model: LanguageModel, batch: TokenBatch, layer: int,
                  fns: dict[str, Callable]) -> None:
    """The scoring of ``spliced_losses`` with a whole forward per variant."""
    tokens, attn, keep = batch
    keep = keep.bool() & attn.bool()
    where = (keep[:, :-1] & attn[:, 1:].bool()).nonzero(as_tuple=True)

    def states(fn: Callable) -> torch.Tensor:
        def splice(act: torch.Tensor) -> torch.Tensor:
            out = act.clone()
            out[keep] = fn(act[keep])
            return out
        return model.final_states(tokens, attn, layer, splice)[:, :-1][where]

    clean = model.final_states(tokens, attn, layer, lambda a: a)[:, :-1][where]
    variants = {"zero": states(torch.zeros_like)} | {k: states(f) for k, f in fns.items()}
    score(model, clean, variants, tokens[:, 1:][where])


def token_delta_ce(per_batch: list[dict[str, CELosses]], name: str) -> torch.Tensor:
    """Per-token ΔCE of SAE ``name`` over every scored token of timed ``spliced_losses``
    outputs (one dict per batch)."""
    return torch.cat([(p[name].ce_spliced - p[name].ce_clean)[p[name].mask]
                      for p in per_batch])


def bf16_check(cfg, batches: list[TokenBatch], fns: dict[str, Callable],
               fp32: list[dict[str, CELosses]], times: dict[str, float]) -> list[str]:
    """Time the bf16 side and compare each SAE's per-token ΔCE with the fp32 side's
    (``fp32``: the timed fp32 pass's outputs, so neither side is scored twice)."""
    layer = cfg.model.hook_layer
    bf16 = load_model(cfg.model.name, "cpu", cfg.cache_path, "bfloat16")
    spliced_losses(bf16, batches[0], layer, fns)  # warm-up
    new: list[dict[str, CELosses]] = []
    times["sae_med bf16"] = timed(lambda: new.extend(spliced_losses(bf16, b, layer, fns)
                                                     for b in batches))
    lines = []
    for k in fns:
        ref, out = token_delta_ce(fp32, k), token_delta_ce(new, k)
        diff = out - ref
        half = 1.96 * float(diff.std()) / len(diff) ** 0.5
        lines.append(f"| {k} | {float(ref.mean()):.3f} | {float(out.mean()):.3f} | "
                     f"{float(diff.mean()):+.3f} ± {half:.3f} |")
    return lines


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--corpus", default="medical")
    ap.add_argument("--ce-tokens", type=int, default=1024)
    ap.add_argument("--targets", default="20,40,80")
    ap.add_argument("--no-sae-lens", action="store_true")
    ap.add_argument("--lens-rows", type=int, default=4,
                    help="rows per get_recons_loss call (its logits are rows × ctx × vocab)")
    ap.add_argument("--bf16", action="store_true", help="add the bf16 side and ΔCE check")
    ap.add_argument("--saes", nargs="*", default=[], help="trained SAE folders to score")
    a = ap.parse_args()
    # every side but the bf16 one in fp32, whatever the config says (sae-lens runs in fp32)
    cfg = load_config(a.config, [f"eval.ce_tokens={a.ce_tokens}", "model.dtype=float32"])
    model, layer = load_model_for(cfg), cfg.model.hook_layer
    batches = ce_batches(model, cfg, a.corpus)
    with torch.no_grad():
        x = torch.cat([model.resid(b.tokens, b.attention_mask, layer)[b.keep.bool()]
                       for b in batches])
    saes = ([JumpReLUSAE.load(d) for d in a.saes] if a.saes else
            untrained_saes(x, cfg.sae.width, [float(t) for t in a.targets.split(",")]))
    fns = {f"s{i}": reconstruction_fn(s) for i, s in enumerate(saes)}
    scored = sum(int((b.keep[:, :-1].bool() & b.attention_mask[:, 1:].bool()).sum())
                 for b in batches)
    spliced_losses(model, batches[0], layer, fns)  # warm-up (allocator, thread pool)
    fp32: list[dict[str, CELosses]] = []  # kept for the bf16 check
    times = {
        "sae_med": timed(lambda: fp32.extend(spliced_losses(model, b, layer, fns)
                                             for b in batches)),
        "full forwards": timed(lambda: [full_forwards(model, b, layer, fns)
                                        for b in batches]),
    }
    if not a.no_sae_lens:
        from sae_lens.evals import get_recons_loss
        from sae_lens.training.activation_scaler import ActivationScaler

        tl = model.transformer_lens()
        lens = [to_sae_lens(s) for s in saes]
        for s in lens:
            s.cfg.metadata.hook_name = cfg.model.hook_name
        # full logits of every position: a few rows at a time, or they need tens of GB
        rows = [t for b in batches for t in b.tokens.split(a.lens_rows)]
        times["sae-lens"] = timed(lambda: [
            get_recons_loss(s, tl, ActivationScaler(), t, compute_kl=True,
                            compute_ce_loss=True) for s in lens for t in rows])
    checks = bf16_check(cfg, batches, fns, fp32, times) if a.bf16 else []
    print(f"# bench_eval {time.strftime('%Y-%m-%d')}: {cfg.model.name} block {layer}, "
          f"{len(saes)} {'trained' if a.saes else 'untrained'} SAEs of width "
          f"{saes[0].d_sae}, {scored} scored tokens of "
          f"{a.corpus}/eval in {len(batches)} batches, {torch.get_num_threads()} threads")
    print("| side | seconds | scored tokens × SAEs per second |")
    print("|---|---|---|")
    for side, sec in times.items():
        print(f"| {side} | {sec:.1f} | {scored * len(saes) / sec:.0f} |")
    ratios = [f"speedup_vs_{k.replace(' ', '_').replace('-', '_')}="
              f"{v / times['sae_med']:.2f}" for k, v in times.items()
              if k not in ("sae_med", "sae_med bf16")]
    if "sae_med bf16" in times:
        ratios.append(f"bf16_speedup={times['sae_med'] / times['sae_med bf16']:.2f}")
    if checks:
        print("| SAE | ΔCE fp32 | ΔCE bf16 | bf16 − fp32 (paired) |\n|---|---|---|---|")
        print("\n".join(checks))
    print(" ".join(ratios))


if __name__ == "__main__":
    main()
