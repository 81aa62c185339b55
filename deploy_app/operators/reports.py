"""Writes what a clinician reads of each answered query, in one pass per query: the explanations of
its matches, the similar-cases SR (:mod:`.sr_writer`) and the PDF + Encapsulated PDF report
(:mod:`.pdf_writer`, optional).

One pass, because for a batch the pass runs in forked worker processes, one per CPU
(:meth:`~.common.ResultsOperator.for_each_answered`): a worker explains a query's matches and writes both files from
the same memory, so each batch forks once and the explanations (heatmaps, images) never travel back.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any

from monai.deploy.core import Fragment


from .common import QueryResult, ResultsOperator, StageFailure, library_cache_size, library_image
from .pdf_writer import ENCAPSULATED_PDF_FILE, PDF_FILE, write_report
from .sr_writer import SR_FILE, write_similar_cases_sr

__all__ = ["EXPLANATION_FAILED_NOTICE", "REPORT_PARTS", "SimilarCasesReportsOperator"]

# the parts of the pass, in order: each is timed on its own (timing_ms) and named when it fails
REPORT_PARTS = {"explain": "explain the matches", "sr": "write the similar-cases SR", "pdf": "write the PDF report"}
# in the SR and the PDF of a query whose matches could not be explained (problems.json says why)
EXPLANATION_FAILED_NOTICE = "the matches could not be explained this time: the report has no explanations (the run's problems.json says why)"


class SimilarCasesReportsOperator(ResultsOperator):
    """Named input ``results`` / named output ``results``: each answered query gains
    ``outputs["sr"]`` and, with ``write_pdf``, ``outputs["pdf"]`` and ``outputs["encapsulated_pdf"]``.

    File output: ``OUT/<query id>/similar_cases_sr.dcm``, ``similar_cases_report.pdf`` and
    ``similar_cases_report.dcm``. ``score_range``: the lowest and highest score the model can give
    (the SR states it; the PDF shows similarity as a percentage of its top). ``algorithm_parameters``: which model and
    library answered, in the SR's Algorithm Parameters and the PDF's header (the app: the network's fingerprint, the
    index's digest). The explanations are
    those the retrieval prepared (``result.pending_explanations``; none with ``--no-explain``). A part
    that fails loses only itself (:meth:`_report`); a query fails only when neither report was written."""

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        output_folder: str | Path,
        score_range: tuple[float, float],
        write_pdf: bool = True,
        algorithm_parameters: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        self.output_folder = Path(output_folder)
        self.score_range = score_range
        self.algorithm_parameters = tuple(algorithm_parameters)
        self.write_pdf = bool(write_pdf)
        super().__init__(fragment, *args, **kwargs)

    def run(self, results: list[QueryResult]) -> list[QueryResult]:
        # explanations a forked worker cannot make (the network on CUDA) are made here first
        here = [r for r in results if r.pending_explanations is not None and not r.pending_explanations.forkable]
        self.for_each_answered(here, "reports", self._explain, "explain the matches")
        for result in here:
            _split_pass_time(result)
        if self.write_pdf:
            _decode_shown_cases(results)
        self.for_each_answered(results, "reports", self._report, "write the reports", parallel=True, returns=("outputs", "output_errors", "notices", "timing_ms"))
        for result in results:
            _split_pass_time(result)
        return results

    def _explain(self, result: QueryResult) -> None:
        """The matches' explanations; one that fails leaves the query without explanations, not without
        reports: its SR and PDF say so (:data:`EXPLANATION_FAILED_NOTICE`), problems.json says why."""
        try:
            with _part(result, "explain"):
                result.explanations.update(result.pending_explanations.explain())
        except StageFailure as err:
            result.output_errors[err.stage] = str(err)
            result.add_notices(EXPLANATION_FAILED_NOTICE)
        result.pending_explanations = None

    def _report(self, result: QueryResult) -> None:
        """Explain, write the SR, write the PDF: each part apart, so that one that fails loses only itself.
        The query stays answered with whichever of the SR and the PDF was written, the other's failure in
        ``result.output_errors`` (problems.json); it fails when neither was."""
        folder = self.output_folder / result.query_id
        folder.mkdir(parents=True, exist_ok=True)
        if result.pending_explanations is not None:
            self._explain(result)
        parts = {"sr": (SR_FILE,)} | ({"pdf": (PDF_FILE, ENCAPSULATED_PDF_FILE)} if self.write_pdf else {})
        failed: list[StageFailure] = []
        for name, files in parts.items():
            try:
                with _part(result, name):
                    if name == "sr":
                        result.outputs["sr"] = str(write_similar_cases_sr(result, folder / SR_FILE, self.score_range, self.algorithm_parameters))
                    else:
                        write_report(result, folder / PDF_FILE, folder / ENCAPSULATED_PDF_FILE, self.score_range, self.algorithm_parameters)
                        result.outputs["pdf"] = str(folder / PDF_FILE)
                        result.outputs["encapsulated_pdf"] = str(folder / ENCAPSULATED_PDF_FILE)
            except StageFailure as err:
                failed.append(err)
                for file in files:  # no half of a part left in the query's folder (a PDF whose DICOM failed, an old run's file)
                    (folder / file).unlink(missing_ok=True)
        if len(failed) == len(parts):  # nothing reached the reader: the query failed, in its last part's words
            result.output_errors.update((err.stage, str(err)) for err in failed[:-1])
            raise failed[-1]
        result.output_errors.update((err.stage, str(err)) for err in failed)


def _decode_shown_cases(results: list[QueryResult]) -> None:
    """The thumbnails of the library cases the PDFs will show, decoded here, once per case (the process's
    cache, :func:`~.common.library_image`): the forked workers of a batch inherit them. A worker's own
    cache ends with it, so without this each worker decoded again every case it showed, batch after
    batch, while a batch's studies share most of their matches (the latency bench's 16 studies show 27
    distinct cases in 80 places). Not when the cases outnumber the cache (they would push each other out
    before the workers fork). The time it takes is the PDF's, shared over the answered studies."""
    answered = [r for r in results if r.ok]
    shown = {getattr(hit.metadata, "image_path", None): hit for r in answered for hit in r.hits}
    if not shown or len(shown) > library_cache_size():
        return
    start = time.perf_counter()
    for hit in shown.values():
        try:
            library_image(hit)
        except Exception:  # noqa: BLE001 (the PDF meets the same error for that case, shows a placeholder and logs why)
            pass
    share = 1000 * (time.perf_counter() - start) / len(answered)
    for result in answered:
        result.timing_ms["pdf"] = result.timing_ms.get("pdf", 0.0) + share


class _part:
    """Times one part of the pass into ``result.timing_ms[f"reports.{name}"]``; a failure says which part."""

    def __init__(self, result: QueryResult, name: str) -> None:
        self.result, self.name = result, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.result.timing_ms[f"reports.{self.name}"] = 1000 * (time.perf_counter() - self.start)
        if isinstance(err, Exception) and not isinstance(err, StageFailure):
            raise StageFailure(self.name, REPORT_PARTS[self.name], err) from err


def _split_pass_time(result: QueryResult) -> None:
    """The pass's time per query (``timing_ms["reports"]``: its wall time, or its share of a forked
    batch's) over its parts in proportion to what each took where it ran, added to the stages of
    those names (the retrieval's shared explanation work is in ``explain`` already)."""
    total = result.timing_ms.pop("reports", None)
    parts = {name: result.timing_ms.pop(f"reports.{name}") for name in REPORT_PARTS if f"reports.{name}" in result.timing_ms}
    if total is None or not parts:
        return
    scale = total / max(sum(parts.values()), 1e-9)
    for name, ms in parts.items():
        result.timing_ms[name] = result.timing_ms.get(name, 0.0) + ms * scale
