"""The learning curve: does the domain advantage survive real training?

A config's ``learning_curve`` run (:meth:`~sae_med.config.Config.learning_curve_config`)
trains each side at one target L0 for many tokens and saves snapshots on the way
(``train.snapshot_tokens``). Each budget's SAEs are scored like the main run (same
held-out documents, seed replicates, paired gaps) into their own results file
(:func:`sae_med.experiment.stage_learning_curve`). This module reads those files back as
tables against training tokens and states, from the intervals, whether each gap of the
paper's claims grows, holds or shrinks as both sides train.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from sae_med.measure.bootstrap import Interval
from sae_med.measure.compare import Verdict, verdict
from sae_med.measure.results import comparison_tables, read_results, tidy_results
from sae_med.report.claims import (
    CLAIMS,
    SENSITIVITY_CHECKS,
    claim,
    gap_intervals,
    judged,
    oriented_gaps,
    support_count,
)

if TYPE_CHECKING:
    from sae_med.config import Config



Trend = Literal["grows", "holds", "shrinks"]


class CurvePoint(NamedTuple):
    """One training budget of the curve and the results file of its SAEs."""

    tokens: int
    """The budget: training tokens per SAE (a snapshot's, or the run's full length)."""
    results: Path


def curve_budgets(n_tokens: int, snapshot_tokens: Sequence[int]) -> list[int]:
    """Every budget of a curve run: its snapshots, then the full run."""
    return [*snapshot_tokens, n_tokens]


class CurveTables(NamedTuple):
    """Every budget's tables in one frame each, with a ``tokens`` column."""

    families: Any
    """Across-seed family means (:func:`sae_med.measure.results.load_comparisons`)."""
    gaps: Any
    """Paired gaps, as stored (first training corpus minus the others)."""
    rows: Any
    """Per-SAE rows (:func:`sae_med.measure.results.load_results`), e.g. for ``dead_frac``."""


def curve_tables(points: Sequence[CurvePoint]) -> CurveTables:
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    if not points:
        raise ValueError("a learning curve needs at least one budget")
    docs = [(read_results(p.results), p.tokens) for p in points]  # each file read once
    comps = [(comparison_tables(doc), n) for doc, n in docs]
    return CurveTables(
        pd.concat([c.families.assign(tokens=n) for c, n in comps], ignore_index=True),
        pd.concat([c.gaps.assign(tokens=n) for c, n in comps], ignore_index=True),
        pd.concat([tidy_results(doc["rows"]).assign(tokens=n) for doc, n in docs],
                  ignore_index=True))


def seed_summary(rows: Any, metric: str) -> Any:
    """A point metric (e.g. the held-out ``dead_frac``) per budget, training corpus and
    eval corpus: mean, min and max over the seed replicates."""
    sel = rows[rows.metric == metric]
    return (sel.groupby(["tokens", "train_corpus", "eval_corpus"]).value
            .agg(["mean", "min", "max"]).reset_index())


def trend(first: Interval, last: Interval, sign: int) -> Trend:
    """How a gap moves from the smallest budget to the largest, oriented so that larger
    favours the domain SAE (``sign`` -1 for metrics where smaller is better): ``grows`` or
    ``shrinks`` only when the two intervals do not overlap, else ``holds``."""
    if None in (first.low, first.high, last.low, last.high):
        return "holds"
    lo0, hi0 = sorted((sign * first.low, sign * first.high))
    lo1, hi1 = sorted((sign * last.low, sign * last.high))
    return "grows" if lo1 > hi0 else "shrinks" if hi1 < lo0 else "holds"


class ClaimTrend(NamedTuple):
    """One claim of :data:`sae_med.report.claims.CLAIMS` (or sensitivity check) along the curve."""

    key: str
    """The claim's key (:func:`sae_med.report.claims.claim`)."""
    claim: str
    metric: str
    first: Interval
    """The gap (domain minus broad, on domain text) at the smallest budget."""
    last: Interval
    """The gap at the largest budget."""
    verdict: Verdict
    """The claim's verdict at the largest budget (at the curve's one target L0); not judged
    when that budget's SAEs fail the quality bar."""
    trend: Trend

    @property
    def counted(self) -> bool:
        """A claim, not a sensitivity check: counts towards the claims supported."""
        return claim(self.key).is_claim


def claim_trends(tables: CurveTables, domain: str, broad: str) -> list[ClaimTrend]:
    """Every claim's gap at the smallest and largest budget of ``tables``, its verdict at
    the largest and its :func:`trend`; then the sensitivity checks' (shown, not counted)."""
    ours = oriented_gaps(tables.gaps, domain, broad)
    if ours.empty:
        return []
    smallest, largest = (ours[ours.tokens == b] for b in (ours.tokens.min(), ours.tokens.max()))
    fam = tables.families
    last_families = fam[fam.tokens == ours.tokens.max()] if not fam.empty else fam
    out = []
    for c in (*CLAIMS, *SENSITIVITY_CHECKS):
        ends = [gap_intervals(g, c.metric, domain) for g in (smallest, largest)]
        if not all(ends):
            continue
        first, last = ends[0][0], ends[1][0]
        v = judged(verdict([last], sign=c.sign), last_families, domain)
        out.append(ClaimTrend(c.key, c.text, c.metric, first, last, v,
                              trend(first, last, c.sign)))
    return out


def trend_frame(trends: Sequence[ClaimTrend], first_tokens: int, last_tokens: int,
                digits: int = 3) -> Any:
    """:func:`claim_trends` as a table, one row per claim."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    def cell(iv: Interval) -> str:
        return f"{iv.value:+.{digits}f} [{iv.low:+.{digits}f}, {iv.high:+.{digits}f}]"

    return pd.DataFrame([{
        "claim": t.claim, "metric": t.metric, f"gap at {first_tokens:,} tokens": cell(t.first),
        f"gap at {last_tokens:,} tokens": cell(t.last), "verdict at the largest budget":
        t.verdict, "gap from smallest to largest budget": t.trend,
        "counted as a claim": "yes" if t.counted else "no (sensitivity check)"}
        for t in trends]
    ).set_index("claim")


def curve_sentence(trends: Sequence[ClaimTrend], last_tokens: int) -> str:
    """How many claims hold at the largest budget (sensitivity checks not counted), then
    one sentence per claim and check: its verdict there and how its gap moved."""
    moved = {"grows": "grew", "holds": "held (intervals overlap)", "shrinks": "shrank"}
    if not trends:
        return ""
    count = support_count({t.key: t.verdict for t in trends})
    return " ".join([f"After {last_tokens:,} training tokens, {count} (sensitivity checks "
                     "shown, not counted)."] + [
        f"{t.claim}: “{t.verdict}” after {last_tokens:,} training tokens; "
        f"from the smallest budget to the largest its gap {moved[t.trend]}."
        for t in sorted(trends, key=lambda t: not t.counted)])


def curve_summary(cfg: Config | None, points: Sequence[CurvePoint],
                  trends: Sequence[ClaimTrend]) -> str:
    """The learning curve in a few sentences: its setting, then :func:`curve_sentence`;
    or why there is none (``cfg`` None: the config has no ``learning_curve``)."""
    if cfg is None or not points:
        return ("This config has no `learning_curve` section, so no learning curve was run "
                "(`make run CONFIG=configs/long.yaml` adds the default's, about 2 h 20 "
                "min on 2 CPU cores).")
    return (f"Each side trained at target L0 {cfg.sae.l0_targets[0]:g} with "
            f"{cfg.sae.seeds} seed(s) on {cfg.cache.n_tokens:,} cached tokens per corpus "
            f"and was scored at {', '.join(f'{p.tokens:,}' for p in points)} training "
            f"tokens ({budget_kind(cfg)}). {curve_sentence(trends, points[-1].tokens)}")


def budget_kind(cfg: Config) -> str:
    """How a curve's budgets below the last were trained, which says whether their spliced
    loss can be read (a snapshot taken before the learning-rate decay is not annealed)."""
    if cfg.train.snapshots_annealed:
        return "each budget a run of its own, decayed to its end"
    return ("the smaller budgets are snapshots of the longest run taken before its "
            "learning-rate decay, so read their ΔCE with care")
