"""Documents and the rules every corpus shares: the grouped split, the shuffle order and
de-duplication.

Two independent hashes decide everything:

- the **split**: ``eval`` iff the first 8 bytes of ``sha256(group)``, read as a fraction
  of 2**64, are below ``eval_frac`` (0.1), so related documents land on one side and no
  evaluation document (nor its sibling) is ever trained on, whatever mix reaches it;
- the **order**: documents come sorted by ``sha256("order:" + doc_id)``, a fixed
  pseudo-random shuffle, so *any prefix* is a representative sample (the activation cache
  takes the first N tokens). A separate salt keeps the order independent of the split.

:func:`deduplicate` drops exact duplicate texts and every evaluation document with a
near-duplicate (:func:`near_duplicate_key`) among the training documents. The corpus
readers (:mod:`sae_med.corpora.embedded`, :mod:`sae_med.corpora.hub`,
:mod:`sae_med.corpora.local`) build documents; :mod:`sae_med.corpora.registry` names,
mixes and caches them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

EVAL_FRAC = 0.1


@dataclass(frozen=True)
class Document:
    text: str
    doc_id: str
    """Globally unique, prefixed by source, e.g. ``hpo:HP:0001234:def``."""
    source: str
    """``hpo``, ``icd10cm``, ``wordnet``, ``austen``, ``gcide``, ``fortunes``, ``medqa``..."""
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Optional concept labels, e.g. ``{"term": ..., "synonyms": ..., "ancestors": ...}``."""
    group: str = ""
    """Documents sharing a group share a side of the split, e.g. ``hpo:HP:0001234``;
    empty: the document is a group of its own (its id)."""

    @property
    def group_key(self) -> str:
        """Its group, or its own id when it has none: the unit of the split and of the
        bootstrap (documents of one group are resampled together)."""
        return self.group or self.doc_id

    @property
    def split(self) -> Literal["train", "eval"]:
        """The side of the split its group falls on."""
        return split_of(self.group_key)


def _hash_fraction(digest: bytes) -> float:
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(group: str, eval_frac: float = EVAL_FRAC) -> Literal["train", "eval"]:
    """``eval`` iff sha256(group) read as a fraction in [0, 1) is below ``eval_frac``."""
    frac = _hash_fraction(hashlib.sha256(group.encode()).digest())
    return "eval" if frac < eval_frac else "train"


def in_validation(group: str, frac: float, seed: int = 0) -> bool:
    """Whether ``group`` falls in the validation part carved out of a training split (for
    choosing a recipe on training documents, never on eval ones): sha256 of
    ``"validation:{seed}:{group}"`` read as a fraction in [0, 1) is below ``frac``. Whole
    groups, like the split, so no group straddles the carving; a salt of its own keeps it
    independent of the split and the order; another ``seed`` carves another part."""
    if not 0.0 < frac < 1.0:
        raise ValueError(f"the validation share must lie in (0, 1), got {frac}")
    digest = hashlib.sha256(f"validation:{seed}:{group}".encode()).digest()
    return _hash_fraction(digest) < frac


def order_key(doc_id: str) -> str:
    """The shuffle key: hex sha256 of ``"order:" + doc_id`` (independent of the split)."""
    return hashlib.sha256(b"order:" + doc_id.encode()).hexdigest()


_MASKED_WORDS = frozenset((
    # laterality
    "left right bilateral unilateral "
    # site (ICD-10-CM's templated body sites and their placeholders)
    "upper lower arm arms forearm forearms hand hands finger fingers thumb thumbs wrist "
    "wrists elbow elbows shoulder shoulders hip hips thigh thighs knee knees leg legs ankle "
    "ankles foot feet toe toes eye eyes eyelid eyelids ear ears site sites multiple "
    "unspecified other "
    # encounter
    "initial subsequent sequela encounter").split())
_ORDINALS = frozenset(
    "first second third fourth fifth sixth seventh eighth ninth tenth".split())
_NUMBER = re.compile(r"\d+(?:st|nd|rd|th)?")
_NON_WORD = re.compile(r"[^\w#]+|_+")


def near_duplicate_key(text: str) -> str:
    """What is left of ``text`` once templated variants are made equal: lowercased,
    numbers and ordinals (``2``, ``2nd``, ``second``) as one ``#``, punctuation dropped,
    laterality, site and encounter words removed. Equal keys = near-duplicates."""
    out: list[str] = []
    for w in _NON_WORD.split(_NUMBER.sub(" # ", text.lower().replace("#", " "))):
        w = "#" if w in _ORDINALS else w
        if w and w not in _MASKED_WORDS and not (w == "#" and out and out[-1] == "#"):
            out.append(w)
    return " ".join(out)


def text_digest(text: str) -> bytes:
    """A 16-byte hash of ``text``, for duplicate sets that stay small in memory."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def near_group(text: str) -> str:
    """The group of every text with the same :func:`near_duplicate_key` as ``text`` (for
    streams, which cannot be de-duplicated against documents yet to come)."""
    return "near:" + text_digest(near_duplicate_key(text)).hex()[:16]


class Removed(NamedTuple):
    exact: int
    """Exact duplicates: later occurrences of a text already kept."""
    near_eval: int
    """Evaluation documents with a near-duplicate among the training documents."""


class Deduplicated(NamedTuple):
    documents: dict[str, list[Document]]
    """Per corpus, the documents kept, in the given order."""
    removed: dict[str, Removed]
    """Per corpus, what was dropped."""


def deduplicate(corpora: Mapping[str, Iterable[Document]]) -> Deduplicated:
    """Drop exact duplicate texts, then evaluation documents with a near-duplicate in
    train, over all ``corpora`` together.

    1. A text is kept at its first occurrence: corpora in the given order, each in its own.
    2. An evaluation document (:attr:`Document.split`, by group) is dropped when a training
       document of any of the corpora has its :func:`near_duplicate_key`.

    Training documents are never dropped beyond step 1 and groups are never split, so
    neither an exact nor a near-duplicate of a training text is left to evaluate on.
    """
    seen: set[bytes] = set()
    train_near: set[bytes] = set()
    kept: dict[str, list[tuple[Document, bytes]]] = {}
    exact: dict[str, int] = {}
    for name, docs in corpora.items():
        kept[name], exact[name] = [], 0
        for doc in docs:
            digest = text_digest(doc.text)
            if digest in seen:
                exact[name] += 1
                continue
            seen.add(digest)
            near = text_digest(near_duplicate_key(doc.text))
            if doc.split == "train":
                train_near.add(near)
            kept[name].append((doc, near))
    out = {name: [d for d, near in docs if d.split == "train" or near not in train_near]
           for name, docs in kept.items()}
    return Deduplicated(out, {name: Removed(exact[name], len(kept[name]) - len(out[name]))
                              for name in kept})
