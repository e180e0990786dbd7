"""Does a nominal 95% interval cover the truth? A simulation on clustered documents.

Two families of SAEs (``n_seeds`` seeds each) are scored on the same documents. A
document's score is its difficulty (shared by every SAE, so it cancels in the paired
gap), plus, for the first family, the true gap and the document's own advantage, which is
correlated within its group (``rho``: some groups favour the domain SAE more); each SAE
adds its seed's effect and a little noise. The gap's interval comes from the package's own
path (:func:`~sae_med.measure.bootstrap.doc_resample` over groups, then
:func:`~sae_med.measure.compare.compare`: seeds, then documents), so the coverage measured is that
of the intervals the results report.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch

from sae_med.measure.bootstrap import LEVEL, Draws, Interval, doc_resample
from sae_med.measure.compare import SaeDraws, compare


@dataclass(frozen=True)
class CoverageSetup:
    """One simulated evaluation (scores in units of the per-document advantage's sd)."""

    n_groups: int = 130
    """Groups of the evaluation set (the split's unit)."""
    group_size: int = 15
    """Documents per group (an ICD-10-CM category holds ~15)."""
    rho: float = 0.3
    """Correlation of two documents' advantages inside one group."""
    gap: float = 0.1
    """The true gap: the first family's mean advantage over all documents and seeds."""
    n_seeds: int = 3
    """Seed replicates per family."""
    seed_sd: float = 0.0
    """Sd of one SAE's seed effect on its mean score."""
    noise_sd: float = 0.05
    """Sd of one SAE's own per-document noise."""
    n_boot: int = 2000
    grouped: bool = True
    """Resample groups (the package's unit); False: single documents."""

    def __post_init__(self) -> None:
        if self.n_groups < 2 or self.group_size < 1 or self.n_seeds < 1:
            raise ValueError("coverage needs >= 2 groups, >= 1 document each, >= 1 seed")
        if not 0 <= self.rho < 1:
            raise ValueError(f"rho must lie in [0, 1), got {self.rho}")


class Coverage(NamedTuple):
    """How often the intervals of ``runs`` simulations held the true gap."""

    covered: int
    runs: int
    mean_width: float

    @property
    def rate(self) -> float:
        return self.covered / self.runs

    @property
    def standard_error(self) -> float:
        """Binomial standard error of :attr:`rate`."""
        return math.sqrt(self.rate * (1 - self.rate) / self.runs)


def simulate_gap(setup: CoverageSetup, rng: np.random.Generator) -> Interval:
    """One simulated evaluation's gap interval (first family minus second)."""
    n = setup.n_groups * setup.group_size
    group = np.repeat(np.arange(setup.n_groups), setup.group_size)
    advantage = setup.gap + rng.normal(0, math.sqrt(setup.rho), setup.n_groups)[group] \
        + rng.normal(0, math.sqrt(1 - setup.rho), n)
    difficulty = rng.normal(0, 1, n)
    resample = doc_resample([torch.arange(n)], setup.n_boot, int(rng.integers(2**62)),
                            torch.from_numpy(group) if setup.grouped else None)
    counts = resample.counts.numpy()  # (n_boot, docs)
    saes = []
    for corpus, shift in (("first", advantage), ("second", 0.0)):
        for r in range(setup.n_seeds):
            x = difficulty + shift + rng.normal(0, setup.seed_sd) \
                + rng.normal(0, setup.noise_sd, n)
            saes.append(SaeDraws(corpus, 1.0, r, {"score": Draws(
                float(x.mean()), counts @ x / counts.sum(1))}))
    out = compare(saes, "eval", ("first", "second"), int(rng.integers(2**62)), LEVEL)
    [gap] = [g.interval for g in out.gaps if g.metric == "score"]
    return gap


def coverage(setup: CoverageSetup, runs: int, seed: int = 0) -> Coverage:
    """The share of ``runs`` simulations whose interval holds ``setup.gap``."""
    rng = np.random.default_rng(seed)
    ivs = [simulate_gap(setup, rng) for _ in range(runs)]
    covered = sum(iv.low is not None and iv.high is not None and iv.low <= setup.gap <= iv.high
                  for iv in ivs)
    return Coverage(covered, runs, float(np.mean([iv.high - iv.low for iv in ivs])))


def by_document(setup: CoverageSetup) -> CoverageSetup:
    """``setup`` resampling single documents instead of groups (the old unit)."""
    return replace(setup, grouped=False)


def seed_ratio(seed_sds: tuple[float, float], n_seeds: int, low: float, high: float,
               level: float = LEVEL) -> float:
    """A real gap's seed effect in units of its documents' standard error: the quantity
    the coverage table's rows are indexed by (``seed_sd`` against √(ρ/130 + (1 − ρ)/1950)
    ≈ 0.05), estimated from the two families' seed sds and the gap's interval.

    The interval's half-width over z is the gap's whole standard error; the seeds' part
    of its variance, (sd₁² + sd₂²) / n, is taken out to leave the documents' part. ``inf``
    where the seeds account for all of it (the interval is then seed-dominated by any
    measure). An estimate, for choosing a seed count, not a statistic to judge by."""
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    total = ((high - low) / (2 * z)) ** 2
    seeds = (seed_sds[0] ** 2 + seed_sds[1] ** 2) / n_seeds
    per_sae = math.sqrt((seed_sds[0] ** 2 + seed_sds[1] ** 2) / 2)
    if total <= seeds:
        return math.inf
    return per_sae / math.sqrt(total - seeds)


SEED_SHARE_METRICS = ("fve", "fve_typical", "delta_ce", "loss_recovered",
                      "dark_matter.r2_error_mean")
"""The metrics the claims judge."""


class SeedShare(NamedTuple):
    eval_corpus: str
    pair: str
    l0_target: float
    metric: str
    n_seeds: int
    seed_sd: float
    """Per SAE: the root mean square of the two families' seed sds."""
    ratio: float


def seed_shares(doc: Mapping[str, Any]) -> list[SeedShare]:
    """One :class:`SeedShare` per gap at a target L0 on :data:`SEED_SHARE_METRICS` whose families
    have at least two seeds."""
    fam = {(f["train_corpus"], f["eval_corpus"], f["l0_target"], f["metric"]): f
           for f in doc["families"] if f["basis"] == "l0_target"}
    out = []
    for g in doc["gaps"]:
        if g["basis"] != "l0_target" or g["metric"] not in SEED_SHARE_METRICS or g["low"] is None:
            continue
        a, b = (fam.get((c, g["eval_corpus"], g["l0_target"], g["metric"]))
                for c in (g["train_corpus"], g["versus"]))
        if a is None or b is None or min(a["n_seeds"], b["n_seeds"]) < 2:
            continue
        sds, n = (a["seed_sd"], b["seed_sd"]), min(a["n_seeds"], b["n_seeds"])
        out.append(SeedShare(g["eval_corpus"], f"{g['train_corpus']} − {g['versus']}",
                             g["l0_target"], g["metric"], n,
                             ((sds[0] ** 2 + sds[1] ** 2) / 2) ** 0.5,
                             seed_ratio(sds, n, g["low"], g["high"])))
    return out
