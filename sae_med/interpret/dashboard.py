"""Latent dashboards: what one latent does, as HTML cards and an interactive plotly figure.

Everything comes from :mod:`sae_med.interpret.features` (the activation cache's stored tokens, no
model forward), so a dashboard works in a notebook, in the rendered book (no kernel:
the cards are plain HTML with ``<details>`` to fold them, the figure is plotly with a
dropdown) and as one self-contained HTML file (:func:`write_dashboard`).

- :func:`latent_summary` gathers one latent's firing density, activation histogram,
  top-activating windows, quantile samples and logit-lens tokens.
- :func:`cards_html` renders summaries as cards, each token of a window shaded by the
  latent's activation on it (hover for the value), the peak token outlined.
- :func:`dashboard_figure` plots activation histograms and logit-lens bars with a
  dropdown to switch between latents.
- :func:`phrase_activations` + :func:`~sae_med.interpret.features.search_latents` find the latents
  most active on a phrase.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sae_med.artifacts import write_text_atomic
from sae_med.cache.activations import ActivationCache
from sae_med.interpret.features import (
    LatentActs,
    LogitLens,
    Window,
    logit_lens,
    quantile_windows,
    top_windows,
)
from sae_med.lm.model import LanguageModel
from sae_med.sae.base import LinearSAE


@dataclass(frozen=True)
class LatentSummary:
    """One latent, ready to render."""

    latent: int
    label: str
    """Free text shown in the card title (e.g. the SAE and a concept or explanation)."""
    density: float
    """Fraction of the cache's tokens on which the latent fires."""
    max_activation: float
    hist_edges: list[float]
    hist_counts: list[int]
    """Histogram of the non-zero activations."""
    top: list[Window]
    quantiles: dict[float, list[Window]]
    lens: LogitLens


def latent_summary(sae: LinearSAE, acts: LatentActs, cache: ActivationCache, tokenizer: Any,
                   unembed: Float[Tensor, "d_model d_vocab"], latent: int, label: str = "",
                   k_windows: int = 6, n_bins: int = 30) -> LatentSummary:
    """Everything a card and the figure show for ``latent`` (``acts`` from
    :func:`~sae_med.interpret.features.encode_cache` over ``cache``)."""
    if not 0 <= latent < acts.d_sae:
        raise IndexError(f"latent {latent} out of range: this SAE has {acts.d_sae} latents")
    _, values = acts.of_latent(latent)
    v = values.double().numpy()
    counts, edges = np.histogram(v, bins=n_bins) if len(v) else (np.zeros(0, int), [0.0])
    return LatentSummary(
        latent=latent, label=label, density=len(v) / max(acts.n_rows, 1),
        max_activation=float(v.max()) if len(v) else 0.0,
        hist_edges=[float(e) for e in edges], hist_counts=[int(c) for c in counts],
        top=top_windows(acts, cache, latent, k=k_windows),
        quantiles=quantile_windows(acts, cache, latent, per=1),
        lens=logit_lens(sae, unembed, tokenizer, latent, k=8))


def window_html(window: Window, tokenizer: Any, scale: float | None = None) -> str:
    """A window as HTML: each token's background is orange with opacity ∝ the latent's
    activation on it (``scale``: the activation drawn fully opaque; default the window's
    peak), its value in the hover text, the peak token outlined."""
    top = scale or max(max(window.values, default=0.0), 1e-12)
    out = []
    for i, (tok, val) in enumerate(zip(window.tokens, window.values, strict=True)):
        text = html.escape(tokenizer.decode([tok])).replace("\n", "⏎")
        alpha = min(max(val / top, 0.0), 1.0)
        style = f"background: rgba(255,140,0,{alpha:.2f});"
        if i == window.peak:
            style += " outline: 1px solid #333;"
        out.append(f'<span style="{style}" title="{val:.3g}">{text}</span>')
    return "".join(out)


def _tokens(tokens: Sequence[str], values: Sequence[float]) -> str:
    return ", ".join(f"<code>{html.escape(repr(t))}</code> {v:+.2f}"
                     for t, v in zip(tokens, values, strict=True))


def card_html(s: LatentSummary, tokenizer: Any, open_: bool = False) -> str:
    """One latent's card (a ``<details>`` element; ``open_`` unfolds it)."""
    title = (f"latent {s.latent}{' — ' + html.escape(s.label) if s.label else ''} · fires on "
             f"{100 * s.density:.2f}% of tokens · max {s.max_activation:.3g}")
    top = "".join(f"<li>{window_html(w, tokenizer, s.max_activation)}</li>" for w in s.top)
    quant = "".join(f"<li>q{q:.1f}: {window_html(w, tokenizer, s.max_activation)}</li>"
                    for q, ws in s.quantiles.items() for w in ws)
    return (f'<details class="sae-med-latent"{" open" if open_ else ""}>'
            f"<summary><b>{title}</b></summary>"
            f"<p>logit lens, promoted: {_tokens(s.lens.top_tokens, s.lens.top_values)}<br>"
            f"suppressed: {_tokens(s.lens.bottom_tokens, s.lens.bottom_values)}</p>"
            f"<p>top activations (peak outlined; hover a token for its activation):</p>"
            f"<ol>{top or '<li>never fires on this cache</li>'}</ol>"
            f"<p>samples across the activation quantiles:</p><ul>{quant}</ul></details>")


def cards_html(summaries: Sequence[LatentSummary], tokenizer: Any, open_first: bool = True
               ) -> str:
    """All cards, the first unfolded; display with ``IPython.display.HTML``."""
    return "\n".join(card_html(s, tokenizer, open_=open_first and i == 0)
                     for i, s in enumerate(summaries))


def dashboard_figure(summaries: Sequence[LatentSummary], title: str = "Latent dashboard"
                     ) -> Any:
    """Activation histogram and logit-lens bars of one latent at a time, with a dropdown
    to switch latents (works offline in the rendered book)."""
    # deferred: plotly is heavy to import; only the figures need it
    import plotly.graph_objects as go

    # deferred: plotly is heavy to import; only the figures need it
    from plotly.subplots import make_subplots

    if not summaries:
        raise ValueError("no latents to show")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55],
                        subplot_titles=("non-zero activations", "logit lens"))
    per = 3
    for i, s in enumerate(summaries):
        centres = (np.asarray(s.hist_edges[:-1]) + np.asarray(s.hist_edges[1:])) / 2 \
            if s.hist_counts else []
        visible = i == 0
        fig.add_trace(go.Bar(x=list(centres), y=s.hist_counts, name="tokens",
                             marker_color="#ff8c00", visible=visible), 1, 1)
        fig.add_trace(go.Bar(y=[repr(t) for t in s.lens.top_tokens][::-1],
                             x=s.lens.top_values[::-1], orientation="h", name="promoted",
                             marker_color="#2a9d8f", visible=visible), 1, 2)
        fig.add_trace(go.Bar(y=[repr(t) for t in s.lens.bottom_tokens][::-1],
                             x=s.lens.bottom_values[::-1], orientation="h", name="suppressed",
                             marker_color="#e76f51", visible=visible), 1, 2)
    buttons = []
    for i, s in enumerate(summaries):
        vis = [False] * (per * len(summaries))
        vis[per * i:per * (i + 1)] = [True] * per
        label = f"latent {s.latent}" + (f" ({s.label})" if s.label else "")
        buttons.append({"label": label[:60], "method": "update",
                        "args": [{"visible": vis},
                                 {"title": f"{title}: {label} · density "
                                           f"{100 * s.density:.2f}%"}]})
    fig.update_layout(title=f"{title}: {buttons[0]['label']}", showlegend=False,
                      updatemenus=[{"buttons": buttons, "x": 0, "xanchor": "left", "y": 1.25,
                                    "yanchor": "top"}], margin={"t": 110})
    fig.update_xaxes(title_text="activation", row=1, col=1)
    fig.update_yaxes(title_text="tokens", row=1, col=1)
    fig.update_xaxes(title_text="decoder row · unembedding", row=1, col=2)
    return fig


def write_dashboard(path: str | Path, summaries: Sequence[LatentSummary], tokenizer: Any,
                    title: str = "sae-med latent dashboard") -> Path:
    """One self-contained HTML file (plotly inlined: opens offline) with the figure and
    the cards; written atomically."""
    fig = dashboard_figure(summaries, title)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title></head><body><h1>{html.escape(title)}</h1>"
            f"{fig.to_html(full_html=False, include_plotlyjs=True)}"
            f"{cards_html(summaries, tokenizer)}</body></html>")
    path = Path(path)
    write_text_atomic(path, page)
    return path


@torch.no_grad()
def phrase_activations(model: LanguageModel, layer: int, text: str
                       ) -> Float[Tensor, "pos d_model"]:
    """Residual-stream activations after block ``layer`` for ``text`` (BOS and other
    special tokens dropped, as in the cache), for
    :func:`~sae_med.interpret.features.search_latents`."""
    tokens, mask, keep = model.tokenize_text(text).to(model.device)
    if not keep.any():
        raise ValueError(f"{text!r} has no ordinary tokens")
    return model.resid(tokens, mask, layer)[0][keep[0]].float().cpu()
