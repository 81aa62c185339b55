"""Composed retrieval: each query's image + text -> the top-k similar cases of the case library.

The network, the index and the evidence calibration of a MODELS folder are loaded once per process
(:func:`load_models`, cached by the folder, the device and the size + mtime of every file it reads),
so a service that runs the app per study pays for them once. On CUDA the network runs under fp16
autocast (inside the network) on batches of queries; on CPU in float32, same results within tolerance.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from .common import LIBRARY_IMAGE_SIDE, QueryResult, attr, library_image

__all__ = ["ComposedRetrievalOperator", "LoadedModels", "ModelsLayoutError", "clear_models_cache", "load_models", "resolve_models"]

logger = logging.getLogger(__name__)

INDEX_DIR = "index"
EVIDENCE_CALIBRATION = "evidence_calibration.json"


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
    checkpoint = next((c for c in (models / "model.pt", models / "models" / "model.pt") if c.is_file()), None)
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


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available; use --device auto or cpu")
    return str(device)


def load_models(models: str | Path, device: str = "auto", cache: bool = True) -> LoadedModels:
    """The network, case index and evidence calibration of a MODELS folder (see docs/deploy.md).

    With ``cache`` (the default) the result is kept for the life of the process, keyed by the
    folder, the device and the size + mtime of the checkpoint, every index file and the
    calibration: a second call with unchanged files returns the same object at no cost; a rebuilt
    index or a new checkpoint is loaded afresh. Thread-safe."""
    from monai_cir.evidence import UNCALIBRATED, EvidenceCalibration
    from monai_cir.index import load_index
    from monai_cir.networks import load_model
    from monai_cir.retrieval import model_fingerprint

    models = Path(models).resolve()
    checkpoint, index_dir = resolve_models(models)
    device = _resolve_device(device)
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
        net = load_model(checkpoint, device=device)
        index = load_index(index_dir, expected_fingerprint=model_fingerprint(net))
        if calibration_file.is_file():
            calibration = EvidenceCalibration.load(calibration_file)
        else:
            logger.info("no %s in MODELS: the evidence summary is an uncalibrated score-weighted vote", EVIDENCE_CALIBRATION)
            calibration = UNCALIBRATED
        loaded = LoadedModels(
            net=net, index=index, calibration=calibration, classes=sorted(index.info()["diagnosis"]),
            checkpoint=checkpoint, index_dir=index_dir, load_s=time.perf_counter() - start,
        )
        logger.info(
            "model %s on %s, case index %s (%d cases), loaded in %.1f s",
            checkpoint, device, index_dir, len(index), loaded.load_s,
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


class ComposedRetrievalOperator(Operator):
    """Encodes every query (image + text) and searches the case index.

    Named input:
        queries: ``list[QueryResult]`` from the loader.

    Named output:
        results: the same list, each with ``hits`` (``monai_cir.index.SearchHit``, best first) or ``error``.
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
        **kwargs: Any,
    ) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.top_k = int(top_k)
        self.site = site
        self.explain = bool(explain)
        self.input_name = "queries"
        self.output_name = "results"
        self.models = models
        self.net, self.index, self.calibration, self.classes = models.net, models.index, models.calibration, models.classes
        self.batch_size = int(batch_size) if batch_size else (16 if self.net.device.type == "cuda" else 4)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.input_name)
        spec.output(self.output_name)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        results: list[QueryResult] = op_input.receive(self.input_name) or []
        self.run(results)
        op_output.emit(results, self.output_name)

    # ------------------------------------------------------------------ the work, without the SDK
    def run(self, results: list[QueryResult]) -> list[QueryResult]:
        from monai_cir.retrieval import to_image_tensor
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
                filters, notice = resolve_site_condition(self.site, attr(result.query, "site"))
                if notice:
                    result.notices.append(notice)
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

        start = time.perf_counter()
        images = torch.stack([tensor for _, tensor, _, _ in batch]).to(self.net.device, non_blocking=True)
        with torch.inference_mode():
            queries = self.net.encode_query(images, [text for _, _, text, _ in batch]).float().cpu().numpy()
        if self.net.device.type == "cuda":
            torch.cuda.synchronize()
        encode_ms = 1000 * (time.perf_counter() - start) / len(batch)
        from monai_cir.evidence import summarize_evidence

        for (result, tensor, text, filters), vector in zip(batch, queries):
            t0 = time.perf_counter()
            # the evidence summary votes over more neighbours (calibration.k, 16 by default) than are shown
            pool = self.index.search(vector[None, :], k=max(self.top_k, self.calibration.k), filters=filters)[0]
            result.hits = pool[: self.top_k]
            if pool:
                result.evidence = summarize_evidence(pool, calibration=self.calibration, classes=self.classes)
            result.timing_ms["encode"] = encode_ms
            result.timing_ms["search"] = 1000 * (time.perf_counter() - t0)
            if not result.hits:
                result.notices.append("no library case matched the filters")
            if self.explain:
                self._explain(result, tensor, text)
            self._logger.info(
                "query %s: top-%d %s", result.query_id, len(result.hits),
                ", ".join(f"{h.metadata.diagnosis} {h.score:.3f}" for h in result.hits),
            )

    def _explain(self, result: QueryResult, query: Any, text: str) -> None:
        """Per match, which regions carried the local similarity and which words the composer used
        (:func:`monai_cir.explain.explain_matches`: the query encoded once, the matches in one batch);
        a match whose library image is not reachable from here gets a notice instead."""
        from monai_cir.explain import explain_matches

        start = time.perf_counter()
        reachable, images = [], []
        for hit in result.hits:
            image = library_image(hit, max_side=LIBRARY_IMAGE_SIDE)
            if image is None:
                result.notices.append(f"no explanation for rank {hit.rank}: the library image is not reachable from this app")
                continue
            reachable.append(hit)
            images.append(image)
        labels = [f"#{hit.rank} {hit.metadata.diagnosis}" for hit in reachable]
        for hit, explanation in zip(reachable, explain_matches(self.net, query, text, images, labels=labels)):
            result.explanations[hit.rank] = explanation
        result.timing_ms["explain"] = 1000 * (time.perf_counter() - start)
