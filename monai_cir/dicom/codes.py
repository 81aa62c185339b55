"""Identifiers and coded concepts of the DICOM objects monai-cir writes and reads.

- **UIDs** all come from :data:`UID_ROOT`, the one root the project owns (a ``2.25`` UUID arc, ITU-T
  X.667: whoever made the UUID owns the arcs below it): :func:`derived_uid` for identifiers that
  must be the same every time (dicomized cases), :func:`new_uid` for fresh ones (answers).
- **Codes**: standard ones (DCM, SCT, LN, UCUM, and IHE's 99IHE) wherever DICOM or SNOMED CT has
  the concept; a private scheme :data:`PRIVATE_SCHEME` only for the retrieval concepts no standard
  names (rank, similarity score, case library collection, the confirmation concept name and two of
  its values, the evidence summary). Every SR declares the private scheme, with its UID, in the
  Coding Scheme Identification Sequence (0008,0110) via :func:`coding_scheme_item`.
"""

from __future__ import annotations

import hashlib
import uuid

from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

__all__ = [
    "CONFIRMATION_CODES",
    "DEVICE_UID",
    "MANUFACTURER",
    "MODEL_NAME",
    "PRIVATE_SCHEME",
    "PRIVATE_SCHEME_UID",
    "UID_ROOT",
    "coding_scheme_item",
    "confirmation_code",
    "confirmation_from_code",
    "derived_uid",
    "diagnosis_code",
    "diagnosis_from_code",
    "new_uid",
    "private_code",
    "software_version",
]

# The project's UID root: 2.25 + the integer of uuid5(NAMESPACE_URL, "monai-cir"). 44 characters with
# the dot, so every UID below it has 20 characters left for its own arcs (UIDs are at most 64).
UID_ROOT = f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'https://github.com/monai-cir/monai-cir').int}."
_DERIVED_ARC, _RANDOM_ARC = "1.", "2."


def derived_uid(*parts: str) -> str:
    """A deterministic UID under :data:`UID_ROOT` from ``parts`` (SHA-256, as many digits as fit)."""
    if not parts:
        raise ValueError("derived_uid needs at least one part")
    prefix = UID_ROOT + _DERIVED_ARC
    digest = int.from_bytes(hashlib.sha256(chr(31).join(str(p) for p in parts).encode("utf-8")).digest(), "big")
    room = 64 - len(prefix)
    return prefix + str(digest % (10**room - 10 ** (room - 1)) + 10 ** (room - 1))  # no leading zero


def new_uid() -> str:
    """A fresh random UID under :data:`UID_ROOT` (for instances and series written per answer)."""
    return generate_uid(prefix=UID_ROOT + _RANDOM_ARC)


PRIVATE_SCHEME = "99MONAICIR"
PRIVATE_SCHEME_NAME = "monai-cir composed retrieval codes"
PRIVATE_SCHEME_UID = UID_ROOT + "3.1"
DEVICE_UID = UID_ROOT + "4.1"  # the software as a device (Contributing Equipment, IHE AI Results)

MANUFACTURER = "monai-cir"
MODEL_NAME = "monai-cir composed retrieval"


def software_version() -> str:
    from .. import __version__

    return str(__version__)


def private_code(value: str, meaning: str) -> Code:
    """A concept of the private coding scheme (Code Value is SH: at most 16 characters)."""
    if not value or len(value) > 16:
        raise ValueError(f"private code value must have 1..16 characters, got {value!r}")
    return Code(value, PRIVATE_SCHEME, meaning)


def coding_scheme_item():
    """The highdicom Coding Scheme Identification item that declares :data:`PRIVATE_SCHEME`."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    item = CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name=PRIVATE_SCHEME_NAME, responsible_organization="monai-cir project"
    )
    item.CodingSchemeUID = PRIVATE_SCHEME_UID  # highdicom writes the UID only for a registered scheme
    return item


# --- standard concepts ----------------------------------------------------------------------
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")  # TID 1500 title
SIMILAR_CASES_REPORT = IMAGING_MEASUREMENT_REPORT  # the document title of the similar-cases answer
DIAGNOSTIC_IMAGING_REPORT = Code("18748-4", "LN", "Diagnostic Imaging Report")
CLINICAL_INFORMATION = Code("55752-0", "LN", "Clinical Information")  # the query's clinical text
FINDINGS = Code("121070", "DCM", "Findings")
FINDING = Code("121071", "DCM", "Finding")
COMMENT = Code("121106", "DCM", "Comment")
SOURCE_IMAGE = Code("121324", "DCM", "Source image")
PROBABILITY = Code("122157", "DCM", "Probability")
NUMBER_OF_SIMILAR_FINDINGS = Code("111406", "DCM", "Number of similar findings")  # k of the evidence vote
DIAGNOSIS = Code("439401001", "SCT", "Diagnosis")
DERMOSCOPIC_PHOTOGRAPHY = Code("446078004", "SCT", "Dermoscopic photography")  # Procedure reported
UNKNOWN = Code("261665006", "SCT", "Unknown")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
MINIMUM = Code("255605001", "SCT", "Minimum")
MAXIMUM = Code("56851009", "SCT", "Maximum")
NO_UNITS = Code("1", "UCUM", "no units")
PERCENT = Code("%", "UCUM", "Percent")
# IHE AI Results (AIR): purpose of the Contributing Equipment item that describes the algorithm.
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")

# --- private concepts (no standard code names them) -------------------------------------------
CASE_IDENTIFIER = private_code("CIR006", "Library case identifier")  # a dicomized case's own id
RETRIEVAL_RANK = private_code("CIR003", "Retrieval rank")
SIMILARITY_SCORE = private_code("CIR004", "Similarity score")
CASE_COLLECTION = private_code("CIR007", "Case library collection")
EVIDENCE_SUMMARY = private_code("CIR010", "Retrieval-based evidence summary")
PREDICTED_DIAGNOSIS = private_code("CIR012", "Retrieval-based diagnosis suggestion")
DIAGNOSIS_CONFIRMATION = private_code("CIR015", "Diagnosis confirmation method")
CALIBRATED = private_code("CIR016", "Calibrated confidence")
# Read-only: the diagnosis concept of the first release, recognised in library SRs it wrote.
LEGACY_REFERENCE_DIAGNOSIS = private_code("CIR005", "Reference diagnosis")

# Diagnoses of the project vocabulary (monai_cir.data.collections.CLASS_NAMES) -> SNOMED CT.
# "benign keratosis" is a class grouping (Derm7pt: seborrheic keratosis + melanosis; ISIC "BKL"); no
# single SNOMED CT concept was verified for it here, so it keeps a private code (docs/dicom.md).
_DIAGNOSIS_CODES: dict[str, Code] = {
    "melanoma": Code("1162635006", "SCT", "Malignant melanoma"),  # the code DICOM lists (CID 638)
    "nevus": Code("400096001", "SCT", "Melanocytic nevus"),
    "benign keratosis": private_code("CIRDX-BKL", "Benign keratosis"),
    "unknown": UNKNOWN,
}
_LEGACY_DIAGNOSIS = {(PRIVATE_SCHEME, "CIRDX-NEV"): "nevus", (PRIVATE_SCHEME, "CIRDX-BKL"): "benign keratosis"}
_CODE_TO_DIAGNOSIS = {(c.scheme_designator, c.value): name for name, c in _DIAGNOSIS_CODES.items()} | _LEGACY_DIAGNOSIS


def diagnosis_code(diagnosis: str) -> Code:
    """The coded concept for a readable diagnosis; names outside the vocabulary get a stable private code."""
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


# How a library case's diagnosis was established (monai_cir.data.collections.CONFIRMATIONS).
CONFIRMATION_CODES: dict[str, Code] = {
    "histopathology": Code("252416005", "SCT", "Histopathology test"),
    "follow-up": private_code("CIRCF-FU", "Clinical follow-up without change"),
    "expert consensus": private_code("CIRCF-EXP", "Expert consensus without histopathology"),
    "unknown": UNKNOWN,
}
_CODE_TO_CONFIRMATION = {(c.scheme_designator, c.value): name for name, c in CONFIRMATION_CODES.items()}


def confirmation_code(confirmation: str) -> Code:
    """The coded concept of a confirmation status (one of ``CONFIRMATION_CODES``)."""
    try:
        return CONFIRMATION_CODES[str(confirmation)]
    except KeyError:
        raise ValueError(f"unknown confirmation {confirmation!r}; use one of {list(CONFIRMATION_CODES)}") from None


def confirmation_from_code(scheme: str, value: str, meaning: str = "") -> str:
    """Inverse of :func:`confirmation_code` (``"unknown"`` for a code it does not know)."""
    return _CODE_TO_CONFIRMATION.get((str(scheme), str(value)), "unknown")
