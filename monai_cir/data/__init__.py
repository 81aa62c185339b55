"""Data: collections, preprocessing, clinical report text and cross-validation folds.

Names are imported on first use (PEP 562): reading a CSV or a site vocabulary must not pay for
importing torch and MONAI (which, with the Deploy SDK installed, also imports holoscan).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CLASS_NAMES": "collections",
    "COLLECTIONS": "collections",
    "CaseRecord": "collections",
    "FeatureCache": "feature_cache",
    "PreprocessImaged": "preprocess",
    "RemoveBlackBorder": "preprocess",
    "SITES": "sites",
    "SITE_CODES": "sites",
    "build_feature_cache": "feature_cache",
    "derm7pt_class": "diagnoses",
    "feature_cache_path": "feature_cache",
    "load_collection": "collections",
    "load_derm7pt": "collections",
    "load_folds": "folds",
    "load_image": "preprocess",
    "load_image_csv": "collections",
    "load_isic_uda1": "collections",
    "make_folds": "folds",
    "meta_report": "report",
    "normalize_diagnosis": "diagnoses",
    "normalize_site": "sites",
    "preprocess_image": "preprocess",
    "records_dataset": "collections",
    "remove_black_border": "preprocess",
    "to_rgb_uint8": "preprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
