"""The claims re-judged with more seeds (``configs/seeds10.yaml``, issue 31).

The coverage table (benchmarks/RESULTS.md) shows three seeds keep a nominal 95% interval's
promise only while a gap's seed effect is at most about its documents' standard error;
where it is several times larger, ten seeds are needed. The ten-seed run repeats the
default's medical and broad families with ten seeds; a chapter reads it beside its own run
and judges the same claims on both. A check of the verdicts, never counted as claims.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sae_med.measure.coverage import seed_shares
from sae_med.measure.results import read_results
from sae_med.report.claims import (
    CLAIMS,
    SAME_VERDICT,
    SENSITIVITY_CHECKS,
    ModelRun,
    verdict_table,
)
from sae_med.report.domain_report import DomainsRun, DomainsRunStatus, load_side_run
from sae_med.report.notebook import note_frame

SEEDS10_CONFIG = "configs/seeds10.yaml"
SEEDS10_COMMAND = f"sae-med experiment {SEEDS10_CONFIG}"


def load_seeds10_run(path: str | Path) -> DomainsRunStatus:
    """The ten-seed run at ``path``, read, never run (it trains 14 sweeps beyond the
    default's): a missing or outdated file is reported with :data:`SEEDS10_COMMAND`."""
    return load_side_run(path, "ten-seed", SEEDS10_COMMAND)


def _counterpart(run: ModelRun, status: DomainsRunStatus) -> DomainsRun | str:
    """The ten-seed run to set beside ``run``, or why there is none."""
    if status.run is None:
        return status.note
    other = status.run.cfg
    if other.model.name != run.cfg.model.name:
        return (f"The ten-seed run ({status.run.path}) is of {other.model.name}, this run of "
                f"{run.cfg.model.name}: no seed-count check for this model.")
    return status.run


def seed_count_verdicts(runs: list[ModelRun], domain: str, broad: str) -> Any:
    """The paper's claims (and the sensitivity check) judged on each of ``runs`` (this run
    and the ten-seed run, labelled by seed count), one column per run."""
    keys = [c.key for c in (*CLAIMS, *SENSITIVITY_CHECKS)]
    return verdict_table(runs, keys, domain, broad).rename(
        columns={SAME_VERDICT: "same verdict with more seeds"})


def seed_share_table(docs: Mapping[str, Mapping[str, Any]], domain: str, broad: str
                     ) -> Any:
    """Each judged gap (``domain`` − ``broad`` on ``domain`` text; rows: metric, target L0)
    with its seed effect over its documents' standard error
    (:func:`~sae_med.measure.coverage.seed_ratio`; inf: the seeds make the whole interval)
    in each of ``docs`` (results documents by label): the quantity the coverage table's
    rows are indexed by."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    judged = {f"{domain} − {broad}", f"{broad} − {domain}"}
    rows = [{"metric": s.metric, "target L0": s.l0_target, "run": label,
             "seed sd / document se": s.ratio}
            for label, doc in docs.items() for s in seed_shares(doc)
            if s.eval_corpus == domain and s.pair in judged]
    if not rows:
        return note_frame("No judged gap has families of two or more seeds.")
    return (pd.DataFrame(rows)
            .pivot_table(index=["metric", "target L0"], columns="run",
                         values="seed sd / document se", sort=False)
            .round(2))


def seed_check_tables(run: ModelRun, results_path: str | Path, status: DomainsRunStatus,
                      domain: str, broad: str) -> tuple[Any, Any]:
    """(:func:`seed_count_verdicts`, :func:`seed_share_table`) of this run and the ten-seed
    run for a chapter; when that run is absent or of another model, a one-cell note stands
    for the verdicts and the shares are this run's alone."""
    this = run._replace(label=f"{run.cfg.sae.seeds} seeds (this run)")
    docs = {this.label: read_results(results_path)}
    ten = _counterpart(run, status)
    if isinstance(ten, str):
        return note_frame(ten), seed_share_table(docs, domain, broad)
    other = ModelRun(f"{ten.cfg.sae.seeds} seeds", ten.cfg, ten.comparisons)
    docs[other.label] = read_results(ten.path)
    return (seed_count_verdicts([this, other], domain, broad),
            seed_share_table(docs, domain, broad))
