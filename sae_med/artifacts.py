"""Content hashes, atomic writes and locks shared by every artefact sae-med produces.

An artefact is written to a temporary sibling and renamed into place (the directory is
fsynced after the rename), so a crash never leaves a file that looks complete; its identity
is a hash of everything that determines it. A lock file beside an artefact lets one process
at a time build it; the kernel releases the lock when its holder dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class StorageError(OSError):
    """An artefact folder is full, read-only or not writable (one line saying which)."""

    def __str__(self) -> str:
        return str(self.strerror)


class ArtifactLockedError(RuntimeError):
    """Another process holds the lock of an artefact this one must not wait for."""


def stable_hash(obj: Any, n: int = 16) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), first ``n`` hex digits."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def derived_seed(seed: int, *names: Any) -> int:
    """A 63-bit seed for one named purpose (e.g. ``"bootstrap", corpus``), stable across
    runs and platforms: every sub-seed of the package comes from here."""
    return int(stable_hash([seed, *names]), 16) % (2**63)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Full sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def umask() -> int:
    """This process's umask (read without changing it where /proc allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_like_new(path: str | Path) -> None:
    """Give a file or folder made by ``tempfile`` (0600/0700) the mode the umask gives new
    ones, so a cache shared by a group stays readable by it."""
    mode = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, mode & ~umask())


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def storage_error(err: OSError, path: str | Path) -> OSError:
    """A one-line :class:`StorageError` for a full or read-only folder; ``err`` otherwise."""
    where = Path(path)
    # numpy reports a short write on a full disk without an errno
    short_write = err.errno is None and " requested and " in str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT) or short_write:
        return StorageError(err.errno, f"no space left on {where}; free some space or point "
                                       f"SAE_MED_CACHE / cache_dir / output_dir elsewhere")
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageError(err.errno, f"cannot write to {where} ({os.strerror(err.errno)}); "
                                       f"make it writable or point SAE_MED_CACHE / cache_dir / "
                                       f"output_dir elsewhere")
    return err


@contextlib.contextmanager
def storage_errors(folder: str | Path) -> Iterator[None]:
    """Re-raise an ``OSError`` that :func:`storage_error` recognises (full or read-only
    ``folder``) as its one-line :class:`StorageError`; any other passes unchanged."""
    try:
        yield
    except OSError as err:
        mapped = storage_error(err, folder)
        if mapped is err:
            raise
        raise mapped from err


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync and rename it onto ``path``.

    A full or read-only folder raises :class:`StorageError` naming it; the temp file is
    removed on any failure."""
    path = Path(path)
    tmp_path: Path | None = None
    try:
        with storage_errors(path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                       dir=path.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            chmod_like_new(tmp_path)
            os.replace(tmp_path, path)
            fsync_dir(path.parent)
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_json_if_changed(path: str | Path, obj: Any) -> None:
    """:func:`write_json_atomic`, unless ``path`` already holds exactly that JSON (a rerun
    then leaves the file, and its modification time, as they were)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    if not (Path(path).is_file() and Path(path).read_text() == text):
        write_text_atomic(path, text)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def artifact_lock(path: str | Path, what: str, wait: bool = True) -> Iterator[None]:
    """Hold the exclusive lock file ``path`` for building ``what``.

    ``wait``: block until the holder finishes (logging that it waits); otherwise raise
    :class:`ArtifactLockedError` at once. The lock is an ``flock`` on an open file, so a
    holder that crashes or is killed releases it; the file itself is left in place."""
    path = Path(path)
    with storage_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise ArtifactLockedError(
                    f"another process is writing {what} (lock {path} is held); wait for it "
                    f"to finish or use another output folder") from None
            log.info("waiting for another process to finish %s (lock %s)", what, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
