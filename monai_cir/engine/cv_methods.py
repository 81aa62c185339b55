"""The trained retrieval methods of ``monai_cir.evaluation`` (which imports this module to register them).

Every method trains per fold on ``ctx.train_indices`` only (the four database folds; an inner
validation split of them drives early stopping) and returns ``(Q, T)`` scored by inner product.

- ``composed``: the paper's network (Eqs. 5-9) on the frozen-feature cache: query = image + text, the text
  composed only when it names a 7-point finding (the findings gate; ``composed_ungated``: every text).
- ``image_only``: the same network and loss, query = image with empty text.
- ``text_only``: the same network, query = the text composed onto the mean training image map.
- ``late_fusion``: 2-layer MLP on [pooled frozen L/M/H, sentence embedding] vs an image MLP (reference);
  ``late_fusion_fullbatch``: the same MLP in the full-batch regime.
- ``composed_late_fusion``: the release network (``bundle/configs/train.yaml``): the fold's ``composed`` head
  and ``late_fusion_fullbatch`` MLP joined into one :class:`~monai_cir.networks.ComposedRetrievalNet`
  (``late_fusion_share`` 0.5), ``S = (S_composed + S_late_fusion) / 2``; ``composed_late_fusion_differential``:
  the same ranked as the app ranks, with the differential slot (:mod:`monai_cir.differential`), its margin
  fitted on the other folds' held-out queries.

``composed``, ``composed_text_query`` and ``late_fusion`` have a cross-site encoder: trained once on all
of Derm7pt, it embeds the other collection's images with its target tower (``T``) (``image_only`` and
``text_only`` are left out of the cross-site check to keep the whole run under an hour on 2 cores). Options per method come from :data:`METHOD_DEFAULTS`, updated by
``ctx.config["method_options"][name]`` (the ablation script sets ``beta``, ``num_masks``, ``levels``...).
``ensemble: n`` trains n seeds and concatenates their embeddings / √n (the score is their mean; the
``Q·T`` decomposition holds).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import math
from typing import Any, Iterator

import numpy as np
import torch

from ..differential import DEFAULT_OPEN_RATE, DifferentialSlot, differential_ranking, fit_margin, query_margins
from ..evaluation.protocol import CrossSiteContext, FoldContext, RunState
from ..evaluation.registry import register_method
from ..evaluation.text_forms import text_form_cache
from ..prior_ranking import prior_acted
from ..networks.composed_retrieval import RELEASE_LATE_FUSION_SHARE
from . import TrainConfig, attach_late_fusion, fit_composed
from .heads import CachedComposedModel, LateFusionMLP
from .trainer import train_head

__all__ = ["METHOD_DEFAULTS", "base_net", "method_options", "text_bank", "train_method", "override_options", "composed_late_fusion_models",
           "release_differential_slot"]

logger = logging.getLogger(__name__)

# The paper's regime for every trained method (the TrainConfig defaults): Adam lr 1e-4 / wd 1e-5, up to 100
# epochs, early stopping patience 30 on a stratified 15% inner validation split (validated every epoch,
# the best epoch kept), natural-frequency batches of 96, flip augmentation and flip TTA, inputs standardised
# with training statistics. Measured against the earlier short regime (lr 1e-3, <= 30 epochs, patience 8,
# class-balanced batches): composed 79.7 / 82.5 / 84.6 / 80.9 -> 81.3 / 84.6 / 85.7 / 83.7 -- see
# bundle/docs/history.md, "Ablations and attempts".
_TRAIN = dict(epochs=100, lr=1e-4, weight_decay=1e-5, batch_size=96, patience=30, val_every=1, temperature=0.1, target_weight=1.0, val_fraction=0.15, flip=True, tta=True, balanced=False)
# The composed network's methods: τ 0.2 (0.1 collapses each class), the tanh gates of Eq. 5 started at 0.3
# and the composers at 3x the lr so the text gets through (bundle/docs/history.md, "Ablations and attempts").
_COMPOSED_TRAIN = dict(_TRAIN, temperature=0.2, composer_lr_mult=3.0, gate_init=0.3)
# The full-batch regime (DESIGN.md section 5; issue 13): Adam lr 1e-3 / wd 1e-5, the whole training set as
# one batch (batch_size 0), 200 epochs, no early stopping (no inner validation: the last epoch is kept),
# symmetric multi-positive SupCon (q->t and t->q) at τ 0.1.
_FULLBATCH_TRAIN = dict(_TRAIN, epochs=200, lr=1e-3, batch_size=0, patience=0, val_fraction=0.0, temperature=0.1, target_weight=0.0, symmetric_weight=1.0)
# The composed network in the full-batch regime (issue 13), the composers' lr multiplier and gate opening kept:
# fold 0 79.2 / mAP 83.6 -> 82.0 / 86.8, but over 5 folds Acc@1 81.3 ± 2.0 -> 79.8 ± 6.4 (mAP 83.7 -> 86.0)
# and partial-findings queries collapse on three folds (bench/results/derm7pt_cv_composed_fullbatch.md):
# not the default.
_COMPOSED_FULLBATCH_TRAIN = dict(_FULLBATCH_TRAIN, composer_lr_mult=3.0, gate_init=0.3)
# ``model``: "late_fusion" (:class:`LateFusionMLP`) or a mode of :class:`CachedComposedModel`
# Text as clinicians write it (issue 13). The findings gate (text_gate="findings", ComposedRetrievalNet)
# composes a query with its text only when the text names a 7-point finding in training words; any other
# text (age / sex / site only, findings in words never trained on) gives the image-only query, and a text
# naming n < 5 findings is blended with it, w = n / 5 (full_text_findings; ablation composed_plain_gate). Training
# stays on the template texts: text augmentation (augment_report re-wordings, ``text=dict(variants=n)``)
# cost template accuracy on fold 0 in every mix tried (bench/results/derm7pt_composed_sweep.json).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "composed": dict(model="composed", train=dict(_COMPOSED_TRAIN), net=dict(text_gate="findings"), ensemble=1),
    "composed_fullbatch": dict(model="composed", train=dict(_COMPOSED_FULLBATCH_TRAIN), net=dict(text_gate="findings"), ensemble=1),
    "image_only": dict(model="image_only", train=dict(_COMPOSED_TRAIN), net=dict(), ensemble=1),
    "text_only": dict(model="text_only", train=dict(_COMPOSED_TRAIN), net=dict(), ensemble=1),
    # text dropout (issue 13, "text never hurts"): a third of the training queries have no text, so the
    # network also learns to rank with the image alone
    "composed_textdrop": dict(model="composed", train=dict(_COMPOSED_TRAIN), net=dict(), ensemble=1, text=dict(dropout=0.3)),
    "late_fusion": dict(model="late_fusion", train=dict(_TRAIN), net=dict(hidden=512, out_dim=256, dropout=0.2), ensemble=1),
    "late_fusion_fullbatch": dict(model="late_fusion", train=dict(_FULLBATCH_TRAIN), net=dict(hidden=512, out_dim=256, dropout=0.1, batch_norm=True), ensemble=1),
}


_OVERRIDES: dict[str, dict[str, Any]] = {}


@contextlib.contextmanager
def override_options(name: str, **options: Any) -> Iterator[None]:
    """Temporarily change a method's options (``train={...}``, ``net={...}``, ``ensemble=n``): the ablations."""
    previous = _OVERRIDES.get(name)
    _OVERRIDES[name] = options
    try:
        yield
    finally:
        if previous is None:
            _OVERRIDES.pop(name, None)
        else:
            _OVERRIDES[name] = previous


def method_options(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """:data:`METHOD_DEFAULTS` for ``name`` updated by ``config["method_options"][name]`` and
    :func:`override_options` (``train``/``net`` dicts merged)."""
    opts = copy.deepcopy(METHOD_DEFAULTS[name])
    user = {**((config.get("method_options") or {}).get(name, {})), **_OVERRIDES.get(name, {})}
    for key, value in user.items():
        if isinstance(value, dict) and isinstance(opts.get(key), dict):
            opts[key].update(value)
        else:
            opts[key] = value
    return opts


@functools.lru_cache(maxsize=4)
def base_net(image_size: int = 260):
    """Encoder donor for the heads: the composed network's architecture with random encoders (the cache
    replaces them; nothing is loaded from disk). One per image size (the heads copy nothing from it
    but the architecture; :func:`~monai_cir.engine.new_head_net` builds a fresh head)."""
    from ..networks import create_model

    return create_model(pretrained=False, image_size=int(image_size)).eval()


def train_method(name: str, cache: Any, train_idx: np.ndarray, config: dict[str, Any], seed: int, state: RunState | None = None):
    """Train method ``name`` on ``train_idx`` of ``cache``; returns a list of models (one per ensemble seed).

    ``state`` (the evaluation run's :class:`~monai_cir.evaluation.protocol.RunState`) memoises the models
    (methods that share a model train it once) and collects the training log."""
    opts = method_options(name, config)
    state = state if state is not None else RunState()
    key = ("trained", name, id(cache), tuple(int(i) for i in train_idx[:5]), len(train_idx), seed, repr(opts))
    if key in state.memo:
        return state.memo[key]
    models = []
    for member in range(int(opts.get("ensemble", 1))):
        s = seed + 1000 * member
        train_cfg = TrainConfig.from_dict({**opts["train"], "seed": s})
        if opts["model"] == "late_fusion":
            torch.manual_seed(s)
            image_dim = sum(int(m.shape[1]) for m in cache.maps)
            model = LateFusionMLP(image_dim, int(cache.sentence.shape[1]), **opts["net"])
            result = train_head(model, cache, train_idx, train_cfg)
        else:
            text = dict(opts.get("text") or {})
            augmentation = None
            if text.get("dropout") or text.get("variants"):
                gate = opts["net"].get("text_gate", "findings")
                bank = text_bank(cache, int(text.get("variants", 0)), seed=0, text_gate=gate, mix=text.get("mix")) if text.get("variants") else None
                augmentation = dict(dropout=float(text.get("dropout", 0.0)), bank=bank)
            model, result = fit_composed(base_net(int(config.get("image_size", 260))), cache, train_idx, opts["model"], train_cfg, seed=s,
                                         text_augmentation=augmentation, **opts["net"])
        # no inner validation (the full-batch regime): the last epoch is kept and there is no score (None, not -inf:
        # the results JSON stays standard JSON)
        validated = math.isfinite(result.best_score)
        logger.info("%s seed %d: %s, %.1f s", name, s, f"best epoch {result.best_epoch} of {result.epochs_run}, val score {result.best_score:.3f}"
                    if validated else f"{result.epochs_run} epochs, no inner validation (the last epoch kept)", result.seconds)
        state.train_log.append(dict(method=name, seed=s, n_train=len(train_idx), best_epoch=result.best_epoch, epochs_run=result.epochs_run,
                                    val_score=round(result.best_score, 4) if validated else None, seconds=round(result.seconds, 1)))
        models.append(model)
    state.memo[key] = models
    return models


def text_bank(cache: Any, variants: int, seed: int = 0, text_gate: str = "findings", net: Any = None,
              mix: dict[str, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``variants`` training re-wordings of every cached case's report
    (:func:`monai_cir.data.report.augment_report`), encoded with the cache's text encoder:
    ``(tokens (V, N, n, d_T) fp16, mask (V, N, n))`` for :meth:`CachedComposedModel.set_text_augmentation`.

    With ``text_gate="findings"`` a re-wording the gate would not compose (age / sex only) is trained as
    what the query will be: no text (:func:`monai_cir.data.report.recognised_findings`). ``net``: the
    network that built the cache (default: the offline encoders the cache's fingerprint names); ``mix``:
    :func:`~monai_cir.data.report.augment_report`'s kinds of text (default its ``AUGMENT_MIX``)."""
    from ..data.report import augment_report, case_generator, recognised_findings
    from ..evaluation.text_forms import encode_texts

    encoded = []
    for v in range(variants):
        texts = [augment_report(r, case_generator(r, seed + 1000 * (v + 1)), mix) for r in cache.records]
        if text_gate == "findings":
            texts = [t if recognised_findings(t) else "" for t in texts]
        encoded.append(encode_texts(cache, texts, net)[:2])
    n = max(t.shape[1] for t, _ in encoded)
    tokens = torch.stack([torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[1])) for t, _ in encoded])
    mask = torch.stack([torch.nn.functional.pad(m, (0, n - m.shape[1])) for _, m in encoded])
    return tokens, mask


def _concat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts, dim=1) / len(parts) ** 0.5


def _fold(name: str, ctx: FoldContext, **query_options: Any):
    opts = method_options(name, ctx.config)
    tta = opts["train"].get("tta", True)
    models = train_method(name, ctx.cache, ctx.train_indices, ctx.config, ctx.seed, ctx.state)
    q = _concat([m.encode_queries(ctx.query_cache, ctx.query_indices, tta=tta, **query_options) for m in models])
    t = _concat([m.encode_targets(ctx.cache, ctx.database_indices, tta=tta) for m in models])
    return q, t


def _cross_site(name: str, ctx: CrossSiteContext):
    """Target tower trained on all of Derm7pt, applied to the other collection's images."""
    opts = method_options(name, ctx.config)
    models = train_method(name, ctx.source, ctx.train_indices, ctx.config, ctx.seed, ctx.state)
    idx = np.arange(len(ctx.target))
    return _concat([m.encode_targets(ctx.target, idx, tta=opts["train"].get("tta", True)) for m in models])


def _cross_site_query(name: str, ctx: CrossSiteContext, **query_options: Any) -> torch.Tensor:
    """Cross-site similarity of composed queries (image + the collection's text, e.g. age and sex) to
    target embeddings, with the ``name`` model trained on all of Derm7pt: ``Q @ T.T`` (N, N)."""
    opts = method_options(name, ctx.config)
    models = train_method(name, ctx.source, ctx.train_indices, ctx.config, ctx.seed, ctx.state)
    idx = np.arange(len(ctx.target))
    tta = opts["train"].get("tta", True)
    q = _concat([m.encode_queries(ctx.query_target, idx, tta=tta, **query_options) for m in models])
    t = _concat([m.encode_targets(ctx.target, idx, tta=tta) for m in models])
    return q @ t.T


@register_method("composed", label="composed (image + text, findings-weighted gate)", cross_site=lambda ctx: _cross_site("composed", ctx))
def composed(ctx: FoldContext):
    """The paper's network trained on the cache: query = image + text (Eq. 5), target = image, S of Eq. 9."""
    return _fold("composed", ctx)


@register_method(
    "composed_text_query",
    label="composed, cross-site with text queries",
    cross_site=lambda ctx: {"similarity": _cross_site_query("composed", ctx)},
)
def composed_text_query(ctx: FoldContext):
    """Same trained model as ``composed`` (shared per fold); on the cross-site collection the query is
    image + that collection's text (age, sex) instead of the image alone."""
    return _fold("composed", ctx)


@register_method(
    "composed_image_query",
    label="composed network, image-only query (same model, empty text)",
    cross_site=lambda ctx: _cross_site("composed", ctx),
)
def composed_image_query(ctx: FoldContext):
    """The ``composed`` model (shared per fold) queried with the image alone (empty text): the reference
    of "text never hurts" (every text form must rank at least as well)."""
    return _fold("composed", dataclasses.replace(ctx, query_cache=text_form_cache(ctx.query_cache, "empty")))


@register_method("composed_fullbatch", label="composed (image + text, findings gate), full-batch regime",
                 cross_site=lambda ctx: _cross_site("composed_fullbatch", ctx))
def composed_fullbatch(ctx: FoldContext):
    """The composed network trained like ``late_fusion_fullbatch`` (whole training set as one batch, 200
    epochs, last epoch kept, symmetric SupCon τ 0.1), composers at 3x the lr with their gates opened."""
    return _fold("composed_fullbatch", ctx)


@register_method("composed_ungated", label="composed, every text composed (same model, findings gate off: the paper)",
                 cross_site=lambda ctx: {"similarity": _cross_site_query("composed", ctx, text_gate="none")})
def composed_ungated(ctx: FoldContext):
    """The ``composed`` model (shared per fold) with its findings gate off at query time: what the gate
    buys on texts without recognised findings (the ablation of "text never hurts")."""
    return _fold("composed", ctx, text_gate="none")


@register_method("composed_plain_gate", label="composed, plain findings gate (same model, any finding composes fully)",
                 cross_site=lambda ctx: {"similarity": _cross_site_query("composed", ctx, full_text_findings=1)})
def composed_plain_gate(ctx: FoldContext):
    """The ``composed`` model (shared per fold) with ``full_text_findings=1`` at query time: a text naming one
    finding composes as fully as one naming seven (the previous release). The ablation of the weighting."""
    return _fold("composed", ctx, full_text_findings=1)


def composed_late_fusion_models(cache: Any, train_idx: np.ndarray, config: dict[str, Any], seed: int, state: RunState | None = None,
                                 share: float = RELEASE_LATE_FUSION_SHARE) -> list[CachedComposedModel]:
    """The release network for one split: the fold's ``composed`` head and ``late_fusion_fullbatch`` MLP (both
    memoised in ``state``, shared with those methods) joined by :func:`~monai_cir.engine.attach_late_fusion`,
    ``S = (1 - share) S_Eq9 + share S_late_fusion``."""
    composed_models = train_method("composed", cache, train_idx, config, seed, state)
    late_fusion_models = train_method("late_fusion_fullbatch", cache, train_idx, config, seed, state)
    return [CachedComposedModel(attach_late_fusion(c.net, lf, share)) for c, lf in zip(composed_models, late_fusion_models)]


def _composed_late_fusion(ctx: FoldContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The release network's ``Q`` and ``T``: ``[√(1-a) Q_Eq9, √a (w q_lf + (1-w) t_lf)]``, ``T`` alike, so
    ``<Q, T> = (1 - a) S_composed + a S_late_fusion``, one inner product; the late-fusion query is weighted
    by the composed network's text weight ``w`` (its image tower stands in for a query without usable text)."""
    tta = method_options("composed", ctx.config)["train"].get("tta", True)
    models = composed_late_fusion_models(ctx.cache, ctx.train_indices, ctx.config, ctx.seed, ctx.state)
    q = _concat([m.encode_queries(ctx.query_cache, ctx.query_indices, tta=tta) for m in models])
    t = _concat([m.encode_targets(ctx.cache, ctx.database_indices, tta=tta) for m in models])
    return q, t


def _composed_late_fusion_cross_site(ctx: CrossSiteContext) -> torch.Tensor:
    tta = method_options("composed", ctx.config)["train"].get("tta", True)
    models = composed_late_fusion_models(ctx.source, ctx.train_indices, ctx.config, ctx.seed, ctx.state)
    return _concat([m.encode_targets(ctx.target, np.arange(len(ctx.target)), tta=tta) for m in models])


@register_method("composed_late_fusion", label="release network: composed + full-batch late fusion (S = (S_composed + S_lf) / 2)",
                 cross_site=_composed_late_fusion_cross_site)
def composed_late_fusion(ctx: FoldContext):
    """The release network (``bundle/configs/train.yaml``): the fold's ``composed`` head and
    ``late_fusion_fullbatch`` MLP (shared with those methods) as one :class:`ComposedRetrievalNet` with
    ``late_fusion_share`` 0.5: the score is the mean of the two scores."""
    return _composed_late_fusion(ctx)


def _release_prior_net(cache: Any, train_idx: np.ndarray, config: dict[str, Any], seed: int, state: RunState,
                       context_free: bool = True) -> Any:
    """The release network for one split with its diagnosis prior fitted on the same training cases (memoised);
    ``context_free`` False: its partial-text probe fitted on texts with context only (0.8's)."""
    from .diagnosis_prior import fit_diagnosis_prior

    key = ("release_prior", id(cache), tuple(int(i) for i in train_idx[:5]), len(train_idx), seed, context_free)
    if key not in state.memo:
        # the probes read the cache only (not the head): an ensemble's first member carries them
        models = composed_late_fusion_models(cache, train_idx, config, seed, state)
        net, record = fit_diagnosis_prior(models[0].net, cache, train_idx, seed=seed, text_net=state.net, context_free=context_free)
        method = "composed_late_fusion_prior" if context_free else "composed_late_fusion_prior_context_texts"
        state.train_log.append(dict(method=method, seed=seed, n_train=len(train_idx), **record))
        state.memo[key] = net
    return state.memo[key]


def _composed_late_fusion_prior(ctx: FoldContext, context_free: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """The release network's score with the diagnosis prior, ``K = S + λ w log p(y_c | q)`` (Q, N) float64 (the
    prior fitted on the fold's training cases; :mod:`monai_cir.prior_ranking` ranks a case index by the same), and
    which queries the prior ordered (Q,) bool (a text naming no finding: ``K = S``)."""
    from .diagnosis_prior import prior_ranking_scores

    q, t = _composed_late_fusion(ctx)
    net = _release_prior_net(ctx.cache, ctx.train_indices, ctx.config, ctx.seed, ctx.state, context_free)
    scores, terms = prior_ranking_scores(net, q @ t.T, ctx.query_cache, ctx.query_indices, ctx.cache, ctx.database_indices)
    return scores, prior_acted(terms)


def _composed_late_fusion_prior_cross_site(ctx: CrossSiteContext, slot: DifferentialSlot | None = None) -> dict[str, torch.Tensor]:
    """Leave-one-out on the other collection with its own texts (age, sex: no finding, so ``w = 0``), the network and
    its prior from all of Derm7pt: ``K`` (and, with ``slot``, ranked as the app ranks it)."""
    from .diagnosis_prior import prior_ranking_scores

    idx = np.arange(len(ctx.target))
    models = composed_late_fusion_models(ctx.source, ctx.train_indices, ctx.config, ctx.seed, ctx.state)
    tta = method_options("composed", ctx.config)["train"].get("tta", True)
    s = _concat([m.encode_queries(ctx.query_target, idx, tta=tta) for m in models]) @ _concat([m.encode_targets(ctx.target, idx, tta=tta) for m in models]).T
    net = _release_prior_net(ctx.source, ctx.train_indices, ctx.config, ctx.seed, ctx.state)
    scores, terms = prior_ranking_scores(net, s, ctx.query_target, idx, ctx.target, idx)
    if slot is not None:
        scores, opened = differential_ranking(scores, ctx.target.labels.numpy(), slot, leave_one_out=True, prior_acted=prior_acted(terms))
        ctx.state.train_log.append(dict(method="composed_late_fusion_prior_differential", cross_site=len(opened), margin=round(slot.margin, 6), opened=int(opened.sum())))
    return {"similarity": scores}


@register_method("composed_late_fusion_prior", label="release network + diagnosis prior (S + 10 w log p(y_c | q), findings-gated probes)",
                 cross_site=_composed_late_fusion_prior_cross_site, fits_prior=True)
def composed_late_fusion_prior(ctx: FoldContext):
    """The release network ranked with the diagnosis prior (:class:`monai_cir.networks.DiagnosisPrior`): ``S`` plus
    ``λ w log p(y_c | q)``, ``p`` two logistic probes on the late-fusion branch's inputs (full / partial texts), ``w``
    the findings gate's weight, fitted on the fold's training cases only."""
    return _composed_late_fusion_prior(ctx)[0]


@register_method("composed_late_fusion_prior_context_texts",
                 label="the same, its partial-text probe fitted on texts with context only (0.8's prior; ablation)", fits_prior=True)
def composed_late_fusion_prior_context_texts(ctx: FoldContext):
    """``composed_late_fusion_prior`` with 0.8's partial-text probe: fitted on template and partial reports only, never
    on findings written without context (the ablation of what 0.9 added)."""
    return _composed_late_fusion_prior(ctx, context_free=False)[0]


def _release_margins(cache: Any, config: dict[str, Any], state: RunState, fold: int, prior: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(margins, positions)`` (:func:`monai_cir.differential.query_margins`) of fold ``fold``'s held-out
    queries (template texts) under the release network trained without that fold (memoised in the run);
    ``prior``: in the units of its score with the diagnosis prior."""
    from ..evaluation.protocol import fold_indices

    key = ("release_margins", id(cache), fold, config.get("query_subset"), prior)
    if key not in state.memo:
        fold_of = fold_indices(cache)
        query = np.flatnonzero(fold_of == fold)[: config.get("query_subset") or None]
        ctx = FoldContext(cache, query, np.flatnonzero(fold_of != fold), int(fold), config, int(config.get("seed", 0)) + int(fold), state)
        if prior:  # the held-out template queries: every one names its findings, the prior orders them all
            scores = _composed_late_fusion_prior(ctx)[0]
        else:
            q, t = _composed_late_fusion(ctx)
            scores = q @ t.T
        state.memo[key] = query_margins(scores, ctx.database_labels)
    return state.memo[key]


def _release_slot(cache: Any, config: dict[str, Any], state: RunState, folds: list[int], open_rate: float, prior: bool = False) -> DifferentialSlot:
    """The slot fitted on the held-out queries of ``folds``; ``prior``: its margin in the units of the ranking with the
    diagnosis prior, and ``margin_by_similarity`` (for queries the prior leaves alone) fitted without it."""
    margins, positions = (np.concatenate(parts) for parts in zip(*(_release_margins(cache, config, state, f, prior) for f in folds)))
    margin = fit_margin(margins, positions, open_rate)
    if not prior:
        return DifferentialSlot(margin, open_rate=open_rate, description=f"held-out queries of folds {folds}")
    return DifferentialSlot(margin, open_rate=open_rate, description=f"held-out queries of folds {folds}, ranked with the diagnosis prior",
                            margin_by_similarity=_release_slot(cache, config, state, folds, open_rate).margin)


def release_differential_slot(ctx: FoldContext, open_rate: float = DEFAULT_OPEN_RATE, prior: bool = False) -> DifferentialSlot:
    """The differential slot for held-out fold ``ctx.fold``, its margin fitted on the other folds' held-out
    queries only (each under its own fold's release network; ``prior``: ranked with its diagnosis prior): never on
    the fold it ranks."""
    from ..evaluation.protocol import fold_indices

    folds = sorted(set(int(f) for f in fold_indices(ctx.cache)) - {ctx.fold})
    return _release_slot(ctx.cache, ctx.config, ctx.state, folds, open_rate, prior)


def _all_folds(cache: Any) -> list[int]:
    from ..evaluation.protocol import fold_indices

    return sorted(set(int(f) for f in fold_indices(cache)))


@register_method("composed_late_fusion_prior_differential",
                 label="release network + diagnosis prior as the app ranks: + differential slot (margin from the other folds)",
                 cross_site=lambda ctx: _composed_late_fusion_prior_cross_site(
                     ctx, _release_slot(ctx.source, ctx.config, ctx.state, _all_folds(ctx.source), DEFAULT_OPEN_RATE, prior=True)),
                 fits_prior=True)
def composed_late_fusion_prior_differential(ctx: FoldContext):
    """``composed_late_fusion_prior`` with the app's differential slot, its margin in that score's units fitted on
    the other four folds' held-out queries."""
    slot = release_differential_slot(ctx, prior=True)
    ranking, acted = _composed_late_fusion_prior(ctx)
    scores, opened = differential_ranking(ranking, ctx.database_labels, slot, prior_acted=acted)
    ctx.state.train_log.append(dict(method="composed_late_fusion_prior_differential", fold=ctx.fold, margin=round(slot.margin, 6),
                                    opened=int(opened.sum()), queries=len(opened)))
    return scores


def _composed_late_fusion_differential_cross_site(ctx: CrossSiteContext) -> dict[str, torch.Tensor]:
    """Leave-one-out on the other collection, ranked as the app ranks it with the network trained on all of
    Derm7pt: the slot's margin fitted on all five folds' held-out queries (what the release checkpoint records)."""
    from ..evaluation.protocol import fold_indices

    emb = _composed_late_fusion_cross_site(ctx)
    slot = _release_slot(ctx.source, ctx.config, ctx.state, sorted(set(int(f) for f in fold_indices(ctx.source))), DEFAULT_OPEN_RATE)
    scores, opened = differential_ranking(emb @ emb.T, ctx.target.labels.numpy(), slot, leave_one_out=True)
    ctx.state.train_log.append(dict(method="composed_late_fusion_differential", cross_site=len(opened), margin=round(slot.margin, 6), opened=int(opened.sum())))
    return {"similarity": scores}


@register_method("composed_late_fusion_differential",
                 label="release network as the app ranks: + differential slot (rank 4; margin from the other folds)",
                 cross_site=_composed_late_fusion_differential_cross_site)
def composed_late_fusion_differential(ctx: FoldContext):
    """The release network with the app's differential slot (:mod:`monai_cir.differential`): a query nearly as
    similar to another diagnosis as to its best match's gets that diagnosis's closest case at rank 4. The
    margin is fitted on the other four folds' held-out queries (one query in seven opens the slot there)."""
    q, t = _composed_late_fusion(ctx)
    slot = release_differential_slot(ctx)
    scores, opened = differential_ranking(q @ t.T, ctx.database_labels, slot)
    ctx.state.train_log.append(dict(method="composed_late_fusion_differential", fold=ctx.fold, margin=round(slot.margin, 6),
                                    opened=int(opened.sum()), queries=len(opened)))
    return scores


@register_method("image_only", label="image only (same network, empty text, trained)")
def image_only(ctx: FoldContext):
    """The same network and loss with empty query text (the composer passes the image maps through)."""
    return _fold("image_only", ctx)


@register_method("text_only", label="text only (text on the mean image map, trained)")
def text_only(ctx: FoldContext):
    """The query text composed onto the mean training image map: no information from the query image."""
    return _fold("text_only", ctx)


@register_method("late_fusion", label="late fusion MLP (pooled image + sentence vs image MLP)", cross_site=lambda ctx: _cross_site("late_fusion", ctx))
def late_fusion(ctx: FoldContext):
    """Reference baseline: 2-layer MLP on [pooled frozen L/M/H; sentence embedding] vs an image MLP, SupCon."""
    return _fold("late_fusion", ctx)


@register_method(
    "late_fusion_fullbatch",
    label="late fusion MLP, full-batch regime (200 epochs, symmetric SupCon)",
    cross_site=lambda ctx: _cross_site("late_fusion_fullbatch", ctx),
)
def late_fusion_fullbatch(ctx: FoldContext):
    """Late fusion with BatchNorm, trained on the whole training set as one batch for 200 epochs (no early
    stopping), symmetric SupCon at τ 0.1, Adam lr 1e-3 (DESIGN.md section 5)."""
    return _fold("late_fusion_fullbatch", ctx)


@register_method("composed_textdrop", label="composed, trained with text dropout 0.3 (image + text)",
                 cross_site=lambda ctx: _cross_site("composed_textdrop", ctx))
def composed_textdrop(ctx: FoldContext):
    """The composed network trained with 30% of the training queries stripped of their text."""
    return _fold("composed_textdrop", ctx)


@register_method("composed_textdrop_image_query", label="composed with text dropout, image-only query (same model)")
def composed_textdrop_image_query(ctx: FoldContext):
    """The ``composed_textdrop`` model (shared per fold) queried with the image alone."""
    return _fold("composed_textdrop", dataclasses.replace(ctx, query_cache=text_form_cache(ctx.query_cache, "empty")))


@register_method("composed_textdrop_text_query", label="composed with text dropout, cross-site with text queries",
                 cross_site=lambda ctx: {"similarity": _cross_site_query("composed_textdrop", ctx)})
def composed_textdrop_text_query(ctx: FoldContext):
    """Same model as ``composed_textdrop``; on the cross-site collection the query is image + its text."""
    return _fold("composed_textdrop", ctx)
