"""The "meta report template": a case's 7-point criteria and elevation / location / sex as a short
clinical report, the text half of a composed query (paper section 3.1, DESIGN.md section 3).

The report describes what a dermatologist sees and notes; it NEVER contains the diagnosis or the
management (excision, follow-up...), which would leak the retrieval label. :data:`FORBIDDEN_WORDS`
lists the words the tests check for.

Example (Derm7pt case 701)::

    Palpable lesion on the chest of a female patient. Dermoscopy: atypical pigment network;
    irregular streaks; diffuse irregular pigmentation; regression structures (blue and white areas);
    irregular dots and globules; no blue-whitish veil; no vascular structures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["CRITERIA", "FORBIDDEN_WORDS", "meta_report"]

# The seven criteria of the 7-point checklist, in Derm7pt's column order, with their report phrase.
CRITERIA: tuple[tuple[str, str], ...] = (
    ("pigment_network", "pigment network"),
    ("streaks", "streaks"),
    ("pigmentation", "pigmentation"),
    ("regression_structures", "regression structures"),
    ("dots_and_globules", "dots and globules"),
    ("blue_whitish_veil", "blue-whitish veil"),
    ("vascular_structures", "vascular structures"),
)

# Words that would reveal the label (diagnoses of the 3 classes and the other Derm7pt diagnoses,
# and the management column). Used by the tests; never produced by the template.
FORBIDDEN_WORDS: tuple[str, ...] = (
    "melanoma", "nevus", "naevus", "keratosis", "seborrheic", "melanosis", "lentigo", "carcinoma",
    "dermatofibroma", "malignant", "benign", "excision", "follow up", "follow-up", "further examination",
    "metastasis", "spitz", "clark",
)

_LOCATION_PHRASE = {"head neck": "head or neck", "genital areas": "genital area", "acral": "acral skin"}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _criterion(value: Any, phrase: str) -> str | None:
    """One criterion as a phrase: ``absent`` -> ``no <phrase>``; ``present`` -> ``<phrase> present``;
    a grade (``typical``, ``irregular``, ``blue areas``...) -> ``<grade> <phrase>``."""
    if _missing(value):
        return None
    value = str(value).strip().lower()
    if value == "absent":
        return f"no {phrase}"
    if value == "present":
        return f"{phrase} present"
    if phrase == "regression structures":  # "blue areas", "white areas", "combinations"
        return f"regression structures ({value})" if value != "combinations" else "regression structures (blue and white areas)"
    if phrase == "vascular structures":
        return f"vascular structures {value}" if value.startswith("within") else f"{value} vascular structures"
    return f"{value} {phrase}"


def meta_report(case: Mapping[str, Any]) -> str:
    """Render the clinical report of one case.

    Args:
        case: a mapping with any of the 7-point criteria columns of Derm7pt's ``meta.csv``
            (:data:`CRITERIA` keys) and ``elevation``, ``location``, ``sex``. Missing values are left
            out of the sentence. ``diagnosis``, ``management`` and every other key are ignored on
            purpose: they leak the label.

    Returns:
        Two sentences: the clinical context (elevation, location, sex), then the dermoscopic
        criteria. An empty string when the case has none of these fields.
    """
    elevation, location, sex = (None if _missing(case.get(k)) else str(case.get(k)).strip().lower() for k in ("elevation", "location", "sex"))
    first = f"{elevation.capitalize()} lesion" if elevation else "Lesion"
    if location:
        first += f" on the {_LOCATION_PHRASE.get(location, location)}"
    if sex:
        first += f" of a {sex} patient"
    findings = [p for p in (_criterion(case.get(key), phrase) for key, phrase in CRITERIA) if p]
    if not findings and not (elevation or location or sex):
        return ""
    text = first + "."
    if findings:
        text += " Dermoscopy: " + "; ".join(findings) + "."
    return text
