"""Writes one Comprehensive SR "similar cases" document per answered query.

The SDK's ``DICOMTextSRWriterOperator`` writes a Basic Text SR (one TEXT item) copied from a
selected series: it cannot carry per-rank containers with a numeric score, a coded diagnosis and an
image reference to a library instance in another study, which is what a PACS / viewer needs to
follow a result back to the case. So this operator uses :mod:`monai_cir.dicom.sr` (highdicom), in
the query's study, for the query's patient.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from .common import QueryResult

__all__ = ["SR_FILE", "SimilarCasesSRWriterOperator"]

SR_FILE = "similar_cases_sr.dcm"


class SimilarCasesSRWriterOperator(Operator):
    """Named input ``results`` / named output ``results`` (each answered query gains ``outputs["sr"]``).

    File output: ``OUT/<query id>/similar_cases_sr.dcm``."""

    def __init__(self, fragment: Fragment, *args: Any, output_folder: str | Path, **kwargs: Any) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")
        spec.output("results")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        results: list[QueryResult] = op_input.receive("results") or []
        self.run(results)
        op_output.emit(results, "results")

    def run(self, results: list[QueryResult]) -> list[QueryResult]:
        for result in results:
            if not result.ok:
                continue
            start = time.perf_counter()
            try:
                folder = self.output_folder / result.query_id
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / SR_FILE
                write_similar_cases_sr(result, path)
                result.outputs["sr"] = str(path)
            except Exception as err:  # noqa: BLE001 (one bad query must not stop the others)
                result.fail("sr", f"cannot write the similar-cases SR: {type(err).__name__}: {err}")
                self._logger.error("query %s: %s", result.query_id, result.error)
            result.timing_ms["sr"] = 1000 * (time.perf_counter() - start)
        return results


def write_similar_cases_sr(result: QueryResult, path: Path) -> Path:
    """The SR of one query (see :func:`monai_cir.dicom.sr.similar_cases_sr`)."""
    from monai_cir.dicom.sr import similar_cases_sr

    sr = similar_cases_sr(
        result.query, result.hits, notices=list(dict.fromkeys(result.notices)),
        evidence_summary=result.evidence,
        explanations={rank: e.sr_text() for rank, e in result.explanations.items()} or None,
    )
    sr.save_as(path, enforce_file_format=True)
    return path
