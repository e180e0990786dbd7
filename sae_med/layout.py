"""Every run-folder and file name sae-med writes, in one place.

A run folder (``cfg.run_path`` = ``{output_dir}/{name}``)::

    config.json                      the resolved config
    saes/{corpus}/seed_{r}/          one training sweep per corpus and seed replicate
        config.json, checkpoint.pt, checkpoint.prev.pt, checkpoint.json, .train.lock
        l0_{target}/                 cfg.json + sae.safetensors, metrics.jsonl, config.json
            snapshots/tokens_{n}/    the same, saved mid-run (``train.snapshot_tokens``)
    results.json, results.csv        every SAE scored on every eval corpus
    results_external.json            ``sae-med evaluate --sae``: SAEs from elsewhere, scored
    learning_curve/tokens_{n}.json   a learning-curve run's SAEs at each budget, scored alike
    annealed/tokens_{n}/             with ``train.snapshots_annealed``: the run to budget n
    autointerp/{demo_}l0_{target}/   latents.csv, comparison.csv, config.json
    homefield.json                   what the broad SAE lacks on domain text
    notebooks/{name}.ipynb           a notebook rerun on this run's config

An SAE's id is its path under ``saes/`` (:func:`sae_id`). An activation cache's folder
(under ``cfg.cache_path``) is complete when its ``manifest.json`` is there.
"""

from __future__ import annotations

from pathlib import Path

from sae_med.config import Config

CONFIG_NAME = "config.json"
"""The resolved config, beside every artefact it produced."""
SAES_DIR = "saes"
"""The run folder's subfolder of trained SAEs (``{SAES_DIR}/{sae_id}``)."""
RESULTS_NAME = "results.json"
"""A run's results file (``results.csv`` beside it), under ``cfg.run_path``."""
EXTERNAL_RESULTS_NAME = "results_external.json"
"""The results of SAEs from elsewhere scored on a run's eval corpora, under
``cfg.run_path``."""
CURVE_DIR = "learning_curve"
"""The curve run's folder of per-budget results (``tokens_<budget>.json``)."""
ANNEALED_DIR = "annealed"
"""The curve run's folder of runs trained to a budget on their own."""

CFG_FILENAME = "cfg.json"
"""An SAE's shape, hyperparameters, weights hash and metadata."""
WEIGHTS_FILENAME = "sae.safetensors"

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
CHECKPOINT_RECORD_NAME = "checkpoint.json"
RUN_LOCK_NAME = ".train.lock"
METRICS_NAME = "metrics.jsonl"
SNAPSHOTS_DIR = "snapshots"

AUTOINTERP_DIR = "autointerp"
"""The run folder's subfolder of autointerp scores (:func:`autointerp_dir`)."""
LATENTS_NAME = "latents.csv"
"""Autointerp's table of one row per SAE and latent."""
COMPARISON_NAME = "comparison.csv"
"""Autointerp's comparison of the SAEs, one row per SAE and metric."""
HOMEFIELD_NAME = "homefield.json"
"""The home-field report's file under ``cfg.run_path``."""
NOTEBOOKS_DIR = "notebooks"
"""The run folder's subfolder of notebooks rerun on its config."""
MANIFEST_NAME = "manifest.json"
"""An activation cache's manifest, written last: the cache is complete when it is there."""


def tokens_dirname(tokens: int) -> str:
    """The name of what belongs to a training budget (a snapshot, an annealed run)."""
    return f"tokens_{tokens}"


def results_name(tokens: int) -> str:
    """A learning-curve budget's results file under :data:`CURVE_DIR`."""
    return f"{tokens_dirname(tokens)}.json"


def sae_dirname(l0_target: float) -> str:
    return f"l0_{l0_target:g}"


def replicate_dirname(replicate: int) -> str:
    return f"seed_{replicate}"


def snapshot_dir(sae_dir: Path, budget: int) -> Path:
    """Where the SAE saved in ``sae_dir`` keeps its snapshot at ``budget`` training tokens
    (``train.snapshot_tokens``)."""
    return sae_dir / SNAPSHOTS_DIR / tokens_dirname(budget)


def sae_id(train_corpus: str, replicate: int, l0_target: float) -> str:
    """An experiment SAE's id and its path under ``saes/``: ``medical/seed_0/l0_20``."""
    return f"{train_corpus}/{replicate_dirname(replicate)}/{sae_dirname(l0_target)}"


def sweep_dir(cfg: Config, corpus: str, replicate: int) -> Path:
    """The folder of one training sweep (corpus, seed replicate) of a run."""
    return cfg.run_path / SAES_DIR / corpus / replicate_dirname(replicate)


def sae_dirs(cfg: Config) -> dict[str, Path]:
    """``{sae_id: directory}`` of the trained SAEs, e.g. ``medical/seed_0/l0_20``."""
    ids = [sae_id(c, r, t) for c in cfg.train_corpora for r in range(cfg.sae.seeds)
           for t in cfg.sae.l0_targets]
    return {i: cfg.run_path / SAES_DIR / i for i in ids}


def results_path(cfg: Config) -> Path:
    return cfg.run_path / RESULTS_NAME


def autointerp_dir(run_path: Path, l0_target: float, demo: bool = False) -> Path:
    """Where a run's autointerp scores of its SAEs at ``l0_target`` live:
    ``{run}/autointerp/l0_{target}`` (``demo_l0_{target}`` for the demo budget)."""
    return run_path / AUTOINTERP_DIR / f"{'demo_' if demo else ''}{sae_dirname(l0_target)}"
