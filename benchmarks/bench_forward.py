"""The model's fp32 forward on CPU: the current path against candidate ways of running its
blocks (issue 30's budget on CPUs without native bf16).

One process, the real embedded Gemma-3-270M weights and one real cache batch (the
largest of the default's length-sorted, token-packed batches of the first ``--docs``
training documents of ``--corpus``: about ``batch_size * ctx_len`` positions; broad's
long documents fill 32 x 128). Two forwards are timed, each in interleaved rounds over
the sides so that a busy spell of the machine hits every side alike:

- ``cache``: :meth:`LanguageModel.resid` up to the hook block (what caching runs);
- ``spliced``: :meth:`LanguageModel.final_states_from` with the identity edit, the blocks
  after the hook block and the final norm (what spliced CE reruns per SAE; the
  unembedding already goes through oneDNN and is not timed here).

Sides (each changes the blocks for its own rounds only):

- ``current``: the model as the package runs it (``F.linear``, MKL's sgemm);
- ``onednn``: oneDNN's fp32 linear (``mkldnn._linear_pointwise``) on the plain weights,
  the kernel the package already uses for the unembedding and the SAE encoder;
- ``onednn_packed``: the same with each weight reordered once into oneDNN's blocked
  layout for this batch's rows (``mkldnn._reorder_linear_weight``);
- ``fused``: q/k/v and gate/up each as one wider ``F.linear`` on concatenated weights
  (fewer, wider products; the same sums per output column);
- ``compiled``: each block's forward through ``torch.compile`` (Inductor, dynamic
  shapes, an instance-level forward so the blocks' hooks stay outside): the products
  stay ATen's, the norms, rotary embedding, GELU and residual additions are fused into
  generated C++ loops. Its first round (compilation) is timed apart and left out of the
  medians.

Prints the CPU (model and flags, from /proc/cpuinfo), the median seconds per batch of each side and
path, ``speedup_vs_baseline`` (current / side) and the largest absolute and relative
(to the largest |value|) difference from the current side's output.

    nice -n 10 .venv/bin/python benchmarks/bench_forward.py [--rounds 5] [--docs 512]
        [--corpus broad] [--sides current,onednn,onednn_packed,fused,compiled]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sae_med.lm.model import decoder_layers
from sae_med.runtime import cpu_info, onednn_linear

SIDES = ("current", "onednn", "onednn_packed", "fused", "compiled")


def cpu_line() -> str:
    """The CPU (model, count) and its SIMD flags, then every flag."""
    name, flags = cpu_info()
    simd = [f for f in flags.split() if f.startswith(("avx", "fma", "amx", "sse4"))]
    return (f"cpu: {name}, {os.cpu_count()} CPUs; SIMD flags: {' '.join(simd)}\n"
            f"flags: {flags}")


def _onednn(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    y = onednn_linear(x.reshape(-1, x.shape[-1]), W, b)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _block_linears(blocks: Any) -> list[nn.Linear]:
    return [m for block in blocks for m in block.modules() if isinstance(m, nn.Linear)]


@contextmanager
def patched(side: str, model: Any, rows: int) -> Iterator[None]:
    """``model``'s blocks computed the ``side`` way inside the ``with``."""
    blocks = decoder_layers(model.hf_model)
    if side == "current":
        yield
        return
    if side == "fused":
        with _fused(blocks):
            yield
        return
    if side == "compiled":
        for block in blocks:
            block.forward = _compiled(block)
        try:
            yield
        finally:
            for block in blocks:
                del block.forward
        return
    linears = _block_linears(blocks)
    for lin in linears:
        W = lin.weight.detach()
        if side == "onednn_packed":
            W = torch.ops.mkldnn._reorder_linear_weight(W, rows)
        b = None if lin.bias is None else lin.bias.detach()
        lin.forward = (lambda x, W=W, b=b: _onednn(x, W, b))  # type: ignore[method-assign]
    try:
        yield
    finally:
        for lin in linears:
            del lin.forward


_COMPILED: dict[int, Callable[..., Any]] = {}


def _compiled(block: nn.Module) -> Callable[..., Any]:
    """``block``'s own forward through ``torch.compile`` (dynamic shapes; made once per
    block): the module's hooks stay outside the compiled code."""
    if id(block) not in _COMPILED:
        _COMPILED[id(block)] = torch.compile(block.forward, dynamic=True)
    return _COMPILED[id(block)]


@contextmanager
def _fused(blocks: Any) -> Iterator[None]:
    """q/k/v and gate/up as one product each: the first of a group computes the fused
    product and hands the others their slices."""
    groups = []
    for block in blocks:
        attn, mlp = block.self_attn, block.mlp
        groups += [[attn.q_proj, attn.k_proj, attn.v_proj], [mlp.gate_proj, mlp.up_proj]]
    patched_mods = []
    for group in groups:
        W = torch.cat([m.weight.detach() for m in group])
        widths = [m.weight.shape[0] for m in group]
        cache: dict[str, Any] = {}

        def make(i: int, W: Tensor = W, widths: list[int] = widths,
                 cache: dict[str, Any] = cache) -> Callable[[Tensor], Tensor]:
            def forward(x: Tensor) -> Tensor:
                if i == 0 or cache.get("x") is not x:
                    cache["x"], cache["parts"] = x, F.linear(x, W).split(widths, -1)
                return cache["parts"][i]
            return forward

        for i, m in enumerate(group):
            m.forward = make(i)  # type: ignore[method-assign]
            patched_mods.append(m)
    try:
        yield
    finally:
        for m in patched_mods:
            del m.forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--docs", type=int, default=512)
    ap.add_argument("--corpus", default="broad",
                    help="training corpus whose documents make the batch (broad: full "
                         "32 x 128 batches; medical: many short documents per batch)")
    ap.add_argument("--sides", default=",".join(SIDES))
    args = ap.parse_args()
    sides = ["current", *[s for s in args.sides.split(",") if s and s != "current"]]

    from sae_med.cache.activations import packed_batches
    from sae_med.config import load_config
    from sae_med.corpora.registry import iter_documents
    from sae_med.lm.load import load_model

    print(cpu_line())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"niceness {os.nice(0)}, capability {torch.backends.cpu.get_cpu_capability()}")
    cfg = load_config("configs/default.yaml", ["model.dtype=float32"])
    layer = cfg.model.hook_layer
    model = load_model(cfg.model.name, device="cpu", dtype="float32")
    texts = [d.text for _, d in zip(range(args.docs), iter_documents(args.corpus, "train"),
                                    strict=False)]
    batch = max((b for _, b in packed_batches(model, texts, cfg.cache)),
                key=lambda b: b.tokens.numel())
    tokens, mask, kept = batch
    rows = tokens.numel()
    print(f"model {cfg.model.name}, hook block {layer} of {model.n_layers}; {args.corpus} batch "
          f"{tuple(tokens.shape)} = {rows} positions ({int(mask.sum())} attended)")

    def cache_fwd() -> Tensor:
        return model.resid(tokens, mask, layer)

    clean = model.clean_run(tokens, mask, layer)

    def spliced_fwd() -> Tensor:
        return model.final_states_from(clean, tokens, mask, layer, lambda h: h)

    paths = {"cache": cache_fwd, "spliced": spliced_fwd}
    times: dict[tuple[str, str], list[float]] = {(s, p): [] for s in sides for p in paths}
    outs: dict[tuple[str, str], Tensor] = {}
    for r in range(args.rounds + 1):  # round 0 warms up and keeps the outputs
        for side in sides:
            with patched(side, model, rows):
                for path, fn in paths.items():
                    t0 = time.perf_counter()
                    out = fn()
                    dt = time.perf_counter() - t0
                    times[side, path].append(dt)
                    if r == 0:
                        outs[side, path] = out
        if r == 0:
            print("warm-up (compilation included): " + ", ".join(
                f"{s}/{p} {times[s, p].pop():.1f}s" for s in sides for p in paths))
        if r:
            print(f"round {r}: " + ", ".join(
                f"{s}/{p} {times[s, p][-1]:.2f}s" for s in sides for p in paths), flush=True)

    keep = kept.bool()  # the positions a cache keeps (no BOS, no padding)
    print()
    print("| path | side | median s/batch | speedup_vs_baseline | max abs diff | "
          "max abs diff / max abs value | max row ‖diff‖ / ‖value‖ |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        base = statistics.median(times["current", path])
        ref = outs["current", path][keep].double()
        for side in sides:
            med = statistics.median(times[side, path])
            d = outs[side, path][keep].double() - ref
            diff = d.abs().max().item()
            row = (d.norm(dim=-1) / ref.norm(dim=-1)).max().item()
            print(f"| {path} | {side} | {med:.3f} | {base / med:.3f} | {diff:.2e} | "
                  f"{diff / ref.abs().max().item():.2e} | {row:.2e} |")
    for side in sides[1:]:
        for path in paths:
            ratio = (statistics.median(times["current", path])
                     / statistics.median(times[side, path]))
            per_round = statistics.median(
                a / b for a, b in zip(times["current", path], times[side, path], strict=True))
            print(f"{side} {path}: speedup_vs_baseline={ratio:.3f} "
                  f"(median of per-round ratios {per_round:.3f})")


if __name__ == "__main__":
    main()
