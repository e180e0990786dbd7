"""Print the random-weights control (issue 32 item 6): each side's home advantage at the
same target L0 on the trained model and on the same architecture with redrawn weights, and
their ratio with its (conservative) interval and verdict
(:mod:`sae_med.report.random_weights`). Run from the folder holding ``runs/``:

    .venv/bin/python benchmarks/random_weights_table.py runs/random_weights/results.json \
        runs/domains/results.json
"""

from __future__ import annotations

import sys

from sae_med.measure.results import load_comparisons
from sae_med.report.random_weights import control_rows, control_table


def main(random_path: str, trained_path: str) -> None:
    rows = control_rows(load_comparisons(random_path), load_comparisons(trained_path),
                        "medical", "broad")
    print(control_table(rows).to_markdown(index=False))


if __name__ == "__main__":
    main(*sys.argv[1:3])
