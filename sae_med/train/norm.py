"""The training-time input transform x -> (x - mean) * scale, and its estimate."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from sae_med import runtime
from sae_med.cache.batches import BatchSource, ResumableSource
from sae_med.sae.base import LinearSAE
from sae_med.train.records import TrainingError


class InputNorm(NamedTuple):
    """The training-time input transform x -> (x - mean) * scale, folded into saved SAEs."""

    mean: Float[Tensor, " d_model"]
    """E[x] with ``train.center_inputs``, else zeros."""
    scale: float
    """s with E||(x - mean) s||^2 = 1."""

    def apply(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.device, x.dtype)) * self.scale

    def to_raw(self, sae: LinearSAE) -> LinearSAE:
        """A copy of a training-space SAE that takes raw activations."""
        return sae.folded().fold_input_mean_(self.mean)

    def from_raw(self, sae: LinearSAE) -> LinearSAE:
        """A copy of a raw-activation SAE in this training space."""
        return sae.folded().fold_input_mean_(-self.mean).fold_input_scale_(1.0 / self.scale)


@torch.no_grad()
def estimate_input_norm(source: BatchSource, batch_size: int, n_batches: int, seed: int,
                        center: bool = False) -> InputNorm:
    """Mean (if ``center``) and scale s with E||(x - mean) s||^2 = 1 over ``n_batches``."""
    total_sq, total, count = 0.0, torch.zeros(source.d_model, dtype=torch.float64), 0
    it = source.iter_batches(batch_size, seed)
    for i in range(n_batches):
        x = next(it).double().cpu()
        sq = x.pow(2).sum(-1)
        if not torch.isfinite(sq).all():
            raise TrainingError(f"NaN/inf in normalisation batch {i} "
                                f"({source.describe_batch(i, batch_size, seed)})")
        total_sq += float(sq.sum())
        total += x.sum(0)
        count += x.shape[0]
    if isinstance(source, ResumableSource):  # each rank read its own documents
        sums = runtime.all_reduce_sum_(torch.cat([
            torch.tensor([total_sq, float(count)], dtype=torch.float64), total]))
        total_sq, count, total = float(sums[0]), int(sums[1]), sums[2:]
    mean = total / count if center else torch.zeros_like(total)
    # E||x - m||^2 = E||x||^2 - 2 m.E[x] + ||m||^2 (float64: the mean may dominate ||x||)
    mean_sq = total_sq / count - 2 * float(mean @ (total / count)) + float(mean @ mean)
    if mean_sq <= 0:
        raise TrainingError("activations are all zero (or constant): cannot normalise")
    return InputNorm(mean.float(), 1.0 / math.sqrt(mean_sq))
