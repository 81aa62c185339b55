"""Coded concepts used by the DICOM objects monai-cir writes and reads.

Standard codes (DCM, SCT, LN, UCUM) where DICOM has one; the rest come from the declared private
coding scheme :data:`PRIVATE_SCHEME` (``99MONAICIR``), which every SR we write lists in its Coding
Scheme Identification Sequence (0008,0110) via :func:`coding_scheme_item`.
"""

from __future__ import annotations

import hashlib
import uuid

from pydicom.sr.coding import Code

__all__ = [
    "MANUFACTURER",
    "MODEL_NAME",
    "PRIVATE_SCHEME",
    "PRIVATE_SCHEME_NAME",
    "PRIVATE_SCHEME_UID",
    "coding_scheme_item",
    "derived_uid",
    "diagnosis_code",
    "diagnosis_from_code",
    "private_code",
    "software_version",
]

PRIVATE_SCHEME = "99MONAICIR"
PRIVATE_SCHEME_NAME = "monai-cir composed retrieval codes"
# 2.25 UID derived from the scheme name (stable, not registered anywhere)
PRIVATE_SCHEME_UID = "2.25.24921664328818871209989048211309567017"  # derived_uid("monai-cir private coding scheme 99MONAICIR")

MANUFACTURER = "monai-cir"
MODEL_NAME = "monai-cir composed retrieval"


def software_version() -> str:
    from .. import __version__

    return str(__version__)


_UID_NAMESPACE = uuid.UUID("6f1d0c7e-5b1a-4c55-9a3e-6d6f6e61692d")


def derived_uid(*parts: str) -> str:
    """A deterministic ``2.25`` UID from ``parts`` (a name-based UUID, RFC 4122 version 5).

    (``pydicom.uid.generate_uid(prefix=None)`` ignores its entropy sources, hence this.)"""
    if not parts:
        raise ValueError("derived_uid needs at least one part")
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(str(p) for p in parts)).int}"


def private_code(value: str, meaning: str) -> Code:
    """A concept of the private coding scheme (Code Value is SH: at most 16 characters)."""
    if not value or len(value) > 16:
        raise ValueError(f"private code value must have 1..16 characters, got {value!r}")
    return Code(value, PRIVATE_SCHEME, meaning)


def coding_scheme_item():
    """The highdicom Coding Scheme Identification item that declares :data:`PRIVATE_SCHEME`."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name=PRIVATE_SCHEME_NAME,
        uid=PRIVATE_SCHEME_UID,
        responsible_organization="monai-cir project",
    )


# --- standard concepts ----------------------------------------------------------------------
DIAGNOSTIC_IMAGING_REPORT = Code("18748-4", "LN", "Diagnostic Imaging Report")
FINDINGS = Code("121070", "DCM", "Findings")
FINDING = Code("121071", "DCM", "Finding")
COMMENT = Code("121106", "DCM", "Comment")
QUERY = Code("110112", "DCM", "Query")
SOURCE_IMAGE = Code("121324", "DCM", "Source image")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
PROBABILITY = Code("122157", "DCM", "Probability")
NO_UNITS = Code("1", "UCUM", "no units")
RATIO = Code("{ratio}", "UCUM", "ratio")

# --- private concepts -----------------------------------------------------------------------
SIMILAR_CASES_REPORT = private_code("CIR001", "Similar cases retrieval report")
SIMILAR_CASE = private_code("CIR002", "Similar case")
RETRIEVAL_RANK = private_code("CIR003", "Retrieval rank")
SIMILARITY_SCORE = private_code("CIR004", "Similarity score")
REFERENCE_DIAGNOSIS = private_code("CIR005", "Reference diagnosis")
CASE_IDENTIFIER = private_code("CIR006", "Library case identifier")
CASE_COLLECTION = private_code("CIR007", "Case library collection")
QUERY_TEXT = private_code("CIR008", "Query text")
EVIDENCE_SUMMARY = private_code("CIR010", "Retrieval-based evidence summary")
DIAGNOSIS_SHARE = private_code("CIR011", "Score-weighted diagnosis share")
PREDICTED_DIAGNOSIS = private_code("CIR012", "Retrieval-based diagnosis suggestion")
ANATOMIC_SITE = private_code("CIR013", "Anatomic site")
EXPLANATION = private_code("CIR014", "Explanation")

# Diagnoses of the project vocabulary (monai_cir.data.collections.CLASS_NAMES). Melanoma has the
# SNOMED CT code that DICOM lists (CID 6030 family); "nevus" and "benign keratosis" are class
# groupings (several SNOMED concepts each) and get private codes until a verified mapping exists.
_DIAGNOSIS_CODES: dict[str, Code] = {
    "melanoma": Code("1162635006", "SCT", "Malignant melanoma"),
    "nevus": private_code("CIRDX-NEV", "Nevus"),
    "benign keratosis": private_code("CIRDX-BKL", "Benign keratosis"),
}
_CODE_TO_DIAGNOSIS = {(c.scheme_designator, c.value): name for name, c in _DIAGNOSIS_CODES.items()}


def diagnosis_code(diagnosis: str) -> Code:
    """The coded concept for a readable diagnosis; unknown names get a stable private code."""
    name = str(diagnosis).strip()
    if not name:
        raise ValueError("diagnosis must be a non-empty string")
    key = name.lower()
    if key in _DIAGNOSIS_CODES:
        return _DIAGNOSIS_CODES[key]
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:10].upper()
    return private_code(f"CIRDX-{digest}", name[:64])


def diagnosis_from_code(scheme: str, value: str, meaning: str) -> str:
    """Inverse of :func:`diagnosis_code`: the readable diagnosis of a coded concept."""
    return _CODE_TO_DIAGNOSIS.get((str(scheme), str(value)), str(meaning).strip().lower())
