"""The case collections: Derm7pt's 888-image 3-class subset, ISIC UDA-1, and a user's folder + CSV.

Every loader returns a list of :class:`CaseRecord`; labels are shared across collections
(:data:`CLASS_NAMES`: 0 melanoma, 1 nevus, 2 benign keratosis), so a model trained on one
collection is evaluated on another with the same label meaning.

Layouts (under :func:`monai_cir.config.data_root`, ``$MONAI_CIR_DATA``):

- ``derm7pt/release_v0/meta/meta.csv`` + ``images/`` (the official Derm7pt release, research use only).
- ``isic-uda1/metadata.csv`` + ``images/`` (ISIC Archive collection UDA-1, CC0).
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import DATA_ROOT_ENV, data_root
from .report import meta_report
from .diagnoses import DIAGNOSIS_ALIASES, derm7pt_class, normalize_diagnosis
from .sites import UNKNOWN_SITE, normalize_site

logger = logging.getLogger(__name__)

__all__ = [
    "CLASS_NAMES",
    "COLLECTIONS",
    "CONFIRMATIONS",
    "CONFIRMATION_WORDS",
    "DERM7PT_COUNTS",
    "CaseRecord",
    "load_collection",
    "load_derm7pt",
    "load_image_csv",
    "load_isic_uda1",
    "normalize_confirmation",
    "records_dataset",
]

CLASS_NAMES: tuple[str, ...] = ("melanoma", "nevus", "benign keratosis")
DERM7PT_COUNTS = {"melanoma": 252, "nevus": 575, "benign keratosis": 61}  # the paper's subset (data/README.md)
COLLECTIONS = ("derm7pt", "isic-uda1")

DERM7PT_COLUMNS = (
    "case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
    "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
    "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm",
)
ISIC_COLUMNS = ("isic_id", "diagnosis", "age_approx", "sex", "image")

DERM7PT_HELP = (
    "Derm7pt is not redistributed with monai-cir. Download release_v0 from the dataset's own site "
    "(https://derm.cs.sfu.ca, Kawahara et al., IEEE JBHI 2019; academic research use only, see its README.txt), "
    "unpack it so that <root>/derm7pt/release_v0/meta/meta.csv exists, and point ${env} at <root>."
).replace("${env}", DATA_ROOT_ENV)
ISIC_HELP = (
    "Download the ISIC Archive collection UDA-1 (CC0, https://www.isic-archive.com) as "
    "<root>/isic-uda1/metadata.csv + images/, and point " + DATA_ROOT_ENV + " at <root>."
)

# How a case's diagnosis was established, best evidence first. Only "histopathology" is biopsy-confirmed.
CONFIRMATIONS: tuple[str, ...] = ("histopathology", "follow-up", "expert consensus", "unknown")
_CONFIRMATION_ALIASES = {
    # Derm7pt `management`: an excised lesion has a histopathological diagnosis; a lesion under
    # clinical follow-up was diagnosed by its (unchanged) course; "no further examination" means the
    # dermatologists' diagnosis alone.
    "excision": "histopathology",
    "clinical follow up": "follow-up",
    "no further examination": "expert consensus",
    # ISIC `diagnosis_confirm_type`
    "histopathology": "histopathology",
    "serial imaging showing no change": "follow-up",
    "single image expert consensus": "expert consensus",
    "confocal microscopy with consensus dermoscopy": "expert consensus",
    # plain words a user's CSV may hold
    "biopsy": "histopathology",
    "histology": "histopathology",
    "follow-up": "follow-up",
    "follow up": "follow-up",
    "expert consensus": "expert consensus",
    "consensus": "expert consensus",
    "unknown": "unknown",
    "": "unknown",
}

# status -> every word a source may write for it (what a user CSV's ``confirmation`` column accepts; case and
# spacing are ignored), derived from the aliases so that docs and error messages cannot drift from them
CONFIRMATION_WORDS: dict[str, tuple[str, ...]] = {
    status: tuple(word for word, target in _CONFIRMATION_ALIASES.items() if target == status and word) for status in CONFIRMATIONS
}

# how many bad images one error lists (the count of the others follows)
MAX_LISTED_IMAGES = 10



@dataclass
class CaseRecord:
    """One case of a collection.

    Attributes:
        case_id: unique within the collection (``derm7pt-<case_num>``, ISIC ids, or the user's id).
        image_path: the dermoscopy image file.
        diagnosis: readable class name (one of :data:`CLASS_NAMES` for the built-in collections).
        label: integer class (index into :data:`CLASS_NAMES`; user classes beyond them follow).
        text: the clinical text of a query made from this case (never the diagnosis).
        site: anatomical site from :data:`monai_cir.data.sites.SITES` (``"unknown"`` when absent).
        collection: ``"derm7pt"``, ``"isic-uda1"`` or the user's collection name.
        metadata: the raw source columns (raw diagnosis, management, sex, elevation, location...).
        confirmation: how the diagnosis was established, one of :data:`CONFIRMATIONS` (Derm7pt
            ``management``, ISIC ``diagnosis_confirm_type``, a user CSV's ``confirmation`` column).
    """

    case_id: str
    image_path: Path
    diagnosis: str
    label: int
    text: str
    site: str = UNKNOWN_SITE
    collection: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    confirmation: str = "unknown"

    def __post_init__(self) -> None:
        if self.confirmation not in CONFIRMATIONS:
            raise ValueError(f"CaseRecord.confirmation must be one of {CONFIRMATIONS}, got {self.confirmation!r}")


def normalize_confirmation(value: Any) -> str:
    """One of :data:`CONFIRMATIONS` for a source's confirmation string (missing -> ``"unknown"``).

    Raises ``ValueError`` for a value it cannot map, so that no case is called confirmed by mistake."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    key = " ".join(str(value).strip().lower().split())
    if key in _CONFIRMATION_ALIASES:
        return _CONFIRMATION_ALIASES[key]
    raise ValueError(f"unknown diagnosis confirmation {value!r}; use one of {list(CONFIRMATIONS)} (or a Derm7pt management / ISIC diagnosis_confirm_type value)")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    return value


def _read_csv(path: Path, required: Sequence[str], help_text: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found. {help_text}")
    try:
        # index_col=False: a trailing comma on every data row (as spreadsheets export) must not shift the columns
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], index_col=False)
    except Exception as err:  # pandas raises ParserError, UnicodeDecodeError, EmptyDataError...
        found = _other_separator(path)
        if found:
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"cannot parse {path}: the file must be comma-separated, and its header is separated by {found} ({detail})") from err
        if isinstance(err, UnicodeDecodeError):
            raise ValueError(f"cannot parse {path}: it is not UTF-8 text ({err.reason} at byte {err.start}); save it as "
                             "'CSV UTF-8' (a spreadsheet's export option) and run again") from err
        if isinstance(err, pd.errors.EmptyDataError):
            raise ValueError(f"cannot parse {path}: the file is empty; it needs a header line (at least: image,diagnosis) and a row per image") from err
        raise ValueError(f"cannot parse {path}: {err}") from err
    if len(frame.columns) == 1:
        found = _other_separator(path)
        if found:
            raise ValueError(f"cannot parse {path}: the file must be comma-separated, and its header is separated by {found} "
                             f"(header {str(frame.columns[0])[:80]!r}); save it as comma-separated CSV")
    header = next(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()[:1]), [])
    repeated = sorted({name.strip() for name in header if name.strip() and [h.strip() for h in header].count(name.strip()) > 1})
    if repeated:  # pandas renames the second "diagnosis" to "diagnosis.1", and the first silently wins
        raise ValueError(f"{path} is malformed: column(s) {repeated} appear more than once in the header; keep one of each")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} is malformed: missing column(s) {missing}; expected at least {list(required)}, found {list(frame.columns)}")
    return frame


_SEPARATORS = {";": "';' (semicolons)", "\t": "tabs"}


def _other_separator(path: Path) -> str | None:
    """How the header line of ``path`` is separated when it has no comma but semicolons or tabs (a spreadsheet's
    export in a locale whose decimal mark is the comma), else None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline()
    except OSError:
        return None
    if "," in header:
        return None
    return next((name for sep, name in _SEPARATORS.items() if sep in header), None)


def _row_error(path: Path, index: int, message: str) -> ValueError:
    # index is 0-based over data rows; line 1 is the header: the row is the file's line, the data row counts from 1
    return ValueError(f"{path}, row {index + 2} (data row {index + 1}): {message}")


def _row_confirmation(value: Any, csv_path: Path, index: int) -> str:
    try:
        return normalize_confirmation(value)
    except ValueError as err:
        raise _row_error(csv_path, index, str(err)) from None


def _check_image(path: Path, csv_path: Path, index: int) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path} (listed in {csv_path}, row {index + 2})")


def load_derm7pt(root: str | Path | None = None, check_images: bool = True) -> list[CaseRecord]:
    """Derm7pt's 888-image 3-class subset (paper section 3.1), in ``meta.csv`` order.

    ``text`` is :func:`~monai_cir.data.report.meta_report` of the row; ``site`` maps ``location``;
    ``metadata`` keeps the raw row (diagnosis, management, criteria, sex, elevation, location, case_num...).
    Asserts the class counts 252 / 575 / 61."""
    base = Path(root) if root is not None else data_root()
    release = base / "derm7pt" / "release_v0"
    if not release.is_dir():
        raise FileNotFoundError(f"Derm7pt not found: {release} does not exist. {DERM7PT_HELP}")
    csv_path = release / "meta" / "meta.csv"
    frame = _read_csv(csv_path, DERM7PT_COLUMNS, DERM7PT_HELP)
    records: list[CaseRecord] = []
    seen: set[int] = set()
    for index, row in enumerate(frame.to_dict("records")):
        raw = row.get("diagnosis")
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            raise _row_error(csv_path, index, "empty diagnosis")
        diagnosis = derm7pt_class(raw)
        if diagnosis is None:
            continue
        try:
            case_num = int(str(row["case_num"]).strip())
        except ValueError:
            raise _row_error(csv_path, index, f"case_num {row['case_num']!r} is not an integer") from None
        if case_num in seen:
            raise _row_error(csv_path, index, f"duplicate case_num {case_num}")
        seen.add(case_num)
        derm = row.get("derm")
        if not isinstance(derm, str) or not derm.strip():
            raise _row_error(csv_path, index, f"case {case_num} has no dermoscopy image (empty 'derm' column)")
        image_path = release / "images" / derm.strip()
        if check_images:
            _check_image(image_path, csv_path, index)
        try:
            site = normalize_site(row.get("location"))
        except ValueError as err:
            raise _row_error(csv_path, index, str(err)) from None
        metadata = {k: _clean(v) for k, v in row.items()}
        metadata["case_num"] = case_num
        records.append(
            CaseRecord(
                case_id=f"derm7pt-{case_num}",
                image_path=image_path,
                diagnosis=diagnosis,
                label=CLASS_NAMES.index(diagnosis),
                text=meta_report(row),
                site=site,
                collection="derm7pt",
                metadata=metadata,
                confirmation=_row_confirmation(row.get("management"), csv_path, index),
            )
        )
    counts = {name: sum(r.diagnosis == name for r in records) for name in CLASS_NAMES}
    if counts != DERM7PT_COUNTS:
        raise ValueError(
            f"{csv_path} does not give the paper's 888-image subset: class counts {counts}, expected {DERM7PT_COUNTS}; "
            "is this the unmodified release_v0 meta.csv?"
        )
    return records


def _isic_text(age: Any, sex: Any) -> str:
    """``"female, about 55 years"`` from ISIC's ``sex`` and ``age_approx`` (parts left out when missing)."""
    parts = []
    if isinstance(sex, str) and sex.strip():
        parts.append(sex.strip().lower())
    if isinstance(age, str) and age.strip():
        try:
            parts.append(f"about {int(float(age))} years")
        except ValueError:
            pass
    return ", ".join(parts)


def load_isic_uda1(root: str | Path | None = None, check_images: bool = True) -> list[CaseRecord]:
    """ISIC UDA-1: 555 dermoscopy images, melanoma / nevus; text from age and sex; site unknown."""
    base = Path(root) if root is not None else data_root()
    folder = base / "isic-uda1"
    if not folder.is_dir():
        raise FileNotFoundError(f"ISIC UDA-1 not found: {folder} does not exist. {ISIC_HELP}")
    csv_path = folder / "metadata.csv"
    frame = _read_csv(csv_path, ISIC_COLUMNS, ISIC_HELP)
    records = []
    for index, row in enumerate(frame.to_dict("records")):
        raw = row.get("diagnosis")
        diagnosis = normalize_diagnosis(raw) if isinstance(raw, str) else None
        if diagnosis not in ("melanoma", "nevus"):
            raise _row_error(csv_path, index, f"diagnosis {raw!r} is not melanoma or nevus")
        image = row.get("image")
        if not isinstance(image, str) or not image.strip():
            raise _row_error(csv_path, index, "empty 'image' column")
        image_path = folder / image.strip()
        if check_images:
            _check_image(image_path, csv_path, index)
        site = normalize_site(row.get("anatom_site_general")) if "anatom_site_general" in row else UNKNOWN_SITE
        records.append(
            CaseRecord(
                case_id=str(row["isic_id"]).strip(),
                image_path=image_path,
                diagnosis=diagnosis,
                label=CLASS_NAMES.index(diagnosis),
                text=_isic_text(row.get("age_approx"), row.get("sex")),
                site=site,
                collection="isic-uda1",
                metadata={k: _clean(v) for k, v in row.items()},
                confirmation=_row_confirmation(row.get("diagnosis_confirm_type"), csv_path, index),
            )
        )
    return records


def load_collection(name: str, root: str | Path | None = None) -> list[CaseRecord]:
    """``"derm7pt"`` (888 cases) or ``"isic-uda1"`` (555 cases) from ``root`` (default ``$MONAI_CIR_DATA``)."""
    if name == "derm7pt":
        return load_derm7pt(root)
    if name in ("isic-uda1", "isic_uda1", "uda1"):
        return load_isic_uda1(root)
    raise ValueError(f"unknown collection {name!r}; choose one of {list(COLLECTIONS)} or use load_image_csv for your own folder")


STANDARD_DIAGNOSES_TEXT = (
    ", ".join(CLASS_NAMES) + " (also " + ", ".join(DIAGNOSIS_ALIASES) + ", melanosis, and the Derm7pt names that "
    "start with 'melanoma' or end with 'nevus'; case and surrounding spaces are ignored)"
)
USER_CSV_COLUMNS_TEXT = (
    "columns image, diagnosis (optional: case_id, text, site, confirmation = one of " + ", ".join(CONFIRMATIONS)
    + "; " + " / ".join(w for w in CONFIRMATION_WORDS["histopathology"] if w != "histopathology")
    + " also mean histopathology, empty means unknown; patient_id or lesion_id: the images of one patient or lesion, kept "
    "in one cross-validation fold)"
)


def _bad_image(path: Path) -> str | None:
    """Why ``path`` cannot be embedded (None: it can). Open + verify reads the header and, for PNG, the chunk
    checksums, without decoding the pixels: cheap enough to run on every image before embedding any."""
    if not path.is_file():
        return "not found"
    from PIL import Image

    try:
        with Image.open(path) as img:
            kind = img.format
            img.verify()
    except Exception as err:  # PIL raises UnidentifiedImageError, SyntaxError, OSError... for broken files
        detail = str(err).replace(repr(str(path)), "").strip() or type(err).__name__  # the path is named once, by the caller
        return f"not a readable image: {detail}"
    if kind == "JPEG" and not _ends_a_jpeg(path):  # verify() does not decode a JPEG: a cut-off file passed it
        return "a truncated JPEG (the file ends before the image's end marker): copy it again from its source"
    return None


def _ends_a_jpeg(path: Path) -> bool:
    """Whether the JPEG file has its end-of-image marker (FF D9) in its last KiB (some writers pad after it)."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 1024))
        return b"\xff\xd9" in f.read()


def _check_images(paths: Sequence[tuple[int, Path]], csv_path: Path) -> None:
    """Check every ``(data row index, image)`` and report all the bad ones in one error, so that a broken
    file is found before the (long) embedding and the user fixes them all in one go."""
    bad = [(index, path, why) for index, path in paths if (why := _bad_image(path)) is not None]
    if not bad:
        return
    listed = "; ".join(f"{path} (CSV row {index + 2}: {why})" for index, path, why in bad[:MAX_LISTED_IMAGES])
    more = f"; and {len(bad) - MAX_LISTED_IMAGES} more" if len(bad) > MAX_LISTED_IMAGES else ""
    message = (f"{len(bad)} of the {len(paths)} images listed in {csv_path} cannot be read: {listed}{more}. "
               "Fix or remove these files (or their CSV rows) and run again; nothing was embedded")
    # a missing file alone is a FileNotFoundError, as for the built-in collections; a broken one is bad input
    raise (FileNotFoundError if all(why == "not found" for _, _, why in bad) else ValueError)(message)


def _warn_nonstandard_diagnoses(diagnoses: Sequence[str], csv_path: Path) -> None:
    counts = Counter(d for d in diagnoses if d not in CLASS_NAMES)
    if not counts:
        return
    listed = ", ".join(f"{d!r} ({n} row{'s' if n > 1 else ''})" for d, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    # a site may keep classes of its own, so this is no error; but a misspelt label would silently become one
    logger.warning(
        "%s: %d diagnosis value(s) are not standard classes and become classes of their own: %s. Standard: %s. "
        "Correct a misspelt value in the CSV; a class of your own needs nothing.",
        csv_path, len(counts), listed, STANDARD_DIAGNOSES_TEXT,
    )


def load_image_csv(images_dir: str | Path, csv_path: str | Path, collection: str | None = None) -> list[CaseRecord]:
    """A user's collection: a folder of images and a CSV with columns ``image``, ``diagnosis`` and
    optionally ``case_id``, ``text``, ``site``, ``confirmation`` (:data:`CONFIRMATIONS`, or a word of
    :data:`CONFIRMATION_WORDS`; default unknown).

    ``image`` is relative to ``images_dir``; image paths are stored absolute (search and explanations
    run from any folder). ``diagnosis`` strings known to :data:`CLASS_NAMES` (or ``mel``/``nv``/``bkl``)
    get their standard label, other classes follow in sorted order (with a logged warning listing them:
    a misspelt label would otherwise become a class silently). Every image is opened and verified before
    this returns; the error lists all unreadable files with their CSV rows. ``collection`` defaults to the
    CSV file's stem."""
    images_dir, csv_path = Path(images_dir), Path(csv_path)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    # absolute: a relative path would be resolved against whatever folder search / explain later runs in
    images_dir = images_dir.resolve()
    frame = _read_csv(csv_path, ("image", "diagnosis"), f"The CSV needs {USER_CSV_COLUMNS_TEXT}.")
    rows = frame.to_dict("records")
    if not rows:
        raise ValueError(f"{csv_path}: the CSV has no rows (only its header); add one row per case, {USER_CSV_COLUMNS_TEXT}")
    diagnoses = []
    for index, row in enumerate(rows):
        raw = row.get("diagnosis")
        if not isinstance(raw, str) or not raw.strip():
            raise _row_error(csv_path, index, "empty diagnosis")
        diagnoses.append(normalize_diagnosis(raw))
    _warn_nonstandard_diagnoses(diagnoses, csv_path)
    extra = sorted(set(diagnoses) - set(CLASS_NAMES))
    classes = list(CLASS_NAMES) + extra
    name = collection or csv_path.stem
    records, seen, listed = [], set(), {}
    for index, (row, diagnosis) in enumerate(zip(rows, diagnoses)):
        image = row.get("image")
        if not isinstance(image, str) or not image.strip():
            raise _row_error(csv_path, index, "empty 'image' column")
        image_path = images_dir / image.strip()
        case_id = row["case_id"].strip() if isinstance(row.get("case_id"), str) and row["case_id"].strip() else Path(image.strip()).stem
        if case_id in seen:
            raise _row_error(csv_path, index, f"duplicate case_id {case_id!r}")
        seen.add(case_id)
        resolved = image_path.resolve()
        if resolved in listed:  # one image as two cases: in two folds, it would find itself
            raise _row_error(csv_path, index, f"the image {image.strip()!r} is listed already, in CSV row {listed[resolved] + 2}: "
                             "one image is one case (keep one row)")
        listed[resolved] = index
        try:
            site = normalize_site(row.get("site"))
        except ValueError as err:
            raise _row_error(csv_path, index, str(err)) from None
        text = row.get("text") if isinstance(row.get("text"), str) else ""
        records.append(
            CaseRecord(
                case_id, image_path, diagnosis, classes.index(diagnosis), text.strip(), site, name, {k: _clean(v) for k, v in row.items()},
                confirmation=_row_confirmation(row.get("confirmation"), csv_path, index),
            )
        )
    _check_images([(index, r.image_path) for index, r in enumerate(records)], csv_path)
    _warn_identical_images(records, csv_path)
    return records


def _warn_identical_images(records: Sequence[CaseRecord], csv_path: Path) -> None:
    """Log the cases whose image files are byte for byte the same (copies under two names) that no patient_id /
    lesion_id column keeps in one fold: in two folds, each would find the other and score as a perfect match.
    Files are hashed only where another has the same size (cheap)."""
    import hashlib

    from .folds import case_groups

    by_size: dict[int, list[CaseRecord]] = {}
    for record in records:
        by_size.setdefault(record.image_path.stat().st_size, []).append(record)
    by_digest: dict[str, list[CaseRecord]] = {}
    for same_size in (group for group in by_size.values() if len(group) > 1):
        for record in same_size:
            by_digest.setdefault(hashlib.sha256(record.image_path.read_bytes()).hexdigest(), []).append(record)
    copies = [group for group in by_digest.values() if len(group) > 1]
    grouped = case_groups(records)
    if grouped:  # copies the CSV already puts in one group are kept together
        group_of = dict(zip((r.case_id for r in records), grouped[0]))
        copies = [group for group in copies if len({group_of[r.case_id] for r in group}) > 1]
    if copies:
        listed = "; ".join(" = ".join(r.case_id for r in group) for group in copies[:MAX_LISTED_IMAGES])
        logger.warning(
            "%s: %d group(s) of cases have the same image file content: %s%s. Cross-validation may put copies in different folds, "
            "where each finds the other: remove the copies, or give each group one value in a lesion_id column.",
            csv_path, len(copies), listed, f"; and {len(copies) - MAX_LISTED_IMAGES} more" if len(copies) > MAX_LISTED_IMAGES else "",
        )


def records_dataset(records: Sequence[CaseRecord], image_size: int = 512, transform: Any = None):
    """A MONAI ``Dataset`` over records: items ``{"image": (3, S, S) in [0, 1], "text", "label", "case_id"}``.

    Preprocessing is :class:`~monai_cir.data.preprocess.PreprocessImaged` (black-border removal + resize);
    ``transform`` (MONAI dictionary transforms) runs after it."""
    from monai.data import Dataset
    from monai.transforms import Compose

    from .preprocess import PreprocessImaged

    items = [{"image": str(r.image_path), "text": r.text, "label": r.label, "case_id": r.case_id} for r in records]
    steps = [PreprocessImaged("image", image_size)] + ([transform] if transform is not None else [])
    return Dataset(items, Compose(steps))
