"""Naive twins of :class:`sae_med.lm.model.LanguageModel`'s spliced loss, for the tests only.

Each runs the whole model once on the batch stacked three times (clean, spliced, zeroed),
takes the full logits the library itself returns (soft-cap included) and scores every
position with one log-softmax: no chunking, no shared passes, no stopping early. One goes
through TransformerLens hooks, one through an HF forward hook on the decoder layer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from sae_med.lm.model import decoder_layers
from sae_med.measure.metrics import CELosses


def _splice(resid, sae_fn, mask, b):
    out = resid.clone()
    out[b:2 * b][mask] = sae_fn(resid[b:2 * b][mask]).to(resid.dtype)
    out[2 * b:][mask] = 0.0
    return out


def _score(logits, tokens, attention_mask, loss_mask) -> CELosses:
    b = tokens.shape[0]
    scored = loss_mask.bool()[:, :-1] & attention_mask.bool()[:, 1:]
    # fp64: an fp32 log-softmax over a 262k vocabulary is itself ~1e-4 nat off on KLs
    # of ~10 nats, more than the package's own error
    logp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    tgt = tokens[:, 1:].repeat(3, 1)[..., None]
    ce = -logp.gather(-1, tgt)[..., 0]
    clean, spliced, zero = logp[:b], logp[b:2 * b], logp[2 * b:]
    kl = {n: (clean.exp() * (clean - lp)).sum(-1) for n, lp in (("s", spliced), ("z", zero))}

    def m(t):
        return torch.where(scored, t, torch.zeros_like(t))

    return CELosses(*(m(t).float() for t in (ce[:b], ce[b:2 * b], ce[2 * b:], kl["s"], kl["z"])),
                    mask=scored)


@torch.no_grad()
def ce_losses_tl(tl: Any, tokens, attention_mask, layer: int, sae_fn, loss_mask) -> CELosses:
    """Spliced CE through a TransformerLens ``HookedTransformer``."""
    b = tokens.shape[0]
    logits = tl.run_with_hooks(
        tokens.repeat(3, 1), attention_mask=attention_mask.repeat(3, 1),
        fwd_hooks=[(f"blocks.{layer}.hook_resid_post",
                    lambda act, hook: _splice(act, sae_fn, loss_mask, b))])
    return _score(logits, tokens, attention_mask, loss_mask)


@torch.no_grad()
def ce_losses_hf(hf: Any, tokens, attention_mask, layer: int, sae_fn, loss_mask) -> CELosses:
    """Spliced CE through a plain HF causal LM with a forward hook on decoder layer
    ``layer`` (its output is TransformerLens's ``hook_resid_post``)."""
    b = tokens.shape[0]

    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (_splice(output[0], sae_fn, loss_mask, b), *output[1:])
        return _splice(output, sae_fn, loss_mask, b)

    handle = decoder_layers(hf)[layer].register_forward_hook(hook)
    try:
        logits = hf(input_ids=tokens.repeat(3, 1),
                    attention_mask=attention_mask.repeat(3, 1), use_cache=False).logits
    finally:
        handle.remove()
    return _score(logits, tokens, attention_mask, loss_mask)
