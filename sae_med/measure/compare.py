"""Intervals that include training-seed variance: across-seed means, paired gaps, matched FVE.

A *family* is the SAEs trained on one corpus at one target L0, one per seed replicate. All
SAEs are scored on the same documents of an eval corpus, and their per-document sums let any
resample of documents be re-scored. Intervals are a **two-stage (hierarchical) percentile
bootstrap**: replicate b draws seed replicates with replacement, independently per training
corpus (initialisations are independent, so replicate r of one corpus has no partner in
another), then document groups with replacement (the split's unit:
:func:`~sae_med.measure.bootstrap.doc_resample`), one draw shared by every SAE, family, metric and
training corpus of the eval corpus (*paired* on documents). A family's value is the mean over
its drawn seeds of the metric on the drawn documents; a gap is first training corpus minus
another on the same document draw. A *step* is one family's change from a target L0 to the
next, on the same document and seed draws, so document difficulty cancels in its interval.
With one seed the interval is over document groups alone.

Comparisons at **matched FVE** interpolate each seed's sweep (metric against its FVE,
piecewise linear between target L0s) inside every bootstrap replicate, on a grid of FVE
values inside all sweeps' common range (NaN where a replicate's sweep does not reach).
Those replicates are left out of the interval and counted (``dropped`` of ``n_boot`` on
every family, gap and step), so a reader sees how much of the bootstrap a matched
comparison rests on. The same is done at **matched typical FVE** (basis ``fve_typical``,
the FVE without massive-activation tokens as the fidelity axis): a report beside the
pooled axis, which no claim judges.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from sae_med.artifacts import derived_seed
from sae_med.measure.bootstrap import LEVEL, Draws, Interval, finite_or_none, percentile_interval

log = logging.getLogger(__name__)

FVE_METRIC = "fve"
"""The fidelity axis of matched-FVE comparisons (centred FVE over all eval tokens)."""
TYPICAL_FVE_METRIC = "fve_typical"
"""The second fidelity axis: the FVE over typical tokens (no massive activation)."""
MATCHED_METRICS = ("l0", "delta_ce", "loss_recovered", "loss_recovered_mean", "kl_score",
                   "dark_matter.r2_error_mean", "dark_matter.r2_error_pooled",
                   "dark_matter.r2_norm", "dark_matter.fvu_linear",
                   "dark_matter.fvu_nonlinear", "dark_matter.fvu_sae")
"""Metrics also compared at matched FVE (when present)."""
Basis = Literal["l0_target", "fve", "fve_typical"]
MATCHED_AXES: Mapping[Basis, tuple[str, tuple[str, ...]]] = {
    "fve": (FVE_METRIC, MATCHED_METRICS),
    "fve_typical": (TYPICAL_FVE_METRIC, (FVE_METRIC, *MATCHED_METRICS))}
"""Matched bases: ``{basis: (the metric of its grid, the metrics compared on it)}``. At
matched typical FVE the pooled FVE is compared too: a pooled gap left at equal typical
FVE is carried by the massive-activation tokens."""
Verdict = Literal["supported", "not supported", "not separable from FVE",
                  "supported at the same L0; no common FVE range",
                  "not judged: SAEs below the quality bar"]
UNTESTED_AT_FVE: Verdict = "supported at the same L0; no common FVE range"
"""The verdict when a claim holds at every target L0 but the families' FVE sweeps do not
overlap, so it could not be tested at matched FVE."""
NOT_JUDGED: Verdict = "not judged: SAEs below the quality bar"
"""The verdict of every claim of a run whose domain SAEs fail the quality bar
(:func:`sae_med.report.claims.meets_quality_bar`): gaps between SAEs that wreck the model say
nothing about the domain."""
L0Trend = Literal["falls with L0", "rises with L0", "not resolved"]


# --------------------------------------------------------------------------------------
# Stage 1: seeds, and matched FVE
# --------------------------------------------------------------------------------------

def seed_draws(n_seeds: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_seeds) replicate indices drawn with replacement (one row per bootstrap
    replicate)."""
    return np.random.default_rng(seed).integers(n_seeds, size=(n_boot, n_seeds))


def seed_mean(per_seed: Sequence[Draws], draws: np.ndarray) -> Draws:
    """The across-seed mean: point = mean of the seeds' points; replicate b = mean over the
    seeds drawn in row b of their statistic on document resample b."""
    reps = np.stack([d.reps for d in per_seed], axis=1)  # (n_boot, seeds)
    rows = np.arange(reps.shape[0])[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return Draws(float(np.mean([d.point for d in per_seed])),
                     reps[rows, draws[:len(rows)]].mean(1))


def interpolate(fve: np.ndarray, metric: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``metric`` at each FVE of ``grid``, piecewise linear along one sweep's points
    (``fve``, ``metric``) sorted by FVE; NaN outside the sweep's FVE range or if any point
    is NaN."""
    ok = np.isfinite(fve) & np.isfinite(metric)
    if ok.sum() < 2 or not ok.all():
        return np.full(len(grid), np.nan)
    order = np.argsort(fve)
    x, y = fve[order], metric[order]
    out = np.interp(grid, x, y)
    out[(grid < x[0]) | (grid > x[-1])] = np.nan
    return out


def matched(sweep_fve: Sequence[Draws], sweep_metric: Sequence[Draws], grid: np.ndarray
            ) -> list[Draws]:
    """One seed's sweep (one Draws per target) interpolated to each FVE of ``grid``, on the
    point estimates and inside every bootstrap replicate."""
    fp = np.array([d.point for d in sweep_fve])
    mp = np.array([d.point for d in sweep_metric])
    point = interpolate(fp, mp, grid)
    fr = np.stack([d.reps for d in sweep_fve], axis=1)  # (n_boot, targets)
    mr = np.stack([d.reps for d in sweep_metric], axis=1)
    reps = np.stack([interpolate(f, m, grid) for f, m in zip(fr, mr, strict=True)]) \
        if len(fr) else np.zeros((0, len(grid)))
    return [Draws(float(point[g]), reps[:, g]) for g in range(len(grid))]


def fve_grid(sweeps: Sequence[Sequence[float]], n: int) -> np.ndarray:
    """``n`` FVE values evenly inside the range every sweep covers (midpoints of n equal
    bins of [max of minima, min of maxima]); empty when the ranges do not overlap."""
    lo = max(min(s) for s in sweeps)
    hi = min(max(s) for s in sweeps)
    if not hi > lo or n < 1:
        return np.zeros(0)
    return lo + (hi - lo) * (np.arange(n) + 0.5) / n


# --------------------------------------------------------------------------------------
# Families and gaps
# --------------------------------------------------------------------------------------

class SaeDraws(NamedTuple):
    """Every statistic of one SAE on one eval corpus (keys: the tidy metric names)."""

    train_corpus: str
    l0_target: float
    replicate: int
    draws: Mapping[str, Draws]


@dataclass(frozen=True)
class FamilyScore:
    """A family's across-seed mean of one metric, at a target L0 or at a matched FVE."""

    eval_corpus: str
    train_corpus: str
    metric: str
    basis: Basis
    at: float
    """The target L0 (basis ``l0_target``), the FVE (basis ``fve``) or the typical FVE
    (basis ``fve_typical``); in the dicts, the key named by the basis (the others None)."""
    interval: Interval
    seed_values: tuple[float | None, ...]
    """Each replicate's point value (in replicate order)."""
    n_boot: int = 0
    """Bootstrap replicates drawn."""
    dropped: int = 0
    """Replicates left out of the interval (NaN: at matched FVE, a drawn seed's sweep did
    not reach ``at`` in that replicate)."""

    def to_dict(self) -> dict[str, Any]:
        vals = [v for v in self.seed_values if v is not None]
        return {"row_type": "family", "eval_corpus": self.eval_corpus,
                "train_corpus": self.train_corpus, "metric": self.metric,
                **_position(self.basis, self.at), **self.interval.to_dict(),
                "n_seeds": len(self.seed_values), "seed_values": list(self.seed_values),
                "seed_sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                "n_boot": self.n_boot, "dropped": self.dropped}


@dataclass(frozen=True)
class Gap:
    """``train_corpus`` family minus ``versus`` family on the same documents (paired)."""

    eval_corpus: str
    train_corpus: str
    versus: str
    metric: str
    basis: Basis
    at: float
    interval: Interval
    n_boot: int = 0
    """Bootstrap replicates drawn."""
    dropped: int = 0
    """Replicates left out of the interval (NaN on either side: at matched FVE, a drawn
    sweep of either family did not reach ``at``)."""

    def to_dict(self) -> dict[str, Any]:
        return {"row_type": "gap", **{k: v for k, v in asdict(self).items()
                                      if k not in ("interval", "basis", "at")},
                **_position(self.basis, self.at), **self.interval.to_dict()}


@dataclass(frozen=True)
class Step:
    """One family's across-seed mean at ``to_target`` minus at ``from_target`` (the next
    target L0 of the sweep), on the same document and seed draws (paired)."""

    eval_corpus: str
    train_corpus: str
    metric: str
    from_target: float
    to_target: float
    interval: Interval
    n_boot: int = 0
    """Bootstrap replicates drawn."""
    dropped: int = 0
    """Replicates left out of the interval (NaN at either target)."""

    def to_dict(self) -> dict[str, Any]:
        return {"row_type": "step", **{k: v for k, v in asdict(self).items()
                                       if k != "interval"}, **self.interval.to_dict()}


def replicate_counts(d: Draws) -> dict[str, int]:
    """``n_boot`` and ``dropped`` of a row from its draws: the replicates, and those NaN
    (left out of its percentile interval)."""
    return {"n_boot": len(d.reps), "dropped": int(np.isnan(d.reps).sum())}


def _position(basis: Basis, at: float) -> dict[str, Any]:
    """The row's position: ``basis`` and one key per basis, ``at`` under its own."""
    return {"basis": basis, "l0_target": at if basis == "l0_target" else None,
            **{b: at if basis == b else None for b in MATCHED_AXES}}


FamilyKey = tuple[str, str, Basis, float]
"""A family's draws by (training corpus, metric, basis, target L0 or FVE)."""


class Comparison(NamedTuple):
    families: list[FamilyScore]
    gaps: list[Gap]
    steps: list[Step]
    draws: Mapping[FamilyKey, Draws] | None = None
    """Every family's draws (not written out): what :func:`contrasts` combines across eval
    corpora."""


def compare(saes: Sequence[SaeDraws], eval_corpus: str, train_corpora: Sequence[str],
            seed: int, level: float = LEVEL) -> Comparison:
    """Across-seed family scores and gaps (every training corpus minus each later one of
    ``train_corpora``) for every metric at every target L0, and at matched FVE and
    matched typical FVE for the metrics of :data:`MATCHED_AXES`; and each family's
    :class:`Step` between consecutive target L0s.

    Every :class:`SaeDraws` must come from one :class:`DocResample` of ``eval_corpus`` (same
    n_boot); seed replicates are drawn per training corpus with a generator derived from
    ``seed`` and the corpus name, shared by all its targets and metrics (and, given the
    same ``seed``, by every eval corpus: the same SAEs are drawn on each text, which
    :func:`contrasts` needs)."""
    corpora = [c for c in train_corpora if any(s.train_corpus == c for s in saes)]
    by: dict[tuple[str, float], list[SaeDraws]] = {}
    for s in sorted(saes, key=lambda s: s.replicate):
        by.setdefault((s.train_corpus, float(s.l0_target)), []).append(s)
    n_boot = next((len(d.reps) for s in saes for d in s.draws.values()), 0)
    targets = sorted({t for c, t in by if c in corpora})
    reps = {c: sorted({s.replicate for s in saes if s.train_corpus == c}) for c in corpora}
    draws = {c: seed_draws(len(reps[c]), n_boot, derived_seed(seed, "seeds", c))
             for c in corpora}
    fam: dict[FamilyKey, Draws] = {}
    families = []

    def add(c: str, metric: str, basis: Basis, at: float, per_seed: list[Draws]) -> None:
        d = seed_mean(per_seed, draws[c])
        fam[(c, metric, basis, at)] = d
        families.append(FamilyScore(eval_corpus, c, metric, basis, at,
                                    percentile_interval(d, level),
                                    tuple(finite_or_none(p.point) for p in per_seed),
                                    **replicate_counts(d)))

    metrics = sorted({m for s in saes for m in s.draws})
    for c in corpora:
        for t in targets:
            members = by.get((c, t), [])
            if len(members) != len(reps[c]):
                continue  # incomplete family: no mean over seeds
            for m in metrics:
                if all(m in s.draws for s in members):
                    add(c, m, "l0_target", t, [s.draws[m] for s in members])
    for basis, (axis, compared) in MATCHED_AXES.items():
        if axis not in metrics:
            continue
        grid = _matched_grid(by, corpora, reps, targets, axis)
        for c in corpora:
            for m in (m for m in compared if m in metrics):
                per_seed = [matched([by[(c, t)][i].draws[axis] for t in targets],
                                    [by[(c, t)][i].draws[m] for t in targets], grid)
                            for i in range(len(reps[c]))]
                for g, at in enumerate(grid):
                    add(c, m, basis, round(float(at), 6), [p[g] for p in per_seed])
    return Comparison(families, _gaps(fam, eval_corpus, corpora, level),
                      _steps(fam, eval_corpus, targets, level), fam)


def _gaps(fam: Mapping[FamilyKey, Draws], eval_corpus: str, corpora: Sequence[str],
          level: float) -> list[Gap]:
    """Every corpus's family minus each later corpus's, at the same basis and position
    (``fam``: :func:`compare`'s draws)."""
    gaps = []
    for (c, m, basis, at), d in fam.items():
        for other in corpora[corpora.index(c) + 1:]:
            if (o := fam.get((other, m, basis, at))) is not None:
                g = Draws(d.point - o.point, d.reps - o.reps)
                gaps.append(Gap(eval_corpus, c, other, m, basis, at,
                                percentile_interval(g, level), **replicate_counts(g)))
    return gaps


def _steps(fam: Mapping[FamilyKey, Draws], eval_corpus: str,
           targets: Sequence[float], level: float) -> list[Step]:
    """Every family's step from each of ``targets`` (sorted) to the next, at basis
    ``l0_target``, where both families are complete (``fam``: :func:`compare`'s draws).

    Every target of one training corpus shares its document resample and seed-draw rows,
    so the difference of the replicates is a paired bootstrap of the step. A missing
    family breaks the chain rather than being stepped over: a step always joins
    neighbours of the sweep."""
    following = dict(zip(targets[:-1], targets[1:], strict=True))
    out = []
    for (c, m, basis, at), d in fam.items():
        if basis != "l0_target" or at not in following:
            continue
        if (e := fam.get((c, m, basis, following[at]))) is not None:
            s = Draws(e.point - d.point, e.reps - d.reps)
            out.append(Step(eval_corpus, c, m, at, following[at],
                            percentile_interval(s, level), **replicate_counts(s)))
    return out


def _matched_grid(by: Mapping[tuple[str, float], list[SaeDraws]], corpora: Sequence[str],
                  reps: Mapping[str, list[int]], targets: Sequence[float],
                  axis: str = FVE_METRIC) -> np.ndarray:
    """The common grid of ``axis`` (one point per target) of every complete sweep, or
    empty."""
    if len(corpora) < 1 or len(targets) < 2:
        return np.zeros(0)
    sweeps = []
    for c in corpora:
        if any(len(by.get((c, t), [])) != len(reps[c])
               or any(axis not in s.draws for s in by[(c, t)]) for t in targets):
            return np.zeros(0)
        for i in range(len(reps[c])):
            sweeps.append([by[(c, t)][i].draws[axis].point for t in targets])
    if not all(np.isfinite(v) for s in sweeps for v in s):
        return np.zeros(0)
    grid = fve_grid(sweeps, len(targets))
    if len(grid) == 0:
        log.warning("the %s ranges of the sweeps do not overlap: no comparison at matched %s",
                    axis, axis)
    return grid


# --------------------------------------------------------------------------------------
# Contrasts: home advantages compared across eval corpora
# --------------------------------------------------------------------------------------

ContrastKind = Literal["did", "home_excess"]


@dataclass(frozen=True)
class Contrast:
    """A difference of two *home advantages*, each a paired gap on its own eval corpus.

    ``did`` (difference-in-differences): (``first`` − ``second`` SAE on ``first``'s text)
    − (``second`` − ``first`` SAE on ``second``'s text). ``home_excess``: (``first`` −
    ``reference`` on ``first``'s text) − (``second`` − ``reference`` on ``second``'s text).
    The two texts are different documents, resampled independently; the seed draws of a
    training corpus are shared by both (the same SAEs score both texts), so its seed
    variance enters once, not twice."""

    kind: ContrastKind
    first: str
    second: str
    reference: str | None
    metric: str
    basis: Basis
    at: float
    """The target L0 (basis ``l0_target``), or the FVE on ``first``'s text (basis ``fve``:
    each text's matched-FVE grid point of the same rank, ``grid_point``)."""
    interval: Interval
    fve_second: float | None = None
    """Basis ``fve``: the FVE of the grid point on ``second``'s text."""
    grid_point: int | None = None
    n_boot: int = 0
    dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"row_type": "contrast", **{k: v for k, v in asdict(self).items()
                                           if k not in ("interval", "basis", "at")},
                **_position(self.basis, self.at), **self.interval.to_dict()}


def contrasts(by_eval: Mapping[str, Comparison], train_corpora: Sequence[str],
              level: float = LEVEL) -> list[Contrast]:
    """Every contrast of :class:`Contrast` the comparisons allow: ``did`` for every pair of
    corpora that are both training and eval corpora (in ``train_corpora`` order), and
    ``home_excess`` of the first such corpus (the domain) over each later one but the
    second (the reference, the broad side). ``by_eval``: :func:`compare` per eval corpus,
    with its draws."""
    homes = [c for c in train_corpora if c in by_eval and by_eval[c].draws]
    specs = [("did", x, y, None) for i, x in enumerate(homes) for y in homes[i + 1:]]
    specs += [("home_excess", homes[0], z, homes[1]) for z in homes[2:]]
    return [c for kind, x, y, ref in specs
            for c in _contrast_rows(by_eval[x].draws, by_eval[y].draws, kind, x, y, ref,
                                    level)]


def _home(fam: Mapping[FamilyKey, Draws], own: str, other: str, metric: str, basis: Basis,
          at: float) -> Draws | None:
    """``own`` minus ``other`` family on the text of ``fam`` (None if either is missing)."""
    a, b = fam.get((own, metric, basis, at)), fam.get((other, metric, basis, at))
    return None if a is None or b is None else Draws(a.point - b.point, a.reps - b.reps)


def _paired_positions(fx: Mapping[FamilyKey, Draws], fy: Mapping[FamilyKey, Draws],
                      basis: Basis) -> list[tuple[float, float]]:
    """Positions compared across two texts: the same target L0s; or the matched-FVE grid
    points of equal rank (each text has its own FVE range), when the grids are as long."""
    px, py = ({at for (_, _, b, at) in f if b == basis} for f in (fx, fy))
    if basis == "l0_target":
        return [(a, a) for a in sorted(px & py)]
    return list(zip(sorted(px), sorted(py), strict=True)) if len(px) == len(py) else []


def _contrast_rows(fx: Mapping[FamilyKey, Draws], fy: Mapping[FamilyKey, Draws],
                   kind: ContrastKind, x: str, y: str, ref: str | None, level: float
                   ) -> list[Contrast]:
    """The :class:`Contrast` rows of one (kind, first, second) at every metric and position
    both texts have."""
    rows = []
    for basis in ("l0_target", "fve"):
        metrics = sorted({m for (_, m, b, _) in fx if b == basis})
        for rank, (ax, ay) in enumerate(_paired_positions(fx, fy, basis)):
            for m in metrics:
                hx = _home(fx, x, ref or y, m, basis, ax)
                hy = _home(fy, y, ref or x, m, basis, ay)
                if hx is None or hy is None:
                    continue
                d = Draws(hx.point - hy.point, hx.reps - hy.reps)
                matched = basis == "fve"
                rows.append(Contrast(kind, x, y, ref, m, basis, ax,
                                     percentile_interval(d, level),
                                     ay if matched else None, rank if matched else None,
                                     **replicate_counts(d)))
    return rows


# --------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------

def verdict(at_l0: Sequence[Interval], at_fve: Sequence[Interval] | None = None,
            sign: int = 1) -> Verdict:
    """A claim "the first family is better" (``sign`` +1: larger is better, -1: smaller).

    ``supported``: every gap interval at the target L0s excludes 0 on the claimed side and,
    when ``at_fve`` is given, so does every gap at matched FVE. ``not separable from FVE``:
    true at every target L0 but not at every matched FVE. ``supported at the same L0; no
    common FVE range``: true at every target L0, and no matched-FVE gap has an interval
    (the two families' FVE sweeps do not overlap, or every replicate of each grid point
    fell outside the other family's range): the matched test could not be run. A grid
    point without an interval is untested, not a failure, so only the others are judged.
    ``not supported``: otherwise (including no intervals at all)."""
    def holds(ivs: Sequence[Interval]) -> bool:
        return bool(ivs) and all(iv.excludes_zero and sign * iv.value > 0 for iv in ivs)

    if not holds(at_l0):
        return "not supported"
    if at_fve is None:
        return "supported"
    tested = [iv for iv in at_fve if iv.low is not None and iv.high is not None]
    if not tested:
        return UNTESTED_AT_FVE
    return "supported" if holds(tested) else "not separable from FVE"


def trend_verdict(steps: Sequence[Interval]) -> L0Trend:
    """Whether a metric moves one way as the target L0 rises, from one family's
    :class:`Step` intervals (in target order): ``falls with L0`` when every interval lies
    below 0, ``rises with L0`` when every one lies above 0, ``not resolved`` otherwise,
    including no steps (one unresolved step leaves the sweep possibly flat there)."""
    if steps and all(iv.high is not None and iv.high < 0 for iv in steps):
        return "falls with L0"
    if steps and all(iv.low is not None and iv.low > 0 for iv in steps):
        return "rises with L0"
    return "not resolved"
