"""The differential slot: when a query is nearly as similar to another diagnosis as to its best match's,
the closest case of that other diagnosis is shown at a fixed rank of the top-k.

Why. The release network's embedding clusters by diagnosis: a query placed in the wrong cluster gets a
top-k of one wrong diagnosis, and its first case of the right one may sit at rank 100 (Acc@4 on Derm7pt
stays below what a random ranking gives). A clinician comparing cases is better served, when the match
is uncertain, by the closest case of the runner-up diagnosis beside the best matches: the differential.

The rule (one for the app and the evaluation). For a query with scores ``s`` over the library, let ``d1``
be the diagnosis of its best match and ``o`` the best-scoring case of any other diagnosis. The slot
**opens** when the score margin ``s(best) - s(o) <= margin`` and ``o`` is not already within the first
``rank`` places; then ``o`` is shown at ``rank`` (default 4) and the cases from that rank on move down
one. Everything else is the similarity ranking; the shown case keeps its own score, and the app says in
a notice which rank it is and why (:meth:`DifferentialSlot.notice`).

The margin is in the model's score units, so it belongs to one model: it is fitted on cross-validated
held-out queries (:func:`fit_margin`: the margin at which the slot opens for a chosen share of them, by
default :data:`DEFAULT_OPEN_RATE`) and recorded in the checkpoint (``extra["differential"]``,
:meth:`DifferentialSlot.to_dict`); a checkpoint without it has no slot. A site whose images sit differently in
the embedding refits it on its own library (:func:`library_margins`: each case queries the others, image
only; ``monai-cir index fit-differential``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from collections.abc import Collection
from typing import Any

import numpy as np
import torch

__all__ = ["DEFAULT_OPEN_RATE", "DEFAULT_RANK", "DifferentialSlot", "RANK_COUNT_LIMIT", "closest_other_case",
           "differential_ranking", "fit_margin", "library_margins", "query_margins", "shown_with_differential", "similarity_rank"]

DEFAULT_RANK = 4  # the paper's largest Acc@K cut-off: the differential case is within the top 4
# the share of held-out queries whose slot opens: about one query in seven (bench/differential_slot.py
# shows Acc@4 and P@5 over 5-30%; this operating point was chosen on that curve: bundle/docs/history.md, fourth pass)
DEFAULT_OPEN_RATE = 0.15
# how far the app counts a differential case's similarity rank (beyond it the notice says "beyond rank N"): one
# search of 257 cases; counting to 4096 made an approximate index at a million cases fall back to a scan of the
# whole library (the probed lists hold fewer candidates than 4096 x its re-ranking factor), ~0.2 s a query
RANK_COUNT_LIMIT = 256


@dataclass(frozen=True)
class DifferentialSlot:
    """Where and when the differential case is shown (see the module docstring).

    Attributes:
        margin: the largest score margin (best match - closest case of another diagnosis) at which the slot
            opens, in the model's score units (> 0).
        rank: the 1-based rank the differential case takes (>= 2: rank 1 stays the best match).
        open_rate: the share of held-out queries whose slot opened when ``margin`` was fitted (for the record).
        description: where the margin comes from (model, data, folds), for the record.
        margin_by_similarity: with a diagnosis prior (:mod:`monai_cir.prior_ranking`), the margin for a query the
            prior leaves alone (its text names no 7-point finding, so it is ranked by the similarity ``S``), in
            ``S``'s units; ``margin`` is then in the units of the prior's ranking ``S + λ w log p``, for the queries
            it orders (:meth:`for_query`). None: ``margin`` serves every query (a network without a prior).
    """

    margin: float
    rank: int = DEFAULT_RANK
    open_rate: float | None = None
    description: str = ""
    margin_by_similarity: float | None = None

    def __post_init__(self) -> None:
        for name in ("margin", "margin_by_similarity"):
            value = getattr(self, name)
            if name == "margin_by_similarity" and value is None:
                continue
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"DifferentialSlot.{name} must be a finite score margin > 0, got {value!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 2:
            raise ValueError(f"DifferentialSlot.rank must be an integer >= 2 (rank 1 stays the best match), got {self.rank!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_checkpoint_info(cls, info: dict[str, Any] | None) -> DifferentialSlot | None:
        """The slot recorded with a checkpoint (``extra["differential"]``), or None when it records none."""
        data = (info or {}).get("differential")
        if not data:
            return None
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"the checkpoint's 'differential' record is malformed ({err}): expected the keys margin, rank, open_rate, "
                             "description and (with a diagnosis prior) margin_by_similarity") from err

    def for_query(self, prior_acted: bool) -> DifferentialSlot:
        """The slot for one query: itself when the diagnosis prior ordered the query's ranking (or the network has
        none), else the slot with :attr:`margin_by_similarity` as its margin."""
        if prior_acted or self.margin_by_similarity is None:
            return self
        return dataclasses.replace(self, margin=self.margin_by_similarity, margin_by_similarity=None)

    def opens(self, best_score: float, other_score: float, other_rank: int) -> bool:
        """Whether the slot opens for a query whose best match scores ``best_score`` and whose closest case
        of another diagnosis scores ``other_score`` at 1-based similarity rank ``other_rank``."""
        return other_rank > self.rank and best_score - other_score <= self.margin

    def place(self, hits: list[Any], other: Any, top_k: int) -> list[Any]:
        """``hits`` (best first, :class:`~monai_cir.index.SearchHit`) with ``other`` (the closest case of another
        diagnosis) at :attr:`rank`, the cases from that rank on one rank lower, ``top_k`` in all, ranks renumbered."""
        rest = [h for h in hits if h.case_id != other.case_id]
        shown = [*rest[: self.rank - 1], other, *rest[self.rank - 1 :]][:top_k]
        return [dataclasses.replace(h, rank=i) for i, h in enumerate(shown, 1)]

    def notice(self, diagnosis: str, similarity_rank: int | None, best_diagnosis: str, margin: float, prior: bool = False) -> str:
        """What the app tells the reader of a query whose slot opened (``similarity_rank`` None: beyond
        :data:`RANK_COUNT_LIMIT`); ``prior``: the diagnosis prior ordered the query, so ``margin`` is in its ranking's
        units (similarity plus how likely each diagnosis is), not a similarity margin."""
        where = f"similarity rank {similarity_rank}" if similarity_rank is not None else f"beyond similarity rank {RANK_COUNT_LIMIT}"
        if similarity_rank == 1:
            where += ": the most similar case in the library"
        # the margins (``margin``, ``self.margin``) stay in results.json's "differential": a number in score units
        # tells a clinician nothing, the words say what the slot means
        if prior:
            return (
                f"rank {self.rank} is the closest {diagnosis} case ({where}), shown for comparison: for this lesion {diagnosis} "
                f"is nearly as likely, by the image, the findings and the most similar cases, as the {best_diagnosis} of the "
                "cases above it; the cases after it moved down one rank"
            )
        return (
            f"rank {self.rank} is the closest {diagnosis} case ({where}), shown for comparison: this "
            f"lesion is nearly as similar to {diagnosis} cases as to the {best_diagnosis} cases above it; the cases after it "
            "moved down one rank"
        )


def _ranked_margins(s: torch.Tensor, database_labels: Any) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``(order, margin, position)`` of a float64 (Q, N) similarity: the stable ranking, and per query the
    margin to its closest case of another label than its best's and that case's 0-based position."""
    labels = torch.as_tensor(np.asarray(database_labels)).reshape(-1)
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    ranked = labels[order]
    other = ranked != ranked[:, :1]
    has_other = other.any(dim=1)
    position = torch.where(has_other, other.int().argmax(dim=1), torch.full_like(has_other, s.shape[1], dtype=torch.long))
    best = s.gather(1, order[:, :1]).squeeze(1)
    closest = s.gather(1, order.gather(1, position.clamp(max=s.shape[1] - 1)[:, None])).squeeze(1)
    margin = torch.where(has_other, best - closest, torch.full_like(best, math.inf))
    return order, margin.numpy(), position.numpy()


def query_margins(similarity: Any, database_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per query of a (Q, N) similarity: the margin ``s(best) - s(closest case of another label)`` and that
    case's 0-based position in the similarity ranking (ties: stable, database order, as the metrics rank).
    A query whose database holds one label only gets margin ``inf`` and position ``N``."""
    _, margin, position = _ranked_margins(torch.as_tensor(similarity).double(), database_labels)
    return margin, position


def fit_margin(margins: Any, positions: Any, open_rate: float = DEFAULT_OPEN_RATE, rank: int = DEFAULT_RANK) -> float:
    """The margin at which a slot at ``rank`` opens for ``open_rate`` of the given held-out queries.

    ``margins`` and ``positions`` as :func:`query_margins` gives them (0-based positions; a position of at
    least ``rank`` means beyond the slot). The slot can open only for a query whose closest case of another
    diagnosis lies beyond ``rank``; the margin returned is the ``round(open_rate * n)``-th smallest of those
    queries' margins (``n``: the queries with a finite margin), so that it opens for that many of the ``n``.
    When fewer can open, their largest (it opens for all of them). Why not the plain quantile of all margins:
    on a library whose embedding does not cluster by diagnosis, the least certain queries already have both
    diagnoses in their first ``rank`` cases, and a quantile fitted there opens for almost none of the queries
    (ISIC UDA-1 under the release network: ``bench/results/isic_differential_site.md``, the row of the rule
    before bundle 0.7.0)."""
    values = np.asarray(margins, dtype=np.float64).reshape(-1)
    where = np.asarray(positions).reshape(-1)
    if values.shape != where.shape:
        raise ValueError(f"fit_margin needs one position per margin, got {values.size} margins and {where.size} positions")
    if not 0 < open_rate < 1:
        raise ValueError(f"open_rate must lie in (0, 1), got {open_rate!r}")
    finite = np.isfinite(values)
    if not finite.any():
        raise ValueError("fit_margin needs the margins of held-out queries whose database holds more than one diagnosis; got none")
    can_open = np.sort(values[finite & (where >= rank)])
    if can_open.size == 0:
        raise ValueError(f"no query's first {rank} cases share one diagnosis: a slot at rank {rank} never opens for these "
                         f"queries, so there is no margin to fit (the diagnoses already mix in every query's top {rank})")
    wanted = max(1, int(round(open_rate * int(finite.sum()))))
    return float(max(can_open[min(wanted, can_open.size) - 1], np.finfo(np.float32).tiny))


def differential_ranking(similarity: Any, database_labels: Any, slot: DifferentialSlot, leave_one_out: bool = False,
                         prior_acted: Any = None) -> tuple[torch.Tensor, np.ndarray]:
    """The ranking the app shows, for every query of a (Q, N) similarity: ``(scores, opened)`` where
    ``scores`` (Q, N) rank the database in that order (``N - position``: exact in float32, so the
    evaluation's stable descending sort reproduces it) and ``opened`` (Q,) says whose slot opened.

    ``leave_one_out``: a collection against itself (N, N): each query's own column is neither its best match
    nor its closest case, and ranks last (:func:`monai_cir.metrics.leave_one_out_metrics` drops it).
    ``prior_acted`` (Q,) bool: with a diagnosis prior, which queries it ordered (each query's slot is
    :meth:`DifferentialSlot.for_query`'s); None: ``slot`` for every query."""
    s = torch.as_tensor(similarity).double().clone()
    if leave_one_out:
        s.fill_diagonal_(-math.inf)
    order, margin, position = _ranked_margins(s, database_labels)
    n = s.shape[1]
    best = s.gather(1, order[:, :1]).squeeze(1).numpy()
    acted = np.ones(s.shape[0], dtype=bool) if prior_acted is None else np.asarray(prior_acted, dtype=bool).reshape(-1)
    opened = np.array([slot.for_query(bool(acted[i])).opens(float(best[i]), float(best[i] - margin[i]), int(position[i]) + 1)
                       if np.isfinite(margin[i]) else False for i in range(s.shape[0])], dtype=bool)
    for i in np.flatnonzero(opened):
        row = order[i].tolist()
        moved = row.pop(int(position[i]))
        row.insert(slot.rank - 1, moved)
        order[i] = torch.as_tensor(row)
    scores = torch.empty_like(s, dtype=torch.float32)
    scores.scatter_(1, order, torch.arange(n, 0, -1, dtype=torch.float32).expand(s.shape[0], n).contiguous())
    return scores, opened


def closest_other_case(index: Any, vector: Any, pool: list[Any], classes: list[str], filters: dict | None = None) -> tuple[Any, int | None] | None:
    """``(hit, similarity rank)`` of the closest library case of any other diagnosis than ``pool[0]``'s for the
    query ``vector`` (D,) of a :class:`~monai_cir.index.CaseIndex`; ``pool``: the query's best hits under
    ``filters``, best first. Found in the pool, its rank there; else searched among the other ``classes``
    only, with rank None (beyond the pool: :func:`similarity_rank` counts it). None when the library holds
    no other diagnosis."""
    from .evidence import NO_DIAGNOSIS

    # a case without a recorded diagnosis is no differential (it was shown as "the closest unknown case")
    best = next((h.metadata.diagnosis for h in pool if h.metadata.diagnosis != NO_DIAGNOSIS), None)
    if best is None:
        return None
    other = next((h for h in pool if h.metadata.diagnosis not in (best, NO_DIAGNOSIS)), None)
    if other is not None:
        return other, other.rank
    others = [c for c in classes if c not in (best, NO_DIAGNOSIS)]
    if not others:
        return None
    found = index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), k=1, filters={**(filters or {}), "diagnosis": others})[0]
    return (found[0], None) if found else None


def shown_with_differential(
    slot: DifferentialSlot, index: Any, vector: Any, pool: list[Any], top_k: int, classes: list[str], filters: dict | None = None,
    count_rank: bool = True,
) -> tuple[list[Any], dict[str, Any] | None]:
    """The ``top_k`` hits a reader is shown for the query ``vector`` whose best hits under ``filters`` are
    ``pool`` (best first, at least ``top_k`` of them when the library has them): the similarity ranking, with
    the slot's case placed when the slot opens. Returns ``(hits, opened)``: ``opened`` is None when the slot
    stays shut, else ``{"rank", "case_id", "diagnosis", "similarity_rank", "margin", "max_margin", "notice"}``
    (``similarity_rank`` None beyond :data:`RANK_COUNT_LIMIT`). What the deploy app and ``monai-cir search`` show.
    ``count_rank=False``: a case beyond the pool is not counted (``similarity_rank`` None; a caller ranking by
    another score than similarity counts it by similarity itself)."""
    hits = list(pool[:top_k])
    if not pool or top_k < slot.rank:
        return hits, None
    from .evidence import NO_DIAGNOSIS

    best = next((h for h in pool if h.metadata.diagnosis != NO_DIAGNOSIS), pool[0])  # the closest case with a diagnosis
    found = closest_other_case(index, vector, pool, classes, filters)
    if found is None:
        return hits, None
    other, rank = found
    # beyond the pool it ranks below every pool case; its rank is counted only when the slot opens
    if not slot.opens(best.score, other.score, rank if rank is not None else len(pool) + 1):
        return hits, None
    if rank is None and count_rank:
        rank = similarity_rank(index, vector, other.score, filters)
    margin = best.score - other.score
    opened = {"rank": slot.rank, "case_id": other.case_id, "diagnosis": other.metadata.diagnosis, "similarity_rank": rank,
              "margin": round(float(margin), 6), "max_margin": slot.margin,
              "notice": slot.notice(other.metadata.diagnosis, rank, best.metadata.diagnosis, margin)}
    return slot.place(hits, other, top_k), opened


def similarity_rank(index: Any, vector: Any, score: float, filters: dict | None = None, limit: int = RANK_COUNT_LIMIT) -> int | None:
    """1 + the number of library cases (under ``filters``) scoring above ``score`` for the query ``vector``;
    None when more than ``limit`` do (the count stops there: a search of millions is not run for a label)."""
    query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    k = min(len(index), 1024, limit + 1)
    while True:
        hits = index.search(query, k=k, filters=filters)[0]
        above = sum(1 for h in hits if h.score > score)
        if above < len(hits) or k >= len(index):
            return above + 1 if above <= limit else None
        if k > limit:
            return None
        k = min(len(index), 4 * k, limit + 1)


def library_margins(index: Any, sample: int | None = 5000, seed: int = 0, batch: int = 256, rank: int = DEFAULT_RANK,
                    exclude: Collection[str] = ()) -> tuple[np.ndarray, np.ndarray, int]:
    """Leave-one-out margins of a library's own cases: each (of at most ``sample``, drawn with ``seed``) queries
    the others with its image alone, through the index's own search (one filtered search per diagnosis, one
    unfiltered search of ``rank`` cases). An image-only query is the case's library vector: the release network's
    query and target towers agree when the text is empty (its findings gate leaves such a text out).

    ``exclude``: case ids that do not query (the model's own training cases: they sit closer to their own
    diagnosis than a new query does); they stay in the library the others search.

    Returns ``(margins, positions, n_queries)`` for :func:`fit_margin`: ``positions`` are 0-based as
    :func:`query_margins` gives them, counted up to ``rank`` (``rank``: at least there, beyond the slot); needs
    an index that returns its vectors (``vectors()``: the FAISS index)."""
    if not hasattr(index, "vectors"):
        raise ValueError(f"{type(index).__name__} cannot return its vectors; fit the margin on a FAISS index of the same library")
    from .evidence import NO_DIAGNOSIS

    vectors = np.asarray(index.vectors(), dtype=np.float32)
    ids = index.case_ids()
    # as the app's rule (closest_other_case): a case indexed without a diagnosis is neither the best match's diagnosis
    # nor a differential, though it keeps its place in the similarity ranking
    diagnoses = sorted(d for d in index.info()["diagnosis"] if d != NO_DIAGNOSIS)
    if len(diagnoses) < 2:
        raise ValueError(f"the library holds one diagnosis only ({diagnoses}, besides cases without one): there is no differential to fit")
    left_out = set(exclude)
    rows = np.array([i for i, case_id in enumerate(ids) if case_id not in left_out], dtype=int)
    if rows.size == 0:
        raise ValueError(f"every one of the {len(ids)} library cases is excluded (a training case of this model): there is "
                         "no new case to fit the margin on; fit it on a library of cases the model was not trained on")
    if sample is not None and len(rows) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=int(sample), replace=False))
    best = np.full((len(rows), len(diagnoses)), -np.inf)
    positions = np.full(len(rows), rank)
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        for j, diagnosis in enumerate(diagnoses):
            # two per diagnosis: the case itself may be the first
            for i, hits in zip(range(start, start + len(part)), index.search(vectors[part], k=2, filters={"diagnosis": diagnosis})):
                scores = [h.score for h in hits if h.case_id != ids[rows[i]]]
                best[i, j] = scores[0] if scores else -np.inf
        # where the closest case of another diagnosis sits, up to the slot's rank (the case itself may be first)
        for i, hits in zip(range(start, start + len(part)), index.search(vectors[part], k=rank + 1)):
            ranked = [h.metadata.diagnosis for h in hits if h.case_id != ids[rows[i]]][:rank]
            known = next((d for d in ranked if d != NO_DIAGNOSIS), None)
            positions[i] = next((p for p, d in enumerate(ranked) if known is not None and d not in (known, NO_DIAGNOSIS)), rank)
    top = np.sort(best, axis=1)
    margins = top[:, -1] - top[:, -2]
    finite = np.isfinite(margins)
    return margins[finite], positions[finite], len(rows)
