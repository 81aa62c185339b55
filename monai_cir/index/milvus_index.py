"""The Milvus backend: the same :class:`~monai_cir.index.CaseIndex` interface on a Milvus collection.

``uri`` is a local file path (``cases.db``: embedded milvus-lite, one process, good to a few million
cases) or a server address (``http://host:19530``: a Milvus cluster when one machine is not enough).
The collection holds ``case_id`` (primary key), ``vector``, the filterable fields ``diagnosis``,
``collection`` and ``site`` as scalars, and the full metadata as JSON. The model fingerprint and
dimension are collection properties, so a collection refuses vectors of another model whoever
opens it. A saved Milvus index folder holds only a manifest naming the URI and collection (the data
live in Milvus, which owns their durability).

Needs ``pymilvus`` (and ``milvus-lite`` for file URIs): ``pip install monai-cir[milvus]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import (
    REBUILD_HINT,
    CaseIndex,
    CaseMetadata,
    Filters,
    FingerprintMismatchError,
    IndexIntegrityError,
    SearchHit,
    normalize_filters,
    write_generation,
)

__all__ = ["MilvusCaseIndex"]

SCALAR_FIELDS = ("diagnosis", "collection", "site")
PROPERTY_KEY = "monai_cir"
MAX_LIMIT = 16384  # Milvus' largest top-k
BATCH = 1000


REMOTE_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")


def _is_remote(uri: str) -> bool:
    """A Milvus server (cluster) rather than a milvus-lite file."""
    return uri.startswith(REMOTE_SCHEMES)


def _client(uri: str, token: str | None) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as err:
        raise ImportError("the Milvus backend needs pymilvus (and milvus-lite for a local file): pip install 'monai-cir[milvus]'") from err
    if not _is_remote(uri):
        path = Path(uri).expanduser().resolve()
        if path.suffix != ".db":
            raise ValueError(f"a local Milvus URI is a milvus-lite file ending in .db, got {uri!r}; a cluster is http://host:19530")
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = str(path)
    return MilvusClient(uri=uri, token=token or "")


def _literal(value: Any) -> str:
    if value is None or isinstance(value, (dict, list)):
        raise ValueError(f"the Milvus backend filters on strings, numbers and booleans, got {value!r}")
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


class MilvusCaseIndex(CaseIndex):
    """Case index on a Milvus collection (created if absent, reopened if its fingerprint matches).

    Args:
        dim / fingerprint: as for :class:`~monai_cir.index.FaissCaseIndex`.
        uri: ``path/to/cases.db`` (milvus-lite) or ``http://host:19530`` (cluster).
        collection: collection name.
        token: cluster credentials (``user:password`` or an API key), if any.
        index_type / index_params: the vector index (``"FLAT"`` = exact; e.g. ``"HNSW"`` with
            ``{"M": 32, "efConstruction": 200}`` on a cluster).
        search_params: per-search parameters (e.g. ``{"ef": 128}`` for HNSW).
        overwrite: drop an existing collection of that name first.
    """

    backend = "milvus"

    def __init__(
        self,
        dim: int,
        fingerprint: str,
        uri: str = "monai_cir_cases.db",
        collection: str = "monai_cir_cases",
        token: str | None = None,
        index_type: str = "FLAT",
        index_params: Mapping[str, Any] | None = None,
        search_params: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        super().__init__(dim, fingerprint)
        self.uri = uri
        self.collection = collection
        self.index_type = index_type
        self.index_params = dict(index_params or {})
        self.search_params = dict(search_params or {})
        self._client = _client(uri, token)
        if overwrite and self._client.has_collection(collection):
            self._client.drop_collection(collection)
        if self._client.has_collection(collection):
            self._check_properties()
            # a collection another process made is "released" (milvus-lite 3, a Milvus server restarted): search, get
            # and query refuse it until it is loaded again
            self._client.load_collection(collection)
        else:
            self._create()

    def search_mode(self) -> str:
        return "exact: every case is scored (Milvus FLAT)" if self.index_type.upper() == "FLAT" else f"approximate: Milvus {self.index_type} {self.index_params or ''}".strip()

    # ------------------------------------------------------------------ collection
    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("case_id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        for name in SCALAR_FIELDS:
            schema.add_field(name, DataType.VARCHAR, max_length=512)
        schema.add_field("meta", DataType.JSON)
        params = self._client.prepare_index_params()
        params.add_index(field_name="vector", index_type=self.index_type, metric_type="IP", params=self.index_params)
        self._client.create_collection(self.collection, schema=schema, index_params=params)
        self._client.alter_collection_properties(self.collection, properties={PROPERTY_KEY: json.dumps({"fingerprint": self.fingerprint, "dim": self.dim})})

    def _check_properties(self) -> None:
        raw = self._client.describe_collection(self.collection).get("properties", {}).get(PROPERTY_KEY)
        if raw is None:
            raise ValueError(f"Milvus collection {self.collection!r} at {self.uri} was not made by monai-cir; choose another collection name or pass overwrite=True")
        props = json.loads(raw)
        if int(props["dim"]) != self.dim:
            raise ValueError(f"Milvus collection {self.collection!r} holds {props['dim']}-d vectors, this index is {self.dim}-d; {REBUILD_HINT} --overwrite")
        if props["fingerprint"] != self.fingerprint:
            raise FingerprintMismatchError(
                f"Milvus collection {self.collection!r} at {self.uri} holds vectors of another model or preprocessing "
                f"(fingerprint {props['fingerprint'][:12]}..., this model {self.fingerprint[:12]}...); {REBUILD_HINT} --backend milvus --overwrite"
            )

    def check_fingerprint(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"Milvus collection {self.collection!r} was built by another model or preprocessing (fingerprint {self.fingerprint[:12]}..., "
                f"model {fingerprint[:12]}...); {REBUILD_HINT} --backend milvus --overwrite"
            )

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self._client.get_collection_stats(self.collection)["row_count"])

    def __contains__(self, case_id: object) -> bool:
        return isinstance(case_id, str) and bool(self._existing([case_id]))

    def _existing(self, case_ids: Sequence[str]) -> list[str]:
        found: list[str] = []
        for start in range(0, len(case_ids), BATCH):
            rows = self._client.get(self.collection, ids=list(case_ids[start : start + BATCH]), output_fields=["case_id"])
            found.extend(r["case_id"] for r in rows)
        return found

    def _iterate(self, fields: list[str]) -> Iterable[dict[str, Any]]:
        iterator = self._client.query_iterator(self.collection, batch_size=BATCH, filter='case_id != ""', output_fields=fields)
        try:
            while batch := iterator.next():
                yield from batch
        finally:
            iterator.close()

    def case_ids(self) -> list[str]:
        return [row["case_id"] for row in self._iterate(["case_id"])]

    def get(self, case_id: str) -> CaseMetadata:
        rows = self._client.get(self.collection, ids=[case_id], output_fields=["meta"])
        if not rows:
            raise KeyError(case_id)
        return CaseMetadata.from_dict(rows[0]["meta"])

    def info(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {key: {} for key in SCALAR_FIELDS}
        n = 0
        for row in self._iterate(list(SCALAR_FIELDS)):
            n += 1
            for key in SCALAR_FIELDS:
                counts[key][row[key]] = counts[key].get(row[key], 0) + 1
        return {"backend": self.backend, "uri": self.uri, "milvus_collection": self.collection, "cases": n, "dim": self.dim, "fingerprint": self.fingerprint, **counts}

    # ------------------------------------------------------------------ add / remove
    def add(self, embeddings: Any, metadata: Sequence[CaseMetadata], update: bool = False) -> None:
        vectors, metadata = self._check_new(embeddings, metadata)
        existing = self._existing([m.case_id for m in metadata])
        if existing and not update:
            raise self._duplicate_error(existing)
        rows = [
            {"case_id": m.case_id, "vector": v.tolist(), **{f: str(getattr(m, f)) for f in SCALAR_FIELDS}, "meta": json.loads(json.dumps(m.to_dict(), default=str))}
            for v, m in zip(vectors, metadata)
        ]
        write = self._client.upsert if existing else self._client.insert
        for start in range(0, len(rows), BATCH):
            write(self.collection, rows[start : start + BATCH])

    def remove(self, case_ids: Iterable[str]) -> int:
        case_ids = list(dict.fromkeys(case_ids))
        existing = set(self._existing(case_ids))
        missing = [c for c in case_ids if c not in existing]
        if missing:
            raise KeyError(f"{len(missing)} case id(s) are not in the index: {missing[:10]}")
        for start in range(0, len(case_ids), BATCH):
            self._client.delete(self.collection, ids=case_ids[start : start + BATCH])
        return len(case_ids)

    # ------------------------------------------------------------------ search
    @staticmethod
    def filter_expression(filters: Filters | None) -> str:
        """Metadata equality filters as a Milvus boolean expression."""
        clauses = []
        for key, values in normalize_filters(filters).items():
            if key in SCALAR_FIELDS:
                clauses.append(f"{key} in [{', '.join(_literal(v) for v in values)}]")
                continue
            # JSON paths take no 'in' (milvus-lite): a disjunction of equalities
            target = f"meta[{json.dumps(key)}]" if key in CaseMetadata.__dataclass_fields__ else f"meta[\"extra\"][{json.dumps(key)}]"
            clauses.append("(" + " or ".join(f"{target} == {_literal(v)}" for v in values) + ")")
        return " and ".join(clauses)

    def search(self, queries: Any, k: int = 10, filters: Filters | None = None, fingerprint: str | None = None) -> list[list[SearchHit]]:
        q = self._check_query(queries, k, fingerprint)
        if k > MAX_LIMIT:
            raise ValueError(f"Milvus returns at most {MAX_LIMIT} hits per query, asked for k={k}")
        results = self._client.search(
            self.collection,
            data=[row.tolist() for row in q],
            limit=int(k),
            filter=self.filter_expression(filters),
            output_fields=["meta"],
            search_params={"metric_type": "IP", "params": self.search_params},
        )
        return [
            [SearchHit(rank=r + 1, case_id=hit["case_id"] if "case_id" in hit else hit["id"], score=float(hit["distance"]), metadata=CaseMetadata.from_dict(hit["entity"]["meta"])) for r, hit in enumerate(hits)]
            for hits in results
        ]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        self._client.flush(self.collection)
        uri = self.uri if _is_remote(self.uri) else str(Path(self.uri).expanduser().resolve())
        manifest = {
            **self._manifest_header(),
            "options": {"uri": uri, "collection": self.collection, "index_type": self.index_type, "index_params": self.index_params, "search_params": self.search_params},
        }
        inside = not _is_remote(uri) and Path(directory).resolve() in Path(uri).parents
        return write_generation(directory, {}, manifest, require_empty=not inside)

    @classmethod
    def _load(cls, directory: Path, manifest: Mapping[str, Any], **overrides: Any) -> MilvusCaseIndex:
        options = {**manifest.get("options", {}), **overrides}
        client = _client(options["uri"], options.get("token"))
        if not client.has_collection(options["collection"]):
            raise IndexIntegrityError(f"{directory} points at Milvus collection {options['collection']!r} at {options['uri']}, which does not exist; {REBUILD_HINT} --backend milvus")
        return cls(int(manifest["dim"]), manifest["fingerprint"], **options)
