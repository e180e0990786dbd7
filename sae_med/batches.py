"""Shuffled, bounded-memory streams of activation batches.

Every batch stream in sae-med is an *infinite, deterministic* sequence: given
``(batch_size, seed)`` batch ``k`` is always the same vectors, so a trainer that resumes
at step ``k`` asks for ``start_batch=k`` and continues exactly where it stopped.

Shuffling is two-level, so memory stays bounded whatever the cache size: each epoch
permutes the order of the chunks (shards), then loads ``window`` chunks at a time and
permutes the rows inside that window. Only ``window`` chunks are resident at once.
"""

from __future__ import annotations

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

    def _load(self, i: int) -> Tensor:
        """Chunk ``i`` as a float32 tensor (subclasses decode their storage format)."""
        c = self.chunks[i]
        return c.float() if isinstance(c, Tensor) else torch.from_numpy(np.asarray(c)).float()

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
        """Yield (row block, chunk ids) pieces of the shuffled stream from ``start_row``."""
        epoch, skip = divmod(start_row, self.n_tokens)
        while True:
            for ids, perm in self._epoch_plan(seed, epoch):
                n = len(perm)
                if skip >= n:
                    skip -= n
                    continue
                data = torch.cat([self._load(i) for i in ids])
                yield data[torch.from_numpy(perm[skip:])], ids
                skip = 0
            epoch += 1

    def iter_batches(self, batch_size: int, seed: int, start_batch: int = 0
                     ) -> Iterator[Tensor]:
        pending: list[Tensor] = []
        have = 0
        for block, _ids in self._rows_stream(seed, start_batch * batch_size):
            pending.append(block)
            have += block.shape[0]
            while have >= batch_size:
                cat = torch.cat(pending) if len(pending) > 1 else pending[0]
                yield cat[:batch_size].contiguous()
                rest = cat[batch_size:]
                pending, have = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)

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
