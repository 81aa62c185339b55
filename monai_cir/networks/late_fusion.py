"""The late-fusion branch: a whole-image + sentence MLP beside the composed network (issue 13).

``query = g_q([pool(X_q); sentence(text)])``, ``target = g_t(pool(X_t))``, unit vectors, where ``pool``
concatenates the average-pooled frozen levels (L, M, H) and ``sentence`` is the mask-mean of the text's
token embeddings. The levels are pooled from the maps on the alignment grid (4 x 4, what the feature
cache's training batches hold and what the index's grid-map store keeps), so the branch reads the same
values in training, in the app and in an explanation. On its own it is the ``late_fusion`` baselines of the evaluation
(:class:`monai_cir.engine.LateFusionMLP` trains it on the feature cache); inside
:class:`~monai_cir.networks.ComposedRetrievalNet` (``late_fusion_share > 0``) its cosine is added to the
paper's score, ``S = (1 - a) S_Eq9 + a S_late_fusion``, still one inner product. Measured on the
committed Derm7pt folds (``bench/results/derm7pt_cv.md``, ``composed_late_fusion``): the sum ranks
better than either part on Acc@1 and P@5, and unlike the MLP alone it does not collapse when the text
is left out (the composed network's image-only query carries it).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .composer import InputStandardizer, pool_to_grid

__all__ = ["LateFusionBranch", "sentence_embedding", "LATE_FUSION_DEFAULTS"]

# The full-batch recipe's head (issue 13: ``late_fusion_fullbatch``): 512 hidden units with BatchNorm,
# dropout 0.1, 256-d output.
LATE_FUSION_DEFAULTS = dict(hidden=512, out_dim=256, dropout=0.1, batch_norm=True)


def sentence_embedding(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mask-mean of token embeddings (B, n, d) -> (B, d); zeros for a text without tokens. The same
    formula the feature cache stores as ``sentence``."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens.float() * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float, batch_norm: bool = False) -> nn.Sequential:
    norm = [nn.BatchNorm1d(hidden)] if batch_norm else []
    return nn.Sequential(nn.Linear(d_in, hidden), *norm, nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class LateFusionBranch(nn.Module):
    """``g_q([pool(X_q); sentence])`` vs ``g_t(pool(X_t))``, unit vectors, inputs standardised with
    training statistics (:class:`~monai_cir.networks.composer.InputStandardizer`).

    Args:
        image_dim: channels of the pooled levels together (``d_L + d_M + d_H``).
        text_dim: the text encoder's token width.
        hidden / out_dim / dropout / batch_norm: the two MLPs (``batch_norm``: BatchNorm after the hidden layer).
    """

    def __init__(self, image_dim: int, text_dim: int, hidden: int = 512, out_dim: int = 256, dropout: float = 0.2, batch_norm: bool = False) -> None:
        super().__init__()
        self.query_mlp = _mlp(image_dim + text_dim, hidden, out_dim, dropout, batch_norm)
        self.target_mlp = _mlp(image_dim, hidden, out_dim, dropout, batch_norm)
        self.image_norm = InputStandardizer(image_dim)
        self.text_norm = InputStandardizer(text_dim)
        self.out_dim = int(out_dim)
        self.options = dict(hidden=int(hidden), out_dim=int(out_dim), dropout=float(dropout), batch_norm=bool(batch_norm))

    @staticmethod
    def pool(maps: Sequence[torch.Tensor], grid: int | None = None) -> torch.Tensor:
        """The levels' maps (B, C_i, h_i, w_i), average-pooled and concatenated: (B, Σ C_i). ``grid``: pool
        each map to at most ``grid`` x ``grid`` first (:func:`~monai_cir.networks.composer.pool_to_grid`;
        the identity for maps already on it), as the network does."""
        return torch.cat([pool_to_grid(m.float(), grid).mean(dim=(2, 3)) for m in maps], dim=1)

    def query(self, pooled: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.query_mlp(torch.cat([self.image_norm(pooled), self.text_norm(sentence.float())], dim=1)), dim=-1)

    def target(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.target_mlp(self.image_norm(pooled)), dim=-1)

    def weighted_query(self, pooled: torch.Tensor, sentence: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``w query + (1 - w) target(query image)`` (B, out_dim): the text weight ``w`` of the composed
        network (0 = no usable text) decides how much the text counts; without it the query image's own
        target embedding stands in (the MLP's text-free view of the image), so a query without text does
        not fall to the MLP's collapsed empty-sentence query."""
        w = weights.to(device=pooled.device, dtype=torch.float32).view(-1, 1)
        return w * self.query(pooled, sentence) + (1 - w) * self.target(pooled)
