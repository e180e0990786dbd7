"""Removing the checkpoints of finished sweeps.

A sweep's checkpoints (weights plus Adam's moments, the last two kept) are about nine times
the size of the SAEs it saves, and once every SAE is saved after the last step nothing reads
them: a rerun reuses the finished sweep from the SAEs' metadata
(:func:`~sae_med.train.sweep.finished_results`). Unfinished sweeps and sweeps in training
(their lock is held) keep theirs, so a killed run still resumes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from sae_med.artifacts import ArtifactLockedError, artifact_lock
from sae_med.config import ConfigError, config_from_dict
from sae_med.layout import (
    CFG_FILENAME,
    CHECKPOINT_NAME,
    CHECKPOINT_RECORD_NAME,
    CONFIG_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    RUN_LOCK_NAME,
    sae_dirname,
)
from sae_med.train.schedule import total_steps
from sae_med.train.sweep import saved_run

log = logging.getLogger(__name__)

CHECKPOINT_FILES = (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME, CHECKPOINT_RECORD_NAME)


class Pruned(NamedTuple):
    """What :func:`prune_checkpoints` did under a folder."""

    removed: tuple[Path, ...]
    """Sweep folders whose checkpoints were removed."""
    freed_bytes: int
    kept: tuple[Path, ...]
    """Sweep folders with checkpoints left as they are: unfinished, or in training."""

    def summary(self) -> str:
        return (f"removed the checkpoints of {len(self.removed)} finished sweeps "
                f"({self.freed_bytes / 2**30:.2f} GiB); kept those of {len(self.kept)} "
                f"unfinished or training")


def sweep_finished_on_disk(sweep_dir: Path) -> bool:
    """Whether every SAE of the sweep in ``sweep_dir`` was saved, by one run, after the
    last step of its config and after its last checkpoint was written."""
    try:
        cfg = config_from_dict(json.loads((sweep_dir / CONFIG_NAME).read_text()))
    except (OSError, ValueError, ConfigError):
        return False  # no readable config: nothing says what "finished" means here
    steps = total_steps(cfg.train)
    ckpt = sweep_dir / CHECKPOINT_NAME
    written = ckpt.stat().st_mtime if ckpt.exists() else 0.0
    saved = [sweep_dir / sae_dirname(t) for t in cfg.sae.l0_targets]
    run = saved_run(saved)
    return (run is not None and run.steps == steps
            and all((d / CFG_FILENAME).stat().st_mtime >= written for d in saved))


def _checkpointed_sweeps(root: Path) -> list[Path]:
    return sorted({p.parent for name in CHECKPOINT_FILES for p in root.rglob(name)})


def prune_checkpoints(roots: Iterable[str | Path]) -> Pruned:
    """Remove the checkpoint files of every finished sweep under ``roots`` (run folders),
    each under its training lock; the SAEs, metrics and configs stay."""
    removed, kept, freed = [], [], 0
    for sweep_dir in (d for r in roots if Path(r).is_dir()
                      for d in _checkpointed_sweeps(Path(r))):
        try:
            with artifact_lock(sweep_dir / RUN_LOCK_NAME, f"the training run in {sweep_dir}",
                               wait=False):
                if not sweep_finished_on_disk(sweep_dir):
                    kept.append(sweep_dir)
                    continue
                files = [sweep_dir / n for n in CHECKPOINT_FILES if (sweep_dir / n).exists()]
                freed += sum(f.stat().st_size for f in files)
                for f in files:
                    f.unlink()
                removed.append(sweep_dir)
        except ArtifactLockedError:
            log.info("%s is training: its checkpoints are kept", sweep_dir)
            kept.append(sweep_dir)
    return Pruned(tuple(removed), freed, tuple(kept))
