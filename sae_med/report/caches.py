"""Chapter 1's tables and figures (caching activations): the caches' corpora and token
counts, and the activation norms of one split per corpus."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from sae_med.cache.activations import ActivationCache
from sae_med.corpora.registry import corpus_info
from sae_med.report.notebook import CORPUS_COLORS

Caches = Mapping[tuple[str, str], ActivationCache]
"""Activation caches by (corpus, split), as :func:`sae_med.experiment.stage_cache` returns."""


def cache_table(caches: Caches) -> pd.DataFrame:
    """One row per cache: its corpus, domain, split, documents, tokens, tokens per document,
    the corpus's description and the cache key."""
    return pd.DataFrame([_cache_row(corpus, split, cache)
                         for (corpus, split), cache in caches.items()])


def _cache_row(corpus: str, split: str, cache: ActivationCache) -> dict[str, object]:
    info = corpus_info(corpus)
    n_docs = len(cache.doc_ids())
    return {"corpus": corpus, "domain": info.domain, "split": split, "documents": n_docs,
            "tokens": cache.n_tokens,
            "tokens per document": round(cache.n_tokens / max(1, n_docs), 1),
            "description": info.description, "cache key": cache.key}


def split_tokens(table: pd.DataFrame, split: str) -> int:
    """Tokens over the caches of one split in a :func:`cache_table`."""
    return int(table[table.split == split].tokens.sum())


def activation_norms(caches: Caches, split: str) -> dict[str, np.ndarray]:
    """ℓ2 norm of every cached activation of ``split``, by corpus. Shape: (n_tokens,)."""
    return {corpus: cache.activations().norm(dim=1).numpy()
            for (corpus, s), cache in caches.items() if s == split}


def norm_figure(norms: Mapping[str, np.ndarray], hook_name: str, split: str) -> go.Figure:
    """Overlaid histograms of the activation norms (fraction of tokens, log scale), one
    trace per corpus."""
    fig = go.Figure([go.Histogram(x=x, name=corpus, opacity=0.6, nbinsx=80,
                                  histnorm="probability", marker_color=CORPUS_COLORS.get(corpus))
                     for corpus, x in norms.items()])
    fig.update_layout(barmode="overlay", title=f"‖x‖ at {hook_name} ({split} split)",
                      xaxis_title="activation norm ‖x‖ (L2, model units)",
                      yaxis_title="fraction of tokens")
    fig.update_yaxes(type="log")
    return fig


def norm_table(norms: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per corpus: the mean, median and largest activation norm."""
    return pd.DataFrame([{"corpus": corpus, "mean ‖x‖": x.mean(),
                          "median ‖x‖": float(pd.Series(x).median()), "max ‖x‖": x.max()}
                         for corpus, x in norms.items()])
