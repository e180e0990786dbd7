"""Shuffled, bounded-memory streams of activation batches.

Every batch stream in sae-med is an *infinite, deterministic* sequence: given
``(batch_size, seed)`` batch ``k`` is always the same vectors, so a trainer that resumes
at step ``k`` asks for ``start_batch=k`` and continues exactly where it stopped.

Shuffling is two-level, so memory stays bounded whatever the cache size: each epoch
permutes the order of the chunks (shards), then loads ``window`` chunks at a time and
permutes the rows inside that window. Two window-sized buffers (the window as read and
shuffled), allocated once and reused, are all the stream holds. :func:`prefetch` runs any
stream a few batches ahead in a background thread, into pinned memory for GPU training.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor


@runtime_checkable
class BatchSource(Protocol):
    """Anything a trainer or evaluator can pull activation batches from."""

    d_model: int
    n_tokens: int

    def iter_batches(self, batch_size: int, seed: int, start_batch: int = 0
                     ) -> Iterator[Tensor]:
        """Infinite stream of float32 ``(batch, d_model)`` tensors, deterministic in
        ``(batch_size, seed)``; ``start_batch`` skips that many batches cheaply."""
        ...

    def describe_batch(self, batch_index: int, batch_size: int, seed: int) -> str:
        """Human-readable origin of a batch (which shards), for error messages."""
        ...


@runtime_checkable
class ResumableSource(BatchSource, Protocol):
    """A source that cannot seek to a batch by its index alone (a stream the model produces
    on the fly: replaying it would cost the whole run), so the trainer records its
    position in every checkpoint. Its batches hold this rank's rows only: under torchrun
    every rank reads its own documents."""

    def state_dict(self, next_batch: int, batch_size: int) -> dict[str, int]:
        """The position from which ``iter_batches(batch_size, seed, start_batch=next_batch)``
        continues (any batch up to the last one yielded)."""
        ...

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make a position from :meth:`state_dict` (of an earlier process) known."""
        ...


class ChunkedBatches:
    """The two-level shuffle over a list of row-chunks (memmaps, arrays or tensors).

    Args:
        chunks: sequence of 2-D arrays ``(rows_i, d_model)``; each is read only while it
            is inside the current shuffle window.
        names: one label per chunk for :meth:`describe_batch`.
        window: chunks resident (and mixed) at once.
    """

    def __init__(self, chunks: Sequence, names: Sequence[str] | None = None, window: int = 4):
        if len(chunks) == 0:
            raise ValueError("no activation chunks to read from")
        self.chunks = chunks
        self.names = list(names) if names is not None else [f"chunk{i}" for i in
                                                             range(len(chunks))]
        self.window = max(1, window)
        self.rows = [int(c.shape[0]) for c in chunks]
        self.n_tokens = sum(self.rows)
        self.d_model = int(chunks[0].shape[1])

    window_dtype = torch.float32
    """dtype of the shuffle buffers (a bf16 cache keeps bf16 there: half the memory)."""

    def _load(self, i: int) -> Tensor:
        """Chunk ``i`` as a ``window_dtype`` tensor (subclasses decode their storage)."""
        c = self.chunks[i]
        return c.float() if isinstance(c, Tensor) else torch.from_numpy(np.asarray(c)).float()

    def _load_into(self, i: int, out: Tensor) -> None:
        """Write chunk ``i`` into ``out`` (``(rows_i, d_model)``, ``window_dtype``);
        subclasses read straight into it instead of allocating."""
        out.copy_(self._load(i))

    def _epoch_plan(self, seed: int, epoch: int) -> list[tuple[list[int], np.ndarray]]:
        """For one epoch: list of (chunk ids in window, row permutation of the window)."""
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self.chunks))
        plan = []
        for w in range(0, len(order), self.window):
            ids = [int(i) for i in order[w:w + self.window]]
            n = sum(self.rows[i] for i in ids)
            plan.append((ids, rng.permutation(n)))
        return plan

    def _rows_stream(self, seed: int, start_row: int) -> Iterator[tuple[Tensor, list[int]]]:
        """Yield (row block, chunk ids) pieces of the shuffled stream from ``start_row``.

        The blocks are views of one buffer that the next block overwrites: copy what must
        outlive the next step. Two buffers of the largest window's size are all the memory
        the stream holds, allocated once, so resident memory stays flat whatever the
        allocator does with freed blocks."""
        epoch, skip = divmod(start_row, self.n_tokens)
        cap = sum(sorted(self.rows, reverse=True)[:self.window])
        data = torch.empty(cap, self.d_model, dtype=self.window_dtype)
        shuffled = torch.empty_like(data)
        while True:
            for ids, perm in self._epoch_plan(seed, epoch):
                n = len(perm)
                if skip >= n:
                    skip -= n
                    continue
                offset = 0
                for i in ids:
                    self._load_into(i, data[offset:offset + self.rows[i]])
                    offset += self.rows[i]
                block = shuffled[:n - skip]
                torch.index_select(data[:n], 0, torch.from_numpy(perm[skip:]), out=block)
                yield block, ids
                skip = 0
            epoch += 1

    def iter_batches(self, batch_size: int, seed: int, start_batch: int = 0
                     ) -> Iterator[Tensor]:
        # Every batch is a fresh float32 copy (the window buffers are reused); the rows
        # left at a window's end are copied before the next window is read.
        rest: Tensor | None = None
        for block, _ids in self._rows_stream(seed, start_batch * batch_size):
            pos = 0
            if rest is not None:
                need = batch_size - rest.shape[0]
                if block.shape[0] < need:
                    rest = torch.cat([rest, block])
                    continue
                yield torch.cat([rest, block[:need]]).float()
                rest, pos = None, need
            while block.shape[0] - pos >= batch_size:
                yield block[pos:pos + batch_size].to(torch.float32, copy=True)
                pos += batch_size
            rest = block[pos:].clone() if pos < block.shape[0] else None

    def describe_batch(self, batch_index: int, batch_size: int, seed: int) -> str:
        start = batch_index * batch_size
        epoch, row = divmod(start, self.n_tokens)
        names: list[str] = []
        for ids, perm in self._epoch_plan(seed, epoch):
            if row < len(perm) + batch_size:
                names.extend(self.names[i] for i in ids)
            if row < len(perm):
                break
            row -= len(perm)
        return f"epoch {epoch}, from {', '.join(dict.fromkeys(names))}"


class TensorBatchSource(ChunkedBatches):
    """An in-memory :class:`BatchSource` over one ``(tokens, d_model)`` tensor."""

    def __init__(self, acts: Tensor, chunk_rows: int | None = None, window: int = 4):
        chunk_rows = chunk_rows or acts.shape[0]
        chunks = list(torch.split(acts, chunk_rows))
        super().__init__(chunks, [f"rows {i * chunk_rows}+" for i in range(len(chunks))],
                         window)


def prefetch(batches: Iterator[Tensor], depth: int = 2, pin_memory: bool = False
             ) -> Iterator[Tensor]:
    """The same stream as ``batches``, produced ``depth`` batches ahead by a background
    thread (shard reads, bf16 decoding and the shuffle overlap the training step).

    With ``pin_memory`` each batch is copied into page-locked memory, so the consumer's
    ``.to("cuda", non_blocking=True)`` is an asynchronous DMA. Order and content are
    unchanged; an exception in the producer is re-raised by the consumer. The producer
    stops when the consumer stops asking (the generator is closed or collected).
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for b in batches:
                item = b.pin_memory() if pin_memory else b
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True, name="sae-med-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
