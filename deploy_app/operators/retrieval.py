"""Composed retrieval: each query's image + text -> the top-k similar cases of the case library.

The network, the index and the evidence calibration of a MODELS folder are loaded once per process
(:func:`load_models`, cached by the folder, the device and the size + mtime of every file it reads),
so a service that runs the app per study pays for them once. On CUDA the network runs under fp16
autocast (inside the network) on batches of queries; on CPU in float32, same results within tolerance.
The image encoder runs in channels-last memory format (the same maps, bit for bit, on the CPUs
measured; about a third less CPU time), the encoder artifact's with BatchNorm folded into the
convolutions (a quarter to a third less again; the same maps to float32 rounding), and on CPU in forwards of at most
:data:`CPU_FORWARD_IMAGES` images (a larger CPU batch costs more per image: the L level's maps no longer
fit the caches).

Explanations (``explain=True``) reuse what the search computed: the query's image maps from its
encoding, and per library case the maps pooled to the alignment grid (a few KB per case, kept in a
per-process cache, :class:`TargetMapCache`, and read from the library's grid maps store,
``MODELS/index/grid_maps``, which ``monai-cir index build`` writes from the index's own forwards);
the library images of all the queries of a batch that are in neither run in shared forwards, each
case once. The per-query rest (text attention, composition, the decomposition of the pairs) is
left to the reports operator (:class:`PendingExplanations`), which runs it with the query's SR and
PDF, for a batch in forked workers.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from .common import QueryResult, attr, clear_library_images, library_target

__all__ = [
    "CPU_FORWARD_IMAGES",
    "ComposedRetrievalOperator",
    "LoadedModels",
    "ModelsLayoutError",
    "PendingExplanations",
    "TargetMapCache",
    "clear_library_caches",
    "clear_models_cache",
    "load_models",
    "resolve_models",
]

logger = logging.getLogger(__name__)

INDEX_DIR = "index"
EVIDENCE_CALIBRATION = "evidence_calibration.json"
# images per forward of the image encoder on CPU (EfficientNet-Lite2 at 260 px, channels last, one
# thread: 29-30 ms per image at 1-4 images, 41 ms at 16; 45 / 42 / 85 ms in the default layout)
CPU_FORWARD_IMAGES = 4


class ModelsLayoutError(FileNotFoundError):
    """MODELS does not hold what the app needs."""


def resolve_models(models: str | Path) -> tuple[Path, Path]:
    """``(checkpoint, index folder)`` of the MODELS folder (see docs/deploy.md).

    The checkpoint: MODELS/model.pt, or MODELS/models/model.pt (what ``monai-deploy package
    --models DIR`` writes for a DIR named ``models``; also a MONAI bundle folder). The case index:
    MODELS/index (a saved :class:`monai_cir.index.CaseIndex`). The app loads nothing from elsewhere
    (no ``$MONAI_CIR_MODEL``, no checkout bundle): what it runs is what MODELS holds."""
    models = Path(models)
    if models.is_file() and models.suffix == ".pt":
        raise ModelsLayoutError(
            f"MODELS is the file {models}; give a folder holding model.pt and index/ (the case library index): "
            "MODELS/model.pt + MODELS/index/"
        )
    if not models.is_dir():
        raise ModelsLayoutError(f"models folder not found: {models} (give -m or HOLOSCAN_MODEL_PATH)")
    from monai_cir.networks.checkpoint import checkpoint_in_folder

    checkpoint = checkpoint_in_folder(models)
    if checkpoint is None:
        raise ModelsLayoutError(
            f"no model checkpoint in {models}: expected {models / 'model.pt'} or {models / 'models' / 'model.pt'} "
            "(the checkpoint the case index was built with)"
        )
    index = models / INDEX_DIR
    if not index.is_dir():
        raise ModelsLayoutError(
            f"no case index in {models}: expected {index}/ (build one with `monai-cir index build --dicom LIBRARY --out {index}`)"
        )
    return checkpoint, index


@dataclass(frozen=True)
class LoadedModels:
    """What the app loads from MODELS, once: reuse one object across runs (``SimilarCasesApp(models=...)``)."""

    net: Any  # monai_cir.networks.ComposedRetrievalNet, eval mode, on ``device``
    index: Any  # monai_cir.index.CaseIndex built by ``net`` (fingerprint checked)
    calibration: Any  # monai_cir.evidence.EvidenceCalibration (or UNCALIBRATED)
    classes: list[str]
    checkpoint: Path
    index_dir: Path
    load_s: float
    grid_maps: Any = None  # monai_cir.grid_store.GridMapStore of the library (MODELS/index/grid_maps), or None
    differential: Any = None  # monai_cir.differential.DifferentialSlot the checkpoint records, or None (no slot)
    library: dict[str, int] = field(default_factory=dict)  # cases per diagnosis in the index (the evidence's base rate)
    # a digest of the index files as loaded (path, size, mtime): another library, or the same one grown or pruned, differs
    index_state: str = ""

    @property
    def device(self) -> Any:
        return self.net.device


_MODELS_CACHE: dict[tuple, LoadedModels] = {}
_MODELS_LOCK = threading.Lock()


def _files_state(*paths: Path | None) -> tuple:
    """(path, size, mtime_ns) of every file under ``paths``: a changed or replaced file is a new key."""
    state = []
    for path in paths:
        if path is None or not path.exists():
            state.append((str(path), None))
            continue
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
        for f in files:
            st = f.stat()
            state.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(state)


def load_models(models: str | Path, device: str = "auto", cache: bool = True) -> LoadedModels:
    """The network, case index and evidence calibration of a MODELS folder (see docs/deploy.md).

    With ``cache`` (the default) the result is kept for the life of the process, keyed by the
    folder, the device and the size + mtime of the checkpoint, every index file and the
    calibration: a second call with unchanged files returns the same object at no cost; a rebuilt
    index or a new checkpoint is loaded afresh. Thread-safe."""
    from monai_cir.config import in_a_passing_thread, resolve_device
    from monai_cir.differential import DifferentialSlot
    from monai_cir.evidence import UNCALIBRATED, EvidenceCalibration, calibration_for_model
    from monai_cir.grid_store import GRID_STORE_DIR, GridMapStore
    from monai_cir.index import load_index
    from monai_cir.networks import ENCODER_ARTIFACT_DIR, load_model
    from monai_cir.retrieval import model_fingerprint

    models = Path(models).resolve()
    checkpoint, index_dir = resolve_models(models)
    device = str(resolve_device(device))
    # beside MODELS/index, or beside the checkpoint (MODELS/models/ in the packaged layout)
    calibration_file = next(
        (f for f in (models / EVIDENCE_CALIBRATION, checkpoint.parent / EVIDENCE_CALIBRATION) if f.is_file()),
        models / EVIDENCE_CALIBRATION,
    )
    key = (str(models), device, _files_state(checkpoint, index_dir, calibration_file))
    with _MODELS_LOCK:
        if cache and key in _MODELS_CACHE:
            return _MODELS_CACHE[key]
        start = time.perf_counter()

        def network_index_and_grid_maps() -> tuple[Any, Any, Any]:
            # on CPU the frozen encoders come from the TorchScript artifact the index build wrote beside the
            # index (no timm / transformers import: seconds off a cold start), else they are built eagerly
            net = load_model(checkpoint, device=device, encoder_artifact=index_dir / ENCODER_ARTIFACT_DIR)
            _fast_image_encoder(net)
            fingerprint = model_fingerprint(net)
            return net, load_index(index_dir, expected_fingerprint=fingerprint), GridMapStore.load(index_dir / GRID_STORE_DIR, fingerprint)

        # loaded in a thread that ends: the caller's thread (a process's main thread) keeps no torch
        # thread team, which would take parallelism from the operators' forwards (see in_a_passing_thread)
        net, index, grid_maps = in_a_passing_thread(network_index_and_grid_maps)
        if getattr(index, "backend", "") == "milvus":  # MODELS/index's manifest names where the library lives
            logger.warning("the index in %s is a Milvus collection at %s: every query's embedding is sent there", index_dir, index.uri)
        if calibration_file.is_file():
            calibration, mismatch = calibration_for_model(EvidenceCalibration.load(calibration_file), index.fingerprint)
            if mismatch:
                logger.warning("%s: %s", calibration_file, mismatch)
        else:
            logger.info("no %s in MODELS: the evidence summary is an uncalibrated score-weighted vote", EVIDENCE_CALIBRATION)
            calibration = UNCALIBRATED
        library = index.info()["diagnosis"]
        index_state = hashlib.sha256(repr(_files_state(index_dir)).encode()).hexdigest()[:16]
        loaded = LoadedModels(
            net=net, index=index, calibration=calibration, classes=sorted(library), library=library,
            checkpoint=checkpoint, index_dir=index_dir, load_s=time.perf_counter() - start, grid_maps=grid_maps,
            differential=DifferentialSlot.from_checkpoint_info(net.checkpoint_info), index_state=index_state,
        )
        if net.diagnosis_prior is not None and loaded.differential is not None and loaded.differential.margin_by_similarity is None:
            logger.warning("%s ranks with a diagnosis prior but its differential slot records one margin, fitted without it: the slot "
                           "uses that margin for every query; refit it (bench/differential_slot.py --prior --write-checkpoint)", checkpoint)
        logger.info(
            "model %s on %s, case index %s (%d cases, grid maps of %d), loaded in %.1f s",
            checkpoint, device, index_dir, len(index), len(grid_maps) if grid_maps is not None else 0, loaded.load_s,
        )
        if cache:
            for old in [k for k in _MODELS_CACHE if k[:2] == key[:2]]:  # the same folder's stale entry
                del _MODELS_CACHE[old]
            _MODELS_CACHE[key] = loaded
        return loaded


def clear_models_cache() -> None:
    """Forget every cached :class:`LoadedModels` (frees the networks once no app holds them)."""
    with _MODELS_LOCK:
        _MODELS_CACHE.clear()
    TARGET_MAPS.clear()


def _fast_image_encoder(net: Any) -> None:
    """The image encoder's weights in channels-last layout: the same values (the fingerprint hashes
    values), the convolutions skip their layout conversions. The artifact's encoder then also runs its
    inference forwards with BatchNorm folded into the convolutions (:meth:`ScriptedImageEncoder.fold_batchnorm`:
    about a third less CPU per image, the same maps to float32 rounding)."""
    import torch

    from monai_cir.networks import ScriptedImageEncoder

    net.image_encoder.to(memory_format=torch.channels_last)
    if isinstance(net.image_encoder, ScriptedImageEncoder):
        net.image_encoder.fold_batchnorm()  # after the layout change: the folded copy keeps it


def _forward_images(net: Any, images: Any) -> Any:
    """A batch of images as the encoder runs it fastest: on the network's device, channels last."""
    import torch

    return images.to(net.device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def _own_case(result: QueryResult, hits: Sequence[Any]) -> Any:
    """The hit that is the query's own image (a library case sent as a query), else None."""
    uid = attr(result.query, "sop_instance_uid")
    return next((h for h in hits if uid and getattr(h.metadata, "sop_instance_uid", None) == uid), None)


def _chunks(n: int, net: Any, batch_size: int) -> list[slice]:
    size = batch_size if net.device.type == "cuda" else min(batch_size, CPU_FORWARD_IMAGES)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class TargetMapCache:
    """Library cases' maps on the alignment grid (:func:`monai_cir.explain.grid_maps`), per process:
    what an explanation needs of a match besides its image, ~33 KB per case for EfficientNet-Lite2
    (48 + 120 + 352 channels x 4 x 4, float32), least recently used dropped beyond ``max_cases``.

    Keyed by the library file (path, mtime, size), the network's fingerprint and device: a changed
    file or another model is computed afresh. Thread-safe."""

    def __init__(self, max_cases: int = 2048) -> None:
        self.max_cases = int(max_cases)
        self._maps: collections.OrderedDict[tuple, list[Any]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._maps)

    def clear(self) -> None:
        with self._lock:
            self._maps.clear()

    def get_many(self, net: Any, targets: dict[tuple, Any], batch_size: int = CPU_FORWARD_IMAGES, store: Any = None) -> dict[tuple, list[Any]]:
        """``{file key: preprocessed image}`` -> ``{file key: per-level grid maps (1, C, h, w)}``; the
        images not cached here are read from ``store`` (the library's
        :class:`~monai_cir.grid_store.GridMapStore`, written with the index, when it was written for
        this network), the others run through the image encoder in forwards of ``batch_size``
        (CPU: at most :data:`CPU_FORWARD_IMAGES`)."""
        import torch

        from monai_cir.explain import grid_maps
        from monai_cir.retrieval import model_fingerprint

        model = (model_fingerprint(net), str(net.device))
        found: dict[tuple, list[Any]] = {}
        with self._lock:
            for key in targets:
                maps = self._maps.get((*model, key))
                if maps is not None:
                    self._maps.move_to_end((*model, key))
                    found[key] = maps
        missing = [key for key in targets if key not in found]
        if store is not None and store.fingerprint == model[0]:
            for key in missing:
                maps = store.get(key)
                if maps is not None:
                    found[key] = [m.to(net.device) for m in maps]
        stored = [key for key in missing if key in found]
        missing = [key for key in missing if key not in found]
        for part in _chunks(len(missing), net, batch_size):
            keys = missing[part]
            with torch.inference_mode():
                grids = grid_maps(net, net.image_features(_forward_images(net, torch.stack([targets[k] for k in keys]))))
            for i, key in enumerate(keys):
                found[key] = [g[i : i + 1].clone() for g in grids]
        with self._lock:
            for key in (*stored, *missing):
                self._maps[(*model, key)] = found[key]
            while len(self._maps) > self.max_cases:
                self._maps.popitem(last=False)
        return found


TARGET_MAPS = TargetMapCache()


def clear_library_caches() -> None:
    """Forget every library case this process has seen: decoded images, thumbnails, preprocessed
    tensors and grid maps (the next study pays for its matches as the first one after a start does)."""
    TARGET_MAPS.clear()
    clear_library_images()


class ComposedRetrievalOperator(Operator):
    """Encodes every query (image + text) and searches the case index.

    Named input:
        queries: ``list[QueryResult]`` from the loader.

    Named output:
        results: the same list, each with ``hits`` (``monai_cir.index.SearchHit``, in the order shown) or ``error``.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        models: LoadedModels,
        top_k: int = 5,
        batch_size: int | None = None,
        site: str = "any",
        explain: bool = False,
        differential: bool = True,
        **kwargs: Any,
    ) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.top_k = int(top_k)
        self.site = site
        self.explain = bool(explain)
        # the checkpoint's differential slot (None: it records none, or switched off)
        self.differential = models.differential if differential else None
        self.input_name = "queries"
        self.output_name = "results"
        self.models = models
        self.net, self.index, self.calibration, self.classes = models.net, models.index, models.calibration, models.classes
        self.library = models.library
        self._library_by_filters: dict[str, dict[str, int]] = {}
        self.batch_size = int(batch_size) if batch_size else (16 if self.net.device.type == "cuda" else 4)
        super().__init__(fragment, *args, **kwargs)

    def _library_under(self, filters: dict) -> dict[str, int]:
        """Cases per diagnosis of the part of the library ``filters`` search (one count per site, kept)."""
        key = repr(sorted((k, sorted(map(str, v)) if isinstance(v, (list, tuple, set)) else str(v)) for k, v in filters.items()))
        if key not in self._library_by_filters:
            self._library_by_filters[key] = self.index.diagnosis_counts(filters)
        return self._library_by_filters[key]

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.input_name)
        spec.output(self.output_name)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        results: list[QueryResult] = op_input.receive(self.input_name) or []
        self.run(results)
        op_output.emit(results, self.output_name)

    # ------------------------------------------------------------------ the work, without the SDK
    def run(self, results: list[QueryResult]) -> list[QueryResult]:
        from monai_cir.retrieval import text_use, to_image_tensor
        from monai_cir.sites_condition import resolve_site_condition

        ready: list[tuple[QueryResult, Any, str, dict | None]] = []
        for result in results:
            start = time.perf_counter()
            try:
                image = attr(result.query, "image")
                if image is None:
                    raise ValueError("the query has no image")
                tensor = to_image_tensor(image, self.net.image_size)
                text = str(attr(result.query, "text", "") or "")
                result.text_use, notices = text_use(self.net, text)
                result.add_notices(*notices)
                filters, notice = resolve_site_condition(self.site, attr(result.query, "site"))
                result.add_notices(notice)
                ready.append((result, tensor, text, filters))
            except Exception as err:  # noqa: BLE001 (a bad image must not stop the other studies)
                result.fail("retrieval", f"cannot prepare the query image: {err}")
                self._logger.error("query %s skipped: %s", result.query_id, result.error)
            result.timing_ms["preprocess"] = 1000 * (time.perf_counter() - start)

        for first in range(0, len(ready), self.batch_size):
            batch = ready[first : first + self.batch_size]
            try:
                self._search_batch(batch)
            except Exception as err:  # noqa: BLE001 (isolate the culprit: one query at a time)
                self._logger.warning("batch of %d failed (%s); retrying one by one", len(batch), err)
                for item in batch:
                    try:
                        self._search_batch([item])
                    except Exception as single_err:  # noqa: BLE001
                        item[0].fail("retrieval", f"retrieval failed: {single_err}")
                        self._logger.error("query %s skipped: %s", item[0].query_id, item[0].error)
        return results

    def _search_batch(self, batch: list[tuple[QueryResult, Any, str, dict | None]]) -> None:
        import torch

        from monai_cir.retrieval import captured_image_maps

        start = time.perf_counter()
        images = torch.stack([tensor for _, tensor, _, _ in batch])
        texts = [text for _, _, text, _ in batch]
        vectors, image_vectors, terms, outputs, text_features = [], [], [], [], []
        with torch.inference_mode(), captured_image_maps(self.net) as captured:
            for part in _chunks(len(batch), self.net, self.batch_size):
                encoded = self.net.encode_query_parts(_forward_images(self.net, images[part]), texts[part], with_image_query=True)
                vectors.append(encoded.query.float().cpu())
                image_vectors.append(encoded.image_query.float().cpu())
                terms.extend(encoded.terms.double().cpu().numpy() if encoded.terms is not None else [None] * len(encoded.query))
                outputs.append(captured[-1] if len(captured) == len(vectors) else None)
                # each query's text as it was composed (the explanation's, without a second text forward)
                text_features.extend((encoded.tokens[j : j + 1], encoded.mask[j : j + 1]) for j in range(len(encoded.query)))
        queries, image_queries = torch.cat(vectors).numpy(), torch.cat(image_vectors).numpy()
        if self.net.device.type == "cuda":
            torch.cuda.synchronize()
        encode_ms = 1000 * (time.perf_counter() - start) / len(batch)
        from monai_cir.evidence import summarize_evidence
        from monai_cir.retrieval import evidence_disagreement_notice, image_alone, own_case_notice, ranked_answer

        for (result, tensor, text, filters), vector, image_vector, term in zip(batch, queries, image_queries, terms):
            t0 = time.perf_counter()
            # the evidence summary votes over more neighbours (calibration.k, 16 by default) than are shown
            shown = ranked_answer(self.index, vector, self.top_k, self.calibration.k, filters, terms=term, prior=self.net.diagnosis_prior,
                                  slot=self.differential, diagnoses=self.classes)
            pool, result.hits, result.ranking = shown.pool, shown.hits, shown.ranking
            result.add_notices(shown.notice, shown.unlike_notice)
            # the query's own case among the shown cases, or only among the evidence summary's votes
            own = _own_case(result, shown.hits) or _own_case(result, pool)
            result.add_notices(own_case_notice(own, shown, "the same SOP Instance UID", summarized=bool(pool)))
            if shown.differential is not None:
                result.differential = dict(shown.differential)
                result.add_notices(result.differential.pop("notice"))
            searched = self.library
            if filters:  # a site condition: the vote's base rate is the searched part of the library, and the reader is told
                from monai_cir.index.base import filters_in_words

                searched = self._library_under(filters)
                result.add_notices(f"similar cases searched among the library's {sum(searched.values())} cases with "
                                   f"{filters_in_words(filters)} only (of {sum(self.library.values())})")
            if pool:
                result.evidence = summarize_evidence(pool, calibration=self.calibration, classes=self.classes, library=searched)
                result.evidence_disagreement = evidence_disagreement_notice(result.evidence, shown)
                result.add_notices(result.evidence_disagreement)
            if result.text_use and result.text_use["weight"] > 0 and result.hits:
                # what the same image finds without the text: the reader's findings, returned, are not evidence
                result.image_alone, moved = image_alone(self.index, image_vector, result.hits, str(attr(result.query, "text", "") or ""), filters)
                result.add_notices(moved)
            result.timing_ms["encode"] = encode_ms
            result.timing_ms["search"] = 1000 * (time.perf_counter() - t0)
            if not result.hits:
                from monai_cir.dicom.sr import NO_MATCH_NOTICE

                from monai_cir.index.base import filters_in_words

                # the condition in words ("site trunk"), not as the search's filter dict
                result.add_notices(f"{NO_MATCH_NOTICE}: no library case " + (f"with {filters_in_words(filters)}" if filters else "matched"))
            self._logger.info(
                "query %s: top-%d %s", result.query_id, len(result.hits),
                ", ".join(f"{h.metadata.diagnosis} {h.score:.3f}" for h in result.hits),
            )
        if self.explain:
            self._explain(batch, self._query_maps(outputs, len(batch)), text_features)

    def _query_maps(self, outputs: Sequence[Any], n: int) -> list[Any] | None:
        """The selected levels' maps of the batch's queries, as ``net.image_features`` returns them,
        from the encoder outputs captured while encoding (None when they were not all captured:
        the explanation then computes them)."""
        import torch

        if not outputs or any(o is None for o in outputs):
            return None
        maps = [torch.cat([o[i] for o in outputs]).float() for i in self.net.level_indices]
        return maps if all(m.shape[0] == n for m in maps) else None

    def _explain(self, batch: list[tuple[QueryResult, Any, str, dict | None]], query_maps: list[Any] | None,
                 text_features: list[tuple[Any, Any]]) -> None:
        """What explaining each query's matches needs (:class:`PendingExplanations`, in
        ``result.pending_explanations``; the reports operator explains from it where it writes the
        SR and the PDF): the query's maps and text tokens from its encoding, the matches' grid maps from
        :data:`TARGET_MAPS`, whose misses for the whole batch run in shared forwards here; a match
        whose library image is not reachable from here gets a notice instead. This shared work's
        time is split evenly over the batch's queries."""
        import torch

        start = time.perf_counter()
        plans, targets = [], {}
        for result, _, _, _ in batch:
            plan = []
            for hit in result.hits:
                found = library_target(hit, self.net.image_size)
                if found is None:
                    result.add_notices(f"no explanation for rank {hit.rank}: the library image is not reachable from this app")
                    continue
                key, tensor = found
                targets[key] = tensor
                plan.append((hit, key, tensor))
            plans.append(plan)
        grids = TARGET_MAPS.get_many(self.net, targets, self.batch_size, store=self.models.grid_maps) if targets else {}
        for j, ((result, query, text, _), plan) in enumerate(zip(batch, plans)):
            if plan:
                result.pending_explanations = PendingExplanations(
                    net=self.net, query=query, text=text,
                    query_maps=[m[j : j + 1] for m in query_maps] if query_maps is not None else None,
                    text_features=text_features[j],
                    ranks=[hit.rank for hit, _, _ in plan],
                    labels=[f"#{hit.rank} {hit.metadata.diagnosis}" for hit, _, _ in plan],
                    targets=[tensor for _, _, tensor in plan],
                    target_maps=[torch.cat([grids[key][level] for _, key, _ in plan]) for level in range(len(self.net.levels))],
                )
        shared_ms = 1000 * (time.perf_counter() - start) / len(batch)
        for result, _, _, _ in batch:
            result.timing_ms["explain"] = shared_ms


@dataclass
class PendingExplanations:
    """A query's matches, ready to explain (:func:`monai_cir.explain.explain_matches`): what the
    retrieval computed for its batch (the query's maps from its encoding, the matches' grid maps)
    and the per-query rest, done by :meth:`explain` where the reports are written."""

    net: Any
    query: Any  # the preprocessed query image (3, S, S)
    text: str
    query_maps: list[Any] | None  # one (1, C, h, w) map per level, or None (computed then)
    text_features: tuple[Any, Any]  # (tokens (1, L, d), mask (1, L)) of the query's text, from its encoding
    ranks: list[int]
    labels: list[str]
    targets: list[Any]  # the matches' preprocessed images (3, S, S), in ``ranks`` order
    target_maps: list[Any]  # one (N, C, h', w') grid map per level

    @property
    def forkable(self) -> bool:
        """Whether a forked worker can explain: not with the network on CUDA (a forked child cannot use
        its parent's CUDA context), so there the reports operator explains in the process."""
        return self.net.device.type == "cpu"

    def explain(self) -> dict[int, Any]:
        """rank -> :class:`~monai_cir.explain.Explanation` (the text attention, the composition and
        the decomposition of the pairs)."""
        from monai_cir.explain import explain_matches

        explanations = explain_matches(
            self.net, self.query, self.text, self.targets, labels=self.labels, query_maps=self.query_maps, target_maps=self.target_maps,
            text_features=self.text_features,
        )
        return dict(zip(self.ranks, explanations))
