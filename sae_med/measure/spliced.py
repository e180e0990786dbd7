"""Spliced-in next-token losses: CE and KL with an SAE's reconstruction in the residual.

The language model runs the forwards (:class:`~sae_med.lm.model.LanguageModel`); this
module splices each reconstruction after a block, scores next-token CE and KL(clean ‖
spliced) in chunks of rows, and hands back :class:`~sae_med.measure.metrics.CELosses`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_med.lm.model import LanguageModel, TokenBatch
from sae_med.measure.metrics import CELosses, SaeFn

SCORE_ROWS = 4
"""Rows of fp32 log-probabilities scored at a time after a chunk's unembedding: a few MB
that stay in cache, where a whole chunk's log-softmax and KL passes over a 262k
vocabulary stream 134 MB each; the CE and KL are the same to the bit either way
(benchmarks/bench_score.py times the two)."""


def row_blocks(n: int) -> list[slice]:
    """``range(n)`` in blocks of :data:`SCORE_ROWS` rows (the last one ragged)."""
    return [slice(r, min(r + SCORE_ROWS, n)) for r in range(0, n, SCORE_ROWS)]


def row_logsumexp(z: Float[Tensor, "n d_vocab"]) -> Float[Tensor, " n"]:
    """log Σ exp of each row, :data:`SCORE_ROWS` rows at a time (the exp's temporary stays
    in cache: faster than ``torch.logsumexp`` over a whole chunk of a large vocabulary)."""
    out = torch.empty(len(z), dtype=torch.float32, device=z.device)
    for rows in row_blocks(len(z)):
        block = z[rows].float()
        m = block.amax(-1, keepdim=True)
        out[rows] = (block - m).exp_().sum(-1).log_() + m[:, 0]
    return out


class ChunkScores(NamedTuple):
    """Per-row next-token scores from :func:`score` (each ``(n,)``)."""

    ce_clean: Float[Tensor, " n"]
    ce: dict[str, Float[Tensor, " n"]]
    """CE under each variant, by name."""
    kl: dict[str, Float[Tensor, " n"]]
    """KL(clean ‖ variant) per row, nats, by name."""


@torch.no_grad()
def spliced_losses(model: LanguageModel, batch: TokenBatch, layer: int,
                   sae_fns: Mapping[str, SaeFn], chunk_tokens: int = 128) -> dict[str, CELosses]:
    """Next-token CE and KL with each ``sae_fn`` spliced in after block ``layer``.

    One clean forward of the batch, then for x → 0 and for each SAE (x → sae_fn(x) at
    ``keep``; BOS and pad stay untouched) only the blocks after ``layer``
    (:meth:`~sae_med.lm.model.LanguageModel.final_states_from`). The unembedding
    runs ``chunk_tokens`` scored positions at a time (no positions × vocab tensor
    larger than a chunk) and its clean and zero-ablated parts are shared by every SAE.
    Position t is scored when spliced at t and token t + 1 is attended, so the
    prediction made at BOS, which no splice changes, is not counted.
    CE_t = −log p(token_{t+1} | ≤ t); KL_t = Σ_v p_clean (log p_clean − log p_new).
    """
    tokens, attn, keep = batch
    keep = keep.bool() & attn.bool()
    scored = keep[:, :-1] & attn[:, 1:].bool()
    where = scored.nonzero(as_tuple=True)

    # the clean forward once; every variant then reruns only the blocks after ``layer``
    clean = model.clean_run(tokens, attn, layer)
    h_clean = clean.final[:, :-1][where]

    def states(fn: SaeFn) -> Tensor:
        def splice(act: Tensor) -> Tensor:
            out = act.clone()
            out[keep] = fn(act[keep]).to(act.dtype)
            return out

        return model.final_states_from(clean, tokens, attn, layer, splice)[:, :-1][where]

    h_zero = states(torch.zeros_like)
    h_sae = {name: states(fn) for name, fn in sae_fns.items()}
    targets = tokens[:, 1:][where]
    ce_clean, ce, kl = score(model, h_clean, {"zero": h_zero, **h_sae}, targets,
                                  chunk_tokens)

    def full(v: Tensor) -> Tensor:
        t = torch.zeros(scored.shape, dtype=torch.float32, device=tokens.device)
        t[where] = v
        return t

    shared = {"ce_clean": full(ce_clean), "ce_zero": full(ce["zero"]),
              "kl_zero": full(kl["zero"])}
    return {name: CELosses(ce_spliced=full(ce[name]), kl_spliced=full(kl[name]),
                           mask=scored, **shared) for name in sae_fns}

@torch.no_grad()
def score(model: LanguageModel, h_clean: Float[Tensor, "n d_model"],
          variants: Mapping[str, Float[Tensor, "n d_model"]], targets: Int[Tensor, " n"],
          chunk_tokens: int = 128) -> ChunkScores:
    """CE of ``targets`` under the clean states, and CE and KL(clean ‖ variant) under
    each variant, unembedding ``chunk_tokens`` rows at a time.

    With fp32 logits and no soft-cap no log-softmax is written: CE = lse − z[target] and
    KL = Σ p_clean (z_clean − z) + lse − lse_clean, from each row's log-sum-exp (one
    pass over the logits instead of a log-softmax's several). Otherwise (bf16 or
    soft-capped logits) each row's log-softmax is taken. Both work :data:`SCORE_ROWS`
    rows at a time, so the temporaries stay in cache."""
    n = targets.shape[0]
    out = ChunkScores(*_zeros(n, targets.device, variants))
    for s in range(0, n, chunk_tokens):
        sl = slice(s, s + chunk_tokens)
        (_score_linear if model.linear_logits else _score_rows)(
            model, h_clean[sl], {k: h[sl] for k, h in variants.items()},
            targets[sl, None], out, s)
    return out

def _zeros(n: int, device: torch.device, variants: Mapping[str, Tensor]
           ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    def zeros() -> Tensor:
        return torch.zeros(n, dtype=torch.float32, device=device)

    return zeros(), {k: zeros() for k in variants}, {k: zeros() for k in variants}


def _score_linear(model: LanguageModel, h_clean: Tensor, variants: Mapping[str, Tensor],
                  tgt: Tensor, out: ChunkScores, start: int) -> None:
    """One chunk of :func:`score` on linear fp32 logits: per row block, each variant's
    log-sum-exp and Σ p_clean (z_clean − z) in one pass over its logits."""
    z_clean = model.logits(h_clean)
    lse_clean = row_logsumexp(z_clean)
    out.ce_clean[start:start + len(tgt)] = lse_clean - z_clean.gather(-1, tgt)[:, 0]
    p_clean = (z_clean - lse_clean[:, None]).exp_()
    for k, h in variants.items():
        z = model.logits(h)
        for rows in row_blocks(len(z)):
            at = slice(start + rows.start, start + rows.stop)
            lse = row_logsumexp(z[rows])
            out.ce[k][at] = lse - z[rows].gather(-1, tgt[rows])[:, 0]
            # the difference first: its sum is exact to the logits' rounding, where
            # Σ p z of each side would cancel two large numbers
            out.kl[k][at] = torch.linalg.vecdot(p_clean[rows], z_clean[rows] - z[rows]
                                                ) + lse - lse_clean[rows]

def _score_rows(model: LanguageModel, h_clean: Tensor, variants: Mapping[str, Tensor], tgt: Tensor,
                out: ChunkScores, start: int) -> None:
    """One chunk of :func:`score` through each row's log-softmax (any logits)."""
    raw = model.logits(h_clean)
    blocks = row_blocks(len(raw))
    logp_clean = torch.cat([model.log_probs(raw[rows]) for rows in blocks])
    p_clean = logp_clean.exp()
    out.ce_clean[start:start + len(tgt)] = -logp_clean.gather(-1, tgt)[:, 0]
    for k, h in variants.items():
        raw = model.logits(h)
        for rows in blocks:
            at = slice(start + rows.start, start + rows.stop)
            logp = model.log_probs(raw[rows])
            out.ce[k][at] = -logp.gather(-1, tgt[rows])[:, 0]
            out.kl[k][at] = (p_clean[rows] * (logp_clean[rows] - logp)).sum(-1)
