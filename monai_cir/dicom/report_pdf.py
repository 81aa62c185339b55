"""A report a clinician can read, as Encapsulated PDF Storage (any viewer shows it).

The PDF (matplotlib ``PdfPages``, Agg backend) shows the query image and text, the top-k similar
cases as thumbnails with rank, score and diagnosis (class-coloured borders, like the paper's
Fig. 3), the evidence summary when given, and always the line "Decision support, not a
diagnosis". Optional explanation images (issue 7) go on further pages, one per match.

The PDF goes into an Encapsulated PDF Storage object (``1.2.840.10008.5.1.4.1.1.104.1``, Modality
DOC) in the query's study, written with pydicom.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from . import codes as C
from .sr import DECISION_SUPPORT_NOTE, EvidenceSummary, _get, _query_dataset

__all__ = ["CLASS_COLOURS", "encapsulated_pdf_dataset", "render_report_pdf", "similar_cases_pdf"]

CLASS_COLOURS: dict[str, str] = {"melanoma": "#d62728", "nevus": "#2ca02c", "benign keratosis": "#1f77b4"}
_OTHER_COLOUR = "#7f7f7f"
ImageLoader = Callable[[Any], "np.ndarray | None"]


def _colour(diagnosis: str | None) -> str:
    return CLASS_COLOURS.get(str(diagnosis or "").lower(), _OTHER_COLOUR)


def _show(ax, image: np.ndarray | None, colour: str, title: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.set_facecolor("#eeeeee")
        ax.text(0.5, 0.5, "image not\navailable", ha="center", va="center", fontsize=7, color="#555555", transform=ax.transAxes)
    else:
        ax.imshow(np.asarray(image), aspect="equal")
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
    ax.set_title(title, fontsize=7, color="black")


def _load(loader: ImageLoader | None, hit: Any) -> np.ndarray | None:
    if loader is None:
        return None
    try:
        image = loader(hit)
    except Exception:  # a missing library image must not stop the report
        return None
    if image is None:
        return None
    image = np.asarray(image)
    if image.ndim == 2 or image.dtype != np.uint8:
        from ..data.preprocess import to_rgb_uint8

        image = to_rgb_uint8(image)
    return image


def render_report_pdf(
    query_image: np.ndarray,
    query_text: str,
    hits: Sequence[Any],
    *,
    image_loader: ImageLoader | None = None,
    evidence_summary: Any = None,
    explanations: Mapping[int, np.ndarray] | None = None,
    notices: Sequence[str] = (),
    patient_id: str = "",
    study_uid: str = "",
    title: str = "Similar biopsy-confirmed cases",
) -> bytes:
    """The PDF bytes. ``hits`` as for :func:`monai_cir.dicom.sr.similar_cases_sr`;
    ``image_loader(hit)`` returns a library image (HWC) or None (placeholder box);
    ``explanations``: rank -> explanation image (HWC), one page each."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.patches import Patch

    buffer = io.BytesIO()
    hits = list(hits)
    with PdfPages(buffer, metadata={"Title": title, "Creator": "monai-cir", "Subject": "decision support"}) as pdf:
        fig = plt.figure(figsize=(8.27, 11.69))  # A4 portrait
        fig.text(0.05, 0.965, title, fontsize=15, weight="bold")
        fig.text(0.05, 0.945, f"Patient {patient_id}   Study {study_uid}", fontsize=7, color="#444444")
        fig.text(0.05, 0.928, "DECISION SUPPORT, NOT A DIAGNOSIS.", fontsize=9, weight="bold", color="#b00000")
        ax = fig.add_axes([0.05, 0.66, 0.38, 0.25])
        _show(ax, query_image, "black", "Query image")
        text = query_text.strip() or "(no report text: image-only query)"
        import textwrap

        wrapped = "\n".join(textwrap.wrap(text, 60)[:14])
        fig.text(0.47, 0.90, "Query text", fontsize=9, weight="bold", va="top")
        fig.text(0.47, 0.88, wrapped, fontsize=8, va="top", wrap=True)
        if notices:
            fig.text(0.47, 0.70, "\n".join(textwrap.shorten(str(n), 90) for n in notices[:4]), fontsize=6, color="#805000", va="top")

        n = len(hits)
        cols = 5
        rows = max(1, min(3, -(-n // cols)))
        grid_top, cell_h = 0.60, 0.17
        fig.text(0.05, grid_top + 0.02, f"Top {n} similar cases (rank, similarity score, confirmed diagnosis)", fontsize=9, weight="bold")
        for i, hit in enumerate(hits[: rows * cols]):
            r, c = divmod(i, cols)
            ax = fig.add_axes([0.05 + c * 0.185, grid_top - (r + 1) * cell_h, 0.165, cell_h - 0.03])
            meta = _get(hit, "metadata")
            diagnosis = _get(meta, "diagnosis") or "unknown"
            _show(ax, _load(image_loader, hit), _colour(diagnosis), f"#{_get(hit, 'rank')}  {float(_get(hit, 'score')):.3f}\n{diagnosis}")
        if n == 0:
            fig.text(0.05, grid_top - 0.05, "No similar case was found.", fontsize=9)
        legend = [Patch(edgecolor=col, facecolor="white", linewidth=3, label=name) for name, col in CLASS_COLOURS.items()]
        fig.legend(handles=legend, loc="lower left", bbox_to_anchor=(0.05, 0.11), ncol=3, fontsize=7, frameon=False)
        bottom = [DECISION_SUPPORT_NOTE]
        if evidence_summary is not None:
            summary = EvidenceSummary.coerce(evidence_summary)
            shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(summary.distribution.items(), key=lambda kv: -kv[1]))
            bottom.insert(
                0,
                f"Evidence summary (decision support): {summary.prediction}, confidence {summary.confidence:.0%}; "
                f"top-{summary.k} diagnoses: {shares}.",
            )
        fig.text(0.05, 0.045, "\n".join(textwrap.fill(b, 110) for b in bottom), fontsize=7, va="bottom")
        pdf.savefig(fig)
        plt.close(fig)

        for hit in hits:
            rank = _get(hit, "rank")
            if not explanations or explanations.get(rank) is None:
                continue
            fig = plt.figure(figsize=(8.27, 11.69))
            meta = _get(hit, "metadata")
            fig.text(0.05, 0.96, f"Why rank {rank} is similar ({_get(meta, 'diagnosis') or 'unknown'}, score {float(_get(hit, 'score')):.3f})", fontsize=12, weight="bold")
            fig.text(0.05, 0.94, "DECISION SUPPORT, NOT A DIAGNOSIS.", fontsize=8, color="#b00000")
            ax = fig.add_axes([0.05, 0.1, 0.9, 0.8])
            ax.imshow(np.asarray(explanations[rank]))
            ax.axis("off")
            pdf.savefig(fig)
            plt.close(fig)
    return buffer.getvalue()


def encapsulated_pdf_dataset(
    pdf: bytes,
    study: Dataset,
    *,
    title: str = "Similar cases report (decision support)",
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 98,
    instance_number: int = 1,
) -> Dataset:
    """An Encapsulated PDF Storage dataset in ``study``'s patient and study (pydicom)."""
    if not pdf.startswith(b"%PDF"):
        raise ValueError("pdf must be the bytes of a PDF document (starting with %PDF)")
    for keyword in ("StudyInstanceUID", "PatientID"):
        if not str(study.get(keyword, "") or ""):
            raise ValueError(f"the study dataset has no {keyword}: cannot file the PDF")
    now = datetime.datetime.now()
    sop_uid = sop_instance_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = study.get("SpecificCharacterSet", "ISO_IR 192") or "ISO_IR 192"
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, study.get(keyword, "") or "")
    for keyword in ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(ds, keyword, study.get(keyword, "") or "")
    if "StudyDescription" in study:
        ds.StudyDescription = study.StudyDescription
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "Similar cases report (monai-cir)"
    ds.Manufacturer = C.MANUFACTURER
    ds.ManufacturerModelName = C.MODEL_NAME
    ds.SoftwareVersions = C.software_version()
    ds.ConversionType = "WSD"
    ds.InstanceNumber = instance_number
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    data = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocument = data
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds


def similar_cases_pdf(
    query: Any,
    hits: Sequence[Any],
    *,
    image_loader: ImageLoader | None = None,
    evidence_summary: Any = None,
    explanations: Mapping[int, np.ndarray] | None = None,
    query_image: np.ndarray | None = None,
    **kwargs: Any,
) -> Dataset:
    """Render the report for a :class:`~monai_cir.dicom.reader.DermoscopyQuery` and wrap it as
    Encapsulated PDF in the query's study. ``kwargs`` go to :func:`encapsulated_pdf_dataset`."""
    ds, _, text, notices = _query_dataset(query)
    image = query_image if query_image is not None else getattr(query, "image", None)
    if image is None:
        raise ValueError("the query image is needed for the PDF: pass a DermoscopyQuery or query_image")
    pdf = render_report_pdf(
        image,
        text,
        hits,
        image_loader=image_loader,
        evidence_summary=evidence_summary,
        explanations=explanations,
        notices=notices,
        patient_id=str(ds.get("PatientID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
    )
    return encapsulated_pdf_dataset(pdf, ds, **kwargs)
