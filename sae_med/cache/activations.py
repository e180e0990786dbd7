"""Cache residual-stream activations at one hook, sharded, hashed, resumable.

Layout of one cache, ``{cache_dir}/activations/{key}/``::

    shard_00000.npy          (rows, d_model) float32, or uint16 holding bf16 bits
    shard_00000.tokens.npy   (rows, 3) int32: token id, document index, position
    shard_00000.json         rows, sha256 of both files, documents covered (written last)
    manifest.json            everything that determines the cache + shard list (written
                             last of all: a cache without it is incomplete)

``key`` is a hash of everything that determines the activations (model and its weights'
hash, hook, corpus and its content hash, split, context length, token count, dtype,
special-token policy, batch size, format version), so a cache built for another
configuration is never reused. Every file is written to a temp name and renamed; a run
that dies resumes after the last shard whose ``.json`` exists and whose checksums match.

The forward pass stops at the hook block: later blocks and the 262k-way unembedding
(most of Gemma-3-270M's FLOPs) are never run.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from sae_med import runtime
from sae_med.artifacts import (
    artifact_lock,
    atomic_path,
    file_sha256,
    stable_hash,
    write_json_atomic,
)
from sae_med.cache.batches import ChunkedBatches
from sae_med.config import CacheConfig, Config
from sae_med.corpora.registry import (
    cached_tokens,
    context_room,
    corpus_fingerprint,
    iter_documents,
    token_counts,
    use_config,
)
from sae_med.layout import MANIFEST_NAME
from sae_med.lm.model import LanguageModel, TokenBatch
from sae_med.lm.weights import WeightsRecord, weights_record

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""3: forwards packed by token count (rows in token-length order); 2: grouped splits."""
SORT_CHUNK = 8
"""Batches read together and sorted by length (flushes happen between such chunks)."""


class TokenInfo(NamedTuple):
    """The token behind each cache row (leading dim ``n``, cache order; int64)."""

    token_ids: Int[Tensor, " n"]
    doc_index: Int[Tensor, " n"]
    """Index of the row's document in the corpus order (``doc_ids()[i]`` names it)."""
    position: Int[Tensor, " n"]
    """Position in the tokenized document."""


class CorruptCacheError(RuntimeError):
    """A cache file's checksum or shape does not match its record."""


def cache_spec(model: LanguageModel, cfg: Config, corpus: str, split: str,
               n_tokens: int | None = None) -> dict[str, Any]:
    """Everything that determines a cache's content (hashed into its key)."""

    c = cfg.cache
    model.check_layer(cfg.model.hook_layer)
    return {
        "format_version": FORMAT_VERSION,
        "model": model.name,
        "weights_hash": model.weights_hash,
        "hook": cfg.model.hook_name,
        "corpus": corpus,
        "corpus_fingerprint": corpus_fingerprint(corpus),
        "split": split,
        "ctx_len": c.ctx_len,
        "n_tokens": int(n_tokens or c.n_tokens),
        "dtype": c.dtype,
        "exclude_special": c.exclude_special,
        "batch_size": c.batch_size,
        "shard_tokens": c.shard_tokens,
        "d_model": model.d_model,
    }


def _to_storage(x: Float[Tensor, "n d_model"], dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return x.float().numpy()


def _from_storage(a: np.ndarray, dtype: str) -> Float[Tensor, "n d_model"]:
    t = torch.from_numpy(a if a.flags.writeable else np.array(a))  # memmaps are read-only
    if dtype == "bfloat16":
        return t.view(torch.int16).view(torch.bfloat16).float()
    return t.float()


def _save_npy(path: Path, arr: np.ndarray) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)
    return file_sha256(path)


class NpyRows:
    """Rows of a 2-D ``.npy`` file read on demand with explicit reads (no memory map).

    Why not ``np.load(mmap_mode="r")``: every page a memory map touches stays mapped, and
    counted in the process's resident memory, until the map is dropped, so one pass over
    a memory-mapped cache ends with the whole cache resident. Buffers from explicit reads
    are freed as soon as the rows are dropped, so a reader holding ``window`` shards stays
    within a few ``window x shard`` bytes however large the cache (tests/test_activations).
    Supports ``shape``, ``dtype``, ``len``, row slicing and ``np.asarray`` (the whole file).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            major, _minor = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, self.dtype = read_header(f)
            self.offset = f.tell()
        if len(shape) != 2 or fortran:
            raise CorruptCacheError(f"{self.path} is not a C-ordered 2-D array")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice):
            raise TypeError("NpyRows supports row slices only")
        lo, hi, step = rows.indices(self.shape[0])
        if step != 1:
            raise TypeError("NpyRows supports contiguous row slices only")
        n = max(0, hi - lo)
        row_bytes = self.shape[1] * self.dtype.itemsize
        out = np.fromfile(self.path, dtype=self.dtype, count=n * self.shape[1],
                          offset=self.offset + lo * row_bytes)
        return out.reshape(n, self.shape[1])

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Read rows ``start:start + len(out)`` into the C-contiguous ``out`` (no allocation)."""
        if out.dtype.itemsize != self.dtype.itemsize or not out.flags.c_contiguous \
                or out.shape[1:] != self.shape[1:] or start + len(out) > self.shape[0]:
            raise ValueError(f"cannot read rows {start}+{len(out)} of {self.path} into an "
                             f"array of shape {out.shape} and dtype {out.dtype}")
        row_bytes = self.shape[1] * self.dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * row_bytes)
            view = memoryview(out).cast("B")
            got = f.readinto(view)
        if got != len(out) * row_bytes:
            raise CorruptCacheError(f"{self.path} ended early (read {got} bytes)")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype)


@dataclass
class _Shard:
    index: int
    rows: int
    sha256: str
    tokens_sha256: str
    doc_start: int
    doc_ids: list[str]

    @property
    def stem(self) -> str:
        return f"shard_{self.index:05d}"

    def damaged_file(self, root: Path) -> Path | None:
        """The first of this shard's files under ``root`` that is missing or fails its
        sha256, or None when both are intact."""
        for suffix, want in ((".npy", self.sha256), (".tokens.npy", self.tokens_sha256)):
            p = root / f"{self.stem}{suffix}"
            if not p.exists() or file_sha256(p) != want:
                return p
        return None


def _read_record(path: Path) -> _Shard | None:
    """A shard record, or None (with a warning naming it) if it is damaged."""
    try:
        return _Shard(**json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        log.warning("shard record %s is damaged (%s); recomputing from there", path, err)
        return None


def packed_batches(model: LanguageModel, texts: list[str], c: CacheConfig
                   ) -> Iterator[tuple[list[int], TokenBatch]]:
    """The forward batches of one chunk of documents: (indices into ``texts``, tokens).

    Documents are sorted by token length and packed up to ``batch_size * ctx_len``
    positions per forward (padding included): ``batch_size`` full-length documents, or
    many more short ones. Counting documents instead left forwards of ~600 positions on
    corpora of short texts (ICD-10-CM lines), half the throughput of long-text corpora."""
    if not texts:
        return
    full = model.tokenize(texts, c.ctx_len, c.exclude_special)
    lengths = full.attention_mask.sum(1)
    order = torch.argsort(lengths, stable=True).tolist()
    budget, start = c.batch_size * c.ctx_len, 0
    while start < len(order):
        end = start + 1  # lengths ascend, so a batch's width is its last document's length
        while end < len(order) and (end + 1 - start) * int(lengths[order[end]]) <= budget:
            end += 1
        idx = order[start:end]
        width = int(lengths[idx[-1]])
        yield idx, TokenBatch(*(t[idx, :width] for t in full))
        start = end


def chunk_rows(model: LanguageModel, cfg: Config, texts: list[str], doc_index: int
                ) -> tuple[Float[Tensor, "n d_model"], Int[Tensor, "n 3"]]:
    """Activations and (token, document index, position) rows of one chunk of documents.

    Documents keep the index of their place in the corpus order (``doc_index`` is the
    first one's); rows follow the processing order (length-sorted batches)."""
    dev = model.device
    xs, ts = [], []
    for idx, (tokens, mask, keep) in packed_batches(model, texts, cfg.cache):
        acts = model.resid(tokens.to(dev), mask.to(dev), cfg.model.hook_layer).cpu()
        pos = torch.arange(tokens.shape[1]).expand_as(tokens)
        docidx = (torch.tensor(idx) + doc_index)[:, None].expand_as(tokens)
        xs.append(acts[keep])
        ts.append(torch.stack([tokens[keep], docidx[keep], pos[keep]], 1).to(torch.int32))
    return torch.cat(xs), torch.cat(ts)


def _write_shard(root: Path, index: int, x: Tensor, t: Tensor, doc_start: int,
                 doc_ids: list[str], dtype: str) -> _Shard:
    s = _Shard(index=index, rows=int(x.shape[0]), sha256="", tokens_sha256="",
               doc_start=doc_start, doc_ids=doc_ids)
    s.sha256 = _save_npy(root / f"{s.stem}.npy", _to_storage(x, dtype))
    s.tokens_sha256 = _save_npy(root / f"{s.stem}.tokens.npy", t.numpy())
    write_json_atomic(root / f"{s.stem}.json", s.__dict__)
    return s


def _finish(root: Path, spec: dict[str, Any], shards: list[_Shard], end: PlanEnd,
            corpus: str, split: str) -> None:
    done_rows = sum(s.rows for s in shards)
    counted = (f"{end.counted_tokens:,} tokens counted in its {end.n_documents:,} documents, "
               f"{end.cut_tokens:,} of them cut by cache.ctx_len={spec['ctx_len']}")
    if end.exhausted:
        log.warning("corpus %s/%s ran out after %d cached tokens (asked for %d; %s)", corpus,
                    split, done_rows, spec["n_tokens"], counted)
    else:
        log.info("cache %s/%s: %d tokens cached (%s)", corpus, split, done_rows, counted)
    if done_rows == 0:
        raise ValueError(f"corpus {corpus}/{split} produced no tokens to cache")
    missing = [f"{s.stem}{suf}" for s in shards for suf in (".npy", ".tokens.npy", ".json")
               if not (root / f"{s.stem}{suf}").exists()]
    if missing:  # never a manifest for an incomplete cache
        raise CorruptCacheError(f"cache {root} lost {missing[0]} while being built (another "
                                f"process?); rerun `sae-med cache` to rebuild it")
    manifest = {"spec": spec, "key": root.name, "n_tokens": done_rows,
                "n_documents": end.n_documents, "exhausted": end.exhausted,
                "counted_tokens": end.counted_tokens, "cut_tokens": end.cut_tokens,
                "shards": [s.__dict__ for s in shards]}
    manifest["checksum"] = stable_hash(manifest, 64)
    write_json_atomic(root / MANIFEST_NAME, manifest)


def build_cache(model: LanguageModel, cfg: Config, corpus: str, split: str = "train",
                n_tokens: int | None = None, progress: bool = True) -> ActivationCache:
    """Return the cache for (model, hook, corpus, split, ...), computing what is missing.

    A complete cache with a matching key is verified and reused; a partial one resumes at
    its last complete shard; a cache for any other configuration lives under another key.
    Under torchrun (an initialised process group) the ranks share the work, see
    :func:`_build`; the result is the same cache, file for file.
    """
    use_config(cfg)
    spec = cache_spec(model, cfg, corpus, split, n_tokens)
    root = cfg.cache_path / "activations" / stable_hash(spec)
    if (root / MANIFEST_NAME).exists():
        return ActivationCache(root)
    # one builder per key (under torchrun, rank 0 holds the lock for its job): a second
    # process waits, then reuses what the first built
    lock = artifact_lock(root.with_name(root.name + ".lock"), f"the cache {root}")
    with lock if runtime.rank() == 0 else contextlib.nullcontext():
        if not runtime.is_distributed() and (root / MANIFEST_NAME).exists():
            return ActivationCache(root)
        return _build(model, cfg, corpus, split, spec, root, progress)


@dataclass
class _PlannedShard:
    """A shard of the cache's layout, known from tokenisation alone."""

    index: int
    doc_start: int
    chunks: list[list[str]]
    """Texts of each chunk (forward batches are sorted by length within a chunk)."""
    doc_ids: list[str]
    keep_rows: int | None
    """Rows kept (the last shard is cut at the target); None keeps all."""


class PlanEnd(NamedTuple):
    """What :func:`_plan_shards` read, after its last shard."""

    n_documents: int
    exhausted: bool
    """The corpus ran out before the target."""
    counted_tokens: int
    """Every token of the documents read, as ``sae-med corpora`` counts them."""
    cut_tokens: int
    """Of those, the tokens past ``cache.ctx_len`` in longer documents: never cached."""


def _plan_shards(model: LanguageModel, cfg: Config, corpus: str, split: str, target: int
                 ) -> Iterator[_PlannedShard | PlanEnd]:
    """The shards of the cache, in order, from tokenisation only (no model): chunks of
    ``batch_size * SORT_CHUNK`` documents, and a shard ends between chunks once it holds
    ``shard_tokens`` rows, the last one cut at the target. Ends with a :class:`PlanEnd`."""

    c = cfg.cache
    docs = iter_documents(corpus, split)
    room = context_room(model.tokenizer, c.ctx_len)
    done = buffered = doc_index = index = counted = cut = 0
    chunks: list[list[str]] = []
    ids: list[str] = []
    start = 0
    exhausted = False
    while done + buffered < target:
        chunk = [d for _, d in zip(range(c.batch_size * SORT_CHUNK), docs, strict=False)]
        if not chunk:
            exhausted = True
            break
        chunk_texts = [d.text for d in chunk]
        buffered += sum(int(batch.keep.sum()) for _, batch in
                        packed_batches(model, chunk_texts, c))
        counts = token_counts(model.tokenizer, chunk_texts)
        counted += sum(counts)
        cut += sum(counts) - cached_tokens(counts, room)
        chunks.append(chunk_texts)
        ids.extend(d.doc_id for d in chunk)
        doc_index += len(chunk)
        if buffered >= c.shard_tokens and done + buffered < target:
            yield _PlannedShard(index, start, chunks, ids, None)
            index, done, start = index + 1, done + buffered, doc_index
            chunks, ids, buffered = [], [], 0
    if buffered:
        yield _PlannedShard(index, start, chunks, ids, target - done)
    yield PlanEnd(doc_index, exhausted, counted, cut)


def _record_matches(root: Path, p: _PlannedShard) -> _Shard | None:
    """The shard already written for ``p`` (record present, plan and checksums match)."""
    rec = root / f"shard_{p.index:05d}.json"
    if not rec.exists() or (s := _read_record(rec)) is None:
        return None
    if s.doc_start != p.doc_start or s.doc_ids != p.doc_ids:
        return None
    if (bad := s.damaged_file(root)) is not None:
        log.warning("%s is missing or fails its checksum; recomputing shard %d", bad, p.index)
        return None
    return s


def _build(model: LanguageModel, cfg: Config, corpus: str, split: str, spec: dict[str, Any],
           root: Path, progress: bool) -> ActivationCache:
    """Build (or finish) the cache in ``root``, in one process or shared by torchrun ranks.

    Tokenising the document stream (cheap next to the forward pass) plans the exact shard
    layout (:func:`_plan_shards`); rank r of w computes the shards whose index is r modulo
    w (every shard in one process) and writes them under their final names, keeping each
    one already written whose record and checksums match the plan (a resumed build); rank
    0 writes the manifest once all ranks are done. The layout depends on neither the world
    size nor interruptions, so every way of building a key gives the same cache, file for
    file, and training on it the same SAEs."""

    rank, ws = runtime.rank(), runtime.world_size()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".*.tmp"):  # a killed writer's; no rank writes before the barrier
            stale.unlink()
        write_json_atomic(root / "spec.json", spec)
    runtime.barrier()
    bar = tqdm(total=spec["n_tokens"], unit="tok", unit_scale=True,
               desc=f"cache {corpus}/{split}" + (f" rank {rank}/{ws}" if ws > 1 else ""),
               position=rank, disable=not progress)
    n_shards, end = 0, PlanEnd(0, False, 0, 0)
    for p in _plan_shards(model, cfg, corpus, split, spec["n_tokens"]):
        if isinstance(p, PlanEnd):
            end = p
            break
        n_shards += 1
        if p.index % ws != rank:
            continue
        if (s := _record_matches(root, p)) is not None:
            bar.update(s.rows)
        else:
            _compute_shard(model, cfg, root, p, bar)
    bar.close()
    runtime.barrier()
    if rank == 0:
        shards = [_Shard(**json.loads((root / f"shard_{i:05d}.json").read_text()))
                  for i in range(n_shards)]
        _finish(root, spec, shards, end, corpus, split)
    runtime.barrier()
    return ActivationCache(root)


def _compute_shard(model: LanguageModel, cfg: Config, root: Path, p: _PlannedShard,
                   bar: tqdm) -> _Shard:
    """Run the model over the planned shard's chunks and write it."""
    parts, first = [], p.doc_start
    for texts in p.chunks:
        parts.append(chunk_rows(model, cfg, texts, first))
        first += len(texts)
        bar.update(parts[-1][0].shape[0])
    x, t = torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
    if p.keep_rows is not None:
        x, t = x[:p.keep_rows], t[:p.keep_rows]
    return _write_shard(root, p.index, x, t, p.doc_start, p.doc_ids, cfg.cache.dtype)


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, parsed and checked against its own checksum (naming the file)."""
    def damaged(why: str) -> CorruptCacheError:
        return CorruptCacheError(f"activation cache manifest {path} is damaged ({why}); "
                                 f"delete {path.parent} and rerun `sae-med cache`")
    try:
        manifest = json.loads(path.read_text())
        body = {k: v for k, v in manifest.items() if k != "checksum"}
        for s in manifest["shards"]:
            _Shard(**s)
        manifest["spec"]["dtype"]  # noqa: B018 - present in every manifest
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise damaged(f"{type(err).__name__}: {err}") from None
    if "checksum" in manifest and manifest["checksum"] != stable_hash(body, 64):
        raise damaged("checksum mismatch")
    return manifest


class ActivationCache(ChunkedBatches):
    """A complete, verified activation cache, streamed from disk with bounded memory.

    Implements :class:`sae_med.cache.batches.BatchSource`: ``iter_batches`` streams shuffled
    float32 batches with at most ``window`` shards resident; ``iter_ordered`` and
    ``activations`` read only the rows asked for. Shards are read with explicit reads
    (:class:`NpyRows`), never memory-mapped, so caches larger than RAM stream through.

    Args:
        root: the cache folder (holding ``manifest.json``).
        verify: check every shard's sha256 against the manifest (a mismatch raises
            :class:`CorruptCacheError` naming the shard).
    """

    def __init__(self, root: str | Path, verify: bool = True, window: int = 4):
        self.root = Path(root)
        mpath = self.root / MANIFEST_NAME
        if not mpath.exists():
            raise FileNotFoundError(f"{self.root} is not a complete activation cache "
                                    "(no manifest.json); rebuild it with `sae-med cache`")
        self.manifest = _read_manifest(mpath)
        self.spec = self.manifest["spec"]
        self.dtype = self.spec["dtype"]
        self.shards = [_Shard(**s) for s in self.manifest["shards"]]
        if verify:
            for s in self.shards:
                if (p := s.damaged_file(self.root)) is not None:
                    raise CorruptCacheError(
                        f"activation cache shard {p} is missing or fails its sha256 "
                        f"check; delete {self.root} and rerun `sae-med cache` to rebuild")
        arrays = [NpyRows(self.root / f"{s.stem}.npy") for s in self.shards]
        for s, a in zip(self.shards, arrays, strict=True):
            if a.shape[0] != s.rows:
                raise CorruptCacheError(f"shard {s.stem} in {self.root} has {a.shape[0]} "
                                        f"rows, its record says {s.rows}")
        super().__init__(arrays, [s.stem for s in self.shards], window)
        self.window_dtype = torch.bfloat16 if self.dtype == "bfloat16" else torch.float32

    @property
    def weights(self) -> WeightsRecord:
        """The weights whose activations these are (the model the manifest records)."""
        return weights_record(self.spec["model"], self.spec["weights_hash"])

    def _load(self, i: int) -> Tensor:
        t = torch.from_numpy(self.chunks[i][:])
        return t.view(torch.int16).view(torch.bfloat16) if self.dtype == "bfloat16" else t

    def _load_into(self, i: int, out: Tensor) -> None:
        # bf16 shards stay bf16 inside the shuffle window (half the memory); batches are
        # converted to float32 as they are cut (exact: bf16 -> fp32 loses nothing)
        raw = out.view(torch.int16) if self.dtype == "bfloat16" else out
        self.chunks[i].read_into(0, raw.numpy())

    @property
    def key(self) -> str:
        """Content hash of everything that determined this cache."""
        return self.root.name

    @property
    def hook(self) -> str:
        return self.spec["hook"]

    @property
    def counted_tokens(self) -> int | None:
        """Tokens of the documents the cache read, counted as ``sae-med corpora`` counts
        them (None in a cache built before this was recorded)."""
        return self.manifest.get("counted_tokens")

    @property
    def cut_tokens(self) -> int | None:
        """Of :attr:`counted_tokens`, those past ``cache.ctx_len`` in longer documents,
        never cached (None in a cache built before this was recorded)."""
        return self.manifest.get("cut_tokens")

    def activations(self, start: int = 0, stop: int | None = None
                    ) -> Float[Tensor, "n d_model"]:
        """Rows ``[start, stop)`` in cache order (not shuffled), as float32."""
        stop = self.n_tokens if stop is None else stop
        out, offset = [], 0
        for i, rows in enumerate(self.rows):
            lo, hi = max(start, offset), min(stop, offset + rows)
            if lo < hi:
                out.append(_from_storage(self.chunks[i][lo - offset:hi - offset], self.dtype))
            offset += rows
        return torch.cat(out) if out else torch.empty(0, self.d_model)

    def token_info(self) -> Int[Tensor, "n 3"]:
        """(token id, document index, position) of every row, in cache order, as stored;
        :meth:`tokens` names the columns."""
        return torch.cat([torch.from_numpy(np.load(self.root / f"{s.stem}.tokens.npy"))
                          for s in self.shards])

    def tokens(self) -> TokenInfo:
        """What every row holds, in cache order (the columns of :meth:`token_info`)."""
        return TokenInfo(*self.token_info().long().unbind(1))

    def doc_ids(self) -> list[str]:
        """Document id of each document index."""
        return [d for s in self.shards for d in s.doc_ids]

    def iter_ordered(self, batch_size: int) -> Iterator[Float[Tensor, "batch d_model"]]:
        """Rows in cache order, one pass, for evaluation."""
        for start in range(0, self.n_tokens, batch_size):
            yield self.activations(start, min(start + batch_size, self.n_tokens))
