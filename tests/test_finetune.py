"""End-to-end fine-tuning plumbing on a tiny random network: the whole network saves and loads back,
checkpoints load without running code, the augmentation gives two different valid views, and under
DistributedDataParallel (two gloo processes on CPU) the encoder gradients are synchronised."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_net

from monai_cir.data.collections import CaseRecord
from monai_cir.engine.data import TARGET_IMAGE_KEY, dermoscopy_augmentation
from monai_cir.engine.finetune import finetune
from monai_cir.networks import load_model, save_checkpoint
from monai_cir.networks.checkpoint import read_checkpoint


def tiny_records(folder: Path, n: int = 8, seed: int = 0) -> list[CaseRecord]:
    """Synthetic RGB images (class 1 brighter) with short texts; written by code, no real data."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        label = i % 2
        pixels = rng.integers(0, 160, (40, 48, 3)) + 80 * label
        path = folder / f"img{i}.png"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
        records.append(CaseRecord(f"c{i}", path, "nevus", label, "pigment network: typical" if i % 3 else "", "trunk", "test", {}))
    return records


def test_augmentation_gives_two_independent_valid_views():
    torch.manual_seed(0)
    transform = dermoscopy_augmentation(32)
    image = torch.rand(3, 32, 32)
    out = transform({"image": image.clone(), "label": 0})
    for key in ("image", TARGET_IMAGE_KEY):
        view = out[key]
        assert type(view) is torch.Tensor and view.shape == (3, 32, 32)
        assert 0.0 <= float(view.min()) and float(view.max()) <= 1.0
        assert not torch.allclose(view, image)
    assert not torch.allclose(out["image"], out[TARGET_IMAGE_KEY])


def test_finetuned_network_saves_whole_and_loads_back(tmp_path):
    """Two fine-tuning steps change the encoders; the checkpoint holds them and load_model gives the same embeddings."""
    net = make_tiny_net()
    records = tiny_records(tmp_path)
    before = {k: v.clone() for k, v in net.image_encoder.named_parameters()}  # parameters: BatchNorm statistics move without a step
    result = finetune(net, records, np.arange(len(records)), dict(epochs=1, batch_size=4, lr=1e-2), device="cpu", max_steps=2)
    assert result.epochs_run == 1 and math.isfinite(result.history[0]["loss"])
    assert any(not torch.equal(before[k], v) for k, v in net.image_encoder.named_parameters())

    path = save_checkpoint(net, tmp_path / "finetuned.pt", epoch=1)
    payload = read_checkpoint(path)
    assert payload["format"] == "monai-cir-net/1" and set(payload["encoders"]) == {"image", "text"}
    loaded = load_model(path)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    texts = ["pigment network: atypical", "", "streaks: present"]
    with torch.no_grad():
        assert torch.allclose(loaded.encode_target(images), net.encode_target(images), atol=1e-5)
        assert torch.allclose(loaded.encode_query(images, texts), net.encode_query(images, texts), atol=1e-5)


class _RunsCodeOnLoad:
    """Unpickling this calls ``open(marker, "w")``: what a hostile checkpoint would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    net = make_tiny_net()
    path = save_checkpoint(net, tmp_path / "head.pt")
    payload = read_checkpoint(path)
    marker = tmp_path / "code-ran"
    payload["extra"] = {"note": _RunsCodeOnLoad(marker)}
    torch.save(payload, tmp_path / "hostile.pt")
    with pytest.raises(ValueError, match="refused to load"):
        load_model(tmp_path / "hostile.pt")
    assert not marker.exists(), "the checkpoint's code ran while loading"


def test_release_checkpoint_reads_weights_only():
    release = Path(__file__).resolve().parents[1] / "bundle" / "models" / "model.pt"
    payload = read_checkpoint(release)
    assert payload["format"] == "monai-cir-head/1" and payload["head"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = make_tiny_net()
        records = tiny_records(Path(folder), n=8, seed=0)
        # balanced=False under DDP: a DistributedSampler gives each rank its own half of the cases
        finetune(net, records, np.arange(8), dict(epochs=1, batch_size=4, lr=1e-3, seed=0), device="cpu", max_steps=1, augment=False)
        grads = {n: p.grad.detach().clone() for n, p in net.image_encoder.named_parameters() if p.grad is not None}
        grads.update({f"text.{n}": p.grad.detach().clone() for n, p in net.text_encoder.named_parameters() if p.grad is not None})
        torch.save(grads, Path(folder) / f"grads_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_synchronises_encoder_gradients(tmp_path):
    """Two gloo processes on CPU, each on its own shard: after one step the encoders' gradients are equal."""
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    g0 = torch.load(tmp_path / "grads_rank0.pt", weights_only=True)
    g1 = torch.load(tmp_path / "grads_rank1.pt", weights_only=True)
    image_keys = [k for k in g0 if not k.startswith("text.")]
    assert image_keys and any(k.startswith("text.") for k in g0), "the encoders got no gradient"
    assert set(g0) == set(g1)
    assert any(float(g0[k].abs().max()) > 0 for k in image_keys)
    for key in g0:
        assert torch.allclose(g0[key], g1[key], atol=1e-6), f"{key}: the ranks' gradients differ (not all-reduced)"
