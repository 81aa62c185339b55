"""Cross-modal composition (paper Eq. 5): ``X_qτ^i = CrossTransformer(X_q^i, Z_τ)`` at each level.

Image tokens (the h*w positions of one feature map) attend to the text tokens in a shared bottleneck
width; the update is mapped back to the level's channels and added residually through tanh gates
initialised at zero, so an untrained composer returns the reference image's maps unchanged: the composed query starts in the
target's feature space and pretrained neighbourhoods (DESIGN.md section 3) are kept until training
moves them. A query without text (all-padding mask) gets no text contribution at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CrossModalTransformer", "InputStandardizer", "pool_to_grid", "DEFAULT_GRID"]

# Feature maps are average-pooled to at most DEFAULT_GRID x DEFAULT_GRID (4 x 4) positions before composition and
# alignment (EfficientNet-Lite2 at 260 px: L 33x33, M 17x17, H 9x9 -> 4x4 each). The global
# descriptor (Eq. 8, a spatial mean) is unchanged by it; the local masks (Eq. 6) work on the coarser grid.
# It makes the cross-attention of Eq. 5 about 90x cheaper on CPU (2 cores: the whole 5-fold protocol must
# train in under an hour). None keeps the full maps.
DEFAULT_GRID = 4


def pool_to_grid(x: torch.Tensor, grid: int | None) -> torch.Tensor:
    """Average-pool a (B, C, h, w) map to at most ``grid`` x ``grid`` positions (identity if already small)."""
    if grid is None or (x.shape[-2] <= grid and x.shape[-1] <= grid):
        return x
    return F.adaptive_avg_pool2d(x, (min(grid, x.shape[-2]), min(grid, x.shape[-1])))


class InputStandardizer(nn.Module):
    """``(x - mean) / std`` per feature with statistics fitted once on training data (buffers, saved with
    the head). Identity until :meth:`fit` runs.

    Why: frozen encoder outputs are far from centred. MiniLM token embeddings share one dominant
    direction and EfficientNet channels have very different scales; a head trained for a few hundred
    CPU steps spends them removing that offset (measured on the late-fusion baseline: bundle/docs/history.md,
    "Ablations and attempts").
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, values: torch.Tensor) -> None:
        """``values`` (N, dim): one row per training vector (a token, a map position)."""
        if values.ndim != 2 or values.shape[1] != self.mean.numel() or values.shape[0] < 2:
            raise ValueError(f"expected (N >= 2, {self.mean.numel()}) training vectors, got {tuple(values.shape)}")
        values = values.float()
        self.mean.copy_(values.mean(0))
        self.std.copy_(values.std(0).clamp_min(1e-4))

    def forward(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        shape = [1] * x.ndim
        shape[dim] = -1
        return (x - self.mean.view(shape).to(x.dtype)) / self.std.view(shape).to(x.dtype)


def _num_heads_for(dim: int, wanted: int) -> int:
    for heads in range(min(wanted, dim), 0, -1):
        if dim % heads == 0:
            return heads
    return 1


class CrossModalTransformer(nn.Module):
    """One cross-attention Transformer block (Eq. 5): image tokens query text tokens, in a bottleneck.

    Image tokens (the positions of the level's map) and text tokens are projected to a common ``width``;
    a cross-attention sub-layer and a feed-forward sub-layer run there, and one linear layer maps each
    update back to the level's ``dim`` channels, added residually through tanh gates initialised at zero.
    So ``X_qτ`` keeps the space and channels of ``X_t`` (Eq. 5), an untrained composer is the identity,
    and the cost no longer grows with ``dim²`` (the H level of EfficientNet-Lite2 has 352 channels).

    Args:
        dim: channels of the image feature map at this level (``d_i``).
        text_dim: text token embedding size (``d_T``).
        num_heads: attention heads; reduced to the largest divisor of ``width`` not above it.
        mlp_ratio: hidden width of the feed-forward sub-layer, as a multiple of ``width``.
        dropout: dropout on attention weights and the feed-forward output.
        grid: the map is average-pooled to at most ``grid`` x ``grid`` positions first (:data:`DEFAULT_GRID`).
        width: the bottleneck width (default ``min(dim, 64)``).
    """

    def __init__(
        self,
        dim: int,
        text_dim: int,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        grid: int | None = DEFAULT_GRID,
        width: int | None = None,
    ) -> None:
        super().__init__()
        self.grid = grid
        width = int(width or min(dim, 64))
        self.width = width
        self.text_norm = InputStandardizer(text_dim)
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width))
        self.image_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
        self.attn = nn.MultiheadAttention(width, _num_heads_for(width, num_heads), dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        hidden = max(8, int(width * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))
        self.out = nn.Linear(width, dim, bias=False)
        # tanh gates initialised at zero: an untrained composer is the identity (gate 0 = the text has no effect)
        self.gate_attn = nn.Parameter(torch.zeros(1))
        self.gate_mlp = nn.Parameter(torch.zeros(1))

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``image`` (B, C, h, w), ``text`` (B, n, d_T), ``text_mask`` (B, n) bool (True = real token).

        Returns the composed map (B, C, h', w') on the pooled grid (``h' = min(h, grid)``); with
        ``return_attention`` also the attention of image positions over text tokens averaged over heads
        and positions, (B, n). A query whose mask has no real token gets no text contribution at all.
        """
        image = pool_to_grid(image, self.grid)
        b, c, h, w = image.shape
        tokens = image.flatten(2).transpose(1, 2)  # (B, hw, C)
        has_text = text_mask.any(dim=1)  # (B,)
        # A row with no real token would make softmax over nothing; give it one dummy key and zero its update.
        key_padding = ~text_mask.clone()
        key_padding[~has_text, 0] = False
        keys = self.text_proj(self.text_norm(text))
        z = self.image_proj(tokens)
        # The padding goes in as a per-head attn_mask (the same masking, bit for bit): torch's key_padding_mask
        # check imports sympy on its first call (torch._check_with), ~0.5 s of an app's first query.
        blocked = key_padding[:, None, :].expand(b, z.shape[1], key_padding.shape[1]).repeat_interleave(self.attn.num_heads, dim=0)
        attended, weights = self.attn(z, keys, keys, attn_mask=blocked, need_weights=return_attention)
        update = self.mlp(self.norm_mlp(z + attended))
        keep = has_text.to(tokens.dtype).view(b, 1, 1)
        tokens = tokens + keep * (torch.tanh(self.gate_attn) * self.out(attended) + torch.tanh(self.gate_mlp) * self.out(update))
        out = tokens.transpose(1, 2).reshape(b, c, h, w)
        if return_attention:
            return out, weights.mean(dim=1) * has_text.to(weights.dtype).view(b, 1)
        return out
