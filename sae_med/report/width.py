"""The width axis (``configs/width.yaml``) in tables, a figure and sentences: each training
corpus's SAEs on domain text against SAE width at one target L0, the domain SAE's gaps
against the broad and the mixed SAE per width, the crossover width (:func:`crossover`) and
the declared slope test (:func:`width_trend`), and where the gap itself reaches 0, with an
interval (:func:`crossover_interval`). The rules are stated in book/method.md
before any real run and frozen by :data:`WIDTH_RULE`'s version."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from sae_med.artifacts import stable_hash
from sae_med.layout import RESULTS_NAME
from sae_med.measure.bootstrap import Interval
from sae_med.measure.controls import Z95
from sae_med.measure.results import comparison_tables, read_results
from sae_med.report.claims import (
    DCE_BAR_NATS,
    bar_dce,
    judging_code,
    meets_quality_bar,
    oriented_gaps,
    row_intervals,
)
from sae_med.report.matrix import (
    METRIC_NAMES,
    NO_INTERVAL,
    NO_RESULTS,
    NOT_JUDGED,
    matrix_configs,
)
from sae_med.report.notebook import CORPUS_COLORS, error_bars, interval_cell

if TYPE_CHECKING:
    from sae_med.config import Config
    from sae_med.measure.results import ComparisonTables

WIDTH_CONFIG = "configs/width.yaml"
WIDTH_COMMAND = f"sae-med experiment {WIDTH_CONFIG}"
SHRINKS, GROWS, NO_TREND = "shrinks", "grows", "no trend"
TOO_FEW = "too few widths"
"""Fewer widths with an interval than :data:`WIDTH_RULE`'s ``min_widths``: no slope test."""
CROSSOVER, NO_CROSSOVER, MATCHED = "crossover", "no crossover", "matched at every width"
UNDETERMINED = "undetermined"
"""A width without a gap interval: the rule cannot say where the gap closes."""
SUPPORTED, CONTRADICTED, NOT_SHOWN = "supported", "contradicted", "not shown"


class WidthRule(NamedTuple):
    """The width axis's rule (:func:`crossover`, :func:`width_trend`,
    :func:`capacity_verdict`), declared (on the method page too) before any run it judges.
    A change of a field, of the quality bar or of the judging code needs a new ``version``
    (``tests/report/test_frozen_rules_axes.py`` records each version's fingerprint,
    :func:`width_rule_fingerprint`)."""

    version: int
    target: float
    """The one target L0 the axis is read at (the width-8 runs train 20 and 80 too)."""
    widths: tuple[int, ...]
    """The declared widths (× d_model), ``configs/width.yaml``'s cells."""
    signs: tuple[tuple[str, int], ...]
    """(metric, sign) of each gap judged; ``sign`` is the paper's side, as in
    :data:`sae_med.report.matrix.MATRIX_RULE`."""
    versus: tuple[str, ...]
    """The SAEs the domain SAE is set against on domain text."""
    mixed: str
    """The comparison the capacity prediction reads: an SAE that has seen the domain."""
    min_widths: int
    """The fewest widths with an interval the slope test needs."""
    draws: int
    """Replicates of the crossover interval's parametric bootstrap
    (:func:`crossover_interval`)."""
    seed: int
    """The seed of those draws."""


WIDTH_RULE = WidthRule(version=3, target=40.0, widths=(2, 4, 8, 16, 32),
                       signs=(("fve_typical", 1), ("delta_ce", -1)),
                       versus=("broad", "mixed_10"), mixed="mixed_10", min_widths=3,
                       draws=2000, seed=0)
WIDTH_TARGET = WIDTH_RULE.target
"""The rule's target L0, for the tables and the configs' tests."""


class WidthRun(NamedTuple):
    """One cell run of the width axis, and its comparisons (None while it has none)."""

    architecture: str
    width: int
    """SAE latents."""
    d_model: int | None
    """The model's residual width, from the results rows (None without results)."""
    run: str
    comparisons: ComparisonTables | None

    @property
    def multiple(self) -> float:
        """The width as a multiple of d_model (the width in latents without results)."""
        return self.width / self.d_model if self.d_model else float(self.width)


class CrossoverInterval(NamedTuple):
    """Where the domain SAE's advantage itself reaches 0 (:func:`crossover_interval`), × d_model:
    the point values' crossover and its 95% interval. An end at ``-inf`` reads "at or below
    the smallest width", ``inf`` "beyond the largest"; None ends: undetermined."""

    value: float | None
    low: float | None
    high: float | None
    smallest: float | None = None
    """The smallest declared width with a gap (× d_model)."""
    largest: float | None = None

    def text(self) -> str:
        """"value [low, high]", e.g. "12.1× [9.8×, > 32×]"."""
        if self.value is None or self.low is None or self.high is None:
            return "undetermined (a width's gap has no interval)"
        ends = [f"≤ {self.smallest:g}×" if x == -math.inf else
                f"> {self.largest:g}×" if x == math.inf else f"{x:.1f}×"
                for x in (self.value, self.low, self.high)]
        return f"{ends[0]} [{ends[1]}, {ends[2]}]"


class Crossover(NamedTuple):
    """Where, on the grid of declared widths, the ``versus`` SAE starts to match the domain
    SAE (:func:`crossover`): a bracket and a point estimate, which judge the verdict, and
    beside them where the gap itself reaches 0, with an interval."""

    status: str
    width: float | None = None
    """The smallest declared width from which every gap matches (× d_model)."""
    below: float | None = None
    """The declared width before it, whose gap still excludes 0: (below, width] brackets
    the crossover on the grid of widths run; it is not a confidence interval."""
    estimate: float | None = None
    """Where the paper-side end of the gap's interval (the end nearer 0) reaches 0,
    interpolated linearly on log2 width between ``below`` and ``width``: where the gap
    stops being resolved, not where the gap itself reaches 0; a point, with no interval."""
    interval: CrossoverInterval | None = None
    """Where the gap itself reaches 0, with its 95% interval (:func:`crossover_interval`);
    None where no crossover is judged (no results, or not judged)."""


class Trend(NamedTuple):
    """The slope of the domain SAE's advantage against log2 width (:func:`width_trend`)."""

    verdict: str
    slope: Interval | None = None


class WidthSeries(NamedTuple):
    """The domain SAE minus the ``versus`` SAE on domain text, one metric and
    architecture, at every width."""

    architecture: str
    versus: str
    metric: str
    gaps: dict[float, Interval]
    """Width (× d_model) -> the gap's 95% interval at the rule's target L0."""
    crossover: Crossover
    trend: Trend


def read_widths(cfg: Config) -> list[WidthRun]:
    """Every run of ``cfg`` and its replications with its results file's comparisons and
    d_model, if it has results."""
    runs = []
    for c in matrix_configs(cfg):
        path = c.run_path / RESULTS_NAME
        doc = read_results(path) if path.exists() else None
        d_model = next((r.get("d_model") for r in doc["rows"] if r.get("d_model")),
                       None) if doc else None
        runs.append(WidthRun(c.sae.architecture, c.sae.width, d_model, c.name,
                             comparison_tables(doc) if doc else None))
    return runs


def _matches(iv: Interval, sign: int) -> bool:
    """The ``versus`` SAE matches: the gap's interval is not wholly on the paper's side."""
    return not (sign * iv.low > 0 and sign * iv.high > 0)


def crossover(gaps: dict[float, Interval], sign: int, rule: WidthRule = WIDTH_RULE
              ) -> Crossover:
    """The declared rule: the crossover width is the smallest declared width from which the
    gap's 95% interval holds 0 or lies on the other side of it, at that width and every
    larger one. The result is a bracket on the grid of widths run, (below, width], with
    ``below`` the declared width before, whose interval still excludes 0 on the paper's
    side: the widths between were not run. ``estimate`` is a point inside the bracket: where
    the paper-side end of the gap's interval (the end nearer 0) reaches 0, interpolated
    linearly on log2 width between the two ends, i.e. where the gap stops being resolved,
    not where it reaches 0. ``no crossover`` when the largest width's gap still excludes 0
    on the paper's side; ``matched at every width`` when even the smallest matches;
    ``undetermined`` when a width has no interval. Beside the verdict, ``interval`` is where
    the gap itself reaches 0, with a 95% interval (:func:`crossover_interval`)."""
    return _bracket(gaps, sign)._replace(interval=crossover_interval(gaps, sign, rule))


def _bracket(gaps: dict[float, Interval], sign: int) -> Crossover:
    """:func:`crossover`'s status, bracket and estimate."""
    widths = sorted(gaps)
    if not widths or any(gaps[w].low is None or gaps[w].high is None for w in widths):
        return Crossover(UNDETERMINED)
    first = len(widths)
    while first > 0 and _matches(gaps[widths[first - 1]], sign):
        first -= 1
    if first == len(widths):
        return Crossover(NO_CROSSOVER)
    if first == 0:
        return Crossover(MATCHED, widths[0])
    below, at = widths[first - 1], widths[first]

    def edge(iv: Interval) -> float:
        return min(sign * iv.low, sign * iv.high)

    e0, e1 = edge(gaps[below]), edge(gaps[at])
    x = math.log2(below) + e0 / (e0 - e1) * (math.log2(at) - math.log2(below))
    return Crossover(CROSSOVER, at, below, 2 ** x)


def crossover_interval(gaps: dict[float, Interval], sign: int, rule: WidthRule = WIDTH_RULE
                       ) -> CrossoverInterval:
    """Where the domain SAE's advantage a_w = sign × gap_w itself reaches 0, and a 95%
    interval on it. The crossover of a curve a over the declared widths is the smallest x
    from which its linear interpolation on log2 width is ≤ 0 at x and at every larger
    width: the last change of sign from > 0 to ≤ 0 (:func:`_crossings`); ``-inf`` (at or
    below the smallest width) when a ≤ 0 already there, ``inf`` (beyond the largest) when
    a > 0 at the largest. The point is the crossover of the gaps' point values; the interval
    a parametric bootstrap: ``rule.draws`` draws (seed ``rule.seed``), each width's gap drawn
    independently from Normal(value, se), se = the interval's width / (2 × 1.96), the
    crossover of each draw, and the draws' 2.5th and 97.5th percentiles (order statistics,
    so censored draws count at the ends). The widths share their eval documents, so their
    gaps are positively correlated and independent draws are noisier than the real curve.
    It says where the gap reaches 0, where the bracket of
    :func:`crossover` says where the gap stops being resolved. Undetermined (None ends)
    when a width has no interval."""
    widths = sorted(gaps)
    if not widths or any(gaps[w].low is None or gaps[w].high is None for w in widths):
        ends = (widths[0], widths[-1]) if widths else (None, None)
        return CrossoverInterval(None, None, None, *ends)
    value = torch.tensor([sign * gaps[w].value for w in widths], dtype=torch.float64)
    se = torch.tensor([(gaps[w].high - gaps[w].low) / (2 * Z95) for w in widths],
                      dtype=torch.float64)
    gen = torch.Generator().manual_seed(rule.seed)
    noise = torch.randn((rule.draws, len(widths)), generator=gen, dtype=torch.float64)
    log2w = torch.tensor([math.log2(w) for w in widths], dtype=torch.float64)
    draws = _crossings(value + sign * se * noise, log2w).sort().values
    low, high = (float(draws[math.ceil(q * rule.draws) - 1]) for q in (0.025, 0.975))
    point = float(_crossings(value[None], log2w)[0])
    return CrossoverInterval(*(2 ** x if math.isfinite(x) else x for x in (point, low, high)),
                             widths[0], widths[-1])


def _crossings(a: Tensor, log2w: Tensor) -> Tensor:
    """Per curve (row of ``a``, shape (draws, widths)), the log2 width from which its
    linear interpolation on ``log2w`` is ≤ 0 at every larger declared width: between the
    last width with a > 0 and the next; ``-inf`` when there is none, ``inf`` when it is the
    largest. Shape (draws,)."""
    k = a.shape[1]
    if k < 2:
        return torch.where(a[:, 0] > 0, math.inf, -math.inf)
    last = torch.where(a > 0, torch.arange(k), -1).max(dim=1).values  # (draws,)
    i = last.clamp(0, k - 2)
    a0, a1 = a.gather(1, i[:, None])[:, 0], a.gather(1, (i + 1)[:, None])[:, 0]
    x = log2w[i] + a0 / (a0 - a1) * (log2w[i + 1] - log2w[i])
    x = torch.where(last < 0, -math.inf, x)
    return torch.where(last == k - 1, math.inf, x)


def width_trend(gaps: dict[float, Interval], sign: int, rule: WidthRule = WIDTH_RULE
                ) -> Trend:
    """The declared slope test: the weighted least-squares slope of the domain SAE's
    advantage, ``sign`` × gap, on log2 width, each width weighted by 1 / se² with se the
    interval's width / (2 × 1.96); its 95% interval is slope ± 1.96 × se(slope), the widths
    treated as independent (the gaps share their eval documents, so they are positively
    correlated and the interval is conservative). The advantage *shrinks* when the slope's
    interval lies below 0, *grows* when above, and shows *no trend* otherwise (``too few
    widths`` below ``rule.min_widths``)."""
    pts = [(math.log2(w), sign * iv.value, (iv.high - iv.low) / (2 * Z95))
           for w, iv in sorted(gaps.items()) if iv.low is not None and iv.high is not None]
    pts = [p for p in pts if p[2] > 0]
    if len(pts) < rule.min_widths:
        return Trend(TOO_FEW)
    w = [1 / se**2 for _, _, se in pts]
    xbar = sum(wi * x for wi, (x, _, _) in zip(w, pts, strict=True)) / sum(w)
    ybar = sum(wi * y for wi, (_, y, _) in zip(w, pts, strict=True)) / sum(w)
    sxx = sum(wi * (x - xbar) ** 2 for wi, (x, _, _) in zip(w, pts, strict=True))
    slope = sum(wi * (x - xbar) * (y - ybar) for wi, (x, y, _) in zip(w, pts, strict=True)) / sxx
    half = Z95 / math.sqrt(sxx)
    iv = Interval(slope, slope - half, slope + half)
    return Trend(SHRINKS if iv.high < 0 else GROWS if iv.low > 0 else NO_TREND, iv)


def _run_gap(run: WidthRun, domain: str, versus: str, metric: str, rule: WidthRule
             ) -> Interval:
    """The run's gap at the rule's target (:data:`NO_INTERVAL` where its results hold none:
    the width then has no interval, and what needs one is undetermined)."""
    if run.comparisons.gaps.empty:
        return NO_INTERVAL
    g = oriented_gaps(run.comparisons.gaps, domain, versus)
    sel = g[(g.basis == "l0_target") & (g.eval_corpus == domain) & (g.metric == metric)
            & (g.l0_target == rule.target)]
    return NO_INTERVAL if sel.empty else row_intervals(sel)[0]


def _judged(run: WidthRun, domain: str, rule: WidthRule) -> bool:
    """The run's domain SAEs pass the quality bar at the rule's target L0."""
    f = run.comparisons.families
    return meets_quality_bar(f[f.l0_target == rule.target] if not f.empty else f, domain)


def _series(runs: Sequence[WidthRun], domain: str, versus: str, metric: str, sign: int,
            rule: WidthRule) -> WidthSeries:
    arch = runs[0].architecture
    if any(r.comparisons is None for r in runs):
        return WidthSeries(arch, versus, metric, {}, Crossover(NO_RESULTS), Trend(NO_RESULTS))
    gaps = {r.multiple: _run_gap(r, domain, versus, metric, rule) for r in runs}
    if not all(_judged(r, domain, rule) for r in runs):
        return WidthSeries(arch, versus, metric, gaps, Crossover(NOT_JUDGED), Trend(NOT_JUDGED))
    return WidthSeries(arch, versus, metric, gaps, crossover(gaps, sign, rule),
                       width_trend(gaps, sign, rule))


def width_series(runs: Sequence[WidthRun], domain: str = "medical",
                 rule: WidthRule = WIDTH_RULE) -> list[WidthSeries]:
    """Per architecture (in run order), comparison of ``rule.versus`` and metric: the gaps
    at every width, the crossover and the slope test; ``no results`` while any of its runs
    is missing, ``not judged`` when any width's domain SAEs fail the quality bar."""
    archs = list(dict.fromkeys(r.architecture for r in runs))
    return [_series([r for r in runs if r.architecture == a], domain, other, metric, sign, rule)
            for a in archs for other in rule.versus for metric, sign in rule.signs]


def capacity_verdict(series: Sequence[WidthSeries], rule: WidthRule = WIDTH_RULE
                     ) -> dict[str, str]:
    """The capacity thesis's prediction per architecture: the domain SAE's advantage over
    the ``rule.mixed`` SAE *shrinks* with width. ``supported`` when it shrinks in every
    metric of ``rule.signs``, ``contradicted`` when it grows in any, ``not shown``
    otherwise (``no results`` / ``not judged`` passed on)."""
    out = {}
    for arch in dict.fromkeys(s.architecture for s in series):
        trends = [s.trend.verdict for s in series
                  if s.architecture == arch and s.versus == rule.mixed]
        out[arch] = next((v for v in (NO_RESULTS, NOT_JUDGED) if v in trends), None) or (
            SUPPORTED if trends and all(t == SHRINKS for t in trends) else
            CONTRADICTED if GROWS in trends else NOT_SHOWN)
    return out


def width_rule_fingerprint(rule: WidthRule = WIDTH_RULE) -> str:
    """A hash of everything that decides the width axis's verdicts and the crossover's
    interval: the rule's fields, the quality bar, the normal quantile of the slope test and
    of the interval's draws, and the code that judges (not the rule's version)."""
    fields = {k: v for k, v in rule._asdict().items() if k != "version"}
    code = (_matches, crossover, _bracket, crossover_interval, _crossings, width_trend,
            _run_gap, _judged, _series, width_series, capacity_verdict, meets_quality_bar,
            bar_dce, oriented_gaps, row_intervals)
    return stable_hash({"rule": fields, "bar_nats": DCE_BAR_NATS, "z95": Z95,
                        "code": [judging_code(f) for f in code]})


def _times(w: float | None) -> str:
    return "—" if w is None else f"{w:g}×"


def crossover_text(c: Crossover, versus: str, domain: str = "medical",
                   largest: float | None = max(WIDTH_RULE.widths)) -> str:
    """The crossover in words (largest: the largest width, for "no crossover up to"), and
    where the gap itself reaches 0 with its interval."""
    return _bracket_text(c, versus, domain, largest) + _interval_text(c.interval)


def _interval_text(iv: CrossoverInterval | None) -> str:
    if iv is None or iv.value is None:
        return ""
    return f"; the gap itself reaches 0 at {iv.text()} (95% parametric bootstrap)"


def _bracket_text(c: Crossover, versus: str, domain: str, largest: float | None) -> str:
    if c.status == CROSSOVER:
        return (f"the {versus} SAE matches the {domain} one on {domain} text from "
                f"{_times(c.width)} d_model, not at {_times(c.below)} (the declared widths "
                f"bracket the crossover in ({_times(c.below)}, {_times(c.width)}]; the gap's "
                f"interval reaches 0 near {c.estimate:.1f}× by log-width interpolation)")
    if c.status == NO_CROSSOVER:
        return f"no crossover up to {_times(largest)} d_model"
    if c.status == MATCHED:
        return f"the {versus} SAE matches the {domain} one already at {_times(c.width)} d_model"
    return {NO_RESULTS: f"no results yet ({WIDTH_COMMAND} produces them)",
            NOT_JUDGED: "not judged (a width's domain SAEs fail the quality bar)",
            UNDETERMINED: "undetermined (a width's gap has no interval)"}[c.status]


def crossover_sentence(series: Sequence[WidthSeries], domain: str = "medical") -> str:
    """One line per architecture, comparison and metric: the crossover in words and the
    slope test's verdict."""
    lines = []
    for s in series:
        largest = max(s.gaps) if s.gaps else None
        slope = "" if s.trend.slope is None else (
            f"; the advantage {s.trend.verdict} with width (slope per doubling "
            f"{interval_cell(s.trend.slope, 3)})")
        lines.append(f"{s.architecture}, {domain} − {s.versus}, {METRIC_NAMES[s.metric]}: "
                     f"{crossover_text(s.crossover, s.versus, domain, largest)}{slope}.")
    return "\n".join(lines)


def width_families(runs: Sequence[WidthRun], domain: str = "medical") -> Any:
    """Every family (across-seed mean, 95% interval) on ``domain`` text at the rule's
    target L0 (:data:`WIDTH_RULE`): columns architecture, width (× d_model), train_corpus, metric,
    value, low, high."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    frames = []
    for r in runs:
        if r.comparisons is None or r.comparisons.families.empty:
            continue
        f = r.comparisons.families
        sel = f[(f.basis == "l0_target") & (f.l0_target == WIDTH_RULE.target)
                & (f.eval_corpus == domain) & f.metric.isin([m for m, _ in WIDTH_RULE.signs])]
        frames.append(sel[["train_corpus", "metric", "value", "low", "high"]].assign(
            architecture=r.architecture, width=r.multiple))
    cols = ["architecture", "width", "train_corpus", "metric", "value", "low", "high"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def family_table(families: Any, digits: int = 3) -> Any:
    """:func:`width_families` as text: rows (architecture, metric, trained on), one column
    per width, "value [low, high]"."""
    if families.empty:
        return families
    df = families.copy()
    df["text"] = [interval_cell(iv, digits) for iv in row_intervals(df)]
    df["width"] = [f"{w:g}×" for w in df.width]
    wide = df.pivot_table(index=["architecture", "metric", "train_corpus"], columns="width",
                          values="text", aggfunc="first")
    order = sorted(wide.columns, key=lambda c: float(c.rstrip("×")))
    return wide[order].rename_axis(columns="width (× d_model)")


def width_gap_table(series: Sequence[WidthSeries], domain: str = "medical") -> Any:
    """One line per architecture, comparison and metric: the gap at each width, "value
    [low, high]", the crossover, where the gap reaches 0 (with its 95% interval) and the
    slope test."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    widths = sorted({w for s in series for w in s.gaps})
    return pd.DataFrame([{
        "architecture": s.architecture, "gap": f"{domain} − {s.versus}",
        "metric": METRIC_NAMES[s.metric],
        **{f"{w:g}×": interval_cell(s.gaps[w], 3) if w in s.gaps else "—" for w in widths},
        "crossover": _bracket_text(s.crossover, s.versus, domain,
                                   max(s.gaps) if s.gaps else None),
        "gap reaches 0 (95%)": "—" if s.crossover.interval is None else
        s.crossover.interval.text(),
        "slope per doubling": "—" if s.trend.slope is None else interval_cell(s.trend.slope, 3),
        "trend": s.trend.verdict} for s in series])


ARCH_DASH = {"jumprelu": "solid", "matryoshka_batchtopk": "dash"}


def width_figure(families: Any, metric: str, y_title: str, title: str = "") -> Any:
    """Figure: ``metric`` of each training corpus's SAEs on domain text against width
    (log2 axis, × d_model), one line per architecture and corpus, 95% intervals as error
    bars."""
    # deferred: plotly is heavy to import; only the figures need it
    import plotly.graph_objects as go

    fig = go.Figure()
    df = families[families.metric == metric]
    for (arch, corpus), sub in df.groupby(["architecture", "train_corpus"], sort=False):
        sub = sub.sort_values("width")
        fig.add_trace(go.Scatter(
            x=sub.width, y=sub.value, mode="lines+markers", error_y=error_bars(sub),
            line={"color": CORPUS_COLORS.get(corpus), "dash": ARCH_DASH.get(arch, "dot")},
            name=f"{arch}, trained on {corpus}"))
    fig.update_layout(title=title or f"{metric} vs SAE width", yaxis_title=y_title,
                      xaxis_title="SAE width (× d_model)",
                      legend={"orientation": "h", "y": -0.25})
    fig.update_xaxes(type="log", dtick=math.log10(2))
    return fig
