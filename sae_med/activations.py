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

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from sae_med.artifacts import atomic_path, file_sha256, stable_hash, write_json_atomic
from sae_med.batches import ChunkedBatches
from sae_med.config import Config
from sae_med.models import LoadedModel, resid_post

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
SORT_CHUNK = 8
"""Batches read together and sorted by length (flushes happen between such chunks)."""


class CorruptCacheError(RuntimeError):
    """A cache file's checksum or shape does not match its record."""


def cache_spec(model: LoadedModel, cfg: Config, corpus: str, split: str,
               n_tokens: int | None = None) -> dict[str, Any]:
    """Everything that determines a cache's content (hashed into its key)."""
    from sae_med.data import corpus_fingerprint

    c = cfg.cache
    hook_layer = cfg.model.hook_layer
    if hook_layer >= model.n_layers:
        raise ValueError(f"config field 'model.hook_layer': {hook_layer} is out of range; "
                         f"{model.name} has blocks 0..{model.n_layers - 1}")
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


def _special_ids(tokenizer) -> list[int]:
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(i for i in ids if i is not None)


def hook_activations(model: LoadedModel, tokens: Int[Tensor, "batch pos"],
                     attention_mask: Int[Tensor, "batch pos"], hook_layer: int
                     ) -> Float[Tensor, "batch pos d_model"]:
    """Residual stream after block ``hook_layer``, running no block beyond it.

    Uses the HF twin of the model (same weights as the TransformerLens one; on CPU its
    fused attention is several times faster than TransformerLens's einsum path)."""
    return resid_post(model.hf, tokens, attention_mask, hook_layer)


def _tokenize(tokenizer, texts: list[str], ctx_len: int
              ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Each text on its own with BOS, truncated to ``ctx_len``, right-padded."""
    enc = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=ctx_len,
                    padding=True, padding_side="right", return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _to_storage(x: Float[Tensor, "n d_model"], dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return x.float().numpy()


def _from_storage(a: np.ndarray, dtype: str) -> Float[Tensor, "n d_model"]:
    t = torch.from_numpy(np.array(a))  # copy: memmaps are read-only
    if dtype == "bfloat16":
        return t.view(torch.int16).view(torch.bfloat16).float()
    return t.float()


def _save_npy(path: Path, arr: np.ndarray) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)
    return file_sha256(path)


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


def _valid_shards(root: Path) -> list[_Shard]:
    """Shards 0..k whose records exist and whose files match their checksums."""
    shards: list[_Shard] = []
    i = 0
    while (rec := root / f"shard_{i:05d}.json").exists():
        s = _Shard(**json.loads(rec.read_text()))
        ok = all((root / f"{s.stem}{suf}").exists() for suf in (".npy", ".tokens.npy"))
        if not ok or file_sha256(root / f"{s.stem}.npy") != s.sha256 \
                or file_sha256(root / f"{s.stem}.tokens.npy") != s.tokens_sha256:
            log.warning("shard %s of %s fails its checksum; recomputing from there", i, root)
            break
        shards.append(s)
        i += 1
    for stale in root.glob("shard_*"):  # anything after the last good shard
        idx = int(stale.name[6:11])
        if idx >= len(shards):
            stale.unlink()
    return shards


def build_cache(model: LoadedModel, cfg: Config, corpus: str, split: str = "train",
                n_tokens: int | None = None, progress: bool = True) -> ActivationCache:
    """Return the cache for (model, hook, corpus, split, ...), computing what is missing.

    A complete cache with a matching key is verified and reused; a partial one resumes at
    its last complete shard; a cache for any other configuration lives under another key.
    """
    from sae_med.data import iter_documents

    spec = cache_spec(model, cfg, corpus, split, n_tokens)
    root = cfg.cache_path / "activations" / stable_hash(spec)
    if (root / "manifest.json").exists():
        return ActivationCache(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "spec.json", spec)
    shards = _valid_shards(root)
    done_rows = sum(s.rows for s in shards)
    next_doc = shards[-1].doc_start + len(shards[-1].doc_ids) if shards else 0
    target = spec["n_tokens"]
    special = torch.tensor(_special_ids(model.tokenizer))
    c = cfg.cache
    dev = next(model.tl.parameters()).device

    docs = iter_documents(corpus, split)
    for _ in range(next_doc):  # documents already in complete shards
        next(docs)
    bar = tqdm(total=target, initial=done_rows, unit="tok", unit_scale=True,
               desc=f"cache {corpus}/{split}", disable=not progress)
    buf_x: list[Tensor] = []
    buf_t: list[Tensor] = []
    buf_ids: list[str] = []
    buf_start = next_doc
    buffered = 0

    def flush(final: bool) -> None:
        nonlocal buf_x, buf_t, buf_ids, buf_start, buffered, done_rows
        x, t = torch.cat(buf_x), torch.cat(buf_t)
        if final:
            keep = target - done_rows
            x, t = x[:keep], t[:keep]
        s = _Shard(index=len(shards), rows=int(x.shape[0]), sha256="", tokens_sha256="",
                   doc_start=buf_start, doc_ids=buf_ids)
        s.sha256 = _save_npy(root / f"{s.stem}.npy", _to_storage(x, c.dtype))
        s.tokens_sha256 = _save_npy(root / f"{s.stem}.tokens.npy", t.numpy())
        write_json_atomic(root / f"{s.stem}.json", s.__dict__)
        shards.append(s)
        done_rows += s.rows
        buf_start += len(buf_ids)
        buf_x, buf_t, buf_ids, buffered = [], [], [], 0

    doc_index = next_doc
    exhausted = False
    while done_rows + buffered < target:
        chunk = [d for _, d in zip(range(c.batch_size * SORT_CHUNK), docs, strict=False)]
        if not chunk:
            exhausted = True
            break
        # batches of similar length waste little on padding; documents keep the index of
        # their place in the corpus order, rows follow the processing order
        order = sorted(range(len(chunk)), key=lambda i: len(chunk[i].text))
        for b in range(0, len(order), c.batch_size):
            idx = order[b:b + c.batch_size]
            tokens, mask = _tokenize(model.tokenizer, [chunk[i].text for i in idx], c.ctx_len)
            acts = hook_activations(model, tokens.to(dev), mask.to(dev),
                                    cfg.model.hook_layer).cpu()
            keep = mask.bool()
            if c.exclude_special:
                keep &= ~torch.isin(tokens, special)
            pos = torch.arange(tokens.shape[1]).expand_as(tokens)
            docidx = (torch.tensor(idx) + doc_index)[:, None].expand_as(tokens)
            buf_x.append(acts[keep])
            buf_t.append(torch.stack([tokens[keep], docidx[keep], pos[keep]], 1)
                         .to(torch.int32))
            n = int(keep.sum())
            buffered += n
            bar.update(min(n, target - bar.n))
        buf_ids.extend(d.doc_id for d in chunk)
        doc_index += len(chunk)
        if buffered >= c.shard_tokens and done_rows + buffered < target:
            flush(final=False)
    if buffered:
        flush(final=True)
    bar.close()
    if exhausted:
        log.warning("corpus %s/%s ran out after %d tokens (asked for %d)", corpus, split,
                    done_rows, target)
    if done_rows == 0:
        raise ValueError(f"corpus {corpus}/{split} produced no tokens to cache")
    manifest = {"spec": spec, "key": root.name, "n_tokens": done_rows,
                "n_documents": doc_index, "exhausted": exhausted,
                "shards": [s.__dict__ for s in shards]}
    write_json_atomic(root / "manifest.json", manifest)
    return ActivationCache(root)


class ActivationCache(ChunkedBatches):
    """A complete, verified activation cache, readable by memory map.

    Implements :class:`sae_med.batches.BatchSource`: ``iter_batches`` streams shuffled
    float32 batches with at most ``window`` shards resident.

    Args:
        root: the cache folder (holding ``manifest.json``).
        verify: check every shard's sha256 against the manifest (a mismatch raises
            :class:`CorruptCacheError` naming the shard).
    """

    def __init__(self, root: str | Path, verify: bool = True, window: int = 4):
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.exists():
            raise FileNotFoundError(f"{self.root} is not a complete activation cache "
                                    "(no manifest.json); rebuild it with `sae-med cache`")
        self.manifest = json.loads(mpath.read_text())
        self.spec = self.manifest["spec"]
        self.dtype = self.spec["dtype"]
        self.shards = [_Shard(**s) for s in self.manifest["shards"]]
        if verify:
            for s in self.shards:
                for suffix, want in ((".npy", s.sha256), (".tokens.npy", s.tokens_sha256)):
                    p = self.root / f"{s.stem}{suffix}"
                    if not p.exists() or file_sha256(p) != want:
                        raise CorruptCacheError(
                            f"activation cache shard {p} is missing or fails its sha256 "
                            f"check; delete {self.root} and rerun `sae-med cache` to rebuild")
        arrays = [np.load(self.root / f"{s.stem}.npy", mmap_mode="r") for s in self.shards]
        for s, a in zip(self.shards, arrays, strict=True):
            if a.shape[0] != s.rows:
                raise CorruptCacheError(f"shard {s.stem} in {self.root} has {a.shape[0]} "
                                        f"rows, its record says {s.rows}")
        super().__init__(arrays, [s.stem for s in self.shards], window)

    def _load(self, i: int) -> Tensor:
        return _from_storage(self.chunks[i], self.dtype)

    @property
    def key(self) -> str:
        """Content hash of everything that determined this cache."""
        return self.root.name

    @property
    def hook(self) -> str:
        return self.spec["hook"]

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
        """(token id, document index, position) of every row, in cache order."""
        return torch.cat([torch.from_numpy(np.load(self.root / f"{s.stem}.tokens.npy"))
                          for s in self.shards])

    def doc_ids(self) -> list[str]:
        """Document id of each document index."""
        return [d for s in self.shards for d in s.doc_ids]

    def iter_ordered(self, batch_size: int) -> Iterator[Float[Tensor, "batch d_model"]]:
        """Rows in cache order, one pass, for evaluation."""
        for start in range(0, self.n_tokens, batch_size):
            yield self.activations(start, min(start + batch_size, self.n_tokens))


def clear_cache(root: str | Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
