"""Training activations produced by the model on the fly, for runs whose cache would not fit.

:class:`ActivationStream` reads the corpus in order, tokenises and runs the model exactly
as the activation cache does (:func:`sae_med.cache.activations.chunk_rows`), and fills buffers
of about ``train.stream_buffer_tokens`` activations (whole chunks of documents). Each
buffer is permuted by its own generator, seeded by (batch seed, buffer index), and the
permuted buffers laid end to end form the stream that batches are cut from; the corpus
restarts (a new epoch) when it runs out. A position — the buffer, its first document and
epoch, its first row — fixes everything after it, so a resumed run recomputes one buffer
and continues with the same batches: the trainer stores the position in its checkpoints.

Under torchrun rank r of W reads documents r, r + W, r + 2W, ... and yields its share of
each global batch (``batch_size`` rows of this rank).

Documents longer than ``cache.ctx_len`` are cut as the cache cuts them; the stream counts
what it read as a cache's manifest does (:class:`StreamTally`), warns when a pass over the
corpus ends, and :meth:`ActivationStream.describe_tally` says how much was cut.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sae_med import runtime
from sae_med.artifacts import stable_hash
from sae_med.cache.activations import SORT_CHUNK, chunk_rows
from sae_med.config import Config
from sae_med.corpora.registry import (
    cached_tokens,
    context_room,
    corpus_fingerprint,
    iter_documents,
    token_counts,
    use_config,
)
from sae_med.lm.model import LanguageModel
from sae_med.lm.weights import WeightsRecord, weights_record

log = logging.getLogger(__name__)

STREAM_FORMAT = 1


@dataclass(frozen=True)
class StreamPosition:
    """Where one buffer of the stream begins."""

    buffer: int
    """Buffer index since the start of the stream (seeds its permutation)."""
    epoch: int
    """Pass over the corpus the buffer's first document belongs to."""
    doc: int
    """Index of the buffer's first document among this rank's documents of that epoch."""
    row: int
    """Index of the buffer's first row in the stream."""


class StreamTally(NamedTuple):
    """The documents a stream has read (each counted once, however often it reread them),
    counted as an activation cache's manifest counts its documents."""

    documents: int
    counted_tokens: int
    """Every token of those documents, as ``sae-med corpora`` counts them."""
    cut_tokens: int
    """Of those, the tokens past ``cache.ctx_len`` in longer documents: never streamed."""
    rows: int
    """Activations those documents gave (``counted_tokens - cut_tokens``)."""
    complete: bool
    """The documents are the whole corpus split (this rank's share of it)."""


class ActivationStream:
    """A :class:`sae_med.cache.batches.ResumableSource` of one corpus split's activations at the
    config's hook, computed by ``model`` as batches are asked for.

    Args:
        model: the language model (on the device that runs its forward).
        cfg: resolved config (``model.hook_layer``, ``cache.ctx_len / batch_size /
            exclude_special / dtype``, ``train.stream_buffer_tokens``, ``train.n_tokens``).
        corpus, split: the documents (:func:`sae_med.corpora.registry.iter_documents`).
        rank, world_size: this rank's share of the documents (default: torchrun's).
    """

    def __init__(self, model: LanguageModel, cfg: Config, corpus: str, split: str = "train",
                 rank: int | None = None, world_size: int | None = None):
        use_config(cfg)
        self.model, self.cfg, self.corpus, self.split = model, cfg, corpus, split
        self.rank = runtime.rank() if rank is None else rank
        self.world_size = runtime.world_size() if world_size is None else world_size
        self.d_model = model.d_model
        self.n_tokens = cfg.train.n_tokens
        self.buffer_tokens = cfg.train.stream_buffer_tokens
        self.dtype = torch.bfloat16 if cfg.cache.dtype == "bfloat16" else torch.float32
        self._positions: dict[int, StreamPosition] = {0: StreamPosition(0, 0, 0, 0)}
        self._room = context_room(model.tokenizer, cfg.cache.ctx_len)
        self._chunk_tallies: dict[int, StreamTally] = {}
        """Per chunk, by its first document (chunk starts are the same in every pass)."""
        self._pass_documents: int | None = None
        """This rank's documents in one pass, once a pass has ended."""
        c = cfg.cache
        self.key = stable_hash({
            "stream_format": STREAM_FORMAT, "model": model.name,
            "weights_hash": model.weights_hash, "hook": cfg.model.hook_name,
            "corpus": corpus, "corpus_fingerprint": corpus_fingerprint(corpus),
            "split": split, "ctx_len": c.ctx_len, "batch_size": c.batch_size,
            "exclude_special": c.exclude_special, "dtype": c.dtype,
            "buffer_tokens": self.buffer_tokens, "world_size": self.world_size})
        """Names the activations the stream yields (the trainer's run key includes it)."""

    # ------------------------------------------------------------------ documents
    def _chunks(self, epoch: int, doc: int) -> Iterator[tuple[int, int, list[str]]]:
        """(epoch, first document, texts) of each forward chunk of this rank's documents
        from ``doc`` of ``epoch`` on, over as many epochs as asked for."""

        size = self.cfg.cache.batch_size * SORT_CHUNK
        while True:
            docs = itertools.islice(iter_documents(self.corpus, self.split),
                                    self.rank, None, self.world_size)
            docs = itertools.islice(docs, doc, None)
            produced = False
            while chunk := [d.text for d in itertools.islice(docs, size)]:
                produced = True
                yield epoch, doc, chunk
                doc += len(chunk)
            if not produced and doc == 0:
                raise ValueError(f"corpus {self.corpus}/{self.split} has no documents for "
                                 f"rank {self.rank} of {self.world_size}")
            self._end_pass(epoch, doc)
            epoch, doc = epoch + 1, 0

    def _buffers(self, start: StreamPosition
                 ) -> Iterator[tuple[StreamPosition, Float[Tensor, "n d_model"]]]:
        """Every buffer from ``start`` on, unpermuted, with its position (recorded, so
        that a checkpoint can name it)."""
        pos = start
        parts: list[Tensor] = []
        rows = 0
        for epoch, doc, texts in self._chunks(start.epoch, start.doc):
            if not parts:
                pos = StreamPosition(pos.buffer, epoch, doc, pos.row)
            x, _ = chunk_rows(self.model, self.cfg, texts, doc)
            self._count(doc, texts, x.shape[0])
            parts.append(x.to(self.dtype))
            rows += x.shape[0]
            if rows >= self.buffer_tokens:
                self._positions[pos.buffer] = pos
                yield pos, _concat_and_clear(parts)  # no reference stays in this frame
                pos = StreamPosition(pos.buffer + 1, 0, 0, pos.row + rows)
                rows = 0

    # ------------------------------------------------------------------ tally
    def _count(self, doc: int, texts: list[str], rows: int) -> None:
        """Count a chunk's documents (once) as :func:`sae_med.cache.activations.build_cache`
        counts them."""
        if doc not in self._chunk_tallies:
            counts = token_counts(self.model.tokenizer, texts)
            counted = sum(counts)
            self._chunk_tallies[doc] = StreamTally(
                len(texts), counted, counted - cached_tokens(counts, self._room), rows, False)

    def _end_pass(self, epoch: int, documents: int) -> None:
        """A pass over this rank's documents ended: the next one repeats them (warned once,
        as a cache warns when its corpus runs out)."""
        if self._pass_documents is None:
            self._pass_documents = documents
            log.warning("%s ran out after pass %d; the next pass repeats its documents (%s)",
                        self._name(), epoch + 1, self.describe_tally())

    @property
    def weights(self) -> WeightsRecord:
        """The weights producing these activations."""
        return weights_record(self.model.name, self.model.weights_hash)

    @property
    def tally(self) -> StreamTally:
        """What the stream has read so far (:class:`StreamTally`)."""
        parts = self._chunk_tallies.values()
        documents = sum(t.documents for t in parts)
        return StreamTally(documents, sum(t.counted_tokens for t in parts),
                           sum(t.cut_tokens for t in parts), sum(t.rows for t in parts),
                           documents == self._pass_documents)

    def describe_tally(self) -> str:
        """The tally as one sentence, in the words ``sae-med cache`` uses for a cache."""
        t = self.tally
        read = "all its" if t.complete else "the"
        return (f"{t.rows:,} tokens streamed from {read} {t.documents:,} documents read: "
                f"{t.counted_tokens:,} tokens counted, {t.cut_tokens:,} of them cut by "
                f"cache.ctx_len={self.cfg.cache.ctx_len}")

    def _name(self) -> str:
        rank = f", rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""
        return f"stream of {self.corpus}/{self.split}{rank}"

    # ------------------------------------------------------------------ BatchSource
    def iter_batches(self, batch_size: int, seed: int, start_batch: int = 0
                     ) -> Iterator[Float[Tensor, "batch d_model"]]:
        """This rank's batches from ``start_batch`` on (float32). Seeking needs a position
        at or before the start: the stream's start, one it produced, or one loaded from a
        checkpoint (:meth:`load_state_dict`)."""
        start_row = start_batch * batch_size
        pos = self._position_before(start_row)
        skip = start_row - pos.row
        rest: Tensor | None = None
        for p, buf in self._buffers(pos):
            perm = np.random.default_rng([seed, p.buffer]).permutation(buf.shape[0])
            if skip > buf.shape[0]:
                raise ValueError(f"stream of {self.corpus} lost its place: position "
                                 f"{p} does not reach row {start_row}")
            block = buf[torch.from_numpy(perm[skip:])]
            del buf  # the permuted copy is all this buffer still needs
            skip = 0
            if rest is not None:
                block = torch.cat([rest, block])
            n = block.shape[0] - block.shape[0] % batch_size
            for i in range(0, n, batch_size):
                yield block[i:i + batch_size].float()
            rest = block[n:].clone() if n < block.shape[0] else None  # frees the block

    def _position_before(self, row: int) -> StreamPosition:
        """The known buffer start nearest at or before ``row``."""
        # list() copies in one step: a prefetch thread may be adding positions meanwhile
        known = [p for p in list(self._positions.values()) if p.row <= row]
        return max(known, key=lambda p: p.row)

    def describe_batch(self, batch_index: int, batch_size: int, seed: int) -> str:
        pos = self._position_before(batch_index * batch_size)
        return (f"stream of {self.corpus}/{self.split}, rank {self.rank}: buffer "
                f"{pos.buffer} from document {pos.doc} of epoch {pos.epoch} on")

    # ------------------------------------------------------------------ ResumableSource
    def state_dict(self, next_batch: int, batch_size: int) -> dict[str, int]:
        return asdict(self._position_before(next_batch * batch_size))

    def load_state_dict(self, state: dict[str, int]) -> None:
        pos = StreamPosition(**{k: int(v) for k, v in state.items()})
        self._positions[pos.buffer] = pos


def _concat_and_clear(parts: list[Tensor]) -> Tensor:
    out = torch.cat(parts)
    parts.clear()
    return out
