"""Print the random-weights control (issue 32 item 6): each side's home advantage at the
same target L0 on the trained model and on the same architecture with redrawn weights, and
their ratio with its (conservative) interval and the verdict of
:func:`sae_med.measure.controls.control_verdict`. Run from the folder holding ``runs/``:

    .venv/bin/python benchmarks/random_weights_table.py runs/random_weights/results.json \
        runs/domains/results.json
"""

from __future__ import annotations

import sys

import pandas as pd

from sae_med.measure.controls import Interval, control_verdict, gap_ratio
from sae_med.measure.results import load_comparisons

METRICS = ["fve_typical", "fve", "delta_ce", "dark_matter.r2_error_mean"]
SIDES = [("medical", "broad"), ("broad", "medical")]
"""(own, other): each SAE's home advantage, own SAE minus the other on own text."""


def gap(gaps: pd.DataFrame, own: str, other: str, metric: str, target: float
        ) -> Interval | None:
    row = gaps[(gaps.basis == "l0_target") & (gaps.train_corpus == own)
               & (gaps.versus == other) & (gaps.eval_corpus == own)
               & (gaps.metric == metric) & (gaps.l0_target == target)]
    return None if row.empty else Interval(*row[["value", "low", "high"]].iloc[0])


def cell(g: Interval) -> str:
    return f"{g.value:+.3f} [{g.low:+.3f}, {g.high:+.3f}]"


def table(random_path: str, trained_path: str) -> pd.DataFrame:
    rand, trained = (load_comparisons(p).gaps for p in (random_path, trained_path))
    rows = []
    for target in sorted(set(rand.l0_target.dropna()) & set(trained.l0_target.dropna())):
        for (own, other) in SIDES:
            for metric in METRICS:
                r, t = gap(rand, own, other, metric, target), gap(trained, own, other,
                                                                  metric, target)
                if r is None or t is None:
                    continue
                ratio = gap_ratio(r, t)
                span = ("" if ratio.low is None
                        else f" [{ratio.low:.2f}, {ratio.high:.2f}]")
                rows.append({"target L0": target, "home advantage": f"{own} SAE − {other}"
                             f" SAE on {own} text", "metric": metric, "trained": cell(t),
                             "random weights": cell(r),
                             "ratio": f"{ratio.ratio:.2f}{span}",
                             "verdict": control_verdict(ratio)})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    print(table(*sys.argv[1:3]).to_markdown(index=False))
