"""Percentile bootstrap: one interval type, one way of drawing resamples.

Every interval the package reports comes from here. The unit resampled is whatever the
leading dimension holds (documents, latents, parent concepts); replicate b draws n
indices with replacement from one ``torch.Generator`` seeded ``seed``
(:func:`resample_indices`). Documents are resampled by *group* (:func:`doc_resample`:
the split's grouping unit, e.g. one ICD-10-CM category), because related documents are
not independent; with one document per group it draws what :func:`bootstrap_ci` draws.
Values that come from independent replicates (latents of SAEs trained with different
seeds) are resampled at two levels, replicates then values (:func:`nested_mean_draws`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

LEVEL = 0.95


class Interval(NamedTuple):
    """A point estimate and its percentile interval (None when there is none)."""

    value: float
    low: float | None
    high: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, float | bool | None]:
        return {"value": finite_or_none(self.value), "low": finite_or_none(self.low),
                "high": finite_or_none(self.high), "excludes_zero": self.excludes_zero}


def finite_or_none(v: float | None) -> float | None:
    """``v``, or None when it is missing or not finite (JSON has no NaN or inf)."""
    return None if v is None or not math.isfinite(v) else v


class Draws(NamedTuple):
    """One statistic on the full sample and on each bootstrap replicate."""

    point: float
    reps: np.ndarray
    """(n_boot,): the statistic on resample b (NaN where undefined)."""


def percentile_interval(d: Draws, level: float = LEVEL) -> Interval:
    """Percentile interval of ``d.reps`` at ``level`` (NaN replicates ignored); low/high are
    None without replicates or when every replicate is NaN."""
    reps = np.asarray(d.reps, dtype=np.float64)
    if reps.size == 0 or np.isnan(reps).all():
        return Interval(float(d.point), None, None)
    alpha = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(reps, [alpha, 1 - alpha])
    return Interval(float(d.point), float(lo), float(hi))


def resample_indices(n: int, n_boot: int, seed: int | torch.Generator
                     ) -> Iterator[Tensor]:
    """``n_boot`` rows of ``n`` indices drawn with replacement from range(n), one per
    replicate, from a generator seeded ``seed`` (or that generator itself)."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    for _ in range(max(n_boot, 0)):
        yield torch.randint(n, (n,), generator=gen)


# --------------------------------------------------------------------------------------
# Documents shared by many statistics
# --------------------------------------------------------------------------------------

class DocResample(NamedTuple):
    """Bootstrap draws of document groups, shared by every statistic of one eval corpus."""

    doc_ids: Tensor
    """(docs,) sorted ids of every document any statistic uses."""
    counts: Tensor
    """(n_boot, docs) float64: how often replicate b drew each document's group."""
    n_groups: int
    """Distinct groups among ``doc_ids`` (the unit resampled)."""

    def columns(self, ids: Tensor) -> Tensor:
        """(n_boot, len(ids)) counts of the documents ``ids`` (a subset of ``doc_ids``).

        A statistic over a subset (spliced CE on the first eval documents, dark matter on
        the held-out half) is resampled by the same draws, so it stays paired with the
        others; its resample has a random size (like a Poisson bootstrap), and a
        replicate that draws none of its documents is NaN and left out of the interval."""
        idx = torch.searchsorted(self.doc_ids, ids.long().cpu())
        if (idx >= len(self.doc_ids)).any() or (self.doc_ids[idx.clamp_max(
                len(self.doc_ids) - 1)] != ids.long().cpu()).any():
            raise ValueError("documents outside the resample's universe")
        return self.counts[:, idx]


def group_counts(group: Tensor, n_boot: int, seed: int) -> Tensor:
    """(n_boot, docs) float64 counts: replicate b draws as many groups as there are, with
    replacement, and counts each document as often as its group was drawn.

    ``group`` (docs,) holds each document's group as an index in range(n_groups), every
    index used. One (n_boot, n_groups) draw and a scatter-add, no loop over replicates:
    with one document per group (``group`` = arange) the rows equal
    :func:`resample_indices`' (a torch generator yields the same stream either way)."""
    n_groups = int(group.max()) + 1 if len(group) else 0
    if n_boot <= 0 or n_groups < 2:
        return torch.zeros(0, len(group), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    drawn = torch.randint(n_groups, (n_boot, n_groups), generator=gen)
    per_group = torch.zeros(n_boot, n_groups, dtype=torch.float64).scatter_add_(
        1, drawn, torch.ones(n_boot, n_groups, dtype=torch.float64))
    return per_group[:, group]


def doc_resample(doc_ids: Sequence[Tensor], n_boot: int, seed: int,
                 group_of: Tensor | None = None) -> DocResample:
    """n_boot resamples of the groups of the union of ``doc_ids`` (:func:`group_counts`;
    no replicates for fewer than 2 groups).

    ``group_of`` maps a document id to its group code (``group_of[id]``, any integers;
    equal codes: one group); without it every document is a group of its own."""
    ids = torch.unique(torch.cat([d.long().cpu() for d in doc_ids]))
    if group_of is None:
        group = torch.arange(len(ids))
    else:
        if len(ids) and int(ids.max()) >= len(group_of):
            raise ValueError(f"document id {int(ids.max())} has no group "
                             f"(group_of covers {len(group_of)} documents)")
        group = torch.unique(group_of.long().cpu()[ids], return_inverse=True)[1]
    counts = group_counts(group, n_boot, seed)
    return DocResample(ids, counts, int(group.max()) + 1 if len(group) else 0)


def statistic_draws(per_doc: Any, statistic_fn: Callable[[Any], Mapping[str, float]],
                    counts: Tensor) -> dict[str, Draws]:
    """Every number of ``statistic_fn`` on all documents and on each resample.

    ``per_doc`` is a NamedTuple of per-document *sums* (leading dim ``docs``) and
    ``statistic_fn`` pools documents by summing over that dim; resample b's pooled sums are
    Σ_d c_bd · s_d with ``counts`` (n_boot, docs), one weighted row per replicate."""
    fields = [f.double() for f in per_doc]
    n = int(fields[0].shape[0])
    point = statistic_fn(type(per_doc)(*fields))
    n_boot = int(counts.shape[0])
    pooled = [(counts @ f.reshape(n, -1)).reshape(n_boot, 1, *f.shape[1:]) for f in fields]
    reps = {k: np.empty(n_boot) for k in point}
    with warnings.catch_warnings():  # empty resamples of a subset give 0/0 quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        for b in range(n_boot):
            try:
                stat = statistic_fn(type(per_doc)(*(p[b] for p in pooled)))
            except ZeroDivisionError:  # python-float statistics on an empty resample
                stat = dict.fromkeys(reps, math.nan)
            for k in reps:
                reps[k][b] = float(stat[k])
    return {k: Draws(float(v), reps[k]) for k, v in point.items()}


def bootstrap_many(per_doc: Any, statistic_fn: Callable[[Any], Mapping[str, float]],
                   n_boot: int, seed: int, level: float = LEVEL) -> dict[str, Interval]:
    """:func:`bootstrap_ci` for a statistic of per-document sums returning several numbers
    (same draws); low/high are None when ``n_boot`` is 0 or there are fewer than 2
    documents."""
    n = int(per_doc[0].shape[0])
    counts = doc_resample([torch.arange(n)], n_boot, seed).counts
    return {k: percentile_interval(d, level)
            for k, d in statistic_draws(per_doc, statistic_fn, counts).items()}


# --------------------------------------------------------------------------------------
# Any statistic, and means
# --------------------------------------------------------------------------------------

def _n_rows(stats: Any) -> int:
    if isinstance(stats, Tensor):
        return int(stats.shape[0])
    return _n_rows(next(iter(stats.values() if isinstance(stats, dict) else stats)))


def _take(stats: Any, idx: Tensor) -> Any:
    if isinstance(stats, Tensor):
        return stats[idx]
    if isinstance(stats, dict):
        return {k: _take(v, idx) for k, v in stats.items()}
    return type(stats)(*(_take(v, idx) for v in stats))


def bootstrap_ci(per_doc_stats: Any, statistic_fn: Callable[[Any], float], n_boot: int = 1000,
                 seed: int = 0, level: float = LEVEL) -> Interval:
    """Percentile bootstrap interval of ``statistic_fn`` by resampling documents.

    ``per_doc_stats`` is a tensor, dict or NamedTuple of tensors whose leading dimension is
    the document (e.g. :class:`~sae_med.measure.metrics.DocSums`). Each replicate draws n_docs
    documents with replacement (:func:`resample_indices`) and evaluates ``statistic_fn``
    on them. Documents, not tokens, are the unit, because tokens of one document are
    correlated."""
    n = _n_rows(per_doc_stats)
    if n < 2:
        raise ValueError(f"need at least 2 documents to bootstrap, got {n}")
    reps = np.array([float(statistic_fn(_take(per_doc_stats, idx)))
                     for idx in resample_indices(n, n_boot, seed)])
    return percentile_interval(Draws(float(statistic_fn(per_doc_stats)), reps), level)


def _mean_draws(x: Tensor, rows: Iterator[Tensor]) -> np.ndarray:
    idx = list(rows)
    return x[torch.stack(idx)].mean(1).numpy() if idx else np.zeros(0)


def nested_mean_draws(x: Tensor, groups: Tensor, n_boot: int, gen: torch.Generator
                      ) -> np.ndarray:
    """(n_boot,) means of two-level resamples of ``x`` (values,) whose ``groups`` (values,)
    are independent replicates (e.g. the SAE seed each latent comes from).

    Replicate b draws as many groups as there are, with replacement, then within each
    drawn group as many of its values as it holds, with replacement, and averages every
    value drawn. With one group it is the one-level resample (:func:`resample_indices`,
    the same draws from ``gen``)."""
    groups = torch.unique(torch.as_tensor(groups), return_inverse=True)[1]
    k = int(groups.max()) + 1 if len(groups) else 0
    if k < 2 or n_boot <= 0:
        return _mean_draws(x, resample_indices(len(x), n_boot, gen))
    sizes = torch.bincount(groups, minlength=k)  # (k,)
    starts = torch.cumsum(sizes, 0) - sizes
    vals = x[torch.argsort(groups, stable=True)]  # grouped: group g at starts[g]
    drawn = torch.randint(k, (n_boot, k), generator=gen)  # (n_boot, k) groups drawn
    n = sizes[drawn].unsqueeze(-1)  # (n_boot, k, 1) values each drawn group holds
    u = torch.rand(n_boot, k, int(sizes.max()), generator=gen, dtype=torch.float64)
    within = torch.minimum((u * n).long(), n - 1)  # (n_boot, k, max size) uniform in range(n)
    keep = torch.arange(u.shape[-1]) < n  # the first n draws of each drawn group
    picked = vals[starts[drawn].unsqueeze(-1) + within] * keep
    return (picked.sum((1, 2)) / keep.sum((1, 2))).numpy()


def _finite_values(values: Any, groups: Any = None) -> tuple[Tensor, Tensor]:
    """The values that are not NaN and their groups (all 0 when ``groups`` is None)."""
    x = torch.tensor(np.asarray(values, dtype=np.float64))  # a copy: values may be read-only
    g = (torch.zeros(len(x), dtype=torch.long) if groups is None
         else torch.tensor(np.asarray(groups, dtype=np.int64)))
    if g.shape != x.shape:
        raise ValueError(f"{len(g)} groups for {len(x)} values")
    ok = ~torch.isnan(x)
    return x[ok], g[ok]


def bootstrap_mean(values: Any, n_boot: int = 1000, seed: int = 0, level: float = LEVEL,
                   groups: Any = None) -> Interval:
    """The mean of ``values`` (NaNs dropped) and its percentile interval, resampling the
    values themselves (e.g. latents or parent concepts); all NaN when none is left.

    ``groups`` (one integer per value, e.g. the SAE seed a latent comes from) makes the
    resample two-level: groups, then values within each drawn group
    (:func:`nested_mean_draws`); without it, or with one group, values are resampled
    directly."""
    x, g = _finite_values(values, groups)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan)
    gen = torch.Generator().manual_seed(seed)
    return percentile_interval(Draws(float(x.mean()), nested_mean_draws(x, g, n_boot, gen)),
                               level)


def paired_difference(a: Any, b: Any, n_boot: int = 1000, seed: int = 0,
                      level: float = LEVEL) -> Interval:
    """Mean of a_i − b_i over the pairs (i-th of ``a`` with i-th of ``b``, e.g. one parent
    concept scored by two SAEs) and its interval, resampling pairs; a pair with a NaN on
    either side is dropped."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length ({len(a)} and {len(b)}): align "
                         "them on their unit first")
    return bootstrap_mean(a - b, n_boot, seed, level)


def independent_difference(a: Any, b: Any, n_boot: int = 1000, seed: int = 0,
                           level: float = LEVEL, groups_a: Any = None, groups_b: Any = None
                           ) -> Interval:
    """mean(a) − mean(b) for two independent samples (NaNs dropped; e.g. the latents of two
    SAEs) and its interval, each side resampled on its own from one generator; all NaN
    when a side is empty.

    ``groups_a`` / ``groups_b`` (one integer per value, e.g. the SAE seed each latent comes
    from) make a side's resample two-level, seeds then latents within each drawn seed
    (:func:`nested_mean_draws`), so the interval holds seed variance; a side without
    groups, or with one group, resamples its values directly."""
    (xa, ga), (xb, gb) = _finite_values(a, groups_a), _finite_values(b, groups_b)
    if len(xa) == 0 or len(xb) == 0:
        return Interval(math.nan, math.nan, math.nan)
    gen = torch.Generator().manual_seed(seed)
    reps_a = nested_mean_draws(xa, ga, n_boot, gen)
    reps_b = nested_mean_draws(xb, gb, n_boot, gen)
    return percentile_interval(Draws(float(xa.mean() - xb.mean()), reps_a - reps_b), level)
