"""Library API for case retrieval: embed a case library, build its index, search it with a composed query.

This is what ``monai-cir index build``, ``monai-cir search`` and the deploy app call::

    from monai_cir.networks import load_model
    from monai_cir.data.collections import load_collection
    from monai_cir import retrieval

    net = load_model()                                   # trained checkpoint, or the offline default
    index = retrieval.build_index(net, load_collection("isic-uda1"))
    index.save("output/isic-index")
    shown = retrieval.answer(net, index, "lesion.jpg", "raised, irregular pigment network", k=5)
    shown.hits, shown.differential                       # the cases as the app shows them, the slot's record

Every image (library or query) goes through :func:`monai_cir.data.preprocess_image` at
``net.image_size``; the network runs on CUDA with autocast when present. The index records
``net.fingerprint()`` and refuses queries from any other model or preprocessing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from .progress import progress_bar

from .data import load_image, preprocess_image
from .index import CaseIndex, CaseMetadata, SearchHit, create_index
from .prior_ranking import PRIOR_NOTICE, PRIOR_RANKING, RANKINGS, SIMILARITY_RANKING, PriorRankedIndex, prior_acted

__all__ = [
    "Answer",
    "answer",
    "ranked_answer",
    "evidence_disagreement_notice",
    "own_case_notice",
    "image_alone",
    "text_use",
    "dicom_library",
    "dicomweb_library",
    "ImageLike",
    "build_index",
    "embed_library",
    "encode_query",
    "model_fingerprint",
    "record_metadata",
    "search",
    "to_image_tensor",
]

logger = logging.getLogger(__name__)

ImageLike = str | Path | np.ndarray | torch.Tensor | Image.Image
DICOM_UID_KEYS = ("study_uid", "series_uid", "sop_instance_uid", "sop_class_uid")


def to_image_tensor(image: ImageLike, image_size: int) -> torch.Tensor:
    """A path, an (H, W[, C]) array / PIL image, or a (3, H, W) tensor in [0, 1] -> (3, S, S) preprocessed.

    A (3, S, S) float tensor of the right size is taken as already preprocessed."""
    if isinstance(image, (str, Path)):
        return load_image(image, image_size)
    if isinstance(image, torch.Tensor):
        if image.ndim == 3 and image.shape[0] == 3 and image.is_floating_point():
            if tuple(image.shape[1:]) == (image_size, image_size):
                return image.float().cpu()
            return preprocess_image(image.detach().cpu().permute(1, 2, 0).float().numpy(), image_size)
        return preprocess_image(image.detach().cpu().numpy(), image_size)
    if isinstance(image, (np.ndarray, Image.Image)):
        return preprocess_image(image, image_size)
    raise ValueError(f"an image must be a file path, an (H, W, C) array, a PIL image or a (3, H, W) tensor, got {type(image).__name__}")


def _image_of(item: Any) -> ImageLike:
    """The image of a library item: a CaseRecord (``image_path``), a DICOM query (``image``) or an image."""
    if hasattr(item, "image_path") and item.image_path is not None:
        return item.image_path
    if hasattr(item, "image") and not isinstance(item, Image.Image):
        return item.image
    return item


class _LibraryImages(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Any], image_size: int) -> None:
        self.items = items
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_image_tensor(_image_of(self.items[i]), self.image_size)


def _prepare(net: torch.nn.Module, device: str | torch.device | None) -> torch.nn.Module:
    """``net`` in eval mode, moved to ``device`` when one is given; ``None`` keeps it where it is (the one
    meaning of ``device=None`` in this module: the caller placed the network, see
    :func:`monai_cir.config.resolve_device`)."""
    if device is not None:
        net = net.to(torch.device(device))
    return net.eval()


@torch.inference_mode()
def embed_library(
    net: Any,
    items: Sequence[Any],
    batch_size: int = 16,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    grid_maps_out: list[list[torch.Tensor]] | None = None,
    blank_out: list[int] | None = None,
    grey_out: list[int] | None = None,
) -> np.ndarray:
    """Target embeddings ``T`` (N, D) float32 of library images, in batches with a progress bar.

    Args:
        net: a :class:`~monai_cir.networks.ComposedRetrievalNet` (moved to ``device`` when one is given).
        items: CaseRecords (their ``image_path``), DICOM queries (their ``image``) or images
            (paths, HWC arrays, tensors).
        batch_size: images per forward pass.
        device: where to run; None = where the network is. CUDA runs under fp16 autocast (inside the net).
        num_workers: image decoding processes (0 = in this process).
        grid_maps_out: a list that gains, per image in order, its grid maps
            (:func:`monai_cir.explain.grid_maps`, per level (1, C, h, w)) from the same forward.
        blank_out: a list that gains the positions of the images that are blank as the model sees them (their
            preprocessed pixels constant or nearly so, :func:`monai_cir.data.preprocess.blank_spread`).
        grey_out: a list that gains the positions of the greyscale images (:func:`monai_cir.data.preprocess.is_grey`,
            blank ones left out).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = list(items)
    if not items:
        return np.zeros((0, net.embedding_dim), dtype=np.float32)
    net = _prepare(net, device)
    loader = torch.utils.data.DataLoader(_LibraryImages(items, net.image_size), batch_size=batch_size, num_workers=num_workers, pin_memory=net.device.type == "cuda")
    out = np.empty((len(items), net.embedding_dim), dtype=np.float32)
    done = 0
    with progress_bar(total=len(items), unit="img", desc="embedding library", enabled=progress) as bar:
        for batch in loader:
            # the encoder's maps are kept only when the grid maps are asked for
            with captured_image_maps(net) if grid_maps_out is not None else contextlib.nullcontext([]) as captured:
                vectors = net.encode_target(batch.to(net.device, non_blocking=True))
            out[done : done + len(batch)] = vectors.float().cpu().numpy()
            if blank_out is not None or grey_out is not None:
                from .data.preprocess import blank_spread, is_grey

                pixels = (batch.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
                blank = [blank_spread(frame) is not None for frame in pixels]
                if blank_out is not None:
                    blank_out.extend(done + j for j in range(len(batch)) if blank[j])
                if grey_out is not None:
                    grey_out.extend(done + j for j in range(len(batch)) if not blank[j] and is_grey(pixels[j]))
            if grid_maps_out is not None:
                from .explain import grid_maps

                grids = grid_maps(net, [captured[-1][i] for i in net.level_indices])
                grid_maps_out.extend([g[j : j + 1].cpu() for g in grids] for j in range(len(batch)))
            done += len(batch)
            bar.update(len(batch))
    return out


@contextlib.contextmanager
def captured_image_maps(net: Any) -> Iterator[list[Any]]:
    """The outputs of ``net.image_encoder`` (all its levels) while the block runs in this thread
    (another thread's use of the same network is not captured): the maps an encoding computed, for
    what else needs them (the grid maps of an explanation) without a second forward."""
    me = threading.get_ident()
    outputs: list[Any] = []

    def hook(module: Any, args: Any, output: Any) -> None:
        if threading.get_ident() == me:
            outputs.append(output)

    handle = net.image_encoder.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


@torch.inference_mode()
def encode_query(net: Any, image: ImageLike, text: str = "", device: str | torch.device | None = None) -> np.ndarray:
    """Composed query embedding ``Q`` (1, D) of one image and its clinical text ('' = image only)."""
    return _encode_query_and_terms(net, image, text, device)[0]


@torch.inference_mode()
def _encode_query_and_terms(
    net: Any, image: ImageLike, text: str, device: str | torch.device | None, with_image_query: bool = False
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(Q (1, D), terms (C + 1,) or None, Q_image (1, D) or None)``: the query, with a diagnosis prior its ranking
    terms, and with ``with_image_query`` the same image's image-only query (from the same image forward)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string ('' for an image-only query), got {type(text).__name__}")
    net = _prepare(net, device)
    tensor = to_image_tensor(image, net.image_size).unsqueeze(0)
    encoded = net.encode_query_parts(tensor, [text], with_image_query=with_image_query)
    image_query = encoded.image_query.float().cpu().numpy() if encoded.image_query is not None else None
    return encoded.query.float().cpu().numpy(), (encoded.terms[0].double().cpu().numpy() if encoded.terms is not None else None), image_query


_FINGERPRINTS: weakref.WeakKeyDictionary[Any, tuple[list[torch.Tensor], tuple[int, ...], str, Any]] = weakref.WeakKeyDictionary()


def model_fingerprint(net: Any) -> str:
    """``net.fingerprint()``, cached per network until a weight changes in place (an optimiser step,
    ``load_state_dict``), checked through the tensors' version counters in well under a millisecond.

    (Hashing every weight takes a fraction of a second; a search should not pay it each time.
    Assigning a new ``Parameter`` object is not seen: call ``net.fingerprint()`` after such surgery.)"""
    cached = _FINGERPRINTS.get(net)
    if cached is not None:
        tensors, versions, fingerprint, config = cached
        if config == (net.image_size, net.beta, json.dumps(net.config, sort_keys=True, default=str)) and tuple(t._version for t in tensors) == versions:
            return fingerprint
    tensors = list(net.state_dict(keep_vars=True).values())
    versions = tuple(t._version for t in tensors)
    fingerprint = net.fingerprint()
    _FINGERPRINTS[net] = (tensors, versions, fingerprint, (net.image_size, net.beta, json.dumps(net.config, sort_keys=True, default=str)))
    return fingerprint


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, Mapping):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return str(value)


def record_metadata(record: Any) -> CaseMetadata:
    """The index metadata of a ``CaseRecord`` (DICOM UIDs taken from ``record.metadata`` when present)."""
    extra = dict(_jsonable(dict(getattr(record, "metadata", None) or {})))
    uids = {key: extra.pop(key, None) for key in DICOM_UID_KEYS}
    if getattr(record, "label", None) is not None:
        extra.setdefault("label", _jsonable(record.label))
    image_path = getattr(record, "image_path", None)
    return CaseMetadata(
        case_id=str(record.case_id),
        diagnosis=str(record.diagnosis),
        collection=str(getattr(record, "collection", "") or ""),
        site=str(getattr(record, "site", None) or "unknown"),
        image_path=str(image_path) if image_path is not None else None,
        extra=extra,
        confirmation=str(getattr(record, "confirmation", None) or "unknown"),
        **{key: (str(value) if value is not None else None) for key, value in uids.items()},
    )


def build_index(
    net: Any,
    records: Sequence[Any],
    metadata: Sequence[CaseMetadata] | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    backend: str = "faiss",
    index: CaseIndex | None = None,
    update: bool = False,
    progress: bool = True,
    grid_store: str | Path | None = None,
    **index_options: Any,
) -> CaseIndex:
    """Embed a case library and index it.

    Args:
        records: CaseRecords, or images (then ``metadata`` gives one :class:`CaseMetadata` each).
        metadata: overrides :func:`record_metadata` (needed for DICOM queries and bare images).
        index: an existing index to add to (its fingerprint must match ``net``); else a new one
            with ``backend`` and ``index_options`` (e.g. ``exact_max``, or ``uri`` for Milvus).
        update: replace cases whose id is already in ``index`` (else that is an error).
        grid_store: a folder (``<index>/grid_maps``, :data:`monai_cir.grid_store.GRID_STORE_DIR`)
            that keeps the library images' grid maps from the same forward, for explanations
            without a forward per match (:class:`monai_cir.grid_store.GridMapStore`; merged with
            what is there). None: not kept.
    """
    records = list(records)
    metadata = list(metadata) if metadata is not None else [record_metadata(r) for r in records]
    if len(metadata) != len(records):
        raise ValueError(f"got {len(records)} library items but {len(metadata)} metadata records")
    ids = [m.case_id for m in metadata]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the library repeats case ids (e.g. {sorted({i for i in ids if ids.count(i) > 1})[:5]}); case ids must be unique")
    fingerprint = model_fingerprint(net)
    if index is None:
        index = create_index(net.embedding_dim, fingerprint, backend=backend, **index_options)
    else:
        index.check_fingerprint(fingerprint)
        existing = [i for i in ids if i in index]
        if existing and not update:
            raise ValueError(f"{len(existing)} case id(s) are already in the index (e.g. {existing[:5]}); pass update=True to replace them")
    grids: list[list[torch.Tensor]] | None = [] if grid_store is not None else None
    blank: list[int] = []
    grey: list[int] = []
    embeddings = embed_library(net, records, batch_size=batch_size, device=device, progress=progress, grid_maps_out=grids, blank_out=blank, grey_out=grey)

    def listed(positions: list[int]) -> str:
        named = ", ".join(metadata[i].case_id + (f" ({Path(metadata[i].image_path).name})" if metadata[i].image_path else "") for i in positions[:10])
        return named + (f" and {len(positions) - 10} more" if len(positions) > 10 else "")

    if grey:
        # kept (a real case), but said: a greyscale library image lacks the colour cues the model ranks by, so it
        # is matched on shape alone (often a failed colour export, worth redoing)
        logger.warning("%d library image(s) are greyscale, indexed: the model was trained on colour dermoscopy and matches them "
                       "without their colour cues; re-export them in colour if they are colour images: %s", len(grey), listed(grey))
    if blank:
        # a blank library image (a black frame, a failed export) would be shown as a similar case: reported, left out
        if len(blank) == len(records):
            raise ValueError(f"every library image is blank (its pixels constant or nearly so): {listed(blank)}; nothing was indexed")
        logger.warning("%d library image(s) are blank (their pixels constant or nearly so) and were not indexed: %s", len(blank), listed(blank))
        left_out = set(blank)
        keep = [i for i in range(len(records)) if i not in left_out]
        embeddings, metadata = embeddings[keep], [metadata[i] for i in keep]
        grids = [grids[i] for i in keep] if grids is not None else None
    index.add(embeddings, metadata, update=update)
    if grids is not None:
        from .grid_store import GridMapStore, file_identity

        entries = {key: maps for meta, maps in zip(metadata, grids) if (key := file_identity(meta.image_path)) is not None}
        if entries:
            GridMapStore.write(grid_store, fingerprint, entries, merge=True)
        else:
            logger.info("no library image is a file reachable from here: no grid maps written to %s", grid_store)
    return index


def text_use(net: Any, text: str) -> tuple[dict[str, Any] | None, list[str]]:
    """How the query's ``text`` counts in its query, and what the reader is told of it: the deploy app and
    ``monai-cir search`` say the same. Returns ``(use, notices)``: ``use`` ``{"weight": w of Q = w Q_composed +
    (1 - w) Q_image, "findings_read": [7-point criteria read in it]}`` (None for a blank text); ``notices``: the
    text was not used (it names no finding, or it is about several lesions), or the findings read and how much the text counted, and a text
    longer than the text encoder reads."""
    from .data.report import (
        SEVERAL_LESIONS_NOTICE, TEXT_NOT_USED_NOTICE, describes_several_lesions, read_findings, text_too_long_notice, text_use_notice,
    )

    if not text.strip():
        return None, []
    weight = float(net.text_weights([text])[0])
    stated = read_findings(text) if net.text_gate == "findings" else ()
    findings = [key for key, _ in stated]
    cut = text_too_long_notice(text) if net.text_gate == "findings" else None
    notices = [cut] if cut else []
    if weight == 0:
        several = net.text_gate == "findings" and describes_several_lesions(text)
        notices.append(SEVERAL_LESIONS_NOTICE if several else TEXT_NOT_USED_NOTICE)
    elif stated:  # (a network without the findings gate reads any text whole: nothing to list)
        notices.append(text_use_notice(weight, stated, prior=getattr(net, "diagnosis_prior", None) is not None))
    limit = net.text_encoder.max_length
    read = net.query_text(text)  # with the findings gate, the findings in the template's words: short
    # a token covers at least one character: only a text that long can be cut (tokenised again only then)
    if weight > 0 and len(read) + 2 > limit:
        tokens = net.text_encoder.token_count(read)
        if tokens > limit:
            notices.append(f"the report text is longer than the model reads ({tokens} tokens): only its first {limit} counted")
    return {"weight": round(weight, 4), "findings_read": findings}, notices


@dataclasses.dataclass(frozen=True)
class Answer:
    """What a reader is shown for one composed query (:func:`answer`).

    ``hits``: the ``k`` cases shown, best first, each with its similarity ``S`` as ``score``: the similarity
    ranking, or with a diagnosis prior the ranking by ``S + λ w log p(y_c | q)`` (:mod:`monai_cir.prior_ranking`),
    and the differential slot's case at its rank when the slot opened (:mod:`monai_cir.differential`; with a
    prior, its margin is in the prior ranking's units); ``pool``: the similarity ranking (best first, at least
    ``k`` cases when the library has them: what the evidence summary votes over); ``differential``: None when
    the slot stayed shut (or the checkpoint records none), else
    :func:`monai_cir.differential.shown_with_differential`'s record, its ``"notice"`` the sentence to show;
    ``ranking``: how the hits are ordered, :data:`~monai_cir.prior_ranking.PRIOR_RANKING` when the diagnosis prior
    ordered them, else :data:`~monai_cir.prior_ranking.SIMILARITY_RANKING`; ``image_alone`` /
    ``image_alone_notice``: what the same image finds without the text, when the text counted (:func:`image_alone`;
    None otherwise, and from :func:`ranked_answer`, which has no image-only query); ``text_use`` / ``text_notices``:
    :func:`text_use`'s record and notices for the query's text (from :func:`answer`; None / empty otherwise)."""

    hits: list[SearchHit]
    pool: list[SearchHit]
    differential: dict[str, Any] | None = None
    # keyword-only: the fourth positional field was the notice's text until 9a5899b; passing it now fails loudly
    ranking: str = dataclasses.field(default=SIMILARITY_RANKING, kw_only=True)
    # what the same image finds without its text, when the text counted (:func:`image_alone`), and its notice
    image_alone: dict[str, Any] | None = dataclasses.field(default=None, kw_only=True)
    image_alone_notice: str | None = dataclasses.field(default=None, kw_only=True)
    # how the text counted and what the reader is told of it (:func:`text_use`; from :func:`answer` only)
    text_use: dict[str, Any] | None = dataclasses.field(default=None, kw_only=True)
    text_notices: tuple[str, ...] = dataclasses.field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        if self.ranking not in RANKINGS:
            raise ValueError(f"Answer.ranking must be one of {list(RANKINGS)}, got {self.ranking!r}")

    @property
    def prior_ordered(self) -> bool:
        return self.ranking == PRIOR_RANKING

    @property
    def notice(self) -> str | None:
        """What to tell the reader of the order: :data:`~monai_cir.prior_ranking.PRIOR_NOTICE` when the prior ordered
        the hits, else None."""
        return PRIOR_NOTICE if self.prior_ordered else None

    @property
    def unlike_notice(self) -> str | None:
        """When the prior ordered the hits, which of them are not similar to the query at all (similarity 0 or below:
        the prior brought them up for their diagnosis, the library holding few similar cases of it); else None."""
        unlike = [hit.rank for hit in self.hits if hit.score <= 0] if self.prior_ordered else []
        if not unlike:
            return None
        several = len(unlike) > 1
        ranks = ", ".join(map(str, unlike[:-1])) + (" and " if several else "") + str(unlike[-1])
        return (f"the case{'s' if several else ''} at rank{'s' if several else ''} {ranks} {'are' if several else 'is'} not similar to "
                f"this lesion (similarity 0 or below): shown for {'their' if several else 'its'} likely diagnosis, of which the "
                f"library holds few similar cases")


def own_case_notice(own: Any, shown: Answer, how: str, summarized: bool) -> str | None:
    """The sentence saying that the query image is library case ``own`` itself (a hit of ``shown.hits`` or, ranked
    below them, of ``shown.pool``; None: no sentence), found ``how`` (e.g. "the same SOP Instance UID"): its own match,
    and, with an evidence summary (``summarized``), one of the votes, whose diagnosis is the query's own label."""
    if own is None:
        return None
    counted = " and is counted in the evidence summary" if summarized else ""
    if any(h.case_id == own.case_id for h in shown.hits):
        return f"the query image is library case {own.case_id} itself ({how}): it is its own match at rank {own.rank}{counted}; compare the other cases"
    if not summarized:
        return None
    return (f"the query image is library case {own.case_id} itself ({how}): not among the cases shown, it is among those the evidence "
            "summary counts, so the summary includes the query's own recorded diagnosis")


def evidence_disagreement_notice(summary: Any, shown: Answer) -> str | None:
    """The sentence to show when the diagnosis prior ordered the answer and its first case is not of the diagnosis
    the evidence summary favours (None otherwise, and when the summary's vote ties the first case's diagnosis).

    The summary (:func:`monai_cir.evidence.summarize_evidence`) votes over ``shown.pool``, the cases most similar by
    ``S``; the prior orders the cases shown by ``S`` and the query's diagnosis posterior, so the two can disagree:
    the reader would see, say, five melanomas under "nevus 70%". Neither is dropped (the vote is calibrated on the
    similarity ranking; the prior's order is what the evaluation measures), and the reader is told they differ and
    why the order can. The words do not say the prior moved the first case (the most similar case may be of that
    diagnosis already). Without the prior the similarity ranking's first case can also differ from its vote (a
    vote is over more cases than the first): that is visible in the list itself and gets no notice."""
    if summary is None or not shown.prior_ordered or not shown.hits:
        return None
    first = shown.hits[0].metadata.diagnosis
    if summary.distribution.get(first, 0.0) >= summary.confidence - 1e-9:  # the vote's own diagnosis, or a tie
        return None
    confidence = f"{100 * summary.confidence:.0f}%" + ("" if summary.calibrated else ", uncalibrated")
    return (f"the evidence summary (the {summary.k} most similar cases) favours {summary.predicted} ({confidence}), "
            f"while the first case shown is a {first} case (the order also weighs the diagnosis the image and findings "
            f"point to): compare both")


def image_alone(
    index: CaseIndex, image_vector: np.ndarray, shown: Sequence[SearchHit], text: str, filters: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], str | None]:
    """What the same image finds without its text (its image-only query ``image_vector`` (D,), plain similarity, as
    many cases as ``shown``): the text and the diagnosis prior decide much of what is shown, and a reader who wrote
    the findings must not take their own impression, returned, for independent evidence. The deploy app and
    :func:`answer` (``monai-cir search``) say the same.

    Returns ``(record, notice)``: ``record`` ``{"k", "counts": {diagnosis: cases, most first}, "case_ids"}``;
    ``notice`` the sentence to show when the image alone favours another diagnosis than the cases shown (a tie
    favours none), else None."""
    from .data.report import finding_names, read_findings
    from .evidence import counts_text

    if not shown:  # nothing shown, nothing to compare
        return {"k": 0, "counts": {}, "case_ids": []}, None
    alone = index.search(np.asarray(image_vector, dtype=np.float32).reshape(1, -1), k=len(shown), filters=dict(filters) if filters else None)[0]
    counts = _diagnosis_counts(alone)
    record = {"k": len(alone), "counts": counts, "case_ids": [h.case_id for h in alone]}
    favoured = _favoured(_diagnosis_counts(shown))
    if not alone or _favoured(counts) == favoured:
        return record, None
    # the findings as the model read them ("no streaks"), as the text-use notice states them
    findings = finding_names(read_findings(text)) or "as written"
    return record, (f"the image alone, without the text, finds {counts_text(counts)} among its {len(alone)} most similar cases: the text "
                    f"({findings}) moved the answer towards {favoured or 'other cases'}; weigh the findings you wrote, "
                    "not the cases that repeat them")


def _diagnosis_counts(hits: Sequence[Any]) -> dict[str, int]:
    """Cases per diagnosis among ``hits``, most first (ties in first-seen order)."""
    return dict(Counter(hit.metadata.diagnosis for hit in hits).most_common())


def _favoured(counts: dict[str, int]) -> str | None:
    """The diagnosis with the most cases, None on a tie (``counts`` most first, as :func:`_diagnosis_counts` gives)."""
    top = list(counts.items())[:2]
    return top[0][0] if top and (len(top) == 1 or top[0][1] > top[1][1]) else None


def answer(
    net: Any,
    index: CaseIndex,
    image: ImageLike,
    text: str = "",
    k: int = 5,
    filters: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    pool_size: int = 0,
    differential: bool = True,
    with_image_alone: bool = True,
) -> Answer:
    """The ``k`` library cases a reader is shown for the composed query (image + clinical text), as the deploy
    app shows them: the similarity ranking (with a diagnosis prior in the network: ranked by similarity plus
    the query's diagnosis posterior, :class:`~monai_cir.prior_ranking.PriorRankedIndex`), with the closest case
    of the runner-up diagnosis at the slot's rank when the checkpoint records a differential slot and the query
    is uncertain (``differential=False``: no slot). ``pool_size``: rank at least that many cases into ``Answer.pool`` (the
    evidence summary votes over more neighbours than are shown). ``filters``: as for :func:`search`. When the text
    counted, ``Answer.image_alone`` says what the same image finds without it (:func:`image_alone`;
    ``with_image_alone=False``: not looked up).
    Refuses an index built by another model (fingerprint check) before encoding anything."""
    from .differential import DifferentialSlot

    index.check_fingerprint(model_fingerprint(net))
    # the app's rule (results.json's text_use): the text counted when its weight is above zero
    use, text_notices = text_use(net, text) if isinstance(text, str) else (None, [])
    counted = with_image_alone and use is not None and use["weight"] > 0
    query, terms, image_query = _encode_query_and_terms(net, image, text, device, with_image_query=counted)
    slot = DifferentialSlot.from_checkpoint_info(getattr(net, "checkpoint_info", None)) if differential else None
    shown = ranked_answer(index, query[0], k, pool_size, filters, terms=terms, prior=net.diagnosis_prior, slot=slot)
    shown = dataclasses.replace(shown, text_use=use, text_notices=tuple(text_notices))
    if image_query is None or not shown.hits:
        return shown
    record, notice = image_alone(index, image_query[0], shown.hits, text, filters)
    return dataclasses.replace(shown, image_alone=record, image_alone_notice=notice)


def ranked_answer(
    index: CaseIndex,
    vector: np.ndarray,
    k: int,
    pool_size: int = 0,
    filters: Mapping[str, Any] | None = None,
    terms: np.ndarray | None = None,
    prior: Any = None,
    slot: Any = None,
    diagnoses: Sequence[str] | None = None,
) -> Answer:
    """The :class:`Answer` to an encoded query ``vector`` (D,): what :func:`answer` and the deploy app show.

    ``terms`` / ``prior``: the query's diagnosis-prior terms and the network's :class:`~monai_cir.networks.DiagnosisPrior`
    (None: the similarity ranking); ``slot``: the :class:`~monai_cir.differential.DifferentialSlot` (None: no slot);
    ``diagnoses``: the library's diagnoses (default: read from the index)."""
    from .differential import shown_with_differential, similarity_rank

    query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    pool = index.search(query, k=max(k, pool_size), filters=filters)[0]
    acted = prior_acted(terms)  # a text naming no finding: K = S, the pool's order
    if not acted and slot is None:
        return Answer(hits=pool[:k], pool=pool)
    diagnoses = sorted(diagnoses if diagnoses is not None else index.info()["diagnosis"])
    ranked = PriorRankedIndex(index, terms, prior.classes, diagnoses) if acted else index
    shown = ranked.search(query, k=max(k, pool_size), filters=filters)[0] if acted else pool
    opened = None
    if slot is not None:
        slot = slot.for_query(acted)
        # with the prior the case's rank is counted by similarity below, not in the prior ranking's units
        shown, opened = shown_with_differential(slot, ranked, query[0], shown, k, diagnoses, dict(filters) if filters else None, count_rank=not acted)
    if not acted:
        return Answer(hits=shown[:k], pool=pool, differential=opened)
    hits = ranked.with_similarity(shown[:k])
    if opened is not None:
        # the slot ranked in K's units: the case's rank by similarity alone, and the notice in the prior's words
        other = next(h for h in hits if h.case_id == opened["case_id"])
        opened["similarity_rank"] = similarity_rank(index, query[0], other.score, dict(filters) if filters else None)
        from .evidence import NO_DIAGNOSIS

        best = next((h.metadata.diagnosis for h in hits if h.metadata.diagnosis != NO_DIAGNOSIS), hits[0].metadata.diagnosis)
        opened["notice"] = slot.notice(other.metadata.diagnosis, opened["similarity_rank"], best, opened["margin"], prior=True)
    return Answer(hits=hits, pool=pool, differential=opened, ranking=PRIOR_RANKING if hits else SIMILARITY_RANKING)


def search(
    net: Any,
    index: CaseIndex,
    image: ImageLike,
    text: str = "",
    k: int = 5,
    filters: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> list[SearchHit]:
    """The ``k`` library cases most similar to the composed query (image + clinical text), best first: the
    ranking without the differential slot (:func:`answer` gives what the app shows, the slot included; with a
    diagnosis prior in the network, ranked by similarity plus the query's diagnosis posterior).

    ``filters``: metadata equality, e.g. ``{"site": "trunk"}``
    (:func:`monai_cir.sites_condition.resolve_site_condition` turns ``--site same|NAME|any`` into one).
    Refuses an index built by another model (fingerprint check) before encoding anything."""
    return answer(net, index, image, text, k, filters, device, differential=False, with_image_alone=False).hits


def dicom_library(folder: str | Path, name: str | None = None, problems_out: list[Any] | None = None) -> tuple[list[Any], list[CaseMetadata]]:
    """The dermoscopy images of a folder of DICOM studies as library cases: ``(queries, metadata)``
    for :func:`build_index`. A dicomized case (``monai-cir dicomize``) carries its case id,
    diagnosis and collection in its SR; other images are indexed by SOP Instance UID with diagnosis
    'unknown' (a warning says how many). Unreadable files are reported and skipped (``problems_out`` gains each
    :class:`~monai_cir.dicom.reader.InputProblem`, for a caller's summary). Image paths are stored absolute (the app
    and ``search --explain`` read them from any folder)."""
    folder = Path(folder).resolve()
    try:
        from .dicom import read_dicom_folder
    except ImportError as err:
        raise ValueError(f"--dicom needs monai_cir.dicom.read_dicom_folder, which this installation lacks ({err}); index the images with --images/--csv instead") from err
    scan = read_dicom_folder(folder)
    for problem in getattr(scan, "problems", []):
        logger.warning("skipped DICOM input: %s", problem)
    if problems_out is not None:
        problems_out.extend(getattr(scan, "problems", []))
    if not scan.queries:
        raise ValueError(f"no dermoscopy images were found in {folder} ({len(getattr(scan, 'problems', []))} problem(s) reported above)")
    metadata = []
    for query in scan.queries:
        # a dicomized library case carries its id and diagnosis in its SR; otherwise the instance (and frame)
        case_id = query.case_id or (f"{query.sop_instance_uid}#{query.frame_number}" if query.frame_number else query.sop_instance_uid)
        metadata.append(
            CaseMetadata(
                case_id=str(case_id),
                diagnosis=str(query.diagnosis or "unknown"),
                collection=str(name or query.collection or folder.name),
                site=query.site or "unknown",
                study_uid=query.study_uid,
                series_uid=query.series_uid,
                sop_instance_uid=query.sop_instance_uid,
                sop_class_uid=query.sop_class_uid,
                image_path=str(query.source_path) if query.source_path else None,
                confirmation=str(query.confirmation or "unknown"),
                extra={key: value for key, value in (("patient_id", query.patient_id), ("frame_number", query.frame_number)) if value},
            )
        )
    unknown = sum(m.diagnosis == "unknown" for m in metadata)
    if unknown:
        logger.warning("%d of %d DICOM images carry no diagnosis (no monai-cir case SR): indexed as 'unknown'", unknown, len(metadata))
    return list(scan.queries), metadata


# studies asked of a QIDO-RS service per request
QIDO_PAGE = 100


def _all_studies(client: Any, search_filters: Mapping[str, str], fields: Sequence[str] | None) -> list[dict]:
    """Every study a QIDO-RS search finds, page by page (``offset``, ``limit``), until a page is short or brings no
    study not seen before: a server that ignores ``offset`` (Orthanc 1.10 with ``ModalitiesInStudy``) answers the first
    page again and again, which dicomweb-client's ``get_remaining`` fetched forever, its memory growing."""
    studies: list[dict] = []
    seen: set[str] = set()
    while True:
        page = client.search_for_studies(search_filters=dict(search_filters), fields=fields, offset=len(studies), limit=QIDO_PAGE)
        new = [study for study in page if _study_uid(study) not in seen]
        seen.update(_study_uid(study) for study in new)
        studies.extend(new)
        if page and not new and len(page) >= QIDO_PAGE:
            logger.warning("the QIDO-RS service answered offset %d with studies it had listed already (it ignores offset for this "
                           "search): only the first %d studies are found; narrow --filter to fewer studies per search", len(studies), len(studies))
        if len(page) < QIDO_PAGE or not new:
            return studies


def _study_uid(study: Mapping[str, Any]) -> str:
    """The Study Instance UID (0020,000D) of a QIDO-RS answer (DICOM JSON)."""
    value = (study.get("0020000D") or {}).get("Value") or [""]
    return str(value[0])


def dicomweb_library(
    url: str,
    filters: Mapping[str, str] | None = None,
    name: str | None = None,
    pull_to: str | Path | None = None,
    limit: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[list[Any], list[CaseMetadata]]:
    """The library studies of a DICOMweb service as library cases, like :func:`dicom_library`.

    Studies are found with QIDO-RS (``filters``: study-level attributes, e.g.
    ``{"StudyDescription": "monai-cir case*"}``; ``limit``: at most this many studies) and pulled
    whole with WADO-RS in their stored transfer syntax (images and the case SRs that carry the
    diagnosis). Each case records its Study / Series / SOP Instance UIDs and ``retrieve_url``, the
    instance's WADO-RS URL, so that a viewer can fetch it. The instances go to ``pull_to`` (kept:
    ``image_path`` points at them) or to a temporary folder dropped after embedding."""
    import fnmatch
    import tempfile

    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from .atomic import atomic_path
    from .dicom.codes import is_dicom_uid

    url = url.rstrip("/")
    client = DICOMwebClient(url=url, headers=dict(headers or {}))
    filters = {str(k): str(v) for k, v in (filters or {}).items()}
    # values with wildcards or spaces are matched here: servers differ in how they decode them in a
    # query string (Orthanc 1.10 matches "monai-cir*" but not "monai-cir%20case*")
    local = {k: v for k, v in filters.items() if any(c in v for c in "*? ")}
    remote = {k: v for k, v in filters.items() if k not in local}
    try:
        studies = _all_studies(client, remote, sorted(local) or None)
    except Exception as err:  # requests' errors: unreachable, 4xx/5xx
        raise ValueError(f"QIDO-RS search of {url} failed ({type(err).__name__}: {err}); check the URL and --filter") from err
    found = [pydicom.Dataset.from_json(s) for s in studies]
    found = [ds for ds in found if all(fnmatch.fnmatchcase(str(ds.get(k, "") or ""), pattern) for k, pattern in local.items())]
    # a UID names a folder and a file below pull_to: one that is no DICOM UID ("../x", "/etc/x") would write elsewhere
    bad = [str(ds.get("StudyInstanceUID", "")) for ds in found if not is_dicom_uid(str(ds.get("StudyInstanceUID", "")))]
    if bad:
        logger.warning("%s returned %d stud%s whose Study Instance UID is not a DICOM UID (%s): skipped", url, len(bad),
                       "y" if len(bad) == 1 else "ies", ", ".join(repr(u[:70]) for u in bad[:3]))
    study_uids = [str(ds.StudyInstanceUID) for ds in found if is_dicom_uid(str(ds.get("StudyInstanceUID", "")))]
    if limit is not None:
        study_uids = study_uids[:limit]
    if not study_uids:
        raise ValueError(f"no study at {url} matches the filters {filters} ({len(studies)} found before the wildcard filters)")
    folder = Path(pull_to) if pull_to is not None else Path(tempfile.mkdtemp(prefix="monai-cir-dicomweb-"))
    for study_uid in progress_bar(study_uids, desc="pulling library studies", unit="study"):
        target = folder / study_uid
        target.mkdir(parents=True, exist_ok=True)
        for ds in client.retrieve_study(study_uid, media_types=(("application/dicom", "*"),)):
            instance_uid = str(ds.get("SOPInstanceUID", ""))
            if not is_dicom_uid(instance_uid):
                logger.warning("study %s: an instance whose SOP Instance UID is not a DICOM UID (%r): skipped", study_uid, instance_uid[:70])
                continue
            with atomic_path(target / f"{instance_uid}.dcm") as tmp:  # whole files, and a link there is replaced, not followed
                ds.save_as(tmp, enforce_file_format=True)
    queries, metadata = dicom_library(folder, name)
    # only the studies this search found: a pull folder kept from an earlier build also holds studies deleted from the PACS
    # since (consent withdrawn) or of another filter, which must not come back into the index
    pulled = set(study_uids)
    study_folders = [Path(query.source_path).resolve().relative_to(folder.resolve()).parts[0] for query in queries]
    kept = [i for i, study in enumerate(study_folders) if study in pulled]
    if len(kept) < len(queries):
        stale = set(study_folders) - pulled
        logger.warning("%s holds %d stud%s this search did not find (deleted from the PACS since, or of another filter): not indexed; "
                       "delete %s from it to free the space", folder, len(stale), "y" if len(stale) == 1 else "ies", ", ".join(sorted(stale)[:5]))
        queries, metadata = [queries[i] for i in kept], [metadata[i] for i in kept]
    metadata = [
        dataclasses.replace(
            meta,
            # the collection named by the case's SR, not the pull folder's name
            collection=str(query.collection or "dicomweb") if name is None else meta.collection,
            retrieve_url=f"{url}/studies/{meta.study_uid}/series/{meta.series_uid}/instances/{meta.sop_instance_uid}",
            # without pull_to the temporary copy is dropped: retrieve_url is where the image lives
            image_path=meta.image_path if pull_to is not None else None,
        )
        for query, meta in zip(queries, metadata)
    ]
    if pull_to is None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)  # the queries hold their decoded images
    return list(queries), metadata
