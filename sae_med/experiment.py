"""The domain-vs-broad experiment as idempotent stages: cache → train → evaluate.

Each stage reuses what an earlier call produced when its hash matches and recomputes it
otherwise, so notebooks can call the stage they narrate without re-running the rest. This
is the only module that runs stages; where each one writes is :mod:`sae_med.layout`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sae_med import LOG_FORMAT, runtime
from sae_med.artifacts import (
    file_sha256,
    stable_hash,
    write_json_atomic,
    write_json_if_changed,
)
from sae_med.cache.activations import ActivationCache, build_cache
from sae_med.cache.batches import BatchSource, TensorBatchSource
from sae_med.cache.stream import ActivationStream
from sae_med.config import RUN_SECTIONS, Config, config_from_dict, load_config
from sae_med.interpret import autointerp
from sae_med.interpret.autointerp import DEMO_BUDGET, RunScores, run_budget
from sae_med.interpret.chat import make_chat
from sae_med.interpret.synthetic import SYNTHETIC_CORPUS, SyntheticBatch
from sae_med.layout import (
    ANNEALED_DIR,
    CFG_FILENAME,
    CONFIG_NAME,
    CURVE_DIR,
    HOMEFIELD_NAME,
    MANIFEST_NAME,
    RESULTS_NAME,
    SAES_DIR,
    results_name,
    sae_dirs,
    sae_id,
    snapshot_dir,
    sweep_dir,
    tokens_dirname,
)
from sae_med.lm.load import load_model
from sae_med.lm.model import LanguageModel
from sae_med.lm.weights import recorded_weights, warn_if_other_weights, weights_record
from sae_med.measure.compare import Comparison, Verdict, contrasts
from sae_med.measure.diagnose import Subject, diagnose_saes
from sae_med.measure.homefield import (
    MAX_OVERLAP,
    RATIO_EDGES,
    HomeFieldReport,
    HomeInputs,
    compute_homefield,
    home_corpora,
    inputs_key,
)
from sae_med.measure.homefield import SCHEMA_VERSION as HOMEFIELD_SCHEMA
from sae_med.measure.results import (
    SCHEMA_VERSION,
    ComparisonTables,
    ResultRow,
    load_comparisons,
    read_results,
    write_results,
)
from sae_med.measure.scoring import ce_batches, compare_families, reconstruction_fn, score_saes
from sae_med.report.book import PROJECT_ROOT
from sae_med.report.claims import ModelRun, concept_verdict, model_label
from sae_med.report.domain_report import ReportedRun
from sae_med.report.exported import ExportFormat, ModelLens, RunInputs, export_needs
from sae_med.report.learning_curve import CurvePoint, curve_budgets
from sae_med.runtime import pick_device
from sae_med.sae.base import LinearSAE
from sae_med.sae.factory import load_sae
from sae_med.sae.io import load_any_sae, sae_format
from sae_med.train.records import TrainingError
from sae_med.train.sweep import SweepRun, finished_results, train_saes, train_sweeps

log = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def _load(name: str, device: str, cache_dir: str, dtype: str, random_init_seed: int | None
          ) -> LanguageModel:
    return load_model(name, device, Path(cache_dir), dtype, random_init_seed)


def load_model_for(cfg: Config) -> LanguageModel:
    """The config's model, loaded once per process."""
    return _load(cfg.model.name, cfg.model.device, str(cfg.cache_path), cfg.model.dtype,
                 cfg.model.random_init_seed)


STREAM_SAMPLE_TOKENS = 8192
"""With ``train.source: stream`` no training cache exists; the stages that read training
activations directly (diagnose) get a cache of this many tokens instead."""
_OPENED: dict[tuple[str, str, str], ActivationCache] = {}


def cache_for(cfg: Config, corpus: str, split: str, progress: bool = True) -> ActivationCache:
    """The activation cache of ``corpus``/``split`` (``cache.n_tokens`` for train, or its
    first :data:`STREAM_SAMPLE_TOKENS` when training streams; ``eval.n_tokens`` for eval),
    built if missing. Opening a cache checks every shard's sha256, so each is opened once
    per process and reused while its manifest is there."""
    key = (cfg.hash(), corpus, split)
    cache = _OPENED.get(key)
    if cache is None or not (cache.root / MANIFEST_NAME).exists():
        n = ((STREAM_SAMPLE_TOKENS if cfg.train.source == "stream" else cfg.cache.n_tokens)
             if split == "train" else cfg.eval.n_tokens)
        cache = _OPENED[key] = build_cache(load_model_for(cfg), cfg, corpus, split,
                                           n_tokens=n, progress=progress)
    return cache


def stage_cache(cfg: Config, progress: bool = True) -> dict[tuple[str, str], ActivationCache]:
    """Activation caches for every train corpus (train split; none when training streams)
    and every eval corpus (eval split), keyed ``(corpus, split)``."""
    streamed = cfg.train.source == "stream"
    wanted = [] if streamed else [(c, "train") for c in cfg.train_corpora]
    wanted += [(c, "eval") for c in cfg.eval_corpora]
    return {(c, s): cache_for(cfg, c, s, progress) for c, s in wanted}


def export_inputs(source: str | Path, fmt: ExportFormat, progress: bool = False
                  ) -> RunInputs | None:
    """What exporting ``source`` in ``fmt`` reads besides the SAEs
    (:func:`sae_med.report.exported.export_needs`): the eval caches (built if missing) and,
    for Neuronpedia, the model's tokenizer and unembedding; None for the per-SAE formats.
    Hand it to :func:`sae_med.report.export.export_saes`."""
    needs = export_needs(source, fmt)
    if needs is None:
        return None
    cfg = needs.config
    caches = {c: cache_for(cfg, c, "eval", progress) for c in needs.eval_corpora}
    if not needs.model:
        return RunInputs(cfg, caches)
    model = load_model_for(cfg)
    return RunInputs(cfg, caches, ModelLens(model.tokenizer, model.W_U.cpu(), model.n_layers,
                                            model.d_model))


def train_source(cfg: Config, corpus: str, progress: bool = True) -> BatchSource:
    """What the SAEs of ``corpus`` train on: its cache, or a stream (``train.source``)."""
    if cfg.train.source == "stream":
        return ActivationStream(load_model_for(cfg), cfg, corpus)
    return cache_for(cfg, corpus, "train", progress)


class Sweep(NamedTuple):
    """One training sweep of a run: its corpus and seed replicate."""

    corpus: str
    replicate: int


def stage_train(cfg: Config, progress: bool = True) -> dict:
    """Train (or resume, or reuse) the SAE sweep of each train corpus and seed replicate,
    the unfinished ones ``train.workers`` at a time (:func:`_train_parallel`).

    Returns ``{train_corpus: [TrainResult, ...]}`` ordered by replicate, then
    ``cfg.sae.l0_targets`` (replicate 0 first, so ``next(r for r in runs if r.l0_target
    == t)`` is replicate 0). A finished run whose checkpoint key matches is reused; one for
    another config or cache is retrained from scratch (with a warning), never reused. A
    finished sweep's results come from its saved metadata: no checkpoint is opened and no
    file written.
    """
    return train_runs([cfg], progress)[0]


def shared_pass_groups(cfg: Config) -> list[list[Config]]:
    """This config's run and its replications, grouped where their SAEs read the same
    batches: runs equal but for their name and ``sae`` section (``sae.seeds`` apart), e.g.
    one per architecture or width, whose sweeps :func:`train_runs` trains from one pass.
    Groups of one run are left out."""
    groups: dict[str, list[Config]] = {}
    for c in [cfg, *cfg.replication_configs().values()]:
        reads = {k: v for k, v in c.to_dict().items()
                 if k not in ("name", "sae", *RUN_SECTIONS)}
        groups.setdefault(stable_hash({**reads, "seeds": c.sae.seeds}), []).append(c)
    return [g for g in groups.values() if len(g) > 1]


def train_runs(cfgs: Sequence[Config], progress: bool = True) -> list[dict]:
    """:func:`stage_train` of runs of one :func:`shared_pass_groups` group: every sweep
    (corpus, replicate) of them all trains from one pass over its activations
    (:func:`sae_med.train.sweep.train_sweeps`), the unfinished ones ``train.workers`` at a
    time; each run's SAEs are the files its own :func:`stage_train` writes. Returns each
    run's ``{train_corpus: [TrainResult, ...]}``, in ``cfgs`` order."""
    first = cfgs[0]
    sweeps = [Sweep(c, r) for c in first.train_corpora for r in range(first.sae.seeds)]
    sources = {c: train_source(first, c, progress) for c in first.train_corpora}
    results = {(i, sw): done for i, cfg in enumerate(cfgs) for sw in sweeps
               if (done := finished_results(cfg, sources[sw.corpus], _sweep_dir(cfg, sw),
                                            sw.corpus, sw.replicate)) is not None}
    todo = [sw for sw in sweeps if any((i, sw) not in results for i in range(len(cfgs)))]
    roots = {c: src.root for c, src in sources.items() if isinstance(src, ActivationCache)}
    if first.train.workers > 1 and len(todo) > 1:
        if runtime.world_size() > 1 or len(roots) < len(sources):
            log.info("train.workers=%d ignored: %s; training one sweep at a time",
                     first.train.workers, "the torchrun ranks share each sweep"
                     if runtime.world_size() > 1 else "training streams its activations")
        else:
            for sw, runs in zip(todo, _train_parallel(cfgs, todo, roots, progress),
                                strict=True):
                results |= {(i, sw): r for i, r in enumerate(runs)}
    out: list[dict] = [{c: [] for c in first.train_corpora} for _ in cfgs]
    for sw in sweeps:
        runs = [results.get((i, sw)) for i in range(len(cfgs))]
        if any(r is None for r in runs):
            runs = _train_sweep(cfgs, sw, sources[sw.corpus], progress)
        for o, r in zip(out, runs, strict=True):
            o[sw.corpus] += r
    return out


def _sweep_dir(cfg: Config, sweep: Sweep) -> Path:
    return sweep_dir(cfg, sweep.corpus, sweep.replicate)


def _train_sweep(cfgs: Sequence[Config], sweep: Sweep, source: BatchSource, progress: bool,
                 bar_position: int = 0) -> list[list]:
    """Train (or resume, or reuse) one sweep of each of ``cfgs`` from one pass over
    ``source`` in this process; a stream's tally of what it read (and cut) is logged, as a
    cache's is when it is built. Each run's results, in ``cfgs`` order."""

    results = train_sweeps([SweepRun(c, _sweep_dir(c, sweep)) for c in cfgs], source,
                           sweep.corpus, sweep.replicate, resume=True, progress=progress,
                           retrain_other_run=True, bar_position=bar_position)
    if isinstance(source, ActivationStream) and source.tally.documents:
        log.info("train %s: %s", sweep.corpus, source.describe_tally())
    return results


_WORKER_SLOT = 0
"""In a :func:`_train_parallel` worker process: its slot (0 .. workers - 1), the row of
its progress bar."""


def _init_worker(slots: Any, threads: int, log_level: int) -> None:
    global _WORKER_SLOT
    with slots.get_lock():
        _WORKER_SLOT, slots.value = slots.value, slots.value + 1
    torch.set_num_threads(threads)
    logging.basicConfig(level=log_level, format=LOG_FORMAT)


@cache
def _worker_cache(root: Path) -> ActivationCache:
    """A cache opened (and its shards' hashes checked) once per worker process, from its
    folder: no model in the worker."""
    return ActivationCache(root)


def _worker_sweep(cfgs: Sequence[Config], sweep: Sweep, cache_root: Path, progress: bool
                  ) -> list[list]:
    return _train_sweep(cfgs, sweep, _worker_cache(cache_root), progress,
                        bar_position=_WORKER_SLOT)


def _train_parallel(cfgs: Sequence[Config], sweeps: Sequence[Sweep], roots: dict[str, Path],
                    progress: bool) -> list[list[list]]:
    """:func:`_train_sweep` of every sweep, ``train.workers`` at a time, each in a process
    of its own with this process's torch threads divided between them: the sparse step's
    gathers, sorts and sparse products divide poorly between threads, so sweeps side by
    side do more steps than one sweep on every thread. Results in ``sweeps`` order; the
    first failure cancels the sweeps not yet started."""
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    workers = min(cfgs[0].train.workers, len(sweeps))
    threads = max(1, torch.get_num_threads() // workers)
    log.info("training %d sweeps, %d at a time (%d torch threads each)", len(sweeps),
             workers, threads)
    init = (ctx.Value("i", 0), threads, logging.getLogger("sae_med").getEffectiveLevel())
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=init) as pool:
        futures = [pool.submit(_worker_sweep, cfgs, sw, roots[sw.corpus], progress)
                   for sw in sweeps]
        try:
            return [_sweep_result(f, workers) for f in futures]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _sweep_result(future: Future, workers: int) -> list:
    """A worker's result, or its error; a worker killed outright (SIGKILL, out of memory)
    becomes one clear :class:`~sae_med.train.records.TrainingError`."""

    try:
        return future.result()
    except BrokenProcessPool as err:
        raise TrainingError(
            f"a training worker process died (killed, or out of memory?) with "
            f"train.workers={workers}; finished sweeps are saved and the others resume "
            f"from their last checkpoints when you rerun (train.workers=1 needs less "
            f"memory)") from err


def stage_evaluate(cfg: Config, progress: bool = True) -> Path:
    """Score every trained SAE on every eval corpus; returns ``results.json``'s path.

    Reused when its ``inputs_key`` (config, every SAE's weights hash, every eval cache's
    key) matches; recomputed otherwise."""

    stage_train(cfg, progress)
    return _evaluate_once(cfg, sae_dirs(cfg), cfg.run_path / RESULTS_NAME, progress,
                          baseline_specs(cfg))


BASELINE_PREFIX = "baseline/"
"""The sae_id prefix of a config's ``baselines`` in results rows."""


def baseline_specs(cfg: Config) -> dict[str, str]:
    """``{sae_id: SAE spec}`` of the config's ``baselines`` (ids ``baseline/NAME``)."""
    return {BASELINE_PREFIX + name: b.sae for name, b in cfg.baselines.items()}


def _spec_key(spec: str) -> str:
    """What identifies a baseline's weights: its files' hashes when it is on disk (a
    re-downloaded or replaced file is a new input), else its hub spec."""
    path = Path(spec)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return spec if not path.exists() else ",".join(file_sha256(f) for f in files)


def _evaluate_once(cfg: Config, dirs: dict[str, Path], path: Path, progress: bool,
                   baselines: dict[str, str] | None = None) -> Path:
    """Score the SAEs of ``dirs`` (``{sae_id: folder}``) and ``baselines`` (``{sae_id:
    spec}``) on every eval corpus into ``path``, unless its ``inputs_key`` says that was
    done with these inputs."""
    model = load_model_for(cfg)
    caches = {c: cache_for(cfg, c, "eval", progress) for c in cfg.eval_corpora}
    key = stable_hash({
        "schema_version": SCHEMA_VERSION,
        # every section but those the evaluation never reads
        "config": {k: v for k, v in cfg.to_dict().items()
                   if k not in ("autointerp", *RUN_SECTIONS)},
        "saes": {i: json.loads((d / CFG_FILENAME).read_text())["weights_sha256"]
                 for i, d in dirs.items()},
        **({"baselines": {i: _spec_key(s) for i, s in baselines.items()}} if baselines
           else {}),
        "caches": {c: cache.key for c, cache in caches.items()}})
    if path.exists() and json.loads(path.read_text()).get("inputs_key") == key:
        log.info("reusing %s (inputs unchanged)", path)
        return path
    specs = {**{i: str(d) for i, d in dirs.items()}, **(baselines or {})}
    return evaluate_paths(cfg, list(specs.values()), list(cfg.eval_corpora), model=model,
                          out_path=path, progress=progress, sae_ids=list(specs),
                          extra={"inputs_key": key}, caches=caches)


def stage_learning_curve(cfg: Config, progress: bool = True) -> list[CurvePoint]:
    """The learning curve of ``cfg`` (a config's
    :meth:`~sae_med.config.Config.learning_curve_config`): its caches and long runs, then
    each budget's SAEs (snapshots, and the full run last) scored on every eval corpus
    into ``learning_curve/tokens_<budget>.json``, each reused while its inputs match."""

    if not cfg.train.snapshot_tokens:
        raise ValueError(f"config {cfg.name!r} saves no snapshots (train.snapshot_tokens); "
                         "pass a config's learning_curve_config()")
    stage_cache(cfg, progress)
    stage_train(cfg, progress)
    final, tc = sae_dirs(cfg), cfg.train
    points = []
    for budget in curve_budgets(tc.n_tokens, tc.snapshot_tokens):
        if budget == tc.n_tokens:
            dirs = final
        elif tc.snapshots_annealed:
            dirs = sae_dirs(annealed_run(cfg, budget, progress))
        else:
            dirs = {i: snapshot_dir(d, budget) for i, d in final.items()}
        path = cfg.run_path / CURVE_DIR / results_name(budget)
        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("learning curve: scoring the SAEs at %s training tokens", f"{budget:,}")
        points.append(CurvePoint(budget, _evaluate_once(cfg, dirs, path, progress)))
    return points


def annealed_run(cfg: Config, budget: int, progress: bool = True) -> Config:
    """The curve run ``cfg`` trained for ``budget`` tokens on its own, decay included
    (``train.snapshots_annealed``), in ``{run}/annealed/tokens_<budget>``; its config."""
    tc = cfg.train
    short = dataclasses.replace(
        cfg, output_dir=str(cfg.run_path / ANNEALED_DIR), name=tokens_dirname(budget),
        train=dataclasses.replace(tc, n_tokens=budget, snapshot_tokens=(),
                                  dead_window_tokens=min(tc.dead_window_tokens, budget)))
    log.info("learning curve: a run of its own to %s training tokens", f"{budget:,}")
    stage_train(short, progress)
    return short


def run_experiment(cfg: Config, progress: bool = True) -> Path:
    """cache → train → evaluate, then the same for each of ``cfg.replications`` (other
    models, architectures or widths; the sweeps of runs that differ only in their SAEs
    first train together, :func:`shared_pass_groups`), then :func:`stage_learning_curve`
    for ``cfg.learning_curve``; returns this config's results JSON."""
    cfg.run_path.mkdir(parents=True, exist_ok=True)
    write_json_if_changed(cfg.run_path / CONFIG_NAME, cfg.to_dict())
    stage_cache(cfg, progress)
    for group in shared_pass_groups(cfg):  # e.g. the architectures of one model
        log.info("training the sweeps of %s from one pass", ", ".join(c.name for c in group))
        train_runs(group, progress)
    path = stage_evaluate(cfg, progress)
    for name, rep in cfg.replication_configs().items():
        log.info("replication %r: %s, block %d", name, rep.model.name, rep.model.hook_layer)
        run_experiment(rep, progress)
    if (curve := cfg.learning_curve_config()) is not None:
        log.info("learning curve: run %r", curve.name)
        stage_learning_curve(curve, progress)
    return path


def middle_target(cfg: Config, l0_target: float = 0.0) -> float:
    """``l0_target``, or the middle of ``cfg.sae.l0_targets`` when it is 0 (the SAEs the
    case-study stages look at); an error names the targets when it is not one of them."""
    targets = list(cfg.sae.l0_targets)
    target = l0_target or targets[len(targets) // 2]
    if target not in targets:
        raise ValueError(f"l0_target {target:g} is not one of sae.l0_targets {targets}")
    return target


def saes_at(cfg: Config, l0_target: float = 0.0, corpora: Sequence[str] = (),
            progress: bool = True) -> dict[str, LinearSAE]:
    """Replicate 0 of each training corpus's SAE (or of ``corpora``) at
    :func:`middle_target` ``l0_target``, trained first if needed."""

    target = middle_target(cfg, l0_target)
    stage_train(cfg, progress)
    return {c: load_sae(cfg.run_path / SAES_DIR / sae_id(c, 0, target))
            for c in corpora or cfg.train_corpora}


def stage_autointerp(cfg: Config, l0_target: float = 0.0, eval_corpus: str = "",
                     progress: bool = True) -> RunScores:
    """Explain and score every training corpus's SAEs at ``l0_target``
    (:func:`middle_target`), its ``autointerp.n_latents`` latents spread over all
    ``sae.seeds`` replicates (:func:`~sae_med.interpret.autointerp.score_saes`), on the
    ``eval_corpus`` evaluation cache (empty: the first evaluation corpus), with the
    configured chat backend (cached under the cache dir) and budget
    (:func:`~sae_med.interpret.autointerp.run_budget`: the demo unless
    ``autointerp.demo=false``). Caches and SAEs come from the stages above."""

    target = middle_target(cfg, l0_target)
    eval_corpus = eval_corpus or cfg.eval_corpora[0]
    model = load_model_for(cfg)
    cache = cache_for(cfg, eval_corpus, "eval", progress)
    runs = {corpus: sorted((r for r in results if r.l0_target == target),
                           key=lambda r: r.replicate)
            for corpus, results in stage_train(cfg, progress=progress).items()}
    budget = run_budget(cfg.autointerp)
    if budget.demo:
        log.warning("autointerp: demo budget (%s); autointerp.demo=false runs the real "
                    "comparison", ", ".join(f"{k}={v}" for k, v in DEMO_BUDGET.items()))
    log.info("autointerp: SAEs at L0 target %g on %s", target, eval_corpus)
    saes = {c: [load_sae(r.path) for r in rs] for c, rs in runs.items()}
    scores = autointerp.score_saes(saes, cache, model, make_chat(budget, cfg.cache_path),
                                   budget, progress)
    l0 = {c: math.fsum(r.metrics.l0 if r.metrics else math.nan for r in rs) / len(rs)
          for c, rs in runs.items()}
    return RunScores(scores, l0, target, eval_corpus, budget)


def stage_diagnose(cfg: Config, eval_corpus: str = "", l0_target: float = 0.0,
                   max_tokens: int = 0, progress: bool = True) -> dict:
    """:func:`~sae_med.measure.diagnose.diagnose_sae` for replicate 0 of each training corpus at
    ``l0_target`` (0: the middle of the sweep) on the CE documents of ``eval_corpus``
    (empty: the first eval corpus), the first of them holding ``max_tokens`` scored
    tokens when that is > 0. Returns ``{train_corpus: DamageReport}``."""

    eval_corpus = eval_corpus or cfg.eval_corpora[0]
    saes = saes_at(cfg, l0_target, progress=progress)
    model = load_model_for(cfg)
    batches = ce_batches(model, cfg, eval_corpus, max_tokens=max_tokens)
    subjects = {}
    for corpus, sae in saes.items():
        cache = cache_for(cfg, corpus, "train", progress)
        n = min(cache.n_tokens, 8192)  # a sample: mean, massive dims, error subspace
        subjects[corpus] = Subject(reconstruction_fn(sae), cache.activations(0, n),
                                   cache.tokens().token_ids)
    return diagnose_saes(model, batches, cfg.model.hook_layer, subjects, seed=cfg.seed)


# --------------------------------------------------------------------------------------
# `sae-med evaluate`
# --------------------------------------------------------------------------------------

def sae_meta(spec: str | Path) -> dict[str, Any]:
    """Row columns for a saved SAE: where it came from (``sae_dir``, ``sae_format``), its
    shape, and for sae-med folders the ``cfg.json`` metadata (l0_target, replicate,
    steps, ...) and train_corpus (metadata, else the parent folder's name). Other formats
    get train_corpus "external" and replicate 0."""

    kind = sae_format(spec)
    if kind != "sae_med":
        return {"sae_dir": str(spec), "sae_format": kind, "train_corpus": "external",
                "l0_target": None, "replicate": 0}
    directory = Path(spec)
    cfg = json.loads((directory / CFG_FILENAME).read_text())
    md = cfg.get("metadata", {}) or {}
    return {"sae_dir": str(directory), "sae_format": kind, "d_model": cfg.get("d_model"),
            "d_sae": cfg.get("d_sae"),
            "train_corpus": md.get("train_corpus") or directory.parent.name,
            "l0_target": md.get("l0_target"), "replicate": int(md.get("replicate") or 0),
            "sae_metadata": md}


def _sae_ids(specs: Sequence[str | Path], meta: Sequence[Mapping[str, Any]]) -> list[str]:
    ids = [str(s) if str(s).startswith("sae_lens:") else
           sae_id(m["train_corpus"], m["replicate"], m["l0_target"])
           if (m.get("sae_metadata") or {}).get("train_corpus") else
           f"{Path(s).parent.name}/{Path(s).name}" for s, m in zip(specs, meta, strict=True)]
    if len(set(ids)) < len(ids):
        ids = [str(s) for s in specs]
    return ids


def evaluate_paths(cfg: Config, sae_dirs: Iterable[str | Path],
                   eval_corpora: Iterable[str] | None = None,
                   model: LanguageModel | None = None,
                   out_path: str | Path | None = None, progress: bool = True,
                   sae_ids: Sequence[str] | None = None,
                   extra: Mapping[str, Any] | None = None,
                   caches: Mapping[str, ActivationCache] | None = None) -> Path:
    """Load SAEs (any format of :func:`~sae_med.sae.io.load_any_sae`: sae-med folders, Gemma
    Scope params.npz, sae-lens folders or releases), score each on every eval corpus with
    the same pipeline and tokens, write results.

    SAE ids are ``sae_ids`` if given, else those of :func:`sae_med.layout.sae_id` for
    folders whose metadata names their training corpus (``medical/seed_0/l0_20``), else
    ``{parent}/{folder}``, or full paths if those collide. Eval caches come from
    ``caches`` when given, else ``build_cache(model, cfg, corpus, "eval",
    n_tokens=cfg.eval.n_tokens)``. Writes
    ``cfg.run_path / "results.json"`` (or ``out_path``) and the CSV beside it; returns
    the JSON path.
    """

    specs = list(sae_dirs)
    if not specs:
        raise ValueError("no SAE folders to evaluate")
    metas = [sae_meta(s) for s in specs]  # fails fast on bad specs
    ids = list(sae_ids) if sae_ids is not None else _sae_ids(specs, metas)
    if len(ids) != len(specs) or len(set(ids)) != len(ids):
        raise ValueError(f"need one distinct id per SAE: {len(specs)} SAEs, ids {ids}")
    meta = dict(zip(ids, metas, strict=True))
    corpora = list(cfg.eval_corpora if eval_corpora is None else eval_corpora)
    if model is None:
        model = load_model_for(cfg)
    dev = pick_device(cfg.model.device)
    saes = {i: load_any_sae(s, device=dev) for i, s in zip(ids, specs, strict=True)}
    for i, sae in saes.items():
        meta[i].update(d_model=sae.d_model, d_sae=sae.d_sae)
        if sae.d_model != model.d_model:
            raise ValueError(f"SAE {i} ({specs[ids.index(i)]}) has d_model {sae.d_model}, "
                             f"but {cfg.model.name} has d_model {model.d_model}: it was "
                             "trained on another model")
    weights = weights_record(cfg.model.name, getattr(model, "weights_hash", None))
    for i, spec in zip(ids, specs, strict=True):
        warn_if_other_weights(i, recorded_weights(spec), weights)
    rows: list[ResultRow] = []
    by_eval: dict[str, Comparison] = {}
    for corpus in corpora:
        cache = (caches or {}).get(corpus) or build_cache(
            model, cfg, corpus, "eval", n_tokens=cfg.eval.n_tokens, progress=progress)
        scored = score_saes(saes, model, cfg, corpus, cache, meta, progress)
        rows += scored.rows
        by_eval[corpus] = compare_families(scored, cfg, corpus)
    return write_results(rows, cfg, out_path or cfg.run_path / RESULTS_NAME,
                         list(by_eval.values()),
                         {**(extra or {}), "weights": weights.to_dict(),
                          # the forwards' dtype and why (model.dtype auto varies by machine)
                          "model_dtype": model.dtype_choice._asdict()},
                         contrasts(by_eval, cfg.train_corpora))


def model_runs(cfg: Config, comparisons: ComparisonTables, progress: bool = False
               ) -> list[ModelRun]:
    """The run of ``cfg`` (its ``comparisons``, already loaded by the caller) and of each
    of its replications, evaluated if needed (the stages reuse what is there), in config
    order."""
    return [ModelRun(model_label(cfg), cfg, comparisons),
            *(ModelRun(model_label(c), c, load_comparisons(stage_evaluate(c, progress)))
              for c in cfg.replication_configs().values())]


def concept_verdicts_by_model(cfg: Config, scores: Mapping[str, Any], families: Any,
                              domain: str, broad: str, l0_target: float = 0.0,
                              progress: bool = False) -> dict[str, Verdict]:
    """``{model label: verdict on CONCEPT_CLAIM}``: this run's from its autointerp
    ``scores`` and ``families`` (already computed by the caller), then each replication's
    from its own autointerp on ``domain`` text at ``l0_target`` and its own evaluation
    (the stages reuse what is there), in config order."""
    verdicts = {model_label(cfg): concept_verdict(scores, families, domain, broad, cfg.seed,
                                                   cfg.eval.bootstrap)}
    for rep in cfg.replication_configs().values():
        rep_run = stage_autointerp(rep, l0_target, eval_corpus=domain, progress=progress)
        rep_families = load_comparisons(stage_evaluate(rep, progress=progress)).families
        verdicts[model_label(rep)] = concept_verdict(rep_run.scores, rep_families, domain,
                                                     broad, rep.seed, rep.eval.bootstrap)
    return verdicts


def home_inputs(cfg: Config, l0_target: float = 0.0, progress: bool = True) -> HomeInputs:
    """The inputs of :func:`homefield_report`; a missing SAE is one error naming it."""

    domain, broad = home_corpora(cfg)
    target = middle_target(cfg, l0_target)
    dirs = {(side, r): cfg.run_path / SAES_DIR / sae_id(c, r, target)
            for side, c in (("domain", domain), ("broad", broad))
            for r in range(cfg.sae.seeds)}
    if missing := [str(d) for d in dirs.values() if not (d / CFG_FILENAME).exists()]:
        raise FileNotFoundError(f"no trained SAE in {missing[0]} ({len(missing)} missing): "
                                "run `sae-med train CONFIG` first")
    return HomeInputs(domain, broad, target, dirs, cache_for(cfg, domain, "train", progress),
                      cache_for(cfg, broad, "train", progress),
                      cache_for(cfg, domain, "eval", progress))


def homefield_report(cfg: Config, l0_target: float = 0.0, max_overlap: float = MAX_OVERLAP,
                     edges: Sequence[float] = RATIO_EDGES, out_path: str | Path | None = None,
                     progress: bool = True) -> HomeFieldReport:
    """The three diagnostics for the run's SAEs at :func:`~sae_med.experiment.middle_target`
    ``l0_target``, written to ``out_path`` (default ``cfg.run_path / homefield.json``)
    and reused while its inputs (config, SAE weights, caches, parameters) are unchanged.
    Needs the trained SAEs; builds missing caches."""
    inp = home_inputs(cfg, l0_target, progress)
    key = inputs_key(cfg, inp, max_overlap, edges)
    path = Path(out_path) if out_path is not None else cfg.run_path / HOMEFIELD_NAME
    if path.exists():
        doc = json.loads(path.read_text())
        if doc.get("schema_version") == HOMEFIELD_SCHEMA and doc.get("inputs_key") == key:
            log.info("reusing %s (inputs unchanged)", path)
            return HomeFieldReport.from_dict(doc)
    report = dataclasses.replace(
        compute_homefield(cfg, inp, load_model_for(cfg), max_overlap, edges, progress),
        inputs_key=key)
    write_json_atomic(path, report.to_dict())
    return report


def recipe_config(recipe: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The config file ``recipe`` with the ``sae.`` and ``train.`` ones of ``overrides``
    (the rest name models and corpora, which synthetic data have none of, and may not fit
    ``recipe``). A relative path missing from the working directory is read from the
    project, so the chapter's default finds configs/default.yaml wherever the book runs."""

    path = Path(recipe)
    if not path.exists() and not path.is_absolute():
        path = PROJECT_ROOT / path
    return load_config(path, [o for o in overrides if o.startswith(("sae.", "train."))])


def train_synthetic(cfg: Config, batch: SyntheticBatch, out_dir: str | Path,
                    progress: bool = False) -> list[LinearSAE]:
    """Train ``cfg``'s sweep (:func:`sae_med.train.sweep.train_saes`) on ``batch.acts``, or reuse
    a finished one with the same run key; returns the saved SAEs in target order."""
    source = TensorBatchSource(batch.acts)
    # the run key takes the source's key: without one, other rows would reuse these SAEs
    source.key = hashlib.sha256(batch.acts.contiguous().numpy().tobytes()).hexdigest()
    threads = torch.get_num_threads()
    # (512, 64) x (64, width) products are too small to split: on a busy 2-core machine a
    # second thread made the run 8x slower (3 s on one thread, 23 s on two)
    torch.set_num_threads(1)
    try:
        results = train_saes(cfg, source, out_dir, progress=progress,
                             train_corpus=SYNTHETIC_CORPUS)
    finally:
        torch.set_num_threads(threads)
    return [load_sae(r.path) for r in results]


def reported_run(cfg: Config, results_file: str = "") -> ReportedRun:
    """``cfg``'s run, evaluated if needed (the stages reuse what is there); or, given
    ``results_file``, that file with the config it records (a run made elsewhere)."""

    if results_file:
        return ReportedRun(config_from_dict(read_results(results_file)["config"]),
                           Path(results_file))
    return ReportedRun(cfg, stage_evaluate(cfg, progress=False))
