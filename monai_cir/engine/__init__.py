"""Training engines: heads on the frozen-feature cache (CPU default) and end-to-end fine-tuning (GPU).

- :func:`train_head` (MONAI ``SupervisedTrainer`` + handlers) trains any head of :mod:`.heads` on a
  ``FeatureCache``; :func:`fit_composed` builds and trains the composed network for one split;
  :func:`attach_late_fusion` joins a trained Eq. 9 head and a trained late-fusion MLP into one network
  (the release model, ``S = (1 - a) S_Eq9 + a S_late_fusion``).
- :mod:`.finetune`: the end-to-end switch (images and texts in, encoders unfrozen).
- :mod:`.cv_methods`: the trained methods of ``monai_cir.evaluation`` (registered when it is imported).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..networks import ComposedRetrievalNet
from ..networks.composed_retrieval import RELEASE_LATE_FUSION_SHARE
from ..networks.late_fusion import LateFusionBranch
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
    "attach_late_fusion",
    "mean_maps",
    "fit_diagnosis_prior",
]

NET_KEYS = ("levels", "beta", "num_masks", "num_heads", "projection", "text_gate", "full_text_findings")
OPTIONAL_NET_KEYS = ("late_fusion_share", "late_fusion", "diagnosis_prior")  # in a network's config only when it has them


def new_head_net(base: ComposedRetrievalNet, seed: int = 0, **overrides: Any) -> ComposedRetrievalNet:
    """A fresh head on ``base``'s encoders; ``overrides``: beta, num_masks, levels...

    The head's initialisation is the network's own (seeded, identical for every call: the composers
    start as the identity); ``seed`` seeds the global RNG for what follows (dropout, sampling)."""
    kwargs = {k: base.config[k] for k in NET_KEYS}
    kwargs.update({k: base.config[k] for k in OPTIONAL_NET_KEYS if k in base.config})
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


def attach_late_fusion(net: ComposedRetrievalNet, branch: LateFusionBranch, share: float = RELEASE_LATE_FUSION_SHARE) -> ComposedRetrievalNet:
    """One network from a trained Eq. 9 head (``net``, the paper's network) and a trained late-fusion MLP
    (``branch``, e.g. :class:`~.heads.LateFusionMLP` trained in the full-batch regime): ``net``'s encoders
    and head, ``branch``'s weights, ``S = (1 - share) S_Eq9 + share S_late_fusion``. The global RNG is left
    as it was."""
    if net.late_fusion is not None:
        raise ValueError("net already has a late-fusion branch: attach one to the paper's network (late_fusion_share=0)")
    with torch.random.fork_rng(devices=[]):
        combined = new_head_net(net, late_fusion_share=share, late_fusion=dict(branch.options))
    head = {k: v for k, v in net.head_state_dict().items()}
    head.update({f"late_fusion.{k}": v for k, v in branch.state_dict().items()})
    combined.load_head_state_dict(head)
    return combined.train(net.training)


from .diagnosis_prior import fit_diagnosis_prior  # noqa: E402  (it builds on new_head_net)
