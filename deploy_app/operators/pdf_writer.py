"""Writes the human-readable report of each answered query: a PDF and the same PDF as DICOM
Encapsulated PDF (in the query's study), so that any viewer shows it.

Page 1: the query image and text, then the top-k library cases with rank, similarity, diagnosis
and how it was confirmed, and the evidence summary; one page per explained case follows
(:mod:`monai_cir.dicom.report_pdf`). The SDK's
``DICOMEncapsulatedPDFWriterOperator`` writes one PDF per compute from a ``StudySelectedSeries`` of
the SDK loader; this app answers several queries per run from its own loader, so the encapsulation
is done by :mod:`monai_cir.dicom.report_pdf` too (which ``dciodvfy`` checks in the tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment

from monai_cir.dicom.sr import DEFAULT_SCORE_RANGE

from .common import QueryResult, ResultsOperator, library_image

__all__ = ["ENCAPSULATED_PDF_FILE", "PDF_FILE", "SimilarCasesPDFWriterOperator"]

PDF_FILE = "similar_cases_report.pdf"
ENCAPSULATED_PDF_FILE = "similar_cases_report.dcm"


class SimilarCasesPDFWriterOperator(ResultsOperator):
    """Named input ``results`` / named output ``results`` (answered queries gain ``outputs["pdf"]``
    and ``outputs["encapsulated_pdf"]``).

    File output: ``OUT/<query id>/similar_cases_report.pdf`` and ``similar_cases_report.dcm``.
    ``score_range`` as for the SR writer (the PDF shows similarity as a percentage of its top)."""

    def __init__(
        self, fragment: Fragment, *args: Any, output_folder: str | Path, score_range: tuple[float, float] = DEFAULT_SCORE_RANGE, **kwargs: Any
    ) -> None:
        self.output_folder = Path(output_folder)
        self.score_range = score_range
        super().__init__(fragment, *args, **kwargs)

    def run(self, results: list[QueryResult]) -> list[QueryResult]:
        def write(result: QueryResult) -> None:
            folder = self.output_folder / result.query_id
            folder.mkdir(parents=True, exist_ok=True)
            pdf_path, dcm_path = folder / PDF_FILE, folder / ENCAPSULATED_PDF_FILE
            write_report(result, pdf_path, dcm_path, self.score_range)
            result.outputs["pdf"] = str(pdf_path)
            result.outputs["encapsulated_pdf"] = str(dcm_path)

        return self.for_each_answered(results, "pdf", write, "write the PDF report", parallel=True)


def write_report(result: QueryResult, pdf_path: Path, dcm_path: Path, score_range: tuple[float, float] = DEFAULT_SCORE_RANGE) -> None:
    """The plain PDF and its Encapsulated PDF instance (see :mod:`monai_cir.dicom.report_pdf`)."""
    from monai_cir.dicom.report_pdf import encapsulated_pdf_dataset, render_report_pdf

    query = result.query
    pdf = render_report_pdf(
        query.image,
        query.text,
        result.hits,
        image_loader=library_image,
        evidence_summary=result.evidence,
        explanations=result.explanations or None,  # drawn in plain words by the report itself
        notices=list(dict.fromkeys(result.notices)),
        study=query.dataset,
        score_range=score_range,
    )
    pdf_path.write_bytes(pdf)
    encapsulated_pdf_dataset(pdf, query.dataset).save_as(dcm_path, enforce_file_format=True)

