"""Writes one similar-cases SR (TID 1500 Measurement Report, Comprehensive SR) per answered query.

The SDK's ``DICOMTextSRWriterOperator`` writes a Basic Text SR (one TEXT item) copied from a
selected series: it cannot carry per-rank containers with a numeric score, a coded diagnosis and an
image reference to a library instance in another study, which is what a PACS / viewer needs to
follow a result back to the case. So this operator uses :mod:`monai_cir.dicom.sr` (highdicom), in
the query's study, for the query's patient.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment

from monai_cir.dicom.sr import DEFAULT_SCORE_RANGE

from .common import QueryResult, ResultsOperator

__all__ = ["SR_FILE", "SimilarCasesSRWriterOperator"]

SR_FILE = "similar_cases_sr.dcm"


class SimilarCasesSRWriterOperator(ResultsOperator):
    """Named input ``results`` / named output ``results`` (each answered query gains ``outputs["sr"]``).

    File output: ``OUT/<query id>/similar_cases_sr.dcm``. ``score_range``: the lowest and highest
    score the model can give (``(-L, L)`` for a network with ``L`` levels; three by default)."""

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
            result.outputs["sr"] = str(write_similar_cases_sr(result, folder / SR_FILE, self.score_range))

        return self.for_each_answered(results, "sr", write, "write the similar-cases SR", parallel=True)


def write_similar_cases_sr(result: QueryResult, path: Path, score_range: tuple[float, float] = DEFAULT_SCORE_RANGE) -> Path:
    """The SR of one query (see :func:`monai_cir.dicom.sr.similar_cases_sr`)."""
    from monai_cir.dicom.sr import similar_cases_sr

    sr = similar_cases_sr(
        result.query, result.hits, notices=list(dict.fromkeys(result.notices)),
        evidence_summary=result.evidence, score_range=score_range,
        explanations={rank: e.sr_text() for rank, e in result.explanations.items()} or None,
    )
    sr.save_as(path, enforce_file_format=True)
    return path
