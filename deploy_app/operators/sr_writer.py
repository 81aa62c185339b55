"""The similar-cases SR (TID 1500 Measurement Report, Comprehensive SR) of an answered query (written by
:class:`~.reports.SimilarCasesReportsOperator`).

The SDK's ``DICOMTextSRWriterOperator`` writes a Basic Text SR (one TEXT item) copied from a
selected series: it cannot carry per-rank containers with a numeric score, a coded diagnosis and an
image reference to a library instance in another study, which is what a PACS / viewer needs to
follow a result back to the case. So this module uses :mod:`monai_cir.dicom.sr` (highdicom), in
the query's study, for the query's patient.
"""

from __future__ import annotations

from pathlib import Path


from .common import QueryResult

__all__ = ["SR_FILE", "write_similar_cases_sr"]

SR_FILE = "similar_cases_sr.dcm"


def write_similar_cases_sr(result: QueryResult, path: Path, score_range: tuple[float, float], algorithm_parameters: tuple[str, ...] = ()) -> Path:
    """The SR of one query (see :func:`monai_cir.dicom.sr.similar_cases_sr`)."""
    from monai_cir.dicom.sr import similar_cases_sr

    sr = similar_cases_sr(
        result.query, result.hits, notices=list(result.notices),
        evidence_summary=result.evidence, score_range=score_range, ranking=result.ranking,
        differential_rank=result.differential["rank"] if result.differential else None,
        explanations={rank: e.sr_text() for rank, e in result.explanations.items()} or None,
        algorithm_parameters=list(algorithm_parameters) or None,
    )
    from monai_cir.atomic import atomic_path

    with atomic_path(path) as tmp:  # whole or not at all: a failed write leaves no truncated SR beside the answer
        sr.save_as(tmp, enforce_file_format=True)
    return path
