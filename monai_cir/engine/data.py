"""Batches for training: on a feature cache (class-balanced sampling, flip augmentation) and on images
(the dermoscopy augmentation of end-to-end fine-tuning).

A *feature cache* (``monai_cir.data.feature_cache.FeatureCache``) holds, per image, the frozen
encoder's three levels ``maps`` [L, M, H] ((N, C_i, h_i, w_i) fp16), optionally ``maps_flipped``
(the same of the horizontally flipped image), the text ``tokens`` (N, n, d_T), ``token_mask``
(N, n) and ``labels`` (N,). Training reads those tensors only: no image is decoded.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = [
    "ClassBalancedBatchSampler",
    "CachedBatchDataset",
    "stratified_split",
    "augmented_loader",
    "statistics_sample",
    "class_round_robin",
    "cache_maps",
    "prepare_batch",
    "dermoscopy_augmentation",
    "TARGET_IMAGE_KEY",
]

# The independently augmented second view of a fine-tuning image: the target side of the loss.
TARGET_IMAGE_KEY = "target_image"


def cache_maps(cache: Any, flipped: bool = False, grid: int | None = None) -> list[torch.Tensor]:
    """The cache's map list (flipped view when asked and available) as tensors, average-pooled to at most
    ``grid`` x ``grid`` (what the network's composer and alignment do first; default
    :data:`monai_cir.networks.composer.DEFAULT_GRID`). Pooled maps are memoised on the cache object."""
    from ..networks.composer import DEFAULT_GRID, pool_to_grid

    grid = DEFAULT_GRID if grid is None else grid
    maps = getattr(cache, "maps_flipped", None) if flipped else cache.maps
    if maps is None:
        maps = cache.maps
        flipped = False
    memo = getattr(cache, "_pooled_maps", None)
    if memo is None:
        memo = {}
        try:
            cache._pooled_maps = memo
        except AttributeError:
            pass
    key = (bool(flipped), grid)
    if key not in memo:
        memo[key] = [pool_to_grid(torch.as_tensor(m).float(), grid).half() if grid else torch.as_tensor(m) for m in maps]
    return memo[key]


def stratified_split(labels: np.ndarray, indices: Sequence[int], fraction: float, seed: int, records: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (train, validation) keeping the class shares; ``fraction`` goes to validation.

    ``records`` (the cases' records, indexed like ``labels``): a patient's or lesion's cases stay on one side
    (:func:`monai_cir.data.folds.case_groups`), as the outer folds keep them; scattered, a validation query finds its
    own lesion's other view, and early stopping picks the epoch that remembers it best."""
    indices = np.asarray(indices)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    grouped = _case_groups_of(records, indices)
    if grouped is not None:
        return _grouped_split(np.asarray(labels), indices, grouped, fraction, rng)
    train, val = [], []
    for c in np.unique(labels[indices]):
        members = indices[labels[indices] == c].copy()
        rng.shuffle(members)
        n_val = max(1, int(round(fraction * len(members)))) if len(members) > 1 else 0
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.asarray(train, dtype=int)), np.sort(np.asarray(val, dtype=int))


def augmented_loader(dataset: Any, *, seed: int, num_workers: int = 0, rank: int | None = None, **kwargs: Any) -> torch.utils.data.DataLoader:
    """The DataLoader of an augmented dataset (:func:`dermoscopy_augmentation`): its random transforms seeded from
    ``seed`` + this process's rank under ``torch.distributed`` (each rank augments its images its own way; the
    samplers' shared seeds are theirs) and, with ``num_workers``, each worker seeded apart (MONAI's
    ``worker_init_fn``): otherwise every worker, and every rank, repeated the same flips, rotations, crops and
    colour jitter. ``rank``: default this process's. ``kwargs`` go to the DataLoader (``batch_sampler``, ``sampler``,
    ``batch_size``...)."""
    from monai.data import DataLoader

    if rank is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
    generator = torch.Generator().manual_seed(int(seed) + rank)
    kwargs.setdefault("collate_fn", torch.utils.data.default_collate)  # MONAI's list collate would change the batches
    return DataLoader(dataset, num_workers=int(num_workers), generator=generator, persistent_workers=int(num_workers) > 0, **kwargs)


def statistics_sample(indices: Sequence[int], n: int = 256, seed: int = 0) -> np.ndarray:
    """Up to ``n`` of ``indices`` for fitting the heads' input standardisation: drawn at random (seeded), not the
    first ``n``, so that a CSV sorted by diagnosis still gives every class its share of the statistics."""
    indices = np.asarray(indices, dtype=int)
    if len(indices) <= n:
        return np.sort(indices)
    return np.sort(np.random.default_rng(seed).choice(indices, size=n, replace=False))


def _case_groups_of(records: Sequence[Any] | None, indices: np.ndarray) -> np.ndarray | None:
    """The group of each of ``indices`` when some group holds two of them, else None."""
    from ..data.folds import case_groups

    found = case_groups(list(records)) if records is not None else None
    if found is None:
        return None
    groups = np.asarray(found[0])[indices]
    return groups if len(set(groups.tolist())) < len(groups) else None


def _grouped_split(labels: np.ndarray, indices: np.ndarray, groups: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Whole groups to validation, per class (a group's class: its first case's) until ``fraction`` of its cases."""
    first = {g: int(i) for i, g in zip(indices[::-1], groups[::-1])}  # the first case of each group, in index order
    train, val = [], []
    for c in np.unique(labels[indices]):
        members = [g for g in dict.fromkeys(groups.tolist()) if labels[first[g]] == c]
        rng.shuffle(members)
        sizes = {g: int((groups == g).sum()) for g in members}
        total, taken = sum(sizes.values()), 0
        for n, g in enumerate(members):
            side = val if len(members) > 1 and n < len(members) - 1 and (n == 0 or taken < fraction * total) else train
            if side is val:
                taken += sizes[g]
            side.extend(indices[groups == g].tolist())
    return np.sort(np.asarray(train, dtype=int)), np.sort(np.asarray(val, dtype=int))


def class_round_robin(labels: Sequence[int], indices: Sequence[int], n: int, seed: int = 0) -> np.ndarray:
    """A sorted subset of ``n`` of ``indices`` drawn round-robin over the classes (each class shuffled with
    ``seed``), so every class is present as long as ``n`` >= the number of classes (smoke tests, CI)."""
    labels, indices = np.asarray(labels), np.asarray(indices, dtype=int)
    if len(indices) <= n:
        return np.sort(indices)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(indices[labels[indices] == c]) for c in np.unique(labels[indices])]
    # column-major over the per-class queues: first members of every class, then second members...
    order = [members[depth] for depth in range(max(map(len, per_class))) for members in per_class if depth < len(members)]
    return np.sort(np.asarray(order[:n], dtype=int))


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Yields batches with the same number of items from every class (rare classes drawn with replacement);
    ``balanced=False``: shuffled batches at the natural class frequencies.

    One epoch has ``ceil(len(indices) / batch_size)`` batches; the order is a function of ``seed`` and
    the epoch (call :meth:`set_epoch`), so training is reproducible.
    """

    def __init__(self, labels: Sequence[int], indices: Sequence[int], batch_size: int = 96, seed: int = 0, balanced: bool = True) -> None:
        labels = np.asarray(labels)
        self.balanced = balanced
        self.batch_size = batch_size
        self.indices = np.asarray(indices, dtype=int)
        self.classes = np.unique(labels[self.indices])
        if len(self.classes) < 2:
            raise ValueError("class-balanced sampling needs at least two classes in the training indices")
        self.by_class = {int(c): self.indices[labels[self.indices] == c] for c in self.classes}
        self.per_class = max(2, batch_size // len(self.classes))
        self.num_batches = max(1, math.ceil(len(self.indices) / (self.per_class * len(self.classes))))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        if not self.balanced:  # natural class frequencies: a shuffled pass over the indices
            order = rng.permutation(self.indices).tolist()
            size = math.ceil(len(order) / self.num_batches)
            for b in range(self.num_batches):
                yield order[b * size : (b + 1) * size]
            return
        pools = {c: [] for c in self.by_class}
        for _ in range(self.num_batches):
            batch = []
            for c, members in self.by_class.items():
                while len(pools[c]) < self.per_class:  # cycle through shuffled copies: every item seen before repeats
                    pools[c].extend(rng.permutation(members).tolist())
                batch.extend(pools[c][: self.per_class])
                pools[c] = pools[c][self.per_class :]
            yield batch


class CachedBatchDataset(Dataset):
    """``dataset[list_of_indices]`` -> one collated batch dict from the cache (use with ``batch_size=None``).

    Keys: ``query_maps`` / ``target_maps`` (lists of the selected levels, float32), ``tokens``,
    ``token_mask``, ``sentence`` (when cached), ``label``. With ``flip`` the query and the target side
    each take the flipped view with probability 1/2, independently (the query is never the target's
    exact copy, which keeps the q->t loss from rewarding identity).
    """

    def __init__(self, cache: Any, level_indices: Sequence[int] = (0, 1, 2), flip: bool = True, seed: int = 0) -> None:
        self.maps = cache_maps(cache)
        flipped = getattr(cache, "maps_flipped", None)
        self.maps_flipped = cache_maps(cache, flipped=True) if (flip and flipped is not None) else None
        self.level_indices = list(level_indices)
        self.tokens = torch.as_tensor(cache.tokens)
        self.token_mask = torch.as_tensor(cache.token_mask).bool()
        sentence = getattr(cache, "sentence", None)
        self.sentence = torch.as_tensor(sentence) if sentence is not None else None
        self.labels = torch.as_tensor(np.asarray(cache.labels)).long()
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def _maps(self, idx: torch.Tensor, flip: torch.Tensor | None) -> list[torch.Tensor]:
        out = []
        for i in self.level_indices:
            m = self.maps[i][idx].float()
            if flip is not None and self.maps_flipped is not None:
                m = torch.where(flip.view(-1, 1, 1, 1), self.maps_flipped[i][idx].float(), m)
            out.append(m)
        return out

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Any]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        flip_q = flip_t = None
        if self.maps_flipped is not None:
            flip_q = torch.rand(len(idx), generator=self.generator) < 0.5
            flip_t = torch.rand(len(idx), generator=self.generator) < 0.5
        batch = {
            "query_maps": self._maps(idx, flip_q),
            "target_maps": self._maps(idx, flip_t),
            "tokens": self.tokens[idx].float(),
            "token_mask": self.token_mask[idx],
            "label": self.labels[idx],
            "index": idx,
        }
        if self.sentence is not None:
            batch["sentence"] = self.sentence[idx].float()
        return batch


def prepare_batch(batch: dict[str, Any], device: torch.device | None = None, non_blocking: bool = False, **_: Any) -> tuple[dict[str, Any], torch.Tensor]:
    """``prepare_batch`` of the ``SupervisedTrainer``: the batch dict (tensors and lists of tensors moved to
    ``device``, texts as they are) is the network's input, its ``label`` the loss target."""

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=non_blocking)
        if isinstance(x, list):
            return [move(v) for v in x]
        return x

    batch = {k: move(v) for k, v in batch.items()}
    return batch, batch["label"]


def dermoscopy_augmentation(image_size: int, min_scale: float = 0.75, jitter: float = 0.2, hue: float = 0.02) -> Any:
    """Dictionary transforms for end-to-end fine-tuning, after the preprocessing of ``records_dataset``.

    Copies ``image`` to :data:`TARGET_IMAGE_KEY` and augments each view independently, as dermoscopy
    training usually does (a lesion has no canonical orientation, and devices differ in colour and zoom):
    horizontal and vertical flips, a multiple of 90° rotation, a random crop of ``min_scale``-1 of each
    side (a mild aspect change as well) resized back to ``image_size``, and colour jitter (brightness / contrast / saturation
    ``jitter``, hue ``hue``). Output stays (3, S, S) RGB in [0, 1]."""
    from monai.transforms import (
        Compose,
        CopyItemsd,
        EnsureTyped,
        Lambdad,
        RandFlipd,
        RandRotate90d,
        RandScaleCropd,
        RandTorchVisiond,
        Resized,
    )

    def view(key: str) -> list[Any]:
        return [
            RandFlipd(key, prob=0.5, spatial_axis=1),
            RandFlipd(key, prob=0.5, spatial_axis=0),
            RandRotate90d(key, prob=0.75, max_k=3),  # k = 0, 1, 2, 3 equally likely
            RandScaleCropd(key, roi_scale=min_scale, max_roi_scale=1.0, random_size=True),
            Resized(key, spatial_size=(image_size, image_size), mode="bilinear"),
            RandTorchVisiond(key, name="ColorJitter", brightness=jitter, contrast=jitter, saturation=jitter, hue=hue),
            Lambdad(key, func=functools.partial(torch.clamp, min=0.0, max=1.0)),
            EnsureTyped(key, data_type="tensor", track_meta=False),  # plain tensors into the network
        ]

    steps: list[Any] = [CopyItemsd("image", names=TARGET_IMAGE_KEY)]
    steps += view("image") + view(TARGET_IMAGE_KEY)
    return Compose(steps)
