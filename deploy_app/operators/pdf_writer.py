"""The human-readable report of an answered query: a PDF and the same PDF as DICOM Encapsulated PDF
(in the query's study), so that any viewer shows it (written by :class:`~.reports.SimilarCasesReportsOperator`).

Page 1: the query image and text, then the top-k library cases with rank, similarity, diagnosis
and how it was confirmed, and the evidence summary; the explanations follow, five cases a page
(:mod:`monai_cir.dicom.report_pdf`). The SDK's
``DICOMEncapsulatedPDFWriterOperator`` writes one PDF per compute from a ``StudySelectedSeries`` of
the SDK loader; this app answers several queries per run from its own loader, so the encapsulation
is done by :mod:`monai_cir.dicom.report_pdf` too (which ``dciodvfy`` checks in the tests).
"""

from __future__ import annotations

from pathlib import Path


from .common import QueryResult, library_image

__all__ = ["ENCAPSULATED_PDF_FILE", "PDF_FILE", "write_report"]

PDF_FILE = "similar_cases_report.pdf"
ENCAPSULATED_PDF_FILE = "similar_cases_report.dcm"


def write_report(result: QueryResult, pdf_path: Path, dcm_path: Path, score_range: tuple[float, float], algorithm_parameters: tuple[str, ...] = ()) -> None:
    """The plain PDF and its Encapsulated PDF instance (:func:`monai_cir.dicom.report_pdf.similar_cases_pdf`)."""
    from monai_cir.atomic import atomic_path, atomic_write_bytes
    from monai_cir.dicom.report_pdf import similar_cases_pdf
    from monai_cir.prior_ranking import PRIOR_RANKING

    ds = similar_cases_pdf(
        result.query,
        result.hits,
        image_loader=library_image,
        evidence_summary=result.evidence,
        explanations=result.explanations or None,  # drawn in plain words by the report itself
        notices=list(result.notices),
        score_range=score_range,
        differential_rank=result.differential["rank"] if result.differential else None,
        image_alone=result.image_alone["counts"] if result.image_alone else None,
        ordered_by_prior=result.ranking == PRIOR_RANKING,
        algorithm_parameters=list(algorithm_parameters) or None,
    )
    atomic_write_bytes(pdf_path, bytes(ds.EncapsulatedDocument[: int(ds.EncapsulatedDocumentLength)]))
    with atomic_path(dcm_path) as tmp:  # each file whole or not at all (the reports pass removes a failed part's files)
        ds.save_as(tmp, enforce_file_format=True)
