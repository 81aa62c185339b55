"""Create and open case indexes by backend name: the one place that knows which backends exist.

A backend is a :class:`~monai_cir.index.base.CaseIndex` subclass with a ``backend`` name and a
``_load(directory, manifest, **options)`` classmethod. It is registered here by import path, so that
``import monai_cir.index`` loads no backend (pymilvus takes seconds to import) and a third backend is
one new module plus one :func:`register_backend` line::

    from monai_cir.index import create_index, load_index

    index = create_index(dim, fingerprint)                          # FAISS, embedded
    index = create_index(dim, fingerprint, backend="milvus", uri="cases.db")
    index = load_index("output/isic-index", expected_fingerprint=net.fingerprint())
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .base import (
    MANIFEST_NAME,
    REBUILD_HINT,
    CaseIndex,
    IndexIntegrityError,
    read_manifest,
)

__all__ = ["BACKENDS", "backend_class", "create_index", "load_index", "register_backend"]

# backend name -> "module:Class", imported on first use
BACKENDS: dict[str, str] = {
    "faiss": "monai_cir.index.faiss_index:FaissCaseIndex",
    "milvus": "monai_cir.index.milvus_index:MilvusCaseIndex",
}


def register_backend(name: str, target: str) -> None:
    """Make ``backend=name`` available; ``target`` is ``"package.module:ClassName"`` (imported lazily)."""
    if not name or ":" not in target:
        raise ValueError(f"register_backend needs a name and a 'module:Class' target, got {name!r}, {target!r}")
    BACKENDS[name] = target


def backend_class(name: str) -> type[CaseIndex]:
    """The :class:`CaseIndex` subclass registered as ``name``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown index backend {name!r}; choose one of {sorted(BACKENDS)}")
    module_name, _, class_name = BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, CaseIndex)):
        raise TypeError(f"index backend {name!r} -> {BACKENDS[name]} is not a CaseIndex subclass")
    return cls


def create_index(dim: int, fingerprint: str, backend: str = "faiss", **options: Any) -> CaseIndex:
    """A new, empty index. ``options`` go to the backend's constructor (e.g. ``exact_max`` for FAISS,
    ``uri`` / ``collection`` for Milvus)."""
    return backend_class(backend)(dim, fingerprint, **options)


# a reader that opens an index while another process saves it may read the old manifest and find its files gone:
# it reads the new manifest and tries again (a save is seconds; more tries than this is a damaged index)
LOAD_ATTEMPTS = 3


def load_index(directory: str | Path, expected_fingerprint: str | None = None, **options: Any) -> CaseIndex:
    """Open a saved index (checksums verified); with ``expected_fingerprint``, refuse one built by another model."""
    for attempt in range(1, LOAD_ATTEMPTS + 1):
        manifest = read_manifest(directory)
        try:
            index = _open(Path(directory), manifest, **options)
            break
        except IndexIntegrityError:
            if attempt < LOAD_ATTEMPTS and _manifest_changed(directory, manifest):
                continue  # saved meanwhile: the files this manifest named were the previous generation
            raise
    if expected_fingerprint is not None:
        index.check_fingerprint(expected_fingerprint)
    return index


def _open(directory: Path, manifest: dict[str, Any], **options: Any) -> CaseIndex:
    backend = manifest.get("backend")
    if backend not in BACKENDS:
        raise IndexIntegrityError(f"{directory}/{MANIFEST_NAME} names an unknown backend {backend!r} (known: {sorted(BACKENDS)}); {REBUILD_HINT}")
    try:
        return backend_class(backend)._load(directory, manifest, **options)
    except (KeyError, TypeError, AttributeError) as err:  # a manifest edited by hand or damaged: a field missing or of another type
        raise IndexIntegrityError(f"{directory}/{MANIFEST_NAME} lacks a field or holds one of the wrong type ({type(err).__name__}: {err}); "
                                  f"restore the folder from a backup or {REBUILD_HINT}") from err


def _manifest_changed(directory: str | Path, manifest: dict[str, Any]) -> bool:
    try:
        return read_manifest(directory) != manifest
    except (OSError, ValueError):
        return True
