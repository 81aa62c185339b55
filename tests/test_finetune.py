"""End-to-end fine-tuning plumbing on a tiny random network: the whole network saves and loads back,
checkpoints load without running code, the augmentation gives two different valid views, and under
DistributedDataParallel (two gloo processes on CPU) the encoder gradients are synchronised."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TEXT, make_tiny_net

from monai_cir.data.collections import CaseRecord
from monai_cir.engine.data import TARGET_IMAGE_KEY, dermoscopy_augmentation
from monai_cir.engine.finetune import finetune
from monai_cir.networks import load_model, save_checkpoint
from monai_cir.networks.checkpoint import read_checkpoint


def tiny_records(folder: Path, n: int = 8, seed: int = 0, write: bool = True) -> list[CaseRecord]:
    """Synthetic RGB images (class 1 brighter) with short texts; written by code, no real data (``write=False``:
    the records of images written before, e.g. by the parent of processes that read them at once)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        label = i % 2
        pixels = rng.integers(0, 160, (40, 48, 3)) + 80 * label
        path = folder / f"img{i}.png"
        if write:
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
        records.append(CaseRecord(f"c{i}", path, ("nevus", "melanoma")[label], label, "pigment network: typical" if i % 3 else "", "trunk", "test", {}))
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


def test_finetune_reads_images_in_worker_processes(tmp_path, monkeypatch):
    """Beside a GPU the images are decoded by DataLoader workers (loader_workers): the records, the dataset
    and the augmentation must cross into them, and the steps still train (CPU here, workers asked for)."""
    import monai_cir.data.collections as collections
    from monai_cir.engine.finetune import loader_workers

    assert loader_workers("cpu") == 0  # on CPU the cores go to the encoders
    readers = tmp_path / "readers"
    readers.mkdir()
    make_dataset = collections.records_dataset

    class Marked(torch.utils.data.Dataset):  # leaves the reading process's pid behind
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            (readers / str(os.getpid())).touch()
            return self.inner[i]

    monkeypatch.setattr(collections, "records_dataset", lambda *a, **k: Marked(make_dataset(*a, **k)))
    net = make_tiny_net()
    records = tiny_records(tmp_path)
    before = {k: v.clone() for k, v in net.image_encoder.named_parameters()}
    result = finetune(net, records, np.arange(len(records)), dict(epochs=1, batch_size=4, lr=1e-2), device="cpu", max_steps=2, num_workers=2, fit_statistics=False)
    assert result.epochs_run == 1 and math.isfinite(result.history[0]["loss"])
    pids = {int(p.name) for p in readers.iterdir()}
    assert pids and os.getpid() not in pids, f"images read by {pids}, this process is {os.getpid()}"
    assert any(not torch.equal(before[k], v) for k, v in net.image_encoder.named_parameters())


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_batchnorm_keeps_running_statistics_while_the_encoder_trains(tmp_path, frozen):
    """frozen_batchnorm: the image encoder's BatchNorm running statistics stay put through the trainer's
    per-iteration train() while its weights (BatchNorm's affine ones included) still learn; without it they move."""
    net = make_tiny_net()
    records = tiny_records(tmp_path)
    norms = [m for m in net.image_encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms, "the tiny image encoder has BatchNorm layers"
    stats = [m.running_mean.clone() for m in norms]
    affine = [m.weight.detach().clone() for m in norms]
    finetune(net, records, np.arange(len(records)), dict(epochs=1, batch_size=4, lr=1e-2), device="cpu", max_steps=2, fit_statistics=False, frozen_batchnorm=frozen)
    stats_kept = all(torch.equal(a, m.running_mean) for a, m in zip(stats, norms))
    assert stats_kept is frozen
    assert any(not torch.equal(a, m.weight) for a, m in zip(affine, norms))


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


class _RunsShellOnLoad:
    """Unpickling this calls ``os.system``: the payload hostile files carry (torch names its module "blocked")."""

    def __reduce__(self):
        return (os.system, ("true",))


def test_checkpoint_calling_os_system_is_refused_as_such(tmp_path):
    """Found by review: torch words a refused os / posix global "unsupported GLOBAL posix.system whose module posix is
    blocked", which the check for "Unsupported global" missed: the usual os.system payload was called merely unreadable."""
    path = save_checkpoint(make_tiny_net(), tmp_path / "head.pt")
    payload = read_checkpoint(path)
    payload["extra"] = {"note": _RunsShellOnLoad()}
    torch.save(payload, tmp_path / "hostile.pt")
    with pytest.raises(ValueError, match="refused to load .*hostile.pt: it holds Python objects"):
        read_checkpoint(tmp_path / "hostile.pt")


def test_a_fine_tuned_checkpoint_cannot_make_transformers_run_a_model_folders_code(tmp_path):
    """Found by review: a monai-cir-net/1 checkpoint passes weights_only with plain strings, and its text_architecture
    went to AutoConfig.from_pretrained as keyword arguments: trust_remote_code=True there, with text_model naming a folder
    holding a configuration_*.py (auto_map), made transformers import (run) that file. Only sizes are accepted, and the
    text encoder never trusts a folder's code."""
    import json
    import shutil

    from monai_cir.networks.text_encoder import offline_minilm_path

    folder = tmp_path / "text_model"
    shutil.copytree(offline_minilm_path(), folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    marker = tmp_path / "code-ran"
    (folder / "configuration_hostile.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig\nclass HostileConfig(BertConfig):\n    model_type = 'bert'\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_hostile.HostileConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    payload = read_checkpoint(save_checkpoint(make_tiny_net(), tmp_path / "head.pt"))
    payload.update(format="monai-cir-net/1", encoders={"image": {}, "text": {}})
    payload["config"] = {**payload["config"], "text_model": str(folder)}
    for architecture, refusal in (({"trust_remote_code": True}, "text architecture key 'trust_remote_code'"),
                                  ({"hidden_size": "768"}, "text architecture hidden_size must be a positive integer")):
        payload["text_architecture"] = architecture
        torch.save(payload, tmp_path / "crafted.pt")
        with pytest.raises(ValueError, match=f"crafted.pt is not a valid monai-cir checkpoint: {refusal}"):
            load_model(tmp_path / "crafted.pt")
        assert not marker.exists(), "the model folder's code ran while loading the checkpoint"
    from monai_cir.networks.text_encoder import TextEncoder  # the folder itself, named by a config: its code never runs

    try:
        TextEncoder(str(folder), pretrained=False)
    except ValueError:  # transformers may refuse the folder's auto_map outright, or read it as the BERT it declares
        pass
    assert not marker.exists(), "transformers ran the model folder's code"


def test_a_text_architecture_without_token_types_is_a_valid_one():
    """Found by review of the check above: DeBERTa's configs record type_vocab_size 0, which a checkpoint of it holds."""
    from monai_cir.networks.text_encoder import architecture_overrides

    assert architecture_overrides({"type_vocab_size": 0, "hidden_size": 768}) == {"type_vocab_size": 0, "hidden_size": 768}
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        architecture_overrides({"hidden_size": 0})


def test_a_checkpoint_of_the_wrong_shape_is_refused_in_one_line_naming_the_field(tmp_path):
    """Found by review: files that pass weights_only but lack a field or hold the wrong type stopped the CLI with a
    KeyError / TypeError traceback, or a bare "invalid literal for int()" naming no file."""
    payload = read_checkpoint(save_checkpoint(make_tiny_net(), tmp_path / "head.pt"))
    damaged = {
        "'config' is missing": {k: v for k, v in payload.items() if k != "config"},
        "'extra' is not a mapping": {**payload, "extra": ["a", "b"]},
        "config 'image_size' must be a positive integer, got 'big'": {**payload, "config": {**payload["config"], "image_size": "big"}},
        "'head' is missing or not a mapping of tensors": {**payload, "head": {"w": "text"}},
    }
    for words, bad in damaged.items():
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=f"bad.pt is not a valid monai-cir checkpoint: {words}"):
            load_model(tmp_path / "bad.pt")


def test_a_file_that_is_no_checkpoint_is_refused_without_advice_to_load_it_unsafely(tmp_path):
    """A TorchScript export passed as --model (the bundle ships model.ts beside model.pt), or any other file: the
    message says what to pass instead; it never relays torch's advice to retry with weights_only=False (which would
    run whatever a crafted file holds)."""
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(scripted, tmp_path / "model.ts")
    with pytest.raises(ValueError, match=r"model\.ts is a TorchScript export .*pass the checkpoint \(model\.pt\)"):
        read_checkpoint(tmp_path / "model.ts")
    (tmp_path / "cases.csv").write_text("image,diagnosis\na.png,nevus\n")
    with pytest.raises(ValueError) as err:
        read_checkpoint(tmp_path / "cases.csv")
    assert "is not a readable monai-cir checkpoint" in str(err.value) and "weights_only" not in str(err.value), err.value


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
        records = tiny_records(Path(folder), n=8, seed=0, write=False)  # the parent wrote them: one rank rewriting a file
        # while the other read it failed as "cannot identify image file"
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
    tiny_records(tmp_path, n=8, seed=0)  # the images, written once before the ranks read them
    # fork: the workers inherit the imported modules (spawn would import torch, monai and transformers again)
    torch.multiprocessing.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    g0 = torch.load(tmp_path / "grads_rank0.pt", weights_only=True)
    g1 = torch.load(tmp_path / "grads_rank1.pt", weights_only=True)
    image_keys = [k for k in g0 if not k.startswith("text.")]
    assert image_keys and any(k.startswith("text.") for k in g0), "the encoders got no gradient"
    assert set(g0) == set(g1)
    assert any(float(g0[k].abs().max()) > 0 for k in image_keys)
    for key in g0:
        assert torch.allclose(g0[key], g1[key], atol=1e-6), f"{key}: the ranks' gradients differ (not all-reduced)"


def _tiny_fold(tmp_path, monkeypatch, n: int = 12, queries: int = 3):
    """A fold of ``n`` synthetic cases (the last ``queries`` the held-out queries, the rest the database) on a
    random-feature cache, with the methods' pretrained network replaced by a tiny random one; returns
    ``(ctx, donor, built)`` (``built``: the networks the method created)."""
    from types import SimpleNamespace

    import monai_cir.networks
    from monai_cir.engine import cv_methods
    from monai_cir.evaluation import FoldContext

    records = tiny_records(tmp_path, n=n)
    donor = make_tiny_net()
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([r.label for r in records])
    maps = [torch.randn(n, c, s, s, generator=g).half() for c, s in zip(donor.image_encoder.channels, (8, 4, 2))]
    tokens = torch.randn(n, 5, donor.text_encoder.dim, generator=g).half()
    cache = SimpleNamespace(maps=maps, maps_flipped=None, tokens=tokens, token_mask=torch.ones(n, 5, dtype=torch.bool), labels=labels, records=records)
    built = []
    create_model = monai_cir.networks.create_model

    def tiny_model(*args, **kwargs):  # the method's pretrained network, as a tiny random one (make_tiny_net's)
        torch.manual_seed(0)
        built.append(create_model(pretrained=False, image_model="test_efficientnet", text_config_overrides=TINY_TEXT, image_size=64).eval())
        return built[-1]

    monkeypatch.setattr(cv_methods, "base_net", lambda image_size=64: donor)
    monkeypatch.setattr(monai_cir.networks, "create_model", tiny_model)
    config = {"image_size": 64, "method_options": {"composed": {"train": {"epochs": 1, "batch_size": 6, "val_fraction": 0.25}}, "composed_finetuned": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "progress": False},
                                                   "late_fusion_fullbatch": {"train": {"epochs": 3}}}}
    return FoldContext(cache, np.arange(n - queries, n), np.arange(n - queries), 0, config, seed=0), donor, built


def test_composed_finetuned_method_fine_tunes_and_embeds(tmp_path, monkeypatch):
    """The registered ``composed_finetuned`` on a tiny network: the ``composed`` head trained on a cache, then
    end-to-end steps on the images; it returns (Q, T) for the fold's queries and database, and its encoders
    are no longer the ones the head was trained on."""
    from types import SimpleNamespace

    from monai_cir.evaluation import get_method

    ctx, donor, built = _tiny_fold(tmp_path, monkeypatch)
    q, t = get_method("composed_finetuned").fn(ctx)
    net = built[-1]
    assert q.shape == (3, net.embedding_dim) and t.shape == (9, net.embedding_dim)
    assert torch.isfinite(q).all() and torch.isfinite(t).all()
    untouched = donor.image_encoder.state_dict()  # make_tiny_net's weights, which the method started from
    assert any(not torch.equal(v, untouched[k]) for k, v in net.image_encoder.state_dict().items() if v.is_floating_point() and "running" not in k)
    # the queries take their texts from the query collection (a text form's, in `evaluate --text-forms`)
    reworded = SimpleNamespace(records=[dataclasses.replace(r, text="atypical pigment network, blue-whitish veil, irregular streaks") for r in ctx.cache.records])
    q_form, t_form = get_method("composed_finetuned").fn(dataclasses.replace(ctx, query_cache=reworded))
    assert len(built) == 1 and torch.equal(t_form, t)
    assert not torch.allclose(q_form, q, atol=1e-4), "the queries ignored the query collection's texts"


def test_composed_finetuned_late_fusion_joins_a_branch_trained_on_the_fine_tuned_features(tmp_path, monkeypatch):
    """``composed_finetuned_late_fusion`` reuses the fold's fine-tuned network (one fine-tuning for both methods),
    trains its late-fusion branch on that network's own features (not on the pretrained cache), and joins them
    as the release does: Q = [sqrt(1/2) Q_composed_finetuned, sqrt(1/2) q_lf], so <Q, T> = (S_composed + S_lf) / 2."""
    from monai_cir.engine import cv_methods
    from monai_cir.evaluation import get_method
    from monai_cir.networks import encoder_fingerprint

    ctx, donor, built = _tiny_fold(tmp_path, monkeypatch)
    trained_on = []
    train_method = cv_methods.train_method

    def spy(name, cache, *args, **kwargs):
        trained_on.append((name, cache))
        return train_method(name, cache, *args, **kwargs)

    monkeypatch.setattr(cv_methods, "train_method", spy)
    q_ft, t_ft = get_method("composed_finetuned").fn(ctx)
    q, t = get_method("composed_finetuned_late_fusion").fn(ctx)
    assert len(built) == 1, "the fine-tuned network was not shared between the two methods"
    net = built[0]
    d = q_ft.shape[1]
    assert q.shape[0] == 3 and t.shape[0] == 9 and q.shape[1] == t.shape[1] > d
    assert torch.allclose(q[:, :d], q_ft * 0.5**0.5, atol=1e-5) and torch.allclose(t[:, :d], t_ft * 0.5**0.5, atol=1e-5)
    assert float(q[:, d:].norm()) > 0 and float(t[:, d:].norm()) > 0
    branch_caches = [cache for name, cache in trained_on if name == "late_fusion_fullbatch"]
    assert len(branch_caches) == 1 and branch_caches[0] is not ctx.cache
    assert branch_caches[0].fingerprint == encoder_fingerprint(net) != encoder_fingerprint(donor)
    assert len(branch_caches[0]) == 12 and branch_caches[0].maps_flipped is not None


def test_fine_tuned_methods_cost_only_their_queries_for_another_text_form(tmp_path, monkeypatch):
    """``evaluate --text-forms`` calls a method once per form with other query texts: the fine-tuned methods
    embed the fold's database and train the late-fusion branch once, and only the queries follow the form."""
    from types import SimpleNamespace

    from monai_cir.engine import cv_methods, finetune as finetune_module
    from monai_cir.evaluation import get_method

    ctx, _, built = _tiny_fold(tmp_path, monkeypatch)
    branches, database_passes = [], []
    train_method, embed_records = cv_methods.train_method, finetune_module.embed_records

    def spy_train(name, *args, **kwargs):
        branches.append(name)
        return train_method(name, *args, **kwargs)

    def spy_embed(net, records, idx, queries, **kwargs):
        if not queries:
            database_passes.append(len(idx))
        return embed_records(net, records, idx, queries, **kwargs)

    monkeypatch.setattr(cv_methods, "train_method", spy_train)
    monkeypatch.setattr(finetune_module, "embed_records", spy_embed)
    reworded = SimpleNamespace(records=[dataclasses.replace(r, text="atypical pigment network, blue-whitish veil, irregular streaks") for r in ctx.cache.records])
    for name in ("composed_finetuned", "composed_finetuned_late_fusion"):
        q, t = get_method(name).fn(ctx)
        q_form, t_form = get_method(name).fn(dataclasses.replace(ctx, query_cache=reworded))
        assert torch.equal(t_form, t) and not torch.allclose(q_form, q, atol=1e-4), name
    assert len(built) == 1 and branches.count("late_fusion_fullbatch") == 1
    assert database_passes == [9, 9], "each method embeds the fold's database once, whatever the forms"


def test_composed_finetuned_late_fusion_prior_is_the_fine_tuned_release_plus_its_priors_terms(tmp_path, monkeypatch):
    """``composed_finetuned_late_fusion_prior``: the fine-tuned release network's S (the same fine-tuning and branch as
    ``composed_finetuned_late_fusion``) plus the diagnosis prior's terms, the prior fitted on the fine-tuned features
    of the fold's training cases only; a query whose text names no finding keeps S, one naming a finding gets a
    term by the library case's diagnosis."""
    from types import SimpleNamespace

    from monai_cir.engine import diagnosis_prior
    from monai_cir.evaluation import get_method
    from monai_cir.networks import encoder_fingerprint

    ctx, _, built = _tiny_fold(tmp_path, monkeypatch, n=30, queries=6)
    fitted = []
    fit = diagnosis_prior.fit_diagnosis_prior

    def spy(net, cache, train_indices, **kwargs):
        fitted.append((cache, list(train_indices)))
        return fit(net, cache, train_indices, **kwargs)

    monkeypatch.setattr(diagnosis_prior, "fit_diagnosis_prior", spy)
    k = get_method("composed_finetuned_late_fusion_prior").fn(ctx)
    q, t = get_method("composed_finetuned_late_fusion").fn(ctx)
    assert len(built) == 1, "the fine-tuned network was not shared"
    assert len(fitted) == 1 and fitted[0][1] == list(range(24))
    assert fitted[0][0] is not ctx.cache and fitted[0][0].fingerprint == encoder_fingerprint(built[0])
    terms = k - (q @ t.T).double()
    labels = ctx.cache.labels.numpy()[ctx.database_indices]
    for row, i in enumerate(ctx.query_indices):
        named = bool(ctx.cache.records[int(i)].text)
        by_class = [terms[row, labels == c] for c in (0, 1)]
        assert all(torch.allclose(x, x[0].expand_as(x), atol=1e-5) for x in by_class), row  # one term per diagnosis
        assert (float(by_class[0][0] - by_class[1][0]) != 0) == named, row
    # another text form: the terms come from that form's texts (none named: S alone), the prior is not fitted again
    empty = SimpleNamespace(records=[dataclasses.replace(r, text="") for r in ctx.cache.records])
    k_empty = get_method("composed_finetuned_late_fusion_prior").fn(dataclasses.replace(ctx, query_cache=empty))
    q_empty, t_empty = get_method("composed_finetuned_late_fusion").fn(dataclasses.replace(ctx, query_cache=empty))
    assert torch.allclose(k_empty, (q_empty @ t_empty.T).double(), atol=1e-6) and len(fitted) == 1 and len(built) == 1


def _views(loader) -> list[bytes]:
    return [batch["image"][0].numpy().tobytes() for batch in loader]


def test_augmentation_differs_between_workers_and_ranks(tmp_path):
    """Found by review: every DataLoader worker held the same copy of the transforms' random state (and every DDP
    rank the same seed), so each worker and each rank repeated the others' flips, rotations, crops and colour jitter.
    augmented_loader seeds them apart; torch's plain DataLoader, as fine-tuning used it, repeats the flips, rotations and
    crops (MONAI's transforms draw them from numpy)."""
    from PIL import Image

    from monai_cir.data.collections import records_dataset
    from monai_cir.engine.data import augmented_loader

    pixels = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "same.png")
    records = [CaseRecord(f"c{i}", tmp_path / "same.png", "nevus", 0, "", "trunk", "test", {}) for i in range(4)]

    def dataset():  # no colour jitter: its draws come from torch's generator, which torch's workers do seed apart
        return records_dataset(records, 32, transform=dermoscopy_augmentation(32, jitter=0.0, hue=0.0))

    # two workers take the items in turn (0, 2 on one; 1, 3 on the other): the same image, so only the draws differ
    plain = _views(torch.utils.data.DataLoader(dataset(), batch_size=1, num_workers=2))
    assert plain[0] == plain[1] and plain[2] == plain[3]  # what fine-tuning had
    seeded = _views(augmented_loader(dataset(), seed=0, num_workers=2, batch_size=1))
    assert seeded[0] != seeded[1] and seeded[2] != seeded[3]
    assert seeded == _views(augmented_loader(dataset(), seed=0, num_workers=2, batch_size=1))  # still seeded
    # in one process, rank 1 of a process group draws otherwise than rank 0
    rank0 = _views(augmented_loader(dataset(), seed=0, batch_size=1))
    assert rank0 == _views(augmented_loader(dataset(), seed=0, batch_size=1, rank=0))  # outside a process group: rank 0
    rank1 = _views(augmented_loader(dataset(), seed=0, batch_size=1, rank=1))
    assert all(a != b for a, b in zip(rank0, rank1))
