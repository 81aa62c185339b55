"""Fitting the diagnosis prior (:class:`monai_cir.networks.DiagnosisPrior`) on the frozen-feature cache.

Two standardised multinomial logistic regressions of the diagnosis on ``[sentence, pooled L/M/H]`` (the late-fusion
branch's inputs), fitted on the training cases only, ``C`` chosen by 5-fold cross-validation among them: one on
their template reports (served to query texts naming 5 or more findings), one on those, the same cases' partial
reports (1-4 findings, context kept: :func:`monai_cir.data.report.render_report`'s ``partial`` form) and their
findings written without context (1-4, its ``findings_only`` form, and all of them; a case's texts never split by the
inner CV), served to texts naming fewer. The recipe of ``bench/class_posterior.py``'s ``gated+matched`` rows, the
partial-text probe also fitted on the context-free texts of ``bench/context_free_prior.py``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from ..networks import ComposedRetrievalNet
from ..networks.diagnosis_prior import DEFAULT_PRIOR_STRENGTH, FULL_TEXT_PROBE, PARTIAL_TEXT_PROBE, term_columns
from ..networks.late_fusion import LateFusionBranch

__all__ = ["PRIOR_C_GRID", "check_prior_search", "PRIOR_INNER_FOLDS", "PRIOR_MIN_CASES", "cached_prior_terms", "fit_diagnosis_prior", "prior_columns", "prior_inputs", "prior_ranking_scores"]

logger = logging.getLogger(__name__)

# the probes' inverse L2 strengths tried by the inner cross-validation (bench/class_posterior.py's grid)
PRIOR_C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)
# the inner cross-validation's folds (fewer when the smallest diagnosis has fewer training cases)
PRIOR_INNER_FOLDS = 5
# training cases of every diagnosis the inner cross-validation needs (2 folds at least; the partial-text probe's
# rows are two per case, grouped by case, so its count is the same number of cases)
PRIOR_MIN_CASES = 2


def prior_inputs(cache: Any, indices: Sequence[int] | None = None) -> np.ndarray:
    """The probes' input rows ``[sentence, pooled L/M/H]`` (N, d_T + Σ C_i) float64 of cached cases (all when
    ``indices`` is None): the texts' mean token embeddings and each level's whole-map mean, as the late-fusion
    branch's input standardisation reads them."""
    rows = torch.arange(int(cache.labels.shape[0])) if indices is None else torch.as_tensor(np.asarray(indices), dtype=torch.long)
    pooled = LateFusionBranch.pool([m[rows] for m in cache.maps])
    return torch.cat([torch.as_tensor(cache.sentence)[rows].float(), pooled], dim=1).double().numpy()


def _class_names(cache: Any) -> dict[int, str]:
    names: dict[int, str] = {}
    for record, label in zip(cache.records, cache.labels.tolist()):
        names.setdefault(int(label), str(record.diagnosis))
    return names


def check_prior_search(c_grid: Any, inner_folds: Any) -> None:
    """The probes' inner cross-validation settings, checked: ``c_grid`` one or more positive numbers, ``inner_folds``
    a whole number, 2 or more (``train.yaml``'s ``prior_options`` before any training, :func:`fit_diagnosis_prior`)."""
    if not isinstance(c_grid, (list, tuple)) or not c_grid or any(isinstance(c, bool) or not isinstance(c, (int, float)) or c <= 0 for c in c_grid):
        raise ValueError(f"the diagnosis prior's c_grid must list one or more positive numbers (inverse L2 strengths), got {c_grid!r}")
    if isinstance(inner_folds, bool) or not isinstance(inner_folds, int) or inner_folds < 2:
        raise ValueError(f"the diagnosis prior's inner_folds must be a whole number, 2 or more, got {inner_folds!r}")


def _fit_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, seed: int, c_grid: Sequence[float],
               inner_folds: int) -> tuple[Any, float, float, int]:
    """A standardised logistic probe, its ``C`` chosen by inner cross-validation: ``(model, C, inner accuracy, the
    inner folds used)`` (fewer than ``inner_folds`` when the smallest diagnosis has fewer training cases)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # cases (groups: a case's rows count once) of the rarest diagnosis
    smallest = min(len(np.unique(groups[y == label])) if groups is not None else int((y == label).sum()) for label in np.unique(y))
    if smallest < PRIOR_MIN_CASES:
        raise ValueError(f"the diagnosis prior's inner cross-validation needs {PRIOR_MIN_CASES} or more training cases of every diagnosis, got {smallest}")
    folds = min(inner_folds, smallest)
    inner = (StratifiedGroupKFold if groups is not None else StratifiedKFold)(folds, shuffle=True, random_state=seed)
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(C=c_grid[0], max_iter=5000)),
                          {"logisticregression__C": list(c_grid)}, cv=inner, scoring="accuracy")
    search.fit(x, y, **({"groups": groups} if groups is not None else {}))
    return search.best_estimator_, float(search.best_params_["logisticregression__C"]), float(search.best_score_), folds


def fit_diagnosis_prior(net: ComposedRetrievalNet, cache: Any, train_indices: Sequence[int], strength: float = DEFAULT_PRIOR_STRENGTH,
                        seed: int = 0, text_net: Any = None, c_grid: Sequence[float] = PRIOR_C_GRID,
                        inner_folds: int = PRIOR_INNER_FOLDS, context_free: bool = True) -> tuple[ComposedRetrievalNet, dict[str, Any]]:
    """``net`` with a fitted diagnosis prior (a new network: ``net``'s encoders and head, the probes fitted on
    cached cases ``train_indices`` only), and what was fitted: ``{"classes", "strength", "c_grid", "inner_folds",
    "full_text", "partial_text"}`` (each probe's ``C`` and inner-CV accuracy). The classes are the diagnoses of the
    training cases, in label order. ``text_net``: the network whose text encoder built ``cache`` (encodes the partial
    reports; default: the offline encoders the cache's fingerprint names). ``c_grid`` / ``inner_folds``: the probes'
    inverse L2 strengths the inner cross-validation chooses from, and its folds (fewer when the smallest diagnosis
    has fewer training cases). ``context_free``: the partial-text probe is also fitted on the training cases' findings
    written without context (1-4 of them, and all); ``False`` fits it on texts with context only, as 0.8 did (the
    ablation ``composed_late_fusion_prior_context_texts``)."""
    from ..data.report import findings_report, report_fields
    from ..evaluation.text_forms import text_form_cache, texts_cache
    from . import new_head_net

    check_prior_search(c_grid, inner_folds)
    c_grid = [float(c) for c in c_grid]
    train = np.asarray(train_indices, dtype=int)
    y = cache.labels.numpy()[train]
    names = _class_names(cache)
    labels = np.unique(y)
    if len(labels) < 2:
        raise ValueError(f"the diagnosis prior needs training cases of two or more diagnoses, got {[names[int(v)] for v in labels]}")
    classes = [names[int(v)] for v in labels]
    # the texts each probe is fitted on, per training case: the full-text probe (served to texts naming 5 or more
    # findings) its template report; the partial-text probe (served to texts naming fewer) also its partial report
    # (1-4 findings, context kept) and, with context_free, its findings without context, 1-4 ("findings_only") and all:
    # a clinician's "BWV present, irregular streaks" reaches the network as "Lesion. Dermoscopy: ..." (query_text), and
    # a probe fitted on context-bearing texts alone classified such texts below the image-only ranking
    # (bench/results/derm7pt_context_free_prior.md). Cases whose record states no finding give no findings-only rows.
    # (Fitting the full-text probe on all findings without context too was tried: the template ranking fell.)
    x_full = prior_inputs(cache, train)
    more_rows = [(text_form_cache(cache, "partial", seed=0, net=text_net), train)]  # (texts, training cases) beyond the templates
    if context_free:
        criteria = [report_fields(r).criteria for r in cache.records]
        stated = train[[bool(criteria[int(i)]) for i in train]]
        all_findings = texts_cache(cache, [findings_report(c) for c in criteria], net=text_net)
        more_rows += [(text_form_cache(cache, "findings_only", seed=0, net=text_net), stated), (all_findings, stated)]
    labels_of = cache.labels.numpy()
    fits = {
        FULL_TEXT_PROBE: _fit_probe(x_full, y, None, seed, c_grid, int(inner_folds)),
        PARTIAL_TEXT_PROBE: _fit_probe(np.vstack([x_full, *(prior_inputs(c, i) for c, i in more_rows)]),
                                       np.concatenate([y, *(labels_of[i] for _, i in more_rows)]),
                                       np.concatenate([train, *(i for _, i in more_rows)]), seed, c_grid, int(inner_folds)),
    }
    with torch.random.fork_rng(devices=[]):
        combined = new_head_net(net, diagnosis_prior={"classes": classes, "strength": float(strength)})
    combined.load_head_state_dict({**net.head_state_dict(), **{f"diagnosis_prior.{k}": v for k, v in combined.diagnosis_prior.state_dict().items()}})
    record: dict[str, Any] = {"classes": classes, "strength": float(strength), "c_grid": c_grid, "inner_folds": int(inner_folds),
                              "context_free": bool(context_free)}
    for which, (model, c, accuracy, folds) in fits.items():
        scaler, logistic = model.named_steps["standardscaler"], model.named_steps["logisticregression"]
        if list(logistic.classes_) != list(labels):
            raise ValueError(f"probe classes {list(logistic.classes_)} differ from the training labels {list(labels)}")
        weight, bias = logistic.coef_, logistic.intercept_
        if len(labels) == 2:  # sklearn's binary model: one logit for the second class; softmax([0, s]) = [1 - σ(s), σ(s)]
            weight, bias = np.vstack([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
        combined.diagnosis_prior.set_probe(which, scaler.mean_, scaler.scale_, weight, bias)
        # the folds its inner cross-validation used (the top-level inner_folds is what was asked for)
        record["full_text" if which == FULL_TEXT_PROBE else "partial_text"] = {"C": c, "inner_accuracy": round(100 * accuracy, 2), "inner_folds": folds}
    logger.info("diagnosis prior fitted on %d cases: %s", len(train), record)
    return combined.train(net.training), record


@torch.no_grad()
def cached_prior_terms(net: ComposedRetrievalNet, cache: Any, indices: Sequence[int]) -> torch.Tensor:
    """The ranking terms (N, C + 1) of cached cases ``indices`` as queries (their texts as ``cache`` holds them:
    the findings gate's weight read from each record's text, the sentence and the unflipped maps), with ``net``'s
    fitted prior: what :meth:`~monai_cir.networks.ComposedRetrievalNet.encode_query_and_terms` gives the same case."""
    if net.diagnosis_prior is None:
        raise ValueError("this network has no diagnosis prior (fit one with fit_diagnosis_prior)")
    rows = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    texts = [getattr(cache.records[int(i)], "text", None) or "" for i in rows]
    weights = torch.tensor(net.text_weights(texts), dtype=torch.float32)
    pooled = LateFusionBranch.pool([m[rows] for m in cache.maps])
    device = net.diagnosis_prior.mean.device
    return net.diagnosis_prior(pooled.to(device), torch.as_tensor(cache.sentence)[rows].float().to(device), weights).cpu()


def prior_ranking_scores(net: ComposedRetrievalNet, similarity: torch.Tensor, query_cache: Any, query_indices: Sequence[int],
                         library_cache: Any, library_indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, terms)``: the ranking ``K = S + λ w log p(y_c | q)`` (Q, N) float64 of cached queries against cached
    library cases (``similarity`` the (Q, N) ``S``), as :mod:`monai_cir.prior_ranking` ranks a case index, and the
    queries' terms (Q, C + 1) (:func:`monai_cir.prior_ranking.prior_acted` says whom they ordered)."""
    terms = cached_prior_terms(net, query_cache, query_indices).double()
    return similarity.double() + terms[:, prior_columns(net.diagnosis_prior.classes, library_cache, library_indices)], terms


def prior_columns(classes: Sequence[str], cache: Any, indices: Sequence[int]) -> np.ndarray:
    """For cached cases ``indices`` as library cases: the column of their diagnosis among the prior's ``classes``
    (``len(classes)``, the last term, for a diagnosis the prior does not know)."""
    names = _class_names(cache)
    return np.array(term_columns(classes, [names[int(cache.labels[int(i)])] for i in np.asarray(indices)]), dtype=int)
