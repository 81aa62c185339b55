"""The case library index: embeddings ``T`` of every library image plus case metadata, searched by
one inner product per query (DESIGN.md section 2).

``create_index(dim, fingerprint)`` makes the embedded FAISS index (exact up to ``exact_max`` cases,
an approximate inverted file with exact re-ranking beyond); ``backend="milvus"`` puts the same
interface on milvus-lite or a Milvus cluster. ``load_index(folder, expected_fingerprint)`` opens a
saved index, checking every file's checksum and the model fingerprint. The backends are registered
in :mod:`monai_cir.index.factory` and imported on first use.
"""

from .base import (
    INDEX_FORMAT,
    MANIFEST_NAME,
    CaseIndex,
    CaseMetadata,
    DuplicateCaseError,
    FingerprintMismatchError,
    IndexIntegrityError,
    SearchHit,
    read_manifest,
)
from .factory import BACKENDS, create_index, load_index, register_backend

__all__ = [
    "BACKENDS",
    "INDEX_FORMAT",
    "MANIFEST_NAME",
    "CaseIndex",
    "CaseMetadata",
    "DuplicateCaseError",
    "FaissCaseIndex",
    "FingerprintMismatchError",
    "IndexIntegrityError",
    "MilvusCaseIndex",
    "SearchHit",
    "create_index",
    "load_index",
    "read_manifest",
    "register_backend",
]

_LAZY = {"FaissCaseIndex": "faiss", "MilvusCaseIndex": "milvus"}


def __getattr__(name: str):
    # the backend classes import faiss / pymilvus: only when asked for
    if name in _LAZY:
        from .factory import backend_class

        return backend_class(_LAZY[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
