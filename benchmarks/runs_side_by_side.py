"""Two or more runs of the same experiment that differ in one setting, side by side (e.g.
the dead-latent remedy off and on, issue 31): for each run, each side's home advantage
(own SAE minus the other on its own text, at every target L0, including R²(e)) and each
side's SAEs on their own held-out text with the dead fraction of their last training
window, stacked under a ``run`` index level; then the paper's claims (and the sensitivity
check, shown, never counted) and the difference-in-differences claims judged on each run.
Intervals are each run's own (95%, seeds then document groups); runs with the same config
seed draw the same documents and seeds.

    .venv/bin/python benchmarks/runs_side_by_side.py off=runs/remedy_off/results.json \\
        on=runs/remedy_on/results.json
"""

from __future__ import annotations

import sys

import pandas as pd

from sae_med.config import config_from_dict
from sae_med.measure.results import load_comparisons, load_results, read_results
from sae_med.report.claims import (
    CLAIMS,
    SAME_VERDICT,
    SENSITIVITY_CHECKS,
    ModelRun,
    support_count,
    verdict_table,
    verdicts_by_claim,
)
from sae_med.report.domain_report import (
    HOME_METRICS,
    did_verdicts_by_model,
    home_advantage_table,
    home_sides,
    own_text_table,
    training_dead_fractions,
)
from sae_med.report.notebook import domain_pair

METRICS = (*HOME_METRICS, "dark_matter.r2_error_mean")


def load_run(label: str, path: str) -> ModelRun:
    """One run's config and comparison tables, labelled."""
    return ModelRun(label, config_from_dict(read_results(path)["config"]),
                    load_comparisons(path))


def run_tables(run: ModelRun, path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(home advantages, own-text baselines) of one run (its results file at ``path``)."""
    tables, sides = run.comparisons, home_sides(run.cfg)
    home = home_advantage_table(tables.gaps, sides, sides, METRICS)
    own = own_text_table(tables.families, sides, training_dead_fractions(load_results(path)))
    return home, own


def verdicts(runs: list[ModelRun]) -> None:
    """The claims judged on each run (columns: the runs' labels), and how many hold."""
    domain, broad = domain_pair(runs[0].cfg)
    keys = [c.key for c in (*CLAIMS, *SENSITIVITY_CHECKS)]
    print("\nThe claims on each run\n")
    print(pd.concat([verdict_table(runs, keys, domain, broad),
                     did_verdicts_by_model(runs, domain, broad)])
          .rename(columns={SAME_VERDICT: "same verdict on every run"})
          .to_markdown())
    for r in runs:  # the sensitivity check and the contrasts are never counted here
        print(f"\n{r.label}: {support_count(verdicts_by_claim(r, domain, broad))}")


def main(specs: list[str]) -> None:
    paths = dict(spec.split("=", 1) for spec in specs)
    runs = [load_run(label, path) for label, path in paths.items()]
    tables = {r.label: run_tables(r, paths[r.label]) for r in runs}
    for i, title in enumerate(("Home advantages (own SAE − other SAE on own text)",
                               "Each side on its own held-out text")):
        print(f"\n{title}\n")
        print(pd.concat({label: t[i] for label, t in tables.items()}, names=["run"])
              .to_markdown())
    verdicts(runs)


if __name__ == "__main__":
    main(sys.argv[1:])
