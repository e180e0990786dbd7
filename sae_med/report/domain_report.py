"""Domain or home field? The tables, heatmap and sentences that report it.

Every SAE wins on its own text; the question is whether the domain SAE wins by more than
home field explains. This module reads a run's comparison tables
(:func:`sae_med.measure.results.load_comparisons`) and gives each side's *home advantage* (own
SAE minus another on own text), the train × eval matrix of family means, the domain SAE
against SAEs that saw the domain in a mix, the difference-in-differences and placebo
contrasts with their verdicts, and one verdict sentence computed from them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sae_med.config import config_from_dict, load_config
from sae_med.corpora.registry import UnknownCorpusError, corpus_info, mix_parts
from sae_med.layout import METRICS_NAME, RESULTS_NAME
from sae_med.measure.bootstrap import Interval
from sae_med.measure.results import comparison_tables, read_results
from sae_med.report.claims import (
    CLAIMS,
    DID_CLAIMS,
    HOME_EXCESS_CLAIMS,
    SENSITIVITY_CHECKS,
    ModelRun,
    claim,
    claim_verdict,
    contrast_verdict,
    gap_intervals,
    model_label,
    oriented_contrasts,
    oriented_gaps,
    placebo_verdict,
    row_intervals,
    verdicts_frame,
)
from sae_med.report.notebook import (
    CORPUS_COLORS,
    EVAL_DASH,
    domain_pair,
    error_bars,
    gap_table,
    interval_cell,
    note_frame,
    with_dropped,
)

if TYPE_CHECKING:
    from sae_med.config import Config
    from sae_med.measure.results import ComparisonTables

HOME_METRICS = ("fve", "fve_typical", "delta_ce", "loss_recovered")
"""Metrics whose home advantage the fidelity tables show (ΔCE: negative favours home)."""
MATRIX_METRICS = {"delta_ce": "ΔCE (nats per token, lower is better)",
                  "fve_typical": "typical-token FVE (higher is better)"}
"""The train × eval matrix's metrics and their axis titles."""
DOMAINS_COMMAND = "sae-med run configs/domains.yaml"
"""What produces the domains run (``sae-med experiment configs/domains.yaml`` skips the
notebooks and book)."""
MIXED_50_CONFIG = "configs/mixed_50.yaml"
"""The default with the other declared mix (medical at 50% of its tokens) instead of
``mixed_10``: a run of its own, read beside the default's."""
MIXED_50_COMMAND = f"sae-med run {MIXED_50_CONFIG}"


class MixedCorpus(NamedTuple):
    """A training corpus that is broad text with the domain mixed in."""

    name: str
    share: float
    """The domain's share of its tokens (0.1: 10%)."""


def home_sides(cfg: Config) -> list[str]:
    """The training corpora that are also eval corpora, in training order: the sides that
    have a home text."""
    return [c for c in cfg.train_corpora if c in cfg.eval_corpora]


def mixed_corpora(cfg: Config, domain: str) -> list[MixedCorpus]:
    """The training corpora of ``cfg`` that mix ``domain`` into other text, with the
    domain's share (:class:`~sae_med.corpora.registry.CorpusInfo` weights of a mix)."""

    out = []
    for c in cfg.train_corpora:
        try:
            info = corpus_info(c)
        except UnknownCorpusError:  # a config-declared corpus: never a declared mix
            continue
        if c != domain and info.weights and domain in info.sources:
            out.append(MixedCorpus(c, info.weights[info.sources.index(domain)]))
    return out


def home_advantages(gaps: Any, sides: Sequence[str], others: Sequence[str]) -> Any:
    """Each side's home advantage over each of ``others``: the ``side`` family minus the
    ``other`` family on held-out ``side`` text, every metric and basis (rows of
    :func:`~sae_med.report.claims.oriented_gaps`: ``train_corpus`` the side, ``versus`` the
    other, ``eval_corpus`` the side)."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    frames = [g[g.eval_corpus == side] for side in sides for other in others if other != side
              for g in [oriented_gaps(gaps, side, other)]]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else gaps.iloc[0:0]


def home_advantage_table(gaps: Any, sides: Sequence[str], others: Sequence[str],
                         metrics: Sequence[str] = HOME_METRICS, basis: str = "l0_target",
                         digits: int = 3, dropped: bool = False) -> Any:
    """:func:`home_advantages` as text, "value [low, high]" with ``*`` where the 95%
    interval excludes 0: rows (home SAE on its own text, versus, target L0 or FVE), one
    column per metric; with ``dropped``, the share of bootstrap replicates each row left
    out (:func:`~sae_med.report.notebook.gap_table`)."""
    rows = home_advantages(gaps, sides, others)
    if rows.empty:
        return rows
    table = gap_table(rows, metrics, basis, digits, by=["versus"], dropped=dropped)
    if table.empty:  # e.g. no matched-FVE gaps: the FVE ranges do not overlap
        return table
    table = table.reorder_levels([0, 2, 1]).sort_index(level=[0, 1], sort_remaining=True)
    table.index = table.index.set_names(["home SAE, on its own text", "versus", basis])
    return table


def family_matrix_table(families: Any, metrics: Sequence[str], train_order: Sequence[str],
                        eval_order: Sequence[str], basis: str = "l0_target",
                        digits: int = 3) -> Any:
    """Every family on every eval corpus: "mean [low, high]" (across-seed mean and its
    hierarchical 95% interval), rows (metric, target L0, SAE trained on), one column per
    eval corpus, corpora in the orders given."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    df = families[(families.basis == basis) & families.metric.isin(metrics)].copy()
    if df.empty:
        return df
    df["text"] = [interval_cell(iv, digits) for iv in row_intervals(df)]
    wide = df.pivot_table(index=["metric", basis, "train_corpus"], columns="eval_corpus",
                          values="text", aggfunc="first")
    order = pd.MultiIndex.from_tuples(
        [(m, t, c) for m in metrics for t in sorted(df[basis].unique()) for c in train_order
         if (m, t, c) in wide.index], names=["metric", basis, "SAE trained on"])
    return wide.reindex(order)[[e for e in eval_order if e in wide.columns]]


LOWER_IS_BETTER = frozenset({"delta_ce", "dark_matter.r2_error_mean", "dark_matter.fvu_linear"})
"""Metrics where a smaller value is the better SAE (the heatmap's colours turn round)."""


def matrix_heatmap(rows: Any, metric: str, train_order: Sequence[str],
                   eval_order: Sequence[str], title: str = "", digits: int = 3) -> Any:
    """The train × eval matrix of one metric as a plotly heatmap, one panel per target L0,
    each cell annotated "value [low, high]"; home cells (SAE on its own text) outlined.
    ``rows``: family rows (the SAEs' means) or :func:`home_matrix_rows` (each text's own
    SAE minus the row's). Colours run from worse to better whichever way the metric
    points."""
    # deferred: plotly is heavy to import; only the figures need it
    import plotly.graph_objects as go

    # deferred: plotly is heavy to import; only the figures need it
    from plotly.subplots import make_subplots

    sel = rows[(rows.basis == "l0_target") & (rows.metric == metric)]
    targets = sorted(sel.l0_target.unique())
    trains = [c for c in train_order if c in set(sel.train_corpus)]
    evals = [e for e in eval_order if e in set(sel.eval_corpus)]
    fig = make_subplots(rows=1, cols=max(len(targets), 1), shared_yaxes=True,
                        horizontal_spacing=0.04,
                        subplot_titles=[f"target L0 {t:g}" for t in targets])
    for i, t in enumerate(targets, start=1):
        at = sel[sel.l0_target == t].set_index(["train_corpus", "eval_corpus"])
        z = [[at.value.get((r, e)) for e in evals] for r in trains]
        text = [[interval_cell(row_intervals(at.loc[[(r, e)]])[0], digits).replace(" [", "<br>[")
                 if (r, e) in at.index else "" for e in evals] for r in trains]
        fig.add_trace(go.Heatmap(
            z=z, x=[f"on {e}" for e in evals], y=[f"{r} SAE" for r in trains], text=text,
            texttemplate="%{text}", coloraxis="coloraxis",
            hovertemplate="%{y} %{x}<br>%{text}<extra></extra>"), row=1, col=i)
        for k, r in enumerate(trains):  # outline the home cells
            if r in evals:
                j = evals.index(r)
                fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=k - 0.5, y1=k + 0.5,
                              line={"color": "black", "width": 2}, row=1, col=i)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title=title or f"{metric}: SAE trained on (row) × evaluated on (column), family means "
                       "[95% interval]",
        coloraxis={"colorscale": "Viridis", "reversescale": metric in LOWER_IS_BETTER,
                   "colorbar": {"title": metric}},
        height=120 + 70 * len(trains))
    return fig


def home_matrix_rows(gaps: Any, sides: Sequence[str], others: Sequence[str]) -> Any:
    """:func:`home_advantages` laid out for :func:`matrix_heatmap`: the cell (row SAE,
    text) holds the text's own SAE minus the row's SAE on that text, so a column shows how
    far every other SAE falls short at that corpus's home."""
    home = home_advantages(gaps, sides, others)
    return home.assign(train_corpus=home.versus)


def matrix_figures(families: Any, train_order: Sequence[str], eval_order: Sequence[str]
                   ) -> list[Any]:
    """The train × eval matrix of family means, one :func:`matrix_heatmap` per metric of
    :data:`MATRIX_METRICS`."""
    return [matrix_heatmap(families, metric, train_order, eval_order,
                           title=f"{title}: trained on (row) × evaluated on (column)")
            for metric, title in MATRIX_METRICS.items()]


def home_matrix_figures(gaps: Any, sides: Sequence[str], train_order: Sequence[str],
                        eval_order: Sequence[str]) -> list[Any]:
    """The train × eval matrix as home advantages (:func:`home_matrix_rows`), one
    :func:`matrix_heatmap` per metric of :data:`MATRIX_METRICS`."""
    cells = home_matrix_rows(gaps, sides, train_order)
    return [matrix_heatmap(cells, metric, train_order, eval_order,
                           title=f"Home advantage in {title.split(' (')[0]}: the column's "
                           "own SAE minus the row's, on the column's text")
            for metric, title in MATRIX_METRICS.items()]


class CaptionedTable(NamedTuple):
    """A table and the line printed above it."""

    caption: str
    table: Any


MIXED_GAP_METRICS = {"l0_target": ("fve", "fve_typical", "delta_ce", "loss_recovered"),
                     "fve": ("l0", "delta_ce", "loss_recovered"),
                     "fve_typical": ("fve", "l0", "delta_ce", "loss_recovered")}
"""The domain SAE minus a mixed SAE on domain text: the metrics shown at each basis (at
matched FVE, L0 is what differs; at matched typical FVE, the pooled FVE left is what
massive-activation tokens carry). A results file without a basis gets an empty table."""
MIX_COST_METRICS = ("fve", "fve_typical", "delta_ce")
"""The mixed SAE minus the broad SAE on broad text: the metrics shown."""


def mixed_gap_tables(gaps: Any, domain: str, mixed: Sequence[MixedCorpus]
                     ) -> list[CaptionedTable]:
    """The ``domain`` SAE minus each mixed SAE on ``domain`` text, at the same target L0, at
    matched FVE and at matched typical FVE (:data:`MIXED_GAP_METRICS`), one
    :func:`pair_table` each; the matched ones with the replicates each row left out."""
    return [CaptionedTable(f"{domain} minus {m.name} on {domain} text, basis {basis}",
                           pair_table(gaps, domain, m.name, list(metrics), basis, domain,
                                      dropped=basis != "l0_target"))
            for m in mixed for basis, metrics in MIXED_GAP_METRICS.items()]


def mix_cost_tables(gaps: Any, broad: str, mixed: Sequence[MixedCorpus]) -> list[Any]:
    """What each mix gives up on broad text: the mixed SAE minus the ``broad`` SAE on
    ``broad`` text (:data:`MIX_COST_METRICS`), one :func:`pair_table` per mix."""
    return [pair_table(gaps, m.name, broad, list(MIX_COST_METRICS), eval_corpus=broad)
            for m in mixed]


def pair_table(gaps: Any, first: str, second: str, metrics: Sequence[str],
               basis: str = "l0_target", eval_corpus: str | None = None,
               digits: int = 3, dropped: bool = False) -> Any:
    """``first`` minus ``second`` family (paired gaps, :func:`~sae_med.report.notebook.gap_table`
    text, with its ``dropped`` column if asked) on every eval corpus, or on ``eval_corpus``
    alone."""
    rows = oriented_gaps(gaps, first, second)
    if eval_corpus is not None:
        rows = rows[rows.eval_corpus == eval_corpus]
    return gap_table(rows, metrics, basis, digits, dropped=dropped)


def contrast_table(contrasts: Any, kind: str, metrics: Sequence[str],
                   basis: str = "l0_target", digits: int = 3, dropped: bool = False) -> Any:
    """The ``kind`` contrasts (``did`` or ``home_excess``) as text, "value [low, high]"
    with ``*`` where the 95% interval excludes 0: rows (first, second, target L0 or the
    two texts' matched FVEs), one column per metric; with ``dropped``, a last column
    :data:`~sae_med.report.notebook.DROPPED_COLUMN` as the gap tables have it (the most
    bootstrap replicates any contrast of the row left out: at matched FVE, a replicate
    whose sweeps leave either text's grid point outside their common range)."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    if contrasts is None or contrasts.empty:
        return pd.DataFrame()
    df = contrasts[(contrasts.kind == kind) & (contrasts.basis == basis)
                   & contrasts.metric.isin(metrics)].copy()
    if df.empty:
        return df
    df["text"] = [interval_cell(iv, digits) + (" *" if iv.excludes_zero else "")
                  for iv in row_intervals(df)]
    at = "target L0"
    if basis == "l0_target":
        df[at] = df.l0_target
    else:  # each text has its own FVE grid; rows pair the grid points of equal rank
        at = "FVE (first's text / second's)"
        df[at] = [f"{a:.3f} / {b:.3f}" for a, b in zip(df.fve, df.fve_second, strict=True)]
    index = ["first", "second", at]
    wide = df.pivot_table(index=index, columns="metric", values="text", aggfunc="first",
                          sort=False)
    wide = wide[[m for m in metrics if m in wide.columns]]
    return with_dropped(wide, df, index) if dropped else wide


def mixed_verdict_table(comparisons: ComparisonTables, domain: str, broad: str,
                        mixed: Sequence[MixedCorpus]) -> Any:
    """The paper's claims (and sensitivity checks) judged against the broad SAE and
    against each SAE that saw the domain in a mix: rows claims, one column per
    opponent."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    opponents = {f"vs {broad} (no {domain} text)": broad,
                 **{f"vs {m.name} ({domain} at {m.share:.0%} of tokens)": m.name
                    for m in mixed}}
    return pd.DataFrame(
        [{"claim": c.text, **{col: claim_verdict(comparisons, c.key, domain, other)
                              for col, other in opponents.items()}}
         for c in (*CLAIMS, *SENSITIVITY_CHECKS)]).set_index("claim")


DIRECTION_COLUMN = "direction (reported, not judged)"


def did_verdict_table(comparisons: ComparisonTables, domain: str, broad: str) -> Any:
    """Every difference-in-differences claim (:data:`~sae_med.report.claims.DID_CLAIMS`), its
    verdict on this run and, beside it, which way its intervals point
    (:func:`did_direction`)."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    return pd.DataFrame([{"claim": c.text,
                          "verdict": contrast_verdict(comparisons, c.key, domain, broad),
                          DIRECTION_COLUMN: did_direction(comparisons, domain, broad,
                                                          c.metric)}
                         for c in DID_CLAIMS]).set_index("claim")


def direction(iv: Interval, sign: int) -> str:
    """Which way one interval points (``sign`` +1: larger favours the domain): ``favours the
    domain`` or ``reversed`` where it excludes 0 on that side, ``unresolved`` where it
    holds 0. Reported beside a verdict so that a significant reversal, which a verdict
    reads only as "not supported", is seen; it judges nothing."""
    if not iv.excludes_zero:
        return "unresolved"
    return "favours the domain" if sign * iv.value > 0 else "reversed"


def did_intervals(comparisons: ComparisonTables, domain: str, broad: str, metric: str
                  ) -> tuple[list[float], list[Interval]]:
    """The difference-in-differences of ``metric`` at each target L0: the targets and
    their intervals, in target order."""
    rows = oriented_contrasts(comparisons.contrasts, "did", domain, broad)
    rows = rows[(rows.metric == metric) & (rows.basis == "l0_target")].sort_values("l0_target")
    return [float(t) for t in rows.l0_target], (row_intervals(rows) if len(rows) else [])


def did_direction(comparisons: ComparisonTables, domain: str, broad: str, metric: str) -> str:
    """:func:`direction` of the difference-in-differences of ``metric`` at every target L0
    (``reversed at every target L0``, or one per target when they differ)."""
    c = next(c for c in DID_CLAIMS if c.metric == metric)
    targets, ivs = did_intervals(comparisons, domain, broad, metric)
    words = [direction(iv, c.sign) for iv in ivs]
    if not words:
        return "no contrast"
    if len(set(words)) == 1:
        return f"{words[0]} at every target L0"
    return "; ".join(f"{t:g}: {w}" for t, w in zip(targets, words, strict=True))


def placebo_verdict_table(comparisons: ComparisonTables, domain: str, broad: str,
                          placebos: Sequence[str]) -> Any:
    """Whether the domain's home advantage over ``broad`` exceeds each placebo's
    (:data:`~sae_med.report.claims.HOME_EXCESS_CLAIMS`): rows placebo corpora (with the domain
    each declares), one column per claim."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    return pd.DataFrame([{"placebo": f"{p} ({corpus_domain(p)})",
                          **{c.text.split(": ")[-1]: placebo_verdict(comparisons, c.key,
                                                                       domain, p, broad)
                             for c in HOME_EXCESS_CLAIMS}}
                         for p in placebos]).set_index("placebo")


def corpus_domain(corpus: str) -> str:
    """The domain a corpus declares (``broad`` for a genre control), or ``declared in the
    config`` for one the registry does not know."""

    try:
        return corpus_info(corpus).domain
    except UnknownCorpusError:
        return "declared in the config"


METRIC_WORDS = {"fve_typical": "typical-token FVE", "fve": "FVE", "delta_ce": "ΔCE (nats)",
                "loss_recovered": "loss recovered",
                "dark_matter.r2_error_mean": "R²(e)"}


def _cells(ivs: Sequence[Interval], digits: int = 3) -> str:
    return "; ".join(interval_cell(iv, digits) for iv in ivs) or "no comparison"


def _verb(ivs: Sequence[Interval], sign: int) -> str:
    """How the first side fares, from its gap intervals: better where every interval lies
    on the favourable side of 0, worse where every one lies on the other."""
    if ivs and all(iv.excludes_zero and sign * iv.value > 0 for iv in ivs):
        return "beats"
    if ivs and all(iv.excludes_zero and sign * iv.value < 0 for iv in ivs):
        return "loses to"
    if any(iv.excludes_zero for iv in ivs):
        return "is not told apart at every target L0 from"
    return "is not told apart from"


def _sign(metric: str) -> int:
    return -1 if metric in LOWER_IS_BETTER else 1


def versus_clause(gaps: Any, first: str, other: str, who: str, metric: str,
                  text: str | None = None) -> str:
    """``the {first} SAE beats {who} on held-out {text} text (...)``: the ``first`` minus
    ``other`` gaps of ``metric`` on ``text`` (default: ``first``'s own) at each target L0,
    the verb computed from their intervals."""
    text = text or first
    ivs = gap_intervals(oriented_gaps(gaps, first, other), metric, text)
    return (f"the {first} SAE {_verb(ivs, _sign(metric))} {who} on held-out {text} text "
            f"({METRIC_WORDS.get(metric, metric)} difference by target L0: {_cells(ivs)})")


def did_clause(comparisons: ComparisonTables, domain: str, broad: str, metric: str) -> str:
    """The difference-in-differences of ``metric`` at each target L0 and its verdict."""
    c = next(c for c in DID_CLAIMS if c.metric == metric)
    ivs = did_intervals(comparisons, domain, broad, metric)[1]
    verb = _verb(ivs, c.sign)
    more = {"beats": "exceeds", "loses to": "falls short of"}.get(verb, verb)
    return (f"its home advantage {more} the {broad} SAE's (difference-in-differences "
            f"{_cells(ivs)}: “{contrast_verdict(comparisons, c.key, domain, broad)}”)")


def placebo_clause(domains: ComparisonTables, domain: str, broad: str, placebo: str,
                   metric: str) -> str:
    """How much ``placebo``'s SAE wins at home over the ``broad`` SAE, and whether the
    domain's home advantage exceeds it (:func:`~sae_med.report.claims.placebo_verdict`)."""
    c = next(c for c in HOME_EXCESS_CLAIMS if c.metric == metric)
    verdict = placebo_verdict(domains, c.key, domain, placebo, broad)
    return (f"{home_win_clause(domains, broad, placebo, metric)} ({domain}'s excess over "
            f"it: “{verdict}”)")


def home_win_clause(domains: ComparisonTables, broad: str, corpus: str, metric: str) -> str:
    """How much ``corpus``'s SAE wins at home over the ``broad`` SAE (``metric``, each
    target L0), with no verdict."""
    ivs = gap_intervals(oriented_gaps(domains.gaps, corpus, broad), metric, corpus)
    return (f"{corpus} ({corpus_domain(corpus)}) {_verb(ivs, _sign(metric))} the {broad} "
            f"SAE at home by {_cells(ivs)}")


def domain_sentence(run: ComparisonTables, domain: str, broad: str,
                    mixed: Sequence[MixedCorpus], domains: ComparisonTables | None,
                    placebos: Sequence[str], metric: str = "fve_typical",
                    controls: Sequence[str] = ()) -> str:
    """The chapter's verdict in one sentence, every number and verdict computed: the
    domain SAE against the broad SAE and each mix, the difference-in-differences, each
    placebo domain's home advantage (from the domains run ``domains``; None: not run) and,
    unjudged, each genre control's (:func:`genre_controls`)."""
    parts = [versus_clause(run.gaps, domain, broad, f"the {broad} SAE", metric)]
    parts += [versus_clause(run.gaps, domain, m.name, f"an SAE that saw {domain} text at "
                            f"{m.share:.0%} of its tokens ({m.name})", metric) for m in mixed]
    parts.append(did_clause(run, domain, broad, metric))
    sentence = "On this run, " + "; ".join(parts) + "."
    if domains is None:
        return (sentence + f" Whether a placebo domain wins at home as much is not measured "
                f"yet: the domains run is absent ({DOMAINS_COMMAND} produces it).")
    if controls:
        sentence += (f" Genre controls the {broad} SAE has trained on (parts of its mix, so "
                     "not placebos): " + "; ".join(home_win_clause(domains, broad, c, metric)
                                                   for c in controls) + ".")
    if not placebos:
        return sentence + " The domains run has no placebo domain."
    return (sentence + " In the domains run, against its own " + broad + " SAE: "
            + "; ".join(placebo_clause(domains, domain, broad, p, metric) for p in placebos)
            + ".")


def placebo_summary(domains: ComparisonTables | None, domain: str, broad: str,
                    placebos: Sequence[str], key: str, controls: Sequence[str] = ()) -> str:
    """One cell for the results page: the placebo verdict ``key`` per placebo domain
    (``go: supported; foldoc: not supported``) and the genre controls left unjudged, or
    how to produce the domains run."""
    if domains is None:
        return f"not run: the domains run is absent ({DOMAINS_COMMAND} produces it)"
    unjudged = (f" (not judged, genre controls in the {broad} mix: {', '.join(controls)})"
                if controls else "")
    if not placebos:
        return "not run: the domains run has no placebo domain" + unjudged
    claim(key)  # an unknown key fails here, naming the valid ones
    return "; ".join(f"{p}: {placebo_verdict(domains, key, domain, p, broad)}"
                     for p in placebos) + unjudged


def home_advantage_figure(home: Any, metric: str, y_title: str) -> Any:
    """Each side's home advantage (:func:`home_advantages` rows) of ``metric`` against the
    target L0 (log), one line per (side, versus), with 95% intervals and the zero line."""
    # deferred: plotly is heavy to import; only the figures need it
    import plotly.graph_objects as go


    sel = home[(home.metric == metric) & (home.basis == "l0_target")]
    fig = go.Figure()
    for j, ((side, other), sub) in enumerate(sel.groupby(["train_corpus", "versus"],
                                                          sort=False)):
        sub = sub.sort_values("l0_target")
        fig.add_trace(go.Scatter(
            x=sub.l0_target, y=sub.value, mode="lines+markers", error_y=error_bars(sub),
            name=f"{side} SAE − {other} SAE, on {side} text",
            line={"color": CORPUS_COLORS.get(side), "dash": EVAL_DASH[j % len(EVAL_DASH)]}))
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_xaxes(type="log", title_text="target L0")
    fig.update_layout(title=f"Home advantage ({y_title}): own SAE minus another, on own text",
                      yaxis_title=y_title, legend={"orientation": "h", "y": -0.25})
    return fig


class DomainsRun(NamedTuple):
    """The domains run (``configs/domains.yaml``): an SAE per corpus, scored on each."""

    cfg: Config
    comparisons: ComparisonTables
    path: Path


class DomainsRunStatus(NamedTuple):
    run: DomainsRun | None
    """None when there is no readable run."""
    note: str
    """Where the run was read from, or why there is none and how to produce it."""


def domains_results_path(config: str = "configs/domains.yaml") -> Path:
    """Where the run of the domains config keeps its results."""

    return load_config(config).run_path / RESULTS_NAME


def load_domains_run(path: str | Path) -> DomainsRunStatus:
    """The domains run's results at ``path``, read, never run: it trains an SAE family per
    corpus (about an hour on 2 cores), so a missing or outdated file is reported with the
    command that produces it instead of failing."""
    return load_side_run(path, "domains", DOMAINS_COMMAND)


def load_mixed_50_run(path: str | Path) -> DomainsRunStatus:
    """The 50% mix's run (:data:`MIXED_50_CONFIG`) at ``path``, read, never run: a missing
    or outdated file is reported with :data:`MIXED_50_COMMAND`."""
    return load_side_run(path, "mixed_50", MIXED_50_COMMAND)


def side_mixed_verdict_table(status: DomainsRunStatus, domain: str, broad: str) -> Any:
    """:func:`mixed_verdict_table` of a side run that trains mixes of its own (the 50% mix's),
    or a one-cell note saying why there is none and how to make it."""
    if status.run is None:
        return note_frame(status.note)
    return mixed_verdict_table(status.run.comparisons, domain, broad,
                               mixed_corpora(status.run.cfg, domain))


def load_side_run(path: str | Path, label: str, command: str) -> DomainsRunStatus:
    """A run a chapter reads beside its own (the ``label`` run, made by ``command``), read,
    never run: a missing or unreadable results file is reported with the command instead
    of failing."""
    path = Path(path)
    if not path.exists():
        return DomainsRunStatus(None, f"The {label} run is absent ({path} does not exist): "
                                      f"{command} produces it.")
    try:
        doc = read_results(path)
    except ValueError as err:  # an older schema: its tables cannot be read as they are
        return DomainsRunStatus(None, f"The {label} run at {path} cannot be read ({err}): "
                                      f"{command} rescores it.")
    cfg = config_from_dict(doc["config"])
    return DomainsRunStatus(DomainsRun(cfg, comparison_tables(doc), path),
                            f"The {label} run read from {path}: SAEs trained on "
                            f"{', '.join(cfg.train_corpora)}, each scored on "
                            f"{', '.join(cfg.eval_corpora)}.")


class ModelRunsStatus(NamedTuple):
    runs: list[ModelRun]
    """This run's first, then each replication whose results could be read."""
    note: str
    """Which replications are left out, and why; empty when none is."""


def read_model_runs(cfg: Config, comparisons: ComparisonTables) -> ModelRunsStatus:
    """This run (its ``comparisons``, already loaded) and each of ``cfg``'s replications
    whose results file is on disk, read, never run (a chapter that only reports trains
    nothing; :func:`sae_med.experiment.model_runs` evaluates what is missing)."""
    runs, notes = [ModelRun(model_label(cfg), cfg, comparisons)], []
    for rep in cfg.replication_configs().values():
        status = load_side_run(rep.run_path / RESULTS_NAME, f"{model_label(rep)} replication",
                               f"sae-med run of this config ({rep.name})")
        if status.run is None:
            notes.append(status.note)
        else:
            runs.append(ModelRun(model_label(status.run.cfg), status.run.cfg,
                                 status.run.comparisons))
    return ModelRunsStatus(runs, " ".join(notes))


def did_verdicts_by_model(runs: Sequence[ModelRun], domain: str, broad: str) -> Any:
    """Every difference-in-differences claim judged on each model's run: rows claims, one
    column per model, and whether they agree (:func:`~sae_med.report.claims.verdicts_frame`)."""
    return verdicts_frame({c.text: {r.label: contrast_verdict(r.comparisons, c.key, domain,
                                                               broad) for r in runs}
                           for c in DID_CLAIMS})


def mixed_verdicts_by_model(runs: Sequence[ModelRun], domain: str) -> Any:
    """The paper's claims (and sensitivity checks) against each mix of the first run,
    judged on each model's run: rows "claim (vs mix)", one column per model; a one-cell
    note when the first run trains no mix."""
    mixes = [m.name for m in mixed_corpora(runs[0].cfg, domain)] if runs else []
    if not mixes:
        return note_frame(NO_MIXED)
    return verdicts_frame({f"{c.text} (vs {m})": {
        r.label: claim_verdict(r.comparisons, c.key, domain, m) for r in runs}
        for m in mixes for c in (*CLAIMS, *SENSITIVITY_CHECKS)})


def placebo_corpora(cfg: Config) -> list[str]:
    """The corpora whose home advantage is set against the domain's: every training corpus
    with a home text after the domain and the reference (the first two,
    :func:`sae_med.measure.compare.contrasts`) but the :func:`genre_controls`."""
    controls = genre_controls(cfg)
    return [c for c in home_sides(cfg)[2:] if c not in controls]


def genre_controls(cfg: Config) -> list[str]:
    """The home sides after the domain and the reference that are parts of the reference's
    mix (:func:`~sae_med.corpora.registry.mix_parts`; ``wordnet`` and ``austen`` of
    ``broad``). The reference SAE has trained on their text, so their home advantage over
    it is small by construction: their contrasts are shown, never judged as placebos."""
    sides = home_sides(cfg)
    if len(sides) < 3:
        return []
    try:
        seen = mix_parts(sides[1])
    except UnknownCorpusError:  # a config-declared reference: never a declared mix
        seen = frozenset()
    return [c for c in sides[2:] if c in seen]


ROLE_PLACEBO = "placebo domain (judged)"
ROLE_CONTROL = "genre control: part of the reference mix (not judged)"


def home_excess_table(contrasts: Any, placebos: Sequence[str], controls: Sequence[str],
                      metrics: Sequence[str], basis: str = "l0_target", digits: int = 3
                      ) -> Any:
    """:func:`contrast_table` of the ``home_excess`` contrasts, each row labelled by the
    role of its second corpus (:data:`ROLE_PLACEBO` for ``placebos``, :data:`ROLE_CONTROL`
    for ``controls``) in a first index level; rows of other corpora are left out."""
    table = contrast_table(contrasts, "home_excess", metrics, basis, digits)
    if table.empty:
        return table
    roles = {**dict.fromkeys(placebos, ROLE_PLACEBO), **dict.fromkeys(controls, ROLE_CONTROL)}
    second = table.index.get_level_values("second")
    table = table[second.isin(list(roles))]
    table = table.set_index(table.index.get_level_values("second").map(roles).rename("role"),
                            append=True)
    return table.reorder_levels([-1, *range(table.index.nlevels - 1)])


class ReportedRun(NamedTuple):
    """The run a report reads: its config and its results file."""

    cfg: Config
    path: Path


NO_MIXED = "not run: no mixed corpus among this run's training corpora"


def page_verdicts(run: ComparisonTables, domain: str, broad: str,
                  mixed: Sequence[MixedCorpus], domains: ComparisonTables | None,
                  placebos: Sequence[str], controls: Sequence[str] = ()) -> dict[str, str]:
    """The results page's rows of the chapter, ``{glue key: text}``: each
    difference-in-differences verdict (``verdict_did_<metric>``) and its unjudged
    :func:`did_direction` (``direction_did_<metric>``), the paper's claims
    against the first mix (``verdict_mixed_<claim>``, its name in ``mixed_label``), the
    placebo verdicts per placebo (``verdict_placebo_<metric>``), what the mix gives up on
    broad text (``mixed_cost_sentence``) and the verdict sentences
    (``domain_verdict_sentence``: typical-token FVE; ``..._dce``: ΔCE). ``controls``: the
    domains run's :func:`genre_controls`, named but never judged."""
    out = {f"verdict_{c.key}": contrast_verdict(run, c.key, domain, broad)
           for c in DID_CLAIMS}
    out |= {f"direction_{c.key}": did_direction(run, domain, broad, c.metric)
            for c in DID_CLAIMS}
    first = mixed[0] if mixed else None
    out["mixed_label"] = (f"{first.name} ({domain} at {first.share:.0%} of its tokens)"
                          if first else "no mixed corpus")
    for c in (*CLAIMS, *SENSITIVITY_CHECKS):
        out[f"verdict_mixed_{c.key}"] = (claim_verdict(run, c.key, domain, first.name)
                                         if first else NO_MIXED)
    for c in HOME_EXCESS_CLAIMS:
        out[f"verdict_placebo_{c.key.removeprefix('home_excess_')}"] = placebo_summary(
            domains, domain, broad, placebos, c.key, controls)
    out["mixed_cost_sentence"] = mixed_cost_sentence(run, broad, mixed)
    for key, metric in (("domain_verdict_sentence", "fve_typical"),
                        ("domain_verdict_sentence_dce", "delta_ce")):
        out[key] = domain_sentence(run, domain, broad, mixed, domains, placebos, metric,
                                   controls)
    return out


def mixed_cost_sentence(run: ComparisonTables, broad: str, mixed: Sequence[MixedCorpus]
                        ) -> str:
    """What each mix gives up on ``broad`` text against the ``broad`` SAE (typical-token
    FVE and ΔCE at each target L0), one sentence."""
    if not mixed:
        return "This run trains no mixed corpus, so nothing is given up."
    text = "; ".join(versus_clause(run.gaps, m.name, broad, f"the {broad} SAE", metric,
                                   text=broad)
                     for m in mixed for metric in ("fve_typical", "delta_ce"))
    return text[0].upper() + text[1:] + "."


def matching_domains_run(status: DomainsRunStatus, domain: str, broad: str
                         ) -> DomainsRunStatus:
    """``status``, unless its run sets another domain against another broad side than
    ``domain`` and ``broad`` (a placebo contrast of another domain says nothing about this
    one): then no run, and a note saying so."""

    if status.run is None or domain_pair(status.run.cfg) == (domain, broad):
        return status
    theirs = " vs ".join(domain_pair(status.run.cfg))
    return DomainsRunStatus(None, f"The domains run at {status.run.path} compares {theirs}, "
                                  f"not {domain} vs {broad}: its placebo contrasts are not "
                                  f"about this run's domain.")


OWN_TEXT_METRICS = ("delta_ce", "fve", "fve_typical")
"""The equal baselines: each side's quality on its own held-out text, so that neither side's
advantage is read off a weaker SAE."""


def training_dead_fractions(rows: Any) -> Any:
    """Each trained SAE's dead fraction over its last training window (the last line of
    the ``metrics.jsonl`` beside it; ``train.dead_window_tokens``): rows train_corpus,
    l0_target, replicate, dead_frac. ``rows``: :func:`sae_med.measure.results.load_results`'s
    frame (its ``sae_dir`` column); SAEs whose folder is gone are left out."""

    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    out: list[dict[str, Any]] = []
    columns = ["train_corpus", "l0_target", "replicate", "dead_frac"]
    if not {"sae_dir", "l0_target", "sae_id"} <= set(rows.columns):  # no trained SAE rows
        return pd.DataFrame(out, columns=columns)
    sel = rows.dropna(subset=["l0_target"]).drop_duplicates("sae_id")
    for r in sel.itertuples():
        log = Path(str(r.sae_dir)) / METRICS_NAME
        if log.exists() and (lines := log.read_text().splitlines()):
            out.append({"train_corpus": r.train_corpus, "l0_target": float(r.l0_target),
                        "replicate": int(r.replicate),
                        "dead_frac": float(json.loads(lines[-1])["dead_frac"])})
    return pd.DataFrame(out, columns=columns)


def own_text_table(families: Any, sides: Sequence[str], dead: Any, digits: int = 3) -> Any:
    """Each side's SAEs on their *own* held-out text at every target L0: ΔCE, FVE and
    typical-token FVE ("mean [low, high]", across seeds) and the training-window dead
    fraction (mean over seeds, min–max), so a reader sees both baselines are as strong
    (``dead``: :func:`training_dead_fractions`)."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    own = families[(families.basis == "l0_target") & families.metric.isin(OWN_TEXT_METRICS)
                   & (families.train_corpus == families.eval_corpus)
                   & families.train_corpus.isin(sides)].copy()
    if own.empty:
        return own
    own["text"] = [interval_cell(iv, digits) for iv in row_intervals(own)]
    wide = own.pivot_table(index=["train_corpus", "l0_target"], columns="metric",
                           values="text", aggfunc="first")
    wide = wide[[m for m in OWN_TEXT_METRICS if m in wide.columns]]
    if not dead.empty:
        agg = dead.groupby(["train_corpus", "l0_target"]).dead_frac.agg(["mean", "min", "max"])
        wide["training-window dead fraction"] = pd.Series(
            {k: f"{r['mean']:.3f} ({r['min']:.3f}–{r['max']:.3f})" for k, r in agg.iterrows()})
    order = [(s, t) for s in sides for t in sorted(own.l0_target.unique()) if (s, t) in wide.index]
    wide = wide.reindex(pd.MultiIndex.from_tuples(order))
    wide.index = wide.index.set_names(["SAE, on its own text", "l0_target"])
    return wide
