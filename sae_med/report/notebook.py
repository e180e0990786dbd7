"""Helpers the notebooks share, so that they stay thin: setup, tables and figures.

:func:`setup_notebook` is every notebook's first call (offline plotly, the config with its
run name); the tables read the tidy results and comparison tables of
:mod:`sae_med.measure.scoring`; the figures are plotly (training curves, metric vs L0,
cross-evaluation).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sae_med.config import Config
from sae_med.corpora.registry import corpus_info
from sae_med.layout import METRICS_NAME
from sae_med.report.claims import DCE_BAR_NATS, bar_dce, l0_trend, meets_quality_bar, oriented_gaps
from sae_med.report.parameters import notebook_config

CORPUS_COLORS = {"medical": "#c0392b", "broad": "#2471a3", "wordnet": "#7d3c98",
                 "clinical_qa": "#c0392b", "web": "#2471a3", "mixed_10": "#1e8449",
                 "mixed_50": "#117864", "go": "#b9770e", "foldoc": "#566573",
                 "austen": "#a04000"}
EVAL_DASH = {0: "solid", 1: "dash", 2: "dot", 3: "dashdot"}


def setup_notebook(config: str, overrides: Iterable[str] = (), run_name: str = "") -> Config:
    """A notebook's setup: figures that render offline (:func:`use_offline_plotly`) and its
    :func:`notebook_config`."""
    use_offline_plotly()
    return notebook_config(config, overrides, run_name)


def domain_pair(cfg: Config) -> tuple[str, str]:
    """(domain corpus, broad corpus) among ``cfg.train_corpora``: the first whose declared
    domain is not ``broad``, and the first that is; raises unless there is one of each."""

    domain = [c for c in cfg.train_corpora if corpus_info(c).domain != "broad"]
    broad = [c for c in cfg.train_corpora if corpus_info(c).domain == "broad"]
    if not domain or not broad:
        raise ValueError(f"config {cfg.name!r} trains on {list(cfg.train_corpora)}: the "
                         "comparison needs one domain (e.g. medical) and one broad corpus")
    return domain[0], broad[0]


def metric_value(results: Any, metric: str, train_corpus: str, eval_corpus: str,
                 l0_target: float) -> float:
    """One ``value`` from the tidy results table (NaN if absent)."""
    sel = results[(results.metric == metric) & (results.train_corpus == train_corpus)
                  & (results.eval_corpus == eval_corpus) & (results.l0_target == l0_target)]
    return float(sel.value.iloc[0]) if len(sel) else float("nan")


def with_interval(results: Any, metrics: Sequence[str], digits: int = 3) -> Any:
    """Wide table (SAE x eval corpus rows, one column per metric) of "value [low, high]";
    seed replicates get their own rows when the table has a ``replicate`` column."""
    df = results[results.metric.isin(metrics)].copy()

    def fmt(r: Any) -> str:
        if r.low != r.low or r.high != r.high:  # NaN: a point value
            return f"{r.value:.{digits}f}"
        return f"{r.value:.{digits}f} [{r.low:.{digits}f}, {r.high:.{digits}f}]"

    df["text"] = df.apply(fmt, axis=1)
    index = ["train_corpus", "l0_target", *(["replicate"] if "replicate" in df else []),
             "eval_corpus"]
    wide = df.pivot_table(index=index, columns="metric", values="text", aggfunc="first")
    return wide[[m for m in metrics if m in wide.columns]]


def _cell(value: float, low: float, high: float, digits: int) -> str:
    if value != value:
        return "n/a"
    if low != low or high != high:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def interval_cell(iv: Any, digits: int) -> str:
    """:func:`_cell` of an :class:`~sae_med.measure.bootstrap.Interval` (None ends: a point)."""
    return _cell(iv.value, *(float("nan") if v is None else v for v in (iv.low, iv.high)),
                 digits)


def note_frame(note: str) -> Any:
    """A one-cell table (column ``note``) standing where a table cannot be drawn: a glued
    table the results page quotes whether or not its run exists."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    return pd.DataFrame({"note": [note]})


DROPPED_COLUMN = "replicates left out"
"""The column :func:`gap_table` adds with ``dropped=True``."""


def gap_table(gaps: Any, metrics: Sequence[str], basis: str = "l0_target", digits: int = 3,
              by: Sequence[str] = (), dropped: bool = False) -> Any:
    """Wide table of gaps, "value [low, high]" with a ``*`` where the 95% interval
    excludes 0: rows (eval corpus, target L0, FVE or typical FVE as ``basis`` says, then
    the columns ``by``, e.g. a learning curve's ``tokens``), one column per metric; with
    ``dropped``, a last column :data:`DROPPED_COLUMN`: the most bootstrap replicates any
    gap of the row left out (its ``dropped`` of ``n_boot``, and the share)."""
    at = basis
    df = gaps[(gaps.basis == basis) & gaps.metric.isin(metrics)].copy()
    if df.empty:
        return df
    df["text"] = [_cell(r.value, r.low, r.high, digits) + (" *" if r.excludes_zero else "")
                  for r in df.itertuples()]
    index = ["eval_corpus", at, *by]
    wide = df.pivot_table(index=index, columns="metric", values="text", aggfunc="first")
    wide = wide[[m for m in metrics if m in wide.columns]]
    return with_dropped(wide, df, index) if dropped else wide


def with_dropped(wide: Any, rows: Any, index: Sequence[str]) -> Any:
    """``wide`` (a table pivoted from ``rows`` on ``index``) with :data:`DROPPED_COLUMN`:
    per row, the most bootstrap replicates any of its gaps left out (``dropped`` of
    ``n_boot``, and the share)."""
    worst = rows.sort_values("dropped").groupby(list(index)).last()
    return wide.assign(**{DROPPED_COLUMN: [
        f"{int(r.dropped):,} of {int(r.n_boot):,} ({r.dropped / max(r.n_boot, 1):.1%})"
        for r in worst.loc[wide.index].itertuples()]})


def gap_table_by_model(runs: Sequence[Any], first: str, second: str, metrics: Sequence[str],
                       basis: str = "l0_target") -> Any:
    """:func:`gap_table` of each :class:`~sae_med.report.claims.ModelRun` (``first`` minus
    ``second`` SAE on ``first`` text), stacked under a ``model`` index level."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    tables = {r.label: gap_table(oriented_gaps(r.comparisons.gaps, first, second), metrics,
                                 basis) for r in runs}
    tables = {m: t.loc[[first]] for m, t in tables.items()
              if not t.empty and first in t.index.get_level_values(0)}
    if not tables:
        return note_frame("no comparison in this run (e.g. no common FVE range)")
    return pd.concat(tables, names=["model"])


def family_table(families: Any, metrics: Sequence[str], digits: int = 3,
                 by: Sequence[str] = ()) -> Any:
    """Across-seed means at each target L0: "mean [low, high]" (hierarchical interval) and
    the replicates' own values, one row per (eval corpus, train corpus, target L0, then
    the columns ``by``)."""
    df = families[(families.basis == "l0_target") & families.metric.isin(metrics)].copy()
    if df.empty:
        return df
    df["text"] = [_cell(r.value, r.low, r.high, digits) + "; seeds " + ", ".join(
        "n/a" if v is None else f"{v:.{digits}f}" for v in r.seed_values)
        for r in df.itertuples()]
    wide = df.pivot_table(index=["eval_corpus", "train_corpus", "l0_target", *by],
                          columns="metric", values="text", aggfunc="first")
    return wide[[m for m in metrics if m in wide.columns]]


def step_table(steps: Any, metrics: Sequence[str], digits: int = 3) -> Any:
    """Wide table of each family's steps between consecutive target L0s, "value [low,
    high]" with a ``*`` where the 95% interval excludes 0: rows (eval corpus, train
    corpus, "from → to"), one column per metric."""
    if steps.empty:
        return steps
    df = steps[steps.metric.isin(metrics)].sort_values("from_target").copy()
    df["step"] = [f"{a:g} → {b:g}" for a, b in zip(df.from_target, df.to_target, strict=True)]
    df["text"] = [_cell(r.value, r.low, r.high, digits) + (" *" if r.excludes_zero else "")
                  for r in df.itertuples()]
    wide = df.pivot_table(index=["eval_corpus", "train_corpus", "step"], columns="metric",
                          values="text", aggfunc="first", sort=False)
    return wide[[m for m in metrics if m in wide.columns]]


def dce_bar_sentence(families: Any, steps: Any, domain: str, bar: float | None = None,
                     digits: int = 3) -> str:
    """One sentence on the ``domain`` SAEs' ΔCE on held-out ``domain`` text at the largest
    target L0 (:func:`~sae_med.report.claims.bar_dce`) against ``bar`` (default
    :data:`~sae_med.report.claims.DCE_BAR_NATS`), and its trend over the target L0s
    (:func:`~sae_med.report.claims.l0_trend`)."""

    bar = DCE_BAR_NATS if bar is None else bar
    at = bar_dce(families, domain)
    if at is None:
        return f"No ΔCE of the {domain} SAEs on {domain} text in this run."
    iv = at.dce
    if iv.high is not None and iv.high <= bar:
        where = "at or below it, with its whole 95% interval"
    elif iv.low is not None and iv.low > bar:
        where = "above it, with its whole 95% interval"
    else:
        where = f"{'at or below' if iv.value <= bar else 'above'} it, but its 95% interval " \
                "reaches across it"
    judged = "" if meets_quality_bar(families, domain) else (
        " So this run's claims are not judged: its SAEs are below the quality bar.")
    return (f"At the largest target L0 ({at.l0_target:g}) the {domain} SAEs' ΔCE "
            f"on held-out {domain} text is {interval_cell(iv, digits)} nats per token "
            f"against the quality bar of {bar:g} nat: {where}.{judged} Its trend over the "
            f"target L0s (paired steps): “{l0_trend(steps, domain, domain, 'delta_ce')}”.")


def gap_sentence(ivs: Sequence[Any], what: str, where: str, digits: int = 3,
                 none: str = "no comparison in this run (e.g. no common FVE range)") -> str:
    """One sentence stating the gaps (or steps) and how many of their intervals exclude 0;
    ``none`` says why there are none."""
    subject = f"{what} {where}".strip()
    if not ivs:
        return f"{subject}: {none}."
    cells = "; ".join(interval_cell(iv, digits) for iv in ivs)
    n = sum(iv.excludes_zero for iv in ivs)
    return (f"{subject}: {cells} (95% intervals); the interval excludes 0 in {n} of "
            f"{len(ivs)} comparisons.")


PLOTLYJS_OUTPUT = "sae_med_plotlyjs"
"""Output metadata key marking a notebook's copy of plotly.js (:func:`use_offline_plotly`):
the book drops these outputs, its site serving one copy to every page
(:mod:`sae_med.report.sphinx_assets`)."""


def use_offline_plotly() -> None:
    """Render plotly figures as HTML that works with no network.

    plotly's ``notebook`` renderer adds a MathJax ``<script src>`` from a CDN to every
    figure, which fails offline; this one embeds plotly.js once per notebook (an output
    marked :data:`PLOTLYJS_OUTPUT` before the first figure, so the executed ``.ipynb``
    draws on its own) and nothing remote; figures carry no plotly.js of their own.
    """
    # deferred: plotly is heavy to import; only the figures need it
    import plotly.io as pio

    # deferred: plotly is heavy to import; only the figures need it
    from plotly.io.base_renderers import HtmlRenderer

    class OfflineRenderer(HtmlRenderer):
        def __init__(self) -> None:
            super().__init__(connected=False, full_html=False, global_init=False,
                             include_plotlyjs=False)

        def activate(self) -> None:  # plotly calls it before the first figure is shown
            display_plotlyjs()

        def to_mimebundle(self, fig_dict: dict) -> dict[str, str]:
            html = pio.to_html(fig_dict, include_plotlyjs=False, include_mathjax=False,
                               full_html=False, default_width="100%", default_height=450,
                               validate=False, config={"displaylogo": False})
            return {"text/html": html}

    pio.renderers["sae_med_offline"] = OfflineRenderer()
    pio.renderers.default = "sae_med_offline"


def display_plotlyjs() -> None:
    """Show plotly.js inline as an output marked :data:`PLOTLYJS_OUTPUT` (in a kernel)."""
    # deferred: IPython exists only in a notebook kernel
    from IPython import get_ipython

    # deferred: IPython exists only in a notebook kernel
    from IPython.display import display

    # deferred: plotly is heavy to import; only the figures need it
    from plotly.offline import get_plotlyjs

    if get_ipython() is not None:
        display({"text/html": f"<script>{get_plotlyjs()}</script>"}, raw=True,
                metadata={PLOTLYJS_OUTPUT: True})


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.jsonl`` (one JSON object per line)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def training_curves(results: Mapping[str, Sequence[Any]]) -> Any:
    """Tidy DataFrame of every SAE's training log: one row per logged step, with columns
    ``train_corpus``, ``replicate``, ``l0_target`` and the ``metrics.jsonl`` fields."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    frames = []
    for corpus, runs in results.items():
        for r in runs:
            df = pd.DataFrame(read_metrics(Path(r.path) / METRICS_NAME))
            df.insert(0, "l0_target", r.l0_target)
            df.insert(0, "replicate", r.replicate)
            df.insert(0, "train_corpus", corpus)
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


def error_bars(df: Any) -> dict[str, Any]:
    """Plotly ``error_y`` for rows with ``value``/``low``/``high`` (none where missing)."""
    return {"type": "data", "symmetric": False,
            "array": (df.high - df.value).clip(lower=0).fillna(0),
            "arrayminus": (df.value - df.low).clip(lower=0).fillna(0)}


def _line_style(train_corpus: str, eval_index: int = 0) -> dict[str, Any]:
    return {"color": CORPUS_COLORS.get(train_corpus), "dash": EVAL_DASH.get(eval_index % 4)}


def metric_vs_l0(results: Any, metric: str, y_title: str, title: str = "",
                 eval_corpora: Sequence[str] | None = None) -> Any:
    """Figure: ``metric`` against the measured L0, one line per (train, eval) corpus pair,
    with the 95% interval (``low``/``high``) as error bars.

    ``results`` is the tidy table of :func:`sae_med.measure.results.load_results`.
    """
    # deferred: plotly is heavy to import; only the figures need it
    import plotly.graph_objects as go

    df = results
    evals = list(eval_corpora or sorted(df.eval_corpus.unique()))
    fig = go.Figure()
    for train in sorted(df.train_corpus.unique()):
        for j, ev in enumerate(evals):
            sub = df[(df.train_corpus == train) & (df.eval_corpus == ev)]
            y = sub[sub.metric == metric].set_index("l0_target").sort_index()
            x = sub[sub.metric == "l0"].set_index("l0_target").reindex(y.index)
            if y.empty:
                continue
            fig.add_trace(go.Scatter(
                x=x.value, y=y.value, mode="lines+markers", line=_line_style(train, j),
                name=f"trained on {train}, evaluated on {ev}",
                error_y=error_bars(y),
                customdata=y.index.values,
                hovertemplate="target L0 %{customdata}<br>L0 %{x:.1f}<br>%{y:.4f}"))
    fig.update_layout(title=title or f"{metric} vs L0", xaxis_title="L0 (active latents per token)",
                      yaxis_title=y_title, legend={"orientation": "h", "y": -0.25})
    fig.update_xaxes(type="log")
    return fig


def cross_eval_figure(results: Any, metric: str, y_title: str,
                      l0_targets: Sequence[float] | None = None) -> Any:
    """The train x eval cross-evaluation: grouped bars of ``metric`` (SAE trained on X,
    bars per eval corpus) with 95% intervals, one panel per target L0."""
    # deferred: plotly is heavy to import; only the figures need it
    import plotly.graph_objects as go

    # deferred: plotly is heavy to import; only the figures need it
    from plotly.subplots import make_subplots

    df = results[results.metric == metric]
    targets = list(l0_targets or sorted(df.l0_target.unique()))
    fig = make_subplots(rows=1, cols=len(targets), shared_yaxes=True,
                        subplot_titles=[f"target L0 {t:g}" for t in targets])
    for i, t in enumerate(targets, start=1):
        sub_t = df[df.l0_target == t]
        for train in sorted(sub_t.train_corpus.unique()):
            sub = sub_t[sub_t.train_corpus == train].sort_values("eval_corpus")
            fig.add_trace(go.Bar(
                x=[f"on {e}" for e in sub.eval_corpus], y=sub.value,
                name=f"SAE trained on {train}", legendgroup=train, showlegend=i == 1,
                marker_color=CORPUS_COLORS.get(train),
                error_y=error_bars(sub)),
                row=1, col=i)
        fig.update_xaxes(title_text="evaluation corpus", row=1, col=i)
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_layout(barmode="group",
                      title=f"{metric}: SAE trained on (colour) x evaluated on (axis)",
                      legend={"orientation": "h", "y": -0.25})
    return fig


MODEL_DASH = ("solid", "dash", "dot", "dashdot")


def gap_by_model_figure(gaps: Any, metric: str, eval_corpus: str, y_title: str) -> Any:
    """Figure: one model per line, the paired gap of ``metric`` on ``eval_corpus`` against
    the target L0 (log), with its 95% interval; ``gaps`` is
    :func:`sae_med.report.claims.gaps_by_model`'s frame."""
    # deferred: plotly is heavy to import; only the figures need it
    import plotly.graph_objects as go

    df = gaps[(gaps.metric == metric) & (gaps.eval_corpus == eval_corpus)
              & (gaps.basis == "l0_target")]
    fig = go.Figure()
    for i, (label, sub) in enumerate(df.groupby("model", sort=False)):
        sub = sub.sort_values("l0_target")
        fig.add_trace(go.Scatter(
            x=sub.l0_target, y=sub.value, mode="lines+markers", name=label,
            line={"dash": MODEL_DASH[i % len(MODEL_DASH)]},
            error_y=error_bars(sub)))
    first = df.train_corpus.iloc[0] if len(df) else "domain"
    versus = df.versus.iloc[0] if len(df) else "broad"
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_layout(title=f"{y_title}: {first} minus {versus} SAE on {eval_corpus} text, "
                            "per model", xaxis_title="target L0", yaxis_title=y_title,
                      legend={"orientation": "h", "y": -0.25})
    fig.update_xaxes(type="log")
    return fig


def curve_figure(families: Any, dead: Any, eval_corpus: str, metrics: Mapping[str, str]
                 ) -> Any:
    """The learning curve: each training corpus's across-seed mean of each of ``metrics``
    (``{metric: axis title}``, 95% intervals) on ``eval_corpus`` against training tokens
    (log), one panel per metric, and a last panel with the held-out dead fraction (``dead``:
    :func:`sae_med.report.learning_curve.seed_summary`; mean over seeds, bars to min/max)."""
    # deferred: plotly is heavy to import; only the figures need it
    import plotly.graph_objects as go

    # deferred: plotly is heavy to import; only the figures need it
    from plotly.subplots import make_subplots

    titles = [*metrics.values(), "dead latents on held-out text"]
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    fam = families[(families.eval_corpus == eval_corpus) & (families.basis == "l0_target")]
    for i, metric in enumerate(metrics, start=1):
        for train, sub in fam[fam.metric == metric].groupby("train_corpus", sort=False):
            sub = sub.sort_values("tokens")
            fig.add_trace(go.Scatter(x=sub.tokens, y=sub.value, mode="lines+markers",
                                     name=f"SAE trained on {train}", legendgroup=train,
                                     showlegend=i == 1, line=_line_style(train),
                                     error_y=error_bars(sub)), row=1, col=i)
    dead = dead[dead.eval_corpus == eval_corpus]
    for train, sub in dead.groupby("train_corpus", sort=False):
        sub = sub.sort_values("tokens")
        fig.add_trace(go.Scatter(
            x=sub.tokens, y=sub["mean"], mode="lines+markers", legendgroup=train,
            showlegend=False, line=_line_style(train),
            error_y=error_bars(sub.assign(value=sub["mean"], low=sub["min"],
                                          high=sub["max"]))), row=1, col=len(titles))
    fig.update_xaxes(type="log", title_text="training tokens")
    fig.update_layout(title=f"Each side's SAEs on held-out {eval_corpus} text as they train",
                      legend={"orientation": "h", "y": -0.3})
    return fig


def curve_gap_figure(gaps: Any, domain: str, metrics: Mapping[str, str]) -> Any:
    """The paired gaps (``gaps``: oriented, e.g. :func:`sae_med.report.claims.oriented_gaps`) of
    ``metrics`` (``{metric: axis title}``) on ``domain`` text against training tokens
    (log), one panel per metric, with their 95% intervals and the zero line."""
    # deferred: plotly is heavy to import; only the figures need it
    import plotly.graph_objects as go

    # deferred: plotly is heavy to import; only the figures need it
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=list(metrics.values()))
    sel = gaps[(gaps.eval_corpus == domain) & (gaps.basis == "l0_target")]
    for i, metric in enumerate(metrics, start=1):
        sub = sel[sel.metric == metric].sort_values("tokens")
        fig.add_trace(go.Scatter(x=sub.tokens, y=sub.value, mode="lines+markers",
                                 showlegend=False, line=_line_style(domain),
                                 error_y=error_bars(sub)), row=1, col=i)
        fig.add_hline(y=0, line={"color": "grey", "width": 1}, row=1, col=i)
    versus = sel.versus.iloc[0] if len(sel) else "broad"
    fig.update_xaxes(type="log", title_text="training tokens")
    fig.update_layout(title=f"{domain} minus {versus} SAE on {domain} text, by training "
                            "budget (paired over documents and seeds)")
    return fig
