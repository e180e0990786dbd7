"""How far the embedded Gemma-3-270M (a dequantized Q4_K_M GGUF) is from the original
weights at the hooked block: a planned measurement (issue 35) for a machine that reaches
the Hugging Face hub (``google/gemma-3-270m`` is gated: accept its licence, then
``hf auth login``).

    .venv/bin/python scripts/embedded_vs_original.py configs/gemma_scope_2.yaml \
        [--original google/gemma-3-270m] [--docs 64] \
        [--sae sae_lens:gemma-scope-2-270m-pt-res-all/layer_13_width_16k_l0_small]

On the first ``--docs`` held-out documents of the config's domain corpus, tokenised once
and run through both models in fp32, it prints the mean cosine between the two residuals
per kept token, their relative L2 difference, and the FVE of one SAE on each (default: a
Gemma Scope 2 SAE of the block, trained on the original weights).
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import torch
from torch import Tensor

from sae_med.config import load_config
from sae_med.lm.load import load_model
from sae_med.measure.scoring import ce_texts
from sae_med.sae.io import load_any_sae

GEMMA_SCOPE_2 = "sae_lens:gemma-scope-2-270m-pt-res-all/layer_13_width_16k_l0_small"


class Agreement(NamedTuple):
    tokens: int
    mean_cosine: float
    relative_l2: float
    """‖x_embedded − x_original‖ / ‖x_original‖ over all kept tokens."""
    fve_embedded: float
    fve_original: float


def fve(sae: torch.nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        err = (x - sae(x).x_hat).pow(2).sum()
    return float(1 - err / (x - x.mean(0)).pow(2).sum())


def agreement(x_emb: Tensor, x_orig: Tensor, sae: torch.nn.Module) -> Agreement:
    cos = torch.nn.functional.cosine_similarity(x_emb, x_orig, dim=-1)
    rel = (x_emb - x_orig).norm() / x_orig.norm()
    return Agreement(len(x_emb), float(cos.mean()), float(rel), fve(sae, x_emb),
                     fve(sae, x_orig))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--original", default="google/gemma-3-270m")
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--sae", default=GEMMA_SCOPE_2)
    args = ap.parse_args()
    cfg = load_config(args.config)
    embedded = load_model(cfg.model.name, "cpu", cfg.cache_path, "float32")
    original = load_model(args.original, "cpu", cfg.cache_path, "float32")
    batch = embedded.tokenize(ce_texts(embedded, cfg, cfg.train_corpora[0], args.docs),
                              cfg.cache.ctx_len)
    layer = cfg.model.hook_layer
    x_emb, x_orig = (m.resid(batch.tokens, batch.attention_mask, layer)[batch.keep]
                     for m in (embedded, original))
    print(agreement(x_emb, x_orig, load_any_sae(args.sae)))


if __name__ == "__main__":
    main()
