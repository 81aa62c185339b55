"""Evaluation: the paper's 5-fold protocol on Derm7pt and a cross-site check (DESIGN.md section 3).

- :mod:`.protocol`: folds, the contexts a method sees (:class:`FoldContext`, :class:`CrossSiteContext`),
  scoring (:func:`evaluate`), merging per-fold runs (:func:`merge_results`);
- :mod:`.registry`: :func:`register_method` (each method once, under its own name);
- :mod:`.baselines`: frozen-feature baselines and the untrained stand-ins;
- :mod:`.text_forms`: the query texts in other forms (reworded, partial, demographics, empty);
- :mod:`.report`: the markdown tables and the qualitative figure.

The registered methods are those of :mod:`.baselines` and of :mod:`monai_cir.engine.cv_methods`
(the trained ones), both imported here.
"""

from __future__ import annotations

from .protocol import (
    DEFAULT_METHODS,
    METRIC_KEYS,
    CrossSiteContext,
    FoldContext,
    RunState,
    _similarity,
    evaluate,
    evaluate_cross_site,
    fold_indices,
    merge_results,
)
from .registry import Method, available_methods, get_method, register_method, unregister_method
from .report import merged_commit, results_header, results_table, retrieval_figure, text_forms_table
from .text_forms import TEXT_FORMS, text_form_cache
from .baselines import UNTRAINED_METHODS  # noqa: E402  (registers the frozen baselines and stand-ins)
from ..engine import cv_methods  # noqa: E402,F401  (registers the trained methods)
from ..engine import finetune  # noqa: E402,F401  (registers composed_finetuned)

__all__ = [
    "DEFAULT_METHODS",
    "METRIC_KEYS",
    "TEXT_FORMS",
    "UNTRAINED_METHODS",
    "CrossSiteContext",
    "FoldContext",
    "Method",
    "RunState",
    "available_methods",
    "evaluate",
    "evaluate_cross_site",
    "fold_indices",
    "get_method",
    "merge_results",
    "merged_commit",
    "register_method",
    "results_header",
    "results_table",
    "retrieval_figure",
    "text_form_cache",
    "text_forms_table",
    "unregister_method",
]
