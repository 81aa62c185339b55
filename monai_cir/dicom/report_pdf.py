"""The report a clinician reads, as Encapsulated PDF Storage (any viewer shows it).

Page 1 (A4): report date and time, algorithm and version, the patient's sex and age when the study
has them, the query image and text, the similar cases (rank, thumbnail, similarity as a percentage
of the best possible score, diagnosis and how it was confirmed), the evidence summary, and always
"Decision support, not a diagnosis". The explanations follow on one page (five cases a page; more
pages only beyond five): one row per explained case, the query and the case with the regions that made
them similar highlighted in red, and once for the page what the red means (with its colour scale) and
the words of the query text that weighed most, in plain words.

Drawn with reportlab (a few milliseconds per page; matplotlib took seconds to import and render);
thumbnails are embedded as JPEG. The PDF goes into an Encapsulated PDF Storage object
(``1.2.840.10008.5.1.4.1.1.104.1``, Modality DOC) in the query's study, written with pydicom.
"""

from __future__ import annotations

import copy

import datetime
import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, EncapsulatedPDFStorage, ExplicitVRLittleEndian

from ..evidence import EvidenceSummary, image_alone_sentence
from . import codes as C
from .reader import dicom_text, image_label
from .sr import DECISION_SUPPORT_NOTE, _dated_series, _get, _query_dataset, answer_time, similarity_percent

__all__ = ["CLASS_COLOURS", "CONFIRMATION_WORDS", "encapsulated_pdf_dataset", "render_report_pdf", "similar_cases_pdf"]

# each class's colour in the report and in the figures (monai_cir.evaluation.report): Okabe-Ito's colour-blind-safe
# palette (vermillion, blue, bluish green; red against green is the pair a red-green colour-blind reader cannot tell
# apart); other classes grey
CLASS_COLOURS: dict[str, str] = {"melanoma": "#D55E00", "nevus": "#0072B2", "benign keratosis": "#009E73"}
OTHER_CLASS_COLOUR = "#7F7F7F"

# What the report says of each confirmation status (monai_cir.data.collections.CONFIRMATIONS).
CONFIRMATION_WORDS: dict[str, str] = {
    "histopathology": "biopsy-confirmed (histopathology)",
    "follow-up": "clinical follow-up, no biopsy",
    "expert consensus": "expert diagnosis, no biopsy",
    "unknown": "confirmation not recorded",
}
ImageLoader = Callable[[Any], "np.ndarray | None"]
_A4 = (595.2756, 841.8898)  # points
_MM = 72 / 25.4
# lines the notes may take below the query image (beyond: "..."; the SR carries every notice whole)
_NOTES_BELOW_MAX = 14
# explained cases per explanation page, one row each: five pairs side by side on one page compare at a glance
# (one page per case made the reader flip pages), with images still about 4 cm wide
_EXPLAINED_PER_PAGE = 5
# the most red :func:`_overlay` blends into an image (its strongest area); the colour scale shows the same range
_HEAT_ALPHA = 0.6
_RED_AREAS = (
    "Red areas raised the similarity the most: the network found matching patterns there. They are not a "
    "lesion outline and not a diagnostic finding. They carry part of the score only: each row says how much, "
    "and how much the images' likeness as a whole carries."
)


def score_shares(explanation: Any) -> tuple[float, float] | None:
    """``(regions, whole)``: the shares of an explanation's score carried by the query's regions (the red maps) and by
    the images as a whole (the global cosines and the late-fusion branch); the projection residual is the rest. None
    when the score is not positive (no share to speak of)."""
    if not hasattr(explanation, "score_parts"):
        return None
    score = float(explanation.score)
    if score <= 0:
        return None
    try:
        parts = explanation.score_parts()
    except AttributeError:  # levels without their parts (a caller's own summary): no shares to state
        return None
    regions = sum(sum(part["query_regions"]) for part in parts)
    whole = sum(part["global"] for part in parts)
    return regions / score, whole / score
_SEX = {"M": "male", "F": "female", "O": "other"}


def _load(loader: ImageLoader | None, hit: Any) -> np.ndarray | None:
    if loader is None:
        return None
    try:
        image = loader(hit)
    except Exception as err:  # noqa: BLE001 (a missing library image must not stop the report: its box says so, the log why)
        import logging

        logging.getLogger(__name__).warning("library case %s: image not available for the PDF (%s: %s)", _get(hit, "case_id"), type(err).__name__, err)
        return None
    if image is None:
        return None
    image = np.asarray(image)
    if image.ndim == 2 or image.dtype != np.uint8:
        from ..data.preprocess import to_rgb_uint8

        image = to_rgb_uint8(image)
    return image


def _jpeg(image: np.ndarray, max_side: int = 512):
    """A reportlab image reader of a downscaled JPEG (keeps the PDF small and fast to write)."""
    from PIL import Image
    from reportlab.lib.utils import ImageReader

    pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    pil.thumbnail((max_side, max_side), reducing_gap=3.0)  # box-reduce first: 5x faster, same look
    buffer = io.BytesIO()
    pil.save(buffer, "JPEG", quality=85)
    buffer.seek(0)
    return ImageReader(buffer), pil.size


def _print_pixels(points: float) -> int:
    """The pixels a side of ``points`` takes at 300 dpi: sharp on paper, no bigger than that."""
    return int(points / 72 * 300)


def _draw_image(canvas, image: np.ndarray | None, x: float, y: float, w: float, h: float, colour: str = "#000000") -> None:
    """``image`` fitted into the box (x, y bottom-left, w x h), a coloured frame around the box.
    The JPEG has about 300 dpi at the box's size (:func:`_print_pixels`)."""
    from reportlab.lib.colors import HexColor

    if image is None:
        canvas.setFillColor(HexColor("#eeeeee"))
        canvas.rect(x, y, w, h, stroke=0, fill=1)
        canvas.setFillColor(HexColor("#555555"))
        canvas.setFont("Helvetica", 7)
        canvas.drawCentredString(x + w / 2, y + h / 2, "image not available")
    else:
        reader, (iw, ih) = _jpeg(image, max_side=_print_pixels(max(w, h)))
        scale = min(w / iw, h / ih)
        dw, dh = iw * scale, ih * scale
        canvas.drawImage(reader, x + (w - dw) / 2, y + (h - dh) / 2, dw, dh)
    canvas.setStrokeColor(HexColor(colour))
    canvas.setLineWidth(2.5)
    canvas.rect(x, y, w, h, stroke=1, fill=0)


def text_font(text: str, font: str = "Helvetica") -> str:
    """The font to draw ``text`` in: ``font`` (a PDF base font, WinAnsi-encoded) when it has every character,
    else a Unicode one: DejaVu Sans, embedded (a subset), for Latin, Greek, Cyrillic...; for Chinese,
    Japanese or Korean text one of the PDF's standard CID fonts (STSong-Light, HeiseiKakuGo-W5, HYGothic-Medium;
    not embedded: a reader shows them with its own Asian fonts). A name or report in another script must not
    print as black boxes."""
    try:
        str(text).encode("cp1252")
        return font
    except UnicodeEncodeError:
        pass
    bold = font.endswith("Bold")
    codes = [ord(ch) for ch in str(text)]
    if any(0xAC00 <= c <= 0xD7AF or 0x1100 <= c <= 0x11FF or 0x3130 <= c <= 0x318F for c in codes):
        return _cid_font("HYGothic-Medium")
    if any(0x3040 <= c <= 0x30FF for c in codes):  # kana: Japanese
        return _cid_font("HeiseiKakuGo-W5")
    if any(0x3400 <= c <= 0x9FFF or 0xF900 <= c <= 0xFAFF or 0x3000 <= c <= 0x303F or 0xFF00 <= c <= 0xFFEF for c in codes):
        return _cid_font("STSong-Light")
    return _dejavu(bold) or font


@functools.lru_cache(maxsize=None)
def _cid_font(name: str) -> str:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    pdfmetrics.registerFont(UnicodeCIDFont(name))
    return name


@functools.lru_cache(maxsize=None)
def _dejavu(bold: bool) -> str | None:
    """DejaVu Sans (matplotlib, a dependency, ships it), registered once; None when not found."""
    import importlib.util
    from pathlib import Path

    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    spec = importlib.util.find_spec("matplotlib")
    name = "DejaVuSans-Bold" if bold else "DejaVuSans"
    for root in (spec.submodule_search_locations if spec and spec.submodule_search_locations else []):
        path = Path(root) / "mpl-data" / "fonts" / "ttf" / f"{name}.ttf"
        if path.is_file():
            pdfmetrics.registerFont(TTFont(name, str(path)))
            return name
    return None


def _wrapped(text: str, font: str, size: float, width: float) -> list[str]:
    """``text`` as the lines it takes at ``width``."""
    from reportlab.lib.utils import simpleSplit
    from reportlab.pdfbase.pdfmetrics import stringWidth

    lines: list[str] = []
    for block in str(text).splitlines() or [""]:
        for line in simpleSplit(block, font, size, width) or [""]:
            # simpleSplit breaks at spaces only: a word wider than the line (a long case id, text without spaces
            # such as Chinese) would run off the page; it is cut where it fills the line
            while len(line) > 1 and stringWidth(line, font, size) > width:
                cut = 1
                while cut < len(line) - 1 and stringWidth(line[: cut + 1], font, size) <= width:
                    cut += 1
                lines.append(line[:cut])
                line = line[cut:]
            lines.append(line)
    return lines


def _draw_text(canvas, x: float, y: float, text: str, font: str = "Helvetica", size: float = 9) -> None:
    """One line of text that may hold any script (:func:`text_font`)."""
    canvas.setFont(text_font(text, font), size)
    canvas.drawString(x, y, text)


def _draw_fitted(canvas, x: float, y: float, text: str, width: float, size: float = 8, smallest: float = 6) -> None:
    """One line within ``width`` points: its font shrunk down to ``smallest`` points, then its end cut with "..." (the
    identifiers come first in such a line, what is cut is the least needed; before, a long name or ID ran off the page)."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    font = text_font(text)
    while size > smallest and stringWidth(text, font, size) > width:
        size -= 0.5
    if stringWidth(text, font, size) > width:
        while len(text) > 1 and stringWidth(text + "...", font, size) > width:
            text = text[:-1]
        text = text.rstrip() + "..."
    _draw_text(canvas, x, y, text, size=size)


def _paragraph(canvas, text: str, x: float, y: float, width: float, font: str = "Helvetica", size: float = 9, leading: float | None = None, max_lines: int = 40) -> float:
    """Wrapped text from the top line at ``y``; returns the y below the last line."""
    leading = leading or size * 1.25
    font = text_font(text, font)
    canvas.setFont(font, size)
    lines = _wrapped(text, font, size, width)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [lines[max_lines - 1].rstrip() + " ..."]
    for line in lines:
        canvas.drawString(x, y, line)
        y -= leading
    return y


def _readable_name(value: Any) -> str:
    """A DICOM Person Name as a page shows it: "FAMILY, Given Middle" (the alphabetic group; the ideographic one when it
    is the only one), "" for none."""
    text = dicom_text(value).strip()
    if not text:
        return ""
    groups = text.split("=")
    group = next((g for g in groups if g.replace("^", "").strip()), "")
    family, *rest = (group.split("^") + [""] * 5)[:5]
    given = " ".join(part.strip() for part in (rest[2], rest[0], rest[1], rest[3]) if part.strip())  # prefix, given, middle, suffix
    family = family.strip()
    return f"{family}, {given}" if family and given else family or given


def _patient_line(study: Dataset | None) -> str:
    if study is None:
        return ""
    parts = []
    sex = _SEX.get(str(study.get("PatientSex", "") or "").upper())
    if sex:
        parts.append(f"sex {sex}")
    age = str(study.get("PatientAge", "") or "")
    if len(age) == 4 and age[:3].isdigit():
        unit = {"Y": "years", "M": "months", "W": "weeks", "D": "days"}.get(age[3], "")
        parts.append(f"age {int(age[:3])} {unit}".strip())
    if study.get("StudyDate"):
        d = str(study.StudyDate)
        parts.append(f"study of {d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 else f"study of {d}")
    return ", ".join(parts)


def _text_use(explanation: Any, cases: int = 1) -> str:
    """What the query text did for the match, in words: the words it attended to most, or that the image alone
    made the match. ``cases`` > 1: the sentence said once for that many cases (the words are the query's own)."""
    words = [t.word for t in getattr(explanation, "tokens", [])[:6]]
    text_used = any(abs(getattr(level, "gate", 0.0)) > 0 for level in getattr(explanation, "levels", []))
    if words and text_used:
        return f"Words of the query text the model attended to most{' (the same for every case)' if cases > 1 else ''}: {', '.join(words)}."
    if words and cases > 1:
        return "The query text did not change these matches: the image alone made them similar."
    if words:
        return "The query text did not change this match: the image alone made it similar."
    return "Image-only query: no text was used."


def _heat_scale(canvas, x: float, top: float, width: float) -> float:
    """The red overlay's colour scale from ``top`` down: a bar blended as :func:`_overlay` blends, from a plain
    skin tone (no red) to its strongest red, and what its ends mean. Returns the y below it."""
    from reportlab.lib.colors import HexColor

    skin, steps, bar = np.array([0.80, 0.66, 0.58]), 32, 3.5 * _MM
    step = width / steps
    for i in range(steps):
        alpha = _HEAT_ALPHA * i / (steps - 1)
        canvas.setFillColorRGB(*((1 - alpha) * skin + alpha * np.array([1.0, 0.0, 0.0])))
        canvas.rect(x + i * step, top - bar, step + 0.3, bar, stroke=0, fill=1)  # + 0.3: no hairline gaps between steps
    canvas.setStrokeColor(HexColor("#555555"))
    canvas.setLineWidth(0.4)
    canvas.rect(x, top - bar, width, bar, stroke=1, fill=0)
    canvas.setFillColor(HexColor("#333333"))
    canvas.setFont("Helvetica", 7)
    canvas.drawString(x, top - bar - 3 * _MM, "weaker")
    canvas.drawRightString(x + width, top - bar - 3 * _MM, "stronger contribution to the similarity")
    # the overlay is scaled per image (_overlay): the same red in two images is not the same contribution
    y = _paragraph(canvas, "Relative within each image: its strongest area is the strongest red.", x, top - bar - 6.5 * _MM, width, size=7)
    canvas.setFillColor(HexColor("#000000"))
    return y


def _explanation_page(canvas, rows: Sequence[tuple[Any, Any]], text_use: str | None, score_range: tuple[float, float]) -> None:
    """Why the cases of ``rows`` ((hit, explanation) pairs, at most ``_EXPLAINED_PER_PAGE``) look similar to the
    query, in words and pictures (no model internals): one row per case; what holds for every row said once,
    ``text_use`` too (None: it differs between cases, each row says its own)."""
    from reportlab.lib.colors import HexColor

    width, height = _A4
    left, right = 15 * _MM, width - 15 * _MM
    canvas.setFont("Helvetica-Bold", 14)
    canvas.drawString(left, height - 18 * _MM, "Why these cases look similar to the query")
    canvas.setFillColor(HexColor("#b00000"))
    canvas.setFont("Helvetica-Bold", 9)
    canvas.drawString(left, height - 24 * _MM, "DECISION SUPPORT, NOT A DIAGNOSIS")
    canvas.setFillColor(HexColor("#000000"))
    y = height - 31 * _MM
    if any(not isinstance(explanation, np.ndarray) for _, explanation in rows):  # the red overlay is drawn here: say what it means
        scale_x = right - 64 * _MM
        below = _paragraph(canvas, _RED_AREAS, left, y, scale_x - 6 * _MM - left)
        y = min(below, _heat_scale(canvas, scale_x, y + 2.5 * _MM, right - scale_x))
    if text_use:
        y = _paragraph(canvas, text_use, left, y - 1 * _MM, right - left, max_lines=3)

    # the rows: rank, the query with this pair's map, the case with its map (framed in its class's colour), its words
    gap = 4 * _MM
    canvas.setFont("Helvetica-Bold", 8)
    header = y - 4 * _MM
    rows_top = header - 2.5 * _MM
    pitch = (rows_top - 15 * _MM) / _EXPLAINED_PER_PAGE  # above the footer; the same size on every page
    box = min(44 * _MM, pitch - gap)
    query_x, case_x = left + 10 * _MM, left + 10 * _MM + box + gap
    text_x = case_x + box + 6 * _MM
    for x, title in zip((left, query_x, case_x, text_x), ("Rank", "Query, its map for this case", "Similar case, its map", "Case")):
        canvas.drawString(x, header, title)
    for i, (hit, explanation) in enumerate(rows):
        top = rows_top - i * pitch
        meta = _get(hit, "metadata")
        diagnosis = str(_get(meta, "diagnosis") or "unknown")
        confirmation = str(_get(meta, "confirmation") or "unknown")
        canvas.setFont("Helvetica-Bold", 11)
        canvas.drawString(left, top - 4 * _MM, str(_get(hit, "rank")))
        if isinstance(explanation, np.ndarray):  # a ready-made figure, in the space of the row's two images
            _draw_image(canvas, explanation, query_x, top - box, case_x + box - query_x, box, "#ffffff")
        else:
            pixels = _print_pixels(box)
            _draw_image(canvas, _overlay(explanation.query_image, explanation.query_heatmap, pixels), query_x, top - box, box, box)
            _draw_image(canvas, _overlay(explanation.target_image, explanation.target_heatmap, pixels), case_x, top - box, box, box,
                        CLASS_COLOURS.get(diagnosis, OTHER_CLASS_COLOUR))
        y = _paragraph(canvas, str(_get(hit, "case_id")), text_x, top - 3.5 * _MM, right - text_x, font="Helvetica-Bold", max_lines=2)
        y = _paragraph(canvas, diagnosis, text_x, y, right - text_x, max_lines=2)
        canvas.setFont("Helvetica-Bold" if confirmation == "histopathology" else "Helvetica", 9)
        canvas.drawString(text_x, y, CONFIRMATION_WORDS.get(confirmation, CONFIRMATION_WORDS["unknown"]))
        canvas.setFont("Helvetica", 9)
        canvas.drawString(text_x, y - 4 * _MM, f"similarity {similarity_percent(float(_get(hit, 'score')), score_range):.0f}% of the best possible")
        below = y - 9 * _MM
        shares = None if isinstance(explanation, np.ndarray) else score_shares(explanation)
        if shares is not None:  # how much of the score the red maps explain (a fraction of it: found by review)
            canvas.setFillColor(HexColor("#333333"))
            below = _paragraph(canvas, f"red areas: {100 * shares[0]:.0f}% of this score; the images' likeness as a whole: "
                               f"{100 * shares[1]:.0f}%", text_x, below, right - text_x, size=7.5, max_lines=2)
            canvas.setFillColor(HexColor("#000000"))
        if text_use is None and not isinstance(explanation, np.ndarray):
            canvas.setFillColor(HexColor("#333333"))
            _paragraph(canvas, _text_use(explanation), text_x, below, right - text_x, size=7.5, max_lines=3)
            canvas.setFillColor(HexColor("#000000"))


def _overlay(image: np.ndarray, heat: np.ndarray, max_side: int | None = None) -> np.ndarray:
    """``image`` (H, W, 3 in [0, 1] or uint8) with the strongest positive half of ``heat`` blended in red, up to
    ``_HEAT_ALPHA`` where ``heat`` is highest in this image (:func:`_heat_scale` says so on the page).
    ``max_side``: both are box-averaged first to about the pixels the page prints (a whole number of times
    smaller): blending a 1024 px image whole, then shrinking it for the page, took most of the page's time."""
    from PIL import Image

    img = np.asarray(image, dtype=np.float32)
    if img.max() > 1.5:
        img = img / 255.0
    heat = np.asarray(heat, dtype=np.float32)
    factor = math.ceil(max(img.shape[:2]) / max_side) if max_side else 1
    if factor > 1 and heat.shape == img.shape[:2]:
        img = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c])).reduce(factor)) for c in range(3)], axis=-1)
        heat = np.asarray(Image.fromarray(np.ascontiguousarray(heat)).reduce(factor))
    if heat.shape == img.shape[:2] and heat.size:
        heat = np.clip(heat - max(float(np.quantile(heat, 0.5)), 0.0), 0, None)  # the upper half only: where it matters
    if heat.shape != img.shape[:2] or not heat.any():
        return (255 * np.clip(img, 0, 1)).astype(np.uint8)
    alpha = (heat / heat.max())[..., None] * _HEAT_ALPHA
    red = np.zeros_like(img)
    red[..., 0] = 1.0
    return (255 * np.clip((1 - alpha) * img + alpha * red, 0, 1)).astype(np.uint8)


def render_report_pdf(
    query_image: np.ndarray,
    query_text: str,
    hits: Sequence[Any],
    *,
    image_loader: ImageLoader | None = None,
    evidence_summary: EvidenceSummary | Mapping[str, Any] | None = None,
    explanations: Mapping[int, Any] | None = None,
    notices: Sequence[str] = (),
    study: Dataset | None = None,
    score_range: tuple[float, float],
    algorithm_name: str = "monai-cir composed vision-language retrieval",
    algorithm_version: str | None = None,
    algorithm_parameters: Sequence[str] | None = None,
    created: datetime.datetime | None = None,
    differential_rank: int | None = None,
    image_alone: Mapping[str, int] | None = None,
    ordered_by_prior: bool | None = None,
    frame_number: int | None = None,
) -> bytes:
    """The PDF bytes. ``hits`` as for :func:`monai_cir.dicom.sr.similar_cases_sr`;
    ``image_loader(hit)`` returns a library image (HWC) or None (placeholder box);
    ``explanations``: rank -> :class:`monai_cir.explain.Explanation` (or a ready HWC image), one row each on the
    explanation page(s);
    ``study``: the query's dataset, for the patient's sex and age, the identifiers and which image of the study
    it is (:func:`~monai_cir.dicom.reader.image_label`, ``frame_number`` of a multi-frame one);
    ``differential_rank``: the rank shown for the differential, not for its similarity
    (:mod:`monai_cir.differential`; its row says so, a notice says why);
    ``image_alone``: diagnosis -> cases among the same image's most similar cases without the text (one line
    under the cases' heading: what the text changed); ``ordered_by_prior``: whether the diagnosis prior ordered
    ``hits`` (:data:`monai_cir.prior_ranking.PRIOR_RANKING`): the heading says "ordered by similarity and likely
    diagnosis" or "most similar first"; None (not stated): it claims no order."""
    from reportlab import rl_config
    from reportlab.lib.colors import HexColor
    from reportlab.pdfgen.canvas import Canvas

    # binary streams: reportlab's ASCII85 armour runs in pure Python here and was 2/3 of the time
    rl_config.useA85 = 0
    width, height = _A4
    created = created or datetime.datetime.now().astimezone()
    version = algorithm_version or C.software_version()
    hits = list(hits)
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=_A4, invariant=0, pageCompression=1)
    canvas.setTitle("Similar cases (decision support)")
    canvas.setAuthor(C.MANUFACTURER)
    canvas.setSubject("decision support, not a diagnosis")
    left, right = 15 * _MM, width - 15 * _MM

    canvas.setFont("Helvetica-Bold", 16)
    canvas.drawString(left, height - 18 * _MM, "Similar cases from the case library")
    canvas.setFillColor(HexColor("#b00000"))
    canvas.setFont("Helvetica-Bold", 9)
    canvas.drawString(left, height - 24 * _MM, "DECISION SUPPORT, NOT A DIAGNOSIS")
    canvas.setFillColor(HexColor("#333333"))
    canvas.setFont("Helvetica", 8)
    made_by = f"{algorithm_name} {version}" + (f" ({', '.join(map(str, algorithm_parameters))})" if algorithm_parameters else "")
    _draw_fitted(canvas, left, height - 29 * _MM, f"Report of {created:%Y-%m-%d %H:%M %Z}".strip() + f"   |   {made_by}", right - left)
    ids = []
    if study is not None:
        # the patient by name and birth date as well as by ID, here and in every page's footer (found by the viewer review:
        # a page printed, faxed or filed apart named its patient by one identifier only, the ID)
        name = _readable_name(study.get("PatientName"))
        if name:
            ids.append(f"Patient {name}")
        born = str(study.get("PatientBirthDate", "") or "")
        if len(born) == 8 and born.isdigit():
            ids.append(f"born {born[:4]}-{born[4:6]}-{born[6:]}")
        ids.append(f"Patient ID {dicom_text(study.get('PatientID')) or '(none)'}")
        if study.get("AccessionNumber"):
            ids.append(f"accession {dicom_text(study.AccessionNumber)}")
        if study.get("SOPInstanceUID"):  # several images in a study: which one this report answers
            ids.append(f"query {image_label(study, frame_number)}")
    patient = _patient_line(study)
    _draw_fitted(canvas, left, height - 33 * _MM, "   ".join(ids + ([patient] if patient else [])), right - left)
    canvas.setFillColor(HexColor("#000000"))

    # query image and text
    box = 55 * _MM
    top = height - 38 * _MM
    _draw_image(canvas, query_image, left, top - box, box, box)
    canvas.setFont("Helvetica-Bold", 10)
    text_x = left + box + 6 * _MM
    canvas.drawString(text_x, top - 4 * _MM, "Query")
    y = _paragraph(canvas, query_text.strip() or "(no report text: the search used the image only)", text_x, top - 9 * _MM, right - text_x, max_lines=12)
    below_image = top - box
    if notices:
        canvas.setFillColor(HexColor("#805000"))
        # the notes fill the space beside the query image and go on below it, across the page (the cases' table
        # moves down): a notice cut short is one the reader does not get
        notes = "Notes: " + "; ".join(str(n) for n in notices)
        lines = _wrapped(notes, text_font(notes), 7, right - text_x)
        beside = max(0, int((y - 2 * _MM - below_image) // (7 * 1.25)))
        if beside:
            _paragraph(canvas, "\n".join(lines[:beside]), text_x, y - 2 * _MM, right - text_x, size=7, max_lines=beside)
        if len(lines) > beside:  # beyond _NOTES_BELOW_MAX lines "...": the SR and results.json carry every notice whole
            below_image = _paragraph(canvas, " ".join(lines[beside:]), left, below_image - 4 * _MM, right - left, size=7, max_lines=_NOTES_BELOW_MAX)
        canvas.setFillColor(HexColor("#000000"))

    # the similar cases, one row each
    y = below_image - 9 * _MM
    canvas.setFont("Helvetica-Bold", 10)
    confirmed = sum(str(_get(_get(h, "metadata"), "confirmation") or "") == "histopathology" for h in hits)
    # with the diagnosis prior the order is not by similarity alone: the header must not say "best first"; a caller
    # that does not say how the cases were ordered gets no claim about it
    order = {True: ", ordered by similarity and likely diagnosis", False: ", most similar first", None: ""}[ordered_by_prior]
    if differential_rank is not None and ordered_by_prior is False and any(_get(h, "rank") == differential_rank for h in hits):
        order += f" except rank {differential_rank}"  # the slot placed it there; its row says "differential: see Notes"
    canvas.drawString(left, y, f"{len(hits)} similar cases{order} ({confirmed} of them biopsy-confirmed)" if hits else "No similar case was found.")
    if image_alone and hits:
        canvas.setFont("Helvetica", 8)
        canvas.setFillColor(HexColor("#333333"))
        canvas.drawString(left, y - 4 * _MM, image_alone_sentence(image_alone))
        canvas.setFillColor(HexColor("#000000"))
        y -= 4 * _MM
    y -= 4 * _MM
    columns = (left, left + 10 * _MM, left + 40 * _MM, left + 66 * _MM, left + 116 * _MM)
    canvas.setFont("Helvetica-Bold", 8)
    for x, title in zip(columns, ("Rank", "Image", "Similarity*", "Diagnosis (case)", "How the diagnosis was confirmed")):
        canvas.drawString(x, y - 3 * _MM, title)
    y -= 5 * _MM
    room = y - 53 * _MM  # what the evidence summary, the footnote and the footer leave
    thumb = max(12 * _MM, min(24 * _MM, room / max(len(hits), 1) - 2 * _MM))
    rows = max(1, min(len(hits), int(room // (thumb + 2 * _MM))))
    previous_score = math.inf
    for hit in hits[:rows]:
        meta = _get(hit, "metadata")
        diagnosis = str(_get(meta, "diagnosis") or "unknown")
        confirmation = str(_get(meta, "confirmation") or "unknown")
        row_top = y
        _draw_image(canvas, _load(image_loader, hit), columns[1], row_top - thumb, thumb, thumb, CLASS_COLOURS.get(diagnosis, OTHER_CLASS_COLOUR))
        mid = row_top - thumb / 2
        canvas.setFont("Helvetica-Bold", 11)
        canvas.drawString(columns[0], mid, str(_get(hit, "rank")))
        canvas.drawString(columns[2], mid, f"{similarity_percent(float(_get(hit, 'score')), score_range):.0f}%")
        _draw_text(canvas, columns[3], mid, diagnosis, size=9)
        canvas.setFillColor(HexColor("#555555"))
        _draw_text(canvas, columns[3], mid - 3.5 * _MM, f"{_get(hit, 'case_id')}, {_get(meta, 'collection') or 'library'}"[:48], size=7)
        canvas.setFont("Helvetica", 7)
        # under the case id, in the diagnosis column (the rank column is too narrow: it ran over the thumbnail)
        marks = (["differential"] if differential_rank is not None and _get(hit, "rank") == differential_rank else []) + (
            ["more similar than the case above"] if float(_get(hit, "score")) > previous_score + 1e-9 else [])
        if marks:
            canvas.drawString(columns[3], mid - 6.5 * _MM, "; ".join(marks) + ": see Notes")
        previous_score = float(_get(hit, "score"))
        canvas.setFillColor(HexColor("#000000"))
        canvas.setFont("Helvetica-Bold" if confirmation == "histopathology" else "Helvetica", 9)
        canvas.drawString(columns[4], mid, CONFIRMATION_WORDS.get(confirmation, CONFIRMATION_WORDS["unknown"]))
        y = row_top - thumb - 2 * _MM
    if len(hits) > rows:
        _paragraph(canvas, f"... and {len(hits) - rows} more in the structured report (SR).", left, y - 2 * _MM, right - left, size=8)
        y -= 6 * _MM

    # evidence summary and the fine print
    y -= 3 * _MM
    if evidence_summary is not None:
        canvas.setFont("Helvetica-Bold", 10)
        canvas.drawString(left, y, "Evidence summary")
        y = _paragraph(canvas, EvidenceSummary.coerce(evidence_summary).text(label=False), left, y - 5 * _MM, right - left, max_lines=5)
    low, high = score_range
    canvas.setFillColor(HexColor("#333333"))
    _paragraph(
        canvas,
        f"* Similarity: the model's similarity score (of the image, and of the text where the text counted) as a percentage of the highest score it can give "
        f"(scores range from {low:g} to {high:g}). It ranks the library cases; it is not a probability of a diagnosis.\n"
        + DECISION_SUPPORT_NOTE,
        left, 27 * _MM, right - left, size=7, max_lines=6,
    )
    explained = [(hit, explanations[_get(hit, "rank")]) for hit in hits if explanations and explanations.get(_get(hit, "rank")) is not None]
    pages = 1 + math.ceil(len(explained) / _EXPLAINED_PER_PAGE)
    # the disclaimer first: a footer too long for the page loses its end, never the disclaimer
    footer = "   |   ".join(["decision support, not a diagnosis", *ids, f"report of {created:%Y-%m-%d %H:%M %Z}".strip()])
    _footer(canvas, footer, 1, pages)
    canvas.showPage()

    # what the query text did, said once when it is the same for every case (a ready-made figure says its own)
    drawn = [explanation for _, explanation in explained if not isinstance(explanation, np.ndarray)]
    text_use = _text_use(drawn[0], len(drawn)) if drawn and len({_text_use(e) for e in drawn}) == 1 else None
    for page, start in enumerate(range(0, len(explained), _EXPLAINED_PER_PAGE), start=2):
        _explanation_page(canvas, explained[start: start + _EXPLAINED_PER_PAGE], text_use, score_range)
        _footer(canvas, footer, page, pages)  # a page printed or filed apart still names its patient
        canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def _footer(canvas: Any, text: str, page: int, pages: int) -> None:
    from reportlab.lib.colors import HexColor

    width, _ = _A4
    canvas.setFillColor(HexColor("#555555"))
    _draw_fitted(canvas, 15 * _MM, 9 * _MM, text, width - 30 * _MM - 18 * _MM, size=7, smallest=5.5)  # (18 mm: "page i of n")
    canvas.setFont("Helvetica", 7)
    canvas.drawRightString(width - 15 * _MM, 9 * _MM, f"page {page} of {pages}")
    canvas.setFillColor(HexColor("#000000"))


# the Patient, General Study and Patient Study modules' attributes the PDF carries from the query's study: the SR gets the
# same from highdicom (copy_patient_and_study_information); before, the PDF left out the issuer of the patient ID, the
# other patient IDs and the accession number's issuer, so a PACS that matches a patient by ID and issuer filed the PDF
# apart from its SR
_PATIENT_AND_STUDY_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                             "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
_PATIENT_AND_STUDY_OPTIONAL = (
    # Patient
    "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "TypeOfPatientID", "OtherPatientIDsSequence", "OtherPatientNames",
    "PatientBirthTime", "EthnicGroup", "PatientComments", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    # General Study
    "IssuerOfAccessionNumberSequence", "StudyDescription", "ReferencedStudySequence", "ProcedureCodeSequence",
    "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    # Patient Study
    "PatientAge", "PatientSize", "PatientWeight", "AdmittingDiagnosesDescription", "AdmissionID", "IssuerOfAdmissionIDSequence",
)


def encapsulated_pdf_dataset(
    pdf: bytes,
    study: Dataset,
    *,
    title: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 98,
    instance_number: int = 1,
    frame_number: int | None = None,
) -> Dataset:
    """An Encapsulated PDF Storage dataset in ``study``'s patient and study (pydicom); when ``study`` is
    the query image's dataset, the PDF references it as its source (Source Instance Sequence), and its series
    description and default title name the image (:func:`~monai_cir.dicom.reader.image_label`)."""
    if not pdf.startswith(b"%PDF"):
        raise ValueError("pdf must be the bytes of a PDF document (starting with %PDF)")
    if not str(study.get("StudyInstanceUID", "") or ""):
        raise ValueError("the study dataset has no StudyInstanceUID: cannot file the PDF")
    now = datetime.datetime.now().astimezone()  # this host's local time, its offset written below (_dated_series)
    sop_uid = sop_instance_uid or C.new_uid()
    about = image_label(study, frame_number) if study.get("SOPInstanceUID") else None
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = C.OUTPUT_CHARACTER_SET  # as the SR: the names decoded from any input set, written as UTF-8
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    for keyword in _PATIENT_AND_STUDY_TYPE_2:  # the modules' Type 1 / 2 attributes: present, empty when the study has none
        setattr(ds, keyword, study.get(keyword, "") or "")
    # the rest as the study has them, as highdicom copies them into the SR: decoded from the study's character set first
    # (a sequence's items keep their bytes otherwise, and "Rhône" in Latin-1 read "Rh\ufffdne" in the UTF-8 PDF)
    carried = Dataset()
    carried.SpecificCharacterSet = study.get("SpecificCharacterSet", "ISO_IR 6") or "ISO_IR 6"
    for keyword in _PATIENT_AND_STUDY_OPTIONAL:
        if keyword in study:
            carried[keyword] = copy.deepcopy(study[keyword])
    carried.decode()
    for element in carried:
        if element.keyword != "SpecificCharacterSet":
            ds[element.tag] = element
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid or C.new_uid()
    ds.SeriesNumber = series_number
    ds.Manufacturer = C.MANUFACTURER
    ds.ManufacturerModelName = C.MODEL_NAME
    ds.SoftwareVersions = C.software_version()
    ds.ConversionType = "WSD"
    ds.InstanceNumber = instance_number
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    _dated_series(ds)
    # the answer's time in its description and title (OHIF's study browser shows the description, not the series date:
    # two answers to one image looked the same there)
    when = answer_time(ds)
    ds.SeriesDescription = (f"Similar cases report {when}, {about}" if about else f"Similar cases report {when} (monai-cir)")[:64]
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title or (f"Similar cases report {when}" + (f", {about}" if about else "") + " (decision support)")
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    if study.get("SOPInstanceUID") and study.get("SOPClassUID"):  # the query image the report is derived from (Type 1C)
        source = Dataset()
        source.ReferencedSOPClassUID = study.SOPClassUID
        source.ReferencedSOPInstanceUID = study.SOPInstanceUID
        ds.SourceInstanceSequence = [source]
    data = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocument = data
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds


def similar_cases_pdf(
    query: Any,
    hits: Sequence[Any],
    *,
    image_loader: ImageLoader | None = None,
    evidence_summary: EvidenceSummary | Mapping[str, Any] | None = None,
    explanations: Mapping[int, Any] | None = None,
    query_image: np.ndarray | None = None,
    notices: Sequence[str] | None = None,
    score_range: tuple[float, float],
    differential_rank: int | None = None,
    image_alone: Mapping[str, int] | None = None,
    ordered_by_prior: bool | None = None,
    algorithm_parameters: Sequence[str] | None = None,
    **kwargs: Any,
) -> Dataset:
    """Render the report for a :class:`~monai_cir.dicom.reader.DermoscopyQuery` and wrap it as
    Encapsulated PDF in the query's study: what the deploy app files (its plain PDF is the dataset's
    ``EncapsulatedDocument``, ``EncapsulatedDocumentLength`` bytes). ``notices``: the reader's notices
    (default: the query's own); ``differential_rank`` / ``image_alone`` / ``ordered_by_prior`` / ``algorithm_parameters``
    as for :func:`render_report_pdf`; ``kwargs`` go to :func:`encapsulated_pdf_dataset`."""
    ds, frame, text, query_notices = _query_dataset(query)
    image = query_image if query_image is not None else getattr(query, "image", None)
    if image is None:
        raise ValueError("the query image is needed for the PDF: pass a DermoscopyQuery or query_image")
    pdf = render_report_pdf(
        image, text, hits, image_loader=image_loader, evidence_summary=evidence_summary, explanations=explanations,
        notices=query_notices if notices is None else notices, study=ds, score_range=score_range,
        differential_rank=differential_rank, image_alone=image_alone, ordered_by_prior=ordered_by_prior, frame_number=frame,
        algorithm_parameters=algorithm_parameters,
    )
    return encapsulated_pdf_dataset(pdf, ds, **dict({"frame_number": frame}, **kwargs))
