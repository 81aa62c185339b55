"""The objects that travel between the app's operators."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec

__all__ = ["Problem", "QueryResult", "ResultsOperator", "attr", "clear_library_images", "library_image", "library_target", "query_id_of"]


def attr(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` or ``default`` when missing or empty (DICOM attributes are often empty strings)."""
    value = getattr(obj, name, default)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return value


def query_id_of(query: Any, index: int) -> str:
    """A stable, file-name-safe id of a query: its image's SOP Instance UID (else ``query-<n>``)."""
    uid = attr(query, "sop_instance_uid")
    if not uid:
        return f"query-{index + 1:04d}"
    frame = attr(query, "frame_number")
    return re.sub(r"[^0-9A-Za-z.\-]", "_", str(uid)) + (f"-f{frame}" if frame else "")


@dataclass
class Problem:
    """Something in the input or along the way that made the app skip a study, a file or a step."""

    stage: str  # "input", "retrieval", "sr", "pdf", "publish"
    message: str
    path: str | None = None
    study_uid: str | None = None
    query_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class QueryResult:
    """One query (a dermoscopy image of a study + its text) and what the app made of it.

    ``error`` is set when a stage failed for this query; later stages skip it and the results
    writer reports it in ``problems.json``."""

    query_id: str
    query: Any  # monai_cir.dicom.DermoscopyQuery
    hits: list[Any] = field(default_factory=list)  # monai_cir.index.SearchHit, best first
    evidence: Any = None  # monai_cir.evidence.EvidenceSummary of the neighbours (decision support)
    explanations: dict[int, Any] = field(default_factory=dict)  # rank -> monai_cir.explain.Explanation
    notices: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # "sr", "encapsulated_pdf", "pdf" -> file path
    published: dict[str, Any] = field(default_factory=dict)
    timing_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    error_stage: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, stage: str, message: str) -> None:
        self.error, self.error_stage = message, stage

    def problem(self) -> Problem:
        return Problem(
            stage=self.error_stage or "unknown",
            message=self.error or "",
            path=attr(self.query, "source_path"),
            study_uid=attr(self.query, "study_uid"),
            query_id=self.query_id,
        )


LIBRARY_IMAGE_SIDE = 1024  # the library image size the explanations use (ComposedRetrievalOperator._explain)


def library_image(hit: Any, max_side: int = 384) -> np.ndarray | None:
    """The image of a library case (its ``image_path``: a DICOM file of the library or an image
    file), downscaled to ``max_side``; None when the file is not reachable from here (the PDF shows
    a placeholder). Decoded images are kept in a small per-process cache (the explanation and the
    PDF thumbnail of a match read the same file; a service sees the same cases again); the array
    returned is read-only."""
    key = _file_identity(hit)
    # one decode per case at the explanation's size; smaller views (PDF thumbnails) are cut from it, once
    return None if key is None else _library_view(*key, int(max_side))


def _file_identity(hit: Any) -> tuple[str, int, int] | None:
    """``(path, mtime_ns, size)`` of a library case's ``image_path`` (the caches' key: a changed file is
    read again), or None when it has none or the file is not reachable from here."""
    path = getattr(hit.metadata, "image_path", None)
    if not path:
        return None
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return str(path), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=64)
def _library_view(path: str, mtime_ns: int, size: int, max_side: int) -> np.ndarray | None:
    decoded = _decoded_library_image(path, mtime_ns, size, max(max_side, LIBRARY_IMAGE_SIDE))
    if decoded is None or max(decoded.shape[:2]) <= max_side:
        return decoded
    return _thumbnail(decoded, max_side)


def library_target(hit: Any, image_size: int) -> tuple[tuple, Any] | None:
    """``(key, tensor)``: a library case's image preprocessed for the network, (3, S, S) float in
    [0, 1] (what an explanation of the match reads, from the :func:`library_image` the explanation
    uses), and the file's identity ``(path, mtime_ns, size)`` (the key of the targets' map cache);
    None when the file is not reachable from here. Kept in a small per-process cache, as the decoded
    images are."""
    key = _file_identity(hit)
    if key is None:
        return None
    tensor = _library_target(*key, int(image_size))
    return None if tensor is None else (key, tensor)


@functools.lru_cache(maxsize=64)
def _library_target(path: str, mtime_ns: int, size: int, image_size: int) -> Any:
    from monai_cir.retrieval import to_image_tensor

    image = _decoded_library_image(path, mtime_ns, size, LIBRARY_IMAGE_SIDE)
    return None if image is None else to_image_tensor(image, image_size)


def clear_library_images() -> None:
    """Forget the decoded library images, their thumbnails and preprocessed tensors."""
    for cache in (_library_view, _library_target, _decoded_library_image):
        cache.cache_clear()


def _thumbnail(image: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image))
    pil.thumbnail((max_side, max_side))
    out = np.asarray(pil).copy()
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=64)
def _decoded_library_image(path: str, mtime_ns: int, size: int, max_side: int) -> np.ndarray | None:
    from PIL import Image

    from monai_cir.dicom.reader import read_dicom_folder

    scan = read_dicom_folder(path, max_side=max(max_side, 16))  # a DICOM file of the library
    if scan.queries:
        image = scan.queries[0].image
    else:  # an image file (library built from JPEG/PNG + CSV)
        try:
            with Image.open(path) as img:
                image = np.asarray(img.convert("RGB"))
        except OSError:
            return None
    return _thumbnail(image, max_side)


class ResultsOperator(Operator):
    """An operator between the retrieval and the results writer: named input ``results`` and named
    output ``results`` (a ``list[QueryResult]``), each query enriched by :meth:`run`."""

    def __init__(self, fragment: Fragment, *args: Any, **kwargs: Any) -> None:
        self._logger = logging.getLogger(f"{type(self).__module__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")
        spec.output("results")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        results: list[QueryResult] = op_input.receive("results") or []
        self.run(results)
        op_output.emit(results, "results")

    def run(self, results: list[QueryResult]) -> list[QueryResult]:  # the work, without the SDK
        raise NotImplementedError

    def for_each_answered(self, results: list[QueryResult], stage: str, work: Callable[[QueryResult], None], what: str) -> list[QueryResult]:
        """``work(result)`` for every query answered so far, timed as ``stage``; a failure marks that
        query (``what`` says what could not be done) and the others go on."""
        for result in results:
            if not result.ok:
                continue
            start = time.perf_counter()
            try:
                work(result)
            except Exception as err:  # noqa: BLE001 (one bad query must not stop the others)
                result.fail(stage, f"cannot {what}: {type(err).__name__}: {err}")
                self._logger.error("query %s: %s", result.query_id, result.error)
            result.timing_ms[stage] = 1000 * (time.perf_counter() - start)
        return results
