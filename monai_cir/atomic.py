"""Files written whole or not at all: the one way monai-cir replaces a file that others may read.

A writer fills a temporary file beside the target (same folder, so same file system) and renames it over the
target in one step: a reader, another process, or a run killed mid-write sees the old file or the new one,
never half of one. Used for checkpoints, feature caches, evaluation results, and the DICOM node's received
instances and study status. (Whole folders, the case index and the grid store, are swapped by their own
modules: a folder cannot be renamed over a non-empty one.)

:func:`sha256_file` is the one file checksum: what a manifest records of the files it names (the case index,
the encoder artifact, the demo library's stamp), so that a file damaged after it was written is caught on read.

:func:`exclusive_lock` is the one way two monai-cir processes take turns at a read-modify-write of one file or folder
(an evaluation results file its fold runs merge into, an index that ``add`` and ``remove`` change).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "check_writable_folder", "exclusive_lock", "sha256_file", "torch_save_atomic"]

_HELD_LOCKS: dict[str, int] = {}  # lock file -> depth, this process's (a writer that locks inside a locked block does not wait for itself)


@contextlib.contextmanager
def exclusive_lock(target: str | Path, what: str = "it") -> Iterator[None]:
    """Hold the lock of ``target`` (a file or folder, by its resolved path) for the block: another process that asks for it
    waits (a log line says for what), so two read-modify-writes of one target never interleave. The lock file lives in
    the temporary folder (the target's folder stays as it is), so it serialises the processes of one machine. Re-entrant
    within a process."""
    import fcntl
    import logging
    import tempfile

    key = hashlib.sha256(str(Path(target).resolve()).encode()).hexdigest()[:16]
    lock_path = str(Path(tempfile.gettempdir()) / f"monai-cir-{key}.lock")
    if _HELD_LOCKS.get(lock_path):
        _HELD_LOCKS[lock_path] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[lock_path] -= 1
        return
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.getLogger(__name__).warning("another monai-cir process is writing %s (%s): waiting for it to finish", target, what)
            fcntl.flock(lock, fcntl.LOCK_EX)
        _HELD_LOCKS[lock_path] = 1
        try:
            yield
        finally:
            _HELD_LOCKS.pop(lock_path, None)
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` (not yet created); when the block ends without an error it
    replaces ``path`` (one rename), otherwise it is removed and ``path`` is left as it was."""
    path = Path(path)
    # a unique name, created by the writer itself (so with the usual permissions, not mkstemp's 0600)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a folder's contents to the disk (a folder: the names in it, e.g. a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` whole or not at all. ``durable``: on the disk when this returns (the file flushed
    before its rename, the folder after), as a receiver must be before it acknowledges what it was sent: without it a
    power loss can leave an empty file behind an acknowledgment."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if durable:
            fsync_path(tmp)
    if durable:
        fsync_path(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all."""
    atomic_write_bytes(path, text.encode("utf-8"))


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` whole or not at all."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256_file(path: str | Path, chunk: int = 1 << 23) -> str:
    """The SHA-256 of a file's bytes, as lowercase hex, read ``chunk`` bytes at a time (checkpoints and
    TorchScript files are hundreds of MB: never read whole).

    Not ``hashlib.file_digest``: it is Python 3.11+, and monai-cir supports 3.10."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_writable_folder(folder: str | Path, option: str = "--out") -> None:
    """Raise ValueError, in one line naming ``option``, when files cannot be written into ``folder`` (or into the folder
    it would be created in): a file where a folder should be, a folder the system refuses. Run before long work, so
    that the work is not lost at its end."""
    import tempfile

    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{option} {folder}: {existing} is a file, not a folder; choose a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ValueError(f"{option} {folder}: cannot write in {existing} ({err.strerror or err}); choose a folder you can write to") from err
