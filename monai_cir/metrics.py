"""Retrieval metrics exactly as arXiv v1 Eqs. 10-14 (relevant = same class, Eq. 1).

For a query q with ranked database ``r_1 .. r_N`` and ``rel(i) = 1`` when ``r_i`` has q's label:

- Eq. 10: ``P(i) = Σ_{j<=i} rel(j) / i``
- Eq. 11: ``AP(q) = (1 / R_q) Σ_{i=1..N} P(i) rel(i)`` over the FULL ranked database
  (``R_q`` = number of relevant items in the database).
- Eq. 12: ``mAP = mean_q AP(q)``
- Eq. 13: ``Acc@K(q) = 1`` if some ``i <= K`` has ``rel(i) = 1``
- Eq. 14: ``Accuracy@K = mean_q Acc@K(q)``
- not in the paper: ``P@K = mean_q (1/K) Σ_{i<=K} rel(i)``, the share of the top K with the query's
  class (what a clinician sees; with 3 classes, Acc@K beyond 1 rewards diversity, not similarity).

Units: :func:`retrieval_metrics` returns **fractions** in [0, 1]; result files and tables report
**percent** (:func:`summarize_folds` takes ``scale=100``).

Tie-breaking (deterministic, documented): the database is ranked by a stable sort on descending
score, so equal scores keep database order (the lower database index ranks first). The scores are
compared as float64. A query with no relevant item in the database (``R_q = 0``) has AP = 0 and
Acc@K = 0 (and is counted in ``no_relevant``). ``K`` larger than the database means the whole
database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["average_precision", "leave_one_out_metrics", "rank_database", "retrieval_metrics", "summarize_folds"]

ArrayLike = Any


def _as_numpy(x: ArrayLike, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        x = x.double() if x.is_floating_point() else x
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def rank_database(similarity: ArrayLike) -> np.ndarray:
    """(Q, N) scores -> (Q, N) database indices, best first (stable: ties keep database order)."""
    s = _as_numpy(similarity, np.float64)
    if s.ndim != 2:
        raise ValueError(f"similarity must be a (queries, database) matrix, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("similarity contains NaN or infinite scores")
    return np.argsort(-s, axis=1, kind="stable")


def average_precision(relevance_ranked: np.ndarray) -> np.ndarray:
    """Eqs. 10-11 for ranked 0/1 relevance rows (Q, N) -> AP (Q,); 0 where a row has no relevant item."""
    rel = np.asarray(relevance_ranked, dtype=np.float64)
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    precision = np.cumsum(rel, axis=1) / ranks  # Eq. 10
    n_relevant = rel.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision * rel).sum(axis=1) / n_relevant  # Eq. 11
    return np.where(n_relevant > 0, ap, 0.0)


def retrieval_metrics(
    similarity: ArrayLike,
    query_labels: ArrayLike,
    database_labels: ArrayLike,
    ks: Sequence[int] = (1, 2, 4),
    precision_ks: Sequence[int] = (5,),
) -> dict[str, Any]:
    """AP / mAP / Acc@K (arXiv v1 Eqs. 10-14) and P@K of a similarity matrix; relevant = same label.

    Args:
        similarity: (Q, N) scores, higher = more similar (numpy or torch).
        query_labels: (Q,) integer labels of the queries.
        database_labels: (N,) integer labels of the database items.
        ks: the cut-offs of Acc@K.
        precision_ks: the cut-offs of P@K (share of the top K that are relevant).

    Returns:
        fractions in [0, 1]: ``{"ap": (Q,) array, "map": float, "hits": {K: (Q,) bool array},
        "acc@K": float for each K, "p@K": float for each precision K, "ranking": (Q, N) database indices best first,
        "num_relevant": (Q,) int array, "no_relevant": int}``.
    """
    ranking = rank_database(similarity)
    q = _as_numpy(query_labels).reshape(-1)
    d = _as_numpy(database_labels).reshape(-1)
    if ranking.shape != (len(q), len(d)):
        raise ValueError(
            f"similarity has shape {ranking.shape} but there are {len(q)} query labels and {len(d)} database labels"
        )
    if len(d) == 0 or len(q) == 0:
        raise ValueError("retrieval metrics need at least one query and one database item")
    relevance = d[ranking] == q[:, None]  # rel(i) in rank order, (Q, N)
    return _ranked_metrics(relevance, ranking, ks, precision_ks)


def _ranked_metrics(relevance: np.ndarray, ranking: np.ndarray, ks: Sequence[int], precision_ks: Sequence[int]) -> dict[str, Any]:
    """Eqs. 10-14 and P@K from the ranked relevance rows (Q, N); ``ranking`` is returned as given."""
    ks = [int(k) for k in ks]
    precision_ks = [int(k) for k in precision_ks]
    if any(k < 1 for k in ks + precision_ks):
        raise ValueError(f"every K must be >= 1, got {ks} (Acc@K) and {precision_ks} (P@K)")
    n = relevance.shape[1]
    ap = average_precision(relevance)
    hits = {k: relevance[:, : min(k, n)].any(axis=1) for k in ks}  # Eq. 13
    num_relevant = relevance.sum(axis=1)
    out: dict[str, Any] = {
        "ap": ap,
        "map": float(ap.mean()),  # Eq. 12
        "hits": hits,
        "ranking": ranking,
        "num_relevant": num_relevant,
        "no_relevant": int((num_relevant == 0).sum()),
    }
    for k in ks:
        out[f"acc@{k}"] = float(hits[k].mean())  # Eq. 14
    for k in precision_ks:
        out[f"p@{k}"] = float(relevance[:, : min(k, n)].mean(axis=1).mean())
    return out


def summarize_folds(values: Sequence[float], scale: float = 1.0, ndigits: int | None = None) -> dict[str, Any]:
    """``{"folds": [...], "mean": m, "std": s}`` over folds, std = sample std (ddof = 1, as the paper's
    Table 2); ``std`` is ``None`` for a single fold. ``scale=100`` converts fractions to percent."""
    vals = [float(v) * scale for v in values]
    if not vals:
        raise ValueError("no fold values to summarise")
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    if ndigits is not None:
        vals = [round(v, ndigits) for v in vals]
        mean = round(mean, ndigits)
        std = None if std is None else round(std, ndigits)
    return {"folds": vals, "mean": mean, "std": std}


def leave_one_out_metrics(
    similarity: ArrayLike, labels: ArrayLike, ks: Sequence[int] = (1, 2, 4), precision_ks: Sequence[int] = (5,),
    exclude: ArrayLike | None = None,
) -> dict[str, Any]:
    """Eqs. 10-14 where each item of one collection queries all the others (N, N) -> metrics.

    The diagonal (the query itself) is removed from each row before ranking; the rest is exactly
    :func:`retrieval_metrics` (same tie-breaking: stable descending sort, database order on ties).
    ``exclude``: an (N, N) bool mask of other items a query must not find either (its copies: the same image file
    twice in a collection finds itself at rank 1); they rank last and count as not relevant, as if absent.
    Fractions in [0, 1]; ``ranking`` holds indices into the full collection."""
    s = _as_numpy(similarity, np.float64)
    y = _as_numpy(labels).reshape(-1)
    n = len(y)
    if s.shape != (n, n):
        raise ValueError(f"leave-one-out needs a square (N, N) similarity for N={n} labels, got {s.shape}")
    if n < 2:
        raise ValueError("leave-one-out needs at least two items")
    off = ~np.eye(n, dtype=bool)
    s_off = s[off].reshape(n, n - 1)
    idx_off = np.broadcast_to(np.arange(n), (n, n))[off].reshape(n, n - 1)
    hidden = None
    if exclude is not None:
        mask = _as_numpy(exclude).astype(bool)
        if mask.shape != (n, n):
            raise ValueError(f"exclude must be an (N, N) mask for N={n}, got {mask.shape}")
        hidden = mask[off].reshape(n, n - 1)
        s_off = np.where(hidden, np.nanmin(s_off) - 1.0, s_off)  # below every score (rank_database refuses inf)
    order = rank_database(s_off)
    ranking = np.take_along_axis(idx_off, order, axis=1)
    relevance = y[ranking] == y[:, None]
    if hidden is not None:
        relevance &= ~np.take_along_axis(hidden, order, axis=1)
    return _ranked_metrics(relevance, ranking, ks, precision_ks)
