"""Synthetic runs with home advantages planted by hand, scored by the package's own
comparison code (:func:`sae_med.measure.compare.compare` and
:func:`~sae_med.measure.compare.contrasts`), for the report's known-answer tests and for executing
its chapter without a model; and the benchmarks/ scripts that print tables from such runs
(:func:`benchmark_script`)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from sae_med.config import Config
from sae_med.measure.bootstrap import Draws
from sae_med.measure.compare import SaeDraws, compare, contrasts
from sae_med.measure.results import SCHEMA_VERSION, ComparisonTables, comparison_tables
from sae_med.report.book import PROJECT_ROOT

TARGETS = (10.0, 80.0)


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` loaded as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        name, PROJECT_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sae_metrics(base: float, target: float, loss: tuple[float, float] | None = None
                ) -> dict[str, float]:
    """Every metric of one SAE from its quality ``base`` (higher is better): FVE rises
    with it, ΔCE and R²(e) fall (ΔCE stays under the 1-nat quality bar). ``loss``: the
    model's own clean and zero-ablation CE, the same for every SAE (absent by default)."""
    own = {} if loss is None else {"ce_clean": loss[0], "ce_zero": loss[1]}
    return {"fve": base, "fve_typical": base, "delta_ce": 1.5 - base,
            "loss_recovered": 0.5 + base / 2, "l0": target,
            "dark_matter.r2_error_mean": 1.0 - base, **own}


def synthetic_doc(train: Sequence[str], evals: Sequence[str],
                  shift: Mapping[tuple[str, str], float], seeds: int = 3,
                  n_boot: int = 200, seed: int = 0,
                  loss: tuple[float, float] | None = None) -> dict:
    """The comparison part of a results document: each SAE (training corpus × target ×
    seed) scores 0.5 + 0.1 log2(target / 10) + a small seed offset + ``shift[(train, eval)]``
    on each eval corpus, every replicate moved by one document draw per eval corpus
    (shared by all its SAEs: paired) and a little noise of its own."""
    rng = np.random.default_rng(seed)
    by_eval = {}
    for e in evals:
        docs = rng.normal(0.0, 0.01, n_boot)
        saes = []
        for c in train:
            for t in TARGETS:
                for r in range(seeds):
                    base = 0.5 + 0.1 * np.log2(t / 10) + 0.002 * r + shift.get((c, e), 0.0)
                    draws = {m: Draws(v, v + (0 if m == "l0" else 1) * docs
                                      + rng.normal(0.0, 0.001, n_boot))
                             for m, v in sae_metrics(base, t, loss).items()}
                    saes.append(SaeDraws(c, t, r, draws))
        by_eval[e] = compare(saes, e, train, seed=7)
    return {"families": [f.to_dict() for c in by_eval.values() for f in c.families],
            "gaps": [g.to_dict() for c in by_eval.values() for g in c.gaps],
            "steps": [s.to_dict() for c in by_eval.values() for s in c.steps],
            "contrasts": [c.to_dict() for c in contrasts(by_eval, train)]}


def synthetic_run(train: Sequence[str], evals: Sequence[str],
                  shift: Mapping[tuple[str, str], float], **kw) -> ComparisonTables:
    """:func:`synthetic_doc` read back as the notebooks read a run."""
    return comparison_tables(synthetic_doc(train, evals, shift, **kw))


def write_synthetic_results(path: Path, cfg: Config,
                            shift: Mapping[tuple[str, str], float], **kw) -> Path:
    """A results.json of ``cfg``'s corpora with the ``shift`` planted (no per-SAE rows);
    ``kw`` goes to :func:`synthetic_doc`."""
    doc = {"schema_version": SCHEMA_VERSION, "config": cfg.to_dict(), "rows": [],
           **synthetic_doc(cfg.train_corpora, cfg.eval_corpora, shift, **kw)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path
