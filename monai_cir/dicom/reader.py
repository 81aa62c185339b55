"""Read a folder of DICOM into composed queries: dermoscopy image + report text.

Rules (documented in ``docs/dicom.md``):

- **Images**: Dermoscopic Photography Image Storage (``1.2.840.10008.5.1.4.1.1.77.1.7``, Modality
  DMS) and VL Photographic Image Storage (``1.2.840.10008.5.1.4.1.1.77.1.4``, Modality XC); any
  transfer syntax pydicom can decode with its numpy / pylibjpeg / Pillow plugins (uncompressed,
  JPEG baseline/extended/lossless, JPEG 2000, JPEG-LS, RLE); RGB, YBR_FULL, YBR_FULL_422 (converted
  to RGB), MONOCHROME1/2 and PALETTE COLOR; 8- to 16-bit (rescaled by
  :func:`monai_cir.data.to_rgb_uint8`). Images larger than ``max_side`` are downscaled (notice).
- **Multi-frame**: one query for the first frame (notice naming the ignored frames) by default;
  ``all_frames=True`` gives one query per frame (``frame_number`` set).
- **Text**: from the Basic Text / Enhanced / Comprehensive (3D) SRs of the same study that
  reference the image (Current Requested Procedure / Pertinent Other Evidence, or IMAGE content
  items); if none references it and the study holds exactly one SR, that SR. TEXT items give their
  value; CODE items give their meaning (``Concept: meaning`` unless the concept is a generic
  Finding). Context items (HAS OBS/ACQ CONTEXT, HAS CONCEPT MOD) are skipped, and so are the
  library labels written by :mod:`monai_cir.dicom.dicomize` (reference diagnosis, case id,
  collection), which are returned as ``diagnosis`` / ``case_id`` / ``collection`` instead.
  Similar-cases SRs written by :mod:`monai_cir.dicom.sr` are ignored. No SR or empty text: an
  image-only query (``text == ""``) with a notice.
- **Bad input** never stops the scan; each file gets an :class:`InputProblem`: not DICOM, no SOP
  Class / SOP Instance UID, unsupported SOP class, no pixel data, undecodable pixel data.
  Missing Patient ID / Name, Study / Series Instance UID and the Type 2 patient/study attributes
  are **repaired** in the returned dataset (deterministic values derived from the SOP Instance
  UID) with a notice, so that the answer can still be written and filed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DermoscopicPhotographyImageStorage,
    VLPhotographicImageStorage,
)

from . import codes as C

__all__ = [
    "IMAGE_SOP_CLASSES",
    "SR_SOP_CLASSES",
    "DermoscopyQuery",
    "DicomScan",
    "InputProblem",
    "SRText",
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
DEFAULT_MAX_SIDE = 2048
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


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
        for name in ("study_uid", "series_uid", "sop_instance_uid", "sop_class_uid", "patient_id"):
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

    def by_study(self) -> dict[str, list[DermoscopyQuery]]:
        """Queries grouped by Study Instance UID (input order kept)."""
        out: dict[str, list[DermoscopyQuery]] = {}
        for query in self.queries:
            out.setdefault(query.study_uid, []).append(query)
        return out

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
    texts: list[str] = field(default_factory=list)
    references: set[str] = field(default_factory=set)
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
        return (str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeValue", "")), str(item.get("CodeMeaning", "")))
    return None


def _is(key: tuple[str, str, str] | None, code) -> bool:
    return key is not None and key[0] == code.scheme_designator and key[1] == code.value


def read_sr_text(ds: Dataset, path: str = "") -> SRText:
    """Text, references and library labels of an SR dataset (Basic Text, Enhanced, Comprehensive)."""
    info = SRText(
        path=path,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
    )
    info.is_similar_cases = _is(_code_key(ds.get("ConceptNameCodeSequence")), C.SIMILAR_CASES_REPORT)
    for seq_name in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(seq_name, []) or []:
            for series in study.get("ReferencedSeriesSequence", []) or []:
                for inst in series.get("ReferencedSOPSequence", []) or []:
                    if "ReferencedSOPInstanceUID" in inst:
                        info.references.add(str(inst.ReferencedSOPInstanceUID))

    def walk(items: Iterable[Dataset]) -> None:
        for item in items or []:
            rel = str(item.get("RelationshipType", ""))
            vtype = str(item.get("ValueType", ""))
            name = _code_key(item.get("ConceptNameCodeSequence"))
            if vtype in ("IMAGE", "COMPOSITE", "WAVEFORM"):
                for ref in item.get("ReferencedSOPSequence", []) or []:
                    if "ReferencedSOPInstanceUID" in ref:
                        info.references.add(str(ref.ReferencedSOPInstanceUID))
            elif rel in _CONTEXT_RELATIONSHIPS:
                pass
            elif vtype == "TEXT":
                value = str(item.get("TextValue", "") or "").strip()
                if _is(name, C.CASE_IDENTIFIER):
                    info.case_id = value or None
                elif _is(name, C.CASE_COLLECTION):
                    info.collection = value or None
                elif value:
                    info.texts.append(value)
            elif vtype == "CODE":
                value = _code_key(item.get("ConceptCodeSequence"))
                if value is None:
                    pass
                elif _is(name, C.DIAGNOSIS) or _is(name, C.LEGACY_REFERENCE_DIAGNOSIS):
                    info.diagnosis = C.diagnosis_from_code(*value)
                elif _is(name, C.DIAGNOSIS_CONFIRMATION):
                    info.confirmation = C.confirmation_from_code(*value)
                elif value[2]:
                    generic = name is None or (name[0], name[1]) in _GENERIC_FINDING
                    info.texts.append(value[2] if generic else f"{name[2]}: {value[2]}")
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(ds.get("ContentSequence", []))
    return info


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


def _repair(ds: Dataset, notices: list[str]) -> None:
    """Fill missing identifying attributes (deterministically, from the SOP Instance UID)."""
    seed = str(ds.SOPInstanceUID)
    if not str(ds.get("PatientID", "") or "").strip():
        ds.PatientID = "ANON-" + hashlib.sha256(seed.encode()).hexdigest()[:12].upper()
        notices.append(f"missing Patient ID: set to {ds.PatientID}")
    if not str(ds.get("PatientName", "") or "").strip():
        ds.PatientName = f"{ds.PatientID}^"
        notices.append("missing Patient's Name: set to the Patient ID")
    if not str(ds.get("StudyInstanceUID", "") or "").strip():
        ds.StudyInstanceUID = C.derived_uid(seed, "study")
        notices.append(f"missing Study Instance UID: generated {ds.StudyInstanceUID}")
    if not str(ds.get("SeriesInstanceUID", "") or "").strip():
        ds.SeriesInstanceUID = C.derived_uid(seed, "series")
        notices.append(f"missing Series Instance UID: generated {ds.SeriesInstanceUID}")
    # Type 2 attributes the answer's SR copies: present, empty when unknown
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, "")


def _to_rgb_frames(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB from a decoded pixel array."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        arr = arr[None]
    pi = str(ds.get("PhotometricInterpretation", ""))
    if pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        samples = 3
    elif samples == 1 and pi == "MONOCHROME1":
        arr = arr.max() - arr if np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 else -arr
    if samples == 3 and arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    from ..data.preprocess import to_rgb_uint8  # imports monai: only for unusual images

    return np.stack([to_rgb_uint8(frame) for frame in arr])


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
    srs: dict[str, list[SRText]] = {}
    for file in _files(root):
        where = str(file)
        if file.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(file)
        except InvalidDicomError:
            scan.problems.append(InputProblem(where, "not a DICOM file (no DICM prefix / preamble): skipped"))
            continue
        except Exception as err:  # truncated headers, bad VRs...
            scan.problems.append(InputProblem(where, f"unreadable DICOM file ({type(err).__name__}: {err}): skipped"))
            continue
        sop_class = str(ds.get("SOPClassUID", "") or "")
        if not sop_class:
            scan.problems.append(InputProblem(where, "DICOM without SOP Class UID (0008,0016): skipped"))
        elif sop_class in SR_SOP_CLASSES:
            info = read_sr_text(ds, where)
            if not info.is_similar_cases:
                srs.setdefault(info.study_uid, []).append(info)
        elif sop_class in IMAGE_SOP_CLASSES:
            images.append((where, ds))
        else:
            scan.problems.append(
                InputProblem(
                    where,
                    f"unsupported SOP class {sop_class} ({UID(sop_class).name}): expected Dermoscopic Photography "
                    "or VL Photographic Image Storage, or an SR: skipped",
                )
            )
    for where, ds in images:
        scan.queries.extend(_image_queries(where, ds, srs, scan.problems, max_side, all_frames))
    return scan


def _image_queries(
    where: str, ds: Dataset, srs: dict[str, list[SRText]], problems: list[InputProblem], max_side: int, all_frames: bool
) -> list[DermoscopyQuery]:
    if not str(ds.get("SOPInstanceUID", "") or "").strip():
        problems.append(InputProblem(where, "image without SOP Instance UID (0008,0018): it cannot be referenced, skipped"))
        return []
    if "PixelData" not in ds:
        problems.append(InputProblem(where, "DICOM image without pixel data (7FE0,0010): skipped"))
        return []
    notices: list[str] = []
    try:
        arr = ds.pixel_array
        frames = _to_rgb_frames(ds, np.asarray(arr))
    except Exception as err:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        problems.append(InputProblem(where, f"corrupt or undecodable pixel data (transfer syntax {ts}): {err}"))
        return []
    meta = Dataset()  # the header only: no pixel data, no cached decoded array
    for element in ds:
        if element.tag not in _PIXEL_TAGS:
            meta.add(element)
    if hasattr(ds, "file_meta"):
        meta.file_meta = ds.file_meta
    _repair(meta, notices)
    site = _site(meta, notices)

    # report text
    study_srs = srs.get(str(meta.StudyInstanceUID), [])
    sop_uid = str(meta.SOPInstanceUID)
    referencing = [sr for sr in study_srs if sop_uid in sr.references]
    chosen: list[SRText] = []
    if referencing:
        chosen, text_source = referencing, "sr"
        if len(referencing) > 1:
            notices.append(f"{len(referencing)} SRs reference this image: their texts are joined")
    elif len(study_srs) == 1:
        chosen, text_source = study_srs, "study-sr"
        notices.append("the study's only SR does not reference this image; its text is used")
    else:
        text_source = "none"
        if study_srs:
            notices.append(f"{len(study_srs)} SRs in the study, none references this image: image-only query")
        else:
            notices.append("no SR in the study: image-only query")
    text = "\n".join(sr.text for sr in chosen if sr.text)
    if chosen and not text.strip():
        notices.append("the SR holds no text: image-only query")

    count = frames.shape[0]
    indices = list(range(count)) if all_frames else [0]
    if count > 1 and not all_frames:
        notices.append(f"multi-frame instance: frame 1 of {count} used, frames 2-{count} ignored")
    out = []
    for index in indices:
        frame_notices = list(notices)
        image = frames[index]
        if max(image.shape[:2]) > max_side:
            frame_notices.append(f"image of {image.shape[1]}x{image.shape[0]} downscaled to fit {max_side} pixels")
            image = _downscale(image, max_side)
        out.append(
            DermoscopyQuery(
                image=np.ascontiguousarray(image),
                text=text,
                text_source=text_source,
                notices=frame_notices,
                site=site,
                patient_id=str(meta.PatientID),
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
