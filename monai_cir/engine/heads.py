"""What each retrieval method trains on the feature cache, as modules with one interface:

``forward(batch) -> (Q, T)`` for the loss, and ``encode_queries(cache, idx)`` /
``encode_targets(cache, idx)`` for evaluation (``Q @ T.T`` ranks the database).

- :class:`CachedComposedModel` wraps :class:`~monai_cir.networks.ComposedRetrievalNet` (paper Eqs. 5-9):
  ``mode="composed"`` composes the query maps with the text (Eq. 5); ``"image_only"`` is the same
  network with empty text (the composer passes the maps through); ``"text_only"`` composes the text
  onto the *mean training image map*, so the query carries no information about the query image.
- :class:`LateFusionMLP`: the reference baseline of DESIGN.md section 3 / issue 8: a 2-layer MLP on
  [pooled frozen features, sentence embedding] on the query side vs an image MLP on the target side
  (:class:`~monai_cir.networks.late_fusion.LateFusionBranch` trained on the cache; the release network
  carries one beside its Eq. 9 head, :func:`monai_cir.engine.attach_late_fusion`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..networks import ComposedRetrievalNet
from ..networks.late_fusion import LateFusionBranch
from .data import cache_maps

__all__ = ["CachedComposedModel", "LateFusionMLP", "COMPOSED_MODES"]

COMPOSED_MODES = ("composed", "image_only", "text_only")


def _chunks(idx: np.ndarray, size: int) -> list[np.ndarray]:
    return [idx[i : i + size] for i in range(0, len(idx), size)]


class CachedComposedModel(nn.Module):
    """The composed network trained on cached maps/tokens (encoders frozen, not run).

    Training (``forward``) trains the Eq. 9 head (composers, masks, projections); a network with a
    late-fusion branch has it trained on its own (:class:`LateFusionMLP`, :func:`~monai_cir.engine.attach_late_fusion`).
    ``encode_queries`` / ``encode_targets`` give the network's whole embeddings, branch included.

    Args:
        net: the network; only its composers/masks/projections are trained here.
        mode: one of :data:`COMPOSED_MODES`.
        mean_maps: for ``text_only``, the mean training map per cached level [L, M, H] (C_i, h_i, w_i).
        text_dropout / text_bank / seed: training-time text augmentation (:meth:`set_text_augmentation`).
    """

    def __init__(self, net: ComposedRetrievalNet, mode: str = "composed", mean_maps: Sequence[torch.Tensor] | None = None,
                 text_dropout: float = 0.0, text_bank: tuple[torch.Tensor, torch.Tensor] | None = None, seed: int = 0) -> None:
        super().__init__()
        if mode not in COMPOSED_MODES:
            raise ValueError(f"mode must be one of {COMPOSED_MODES}, got {mode!r}")
        if mode == "text_only" and mean_maps is None:
            raise ValueError("text_only needs mean_maps: the mean training image map of every level")
        self.net = net
        self.mode = mode
        self.mean_maps = [m.float() for m in mean_maps] if mean_maps is not None else None
        self.text_dropout = 0.0
        self.text_bank: tuple[torch.Tensor, torch.Tensor] | None = None
        self.set_text_augmentation(text_dropout, text_bank, seed)

    def set_text_augmentation(self, dropout: float = 0.0, bank: tuple[torch.Tensor, torch.Tensor] | None = None, seed: int = 0) -> None:
        """Training-time text augmentation of the query (not used at evaluation).

        Args:
            dropout: probability that a training query has no text at all (its mask emptied): the
                network then also learns image-only queries, so a text that says nothing costs little.
            bank: ``(tokens (V, N, n, d_T), mask (V, N, n))``: V re-worded texts of every cached case
                (:func:`monai_cir.data.report.augment_report`); each training query draws one of them
                or its own template text, uniformly.
        """
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"text dropout must lie in [0, 1), got {dropout}")
        self.text_dropout = float(dropout)
        self.text_bank = bank
        self._text_generator = torch.Generator().manual_seed(int(seed))

    def _augment_text(self, tokens: torch.Tensor, mask: torch.Tensor, index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text_bank is not None and index is not None:
            bank_tokens, bank_mask = self.text_bank
            choice = torch.randint(0, bank_tokens.shape[0] + 1, (len(index),), generator=self._text_generator)
            n = max(tokens.shape[1], bank_tokens.shape[2])
            tokens = F.pad(tokens, (0, 0, 0, n - tokens.shape[1]))
            mask = F.pad(mask, (0, n - mask.shape[1]))
            use = (choice > 0).nonzero().flatten()
            if len(use):
                picked_tokens = bank_tokens[choice[use] - 1, index[use]].float().to(tokens.device)
                picked_mask = bank_mask[choice[use] - 1, index[use]].to(mask.device)
                tokens[use] = F.pad(picked_tokens, (0, 0, 0, n - picked_tokens.shape[1]))
                mask[use] = F.pad(picked_mask, (0, n - picked_mask.shape[1]))
        if self.text_dropout:
            drop = torch.rand(len(mask), generator=self._text_generator) < self.text_dropout
            mask = mask & ~drop.to(mask.device).view(-1, 1)
        return tokens, mask

    def head_parameters(self):
        return self.net.head_parameters()

    @torch.no_grad()
    def fit_input_statistics(self, cache: Any, idx: Sequence[int]) -> None:
        """Standardise the heads' inputs with the statistics of cached training cases ``idx``."""
        c = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        maps = [cache.maps[i][c] for i in self.net.level_indices]
        self.net.fit_input_statistics(maps, torch.as_tensor(cache.tokens)[c], torch.as_tensor(cache.token_mask)[c])

    def _query(self, maps: list[torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None,
               sentence: torch.Tensor | None = None) -> torch.Tensor:
        """``weights``: the texts' query weights (:meth:`text_weights`; None in training: every text composed,
        the Eq. 9 head only). ``sentence``: the cached texts' sentence embeddings (the late-fusion branch)."""
        if self.mode == "image_only":
            return self.net.embed_maps(maps) if weights is None else self.net.target_embedding(maps)
        if self.mode == "text_only":
            sel = [self.mean_maps[i].to(tokens.device) for i in self.net.level_indices]
            maps = [m.unsqueeze(0).expand(tokens.shape[0], *m.shape) for m in sel]
        if weights is None or self.mode == "text_only":
            return self.net.embed_maps(self.net.compose(maps, tokens, mask))
        return self.net.query_embedding(maps, tokens, mask, weights, sentence)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = batch["tokens"], batch["token_mask"]
        if self.training and (self.text_dropout or self.text_bank is not None):
            tokens, mask = self._augment_text(tokens, mask, batch.get("index"))
        q = self._query(batch["query_maps"], tokens, mask)
        t = self.net.embed_maps(batch["target_maps"])
        return q, t

    def _views(self, cache: Any, idx: np.ndarray, tta: bool):
        views = [cache_maps(cache)]
        if tta and getattr(cache, "maps_flipped", None) is not None:
            views.append(cache_maps(cache, flipped=True))
        return views

    def text_weights(self, cache: Any, text_gate: str | None = None, full_text_findings: int | None = None) -> torch.Tensor:
        """(N,) float: each cached case's query-text weight ``w`` (:meth:`ComposedRetrievalNet.text_weights`,
        read from the records' texts; ``text_gate`` / ``full_text_findings`` override the network's for the
        ablations). A cache of bare tensors has no texts to read: its masks decide (w = 1)."""
        gate = self.net.text_gate if text_gate is None else text_gate
        records = getattr(cache, "records", None)
        if gate == "none" or records is None:
            return torch.ones(int(cache.token_mask.shape[0]))
        texts = [getattr(r, "text", None) or "" for r in records]
        return torch.tensor(self.net.text_weights(texts, gate, full_text_findings), dtype=torch.float32)

    @torch.no_grad()
    def encode_queries(self, cache: Any, idx: Sequence[int], tta: bool = True, batch_size: int = 128,
                       text_gate: str | None = None, full_text_findings: int | None = None) -> torch.Tensor:
        """Query embeddings of cached cases ``idx`` (image + text per ``mode``); TTA averages the flip views.

        The network's text weighting applies as in :meth:`ComposedRetrievalNet.encode_query` (``text_gate`` /
        ``full_text_findings`` override it, e.g. ``"none"`` or ``1``)."""
        self.eval()
        idx = np.asarray(idx)
        device = next(self.parameters()).device
        tokens = torch.as_tensor(cache.tokens)
        sentence = torch.as_tensor(cache.sentence) if getattr(cache, "sentence", None) is not None else None
        weights = self.text_weights(cache, text_gate, full_text_findings)
        mask = torch.as_tensor(cache.token_mask).bool() & (weights > 0).view(-1, 1)
        out = 0.0
        views = self._views(cache, idx, tta and self.mode != "text_only")
        for maps in views:
            parts = []
            for chunk in _chunks(idx, batch_size):
                c = torch.as_tensor(chunk)
                m = [maps[i][c].float().to(device) for i in self.net.level_indices]
                s = sentence[c].float().to(device) if sentence is not None else None
                parts.append(self._query(m, tokens[c].float().to(device), mask[c].to(device), weights[c], s).cpu())
            out = out + torch.cat(parts)
        return out / len(views)

    @torch.no_grad()
    def encode_targets(self, cache: Any, idx: Sequence[int], tta: bool = True, batch_size: int = 128) -> torch.Tensor:
        """Target (database image) embeddings of cached cases ``idx``; TTA averages the flip views."""
        self.eval()
        idx = np.asarray(idx)
        device = next(self.parameters()).device
        out = 0.0
        views = self._views(cache, idx, tta)
        for maps in views:
            parts = []
            for chunk in _chunks(idx, batch_size):
                c = torch.as_tensor(chunk)
                parts.append(self.net.target_embedding([maps[i][c].float().to(device) for i in self.net.level_indices]).cpu())
            out = out + torch.cat(parts)
        return out / len(views)


class LateFusionMLP(LateFusionBranch):
    """Late fusion baseline: ``g_q([pool(X_q); sentence])`` vs ``g_t(pool(X_t))``, unit vectors, trained on
    the feature cache (:class:`~monai_cir.networks.late_fusion.LateFusionBranch`: the same module and
    state-dict keys as the release network's branch). Trained with the same SupCon loss.
    ``batch_norm`` adds a BatchNorm after each hidden layer (the full-batch regime's head).
    """

    @torch.no_grad()
    def fit_input_statistics(self, cache: Any, idx: Sequence[int]) -> None:
        """Standardise both inputs with the statistics of cached training cases ``idx`` (see
        :class:`~monai_cir.networks.composer.InputStandardizer` for why the text matters most)."""
        c = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        # statistics of the full maps' means, as every measured late-fusion run fitted them (the training batches
        # hold the maps on the 4 x 4 grid, whose means differ from these only where the bins overlap)
        self.image_norm.fit(self.pool([m[c] for m in cache.maps]))
        self.text_norm.fit(torch.as_tensor(cache.sentence)[c])

    def head_parameters(self):
        return list(self.parameters())

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query(self.pool(batch["query_maps"]), batch["sentence"]), self.target(self.pool(batch["target_maps"]))

    @torch.no_grad()
    def encode_queries(self, cache: Any, idx: Sequence[int], tta: bool = True, **_: Any) -> torch.Tensor:
        self.eval()
        c = torch.as_tensor(np.asarray(idx))
        views = [cache_maps(cache)] + ([cache_maps(cache, True)] if tta and getattr(cache, "maps_flipped", None) is not None else [])
        sentence = torch.as_tensor(cache.sentence)[c].float()
        return sum(self.query(self.pool([m[c] for m in v]), sentence) for v in views) / len(views)

    @torch.no_grad()
    def encode_targets(self, cache: Any, idx: Sequence[int], tta: bool = True, **_: Any) -> torch.Tensor:
        self.eval()
        c = torch.as_tensor(np.asarray(idx))
        views = [cache_maps(cache)] + ([cache_maps(cache, True)] if tta and getattr(cache, "maps_flipped", None) is not None else [])
        return sum(self.target(self.pool([m[c] for m in v])) for v in views) / len(views)
