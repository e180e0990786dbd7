"""Score SAEs with one pipeline on the same tokens, and write the results table.

:func:`evaluate_saes` scores every SAE of a comparison (domain vs broad, all L0s) on one
evaluation corpus with *identical* code and tokens, which is what the paper's comparison
lacked (their two sides kept/dropped BOS differently):

a. **Reconstruction** over every token of the eval activation cache, in cache order
   (:class:`~sae_med.measure.metrics.ReconstructionAccumulator`): l0, fve (centred, all tokens),
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
   SAEs (:func:`~sae_med.measure.spliced.spliced_losses`).
c. **Dark matter** (:mod:`sae_med.measure.dark_matter`): the cache's tokens are split by document
   (:func:`~sae_med.measure.dark_matter.is_train_doc`, half/half), the linear predictor of the
   error is fitted on one half and scored on the other. Intervals resample the held-out
   documents *given the fitted map*: they show how much the scores depend on which
   documents are scored, not how much the map would change with other fit documents.
   (A refit per replicate was tried: resampling fit documents with replacement repeats
   tokens, which overfits the d_model² map and shifts every replicate's held-out R²
   below the point estimate, so its percentile interval did not contain the estimate.)
d. The **density histogram** of log10 firing rates over the cache's tokens.

Bootstrap replicates use one resample of document groups per eval corpus (seed derived
from ``cfg.seed``; groups: :func:`document_groups`), shared by every SAE and metric
(:class:`~sae_med.measure.bootstrap.DocResample`), so every comparison is paired on documents.
The across-seed family means, the gaps between training corpora and each family's steps
between target L0s (:mod:`sae_med.measure.compare`: hierarchical bootstrap, seeds then document
groups) are computed from those draws by :func:`compare_families`.

The results file (``results.json``, :func:`write_results`, schema :data:`SCHEMA_VERSION`)
holds the config, software versions, the model's exact weights (``weights``, a
:class:`~sae_med.lm.weights.WeightsRecord`), one :class:`ResultRow` per (SAE, eval corpus) and
the family means, gaps, steps and contrasts of :mod:`sae_med.measure.compare` (contrasts:
home advantages compared across eval corpora, :func:`~sae_med.measure.compare.contrasts`);
``results.csv`` beside it is the tidy table of
:func:`~sae_med.measure.results.tidy_results` followed by the family, gap, step and
contrast rows (``row_type``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from sae_med.artifacts import derived_seed
from sae_med.cache.activations import ActivationCache, packed_batches
from sae_med.config import Config
from sae_med.corpora.registry import iter_documents, use_config
from sae_med.lm.model import LanguageModel, TokenBatch
from sae_med.measure.bootstrap import (
    LEVEL,
    DocResample,
    Draws,
    Interval,
    doc_resample,
    percentile_interval,
    statistic_draws,
)
from sae_med.measure.compare import Comparison, SaeDraws, compare
from sae_med.measure.dark_matter import DarkMatterFit, is_train_doc
from sae_med.measure.dark_matter import scores as dm_scores
from sae_med.measure.metrics import (
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
from sae_med.measure.results import (
    CE_METRICS,
    POINT_METRICS,
    RECON_METRICS,
    ROW_COLUMNS,
    STRUCTURED,
    TYPICAL_METRICS,
    BootstrapInfo,
    DarkMatterSummary,
    ResultRow,
)
from sae_med.measure.spliced import spliced_losses
from sae_med.sae.base import LinearSAE

log = logging.getLogger(__name__)


MEAN_ABLATION = "__mean_ablation__"
"""Key of the mean-ablation splice beside the SAEs' in the spliced-CE passes."""
DM_TRAIN_FRAC = 0.5
RECON_BATCH_TOKENS = 2048
"""Cache rows per SAE forward (dense latents: batch × d_sae floats)."""


# --------------------------------------------------------------------------------------
# Spliced loss, clean and zero passes shared across SAEs
# --------------------------------------------------------------------------------------

def ce_texts(model: LanguageModel, cfg: Config, corpus: str, n_docs: int | None = None,
             max_tokens: int = 0) -> list[str]:
    """The texts of the CE documents of ``corpus``'s eval split: the first ``n_docs``
    (default: enough for ``cfg.eval.ce_tokens`` scored tokens if set, else
    ``cfg.eval.ce_docs``), cut short once they hold ``max_tokens`` scored tokens when
    that is > 0 (a prefix of the same documents); text i is the eval document of index
    i."""
    use_config(cfg)
    e, ctx = cfg.eval, cfg.cache.ctx_len
    budget = e.ce_tokens if n_docs is None else 0
    n_docs = e.ce_docs if n_docs is None else n_docs
    texts: list[str] = []
    scored = 0
    for d in iter_documents(corpus, "eval"):
        if ((scored >= budget) if budget else len(texts) >= n_docs) or (
                max_tokens and scored >= max_tokens):
            break
        texts.append(d.text)
        if budget or max_tokens:  # positions after the first (BOS), before the last
            scored += min(int(model.tokenize([d.text], ctx).attention_mask.sum()), ctx) - 2
    short = (scored < budget) if budget else len(texts) < n_docs
    if short and not (max_tokens and scored >= max_tokens):  # ran out of documents
        log.warning("corpus %s/eval has only %d documents (%s)", corpus, len(texts),
                    f"ce_tokens={budget}" if budget else f"ce_docs={n_docs}")
    return texts


def ce_batches(model: LanguageModel, cfg: Config, corpus: str, n_docs: int | None = None,
               max_tokens: int = 0) -> list[TokenBatch]:
    """The CE documents of :func:`ce_texts`, tokenized, masked and packed into forwards as
    :func:`~sae_med.cache.activations.build_cache` does. Batch rows are in token-length order;
    every SAE sees the same batches."""

    return [b for _, b in packed_batches(
        model, ce_texts(model, cfg, corpus, n_docs, max_tokens), cfg.cache)]


def document_groups(corpus: str, doc_ids: Sequence[str], n_docs: int) -> Tensor:
    """(n_docs,) the group code of each of the first ``n_docs`` eval documents of
    ``corpus`` (index: the document's place in the eval split, as the cache's
    ``doc_index`` and :func:`ce_texts` count it; one code per
    :attr:`~sae_med.corpora.documents.Document.group_key`), the bootstrap's unit.

    ``doc_ids`` (the cache's, by index) must be the corpus's: otherwise the groups would be
    another corpus version's."""

    docs = list(islice(iter_documents(corpus, "eval"), n_docs))
    if len(docs) < n_docs:
        raise ValueError(f"corpus {corpus}/eval has {len(docs)} documents, the evaluation "
                         f"scores {n_docs}")
    if any(d.doc_id != i for d, i in zip(docs, doc_ids, strict=False)):
        raise ValueError(f"the eval cache's documents are not {corpus}/eval's: rebuild it")
    codes: dict[str, int] = {}
    return torch.tensor([codes.setdefault(d.group_key, len(codes)) for d in docs],
                        dtype=torch.long)


class ReconstructionPass(NamedTuple):
    accumulator: ReconstructionAccumulator
    dark_matter: DarkMatterSummary
    dark_matter_fit: DarkMatterFit | None
    """The fitted and scored :class:`DarkMatterFit` (None when the split failed)."""
    held_out_docs: Tensor | None
    """Sorted ids of the held-out documents (the rows of ``dark_matter_fit.per_doc()``)."""


def reconstruction_fn(sae: LinearSAE) -> SaeFn:
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
def reconstruction_pass(sae: LinearSAE, cache: ActivationCache, dm_seed: int,
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


class ScoredCorpus(NamedTuple):
    """:func:`score_saes`'s output for one eval corpus."""

    rows: list[ResultRow]
    """One row per SAE, in ``saes`` order."""
    draws: dict[str, dict[str, Draws]]
    """``{sae_id: {metric: Draws}}``: every bootstrapped metric (tidy names, dark-matter
    scores as ``dark_matter.<name>``) on all documents and on each shared resample."""


def evaluate_saes(saes: Mapping[str, LinearSAE], model: LanguageModel, cfg: Config,
                  eval_corpus: str, cache: ActivationCache,
                  meta: Mapping[str, Mapping[str, Any]] | None = None,
                  progress: bool = True) -> list[dict[str, Any]]:
    """The rows of :func:`score_saes` in their JSON form (:meth:`ResultRow.to_dict`)."""
    return [r.to_dict() for r in score_saes(saes, model, cfg, eval_corpus, cache, meta,
                                            progress).rows]


def score_saes(saes: Mapping[str, LinearSAE], model: LanguageModel, cfg: Config,
               eval_corpus: str, cache: ActivationCache,
               meta: Mapping[str, Mapping[str, Any]] | None = None,
               progress: bool = True) -> ScoredCorpus:
    """Score every SAE in ``saes`` on ``eval_corpus`` with one pipeline (module docstring).

    Args:
        saes: SAEs on raw activations (folded), keyed by the id their rows carry.
        model: the :class:`~sae_med.lm.model.LanguageModel` the cache was built from.
        cfg: resolved config (``eval``, ``cache``, ``model.hook_name``, ``seed``).
        eval_corpus: corpus whose eval split ``cache`` holds (and CE documents come from).
        cache: the eval activation cache (``build_cache(..., eval_corpus, "eval", ...)``).
        meta: extra columns per SAE id (train_corpus, l0_target, ...), copied into its row.
        progress: tqdm bars.
    Returns:
        the rows (one per SAE, in ``saes`` order) and every SAE's bootstrap draws. Every
        metric of every SAE is resampled with one
        :class:`~sae_med.measure.bootstrap.DocResample` (the CE documents are the corpus's
        first eval documents, ids 0, 1, ...; the dark-matter scores use the columns of
        their held-out documents), so comparisons across SAEs and metrics are paired.
    """
    meta = meta or {}
    _check_scoring_inputs(cfg, cache, meta)
    stats = cache_stats(cache)
    ce_ids, doc_ce = _spliced_ce(saes, model, cfg, eval_corpus, stats, progress)
    shared = _shared_scoring(cfg, eval_corpus, cache, ce_ids, stats)
    rows, draws = [], {}
    for sae_id, sae in tqdm(saes.items(), desc=f"evaluate {eval_corpus}",
                            disable=not progress):
        row, draws[sae_id] = _score_one(sae_id, sae, cache, doc_ce, shared,
                                        dict(meta.get(sae_id, {})))
        rows.append(row)
    return ScoredCorpus(rows, draws)


def _check_scoring_inputs(cfg: Config, cache: ActivationCache,
                          meta: Mapping[str, Mapping[str, Any]]) -> None:
    if cache.hook != cfg.model.hook_name:
        raise ValueError(f"cache was built at {cache.hook}, config hook is "
                         f"{cfg.model.hook_name}")
    reserved = {*ROW_COLUMNS, *STRUCTURED, "metric", "value", "low", "high", "row_type"}
    for sae_id, m in meta.items():
        if clash := sorted(reserved & set(m)):
            raise ValueError(f"meta[{sae_id!r}] uses reserved row keys {clash}")


class SplicedCE(NamedTuple):
    """Per-document spliced-CE sums of every variant on one corpus's CE documents."""

    ce_ids: Tensor
    """The eval document index of each CE row (in token-length order)."""
    doc_ce: dict[str, list[DocCE]]
    """Variant (SAE id, or the mean ablation) -> its per-batch document sums."""


def _spliced_ce(saes: Mapping[str, LinearSAE], model: LanguageModel, cfg: Config,
                eval_corpus: str, stats: CacheStats, progress: bool) -> SplicedCE:
    """(b) the spliced loss of every SAE and of the mean ablation on the CE documents,
    batch-outer so the clean and zero passes are shared by all SAEs: the CE rows' eval
    document indices and each variant's per-document sums."""
    packed = list(packed_batches(model, ce_texts(model, cfg, eval_corpus), cfg.cache))
    fns = {k: reconstruction_fn(s) for k, s in saes.items()}
    fns[MEAN_ABLATION] = mean_ablation(stats.mean)
    doc_ce: dict[str, list[DocCE]] = {k: [] for k in fns}
    for _, batch in tqdm(packed, desc=f"spliced CE {eval_corpus}", disable=not progress):
        for k, losses in spliced_losses(model, batch.to(model.device), cfg.model.hook_layer,
                                        fns).items():
            doc_ce[k].append(DocCE(*(f.cpu() for f in losses.doc_sums())))
    # CE rows come in token-length order: each keeps its document's eval index, so its
    # resample count (and group) is its document's, as in the cache
    ce_ids = torch.tensor([i for idx, _ in packed for i in idx], dtype=torch.long)
    return SplicedCE(ce_ids, doc_ce)


class _Shared(NamedTuple):
    """What every SAE of one eval corpus is scored with."""

    eval_corpus: str
    cache_docs: Tensor
    ce_ids: Tensor
    resample: DocResample
    boot_info: BootstrapInfo
    dm_seed: int
    typical_norm: float
    n_boot: int


def _shared_scoring(cfg: Config, eval_corpus: str, cache: ActivationCache, ce_ids: Tensor,
                    stats: CacheStats) -> _Shared:
    """One resample of the corpus's documents (cache and CE rows alike) and the seeds."""
    boot_seed = derived_seed(cfg.seed, "bootstrap", eval_corpus)
    n_boot = cfg.eval.bootstrap
    cache_docs = torch.unique(cache.tokens().doc_index)
    n_docs = int(torch.cat([cache_docs, ce_ids]).max()) + 1
    resample = doc_resample([cache_docs, ce_ids], n_boot, boot_seed,
                            document_groups(eval_corpus, cache.doc_ids(), n_docs))
    return _Shared(eval_corpus, cache_docs, ce_ids, resample,
                   BootstrapInfo(n_boot, LEVEL, boot_seed, resample.n_groups),
                   derived_seed(cfg.seed, "dark_matter", eval_corpus),
                   cfg.eval.massive_norm_ratio * stats.median_norm, n_boot)


def _score_one(sae_id: str, sae: LinearSAE, cache: ActivationCache,
               doc_ce: Mapping[str, list[DocCE]], sh: _Shared, meta: dict[str, Any]
               ) -> tuple[ResultRow, dict[str, Tensor]]:
    """One SAE's row and bootstrap draws: (a), (c), (d) over the cache, (b) from its
    spliced-CE sums."""
    rp = reconstruction_pass(sae, cache, sh.dm_seed, typical_norm=sh.typical_norm)
    res = rp.accumulator.result()
    per_doc = rp.accumulator.per_doc()
    d = statistic_draws(
        per_doc, lambda s: {k: getattr(metrics_from_doc_sums(s), k) for k in RECON_METRICS},
        sh.resample.columns(per_doc.doc_ids))
    typical = rp.accumulator.per_doc(typical=True)
    d |= statistic_draws(typical, lambda s: {TYPICAL_METRICS[0]: metrics_from_doc_sums(s).fve},
                         sh.resample.columns(typical.doc_ids))
    ce_docs = concat_doc_stats(doc_ce[sae_id]) if doc_ce[sae_id] else None
    if ce_docs is not None:
        d |= _ce_draws(ce_docs, concat_doc_stats(doc_ce[MEAN_ABLATION]), sh)
    metrics = {k: percentile_interval(v) for k, v in d.items()}
    points = res._asdict() | {"massive_tokens": float(res.n_tokens - typical.n_tokens.sum())}
    metrics.update({k: Interval(points[k], None, None) for k in POINT_METRICS})
    dark_matter = rp.dark_matter
    if rp.dark_matter_fit is not None:
        dm = statistic_draws(rp.dark_matter_fit.per_doc(), dm_scores,
                             sh.resample.columns(rp.held_out_docs))
        dark_matter = dark_matter._replace(intervals=None if sh.n_boot <= 0 else {
            k: percentile_interval(v) for k, v in dm.items()})
        d |= {f"dark_matter.{k}": v for k, v in dm.items()}
    row = ResultRow(
        sae_id, sh.eval_corpus, res.n_tokens, int(sh.cache_docs.numel()),
        ce_documents=0 if ce_docs is None else int(ce_docs.n_tokens.shape[0]),
        ce_tokens=0 if ce_docs is None else int(ce_docs.n_tokens.sum()),
        metrics=metrics, bootstrap=sh.boot_info, dark_matter=dark_matter,
        density_histogram=rp.accumulator.density_histogram(), meta=meta)
    return row, d


def _ce_draws(ce_docs: DocCE, mean_docs: DocCE, sh: _Shared) -> dict[str, Tensor]:
    """Bootstrap draws of the CE metrics and of loss recovered against the mean ablation."""
    d = statistic_draws(ce_docs, lambda c: {k: getattr(summarize_ce(c), k) for k in CE_METRICS},
                        sh.resample.columns(sh.ce_ids))
    d |= statistic_draws(DocCEMean(ce_docs.n_tokens, ce_docs.ce_clean, ce_docs.ce_spliced,
                                   mean_docs.ce_spliced),
                         summarize_vs_mean, sh.resample.columns(sh.ce_ids))
    return d


def compare_families(scored: ScoredCorpus, cfg: Config, eval_corpus: str) -> Comparison:
    """:func:`sae_med.measure.compare.compare` over the rows whose SAE was trained on one of
    ``cfg.train_corpora`` at a target L0 (external SAEs are left out)."""
    saes = [SaeDraws(r.meta["train_corpus"], float(r.meta["l0_target"]),
                     int(r.meta.get("replicate") or 0), scored.draws[r.sae_id])
            for r in scored.rows if r.meta.get("train_corpus") in cfg.train_corpora
            and r.meta.get("l0_target") is not None]
    # one seed for every eval corpus: a training corpus's seed draws are then the same on
    # each text, so contrasts across texts count its seed variance once
    return compare(saes, eval_corpus, cfg.train_corpora, derived_seed(cfg.seed, "seeds"),
                   LEVEL)
