"""The objects that travel between the app's operators."""

from __future__ import annotations

import functools
import gc
import hashlib
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_cir.dicom.codes import is_dicom_uid

__all__ = ["Problem", "QueryResult", "ResultsOperator", "StageFailure", "attr", "clear_library_images", "library_image", "library_target", "query_id_of"]


def attr(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` or ``default`` when missing or empty (DICOM attributes are often empty strings)."""
    value = getattr(obj, name, default)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return value


def query_id_of(query: Any, index: int) -> str:
    """A stable id of a query, used as its output folder's name: its image's SOP Instance UID when that is
    a UID (digits and dots), else ``query-<16 hex digits of its SHA-256>`` (the same every run), else
    ``query-<n>`` (no UID at all); ``-f<n>`` added for a frame. Never the UID as received when it is not
    one: ``..`` would write the answer beside the output folder, ``problems.json`` would take the name of
    the run's own file."""
    uid = attr(query, "sop_instance_uid")
    if not uid:
        return f"query-{index + 1:04d}"
    uid = str(uid)
    frame = attr(query, "frame_number")
    name = uid if is_dicom_uid(uid) else f"query-{hashlib.sha256(uid.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"
    return name + (f"-f{frame}" if frame else "")


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
    hits: list[Any] = field(default_factory=list)  # monai_cir.index.SearchHit, in the order shown (``ranking`` says which)
    evidence: Any = None  # monai_cir.evidence.EvidenceSummary of the neighbours (decision support)
    explanations: dict[int, Any] = field(default_factory=dict)  # rank -> monai_cir.explain.Explanation
    # what explaining the matches needs, prepared by the retrieval for its batch (retrieval.PendingExplanations);
    # the reports operator explains from it where it writes the SR and the PDF (a forked worker for a batch)
    pending_explanations: Any = None
    notices: list[str] = field(default_factory=list)
    # how the hits are ordered (monai_cir.prior_ranking.RANKINGS): by similarity, or with the diagnosis prior; None until ranked
    ranking: str | None = None
    # the evidence summary favours another diagnosis than the prior-ordered first case (why, in words; also a notice)
    evidence_disagreement: str | None = None
    # how the query's text counted: {"weight": w of Q = w Q_composed + (1 - w) Q_image, "findings_read": [7-point
    # criteria read in it]}; None for an image-only query
    text_use: dict[str, Any] | None = None
    # what the same image finds without the text (plain similarity, as many cases as shown): {"k", "counts":
    # {diagnosis: n}, "case_ids"}; None for an image-only query
    image_alone: dict[str, Any] | None = None
    # the differential case shown (monai_cir.differential): rank, case_id, diagnosis, similarity_rank, margin, max_margin
    differential: dict[str, Any] | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # "sr", "encapsulated_pdf", "pdf" -> file path
    # a report part that failed while the query stayed answered ("explain", "sr" or "pdf" -> why; problems.json)
    output_errors: dict[str, str] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)
    timing_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    error_stage: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, stage: str, message: str) -> None:
        self.error, self.error_stage = message, stage

    def add_notices(self, *notices: str | None) -> None:
        """Append each notice the reader has not been given yet (None and blank ones skipped): the one place notices
        are added, so results.json, the SR and the PDF list each once, in the order they arose."""
        for notice in notices:
            if notice and notice.strip() and notice not in self.notices:
                self.notices.append(notice)

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
    """``(path, mtime_ns, size)`` of a library case's ``image_path`` (the caches' key, and the grid
    maps store's: a changed file is read again), or None when it has none or the file is not
    reachable from here."""
    from monai_cir.grid_store import file_identity

    return file_identity(getattr(hit.metadata, "image_path", None))


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


def library_cache_size() -> int:
    """How many library cases' decoded images and thumbnails this process keeps (least recently used dropped)."""
    return int(_library_view.cache_info().maxsize or 0)


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
    # None (the PDF's placeholder) for a file that cannot be read, with a warning naming it; the
    # lru_cache keeps the None, so the warning comes once per file, not at every match that shows it
    from monai_cir.dicom.reader import read_case_image

    try:  # a DICOM file of the library, or an image file (library built from JPEG/PNG + CSV)
        image = read_case_image(path, max_side=max_side)
    except (ValueError, FileNotFoundError) as err:  # the message names the file and what is wrong with it
        logging.getLogger(__name__).warning(
            "library image not shown (the report has a placeholder): %s. Restore the file or dicomize the case again", err)
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

    def for_each_answered(
        self,
        results: list[QueryResult],
        stage: str,
        work: Callable[[QueryResult], None],
        what: str,
        parallel: bool = False,
        returns: Sequence[str] = ("outputs",),
    ) -> list[QueryResult]:
        """``work(result)`` for every query answered so far, timed as ``stage``; a failure marks that
        query (``what`` says what could not be done; a :class:`StageFailure` names the part that
        failed) and the others go on.

        ``parallel``: ``work`` only writes files and fills the ``returns`` fields of the result (dicts,
        merged, or lists, replaced, of :class:`QueryResult`: the reports pass fills ``outputs``,
        ``output_errors``, ``notices`` and ``timing_ms``; per study, it is
        most of what a batch cannot share). With at least :data:`PARALLEL_MIN_STUDIES` studies and
        more than one CPU, the studies are split over forked worker processes (one per CPU, one torch
        thread each), which see the results as they are here; what comes back is each study's
        ``returns`` fields or its error, and each study's ``stage`` time is its share of the stage's
        wall time. The first time a process runs a stage, its first study runs here, so that what the
        work loads lazily (modules, caches) is loaded once and inherited by the workers instead of
        loaded by each. A worker that dies leaves its studies to this process, one by one."""
        pending = [r for r in results if r.ok]
        if parallel and _worker_processes(len(pending)) > 1:
            if stage not in _STAGES_RUN_HERE:  # the first study here: the workers inherit what it loaded and cached
                _run_here(pending[:1], stage, work, what, self._logger)
                _STAGES_RUN_HERE.add(stage)
                pending = pending[1:]
            workers = _worker_processes(len(pending), minimum=2)
            if workers > 1:
                pending = _run_forked(pending, stage, work, what, self._logger, workers, tuple(returns))
        _run_here(pending, stage, work, what, self._logger)
        return results


class StageFailure(Exception):
    """Raised by a stage's ``work`` that does several things, to say which one failed: the study is
    marked failed in ``stage`` with "cannot ``what``: <the cause>" instead of the stage's own words."""

    def __init__(self, stage: str, what: str, cause: BaseException) -> None:
        super().__init__(f"cannot {what}: {type(cause).__name__}: {cause}")
        self.stage = stage


def _failure(err: Exception, stage: str, what: str) -> tuple[str, str]:
    """(stage, message) of a study's failure in ``work``."""
    if isinstance(err, StageFailure):
        return err.stage, str(err)
    return stage, f"cannot {what}: {type(err).__name__}: {err}"


def _run_here(pending: list[QueryResult], stage: str, work: Callable[[QueryResult], None], what: str, logger: logging.Logger) -> None:
    for result in pending:
        start = time.perf_counter()
        try:
            work(result)
        except Exception as err:  # noqa: BLE001 (one bad query must not stop the others)
            result.fail(*_failure(err, stage, what))
            logger.error("query %s: %s", result.query_id, result.error)
        result.timing_ms[stage] = 1000 * (time.perf_counter() - start)


def _run_forked(
    answered: list[QueryResult], stage: str, work: Callable[[QueryResult], None], what: str, logger: logging.Logger, workers: int, returns: tuple[str, ...]
) -> list[QueryResult]:
    """Run ``work`` over ``answered`` in ``workers`` forked processes; returns the studies left undone.

    A fork copies the state of the math libraries as the other threads left it: after two threads had run
    the encoder's matrix products at once (a thread pool tried for a batch's forwards), a forked worker spun
    forever in MKL's allocator (``mkl_serv_allocate`` / ``mm_account_ptr_by_tid``) unless
    ``MKL_DISABLE_FAST_MM=1`` was set before torch started. So the app runs torch in one thread at a time
    (the operators' thread; the models are loaded in a thread that has ended before) and forks from it."""
    global _FORKED_WORK
    start = time.perf_counter()
    done: set[int] = set()
    _FORK_LOCK.acquire()  # one forked batch at a time: the workers' work is this module's global
    _FORKED_WORK = (work, answered, returns, stage, what)  # the workers read it from the memory they were forked with
    # objects that exist now are left out of the workers' garbage collection: a collection would
    # touch (and so copy) every page of this process, the cost of a fork that does no work
    gc.freeze()
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"), initializer=_one_torch_thread) as pool:
            for i, (fields, error) in enumerate(pool.map(_forked_work, range(len(answered)))):
                result = answered[i]
                for name, value in fields.items():  # a dict merged (the parent may hold entries), anything else replaced
                    if isinstance(value, dict):
                        getattr(result, name).update(value)
                    else:
                        setattr(result, name, value)
                if error is not None:
                    result.fail(*error)
                    logger.error("query %s: %s", result.query_id, result.error)
                done.add(i)
    except BrokenProcessPool as err:
        logger.warning("a %s worker process died (%s): the %d studies left run in this process", stage, err, len(answered) - len(done))
    finally:
        _FORKED_WORK = None
        gc.unfreeze()
        _FORK_LOCK.release()
    share = 1000 * (time.perf_counter() - start) / max(1, len(done))
    for i in done:
        answered[i].timing_ms[stage] = share
    return [r for i, r in enumerate(answered) if i not in done]


# at least this many studies before a parallel stage forks workers (fewer: forking costs more than it saves)
PARALLEL_MIN_STUDIES = 4
_FORKED_WORK: tuple[Callable[[QueryResult], None], list[QueryResult], tuple[str, ...], str, str] | None = None
_FORK_LOCK = threading.Lock()
_STAGES_RUN_HERE: set[str] = set()  # parallel stages this process has run once itself (warm for its workers)


def _worker_processes(studies: int, minimum: int | None = None) -> int:
    """Worker processes for ``studies`` studies of per-study work: one per CPU this process may
    use, none below ``minimum`` (default :data:`PARALLEL_MIN_STUDIES`) studies or where ``fork`` is
    not available."""
    if studies < (PARALLEL_MIN_STUDIES if minimum is None else minimum) or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, studies))


def _one_torch_thread() -> None:
    """In a worker: one torch thread (the workers are the parallelism; an OpenMP pool is not
    carried over a fork, and one thread never starts one)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _forked_work(i: int) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """In a worker: ``work(results[i])`` -> (its ``returns`` fields, None), or (those fields, (stage, message)) when it failed."""
    assert _FORKED_WORK is not None, "forked without work"
    work, answered, returns, stage, what = _FORKED_WORK
    result = answered[i]
    error = None
    try:
        work(result)
    except Exception as err:  # noqa: BLE001 (reported for that study by the parent)
        error = _failure(err, stage, what)
    # the fields whether or not the work failed: what it recorded before failing (a report part's error) is kept
    return {name: _copied(getattr(result, name)) for name in returns}, error


def _copied(value: Any) -> Any:
    """A dict or list field as a plain copy for the parent; any other value as it is."""
    return dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value
