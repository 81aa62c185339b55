"""Global and local alignment (paper Eqs. 6-9) as per-image descriptors.

Local (Eqs. 6-7): ``k`` learned spatial masks ``α_j(X)`` from ``X`` alone (a 1x1-conv head with a
softmax over positions, so each mask is a spatial distribution summing to 1), region descriptors
``E_j = ρ(X ⊙ α_j(X))`` with ρ = sum over positions (an attention-weighted mean, since α sums to 1),
aggregated by ρ = mean over j. Global (Eq. 8): the average-pooled map.

Because the masks of an image depend on that image alone, the descriptors of a target never depend
on the query, and the score of Eq. 9 is a sum of cosines, i.e. one inner product of unit vectors
weighted by √β and √(1-β) (DESIGN.md section 2). :class:`LevelAlignment` therefore produces
descriptors, and :class:`~monai_cir.networks.ComposedRetrievalNet` concatenates them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .composer import DEFAULT_GRID, InputStandardizer, pool_to_grid

__all__ = ["RegionMaskHead", "ResidualProjection", "LevelAlignment"]


class RegionMaskHead(nn.Module):
    """``α(X)``: ``num_masks`` spatial attention masks, each a softmax over the h*w positions."""

    def __init__(self, dim: int, num_masks: int = 4, hidden: int | None = None) -> None:
        super().__init__()
        if num_masks < 1:
            raise ValueError(f"num_masks must be >= 1, got {num_masks}")
        hidden = hidden or max(16, dim // 4)
        self.num_masks = num_masks
        self.net = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, num_masks, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, k, h, w), non-negative, each mask summing to 1 over space."""
        logits = self.net(x)
        b, k, h, w = logits.shape
        return logits.flatten(2).float().softmax(dim=-1).reshape(b, k, h, w).to(x.dtype)


class ResidualProjection(nn.Module):
    """``v + MLP(LN(v))`` with the last layer zero-initialised: starts as the identity.

    The residual keeps the pretrained neighbourhood of the frozen features (DESIGN.md section 3:
    heads that collapse classes overfit the training site).
    """

    def __init__(self, dim: int, hidden: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v + self.net(v)


class LevelAlignment(nn.Module):
    """Descriptors of one feature level: local ``ρ(E)`` (Eqs. 6-7) and global ``ρ(X)`` (Eq. 8).

    Args:
        dim: channels ``d_i`` of the level.
        num_masks: ``k`` region masks.
        projection: ``"none"`` or ``"residual_mlp"`` (one projection for local, one for global,
            shared by the query and the target side so both stay in one space).
        grid: maps are average-pooled to at most ``grid`` x ``grid`` first, as in the composer, so a
            target map and a composed query map are aligned on the same grid.
    """

    def __init__(self, dim: int, num_masks: int = 4, projection: str = "residual_mlp", grid: int | None = DEFAULT_GRID) -> None:
        super().__init__()
        self.grid = grid
        # per-channel standardisation of the map (fitted on training maps; identity until then)
        self.input_norm = InputStandardizer(dim)
        if projection not in ("none", "residual_mlp"):
            raise ValueError(f"projection must be 'none' or 'residual_mlp', got {projection!r}")
        self.masks = RegionMaskHead(dim, num_masks)
        self.proj_local: nn.Module = ResidualProjection(dim) if projection == "residual_mlp" else nn.Identity()
        self.proj_global: nn.Module = ResidualProjection(dim) if projection == "residual_mlp" else nn.Identity()

    def standardized_grid(self, x: torch.Tensor) -> torch.Tensor:
        """The map as both descriptors see it: pooled to the grid, then standardised per channel.

        The one place this is computed: the score (Eqs. 6-8) and :mod:`monai_cir.explain` (whose
        region contributions must add up to what the score used) both read it. (B, C, h', w')."""
        return self.input_norm(pool_to_grid(x, self.grid), dim=1)

    def region_descriptors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 6: ``E_j = Σ_positions X ⊙ α_j(X)`` on :meth:`standardized_grid`. Returns (E (B, k, C), α (B, k, h, w))."""
        x = self.standardized_grid(x)
        alpha = self.masks(x)
        regions = torch.einsum("bchw,bkhw->bkc", x, alpha)
        return regions, alpha

    def local_descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 7's ``ρ(E)``: the mean of the k region descriptors, projected. (B, C)."""
        regions, _ = self.region_descriptors(x)
        return self.proj_local(regions.mean(dim=1))

    def global_descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 8's ``ρ(X)``: the average-pooled :meth:`standardized_grid`, projected. (B, C)."""
        return self.proj_global(self.standardized_grid(x).mean(dim=(2, 3)))

    @staticmethod
    def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``s(·,·)``: the cosine similarity of every row of ``a`` with every row of ``b``, (B, N)."""
        return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
