"""A case index as the diagnosis prior ranks it for one query (:class:`monai_cir.networks.DiagnosisPrior`).

``K(q, c) = S(q, c) + t(y_c)``: ``S`` the inner product the index serves, ``t`` the query's ranking term of the
library case's diagnosis (``λ w log p(y_c | q)``; a diagnosis the prior does not know: the term's expected value).
Within one diagnosis ``K`` orders the cases as ``S`` does, so the ``k`` best by ``K`` are among the ``k`` best by
``S`` of each diagnosis: one filtered search per diagnosis, merged, is exact on an exact index (and as good as the
index's own search on an approximate one).

:class:`PriorRankedIndex` answers ``search`` with hits scored by ``K``, so what ranks by a case index (the
differential slot, :func:`monai_cir.differential.shown_with_differential`) ranks by ``K`` unchanged;
:meth:`PriorRankedIndex.with_similarity` gives the hits back their similarity ``S`` for what reports it (the SR,
the PDF, the explanations).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .index import SearchHit
from .index.base import normalize_filters

__all__ = ["PRIOR_NOTICE", "PRIOR_RANKING", "RANKINGS", "SIMILARITY_RANKING", "PriorRankedIndex", "prior_acted"]

# how an answer's cases are ordered: results.json's and `monai-cir search --json`'s "ranking", the PDF's heading
SIMILARITY_RANKING = "similarity"
PRIOR_RANKING = "similarity_and_diagnosis_prior"
RANKINGS = (SIMILARITY_RANKING, PRIOR_RANKING)


def prior_acted(terms: Any) -> Any:
    """Whether the diagnosis prior orders a query's answer: its ranking terms are not all zero (a text naming no
    7-point finding has findings weight ``w = 0``, so ``K = S``: the similarity ranking). ``terms``: (C,) -> bool,
    (Q, C) -> (Q,) bool array (numpy or torch); None (no prior) -> False."""
    if terms is None:
        return False
    values = terms.detach().cpu().numpy() if hasattr(terms, "detach") else np.asarray(terms)
    acted = (values != 0).any(axis=-1)
    return bool(acted) if acted.ndim == 0 else acted

PRIOR_NOTICE = (
    "the cases are ordered by similarity and by how likely their diagnosis is for this lesion, from its image and the "
    "7-point findings its text names (the model's diagnosis prior): a case may rank above a more similar case of a less "
    "likely diagnosis; each case's score is its similarity"
)
"""What the app and ``monai-cir search`` say with an answer the diagnosis prior ordered (a text naming findings)."""


class PriorRankedIndex:
    """``index`` ranked by ``S + t(y_c)`` for the one query whose ranking ``terms`` are given.

    Args:
        index: a :class:`~monai_cir.index.CaseIndex` (the ``S`` vectors).
        terms: (C + 1,) the query's terms: one per diagnosis of ``classes``, then the term of any other diagnosis
            (:meth:`~monai_cir.networks.ComposedRetrievalNet.encode_query_and_terms`).
        classes: the prior's diagnoses (``net.diagnosis_prior.classes``).
        diagnoses: the diagnoses the library holds (default: read from ``index.info()``)."""

    def __init__(self, index: Any, terms: Any, classes: Sequence[str], diagnoses: Sequence[str] | None = None) -> None:
        values = np.asarray(terms, dtype=np.float64).reshape(-1)
        if values.shape != (len(classes) + 1,) or not np.isfinite(values).all():
            raise ValueError(f"terms must be {len(classes) + 1} finite values (one per class of {list(classes)}, then the other "
                             f"diagnoses'), got shape {tuple(np.shape(terms))}")
        self.index = index
        self.classes = list(classes)
        self.diagnoses = sorted(diagnoses if diagnoses is not None else index.info()["diagnosis"])
        self._term = {c: float(t) for c, t in zip(self.classes, values)}
        self._other = float(values[-1])

    def __len__(self) -> int:
        return len(self.index)

    def info(self) -> dict[str, Any]:
        return self.index.info()

    def term(self, diagnosis: str) -> float:
        """The query's ranking term for a library case of ``diagnosis``."""
        return self._term.get(diagnosis, self._other)

    def search(self, queries: Any, k: int = 10, filters: Mapping[str, Any] | None = None) -> list[list[SearchHit]]:
        """The ``k`` best cases by ``K`` (best first, ``score`` = ``K``) for one query row, under ``filters`` (a
        ``diagnosis`` filter narrows the diagnoses searched)."""
        rows = np.asarray(queries, dtype=np.float32).reshape(-1, np.shape(queries)[-1])
        if rows.shape[0] != 1:
            raise ValueError(f"a PriorRankedIndex ranks for one query (its terms); got {rows.shape[0]} query rows")
        normalized = normalize_filters(filters)
        wanted = set(str(d) for d in normalized.pop("diagnosis", self.diagnoses))
        rest = {key: list(values) for key, values in normalized.items()}
        groups = [[c] for c in self.classes if c in wanted and c in self.diagnoses]
        others = [d for d in self.diagnoses if d in wanted and d not in self._term]
        if others:
            groups.append(others)
        merged: list[tuple[float, int, SearchHit]] = []
        for group in groups:
            for hit in self.index.search(rows, k=k, filters={**rest, "diagnosis": group})[0]:
                merged.append((hit.score + self.term(hit.metadata.diagnosis), len(merged), hit))
        merged.sort(key=lambda item: (-item[0], item[1]))
        return [[dataclasses.replace(hit, rank=i, score=float(key)) for i, (key, _, hit) in enumerate(merged[:k], 1)]]

    def with_similarity(self, hits: Sequence[SearchHit]) -> list[SearchHit]:
        """``hits`` (scored by ``K``) with their similarity ``S`` as ``score``, order and ranks kept."""
        return [dataclasses.replace(h, score=float(h.score - self.term(h.metadata.diagnosis))) for h in hits]
