"""The embedded case index: FAISS, exact up to ``exact_max`` cases, approximate beyond.

Storage: every vector lives once in an ``IndexFlatIP`` (row order = case order); that is the exact
search and the ground truth. Beyond ``exact_max`` cases an approximate index is built over the same
rows: an uncentred PCA projection to ``ann_dim`` (a rotation that keeps inner products, unlike a
centred PCA), an inverted file with 8-bit scalar quantisation (``IVF{nlist},SQ8``, inner product),
``nprobe`` lists probed per query, and the ``rerank_factor * k`` candidates re-scored exactly against
the stored vectors. Measured in ``bench/results/search_scale.json`` (choice and figures in
``docs/index.md``).

Filters are a bitmap over rows passed to FAISS as an ``IDSelectorBitmap`` in both searches; when
the probed lists hold fewer than ``k`` matching cases, that query falls back to exact search over
the matching subset, so a filtered search is never short of hits that exist. A filtered search
probes ``FILTERED_PROBE_FACTOR * nprobe / share`` lists (``share``: the matching cases' fraction of
the library; at most every list): the closest cases of one diagnosis may lie in lists far from the
query (a nevus-like query whose prior favours melanoma, say). With ``nprobe`` lists the diagnosis
prior's per-diagnosis searches found 81% of the exact top 10 at a million cases (99% unfiltered);
with ``nprobe / share`` 92%, with 4x that 99% at 2.5 ms a query (``bench/search_scale.py``'s vectors).

A single query runs FAISS on one thread: its work is small, and OpenMP's synchronisation across
threads cost 10x in latency on a busy 2-core machine (measured: exact search over 1e4 cases, p50
24 ms on 2 threads vs 1.9 ms on 1). Batches of queries use every thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .base import (
    REBUILD_HINT,
    CaseIndex,
    CaseMetadata,
    Filters,
    IndexIntegrityError,
    SearchHit,
    normalize_filters,
    verify_files,
    write_generation,
)

__all__ = ["FaissCaseIndex"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _faiss_threads(n: int | None):
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def uncentred_pca(sample: np.ndarray, out_dim: int) -> np.ndarray:
    """(out_dim, d) orthonormal rows: the top eigenvectors of the second moment ``X^T X / n``.

    No mean is subtracted: ``<P q, P t>`` then approximates ``<q, t>`` (a centred PCA would add
    per-target offsets ``<m, t>`` and change the ranking of an inner-product search)."""
    x = sample.astype(np.float64)
    moment = x.T @ x / max(1, x.shape[0])
    _, vecs = np.linalg.eigh(moment)
    return np.ascontiguousarray(vecs[:, ::-1][:, :out_dim].T.astype(np.float32))


class FaissCaseIndex(CaseIndex):
    """Embedded FAISS index (the default backend).

    Args:
        dim: embedding dimension (``net.embedding_dim``).
        fingerprint: ``net.fingerprint()`` of the model that embeds the cases.
        exact_max: up to this many cases every search is exact; beyond, the approximate index.
        ann_dim: dimension of the projection before the inverted file (no projection if ``dim <= ann_dim``).
        nlist: inverted lists; ``None`` = ``4 sqrt(N)`` rounded to a power of two.
        nprobe: lists visited per query.
        rerank_factor: candidates per wanted hit re-scored exactly.
    """

    backend = "faiss"

    def __init__(
        self,
        dim: int,
        fingerprint: str,
        exact_max: int = 50_000,
        ann_dim: int = 256,
        nlist: int | None = None,
        nprobe: int = 32,
        rerank_factor: int = 10,
    ) -> None:
        super().__init__(dim, fingerprint)
        if exact_max < 0 or ann_dim < 1 or nprobe < 1 or rerank_factor < 1 or (nlist is not None and nlist < 1):
            raise ValueError("exact_max must be >= 0 and ann_dim, nlist, nprobe, rerank_factor >= 1")
        self.exact_max = int(exact_max)
        self.ann_dim = int(ann_dim)
        self.nlist = nlist
        self.nprobe = int(nprobe)
        self.rerank_factor = int(rerank_factor)
        self._store = faiss.IndexFlatIP(self.dim)
        self._meta: list[CaseMetadata] = []
        self._rows: dict[str, int] = {}
        self._columns: dict[str, tuple[np.ndarray, dict[Any, int]]] = {}
        self._bitmaps: dict[Any, tuple[int, np.ndarray]] = {}
        self._ann: faiss.Index | None = None
        self._ann_trained_on = 0
        self._ann_stale = False  # rows were removed: the inverted lists must be refilled

    # ------------------------------------------------------------------ basics
    def options(self) -> dict[str, Any]:
        return {"exact_max": self.exact_max, "ann_dim": self.ann_dim, "nlist": self.nlist, "nprobe": self.nprobe, "rerank_factor": self.rerank_factor}

    def __len__(self) -> int:
        return len(self._meta)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._rows

    def case_ids(self) -> list[str]:
        return [m.case_id for m in self._meta]

    def get(self, case_id: str) -> CaseMetadata:
        return self._meta[self._rows[case_id]]

    def vectors(self) -> np.ndarray:
        """The stored vectors (N, dim), a read-only view valid until the next add or remove."""
        n = self._store.ntotal
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        view = faiss.rev_swig_ptr(self._store.get_xb(), n * self.dim).reshape(n, self.dim)
        view.flags.writeable = False
        return view

    @property
    def uses_ann(self) -> bool:
        """Whether searches go through the approximate index (more than ``exact_max`` cases)."""
        return len(self) > self.exact_max

    # ------------------------------------------------------------------ add / remove
    def add(self, embeddings: Any, metadata: Sequence[CaseMetadata], update: bool = False) -> None:
        vectors, metadata = self._check_new(embeddings, metadata)
        existing = [m.case_id for m in metadata if m.case_id in self._rows]
        if existing and not update:
            raise self._duplicate_error(existing)
        if existing:
            self.remove(existing)
        self._store.add(vectors)
        start = len(self._meta)
        self._meta.extend(metadata)
        self._rows.update((m.case_id, start + i) for i, m in enumerate(metadata))
        self._metadata_changed()
        if self._ann is not None and not self._ann_stale:
            self._ann.add(vectors)

    def remove(self, case_ids: Iterable[str]) -> int:
        case_ids = list(dict.fromkeys(case_ids))
        missing = [c for c in case_ids if c not in self._rows]
        if missing:
            raise KeyError(f"{len(missing)} case id(s) are not in the index: {missing[:10]}")
        if not case_ids:
            return 0
        rows = np.array(sorted(self._rows[c] for c in case_ids), dtype=np.int64)
        removed = self._store.remove_ids(faiss.IDSelectorBatch(rows))
        if removed != len(rows):
            raise RuntimeError(f"FAISS removed {removed} rows instead of {len(rows)}")
        drop = set(rows.tolist())
        self._meta = [m for i, m in enumerate(self._meta) if i not in drop]
        self._rows = {m.case_id: i for i, m in enumerate(self._meta)}
        self._metadata_changed()
        if self._ann is not None:
            self._ann_stale = True  # row numbers shifted; refilled (not retrained) before the next search
        return len(rows)

    # ------------------------------------------------------------------ approximate index
    def _auto_nlist(self, n: int) -> int:
        if self.nlist is not None:
            return int(self.nlist)
        return int(min(65536, max(64, 2 ** round(math.log2(4 * math.sqrt(max(n, 1)))))))

    def build_ann(self, seed: int = 0) -> float:
        """(Re)train the approximate index on the stored vectors and fill it; returns seconds taken.

        Called automatically by :meth:`search` and :meth:`save` when the index holds more than
        ``exact_max`` cases and the approximate index is missing or was trained on 4x fewer cases."""
        t0 = time.perf_counter()
        x = self.vectors()
        n = x.shape[0]
        if n == 0:
            raise ValueError("cannot build an approximate index over an empty index")
        nlist = min(self._auto_nlist(n), max(1, n // 39))
        rng = np.random.default_rng(seed)
        train = x[np.sort(rng.choice(n, size=min(n, max(40 * nlist, 20_000)), replace=False))]
        if self.dim > self.ann_dim:
            projection = uncentred_pca(train[: min(len(train), 50_000)], self.ann_dim)
            transform = faiss.LinearTransform(self.dim, self.ann_dim, False)
            faiss.copy_array_to_vector(projection.ravel(), transform.A)
            transform.is_trained = True
            sub_dim = self.ann_dim
        else:
            transform, sub_dim = None, self.dim
        quantizer = faiss.IndexFlatIP(sub_dim)
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, sub_dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = 10
        ivf.cp.seed = seed
        ivf.own_fields = True
        quantizer.this.disown()
        ann: faiss.Index = ivf
        if transform is not None:
            ann = faiss.IndexPreTransform(transform, ivf)
        logger.info("training the approximate index (%s cases, PCA %s, IVF%s,SQ8) ...", n, sub_dim, nlist)
        ann.train(train)
        for start in range(0, n, 100_000):
            ann.add(np.ascontiguousarray(x[start : start + 100_000]))
        self._ann, self._ann_trained_on, self._ann_stale = ann, n, False
        return time.perf_counter() - t0

    def _refill_ann(self) -> None:
        assert self._ann is not None
        self._ann.reset()
        x = self.vectors()
        for start in range(0, x.shape[0], 100_000):
            self._ann.add(np.ascontiguousarray(x[start : start + 100_000]))
        self._ann_stale = False

    def _ensure_ann(self) -> None:
        if not self.uses_ann:
            return
        if self._ann is None or len(self) > 4 * self._ann_trained_on:
            self.build_ann()
        elif self._ann_stale:
            self._refill_ann()

    def _ann_params(self, selector: Any, nprobe: int) -> Any:
        ivf_params = faiss.SearchParametersIVF(nprobe=nprobe)
        if selector is not None:
            ivf_params.sel = selector
        if isinstance(self._ann, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform()
            params.index_params = ivf_params
            params._keep = ivf_params  # the SWIG object does not own its sub-parameters
            return params
        return ivf_params

    # ------------------------------------------------------------------ filters
    def _metadata_changed(self) -> None:
        self._columns.clear()
        self._bitmaps.clear()

    def info(self) -> dict[str, Any]:
        """As :meth:`CaseIndex.info`, counted from the cached metadata columns: :func:`monai_cir.retrieval.answer`
        and ``monai-cir search`` read the library's diagnoses for each query, and a pass over a million cases'
        metadata costs about a second."""
        counts: dict[str, dict[str, int]] = {}
        for key in ("diagnosis", "site", "collection"):
            codes, vocab = self._column(key)
            per_code = np.bincount(codes, minlength=len(vocab))
            count = counts[key] = {}
            for value, code in vocab.items():
                count[str(value)] = count.get(str(value), 0) + int(per_code[code])
        return {"backend": self.backend, "cases": len(self), "dim": self.dim, "fingerprint": self.fingerprint, "search": self.search_mode(), **counts}

    def search_mode(self) -> str:
        """How a search runs, in words: exact (every case scored) up to ``exact_max`` cases, approximate beyond (the
        switch happens by itself: an integrator is told here, and by ``monai-cir index info``)."""
        if not self.uses_ann:
            return f"exact: every case is scored (up to {self.exact_max} cases; approximate beyond)"
        if self._ann is None:
            return f"approximate (more than {self.exact_max} cases): the index is trained at the next search or save"
        lists = faiss.extract_index_ivf(self._ann).nlist
        return (f"approximate (more than {self.exact_max} cases): IVF{lists},SQ8 trained on {self._ann_trained_on} cases (retrained past "
                f"{4 * self._ann_trained_on}), {min(self.nprobe, lists)} of its lists probed, the best {self.rerank_factor} x k candidates re-scored exactly")

    def diagnosis_counts(self, filters: Filters | None = None) -> dict[str, int]:
        """As :meth:`CaseIndex.diagnosis_counts`, from the cached metadata columns."""
        codes, vocab = self._column("diagnosis")
        mask = self.filter_mask(filters)
        per_code = np.bincount(codes if mask is None else codes[mask], minlength=len(vocab))
        counts: dict[str, int] = {}
        for value, code in vocab.items():
            if per_code[code]:
                counts[str(value)] = counts.get(str(value), 0) + int(per_code[code])
        return counts

    def _column(self, key: str) -> tuple[np.ndarray, dict[Any, int]]:
        if key not in self._columns:
            vocab: dict[Any, int] = {}
            codes = np.fromiter((vocab.setdefault(_hashable(m.value(key)), len(vocab)) for m in self._meta), dtype=np.int64, count=len(self._meta))
            self._columns[key] = (codes, vocab)
        return self._columns[key]

    def filter_mask(self, filters: Filters | None) -> np.ndarray | None:
        """Boolean mask over rows of the cases matching every filter (None = no filter)."""
        normalized = normalize_filters(filters)
        if not normalized:
            return None
        mask = np.ones(len(self), dtype=bool)
        for key, values in normalized.items():
            codes, vocab = self._column(key)
            wanted = [vocab[v] for v in map(_hashable, values) if v in vocab]
            mask &= np.isin(codes, wanted)
        return mask

    # ------------------------------------------------------------------ search
    def _filter_bitmap(self, filters: Filters | None) -> tuple[int, np.ndarray | None]:
        """(cases matching ``filters``, their rows as FAISS's little-endian bitmap of ``len(self)`` bits; None = no filter), kept
        until the next add or remove: a query the diagnosis prior orders searches once per diagnosis, and
        building a mask costs about 10 ms a million cases."""
        normalized = normalize_filters(filters)
        if not normalized:
            return len(self), None
        key = tuple(sorted((name, frozenset(map(_hashable, values))) for name, values in normalized.items()))
        if key not in self._bitmaps:
            if len(self._bitmaps) >= _BITMAPS_KEPT:
                self._bitmaps.clear()
            mask = self.filter_mask(filters)
            self._bitmaps[key] = (int(mask.sum()), np.packbits(mask, bitorder="little"))
        return self._bitmaps[key]

    def search(self, queries: Any, k: int = 10, filters: Filters | None = None, fingerprint: str | None = None) -> list[list[SearchHit]]:
        q = self._check_query(queries, k, fingerprint)
        available, bitmap = self._filter_bitmap(filters)
        kk = min(int(k), available)
        if kk == 0:
            return [[] for _ in range(q.shape[0])]
        selector = None
        if bitmap is not None:
            selector = faiss.IDSelectorBitmap(len(self), faiss.swig_ptr(bitmap))
        self._ensure_ann()  # (re)builds with every thread, before a single query pins FAISS to one
        with _faiss_threads(1 if q.shape[0] == 1 else None):
            if self.uses_ann:
                nprobe = self.nprobe if bitmap is None else math.ceil(FILTERED_PROBE_FACTOR * self.nprobe * len(self) / max(available, 1))
                scores, rows = self._search_ann(q, kk, selector, nprobe)
                short = np.flatnonzero((rows < 0).any(axis=1))
                if len(short):  # a selective filter left the probed lists short: exact over the subset
                    scores[short], rows[short] = self._search_exact(q[short], kk, selector)
            else:
                scores, rows = self._search_exact(q, kk, selector)
        del bitmap  # held here until the search is done (an add may drop it from the cache): the selector points into it
        return [
            [SearchHit(rank=r + 1, case_id=self._meta[row].case_id, score=float(s), metadata=self._meta[row]) for r, (s, row) in enumerate(zip(srow, irow)) if row >= 0]
            for srow, irow in zip(scores, rows)
        ]

    def _search_exact(self, q: np.ndarray, k: int, selector: Any) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParameters(sel=selector) if selector is not None else None
        return self._store.search(q, k, params=params)

    def _search_ann(self, q: np.ndarray, k: int, selector: Any, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        self._ensure_ann()
        assert self._ann is not None
        n_candidates = min(len(self), k * self.rerank_factor)
        _, candidates = self._ann.search(q, n_candidates, params=self._ann_params(selector, min(nprobe, faiss.extract_index_ivf(self._ann).nlist)))
        x = self.vectors()
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        rows = np.full((q.shape[0], k), -1, dtype=np.int64)
        for b in range(q.shape[0]):
            cand = candidates[b][candidates[b] >= 0]
            if len(cand) < k:
                continue  # left at -1: the caller falls back to exact search for this query
            exact = x[cand] @ q[b]
            top = np.argsort(-exact, kind="stable")[:k]
            scores[b], rows[b] = exact[top], cand[top]
        return scores, rows

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        self._ensure_ann()
        writers: dict[str, tuple[str, Any]] = {
            "vectors": ("faiss", lambda p: faiss.write_index(self._store, str(p))),
            "cases": ("jsonl", lambda p: _write_jsonl(p, self._meta)),
        }
        if self._ann is not None and self.uses_ann:
            writers["ann"] = ("faiss", lambda p: faiss.write_index(self._ann, str(p)))
        manifest = {
            **self._manifest_header(),
            "options": self.options(),
            "ann_trained_on": self._ann_trained_on if "ann" in writers else 0,
        }
        return write_generation(directory, writers, manifest)

    @classmethod
    def _load(cls, directory: Path, manifest: Mapping[str, Any], **overrides: Any) -> FaissCaseIndex:
        paths = verify_files(directory, manifest)
        for role in ("vectors", "cases"):
            if role not in paths:
                raise IndexIntegrityError(f"{directory} manifest names no {role!r} file; {REBUILD_HINT}")
        options = {**manifest.get("options", {}), **overrides}
        index = cls(int(manifest["dim"]), manifest["fingerprint"], **options)
        try:
            store = faiss.read_index(str(paths["vectors"]))
            meta = _read_jsonl(paths["cases"])
            ann = faiss.read_index(str(paths["ann"])) if "ann" in paths else None
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise IndexIntegrityError(f"{directory} could not be read ({err}); {REBUILD_HINT}") from err
        if store.d != index.dim or store.ntotal != len(meta) or store.ntotal != manifest.get("count"):
            raise IndexIntegrityError(f"{directory} is inconsistent: {store.ntotal} vectors of dim {store.d}, {len(meta)} cases, manifest says {manifest.get('count')} of dim {index.dim}; {REBUILD_HINT}")
        if ann is not None and ann.ntotal != store.ntotal:
            raise IndexIntegrityError(f"{directory}: the approximate index holds {ann.ntotal} vectors, the store {store.ntotal}; {REBUILD_HINT}")
        index._store = store
        index._meta = meta
        index._rows = {m.case_id: i for i, m in enumerate(meta)}
        index._ann = ann
        index._ann_trained_on = int(manifest.get("ann_trained_on", 0)) if ann is not None else 0
        return index


# a filtered search probes this many times nprobe / share lists (module docstring: the measurement)
FILTERED_PROBE_FACTOR = 4

# filters whose bitmaps are kept at once (a million cases: 125 kB each)
_BITMAPS_KEPT = 64


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)


def _write_jsonl(path: Path, metadata: Sequence[CaseMetadata]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for m in metadata:
            f.write(json.dumps(m.to_dict(), ensure_ascii=False, default=str))
            f.write("\n")


def _read_jsonl(path: Path) -> list[CaseMetadata]:
    with open(path, encoding="utf-8") as f:
        return [CaseMetadata.from_dict(json.loads(line)) for line in f if line.strip()]
