"""End-to-end fine-tuning (the GPU switch): images and texts in, encoders unfrozen.

The CPU default trains the head on a frozen-feature cache (DESIGN.md section 3). With
``finetune: true`` in the bundle config the same loss and the same ``SupervisedTrainer`` wiring run on
:class:`EndToEndModel`: a batch is ``{"image", "text", "label"}`` from
``monai_cir.data.records_dataset`` (black-border removal + resize), the query is
``net.encode_query(image, text)`` and the target ``net.encode_target(image_flipped)``. It is slow on
CPU (use a GPU); the test suite runs one step of it on a tiny network.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..losses import ComposedSupConLoss
from ..networks import ComposedRetrievalNet
from .data import ClassBalancedBatchSampler
from .trainer import TrainConfig, TrainResult

__all__ = ["EndToEndModel", "unfreeze_encoders", "finetune", "fit_input_statistics_from_records"]


def unfreeze_encoders(net: ComposedRetrievalNet) -> ComposedRetrievalNet:
    """Make the encoders trainable (and let BatchNorm/dropout follow ``train()``)."""
    net.freeze_encoders = False
    for p in net.encoder_parameters():
        p.requires_grad_(True)
    return net


class EndToEndModel(torch.nn.Module):
    """``forward(batch) -> (Q, T)`` from raw images and texts (query: image + text; target: flipped image)."""

    def __init__(self, net: ComposedRetrievalNet, mode: str = "composed") -> None:
        super().__init__()
        self.net = net
        self.mode = mode

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch["image"]
        texts = [t if self.mode != "image_only" else "" for t in batch["text"]]
        q = self.net.encode_query(images, texts)
        t = self.net.encode_target(images.flip(-1))
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
    model: torch.nn.Module | None = None,
) -> TrainResult:
    """Fine-tune ``net`` end to end on ``records[train_idx]`` (batches per ``config.balanced``, SupCon).

    The encoders get ``lr * encoder_lr_scale``. ``max_steps`` caps the iterations per epoch (tests).
    ``model``: a wrapped :class:`EndToEndModel` (e.g. ``DistributedDataParallel`` under torchrun); each
    rank then draws its own batches (seed + rank). The heads' input standardisation is fitted first on
    the pretrained encoders' outputs for up to 256 training cases.
    No inner validation here: the epoch count is the config's (pick it from a cached-head run).
    """
    from monai.engines import SupervisedTrainer
    from monai.handlers import from_engine
    from monai.utils import set_determinism

    from ..config import default_device
    from ..data.collections import records_dataset

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    set_determinism(seed=cfg.seed)
    device = torch.device(device) if device is not None else default_device()
    net.to(device)
    fit_input_statistics_from_records(net, [records[i] for i in list(train_idx)[:256]])
    unfreeze_encoders(net)
    labels = np.asarray([r.label for r in records])
    dataset = records_dataset(records, net.image_size)
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    sampler = ClassBalancedBatchSampler(labels, train_idx, cfg.batch_size, seed=cfg.seed + rank, balanced=cfg.balanced)
    if max_steps is not None:
        sampler.num_batches = min(sampler.num_batches, max_steps)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=0)
    model = (model if model is not None else EndToEndModel(net)).to(device)
    head = net.head_parameters()
    optimizer = torch.optim.Adam(
        [{"params": head}, {"params": list(net.encoder_parameters()), "lr": cfg.lr * encoder_lr_scale}], lr=cfg.lr, weight_decay=cfg.weight_decay
    )

    def prepare(batch, device=None, non_blocking=False, **_):
        return {"image": batch["image"].to(device), "text": list(batch["text"])}, batch["label"].to(device)

    trainer = SupervisedTrainer(
        device=device, max_epochs=cfg.epochs, train_data_loader=loader, network=model, optimizer=optimizer,
        loss_function=ComposedSupConLoss(cfg.temperature, cfg.target_weight, cfg.symmetric_weight),
        prepare_batch=prepare, decollate=False, amp=device.type == "cuda",
    )
    if cfg.progress:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False).attach(trainer, output_transform=from_engine(["loss"], first=True))
    history: list[dict[str, float]] = []
    from ignite.engine import Events

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: history.append({"epoch": e.state.epoch, "loss": float(e.state.output["loss"].detach())}))
    start = time.perf_counter()
    trainer.run()
    net.eval()
    return TrainResult(trainer.state.epoch, float("nan"), trainer.state.epoch, time.perf_counter() - start, history)
