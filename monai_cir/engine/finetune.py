"""End-to-end fine-tuning (the GPU switch): images and texts in, encoders unfrozen.

The CPU default trains the head on a frozen-feature cache (DESIGN.md section 3). Fine-tuning runs the
same loss and the same ``SupervisedTrainer`` wiring on :class:`EndToEndModel`: a batch is
``{"image", "target_image", "text", "label"}`` from ``monai_cir.data.records_dataset`` (black-border
removal + resize) with :func:`~monai_cir.engine.data.dermoscopy_augmentation` (two independently
augmented views); the query is ``net.encode_query(image, text)``, the target ``net.encode_target(target_image)``.
Under ``torch.distributed`` the model is wrapped in ``DistributedDataParallel`` *after* the encoders are
unfrozen (DDP only synchronises the parameters that require a gradient when it wraps), and each rank
reads its own shard (``DistributedSampler``) or its own class-balanced batches. The result saves as a
whole network (``monai-cir-net/1``, see :mod:`monai_cir.networks.checkpoint`). Slow on CPU (use a
GPU); the test suite runs a few steps of it on a tiny network.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..evaluation.registry import register_method
from ..losses import ComposedSupConLoss
from ..networks import ComposedRetrievalNet
from .data import (
    TARGET_IMAGE_KEY,
    ClassBalancedBatchSampler,
    augmented_loader,
    dermoscopy_augmentation,
    prepare_batch,
    statistics_sample,
)
from .trainer import TrainConfig, TrainResult

__all__ = ["EndToEndModel", "loader_workers", "unfreeze_encoders", "finetune", "fit_input_statistics_from_records", "embed_records", "finetuned_composed_net", "FINETUNED_DEFAULTS",
           "composed_finetuned_late_fusion_prior"]


def loader_workers(device: str | torch.device) -> int:
    """Decoding processes for image loaders on ``device``: 0 on CPU, up to 8 (one core left) beside a GPU."""
    if torch.device(device).type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def unfreeze_encoders(net: ComposedRetrievalNet) -> ComposedRetrievalNet:
    """Make the encoders trainable (and let BatchNorm/dropout follow ``train()``)."""
    net.freeze_encoders = False
    for p in net.encoder_parameters():
        p.requires_grad_(True)
    return net


class EndToEndModel(torch.nn.Module):
    """``forward(batch) -> (Q, T)`` from raw images and texts (query: image + text; target: the batch's
    ``target_image`` view, else the horizontally flipped image).

    ``frozen_batchnorm``: the image encoder's BatchNorm layers stay in eval mode while the rest trains
    (their affine weights still learn; their running statistics stay the pretrained ones), so the library,
    embedded later without augmentation, is normalised as in pretraining rather than by statistics of
    small colour-jittered batches. ``train()`` (which the trainer calls every iteration) keeps them so."""

    def __init__(self, net: ComposedRetrievalNet, mode: str = "composed", frozen_batchnorm: bool = True) -> None:
        super().__init__()
        self.net = net
        self.mode = mode
        self.frozen_batchnorm = frozen_batchnorm
        # found once: train() runs every iteration, and the encoder's layers do not change
        self._batchnorms = [m for m in net.image_encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> "EndToEndModel":
        super().train(mode)
        if mode and self.frozen_batchnorm:
            for module in self._batchnorms:
                module.eval()
        return self

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch["image"]
        texts = [t if self.mode != "image_only" else "" for t in batch["text"]]
        q = self.net.encode_query(images, texts)
        t = self.net.encode_target(batch[TARGET_IMAGE_KEY] if TARGET_IMAGE_KEY in batch else images.flip(-1))
        return q, t


@torch.no_grad()
def fit_input_statistics_from_records(net: ComposedRetrievalNet, records: Sequence[Any], batch_size: int = 32) -> None:
    """Fit ``net``'s input standardisation on its (current) encoders' outputs for ``records``."""
    from ..data.collections import records_dataset

    if len(records) < 2:
        raise ValueError(f"need at least 2 training records to fit the input statistics, got {len(records)}")
    maps: list[list[torch.Tensor]] = [[] for _ in net.level_indices]
    tokens, masks = [], []
    was_training = net.training
    net.eval()
    for batch in DataLoader(records_dataset(list(records), net.image_size), batch_size=batch_size):
        for store, m in zip(maps, net.image_features(batch["image"])):
            store.append(m.cpu())
        t, k = net.text_features(list(batch["text"]))
        tokens.append(t.cpu())
        masks.append(k.cpu())
    width = max(t.shape[1] for t in tokens)
    tokens = [torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1])) for t in tokens]
    masks = [torch.nn.functional.pad(k, (0, width - k.shape[1])) for k in masks]
    net.fit_input_statistics([torch.cat(m) for m in maps], torch.cat(tokens), torch.cat(masks))
    net.train(was_training)


def finetune(
    net: ComposedRetrievalNet,
    records: Sequence[Any],
    train_idx: Sequence[int],
    config: TrainConfig | dict[str, Any] | None = None,
    encoder_lr_scale: float = 0.1,
    device: str | torch.device | None = None,
    max_steps: int | None = None,
    augment: bool = True,
    save_fn: Callable[..., Any] | None = None,
    fit_statistics: bool = True,
    num_workers: int | None = None,
    frozen_batchnorm: bool = True,
) -> TrainResult:
    """Fine-tune ``net`` end to end on ``records[train_idx]`` (SupCon, batches per ``config.balanced``).

    The encoders get ``lr * encoder_lr_scale``. ``max_steps`` caps the iterations per epoch (tests).
    ``augment``: :func:`~monai_cir.engine.data.dermoscopy_augmentation` (else query = image, target =
    its mirror). Under an initialised ``torch.distributed`` process group the model runs as
    ``DistributedDataParallel`` (wrapped after unfreezing) and ``save_fn`` (e.g.
    :func:`monai_cir.engine.bundle.checkpoint_saver`) runs on rank 0 only, at the end, with ``config.checkpoint``.
    With ``fit_statistics`` the heads' input standardisation is fitted first on the pretrained encoders'
    outputs for up to 256 training cases (off when ``net``'s head is already trained). No inner validation here: the epoch count is the config's (pick it from a cached-head run).
    ``num_workers``: image decoding / augmentation processes; default :func:`loader_workers` (none on CPU,
    where they would take the cores the encoders train on; several beside a GPU, which decoding in one
    process would leave waiting).
    ``frozen_batchnorm``: see :class:`EndToEndModel`.
    """
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer
    from monai.handlers import from_engine
    from monai.utils import set_determinism
    from torch.utils.data import DistributedSampler, Subset

    from ..config import resolve_device
    from ..data.collections import records_dataset

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    set_determinism(seed=cfg.seed)
    device = resolve_device(device)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    net.to(device)
    workers = loader_workers(device) if num_workers is None else int(num_workers)
    if fit_statistics:
        fit_input_statistics_from_records(net, [records[int(i)] for i in statistics_sample(train_idx, 256, cfg.seed)])
    unfreeze_encoders(net)
    model: torch.nn.Module = EndToEndModel(net, frozen_batchnorm=frozen_batchnorm).to(device)
    if distributed:  # after unfreezing: DDP registers the parameters that require a gradient now
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=True)
    dataset = records_dataset(records, net.image_size, transform=dermoscopy_augmentation(net.image_size) if augment else None)
    if distributed and not cfg.balanced:
        train_set = Subset(dataset, list(map(int, train_idx)))
        loader = augmented_loader(train_set, seed=cfg.seed, num_workers=workers, batch_size=cfg.batch_size, sampler=DistributedSampler(train_set, shuffle=True, seed=cfg.seed))
    else:  # class-balanced or natural-frequency batches; under DDP each rank draws its own (seed + rank)
        labels = np.asarray([r.label for r in records])
        sampler = ClassBalancedBatchSampler(labels, train_idx, cfg.batch_size, seed=cfg.seed + rank, balanced=cfg.balanced)
        loader = augmented_loader(dataset, seed=cfg.seed, num_workers=workers, batch_sampler=sampler)
    optimizer = torch.optim.Adam(
        [{"params": net.head_parameters()}, {"params": list(net.encoder_parameters()), "lr": cfg.lr * encoder_lr_scale}], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    trainer = SupervisedTrainer(
        device=device, max_epochs=cfg.epochs, train_data_loader=loader, network=model, optimizer=optimizer,
        loss_function=ComposedSupConLoss(cfg.temperature, cfg.target_weight, cfg.symmetric_weight),
        epoch_length=min(len(loader), max_steps) if max_steps is not None else None,
        prepare_batch=prepare_batch, decollate=False, amp=device.type == "cuda",
    )
    if cfg.progress and rank == 0:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False).attach(trainer, output_transform=from_engine(["loss"], first=True))
    history: list[dict[str, float]] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: history.append({"epoch": e.state.epoch, "loss": float(e.state.output["loss"].detach())}))
    start = time.perf_counter()
    trainer.run()
    net.eval()
    if save_fn is not None and cfg.checkpoint and rank == 0:
        save_fn(cfg.checkpoint, epoch=trainer.state.epoch)
    return TrainResult(trainer.state.epoch, float("nan"), trainer.state.epoch, time.perf_counter() - start, history)


@torch.no_grad()
def embed_records(net: ComposedRetrievalNet, records: Sequence[Any], idx: Sequence[int], queries: bool, tta: bool = True, batch_size: int = 32,
                  num_workers: int | None = None, progress: bool = True) -> torch.Tensor:
    """Embeddings of ``records[idx]`` from their images: composed queries (image + the record's text) when
    ``queries``, else targets; ``tta`` averages each image with its mirror (as the cached methods do). A progress bar:
    after fine-tuning, a fold's database takes minutes on a CPU."""
    from ..data.collections import records_dataset
    from ..progress import progress_bar

    net.eval()
    out = []
    workers = loader_workers(net.device) if num_workers is None else num_workers
    loader = DataLoader(records_dataset([records[i] for i in idx], net.image_size), batch_size=batch_size, num_workers=workers)
    what = f"embedding {len(idx)} {'queries' if queries else 'library images'}"
    for batch in progress_bar(loader, desc=what, unit="batch", enabled=progress, leave=False):
        views = [batch["image"]] + ([batch["image"].flip(-1)] if tta else [])
        encode = (lambda x: net.encode_query(x, list(batch["text"]))) if queries else net.encode_target
        out.append((sum(encode(v) for v in views) / len(views)).cpu())
    return torch.cat(out)


# composed_finetuned: the `composed` head trained on the cache (shared with that method per fold), then
# `epochs` of end-to-end fine-tuning with dermoscopy augmentation, encoders at encoder_lr_scale x lr.
# Six epochs with BatchNorm's statistics frozen: on fold 0 (bench/results/derm7pt_cv_composed_finetuned_6ep*.md)
# two epochs lost 14 mAP points, six won half back, and frozen statistics kept all of it (84.4 against 83.6
# for the head alone) while Acc@1 rose 79.2 -> 82.6; the 5-fold file of two epochs predates both defaults.
FINETUNED_DEFAULTS: dict[str, Any] = dict(epochs=6, batch_size=16, lr=1e-4, weight_decay=1e-5, temperature=0.2, target_weight=1.0, encoder_lr_scale=0.1,
                                          frozen_batchnorm=True, progress=True)


def _finetuned_options(ctx: Any) -> dict[str, Any]:
    return {**FINETUNED_DEFAULTS, **((ctx.config.get("method_options") or {}).get("composed_finetuned", {}))}


def _finetuned_key(ctx: Any, *part: str) -> tuple:
    """The memo key of the fold's fine-tuned network (and, with ``part``, of what is derived from it alone)."""
    return ("finetuned", id(ctx.cache), tuple(int(i) for i in ctx.train_indices[:5]), len(ctx.train_indices), ctx.seed, repr(sorted(_finetuned_options(ctx).items())), *part)


def finetuned_composed_net(ctx: Any) -> ComposedRetrievalNet:
    """The fold's ``composed`` head (trained on the cache, shared with that method) fine-tuned end to end on the
    fold's training images with :data:`FINETUNED_DEFAULTS` updated by ``method_options["composed_finetuned"]``;
    memoised in ``ctx.state`` (``composed_finetuned`` and ``composed_finetuned_late_fusion`` share it)."""
    from ..networks import create_model
    from . import NET_KEYS
    from .cv_methods import train_method

    opts = _finetuned_options(ctx)
    key = _finetuned_key(ctx)
    if key in ctx.state.memo:
        return ctx.state.memo[key]
    head = train_method("composed", ctx.cache, ctx.train_indices, ctx.config, ctx.seed, ctx.state)[0].net
    net = create_model(pretrained=True, image_size=head.image_size, **{k: head.config[k] for k in NET_KEYS})
    net.load_head_state_dict(head.head_state_dict())  # the cache's encoders are these pretrained ones
    encoder_lr_scale = opts.pop("encoder_lr_scale")
    num_workers = opts.pop("num_workers", None)
    frozen_batchnorm = bool(opts.pop("frozen_batchnorm"))
    result = finetune(net, ctx.cache.records, ctx.train_indices, dict(opts, seed=ctx.seed), encoder_lr_scale=encoder_lr_scale, fit_statistics=False, num_workers=num_workers, frozen_batchnorm=frozen_batchnorm)
    ctx.state.train_log.append(dict(method="composed_finetuned", seed=ctx.seed, n_train=len(ctx.train_indices), epochs_run=result.epochs_run, seconds=round(result.seconds, 1)))
    ctx.state.memo[key] = net
    return net


def _embed_fold(net: ComposedRetrievalNet, ctx: Any, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, T)`` of the fold from the images: queries with the query collection's texts (a text form's, when
    the evaluation asks for one), the database as images alone. The database does not depend on the query
    texts, so it is embedded once per fold and method (``evaluate --text-forms`` calls a method once per form:
    each form then costs its queries alone)."""
    key = _finetuned_key(ctx, method, "database", repr(tuple(int(i) for i in ctx.database_indices)))
    if key not in ctx.state.memo:
        ctx.state.memo[key] = embed_records(net, ctx.cache.records, ctx.database_indices, queries=False)
    return embed_records(net, ctx.query_cache.records, ctx.query_indices, queries=True), ctx.state.memo[key]


@register_method("composed_finetuned", label="composed, fine-tuned end to end (images, augmentation)")
def composed_finetuned(ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``composed`` head trained on the cache, then fine-tuned end to end with its encoders on the fold's
    training images (dermoscopy augmentation); queries and database embedded from the images."""
    return _embed_fold(finetuned_composed_net(ctx), ctx, "composed_finetuned")


@register_method("composed_finetuned_late_fusion", label="fine-tuned composed + full-batch late fusion on the fine-tuned features (S = (S_composed + S_lf) / 2)")
def composed_finetuned_late_fusion(ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The release recipe (``composed_late_fusion``) on fine-tuned encoders: the fold's ``composed_finetuned``
    network, a ``late_fusion_fullbatch`` MLP trained on that network's own features of the fold's training
    cases (pooled L / M / H maps and sentence embeddings, computed once, in memory), both joined by
    :func:`~monai_cir.engine.attach_late_fusion` into one network, ``S = (S_Eq9 + S_late_fusion) / 2``;
    queries and database embedded from the images."""

    return _embed_fold(_finetuned_release(ctx, with_prior=False), ctx, "composed_finetuned_late_fusion")


def _finetuned_release(ctx: Any, with_prior: bool) -> ComposedRetrievalNet:
    """The fold's fine-tuned release network (memoised): ``composed_finetuned`` joined with a full-batch late-fusion
    branch trained on its own features; ``with_prior``: also the diagnosis prior fitted on those features of the
    fold's training cases (the release's third stage on fine-tuned encoders)."""
    from ..data.feature_cache import encode_collection
    from ..evaluation.protocol import RunState
    from . import attach_late_fusion
    from .cv_methods import train_method
    from .diagnosis_prior import fit_diagnosis_prior

    key = _finetuned_key(ctx, "late_fusion", "prior" if with_prior else "")
    if key in ctx.state.memo:  # another text form of the same fold: trained already
        return ctx.state.memo[key]
    net = finetuned_composed_net(ctx)
    features = encode_collection(net, ctx.cache.records, net.image_size, collection=f"{getattr(ctx.cache, 'collection', '') or 'collection'} (fine-tuned encoders)", progress=False)
    # a state of its own: the fine-tuned features live for this call only, so no memo may outlive them
    own = RunState()
    plain_key = _finetuned_key(ctx, "late_fusion", "")
    if plain_key not in ctx.state.memo:
        branch = train_method("late_fusion_fullbatch", features, ctx.train_indices, ctx.config, ctx.seed, own)[0]
        ctx.state.train_log.extend(dict(entry, method="composed_finetuned_late_fusion (late fusion on fine-tuned features)") for entry in own.train_log)
        ctx.state.memo[plain_key] = attach_late_fusion(net, branch).to(net.device).eval()
    combined = ctx.state.memo[plain_key]
    if with_prior:
        prior_net, record = fit_diagnosis_prior(combined, features, ctx.train_indices, seed=ctx.seed, text_net=combined)
        ctx.state.train_log.append(dict(method="composed_finetuned_late_fusion_prior", seed=ctx.seed, n_train=len(ctx.train_indices), **record))
        combined = ctx.state.memo[key] = prior_net.to(net.device).eval()
    return combined


@register_method("composed_finetuned_late_fusion_prior",
                 label="fine-tuned release network + diagnosis prior fitted on its features (S + 10 w log p(y_c | q))")
def composed_finetuned_late_fusion_prior(ctx: Any) -> torch.Tensor:
    """``composed_late_fusion_prior`` on fine-tuned encoders: ``K = S + λ w log p(y_c | q)`` with ``S`` the
    ``composed_finetuned_late_fusion`` network's and the probes fitted on its features of the fold's training
    cases; the query's terms computed by the network from its image and the text of the form scored
    (``ctx.query_cache``: a text naming no finding keeps ``S``)."""
    from ..data.collections import records_dataset
    from .diagnosis_prior import prior_columns

    net = _finetuned_release(ctx, with_prior=True)
    q, t = _embed_fold(net, ctx, "composed_finetuned_late_fusion")
    records = [ctx.query_cache.records[int(i)] for i in ctx.query_indices]
    terms = []
    with torch.inference_mode():
        for start in range(0, len(records), 16):
            chunk = records[start : start + 16]
            batch = next(iter(DataLoader(records_dataset(chunk, net.image_size), batch_size=len(chunk))))
            terms.append(net.encode_query_and_terms(batch["image"].to(net.device), list(batch["text"]))[1].double().cpu())
    columns = prior_columns(net.diagnosis_prior.classes, ctx.cache, ctx.database_indices)
    return (q @ t.T).double() + torch.cat(terms)[:, columns]
