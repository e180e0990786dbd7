"""Atomic, sha256-verified checkpoints of a training sweep."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from sae_med import runtime
from sae_med.artifacts import (
    atomic_path,
    file_sha256,
    write_json_atomic,
)
from sae_med.layout import (
    CHECKPOINT_NAME,
    CHECKPOINT_RECORD_NAME,
    PREVIOUS_CHECKPOINT_NAME,
)
from sae_med.train.norm import InputNorm
from sae_med.train.records import TrainingError
from sae_med.train.step import SweepMember

log = logging.getLogger(__name__)


CHECKPOINT_FORMAT = 3
"""3: Adam's W_enc state is kept in (d_sae, d_model) layout (:class:`SweepMember`)."""


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through it."""

    def __init__(self, f: Any):
        self.f, self.sha = f, hashlib.sha256()
        self.error: OSError | None = None
        """What the file raised (torch reports a failed write as a bare RuntimeError)."""

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def _checkpoint_record(path: Path) -> dict[str, int]:
    """``{sha256: step}`` of the checkpoints written into ``path``'s folder ({} if none)."""
    rec = path.with_name(CHECKPOINT_RECORD_NAME)
    if not rec.exists():
        return {}
    try:
        return {str(k): int(v) for k, v in json.loads(rec.read_text())["sha256"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("checkpoint record %s is damaged; no checkpoint can be verified", rec)
        return {}


def save_checkpoint(path: Path, key: str, step: int, norm: InputNorm,
                     members: list[SweepMember],
                     source_positions: list[dict[str, int]] | None = None) -> None:
    """Write, read back and verify the new checkpoint before it replaces the current one,
    which is kept as ``checkpoint.prev.pt``. At every instant ``checkpoint.pt`` is complete
    and its sha256 is in ``checkpoint.json``, so a kill never costs more than the steps
    since the last checkpoint."""
    state = {"format": CHECKPOINT_FORMAT, "run_key": key, "step": step,
             "scale": norm.scale, "mean": norm.mean.cpu(),
             "members": [m.state() for m in members], "source": source_positions,
             "rng": {"torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                     else []}}
    record = _checkpoint_record(path)
    prev = path.with_name(PREVIOUS_CHECKPOINT_NAME)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            w = _HashingWriter(f)
            try:
                torch.save(state, w)
            except RuntimeError:
                if w.error is not None:  # e.g. no space left: say so, not torch's enforce
                    raise w.error from None
                raise
        sha = w.sha.hexdigest()
        if file_sha256(tmp) != sha:
            raise TrainingError(f"checkpoint {tmp} reads back differently from what was "
                                f"written (failing disk?); {path} is kept")
        kept = {}
        if path.exists() and (old := file_sha256(path)) in record:
            with atomic_path(prev) as ptmp:  # the current one becomes the previous one
                ptmp.unlink()
                try:
                    os.link(path, ptmp)
                except OSError:  # a file system without hard links
                    shutil.copyfile(path, ptmp)
            kept = {old: record[old]}
        write_json_atomic(path.with_name(CHECKPOINT_RECORD_NAME),
                          {"sha256": {sha: step, **kept}})


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, refused unless its sha256 is one recorded when it was
    written (a mismatch names the previous good checkpoint, if there is one)."""
    record = _checkpoint_record(path)
    if not record:
        log.warning("checkpoint %s has no checksum record (written before checksums); "
                    "loading it unverified", path)
    elif file_sha256(path) not in record:
        prev = path.with_name(PREVIOUS_CHECKPOINT_NAME)
        good = (f"the previous good checkpoint {prev} (step {record[file_sha256(prev)]}) is "
                f"intact: move it onto {path} to resume from there, or delete {path} to "
                f"start over") if prev.exists() and file_sha256(prev) in record else (
                f"no previous good checkpoint is left: delete {path} to start over")
        raise TrainingError(f"checkpoint {path} fails its sha256 check (damaged on disk); "
                            f"{good}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same failure
        raise TrainingError(f"checkpoint {path} is unreadable "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                            f"delete it to start over") from e
    if not isinstance(state, dict):
        raise TrainingError(f"checkpoint {path} holds no training state; delete it to start "
                            f"over")
    return state


def starting_state(out_dir: Path, key: str, device: torch.device, resume: bool,
                    retrain_other_run: bool) -> dict[str, Any] | None:
    """The checkpoint in ``out_dir`` to continue from, or None to start from scratch.

    A checkpoint of another run (config, seed, cache or d_model changed) is refused, or
    with ``retrain_other_run`` trained over (with a warning), never resumed."""
    path = out_dir / CHECKPOINT_NAME
    if not path.exists():
        if resume:
            log.info("no checkpoint in %s: starting from scratch", out_dir)
        return None
    if not resume:
        if runtime.is_main():
            log.warning("overwriting the existing run in %s (pass resume=True to continue "
                        "it)", out_dir)
        return None
    state = read_checkpoint(path, device)
    if retrain_other_run and state.get("run_key") != key:
        log.warning("%s was trained with another config or cache; retraining", out_dir)
        return None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"checkpoint {path} has format {state.get('format')}, this "
                            f"version reads {CHECKPOINT_FORMAT}; delete it to start over")
    if state.get("run_key") != key:
        raise TrainingError(f"checkpoint {path} belongs to a different run (config, seed or "
                            f"d_model changed); delete it or use a new output directory")
    log.info("resuming %s from step %d", out_dir, state["step"])
    return state
