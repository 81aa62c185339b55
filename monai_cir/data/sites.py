"""Controlled anatomical-site vocabulary with SNOMED CT codes.

Every :class:`~monai_cir.data.collections.CaseRecord` carries one of :data:`SITES` in ``site``.
Collections map their own location strings onto this small vocabulary (Derm7pt: :data:`DERM7PT_LOCATION_TO_SITE`);
the raw string stays in ``record.metadata``. The SNOMED CT codes serve the DICOM Anatomic Region
Sequence (0008,2218) of dicomized images and site-conditioned search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DERM7PT_LOCATION_TO_SITE", "SITES", "SITE_CODES", "UNKNOWN_SITE", "SiteCode", "normalize_site"]


@dataclass(frozen=True)
class SiteCode:
    """A coded anatomic region: ``(code_value, coding_scheme, code_meaning)`` as DICOM expects."""

    code_value: str
    code_meaning: str
    coding_scheme: str = "SCT"


UNKNOWN_SITE = "unknown"

# site -> SNOMED CT body structure (DICOM CID 4031 "Common Anatomic Regions" where it has one).
SITE_CODES: dict[str, SiteCode | None] = {
    "head and neck": SiteCode("774007", "Head and Neck"),
    "trunk": SiteCode("22943007", "Trunk"),
    "upper limbs": SiteCode("53120007", "Upper limb"),
    "lower limbs": SiteCode("61685007", "Lower limb"),
    # Acral = palms and soles. SNOMED CT has no single "palm or sole" region in CID 4031; the limb
    # ("Extremity") is the closest common concept. Follow-up: refine to Hand/Foot when known.
    "acral": SiteCode("66019005", "Extremity"),
    "genital": SiteCode("71934003", "Genital structure"),
    UNKNOWN_SITE: None,
}
SITES: tuple[str, ...] = tuple(SITE_CODES)

# Derm7pt ``location`` values (release_v0 meta.csv) -> site vocabulary.
DERM7PT_LOCATION_TO_SITE: dict[str, str] = {
    "head neck": "head and neck",
    "back": "trunk",
    "chest": "trunk",
    "abdomen": "trunk",
    "buttocks": "trunk",
    "upper limbs": "upper limbs",
    "lower limbs": "lower limbs",
    "acral": "acral",
    "genital areas": "genital",
}

_ALIASES = {
    "head/neck": "head and neck",
    "head neck": "head and neck",
    "head": "head and neck",
    "neck": "head and neck",
    "face": "head and neck",
    "torso": "trunk",
    "anterior torso": "trunk",
    "posterior torso": "trunk",
    "lateral torso": "trunk",
    "upper extremity": "upper limbs",
    "upper limb": "upper limbs",
    "arm": "upper limbs",
    "lower extremity": "lower limbs",
    "lower limb": "lower limbs",
    "leg": "lower limbs",
    "palms/soles": "acral",
    "palm": "acral",
    "sole": "acral",
    "oral/genital": "genital",
    "genital areas": "genital",
    "": UNKNOWN_SITE,
    "nan": UNKNOWN_SITE,
}


def normalize_site(value: object) -> str:
    """Map a free site string (Derm7pt, ISIC ``anatom_site_general``, a user's CSV) to :data:`SITES`.

    Unrecognised values raise ``ValueError`` listing the vocabulary; missing values give ``"unknown"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN_SITE
    key = str(value).strip().lower()
    if key in SITE_CODES:
        return key
    if key in DERM7PT_LOCATION_TO_SITE:
        return DERM7PT_LOCATION_TO_SITE[key]
    if key in _ALIASES:
        return _ALIASES[key]
    raise ValueError(f"unknown anatomical site {value!r}; use one of {list(SITES)} (or a Derm7pt/ISIC site name)")
