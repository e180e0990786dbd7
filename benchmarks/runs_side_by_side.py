"""Two or more runs of the same experiment that differ in one setting, side by side (e.g.
the dead-latent remedy off and on, issue 31; :mod:`sae_med.report.side_by_side`): each
side's home advantage and each side on its own held-out text, stacked under a ``run`` index
level, then the claims judged on each run and how many hold on each.

    .venv/bin/python benchmarks/runs_side_by_side.py \\
        off=runs/default_curve/learning_curve/tokens_10000000.json \\
        on=runs/remedy_long/results.json
"""

from __future__ import annotations

import sys

from sae_med.report.claims import support_count, verdicts_by_claim
from sae_med.report.notebook import domain_pair
from sae_med.report.side_by_side import side_by_side, side_by_side_verdicts


def main(specs: list[str]) -> None:
    pair = side_by_side(dict(spec.split("=", 1) for spec in specs))
    print("\nHome advantages (own SAE − other SAE on own text)\n")
    print(pair.home.to_markdown())
    print("\nEach side on its own held-out text\n")
    print(pair.own.to_markdown())
    print("\nThe claims on each run\n")
    print(side_by_side_verdicts(pair.runs).to_markdown())
    domain, broad = domain_pair(pair.runs[0].cfg)
    for r in pair.runs:  # the sensitivity check and the contrasts are never counted here
        print(f"\n{r.label}: {support_count(verdicts_by_claim(r, domain, broad))}")


if __name__ == "__main__":
    main(sys.argv[1:])
