"""Diagnosis names: the readable class name of a diagnosis string, one rule for every source (a CSV's column, a
Derm7pt diagnosis, the code meaning of a DICOM SR or a dicomized library image: :func:`monai_cir.dicom.codes.diagnosis_from_code`),
so that one lesion class never gets two names in one library (the evidence vote and the diagnosis prior count names).

No pandas here: the deploy app reads diagnoses from DICOM without importing it.
"""

from __future__ import annotations

__all__ = ["DIAGNOSIS_ALIASES", "derm7pt_class", "normalize_diagnosis"]

DIAGNOSIS_ALIASES = {
    "mel": "melanoma",
    "nv": "nevus",
    "naevus": "nevus",
    "bkl": "benign keratosis",
    "seborrheic keratosis": "benign keratosis",
    "seborrhoeic keratosis": "benign keratosis",
    "benign keratosis-like lesions": "benign keratosis",
}


def derm7pt_class(raw_diagnosis: str) -> str | None:
    """The paper's mapping of a raw Derm7pt diagnosis to a class (``None``: not in the 888 subset).

    melanoma = the 6 strings starting with ``melanoma``; nevus = the 7 ending with ``nevus``;
    benign keratosis = ``seborrheic keratosis`` + ``melanosis``."""
    d = str(raw_diagnosis).strip().lower()
    if d.startswith("melanoma"):
        return "melanoma"
    if d.endswith("nevus"):
        return "nevus"
    if d in ("seborrheic keratosis", "melanosis"):
        return "benign keratosis"
    return None


def normalize_diagnosis(value: str) -> str:
    """Readable class name for a diagnosis string (``mel``/``nv``/``bkl`` and Derm7pt names known)."""
    d = str(value).strip().lower()
    d = DIAGNOSIS_ALIASES.get(d, d)
    return derm7pt_class(d) or d
