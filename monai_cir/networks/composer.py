"""Cross-modal composition (paper Eq. 5): ``X_qτ^i = CrossTransformer(X_q^i, Z_τ)`` at each level.

Image tokens (the h*w positions of one feature map) attend to the text tokens projected into the
level's channel space. Both sub-layers are residual with a tanh gate initialised at zero, so an
untrained composer returns the reference image's maps unchanged: the composed query starts in the
target's feature space and pretrained neighbourhoods (DESIGN.md section 3) are kept until training
moves them. A query without text (all-padding mask) gets no text contribution at all.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CrossModalTransformer"]


def _num_heads_for(dim: int, wanted: int) -> int:
    for heads in range(min(wanted, dim), 0, -1):
        if dim % heads == 0:
            return heads
    return 1


class CrossModalTransformer(nn.Module):
    """One cross-attention Transformer block: image tokens query text tokens.

    Args:
        dim: channels of the image feature map at this level (``d_i``).
        text_dim: text token embedding size (``d_T``).
        num_heads: attention heads; reduced to the largest divisor of ``dim`` not above it.
        mlp_ratio: hidden width of the feed-forward sub-layer, as a multiple of ``dim``.
        dropout: dropout on attention weights and the feed-forward output.
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int = 4, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))
        self.norm_image = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, _num_heads_for(dim, num_heads), dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = max(8, int(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.gate_attn = nn.Parameter(torch.zeros(1))
        self.gate_mlp = nn.Parameter(torch.zeros(1))

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``image`` (B, C, h, w), ``text`` (B, n, d_T), ``text_mask`` (B, n) bool (True = real token).

        Returns the composed map (B, C, h, w); with ``return_attention`` also the attention of image
        positions over text tokens averaged over heads and positions, (B, n).
        """
        b, c, h, w = image.shape
        tokens = image.flatten(2).transpose(1, 2)  # (B, hw, C)
        has_text = text_mask.any(dim=1)  # (B,)
        # A row with no real token would make softmax over nothing; give it one dummy key and zero its update.
        key_padding = ~text_mask.clone()
        key_padding[~has_text, 0] = False
        keys = self.text_proj(text)
        attended, weights = self.attn(
            self.norm_image(tokens), keys, keys, key_padding_mask=key_padding, need_weights=return_attention
        )
        keep = has_text.to(tokens.dtype).view(b, 1, 1)
        tokens = tokens + keep * torch.tanh(self.gate_attn) * attended
        tokens = tokens + keep * torch.tanh(self.gate_mlp) * self.mlp(self.norm_mlp(tokens))
        out = tokens.transpose(1, 2).reshape(b, c, h, w)
        if return_attention:
            return out, weights.mean(dim=1) * has_text.to(weights.dtype).view(b, 1)
        return out
