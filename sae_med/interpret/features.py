"""Feature studies: what each latent fires on, and which clinical concept it tracks.

All of it reads the activation cache's stored tokens (token id, document, position), so
no model forward is needed beyond the SAE encoder:

- :func:`encode_cache` — the SAE's latents over a cache, kept sparse (L0 per token).
- :func:`top_windows` / :func:`quantile_windows` — context windows (≈30 tokens left, 5
  right) around a latent's strongest (or quantile-sampled) activations, peak marked.
- :func:`logit_lens` — top and bottom tokens of decoder row · unembedding.
- :func:`search_latents` — latents most active on a phrase, or on one token.
- :func:`concept_alignment` — for every latent, the labelled concept (HPO term or
  category, ICD-10-CM chapter or block) whose documents it best separates: document-level
  max activation, AUROC and F1 at the best threshold, the concept and threshold chosen on
  one half of the documents and scored on the other (held-out) half.
- :func:`match_dictionaries` — each latent of one SAE against its best match in another by
  decoder cosine similarity (and, given both SAEs' latents on the same tokens, by
  activation correlation: :func:`activation_correlation`), classified as shared / split /
  new; :func:`match_summary` and :func:`largest_split` summarise it.
- :func:`absorption` — on the HPO is_a hierarchy, how often a parent concept's latent is
  silent on a child concept's document while a latent specific to the parent's subtree
  fires instead (a domain version of SAEBench's first-letter absorption test);
  :func:`absorption_summary` compares two SAEs' tables.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from sae_med.cache.activations import ActivationCache, TokenInfo
from sae_med.measure.bootstrap import Interval, bootstrap_mean, paired_difference
from sae_med.measure.metrics import auroc_matrix
from sae_med.sae.base import LinearSAE


class LatentActs(NamedTuple):
    """Sparse latent activations over a cache: one entry per (row, latent) with f > 0."""

    rows: Int[Tensor, " nnz"]
    latents: Int[Tensor, " nnz"]
    values: Float[Tensor, " nnz"]
    n_rows: int
    d_sae: int

    def of_latent(self, latent: int) -> tuple[Tensor, Tensor]:
        """(rows, values) where ``latent`` fires."""
        sel = self.latents == latent
        return self.rows[sel], self.values[sel]

    def firing_rate(self) -> Float[Tensor, " d_sae"]:
        """Fraction of tokens on which each latent fires."""
        return torch.bincount(self.latents, minlength=self.d_sae).float() / self.n_rows


@torch.no_grad()
def encode_cache(sae: LinearSAE, cache: ActivationCache, batch_size: int = 4096,
                 progress: bool = True) -> LatentActs:
    """Encode every row of ``cache`` (in cache order) and keep the non-zero latents."""
    rows, lats, vals = [], [], []
    offset = 0
    for x in tqdm(cache.iter_ordered(batch_size), total=-(-cache.n_tokens // batch_size),
                  desc="encode", disable=not progress):
        f = sae.encode(x)
        r, c = f.nonzero(as_tuple=True)
        rows.append(r + offset)
        lats.append(c)
        vals.append(f[r, c])
        offset += x.shape[0]
    return LatentActs(torch.cat(rows), torch.cat(lats), torch.cat(vals), offset, sae.d_sae)


PEAK_MARK = "«{}»"
"""How a window marks its peak token (``str.format`` pattern), in tables and LLM prompts."""


class Window(NamedTuple):
    """Tokens around one activation; ``peak`` indexes the marked token in ``tokens``."""

    doc_index: int
    position: int
    activation: float
    tokens: list[int]
    peak: int
    values: list[float]
    """The latent's activation on each token of the window (0 where it is silent)."""

    def render(self, tokenizer, mark: str = PEAK_MARK) -> str:
        return render_marked(self.tokens, {self.peak}, tokenizer, mark)


def render_marked(tokens: Sequence[int], marks: set[int], tokenizer, mark: str = PEAK_MARK
                  ) -> str:
    """Decode token by token, wrapping the tokens at positions ``marks`` in ``mark``."""
    pieces = [tokenizer.decode([t]) for t in tokens]
    return "".join(mark.format(p) if i in marks else p for i, p in enumerate(pieces))


def window_at(acts: LatentActs, info: TokenInfo, row: int, latent: int, left: int,
              right: int, dense_cache: dict[int, Tensor]) -> Window:
    """The window of up to ``left`` / ``right`` tokens of the same document around cache
    row ``row``, with ``latent``'s values (``dense_cache`` keeps each latent's dense
    activations across calls)."""
    doc = int(info.doc_index[row])
    lo = row
    while lo > 0 and int(info.doc_index[lo - 1]) == doc and row - lo < left:
        lo -= 1
    hi = row
    while hi + 1 < len(info.doc_index) and int(info.doc_index[hi + 1]) == doc \
            and hi - row < right:
        hi += 1
    if latent not in dense_cache:
        r, v = acts.of_latent(latent)
        dense = torch.zeros(acts.n_rows)
        dense[r] = v
        dense_cache[latent] = dense
    vals = dense_cache[latent][lo:hi + 1]
    return Window(doc, int(info.position[row]), float(dense_cache[latent][row]),
                  info.token_ids[lo:hi + 1].tolist(), row - lo, vals.tolist())


def top_windows(acts: LatentActs, cache: ActivationCache, latent: int, k: int = 10,
                left: int = 30, right: int = 5, one_per_doc: bool = True) -> list[Window]:
    """The ``k`` strongest activations of ``latent`` with their context windows."""
    info = cache.tokens()
    r, v = acts.of_latent(latent)
    order = torch.argsort(v, descending=True, stable=True)
    out: list[Window] = []
    seen: set[int] = set()
    dense: dict[int, Tensor] = {}
    for i in order.tolist():
        row = int(r[i])
        doc = int(info.doc_index[row])
        if one_per_doc and doc in seen:
            continue
        seen.add(doc)
        out.append(window_at(acts, info, row, latent, left, right, dense))
        if len(out) == k:
            break
    return out


def quantile_windows(acts: LatentActs, cache: ActivationCache, latent: int,
                     quantiles: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9), per: int = 2,
                     left: int = 30, right: int = 5, seed: int = 0
                     ) -> dict[float, list[Window]]:
    """Windows sampled around activation quantiles (how the latent behaves when weak)."""
    info = cache.tokens()
    r, v = acts.of_latent(latent)
    if len(v) == 0:
        return {q: [] for q in quantiles}
    order = torch.argsort(v, stable=True)
    gen = np.random.default_rng(seed)
    dense: dict[int, Tensor] = {}
    out = {}
    for q in quantiles:
        centre = int(q * (len(order) - 1))
        span = max(1, len(order) // 20)
        lo, hi = max(0, centre - span), min(len(order), centre + span + 1)
        picks = gen.choice(np.arange(lo, hi), size=min(per, hi - lo), replace=False)
        out[q] = [window_at(acts, info, int(r[order[p]]), latent, left, right, dense)
                  for p in sorted(picks)]
    return out


class LogitLens(NamedTuple):
    top_tokens: list[str]
    top_values: list[float]
    bottom_tokens: list[str]
    bottom_values: list[float]


@torch.no_grad()
def logit_lens(sae: LinearSAE, unembed: Float[Tensor, "d_model d_vocab"], tokenizer,
               latent: int, k: int = 10) -> LogitLens:
    """Tokens the latent's decoder direction promotes / suppresses: ``W_dec[l] @ W_U``."""
    logits = sae.W_dec[latent].float() @ unembed.float()
    top = torch.topk(logits, k)
    bot = torch.topk(-logits, k)
    dec = lambda ids: [tokenizer.decode([int(i)]) for i in ids]  # noqa: E731
    return LogitLens(dec(top.indices), top.values.tolist(), dec(bot.indices),
                     (-bot.values).tolist())


@torch.no_grad()
def search_latents(sae: LinearSAE, acts_of_text: Float[Tensor, "pos d_model"],
                   k: int = 10) -> list[tuple[int, float]]:
    """Latents most active (max over positions) on a phrase's activations."""
    f = sae.encode(acts_of_text).amax(0)
    top = torch.topk(f, k)
    return [(int(i), float(v)) for i, v in zip(top.indices, top.values, strict=True) if v > 0]


# ------------------------------------------------------------------ concept alignment

def doc_max_activations(acts: LatentActs, cache: ActivationCache
                        ) -> Float[Tensor, "n_docs d_sae"]:
    """Per document, each latent's maximum activation over the document's tokens."""
    doc_of_row = cache.tokens().doc_index
    n_docs = int(doc_of_row.max()) + 1
    out = torch.zeros(n_docs * acts.d_sae)
    flat = doc_of_row[acts.rows] * acts.d_sae + acts.latents
    out.scatter_reduce_(0, flat, acts.values, reduce="amax")
    return out.view(n_docs, acts.d_sae)


def document_concepts(labels: dict[str, Sequence[str]], keys: Iterable[str]) -> set[str]:
    """Concept names of one document: ``key:value`` for each listed label key."""
    return {f"{k}:{v}" for k in keys for v in labels.get(k, ())}


DEFAULT_CONCEPT_KEYS = ("term", "ancestors", "chapter", "block")


def _half_of(doc_id: str) -> int:
    return hashlib.sha256(f"align:{doc_id}".encode()).digest()[0] & 1


class Alignment(NamedTuple):
    """Per latent: its best concept (chosen on the selection half) and held-out scores."""

    concept: list[str]
    auroc: Float[Tensor, " d_sae"]
    """Held-out AUROC of the document max activation for the chosen concept."""
    f1: Float[Tensor, " d_sae"]
    """Held-out F1 at the threshold that maximised F1 on the selection half."""
    concepts: list[str]
    n_positive: list[int]


def _best_f1_threshold(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    k = np.arange(1, len(s) + 1)
    f1 = 2 * tp / (k + y.sum())
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # thresholds between values
    f1 = np.where(last_of_tie & (s_sorted > 0), f1, -1)
    i = int(np.argmax(f1))
    # cut halfway to the next lower score, so held-out scores just below the lowest
    # selected one still count
    below = s_sorted[i + 1] if i + 1 < len(s_sorted) else 0.0
    return float((s_sorted[i] + below) / 2), float(max(f1[i], 0.0))


def _f1_at(s: np.ndarray, y: np.ndarray, thr: float) -> float:
    pred = s >= thr
    tp = float((pred & y).sum())
    denom = float(pred.sum() + y.sum())
    return 2 * tp / denom if denom else 0.0


def concept_alignment(doc_max: Float[Tensor, "n_docs d_sae"], doc_labels: Sequence[dict],
                      doc_ids: Sequence[str], keys: Sequence[str] = DEFAULT_CONCEPT_KEYS,
                      min_docs: int = 5) -> Alignment:
    """Align each latent with the concept whose documents it best separates.

    The documents are split in two halves by a hash of their id. On the *selection* half,
    each latent's concept is the one with the highest AUROC of the document max
    activation (concepts need ``min_docs`` positive documents in each half), and its F1
    threshold is the one maximising F1. Both are then scored on the *held-out* half, so a
    latent cannot look aligned by chance selection among thousands of concepts.
    """
    sets = [document_concepts(lab, keys) for lab in doc_labels]
    half = np.array([_half_of(d) for d in doc_ids])
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s, h in zip(sets, half, strict=True):
        for c in s:
            counts[c][h] += 1
    concepts = sorted(c for c, (a, b) in counts.items() if a >= min_docs and b >= min_docs)
    if not concepts:
        raise ValueError(f"no concept has {min_docs} documents in both halves; use more "
                         "evaluation documents or a smaller min_docs")
    index = {c: i for i, c in enumerate(concepts)}
    pos = np.zeros((len(sets), len(concepts)), dtype=bool)
    for d, s in enumerate(sets):
        for c in s:
            if c in index:
                pos[d, index[c]] = True
    scores = doc_max.numpy().astype(np.float64)
    sel, held = half == 0, half == 1
    au_sel = auroc_matrix(scores[sel], pos[sel])
    best = au_sel.argmax(1)
    au_held_all = auroc_matrix(scores[held], pos[held])
    d_sae = scores.shape[1]
    auroc = au_held_all[np.arange(d_sae), best]
    f1 = np.zeros(d_sae)
    for lat in range(d_sae):
        y_sel = pos[sel, best[lat]]
        thr, _ = _best_f1_threshold(scores[sel, lat], y_sel)
        f1[lat] = _f1_at(scores[held, lat], pos[held, best[lat]], thr) if thr > 0 else 0.0
    return Alignment([concepts[i] for i in best], torch.from_numpy(auroc).float(),
                     torch.from_numpy(f1).float(), concepts,
                     [int(pos[:, i].sum()) for i in range(len(concepts))])


def concept_aurocs(doc_max: Float[Tensor, "n_docs d_sae"], doc_labels: Sequence[dict],
                   concept: str, keys: Sequence[str] = DEFAULT_CONCEPT_KEYS
                   ) -> tuple[Float[Tensor, " d_sae"], int]:
    """AUROC of every latent's document max activation for one named concept (e.g.
    ``"ancestors:Abnormality of taste sensation"``), over all documents; and the number of
    positive documents (0: the concept is absent and the AUROCs are meaningless)."""
    pos = np.array([concept in document_concepts(lab, keys) for lab in doc_labels])
    if pos.all() or not pos.any():
        return torch.full((doc_max.shape[1],), float("nan")), int(pos.sum())
    au = auroc_matrix(doc_max.numpy().astype(np.float64), pos[:, None])[:, 0]
    return torch.from_numpy(au).float(), int(pos.sum())


class ConceptLatent(NamedTuple):
    """An SAE's latent that best separates a concept's documents
    (:func:`best_concept_latents`)."""

    sae: str
    concept: str
    latent: int
    auroc: float
    """Over all documents (ties and dead latents: the lowest index)."""
    n_docs: int
    """Documents labelled with the concept."""


def best_concept_latents(doc_max: Mapping[str, Float[Tensor, "n_docs d_sae"]],
                         doc_labels: Sequence[dict], concept: str,
                         keys: Sequence[str] = DEFAULT_CONCEPT_KEYS) -> list[ConceptLatent]:
    """Per SAE (``doc_max`` by name), the latent with the highest :func:`concept_aurocs`
    AUROC for ``concept`` (a NaN AUROC counts as 0); empty when no document has the
    concept."""
    out = []
    for sae, dm in doc_max.items():
        au, n_pos = concept_aurocs(dm, doc_labels, concept, keys)
        if n_pos == 0:
            return []
        j = int(torch.nan_to_num(au, nan=0.0).argmax())
        out.append(ConceptLatent(sae, concept, j, float(au[j]), n_pos))
    return out


# ------------------------------------------------------------ cross-dictionary matching

class DictionaryMatch(NamedTuple):
    best: Int[Tensor, " d_sae_a"]
    """Index of each A latent's best-matching B latent."""
    cosine: Float[Tensor, " d_sae_a"]
    kind: list[str]
    """``shared`` (cos ≥ shared_at, sole A latent on that B latent), ``split`` (cos ≥
    related_at and several A latents share the same best B latent), ``new`` (cos below
    related_at: no counterpart in B), else ``related``."""
    corr_best: Int[Tensor, " d_sae_a"] | None = None
    """Best B latent by activation correlation on shared tokens (None without acts)."""
    corr: Float[Tensor, " d_sae_a"] | None = None
    """That Pearson correlation (0 for latents that never fire)."""


def _classify(val: Tensor, idx: Tensor, d_b: int, shared_at: float, related_at: float
              ) -> list[str]:
    fan_in = torch.bincount(idx[val >= related_at], minlength=d_b)
    kind = []
    for v, i in zip(val.tolist(), idx.tolist(), strict=True):
        if v < related_at:
            kind.append("new")
        elif fan_in[i] > 1:
            kind.append("split")
        elif v >= shared_at:
            kind.append("shared")
        else:
            kind.append("related")
    return kind


@torch.no_grad()
def activation_correlation(a: LatentActs, b: LatentActs
                           ) -> tuple[Int[Tensor, " d_sae_a"], Float[Tensor, " d_sae_a"]]:
    """For each latent of ``a``, the ``b`` latent whose activations correlate best
    (Pearson, over every token of the shared cache) and that correlation.

    Both must encode the same cache rows. The cross moments Σ_t a_ti b_tj come from one
    sparse product (cost ∝ tokens · L0_a · L0_b, not tokens · d_a · d_b); the result is
    a dense d_a × d_b matrix, computed in blocks of ``a`` latents. Latents that never
    fire get correlation 0 (and index 0).
    """
    if a.n_rows != b.n_rows:
        raise ValueError(f"the two encodings cover {a.n_rows} and {b.n_rows} rows: encode "
                         "the same cache with both SAEs")
    n = float(a.n_rows)

    def moments(x: LatentActs) -> tuple[Tensor, Tensor]:
        s1 = torch.zeros(x.d_sae, dtype=torch.float64).index_add_(0, x.latents,
                                                                  x.values.double())
        s2 = torch.zeros(x.d_sae, dtype=torch.float64).index_add_(0, x.latents,
                                                                  x.values.double() ** 2)
        mean = s1 / n
        return mean, (s2 / n - mean**2).clamp_min(0).sqrt()

    mean_a, sd_a = moments(a)
    mean_b, sd_b = moments(b)
    B = torch.sparse_coo_tensor(torch.stack([b.rows, b.latents]), b.values.double(),
                                (b.n_rows, b.d_sae), check_invariants=True
                                ).coalesce().to_sparse_csr()
    best = torch.zeros(a.d_sae, dtype=torch.long)
    corr = torch.zeros(a.d_sae, dtype=torch.float64)
    block = 512
    for lo in range(0, a.d_sae, block):
        sel = (a.latents >= lo) & (a.latents < lo + block)
        At = torch.sparse_coo_tensor(torch.stack([a.latents[sel] - lo, a.rows[sel]]),
                                     a.values[sel].double(),
                                     (min(block, a.d_sae - lo), a.n_rows),
                                     check_invariants=True).coalesce()
        cross = (At.to_sparse_csr() @ B).to_dense() / n  # (block, d_b)
        sl = slice(lo, lo + cross.shape[0])
        cov = cross - mean_a[sl, None] * mean_b[None, :]
        denom = sd_a[sl, None] * sd_b[None, :]
        r = torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.zeros_like(cov))
        corr[sl], best[sl] = r.max(1)
    return best, corr.float()


@torch.no_grad()
def match_dictionaries(a: LinearSAE, b: LinearSAE, shared_at: float = 0.7,
                       related_at: float = 0.4, acts_a: LatentActs | None = None,
                       acts_b: LatentActs | None = None) -> DictionaryMatch:
    """Best decoder-cosine match in ``b`` for every latent of ``a`` (classified by
    :data:`DictionaryMatch.kind`), and, given both SAEs' latents over the same cache
    (``acts_a``, ``acts_b`` from :func:`encode_cache`), the best match by activation
    correlation (:func:`activation_correlation`)."""
    da = torch.nn.functional.normalize(a.W_dec.float(), dim=1)
    db = torch.nn.functional.normalize(b.W_dec.float(), dim=1)
    val, idx = (da @ db.T).max(1)
    kind = _classify(val, idx, b.d_sae, shared_at, related_at)
    if (acts_a is None) != (acts_b is None):
        raise ValueError("give both acts_a and acts_b (or neither)")
    if acts_a is None or acts_b is None:
        return DictionaryMatch(idx, val, kind)
    cb, cr = activation_correlation(acts_a, acts_b)
    return DictionaryMatch(idx, val, kind, cb, cr)


class MatchSummary(NamedTuple):
    """How the live latents of A relate to B (:func:`match_summary`)."""

    live: int
    """Latents of A that fire on the cache."""
    median_cosine: float
    median_correlation: float
    share_correlated: float
    """Share with best activation correlation ≥ 0.7."""
    share_uncorrelated: float
    """Share with best activation correlation < 0.4."""
    agreement: float
    """Share whose best match is the same B latent by cosine and by correlation."""
    same_index: float
    """Share whose best cosine match has A's own index (a decoder that barely moved from
    an initialisation both SAEs share)."""


def match_summary(m: DictionaryMatch, alive: Bool[Tensor, " d_sae_a"]) -> MatchSummary:
    """Summary of a :func:`match_dictionaries` result (with activations) over the latents
    ``alive``."""
    if m.corr is None or m.corr_best is None:
        raise ValueError("match_dictionaries was run without acts_a/acts_b: no correlations")
    share = lambda mask: float(mask[alive].float().mean())  # noqa: E731
    return MatchSummary(
        int(alive.sum()), float(m.cosine[alive].median()), float(m.corr[alive].median()),
        share(m.corr >= 0.7), share(m.corr < 0.4), share(m.best == m.corr_best),
        share(m.best == torch.arange(len(m.best))))


def largest_split(m: DictionaryMatch) -> tuple[int, list[int]] | None:
    """The B latent that is the best match of the most ``split`` A latents, and those A
    latents (ascending); None when nothing is split. Ties go to the lower B index."""
    split = [(b, a) for a, (b, k) in enumerate(zip(m.best.tolist(), m.kind, strict=True))
             if k == "split"]
    if not split:
        return None
    counts = defaultdict(list)
    for b, a in split:
        counts[b].append(a)
    top = max(sorted(counts), key=lambda b: len(counts[b]))
    return top, counts[top]


# ------------------------------------------------------------ absorption on a hierarchy

def absorption(doc_max: Float[Tensor, "n_docs d_sae"], doc_labels: Sequence[dict],
               doc_ids: Sequence[str], key: str = "ancestors", min_docs: int = 5,
               specific_precision: float = 0.9, min_fires: int = 3) -> Any:
    """Feature absorption on an is_a hierarchy (e.g. HPO), one row per parent concept.

    A *parent* P is a value of ``key`` (an HPO ancestor, e.g. "Abnormality of taste
    sensation"); its positive documents are those of terms below it (e.g. "Ageusia"),
    never P's own. Documents are split in halves by id (as :func:`concept_alignment`).
    On the *selection* half:

    - the **parent latent** is the latent whose document max activation best separates
      P's documents (highest AUROC), with the F1-best threshold θ;
    - a latent is **specific to P** when it fires (document max > 0) on at least
      ``min_fires`` documents and at least ``specific_precision`` of them are P's.

    On the *held-out* half, over P's documents: ``miss_rate`` is the share where the
    parent latent stays below θ, and ``absorption_rate`` the share where it stays below θ
    *while* a P-specific latent fires, i.e. a more specific latent carries the concept
    in its place. Parents need ``min_docs`` positive documents in each half. Columns:
    parent, parent_latent, parent_auroc (held out), threshold, n_heldout, miss_rate,
    absorption_rate, n_specific, absorbers (the P-specific latents that fired on missed
    documents, most frequent first).
    """
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    half = np.array([_half_of(d) for d in doc_ids])
    names, pos = _parents_with_docs(doc_labels, key, half, min_docs)
    if not names:
        return pd.DataFrame(columns=ABSORPTION_COLUMNS)
    scores = doc_max.numpy().astype(np.float64)
    sel, held = half == 0, half == 1
    parent_lat = auroc_matrix(scores[sel], pos[sel]).argmax(0)  # (parents,)
    au_held = auroc_matrix(scores[held][:, parent_lat], pos[held])
    fires = scores[sel] > 0
    n_fires = fires.sum(0)
    precision = (fires.T.astype(np.float64) @ pos[sel]) / np.maximum(n_fires, 1)[:, None]
    rows = []
    for p, name in enumerate(names):
        j = int(parent_lat[p])
        specific = np.flatnonzero((precision[:, p] >= specific_precision)
                                  & (n_fires >= min_fires))
        rows.append({"parent": name, "parent_latent": j, "parent_auroc": float(au_held[p, p]),
                     **_held_out_misses(scores, pos[:, p], sel, held, j, specific[specific != j])})
    return pd.DataFrame(rows, columns=ABSORPTION_COLUMNS)


ABSORPTION_COLUMNS = ["parent", "parent_latent", "parent_auroc", "threshold", "n_heldout",
                      "miss_rate", "absorption_rate", "n_specific", "absorbers"]


class _Parents(NamedTuple):
    names: list[str]
    positives: np.ndarray
    """(docs, parents) bool: the documents below each parent."""


def _parents_with_docs(doc_labels: Sequence[dict], key: str, half: np.ndarray,
                       min_docs: int) -> _Parents:
    """The parents with ``min_docs`` positive documents in each half, and their positive
    documents as a (docs, parents) boolean matrix."""
    parents: dict[str, list[int]] = defaultdict(list)
    for d, lab in enumerate(doc_labels):
        for v in lab.get(key, ()):
            parents[v].append(d)
    names, cols = [], []
    for name, docs in sorted(parents.items()):
        y = np.zeros(len(doc_labels), dtype=bool)
        y[docs] = True
        if (y & (half == 0)).sum() >= min_docs and (y & (half == 1)).sum() >= min_docs:
            names.append(name)
            cols.append(y)
    return _Parents(names, np.stack(cols, 1) if cols
                    else np.zeros((len(doc_labels), 0), bool))


def _held_out_misses(scores: np.ndarray, pos: np.ndarray, sel: np.ndarray, held: np.ndarray,
                     j: int, specific: np.ndarray) -> dict[str, Any]:
    """One parent's held-out columns: latent ``j``'s F1-best threshold on the selection
    half, the share of held-out positives it misses, and of those the share a specific
    latent fires on."""
    thr, _ = _best_f1_threshold(scores[sel, j], pos[sel])
    held_pos = np.flatnonzero(held & pos)
    missed = held_pos[scores[held_pos, j] < thr] if thr > 0 else held_pos
    fired = scores[np.ix_(missed, specific)] > 0
    counts = fired.sum(0)
    order = np.argsort(-counts, kind="stable")
    return {"threshold": thr, "n_heldout": len(held_pos),
            "miss_rate": len(missed) / len(held_pos),
            "absorption_rate": float(fired.any(1).sum()) / len(held_pos),
            "n_specific": len(specific),
            "absorbers": [int(specific[i]) for i in order if counts[i] > 0][:5]}


ABSORPTION_MEASURES = ("absorption_rate", "miss_rate", "parent_auroc")
"""The per-parent columns of :func:`absorption` that :func:`absorption_summary` averages."""


def absorption_summary(tables: Mapping[str, Any], n_boot: int = 1000, seed: int = 0) -> Any:
    """Per SAE and :data:`ABSORPTION_MEASURES` column of its :func:`absorption` table, the
    mean over parent concepts with a bootstrap 95% interval (parents resampled); with two
    tables, also the paired difference of ``absorption_rate`` (first − second) over the
    parents both list, matched by name. Columns: SAE, measure, mean over parents,
    95% low, 95% high."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    rows = []

    def add(sae: str, measure: str, iv: Interval) -> None:
        rows.append({"SAE": sae, "measure": measure, "mean over parents": iv.value,
                     "95% low": iv.low, "95% high": iv.high})

    for name, df in tables.items():
        if len(df):
            for col in ABSORPTION_MEASURES:
                add(name, col, bootstrap_mean(df[col].to_numpy(), n_boot, seed))
    if len(tables) == 2:
        (a, da), (b, db) = tables.items()
        both = da.merge(db, on="parent", suffixes=("_a", "_b"))
        if len(both):
            add(f"{a} − {b}", "absorption_rate", paired_difference(
                both.absorption_rate_a.to_numpy(), both.absorption_rate_b.to_numpy(),
                n_boot, seed))
    return pd.DataFrame(rows, columns=["SAE", "measure", "mean over parents", "95% low",
                                       "95% high"])
