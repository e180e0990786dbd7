"""Score SAEs with one pipeline on the same tokens, and write the results table.

:func:`evaluate_saes` scores every SAE of a comparison (domain vs broad, all L0s) on one
evaluation corpus with *identical* code and tokens, which is what the paper's comparison
lacked (their two sides kept/dropped BOS differently):

a. **Reconstruction** over every token of the eval activation cache, in cache order
   (:class:`~sae_med.metrics.ReconstructionAccumulator`): l0, fve (centred, all tokens),
   fve_uncentered, mse, rel_bias with 95% bootstrap intervals over document groups;
   fve_batch_mean, dead_frac, dense_frac as point values (they are not functions of
   per-document sums: see :data:`POINT_METRICS`). ``fve_typical`` is the FVE over the
   tokens without a massive activation (‖x‖ ≤ ``eval.massive_norm_ratio`` × the cache's
   median ‖x‖; ``massive_tokens`` counts the others): one such token can decide a
   pooled FVE.
b. **Spliced loss** on the first eval documents (``cfg.eval.ce_docs`` of them, or enough for
   ``cfg.eval.ce_tokens`` scored tokens) of the corpus's eval split,
   tokenized like the cache (BOS, truncation to ``cache.ctx_len``, right padding) and
   spliced at the positions the cache keeps (non-special tokens when
   ``cache.exclude_special``): ce_clean, ce_spliced, ce_zero, delta_ce, loss_recovered,
   kl_spliced, kl_zero, kl_score with intervals over document groups. The clean and
   zero-ablated passes (and their unembeddings) run once per batch and are shared by all
   SAEs (:meth:`~sae_med.lm.LanguageModel.spliced_losses`).
c. **Dark matter** (:mod:`sae_med.dark_matter`): the cache's tokens are split by document
   (:func:`~sae_med.dark_matter.is_train_doc`, half/half), the linear predictor of the
   error is fitted on one half and scored on the other. Intervals resample the held-out
   documents *given the fitted map*: they show how much the scores depend on which
   documents are scored, not how much the map would change with other fit documents.
   (A refit per replicate was tried: resampling fit documents with replacement repeats
   tokens, which overfits the d_model² map and shifts every replicate's held-out R²
   below the point estimate, so its percentile interval did not contain the estimate.)
d. The **density histogram** of log10 firing rates over the cache's tokens.

Bootstrap replicates use one resample of document groups per eval corpus (seed derived
from ``cfg.seed``; groups: :func:`document_groups`), shared by every SAE and metric
(:class:`~sae_med.bootstrap.DocResample`), so every comparison is paired on documents.
The across-seed family means, the gaps between training corpora and each family's steps
between target L0s (:mod:`sae_med.compare`: hierarchical bootstrap, seeds then document
groups) are computed from those draws by :func:`compare_families`.

The results file (``results.json``, :func:`write_results`, schema :data:`SCHEMA_VERSION`)
holds the config, software versions, the model's exact weights (``weights``, a
:class:`~sae_med.weights.WeightsRecord`), one :class:`ResultRow` per (SAE, eval corpus) and
the family means, gaps, steps and contrasts of :mod:`sae_med.compare` (contrasts: home
advantages compared across eval corpora, :func:`~sae_med.compare.contrasts`);
``results.csv`` beside it is the tidy table of :func:`tidy_results` followed by the family,
gap, step and contrast rows (``row_type``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from sae_med.activations import ActivationCache
from sae_med.artifacts import atomic_path, derived_seed, write_json_atomic
from sae_med.bootstrap import (
    LEVEL,
    Draws,
    Interval,
    doc_resample,
    finite_or_none,
    percentile_interval,
    statistic_draws,
)
from sae_med.compare import Comparison, Contrast, SaeDraws, compare, contrasts
from sae_med.config import Config
from sae_med.dark_matter import DarkMatterFit, DarkMatterResult, is_train_doc
from sae_med.dark_matter import scores as dm_scores
from sae_med.lm import LanguageModel, TokenBatch
from sae_med.metrics import (
    DensityHistogram,
    DocCE,
    DocCEMean,
    ReconstructionAccumulator,
    SaeFn,
    concat_doc_stats,
    mean_ablation,
    metrics_from_doc_sums,
    summarize_ce,
    summarize_vs_mean,
)
from sae_med.sae import JumpReLUSAE

log = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
"""A run's results file (``results.csv`` beside it), under ``cfg.run_path``."""
SCHEMA_VERSION = 7
"""Version of ``results.json`` (5 resampled documents, not their groups, and counted no
dropped matched-FVE replicates; 4 had no steps between target L0s; 3 had no fve_typical;
2 had no seed replicates, family means or gaps; 1 had no dark-matter intervals)."""
RECON_METRICS = ("l0", "fve", "fve_uncentered", "mse", "rel_bias")
"""Bootstrapped from per-document sums (:class:`~sae_med.metrics.DocMetrics` fields)."""
TYPICAL_METRICS = ("fve_typical",)
"""Bootstrapped from the per-document sums of typical tokens (no massive activation)."""
POINT_METRICS = ("fve_batch_mean", "dead_frac", "dense_frac", "massive_tokens")
"""No interval: a per-batch average and set-level counts, not ratios of document sums."""
CE_METRICS = ("ce_clean", "ce_spliced", "ce_zero", "delta_ce", "loss_recovered",
              "kl_spliced", "kl_zero", "kl_score")
"""Bootstrapped from per-document CE sums (:class:`~sae_med.metrics.CESummary` fields)."""
MEAN_ABLATION_METRICS = ("ce_mean_ablation", "loss_recovered_mean")
"""Against the mean-ablation baseline (:func:`~sae_med.metrics.summarize_vs_mean`)."""
MEAN_ABLATION = "__mean_ablation__"
"""Key of the mean-ablation splice beside the SAEs' in the spliced-CE passes."""
DARK_MATTER_METRICS = ("r2_error_mean", "r2_error_pooled", "r2_norm", "fvu_linear",
                       "fvu_nonlinear", "fvu_sae")
DM_TRAIN_FRAC = 0.5
RECON_BATCH_TOKENS = 2048
"""Cache rows per SAE forward (dense latents: batch × d_sae floats)."""


# --------------------------------------------------------------------------------------
# Spliced loss, clean and zero passes shared across SAEs
# --------------------------------------------------------------------------------------

def ce_texts(model: LanguageModel, cfg: Config, corpus: str, n_docs: int | None = None
             ) -> list[str]:
    """The texts of the CE documents of ``corpus``'s eval split: the first ``n_docs``
    (default: enough for ``cfg.eval.ce_tokens`` scored tokens if set, else
    ``cfg.eval.ce_docs``); text i is the eval document of index i."""
    from sae_med.data import iter_documents

    e, ctx = cfg.eval, cfg.cache.ctx_len
    budget = e.ce_tokens if n_docs is None else 0
    n_docs = e.ce_docs if n_docs is None else n_docs
    texts: list[str] = []
    scored = 0
    for d in iter_documents(corpus, "eval"):
        if (scored >= budget) if budget else len(texts) >= n_docs:
            break
        texts.append(d.text)
        if budget:  # positions after the first (BOS) and before the last are scored
            scored += min(int(model.tokenize([d.text], ctx).attention_mask.sum()), ctx) - 2
    if (scored < budget) if budget else len(texts) < n_docs:
        log.warning("corpus %s/eval has only %d documents (%s)", corpus, len(texts),
                    f"ce_tokens={budget}" if budget else f"ce_docs={n_docs}")
    return texts


def ce_batches(model: LanguageModel, cfg: Config, corpus: str, n_docs: int | None = None
               ) -> list[TokenBatch]:
    """The CE documents of :func:`ce_texts`, tokenized, masked and packed into forwards as
    :func:`~sae_med.activations.build_cache` does. Batch rows are in token-length order;
    every SAE sees the same batches."""
    from sae_med.activations import packed_batches

    return [b for _, b in packed_batches(model, ce_texts(model, cfg, corpus, n_docs),
                                         cfg.cache)]


def document_groups(corpus: str, doc_ids: Sequence[str], n_docs: int) -> Tensor:
    """(n_docs,) the group code of each of the first ``n_docs`` eval documents of
    ``corpus`` (index: the document's place in the eval split, as the cache's
    ``doc_index`` and :func:`ce_texts` count it; one code per
    :attr:`~sae_med.documents.Document.group_key`), the bootstrap's unit.

    ``doc_ids`` (the cache's, by index) must be the corpus's: otherwise the groups would be
    another corpus version's."""
    from itertools import islice

    from sae_med.data import iter_documents

    docs = list(islice(iter_documents(corpus, "eval"), n_docs))
    if len(docs) < n_docs:
        raise ValueError(f"corpus {corpus}/eval has {len(docs)} documents, the evaluation "
                         f"scores {n_docs}")
    if any(d.doc_id != i for d, i in zip(docs, doc_ids, strict=False)):
        raise ValueError(f"the eval cache's documents are not {corpus}/eval's: rebuild it")
    codes: dict[str, int] = {}
    return torch.tensor([codes.setdefault(d.group_key, len(codes)) for d in docs],
                        dtype=torch.long)


# --------------------------------------------------------------------------------------
# Reconstruction and dark matter over a cache
# --------------------------------------------------------------------------------------

class DarkMatterSummary(NamedTuple):
    """The dark-matter block of a results row: held-out scores of the fit, or why there
    are none (``error``, when the document split leaves a side empty)."""

    train_frac: float
    seed: int
    scores: DarkMatterResult | None = None
    n_eval_documents: int | None = None
    error: str | None = None
    intervals: Mapping[str, Interval] | None = None
    """95% bootstrap over held-out documents given the fit (None when n_boot is 0)."""

    def to_dict(self) -> dict[str, Any]:
        if self.scores is None:
            return {"train_frac": self.train_frac, "seed": self.seed, "error": self.error}
        return {**{k: finite_or_none(v) for k, v in self.scores._asdict().items()},
                "train_frac": self.train_frac, "seed": self.seed,
                "n_eval_documents": self.n_eval_documents,
                "intervals": None if self.intervals is None else {
                    k: {"low": finite_or_none(iv.low), "high": finite_or_none(iv.high)}
                    for k, iv in self.intervals.items()}}


class ReconstructionPass(NamedTuple):
    accumulator: ReconstructionAccumulator
    dark_matter: DarkMatterSummary
    dark_matter_fit: DarkMatterFit | None
    """The fitted and scored :class:`DarkMatterFit` (None when the split failed)."""
    held_out_docs: Tensor | None
    """Sorted ids of the held-out documents (the rows of ``dark_matter_fit.per_doc()``)."""


def reconstruction_fn(sae: JumpReLUSAE) -> SaeFn:
    """Raw activations → the SAE's reconstruction, on the SAE's device and back."""
    dev = sae.W_enc.device

    def fn(x: Tensor) -> Tensor:
        return sae.decode(sae.latents(x.to(dev, sae.W_enc.dtype))).to(x.device, x.dtype)

    return fn


class CacheStats(NamedTuple):
    """What the evaluation needs from the whole eval cache, read in one pass."""

    mean: Float[Tensor, " d_model"]
    """E[x]: the mean-ablation baseline splices it in for every token."""
    median_norm: float
    """The median ‖x‖; ``eval.massive_norm_ratio`` times it separates massive-activation
    tokens (left out of ``fve_typical``) from typical ones."""


@torch.no_grad()
def cache_stats(cache: ActivationCache) -> CacheStats:
    total, norms = torch.zeros(cache.d_model, dtype=torch.float64), []
    for x in cache.iter_ordered(RECON_BATCH_TOKENS * 8):
        total += x.double().sum(0)
        norms.append(x.norm(dim=-1))
    return CacheStats((total / cache.n_tokens).float(), float(torch.cat(norms).median()))


@torch.no_grad()
def reconstruction_pass(sae: JumpReLUSAE, cache: ActivationCache, dm_seed: int,
                        batch_tokens: int = RECON_BATCH_TOKENS,
                        dm_train_frac: float = DM_TRAIN_FRAC,
                        typical_norm: float = math.inf) -> ReconstructionPass:
    """Stream the cache in order through ``sae``: reconstruction sums (per document, also
    over the typical tokens, ‖x‖ ≤ ``typical_norm``) and the dark-matter fit on the
    fit-split documents, then a second pass over the held-out documents to score it (the
    SAE is rerun there rather than the errors kept)."""
    doc = cache.tokens().doc_index
    train = is_train_doc(doc, dm_train_frac, dm_seed)
    dev = sae.W_enc.device
    acc = ReconstructionAccumulator()
    dm = DarkMatterFit()
    spans = [(s, min(s + batch_tokens, cache.n_tokens))
             for s in range(0, cache.n_tokens, batch_tokens)]
    for lo, hi in spans:
        x = cache.activations(lo, hi)
        acts = sae.latents(x.to(dev))  # CSR: decoding touches only the active latents
        x_hat = sae.decode(acts).to("cpu", torch.float32)
        acc.update(x, x_hat, acts, doc[lo:hi], typical=x.norm(dim=-1) <= typical_norm)
        t = train[lo:hi]
        if t.any():
            dm.add_train(x[t], (x - x_hat)[t])
    if dm.n_train == 0 or bool(train.all()):
        return ReconstructionPass(acc, DarkMatterSummary(
            dm_train_frac, dm_seed,
            error="the document split left one side empty: need more documents"), None, None)
    dm.fit()
    for lo, hi in spans:
        held = ~train[lo:hi]
        if held.any():
            x = cache.activations(lo, hi)[held]
            x_hat = sae.decode(sae.latents(x.to(dev))).to("cpu", torch.float32)
            dm.add_eval(x, x - x_hat, doc[lo:hi][held])
    held = torch.unique(doc[~train])
    return ReconstructionPass(acc, DarkMatterSummary(dm_train_frac, dm_seed, dm.result(),
                                                     int(held.numel())), dm, held)


# --------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------

class BootstrapInfo(NamedTuple):
    """How a row's intervals were drawn."""

    n_boot: int
    level: float
    seed: int
    n_groups: int
    """Document groups resampled (the unit: :func:`document_groups`)."""
    unit: str = "document group"


@dataclass(frozen=True)
class ResultRow:
    """One SAE scored on one eval corpus: a row of ``results.json`` (schema
    :data:`SCHEMA_VERSION`; :meth:`to_dict` is its JSON form). A new metric is a new name
    in :data:`RECON_METRICS`, :data:`POINT_METRICS` or :data:`CE_METRICS`."""

    sae_id: str
    """The key of the SAE in ``saes``."""
    eval_corpus: str
    """Corpus the SAE was scored on (its held-out eval split)."""
    n_tokens: int
    """Activation vectors scored for reconstruction (the whole eval cache)."""
    n_documents: int
    """Distinct documents those tokens come from."""
    ce_documents: int
    """Documents used for the spliced-loss metrics."""
    ce_tokens: int
    """Next-token predictions scored (positions t spliced, t + 1 real)."""
    metrics: Mapping[str, Interval]
    """Every metric with its 95% percentile bootstrap interval over document groups (low/high
    None for the point-only :data:`POINT_METRICS`); definitions in :mod:`sae_med.metrics`."""
    bootstrap: BootstrapInfo
    dark_matter: DarkMatterSummary
    density_histogram: DensityHistogram
    """Log10 firing rates of the latents over the cache's tokens."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Extra columns (train_corpus, l0_target, replicate, d_sae, ...), flat in the JSON."""
    split: str = "eval"

    def to_dict(self) -> dict[str, Any]:
        hist = self.density_histogram
        return {
            "sae_id": self.sae_id, "eval_corpus": self.eval_corpus, "split": self.split,
            "n_tokens": self.n_tokens, "n_documents": self.n_documents,
            "ce_documents": self.ce_documents, "ce_tokens": self.ce_tokens,
            "metrics": {k: {"value": finite_or_none(iv.value), "low": finite_or_none(iv.low),
                            "high": finite_or_none(iv.high)}
                        for k, iv in self.metrics.items()},
            "bootstrap": self.bootstrap._asdict(),
            "dark_matter": self.dark_matter.to_dict(),
            "density_histogram": {"edges": hist.edges.tolist(), "counts": hist.counts.tolist(),
                                  "n_dead": hist.n_dead, "n_tokens": self.n_tokens},
            **dict(self.meta),
        }


class ScoredCorpus(NamedTuple):
    """:func:`score_saes`'s output for one eval corpus."""

    rows: list[ResultRow]
    """One row per SAE, in ``saes`` order."""
    draws: dict[str, dict[str, Draws]]
    """``{sae_id: {metric: Draws}}``: every bootstrapped metric (tidy names, dark-matter
    scores as ``dark_matter.<name>``) on all documents and on each shared resample."""


def evaluate_saes(saes: Mapping[str, JumpReLUSAE], model: LanguageModel, cfg: Config,
                  eval_corpus: str, cache: ActivationCache,
                  meta: Mapping[str, Mapping[str, Any]] | None = None,
                  progress: bool = True) -> list[dict[str, Any]]:
    """The rows of :func:`score_saes` in their JSON form (:meth:`ResultRow.to_dict`)."""
    return [r.to_dict() for r in score_saes(saes, model, cfg, eval_corpus, cache, meta,
                                            progress).rows]


def score_saes(saes: Mapping[str, JumpReLUSAE], model: LanguageModel, cfg: Config, eval_corpus: str,
               cache: ActivationCache, meta: Mapping[str, Mapping[str, Any]] | None = None,
               progress: bool = True) -> ScoredCorpus:
    """Score every SAE in ``saes`` on ``eval_corpus`` with one pipeline (module docstring).

    Args:
        saes: SAEs on raw activations (folded), keyed by the id their rows carry.
        model: the :class:`~sae_med.lm.LanguageModel` the cache was built from.
        cfg: resolved config (``eval``, ``cache``, ``model.hook_name``, ``seed``).
        eval_corpus: corpus whose eval split ``cache`` holds (and CE documents come from).
        cache: the eval activation cache (``build_cache(..., eval_corpus, "eval", ...)``).
        meta: extra columns per SAE id (train_corpus, l0_target, ...), copied into its row.
        progress: tqdm bars.
    Returns:
        the rows (one per SAE, in ``saes`` order) and every SAE's bootstrap draws. Every
        metric of every SAE is resampled with one :class:`~sae_med.bootstrap.DocResample`
        (the CE documents are the corpus's first eval documents, ids 0, 1, ...; the
        dark-matter scores use the columns of their held-out documents), so comparisons
        across SAEs and metrics are paired.
    """
    if cache.hook != cfg.model.hook_name:
        raise ValueError(f"cache was built at {cache.hook}, config hook is "
                         f"{cfg.model.hook_name}")
    meta = meta or {}
    reserved = {*_ROW_COLUMNS, *_STRUCTURED, "metric", "value", "low", "high", "row_type"}
    for sae_id, m in meta.items():
        if clash := sorted(reserved & set(m)):
            raise ValueError(f"meta[{sae_id!r}] uses reserved row keys {clash}")
    boot_seed = derived_seed(cfg.seed, "bootstrap", eval_corpus)
    dm_seed = derived_seed(cfg.seed, "dark_matter", eval_corpus)
    n_boot = cfg.eval.bootstrap

    # (b) spliced loss, batch-outer so the clean/zero passes are shared by all SAEs
    from sae_med.activations import packed_batches

    packed = list(packed_batches(model, ce_texts(model, cfg, eval_corpus), cfg.cache))
    batches = [b for _, b in packed]
    fns = {k: reconstruction_fn(s) for k, s in saes.items()}
    stats = cache_stats(cache)
    fns[MEAN_ABLATION] = mean_ablation(stats.mean)
    doc_ce: dict[str, list[DocCE]] = {k: [] for k in fns}
    for batch in tqdm(batches, desc=f"spliced CE {eval_corpus}", disable=not progress):
        for k, losses in model.spliced_losses(batch.to(model.device), cfg.model.hook_layer,
                                              fns).items():
            doc_ce[k].append(DocCE(*(f.cpu() for f in losses.doc_sums())))

    cache_docs = torch.unique(cache.tokens().doc_index)
    # CE rows come in token-length order: each keeps its document's eval index, so its
    # resample count (and group) is its document's, as in the cache
    ce_ids = torch.tensor([i for idx, _ in packed for i in idx], dtype=torch.long)
    n_docs = int(torch.cat([cache_docs, ce_ids]).max()) + 1
    resample = doc_resample([cache_docs, ce_ids], n_boot, boot_seed,
                            document_groups(eval_corpus, cache.doc_ids(), n_docs))
    boot_info = BootstrapInfo(n_boot, LEVEL, boot_seed, resample.n_groups)
    typical_norm = cfg.eval.massive_norm_ratio * stats.median_norm
    rows, draws = [], {}
    for sae_id, sae in tqdm(saes.items(), desc=f"evaluate {eval_corpus}",
                            disable=not progress):
        # (a), (c), (d) over the cache
        rp = reconstruction_pass(sae, cache, dm_seed, typical_norm=typical_norm)
        res = rp.accumulator.result()
        per_doc = rp.accumulator.per_doc()
        d = statistic_draws(
            per_doc, lambda s: {k: getattr(metrics_from_doc_sums(s), k) for k in RECON_METRICS},
            resample.columns(per_doc.doc_ids))
        typical = rp.accumulator.per_doc(typical=True)
        d |= statistic_draws(typical, lambda s: {TYPICAL_METRICS[0]: metrics_from_doc_sums(s).fve},
                             resample.columns(typical.doc_ids))
        ce_docs = concat_doc_stats(doc_ce[sae_id]) if doc_ce[sae_id] else None
        if ce_docs is not None:
            d |= statistic_draws(ce_docs, lambda c: {k: getattr(summarize_ce(c), k)
                                                     for k in CE_METRICS},
                                 resample.columns(ce_ids))
            mean_docs = concat_doc_stats(doc_ce[MEAN_ABLATION])
            d |= statistic_draws(DocCEMean(ce_docs.n_tokens, ce_docs.ce_clean,
                                           ce_docs.ce_spliced, mean_docs.ce_spliced),
                                 summarize_vs_mean, resample.columns(ce_ids))
        metrics = {k: percentile_interval(v) for k, v in d.items()}
        points = res._asdict() | {"massive_tokens": float(res.n_tokens
                                                          - typical.n_tokens.sum())}
        metrics.update({k: Interval(points[k], None, None) for k in POINT_METRICS})
        dark_matter = rp.dark_matter
        if rp.dark_matter_fit is not None:
            dm = statistic_draws(rp.dark_matter_fit.per_doc(), dm_scores,
                                 resample.columns(rp.held_out_docs))
            dark_matter = dark_matter._replace(intervals=None if n_boot <= 0 else {
                k: percentile_interval(v) for k, v in dm.items()})
            d |= {f"dark_matter.{k}": v for k, v in dm.items()}
        draws[sae_id] = d
        rows.append(ResultRow(
            sae_id, eval_corpus, res.n_tokens, int(cache_docs.numel()),
            ce_documents=0 if ce_docs is None else int(ce_docs.n_tokens.shape[0]),
            ce_tokens=0 if ce_docs is None else int(ce_docs.n_tokens.sum()),
            metrics=metrics, bootstrap=boot_info, dark_matter=dark_matter,
            density_histogram=rp.accumulator.density_histogram(),
            meta=dict(meta.get(sae_id, {}))))
    return ScoredCorpus(rows, draws)


def compare_families(scored: ScoredCorpus, cfg: Config, eval_corpus: str) -> Comparison:
    """:func:`sae_med.compare.compare` over the rows whose SAE was trained on one of
    ``cfg.train_corpora`` at a target L0 (external SAEs are left out)."""
    saes = [SaeDraws(r.meta["train_corpus"], float(r.meta["l0_target"]),
                     int(r.meta.get("replicate") or 0), scored.draws[r.sae_id])
            for r in scored.rows if r.meta.get("train_corpus") in cfg.train_corpora
            and r.meta.get("l0_target") is not None]
    # one seed for every eval corpus: a training corpus's seed draws are then the same on
    # each text, so contrasts across texts count its seed variance once
    return compare(saes, eval_corpus, cfg.train_corpora, derived_seed(cfg.seed, "seeds"),
                   LEVEL)


# --------------------------------------------------------------------------------------
# Results file and tidy table
# --------------------------------------------------------------------------------------

def software_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for key, dist in (("torch", "torch"), ("transformers", "transformers"),
                      ("transformer_lens", "transformer-lens"), ("sae_lens", "sae-lens"),
                      ("sae_med", "sae-med"), ("pandas", "pandas")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "not installed"
    return out


_ROW_COLUMNS = ("sae_id", "eval_corpus", "split", "n_tokens", "n_documents", "ce_documents",
                "ce_tokens")
_STRUCTURED = ("metrics", "dark_matter", "density_histogram", "bootstrap")


def tidy_results(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Long table: one row per sae_id × eval_corpus × metric with value, low, high, the
    counts of :data:`_ROW_COLUMNS`, ``row_type`` "sae" and every meta key, sorted
    (lists/dicts as JSON text)."""
    import pandas as pd

    records = []
    for row in rows:
        base: dict[str, Any] = {k: row.get(k) for k in _ROW_COLUMNS}
        base["row_type"] = "sae"
        for k, v in row.items():
            if k in _ROW_COLUMNS or k in _STRUCTURED:
                continue
            base[k] = v if v is None or isinstance(v, str | int | float | bool) \
                else json.dumps(v, sort_keys=True, default=str)
        metrics = row.get("metrics", {})
        order = [*RECON_METRICS, *POINT_METRICS, *CE_METRICS, *MEAN_ABLATION_METRICS]
        for name in [*(k for k in order if k in metrics),
                     *sorted(k for k in metrics if k not in order)]:
            m = metrics[name]
            records.append({**base, "metric": name, "value": m["value"], "low": m["low"],
                            "high": m["high"]})
        dm = row.get("dark_matter") or {}
        for name in DARK_MATTER_METRICS:
            if name in dm:
                iv = (dm.get("intervals") or {}).get(name) or {}
                records.append({**base, "metric": f"dark_matter.{name}",
                                "value": dm[name], "low": iv.get("low"),
                                "high": iv.get("high")})
    df = pd.DataFrame.from_records(records)
    lead = [*_ROW_COLUMNS, "metric", "value", "low", "high"]
    if df.empty:
        return pd.DataFrame(columns=lead)
    for c in ("value", "low", "high"):
        df[c] = df[c].astype(float)
    return df[lead + sorted(c for c in df.columns if c not in lead)]


def write_results(rows: Sequence[ResultRow | Mapping[str, Any]], cfg: Config, path: str | Path,
                  comparisons: Sequence[Comparison] = (),
                  extra: Mapping[str, Any] | None = None,
                  contrast_rows: Sequence[Contrast] = ()) -> Path:
    """Write ``rows``, the ``comparisons`` (family means, gaps and steps) and the
    ``contrast_rows`` as the results JSON (schema in the module docstring) and the tidy CSV
    beside it (same stem, ``.csv``: the :func:`tidy_results` rows, then the family, gap,
    step and contrast rows, told apart by ``row_type``), both atomically; ``extra`` keys
    are added to the JSON's top level. Returns the JSON path."""
    import pandas as pd

    path = Path(path)
    rows = [r.to_dict() if isinstance(r, ResultRow) else r for r in rows]
    families = [f.to_dict() for c in comparisons for f in c.families]
    gaps = [g.to_dict() for c in comparisons for g in c.gaps]
    steps = [s.to_dict() for c in comparisons for s in c.steps]
    contrast_dicts = [c.to_dict() for c in contrast_rows]
    from sae_med.weights import weights_record

    doc = {"schema_version": SCHEMA_VERSION,
           "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "config": cfg.to_dict(), "software": software_versions(), "seed": cfg.seed,
           "weights": weights_record(cfg.model.name).to_dict(),
           "rows": list(rows), "families": families, "gaps": gaps, "steps": steps,
           "contrasts": contrast_dicts, **(extra or {})}
    write_json_atomic(path, doc)
    extra = [{**r, "seed_values": json.dumps(r["seed_values"])} if "seed_values" in r else r
             for r in families + gaps + steps + contrast_dicts]
    table = pd.concat([tidy_results(rows), pd.DataFrame.from_records(extra)],
                      ignore_index=True) if extra else tidy_results(rows)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: results schema {doc.get('schema_version')!r}, this "
                         f"sae-med reads {SCHEMA_VERSION}; rerun the evaluate stage")
    return doc


def load_results(path: str | Path) -> Any:
    """The tidy :func:`tidy_results` DataFrame of a results JSON (for notebooks)."""
    return tidy_results(read_results(path)["rows"])


class ComparisonTables(NamedTuple):
    """The family, gap, step and contrast rows of a results JSON as DataFrames (columns: the
    keys of :meth:`~sae_med.compare.FamilyScore.to_dict`,
    :meth:`~sae_med.compare.Gap.to_dict`, :meth:`~sae_med.compare.Step.to_dict` and
    :meth:`~sae_med.compare.Contrast.to_dict`)."""

    families: Any
    gaps: Any
    steps: Any
    contrasts: Any = None
    """None where a caller builds tables without contrasts (an empty frame when read)."""


def load_comparisons(path: str | Path) -> ComparisonTables:
    """Across-seed family means, paired gaps, steps and contrasts of a results JSON (for
    notebooks)."""
    return comparison_tables(read_results(path))


def comparison_tables(doc: Mapping[str, Any]) -> ComparisonTables:
    """:func:`load_comparisons` of an already read results document."""
    import pandas as pd

    frames = []
    for key in ComparisonTables._fields:
        df = pd.DataFrame.from_records(doc.get(key, []))
        for c in ("value", "low", "high"):
            if c in df:
                df[c] = df[c].astype(float)
        frames.append(df)
    return ComparisonTables(*frames)


# --------------------------------------------------------------------------------------
# `sae-med evaluate`
# --------------------------------------------------------------------------------------

def sae_meta(spec: str | Path) -> dict[str, Any]:
    """Row columns for a saved SAE: where it came from (``sae_dir``, ``sae_format``), its
    shape, and for sae-med folders the ``cfg.json`` metadata (l0_target, replicate,
    steps, ...) and train_corpus (metadata, else the parent folder's name). Other formats
    get train_corpus "external" and replicate 0."""
    from sae_med.sae import sae_format

    kind = sae_format(spec)
    if kind != "sae_med":
        return {"sae_dir": str(spec), "sae_format": kind, "train_corpus": "external",
                "l0_target": None, "replicate": 0}
    directory = Path(spec)
    cfg = json.loads((directory / "cfg.json").read_text())
    md = cfg.get("metadata", {}) or {}
    return {"sae_dir": str(directory), "sae_format": kind, "d_model": cfg.get("d_model"),
            "d_sae": cfg.get("d_sae"),
            "train_corpus": md.get("train_corpus") or directory.parent.name,
            "l0_target": md.get("l0_target"), "replicate": int(md.get("replicate") or 0),
            "sae_metadata": md}


def _sae_ids(specs: Sequence[str | Path], meta: Sequence[Mapping[str, Any]]) -> list[str]:
    from sae_med.train import sae_id

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
    """Load SAEs (any format of :func:`~sae_med.sae.load_any_sae`: sae-med folders, Gemma
    Scope params.npz, sae-lens folders or releases), score each on every eval corpus with
    the same pipeline and tokens, write results.

    SAE ids are ``sae_ids`` if given, else those of :func:`sae_med.train.sae_id` for
    folders whose metadata names their training corpus (``medical/seed_0/l0_20``), else
    ``{parent}/{folder}``, or full paths if those collide. Eval caches come from
    ``caches`` when given, else ``build_cache(model, cfg, corpus, "eval",
    n_tokens=cfg.eval.n_tokens)``. Writes
    ``cfg.run_path / "results.json"`` (or ``out_path``) and the CSV beside it; returns
    the JSON path.
    """
    from sae_med.activations import build_cache
    from sae_med.models import load_model, pick_device
    from sae_med.sae import load_any_sae
    from sae_med.weights import recorded_weights, warn_if_other_weights, weights_record

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
        model = load_model(cfg.model.name, cfg.model.device, cfg.cache_path, cfg.model.dtype)
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
