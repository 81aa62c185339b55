"""The case library index: embeddings ``T`` of every library image plus case metadata, searched by
one inner product per query (DESIGN.md section 2).

``CaseIndex.create(dim, fingerprint)`` makes the embedded FAISS index (exact up to ``exact_max``
cases, an approximate inverted file with exact re-ranking beyond); ``backend="milvus"`` puts the
same interface on milvus-lite or a Milvus cluster. ``CaseIndex.load(folder, expected_fingerprint)``
opens a saved index, checking every file's checksum and the model fingerprint.
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
from .faiss_index import FaissCaseIndex

__all__ = [
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
    "read_manifest",
]


def __getattr__(name: str):
    if name == "MilvusCaseIndex":  # pymilvus is optional and slow to import
        from .milvus_index import MilvusCaseIndex

        return MilvusCaseIndex
    raise AttributeError(name)
