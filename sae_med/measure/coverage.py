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
from dataclasses import dataclass, replace
from typing import NamedTuple

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
