"""Training a retrieval head on a feature cache with MONAI's ``SupervisedTrainer`` (Ignite).

Wiring: ``CachedBatchDataset`` + ``ClassBalancedBatchSampler`` -> ``SupervisedTrainer`` (network =
a head of :mod:`monai_cir.engine.heads`, loss = :class:`~monai_cir.losses.ComposedSupConLoss`,
Adam lr 1e-4 / wd 1e-5, paper section 3.1) with handlers:

- :class:`RetrievalValidation` (epoch end): mAP / Acc@1 of inner-validation queries against the
  inner-training images, into ``engine.state.metrics``;
- :class:`BestHeadKeeper`: keeps (and optionally saves with ``save_checkpoint``) the best epoch's head;
- MONAI ``EarlyStopHandler`` (patience 30 by default), ``StatsHandler``, ``TensorBoardStatsHandler``
  (when ``log_dir`` is set), Ignite ``ProgressBar`` (tqdm).

MONAI's ``CheckpointSaver`` writes the whole module state; the project's checkpoint holds the head
only, with the encoder fingerprint, so :class:`BestHeadKeeper` replaces it.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..losses import ComposedSupConLoss
from ..metrics import retrieval_metrics
from .data import CachedBatchDataset, ClassBalancedBatchSampler, stratified_split
from .data import prepare_batch as _prepare_batch

__all__ = ["TrainConfig", "TrainResult", "train_head", "retrieval_score", "RetrievalValidation", "BestHeadKeeper"]

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training hyperparameters (defaults: the paper's Adam 1e-4 / wd 1e-5, 100 epochs, patience 30)."""

    epochs: int = 100
    lr: float = 1e-4
    weight_decay: float = 1e-5
    batch_size: int = 96  # 0: the whole training set as one batch
    patience: int = 30
    temperature: float = 0.1
    target_weight: float = 1.0
    symmetric_weight: float = 0.0
    composer_lr_mult: float = 1.0
    gate_init: float = 0.0
    val_fraction: float = 0.15
    # natural-frequency batches: class-balanced ones oversample the 61 keratoses, shift the query prior
    # away from nevus (65% of queries) and cost Acc@1 (bundle/docs/history.md, "Ablations and attempts")
    balanced: bool = False
    val_every: int = 1
    flip: bool = True
    tta: bool = True
    seed: int = 0
    progress: bool = False
    log_dir: str | None = None
    checkpoint: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "TrainConfig":
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


def reported_epochs(max_epochs: int, times: int = 10) -> Callable[[Any, int], bool]:
    """An event filter for MONAI's ``StatsHandler(epoch_log=...)``: about ``times`` epochs of a run, the last included
    (a console line per epoch is 200 lines in the full-batch regime)."""
    every = max(1, int(max_epochs) // times)
    return lambda engine, epoch: epoch % every == 0 or epoch == engine.state.max_epochs


def loss_at_reported_epochs(max_epochs: int, times: int = 10) -> Callable[[Any, int], bool]:
    """An event filter for ``StatsHandler(iteration_log=...)``: the training loss of the last batch of each of
    :func:`reported_epochs`' epochs."""
    reported = reported_epochs(max_epochs, times)
    return lambda engine, iteration: iteration % engine.state.epoch_length == 0 and reported(engine, engine.state.epoch)


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def retrieval_score(q: torch.Tensor, t: torch.Tensor, q_labels: torch.Tensor, t_labels: torch.Tensor) -> dict[str, float]:
    """mAP and Acc@1 of queries ``q`` ranking targets ``t`` (arXiv v1 Eqs. 10-14), by
    :func:`monai_cir.metrics.retrieval_metrics` (the one implementation: stable ties, database order)."""
    m = retrieval_metrics(q.float() @ t.float().T, q_labels, t_labels, ks=(1,), precision_ks=())
    return {"val_mAP": m["map"], "val_acc1": m["acc@1"]}


class RetrievalValidation:
    """Epoch-end handler: inner-validation retrieval metrics into ``engine.state.metrics``.

    ``val_score = mAP + Acc@1`` is the key metric for early stopping and the best checkpoint.
    ``query_idx=None`` (no inner validation: the full-batch regime) makes it a no-op: no metric is set, and
    :class:`BestHeadKeeper` then keeps the last epoch.
    """

    def __init__(self, model: torch.nn.Module, cache: Any, query_idx: np.ndarray | None, database_idx: np.ndarray, tta: bool = False, every: int = 1) -> None:
        self.model, self.cache, self.query_idx, self.database_idx, self.tta, self.every = model, cache, query_idx, database_idx, tta, max(1, every)
        self.last: dict[str, float] = {"val_mAP": 0.0, "val_acc1": 0.0, "val_score": -1.0}
        labels = torch.as_tensor(np.asarray(cache.labels)).long()
        self.q_labels = labels[query_idx] if query_idx is not None else None
        self.t_labels = labels[database_idx]

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        if self.query_idx is None:
            return
        if engine.state.epoch % self.every and engine.state.epoch != engine.state.max_epochs:
            engine.state.metrics.update(self.last)  # between validations: the last score (no new best, patience counts)
            return
        q = self.model.encode_queries(self.cache, self.query_idx, tta=self.tta)
        t = self.model.encode_targets(self.cache, self.database_idx, tta=self.tta)
        metrics = retrieval_score(q, t, self.q_labels, self.t_labels)
        metrics["val_score"] = metrics["val_mAP"] + metrics["val_acc1"]
        engine.state.metrics.update(metrics)
        self.last = dict(metrics)
        self.model.train()


class BestHeadKeeper:
    """Keeps the head weights of the best epoch (by ``metric``) in memory; saves them when ``path`` is set.

    When no epoch reports ``metric`` (no inner validation), the weights of the last epoch are kept and saved
    when the run completes."""

    def __init__(self, model: torch.nn.Module, metric: str = "val_score", path: str | None = None, save_fn: Callable | None = None) -> None:
        self.model, self.metric, self.path, self.save_fn = model, metric, path, save_fn
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _completed(self, engine) -> None:
        if self.metric in engine.state.metrics:
            return
        self.best_epoch = engine.state.epoch
        self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        if self.path and self.save_fn is not None:
            self.save_fn(self.path, epoch=engine.state.epoch, metrics={})

    def __call__(self, engine) -> None:
        if self.metric not in engine.state.metrics:
            return
        score = float(engine.state.metrics.get(self.metric, -math.inf))
        if score > self.best_score:
            self.best_score, self.best_epoch = score, engine.state.epoch
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            if self.path and self.save_fn is not None:
                self.save_fn(self.path, epoch=engine.state.epoch, metrics=dict(engine.state.metrics))


def _loss_value(output: dict[str, Any]) -> float:
    """The batch loss as a Python float: what the stats / TensorBoard / progress handlers log."""
    return float(output["loss"].detach())


def _param_groups(model: torch.nn.Module, params: list, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Adam parameter groups: the composers (Eq. 5: gates, text/image projections, attention) get
    ``lr * composer_lr_mult`` so the text gets through in the few hundred CPU steps; the rest ``lr``."""
    composer_ids = {id(p) for n, p in model.named_parameters() if ".composers." in f".{n}" or n.startswith("composers.")}
    fast = [p for p in params if id(p) in composer_ids]
    slow = [p for p in params if id(p) not in composer_ids]
    if cfg.composer_lr_mult == 1.0 or not fast:
        return [{"params": params}]
    return [{"params": slow}, {"params": fast, "lr": cfg.lr * cfg.composer_lr_mult}]


def train_head(
    model: torch.nn.Module,
    cache: Any,
    train_idx: Sequence[int],
    config: TrainConfig | dict[str, Any] | None = None,
    level_indices: Sequence[int] = (0, 1, 2),
    device: str | torch.device = "cpu",
    save_fn: Callable | None = None,
    extra_handlers: Sequence[Any] = (),
) -> TrainResult:
    """Train ``model`` (a head of :mod:`monai_cir.engine.heads`) on cached cases ``train_idx``.

    A stratified ``val_fraction`` of ``train_idx`` is held out for early stopping (inner validation;
    the outer test fold is never seen). At the end the model holds the best epoch's weights.
    With ``val_fraction = 0`` training runs all epochs and keeps the last one (release model).
    ``extra_handlers``: Ignite/MONAI handlers (anything with ``attach(engine)``), e.g. a benchmark's
    per-epoch probe.
    """
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer
    from monai.handlers import EarlyStopHandler, StatsHandler, TensorBoardStatsHandler
    from monai.utils import set_determinism

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    set_determinism(seed=cfg.seed)
    labels = np.asarray(cache.labels)
    train_idx = np.asarray(train_idx)
    if cfg.val_fraction > 0:
        fit_idx, val_idx = stratified_split(labels, train_idx, cfg.val_fraction, cfg.seed, records=getattr(cache, "records", None))
    else:
        fit_idx, val_idx = train_idx, None
    dataset = CachedBatchDataset(cache, level_indices, flip=cfg.flip, seed=cfg.seed)
    sampler = ClassBalancedBatchSampler(labels, fit_idx, cfg.batch_size or len(fit_idx), seed=cfg.seed, balanced=cfg.balanced)
    loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=0)
    if cfg.gate_init and getattr(model, "mode", None) in ("composed", "text_only"):
        # start the tanh gates of Eq. 5 open; the modules' default is 0 (an untrained composer is the identity)
        with torch.no_grad():
            for composer in model.net.composers:
                composer.gate_attn.fill_(cfg.gate_init)
                composer.gate_mlp.fill_(cfg.gate_init)
    if hasattr(model, "fit_input_statistics"):  # before training, from the training cases only
        model.fit_input_statistics(cache, train_idx)
    model.to(device).train()
    params = model.head_parameters() if hasattr(model, "head_parameters") else list(model.parameters())
    optimizer = torch.optim.Adam(_param_groups(model, params, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = ComposedSupConLoss(cfg.temperature, cfg.target_weight, cfg.symmetric_weight)

    handlers: list[Any] = []
    keeper = BestHeadKeeper(model, path=cfg.checkpoint, save_fn=save_fn)
    if val_idx is not None:
        handlers.append(RetrievalValidation(model, cache, val_idx, fit_idx, tta=False, every=cfg.val_every))
        handlers.append(keeper)
    trainer = SupervisedTrainer(
        device=torch.device(device),
        max_epochs=cfg.epochs,
        train_data_loader=loader,
        network=model,
        optimizer=optimizer,
        loss_function=loss_fn,
        prepare_batch=_prepare_batch,
        decollate=False,
        train_handlers=handlers,
        amp=False,
    )
    if val_idx is not None and cfg.patience:
        EarlyStopHandler(patience=cfg.patience, score_function=lambda e: e.state.metrics["val_score"], trainer=trainer, epoch_level=True).attach(trainer)
    for handler in extra_handlers:
        handler.attach(trainer)
    history: list[dict[str, float]] = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def _record(engine) -> None:
        history.append({"epoch": engine.state.epoch, "loss": _loss_value(engine.state.output), **{k: float(v) for k, v in engine.state.metrics.items()}})

    if cfg.log_dir:
        TensorBoardStatsHandler(log_dir=cfg.log_dir, output_transform=_loss_value).attach(trainer)
        # the console: the training loss (the epoch's last batch) and the epoch's metrics about ten times a run, not a
        # line per epoch (200 for the full-batch regime); ignite's own "Epoch[n] Complete" line goes with it
        StatsHandler(name="monai_cir.train", output_transform=_loss_value, epoch_log=reported_epochs(cfg.epochs),
                     iteration_log=loss_at_reported_epochs(cfg.epochs)).attach(trainer)
    # ignite's own lines ("Engine run resuming ...", "Epoch[n] Complete") never: without a log folder (`monai-cir evaluate`
    # trains ~70 heads) they were a line per epoch between the progress bar's updates
    trainer.logger.setLevel(logging.WARNING)
    if cfg.progress:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False).attach(trainer, output_transform=_loss_value)
    start = time.perf_counter()
    trainer.run()
    if keeper.best_state is not None:
        model.load_state_dict(keeper.best_state)
    elif cfg.checkpoint and save_fn is not None:
        save_fn(cfg.checkpoint, epoch=trainer.state.epoch, metrics={})
    model.eval()
    set_determinism(seed=None)
    return TrainResult(keeper.best_epoch or trainer.state.epoch, keeper.best_score, trainer.state.epoch, time.perf_counter() - start, history)
