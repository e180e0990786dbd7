"""The domain-vs-broad experiment as idempotent stages: cache → train → evaluate.

Each stage reuses what an earlier call produced when its hash matches and recomputes it
otherwise, so notebooks can call the stage they narrate without re-running the rest.

Layout under ``cfg.run_path`` (``{output_dir}/{name}``)::

    config.json                 the resolved config
    saes/{train_corpus}/seed_{r}/   one training sweep per corpus and replicate r < sae.seeds
        l0_{target}/            cfg.json + sae.safetensors (raw-activation space), metrics.jsonl
    results.json, results.csv   every SAE scored on every eval corpus, with the across-seed
                                means and paired gaps (see sae_med.evaluate, sae_med.compare)

An SAE's id is its path under ``saes/`` (:func:`sae_med.train.sae_id`).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

from sae_med.activations import ActivationCache, build_cache
from sae_med.artifacts import write_json_atomic
from sae_med.batches import BatchSource
from sae_med.config import Config
from sae_med.lm import LanguageModel
from sae_med.models import load_model

log = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def _load(name: str, device: str, cache_dir: str) -> LanguageModel:
    return load_model(name, device, Path(cache_dir))


def load_model_for(cfg: Config) -> LanguageModel:
    """The config's model, loaded once per process."""
    return _load(cfg.model.name, cfg.model.device, str(cfg.cache_path))


STREAM_SAMPLE_TOKENS = 8192
"""With ``train.source: stream`` no training cache exists; the stages that read training
activations directly (diagnose) get a cache of this many tokens instead."""


def stage_cache(cfg: Config, progress: bool = True) -> dict[tuple[str, str], ActivationCache]:
    """Activation caches for every train corpus (train split, ``cache.n_tokens``; none when
    training streams) and every eval corpus (eval split, ``eval.n_tokens``), keyed
    ``(corpus, split)``."""
    model = load_model_for(cfg)
    streamed = cfg.train.source == "stream"
    wanted = [] if streamed else [(c, "train", cfg.cache.n_tokens) for c in cfg.train_corpora]
    wanted += [(c, "eval", cfg.eval.n_tokens) for c in cfg.eval_corpora]
    return {(c, s): build_cache(model, cfg, c, s, n_tokens=n, progress=progress)
            for c, s, n in wanted}


def train_cache(cfg: Config, corpus: str, progress: bool = True) -> ActivationCache:
    """The training cache (its first :data:`STREAM_SAMPLE_TOKENS` when training streams)."""
    n = STREAM_SAMPLE_TOKENS if cfg.train.source == "stream" else cfg.cache.n_tokens
    return build_cache(load_model_for(cfg), cfg, corpus, "train", n_tokens=n,
                       progress=progress)


def train_source(cfg: Config, corpus: str, progress: bool = True) -> BatchSource:
    """What the SAEs of ``corpus`` train on: its cache, or a stream (``train.source``)."""
    if cfg.train.source == "stream":
        from sae_med.stream import ActivationStream

        return ActivationStream(load_model_for(cfg), cfg, corpus)
    return train_cache(cfg, corpus, progress)


def stage_train(cfg: Config, progress: bool = True) -> dict:
    """Train (or resume, or reuse) the SAE sweep of each train corpus and seed replicate.

    Returns ``{train_corpus: [TrainResult, ...]}`` ordered by replicate, then
    ``cfg.sae.l0_targets`` (replicate 0 first, so ``next(r for r in runs if r.l0_target
    == t)`` is replicate 0). A finished run whose checkpoint key matches is reused; one for
    another config or cache is retrained from scratch (with a warning), never reused.
    """
    from sae_med.train import (
        CHECKPOINT_NAME,
        _run_key,
        read_checkpoint,
        replicate_dirname,
        train_saes,
    )

    out: dict = {}
    for corpus in cfg.train_corpora:
        source = train_source(cfg, corpus, progress)
        out[corpus] = []
        for rep in range(cfg.sae.seeds):
            out_dir = cfg.run_path / "saes" / corpus / replicate_dirname(rep)
            ckpt = out_dir / CHECKPOINT_NAME
            resume = True
            if ckpt.exists():
                state = read_checkpoint(ckpt)
                if state.get("run_key") != _run_key(cfg, source, corpus, rep):
                    log.warning("%s was trained with another config or cache; retraining",
                                out_dir)
                    resume = False
            out[corpus] += train_saes(cfg, source, out_dir, resume=resume, progress=progress,
                                      d_model=source.d_model, train_corpus=corpus,
                                      replicate=rep)
    return out


def sae_dirs(cfg: Config) -> dict[str, Path]:
    """``{sae_id: directory}`` of the trained SAEs, e.g. ``medical/seed_0/l0_20``."""
    from sae_med.train import sae_id

    ids = [sae_id(c, r, t) for c in cfg.train_corpora for r in range(cfg.sae.seeds)
           for t in cfg.sae.l0_targets]
    return {i: cfg.run_path / "saes" / i for i in ids}


def stage_evaluate(cfg: Config, progress: bool = True) -> Path:
    """Score every trained SAE on every eval corpus; returns ``results.json``'s path.

    Reused when its ``inputs_key`` (config, every SAE's weights hash, every eval cache's
    key) matches; recomputed otherwise."""
    from sae_med.artifacts import stable_hash
    from sae_med.evaluate import SCHEMA_VERSION, evaluate_paths

    stage_train(cfg, progress)
    model = load_model_for(cfg)
    dirs = sae_dirs(cfg)
    caches = {c: build_cache(model, cfg, c, "eval", n_tokens=cfg.eval.n_tokens,
                             progress=progress) for c in cfg.eval_corpora}
    key = stable_hash({
        "schema_version": SCHEMA_VERSION,
        # every section but autointerp's, which the evaluation never reads
        "config": {k: v for k, v in cfg.to_dict().items() if k != "autointerp"},
        "saes": {i: json.loads((d / "cfg.json").read_text())["weights_sha256"]
                 for i, d in dirs.items()},
        "caches": {c: cache.key for c, cache in caches.items()}})
    path = cfg.run_path / "results.json"
    if path.exists() and json.loads(path.read_text()).get("inputs_key") == key:
        log.info("reusing %s (inputs unchanged)", path)
        return path
    path = evaluate_paths(cfg, list(dirs.values()), list(cfg.eval_corpora), model=model,
                          out_path=path, progress=progress, sae_ids=list(dirs))
    results = json.loads(path.read_text())
    results["inputs_key"] = key
    write_json_atomic(path, results)
    return path


def run_experiment(cfg: Config, progress: bool = True) -> Path:
    """cache → train → evaluate; returns the results JSON."""
    cfg.run_path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg.run_path / "config.json", cfg.to_dict())
    stage_cache(cfg, progress)
    return stage_evaluate(cfg, progress)


def stage_diagnose(cfg: Config, eval_corpus: str = "", l0_target: float = 0.0,
                   progress: bool = True) -> dict:
    """:func:`~sae_med.diagnose.diagnose_sae` for replicate 0 of each training corpus at
    ``l0_target`` (0: the middle of the sweep) on the CE documents of ``eval_corpus``
    (empty: the first eval corpus). Returns ``{train_corpus: DamageReport}``."""
    from sae_med.diagnose import diagnose_sae
    from sae_med.evaluate import ce_batches, reconstruction_fn
    from sae_med.sae import JumpReLUSAE
    from sae_med.train import sae_id

    targets = list(cfg.sae.l0_targets)
    target = l0_target or targets[len(targets) // 2]
    eval_corpus = eval_corpus or cfg.eval_corpora[0]
    stage_train(cfg, progress)
    model = load_model_for(cfg)
    batches = ce_batches(model, cfg, eval_corpus)
    out = {}
    for corpus in cfg.train_corpora:
        sae = JumpReLUSAE.load(cfg.run_path / "saes" / sae_id(corpus, 0, target))
        cache = train_cache(cfg, corpus, progress)
        n = min(cache.n_tokens, 8192)  # a sample: mean, massive dims, error subspace
        x = cache.activations(0, n)

        out[corpus] = diagnose_sae(model, batches, cfg.model.hook_layer,
                                   reconstruction_fn(sae), x, cache.token_info()[:, 0],
                                   seed=cfg.seed)
    return out
