"""How much of a corpus's evaluation split its training split already holds.

Per corpus: the share of eval documents with an identical text in train, and with a
near-duplicate there (an equal :func:`sae_med.corpora.documents.near_duplicate_key`: numbers,
laterality, site, encounter and ordinal words masked, lowercased, punctuation dropped).
The grouped, de-duplicated split of :mod:`sae_med.corpora.registry` should leave both at ~0;
``sae-med corpora --leakage`` prints the report.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sae_med.corpora.documents import Document, Removed, near_duplicate_key, text_digest
from sae_med.corpora.registry import corpus_info, duplicates_removed, iter_unordered, list_corpora


@dataclass(frozen=True)
class Leakage:
    corpus: str
    train_documents: int
    eval_documents: int
    exact: float
    """Share of eval documents whose text occurs verbatim in train."""
    near: float
    """Share of eval documents with a near-duplicate (equal near-duplicate key) in train."""
    removed: Removed | None = None
    """What de-duplication dropped before this was measured (``None``: not known)."""


def leakage_by(docs: Iterable[Document], key: Callable[[Document], str] = lambda d: d.source
               ) -> dict[str, Leakage]:
    """Per ``key`` (default: source), the share of its eval documents with an exact or
    near-duplicate among the training documents of *all* ``docs`` (so leaks across
    corpora count too). Documents split by group (:attr:`Document.split`); texts are
    compared as 16-byte hashes."""
    train_exact: set[bytes] = set()
    train_near: set[bytes] = set()
    n_train: Counter[str] = Counter()
    evals: dict[str, list[tuple[bytes, bytes]]] = defaultdict(list)
    for doc in docs:
        exact, near = text_digest(doc.text), text_digest(near_duplicate_key(doc.text))
        if doc.split == "train":
            n_train[key(doc)] += 1
            train_exact.add(exact)
            train_near.add(near)
        else:
            evals[key(doc)].append((exact, near))
    out = {}
    for name in sorted({*n_train, *evals}):
        pairs, n = evals[name], max(len(evals[name]), 1)
        out[name] = Leakage(name, n_train[name], len(pairs),
                            sum(e in train_exact for e, _ in pairs) / n,
                            sum(m in train_near for _, m in pairs) / n)
    return out


def measure_leakage(docs: Iterable[Document], corpus: str = "") -> Leakage:
    """:func:`leakage_by` with every document counted as ``corpus``."""
    return leakage_by(docs, lambda d: corpus).get(corpus, Leakage(corpus, 0, 0, 0.0, 0.0))


def corpus_leakage(name: str) -> Leakage:
    """:func:`measure_leakage` of registered corpus ``name`` (a mix: across its members)."""
    return dataclasses.replace(measure_leakage(iter_unordered(name), name),
                               removed=duplicates_removed(name))


def offline_leakage() -> list[Leakage]:
    """The report for every corpus readable offline: the embedded ones (mixes included)
    and those a loaded config declared from local files (hub corpora need the internet,
    and ``web`` has no end: measure those with :func:`corpus_leakage`)."""
    return [corpus_leakage(n) for n in list_corpora()
            if corpus_info(n).kind in ("embedded", "local")]
