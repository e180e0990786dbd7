"""Controls read across two runs: how large a gap is on a control run against the main run.

The random-weights control (``configs/random_weights.yaml``) trains the same SAE families
on a model whose weights were redrawn; its medical − broad gap is set against the trained
model's gap at the same target L0 as a ratio. The two runs are scored apart, so no paired
bootstrap joins them: the ratio's interval treats the two gap intervals as independent
normals. Both gaps are measured on the same held-out documents, so they are positively
correlated, and ignoring that widens the interval: it is conservative.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

Z95 = 1.959963984540054


class Interval(NamedTuple):
    """A point estimate with its 95% interval."""

    value: float
    low: float
    high: float


class GapRatio(NamedTuple):
    """``control`` / ``main`` with a 95% interval (None where ``main``'s interval holds 0:
    the ratio is unbounded there)."""

    ratio: float
    low: float | None
    high: float | None


def gap_ratio(control: Interval, main: Interval, n_draws: int = 200_000, seed: int = 0
              ) -> GapRatio:
    """The ratio of two gaps, its interval from draws of independent normals whose standard
    errors are each interval's half-width / 1.96 (percentiles of the ratio of the draws)."""
    ratio = control.value / main.value if main.value else float("nan")
    if main.low <= 0 <= main.high:
        return GapRatio(ratio, None, None)
    rng = np.random.default_rng(seed)

    def draws(g: Interval) -> np.ndarray:
        return rng.normal(g.value, (g.high - g.low) / (2 * Z95), n_draws)

    low, high = np.percentile(draws(control) / draws(main), [2.5, 97.5])
    return GapRatio(ratio, float(low), float(high))


def control_verdict(r: GapRatio) -> str:
    """The random-weights rule, fixed before its run: ``as large without training`` when
    the ratio's interval reaches 1 (the gap on random weights is not detectably smaller:
    token statistics suffice), ``smaller without training`` when it lies below 1, ``no
    interval`` when the trained model's gap interval holds 0."""
    if r.low is None or r.high is None:
        return "no interval"
    return "smaller without training" if r.high < 1.0 else "as large without training"
