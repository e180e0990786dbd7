"""Runs of one experiment that differ in one setting, side by side.

For each run: each side's home advantage (own SAE minus the other on its own text, with
R²(e)), each side on its own held-out text with its training-window dead fraction, and the
paper's claims (the sensitivity check shown, never counted) with the
difference-in-differences claims judged on each. Intervals are each run's own; runs with
the same config seed draw the same documents and seeds. The book's pair is the dead-latent
remedy at the learning curve's longest budget (issue 31, "equal baselines"):
:func:`remedy_pair` sets ``configs/remedy_long.yaml``'s run against the curve's own
longest run, which is that config with the remedy off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from sae_med.config import Config, config_from_dict
from sae_med.measure.results import comparison_tables, read_results, tidy_results
from sae_med.report.claims import (
    CLAIMS,
    SAME_VERDICT,
    SENSITIVITY_CHECKS,
    ModelRun,
    verdict_table,
)
from sae_med.report.domain_report import (
    HOME_METRICS,
    did_verdicts_by_model,
    domains_results_path,
    home_advantage_table,
    home_sides,
    load_side_run,
    own_text_table,
    training_dead_fractions,
)
from sae_med.report.learning_curve import CurvePoint
from sae_med.report.notebook import domain_pair

SIDE_METRICS = (*HOME_METRICS, "dark_matter.r2_error_mean")

REMEDY_CONFIG = "configs/remedy_long.yaml"
"""The dead-latent remedy on both sides at the learning curve's longest budget."""
REMEDY_COMMAND = f"sae-med experiment {REMEDY_CONFIG}"

SAME_EXPERIMENT = ("model", "cache", "eval", "train_corpora", "eval_corpora", "corpora",
                   "seed")
"""The config sections two runs must share to be set side by side (what is measured, on
which documents, from which seeds)."""


class SideBySide(NamedTuple):
    """Runs' tables stacked under a ``run`` index level (the runs' labels)."""

    runs: list[ModelRun]
    home: Any
    """Home advantages: own SAE − the other SAE on own text, per target L0."""
    own: Any
    """Each side's SAEs on their own held-out text, with training-window dead fractions."""


class RemedyPair(NamedTuple):
    pair: SideBySide | None
    """``off`` (the curve's longest run) and ``on`` (the remedy run); None when absent."""
    note: str
    """Where each side was read from, or why there is no pair and how to make it."""


def side_by_side(paths: Mapping[str, str | Path]) -> SideBySide:
    """The runs whose results files are ``paths`` (``{label: path}``), side by side (each
    file read once)."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    runs, home, own = [], {}, {}
    for label, path in paths.items():
        doc = read_results(path)
        run = ModelRun(label, config_from_dict(doc["config"]), comparison_tables(doc))
        sides = home_sides(run.cfg)
        home[label] = home_advantage_table(run.comparisons.gaps, sides, sides, SIDE_METRICS)
        own[label] = own_text_table(run.comparisons.families, sides,
                                    training_dead_fractions(tidy_results(doc["rows"])))
        runs.append(run)
    return SideBySide(runs, pd.concat(home, names=["run"]), pd.concat(own, names=["run"]))


def side_by_side_verdicts(runs: Sequence[ModelRun]) -> Any:
    """The claims, the sensitivity check and the difference-in-differences claims judged
    on each run: rows claims, one column per run, and whether every run agrees."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    domain, broad = domain_pair(runs[0].cfg)
    keys = [c.key for c in (*CLAIMS, *SENSITIVITY_CHECKS)]
    return (pd.concat([verdict_table(runs, keys, domain, broad),
                       did_verdicts_by_model(runs, domain, broad)])
            .rename(columns={SAME_VERDICT: "same verdict on every run"}))


def same_experiment(a: Config, b: Config) -> bool:
    """Whether two configs measure the same SAEs' sides on the same documents and seeds
    (:data:`SAME_EXPERIMENT`)."""
    first, second = a.to_dict(), b.to_dict()
    return all(first.get(k) == second.get(k) for k in SAME_EXPERIMENT)


def remedy_pair(points: Sequence[CurvePoint], remedy_results: str | Path = "") -> RemedyPair:
    """The remedy run (``remedy_results``, default where :data:`REMEDY_CONFIG` writes it)
    against the curve budget of as many training tokens (``points``), read, never run."""
    status = load_side_run(remedy_results or domains_results_path(REMEDY_CONFIG),
                           "dead-latent remedy", REMEDY_COMMAND)
    if status.run is None:
        return RemedyPair(None, status.note)
    on = status.run
    off = next((p for p in points if p.tokens == on.cfg.train.n_tokens), None)
    if off is None:
        return RemedyPair(None, f"This learning curve has no budget of "
                                f"{on.cfg.train.n_tokens:,} training tokens, the remedy run's "
                                f"(at {on.path}): sae-med learning-curve configs/long.yaml "
                                "makes the curve it pairs with.")
    pair = side_by_side({"off": off.results, "on": on.path})
    if not same_experiment(*(r.cfg for r in pair.runs)):
        return RemedyPair(None, f"The remedy run at {on.path} is not this curve's experiment "
                                f"(one of its {', '.join(SAME_EXPERIMENT)} differs): no pair.")
    return RemedyPair(pair, f"Without the remedy: the curve's {off.tokens:,}-token run "
                      f"({off.results}); with it: {on.path} (train.pre_act_loss "
                      f"{on.cfg.train.pre_act_loss:g}).")
