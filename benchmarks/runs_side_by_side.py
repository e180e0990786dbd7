"""Two or more runs of the same experiment that differ in one setting, side by side (e.g.
the dead-latent remedy off and on, issue 31): for each run, each side's home advantage
(own SAE minus the other on its own text, at every target L0, including R²(e)) and each
side's SAEs on their own held-out text with the dead fraction of their last training
window, stacked under a ``run`` index level. Intervals are each run's own (95%, seeds then
document groups); runs with the same config seed draw the same documents and seeds.

    .venv/bin/python benchmarks/runs_side_by_side.py off=runs/remedy_off/results.json \\
        on=runs/remedy_on/results.json
"""

from __future__ import annotations

import sys

import pandas as pd

from sae_med.config import config_from_dict
from sae_med.measure.results import load_comparisons, load_results, read_results
from sae_med.report.domain_report import (
    HOME_METRICS,
    home_advantage_table,
    home_sides,
    own_text_table,
    training_dead_fractions,
)

METRICS = (*HOME_METRICS, "dark_matter.r2_error_mean")


def run_tables(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(home advantages, own-text baselines) of one results file."""
    tables = load_comparisons(path)
    sides = home_sides(config_from_dict(read_results(path)["config"]))
    home = home_advantage_table(tables.gaps, sides, sides, METRICS)
    own = own_text_table(tables.families, sides, training_dead_fractions(load_results(path)))
    return home, own


def main(specs: list[str]) -> None:
    runs = dict(spec.split("=", 1) for spec in specs)
    tables = {label: run_tables(path) for label, path in runs.items()}
    for i, title in enumerate(("Home advantages (own SAE − other SAE on own text)",
                               "Each side on its own held-out text")):
        print(f"\n{title}\n")
        print(pd.concat({label: t[i] for label, t in tables.items()}, names=["run"])
              .to_markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
