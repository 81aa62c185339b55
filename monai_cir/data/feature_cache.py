"""Frozen-encoder feature cache (DESIGN.md section 3, "CPU reality").

The pretrained encoders are frozen by default, so their outputs for a collection never change: we
run them once and train / evaluate every head on the cache. One file per (collection, image size,
encoders' fingerprint) under ``monai_cir.config.cache_dir("features")`` (git-ignored: the features are
derived from research-only images and must never be committed).

Contents of a :class:`FeatureCache` (N records):

- ``maps``: ``[X^L, X^M, X^H]``, each (N, C_i, h_i, w_i) float16 — ``net.image_encoder(images)``.
- ``maps_flipped``: the same for the horizontally flipped images (augmentation / test-time
  augmentation); doubles the build time, ``None`` when built with ``flipped=False``.
- ``tokens`` (N, n, d_T) float16 and ``token_mask`` (N, n) bool: ``net.text_tokens(record.text)`` (the text as the
  network reads it, ``net.query_text``; the gate's weight is applied at query time),
  padded to the longest text of the collection; a blank text has an all-False mask.
- ``sentence`` (N, d_T) float32: mask-mean-pooled tokens (zeros for a blank text), for late fusion.
- ``labels`` (N,) long, ``records`` (list of :class:`~monai_cir.data.collections.CaseRecord`).

A file is reused while its format (:data:`CACHE_FORMAT`), encoders' fingerprint, image size and records (case id, image
path, text, label) are those asked for and every image file holds the bytes it held when the cache was built; otherwise
it is rebuilt (and the log says why), keeping the image features of every record whose image file is unchanged
(same path, same bytes): editing a text or a label of a CSV, or adding, removing or reordering its rows, encodes only
the new or changed images, and the texts. Each file's size and modification time (``mtime_ns``) are checked first; a file
whose time differs (a copied or re-mounted collection) is hashed and compared with its stored BLAKE2b digest, so a copy
of the same images reuses the cache instead of encoding them again (on another CPU the features would differ in the
last fp16 bits, and every result trained on them with it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..atomic import torch_save_atomic
from ..config import autocast_for, cache_dir, resolve_device
from ..networks.late_fusion import sentence_embedding
from .collections import COLLECTIONS, CaseRecord, load_collection, records_dataset
from .preprocess import blank_spread

__all__ = ["CACHE_FORMAT", "FeatureCache", "build_feature_cache", "check_no_blank_images", "encode_collection", "feature_cache_path"]

logger = logging.getLogger(__name__)
# /3: the staleness key holds each image file's size, mtime_ns and content digest (a replaced image rebuilds the cache, a
# copied one does not), and the query texts' tokens follow the text encoding of this version (net.text_tokens); a /1 or
# /2 file is rebuilt once
CACHE_FORMAT = "monai-cir-features/3"


def _file_digest(path: str | Path) -> str:
    """BLAKE2b (128-bit) of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_stats(records: Sequence[CaseRecord]) -> list[list | None]:
    """``[size, mtime_ns, digest]`` of each record's image file (None for one that cannot be read): a replaced or edited
    image changes them, so the cache built from the old file is not reused."""
    stats: list[list | None] = []
    for r in records:
        try:
            st = os.stat(r.image_path)
            stats.append([int(st.st_size), int(st.st_mtime_ns), _file_digest(r.image_path)])
        except OSError:
            stats.append(None)
    return stats


def _changed_files(records: Sequence[CaseRecord], stored: Any) -> tuple[list[str], int]:
    """The case ids whose image file no longer holds the bytes ``stored`` (``[size, mtime_ns, digest]`` per record)
    describes, and how many files have another modification time but the same bytes (hashed only then)."""
    if not isinstance(stored, list) or len(stored) != len(records):
        return [r.case_id for r in records], 0
    changed, same_bytes = [], 0
    for r, old in zip(records, stored):
        try:
            st = os.stat(r.image_path)
        except OSError:
            if old is not None:
                changed.append(r.case_id)
            continue
        if not isinstance(old, list) or len(old) != 3 or old[0] != st.st_size:
            changed.append(r.case_id)
        elif old[1] != st.st_mtime_ns:
            if _file_digest(r.image_path) == old[2]:
                same_bytes += 1
            else:
                changed.append(r.case_id)
    return changed, same_bytes


@dataclass
class FeatureCache:
    """Frozen encoder outputs of one collection (see the module docstring for the shapes)."""

    records: list[CaseRecord]
    labels: torch.Tensor
    maps: list[torch.Tensor]
    tokens: torch.Tensor
    token_mask: torch.Tensor
    sentence: torch.Tensor
    maps_flipped: list[torch.Tensor] | None = None
    collection: str = ""
    image_size: int = 0
    fingerprint: str = ""
    path: Path | None = None
    build_seconds: float = 0.0
    # case ids whose image is blank as the encoder sees it (preprocessed pixels constant or nearly so); None: not known
    # (a file written before this was recorded)
    blank: list[str] | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def case_ids(self) -> list[str]:
        return [r.case_id for r in self.records]

    def select_maps(self, indices: Any, flipped: bool = False, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """The three levels for ``indices`` (anything that indexes a tensor), converted to ``dtype``."""
        source = self.maps_flipped if flipped else self.maps
        if source is None:
            raise ValueError("this cache was built without flipped maps (flipped=False); rebuild it with flipped=True")
        index = torch.as_tensor(indices, dtype=torch.long)
        return [m[index].to(dtype) for m in source]

    def pooled(self, level: int = -1, indices: Any = None, flipped: bool = False) -> torch.Tensor:
        """Global-average-pooled map of one level (N, C) float32 (the ImageNet-features baseline)."""
        source = self.maps_flipped if flipped else self.maps
        if source is None:
            raise ValueError("this cache was built without flipped maps")
        m = source[level] if indices is None else source[level][torch.as_tensor(indices, dtype=torch.long)]
        return m.float().mean(dim=(2, 3))


def feature_cache_path(collection: str, image_size: int, fingerprint: str) -> Path:
    """``<cache>/features/<collection>_<size>px_<fingerprint[:16]>.pt``."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in collection)
    return cache_dir("features") / f"{safe}_{int(image_size)}px_{fingerprint[:16]}.pt"


def _plain(value: Any) -> Any:
    """Builtin types only (numpy scalars -> Python, paths -> str), so that the file loads with
    ``torch.load(weights_only=True)``, which unpickles no arbitrary object."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float, torch.Tensor)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return str(value)


def _record_to_dict(r: CaseRecord) -> dict[str, Any]:
    d = _plain(asdict(r))
    d["image_path"] = str(r.image_path)
    return d


def _read_payload(path: Path, fingerprint: str, image_size: int) -> dict[str, Any] | None:
    """The cache file's contents when it is of this format, these encoders and this image size (else None: rebuild)."""
    try:
        # weights_only: tensors and builtin containers only; a file crafted to run code on load is refused
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (a truncated, foreign or unsafe file: rebuild)
        from ..networks.checkpoint import _torch_reason  # torch's reason, without its advice to load the file unsafely

        logger.warning("ignoring unreadable or unsafe feature cache %s (%s); rebuilding", path, _torch_reason(err))
        return None
    if isinstance(payload, dict) and payload.get("format") != CACHE_FORMAT:
        logger.info("feature cache %s has format %r, not %r (this version keys it by the image files and encodes texts anew); rebuilding",
                    path, payload.get("format"), CACHE_FORMAT)
        return None
    if not isinstance(payload, dict) or payload.get("fingerprint") != fingerprint or payload.get("image_size") != image_size:
        return None
    return payload


def _load(payload: dict[str, Any], path: Path, records: Sequence[CaseRecord], fingerprint: str, image_size: int, flipped: bool) -> FeatureCache | None:
    """The cache of ``payload`` when it holds exactly ``records`` (ids, paths, texts, labels) and their image files are unchanged."""
    try:  # the fields that decide staleness, read from the dicts (a newer CaseRecord may have more fields)
        cached = [(d["case_id"], str(d["image_path"]), d["text"], d["label"]) for d in payload["records"]]
    except (KeyError, TypeError):
        cached = None
    if cached != [(r.case_id, str(r.image_path), r.text, r.label) for r in records]:
        logger.info("feature cache %s is stale (the collection's records changed); rebuilding", path)
        return None
    # every file build_feature_cache writes in this format records its image files (a payload made by hand may not)
    stored = payload.get("image_files")
    if stored is not None:
        changed, same_bytes = _changed_files(records, stored)
        if changed:
            logger.info("feature cache %s is stale (image files replaced or changed since it was built: %d, first %s); rebuilding",
                        path, len(changed), changed[:3])
            return None
        if same_bytes:
            logger.info("feature cache %s: %d image files have another modification time but the bytes they had (a copy); reused",
                        path, same_bytes)
    if flipped and payload.get("maps_flipped") is None:
        return None
    return FeatureCache(
        records=list(records),
        labels=payload["labels"],
        maps=payload["maps"],
        tokens=payload["tokens"],
        token_mask=payload["token_mask"],
        sentence=payload["sentence"],
        maps_flipped=payload.get("maps_flipped"),
        collection=payload["collection"],
        image_size=image_size,
        fingerprint=fingerprint,
        path=path,
        blank=_blank_of(records, payload.get("blank_images")),
    )


def _blank_of(records: Sequence[CaseRecord], blank_images: Any) -> list[str] | None:
    """The case ids of ``records`` whose image file is among ``blank_images`` (paths; None: not recorded)."""
    if not isinstance(blank_images, list):
        return None
    blank = set(map(str, blank_images))
    return [r.case_id for r in records if str(r.image_path) in blank]


def check_no_blank_images(cache: FeatureCache) -> None:
    """ValueError naming the cases of an own collection whose image is blank as the encoder sees it (a black frame, a
    failed export): trained on or scored, each would be a case the network learns nothing from and a query that finds
    by chance. The index build leaves such images out; a collection to train or cross-validate on should lose their rows."""
    if not cache.blank:
        return
    by_id = {r.case_id: r for r in cache.records}
    listed = "; ".join(f"{case_id} ({by_id[case_id].image_path})" for case_id in cache.blank[:10])
    more = f"; and {len(cache.blank) - 10} more" if len(cache.blank) > 10 else ""
    raise ValueError(f"{len(cache.blank)} of the {len(cache)} images of {cache.collection!r} are blank as the model sees them (their pixels "
                     f"constant or nearly so: a black frame, a failed export): {listed}{more}; leave their rows out of the CSV (the "
                     "features of the others are kept: the next run encodes nothing again)")


def _reusable_rows(payload: dict[str, Any], records: Sequence[CaseRecord], flipped: bool) -> list[int | None]:
    """For each record, the row of ``payload`` that holds its image's features (the same image path, the file unchanged
    since: :func:`_changed_files`), or None. A CSV whose texts or labels were edited, or whose rows were added, removed
    or reordered, keeps the image features it has: only new or changed images are encoded again (a full rebuild gives
    the same features, up to the last fp16 bit where a batch of another size takes another convolution kernel)."""
    none: list[int | None] = [None] * len(records)
    stored, old = payload.get("image_files"), payload.get("records")
    if (flipped and payload.get("maps_flipped") is None) or not isinstance(stored, list) or not isinstance(old, list) or len(stored) != len(old):
        return none
    by_path: dict[str, tuple[int, list]] = {}
    for row, (record, stats) in enumerate(zip(old, stored)):
        if isinstance(record, dict) and isinstance(stats, list) and len(stats) == 3:
            by_path.setdefault(str(record.get("image_path")), (row, stats))
    rows: list[int | None] = []
    for record in records:
        hit = by_path.get(str(record.image_path))
        rows.append(hit[0] if hit is not None and not _changed_files([record], [hit[1]])[0] else None)
    return rows


def _rows_from(old: list[torch.Tensor], rows: list[int | None], new: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """Each level's maps for the records: the reused rows of ``old``, and ``new``'s rows (in order) where ``rows`` is None."""
    kept = [i for i, row in enumerate(rows) if row is not None]
    encoded = [i for i, row in enumerate(rows) if row is None]
    out = []
    for level, old_level in enumerate(old):
        maps = torch.empty((len(rows), *old_level.shape[1:]), dtype=old_level.dtype)
        maps[kept] = old_level[[rows[i] for i in kept]]
        if encoded:
            maps[encoded] = new[level].to(old_level.dtype)
        out.append(maps)
    return out


@torch.no_grad()
def _encode_texts(net, texts: Sequence[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        if not any(t.strip() for t in batch):  # all blank: no tokens
            chunks.append((torch.zeros(len(batch), 1, net.text_encoder.dim), torch.zeros(len(batch), 1, dtype=torch.bool)))
            continue
        tokens, mask = net.text_tokens(batch)  # every text as the network reads it: the gate's weight applies at query time
        chunks.append((tokens.float().cpu(), mask.cpu()))
    n = max(t.shape[1] for t, _ in chunks)
    tokens = torch.cat([torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[1])) for t, _ in chunks])
    mask = torch.cat([torch.nn.functional.pad(m, (0, n - m.shape[1])) for _, m in chunks])
    return tokens.half(), mask, sentence_embedding(tokens, mask)


def build_feature_cache(
    collection: str,
    image_size: int,
    net: Any = None,
    batch_size: int = 16,
    root: str | Path | None = None,
    records: Sequence[CaseRecord] | None = None,
    flipped: bool = True,
    rebuild: bool = False,
    num_workers: int = 0,
    progress: bool = True,
) -> FeatureCache:
    """Run the frozen encoders of ``net`` once over a collection and cache the result (or load it).

    Args:
        collection: ``"derm7pt"`` or ``"isic-uda1"`` (or a name for ``records``).
        image_size: square preprocessing size (black-border removal + resize, paper section 3.1).
        net: a :class:`~monai_cir.networks.ComposedRetrievalNet`; default the offline pretrained
            encoders (``ComposedRetrievalNet.offline_default(image_size=image_size)``). Only its
            encoders are used, so any head trained on them can use the cache.
        batch_size: images per forward pass.
        root: data root (default ``$MONAI_CIR_DATA``).
        records: a user's collection (e.g. from ``load_image_csv``) instead of a built-in one.
        flipped: also cache the horizontally flipped images' maps (twice the time).
        rebuild: ignore an existing cache file.
        num_workers: DataLoader workers for decoding / resizing.

    Raises:
        ValueError: for a collection of one's own (not one of :data:`~monai_cir.data.collections.COLLECTIONS`) with images
            blank as the encoder sees them (:func:`check_no_blank_images`), after the cache is saved.

    Returns:
        a :class:`FeatureCache`; its ``path`` is the file (keyed by collection, size and
        :func:`monai_cir.networks.encoder_fingerprint`).
    """
    from ..networks import ComposedRetrievalNet, encoder_fingerprint

    if records is None:
        records = load_collection(collection, root)
    elif collection in COLLECTIONS and [r.case_id for r in records] != [r.case_id for r in load_collection(collection, root)]:
        # a subset or a collection of one's own under a built-in name would replace that collection's cache (and pass as it)
        raise ValueError(f"the records given are not the whole {collection} collection: give them a cache name of their own (the bundle's "
                         f"--cache_name, the collection argument), so that {collection}'s feature cache is not replaced by theirs")
    records = list(records)
    if not records:
        raise ValueError(f"collection {collection!r} has no records")
    if net is None:
        net = ComposedRetrievalNet.offline_default(image_size=image_size)
    fingerprint = encoder_fingerprint(net)
    path = feature_cache_path(collection, image_size, fingerprint)
    payload = _read_payload(path, fingerprint, image_size) if path.is_file() and not rebuild else None
    rows: list[int | None] = [None] * len(records)
    if payload is not None:
        cache = _load(payload, path, records, fingerprint, image_size, flipped)
        if cache is not None:
            logger.info("feature cache loaded from %s", path)
            if collection not in COLLECTIONS:
                check_no_blank_images(cache)
            return cache
        rows = _reusable_rows(payload, records, flipped)

    image_files = _file_stats(records)  # before encoding: a file replaced while it runs is seen as changed next time
    missing = [i for i, row in enumerate(rows) if row is None]
    if len(missing) == len(records):
        cache = encode_collection(net, records, image_size, collection=collection, batch_size=batch_size, flipped=flipped, num_workers=num_workers, progress=progress)
        blank = cache.blank
    else:  # the image features of unchanged files are kept; the texts (and labels) are taken anew
        logger.info("feature cache %s: the image features of %d of %d records reused (their files unchanged); encoding %d image(s) and the texts",
                    path, len(records) - len(missing), len(records), len(missing))
        start = time.perf_counter()
        new = encode_collection(net, [records[i] for i in missing], image_size, collection=collection, batch_size=batch_size, flipped=flipped,
                                num_workers=num_workers, progress=progress) if missing else None
        device, was_training = resolve_device(), net.training
        net.to(device).eval()
        with torch.no_grad(), autocast_for(device):
            tokens, token_mask, sentence = _encode_texts(net, [r.text for r in records], batch_size * 4)
        net.train(was_training)
        cache = FeatureCache(
            records, torch.tensor([r.label for r in records], dtype=torch.long),
            _rows_from(payload["maps"], rows, new.maps if new else None), tokens, token_mask, sentence,
            _rows_from(payload["maps_flipped"], rows, new.maps_flipped if new else None) if flipped else None,
            collection, int(image_size), fingerprint, build_seconds=time.perf_counter() - start)
        kept_blank = _blank_of([records[i] for i, row in enumerate(rows) if row is not None], payload.get("blank_images"))
        blank = None if kept_blank is None else kept_blank + list(new.blank if new else [])
        cache.blank = blank
    payload = {
        "image_files": image_files,
        "format": CACHE_FORMAT,
        "collection": collection,
        "image_size": int(image_size),
        "fingerprint": fingerprint,
        "encoder_config": _plain(dict(net.config)),
        "records": [_record_to_dict(r) for r in records],
        "labels": cache.labels,
        "maps": cache.maps,
        "maps_flipped": cache.maps_flipped,
        "tokens": cache.tokens,
        "token_mask": cache.token_mask,
        "sentence": cache.sentence,
        "build_seconds": float(cache.build_seconds),
        "blank_images": None if blank is None else [str(r.image_path) for r in records if r.case_id in set(blank)],
    }
    torch_save_atomic(payload, path)
    cache.path = path
    if collection not in COLLECTIONS:  # an own collection: after the save, so that the run with those rows left out encodes nothing again
        check_no_blank_images(cache)
    return cache


@torch.no_grad()
def encode_collection(
    net: Any,
    records: Sequence[CaseRecord],
    image_size: int,
    collection: str = "",
    batch_size: int = 16,
    flipped: bool = True,
    num_workers: int = 0,
    progress: bool = True,
) -> FeatureCache:
    """Run ``net``'s encoders over ``records`` and return the features in memory (nothing is written):
    what :func:`build_feature_cache` stores, and what a method whose encoders were fine-tuned for one fold
    trains its heads on (its features are that fold's alone, not worth a file). Runs on CUDA when present."""
    from ..progress import progress_bar

    from ..networks import encoder_fingerprint

    records = list(records)
    if not records:
        raise ValueError("no records to encode")
    device = resolve_device()
    was_training = net.training
    net.to(device).eval()
    autocast = autocast_for(device)
    loader = DataLoader(records_dataset(records, image_size), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    levels: list[list[torch.Tensor]] = [[], [], []]
    levels_flipped: list[list[torch.Tensor]] = [[], [], []]
    blank: list[str] = []
    start = time.perf_counter()
    with torch.no_grad(), autocast:
        for batch in progress_bar(loader, desc=f"features {collection} {image_size}px", unit="batch", enabled=progress):
            pixels = (batch["image"].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            blank.extend(case_id for case_id, frame in zip(batch["case_id"], pixels) if blank_spread(frame) is not None)
            images = batch["image"].to(device)
            for out, x in ((levels, images), (levels_flipped, images.flip(-1) if flipped else None)):
                if x is None:
                    continue
                maps = net.image_encoder(x)
                if len(maps) != 3:
                    raise ValueError(f"the image encoder returned {len(maps)} levels, the cache expects 3 (L, M, H)")
                for store, m in zip(out, maps):
                    store.append(m.half().cpu())
        tokens, token_mask, sentence = _encode_texts(net, [r.text for r in records], batch_size * 4)
    elapsed = time.perf_counter() - start
    net.train(was_training)
    logger.info("encoded %d images at %d px in %.1f s (%.3f s/image%s)", len(records), image_size, elapsed, elapsed / len(records), ", with flips" if flipped else "")
    maps = [torch.cat(level) for level in levels]
    maps_flipped = [torch.cat(level) for level in levels_flipped] if flipped else None
    labels = torch.tensor([r.label for r in records], dtype=torch.long)
    return FeatureCache(records, labels, maps, tokens, token_mask, sentence, maps_flipped, collection, int(image_size), encoder_fingerprint(net),
                        build_seconds=elapsed, blank=blank)
