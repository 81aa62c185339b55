"""Methods that train nothing: frozen-feature baselines and the untrained stand-ins of the network.

- ``imagenet_cosine``: the frozen backbone's pooled last level (H), cosine (the analogue of the paper's
  ResNet50-CosSim row); the text is ignored.
- ``frozen_multilevel_cosine``: pooled L, M and H levels, mean of the three cosines.
- ``image_only_untrained``, ``text_only_untrained``, ``composed_untrained``: a freshly initialised, seeded
  head (what training starts from); the trained methods of :mod:`monai_cir.engine.cv_methods` are
  ``image_only``, ``text_only`` and ``composed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .protocol import CrossSiteContext, FoldContext, RunState
from .registry import MethodOutput, register_method

__all__ = ["UNTRAINED_METHODS"]

UNTRAINED_METHODS = ("imagenet_cosine", "frozen_multilevel_cosine", "image_only_untrained", "text_only_untrained", "composed_untrained")


def _pooled(cache: Any, indices: np.ndarray, levels: Sequence[int]) -> torch.Tensor:
    """Concatenated unit-norm pooled levels, scaled so that the inner product is the mean cosine."""
    blocks = [F.normalize(cache.pooled(level, indices), dim=-1) for level in levels]
    return torch.cat(blocks, dim=-1) / len(blocks) ** 0.5


def _imagenet_target(ctx: CrossSiteContext) -> torch.Tensor:
    return _pooled(ctx.target, np.arange(len(ctx.target)), [-1])


def _multilevel_target(ctx: CrossSiteContext) -> torch.Tensor:
    return _pooled(ctx.target, np.arange(len(ctx.target)), [0, 1, 2])


@register_method("imagenet_cosine", label="ImageNet features + cosine (frozen, last level)", trained=False, cross_site=_imagenet_target)
def imagenet_cosine(ctx: FoldContext) -> MethodOutput:
    """Frozen pretrained backbone, global-average-pooled last level (H), cosine; the text is ignored
    (the analogue of the paper's ResNet50-CosSim row)."""
    return _pooled(ctx.cache, ctx.query_indices, [-1]), _pooled(ctx.cache, ctx.database_indices, [-1])


@register_method("frozen_multilevel_cosine", label="frozen features + cosine (L, M, H)", trained=False, cross_site=_multilevel_target)
def frozen_multilevel_cosine(ctx: FoldContext) -> MethodOutput:
    """Frozen backbone, pooled L, M and H levels, mean of the three cosines; text ignored."""
    return _pooled(ctx.cache, ctx.query_indices, [0, 1, 2]), _pooled(ctx.cache, ctx.database_indices, [0, 1, 2])


def _untrained_head(state: RunState, image_size: int, seed: int):
    """A freshly initialised, seeded head on the encoders of the network that built the cache
    (``state.net``; default: the offline architecture with random encoder weights, which are never
    run: the cache replaces them)."""
    from ..networks import ComposedRetrievalNet, create_model

    key = ("untrained_head", seed)
    if key not in state.memo:
        if state.net is None:
            state.net = create_model(pretrained=False, image_size=image_size).eval()
        base = state.net
        torch.manual_seed(seed)
        state.memo[key] = ComposedRetrievalNet(base.image_encoder, base.text_encoder, image_size=base.image_size).eval()
    return state.memo[key]


@torch.no_grad()
def _embed(net, cache: Any, indices: np.ndarray, texts: str | None = None, neutral: list[torch.Tensor] | None = None, chunk: int = 64) -> torch.Tensor:
    """Embed cache rows with the head: targets (``texts=None``), or composed queries with the cached
    text tokens (``texts="tokens"``); ``neutral`` replaces the image maps (text-only queries)."""
    out = []
    for start in range(0, len(indices), chunk):
        idx = indices[start : start + chunk]
        if neutral is not None:
            maps = [n.unsqueeze(0).expand(len(idx), *n.shape) for n in neutral]
        else:
            maps = cache.select_maps(idx)
        maps = [maps[i] for i in net.level_indices]
        if texts == "tokens":
            index = torch.as_tensor(idx, dtype=torch.long)
            maps = net.compose(maps, cache.tokens[index].float(), cache.token_mask[index])
        out.append(net.embed_maps(maps))
    return torch.cat(out)


def _head(ctx: FoldContext):
    return _untrained_head(ctx.state, int(ctx.config.get("image_size", 260)), ctx.seed)


@register_method("image_only_untrained", label="image only (untrained head)", trained=False)
def untrained_image_only(ctx: FoldContext) -> MethodOutput:
    """Stand-in: the untrained network's target embedding for both sides (no text)."""
    net = _head(ctx)
    return _embed(net, ctx.cache, ctx.query_indices), _embed(net, ctx.cache, ctx.database_indices)


@register_method("text_only_untrained", label="text only (untrained head)", trained=False)
def untrained_text_only(ctx: FoldContext) -> MethodOutput:
    """Stand-in: the query text composed onto the mean database map (no query image), untrained head."""
    net = _head(ctx)
    idx = torch.as_tensor(ctx.database_indices, dtype=torch.long)
    neutral = [m[idx].float().mean(0) for m in ctx.cache.maps]
    return _embed(net, ctx.query_cache, ctx.query_indices, texts="tokens", neutral=neutral), _embed(net, ctx.cache, ctx.database_indices)


@register_method("composed_untrained", label="composed (untrained head)", trained=False)
def untrained_composed(ctx: FoldContext) -> MethodOutput:
    """Stand-in: image + text through the untrained composer (Eq. 5) and alignment (Eqs. 6-9)."""
    net = _head(ctx)
    return _embed(net, ctx.query_cache, ctx.query_indices, texts="tokens"), _embed(net, ctx.cache, ctx.database_indices)
