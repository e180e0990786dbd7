"""Controls read across two runs: how large a gap is on a control run against the main run.

The random-weights control (``configs/random_weights.yaml``) trains the same SAE families
on a model whose weights were redrawn; its medical − broad gap is set against the trained
model's gap at the same target L0 as a ratio. The two runs are scored apart, so no paired
bootstrap joins them: the ratio's interval treats the two gap intervals as independent
normals. Both gaps are measured on the same held-out documents, so they are positively
correlated, and ignoring that widens the interval: it is conservative.

A loss-based row (ΔCE and kin) is judged only where the random model has loss to lose
(:data:`LOSS_RULE`): a model that predicts nothing cannot be hurt by a splice, so its ΔCE
gap is ~0 whatever the SAEs are, and the ratio says nothing about token statistics.
"""

from __future__ import annotations

import math
from typing import NamedTuple

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


class LossRule(NamedTuple):
    """When a model has loss to lose: the gate on loss-based control rows, declared (on the
    method page too) before any run it judges. A change of a margin, of
    :data:`LOSS_METRICS` or of the judging code needs a new ``version``
    (``tests/report/test_random_weights_rule.py`` records each version's fingerprint,
    :func:`sae_med.report.random_weights.control_rule_fingerprint`)."""

    version: int
    below_uniform_nats: float
    """The clean CE must lie at least this far below ln(vocabulary size), the CE of a
    uniform guess over the vocabulary."""
    zero_ablation_nats: float
    """Zero-ablating the hooked residual must raise the CE by at least this much."""


SMALLER = "smaller without training"
NOT_SMALLER = "not detectably smaller without training"
LARGER = "larger without training"
"""The verdicts of :func:`control_verdict` on a ratio's interval (version 2 called
:data:`NOT_SMALLER` and :data:`LARGER` alike "as large without training")."""

LOSS_RULE = LossRule(version=3, below_uniform_nats=1.0, zero_ablation_nats=1.0)
"""Version 1 was the ungated rule of :func:`control_verdict` that judged the first
random-weights run (commit 4e28e06), before rules here were fingerprinted. Version 3
(session 22, after version 2's one run and before any run under it) only splits version
2's "as large without training" into :data:`NOT_SMALLER` (the ratio's interval holds 1)
and :data:`LARGER` (above 1): the same gate and margins, and version 2's verdicts on the
same numbers read the same except for that name.

1 nat below uniform is a factor e in the likelihood of the next token: a model that had
learned no more than token frequencies is several nats below a uniform guess over a
vocabulary of tens of thousands of tokens, and a model with redrawn weights sits at it.
1 nat of zero-ablation damage is the quality bar's size (``DCE_BAR_NATS`` in
:mod:`sae_med.report.claims`, not imported: measure sits below report): an SAE may cost
that much and still be judged, so where the whole residual is worth less, an SAE that
passes the bar cannot be told from none, and a ΔCE gap cannot show anything."""
LOSS_METRICS = frozenset({"ce_spliced", "delta_ce", "loss_recovered", "loss_recovered_mean",
                          "kl_spliced", "kl_score"})
"""The control rows judged only where the model has loss to lose: every metric read off
the model's next-token predictions with the SAE spliced in."""
NO_LOSS = "not a test: the model has no loss to lose"
LOSS_UNKNOWN = "not judged: without the vocabulary size, whether the model has loss to lose " \
    "is unknown"


class LossBaseline(NamedTuple):
    """A model's loss on one text without an SAE: what :data:`LOSS_RULE` reads."""

    ce_clean: float
    """Mean next-token CE of the unmodified model (nats per token)."""
    ce_zero: float
    """The same with the hooked residual zero-ablated."""
    vocab_size: int
    """The unembedding's width: a uniform guess scores ln(vocab_size)."""

    def describe(self) -> str:
        return (f"clean CE {self.ce_clean:.2f} nats against {math.log(self.vocab_size):.2f} "
                f"for a uniform guess over {self.vocab_size:,} tokens; zero ablation "
                f"{self.ce_zero - self.ce_clean:+.2f}")


def has_loss_to_lose(b: LossBaseline, rule: LossRule = LOSS_RULE) -> bool:
    """Whether ``b``'s model predicts enough for a splice to cost it loss: clean CE at
    least ``rule.below_uniform_nats`` below ln(vocab_size), and ``ce_zero - ce_clean`` at
    least ``rule.zero_ablation_nats``."""
    return (math.log(b.vocab_size) - b.ce_clean >= rule.below_uniform_nats
            and b.ce_zero - b.ce_clean >= rule.zero_ablation_nats)


def control_verdict(ratio: Interval, metric: str = "", loss: LossBaseline | None = None,
                    rule: LossRule = LOSS_RULE) -> str:
    """The random-weights rule (:data:`LOSS_RULE`'s version): a ``metric`` of
    :data:`LOSS_METRICS` is ``not a test`` (with the numbers) unless the random model's
    ``loss`` baseline passes :func:`has_loss_to_lose`, and ``not judged`` without one.
    Otherwise :data:`SMALLER` when the ratio's interval lies below 1, :data:`LARGER` when
    above, :data:`NOT_SMALLER` when it holds 1 (the gap on random weights is not
    detectably smaller: token statistics suffice to give it; this is no proof that the two
    are equal, whose bound is the interval's low end), ``no interval`` when the trained
    model's gap interval holds 0."""
    if metric in LOSS_METRICS:
        if loss is None:
            return LOSS_UNKNOWN
        if not has_loss_to_lose(loss, rule):
            return f"{NO_LOSS} ({loss.describe()})"
    if ratio.low is None or ratio.high is None:
        return "no interval"
    if ratio.high < 1.0:
        return SMALLER
    return LARGER if ratio.low > 1.0 else NOT_SMALLER
