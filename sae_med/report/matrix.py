"""The architecture matrix (``configs/matrix.yaml``) in tables: per SAE architecture and
model, the domain SAE's gaps on domain text against the broad and the mixed SAE at every
target L0, and a verdict per architecture by the rule of :func:`cell_verdict` and
:func:`architecture_verdict` (stated in book/method.md before any real run, frozen by
:data:`MATRIX_RULE`'s version)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from sae_med.artifacts import stable_hash
from sae_med.layout import RESULTS_NAME
from sae_med.measure.bootstrap import Interval
from sae_med.measure.results import load_comparisons
from sae_med.report.claims import (
    DCE_BAR_NATS,
    bar_dce,
    judging_code,
    meets_quality_bar,
    model_label,
    oriented_gaps,
    row_intervals,
)
from sae_med.report.notebook import interval_cell, note_frame

if TYPE_CHECKING:
    from sae_med.config import Config
    from sae_med.measure.results import ComparisonTables

MATRIX_CONFIG = "configs/matrix.yaml"
MATRIX_COMMAND = f"sae-med experiment {MATRIX_CONFIG}"
METRIC_NAMES = {"fve_typical": "typical-token FVE", "delta_ce": "ΔCE",
                "dark_matter.r2_error_mean": "R²(e)"}
"""How the tables name each metric the matrix and the width axis judge."""
HOLDS, REVERSES, FAILS = "holds", "reverses", "fails"
NOT_JUDGED = "not judged"
"""The run's domain SAEs fail the quality bar (:func:`~sae_med.report.claims.
meets_quality_bar`): their gaps say nothing about the domain."""
NO_RESULTS = "no results"
"""The run has no results file yet."""
ALL_METRICS = "all metrics"
"""The key of :func:`architecture_verdicts` judged over every metric together."""


class MatrixRule(NamedTuple):
    """The matrix's rule (:func:`cell_verdict`, :func:`architecture_verdicts`), declared (on
    the method page too) before any run it judges. A change of a field, of the quality bar
    or of the judging code needs a new ``version`` (``tests/report/test_frozen_rules_axes.py``
    records each version's fingerprint, :func:`matrix_rule_fingerprint`)."""

    version: int
    signs: tuple[tuple[str, int], ...]
    """(metric, sign) of each gap judged, in table order; ``sign`` is the paper's side: +1
    where a larger value favours the domain SAE (it explains more variance), -1 where a
    smaller one does (less loss when spliced in, a less linearly predictable error)."""
    versus: tuple[str, ...]
    """The SAEs the domain SAE is set against on domain text."""


MATRIX_RULE = MatrixRule(version=2, signs=(("fve_typical", 1), ("delta_ce", -1),
                                           ("dark_matter.r2_error_mean", -1)),
                         versus=("broad", "mixed_10"))


class MatrixRun(NamedTuple):
    """One cell run of the matrix: an architecture on a model, and its comparisons (None
    while the run has no results)."""

    architecture: str
    model: str
    run: str
    comparisons: ComparisonTables | None
    targets: tuple[float, ...] = ()
    """The run's declared target L0s (``sae.l0_targets``): each is judged, a missing row as
    a missing interval."""


NO_INTERVAL = Interval(float("nan"), None, None)
"""A declared target's or width's gap that the results do not hold."""


class MatrixCell(NamedTuple):
    """The domain SAE minus the ``versus`` SAE on domain text, one metric, one run."""

    architecture: str
    model: str
    versus: str
    metric: str
    gaps: dict[float, Interval]
    """Target L0 -> the gap's 95% interval (empty without results)."""
    verdict: str


def matrix_configs(cfg: Config) -> list[Config]:
    """The matrix's runs: ``cfg`` and each of its replications, in config order."""
    return [cfg, *cfg.replication_configs().values()]


def read_matrix(cfg: Config) -> list[MatrixRun]:
    """Every run of :func:`matrix_configs` with its results file's comparisons, if any."""
    runs = []
    for c in matrix_configs(cfg):
        path = c.run_path / RESULTS_NAME
        runs.append(MatrixRun(c.sae.architecture, model_label(c), c.name,
                              load_comparisons(path) if path.exists() else None,
                              tuple(map(float, c.sae.l0_targets))))
    return runs


def runs_note(label: str, missing: Sequence[str], total: int, command: str,
              where: str = "runs") -> str:
    """What a chapter says of the side runs it reads (``missing``: those of ``total``
    without a results file under ``where``): all present, some missing, or none made yet,
    with the command that makes them."""
    if not missing:
        return f"The {label} read from its {total} runs under {where}/."
    if len(missing) == total:
        return (f"The {label} has not been run here (none of its {total} runs has a results "
                f"file under {where}/): `{command}` produces them.")
    return (f"{len(missing)} of the {label}'s {total} runs "
            f"{'has' if len(missing) == 1 else 'have'} no results yet "
            f"({', '.join(missing)}): `{command}` makes them, reusing the finished ones; "
            "their cells read 'no results' until then.")


def cell_verdict(gaps: Sequence[Interval], sign: int) -> str:
    """The rule for one architecture, model, comparison and metric, over its target L0s:
    ``holds`` when every target's 95% interval lies on the paper's side of 0 (``sign``),
    ``reverses`` when every one lies on the other side, ``fails`` otherwise (an interval
    holding 0, targets that disagree, a missing interval, or no gaps at all)."""
    def side(iv: Interval) -> int:
        if iv.low is None or iv.high is None:
            return 0
        return sign if sign * iv.low > 0 and sign * iv.high > 0 else (
            -sign if sign * iv.low < 0 and sign * iv.high < 0 else 0)

    sides = {side(iv) for iv in gaps}
    if sides == {sign}:
        return HOLDS
    return REVERSES if sides == {-sign} else FAILS


def architecture_verdict(verdicts: Sequence[str]) -> str:
    """One architecture's verdict from its cells' (every model, and every metric when
    several are given): ``no results`` while any run is missing, ``not judged`` when any
    run's SAEs fail the quality bar, ``holds`` or ``reverses`` when every cell says so,
    ``fails`` otherwise."""
    if not verdicts or NO_RESULTS in verdicts:
        return NO_RESULTS
    if NOT_JUDGED in verdicts:
        return NOT_JUDGED
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return REVERSES if all(v == REVERSES for v in verdicts) else FAILS


def _run_cells(run: MatrixRun, domain: str, versus: str, rule: MatrixRule
               ) -> list[MatrixCell]:
    cells = []
    for metric, sign in rule.signs:
        if run.comparisons is None:
            cells.append(MatrixCell(run.architecture, run.model, versus, metric, {},
                                    NO_RESULTS))
            continue
        g = oriented_gaps(run.comparisons.gaps, domain, versus)
        sel = g[(g.basis == "l0_target") & (g.eval_corpus == domain)
                & (g.metric == metric)].sort_values("l0_target")
        found = dict(zip(map(float, sel.l0_target), row_intervals(sel), strict=True))
        gaps = {t: found.get(t, NO_INTERVAL) for t in run.targets or found}
        verdict = (cell_verdict(list(gaps.values()), sign)
                   if meets_quality_bar(run.comparisons.families, domain) else NOT_JUDGED)
        cells.append(MatrixCell(run.architecture, run.model, versus, metric, gaps, verdict))
    return cells


def matrix_cells(runs: Sequence[MatrixRun], domain: str = "medical",
                 rule: MatrixRule = MATRIX_RULE) -> list[MatrixCell]:
    """Every run's cells against each of ``rule.versus`` (the domain SAE minus that SAE on
    ``domain`` text), in run, comparison and ``rule.signs`` order."""
    return [c for run in runs for other in rule.versus
            for c in _run_cells(run, domain, other, rule)]


def architecture_verdicts(cells: Sequence[MatrixCell], architecture: str, versus: str,
                          rule: MatrixRule = MATRIX_RULE) -> dict[str, str]:
    """:func:`architecture_verdict` of ``architecture`` against ``versus`` over the models:
    per metric of ``rule.signs``, and over every metric together (:data:`ALL_METRICS`)."""
    mine = [c for c in cells if (c.architecture, c.versus) == (architecture, versus)]
    out = {m: architecture_verdict([c.verdict for c in mine if c.metric == m])
           for m, _ in rule.signs}
    return {**out, ALL_METRICS: architecture_verdict([c.verdict for c in mine])}


def matrix_rule_fingerprint(rule: MatrixRule = MATRIX_RULE) -> str:
    """A hash of everything that decides the matrix's verdicts: the rule's fields, the
    quality bar and the code that judges (not the rule's version)."""
    fields = {k: v for k, v in rule._asdict().items() if k != "version"}
    code = (cell_verdict, architecture_verdict, architecture_verdicts, _run_cells,
            matrix_cells, meets_quality_bar, bar_dce, oriented_gaps, row_intervals)
    return stable_hash({"rule": fields, "bar_nats": DCE_BAR_NATS,
                        "code": [judging_code(f) for f in code]})


def gap_table(cells: Sequence[MatrixCell], domain: str = "medical") -> Any:
    """One line per architecture, model, comparison and metric: the gap at each target
    L0, "value [low, high]", and the cell's verdict."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    targets = sorted({t for c in cells for t in c.gaps})
    return pd.DataFrame([{
        "architecture": c.architecture, "model": c.model,
        "gap": f"{domain} − {c.versus}", "metric": METRIC_NAMES[c.metric],
        **{f"L0 {t:g}": interval_cell(c.gaps[t], 3) if t in c.gaps else "—"
           for t in targets},
        "verdict": c.verdict} for c in cells])


def verdict_table(cells: Sequence[MatrixCell], domain: str = "medical", note: str = ""
                  ) -> Any:
    """One line per architecture and comparison: :func:`architecture_verdicts` of each
    metric over the models, and of all metrics together; with no cells (the matrix not
    run), a one-cell table of ``note`` (what to run), so the results page can always quote
    it."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    if not cells:
        return note_frame(note)
    rows = []
    for arch, versus in dict.fromkeys((c.architecture, c.versus) for c in cells):
        verdicts = architecture_verdicts(cells, arch, versus)
        models = {c.model for c in cells if (c.architecture, c.versus) == (arch, versus)}
        rows.append({"architecture": arch, "gap": f"{domain} − {versus}",
                     "models": len(models),
                     **{METRIC_NAMES[m]: verdicts[m] for m, _ in MATRIX_RULE.signs},
                     "all three": verdicts[ALL_METRICS]})
    return pd.DataFrame(rows)
