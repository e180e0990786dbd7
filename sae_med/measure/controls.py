"""Controls read across two runs: how large a gap is on a control run against the main run.

The random-weights control (``configs/random_weights.yaml``) trains the same SAE families
on a model whose weights were redrawn; its medical − broad gap is set against the trained
model's gap at the same target L0 as a ratio. The two runs are scored apart, so no paired
bootstrap joins them: the ratio's interval treats the two gap intervals as independent
normals. Both gaps are measured on the same held-out documents, so they are positively
correlated, and ignoring that widens the interval: it is conservative.
"""

from __future__ import annotations

import numpy as np

from sae_med.measure.bootstrap import Interval

Z95 = 1.959963984540054


def gap_ratio(control: Interval, main: Interval, n_draws: int = 200_000, seed: int = 0
              ) -> Interval:
    """``control`` / ``main`` with a 95% interval: percentiles of the ratio of draws of
    independent normals whose standard errors are each interval's half-width / 1.96. No
    interval (None) where either has none or ``main``'s holds 0 (the ratio is unbounded)."""
    ratio = control.value / main.value if main.value else float("nan")
    if None in (control.low, control.high, main.low, main.high) or (
            main.low <= 0 <= main.high):
        return Interval(ratio, None, None)
    rng = np.random.default_rng(seed)

    def draws(g: Interval) -> np.ndarray:
        return rng.normal(g.value, (g.high - g.low) / (2 * Z95), n_draws)

    low, high = np.percentile(draws(control) / draws(main), [2.5, 97.5])
    return Interval(ratio, float(low), float(high))


def control_verdict(ratio: Interval) -> str:
    """The random-weights rule, fixed before its run: ``as large without training`` when
    the ratio's interval reaches 1 (the gap on random weights is not detectably smaller:
    token statistics suffice), ``smaller without training`` when it lies below 1, ``no
    interval`` when the trained model's gap interval holds 0."""
    if ratio.low is None or ratio.high is None:
        return "no interval"
    return "smaller without training" if ratio.high < 1.0 else "as large without training"
