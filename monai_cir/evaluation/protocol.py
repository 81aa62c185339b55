"""The paper's cross-validation protocol on Derm7pt, and a cross-site check (DESIGN.md section 3).

Per fold f of the committed stratified 5-fold split (:func:`monai_cir.data.load_folds`):
queries = the cases of fold f (image + text), database = the cases of the other four folds (images
only), relevant = same class (Eq. 1); metrics are arXiv v1 Eqs. 10-14 plus P@5 (:mod:`monai_cir.metrics`),
reported per fold and as mean ± sample std (ddof = 1), in percent. Another collection (a user's folder + CSV) is
split into 5 folds stratified by diagnosis at run time, the same for the same CSV (:func:`fold_indices`).

Trained methods train on ``ctx.train_indices`` (= the database folds: the held-out fold is never seen).

Cross-site (``cross_site="isic-uda1"``): each image of the other collection queries all its other
images (leave-one-out, relevant = same diagnosis). A method takes part when it registered a
``cross_site`` function (:func:`~monai_cir.evaluation.registry.register_method`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..metrics import leave_one_out_metrics, retrieval_metrics, summarize_folds
from .registry import Method, MethodOutput, get_method
from .text_forms import text_form_cache

__all__ = [
    "DEFAULT_METHODS",
    "METRIC_KEYS",
    "CrossSiteContext",
    "FoldContext",
    "RunState",
    "evaluate",
    "evaluate_cross_site",
    "check_mergeable",
    "fold_assignment",
    "fold_indices",
    "merge_results",
]

logger = logging.getLogger(__name__)

METRIC_KEYS = ("acc@1", "acc@2", "acc@4", "map", "p@5")
DEFAULT_METHODS = ("imagenet_cosine", "frozen_multilevel_cosine", "image_only", "text_only", "composed")
# what must agree for two runs' per-fold results to be merged into one file
MERGE_KEYS = ("collection", "fold_assignment", "image_size", "seed", "query_subset", "method_options", "encoder_fingerprint", "protocol")


@dataclass
class RunState:
    """Objects shared by the methods of one :func:`evaluate` run: never configuration, never written out.

    Attributes:
        net: the network whose frozen encoders built the cache (``None``: the offline architecture);
            the untrained stand-ins put a fresh head on it.
        memo: per-run memo of trained models (e.g. ``composed`` and ``composed_text_query`` share one).
        train_log: one row per trained model (best epoch, epochs run, seconds), copied into the results.
    """

    net: Any = None
    memo: dict[Any, Any] = field(default_factory=dict)
    train_log: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FoldContext:
    """What a method sees for one fold.

    Attributes:
        cache: the Derm7pt :class:`~monai_cir.data.FeatureCache` (all 888 cases).
        query_indices: rows of the cache that query (the held-out fold).
        database_indices: rows that form the database (the other folds); also the training rows.
        fold: the fold number (0-based).
        config: the run configuration (image size, seed, method options...): plain JSON values only.
        seed: the random seed for this method and fold.
        state: the run's shared objects (:class:`RunState`).
        query_cache: where the queries' texts come from: the cache itself, or a copy with the texts in
            another form (:func:`~monai_cir.evaluation.text_forms.text_form_cache`; same rows, same maps).
            Methods train on ``cache`` and embed queries from ``query_cache``.
    """

    cache: Any
    query_indices: np.ndarray
    database_indices: np.ndarray
    fold: int
    config: dict[str, Any]
    seed: int = 0
    state: RunState = field(default_factory=RunState)
    query_cache: Any = None

    def __post_init__(self) -> None:
        if self.query_cache is None:
            self.query_cache = self.cache

    @property
    def train_indices(self) -> np.ndarray:
        return self.database_indices

    @property
    def query_labels(self) -> np.ndarray:
        return self.cache.labels[torch.as_tensor(self.query_indices)].numpy()

    @property
    def database_labels(self) -> np.ndarray:
        return self.cache.labels[torch.as_tensor(self.database_indices)].numpy()


@dataclass
class CrossSiteContext:
    """What a method's cross-site function sees: train on ``source`` (all of it), embed ``target``;
    composed queries read their texts from ``query_target`` (``target`` or a text form of it)."""

    source: Any
    target: Any
    config: dict[str, Any]
    seed: int = 0
    state: RunState = field(default_factory=RunState)
    query_target: Any = None

    def __post_init__(self) -> None:
        if self.query_target is None:
            self.query_target = self.target

    @property
    def train_indices(self) -> np.ndarray:
        return np.arange(len(self.source))


def fold_indices(cache: Any, folds: dict[str, int] | None = None) -> np.ndarray:
    """Fold number of each cache row (a feature cache, or anything with ``case_ids`` and ``labels``).

    Without ``folds``: the committed Derm7pt folds when every case has one, else deterministic stratified folds
    over the collection (:func:`monai_cir.data.folds.collection_folds`). With ``folds`` (``{case_id: fold}``):
    those, and every case must be in them."""
    from ..data.folds import collection_folds

    if folds is None:
        return np.asarray(collection_folds(list(cache.case_ids), np.asarray(cache.labels).tolist(), getattr(cache, "records", None))[0], dtype=int)
    missing = [cid for cid in cache.case_ids if cid not in folds]
    if missing:
        raise ValueError(f"{len(missing)} cases have no fold in the folds given (first: {missing[:3]})")
    return np.array([folds[cid] for cid in cache.case_ids])


def fold_assignment(cache: Any) -> str | None:
    """How :func:`fold_indices` assigns ``cache``'s folds: ``None`` for the committed Derm7pt folds, else the
    description of the stratified folds (recorded in the results' config: runs of two collections never merge)."""
    from ..data.folds import collection_folds

    return collection_folds(list(cache.case_ids), np.asarray(cache.labels).tolist(), getattr(cache, "records", None))[1]


# the text forms that render what a collection's columns record: the 7-point criteria (Derm7pt's columns), or the
# context (age, sex, site, elevation); without them a form's texts are another form's or empty
_FORMS_NEEDING_CRITERIA = {"partial": "the template's texts", "findings_only": "empty texts"}
_FORMS_NEEDING_CONTEXT = {"demographics": "empty texts", "reworded": "empty texts", "restyled": "empty texts"}


def check_text_forms(records: Sequence[Any], forms: Sequence[str], collection: str) -> None:
    """Refuse, before anything runs, the ``forms`` whose texts the collection's columns cannot make: a form that
    renders the 7-point checklist (``partial``, ``findings_only``) needs the criteria columns (Derm7pt's
    ``pigment_network``, ``streaks``...), one that renders the context needs age, sex or site columns; without
    them its column of the table would repeat another form's or score empty texts, and read as a result."""
    from ..data.report import CRITERIA, report_fields

    fields = [report_fields(record) for record in records]
    has_criteria = any(f.criteria for f in fields)
    has_context = has_criteria or any(f.age is not None or f.sex or f.location or f.elevation for f in fields)
    unusable = {form: what for form, what in _FORMS_NEEDING_CRITERIA.items() if form in forms and not has_criteria}
    unusable |= {form: what for form, what in _FORMS_NEEDING_CONTEXT.items() if form in forms and not has_context}
    if unusable:
        usable = [f for f in forms if f not in unusable] or ["template", "empty"]
        raise ValueError(
            f"--text-forms {', '.join(unusable)}: {collection} has no column these forms render ("
            + "; ".join(f"{form} would score {what}" for form, what in unusable.items())
            + f"). They need the 7-point checklist columns ({', '.join(key for key, _ in CRITERIA)})"
            + (" or age / sex / site columns" if not has_context else "") + f"; run --text-forms {','.join(usable)}")


def _similarity(output: MethodOutput, n_query: int, n_database: int, name: str) -> torch.Tensor:
    """A method's output as a (Q, N) similarity: ``Q @ T.T`` for embeddings, checked shapes."""
    if isinstance(output, (tuple, list)) and len(output) == 2:
        q, t = (torch.as_tensor(x).float() for x in output)
        if q.ndim != 2 or t.ndim != 2 or q.shape[1] != t.shape[1]:
            raise ValueError(f"method {name!r} returned embeddings of shapes {tuple(q.shape)} and {tuple(t.shape)}; expected (Q, D) and (N, D)")
        s = q @ t.T
    else:
        s = torch.as_tensor(output).float()
    if tuple(s.shape) != (n_query, n_database):
        raise ValueError(f"method {name!r} gave a similarity of shape {tuple(s.shape)}, expected ({n_query}, {n_database})")
    return s


def _summary(values: Sequence[float], scale: float = 1.0) -> dict[str, Any]:
    """Per-fold values unrounded (so that a merge of runs recomputes the same mean and std), mean and std to 2 decimals."""
    summary = summarize_folds(values, scale=scale)
    return {**summary, "mean": round(summary["mean"], 2), "std": None if summary["std"] is None else round(summary["std"], 2)}


def _percent(values: dict[str, float]) -> dict[str, float]:
    return {k: round(100.0 * values[k], 2) for k in METRIC_KEYS}


def evaluate(
    methods: Sequence[str] = DEFAULT_METHODS,
    image_size: int = 260,
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    cross_site: str | None = None,
    seed: int = 0,
    cache: Any = None,
    query_subset: int | None = None,
    keep_rankings: bool = False,
    progress: bool = True,
    root: Any = None,
    net: Any = None,
    method_options: dict[str, dict[str, Any]] | None = None,
    text_forms: Sequence[str] | None = None,
    on_fold_done: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the cross-validation protocol for ``methods``.

    Args:
        methods: registered method names (see :func:`~monai_cir.evaluation.available_methods`).
        image_size: preprocessing size of the feature cache.
        folds: which folds to hold out (0-based).
        cross_site: another collection (``"isic-uda1"``) for the leave-one-out cross-site check.
        seed: base seed; a method gets ``seed + fold``.
        cache: a ready :class:`~monai_cir.data.FeatureCache` (default: Derm7pt's, built or loaded); another
            collection's (e.g. of ``load_image_csv`` records) is cross-validated on stratified folds
            (:func:`fold_indices`), its name the config's ``collection``.
        query_subset: use only the first n queries of each fold (smoke tests).
        keep_rankings: keep each fold's ranking and AP (for figures) under ``"_rankings"``.
        root: data root (default ``$MONAI_CIR_DATA``).
        net: the network whose frozen encoders build the caches (default: the offline pretrained
            encoders); untrained stand-ins put a fresh head on it.
        method_options: ``{method: {option: value}}``, recorded in the config and passed to the
            methods as ``ctx.config["method_options"]``.
        text_forms: also score every method with the query texts in these forms
            (:data:`~monai_cir.evaluation.text_forms.TEXT_FORMS`), under ``"text_forms"``; the models are
            trained once per fold (on the template texts) and queried in every form.
        on_fold_done: called after each fold of each method with the part of the results it completes,
            ``{"config", "methods": {name: entry of that fold}, "cross_site": {}, "train_log": [entries since the
            last call], "text_forms": {collection: {form: {name: entry of that fold}}}}`` (the last key with
            ``text_forms``), so that a long run can save as it goes (``monai-cir evaluate`` merges it into ``--out``
            there) and a run cut short keeps the folds it finished (a fine-tuned fold is an hour of CPU).
        on_start: called with the run's config before any method runs (``monai-cir evaluate`` checks there
            that its results can merge into ``--out``, before the folds' minutes of work).

    Returns:
        ``{"methods": {name: {"label", "trained", "held_out_folds", "acc@1": {"folds", "mean", "std"}, ...,
        "p@5": ..., "seconds"}}, "cross_site": {collection: {...}}, "config": {...}, "train_log": [...]}``;
        all metrics in percent, the per-fold values unrounded (a merge recomputes the same mean and std).
    """
    from ..progress import progress_bar

    from ..data.feature_cache import build_feature_cache

    selected = [get_method(name) for name in methods]
    if cache is None:
        cache = build_feature_cache("derm7pt", image_size, net=net, root=root, progress=progress)
    fold_of = fold_indices(cache)
    assignment = fold_assignment(cache)
    # Derm7pt (or a subset) on its committed folds keeps the name every results file has; another collection its own
    collection = "derm7pt" if assignment is None else (cache.collection or "collection")
    config: dict[str, Any] = {
        "collection": collection,
        "image_size": int(cache.image_size or image_size),
        "folds": [int(f) for f in folds],
        "seed": int(seed),
        "methods": list(methods),
        "cross_site": cross_site,
        "query_subset": query_subset,
        "method_options": method_options or {},
        "text_forms": list(text_forms or []),
        "encoder_fingerprint": cache.fingerprint,
        "protocol": "queries = held-out fold (image + text); database = other folds (images only); relevant = same class",
        "metrics": "arXiv v1 Eqs. 10-14 and P@5 (share of the top 5 with the query's class), percent; std = sample std (ddof=1) over folds; ties: stable sort, database order",
    }
    if assignment is not None:  # absent for the committed folds, as in every results file made before it existed
        config["fold_assignment"] = assignment
    check_collection_classes(cache.records, folds, selected)
    check_text_forms(cache.records, text_forms or [], collection)
    if on_start is not None:
        on_start(config)
    state = RunState(net=net)
    results: dict[str, Any] = {"methods": {}, "cross_site": {}, "config": config}
    rankings: dict[str, dict[int, dict[str, Any]]] = {}
    forms = list(text_forms or [])
    form_caches = {form: text_form_cache(cache, form, seed, net) for form in forms}
    per_form: dict[str, dict[str, dict[str, list[float]]]] = {form: {} for form in forms}
    bar = progress_bar(total=len(selected) * len(folds), desc="evaluate", unit="fold", enabled=progress)
    reported = 0  # train_log entries already passed to on_fold_done

    def form_entry(values: dict[str, list[float]], held_out: Sequence[int] = folds) -> dict[str, Any]:
        return {"held_out_folds": [int(f) for f in held_out], **{k: _summary(values[k], scale=100.0) for k in METRIC_KEYS}}

    for method in selected:
        per_fold: dict[str, list[float]] = {k: [] for k in METRIC_KEYS}
        for form in forms:
            per_form[form][method.name] = {k: [] for k in METRIC_KEYS}
        start = time.perf_counter()
        for fold in folds:
            fold_start = time.perf_counter()
            query = np.flatnonzero(fold_of == fold)
            database = np.flatnonzero(fold_of != fold)
            if len(query) == 0:
                raise ValueError(f"fold {fold} has no cases; folds are 0..{fold_of.max()}")
            if query_subset:
                query = query[:query_subset]
            ctx = FoldContext(cache, query, database, int(fold), config, seed + int(fold), state)
            s = _similarity(method.fn(ctx), len(query), len(database), method.name)
            m = retrieval_metrics(s, ctx.query_labels, ctx.database_labels)
            for k in METRIC_KEYS:
                per_fold[k].append(m[k])
            if keep_rankings:
                rankings.setdefault(method.name, {})[int(fold)] = {"query": query, "database": database, "ranking": m["ranking"], "ap": m["ap"], "similarity": s}
            for form in forms:
                form_ctx = dataclasses.replace(ctx, query_cache=form_caches[form])
                mf = retrieval_metrics(_similarity(method.fn(form_ctx), len(query), len(database), method.name), ctx.query_labels, ctx.database_labels)
                for k in METRIC_KEYS:
                    per_form[form][method.name][k].append(mf[k])
            bar.update(1)
            if on_fold_done is not None:
                entry = {"label": method.label, "trained": method.trained, "description": method.description, "held_out_folds": [int(fold)],
                         **{k: _summary([m[k]], scale=100.0) for k in METRIC_KEYS}, "seconds": round(time.perf_counter() - fold_start, 2)}
                done = {"config": config, "methods": {method.name: entry}, "cross_site": {}, "train_log": state.train_log[reported:]}
                if forms:
                    done["text_forms"] = {collection: {form: {method.name: form_entry({k: v[-1:] for k, v in per_form[form][method.name].items()}, [fold])}
                                                       for form in forms}}
                reported = len(state.train_log)
                on_fold_done(done)
        entry = {"label": method.label, "trained": method.trained, "description": method.description, "held_out_folds": [int(f) for f in folds]}
        entry.update({k: _summary(per_fold[k], scale=100.0) for k in METRIC_KEYS})
        entry["seconds"] = round(time.perf_counter() - start, 2)
        results["methods"][method.name] = entry
    bar.close()
    if forms:
        results["text_forms"] = {collection: {form: {name: form_entry(v) for name, v in by_method.items()} for form, by_method in per_form.items()}}
    if cross_site:
        results["cross_site"][cross_site] = evaluate_cross_site(selected, cross_site, cache, config, seed, root=root, progress=progress, state=state)
        if forms:
            blocks = {form: evaluate_cross_site(selected, cross_site, cache, config, seed, root=root, progress=progress, state=state, text_form=form)
                      for form in forms}
            results["text_forms"][cross_site] = {form: block["methods"] for form, block in blocks.items()}
            results["cross_site"][cross_site]["text_forms_texts"] = text_forms_texts({form: block["query_texts"] for form, block in blocks.items()})
    results["train_log"] = state.train_log
    if keep_rankings:
        results["_rankings"] = rankings
        results["_cache"] = cache
    return results


def evaluate_cross_site(
    methods: Sequence[Method],
    collection: str,
    source: Any,
    config: dict[str, Any],
    seed: int = 0,
    root: Any = None,
    progress: bool = True,
    state: RunState | None = None,
    text_form: str = "template",
) -> dict[str, Any]:
    """Leave-one-out on ``collection`` for every method with a ``cross_site`` function (others are
    listed under ``"skipped"``); composed queries read their texts in ``text_form``. Percent."""
    from ..data.feature_cache import build_feature_cache

    state = state if state is not None else RunState()
    target = build_feature_cache(collection, source.image_size, net=state.net, root=root, progress=progress)
    query_target = text_form_cache(target, text_form, seed, state.net)
    query_texts = [r.text for r in query_target.records]
    from ..data.report import read_findings
    copies, copy_groups = copies_of_one_image(target.records)
    out: dict[str, Any] = {"protocol": "leave-one-out: each image queries the other N-1 but its byte-identical copies; relevant = same diagnosis",
                           "n": len(target), "copies_not_ranked": copy_groups, "methods": {}, "skipped": [],
                           "query_texts": {"form": text_form, "naming_a_finding": sum(1 for t in query_texts if read_findings(t)),
                                           "digest": _texts_digest(query_texts)}}
    for method in methods:
        if method.cross_site is None:
            out["skipped"].append(method.name)
            continue
        start = time.perf_counter()
        output = method.cross_site(CrossSiteContext(source, target, config, seed, state, query_target))
        if isinstance(output, dict):
            s = torch.as_tensor(output["similarity"]).float()
        else:
            emb = torch.as_tensor(output).float()
            if emb.ndim != 2 or emb.shape[0] != len(target):
                raise ValueError(f"method {method.name!r}: cross-site embeddings have shape {tuple(emb.shape)}, expected ({len(target)}, D)")
            s = emb @ emb.T
        m = leave_one_out_metrics(s, target.labels.numpy(), exclude=copies)
        # per method: a merged file may keep methods of runs made before copies were left out (their entries lack it)
        out["methods"][method.name] = {"label": method.label, **_percent(m), "seconds": round(time.perf_counter() - start, 2),
                                       "copies_not_ranked": len(copy_groups)}
    return out


def _texts_digest(texts: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]


def text_forms_texts(by_form: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per text form of a cross-site collection: how many query texts name a 7-point finding, and the earlier form whose
    texts are the very same (None: its own). A collection whose texts name no finding (ISIC UDA-1: age, sex and site)
    renders ``partial`` as ``template`` and ``findings_only`` as ``empty``, and a findings-gated query is its image-only
    query in every form: its text-form rows show that, not that text helps or hurts there."""
    out: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    for form, summary in by_form.items():
        out[form] = {"naming_a_finding": summary["naming_a_finding"], "same_texts_as": seen.get(summary["digest"])}
        seen.setdefault(summary["digest"], form)
    return out


def copies_of_one_image(records: Sequence[Any]) -> tuple[np.ndarray, list[list[str]]]:
    """The (N, N) mask of records whose image files are byte-identical (the diagonal excluded), and their case ids by
    group: ISIC UDA-1 holds two such pairs (ISIC_0000279 / 280, ISIC_0000477 / 512), each of which found its copy at
    rank 1 in leave-one-out."""
    from ..data.feature_cache import _file_digest

    digests = [_file_digest(r.image_path) for r in records]
    groups: dict[str, list[int]] = {}
    for i, digest in enumerate(digests):
        groups.setdefault(digest, []).append(i)
    mask = np.zeros((len(records), len(records)), dtype=bool)
    named = []
    for members in groups.values():
        if len(members) > 1:
            mask[np.ix_(members, members)] = True
            named.append([records[i].case_id for i in members])
    np.fill_diagonal(mask, False)
    return mask, named


def _fold_values(entry: dict[str, Any], folds: Sequence[int]) -> dict[int, dict[str, float]]:
    """``{fold: {metric: value}}`` of a method entry (``held_out_folds`` or, in older files, the run's folds)."""
    held_out = entry.get("held_out_folds", folds)
    return {int(f): {k: entry[k]["folds"][i] for k in METRIC_KEYS if k in entry} for i, f in enumerate(held_out)}


def _merge_entry(old: dict[str, Any] | None, new: dict[str, Any], old_folds: Sequence[int], new_folds: Sequence[int]) -> dict[str, Any]:
    """One method's per-fold metrics of two runs combined (the new run's value wins on a fold held by both)."""
    values = _fold_values(new, new_folds)
    if old is not None:
        values = {**_fold_values(old, old_folds), **values}
    folds = sorted(values)
    combined = {k: v for k, v in new.items() if k not in METRIC_KEYS}
    combined["held_out_folds"] = folds
    for k in METRIC_KEYS:
        if all(k in values[f] for f in folds):
            combined[k] = _summary([values[f][k] for f in folds])
    return combined


def _one_entry_per_run(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` with the entries of one invocation (the same ``"run"`` id: ``monai-cir evaluate`` saves fold by fold) as one:
    their folds joined, their wall times added."""
    out: list[dict[str, Any]] = []
    for run in runs:
        same = next((r for r in out if run.get("run") is not None and r.get("run") == run.get("run")), None)
        if same is None:
            out.append(dict(run))
            continue
        same["folds"] = sorted(set(same.get("folds", [])) | set(run.get("folds", [])))
        same["wall_time_s"] = round(float(same.get("wall_time_s", 0.0)) + float(run.get("wall_time_s", 0.0)), 1)
    return out


def check_collection_classes(records: Sequence[Any], folds: Sequence[int], methods: Sequence[Any]) -> None:
    """Before any case is embedded or any fold run (``records``: the collection's case records; ``methods``: the
    registered :class:`~monai_cir.evaluation.registry.Method` objects to run): every diagnosis has two cases or
    more (a query of a diagnosis with one case has no case of it among the other folds: its precision is
    undefined), and, for a method that fits the diagnosis prior, the training cases of every fold in ``folds``
    allow it (:func:`monai_cir.engine.bundle.check_training_classes`). Raises ValueError naming the diagnosis."""
    from collections import Counter

    from ..data.folds import collection_folds

    counts = Counter(str(record.diagnosis) for record in records)
    single = sorted(d for d, n in counts.items() if n < 2)
    if single:
        raise ValueError(f"diagnosis {', '.join(map(repr, single))} has a single case: a query of it has no case of its diagnosis in the "
                         "other folds to find (its precision is undefined); add cases of it, or leave its rows out of the CSV")
    with_prior = [str(getattr(method, "name", method)) for method in methods if getattr(method, "fits_prior", False)]
    if with_prior:
        from ..engine.bundle import check_training_classes

        fold_of = np.asarray(collection_folds([r.case_id for r in records], [int(r.label) for r in records], records)[0])
        for fold in folds:
            try:
                check_training_classes(records, np.flatnonzero(fold_of != int(fold)), prior_strength=1.0, fold=int(fold))
            except ValueError as err:  # the other methods could run: say which ones cannot, and how to run the rest
                others = [str(getattr(m, "name", m)) for m in methods if not getattr(m, "fits_prior", False)]
                rest = f"; run the others without them (--methods {' '.join(others)})" if others else ""
                raise ValueError(f"{err} (the methods that fit the diagnosis prior cannot run on this collection: {', '.join(with_prior)}{rest})") from None


def check_mergeable(old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless runs of these two configs can merge (every :data:`MERGE_KEYS` entry agrees)."""
    differing = [k for k in MERGE_KEYS if old_config.get(k) != new_config.get(k)]
    if differing:
        raise ValueError(
            f"cannot merge: the results file was made with other settings ({', '.join(f'{k}: {old_config.get(k)!r} vs {new_config.get(k)!r}' for k in differing)}); "
            "write to another --out, or pass --overwrite to replace it"
        )


def merge_results(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Merge the per-fold results of ``new`` into ``previous`` (resumable runs: ``--folds 0``, then
    ``--folds 1``...): a fold run again replaces the earlier value; means and stds are recomputed over
    every fold held (methods and Derm7pt text forms alike). Both must come from the same protocol
    (:data:`MERGE_KEYS` of their configs); each method keeps the commits of the runs that made it under
    ``"runs"``. Cross-site blocks (not per fold) of ``new`` replace those of ``previous`` method by method."""
    old_cfg, new_cfg = previous.get("config", {}), new.get("config", {})
    check_mergeable(old_cfg, new_cfg)
    merged = {**previous, "methods": dict(previous.get("methods", {})), "cross_site": dict(previous.get("cross_site", {}))}
    for name, entry in new["methods"].items():
        old = previous["methods"].get(name)
        combined = _merge_entry(old, entry, old_cfg.get("folds", []), new_cfg["folds"])
        combined["seconds"] = round(float(entry.get("seconds", 0.0)) + float((old or {}).get("seconds", 0.0)), 2)
        combined["runs"] = _one_entry_per_run(list((old or {}).get("runs", [])) + list(entry.get("runs", [])))
        merged["methods"][name] = combined
    for collection, block in new.get("cross_site", {}).items():
        base = merged["cross_site"].get(collection)
        if base is None:
            merged["cross_site"][collection] = block
        else:
            extras = {k: v for k, v in block.items() if k not in ("methods", "skipped")}  # the latest run's protocol, copies, texts
            merged["cross_site"][collection] = {**base, **extras, "methods": {**base["methods"], **block["methods"]},
                                                "skipped": sorted(set(base.get("skipped", [])) - set(block["methods"]) | set(block.get("skipped", [])))}
    forms = {collection: {form: dict(by_method) for form, by_method in by_form.items()} for collection, by_form in previous.get("text_forms", {}).items()}
    for collection, by_form in new.get("text_forms", {}).items():
        target = forms.setdefault(collection, {})
        for form, by_method in by_form.items():
            for name, entry in by_method.items():
                old = target.get(form, {}).get(name)
                if collection == old_cfg.get("collection", "derm7pt"):  # per fold: merge
                    target.setdefault(form, {})[name] = _merge_entry(old, entry, old_cfg.get("folds", []), new_cfg["folds"])
                else:  # cross-site leave-one-out: the latest run's
                    target.setdefault(form, {})[name] = entry
    if forms:
        merged["text_forms"] = forms
    all_folds = sorted({f for e in merged["methods"].values() for f in e.get("held_out_folds", [])})
    merged["config"] = {**old_cfg, "folds": all_folds, "methods": list(merged["methods"]),
                        "text_forms": sorted(set(old_cfg.get("text_forms") or []) | set(new_cfg.get("text_forms") or []))}
    merged["train_log"] = list(previous.get("train_log", [])) + list(new.get("train_log", []))
    return merged
