"""The hospital loop on loopback, for tests and ``bench/pacs_loop.py``: Orthanc (the PACS, routing
stable dermoscopy studies with ``monai_cir/resources/orthanc_forward_dermoscopy.lua``) holding a
case library, MODELS indexed from it over DICOMweb, and the DICOM service with the app's pipeline
warm, returning its answers to Orthanc.

    with HospitalLoop(workdir, library_records, stable_age=1, quiet_s=0.5) as loop:
        loop.server.storescu(files)             # a modality sends a study
        loop.answers(study_uid, sent_uids)      # what came back into the study (QIDO-RS)
"""

from __future__ import annotations

import socket
import warnings
from pathlib import Path
from typing import Any

import pydicom

try:
    from tests.orthanc import OrthancServer
except ImportError:  # pytest's rootdir-less import mode
    from orthanc import OrthancServer  # type: ignore[no-redef]

__all__ = ["LIBRARY_FILTER", "HospitalLoop", "as_query_study"]

LIBRARY_FILTER = "StudyDescription=monai-cir case*"  # what `monai-cir dicomize` writes for library cases


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_query_study(case: Any, folder: Path) -> list[Path]:
    """A dicomized case re-described as a clinic's study (not the library's: the routing skips those)."""
    files = []
    folder.mkdir(parents=True, exist_ok=True)
    for path in (case.image_file, case.sr_file):
        ds = pydicom.dcmread(path)
        ds.StudyDescription = "Dermoscopy"
        out = folder / path.name
        ds.save_as(out, enforce_file_format=True)
        files.append(out)
    return files


class HospitalLoop:
    """Start Orthanc, store the library in it, index it over DICOMweb, start the service."""

    def __init__(self, workdir: str | Path, library_records: list[Any], stable_age: int = 1, quiet_s: float = 0.5, app_settings: Any = None) -> None:
        self.root = Path(workdir)
        self.library_records = library_records
        self.stable_age, self.quiet_s, self.app_settings = stable_age, quiet_s, app_settings
        self.answered: list[str] = []  # the studies the pipeline ran on, in order
        self.server: OrthancServer | None = None
        self.service: Any = None

    def start(self) -> HospitalLoop:
        from deploy_app.pipeline import WarmPipeline
        from monai_cir.cli import main
        from monai_cir.config import in_a_passing_thread
        from monai_cir.dicom.dicomize import dicomize_record
        from monai_cir.networks import load_model, save_checkpoint
        from monai_cir.service import DicomService, orthanc_lua

        service_port = _free_port()
        self.server = OrthancServer(self.root / "orthanc", modalities={"monaicir": ["MONAICIR", "127.0.0.1", service_port]}, lua=orthanc_lua(), stable_age=self.stable_age).start()
        try:
            self.library = [dicomize_record(r, self.root / "library") for r in self.library_records]
            self.server.storescu([c.image_file for c in self.library] + [c.sr_file for c in self.library])
            self.models = self.root / "models"

            def model_and_index() -> int:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    save_checkpoint(load_model(None), self.models / "model.pt", note="untrained offline default (hospital loop)")
                return main(["index", "build", "--dicomweb", self.server.dicomweb_url, "--filter", LIBRARY_FILTER, "--pull-to", str(self.root / "pulled"),
                             "--model", str(self.models / "model.pt"), "--out", str(self.models / "index")])

            # in a thread that ends, as a hospital builds MODELS before it starts the service: the process's
            # threads keep no torch team that would slow the app's forwards (monai_cir.config.in_a_passing_thread)
            code = in_a_passing_thread(model_and_index)
            if code != 0:
                raise RuntimeError(f"monai-cir index build --dicomweb failed ({code})")
            self.pipeline = WarmPipeline(self.models, self.app_settings)

            def answer(input_folder: Path, output_folder: Path) -> Any:
                self.answered.append(input_folder.name)
                return self.pipeline.answer(input_folder, output_folder)

            self.service = DicomService(answer, self.root / "spool", port=service_port, peers=[self.server.ae_title],
                                        return_node=f"127.0.0.1:{self.server.dicom_port}:{self.server.ae_title}", quiet_s=self.quiet_s, retry_s=2).start()
        except BaseException:
            self.stop()
            raise
        return self

    def library_uids(self) -> set[str]:
        return {str(pydicom.dcmread(c.image_file, stop_before_pixels=True).SOPInstanceUID) for c in self.library}

    def answers(self, client: Any, study_uid: str, sent: set[str]) -> dict[str, Any]:
        """SOP Class UID -> QIDO-RS record of the instances in the study that were not sent (the answer)."""
        found = [pydicom.Dataset.from_json(item) for item in client.search_for_instances(study_instance_uid=study_uid)]
        return {str(ds.SOPClassUID): ds for ds in found if str(ds.SOPInstanceUID) not in sent}

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> HospitalLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
