"""Turn research collections into DICOM studies: one study per case.

Each case becomes

- a **Dermoscopic Photography Image** (SOP Class 1.2.840.10008.5.1.4.1.1.77.1.7, Modality ``DMS``)
  written with pydicom (highdicom has no writer for it). A baseline JPEG source is carried as-is in
  the JPEG Baseline transfer syntax (no second lossy compression; APP1..APP15 and COM segments,
  which may hold camera metadata, are dropped); any other source (PNG, progressive JPEG...) is
  stored uncompressed (Explicit VR Little Endian, RGB).
- a **Comprehensive SR** (highdicom) in the same study, referencing the image, carrying the case's
  text as ``(121071, DCM, "Finding")`` TEXT, its diagnosis as ``(439401001, SCT, "Diagnosis")``
  CODE (SNOMED CT value), how it was confirmed as the project concept "Diagnosis confirmation
  method" (an OID in the ``ISO_OID`` scheme, :mod:`monai_cir.dicom.codes`) CODE, and its case id /
  collection as project-concept TEXT items. A query study (``include_diagnosis=False``) carries the
  text only: no diagnosis, confirmation, library case id or collection. The reader
  (:func:`monai_cir.dicom.reader.read_dicom_folder`) returns them as ``DermoscopyQuery.diagnosis``,
  ``confirmation``, ``case_id`` and ``collection``, and never puts them into the query text.

Patients are pseudonymous: the Patient ID is ``CIR-`` + 12 hex digits of SHA-256 of
``collection/case_id``; every UID is derived from the same key (under the project's UID root,
:data:`monai_cir.dicom.codes.UID_ROOT`), so converting a
case again gives the same UIDs (a case library can be rebuilt without breaking the index).
"""

from __future__ import annotations

import datetime
import hashlib
import math
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DermoscopicPhotographyImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from ..atomic import atomic_path
from ..data.preprocess import read_rgb
from ..data.sites import SITE_CODES, UNKNOWN_SITE, normalize_site
from . import codes as C

__all__ = [
    "CaseUIDs",
    "DicomizedCase",
    "case_report_sr",
    "case_uids",
    "dermoscopy_image_dataset",
    "dicomize_record",
    "dicomize_records",
    "pseudonym",
]

logger = logging.getLogger(__name__)

_SEX = {"male": "M", "m": "M", "female": "F", "f": "F", "other": "O", "o": "O"}


def pseudonym(collection: str, case_id: str) -> str:
    """The pseudonymous Patient ID of a case: ``CIR-`` + 12 hex digits of SHA-256(collection/case_id)."""
    if not case_id:
        raise ValueError("case_id must be a non-empty string")
    digest = hashlib.sha256(f"{collection}/{case_id}".encode()).hexdigest()
    return f"CIR-{digest[:12].upper()}"


@dataclass(frozen=True)
class CaseUIDs:
    """Deterministic identifiers of one dicomized case."""

    patient_id: str
    study_uid: str
    image_series_uid: str
    image_uid: str
    sr_series_uid: str
    sr_uid: str


def case_uids(collection: str, case_id: str) -> CaseUIDs:
    """UIDs derived from ``(collection, case_id)`` (``2.25`` form, via :func:`monai_cir.dicom.codes.derived_uid`)."""

    def uid(kind: str) -> str:
        return C.derived_uid("monai-cir", collection, case_id, kind)

    return CaseUIDs(
        patient_id=pseudonym(collection, case_id),
        study_uid=uid("study"),
        image_series_uid=uid("image-series"),
        image_uid=uid("image"),
        sr_series_uid=uid("sr-series"),
        sr_uid=uid("sr"),
    )


# ------------------------------------------------------------------------------------------------
# JPEG pass-through
# ------------------------------------------------------------------------------------------------
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _baseline_jpeg(data: bytes) -> tuple[bytes, int, int, int, list[tuple[int, int]]] | None:
    """Clean a JPEG stream for DICOM: ``(stream, rows, columns, components, sampling)`` or None.

    None unless the stream is baseline (SOF0), 8-bit, with 3 components. APP1..APP15 and COM
    segments are dropped (they may hold EXIF camera/owner data); APP0 (JFIF) and APP14 (Adobe,
    colour transform) are kept."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    out = bytearray(b"\xff\xd8")
    pos = 2
    sof: tuple[int, int, int, list[tuple[int, int]]] | None = None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos : pos + 2 + length]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            if sof is None:
                return None
            out += data[pos:]
            rows, cols, ncomp, sampling = sof
            return bytes(out), rows, cols, ncomp, sampling
        if marker in _SOF_MARKERS:
            if marker != 0xC0:
                return None  # progressive, extended, lossless...: not JPEG Baseline
            precision = segment[4]
            rows = int.from_bytes(segment[5:7], "big")
            cols = int.from_bytes(segment[7:9], "big")
            ncomp = segment[9]
            sampling = [(segment[10 + 3 * i + 1] >> 4, segment[10 + 3 * i + 1] & 0x0F) for i in range(ncomp)]
            if precision != 8 or ncomp != 3:
                return None
            sof = (rows, cols, ncomp, sampling)
        keep = not ((0xE1 <= marker <= 0xEF and marker != 0xEE) or marker == 0xFE)
        if keep:
            out += segment
        pos += 2 + length
    return None


def _chroma_subsampled(sampling: list[tuple[int, int]]) -> bool:
    return any(s != sampling[0] for s in sampling[1:])


# ------------------------------------------------------------------------------------------------
# Dermoscopic Photography Image
# ------------------------------------------------------------------------------------------------
def _patient_age(value: Any) -> str | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or not 0 <= number < 1000:
        return None
    age = int(number)
    return f"{age:03d}Y"


def dermoscopy_image_dataset(
    image_path: str | Path | None = None,
    *,
    pixels: np.ndarray | None = None,
    uids: CaseUIDs,
    patient_name: str = "",
    patient_sex: str = "",
    patient_age: str | None = None,
    site: str = "unknown",
    series_description: str = "Dermoscopy",
    study_description: str = "Dermoscopy",
    compression: str = "jpeg",
    content_datetime: datetime.datetime | None = None,
) -> Dataset:
    """A Dermoscopic Photography Image Storage dataset (with file meta) for one image.

    Args:
        image_path: an image file (JPEG, PNG...). A baseline JPEG is carried without re-encoding
            when ``compression="jpeg"``; everything else is stored uncompressed.
        pixels: (H, W, 3) uint8 RGB instead of a file (stored uncompressed).
        uids: from :func:`case_uids`.
        patient_sex: ``M``/``F``/``O`` or ``""``; patient_age: DICOM AS (``055Y``) or None.
        site: a site of :data:`monai_cir.data.sites.SITES`; its SNOMED CT code goes to the Anatomic
            Region Sequence (left empty for ``unknown``).
        compression: ``"jpeg"`` (pass a baseline JPEG through) or ``"none"``.
    """
    if (image_path is None) == (pixels is None):
        raise ValueError("give exactly one of image_path or pixels")
    if compression not in ("jpeg", "none"):
        raise ValueError(f"compression must be 'jpeg' or 'none', got {compression!r}")
    if patient_sex not in ("", "M", "F", "O"):
        raise ValueError(f"PatientSex must be M, F, O or empty, got {patient_sex!r}")
    region = _anatomic_region(site)  # an unknown site raises here, before the image is read
    now = content_datetime or datetime.datetime.now()

    jpeg = None
    if image_path is not None:
        image_path = Path(image_path)
        if not image_path.is_file():
            raise FileNotFoundError(f"image file not found: {image_path}")
        if compression == "jpeg":
            jpeg = _baseline_jpeg(image_path.read_bytes())
            if jpeg is not None and not _chroma_subsampled(jpeg[4]):
                # 4:4:4 YCbCr would be YBR_FULL, which the VL/dermoscopy IODs do not allow
                jpeg = None
        if jpeg is None:
            pixels = read_rgb(image_path)  # the pixels training and the index read from the same file
    if pixels is not None:
        pixels = np.asarray(pixels)
        if pixels.ndim != 3 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"pixels must be (H, W, 3) uint8, got {pixels.shape} {pixels.dtype}")

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DermoscopicPhotographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uids.image_uid
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg is not None else ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    # SOP Common
    ds.SpecificCharacterSet = C.OUTPUT_CHARACTER_SET
    ds.SOPClassUID = DermoscopicPhotographyImageStorage
    ds.SOPInstanceUID = uids.image_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    # Patient (pseudonymous)
    ds.PatientName = patient_name or f"{uids.patient_id}^"  # single-component name, explicit
    ds.PatientID = uids.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = patient_sex
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "monai-cir dicomize: pseudonymous research case"
    # General Study / Patient Study
    ds.StudyInstanceUID = uids.study_uid
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = study_description
    if patient_age:
        ds.PatientAge = patient_age
    # General Series / Dermoscopic Photography Series
    ds.Modality = "DMS"
    ds.SeriesInstanceUID = uids.image_series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = series_description
    # Frame of Reference (required by the IOD; one per study)
    ds.FrameOfReferenceUID = C.derived_uid(uids.study_uid, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    # General Equipment / Enhanced General Equipment
    ds.Manufacturer = C.MANUFACTURER
    ds.ManufacturerModelName = C.MODEL_NAME
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = C.software_version()
    # General Image / VL Image / Dermoscopic Image
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = ""
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.AcquisitionContextSequence = []
    if region:  # Type 1C: present only when known
        ds.AnatomicRegionSequence = region
    if not region or region[0].CodeValue not in _UNPAIRED_REGIONS:
        ds.Laterality = ""  # Type 2C: unknown (required unless the region is an unpaired body part)
    # Dermoscopic Image module: Type 2, unknown for research collections
    ds.LightSourcePolarization = ""
    ds.EmitterColorTemperature = None
    ds.ContactMethod = ""
    ds.OpticalMagnificationFactor = None
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    # Image Pixel
    ds.SamplesPerPixel = 3
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PlanarConfiguration = 0
    if jpeg is not None:
        stream, rows, cols, _, _ = jpeg
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.Rows, ds.Columns = rows, cols
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.LossyImageCompressionRatio = f"{rows * cols * 3 / max(len(stream), 1):.4f}"[:16]
        ds.PixelData = encapsulate([stream])
        ds["PixelData"].VR = "OB"
    else:
        assert pixels is not None
        ds.PhotometricInterpretation = "RGB"
        ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
        lossy_method = _lossy_source(Path(image_path)) if image_path is not None else None
        if lossy_method is not None:  # decoded from a lossy source: the pixels went through it once
            ds.LossyImageCompression = "01"
            if lossy_method:  # a DICOM defined term; WebP has none (the attribute is optional, so it is left out)
                ds.LossyImageCompressionMethod = lossy_method
            ds.LossyImageCompressionRatio = f"{ds.Rows * ds.Columns * 3 / max(Path(image_path).stat().st_size, 1):.4f}"[:16]
        else:
            ds.LossyImageCompression = "00"
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds["PixelData"].VR = "OB"
    return ds


# SNOMED CT regions dciodvfy treats as unpaired (Laterality must then be absent): Head and Neck
_UNPAIRED_REGIONS = {"774007"}


def _anatomic_region(site: str) -> list[Dataset]:
    if not site or site == UNKNOWN_SITE:
        return []
    code = SITE_CODES.get(normalize_site(site))
    if code is None:
        return []
    item = Dataset()
    item.CodeValue = code.code_value
    item.CodingSchemeDesignator = code.coding_scheme
    item.CodeMeaning = code.code_meaning
    return [item]


# ------------------------------------------------------------------------------------------------
# Case report SR
# ------------------------------------------------------------------------------------------------
def case_report_sr(
    image: Dataset,
    text: str,
    *,
    diagnosis: str | None = None,
    case_id: str | None = None,
    collection: str | None = None,
    confirmation: str | None = None,
    sr_series_uid: str | None = None,
    sr_uid: str | None = None,
):
    """A Comprehensive SR in the image's study carrying the case's text (and its library labels).

    Content: ``Diagnostic Imaging Report`` (LN 18748-4) CONTAINS ``Findings`` (DCM 121070) which
    CONTAINS the text as ``Finding`` (DCM 121071) TEXT and the image as ``Source image`` (DCM
    121324); then, when given, ``Diagnosis`` (439401001, SCT) CODE with the SNOMED CT diagnosis,
    ``Diagnosis confirmation method`` (CODE), ``Library case identifier`` and ``Case library
    collection`` (TEXT) of the private scheme. Empty text writes no TEXT item."""
    import highdicom as hd
    from highdicom.sr import (
        CodeContentItem,
        ContentSequence,
        ImageContentItem,
        RelationshipTypeValues,
        TextContentItem,
    )

    from .sr import container

    contains = RelationshipTypeValues.CONTAINS
    findings = ContentSequence()
    text = (text or "").strip()
    if text:
        findings.append(TextContentItem(name=C.FINDING, value=text[:65000], relationship_type=contains))
    findings.append(
        ImageContentItem(
            name=C.SOURCE_IMAGE,
            referenced_sop_class_uid=image.SOPClassUID,
            referenced_sop_instance_uid=image.SOPInstanceUID,
            relationship_type=contains,
        )
    )
    items = ContentSequence([container(C.FINDINGS, findings, contains)])
    if diagnosis:
        items.append(CodeContentItem(name=C.DIAGNOSIS, value=C.diagnosis_code(diagnosis), relationship_type=contains))
    if confirmation:
        items.append(CodeContentItem(name=C.DIAGNOSIS_CONFIRMATION, value=C.confirmation_code(confirmation), relationship_type=contains))
    if case_id:
        items.append(TextContentItem(name=C.CASE_IDENTIFIER, value=str(case_id), relationship_type=contains))
    if collection:
        items.append(TextContentItem(name=C.CASE_COLLECTION, value=str(collection), relationship_type=contains))
    root = container(C.DIAGNOSTIC_IMAGING_REPORT, items)
    sr = hd.sr.ComprehensiveSR(
        evidence=[image],
        content=root,
        series_instance_uid=sr_series_uid or C.new_uid(),
        series_number=2,
        sop_instance_uid=sr_uid or C.new_uid(),
        instance_number=1,
        manufacturer=C.MANUFACTURER,
        manufacturer_model_name=C.MODEL_NAME,
        software_versions=C.software_version(),
        device_serial_number="0",
        series_description="Case report",
        is_complete=True,
    )
    return sr


# ------------------------------------------------------------------------------------------------
# Records -> files
# ------------------------------------------------------------------------------------------------
@dataclass
class DicomizedCase:
    """Where one case went."""

    case_id: str
    image_file: Path
    sr_file: Path
    uids: CaseUIDs
    transfer_syntax: str
    notices: list[str] = field(default_factory=list)


def dicomize_record(record: Any, out_dir: str | Path, compression: str = "jpeg", include_diagnosis: bool = True) -> DicomizedCase:
    """Write one case (an object with ``case_id, image_path, diagnosis, text, site, collection,
    metadata``, e.g. :class:`monai_cir.data.collections.CaseRecord`) as a study under
    ``out_dir/<PatientID>/``: ``image.dcm`` and ``report.dcm``.

    ``include_diagnosis=False`` writes a query study: its SR has the text and image reference but no
    library labels (diagnosis, confirmation, library case identifier, collection)."""
    case_id = str(getattr(record, "case_id", "") or "")
    if not case_id:
        raise ValueError("record.case_id must be a non-empty string")
    collection = str(getattr(record, "collection", "") or "")
    metadata = dict(getattr(record, "metadata", {}) or {})
    uids = case_uids(collection, case_id)
    notices: list[str] = []
    sex = _SEX.get(str(metadata.get("sex", "")).strip().lower(), "")
    site = str(getattr(record, "site", UNKNOWN_SITE) or UNKNOWN_SITE)
    try:
        normalize_site(site)  # checked before the image is read: an unknown site is a notice, not a failed case
    except ValueError:
        notices.append(f"site {site!r} not in the vocabulary: Anatomic Region Sequence left empty")
        site = UNKNOWN_SITE
    image = dermoscopy_image_dataset(
        record.image_path,
        uids=uids,
        patient_sex=sex,
        patient_age=_patient_age(metadata.get("age_approx", metadata.get("age"))),
        site=site,
        series_description=f"Dermoscopy ({collection})" if collection else "Dermoscopy",
        study_description=f"monai-cir case {collection}" if collection else "monai-cir case",
        compression=compression,
    )
    diagnosis = str(getattr(record, "diagnosis", "") or "") if include_diagnosis else ""
    sr = case_report_sr(
        image,
        str(getattr(record, "text", "") or ""),
        diagnosis=diagnosis or None,
        case_id=case_id if include_diagnosis else None,  # a query study is no library case
        collection=(collection or None) if include_diagnosis else None,
        confirmation=str(getattr(record, "confirmation", "") or "unknown") if include_diagnosis else None,
        sr_series_uid=uids.sr_series_uid,
        sr_uid=uids.sr_uid,
    )
    folder = Path(out_dir) / uids.patient_id
    folder.mkdir(parents=True, exist_ok=True)
    image_file, sr_file = folder / "image.dcm", folder / "report.dcm"
    if image_file.exists() and not _replaceable(image_file, image):
        # the UIDs come from (collection, case id) alone: cameras restart IMG_0001, and two CSVs named cases.csv
        # share a collection name; written over, the earlier case is lost and its UIDs name other pixels in a PACS
        raise ValueError(f"{folder} already holds case {case_id!r} of collection {collection!r} with another image "
                         f"({getattr(record, 'image_path', '?')} differs): not replaced. The study's UIDs come from the collection and "
                         "case id: give this batch another collection name or a case_id column, or remove the old study first")
    for dataset, path in ((image, image_file), (sr, sr_file)):  # whole files or none: a run killed midway left cut-off ones
        with atomic_path(path) as tmp:
            dataset.save_as(tmp, enforce_file_format=True)
    return DicomizedCase(case_id, image_file, sr_file, uids, str(image.file_meta.TransferSyntaxUID), notices)


def _lossy_source(path: Path) -> str | None:
    """How an image file's pixels were lossy-compressed, whatever its name: the Lossy Image Compression Method term
    (``"ISO_10918_1"`` a JPEG, ``"ISO_15444_1"`` a JPEG 2000, ``""`` a lossy WebP, which has no DICOM term), or ``None``
    for a lossless file (PNG, BMP, TIFF without JPEG, a lossless WebP). Lossy Image Compression must say 01 for the first
    kind even when the decoded pixels are stored uncompressed. A JPEG 2000 counts as lossy: its reversible mode cannot be
    told from a truncated code stream without decoding it, and 01 of a lossless one is the safe error."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head[:3] == b"\xff\xd8\xff":  # SOI + the next marker's first byte
        return "ISO_10918_1"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":  # JP2 box / J2K code stream
        return "ISO_15444_1"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "" if _webp_is_lossy(path) else None
    if head[:4] in (b"II*\x00", b"MM\x00*"):  # TIFF: lossy when its strips or tiles hold JPEG
        try:
            with Image.open(path) as img:
                compression = str(img.info.get("compression", ""))
        except Exception:  # noqa: BLE001 (read_rgb names an unreadable file; here it is simply not known lossy)
            return None
        if "jpeg" in compression:
            return "ISO_10918_1"
        return "" if compression == "webp" else None
    return None


def _webp_is_lossy(path: Path) -> bool:
    """Whether a WebP file holds a lossy (VP8) bitstream: its chunks, past the RIFF header, name VP8 (lossy) or VP8L
    (lossless); an extended file (VP8X) names either later, after optional ICC / animation chunks."""
    data = path.read_bytes()
    offset = 12
    while offset + 8 <= len(data):
        fourcc, size = data[offset:offset + 4], int.from_bytes(data[offset + 4:offset + 8], "little")
        if fourcc == b"VP8 ":
            return True
        if fourcc == b"ANMF":  # an animation frame nests its bitstream chunk after a 16-byte frame header
            if data[offset + 24:offset + 28] == b"VP8 ":
                return True
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    return False


def _replaceable(path: Path, image: Dataset) -> bool:
    """Whether the DICOM image at ``path`` may be written over with ``image``: it holds the same picture (the same pixel
    data, or the same picture in another compression: decoded, a mean difference under 4 grey levels of 255), or it
    cannot be read at all (a file an earlier version's killed run left cut off: no other case's image)."""
    try:
        old = pydicom.dcmread(path)
        if old.get("PixelData") == image.get("PixelData"):
            return True
        a = np.asarray(old.pixel_array, dtype=np.int16)
    except Exception:  # noqa: BLE001 (unreadable, or its pixels are: nothing of another case to keep)
        return True
    b = np.asarray(image.pixel_array, dtype=np.int16)
    return a.shape == b.shape and float(np.abs(a - b).mean()) < 4.0


def dicomize_records(
    records: Iterable[Any],
    out_dir: str | Path,
    compression: str = "jpeg",
    include_diagnosis: bool = True,
    progress: bool = True,
) -> tuple[list[DicomizedCase], list[tuple[str, str]]]:
    """Dicomize many records; a failing case is logged and skipped. Returns (done, [(case_id, error)])."""
    from ..progress import progress_bar

    records = list(records)
    done: list[DicomizedCase] = []
    failed: list[tuple[str, str]] = []
    for record in progress_bar(records, desc="dicomize", unit="case", enabled=progress):
        try:
            done.append(dicomize_record(record, out_dir, compression, include_diagnosis))
        except (ValueError, FileNotFoundError, OSError) as err:
            logger.warning("case %s skipped: %s", getattr(record, "case_id", "?"), err)
            failed.append((str(getattr(record, "case_id", "?")), str(err)))
    return done, failed
