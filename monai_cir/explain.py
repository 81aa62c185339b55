"""Explanations of one match: where the local similarity came from, and which words the composer used.

For a query (image + text) and one retrieved image, :func:`explain_match` returns an
:class:`Explanation` with, per feature level ``i`` (L, M, H):

- the ``k`` region masks ``α_j`` of the query (on the *composed* maps ``X_qτ^i``) and of the target
  (on ``X_t^i``), each a spatial distribution summing to 1 (paper Eq. 6);
- the **contribution of each region and each position to the local cosine** of that level. With
  ``ē = (1/k) Σ_j E_j``, ``E_j = Σ_p α_j(p) X̃(p)`` and the descriptor ``e = P(ē) = ē + g(ē)``
  (``P`` the residual projection, ``g`` its MLP branch, zero when untrained or ``projection="none"``)::

      s_local = <e_q, ê_t> / |e_q|
              = Σ_j Σ_p  α_j(p) <X̃_q(p), ê_t> / (k |e_q|)     (regions j, positions p)
                + <g(ē_q), ê_t> / |e_q|                         (the projection's residual)

  ``X̃`` is the map the score itself reads, :meth:`LevelAlignment.standardized_grid
  <monai_cir.networks.alignment.LevelAlignment.standardized_grid>`: pooled to the alignment grid
  (``composer.DEFAULT_GRID``, 4 x 4) and standardised with the statistics fitted on the training maps
  (``input_norm``, saved in ``bundle/models/model.pt``). The double sum is exact, and the projection
  residual is computed on its own (``g(ē) = P(ē) - ē``; zero for ``projection="none"``), so the region
  contributions ``c_j`` plus the residual add up to the local cosine the score used. The target side
  is the same with the roles of query and target swapped (``ê_q`` in place of ``ê_t``). Positions
  ``p`` are the grid's, so the heatmaps have its resolution before upsampling.
- heatmaps upsampled to the input image size: per level, and combined over levels weighted by β
  as in Eq. 9, as contributions *per input pixel* (so a heatmap sums to the score share it explains);
- the text tokens the composer attended to most: the cross-attention of image positions over text
  tokens (``CrossModalTransformer(..., return_attention=True)``), averaged over heads, positions and
  levels, word pieces merged into words and special tokens dropped. The tanh gate of each level
  says how much that attention changed the maps at all (gate 0: the text had no effect).

A query whose text names few findings is the blend ``w Q_composed + (1 - w) Q_image`` (the network's
``full_text_findings``): its explanation is the same blend of the two queries' explanations, part by
part, so the parts still add up to the score (``extra["text_weight"]`` holds ``w``).

A network with a late-fusion branch (the release model, ``S = (1 - a) S_Eq9 + a S_late_fusion``): the Eq. 9
parts above (regions, residuals, global cosines, heatmaps) count ``(1 - a)``, and one more part, the
branch's cosine of the whole (pooled) images and the text's mean token, counts ``a``; it has no
position (``late_fusion_cosine``; in :meth:`Explanation.score_parts` as the level ``"late_fusion"``). The
branch reads the levels on the alignment grid, so the targets' grid maps (:func:`grid_maps`) hold all it
needs: the part is computed, not a remainder.

What it does **not** show: a heatmap is where this network's similarity came from, not where a
lesion is or which dermoscopic structure is diagnostic; attention weights are not causal
attributions (see ``docs/explain.md``).

:func:`render_explanation` draws one or more explanations into a PNG with matplotlib.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_path

__all__ = [
    "LevelExplanation",
    "TokenWeight",
    "Explanation",
    "explain_match",
    "explain_matches",
    "grid_maps",
    "upsample_masks",
    "upsample_contribution",
    "merge_word_pieces",
    "render_explanation",
    "explanation_image",
    "EXPLANATION_NOTE",
]

EXPLANATION_NOTE = (
    "Heatmaps: where this network's local similarity came from (red = raised the score); "
    "not a lesion segmentation nor a diagnostic finding."
)


# ---------------------------------------------------------------------------------- data classes
@dataclass
class LevelExplanation:
    """One feature level's share of the match.

    Attributes:
        level: ``"L"``, ``"M"`` or ``"H"``.
        query_masks / target_masks: (k, h, w) region masks ``α_j``, each summing to 1.
        query_regions / target_regions: (k,) contribution ``c_j`` of each region to the local cosine.
        query_positions / target_positions: (h, w) contribution of each position (summed over regions).
        query_residual / target_residual: the projection branch's share (not attributable to positions).
        local_cosine / global_cosine: this level's ``s(ρ(E_q), ρ(E_t))`` and ``s(ρ(X_q), ρ(X_t))``.
        gate: ``tanh`` of the composer's attention gate at this level (0 = text had no effect).
        token_attention: (n,) attention of image positions over the text tokens (heads, positions averaged).
    """

    level: str
    query_masks: np.ndarray
    target_masks: np.ndarray
    query_regions: np.ndarray
    target_regions: np.ndarray
    query_positions: np.ndarray
    target_positions: np.ndarray
    query_residual: float
    target_residual: float
    local_cosine: float
    global_cosine: float
    gate: float
    token_attention: np.ndarray


@dataclass
class TokenWeight:
    """A word of the query text and the share of attention the composer gave it."""

    word: str
    weight: float


@dataclass
class Explanation:
    """Why a target matched a query (see the module docstring).

    ``query_heatmap`` / ``target_heatmap``: (H, W) contributions per input pixel of the local term
    ``(1 - a) β Σ_i s_local^i`` combined over levels (positive = raised the score). ``score`` is the
    network's score: Eq. 9, or ``(1 - a) S_Eq9 + a late_fusion_cosine`` with a late-fusion branch of share
    ``a`` (``local_score`` / ``global_score`` stay the Eq. 9 sums of cosines).
    Images are (H, W, 3) float arrays in [0, 1] as the network saw them (after preprocessing).
    """

    score: float
    local_score: float
    global_score: float
    beta: float
    text: str
    levels: list[LevelExplanation]
    tokens: list[TokenWeight]
    query_heatmap: np.ndarray
    target_heatmap: np.ndarray
    query_image: np.ndarray
    target_image: np.ndarray
    query_label: str = "query"
    target_label: str = "match"
    extra: dict[str, Any] = field(default_factory=dict)
    late_fusion_share: float = 0.0
    late_fusion_cosine: float = 0.0

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.query_image.shape[:2])  # type: ignore[return-value]

    def top_tokens(self, n: int = 5) -> list[TokenWeight]:
        return self.tokens[:n]

    def score_parts(self) -> list[dict[str, Any]]:
        """What each part of the pair contributed to :attr:`score`, in the score's own units (Eq. 9).

        Per level: ``query_regions`` / ``target_regions`` ``β c_j`` (each side's regions, with its
        ``*_projection`` ``β × residual``, split the same local cosine), and ``global`` ``(1-β) ×`` the
        global cosine, all times ``1 - a`` with a late-fusion branch, which adds the level
        ``"late_fusion"`` (no regions; ``global`` = ``a ×`` its cosine). Over levels, one side's regions +
        projection + global add up to ``score``."""
        keep = 1.0 - self.late_fusion_share
        b = keep * self.beta
        parts = [
            {
                "level": lv.level,
                "query_regions": [b * float(v) for v in lv.query_regions],
                "query_projection": b * lv.query_residual,
                "target_regions": [b * float(v) for v in lv.target_regions],
                "target_projection": b * lv.target_residual,
                "global": keep * (1.0 - self.beta) * lv.global_cosine,
            }
            for lv in self.levels
        ]
        if self.late_fusion_share > 0:
            parts.append({"level": "late_fusion", "query_regions": [], "query_projection": 0.0, "target_regions": [],
                          "target_projection": 0.0, "global": self.late_fusion_share * self.late_fusion_cosine})
        return parts

    def sr_text(self, n_tokens: int = 5) -> str:
        """One sentence for the SR's per-match "Explanation" item (no pixels)."""
        eq9 = f"{self.beta:.2f} x local {self.local_score:.3f} + {1 - self.beta:.2f} x global {self.global_score:.3f}"
        a = self.late_fusion_share
        if a > 0:
            branch = "whole-image and text cosine" if self.tokens else "whole-image cosine"  # an image-only query has no text in it
            eq9 = f"{1 - a:.2f} x ({eq9}) + {a:.2f} x {branch} {self.late_fusion_cosine:.3f}"
        parts = [f"S={self.score:.3f} = {eq9}"]
        if self.levels:
            parts.append("local cosine per level " + ", ".join(f"{lv.level} {lv.local_cosine:.2f}" for lv in self.levels))
        weight = self.extra.get("text_weight")
        if weight is not None:
            parts.append(f"query = {weight:.2f} x (image + text) + {1 - weight:.2f} x image alone (the text names few 7-point findings)")
        words = self.top_tokens(n_tokens)
        if words and any(abs(lv.gate) > 0 for lv in self.levels):
            parts.append("query words attended most: " + ", ".join(w.word for w in words))
        elif words:
            parts.append("the query text had no effect (untrained composer gate)")
        return "; ".join(parts) + "."

    def summary(self, n_tokens: int = 5) -> dict[str, Any]:
        """A JSON-able summary (no pixels): scores per level, region contributions, top words."""
        return {
            "score": self.score,
            "local_score": self.local_score,
            "global_score": self.global_score,
            "beta": self.beta,
            "late_fusion_share": self.late_fusion_share,
            "late_fusion_cosine": self.late_fusion_cosine,
            "levels": [
                {
                    "level": lv.level,
                    "local_cosine": lv.local_cosine,
                    "global_cosine": lv.global_cosine,
                    "query_regions": [float(v) for v in lv.query_regions],
                    "target_regions": [float(v) for v in lv.target_regions],
                    "query_residual": lv.query_residual,
                    "target_residual": lv.target_residual,
                    "text_gate": lv.gate,
                }
                for lv in self.levels
            ],
            "score_parts": self.score_parts(),
            "text_weight": self.extra.get("text_weight", 1.0 if self.tokens else 0.0),
            "top_words": [{"word": t.word, "weight": t.weight} for t in self.top_tokens(n_tokens)],
        }


# ---------------------------------------------------------------------------------- helpers
def _as_batch(image: Any, image_size: int, what: str) -> torch.Tensor:
    """A path, an (H, W, 3) array or a (3, H, W) / (1, 3, H, W) tensor -> (1, 3, H, W) float in [0, 1]."""
    if isinstance(image, (str, Path)):
        from .data import load_image

        return load_image(image, image_size).unsqueeze(0)
    if isinstance(image, np.ndarray):
        from .data import preprocess_image

        return preprocess_image(image, image_size).unsqueeze(0)
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{what} must be an image path, an (H, W, 3) array or a (3, H, W) tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"{what} must be one image, (3, H, W) or (1, 3, H, W), got shape {tuple(image.shape)}")
    return image.float()


def upsample_masks(masks: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(k, h, w) spatial distributions -> (k, H, W) bilinearly upsampled and renormalised to sum to 1."""
    m = torch.as_tensor(np.asarray(masks), dtype=torch.float32)
    if m.ndim != 3:
        raise ValueError(f"masks must have shape (k, h, w), got {tuple(m.shape)}")
    up = F.interpolate(m.unsqueeze(0), size=tuple(size), mode="bilinear", align_corners=False).squeeze(0).clamp_min(0)
    return (up / up.flatten(1).sum(-1).clamp_min(1e-12).view(-1, 1, 1)).numpy()


def upsample_contribution(values: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) contributions per position -> (H, W) contributions per pixel with (nearly) the same sum.

    Bilinear upsampling spreads each position over ``H W / (h w)`` pixels, so the result is scaled by
    ``h w / (H W)``: the heatmap keeps the meaning "share of the score from this pixel"."""
    v = torch.as_tensor(np.asarray(values), dtype=torch.float32)
    if v.ndim != 2:
        raise ValueError(f"contributions must have shape (h, w), got {tuple(v.shape)}")
    h, w = v.shape
    up = F.interpolate(v.view(1, 1, h, w), size=tuple(size), mode="bilinear", align_corners=False).view(*size)
    return (up * (h * w) / float(size[0] * size[1])).numpy()


def grid_maps(net: Any, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The selected levels' maps pooled to each alignment's grid, float32: all of a target's maps that
    its descriptors, and so its explanation, read (``standardized_grid`` pools first; pooling a map
    already on the grid is the identity, so an explanation from these is the same as from the full
    maps). (N, C_i, h', w') per level: a few KB per image, what a cache of library targets keeps. A
    late-fusion branch reads the same grids (:meth:`~monai_cir.networks.ComposedRetrievalNet.late_fusion_pool`)."""
    from .networks.composer import pool_to_grid

    if len(maps) != len(net.alignments):
        raise ValueError(f"expected {len(net.alignments)} feature maps (levels {net.levels}), got {len(maps)}")
    return [pool_to_grid(x.float(), align.grid) for align, x in zip(net.alignments, maps)]


def _side(align: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One side's pieces for (N, C, h, w) maps, as ``LevelAlignment.local_descriptor`` computes them
    (same ops, same rounding): masks α (N, k, h, w), ē (N, C), e = P(ē) = ē + g(ē) (N, C) and the
    standardised grid X̃ (N, C, h, w) the descriptors read."""
    regions, alpha = align.region_descriptors(x)
    mean_region = regions.mean(dim=1)  # ē
    desc = align.proj_local(mean_region).float()  # e = P(ē)
    return alpha, mean_region, desc, align.standardized_grid(x)


def _split_over_regions(
    alpha: torch.Tensor, mean_region: torch.Tensor, desc: torch.Tensor, grid: torch.Tensor, other_unit: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``<ê_n, ô_n>`` over regions and positions for N pairs at once.

    ``alpha`` (N, k, h, w), ``mean_region`` / ``desc`` (N, C), ``grid`` (N, C, h, w): one side (N may
    be 1, broadcast over the pairs); ``other_unit`` (N, C): the other side's unit descriptors.
    Returns (regions c_j (N, k), positions (N, h, w), projection residual (N,)), float64: the parts
    are compared with the float32 cosine, and cancellation must not show up as a mismatch."""
    k = alpha.shape[1]
    norm = desc.double().norm(dim=-1).clamp_min(1e-12)  # |e| (N,)
    unit = other_unit.double()
    # X̃(p): the standardised map on the grid, the very values the score's descriptors read
    per_position = torch.einsum("nchw,nc->nhw", grid.double().expand(unit.shape[0], -1, -1, -1), unit) / (k * norm).view(-1, 1, 1)
    by_region = alpha.double() * per_position.unsqueeze(1)  # (N, k, h, w): α_j(p) <X̃(p), ô> / (k |e|)
    # the projection branch <g(ē), ô> / |e| on its own (exactly 0 for projection="none"), so that
    # regions + residual = cosine is a check of the decomposition, not its definition
    residual = ((desc.double() - mean_region.double()) * unit).sum(-1) / norm
    return by_region.flatten(2).sum(-1), by_region.sum(1), residual


def merge_word_pieces(tokens: Sequence[str], weights: Sequence[float], special: Sequence[str] = ()) -> list[TokenWeight]:
    """Merge WordPiece continuations (``##``) into words (weights summed), drop special tokens.

    Returns the words in text order; sort by weight for a ranking."""
    special_set = set(special)
    words: list[TokenWeight] = []
    for token, weight in zip(tokens, weights):
        if token in special_set:
            continue
        if token.startswith("##") and words:
            words[-1] = TokenWeight(words[-1].word + token[2:], words[-1].weight + float(weight))
        else:
            words.append(TokenWeight(token, float(weight)))
    return words


# words left out of "the words that weighed most": English function words and the report template's glue
FILLER_WORDS = frozenset(
    "a an the and or but nor of in on at to for from by with without as is are was were be been being it its this that "
    "these those there here no not present absent yes some any both each per than then also has have had "
    "dermoscopy dermoscopic shows showing seen report reports patient years year old lesion".split()
)


def _ranked_words(net: Any, text: str, attention: np.ndarray) -> list[TokenWeight]:
    """Token strings of ``text`` as the encoder saw them, merged into words, best first, punctuation dropped."""
    if not text.strip():
        return []
    read = net.query_text(text) if hasattr(net, "query_text") else text  # the words the encoder was given
    tokenizer = net.text_encoder.tokenizer
    ids = net.text_encoder.tokenize([read])["input_ids"][0].tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    words = merge_word_pieces(tokens, attention[: len(tokens)], special=tokenizer.all_special_tokens)
    merged: dict[str, float] = {}  # a word that occurs twice counts once, with its summed attention
    for w in words:
        # punctuation, numbers and function words take attention too, but name nothing a reader can weigh
        if any(ch.isalpha() for ch in w.word) and w.word.lower() not in FILLER_WORDS:
            merged[w.word] = merged.get(w.word, 0.0) + w.weight
    return sorted((TokenWeight(k, v) for k, v in merged.items()), key=lambda t: -t.weight)


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    return image[0].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------- main API
@torch.no_grad()
def explain_match(
    net: Any,
    query_image: Any,
    text: str,
    target_image: Any,
    query_label: str = "query",
    target_label: str = "match",
) -> Explanation:
    """Explain why ``target_image`` scores as it does for the query (``query_image`` + ``text``).

    Args:
        net: a :class:`~monai_cir.networks.ComposedRetrievalNet` (any head: untrained, trained).
        query_image / target_image: a path, an (H, W, 3) array (preprocessed here at
            ``net.image_size``) or a preprocessed (3, H, W) / (1, 3, H, W) tensor in [0, 1].
        text: the clinical query text ("" for an image-only query).
        query_label / target_label: captions for :func:`render_explanation` (e.g. the case id).

    Returns:
        an :class:`Explanation`; its ``score`` equals ``net.similarity`` for the pair.
    """
    return explain_matches(net, query_image, text, [target_image], labels=[target_label], query_label=query_label)[0]


@torch.no_grad()
def explain_matches(
    net: Any,
    query_image: Any,
    text: str,
    targets: Sequence[Any],
    labels: Sequence[str] | None = None,
    query_label: str = "query",
    *,
    query_maps: Sequence[torch.Tensor] | None = None,
    target_maps: Sequence[torch.Tensor] | None = None,
    text_features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[Explanation]:
    """:func:`explain_match` for each retrieved image (e.g. the top hits of a search), in order.

    The query side (image maps, text tokens, the composed maps of Eq. 5) is computed once, the
    targets' maps in one batch, and the decomposition of all the pairs at once (vectorised over the
    targets): what a match adds is only its own share of a few small tensor ops.

    Args:
        query_maps: the query's maps as ``net.image_features(query)`` returns them (one (1, C, h, w)
            tensor per level), when the caller has them already (the app: from encoding the query);
            default: computed here.
        target_maps: the targets' maps, one (N, C, h, w) tensor per level, in ``targets`` order:
            ``net.image_features`` of the targets or their :func:`grid_maps` (the same explanation);
            default: computed here. ``targets`` are still needed: the explanation holds the images.
        text_features: ``(tokens (1, L, d), mask (1, L))`` of ``text`` as ``net.text_features([text])`` gives
            them, when the caller has them (the app: :meth:`~monai_cir.networks.ComposedRetrievalNet.encode_query_parts`
            of the query's batch; padding beyond the text's tokens is masked); default: computed here.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a string ('' for an image-only query), got {type(text).__name__}")
    labels = list(labels) if labels is not None else [f"match {i + 1}" for i in range(len(targets))]
    if len(labels) != len(targets):
        raise ValueError(f"got {len(targets)} targets but {len(labels)} labels")
    if not targets:
        return []
    was_training = net.training
    # net.eval() / net.train() walk every module of both encoders (4 ms a call): only when needed
    switched = any(m.training for m in net.modules())
    if switched:
        net.eval()
    try:
        q = _as_batch(query_image, net.image_size, "query_image").to(net.device)
        t_all = torch.cat([_as_batch(t, net.image_size, "target_image") for t in targets]).to(net.device)
        q_maps = list(query_maps) if query_maps is not None else net.image_features(q)
        if len(q_maps) != len(net.levels) or any(m.shape[0] != 1 for m in q_maps):
            raise ValueError(f"query_maps must hold one (1, C, h, w) map per level {net.levels}, got shapes {[tuple(m.shape) for m in q_maps]}")
        t_grids = grid_maps(net, target_maps if target_maps is not None else net.image_features(t_all))
        if any(m.shape[0] != len(targets) for m in t_grids):
            raise ValueError(f"target_maps must hold {len(targets)} maps per level (one per target), got shapes {[tuple(m.shape) for m in t_grids]}")
        if text_features is None:
            tokens, mask = net.text_features([text])
        else:
            tokens, mask = (t.to(net.device) for t in text_features)
            if tokens.dim() != 3 or tokens.shape[0] != 1 or tuple(mask.shape) != tuple(tokens.shape[:2]):
                raise ValueError(f"text_features must be (tokens (1, L, d), mask (1, L)) of the one text, got shapes {tuple(tokens.shape)} / {tuple(mask.shape)}")
        composed = [composer(xq.float(), tokens, mask, return_attention=True) for composer, xq in zip(net.composers, q_maps)]
        attention_mean = np.mean([attention[0].float().cpu().numpy() for _, attention in composed], axis=0)
        words = _ranked_words(net, text, attention_mean) if bool(mask.any()) else []
        t_grids = [m.to(q.device) for m in t_grids]
        explained = _explain_pairs(net, q, composed, t_all, t_grids, text, words, query_label, labels)
        weight = net.text_weights([text])[0]
        if 0.0 < weight < 1.0:
            # a text with few findings: the query is w Q_composed + (1 - w) Q_image, so every part of the
            # score (regions, positions, residuals, cosines) is the same blend of the two explanations
            image_only = [(xq.float(), torch.zeros_like(attention)) for xq, (_, attention) in zip(q_maps, composed)]
            plain = _explain_pairs(net, q, image_only, t_all, t_grids, text, words, query_label, labels)
            explained = [_blend(a, b, weight) for a, b in zip(explained, plain)]
        if net.late_fusion is not None:
            explained = _with_late_fusion(net, explained, q_maps, tokens, mask, weight, t_grids)
        return explained
    finally:
        if switched:
            net.train(was_training)


def _explain_pairs(
    net: Any,
    q: torch.Tensor,
    composed: Sequence[tuple[torch.Tensor, torch.Tensor]],
    t: torch.Tensor,
    t_grids: Sequence[torch.Tensor],
    text: str,
    words: list[TokenWeight],
    query_label: str,
    target_labels: Sequence[str],
) -> list[Explanation]:
    """The N query-target pairs from the query's composed maps and the targets' grids (Eqs. 6-9)."""
    n = t.shape[0]
    q_size, t_size = tuple(q.shape[-2:]), tuple(t.shape[-2:])
    per_level = []
    q_heat = np.zeros((n, *q_size), dtype=np.float32)
    t_heat = np.zeros((n, *t_size), dtype=np.float32)
    s_local = np.zeros(n)
    s_global = np.zeros(n)
    for name, composer, align, (xq_c, attention), xt in zip(net.levels, net.composers, net.alignments, composed, t_grids):
        xq_c, xt = xq_c.float(), xt.float()
        q_alpha, q_mean, q_desc, q_grid = _side(align, xq_c)  # the query: once, broadcast over the targets
        t_alpha, t_mean, t_desc, t_grid = _side(align, xt)  # the targets: one batch
        e_q = q_desc / q_desc.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (1, C)
        e_t = F.normalize(t_desc, dim=-1)  # (N, C)
        qr, qp, q_res = _split_over_regions(q_alpha, q_mean, q_desc, q_grid, e_t)
        tr, tp, t_res = _split_over_regions(t_alpha, t_mean, t_desc, t_grid, e_q.expand(n, -1))
        local = (e_t @ e_q[0]).double().cpu().numpy()
        glob = align.cosine(align.global_descriptor(xq_c), align.global_descriptor(xt))[0].double().cpu().numpy()
        s_local += local
        s_global += glob
        q_heat += net.beta * _upsample_contributions(qp.float(), q_size)
        t_heat += net.beta * _upsample_contributions(tp.float(), t_size)
        per_level.append(
            dict(
                level=name,
                query_masks=q_alpha[0].float().cpu().numpy(),
                target_masks=t_alpha.float().cpu().numpy(),
                query_regions=qr.float().cpu().numpy(),
                target_regions=tr.float().cpu().numpy(),
                query_positions=qp.float().cpu().numpy(),
                target_positions=tp.float().cpu().numpy(),
                query_residual=q_res.cpu().numpy(),
                target_residual=t_res.cpu().numpy(),
                local_cosine=local,
                global_cosine=glob,
                gate=float(torch.tanh(composer.gate_attn).item()),
                token_attention=attention[0].float().cpu().numpy(),
            )
        )
    query_image = _to_hwc(q)
    out = []
    for i, label in enumerate(target_labels):
        levels = [
            LevelExplanation(
                level=lv["level"],
                query_masks=lv["query_masks"],  # the query's masks: the same for every match
                target_masks=lv["target_masks"][i],
                query_regions=lv["query_regions"][i],
                target_regions=lv["target_regions"][i],
                query_positions=lv["query_positions"][i],
                target_positions=lv["target_positions"][i],
                query_residual=float(lv["query_residual"][i]),
                target_residual=float(lv["target_residual"][i]),
                local_cosine=float(lv["local_cosine"][i]),
                global_cosine=float(lv["global_cosine"][i]),
                gate=lv["gate"],
                token_attention=lv["token_attention"],
            )
            for lv in per_level
        ]
        s_l, s_g = float(s_local[i]), float(s_global[i])
        out.append(
            Explanation(
                score=net.beta * s_l + (1.0 - net.beta) * s_g,
                local_score=s_l,
                global_score=s_g,
                beta=net.beta,
                text=text,
                levels=levels,
                tokens=words,
                query_heatmap=q_heat[i],
                target_heatmap=t_heat[i],
                query_image=query_image,
                target_image=_to_hwc(t[i : i + 1]),
                query_label=query_label,
                target_label=label,
            )
        )
    return out


def _blend(composed: Explanation, image_only: Explanation, weight: float) -> Explanation:
    """``w composed + (1 - w) image_only`` of every additive part of two explanations of one pair (the
    query's masks too: a convex blend of distributions is one); the words and gates are the composed
    query's, the only side that read the text."""

    def mix(a: Any, b: Any) -> Any:
        return weight * a + (1.0 - weight) * b

    levels = [
        dataclasses.replace(
            a,
            **{name: mix(getattr(a, name), getattr(b, name)) for name in _ADDITIVE_LEVEL_FIELDS},
        )
        for a, b in zip(composed.levels, image_only.levels)
    ]
    return dataclasses.replace(
        composed,
        score=mix(composed.score, image_only.score),
        local_score=mix(composed.local_score, image_only.local_score),
        global_score=mix(composed.global_score, image_only.global_score),
        levels=levels,
        query_heatmap=mix(composed.query_heatmap, image_only.query_heatmap),
        target_heatmap=mix(composed.target_heatmap, image_only.target_heatmap),
        extra={**composed.extra, "text_weight": weight},
    )


_ADDITIVE_LEVEL_FIELDS = (
    "query_masks", "query_regions", "target_regions", "query_positions", "target_positions",
    "query_residual", "target_residual", "local_cosine", "global_cosine",
)


def _with_late_fusion(net: Any, explained: list[Explanation], q_maps: Sequence[torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor,
                      weight: float, t_grids: Sequence[torch.Tensor]) -> list[Explanation]:
    """The Eq. 9 explanations of a network with a late-fusion branch of share ``a``: their parts count
    ``1 - a`` and the branch's cosine ``a`` (computed here from the query's maps and tokens and the targets'
    grid maps, as :meth:`~monai_cir.networks.ComposedRetrievalNet.query_embedding` does; ``mask`` is the
    gated one of ``text_features``, which differs from the text's own only where ``weight`` is 0 and the
    sentence does not count)."""
    from .networks.late_fusion import sentence_embedding

    branch, a = net.late_fusion, net.late_fusion_share
    q_lf = branch.weighted_query(net.late_fusion_pool([m.float() for m in q_maps]), sentence_embedding(tokens, mask), torch.tensor([weight]))
    cosines = (q_lf @ branch.target(net.late_fusion_pool(t_grids)).T)[0].double().cpu().numpy()
    keep = 1.0 - a
    out = []
    for ex, cosine in zip(explained, cosines):
        out.append(dataclasses.replace(
            ex, score=keep * ex.score + a * float(cosine), query_heatmap=keep * ex.query_heatmap,
            target_heatmap=keep * ex.target_heatmap, late_fusion_share=a, late_fusion_cosine=float(cosine),
        ))
    return out


def _upsample_contributions(values: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """:func:`upsample_contribution` of (N, h, w) contributions at once -> (N, H, W)."""
    n, h, w = values.shape
    up = F.interpolate(values.float().reshape(n, 1, h, w), size=tuple(size), mode="bilinear", align_corners=False).reshape(n, *size)
    return (up * (h * w) / float(size[0] * size[1])).cpu().numpy()


# ---------------------------------------------------------------------------------- rendering
def _overlay(ax: Any, image: np.ndarray, heat: np.ndarray, vmax: float, title: str) -> Any:
    ax.imshow(image)
    shown = ax.imshow(np.clip(heat / vmax, -1.0, 1.0), cmap="RdBu_r", vmin=-1.0, vmax=1.0, alpha=0.6, interpolation="bilinear")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return shown


def _draw_one(fig: Any, axes: Sequence[Any], ex: Explanation, n_tokens: int) -> None:
    ax_q, ax_qh, ax_th, ax_t, ax_w = axes
    # one colour scale for both sides of a pair; the 99th percentile of |contribution| so that a
    # single hot position (backbones have a few large activations) does not wash out the rest
    vmax = float(max(np.percentile(np.abs(ex.query_heatmap), 99), np.percentile(np.abs(ex.target_heatmap), 99), 1e-12))
    ax_q.imshow(ex.query_image)
    ax_q.set_title(f"{ex.query_label}", fontsize=8)
    ax_q.axis("off")
    _overlay(ax_qh, ex.query_image, ex.query_heatmap, vmax, "query: local-similarity map")
    shown = _overlay(ax_th, ex.target_image, ex.target_heatmap, vmax, "match: local-similarity map")
    ax_t.imshow(ex.target_image)
    # the caption adds up to S: with a late-fusion branch its share and cosine too (the maps explain the Eq. 9 part only)
    parts = f"local {ex.local_score:.2f}, global {ex.global_score:.2f}"
    if ex.late_fusion_share > 0:
        parts = f"{1 - ex.late_fusion_share:.2f} x Eq. 9 ({parts}) + {ex.late_fusion_share:.2f} x late fusion {ex.late_fusion_cosine:.2f}"
    ax_t.set_title(f"{ex.target_label}\nS={ex.score:.3f} = {parts}" if ex.late_fusion_share > 0 else f"{ex.target_label}\nS={ex.score:.3f} ({parts})", fontsize=8)
    ax_t.axis("off")
    cbar = fig.colorbar(shown, ax=ax_th, fraction=0.046, pad=0.02)
    cbar.ax.tick_params(labelsize=6)
    cbar.set_label("relative contribution", fontsize=6)
    words = ex.top_tokens(n_tokens)
    if words:
        ax_w.barh(range(len(words))[::-1], [w.weight for w in words], color="tab:purple")
        ax_w.set_yticks(range(len(words))[::-1])
        ax_w.set_yticklabels([w.word for w in words], fontsize=7)
        gates = ", ".join(f"{lv.level} {lv.gate:+.2f}" for lv in ex.levels)
        effect = "" if any(abs(lv.gate) > 0 for lv in ex.levels) else "\ngate 0: the text had no effect"
        ax_w.set_title(f"words the composer attended to\n(text gate {gates}){effect}", fontsize=7)
        ax_w.tick_params(axis="x", labelsize=6)
    else:
        ax_w.text(0.5, 0.5, "image-only query:\nno text", ha="center", va="center", fontsize=8)
        ax_w.axis("off")


def _figure(items: Sequence[Explanation], n_tokens: int) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(items), 5, figsize=(13, 2.8 * len(items) + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 1, 0.9]})
    for row, ex in zip(axes, items):
        _draw_one(fig, row, ex, n_tokens)
    text = items[0].text
    caption = f"query text: {text}" if text.strip() else "image-only query"
    fig.suptitle(caption if len(caption) < 160 else caption[:157] + "...", fontsize=8)
    fig.text(0.5, 0.005, EXPLANATION_NOTE, ha="center", fontsize=7, style="italic")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    return fig


def _items(explanations: Explanation | Sequence[Explanation]) -> list[Explanation]:
    items = [explanations] if isinstance(explanations, Explanation) else list(explanations)
    if not items:
        raise ValueError("nothing to render: give at least one Explanation")
    return items


def render_explanation(explanations: Explanation | Sequence[Explanation], path: str | Path, n_tokens: int = 6, dpi: int = 110) -> Path:
    """Draw explanations as a PNG, one row per match: query, query map, match map, match, top words.

    Returns the written path. The figure shows the images it is given: write it only where the
    images may go (dataset images: git-ignored folders only)."""
    import matplotlib.pyplot as plt

    items = _items(explanations)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"render_explanation writes PNG; give a path ending in .png, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure(items, n_tokens)
    try:
        with atomic_path(path) as tmp:  # a figure cut short by an error never replaces the file that was there
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path


def explanation_image(explanations: Explanation | Sequence[Explanation], n_tokens: int = 6, dpi: int = 110) -> np.ndarray:
    """The same figure as :func:`render_explanation` as an (H, W, 3) uint8 array (for the PDF report)."""
    import matplotlib.pyplot as plt

    fig = _figure(_items(explanations), n_tokens)
    fig.set_dpi(dpi)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image
