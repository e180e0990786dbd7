"""Learning-rate and sparsity schedules, step counts and seeds of a sweep."""

from __future__ import annotations

import math

from sae_med.artifacts import (
    derived_seed,
)
from sae_med.config import TrainConfig

# --------------------------------------------------------------------------------------
# Schedules, metrics, helpers
# --------------------------------------------------------------------------------------

def total_steps(tc: TrainConfig) -> int:
    return math.ceil(tc.n_tokens / tc.batch_size)


def lr_at(step: int, tc: TrainConfig, n_steps: int) -> float:
    """Linear warmup over ``lr_warmup_steps``, then constant, then a linear decay to 0 over
    the last ``lr_decay_frac`` of the steps (``step`` counts from 0)."""
    warm = min(1.0, (step + 1) / tc.lr_warmup_steps) if tc.lr_warmup_steps else 1.0
    decay_steps = int(round(n_steps * tc.lr_decay_frac))
    decay_start = n_steps - decay_steps
    decay = (n_steps - step) / decay_steps if decay_steps and step >= decay_start else 1.0
    return tc.lr * warm * decay


def sparsity_coeff_at(step: int, tc: TrainConfig) -> float:
    """``sparsity_coeff`` warmed up linearly over ``sparsity_warmup_steps``."""
    if not tc.sparsity_warmup_steps:
        return tc.sparsity_coeff
    return tc.sparsity_coeff * min(1.0, (step + 1) / tc.sparsity_warmup_steps)


def init_seed(seed: int, train_corpus: str, l0_target: float, replicate: int) -> int:
    """Initialisation seed of one SAE: distinct for every (training corpus, target L0,
    replicate), so the families compared never start from the same decoder."""
    return derived_seed(seed, "init", train_corpus, float(l0_target), int(replicate))


def batch_seed(seed: int, replicate: int) -> int:
    """Batch-order seed of a replicate's sweep (replicate 0 reads in ``seed``'s order)."""
    return seed if replicate == 0 else derived_seed(seed, "batches", int(replicate))


def snapshot_steps(tc: TrainConfig) -> dict[int, list[int]]:
    """``{steps done: budgets}``: each snapshot is taken after the first step whose tokens
    reach its budget (budgets within one batch of each other share that step)."""
    out: dict[int, list[int]] = {}
    for b in tc.snapshot_tokens:
        out.setdefault(math.ceil(b / tc.batch_size), []).append(b)
    return out
