"""What the broad SAE lacks on the domain's text: three diagnostics that need no training.

(a) the broad SAE recentred on the domain's mean, (b) the domain SAE's advantage on novel
eval documents against the rest, (c) the advantage per token-frequency-ratio bin; each
paired on documents, with seeds × document groups intervals like :mod:`sae_med.measure.compare`.
:func:`sae_med.experiment.homefield_report` writes ``homefield.json`` in the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from sae_med.artifacts import derived_seed, stable_hash
from sae_med.cache.activations import ActivationCache, packed_batches
from sae_med.config import RUN_SECTIONS, Config, ConfigError
from sae_med.corpora.registry import documents_by_id, iter_documents
from sae_med.layout import CFG_FILENAME
from sae_med.lm.model import LanguageModel
from sae_med.measure.bootstrap import (
    DocResample,
    Draws,
    Interval,
    doc_resample,
    finite_or_none,
    percentile_interval,
    statistic_draws,
)
from sae_med.measure.compare import seed_draws, seed_mean
from sae_med.measure.metrics import (
    DocCE,
    DocSums,
    ReconstructionAccumulator,
    concat_doc_stats,
    metrics_from_doc_sums,
    summarize_ce,
)
from sae_med.measure.scoring import cache_stats, ce_texts, document_groups, reconstruction_fn
from sae_med.measure.spliced import spliced_losses
from sae_med.runtime import pick_device
from sae_med.sae.base import LinearSAE
from sae_med.sae.factory import load_sae

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_OVERLAP = 0.5
"""A document is novel when it has no one-word twin and at most this share of its word
3-grams occur in the domain's training documents."""
RATIO_EDGES = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0)
"""Bin edges of ln(frequency in the domain's training cache / in the broad one), add-one
counts; tokens in neither cache get a bin of their own."""
UNSEEN = "in neither cache"
SIDES = ("domain", "broad", "recentred")
"""The SAEs scored: domain, broad, and broad recentred on the domain's mean."""
_BATCH = 2048
_WORD = re.compile(r"\w+")


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recentring:
    """(a) One metric of the domain SAE, the broad SAE and the broad SAE recentred
    (``fold_input_mean_(E_domain[x] − E_broad[x])``: sae(x − δ) + δ) on domain text."""

    metric: str
    domain: Interval
    broad: Interval
    recentred: Interval
    gap: Interval
    """domain − broad (paired)."""
    closed: Interval
    """(recentred − broad) / (domain − broad): the share of the gap the mean shift closes."""


@dataclass(frozen=True)
class GapRow:
    """(b) or (c): both families on one subset of the domain's eval tokens."""

    part: str
    """``novelty`` or ``frequency``."""
    subset: str
    """``novel``, ``rest``, ``all``; or a frequency bin's label."""
    metric: str
    """``delta_ce`` (CE documents) and ``fve_typical`` (eval cache) for novelty;
    ``fvu_typical`` (Σ‖e‖² / Σ‖x − x̄‖² over the bin's typical tokens, x̄ the typical mean
    of the whole cache, so bins share one scale) and ``mse`` (every token) per bin."""
    n_documents: int
    n_tokens: int
    domain: Interval
    broad: Interval
    gap: Interval
    """domain − broad (paired)."""
    lo: float | None = None
    """A frequency bin's lower edge (None: open, or not a bin)."""
    hi: float | None = None


@dataclass(frozen=True)
class Survival:
    """(b) How much of one metric's gap survives on novel documents."""

    metric: str
    difference: Interval
    """gap(novel) − gap(rest)."""
    share: Interval
    """gap(novel) / gap(rest): 1 when all of it survives."""


class HomeFieldFrames(NamedTuple):
    """One wide DataFrame per part (Interval columns as ``name``, ``name_low``, ``name_high``)."""

    recentring: Any
    novelty: Any
    survival: Any
    frequency: Any


@dataclass(frozen=True)
class HomeFieldReport:
    """The three diagnostics of one run at one target L0 (``homefield.json``)."""

    domain: str
    broad: str
    l0_target: float
    n_seeds: int
    n_boot: int
    n_groups: int
    """Document groups of the domain's eval split resampled (the bootstrap's unit)."""
    shift_norm: float
    """‖E_domain[x] − E_broad[x]‖ over the two training caches."""
    max_overlap: float
    recentring: tuple[Recentring, ...]
    novelty: tuple[GapRow, ...]
    survival: tuple[Survival, ...]
    frequency: tuple[GapRow, ...]
    inputs_key: str = ""

    def frames(self) -> HomeFieldFrames:
        # deferred: pandas takes ~0.5 s to import; only the tables need it
        import pandas as pd

        return HomeFieldFrames(*(pd.DataFrame([_flat(r) for r in rows]) for rows in (
            self.recentring, self.novelty, self.survival, self.frequency)))

    def frame(self) -> Any:
        """Long table: part, subset, metric, quantity (domain, broad, recentred, gap,
        closed, difference, share), value, low, high, n_documents, n_tokens."""
        # deferred: pandas takes ~0.5 s to import; only the tables need it
        import pandas as pd

        rows = []
        for part, records in (("recentring", self.recentring), ("novelty", self.novelty),
                              ("survival", self.survival), ("frequency", self.frequency)):
            for r in records:
                subset = "novel vs rest" if part == "survival" else "all"
                base = {"part": part, "subset": getattr(r, "subset", subset),
                        "metric": r.metric, "n_documents": getattr(r, "n_documents", None),
                        "n_tokens": getattr(r, "n_tokens", None)}
                rows += [{**base, "quantity": f.name, **iv._asdict()}
                         for f in dataclasses.fields(r)
                         if isinstance(iv := getattr(r, f.name), Interval)]
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """One sentence from the numbers: the mean shift, the novel documents, the bins."""
        return (f"At target L0 {self.l0_target:g}, {self.recentring_clause()}; "
                f"{self.novelty_clause()}; {self.frequency_clause()}.")

    def recentring_clause(self) -> str:
        r = _one(self.recentring, "delta_ce")
        gap = (f"the ΔCE gap ({self.domain} SAE − {self.broad} SAE) on {self.domain} text "
               f"is {_num(r.gap, 3)} nats")
        if not r.gap.excludes_zero:  # no resolved gap: a share of it means nothing
            return f"{gap}, not resolved from 0, so no share of it is explained"
        return (f"{gap}, and recentring the {self.broad} SAE on the {self.domain} mean "
                f"closes {_pct(r.closed)} of it")

    def novelty_clause(self) -> str:
        novel, rest = (next(r for r in self.novelty if r.metric == "delta_ce"
                            and r.subset == s) for s in ("novel", "rest"))
        s = _one(self.survival, "delta_ce")
        kept = f" ({_pct(s.share)} of it)" if rest.gap.excludes_zero else ""
        return (f"on the {novel.n_documents} of {novel.n_documents + rest.n_documents} "
                f"CE documents with no one-word twin and ≤ {self.max_overlap:.0%} of their "
                f"word 3-grams among its training documents the ΔCE gap is "
                f"{_num(novel.gap, 3)} against {_num(rest.gap, 3)} on the rest{kept}")

    def frequency_clause(self) -> str:
        rows = [r for r in self.frequency if r.metric == "fvu_typical" and r.n_tokens
                and r.subset != UNSEEN]
        even = [r for r in rows if (-math.inf if r.lo is None else r.lo) <= 0
                < (math.inf if r.hi is None else r.hi)]
        if not rows or not even:
            return "no eval token has a frequency ratio near 1"
        top, even = rows[-1], even[0]
        return (f"the typical-token FVU gap is {_num(top.gap, 3)} on tokens with "
                f"ln(frequency ratio) {top.subset} against {_num(even.gap, 3)} on "
                f"tokens {even.subset}")

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **_to_json(self)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> HomeFieldReport:
        parts = {"recentring": Recentring, "novelty": GapRow, "survival": Survival,
                 "frequency": GapRow}
        kw = {f.name: doc[f.name] for f in dataclasses.fields(cls)}
        kw |= {k: tuple(_from_json(t, r) for r in doc[k]) for k, t in parts.items()}
        return cls(**kw)


def _one(rows: Sequence[Any], metric: str) -> Any:
    return next(r for r in rows if r.metric == metric)


def _num(iv: Interval, digits: int) -> str:
    def f(v: float | None) -> str:
        return "?" if v is None or not math.isfinite(v) else f"{v:+.{digits}f}"

    return f"{f(iv.value)} [{f(iv.low)}, {f(iv.high)}]"


def _pct(iv: Interval) -> str:
    def f(v: float | None) -> str:
        return "?" if v is None or not math.isfinite(v) else f"{v:.0%}"

    return f"{f(iv.value)} [{f(iv.low)}, {f(iv.high)}]"


def _flat(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        v = getattr(record, f.name)
        if isinstance(v, Interval):
            out |= {f.name: v.value, f"{f.name}_low": v.low, f"{f.name}_high": v.high}
        else:
            out[f.name] = v
    return out


def _to_json(record: Any) -> Any:
    if isinstance(record, Interval):
        return {"value": finite_or_none(record.value), "low": finite_or_none(record.low),
                "high": finite_or_none(record.high)}
    if dataclasses.is_dataclass(record):
        return {f.name: _to_json(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, tuple | list):
        return [_to_json(r) for r in record]
    return finite_or_none(record) if isinstance(record, float) else record


def _from_json(cls: type, doc: Mapping[str, Any]) -> Any:
    def read(v: Any) -> Any:
        if isinstance(v, dict):  # an Interval: JSON has no NaN, None stood for it
            return Interval(math.nan if v["value"] is None else v["value"], v["low"], v["high"])
        return v

    return cls(**{f.name: read(doc[f.name]) for f in dataclasses.fields(cls)})


# --------------------------------------------------------------------------------------
# (b) Novel documents: one-word twins and word 3-grams
# --------------------------------------------------------------------------------------

def doc_words(text: str) -> tuple[str, ...]:
    """The lowercased words (``\\w+`` runs) of ``text``."""
    return tuple(_WORD.findall(text.lower()))


def _substitutions(w: tuple[str, ...]) -> set[int]:
    # position i left out: equal keys at one i = equal but for the word at i
    return {hash((i, w[:i] + w[i + 1:])) for i in range(len(w))}


def _deletions(w: tuple[str, ...]) -> set[int]:
    return {hash(w[:i] + w[i + 1:]) for i in range(len(w))}


def _trigrams(w: tuple[str, ...]) -> list[int]:
    # padded, so documents of one or two words have 3-grams too
    p = ("<s>", *w, "</s>")
    return [hash(p[i:i + 3]) for i in range(len(p) - 2)]


class TwinIndex:
    """The training documents' words, indexed to find one-word twins (at most one word
    substituted, inserted or deleted) and word 3-grams; keys are Python hashes, so an index
    lives in one process."""

    def __init__(self, texts: Iterable[str]):
        self.exact: set[int] = set()
        self.substituted: set[int] = set()
        self.deleted: set[int] = set()
        self.trigrams: set[int] = set()
        for text in texts:
            w = doc_words(text)
            self.exact.add(hash(w))
            self.substituted |= _substitutions(w)
            self.deleted |= _deletions(w)
            self.trigrams.update(_trigrams(w))

    def has_twin(self, text: str) -> bool:
        w = doc_words(text)
        return (hash(w) in self.exact or hash(w) in self.deleted  # equal, or one word fewer
                or not self.substituted.isdisjoint(_substitutions(w))
                or not self.exact.isdisjoint(_deletions(w)))  # one word more

    def overlap(self, text: str) -> float:
        """The share of the text's (padded) word 3-grams found in the training documents."""
        grams = _trigrams(doc_words(text))
        return sum(g in self.trigrams for g in grams) / len(grams)


def novel_documents(texts: Sequence[str], index: TwinIndex, max_overlap: float = MAX_OVERLAP
                    ) -> Bool[Tensor, " docs"]:
    """True where text i has no one-word twin in ``index`` and at most ``max_overlap`` of
    its word 3-grams there."""
    return torch.tensor([not index.has_twin(t) and index.overlap(t) <= max_overlap
                         for t in texts], dtype=torch.bool)


# --------------------------------------------------------------------------------------
# (c) Token-frequency ratio
# --------------------------------------------------------------------------------------

def log_frequency_ratio(domain_ids: Int[Tensor, " n"], broad_ids: Int[Tensor, " m"],
                        vocab: int) -> tuple[Float[Tensor, " vocab"], Bool[Tensor, " vocab"]]:
    """ln((c_d(t) + 1) / N_d) − ln((c_b(t) + 1) / N_b) for every token id t < ``vocab``
    (add-one counts in two token samples), and whether t occurs in either."""
    cd = torch.bincount(domain_ids.long(), minlength=vocab)[:vocab].double()
    cb = torch.bincount(broad_ids.long(), minlength=vocab)[:vocab].double()
    ratio = ((cd + 1) / max(len(domain_ids), 1)).log() - ((cb + 1) / max(len(broad_ids), 1)).log()
    return ratio, (cd + cb) > 0


def ratio_bins(token_ids: Int[Tensor, " n"], ratio: Float[Tensor, " vocab"],
               seen: Bool[Tensor, " vocab"], edges: Sequence[float] = RATIO_EDGES
               ) -> Int[Tensor, " n"]:
    """Each token's bin: i for ratio in [edges[i-1], edges[i]) (0 below the first edge,
    len(edges) from the last), len(edges) + 1 for a token in neither sample."""
    ids = token_ids.long()
    b = torch.bucketize(ratio[ids], torch.tensor(list(edges), dtype=ratio.dtype), right=True)
    return torch.where(seen[ids], b, len(edges) + 1)


def bin_labels(edges: Sequence[float] = RATIO_EDGES) -> list[tuple[str, float | None,
                                                                   float | None]]:
    """(label, low edge, high edge) of each bin of :func:`ratio_bins`."""
    lows: list[float | None] = [None, *edges]
    highs: list[float | None] = [*edges, None]
    out = [(f"< {h:g}" if lo is None else f"≥ {lo:g}" if h is None else f"[{lo:g}, {h:g})",
            lo, h) for lo, h in zip(lows, highs, strict=True)]
    return [*out, (UNSEEN, None, None)]


# --------------------------------------------------------------------------------------
# Statistics of one SAE, paired on one document resample
# --------------------------------------------------------------------------------------

class Measured(NamedTuple):
    """A statistic on all documents of a subset and on each shared resample."""

    draws: Draws
    n_documents: int
    """Documents with at least one of the subset's tokens."""
    n_tokens: int


Stats = dict[tuple[str, str], Measured]
"""``{(metric, subset): Measured}`` of one SAE."""


class ErrSums(NamedTuple):
    """Per-row sums for a bin's relative error (leading dim ``rows``)."""

    n_tokens: Float[Tensor, " rows"]
    sq_err: Float[Tensor, " rows"]
    """Σ_t ‖x_t − x̂_t‖²."""
    sq_dev: Float[Tensor, " rows"]
    """Σ_t ‖x_t − x̄‖², x̄ one mean for every row (so bins compare on one scale)."""


def _rows(sums: Any, keep: Tensor) -> Any:
    return type(sums)(*(f[keep] for f in sums))


def measure(sums: Any, fn: Any, doc_of_rows: Int[Tensor, " rows"], resample: DocResample
            ) -> Measured:
    """``fn`` (per-row sums → float) on every row of ``sums`` (a NamedTuple with
    ``n_tokens``) and on each replicate of ``resample`` (rows weighted by their document's
    count); NaN with no tokens."""
    keep = sums.n_tokens > 0
    sums, docs = _rows(sums, keep), doc_of_rows[keep]
    if len(docs) == 0:  # summarize_ce would divide by a python 0
        return Measured(Draws(math.nan, np.full(len(resample.counts), math.nan)), 0, 0)
    d = statistic_draws(sums, lambda s: {"v": float(fn(s))}, resample.columns(docs))["v"]
    return Measured(d, int(torch.unique(docs).numel()), int(sums.n_tokens.sum()))


def _by_document(s: DocSums, doc: Int[Tensor, " rows"]) -> DocSums:
    """Rows of ``s`` summed per document (``doc`` of each row); doc_ids the documents."""
    uniq, inv = torch.unique(doc, return_inverse=True)
    return DocSums(uniq, *(torch.zeros(len(uniq), *f.shape[1:], dtype=f.dtype).index_add_(
        0, inv, f) for f in s[1:]))


def _err_sums(s: DocSums, mean: Float[Tensor, " d_model"]) -> ErrSums:
    # Σ‖x − μ‖² = Σ‖x‖² − 2 μ·Σx + n‖μ‖², from the sums already kept
    mu = mean.double()
    return ErrSums(s.n_tokens, s.sq_err, s.x_sq - 2 * s.x_sum @ mu + s.n_tokens * (mu @ mu))


@torch.no_grad()
def binned_sums(sae: LinearSAE, x: Float[Tensor, "tokens d_model"],
                key: Int[Tensor, " tokens"], typical: Bool[Tensor, " tokens"]
                ) -> tuple[DocSums, DocSums]:
    """Reconstruction sums of ``sae`` per distinct ``key`` (document × bin), of every
    token and of the typical ones (rows aligned)."""
    acc = ReconstructionAccumulator()
    dev = sae.W_enc.device
    for lo in range(0, len(x), _BATCH):
        xb = x[lo:lo + _BATCH]
        acts = sae.latents(xb.to(dev))  # CSR: decoding touches only the active latents
        acc.update(xb, sae.decode(acts).to("cpu", torch.float32), acts, key[lo:lo + _BATCH],
                   typical=typical[lo:lo + _BATCH])
    return acc.per_doc(), acc.per_doc(typical=True)


class EvalTokens(NamedTuple):
    """The domain's eval cache as the reconstruction statistics read it."""

    x: Float[Tensor, "tokens d_model"]
    doc: Int[Tensor, " tokens"]
    bin: Int[Tensor, " tokens"]
    """:func:`ratio_bins` of each token."""
    typical: Bool[Tensor, " tokens"]
    typical_mean: Float[Tensor, " d_model"]
    labels: list[tuple[str, float | None, float | None]]


def recon_stats(sae: LinearSAE, ev: EvalTokens, novel: Bool[Tensor, " docs"],
                resample: DocResample, full: bool = True) -> Stats:
    """Typical-token FVE on all documents; with ``full`` also on novel and other
    documents, and per frequency bin the typical-token FVU (Σ‖e‖² / Σ‖x − x̄_typical‖²)
    and the MSE of every token."""
    n_bins = len(ev.labels)
    every, typ = binned_sums(sae, ev.x, ev.doc * n_bins + ev.bin, ev.typical)
    doc, b = typ.doc_ids // n_bins, typ.doc_ids % n_bins
    per_doc = _by_document(typ, doc)
    subsets = {"all": torch.ones_like(per_doc.doc_ids, dtype=torch.bool)}
    if full:
        subsets |= {"novel": novel[per_doc.doc_ids], "rest": ~novel[per_doc.doc_ids]}
    out = {("fve_typical", name): measure(_rows(per_doc, keep),
                                          lambda s: metrics_from_doc_sums(s).fve,
                                          per_doc.doc_ids[keep], resample)
           for name, keep in subsets.items()}
    if not full:
        return out
    errs = {"fvu_typical": _err_sums(typ, ev.typical_mean),
            "mse": _err_sums(every, ev.typical_mean)}
    d_model = ev.x.shape[1]
    fns = {"fvu_typical": lambda s: s.sq_err.sum() / s.sq_dev.sum(),
           "mse": lambda s: s.sq_err.sum() / (s.n_tokens.sum() * d_model)}
    for i, (label, _, _) in enumerate(ev.labels):
        for metric, sums in errs.items():
            out[(metric, label)] = measure(_rows(sums, b == i), fns[metric], doc[b == i],
                                           resample)
    return out


def ce_stats(ce: DocCE, ce_ids: Int[Tensor, " docs"], novel: Bool[Tensor, " n"],
             resample: DocResample, full: bool = True) -> Stats:
    """ΔCE on all CE documents (rows of ``ce``, eval indices ``ce_ids``), and with
    ``full`` on the novel ones and the rest."""
    subsets = {"all": torch.ones_like(ce_ids, dtype=torch.bool)}
    if full:
        subsets |= {"novel": novel[ce_ids], "rest": ~novel[ce_ids]}
    return {("delta_ce", name): measure(_rows(ce, keep), lambda c: summarize_ce(c).delta_ce,
                                        ce_ids[keep], resample)
            for name, keep in subsets.items()}


def spliced_doc_ce(model: Any, batches: Sequence[Any], layer: int, fns: Mapping[str, Any],
                   progress: bool = True) -> dict[str, DocCE]:
    """Per-document CE sums of every splice in ``fns``, the clean and zero passes shared
    (:meth:`~sae_med.lm.model.LanguageModel.spliced_losses`); rows in batch order."""
    out: dict[str, list[DocCE]] = {k: [] for k in fns}
    for batch in tqdm(batches, desc="homefield spliced CE", disable=not progress):
        for k, losses in spliced_losses(model, batch.to(model.device), layer, fns).items():
            out[k].append(DocCE(*(f.cpu() for f in losses.doc_sums())))
    return {k: concat_doc_stats(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------
# Families across seeds, and the records
# --------------------------------------------------------------------------------------

def _diff(a: Draws, b: Draws) -> Draws:
    return Draws(a.point - b.point, a.reps - b.reps)


def _ratio(a: Draws, b: Draws) -> Draws:
    with np.errstate(divide="ignore", invalid="ignore"):
        return Draws(a.point / b.point if b.point else math.nan, a.reps / b.reps)


def families(stats: Mapping[tuple[str, int], Stats], corpus_of: Mapping[str, str],
             n_boot: int, seed: int) -> dict[str, Stats]:
    """Each side's across-seed mean of every statistic: seed replicates drawn per training
    corpus (``corpus_of[side]``; sides of one corpus share the draws, so the recentred
    broad SAE stays paired with the broad one), documents by the shared resample."""
    draws = {c: seed_draws(len({r for s, r in stats if corpus_of[s] == c}), n_boot,
                           derived_seed(seed, "seeds", c)) for c in set(corpus_of.values())}
    out: dict[str, Stats] = {}
    for side, corpus in corpus_of.items():
        reps = sorted(r for s, r in stats if s == side)
        first = stats[(side, reps[0])]
        out[side] = {k: m._replace(draws=seed_mean([stats[(side, r)][k].draws for r in reps],
                                                   draws[corpus]))
                     for k, m in first.items()}
    return out


def recentring_row(fam: Mapping[str, Stats], metric: str) -> Recentring:
    d, b, r = (fam[s][(metric, "all")].draws for s in SIDES)
    gap = _diff(d, b)
    return Recentring(metric, *(percentile_interval(v) for v in (
        d, b, r, gap, _ratio(_diff(r, b), gap))))


def gap_row(fam: Mapping[str, Stats], part: str, metric: str, subset: str,
            lo: float | None = None, hi: float | None = None) -> GapRow:
    d, b = fam["domain"][(metric, subset)], fam["broad"][(metric, subset)]
    return GapRow(part, subset, metric, d.n_documents, d.n_tokens,
                  percentile_interval(d.draws), percentile_interval(b.draws),
                  percentile_interval(_diff(d.draws, b.draws)), lo, hi)


def survival_row(fam: Mapping[str, Stats], metric: str) -> Survival:
    novel, rest = (_diff(fam["domain"][(metric, s)].draws, fam["broad"][(metric, s)].draws)
                   for s in ("novel", "rest"))
    return Survival(metric, percentile_interval(_diff(novel, rest)),
                    percentile_interval(_ratio(novel, rest)))


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------

class HomeInputs(NamedTuple):
    """What the report reads: the two training corpora, their SAEs and caches."""

    domain: str
    broad: str
    l0_target: float
    sae_dirs: dict[tuple[str, int], Path]
    """``{(side, replicate): folder}`` for sides ``domain`` and ``broad``."""
    domain_train: ActivationCache
    broad_train: ActivationCache
    eval_cache: ActivationCache
    """The domain's eval cache."""


def home_corpora(cfg: Config) -> tuple[str, str]:
    """(domain, broad): ``train_corpora[0]`` and the first other training corpus that is
    also an eval corpus."""
    domain = cfg.train_corpora[0]
    broad = next((c for c in cfg.train_corpora[1:] if c in cfg.eval_corpora), None)
    if domain not in cfg.eval_corpora or broad is None:
        raise ConfigError(f"homefield compares train_corpora[0] ({domain}) with another "
                          f"training corpus, both eval corpora; train_corpora "
                          f"{list(cfg.train_corpora)}, eval_corpora {list(cfg.eval_corpora)}")
    if cfg.train.source == "stream":
        raise ConfigError("homefield reads the training caches: train.source must be cache")
    return domain, broad


def inputs_key(cfg: Config, inp: HomeInputs, max_overlap: float, edges: Sequence[float]
               ) -> str:
    """A hash of everything the report depends on (like the evaluate stage's key)."""

    return stable_hash({
        "schema_version": SCHEMA_VERSION, "l0_target": inp.l0_target,
        "max_overlap": max_overlap, "edges": list(edges),
        "config": {k: v for k, v in cfg.to_dict().items()
                   if k not in ("autointerp", "output_dir", "name", *RUN_SECTIONS)},
        "saes": {f"{s}/{r}": json.loads((d / CFG_FILENAME).read_text())["weights_sha256"]
                 for (s, r), d in inp.sae_dirs.items()},
        "caches": [inp.domain_train.key, inp.broad_train.key, inp.eval_cache.key]})


class EvalDocuments(NamedTuple):
    """The domain's CE documents, which eval documents are novel, and the resample."""

    batches: list[Any]
    """The CE documents' forwards (:func:`~sae_med.measure.scoring.ce_texts`, packed as the
    evaluation packs them)."""
    ce_ids: Int[Tensor, " ce_docs"]
    """The eval index of each CE row, in batch order."""
    novel: Bool[Tensor, " docs"]
    """:func:`novel_documents` of the first eval documents, by eval index."""
    resample: DocResample
    """The evaluation's own document-group resample (same seed, groups and documents)."""


def eval_documents(cfg: Config, model: Any, inp: HomeInputs,
                   max_overlap: float = MAX_OVERLAP) -> EvalDocuments:
    """:class:`EvalDocuments`; novelty against the documents of the domain's training
    cache (what its SAE trained on), not the whole training split."""

    packed = list(packed_batches(model, ce_texts(model, cfg, inp.domain), cfg.cache))
    ce_ids = torch.tensor([i for idx, _ in packed for i in idx], dtype=torch.long)
    cache_docs = torch.unique(inp.eval_cache.tokens().doc_index)
    n_docs = int(torch.cat([cache_docs, ce_ids]).max()) + 1
    resample = doc_resample([cache_docs, ce_ids], cfg.eval.bootstrap,
                            derived_seed(cfg.seed, "bootstrap", inp.domain),
                            document_groups(inp.domain, inp.eval_cache.doc_ids(), n_docs))
    train = documents_by_id(inp.domain, "train", inp.domain_train.doc_ids())
    texts = [d.text for d in islice(iter_documents(inp.domain, "eval"), n_docs)]
    novel = novel_documents(texts, TwinIndex(d.text for d in train), max_overlap)
    log.info("homefield: %d of %d eval documents are novel", int(novel.sum()), n_docs)
    return EvalDocuments([b for _, b in packed], ce_ids, novel, resample)


def eval_tokens(cfg: Config, inp: HomeInputs, edges: Sequence[float] = RATIO_EDGES
                ) -> EvalTokens:
    """The domain's eval cache with each token's frequency bin and typical mask (‖x‖ ≤
    ``eval.massive_norm_ratio`` × the median ‖x‖, as the evaluation marks it)."""
    tok = inp.eval_cache.tokens()
    dom, brd = inp.domain_train.tokens().token_ids, inp.broad_train.tokens().token_ids
    vocab = int(torch.cat([dom, brd, tok.token_ids]).max()) + 1
    ratio, seen = log_frequency_ratio(dom, brd, vocab)
    x = inp.eval_cache.activations()
    norm = x.norm(dim=-1)
    typical = norm <= cfg.eval.massive_norm_ratio * float(norm.median())
    return EvalTokens(x, tok.doc_index, ratio_bins(tok.token_ids, ratio, seen, edges),
                      typical, x[typical].double().mean(0), bin_labels(edges))


def recentred(sae: LinearSAE, shift: Float[Tensor, " d_model"]) -> LinearSAE:
    """A copy of ``sae`` computing sae(x − δ) + δ, δ = ``shift``: its decoder bias moved by
    δ and its encoder's input by −δ, so an SAE fitted around one mean serves another."""
    return sae.folded().fold_input_mean_(shift)


def side_saes(inp: HomeInputs, shift: Float[Tensor, " d_model"], device: Any
              ) -> dict[tuple[str, int], LinearSAE]:
    """Each replicate's domain and broad SAE, and the broad one :func:`recentred` by
    ``shift``."""
    saes = {k: load_sae(d, device=device) for k, d in inp.sae_dirs.items()}
    return saes | {("recentred", r): recentred(sae, shift)
                   for (side, r), sae in saes.items() if side == "broad"}


def compute_homefield(cfg: Config, inp: HomeInputs, model: LanguageModel,
                      max_overlap: float = MAX_OVERLAP, edges: Sequence[float] = RATIO_EDGES,
                      progress: bool = True) -> HomeFieldReport:
    """:func:`~sae_med.experiment.homefield_report` without the file: every statistic of
    every SAE on the same documents, then the across-seed families and their gaps."""

    shift = cache_stats(inp.domain_train).mean - cache_stats(inp.broad_train).mean
    saes = side_saes(inp, shift, pick_device(cfg.model.device))
    docs = eval_documents(cfg, model, inp, max_overlap)
    ev = eval_tokens(cfg, inp, edges)
    ce = spliced_doc_ce(model, docs.batches, cfg.model.hook_layer,
                        {f"{s}/{r}": reconstruction_fn(sae) for (s, r), sae in saes.items()},
                        progress)
    stats = {}
    for (side, r), sae in tqdm(saes.items(), desc="homefield reconstruction",
                               disable=not progress):
        full = side != "recentred"  # the recentred SAE is only needed on all documents
        stats[(side, r)] = (ce_stats(ce[f"{side}/{r}"], docs.ce_ids, docs.novel,
                                     docs.resample, full)
                            | recon_stats(sae, ev, docs.novel, docs.resample, full))
    # the seed draws of evaluate.compare_families: the families equal the results file's
    fam = families(stats, {"domain": inp.domain, "broad": inp.broad, "recentred": inp.broad},
                   len(docs.resample.counts), derived_seed(cfg.seed, "seeds"))
    metrics = ("delta_ce", "fve_typical")
    return HomeFieldReport(
        inp.domain, inp.broad, inp.l0_target, cfg.sae.seeds, len(docs.resample.counts),
        docs.resample.n_groups, float(shift.norm()), max_overlap,
        recentring=tuple(recentring_row(fam, m) for m in metrics),
        novelty=tuple(gap_row(fam, "novelty", m, s) for m in metrics
                      for s in ("novel", "rest", "all")),
        survival=tuple(survival_row(fam, m) for m in metrics),
        frequency=tuple(gap_row(fam, "frequency", m, label, lo, hi)
                        for m in ("fvu_typical", "mse") for label, lo, hi in ev.labels))
