"""Training engines: heads on the frozen-feature cache (CPU default) and end-to-end fine-tuning (GPU).

- :func:`train_head` (MONAI ``SupervisedTrainer`` + handlers) trains any head of :mod:`.heads` on a
  ``FeatureCache``; :func:`fit_composed` builds and trains the composed network for one split.
- :mod:`.finetune`: the end-to-end switch (images and texts in, encoders unfrozen).
- :mod:`.cv_methods`: the trained methods of ``monai_cir.evaluation`` (registered when it is imported).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..networks import ComposedRetrievalNet
from .data import CachedBatchDataset, ClassBalancedBatchSampler, stratified_split
from .heads import COMPOSED_MODES, CachedComposedModel, LateFusionMLP
from .trainer import TrainConfig, TrainResult, retrieval_score, train_head

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train_head",
    "retrieval_score",
    "CachedBatchDataset",
    "ClassBalancedBatchSampler",
    "stratified_split",
    "CachedComposedModel",
    "LateFusionMLP",
    "COMPOSED_MODES",
    "new_head_net",
    "fit_composed",
    "mean_maps",
]

NET_KEYS = ("levels", "beta", "num_masks", "num_heads", "projection", "text_gate", "full_text_findings")


def new_head_net(base: ComposedRetrievalNet, seed: int = 0, **overrides: Any) -> ComposedRetrievalNet:
    """A fresh head on ``base``'s encoders; ``overrides``: beta, num_masks, levels...

    The head's initialisation is the network's own (seeded, identical for every call: the composers
    start as the identity); ``seed`` seeds the global RNG for what follows (dropout, sampling)."""
    kwargs = {k: base.config[k] for k in NET_KEYS}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    torch.manual_seed(seed)
    return ComposedRetrievalNet(
        base.image_encoder, base.text_encoder, image_size=base.image_size, freeze_encoders=base.freeze_encoders, **kwargs
    )


def mean_maps(cache: Any, indices: Sequence[int]) -> list[torch.Tensor]:
    """Mean training map per cached level (the neutral image of ``text_only``)."""
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    return [m[idx].float().mean(0) for m in cache.maps]


def fit_composed(
    base: ComposedRetrievalNet,
    cache: Any,
    train_idx: Sequence[int],
    mode: str = "composed",
    config: TrainConfig | dict[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    text_augmentation: dict[str, Any] | None = None,
    **net_overrides: Any,
) -> tuple[CachedComposedModel, TrainResult]:
    """Build a fresh head for ``mode`` and train it on ``train_idx`` of the cache.

    ``text_augmentation``: keyword arguments of :meth:`CachedComposedModel.set_text_augmentation`
    (``dropout``, ``bank``)."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg.seed = seed
    net = new_head_net(base, seed=seed, **net_overrides)
    model = CachedComposedModel(net, mode, mean_maps(cache, train_idx) if mode == "text_only" else None)
    if text_augmentation:
        model.set_text_augmentation(seed=seed, **text_augmentation)
    result = train_head(model, cache, train_idx, cfg, level_indices=net.level_indices, device=device)
    return model, result
