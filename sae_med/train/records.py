"""What training leaves behind: metrics rows, results, errors."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from sae_med.artifacts import (
    atomic_path,
)


class TrainingError(RuntimeError):
    """Training stopped on bad input (wrong width, NaN/inf) or an unusable checkpoint."""


@dataclass(frozen=True)
class TrainMetrics:
    """One row of an SAE's ``metrics.jsonl``: the global training batch at a logged step."""

    step: int
    """Steps done (1-based)."""
    tokens: int
    lr: float
    sparsity_coeff: float
    loss: float
    mse: float
    """Mean over rows of sum_dims (x - x_hat)^2, in the scaled training space."""
    sparsity_loss: float
    l0: float
    fve: float
    dead_frac: float
    """Share of latents that have not fired within ``train.dead_window_tokens``."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, line: str) -> TrainMetrics:
        """A row as written by :meth:`to_json`; a field a row lacks is NaN (logs of older
        versions), a key this type does not know is ignored."""
        row = json.loads(line)
        return cls(**{f.name: row.get(f.name, math.nan) for f in dataclasses.fields(cls)})


def last_metrics(path: Path) -> TrainMetrics | None:
    """The last row of the ``metrics.jsonl`` at ``path`` (None: missing or empty)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return TrainMetrics.from_json(lines[-1]) if lines else None


@dataclass(frozen=True)
class TrainResult:
    """One trained SAE of a sweep."""

    l0_target: float
    path: Path
    """Directory with the folded ``cfg.json`` + ``sae.safetensors``, ``metrics.jsonl`` and
    the run's ``config.json``."""
    steps: int
    tokens: int
    input_scale: float
    """Scale the SAE was trained with (already folded into the saved weights)."""
    metrics: TrainMetrics | None = None
    """Last logged metrics row (None: its log is missing or empty)."""
    train_corpus: str = ""
    replicate: int = 0
    """Index of the seed replicate (0 .. ``sae.seeds`` - 1)."""

    @property
    def final(self) -> dict[str, float]:
        """:attr:`metrics` as a dict ({} when there is none), e.g. for a table row."""
        return dataclasses.asdict(self.metrics) if self.metrics is not None else {}


def _metric_step(line: str) -> int | None:
    """The step of a metrics row; None for a row cut short by a kill."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric rows logged after ``last_step`` (they are recomputed on resume) and
    any row a kill left half-written."""
    if not path.exists():
        return
    rows = [ln for ln in path.read_text(errors="replace").splitlines()
            if (step := _metric_step(ln)) is not None and step <= last_step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(r + "\n" for r in rows))
