"""Loader: a folder of DICOM files -> one composed query per dermoscopy image, plus the problems found.

Why not the SDK's ``DICOMDataLoaderOperator`` + ``DICOMSeriesSelectorOperator``: they were tried
and fit the happy path (a selection rule ``{"Modality": "(?i)^(DMS|XC)$"}`` does pick the
dermoscopy series, and ``SOPClassUID`` matches at instance level), but for this app they

- drop what they cannot parse with only a log line (a non-DICOM file, an instance without Study
  Instance UID), so the app could not report *which* file of *which* study was skipped and why
  (``problems.json``), which the hospital needs;
- hand over raw datasets: decoding photographs (JPEG baseline / YBR_FULL_422 / multi-frame /
  greyscale / 16-bit / huge images), extracting the report text from Basic Text / Enhanced /
  Comprehensive SR and linking an SR to the image it references are instance-level logic that
  ``monai_cir.dicom.read_dicom_folder`` already implements and tests (issue 5);
- group by Image Position (Patient) to drop "duplicate slices", which has no meaning for photographs.

So this operator wraps :func:`monai_cir.dicom.read_dicom_folder`, whose selection rules are the
dermoscopy SOP classes (Dermoscopic Photography 1.2.840.10008.5.1.4.1.1.77.1.7, Modality DMS; VL
Photographic 1.2.840.10008.5.1.4.1.1.77.1.4, Modality XC) and the SR storage classes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from .common import Problem, QueryResult, attr, query_id_of

__all__ = ["DermoscopyStudyLoaderOperator"]


class DermoscopyStudyLoaderOperator(Operator):
    """Reads every DICOM file under a folder into composed queries.

    Named input:
        input_folder: optional; a folder path that overrides ``input_folder`` given at construction.

    Named outputs:
        queries: ``list[QueryResult]``, one per dermoscopy image (``.query`` is a
            ``monai_cir.dicom.DermoscopyQuery``: image HWC uint8, text, patient/study attributes, UIDs).
        problems: ``list[Problem]``, one per file or study skipped, with the reason.
    """

    def __init__(self, fragment: Fragment, *args: Any, input_folder: str | Path, **kwargs: Any) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.input_folder = Path(input_folder)
        self.input_name = "input_folder"
        self.output_queries = "queries"
        self.output_problems = "problems"
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.input_name).condition(ConditionType.NONE)  # optional, as the SDK's loader
        spec.output(self.output_queries)
        spec.output(self.output_problems)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        folder = self.input_folder
        try:
            received = op_input.receive(self.input_name)
            if received:
                folder = Path(received)
        except Exception as err:  # noqa: BLE001 (no upstream operator: use the constructor's folder; anything else is logged)
            self._logger.debug("no input folder received (%s: %s): reading %s", type(err).__name__, err, folder)
        queries, problems = self.load(folder)
        op_output.emit(queries, self.output_queries)
        op_output.emit(problems, self.output_problems)

    def load(self, folder: Path) -> tuple[list[QueryResult], list[Problem]]:
        from monai_cir.dicom.reader import read_dicom_folder

        if not folder.exists():
            raise FileNotFoundError(f"input folder not found: {folder} (give -i or HOLOSCAN_INPUT_PATH)")
        start = time.perf_counter()
        scan = read_dicom_folder(folder)
        elapsed_ms = 1000 * (time.perf_counter() - start)
        problems = []
        for p in scan.problems:
            problem = Problem(stage="input", message=str(p.message), path=str(p.path) or None, study_uid=_study_of(p.path))
            self._logger.warning("skipped %s: %s", problem.path or "input", problem.message)
            problems.append(problem)
        results = []
        for i, query in enumerate(scan.queries):
            result = QueryResult(query_id=query_id_of(query, i), query=query)
            result.add_notices(*(attr(query, "notices", []) or []))
            result.timing_ms["load"] = elapsed_ms / max(len(scan.queries), 1)
            results.append(result)
        # the reader keeps one file per SOP Instance UID, so an id repeats only for a query from elsewhere:
        # those ids, and only those, are kept apart (the others stay their image's UID, their output folder's name)
        counts, seen = Counter(r.query_id for r in results), Counter()
        for r in results:
            if counts[r.query_id] > 1:
                seen[r.query_id] += 1
                r.query_id = f"{r.query_id}-{seen[r.query_id]}"
        studies = {attr(r.query, "study_uid") for r in results}
        self._logger.info("read %s: %d quer%s in %d stud%s, %d problem(s)", folder, len(results), "y" if len(results) == 1 else "ies", len(studies), "y" if len(studies) == 1 else "ies", len(problems))
        if not results:  # said in problems.json too: an empty run must not read as a run that found nothing wrong
            if not scan.files:
                message = "the input folder holds no file to read: nothing to answer (were the studies copied in before the run started?)"
            elif problems:
                message = f"no dermoscopy image answered among the input's {scan.files} file(s): why is in the problems above"
            else:
                message = f"no dermoscopy image among the input's {scan.files} file(s): nothing to answer"
            problems.append(Problem(stage="input", message=message, path=str(folder)))
            self._logger.warning("%s: %s", folder, message)
        return results, problems


def _study_of(path: str | None) -> str | None:
    """The Study Instance UID of a file that could not be used, when its header is readable."""
    if not path:
        return None
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "") or "") or None
    except Exception:  # noqa: BLE001
        return None
