"""Sends the DICOM outputs (SR, Encapsulated PDF) to a DICOM node (C-STORE) and/or a DICOMweb
service (STOW-RS), through :mod:`monai_cir.dicom.publish`.

The SDK's ``PublisherOperator`` copies files for a viewer of the breast density example and
does not speak DICOM networking. A publishing failure (node down, association rejected) is
recorded per query in ``results.json`` / ``problems.json``; the files stay in OUT.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment

from monai_cir.dicom.publish import DicomNode, c_store, stow_rs

from .common import QueryResult, ResultsOperator

__all__ = ["DICOMPublisherOperator"]

DICOM_OUTPUTS = ("sr", "encapsulated_pdf")


class DICOMPublisherOperator(ResultsOperator):
    """Named input ``results`` / named output ``results`` (each answered query gains ``published``)."""

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        dicom_node: DicomNode | None = None,
        dicomweb_url: str | None = None,
        calling_aet: str = "MONAICIR",
        **kwargs: Any,
    ) -> None:
        if dicom_node is None and not dicomweb_url:
            raise ValueError("DICOMPublisherOperator needs a DICOM node (HOST:PORT:AET) or a DICOMweb URL")
        self.dicom_node = dicom_node
        self.dicomweb_url = dicomweb_url
        self.calling_aet = calling_aet
        super().__init__(fragment, *args, **kwargs)

    def run(self, results: list[QueryResult]) -> list[QueryResult]:
        files = [Path(r.outputs[k]) for r in results if r.ok for k in DICOM_OUTPUTS if k in r.outputs]
        if not files:
            self._logger.info("nothing to publish")
            return results
        start = time.perf_counter()
        statuses: dict[str, dict[str, str]] = {}  # destination -> file -> "ok" | error
        uids = {str(f): _sop_instance_uid(f) for f in files}

        def per_file(stored: list[Any]) -> dict[str, str]:
            by_uid = {r.sop_instance_uid: ("ok" if r.ok else (r.message or "refused")) for r in stored}
            return {f: by_uid.get(uid, "no response") for f, uid in uids.items()}

        if self.dicom_node is not None:
            destination = f"dicom://{self.dicom_node}"  # dicom://HOST:PORT:AET
            try:
                statuses[destination] = per_file(c_store(files, self.dicom_node, calling_ae=self.calling_aet))
            except Exception as err:  # noqa: BLE001 (association failed: every file failed)
                statuses[destination] = {str(f): f"{type(err).__name__}: {err}" for f in files}
        if self.dicomweb_url:
            destination = self.dicomweb_url
            try:
                statuses[destination] = per_file(stow_rs(files, self.dicomweb_url))
            except Exception as err:  # noqa: BLE001
                statuses[destination] = {str(f): f"{type(err).__name__}: {err}" for f in files}
        elapsed_ms = 1000 * (time.perf_counter() - start)
        for result in results:
            if not result.ok:
                continue
            mine = {str(Path(result.outputs[k])): k for k in DICOM_OUTPUTS if k in result.outputs}
            result.published = {"destinations": list(statuses), "stored": [], "errors": {}}
            for destination, per_file in statuses.items():
                for file, kind in mine.items():
                    status = per_file.get(file, "not sent")
                    if status == "ok":
                        result.published["stored"].append(f"{kind} -> {destination}")
                    else:
                        result.published["errors"][f"{kind} -> {destination}"] = status
                        self._logger.error("query %s: publishing %s to %s failed: %s", result.query_id, kind, destination, status)
            result.timing_ms["publish"] = elapsed_ms / max(len([r for r in results if r.ok]), 1)
        summary, failed = _summary(statuses)
        (self._logger.error if failed else self._logger.info)("%s", summary)
        return results


def _summary(statuses: dict[str, dict[str, str]]) -> tuple[str, int]:
    """One line: per destination, how many files were stored and how many failed (the first error), and the
    number of failures in all. Nothing is called published that the destination did not acknowledge."""
    parts, failed_total = [], 0
    for destination, per_file in statuses.items():
        errors = [status for status in per_file.values() if status != "ok"]
        failed_total += len(errors)
        part = f"{len(per_file) - len(errors)} of {len(per_file)} file(s) stored at {destination}"
        if errors:
            part += f", {len(errors)} failed ({' '.join(errors[0].split())[:200]})"
        parts.append(part)
    return "published: " + "; ".join(parts), failed_total


def _sop_instance_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
