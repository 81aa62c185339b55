"""Identifiers and coded concepts of the DICOM objects monai-cir writes and reads.

- **UIDs** all come from :data:`UID_ROOT`, the one root the project owns (a ``2.25`` UUID arc, ITU-T
  X.667: whoever made the UUID owns the arcs below it): :func:`derived_uid` for identifiers that
  must be the same every time (dicomized cases), :func:`new_uid` for fresh ones (answers).
- **Codes**: standard ones (DCM, SCT, LN, UCUM, and IHE's 99IHE) wherever DICOM or SNOMED CT has
  the concept. The retrieval concepts no standard names (rank, similarity score, case library
  collection, the confirmation concept name and two of its values, the evidence summary, the ranking
  method and its two values, the "benign keratosis" class grouping) are *project concepts*: each is identified by an OID under
  :data:`CONCEPT_ROOT` (below :data:`UID_ROOT`, so the project owns it) in the DICOM coding scheme
  ``ISO_OID`` (PS3.16 Table 8-1: the code value is an ISO object identifier, carried in Long Code
  Value because it is longer than 16 characters). No ``99``-private designator is written: dicom3tools'
  dciodvfy checks Coding Scheme Designators and Coding Scheme UIDs against a fixed list and warns on
  any other, whatever the Coding Scheme Identification Sequence declares (docs/dicom.md).
- **Legacy codes**: the first releases wrote the same concepts in the private scheme
  :data:`LEGACY_PRIVATE_SCHEME` (``99MONAICIR``); :func:`same_concept`, :func:`diagnosis_from_code`
  and :func:`confirmation_from_code` still recognise them, so SRs written then read back unchanged.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

__all__ = [
    "CONCEPT_ROOT",
    "aliases",
    "CONFIRMATION_CODES",
    "DEVICE_UID",
    "LEGACY_PRIVATE_SCHEME",
    "MANUFACTURER",
    "MODEL_NAME",
    "OID_SCHEME",
    "OUTPUT_CHARACTER_SET",
    "RANKING_CODES",
    "UID_ROOT",
    "code_key",
    "confirmation_code",
    "confirmation_from_code",
    "derived_uid",
    "diagnosis_code",
    "diagnosis_from_code",
    "is_dicom_uid",
    "new_uid",
    "project_code",
    "ranking_code",
    "ranking_from_code",
    "same_concept",
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


# A DICOM UID as the project accepts one where it names a file or folder: digits and dots (PS3.5 9.1; a
# component with a leading zero, seen in older archives, is let through), at most 64 characters
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def is_dicom_uid(text: object) -> bool:
    """True for a UID made of digits and dots, at most 64 characters: the only UIDs used as file or
    folder names (never ``..``, never a name of the app's own files such as ``results.json``)."""
    return isinstance(text, str) and len(text) <= 64 and _UID.fullmatch(text) is not None


def new_uid() -> str:
    """A fresh random UID under :data:`UID_ROOT` (for instances and series written per answer)."""
    return generate_uid(prefix=UID_ROOT + _RANDOM_ARC)


DEVICE_UID = UID_ROOT + "4.1"  # the software as a device (Contributing Equipment, IHE AI Results)
CONCEPT_ROOT = UID_ROOT + "5."  # project concepts: CONCEPT_ROOT + a short arc, in the ISO_OID scheme
OID_SCHEME = "ISO_OID"  # PS3.16 Table 8-1: "ISO OID"; the code value is an object identifier
# Written by the first releases only (read back through the legacy maps below).
LEGACY_PRIVATE_SCHEME = "99MONAICIR"

MANUFACTURER = "monai-cir"
MODEL_NAME = "monai-cir composed retrieval"
# the Specific Character Set of everything monai-cir writes: UTF-8 covers every text an answer carries
OUTPUT_CHARACTER_SET = "ISO_IR 192"


def software_version() -> str:
    from .. import __version__

    return str(__version__)


_LEGACY_ALIASES: dict[tuple[str, str], tuple[str, str]] = {}  # (scheme, value) written before -> now


def project_code(arc: str, meaning: str, legacy: str | None = None) -> Code:
    """A project concept: the OID ``CONCEPT_ROOT + arc`` in the ``ISO_OID`` scheme.

    ``legacy`` is the code value the same concept had in :data:`LEGACY_PRIVATE_SCHEME` (read only)."""
    if not arc or not all(part.isdigit() and (part == "0" or not part.startswith("0")) for part in arc.split(".")):
        raise ValueError(f"concept arc must be dot-separated numbers without leading zeros, got {arc!r}")
    code = Code(CONCEPT_ROOT + arc, OID_SCHEME, meaning)
    if len(code.value) > 64:
        raise ValueError(f"concept OID longer than 64 characters: {code.value}")
    if legacy:
        _LEGACY_ALIASES[(LEGACY_PRIVATE_SCHEME, legacy)] = (OID_SCHEME, code.value)
    return code


def code_key(scheme: str, value: str) -> tuple[str, str]:
    """``(scheme, value)`` of a code as written now (a legacy private code maps to its project concept)."""
    key = (str(scheme), str(value))
    return _LEGACY_ALIASES.get(key, key)


def aliases(wanted: Code) -> list[Code]:
    """``wanted`` and the legacy private codes that meant the same concept (for look-ups by name)."""
    target = (wanted.scheme_designator, wanted.value)
    return [wanted] + [Code(v, s, wanted.meaning) for (s, v), now in _LEGACY_ALIASES.items() if now == target]


def same_concept(scheme: str, value: str, wanted: Code) -> bool:
    """Whether the code ``(scheme, value)`` is ``wanted`` (or the legacy private code of it)."""
    return code_key(scheme, value) == (wanted.scheme_designator, wanted.value)


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

# --- project concepts (no standard code names them; OIDs under CONCEPT_ROOT, see project_code) ------
# Arcs are permanent: never reuse one for another meaning.
RETRIEVAL_RANK = project_code("1", "Retrieval rank", legacy="CIR003")
SIMILARITY_SCORE = project_code("2", "Similarity score", legacy="CIR004")
CASE_IDENTIFIER = project_code("3", "Library case identifier", legacy="CIR006")  # a dicomized case's own id
CASE_COLLECTION = project_code("4", "Case library collection", legacy="CIR007")
EVIDENCE_SUMMARY = project_code("5", "Retrieval-based evidence summary", legacy="CIR010")
PREDICTED_DIAGNOSIS = project_code("6", "Retrieval-based diagnosis suggestion", legacy="CIR012")
DIAGNOSIS_CONFIRMATION = project_code("7", "Diagnosis confirmation method", legacy="CIR015")
CALIBRATED = project_code("8", "Calibrated confidence", legacy="CIR016")
# an evidence summary's share of a diagnosis when the vote is not calibrated: no probability, so not coded as one
WEIGHTED_SHARE = project_code("9", "Similarity-weighted share")
# how the similar cases are ordered (monai_cir.prior_ranking.RANKINGS): a machine reader need not parse the notice
RANKING_METHOD = project_code("10", "Similar cases ranking method")
# a similar case's recorded diagnosis and body site: another patient's, so not the standard Diagnosis (439401001) and
# Finding Site (363698007), which a reader of the group's structured findings takes for this patient's lesion (earlier
# answers wrote those; read_similar_cases_sr reads both)
CASE_DIAGNOSIS = project_code("11", "Similar case's recorded diagnosis")
CASE_SITE = project_code("12", "Similar case's anatomic site")
RANKING_CODES: dict[str, Code] = {
    "similarity": project_code("40.1", "Ranked by similarity"),
    "similarity_and_diagnosis_prior": project_code("40.2", "Ranked by similarity and diagnosis likelihood"),
    # the differential slot's case (monai_cir.differential): placed at its rank as the closest case of another
    # diagnosis, not ranked there by its score
    "differential": project_code("40.3", "Placed as the closest case of another diagnosis"),
}
_CODE_TO_RANKING = {(c.scheme_designator, c.value): name for name, c in RANKING_CODES.items()}


def _value_code(table: dict[str, Code], name: str, what: str) -> Code:
    """``table[name]``, or a ValueError naming ``what`` and the names ``table`` knows."""
    try:
        return table[str(name)]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; use one of {list(table)}") from None


def ranking_code(ranking: str) -> Code:
    """The coded concept of a ranking (one of ``RANKING_CODES``)."""
    return _value_code(RANKING_CODES, ranking, "ranking")


def ranking_from_code(scheme: str, value: str) -> str | None:
    """Inverse of :func:`ranking_code` (None for a code it does not know)."""
    return _CODE_TO_RANKING.get(code_key(scheme, value))
# Read-only: the diagnosis concept of the first release, recognised in library SRs it wrote.
LEGACY_REFERENCE_DIAGNOSIS = Code("CIR005", LEGACY_PRIVATE_SCHEME, "Reference diagnosis")

# Diagnoses of the project vocabulary (monai_cir.data.collections.CLASS_NAMES) -> SNOMED CT.
# "benign keratosis" is a class grouping (Derm7pt: seborrheic keratosis + melanosis; ISIC "BKL": seborrheic
# keratosis, solar lentigo, lichen planus-like keratosis); no single SNOMED CT concept was verified for it
# here (docs/dicom.md), so it is a project concept.
_DIAGNOSIS_CODES: dict[str, Code] = {
    "melanoma": Code("1162635006", "SCT", "Malignant melanoma"),  # the code DICOM lists (CID 638)
    "nevus": Code("400096001", "SCT", "Melanocytic nevus"),
    "benign keratosis": project_code("20.1", "Benign keratosis (class grouping)", legacy="CIRDX-BKL"),
    "unknown": UNKNOWN,
}
_LEGACY_DIAGNOSIS = {(LEGACY_PRIVATE_SCHEME, "CIRDX-NEV"): "nevus", (LEGACY_PRIVATE_SCHEME, "CIRDX-BKL"): "benign keratosis"}
_CODE_TO_DIAGNOSIS = {(c.scheme_designator, c.value): name for name, c in _DIAGNOSIS_CODES.items()} | _LEGACY_DIAGNOSIS
_OTHER_DIAGNOSIS_ARC = "21."  # + a number from the name: diagnoses outside the vocabulary


def diagnosis_code(diagnosis: str) -> Code:
    """The coded concept for a readable diagnosis; names outside the vocabulary get a stable private code."""
    name = str(diagnosis).strip()
    if not name:
        raise ValueError("diagnosis must be a non-empty string")
    key = name.lower()
    if key in _DIAGNOSIS_CODES:
        return _DIAGNOSIS_CODES[key]
    digest = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:10], 16) + 1  # no leading zero
    return project_code(f"{_OTHER_DIAGNOSIS_ARC}{digest}", name[:64])


def diagnosis_from_code(scheme: str, value: str, meaning: str) -> str:
    """Inverse of :func:`diagnosis_code`: the readable diagnosis of a coded concept; a concept outside the vocabulary
    by its meaning, named as a CSV library names it (:func:`~monai_cir.data.diagnoses.normalize_diagnosis`:
    "Seborrheic keratosis" is ``benign keratosis`` from either)."""
    from ..data.diagnoses import normalize_diagnosis

    key = (str(scheme), str(value))
    return _CODE_TO_DIAGNOSIS.get(key) or _CODE_TO_DIAGNOSIS.get(code_key(*key)) or normalize_diagnosis(meaning)


# How a library case's diagnosis was established (monai_cir.data.collections.CONFIRMATIONS).
CONFIRMATION_CODES: dict[str, Code] = {
    "histopathology": Code("252416005", "SCT", "Histopathology test"),
    "follow-up": project_code("30.1", "Clinical follow-up without change", legacy="CIRCF-FU"),
    "expert consensus": project_code("30.2", "Expert consensus without histopathology", legacy="CIRCF-EXP"),
    "unknown": UNKNOWN,
}
_CODE_TO_CONFIRMATION = {(c.scheme_designator, c.value): name for name, c in CONFIRMATION_CODES.items()}


def confirmation_code(confirmation: str) -> Code:
    """The coded concept of a confirmation status (one of ``CONFIRMATION_CODES``)."""
    return _value_code(CONFIRMATION_CODES, confirmation, "confirmation")


def confirmation_from_code(scheme: str, value: str, meaning: str = "") -> str:
    """Inverse of :func:`confirmation_code` (``"unknown"`` for a code it does not know)."""
    return _CODE_TO_CONFIRMATION.get(code_key(scheme, value), "unknown")
