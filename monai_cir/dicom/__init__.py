"""DICOM in (dermoscopy images + SR text) and out (similar-cases SR, Encapsulated PDF, publishing).

- :func:`read_dicom_folder` -> :class:`DicomScan` (queries + input problems), :mod:`.reader`
- :mod:`.dicomize`: research collections -> Dermoscopic Photography + SR studies
- :func:`similar_cases_sr` / :func:`read_similar_cases_sr`: the answer as a TID 1500 Measurement Report, :mod:`.sr`
- :func:`similar_cases_pdf`: the human-readable report as Encapsulated PDF, :mod:`.report_pdf`
- :func:`c_store` / :func:`stow_rs`: publishing, :mod:`.publish`

Names are imported lazily so that ``import monai_cir.dicom`` stays cheap (no highdicom, reportlab
or pynetdicom until used). Conformance in ``docs/dicom.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "read_dicom_folder": "reader",
    "read_sr_text": "reader",
    "DicomScan": "reader",
    "DermoscopyQuery": "reader",
    "InputProblem": "reader",
    "IMAGE_SOP_CLASSES": "reader",
    "SR_SOP_CLASSES": "reader",
    "dicomize_record": "dicomize",
    "dicomize_records": "dicomize",
    "case_uids": "dicomize",
    "pseudonym": "dicomize",
    "dermoscopy_image_dataset": "dicomize",
    "case_report_sr": "dicomize",
    "similar_cases_sr": "sr",
    "read_similar_cases_sr": "sr",
    "SimilarCase": "sr",
    "SimilarCasesReport": "sr",
    "DECISION_SUPPORT_NOTE": "sr",
    "similar_cases_pdf": "report_pdf",
    "render_report_pdf": "report_pdf",
    "encapsulated_pdf_dataset": "report_pdf",
    "c_store": "publish",
    "stow_rs": "publish",
    "DicomNode": "publish",
    "StoreResult": "publish",
    "parse_dicom_node": "publish",
    "check_ae_title": "publish",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
