"""Chapter 5's tables and figures (feature case studies), from objects the chapter computed:
concept alignments, the case-study latents, a dictionary match, absorption tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from torch import Tensor

from sae_med.cache.activations import ActivationCache
from sae_med.interpret.features import (
    Alignment,
    ConceptLatent,
    DictionaryMatch,
    LatentActs,
    logit_lens,
    top_windows,
)
from sae_med.report.notebook import CORPUS_COLORS
from sae_med.sae.jumprelu import JumpReLUSAE

MATCH_KINDS = ("shared", "split", "related", "new")
"""The classes of :func:`sae_med.interpret.features.match_dictionaries`, in display order."""
WINDOW_JOIN = " ⏎ "


def aligned_share(al: Alignment, bar: float) -> float:
    """Share of the latents whose held-out AUROC is at least ``bar``."""
    return float((al.auroc >= bar).float().mean())


def alignment_figure(alignment: Mapping[str, Alignment], bar: float, target: float
                     ) -> go.Figure:
    """Histogram of each SAE's best-concept held-out AUROCs, the ``bar`` marked."""
    fig = go.Figure()
    for c, al in alignment.items():
        fig.add_trace(go.Histogram(x=al.auroc.numpy(), name=f"SAE trained on {c}",
                                   opacity=0.6, nbinsx=40, marker_color=CORPUS_COLORS.get(c)))
    fig.add_vline(x=bar, line_dash="dash")
    n_concepts = len(next(iter(alignment.values())).concepts)
    fig.update_layout(barmode="overlay", xaxis_title="held-out AUROC of the best concept",
                      yaxis_title="latents",
                      title=f"Concept alignment at target L0 {target:g} ({n_concepts} concepts)")
    return fig


def alignment_table(alignment: Mapping[str, Alignment], bar: float) -> pd.DataFrame:
    """Per SAE: the share of latents at or above ``bar``, the median AUROC, the share with
    held-out F1 ≥ 0.5."""
    return pd.DataFrame([{"SAE": c, f"share AUROC ≥ {bar}": aligned_share(al, bar),
                          "median AUROC": float(al.auroc.median()),
                          "share F1 ≥ 0.5": float((al.f1 >= 0.5).float().mean())}
                         for c, al in alignment.items()])


def best_aligned_table(al: Alignment, k: int = 10) -> pd.DataFrame:
    """The ``k`` latents with the highest held-out AUROC, with their concepts."""
    best = al.auroc.argsort(descending=True)[:k].tolist()
    return pd.DataFrame([{"latent": j, "concept": al.concept[j],
                          "held-out AUROC": float(al.auroc[j]), "held-out F1": float(al.f1[j])}
                         for j in best])


def windows_text(acts: LatentActs, cache: ActivationCache, latent: int, tokenizer: Any,
                 k: int) -> str:
    """The latent's ``k`` strongest windows (peak marked), joined on one line."""
    return WINDOW_JOIN.join(w.render(tokenizer)
                            for w in top_windows(acts, cache, latent, k=k))


def case_study_table(found: Sequence[ConceptLatent], saes: Mapping[str, JumpReLUSAE],
                     acts: Mapping[str, LatentActs], cache: ActivationCache, tokenizer: Any,
                     unembed: Tensor, k_windows: int = 3, k_tokens: int = 6
                     ) -> pd.DataFrame:
    """One row per SAE's best latent for a concept: its AUROC, strongest windows and the
    tokens its decoder direction promotes (logit lens)."""
    return pd.DataFrame([{
        "SAE": f.sae, "latent": f.latent, "AUROC": f.auroc,
        "top windows": windows_text(acts[f.sae], cache, f.latent, tokenizer, k_windows),
        "logit lens (top)": " | ".join(logit_lens(saes[f.sae], unembed, tokenizer, f.latent,
                                                  k=k_tokens).top_tokens)}
        for f in found])


def match_kinds(m: DictionaryMatch) -> pd.Series:
    """Latents of A per match class, in :data:`MATCH_KINDS` order."""
    return pd.Series(m.kind).value_counts().reindex(list(MATCH_KINDS), fill_value=0)


def match_figures(m: DictionaryMatch, alive: Tensor, target: float
                  ) -> tuple[go.Figure, go.Figure]:
    """Bar chart of the match classes, and histograms of the live A latents' best decoder
    cosine and best activation correlation."""
    kinds = match_kinds(m)
    classes = go.Figure(go.Bar(x=kinds.index, y=kinds.values))
    classes.update_layout(xaxis_title="medical-SAE latent class", yaxis_title="latents",
                          title=f"Medical-SAE latents vs the broad SAE (target L0 {target:g})")
    best = go.Figure([go.Histogram(x=m.cosine[alive].numpy(), nbinsx=50, opacity=0.6,
                                   name="decoder cosine"),
                      go.Histogram(x=m.corr[alive].numpy(), nbinsx=50, opacity=0.6,
                                   name="activation correlation")])
    best.update_layout(barmode="overlay", xaxis_title="best match with a broad-SAE latent",
                       yaxis_title="live medical-SAE latents")
    return classes, best


def new_latents_table(al: Alignment, m: DictionaryMatch, k: int = 5) -> pd.DataFrame:
    """The ``k`` best-aligned latents of A with no counterpart in B (class ``new``)."""
    order = al.auroc.argsort(descending=True).tolist()
    new = [j for j in order if m.kind[j] == "new"][:k]
    return pd.DataFrame([{"latent": j, "concept": al.concept[j], "AUROC": float(al.auroc[j]),
                          "best cosine": float(m.cosine[j]), "best correlation": float(m.corr[j])}
                         for j in new])


def split_table(split: tuple[int, Sequence[int]], m: DictionaryMatch,
                acts: Mapping[str, LatentActs], cache: ActivationCache, tokenizer: Any,
                a: str, b: str, k_latents: int = 4, k_windows: int = 2) -> pd.DataFrame:
    """A split (:func:`~sae_med.interpret.features.largest_split`: a latent of SAE ``b`` and
    the ``a`` latents whose best match it is): the ``b`` latent, then up to ``k_latents``
    of the ``a`` ones, with their decoder cosines and strongest windows."""
    top, group = split
    return pd.DataFrame([{
        "SAE": sae, "latent": j, "cosine": 1.0 if sae == b else float(m.cosine[j]),
        "top windows": windows_text(acts[sae], cache, j, tokenizer, k_windows)}
        for sae, j in [(b, top), *((a, j) for j in group[:k_latents])]])


def absorption_figure(absorb: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Each HPO parent's absorption rate against its parent latent's held-out AUROC, one
    trace per SAE (:func:`sae_med.interpret.features.absorption` tables)."""
    fig = go.Figure()
    for c, df in absorb.items():
        fig.add_trace(go.Scatter(x=df.parent_auroc, y=df.absorption_rate, mode="markers",
                                 name=f"SAE trained on {c}", text=df.parent,
                                 marker_color=CORPUS_COLORS.get(c)))
    fig.update_layout(xaxis_title="held-out AUROC of the parent latent",
                      yaxis_title="absorption rate", title="Absorption per HPO parent concept")
    return fig
