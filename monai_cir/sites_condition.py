"""Site-conditioned search: "show me similar lesions on the same anatomical site".

A search takes a *site condition* (the CLI's ``--site``, the deploy app's ``site`` option):

- ``"any"`` (default): no condition;
- ``"same"``: the query's own site (Derm7pt ``location``; for DICOM the query image's Anatomic
  Region Sequence (0008,2218), else Body Part Examined (0018,0015); see :func:`site_from_dicom`);
- a site name of the vocabulary (:data:`monai_cir.data.sites.SITES`, aliases accepted: "back" ->
  "trunk", "palms/soles" -> "acral"...).

:func:`resolve_site_condition` turns it into a metadata filter for
:meth:`monai_cir.index.CaseIndex.search` (``{"site": ...}``, applied inside the index by FAISS and
Milvus alike) and a notice for the user when the condition cannot be applied: a ``same`` query
whose site is unknown falls back to unconditioned search and says so.
"""

from __future__ import annotations

from typing import Any, Mapping

from .data.sites import SITE_CODES, SITES, UNKNOWN_SITE, normalize_site

__all__ = [
    "SITE_CONDITIONS",
    "resolve_site_condition",
    "site_from_dicom",
    "site_share",
    "UNKNOWN_SITE_NOTICE",
]

SITE_CONDITIONS = ("any", "same")
UNKNOWN_SITE_NOTICE = (
    "site condition 'same' not applied: the query's anatomical site is unknown, so similar cases "
    "from all sites are shown"
)

# DICOM Body Part Examined (0018,0015) defined terms (PS3.16 Annex L) -> site vocabulary.
_BODY_PART_TO_SITE = {
    "HEAD": "head and neck",
    "NECK": "head and neck",
    "HEADNECK": "head and neck",
    "FACE": "head and neck",
    "SCALP": "head and neck",
    "EAR": "head and neck",
    "NOSE": "head and neck",
    "LIP": "head and neck",
    "CHEST": "trunk",
    "THORAX": "trunk",
    "BREAST": "trunk",
    "ABDOMEN": "trunk",
    "BACK": "trunk",
    "TRUNK": "trunk",
    "BUTTOCK": "trunk",
    "ARM": "upper limbs",
    "UPRLIMB": "upper limbs",
    "UPPER LIMB": "upper limbs",
    "SHOULDER": "upper limbs",
    "ELBOW": "upper limbs",
    "FOREARM": "upper limbs",
    "WRIST": "upper limbs",
    "HAND": "upper limbs",
    "FINGER": "upper limbs",
    "LEG": "lower limbs",
    "LOWERLIMB": "lower limbs",
    "LOWER LIMB": "lower limbs",
    "THIGH": "lower limbs",
    "KNEE": "lower limbs",
    "ANKLE": "lower limbs",
    "FOOT": "lower limbs",
    "TOE": "lower limbs",
    "GENITAL": "genital",
    "PENIS": "genital",
    "VULVA": "genital",
    "SCROTUM": "genital",
}
_CODE_TO_SITE = {code.code_value: site for site, code in SITE_CODES.items() if code is not None}


def resolve_site_condition(condition: str | None, query_site: str | None) -> tuple[dict[str, str] | None, str | None]:
    """``(filters, notice)`` for a site condition and the query's site.

    Args:
        condition: ``"any"`` / ``None``, ``"same"``, or a site name (vocabulary or alias).
        query_site: the query's site (any spelling :func:`~monai_cir.data.sites.normalize_site`
            knows; ``None``/"" = unknown). Only read for ``"same"``.

    Returns:
        ``filters``: ``{"site": <site>}`` for :meth:`CaseIndex.search`, or ``None`` (unconditioned).
        ``notice``: a sentence for the user when the condition was not applied as asked, else ``None``.

    Raises:
        ValueError: a condition that is neither ``any``, ``same`` nor a known site.
    """
    cond = "any" if condition is None else str(condition).strip().lower()
    if cond in ("", "any"):
        return None, None
    if cond == "same":
        try:
            site = normalize_site(query_site)
        except ValueError:
            return None, f"{UNKNOWN_SITE_NOTICE} (query site {query_site!r} is not in the vocabulary {list(SITES)})"
        if site == UNKNOWN_SITE:
            return None, UNKNOWN_SITE_NOTICE
        return {"site": site}, None
    try:
        site = normalize_site(cond)
    except ValueError:
        raise ValueError(
            f"unknown site condition {condition!r}: use 'any', 'same' or a site of {[s for s in SITES if s != UNKNOWN_SITE]}"
        ) from None
    if site == UNKNOWN_SITE:
        raise ValueError(f"site condition {condition!r} names no site: use 'any', 'same' or a site of {[s for s in SITES if s != UNKNOWN_SITE]}")
    return {"site": site}, None


def _item(ds: Any, keyword: str) -> Any:
    if isinstance(ds, Mapping):
        return ds.get(keyword)
    return getattr(ds, keyword, None)


def site_from_dicom(ds: Any) -> tuple[str, str | None]:
    """The site of a DICOM image: ``(site, notice)``.

    Reads the Anatomic Region Sequence (SNOMED CT code, scheme SCT or SRT) first, then Body Part
    Examined; returns ``("unknown", notice)`` when neither gives a site of the vocabulary. ``ds`` is
    a pydicom Dataset (or a mapping with the same keywords)."""
    regions = _item(ds, "AnatomicRegionSequence") or []
    for region in regions:
        value = str(_item(region, "CodeValue") or "").strip()
        scheme = str(_item(region, "CodingSchemeDesignator") or "").strip().upper()
        if scheme in ("SCT", "SRT") and value in _CODE_TO_SITE:
            return _CODE_TO_SITE[value], None
        meaning = _item(region, "CodeMeaning")
        if meaning:
            try:
                site = normalize_site(meaning)
            except ValueError:
                continue
            if site != UNKNOWN_SITE:
                return site, None
    body_part = str(_item(ds, "BodyPartExamined") or "").strip().upper()
    if body_part:
        if body_part in _BODY_PART_TO_SITE:
            return _BODY_PART_TO_SITE[body_part], None
        try:
            site = normalize_site(body_part)
        except ValueError:
            site = UNKNOWN_SITE
        if site != UNKNOWN_SITE:
            return site, None
        return UNKNOWN_SITE, f"Body Part Examined {body_part!r} maps to no site of the vocabulary; site unknown"
    if regions:
        return UNKNOWN_SITE, "Anatomic Region Sequence holds no code of the site vocabulary; site unknown"
    return UNKNOWN_SITE, None


def site_share(hits: Any, site: str) -> float:
    """Share of ``hits`` (SearchHit or objects with ``metadata.site`` / ``site``) on ``site``; 1.0 for no hits."""
    hits = list(hits)
    if not hits:
        return 1.0
    same = 0
    for hit in hits:
        meta = getattr(hit, "metadata", hit)
        same += int(getattr(meta, "site", None) == site)
    return same / len(hits)
