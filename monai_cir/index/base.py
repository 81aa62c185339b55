"""What every case index shares: case metadata, search hits, validation, fingerprint checks and the
on-disk manifest with its atomic, checksummed save.

A saved index is a folder. ``manifest.json`` is the commit point: it names the data files of the
current generation (``<role>-<token>.<ext>``) with their size and SHA-256. A save writes the new
generation's files beside the old ones (temp name, fsync, rename), then replaces the manifest with
one atomic rename, then deletes the old generation. A failure at any step before that rename leaves
the previous manifest pointing at the previous, untouched files; a file damaged later is caught on
load by its checksum. The folder may also hold ``grid_maps/`` (:data:`GRID_STORE_DIR`), which is not
part of the index.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import exclusive_lock, fsync_path, sha256_file

__all__ = [
    "INDEX_FORMAT",
    "MANIFEST_NAME",
    "REBUILD_HINT",
    "CaseIndex",
    "CaseMetadata",
    "DuplicateCaseError",
    "FingerprintMismatchError",
    "IndexIntegrityError",
    "SearchHit",
    "filters_in_words",
    "read_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
# a subfolder of an index folder, outside the manifest: the library images' grid maps for the
# explanations (monai_cir.grid_store, a cache keyed by file identity; losing it costs speed only)
GRID_STORE_DIR = "grid_maps"
INDEX_FORMAT = "monai-cir-index/1"
REBUILD_HINT = "rebuild the index with `monai-cir index build`"
_GENERATION_FILE = re.compile(r"[a-z_]+-[0-9a-f]{12}\.[a-z]+")

Filters = Mapping[str, Any]


class IndexIntegrityError(ValueError):
    """A saved index is missing a file, truncated or corrupted (checksum mismatch)."""


class FingerprintMismatchError(ValueError):
    """The index was built by another model or preprocessing than the one querying it."""


class DuplicateCaseError(ValueError):
    """A case id is added twice without ``update=True``."""


class _ReadOnlyDict(dict):
    """``CaseMetadata.extra``: a dict that refuses changes (a filter reads it; an index caches what filters read)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("case metadata is read-only: make a changed copy (dataclasses.replace(meta, extra={...})) and add it with update=True")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:  # pickling (the app's forked workers, copies) rebuilds it whole
        return (type(self), (dict(self),))


@dataclass(frozen=True)
class CaseMetadata:
    """What the index keeps about one library case (returned with every hit).

    ``site`` is the anatomical site in the project's vocabulary ("unknown" where absent); the DICOM
    UIDs are set for cases indexed from DICOM so that a hit can be retrieved from the PACS, and
    ``retrieve_url`` (WADO-RS, the instance's URL) for cases pulled from a DICOMweb service.
    ``confirmation`` says how the diagnosis was established
    (:data:`monai_cir.data.collections.CONFIRMATIONS`; only "histopathology" is biopsy-confirmed).

    Read-only (``extra`` included): an index caches what its filters read (diagnosis, site, ``extra``...), so a
    case changed in place would be filtered by its old values. Change a case with
    ``dataclasses.replace(meta, diagnosis=...)`` and ``index.add([vector], [changed], update=True)``.
    """

    case_id: str
    diagnosis: str
    collection: str
    site: str = "unknown"
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    image_path: str | None = None
    retrieve_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    confirmation: str = "unknown"

    def __post_init__(self) -> None:
        if not isinstance(self.case_id, str) or not self.case_id.strip():
            raise ValueError(f"case_id must be a non-empty string, got {self.case_id!r}")
        normalise = object.__setattr__  # frozen: the normalised values are set once, here
        if self.site is None or not str(self.site).strip():
            normalise(self, "site", "unknown")
        if self.image_path is not None:
            normalise(self, "image_path", str(self.image_path))
        if self.confirmation is None or not str(self.confirmation).strip():
            normalise(self, "confirmation", "unknown")
        normalise(self, "extra", _ReadOnlyDict(self.extra or {}))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseMetadata:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown case metadata fields {unknown}; known fields are {sorted(known)}")
        return cls(**dict(data))

    def value(self, key: str) -> Any:
        """A standard field, else a key of ``extra`` (None where absent): what a filter compares."""
        if key in STANDARD_FIELDS:
            return getattr(self, key)
        return self.extra.get(key)


STANDARD_FIELDS = tuple(f.name for f in dataclasses.fields(CaseMetadata) if f.name != "extra")


@dataclass
class SearchHit:
    """One ranked result: ``rank`` starts at 1, ``score`` is S(q, t) of Eq. 9 (the inner product)."""

    rank: int
    case_id: str
    score: float
    metadata: CaseMetadata

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "case_id": self.case_id, "score": self.score, **{k: v for k, v in self.metadata.to_dict().items() if k != "case_id"}}


def filters_in_words(filters: Filters | None) -> str:
    """A metadata filter as a reader is told it: ``{"site": "trunk"}`` -> ``"site trunk"`` ("" for none)."""
    return " and ".join(f"{key} {value}" for key, value in (filters or {}).items())


def normalize_filters(filters: Filters | None) -> dict[str, tuple[Any, ...]]:
    """``{"site": "trunk", "diagnosis": ["melanoma", "nevus"]}`` -> ``{key: (allowed values...)}``."""
    if not filters:
        return {}
    if not isinstance(filters, Mapping):
        raise ValueError(f"filters must be a mapping of metadata field -> value(s), got {type(filters).__name__}")
    out: dict[str, tuple[Any, ...]] = {}
    for key, value in filters.items():
        if not isinstance(key, str) or not key or key == "extra":
            raise ValueError(f"filter keys must name a metadata field ({', '.join(STANDARD_FIELDS)}) or an extra key, got {key!r}")
        values = tuple(value) if isinstance(value, (list, tuple, set, frozenset)) else (value,)
        if not values:
            raise ValueError(f"filter {key!r} has an empty list of allowed values")
        out[key] = values
    return out


def as_float32_matrix(vectors: Any, dim: int, what: str) -> np.ndarray:
    """Tensor / array (N, dim) or (dim,) -> C-contiguous float32 (N, dim), finite."""
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().to("cpu").float().numpy()
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{what} must have shape (N, {dim}) for this index, got {tuple(np.shape(vectors))}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(array)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a saved index, with a clear error if the folder is not one."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if directory.is_file():
        raise FileNotFoundError(f"{directory} is a file, not an index folder: give the folder `monai-cir index build ... --out DIR` wrote")
    if not directory.is_dir():
        raise FileNotFoundError(f"index folder not found: {directory}; check the path, or build one with `monai-cir index build ... --out {directory}`")
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a monai-cir index (no {MANIFEST_NAME}): give the folder `monai-cir index build ... --out DIR` "
                                "wrote (a new index needs an empty or new folder)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexIntegrityError(f"{path} is corrupted ({err}); restore it from a backup or {REBUILD_HINT}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise IndexIntegrityError(f"{path} is not a {INDEX_FORMAT} manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r}); {REBUILD_HINT}")
    return manifest


def verify_files(directory: Path, manifest: Mapping[str, Any]) -> dict[str, Path]:
    """Check every data file named by the manifest (present, size, SHA-256); returns role -> path."""
    paths: dict[str, Path] = {}
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise IndexIntegrityError(f"{directory / MANIFEST_NAME} names its files as a {type(files).__name__}, not a mapping; {REBUILD_HINT}")
    for role, entry in files.items():
        name = entry.get("name") if isinstance(entry, dict) else None
        # a file of this folder: a name such as "../x" or "/x" would make the index read (and trust) a file elsewhere
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise IndexIntegrityError(f"{directory / MANIFEST_NAME} names {role!r} file {name!r}, which is not a file of the index folder; "
                                      f"restore the folder from a backup or {REBUILD_HINT}")
        path = directory / name
        if not path.is_file():
            raise IndexIntegrityError(f"index file {path} is missing; restore the folder from a backup or {REBUILD_HINT}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise IndexIntegrityError(
                f"index file {path} is truncated or altered: {size} bytes, the manifest records {entry['bytes']} "
                f"(checksum mismatch); restore it from a backup or {REBUILD_HINT}"
            )
        if sha256_file(path) != entry["sha256"]:
            raise IndexIntegrityError(f"index file {path} is corrupted (checksum mismatch); restore it from a backup or {REBUILD_HINT}")
        paths[role] = path
    return paths


def write_generation(
    directory: str | Path, writers: Mapping[str, tuple[str, Callable[[Path], None]]], manifest: dict[str, Any], require_empty: bool = True
) -> Path:
    """Write one generation of an index folder atomically (see the module docstring).

    ``writers``: role -> (file extension, function writing the file at a given path).
    ``manifest``: the fields to record; ``format`` and ``files`` are filled in here.
    ``require_empty``: refuse a non-empty folder that holds no index (False: e.g. a milvus-lite file lives there).
    """
    directory = Path(directory)
    with exclusive_lock(directory, "saving an index"):  # one save at a time: a save's clean-up must not delete another's new files
        return _write_generation(directory, writers, manifest, require_empty)


def _write_generation(directory: Path, writers: Mapping[str, tuple[str, Callable[[Path], None]]], manifest: dict[str, Any], require_empty: bool) -> Path:
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} exists and is not a folder; choose a folder for the index")
    if require_empty and directory.is_dir() and any(p.name != GRID_STORE_DIR for p in directory.iterdir()) and not (directory / MANIFEST_NAME).is_file():
        raise ValueError(f"{directory} is not empty and holds no monai-cir index; choose a new or empty folder")
    directory.mkdir(parents=True, exist_ok=True)
    # what a killed save left (a whole generation's files, named by no manifest) goes first: under the lock no other
    # save is writing, and left there it took the room the new generation needs (a disk that held two copies, not three)
    try:
        current = read_manifest(directory) if (directory / MANIFEST_NAME).is_file() else {}
    except Exception:  # noqa: BLE001 (a damaged manifest: nothing is known to be unused; the save replaces it)
        current = None
    if current is not None:
        _remove_unnamed(directory, {e["name"] for e in current.get("files", {}).values()} | {MANIFEST_NAME}, writers)
        _check_free_space(directory, current)
    token = uuid.uuid4().hex[:12]
    written: list[Path] = []
    files: dict[str, dict[str, Any]] = {}
    manifest_tmp = directory / f".{MANIFEST_NAME}.{token}.tmp"
    try:
        for role, (ext, writer) in writers.items():
            name = f"{role}-{token}.{ext}"
            tmp = directory / f".{name}.tmp"
            written.append(tmp)
            try:
                writer(tmp)
            except RuntimeError as err:  # FAISS reports a failed write (a full disk) as RuntimeError with its C++ trace
                detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
                raise OSError(f"could not write the index's {role} file in {directory}: {detail}") from err
            fsync_path(tmp)
            files[role] = {"name": name, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
            os.replace(tmp, directory / name)
            written.append(directory / name)
        fsync_path(directory)
        record = {"format": INDEX_FORMAT, **manifest, "files": files}
        written.append(manifest_tmp)
        with open(manifest_tmp, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(manifest_tmp, directory / MANIFEST_NAME)  # the commit point
        fsync_path(directory)
    except BaseException:
        for path in written:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        raise
    # the new generation is committed: drop earlier generations and stale temp files
    _remove_unnamed(directory, {entry["name"] for entry in files.values()} | {MANIFEST_NAME}, writers)
    return directory


def _remove_unnamed(directory: Path, keep: set[str], writers: Mapping[str, Any]) -> None:
    """Remove the generation files (``<role>-<12 hex>.<ext>``) and temporary files of the folder that ``keep`` does not
    name: earlier generations, and what a save killed midway left."""
    for path in directory.iterdir():
        stale_tmp = path.name.startswith(".") and path.name.endswith(".tmp")
        # any generation's data file (<role>-<12 hex>.<ext>), a role this save did not write included: an approximate
        # index's file stays behind otherwise when the library shrinks to exact search
        old_generation = any(path.name.startswith(f"{role}-") for role in writers) or _GENERATION_FILE.fullmatch(path.name) is not None
        if path.name not in keep and (stale_tmp or old_generation):
            try:
                path.unlink()
            except OSError as err:
                logger.warning("could not remove old index file %s: %s", path, err)


def verify_saved(directory: str | Path) -> None:
    """Check the index just saved in ``directory`` (its manifest, and every file it names: present, size, SHA-256)
    without loading it: a second copy in memory beside the one saved doubled ``index add`` / ``remove``'s peak."""
    directory = Path(directory)
    verify_files(directory, read_manifest(directory))


def _check_free_space(directory: Path, current: Mapping[str, Any]) -> None:
    """Refuse, in one line, a save that cannot fit: it writes a whole new generation beside the current one (which
    readers may be using) before it replaces it, so it needs about the current files' size free."""
    import shutil

    needed = sum(int(entry.get("bytes", 0)) for entry in current.get("files", {}).values())
    free = shutil.disk_usage(directory).free
    if needed and free < needed:
        raise OSError(f"not enough free space to save the index in {directory}: a save writes a new copy ({needed / 1e9:.2f} GB) beside "
                      f"the current one before replacing it, and {free / 1e9:.2f} GB are free; free space, or move the index")


class CaseIndex(ABC):
    """A searchable library of case embeddings ``T`` (DESIGN.md section 2) with their metadata.

    Create one with :func:`monai_cir.index.create_index` (``backend="faiss"``, the embedded default,
    or ``"milvus"``) and open a saved one with :func:`monai_cir.index.load_index`; a backend
    subclass also implements ``_load(directory, manifest, **options)``. Scores are inner products, i.e. S(q, t) of Eq. 9 for the
    network whose :meth:`~monai_cir.networks.ComposedRetrievalNet.fingerprint` the index records.
    """

    backend: str = ""

    def __init__(self, dim: int, fingerprint: str) -> None:
        if int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError("fingerprint must be the non-empty string of net.fingerprint() of the model that embeds the cases")
        self.dim = int(dim)
        self.fingerprint = fingerprint

    # ------------------------------------------------------------------ checks
    def check_fingerprint(self, fingerprint: str) -> None:
        """Refuse a model other than the one that embedded the library."""
        if fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"this index was built by another model or preprocessing (index fingerprint {self.fingerprint[:12]}..., "
                f"model fingerprint {fingerprint[:12]}...): its vectors are not comparable with this model's queries; "
                f"search with the model the index was built with (--model <its checkpoint>), or {REBUILD_HINT} --model <the checkpoint you search with>"
            )

    def _check_new(self, embeddings: Any, metadata: Sequence[CaseMetadata]) -> tuple[np.ndarray, list[CaseMetadata]]:
        vectors = as_float32_matrix(embeddings, self.dim, "embeddings")
        metadata = list(metadata)
        if len(metadata) != vectors.shape[0]:
            raise ValueError(f"got {vectors.shape[0]} embeddings but {len(metadata)} metadata records: give one per case")
        for i, m in enumerate(metadata):
            if not isinstance(m, CaseMetadata):
                raise ValueError(f"metadata[{i}] is {type(m).__name__}, expected CaseMetadata")
        ids = [m.case_id for m in metadata]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
            raise DuplicateCaseError(f"case ids repeat within one add: {dup[:10]}; each case must appear once")
        return vectors, metadata

    @staticmethod
    def _duplicate_error(existing: Iterable[str]) -> DuplicateCaseError:
        existing = sorted(existing)
        return DuplicateCaseError(
            f"{len(existing)} case id(s) are already in the index ({existing[:10]}); pass update=True to replace them, "
            "or remove them first"
        )

    # ------------------------------------------------------------------ the interface
    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __contains__(self, case_id: object) -> bool: ...

    @abstractmethod
    def case_ids(self) -> list[str]:
        """All case ids, in index order."""

    @abstractmethod
    def get(self, case_id: str) -> CaseMetadata:
        """The metadata of one case (KeyError if absent)."""

    @abstractmethod
    def add(self, embeddings: Any, metadata: Sequence[CaseMetadata], update: bool = False) -> None:
        """Add cases: embeddings (N, dim) and one :class:`CaseMetadata` each.

        A case id already present is a :class:`DuplicateCaseError` unless ``update=True``, which
        replaces its vector and metadata."""

    @abstractmethod
    def remove(self, case_ids: Iterable[str]) -> int:
        """Remove cases by id (KeyError naming the ids that are absent); returns how many were removed."""

    @abstractmethod
    def search(self, queries: Any, k: int = 10, filters: Filters | None = None, fingerprint: str | None = None) -> list[list[SearchHit]]:
        """Top-``k`` cases per query (queries (B, dim) or (dim,)), best first.

        ``filters``: metadata equality, e.g. ``{"site": "trunk"}`` or ``{"diagnosis": ["melanoma", "nevus"]}``
        (a list means any of); every filter must hold. ``fingerprint``: the querying model's, checked
        with :meth:`check_fingerprint`. Fewer than ``k`` hits come back only when fewer cases match."""

    @abstractmethod
    def save(self, directory: str | Path) -> Path:
        """Persist the index (atomically, see the module docstring)."""

    @classmethod
    @abstractmethod
    def _load(cls, directory: Path, manifest: Mapping[str, Any], **options: Any) -> CaseIndex:
        """Open the index saved in ``directory`` whose manifest is ``manifest`` (``options`` override
        the saved ones); called by :func:`monai_cir.index.load_index`."""

    def _manifest_header(self) -> dict[str, Any]:
        """The manifest fields every backend writes (what :meth:`load` and ``index info`` read)."""
        return {"backend": self.backend, "dim": self.dim, "fingerprint": self.fingerprint, "count": len(self), "metric": "inner_product"}

    def info(self) -> dict[str, Any]:
        """Summary for ``monai-cir index info``."""
        counts: dict[str, dict[str, int]] = {"diagnosis": {}, "site": {}, "collection": {}}
        for case_id in self.case_ids():
            m = self.get(case_id)
            for key, count in counts.items():
                value = str(m.value(key))
                count[value] = count.get(value, 0) + 1
        return {"backend": self.backend, "cases": len(self), "dim": self.dim, "fingerprint": self.fingerprint, "search": self.search_mode(), **counts}

    def diagnosis_counts(self, filters: Filters | None = None) -> dict[str, int]:
        """Cases per diagnosis among those matching ``filters`` (all cases without): the base rate of a vote over a
        search restricted by them (a site condition), which the whole library's make-up is not."""
        normalized = normalize_filters(filters)
        counts: dict[str, int] = {}
        for case_id in self.case_ids():
            m = self.get(case_id)
            if all(m.value(key) in values for key, values in normalized.items()):
                counts[str(m.diagnosis)] = counts.get(str(m.diagnosis), 0) + 1
        return counts

    def search_mode(self) -> str:
        """How a search runs, in words (``index info``); a backend that switches between exact and approximate search
        by itself says which it does now."""
        return f"as the {self.backend} backend searches"

    def _check_query(self, queries: Any, k: int, fingerprint: str | None) -> np.ndarray:
        if fingerprint is not None:
            self.check_fingerprint(fingerprint)
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return as_float32_matrix(queries, self.dim, "queries")
