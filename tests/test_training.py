"""Loss, training on a (synthetic) feature cache, determinism, and one end-to-end fine-tuning step."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import activate_head, make_tiny_net

from monai_cir.engine import (
    CachedBatchDataset,
    ClassBalancedBatchSampler,
    LateFusionMLP,
    fit_composed,
    retrieval_score,
    stratified_split,
    train_head,
)
from monai_cir.losses import ComposedSupConLoss, multi_positive_supcon


def synthetic_cache(net, n: int = 60, seed: int = 0):
    """Cache-shaped tensors with a class signal in the maps and in the tokens."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    sizes = (8, 4, 2)
    maps = []
    for c, s in zip(net.image_encoder.channels, sizes):
        proto = torch.randn(3, c, generator=g)
        maps.append((torch.randn(n, c, s, s, generator=g) + 2 * proto[labels].view(n, c, 1, 1)).half())
    d = net.text_encoder.dim
    tokens = (torch.randn(n, 5, d, generator=g) + 2 * torch.randn(3, 1, d, generator=g)[labels]).half()
    mask = torch.ones(n, 5, dtype=torch.bool)
    mask[::4, 3:] = False
    return SimpleNamespace(
        maps=maps, maps_flipped=[m.flip(-1) for m in maps], tokens=tokens, token_mask=mask,
        sentence=tokens.float().mean(1), labels=labels,
    )


@pytest.fixture(scope="module")
def net():
    return make_tiny_net()


def test_supcon_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.0, 0.0]])
    ql, tl = torch.tensor([0, 1]), torch.tensor([0, 1, 0])
    loss = multi_positive_supcon(logits, ql, tl)
    lse0, lse1 = math.log(sum(math.exp(v) for v in (2.0, 0.0, 1.0))), math.log(sum(math.exp(v) for v in (0.5, 1.0, 0.0)))
    expected = (-(2.0 - lse0 + 1.0 - lse0) / 2 - (1.0 - lse1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_supcon_prefers_class_clusters_and_excludes_diagonal():
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]), dim=1)
    bad = good[[0, 2, 1, 3]]
    loss = ComposedSupConLoss(temperature=0.1, num_levels=1)
    assert loss((good, good), labels) < loss((bad, bad), labels)
    tt = multi_positive_supcon(torch.zeros(4, 4), labels, labels, exclude_diagonal=True)
    assert tt.item() == pytest.approx(math.log(3.0))  # one positive among 3 others, uniform logits
    with pytest.raises(ValueError, match="logits must be"):
        multi_positive_supcon(torch.zeros(3, 4), labels, labels)


def test_sampler_is_class_balanced_and_seeded():
    labels = np.array([0] * 40 + [1] * 10 + [2] * 4)
    sampler = ClassBalancedBatchSampler(labels, np.arange(54), batch_size=12, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5
    for b in batches:
        assert np.bincount(labels[b], minlength=3).tolist() == [4, 4, 4]
    again = ClassBalancedBatchSampler(labels, np.arange(54), batch_size=12, seed=3)
    assert list(again) == batches
    train, val = stratified_split(labels, np.arange(54), 0.25, seed=0)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 54
    assert set(labels[val]) == {0, 1, 2}


def test_training_decreases_loss_and_is_deterministic(net):
    cache = synthetic_cache(net)
    cfg = dict(epochs=3, batch_size=24, lr=3e-3, patience=0, val_fraction=0.2)
    model, result = fit_composed(net, cache, np.arange(48), "composed", cfg, seed=0)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert "val_mAP" in result.history[-1] and 1 <= result.best_epoch <= 3
    q = model.encode_queries(cache, np.arange(48, 60))
    t = model.encode_targets(cache, np.arange(48))
    assert q.shape == (12, model.net.embedding_dim) and t.shape == (48, model.net.embedding_dim)
    metrics = retrieval_score(q, t, cache.labels[48:], cache.labels[:48])
    assert metrics["val_mAP"] > 0.5
    model2, result2 = fit_composed(net, cache, np.arange(48), "composed", cfg, seed=0)
    assert [h["loss"] for h in result2.history] == pytest.approx(losses, rel=1e-5)
    assert torch.allclose(model2.encode_queries(cache, np.arange(48, 60)), q, atol=1e-5)


def test_cached_queries_weigh_each_text_by_its_findings(net):
    """The evaluation's queries (cached maps) follow the network's rule: w = min(1, n_findings / 5), so a
    2-finding text gives 0.4 Q_composed + 0.6 Q_image, all 7 findings the composed query, age / sex or no
    text the image-only one; full_text_findings=1 at query time is the plain gate (the ablation)."""
    cache = synthetic_cache(net)
    texts = ["atypical pigment network, irregular streaks",
             "typical pigment network, no streaks, regular pigmentation, no regression structures, irregular dots "
             "and globules, blue-whitish veil present, no vascular structures", "male patient aged 60", ""]
    cache.records = [SimpleNamespace(text=texts[i % 4]) for i in range(60)]
    model, _ = fit_composed(net, cache, np.arange(48), "composed", dict(epochs=1, batch_size=24, val_fraction=0.2), seed=0)
    activate_head(model.net)  # make the text move the query for sure
    idx = np.arange(48, 60)
    query = model.encode_queries(cache, idx, tta=False)
    composed = model.encode_queries(cache, idx, tta=False, full_text_findings=1)
    no_text = SimpleNamespace(**{**vars(cache), "records": [SimpleNamespace(text="")] * 60})
    image_only = model.encode_queries(no_text, idx, tta=False)
    w = torch.tensor([0.4, 1.0, 0.0, 0.0] * 3).view(-1, 1)
    torch.testing.assert_close(query, w * composed + (1 - w) * image_only, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(composed[::4], image_only[::4], atol=1e-4), "the text must move the query for the test to mean anything"


@pytest.mark.parametrize("mode", ["image_only", "text_only"])
def test_other_modes_train(net, mode):
    cache = synthetic_cache(net)
    model, result = fit_composed(net, cache, np.arange(48), mode, dict(epochs=1, batch_size=24, val_fraction=0.2), seed=1)
    assert result.epochs_run == 1
    assert model.encode_queries(cache, np.arange(48, 52)).shape[1] == model.net.embedding_dim


def test_late_fusion_trains(net):
    cache = synthetic_cache(net)
    model = LateFusionMLP(sum(m.shape[1] for m in cache.maps), cache.sentence.shape[1], hidden=32, out_dim=16)
    result = train_head(model, cache, np.arange(48), dict(epochs=8, batch_size=24, lr=1e-2, val_fraction=0.2))
    losses = [h["loss"] for h in result.history]
    # one batch's loss is noisy: compare the start with the mean of the last epochs
    assert len(losses) == 8 and np.mean(losses[-3:]) < losses[0], losses
    assert model.encode_queries(cache, np.arange(48, 52)).shape == (4, 16)


def test_training_logs_the_loss_about_ten_times_a_run_not_every_epoch(net, tmp_path, caplog):
    """With a log folder (the bundle's stages): the console shows the training loss and the metrics about ten times a
    run, not ignite's "Epoch[n] Complete" line each epoch (200 lines for the full-batch regime), and never the loss
    of no epoch at all (before: a StatsHandler without its iteration log printed no loss)."""
    import logging

    cache = synthetic_cache(net)
    model = LateFusionMLP(sum(m.shape[1] for m in cache.maps), cache.sentence.shape[1], hidden=32, out_dim=16)
    class Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record.getMessage())

    kept: list[str] = []
    handler = Kept(level=logging.INFO)
    logging.getLogger("monai_cir.train").addHandler(handler)  # (MONAI's StatsHandler logs there, not to the root)
    try:
        with caplog.at_level(logging.INFO):
            train_head(model, cache, np.arange(48), dict(epochs=40, batch_size=0, lr=1e-2, val_fraction=0.0, log_dir=str(tmp_path / "tb")))
    finally:
        logging.getLogger("monai_cir.train").removeHandler(handler)
    lines = kept + [r.getMessage() for r in caplog.records]
    assert not [m for m in lines if "Complete. Time taken" in m], lines[:5]
    # (counted where the StatsHandler logs: whether its logger also reaches the root, and caplog, depends on the suite)
    losses = [m for m in kept if "Loss" in m or "loss" in m]
    assert 4 <= len(losses) <= 11 and any("40/40" in m for m in losses), kept
    # without a log folder (`monai-cir evaluate`'s heads): no ignite line either (before: one per epoch and run)
    caplog.clear()
    logging.getLogger("ignite.engine.engine.SupervisedTrainer").setLevel(logging.NOTSET)  # (a logger by name: the run above set it)
    with caplog.at_level(logging.INFO):
        train_head(model, cache, np.arange(48), dict(epochs=5, batch_size=0, lr=1e-2, val_fraction=0.0))
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("ignite")], caplog.text


def test_dataset_batches_selected_levels(net):
    cache = synthetic_cache(net)
    ds = CachedBatchDataset(cache, level_indices=(1, 2), flip=True)
    batch = ds[[0, 1, 2]]
    assert len(batch["query_maps"]) == 2 and batch["query_maps"][0].shape[0] == 3
    assert batch["label"].tolist() == [0, 1, 2]


def test_finetune_lowers_the_training_loss(tmp_path):
    """End-to-end switch: encoders unfrozen, raw images + texts in; three optimiser steps lower the loss of
    the training cases (the network in eval mode, the same batch before and after: BatchNorm statistics
    alone, which move without any step, cannot pass this)."""
    from PIL import Image

    from monai_cir.data.collections import CaseRecord, records_dataset
    from monai_cir.engine.finetune import (
        EndToEndModel,
        finetune,
        fit_input_statistics_from_records,
    )

    tiny = make_tiny_net()
    rng = np.random.default_rng(0)
    records = []
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((rng.integers(0, 160, (40, 48, 3)) + 80 * (i % 2)).astype(np.uint8)).save(path)
        records.append(CaseRecord(f"c{i}", path, "nevus", i % 2, "pigment network: typical" if i % 3 else "", "trunk", "test", {}))
    batch = torch.utils.data.default_collate([records_dataset(records, tiny.image_size)[i] for i in range(6)])
    loss_fn = ComposedSupConLoss(temperature=0.1)

    def training_loss() -> float:
        with torch.no_grad():
            return float(loss_fn(EndToEndModel(tiny.eval())(batch), batch["label"]))

    fit_input_statistics_from_records(tiny, records)  # what finetune does first: the same statistics before and after
    before = training_loss()
    result = finetune(tiny, records, np.arange(6), dict(epochs=3, batch_size=6, lr=1e-2, temperature=0.1), device="cpu", augment=False)
    assert result.epochs_run == 3 and all(math.isfinite(h["loss"]) for h in result.history)
    after = training_loss()
    assert after < before, (before, after)


def _records(diagnoses, prefix="own"):
    """Case records of a user's collection (ids the committed Derm7pt folds do not know); no image is read."""
    from pathlib import Path

    from monai_cir.data.collections import CaseRecord

    names = sorted(set(diagnoses))
    return [CaseRecord(f"{prefix}-{i}", Path(f"img{i}.png"), d, names.index(d), "", collection="own") for i, d in enumerate(diagnoses)]


def test_own_collection_gets_deterministic_stratified_folds_and_fold_minus_one_needs_none():
    """A collection outside the committed folds file is split 5-fold, stratified by diagnosis, the same way on every
    run; Derm7pt ids keep their committed folds; fold -1 (all cases) needs no folds at all (3 cases cannot be split)."""
    from monai_cir.data.folds import collection_folds, load_folds
    from monai_cir.engine.bundle import fold_split

    records = _records(["melanoma"] * 10 + ["nevus"] * 25 + ["dermatofibroma"] * 5)
    folds, how = collection_folds([r.case_id for r in records], [r.label for r in records])
    assert folds == collection_folds([r.case_id for r in records], [r.label for r in records])[0] and "stratified" in how
    labels = np.array([r.label for r in records])
    for f in range(5):  # every fold holds each diagnosis in its share: 2 / 5 / 1
        assert np.bincount(labels[np.array(folds) == f], minlength=3).tolist() == [1, 2, 5], f
    train, held_out = fold_split(records, 3)
    assert sorted(held_out.tolist()) == [i for i, f in enumerate(folds) if f == 3] and len(train) + len(held_out) == 40
    committed = load_folds()
    derm = list(committed)[:3]
    assert collection_folds(derm, [0, 1, 2]) == ([committed[c] for c in derm], None)
    few = _records(["melanoma", "nevus", "nevus"])
    train, held_out = fold_split(few, -1)
    assert train.tolist() == [0, 1, 2] and held_out.size == 0
    with pytest.raises(ValueError, match="5-fold cross-validation needs at least 5 cases"):
        fold_split(few, 0)


def test_class_counts_are_checked_before_training_and_name_the_diagnosis():
    """The diagnosis prior's inner CV needs 2 training cases of every diagnosis (its partial-text rows are grouped by
    case, so 2 cases suffice there too): 1 is refused with the diagnosis named; 2 pass; no prior, no check."""
    from monai_cir.engine.bundle import check_training_classes
    from monai_cir.engine.diagnosis_prior import PRIOR_MIN_CASES

    records = _records(["melanoma"] * 4 + ["nevus"] * 4 + ["dermatofibroma"] * 2)
    check_training_classes(records, np.arange(10), 10.0)
    with pytest.raises(ValueError, match=r"'dermatofibroma' has 1 training case\(s\) among the training cases of fold 2.*at least 2.*"
                       r"or train without the prior \(`monai-cir train --prior-strength 0`"):
        check_training_classes(records, np.arange(9), 10.0, fold=2)
    # ... which the command line offers (it sets the config's prior_strength)
    import argparse

    from monai_cir.cli import train as train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_parser(parser.add_subparsers())
    assert train_cli.overrides(parser.parse_args(["train", "--prior-strength", "0"]))["prior_strength"] == 0.0
    assert "prior_strength" not in train_cli.overrides(parser.parse_args(["train"]))
    check_training_classes(records, np.arange(9), 0.0)  # no prior: nothing needs two
    with pytest.raises(ValueError, match="two or more diagnoses"):
        check_training_classes(records, np.arange(4), 10.0)
    assert PRIOR_MIN_CASES == 2


def test_train_cli_refuses_bad_input_in_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    """`monai-cir train`: --fold is checked by argparse in the CLI's own terms; an existing checkpoint is kept
    without --overwrite (no workflow is even built); an error inside the config (Derm7pt not found) is one line, exit 2."""
    import monai.bundle

    from monai_cir.cli import main

    for bad in ("7", "abc", "-1"):
        with pytest.raises(SystemExit) as stop:
            main(["train", "--fold", bad])
        assert stop.value.code == 2
        assert "0-4, or 'all'" in capsys.readouterr().err
    existing = tmp_path / "model.pt"
    existing.write_bytes(b"a trained model")
    built = []
    monkeypatch.setattr(monai.bundle, "ConfigWorkflow", lambda *a, **k: built.append(k) or pytest.fail("a workflow was built"))
    assert main(["train", "--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite" in err and not built and existing.read_bytes() == b"a trained model"
    monkeypatch.undo()
    assert main(["train", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "new.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("monai-cir train: error: Derm7pt not found") and not any("Traceback" in line for line in err), err
    assert not (tmp_path / "new.pt").exists()


def test_train_cli_checks_the_class_counts_of_an_own_collection_before_anything_is_built(tmp_path, monkeypatch, capsys):
    """`monai-cir train --images --csv` with a diagnosis of one case: refused with the diagnosis, its count and the
    minimum named, before the feature cache or any stage (nothing written: no checkpoint, no .partial)."""
    from PIL import Image

    from monai_cir.cli import main
    from monai_cir.data import feature_cache

    diagnoses = ["melanoma"] * 3 + ["nevus"] * 3 + ["dermatofibroma"]
    for i in range(len(diagnoses)):
        Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(tmp_path / f"img{i}.png")
    (tmp_path / "cases.csv").write_text("image,diagnosis\n" + "".join(f"img{i}.png,{d}\n" for i, d in enumerate(diagnoses)))
    monkeypatch.setattr(feature_cache, "build_feature_cache", lambda *a, **k: pytest.fail("the feature cache was built"))
    out = tmp_path / "model.pt"
    assert main(["train", "--images", str(tmp_path), "--csv", str(tmp_path / "cases.csv"), "--out", str(out)]) == 2
    assert "diagnosis 'dermatofibroma' has 1 training case(s) among all cases; the diagnosis prior needs at least 2" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_two_runs_with_one_checkpoint_path_never_replace_each_other(tmp_path):
    """Each run stages its checkpoint under its own name, and one whose target another run wrote meanwhile keeps
    its result beside it instead of replacing the other's; a killed run's staging file is cleaned up."""
    import os
    from pathlib import Path

    from monai_cir.engine.bundle import publish_checkpoint, staging_path

    target = tmp_path / "model.pt"
    killed = tmp_path / "model.pt.999999999.partial"  # a run whose process is gone (above any pid_max)
    killed.write_bytes(b"half-trained")
    staging = Path(staging_path(target))
    assert staging.name == f"model.pt.{os.getpid()}.partial" and not killed.exists()
    staging.write_bytes(b"this run")
    target.write_bytes(b"the other run")  # published while this one trained
    with pytest.raises(FileExistsError, match="written by another run while this one trained"):
        publish_checkpoint(staging, target)
    kept = tmp_path / f"model.kept-{os.getpid()}.pt"
    assert target.read_bytes() == b"the other run" and kept.read_bytes() == b"this run" and not staging.exists()
    staging_path(target)  # a later run's clean-up of staging files leaves the kept result alone (it deleted the .partial kept before)
    assert kept.read_bytes() == b"this run"

    alone = tmp_path / "alone.pt"
    alone.write_bytes(b"previous")  # there before the run began (--overwrite): replaced
    staging = Path(staging_path(alone))
    staging.write_bytes(b"new")
    assert publish_checkpoint(staging, alone) == alone and alone.read_bytes() == b"new" and not staging.exists()


def test_a_run_whose_staging_path_is_first_asked_after_training_still_sees_the_other_run(tmp_path):
    """Found by review: finetune.yaml first resolves @staging when saving, after training, so the target "as this run
    found it" was taken after the other run had published, and this run replaced it. The check before training
    (check_checkpoint_target) records the target's state."""
    from pathlib import Path

    from monai_cir.engine.bundle import check_checkpoint_target, publish_checkpoint, staging_path

    target = tmp_path / "model.pt"
    check_checkpoint_target(target, overwrite=True)  # the run begins: no model.pt yet
    target.write_bytes(b"the other run")  # the other run publishes while this one trains
    staging = Path(staging_path(target))  # asked for the first time at the save
    staging.write_bytes(b"this run")
    with pytest.raises(FileExistsError, match="written by another run while this one trained"):
        publish_checkpoint(staging, target)
    assert target.read_bytes() == b"the other run"


def test_inner_validation_keeps_a_lesions_cases_on_one_side():
    """Found by review: the outer folds keep a patient's / lesion's images together, the inner validation split did
    not, so a validation query found its own lesion's other view (early stopping then favoured memorising it)."""
    from types import SimpleNamespace

    labels = np.array([0, 1] * 20)
    records = [SimpleNamespace(case_id=f"c{i}", metadata={"lesion_id": f"L{i // 2 if i < 20 else i}"}) for i in range(40)]
    # lesions L0..L9 hold two cases each (of the two classes: a lesion's class is its first case's)
    train, val = stratified_split(labels, np.arange(40), 0.25, seed=0, records=records)
    assert len(train) + len(val) == 40 and not set(train) & set(val) and len(val) >= 6
    lesion = {i: r.metadata["lesion_id"] for i, r in enumerate(records)}
    assert not {lesion[i] for i in train} & {lesion[i] for i in val}
    assert set(labels[val]) == {0, 1}
    # without groups (or with every case its own group) the split is the stratified one it always was
    assert [a.tolist() for a in stratified_split(labels, np.arange(40), 0.25, seed=0)] == \
           [a.tolist() for a in stratified_split(labels, np.arange(40), 0.25, seed=0, records=[SimpleNamespace(case_id=f"c{i}", metadata={}) for i in range(40)])]


def test_the_loss_of_a_batch_without_two_cases_of_one_diagnosis_is_zero_not_nan():
    """Found by review: the target-target term masks its diagonal to -inf; with no positive anywhere it returned
    -inf * 0 = NaN, which the progress bar and TensorBoard showed as divergence (a DDP rank's last batch of one)."""
    from monai_cir.losses import multi_positive_supcon

    for labels in ([0, 1, 2], [0]):
        logits = torch.randn(len(labels), len(labels), requires_grad=True)
        loss = multi_positive_supcon(logits, torch.tensor(labels), torch.tensor(labels), exclude_diagonal=True)
        assert torch.isfinite(loss) and float(loss) == 0.0
        loss.backward()
        assert torch.isfinite(logits.grad).all()


def test_train_cli_fine_tunes_with_an_option_and_an_overlay_alone_is_one_line(tmp_path, capsys, monkeypatch):
    """Found by review: `monai-cir train` had no way to fine-tune, and `--config finetune.yaml` (an overlay) ended in an
    11-frame traceback (KeyError 'network_def'). --finetune layers finetune.yaml over train.yaml; an overlay alone is
    one line, exit 2."""
    import monai.bundle

    from monai_cir.cli import main
    from monai_cir.cli.train import BUNDLE_DIR

    assert main(["train", "--config", str(BUNDLE_DIR / "configs" / "finetune.yaml"), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "do not define 'network_def'" in err[-1] and "--finetune" in err[-1] and not any("Traceback" in line for line in err), err
    built = []

    class Stop(Exception):
        pass

    def workflow(**kwargs):
        built.append(kwargs)
        raise Stop

    monkeypatch.setattr(monai.bundle, "ConfigWorkflow", workflow)
    with pytest.raises(Stop):
        main(["train", "--finetune", "--out", str(tmp_path / "m.pt")])
    assert [Path(f).name for f in built[0]["config_file"]] == ["train.yaml", "finetune.yaml"]


def test_train_options_never_reach_the_config_parser_as_code(tmp_path, monkeypatch):
    """Found by review: the CSV's name became the cache_name override and MONAI's config parser ran a value starting
    with "$" as Python (a CSV named "$__import__('pathlib').Path('x').write_text('ran').csv" wrote x); relative paths
    given to --out / --log-dir / --data-root went in as written. Paths go in absolute, other such values are refused."""
    from types import SimpleNamespace as NS

    from monai_cir.cli import build_parser
    from monai_cir.cli import train as train_cli

    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    values = train_cli.overrides(parser.parse_args(["train", "--log-dir", "$HOME/logs", "--out", "@net/model.pt", "--data-root", "%x"]))
    assert values["log_dir"] == str(tmp_path / "$HOME" / "logs") and values["checkpoint"] == str(tmp_path / "@net" / "model.pt")
    assert values["dataset_dir"] == str(tmp_path / "%x")
    hostile = [NS(collection="$__import__('os').system('true')")]
    with pytest.raises(ValueError, match=r"the CSV's file name \(the collection's name\) .* starts with '\$', which the training config would read as code to run"):
        train_cli.overrides(parser.parse_args(["train"]), hostile)
