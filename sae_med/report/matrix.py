"""The architecture matrix (``configs/matrix.yaml``) in tables: per SAE architecture and
model, the domain SAE's gaps on domain text against the broad and the mixed SAE at every
target L0, and a verdict per architecture by the rule of :func:`cell_verdict` and
:func:`architecture_verdict` (stated in book/method.md before any real run)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from sae_med.layout import RESULTS_NAME
from sae_med.measure.bootstrap import Interval
from sae_med.measure.results import load_comparisons
from sae_med.report.claims import meets_quality_bar, model_label, oriented_gaps, row_intervals
from sae_med.report.notebook import interval_cell

if TYPE_CHECKING:
    from sae_med.config import Config
    from sae_med.measure.results import ComparisonTables

MATRIX_CONFIG = "configs/matrix.yaml"
MATRIX_COMMAND = f"sae-med experiment {MATRIX_CONFIG}"
MATRIX_METRICS = (("fve_typical", "typical-token FVE", 1), ("delta_ce", "ΔCE", -1),
                  ("dark_matter.r2_error_mean", "R²(e)", -1))
"""(metric, name, sign) of each gap the matrix judges; ``sign`` is the paper's side: +1
where a larger value favours the domain SAE (it explains more variance), -1 where a
smaller one does (less loss when spliced in, a less linearly predictable error)."""
HOLDS, REVERSES, FAILS = "holds", "reverses", "fails"
NOT_JUDGED = "not judged"
"""The run's domain SAEs fail the quality bar (:func:`~sae_med.report.claims.
meets_quality_bar`): their gaps say nothing about the domain."""
NO_RESULTS = "no results"
"""The run has no results file yet."""


class MatrixRun(NamedTuple):
    """One cell run of the matrix: an architecture on a model, and its comparisons (None
    while the run has no results)."""

    architecture: str
    model: str
    run: str
    comparisons: ComparisonTables | None


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
                              load_comparisons(path) if path.exists() else None))
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


def _run_cells(run: MatrixRun, domain: str, versus: str) -> list[MatrixCell]:
    cells = []
    for metric, _, sign in MATRIX_METRICS:
        if run.comparisons is None:
            cells.append(MatrixCell(run.architecture, run.model, versus, metric, {},
                                    NO_RESULTS))
            continue
        g = oriented_gaps(run.comparisons.gaps, domain, versus)
        sel = g[(g.basis == "l0_target") & (g.eval_corpus == domain)
                & (g.metric == metric)].sort_values("l0_target")
        gaps = dict(zip(map(float, sel.l0_target), row_intervals(sel), strict=True))
        verdict = (cell_verdict(list(gaps.values()), sign)
                   if meets_quality_bar(run.comparisons.families, domain) else NOT_JUDGED)
        cells.append(MatrixCell(run.architecture, run.model, versus, metric, gaps, verdict))
    return cells


def matrix_cells(runs: Sequence[MatrixRun], domain: str = "medical",
                 versus: Sequence[str] = ("broad", "mixed_10")) -> list[MatrixCell]:
    """Every run's cells against each of ``versus`` (the domain SAE minus that SAE on
    ``domain`` text), in run, comparison and :data:`MATRIX_METRICS` order."""
    return [c for run in runs for other in versus for c in _run_cells(run, domain, other)]


def gap_table(cells: Sequence[MatrixCell], domain: str = "medical") -> Any:
    """One line per architecture, model, comparison and metric: the gap at each target
    L0, "value [low, high]", and the cell's verdict."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    names = {m: n for m, n, _ in MATRIX_METRICS}
    targets = sorted({t for c in cells for t in c.gaps})
    return pd.DataFrame([{
        "architecture": c.architecture, "model": c.model,
        "gap": f"{domain} − {c.versus}", "metric": names[c.metric],
        **{f"L0 {t:g}": interval_cell(c.gaps[t], 3) if t in c.gaps else "—"
           for t in targets},
        "verdict": c.verdict} for c in cells])


def verdict_table(cells: Sequence[MatrixCell], domain: str = "medical") -> Any:
    """One line per architecture and comparison: :func:`architecture_verdict` of each
    metric over the models, and of all metrics together."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    rows = []
    keys = dict.fromkeys((c.architecture, c.versus) for c in cells)
    for arch, versus in keys:
        mine = [c for c in cells if (c.architecture, c.versus) == (arch, versus)]
        row = {"architecture": arch, "gap": f"{domain} − {versus}",
               "models": len({c.model for c in mine})}
        for metric, name, _ in MATRIX_METRICS:
            row[name] = architecture_verdict([c.verdict for c in mine if c.metric == metric])
        row["all three"] = architecture_verdict([c.verdict for c in mine])
        rows.append(row)
    return pd.DataFrame(rows)
