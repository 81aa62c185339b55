"""Writes ``results.json`` (every answered query and its top-k) and ``problems.json`` (what was skipped)."""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from .common import Problem, QueryResult, attr

__all__ = ["PROBLEMS_FILE", "RESULTS_FILE", "ResultsWriterOperator", "result_record"]

RESULTS_FILE = "results.json"
PROBLEMS_FILE = "problems.json"


def _atomic_json(path: Path, payload: Any) -> None:
    from monai_cir.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=1, default=str))


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def result_record(result: QueryResult, output_folder: Path) -> dict[str, Any]:
    """The JSON record of one answered query."""
    from monai_cir.dicom.reader import dicom_text

    q = result.query
    dataset = attr(q, "dataset")
    return {
        "query_id": result.query_id,
        "patient_id": attr(q, "patient_id"),
        "patient_name": str(attr(q, "patient_name", "") or "") or None,
        "study_uid": attr(q, "study_uid"),
        "series_uid": attr(q, "series_uid"),
        "sop_instance_uid": attr(q, "sop_instance_uid"),
        "accession_number": dicom_text(dataset.get("AccessionNumber")) or None if dataset is not None else None,
        "text": attr(q, "text", "") or "",
        "text_use": result.text_use,
        "image_alone": result.image_alone,
        "site": attr(q, "site"),
        "notices": list(result.notices),
        # how top_k is ordered: "similarity", or "similarity_and_diagnosis_prior" (a text naming 7-point findings; a notice says what it means)
        "ranking": result.ranking,
        "evidence_disagreement": result.evidence_disagreement,
        "top_k": [
            {
                "rank": h.rank,
                "case_id": h.case_id,
                "diagnosis": h.metadata.diagnosis,
                "confirmation": h.metadata.confirmation,
                "score": round(float(h.score), 6),
                "collection": h.metadata.collection,
                "site": h.metadata.site,
                "study_uid": h.metadata.study_uid,
                "sop_instance_uid": h.metadata.sop_instance_uid,
            }
            for h in result.hits
        ],
        "differential": result.differential,
        "evidence": result.evidence.to_dict() if result.evidence is not None else None,
        "outputs": {k: _relative(v, output_folder) for k, v in result.outputs.items()},
        "published": result.published,
        "timing_ms": {k: round(v, 2) for k, v in result.timing_ms.items()},
    }


class ResultsWriterOperator(Operator):
    """The last operator: the machine-readable summary of the run.

    Named inputs:
        results: ``list[QueryResult]`` (answered and failed queries).
        problems: ``list[Problem]`` from the loader (files and studies skipped on input).

    Named output:
        summary: the ``results.json`` payload (optional receiver).

    File output: ``OUT/results.json``, ``OUT/problems.json`` (always written; ``[]`` when all went well).
    """

    def __init__(self, fragment: Fragment, *args: Any, output_folder: str | Path, run_info: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.output_folder = Path(output_folder)
        self.run_info = dict(run_info or {})
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")
        spec.input("problems")
        spec.output("summary").condition(ConditionType.NONE)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        results = op_input.receive("results") or []
        problems = op_input.receive("problems") or []
        summary = self.write(results, problems)
        op_output.emit(summary, "summary")

    def write(self, results: list[QueryResult], problems: list[Problem]) -> dict[str, Any]:
        self.output_folder.mkdir(parents=True, exist_ok=True)
        all_problems = list(problems)
        answered = []
        for result in results:
            if result.ok:
                answered.append(result_record(result, self.output_folder))
            else:
                all_problems.append(result.problem())
            # a report part that failed for an answered query: the query is in results.json with what was written
            all_problems.extend(Problem(stage=stage, message=message, path=attr(result.query, "source_path"), study_uid=attr(result.query, "study_uid"),
                                        query_id=result.query_id) for stage, message in result.output_errors.items())
            for stage, message in result.published.get("errors", {}).items():
                all_problems.append(Problem(stage=f"publish:{stage}", message=message, study_uid=attr(result.query, "study_uid"), query_id=result.query_id))
        summary = {
            "app": self.run_info.get("app"),
            "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
            **{k: v for k, v in self.run_info.items() if k != "app"},
            "queries": answered,
            # the inputs not answered (files and studies the loader left out, queries that failed), and problems.json's
            # entries, which also hold a report part or a publication that failed for an answered query
            "skipped": len(problems) + sum(not result.ok for result in results),
            "problems": len(all_problems),
        }
        _atomic_json(self.output_folder / RESULTS_FILE, summary)
        _atomic_json(self.output_folder / PROBLEMS_FILE, [p.to_dict() for p in all_problems])
        for p in all_problems:
            self._logger.warning("problem (%s) %s: %s", p.stage, p.path or p.query_id or p.study_uid or "", p.message)
        self._logger.info(
            "answered %d quer%s, %d problem(s); see %s and %s",
            len(answered), "y" if len(answered) == 1 else "ies", len(all_problems),
            self.output_folder / RESULTS_FILE, self.output_folder / PROBLEMS_FILE,
        )
        return summary
