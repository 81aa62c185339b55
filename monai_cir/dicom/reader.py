"""Read a folder of DICOM into composed queries: dermoscopy image + report text.

Rules (documented in ``docs/dicom.md``):

- **Images**: Dermoscopic Photography Image Storage (``1.2.840.10008.5.1.4.1.1.77.1.7``, Modality
  DMS) and VL Photographic Image Storage (``1.2.840.10008.5.1.4.1.1.77.1.4``, Modality XC); any
  transfer syntax pydicom can decode with its numpy / pylibjpeg / Pillow plugins (uncompressed,
  JPEG baseline/extended/lossless, JPEG 2000, JPEG-LS, RLE); RGB, YBR_FULL, YBR_FULL_422 (converted
  to RGB), MONOCHROME1/2 and PALETTE COLOR; 8- to 16-bit (colour: scaled by the Bits Stored range unless
  dim; a dim colour image, greyscale, palette output and signed data: by their own range,
  :func:`monai_cir.data.to_rgb_uint8`). Images larger than ``max_side`` are downscaled (notice).
  A colour JPEG Baseline frame (YBR_FULL_422 / YBR_FULL) is decoded by Pillow directly, as the
  training and the index read the JPEG files these frames carry unchanged (``dicomize``): the same
  pixels, faster than pydicom's decoder path; a frame over twice ``max_side`` is decoded at a
  reduced DCT scale first. Anything else goes through pydicom.
- **Multi-frame**: one query for the first frame (notice naming the ignored frames) by default;
  ``all_frames=True`` gives one query per frame (``frame_number`` set).
- **Text**: from the Basic Text / Enhanced / Comprehensive (3D) SRs that reference the image by
  SOP Instance UID (Current Requested Procedure Evidence or IMAGE content items; Pertinent Other
  Evidence, where a follow-up lists the baseline it compares with, only in an SR that names nothing
  else): those of the image's own study when one of them is (another study's SR that references it
  too is left out, with a notice), else whatever Study Instance UID they say (so an image whose Study
  UID had to be repaired keeps its report; an image with a Study UID of its own is told the report is
  another study's); never an SR of another patient (Patient ID; notice); an
  image without Patient ID takes its report with a notice naming the report's patient. An SR that
  references images gives its text to those images only. An SR that another one replaces (its
  Predecessor Documents Sequence names it: an amended report) is not used (reported). An image
  no SR references gets the text of its study's only SR that references no image (the notice says how
  many other images of the study share it). TEXT items give their
  value; CODE items give their meaning (``Concept: meaning`` unless the concept is a generic
  Finding). Context items (HAS OBS/ACQ CONTEXT, HAS CONCEPT MOD) are skipped, and so are the
  library labels written by :mod:`monai_cir.dicom.dicomize` (reference diagnosis, case id,
  collection), which are returned as ``diagnosis`` / ``case_id`` / ``collection`` instead.
  Similar-cases SRs written by :mod:`monai_cir.dicom.sr` are ignored. No SR or empty text: an
  image-only query (``text == ""``) with a notice.
- **Bad input** never stops the scan; each file gets an :class:`InputProblem`: not DICOM, a
  truncated file (the data set ends inside an element), no SOP Class / SOP Instance UID,
  unsupported SOP class (this app's own Encapsulated PDF says so), no or empty pixel data, an
  invalid Number of Frames, undecodable pixel data, an image under :data:`MIN_IMAGE_SIDE` pixels a
  side, a JPEG / JPEG-LS / JPEG 2000 frame without its end marker (a truncated stream, which
  decoders pad with grey instead of failing), a frame whose pixels are constant or nearly so
  (blank), any other error reading an image; a report SR whose image is not in the input, one damaged
  inside (an element pydicom cannot read once it is used, a text value holding what no text holds or a
  private element without its creator: a damaged length; a file cut inside its content tree: the images
  of its study say so), one an amended report replaces. A VL Photographic image that neither a
  dermoscope attribute nor a description says is dermoscopy is answered with a notice (a clinical
  photograph is VL Photographic too). A
  greyscale image is answered, with a notice (the model was trained on colour dermoscopy); so is a dim colour
  image (more than 8 bits, values spanning under half the stored range: stretched by its own range).
- **One file per instance**: the same SOP Instance UID received twice with the same patient, study
  and pixels (an SR: the same content) is read once (notice); the same UID on instances that differ
  (an image and an SR, another patient, study, report or pixels) is a collision upstream, and none of
  them is used (each reported, naming what differs; the image of a study whose SR collided says so),
  so no patient's report becomes another's query text. A similar-cases SR or PDF of an earlier answer
  sent back is reported as such.
- Missing Study / Series Instance UID and the Type 2 patient/study attributes (and birth date,
  study date / time or sex with a value DICOM does not allow, emptied) are **repaired** in the
  returned dataset (the Study UID from an SR that references the image when there is one, else
  deterministic values derived from the SOP Instance UID) with a notice, so that the answer can
  still be written and filed. A missing Patient ID / Name stays empty (notice): the answer files
  under the image's own patient, not a made-up one. An identifying value that breaks its VR (an
  80-character or multi-valued Patient ID, control characters in a name, an invalid Study, Series or
  SOP Instance UID) is copied as received, so the answer files with its study, with a notice that a PACS checking values
  may refuse it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DermoscopicPhotographyImageStorage,
    VLPhotographicImageStorage,
)

from ..data.preprocess import BLANK_RANGE, GREYSCALE_NOTICE, MIN_IMAGE_SIDE, blank_spread, is_grey  # noqa: F401 (BLANK_RANGE: the reader's API)
from . import codes as C

__all__ = [
    "IMAGE_SOP_CLASSES",
    "SR_SOP_CLASSES",
    "DermoscopyQuery",
    "DicomScan",
    "InputProblem",
    "SRText",
    "dicom_text",
    "image_label",
    "read_case_image",
    "read_dicom_folder",
    "read_sr_text",
]

logger = logging.getLogger(__name__)

IMAGE_SOP_CLASSES: dict[str, str] = {
    str(DermoscopicPhotographyImageStorage): "DMS",
    str(VLPhotographicImageStorage): "XC",
}
SR_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.35": "Extensible SR",
}
_CONTEXT_RELATIONSHIPS = {"HAS OBS CONTEXT", "HAS ACQ CONTEXT", "HAS CONCEPT MOD"}
_GENERIC_FINDING = {("DCM", "121071"), ("DCM", "121070"), ("DCM", "111402")}
# what an item's modifier or property says of the item itself (a finding and its "Presence = Absent"): written as the
# item's value, "Blue-whitish veil: Absent", which the findings reader reads; any other modifier goes in brackets after
# the item on its line ("Blue-whitish veil (Certainty: Possible)"), where a doubt keeps the finding unread
_ITEM_MODIFIERS = {"HAS CONCEPT MOD", "HAS PROPERTIES"}
_PRESENCE_VALUES = {"absent", "present", "not present", "no", "yes", "negative", "positive", "not detected", "detected",
                    "not seen", "seen", "not identified", "identified", "true", "false", "indeterminate", "equivocal"}
DEFAULT_MAX_SIDE = 2048
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
# transfer syntaxes whose frames end with an end marker (JPEG EOI / JPEG 2000 EOC, both FFD9)
_MARKER_TERMINATED = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
}
_ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
_DEFER_SIZE = "256 KB"  # values larger than this (pixel data) are read from the file when used


@dataclass(frozen=True)
class InputProblem:
    """A file that could not be used, and why (the batch goes on)."""

    path: str
    message: str

    def __post_init__(self) -> None:
        if not self.message:
            raise ValueError("InputProblem.message must not be empty")

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class DermoscopyQuery:
    """One composed query: a dermoscopy image (or frame) with the text of its study's report.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        text: the report text ("" for an image-only query).
        text_source: ``"sr"`` (an SR referencing the image), ``"study-sr"`` (the study's only SR,
            which does not reference it) or ``"none"``.
        notices: what was repaired, guessed or left out, for the user.
        site: a site of :data:`monai_cir.data.sites.SITES` (``"unknown"`` when absent).
        dataset: the image's dataset without pixel data (repaired attributes applied), for
            references and as the SR's evidence.
        diagnosis / case_id / collection / confirmation: library labels from a dicomized case's SR
            (None when absent).
        frame_number: 1-based frame of a multi-frame instance (None for single-frame).
        sr_uids: SOP Instance UIDs of the SRs the text came from.
    """

    image: np.ndarray
    text: str
    text_source: str
    notices: list[str]
    site: str
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    source_path: str
    dataset: Dataset
    diagnosis: str | None = None
    case_id: str | None = None
    collection: str | None = None
    confirmation: str | None = None
    frame_number: int | None = None
    sr_uids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        image = self.image
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"DermoscopyQuery.image must be an (H, W, 3) uint8 array, got "
                f"{getattr(image, 'shape', type(image))} {getattr(image, 'dtype', '')}"
            )
        if self.text_source not in ("sr", "study-sr", "none"):
            raise ValueError(f"DermoscopyQuery.text_source must be 'sr', 'study-sr' or 'none', got {self.text_source!r}")
        for name in ("study_uid", "series_uid", "sop_instance_uid", "sop_class_uid"):
            if not getattr(self, name):
                raise ValueError(f"DermoscopyQuery.{name} must not be empty")
        if self.frame_number is not None and self.frame_number < 1:
            raise ValueError(f"DermoscopyQuery.frame_number must be >= 1, got {self.frame_number}")

    @property
    def is_image_only(self) -> bool:
        return not self.text.strip()


@dataclass
class DicomScan:
    """What :func:`read_dicom_folder` found: queries, and the files it could not use."""

    queries: list[DermoscopyQuery] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)
    files: int = 0  # files read (hidden files and DICOMDIR not counted)

    def __len__(self) -> int:
        return len(self.queries)


# ------------------------------------------------------------------------------------------------
# SR text
# ------------------------------------------------------------------------------------------------
@dataclass
class SRText:
    """The text, references and library labels of one SR document."""

    path: str
    sop_instance_uid: str
    study_uid: str
    sop_class_uid: str
    patient_id: str = ""
    texts: list[str] = field(default_factory=list)
    references: set[str] = field(default_factory=set)  # the instances the report is about
    reference_studies: dict[str, str] = field(default_factory=dict)  # referenced SOP Instance UID -> its Study UID (evidence)
    predecessors: set[str] = field(default_factory=set)  # the SRs this one amends or replaces (Predecessor Documents)
    diagnosis: str | None = None
    case_id: str | None = None
    collection: str | None = None
    confirmation: str | None = None
    is_similar_cases: bool = False

    @property
    def text(self) -> str:
        return "\n".join(t for t in self.texts if t.strip())


def _code_key(seq: Iterable[Dataset] | None) -> tuple[str, str, str] | None:
    for item in seq or []:
        value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue") or ""
        return (str(item.get("CodingSchemeDesignator", "")), str(value), str(item.get("CodeMeaning", "")))
    return None


def _is(key: tuple[str, str, str] | None, code) -> bool:
    """``key`` is ``code``, or the legacy private code of the same concept (SRs of earlier releases)."""
    return key is not None and C.same_concept(key[0], key[1], code)


def read_sr_text(ds: Dataset, path: str = "") -> SRText:
    """Text, references and library labels of an SR dataset (Basic Text, Enhanced, Comprehensive)."""
    info = SRText(
        path=path,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        patient_id=dicom_text(ds.get("PatientID")).strip(),
    )
    info.is_similar_cases = _is(_code_key(ds.get("ConceptNameCodeSequence")), C.SIMILAR_CASES_REPORT)
    evidence: dict[str, set[str]] = {}
    for seq_name in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence", "PredecessorDocumentsSequence"):
        listed = evidence.setdefault(seq_name, set())
        for study in ds.get(seq_name, []) or []:
            study_uid = str(study.get("StudyInstanceUID", "") or "")
            for series in study.get("ReferencedSeriesSequence", []) or []:
                for inst in series.get("ReferencedSOPSequence", []) or []:
                    if "ReferencedSOPInstanceUID" in inst:
                        listed.add(str(inst.ReferencedSOPInstanceUID))
                        if study_uid and seq_name != "PredecessorDocumentsSequence":
                            info.reference_studies[str(inst.ReferencedSOPInstanceUID)] = study_uid
    info.references.update(evidence["CurrentRequestedProcedureEvidenceSequence"])
    info.predecessors = evidence["PredecessorDocumentsSequence"]

    def modifiers(item: Dataset) -> list[tuple[int, str, str]]:
        """(position, name, value) of the modifiers and properties of a TEXT or CODE item, in its ContentSequence."""
        out = []
        for i, child in enumerate(item.get("ContentSequence", []) or []):
            if str(child.get("RelationshipType", "")) not in _ITEM_MODIFIERS:
                continue
            child_type, child_name = str(child.get("ValueType", "")), _code_key(child.get("ConceptNameCodeSequence"))
            value = (_code_key(child.get("ConceptCodeSequence")) or ("", "", ""))[2] if child_type == "CODE" else \
                str(child.get("TextValue", "") or "") if child_type == "TEXT" else ""
            value = _checked_text(value, "Code Meaning (0008,0104)" if child_type == "CODE" else "Text Value (0040,A160)").strip()
            if value:
                out.append((i, (child_name or ("", "", ""))[2].strip(), value))
        return out

    def with_modifiers(line: str, mods: list[tuple[int, str, str]]) -> str:
        if len(mods) == 1 and mods[0][2].lower() in _PRESENCE_VALUES and ":" not in line:
            return f"{line}: {mods[0][2]}"
        return f"{line} ({'; '.join(f'{n}: {v}' if n else v for _, n, v in mods)})" if mods else line

    def walk(items: Iterable[Dataset]) -> None:
        for item in items or []:
            _check_item(item)
            rel = str(item.get("RelationshipType", ""))
            vtype = str(item.get("ValueType", ""))
            name = _code_key(item.get("ConceptNameCodeSequence"))
            mods = modifiers(item) if vtype in ("TEXT", "CODE") and rel not in _CONTEXT_RELATIONSHIPS else []
            if vtype in ("IMAGE", "COMPOSITE", "WAVEFORM"):
                for ref in item.get("ReferencedSOPSequence", []) or []:
                    if "ReferencedSOPInstanceUID" in ref:
                        info.references.add(str(ref.ReferencedSOPInstanceUID))
            elif rel in _CONTEXT_RELATIONSHIPS:
                pass
            elif vtype == "TEXT":
                value = _checked_text(str(item.get("TextValue", "") or ""), "Text Value (0040,A160)").strip()
                if _is(name, C.CASE_IDENTIFIER):
                    info.case_id = value or None
                elif _is(name, C.CASE_COLLECTION):
                    info.collection = value or None
                elif value:
                    info.texts.append(with_modifiers(value, mods))
            elif vtype == "CODE":
                value = _code_key(item.get("ConceptCodeSequence"))
                if value is None:
                    pass
                elif _is(name, C.DIAGNOSIS) or _is(name, C.LEGACY_REFERENCE_DIAGNOSIS):
                    info.diagnosis = C.diagnosis_from_code(*value)
                elif _is(name, C.DIAGNOSIS_CONFIRMATION):
                    info.confirmation = C.confirmation_from_code(*value)
                elif _checked_text(value[2], "Code Meaning (0008,0104)"):
                    generic = name is None or (name[0], name[1]) in _GENERIC_FINDING
                    info.texts.append(with_modifiers(value[2] if generic else f"{name[2]}: {value[2]}", mods))
            if "ContentSequence" in item:
                used = {i for i, _, _ in mods}  # the modifiers written on the item's line, not again as lines of their own
                walk([child for i, child in enumerate(item.ContentSequence) if i not in used])

    walk(ds.get("ContentSequence", []))
    # Pertinent Other Evidence: what a report lists beside its subject, such as the baseline image a follow-up
    # compares with, so not the images it describes; unless it names nothing else (a report written in a study
    # of its own lists the images it describes there, as highdicom does for evidence of another study)
    if not info.references:
        info.references = set(evidence["PertinentOtherEvidenceSequence"])
    return info


# control characters no report text holds (TAB, LF, FF, CR and ESC, which ISO 2022 character sets use, are allowed)
_NOT_TEXT = {chr(c) for c in range(32) if chr(c) not in "\t\n\f\r\x1b"} | {"\x7f", "\ufffd"}


def _checked_text(value: str, what: str) -> str:
    """``value``, or ValueError when it holds what no text does: a value whose length was damaged takes in the
    bytes of the elements after it (NUL, binary) or loses its end to them, and either would read as a finding."""
    bad = sorted({c for c in value if c in _NOT_TEXT})
    if bad:
        shown = ", ".join("U+%04X" % ord(c) for c in bad[:4])
        raise ValueError(f"its {what} holds bytes that are not text ({shown}): the value's length is damaged")
    return value


def _check_item(item: Dataset) -> None:
    """ValueError for a content item that holds a private element without its Private Creator: what the bytes
    of a value cut short by a damaged length read as (the rest of the text parsed as tags)."""
    for element in item:
        tag = element.tag
        if tag.group % 2 and tag.element >= 0x1000 and (tag.group, tag.element >> 8) not in item:
            raise ValueError(f"a content item holds element {tag} without its Private Creator ({tag.group:04X},00{tag.element >> 8:02X}): "
                             "a value before it has a damaged length")


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------
def _site(ds: Dataset, notices: list[str]) -> str:
    """The image's anatomical site in the project vocabulary (Anatomic Region Sequence, then Body
    Part Examined; see :func:`monai_cir.sites_condition.site_from_dicom`)."""
    from ..sites_condition import site_from_dicom

    site, notice = site_from_dicom(ds)
    if notice:
        notices.append(notice)
    return site


def _repair(ds: Dataset, notices: list[str], study_uid_from_sr: str | None = None) -> None:
    """Fill missing identifying attributes: the Study UID from an SR that references the image
    (``study_uid_from_sr``) when there is one, else deterministically from the SOP Instance UID."""
    seed = str(ds.SOPInstanceUID)
    if study_uid_from_sr and not str(ds.get("StudyInstanceUID", "") or "").strip():
        ds.StudyInstanceUID = study_uid_from_sr
        notices.append(f"missing Study Instance UID: taken from the SR that references this image ({study_uid_from_sr})")
    # no Patient ID / Name: the answer carries none either (both Type 2). A made-up ID would file the
    # answer under another patient than its own study's images, and a PACS keys a study by both
    if not str(ds.get("PatientID", "") or "").strip():
        ds.PatientID = ""
        notices.append("no Patient ID: the answer carries none either, as the image it answers")
    if not str(ds.get("PatientName", "") or "").strip():
        ds.PatientName = ""
    if not str(ds.get("StudyInstanceUID", "") or "").strip():
        ds.StudyInstanceUID = C.derived_uid(seed, "study")
        notices.append(f"missing Study Instance UID: generated {ds.StudyInstanceUID}")
    if not str(ds.get("SeriesInstanceUID", "") or "").strip():
        ds.SeriesInstanceUID = C.derived_uid(seed, "series")
        notices.append(f"missing Series Instance UID: generated {ds.SeriesInstanceUID}")
    # Type 2 attributes the answer's SR copies: present, empty when unknown, and emptied when their
    # value is not one DICOM allows (the SR and PDF writers refuse it, and the answer would be lost)
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, "")
        elif keyword in _VALID_VALUES:
            value = str(ds.get(keyword) or "").strip()
            valid, rule = _VALID_VALUES[keyword]
            if value and not valid(value):
                setattr(ds, keyword, "")
                notices.append(f"invalid {_NAMES[keyword]} {value!r} ({rule}): left empty in the answer")
    notices.extend(_copied_as_received(ds))
    notices.extend(_descriptions_made_valid(ds))


# descriptive attributes the answer copies that do not decide where it is filed: (keyword, name, maximum bytes of one
# value as UTF-8, which the answer is written in; a validator counts bytes)
_MADE_VALID = (("StudyDescription", "Study Description", 64), ("ReferringPhysicianName", "Referring Physician's Name", 64 * 5 + 4))


def _descriptions_made_valid(ds: Dataset) -> list[str]:
    """Made valid, with a notice, when their value breaks DICOM's rules (several values where one is allowed; longer
    than their VR allows once written as UTF-8): copied as received, the answer would be refused by a PACS that checks
    values, and they only describe the study."""
    from pydicom.multival import MultiValue

    notices = []
    for keyword, name, limit in _MADE_VALID:
        if keyword not in ds or ds[keyword].value in (None, ""):
            continue
        value = ds[keyword].value
        if isinstance(value, MultiValue) and len(value) > 1:
            notices.append(f"{name} has {len(value)} values where one is allowed: the answer carries the first, {dicom_text(value[0])!r}")
            value = value[0]
            setattr(ds, keyword, value)
        text = str(value)
        if keyword == "ReferringPhysicianName":  # PN: each of the 5 components of each group at most 64 characters
            too_long = any(len(component.encode()) > 64 for group in text.split("=") for component in group.split("^"))
        else:
            too_long = len(text.encode()) > limit
        if too_long:
            cut = "^".join(c.encode()[:64].decode(errors="ignore") for c in text.split("=")[0].split("^")) if keyword == "ReferringPhysicianName" \
                else text.encode()[:limit].decode(errors="ignore")
            setattr(ds, keyword, cut.rstrip())
            notices.append(f"{name} is longer than DICOM allows ({len(text)} characters, {len(text.encode())} bytes as UTF-8): cut in the answer")
    return notices


def image_label(ds: Dataset, frame_number: int | None = None) -> str:
    """How a reader finds a query image in its study: ``series 1 image 2`` (Series and Instance Number, ``frame 3`` of a
    multi-frame image), falling back on the end of its SOP Instance UID when the numbers are missing. The answer's
    series description and the PDF's header carry it, so that answers to several images of one study are told apart."""
    series, instance = (str(ds.get(k, "") or "").strip() for k in ("SeriesNumber", "InstanceNumber"))
    parts = [f"series {series}"] if series else []
    parts.append(f"image {instance}" if instance else f"image ...{str(ds.get('SOPInstanceUID', ''))[-8:]}")
    if frame_number is not None:
        parts.append(f"frame {frame_number}")
    return " ".join(parts)


# identifying attributes the answer copies as received even when they break their VR's rules: repaired, the answer
# would be filed under another patient or study than the images it answers; the reader is told instead
_COPIED_AS_RECEIVED = {"PatientID": "Patient ID", "PatientName": "Patient's Name", "AccessionNumber": "Accession Number",
                       "StudyID": "Study ID", "StudyInstanceUID": "Study Instance UID", "SeriesInstanceUID": "Series Instance UID",
                       "SOPInstanceUID": "SOP Instance UID"}


def _copied_as_received(ds: Dataset) -> list[str]:
    """A notice per attribute of :data:`_COPIED_AS_RECEIVED` whose value breaks DICOM's rules for it (length,
    characters, a UID's form, several values where one is allowed): the answer carries it unchanged, and a PACS
    that checks values may refuse it."""
    from pydicom import config
    from pydicom.multival import MultiValue
    from pydicom.valuerep import validate_value

    notices = []
    for keyword, name in _COPIED_AS_RECEIVED.items():
        if keyword not in ds or ds[keyword].value in (None, ""):
            continue
        element = ds[keyword]
        values = list(element.value) if isinstance(element.value, MultiValue) else [element.value]
        reasons = [f"{len(values)} values where one is allowed"] if len(values) > 1 else []
        for value in values:
            text = str(value)
            if any(ord(c) < 32 and c != "\x1b" for c in text):  # ESC starts an ISO 2022 escape, allowed
                reasons.append("control characters")
            try:
                validate_value(element.VR, text, config.RAISE)
            except ValueError as err:
                reasons.append(str(err).split(". Please see")[0].rstrip("."))
        if reasons:
            shown = dicom_text(element.value)
            shown = shown if len(shown) <= 40 else shown[:40] + "..."
            shown = "".join(c if ord(c) >= 32 else "?" for c in shown)  # as the reader can print it
            notices.append(f"{name} \"{shown}\" breaks DICOM's rules for it ({'; '.join(dict.fromkeys(reasons))}): copied as received "
                           "so that the answer is filed with its study; a PACS that checks values may refuse the answer")
    return notices


def dicom_text(value: Any) -> str:
    """A DICOM value as text: a multi-valued one (``12345\\67890``, invalid for a Patient ID but sent) as DICOM writes
    it, backslash-separated, not as Python's list; None as ""."""
    if value is None:
        return ""
    from pydicom.multival import MultiValue

    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _is_date(value: str) -> bool:
    import datetime

    try:
        datetime.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return len(value) == 8


def _is_time(value: str) -> bool:
    import re

    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?", value)
    if match is None or (match.group(4) and not match.group(3)):
        return False
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups()[:3])
    return hours < 24 and minutes < 60 and seconds < 61


_VALID_VALUES = {
    "PatientBirthDate": (_is_date, "a date is YYYYMMDD"),
    "StudyDate": (_is_date, "a date is YYYYMMDD"),
    "StudyTime": (_is_time, "a time is HHMMSS"),
    "PatientSex": (lambda v: v in ("M", "F", "O"), "M, F or O"),
}
_NAMES = {"PatientBirthDate": "Patient's Birth Date", "StudyDate": "Study Date", "StudyTime": "Study Time", "PatientSex": "Patient's Sex"}


_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


# attributes of the Dermoscopic Image Module (PS3.3 C.8.12.13): a VL Photographic image carrying one was taken with a dermoscope
_DERMOSCOPE_ATTRIBUTES = ("LightSourcePolarization", "EmitterColorTemperature", "ContactMethod", "ImmersionMedia", "OpticalMagnificationFactor")
# where a VL Photographic image's sender writes what it is (the image's and its series' own words: a study described as
# "Dermoscopy" also holds the clinical overview photograph of the lesion)
_DESCRIPTIONS = ("ImageType", "SeriesDescription", "ImageComments", "ProtocolName",
                 "AcquisitionDeviceProcessingDescription", "DerivationDescription")
_DERMOSCOPY_WORDS = ("dermoscop", "dermatoscop", "epilumin")  # dermoscopy / dermatoscopic / epiluminescence, any case
NOT_SAID_DERMOSCOPY_NOTICE = (
    "VL Photographic image (Modality XC) that nothing says is dermoscopy (no dermoscope attribute, no 'dermoscopy' in its "
    "descriptions): answered as one; if it is a clinical (close-up or overview) photograph, the similar cases mean nothing")


def _says_dermoscopy(ds: Dataset) -> bool:
    """Whether the image is dermoscopy as its header says: a Dermoscopic Photography instance (or Modality DMS), or a
    VL Photographic one with a dermoscope attribute or a description naming dermoscopy (older archives store
    dermoscopy as VL Photographic; a clinical photograph of the same study is VL Photographic too)."""
    if str(ds.get("SOPClassUID", "")) != str(VLPhotographicImageStorage) or str(ds.get("Modality", "")).upper() == "DMS":
        return True
    if any(keyword in ds for keyword in _DERMOSCOPE_ATTRIBUTES):
        return True
    words = " ".join(dicom_text(ds.get(keyword)) for keyword in _DESCRIPTIONS).lower()
    return any(word in words for word in _DERMOSCOPY_WORDS) or "dms" in words.replace("\\", " ").split()


def _frame_count(ds: Dataset) -> int:
    """Number of Frames (1 when absent); a value that is not a positive whole number is an error
    that names the attribute (the image is then reported and skipped)."""
    value = ds.get("NumberOfFrames", 1)
    try:
        count = int(value if value not in (None, "") else 1)
    except (TypeError, ValueError):
        raise ValueError(f"invalid Number of Frames (0028,0008) {str(value)!r}: not a whole number") from None
    if count < 1:
        raise ValueError(f"invalid Number of Frames (0028,0008) {count}: must be at least 1")
    return count


def _decoded_frames(ds: Dataset, indices: list[int], max_side: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """The frames ``indices`` (0-based) as ``(image, (rows, columns) as stored)``, image (H, W, 3)
    uint8 RGB: colour JPEG Baseline frames through Pillow (:func:`_pillow_baseline_frames`), the
    rest through pydicom."""
    fast = _pillow_baseline_frames(ds, indices, max_side)
    if fast is not None:
        return fast
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * columns > MAX_DECODED_PIXELS:  # a large JPEG the reduced-scale path could not read: not decoded whole
        raise ValueError(f"{columns}x{rows} pixels cannot be read at a reduced scale and are more than the app decodes whole "
                         f"({MAX_DECODED_PIXELS / 1e6:.0f} Mpx)")
    frames = _to_rgb_frames(ds, np.asarray(ds.pixel_array))
    return [(frames[i], frames[i].shape[:2]) for i in indices]


def _pillow_baseline_frames(ds: Dataset, indices: list[int], max_side: int) -> list[tuple[np.ndarray, tuple[int, int]]] | None:
    """Colour JPEG Baseline frames decoded by Pillow (libjpeg: the YCbCr -> RGB conversion in C, and
    only the frames asked for); None when the instance is not one (pydicom decodes it) or Pillow
    cannot read a frame as the header describes it (pydicom then reports what is wrong).

    The same decoder that read the JPEG files the training and the index saw, so a query carried
    as-is by :mod:`monai_cir.dicom.dicomize` has the pixels the network was trained on. A frame at
    least twice ``max_side`` on both sides is decoded at the largest DCT scale (1/2, 1/4, 1/8) that
    keeps it at least ``max_side`` on both sides (``Image.draft``); the caller downscales the rest of the way."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if (
        syntax != _JPEG_BASELINE
        or int(ds.get("SamplesPerPixel", 0) or 0) != 3
        or str(ds.get("PhotometricInterpretation", "")) not in ("YBR_FULL_422", "YBR_FULL")
    ):
        return None
    import io

    from PIL import Image
    from pydicom.encaps import generate_frames

    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = _frame_count(ds)
    _check_jpeg_frame_count(ds, frames)
    wanted, out = set(indices), {}
    try:
        for i, stream in enumerate(generate_frames(ds.PixelData, number_of_frames=frames)):
            if i not in wanted:
                continue
            with _pillow_pixel_limit(MAX_JPEG_PIXELS):  # the guard is checked when the frame is opened
                img = Image.open(io.BytesIO(stream))
            with img:
                if img.format != "JPEG" or img.mode != "RGB" or img.size != (columns, rows):
                    return None
                if min(columns, rows) >= 2 * max_side:
                    img.draft("RGB", (max_side, max_side))
                out[i] = (np.asarray(img.convert("RGB")), (rows, columns))
            if len(out) == len(wanted):
                break
    except Exception:  # noqa: BLE001 (pydicom's decoder says what is wrong with the stream)
        return None
    return [out[i] for i in indices] if len(out) == len(wanted) else None


# the largest image decoded whole (Rows x Columns of a frame): a bigger one is reported, not risked (a 20000 x 15000
# frame decoded at full size took 7.8 GB; a process killed for memory stops the whole batch). A colour JPEG Baseline
# frame is decoded at a reduced DCT scale (Image.draft), so it may be larger.
MAX_DECODED_PIXELS = 100_000_000
# the most a dermoscopy image's long side may exceed its short one (they are 1:1 to 16:9 as taken)
MAX_ASPECT_RATIO = 4
MAX_JPEG_PIXELS = 1_000_000_000
_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_pixel_limit(limit: int) -> Iterator[None]:
    """Pillow's decompression-bomb ceiling raised to ``limit`` pixels while a frame is opened: Pillow refuses frames
    over ~179 Mpx, and the reader then fell back to pydicom's full-size decode of the frame Pillow would have read
    at 1/8 scale. The reader's own ceilings (:data:`MAX_JPEG_PIXELS`) hold instead."""
    from PIL import Image

    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(saved or 0, limit // 2)  # Pillow raises above twice the limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _check_jpeg_frame_count(ds: Dataset, frames: int) -> None:
    """Raise ValueError when an encapsulated JPEG's streams (fragments that start a JPEG: SOI and a marker) are not as
    many as Number of Frames says: fewer is a damaged file whose missing frames were reported as "ignored", more a
    header that hides frames (frame 1 was answered as the image)."""
    from pydicom.encaps import generate_fragments

    try:
        starts = sum(1 for fragment in generate_fragments(ds.PixelData) if fragment[:3] == b"\xff\xd8\xff")
    except Exception:  # noqa: BLE001 (not encapsulated as expected: the decoder says what is wrong)
        return
    if starts and starts != frames:
        raise ValueError(f"Pixel Data holds {starts} JPEG frame(s), Number of Frames (0028,0008) says {frames}")


def _to_rgb_frames(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB from a decoded pixel array."""
    frames = _frame_count(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    per_frame = 3 if samples == 3 else 2  # (H, W, 3) or (H, W)
    if frames == 1 and arr.ndim == per_frame:
        arr = arr[None]
    if arr.ndim != per_frame + 1 or arr.shape[0] != frames:
        held = arr.shape[0] if arr.ndim == per_frame + 1 else f"an array of shape {tuple(arr.shape)}, not {frames}"
        raise ValueError(f"Pixel Data holds {held} frame(s), Number of Frames (0028,0008) says {frames}")
    pi = str(ds.get("PhotometricInterpretation", ""))
    if pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        if arr.dtype != np.uint8:  # the table's entries by their own bit depth, as a viewer shows them (not each image's range)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
            arr = np.clip(np.rint(arr.astype(np.float32) * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)
    elif samples == 1 and pi == "MONOCHROME1":
        arr = arr.max() - arr if np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 else -arr
    if samples == 3 and arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    share = _stored_range_share(ds, arr)
    if share is not None and share >= DIM_RANGE_SHARE:
        # colour by its stored range, as a viewer shows it (no windowing for colour) and as the same image in 8
        # bits reads: stretching each image by its own minimum and maximum shifted its colours. A dim one (8-bit
        # values in a 16-bit store, say) is stretched below, or it would reach the model (and the blank check) as
        # a few grey levels; it says so (_dim_notice). Greyscale keeps its own range, as a viewer's window shows it.
        bits = int(ds.BitsStored)
        arr = np.clip(np.rint(arr.astype(np.float32) * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)
    from ..data.preprocess import to_rgb_uint8

    return np.stack([to_rgb_uint8(frame) for frame in arr])


def _truncation(path: Path) -> str | None:
    """Why a DICOM file is truncated (its data set ends inside an element), None when complete.

    pydicom reads a cut file without an error and returns the elements before the cut, so a cut
    file would otherwise be reported as missing whatever came after it. Values are skipped, not
    read (``defer_size``), so the check costs a walk over the element headers."""
    from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble

    size, tail = path.stat().st_size, b""
    try:
        with open(path, "rb") as fp:
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
            if len(meta) == 0:  # no file meta at all: not a cut, a file that is not Part 10 (pydicom's reading says more)
                return None
            if "TransferSyntaxUID" not in meta:
                return f"truncated DICOM file ({size} bytes): it ends inside the file meta information"
            syntax = UID(str(meta.TransferSyntaxUID))
            if syntax == "1.2.840.10008.1.2.1.99":  # deflated: the stream is not walkable here
                return None
            end = fp.tell()
            for element in data_element_generator(fp, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=64):
                end = fp.tell() if element.length == 0xFFFFFFFF else element.value_tell + element.length
                if end > size:
                    return f"truncated DICOM file ({size} bytes): element {element.tag} needs {end - size} more bytes"
            if end < size:
                fp.seek(end)
                tail = fp.read()
    except EOFError:
        return f"truncated DICOM file ({size} bytes): it ends inside a sequence or the encapsulated pixel data"
    except Exception:  # noqa: BLE001 (not walkable: leave the verdict to pydicom's own reading)
        return None
    if end < size and tail.strip(b"\x00"):  # trailing zero padding is not a cut
        return f"truncated DICOM file ({size} bytes): the last {size - end} bytes are an incomplete element"
    return None


def _truncated_frames(ds: Dataset) -> list[int]:
    """1-based frames of a JPEG / JPEG-LS / JPEG 2000 instance whose stream lacks its end marker
    (FFD9): a truncated stream, which decoders pad with grey instead of raising."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax not in _MARKER_TERMINATED:
        return []
    from pydicom.encaps import generate_frames

    frames = _frame_count(ds)
    bad = []
    try:
        for number, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames), start=1):
            if not frame.rstrip(b"\x00").endswith(b"\xff\xd9"):
                bad.append(number)
    except Exception:  # noqa: BLE001 (unparseable encapsulation: the decoder reports it)
        return []
    return bad


# a wider-than-8-bit image whose values span less than this share of its stored range is called dim in a notice
DIM_RANGE_SHARE = 0.5


def _stored_range_share(ds: Dataset, values: np.ndarray) -> float | None:
    """For a colour image stored in 9-16 unsigned bits (not PALETTE COLOR: its table's output is 16-bit whatever
    the index's Bits Stored), the share of the Bits Stored range its values span; None for any other image."""
    bits = int(ds.get("BitsStored", 0) or 0)
    if (int(ds.get("SamplesPerPixel", 1) or 1) != 3 or str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR"
            or not 8 < bits <= 16 or not np.issubdtype(values.dtype, np.unsignedinteger)):
        return None
    return (float(values.max()) - float(values.min())) / float(2**bits - 1)


def _dim_notice(ds: Dataset) -> str | None:
    """The notice of a colour image stored in more than 8 bits whose values span under :data:`DIM_RANGE_SHARE`
    of its Bits Stored range (8-bit values in a 16-bit store, say): :func:`_to_rgb_frames` stretched it by its
    own range, so the search saw more contrast than a viewer shows. None otherwise (8-bit, greyscale: read as a
    viewer's window shows them)."""
    if int(ds.get("BitsAllocated", 8) or 8) <= 8:
        return None
    bits = int(ds.get("BitsStored", 0) or 0)
    share = _stored_range_share(ds, np.asarray(ds.pixel_array))  # decoded already (pydicom keeps it): no second decode
    if share is None or share >= DIM_RANGE_SHARE:
        return None
    return (f"dim image: its values span {100 * share:.0f}% of its {bits}-bit range, so its contrast was stretched to the full "
            "range for the search: it looks darker in a viewer than what the search compared")


def _is_greyscale(ds: Dataset, frame: np.ndarray) -> bool:
    if int(ds.get("SamplesPerPixel", 1) or 1) == 1 and str(ds.get("PhotometricInterpretation", "")) != "PALETTE COLOR":
        return True
    return is_grey(frame)


def _downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for file in sorted(path.rglob("*")):
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts):
            yield file


def read_case_image(path: str | Path, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """A library case's image, (H, W, 3) uint8 RGB: its DICOM file (an index built with ``--dicom``, read as a query
    would be) or its image file (:func:`monai_cir.data.preprocess.read_rgb`). Raises ValueError naming the file and
    what is wrong (FileNotFoundError when it is missing)."""
    from pydicom.misc import is_dicom

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if not is_dicom(path):  # the "DICM" prefix read_dicom_folder requires
        from ..data.preprocess import read_rgb

        return read_rgb(path)
    scan = read_dicom_folder(path, max_side=max(int(max_side), 16))
    if not scan.queries:
        why = "; ".join(problem.message for problem in scan.problems) or "no dermoscopy image in it"
        raise ValueError(f"cannot read the DICOM image {path}: {why}")
    return scan.queries[0].image


def read_dicom_folder(path: str | Path, *, max_side: int = DEFAULT_MAX_SIDE, all_frames: bool = False) -> DicomScan:
    """Scan a file or folder (recursively) for dermoscopy queries. See the module docstring.

    Args:
        path: a DICOM file or a folder of them (any names, any depth; hidden files skipped).
        max_side: images whose longer side exceeds this are downscaled to it.
        all_frames: one query per frame of a multi-frame instance (default: first frame only).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"DICOM input not found: {root}")
    if max_side < 16:
        raise ValueError(f"max_side must be at least 16, got {max_side}")
    scan = DicomScan()
    images: list[tuple[str, Dataset]] = []
    srs: list[SRText] = []
    unreadable_srs: list[tuple[str, str]] = []  # (path, its Study UID or "") of each report SR that could not be read
    seen_uids: set[str] = set()  # every instance read, whatever its class (an SR's image may be one refused)
    for file in _files(root):
        where = str(file)
        if file.name.upper() == "DICOMDIR":
            continue
        scan.files += 1
        try:
            # the pixel data is read when an image's turn comes (and let go after it): held for every file of a
            # batch, a folder of large images would need their whole size in memory at once
            ds = pydicom.dcmread(file, defer_size=_DEFER_SIZE)
        except InvalidDicomError:
            scan.problems.append(InputProblem(where, "not a DICOM file (no DICM prefix / preamble): skipped"))
            continue
        except Exception as err:  # truncated headers, bad VRs...
            truncated = _truncation(file)
            scan.problems.append(InputProblem(where, f"{truncated}: skipped" if truncated else f"unreadable DICOM file ({type(err).__name__}: {err}): skipped"))
            continue
        truncated = _truncation(file)
        if truncated:
            scan.problems.append(InputProblem(where, f"{truncated}; re-send the complete file: skipped"))
            if _sop_class_of_damaged(ds) in SR_SOP_CLASSES:  # its study's images say their report could not be read
                unreadable_srs.append((where, _study_of_damaged(ds)))
            continue
        sop_class = ""
        try:  # pydicom reads an element's value when it is first used: a damaged one raises only now
            sop_class = str(ds.get("SOPClassUID", "") or "")
            if str(ds.get("SOPInstanceUID", "") or "").strip():
                seen_uids.add(str(ds.SOPInstanceUID).strip())
            if not sop_class:
                scan.problems.append(InputProblem(where, "DICOM without SOP Class UID (0008,0016): skipped"))
            elif sop_class in SR_SOP_CLASSES:
                info = read_sr_text(ds, where)
                if info.is_similar_cases:
                    scan.problems.append(InputProblem(where, "a similar-cases SR (an earlier answer of this app), not a query: skipped"))
                else:
                    srs.append(info)
            elif sop_class in IMAGE_SOP_CLASSES:
                dicom_text(ds.get("PatientID")), ds.get("StudyInstanceUID")  # read of every image before its own checks (_identity)
                images.append((where, ds))
            elif sop_class == _ENCAPSULATED_PDF and str(ds.get("Manufacturer", "")) == C.MANUFACTURER:
                scan.problems.append(InputProblem(where, "this app's own report (the Encapsulated PDF of an earlier answer), not a query: skipped"))
            else:
                scan.problems.append(
                    InputProblem(
                        where,
                        f"unsupported SOP class {sop_class} ({UID(sop_class).name}): expected Dermoscopic Photography "
                        "or VL Photographic Image Storage, or an SR: skipped",
                    )
                )
        except Exception as err:  # noqa: BLE001 (one damaged file is reported; the scan goes on)
            report = sop_class in SR_SOP_CLASSES
            scan.problems.append(InputProblem(
                where, f"unreadable {'report SR' if report else 'DICOM file'}: an element inside it is damaged ({type(err).__name__}: "
                f"{err}); re-send it: skipped"))
            if report:
                unreadable_srs.append((where, _study_of_damaged(ds)))
    image_studies = {str(ds.get("StudyInstanceUID", "") or "").strip() for _, ds in images}
    # one instance per UID across images and SRs alike (an image and an SR with one UID collide too)
    kept, received_again, collided_paths = _one_per_instance([*images, *((sr.path, sr) for sr in srs)], scan.problems)
    images = [(where, item) for where, item in kept if not isinstance(item, SRText)]
    collided = [sr for sr in srs if sr.path in collided_paths]
    srs = _current_reports([item for _, item in kept if isinstance(item, SRText)], scan.problems)
    images_per_study = Counter(str(ds.get("StudyInstanceUID", "") or "").strip() for _, ds in images)
    pending = deque(images)
    del kept, images
    while pending:
        where, ds = pending.popleft()  # this image's data set, pixels included, is let go when its queries are made
        try:
            queries = _image_queries(where, ds, srs, scan.problems, max_side, all_frames, collided, unreadable_srs, images_per_study)
        except Exception as err:  # noqa: BLE001 (one bad image is reported; the scan goes on)
            reason = str(err) if isinstance(err, ValueError) else f"cannot read this image ({type(err).__name__}: {err})"
            scan.problems.append(InputProblem(where, f"{reason}: skipped"))
            continue
        finally:
            del ds
        for query in queries:
            if where in received_again:
                query.notices.append(f"the same instance was received {1 + len(received_again[where])} times: answered once")
        scan.queries.extend(queries)
    used = {uid for query in scan.queries for uid in query.sr_uids}
    for sr in srs:
        if sr.sop_instance_uid in used or (sr.references & seen_uids) or (not sr.references and sr.study_uid in image_studies):
            continue  # its text was used, or its images were reported (or left image-only, with a notice)
        what = "references no image of this input" if sr.references else f"is of study {sr.study_uid}, which has no image in this input"
        scan.problems.append(InputProblem(sr.path, f"report SR that {what}: nothing to answer (send the dermoscopy image with its report)"))
    return scan


def _sop_class_of_damaged(ds: Dataset) -> str:
    """The SOP Class UID of a file that could not be read whole, where that element can be read ("" otherwise)."""
    try:
        return str(ds.get("SOPClassUID", "") or "").strip()
    except Exception:  # noqa: BLE001 (damaged too)
        return ""


def _study_of_damaged(ds: Dataset) -> str:
    """The Study Instance UID of a file that could not be read whole, where that element can be read ("" otherwise)."""
    try:
        return str(ds.get("StudyInstanceUID", "") or "").strip()
    except Exception:  # noqa: BLE001 (damaged too: the study cannot be told)
        return ""


def _current_reports(srs: list[SRText], problems: list[InputProblem]) -> list[SRText]:
    """``srs`` without those another SR of the input amends or replaces (its Predecessor Documents Sequence
    names them): a corrected report's text is the report, joined with the one it corrects it would say both
    things at once. Each left out is reported, naming the report that replaces it."""
    replaced_by = {uid: sr for sr in srs for uid in sr.predecessors if uid != sr.sop_instance_uid}
    for sr in srs:
        newer = replaced_by.get(sr.sop_instance_uid)
        if newer is not None:
            problems.append(InputProblem(
                sr.path, f"report SR replaced by the amended report {newer.path} (its Predecessor Documents Sequence names this one): "
                "its text is not used: skipped"))
    return [sr for sr in srs if sr.sop_instance_uid not in replaced_by]


def _identity(item: Any) -> tuple:
    """What makes two files the same instance: an SR's content, an image's patient, study and pixels."""
    return ("sr", *_sr_identity(item)) if isinstance(item, SRText) else ("image", *_image_identity(item))


_PIXEL_DESCRIPTION = ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "BitsAllocated",
                      "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames", "SOPClassUID")


def _image_identity(ds: Dataset) -> tuple:
    """What makes two files the same image instance: patient, study, pixels and how the pixels are to be read (the same
    bytes as 120 x 160 or 160 x 120, RGB or YBR, are two pictures)."""
    pixels = ds.get("PixelData") or b""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax in _LITTLE_ENDIAN_NATIVE:  # the same pixel bytes whichever of these carried them (one instance sent twice)
        syntax = "native little endian"
    described = tuple(_described(ds, keyword) for keyword in _PIXEL_DESCRIPTION)
    return (dicom_text(ds.get("PatientID")), str(ds.get("StudyInstanceUID", "") or ""), hashlib.sha256(bytes(pixels)).hexdigest(), syntax, described)


_LITTLE_ENDIAN_NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99")
_DESCRIPTION_DEFAULTS = {"PlanarConfiguration": "0", "NumberOfFrames": "1"}


def _described(ds: Dataset, keyword: str) -> str:
    """An attribute of the pixel description as a value to compare: numbers as numbers, an absent one as its default."""
    value = ds.get(keyword, None)
    if value is None or value == "":
        return _DESCRIPTION_DEFAULTS.get(keyword, "")
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return str(value).strip()


def _sr_identity(sr: SRText) -> tuple:
    return (sr.patient_id, sr.study_uid, sr.sop_class_uid, tuple(sr.texts), tuple(sorted(sr.references)), sr.diagnosis, sr.case_id)


def _one_per_instance(items: list[tuple[str, Any]], problems: list[InputProblem]) -> tuple[list[tuple[str, Any]], dict[str, list[str]], set[str]]:
    """``items`` (path, dataset or SR) with one per SOP Instance UID, in input order; for each kept path the
    paths of the same instance received again; and the paths refused as a collision. The same UID on
    instances that differ (:func:`_identity`: another kind, patient, study or content) is a collision upstream:
    none of them is used, each is reported (which one is the right one cannot be told from here, and
    guessing would give one patient's report to another)."""
    def uid_of(item: Any) -> str:
        return str(item.sop_instance_uid if isinstance(item, SRText) else item.get("SOPInstanceUID", "") or "").strip()

    groups: dict[str, list[tuple[str, Any]]] = {}
    for where, item in items:
        uid = uid_of(item)
        if uid:
            groups.setdefault(uid, []).append((where, item))
    dropped, again, collided = set(), {}, set()
    for uid, group in groups.items():
        if len(group) == 1:
            continue
        if len({_identity(item) for _, item in group}) == 1:
            again[group[0][0]] = [where for where, _ in group[1:]]
            dropped.update(where for where, _ in group[1:])
            continue
        for where, item in group:
            others = [(w, o) for w, o in group if w != where]
            problems.append(InputProblem(
                where, f"SOP Instance UID {uid} is also the UID of {', '.join(f'{w} ({_difference(item, o)})' for w, o in others)}: "
                "a UID collision upstream, so none of them is used (re-send them with unique UIDs): skipped"))
            dropped.add(where)
            collided.add(where)
    return [(where, item) for where, item in items if where not in dropped], again, collided


def _difference(item: Any, other: Any) -> str:
    """What differs between two instances with one UID, in words (the collision message names it)."""
    if isinstance(item, SRText) != isinstance(other, SRText):
        return "an SR and an image"
    a, b = _identity(item), _identity(other)
    if a[1] != b[1]:
        return "another patient"
    if a[2] != b[2]:
        return "another study"
    if isinstance(item, SRText):
        return "another report"
    return "other pixels" if a[3] != b[3] else "the same pixels read as another picture"


def _image_queries(
    where: str, ds: Dataset, srs: list[SRText], problems: list[InputProblem], max_side: int, all_frames: bool,
    collided: Sequence[SRText] = (), unreadable_srs: Sequence[tuple[str, str]] = (), images_per_study: Mapping[str, int] | None = None,
) -> list[DermoscopyQuery]:
    if not str(ds.get("SOPInstanceUID", "") or "").strip():
        problems.append(InputProblem(where, "image without SOP Instance UID (0008,0018): it cannot be referenced, skipped"))
        return []
    if "PixelData" not in ds:
        problems.append(InputProblem(where, "DICOM image without pixel data (7FE0,0010): skipped"))
        return []
    if not ds.PixelData:
        problems.append(InputProblem(where, "DICOM image whose pixel data (7FE0,0010) is empty: skipped"))
        return []
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if min(rows, columns) < MIN_IMAGE_SIDE:
        problems.append(InputProblem(
            where, f"image of {columns}x{rows} pixels (Columns x Rows): too small for a dermoscopy query (at least "
            f"{MIN_IMAGE_SIDE} pixels a side): not answered"))
        return []
    if max(rows, columns) > MAX_ASPECT_RATIO * min(rows, columns):
        problems.append(InputProblem(
            where, f"image of {columns}x{rows} pixels (Columns x Rows): its sides differ more than {MAX_ASPECT_RATIO}:1, which no "
            "dermoscopy image's do (a strip, a montage or a damaged header); squeezed square for the model it would "
            "match nothing: not answered"))
        return []
    notices: list[str] = []
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
    colour_jpeg = (str(ts) == _JPEG_BASELINE and int(ds.get("SamplesPerPixel", 0) or 0) == 3
                   and str(ds.get("PhotometricInterpretation", "")) in ("YBR_FULL_422", "YBR_FULL"))
    ceiling = MAX_JPEG_PIXELS if colour_jpeg else MAX_DECODED_PIXELS
    if rows * columns > ceiling:
        problems.append(InputProblem(
            where, f"image of {columns}x{rows} pixels ({rows * columns / 1e6:.0f} Mpx): larger than the app decodes "
            f"({ceiling / 1e6:.0f} Mpx{'' if colour_jpeg else '; a colour JPEG Baseline image may be larger'}): not answered; "
            "send a downscaled copy"))
        return []
    if ts == "unknown":  # no file meta (not a Part 10 file): nothing says how the pixels are encoded
        problems.append(InputProblem(where, "DICOM file without a Transfer Syntax UID (0002,0010) (no file meta: not a DICOM Part 10 "
                                            "file), so its pixel data cannot be decoded: skipped"))
        return []
    truncated = _truncated_frames(ds)
    if truncated:
        problems.append(
            InputProblem(
                where,
                f"truncated JPEG stream in frame(s) {', '.join(map(str, truncated))} (no end-of-image marker; transfer "
                f"syntax {ts}): the decoder would pad the missing part grey, so it is not answered",
            )
        )
        return []
    count = _frame_count(ds)
    indices = list(range(count)) if all_frames else [0]
    skipped_blank = 0  # leading blank frames passed over for the first one with a picture (one frame answered)
    try:
        frames = _decoded_frames(ds, indices, max_side)
        if not all_frames and count > 1 and blank_spread(frames[0][0]) is not None:
            rest = _decoded_frames(ds, list(range(1, count)), max_side)
            first = next((i for i, (image, _) in enumerate(rest, start=1) if blank_spread(image) is None), None)
            if first is not None:
                indices, frames, skipped_blank = [first], [rest[first - 1]], first
    except Exception as err:
        problems.append(InputProblem(where, f"corrupt or undecodable pixel data (transfer syntax {ts}): {err}"))
        return []
    dim = _dim_notice(ds)
    meta = Dataset()  # the header only: no pixel data, no cached decoded array
    for element in ds:
        if element.tag not in _PIXEL_TAGS:
            meta.add(element)
    if hasattr(ds, "file_meta"):
        meta.file_meta = ds.file_meta

    # report text: the SRs that reference this image by SOP Instance UID (its own study's when it has one there;
    # else in whatever study they say: a repaired Study UID must not lose the report); else the study's only SR
    # that references no image (an SR that references images speaks of those images only). Never an SR of
    # another patient: a report of one patient must not become another's query text.
    sop_uid = str(meta.SOPInstanceUID)
    patient = dicom_text(meta.get("PatientID")).strip()
    own_study = str(meta.get("StudyInstanceUID", "") or "").strip()

    def of_another_patient(sr: SRText) -> bool:
        return bool(patient and sr.patient_id and sr.patient_id != patient)

    referencing = [sr for sr in srs if sop_uid in sr.references]
    excluded = [sr for sr in referencing if of_another_patient(sr)]
    notices.extend(f"an SR of another patient ({sr.patient_id}) references this image: its text is not used ({sr.path})" for sr in excluded)
    referencing = [sr for sr in referencing if sr not in excluded]
    same_study = [sr for sr in referencing if own_study and sr.study_uid == own_study]
    if same_study and len(same_study) < len(referencing):
        notices.extend(f"an SR of another study ({sr.study_uid}) also references this image: only this study's report is used ({sr.path})"
                       for sr in referencing if sr not in same_study)
        referencing = same_study
    study_from_sr = next((sr.reference_studies.get(sop_uid) or sr.study_uid for sr in referencing if sr.reference_studies.get(sop_uid) or sr.study_uid), None)
    _repair(meta, notices, study_uid_from_sr=study_from_sr)
    site = _site(meta, notices)
    study = str(meta.StudyInstanceUID)
    study_srs = [sr for sr in srs if sr.study_uid == study and sr not in excluded]
    unreferencing = [sr for sr in study_srs if not sr.references]
    for sr in [sr for sr in unreferencing if of_another_patient(sr)]:
        notices.append(f"the study's SR {sr.path} is of another patient ({sr.patient_id}): its text is not used")
        unreferencing.remove(sr)
        study_srs.remove(sr)
        excluded.append(sr)
    lost = [sr for sr in collided if sr.study_uid == study or sop_uid in sr.references]
    # damaged report SRs that may be this image's: of its study, or of a study that could not be read
    unread = [sr_study for _, sr_study in unreadable_srs if sr_study in (study, "")]
    chosen: list[SRText] = []
    if referencing:
        chosen, text_source = referencing, "sr"
        # an image with a Study UID of its own (not repaired from the report) described by another study's report:
        # used (a report may be filed in a study of its own), said, so that a report of another visit is noticed
        notices.extend(f"the report used ({sr.path}) is of another study ({sr.study_uid}) than this image's: check that it describes this image"
                       for sr in referencing if own_study and sr.study_uid and sr.study_uid != own_study)
        if len(referencing) > 1:
            with_text = [sr.text for sr in referencing if sr.text]
            if len(set(with_text)) > 1:
                notices.append(f"{len(referencing)} SRs reference this image: their texts are joined")
            elif len(with_text) > 1:
                notices.append(f"{len(referencing)} SRs reference this image, with the same text: it is used once")
            elif with_text:
                notices.append(f"{len(referencing)} SRs reference this image; only one holds text: it is used")
    elif len(unreferencing) == 1:
        chosen, text_source = unreferencing, "study-sr"
        sharing = (images_per_study or {}).get(own_study, 1) - 1
        shared = f", as for the study's {sharing} other image{'s' if sharing > 1 else ''}" if sharing > 0 else ""
        notices.append(f"the study's only SR does not reference this image (it references no image): its text is used{shared}")
    else:
        text_source = "none"
        if unreferencing:
            notices.append(f"{len(unreferencing)} SRs in the study reference no image: which one is this image's is unknown, image-only query")
        elif lost:
            notices.append(f"{len(lost)} report SR(s) of this study not used: each shares its SOP Instance UID with another instance "
                           "(see problems.json): image-only query")
        elif study_srs:
            notices.append(f"{len(study_srs)} SR(s) in the study, none references this image: image-only query")
        elif not excluded and not unread:
            notices.append("no SR in the study: image-only query")
    if unread:
        whose = "of this study" if all(unread) else "whose study cannot be told"
        notices.append(f"{len(unread)} report SR(s) {whose} could not be read (damaged; see problems.json): "
                       f"{'the readable report is used' if chosen else 'image-only query'}")
    if not patient and any(sr.patient_id for sr in chosen):
        ids = ", ".join(sorted({sr.patient_id for sr in chosen if sr.patient_id}))
        notices.append(f"this image has no Patient ID, the report used is of Patient ID {ids}: check that it is this patient's")
    text = "\n".join(dict.fromkeys(sr.text for sr in chosen if sr.text))  # a report sent twice is one report
    if chosen and not text.strip():
        notices.append("the report (SR) sent with the image holds no text: the search used the image only")

    if count > 1 and not all_frames and skipped_blank:
        used = skipped_blank + 1
        notices.append(f"multi-frame instance: frame {used} of {count} used ({'frame 1 is' if used == 2 else f'frames 1-{used - 1} are'} "
                       f"blank){', the others ignored' if used < count else ''}")
    elif count > 1 and not all_frames:
        notices.append(f"multi-frame instance: frame 1 of {count} used, {'frame 2' if count == 2 else f'frames 2-{count}'} ignored")
    out = []
    for index, (image, (rows, columns)) in zip(indices, frames):
        frame_notices = list(notices)
        frame_name = f"frame {index + 1}" if count > 1 else "the image"
        spread = blank_spread(image)
        if spread is not None:
            every = " (every frame is)" if count > 1 and not all_frames else ""
            problems.append(
                InputProblem(where, f"{frame_name} is blank{every}: its pixels are constant or nearly so (range {spread:.0f} of 255 grey levels): not answered")
            )
            continue
        if dim is not None:
            frame_notices.append(dim)
        if _is_greyscale(ds, image):
            frame_notices.append(GREYSCALE_NOTICE)
        if not _says_dermoscopy(meta):
            frame_notices.append(NOT_SAID_DERMOSCOPY_NOTICE)
        if max(rows, columns) > max_side:
            frame_notices.append(f"image of {columns}x{rows} downscaled to fit {max_side} pixels")
            if max(image.shape[:2]) > max_side:
                image = _downscale(image, max_side)
        out.append(
            DermoscopyQuery(
                image=np.ascontiguousarray(image),
                text=text,
                text_source=text_source,
                notices=frame_notices,
                site=site,
                patient_id=dicom_text(meta.PatientID),
                patient_name=str(meta.PatientName),
                study_uid=str(meta.StudyInstanceUID),
                series_uid=str(meta.SeriesInstanceUID),
                sop_instance_uid=sop_uid,
                sop_class_uid=str(meta.SOPClassUID),
                source_path=where,
                dataset=meta,
                diagnosis=next((sr.diagnosis for sr in chosen if sr.diagnosis), None),
                case_id=next((sr.case_id for sr in chosen if sr.case_id), None),
                collection=next((sr.collection for sr in chosen if sr.collection), None),
                confirmation=next((sr.confirmation for sr in chosen if sr.confirmation), None),
                frame_number=(index + 1) if count > 1 else None,
                sr_uids=[sr.sop_instance_uid for sr in chosen],
            )
        )
    return out
