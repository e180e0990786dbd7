"""The random-weights control in tables and sentences (issue 32): each side's home
advantage on the trained model against the same on a model whose weights were redrawn
(``configs/random_weights.yaml``), as a ratio with the verdict of
:func:`sae_med.measure.controls.control_verdict`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from sae_med.measure.bootstrap import Interval
from sae_med.measure.controls import control_verdict, gap_ratio
from sae_med.report.claims import oriented_gaps, row_intervals

if TYPE_CHECKING:
    from sae_med.measure.results import ComparisonTables

RANDOM_WEIGHTS_CONFIG = "configs/random_weights.yaml"
RANDOM_WEIGHTS_COMMAND = f"sae-med run {RANDOM_WEIGHTS_CONFIG}"
CONTROL_METRICS = ("fve_typical", "fve", "delta_ce", "dark_matter.r2_error_mean")
VERDICT_METRICS = ("fve_typical", "delta_ce")
"""The metrics whose verdicts the results page shows."""


class ControlRow(NamedTuple):
    """One home advantage (``own`` SAE minus ``other`` on ``own`` text) on both models."""

    l0_target: float
    own: str
    other: str
    metric: str
    trained: Interval
    random: Interval
    ratio: Interval

    @property
    def verdict(self) -> str:
        return control_verdict(self.ratio)


def _gap(gaps: Any, own: str, other: str, metric: str, target: float) -> Interval | None:
    g = oriented_gaps(gaps, own, other)
    row = g[(g.basis == "l0_target") & (g.eval_corpus == own) & (g.metric == metric)
            & (g.l0_target == target)]
    return None if row.empty else row_intervals(row)[0]


def control_rows(random: ComparisonTables, trained: ComparisonTables, domain: str,
                 broad: str, metrics: tuple[str, ...] = CONTROL_METRICS) -> list[ControlRow]:
    """Both sides' home advantages at every target L0 the two runs share."""
    targets = sorted(set(random.gaps.l0_target.dropna()) & set(trained.gaps.l0_target.dropna()))
    rows = []
    for t in targets:
        for own, other in ((domain, broad), (broad, domain)):
            for m in metrics:
                r, g = _gap(random.gaps, own, other, m, t), _gap(trained.gaps, own, other, m, t)
                if r is not None and g is not None:
                    rows.append(ControlRow(t, own, other, m, g, r, gap_ratio(r, g)))
    return rows


def _cell(g: Interval, fmt: str = "+.3f") -> str:
    span = "" if g.low is None else f" [{g.low:{fmt}}, {g.high:{fmt}}]"
    return f"{g.value:{fmt}}{span}"


def control_table(rows: list[ControlRow]) -> Any:
    """One line per row: the trained and random-weights advantages, ratio and verdict."""
    # deferred: pandas takes ~0.5 s to import; only the table needs it
    import pandas as pd

    return pd.DataFrame([{
        "target L0": r.l0_target, "home advantage": f"{r.own} SAE − {r.other} SAE on "
        f"{r.own} text", "metric": r.metric, "trained weights": _cell(r.trained),
        "random weights": _cell(r.random), "ratio": _cell(r.ratio, ".2f"),
        "verdict": r.verdict} for r in rows])


def control_verdicts(rows: list[ControlRow] | None, domain: str, note: str
                     ) -> dict[str, str]:
    """The results page's rows, ``{verdict_random_<metric>: text}``: the domain side's
    verdict at each target L0, or ``note`` (why there is none) without the run."""
    out = {}
    for m in VERDICT_METRICS:
        mine = [r for r in rows or [] if r.own == domain and r.metric == m]
        out[f"verdict_random_{m}"] = "; ".join(
            f"{r.verdict} (ratio {_cell(r.ratio, '.2f')} at L0 {r.l0_target:g})"
            for r in mine) or note
    return out
