"""The MONAI bundle in MONAI's own test style: ConfigWorkflow initialize / run / finalize with small
overrides (one fold, two epochs, a 30-case subset) for train, evaluate and inference, plus
verify_metadata against the shipped schema and verify_net_in_out on the target tower.

Uses the real offline encoders and real images (MONAI_CIR_DATA); the subset cache goes to the
git-ignored cache folder under its own name, never over the full Derm7pt cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
CONFIGS = BUNDLE / "configs"
SUBSET = "$monai_cir.engine.bundle.subset_records('derm7pt', 30)"


def _workflow(config_files, workflow_type="train", **override):
    from monai.bundle import ConfigWorkflow

    files = [str(CONFIGS / f) for f in config_files]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        **override,
    )


@pytest.fixture(scope="module")
def trained_fold(tmp_path_factory, shared_data):
    """train.yaml on a 30-case subset, fold 0, two epochs: the checkpoint of the run."""
    root = tmp_path_factory.mktemp("bundle")
    wf = _workflow(
        ["train.yaml"],
        bundle_root=str(root),
        fold=0,
        records=SUBSET,
        cache_name="derm7pt-ci30",
        max_epochs=2,
        batch_size=12,
        val_fraction=0.25,
        **{"late_fusion_options#train#epochs": 20},  # the second stage's recipe is a config node (200 epochs by default)
        prior_options={"c_grid": [0.003, 0.03], "inner_folds": 2},  # so is the third stage's inner cross-validation
    )
    wf.initialize()
    assert not wf.check_properties()  # MONAI's train properties: every required id exists (None or [] missing)
    wf.run()
    wf.finalize()
    return root


def test_train_workflow_writes_checkpoint(trained_fold):
    from monai_cir.networks import load_model
    from monai_cir.networks.checkpoint import read_checkpoint

    ckpt = trained_fold / "models" / "model_fold0.pt"
    assert ckpt.is_file() and not list((trained_fold / "models").glob("*.partial"))  # the stages' file was renamed onto it
    payload = read_checkpoint(ckpt)
    assert payload["format"] == "monai-cir-head/1" and payload["extra"]["fold"] == 0
    # the training cases are recorded (fit-differential leaves them out), the held-out fold's are not
    from monai_cir.engine.bundle import fold_split, subset_records

    records = subset_records("derm7pt", 30)
    train, held_out = fold_split(records, 0)
    assert payload["extra"]["trained_on"] == [records[i].case_id for i in train] and len(held_out) > 0
    assert len(payload["encoder_fingerprint"]) == 64
    net = load_model(ckpt)
    assert net.config["beta"] == 0.6
    # the second stage: the release network carries the trained late-fusion branch (S = (S_Eq9 + S_lf) / 2)
    assert net.config["late_fusion_share"] == 0.5 and net.embedding_dim == 1040 + 256
    assert any(k.startswith("late_fusion.") for k in payload["head"]) and payload["extra"]["late_fusion_epochs"] == 20
    assert float(payload["head"]["late_fusion.image_norm.std"].sub(1).abs().max()) > 0  # fitted on the training cases
    # the third stage: the diagnosis prior's two probes, fitted on the same training cases, saved with the head
    assert net.config["diagnosis_prior"] == {"classes": ["melanoma", "nevus", "benign keratosis"], "strength": 10.0}
    assert bool(payload["head"]["diagnosis_prior.fitted"].all()) and float(payload["head"]["diagnosis_prior.weight"].abs().sum()) > 0
    fit = payload["extra"]["diagnosis_prior"]
    assert fit["classes"] == net.config["diagnosis_prior"]["classes"] and {"C", "inner_accuracy"} <= set(fit["full_text"]) | set(fit["partial_text"])
    assert fit["c_grid"] == [0.003, 0.03] and fit["inner_folds"] == 2 and {fit["full_text"]["C"], fit["partial_text"]["C"]} <= {0.003, 0.03}
    _, terms = net.encode_query_and_terms(torch.rand(1, 3, 260, 260), [records[held_out[0]].text])
    assert terms.shape == (1, 4) and bool((terms[0, :3] < 0).all())
    assert any((trained_fold / "logs").glob("events.out.tfevents.*"))  # TensorBoard-readable


def test_train_workflow_full_batch_regime_keeps_the_last_epoch(tmp_path, shared_data):
    """train.yaml in the full-batch regime (batch_size 0, no inner validation, no early stopping) on the
    30-case subset: the checkpoint is the last epoch's, with the findings gate recorded in its config (and the
    config's full_text_findings, here set to 3 as `monai-cir train --full-text-findings 3` does, not the default 5)."""
    import argparse

    from monai_cir.cli import train as train_cli
    from monai_cir.networks.checkpoint import read_checkpoint

    parser = argparse.ArgumentParser()
    train_cli.add_parser(parser.add_subparsers())
    cli = train_cli.overrides(parser.parse_args(["train", "--full-text-findings", "3"]))
    assert cli["full_text_findings"] == 3 and "text_gate" not in cli
    wf = _workflow(["train.yaml"], bundle_root=str(tmp_path), fold=0, records=SUBSET, cache_name="derm7pt-ci30", max_epochs=3,
                   batch_size=0, val_fraction=0.0, patience=0, full_text_findings=cli["full_text_findings"])
    wf.initialize()
    wf.run()
    wf.finalize()
    payload = read_checkpoint(tmp_path / "models" / "model_fold0.pt")
    assert payload["extra"]["epoch"] == 3 and payload["extra"]["metrics"] == {}
    assert payload["config"]["text_gate"] == "findings" and payload["config"]["full_text_findings"] == 3


def test_evaluate_workflow(trained_fold):
    wf = _workflow(["train.yaml", "evaluate.yaml"], workflow_type="eval", bundle_root=str(trained_fold), fold=0, records=SUBSET, cache_name="derm7pt-ci30")
    wf.initialize()
    wf.run()
    wf.finalize()
    metrics = json.loads((trained_fold / "eval" / "metrics_fold0.json").read_text())
    assert set(metrics) >= {"acc@1", "acc@2", "acc@4", "map", "p@5"} and 0 <= metrics["map"] <= 100
    # scored as the app ranks: the fold model's diagnosis prior orders every held-out query (Derm7pt texts name
    # findings); S alone is reported beside it; the JSON names the checkpoint it scored
    from monai_cir.networks import load_model

    net = load_model(trained_fold / "models" / "model_fold0.pt")
    assert net.diagnosis_prior is not None and metrics["ranking"] == "similarity_and_diagnosis_prior"
    assert metrics["prior_ordered"] == metrics["n_queries"] > 0
    assert set(metrics["by_similarity"]) == {"acc@1", "acc@2", "acc@4", "map", "p@5"}
    assert metrics["checkpoint"].endswith("model_fold0.pt") and metrics["fingerprint"] == net.fingerprint()
    assert metrics["checkpoint_fold"] == 0  # the fold the checkpoint records (the one it was trained for)
    # what was scored: the collection, the maps' size (the checkpoint's, not a config default), the held-out cases
    _, held_out = wf.parser.get_parsed_content("split")
    cache = wf.parser.get_parsed_content("cache")
    assert metrics["collection"] == cache.collection and metrics["image_size"] == net.image_size == 260 and metrics["unit"] == "percent"
    assert metrics["query_case_ids_sha256"] == hashlib.sha256("\n".join(cache.records[int(i)].case_id for i in held_out).encode()).hexdigest()
    assert metrics["tta"] is True
    # run again with other settings (as the command line passes them): the earlier results are kept beside, not replaced
    # without a word, and the file says how it was embedded
    again = _workflow(["train.yaml", "evaluate.yaml"], workflow_type="eval", bundle_root=str(trained_fold), fold=0, records=SUBSET,
                      cache_name="derm7pt-ci30", tta="false")
    again.initialize()
    again.run()
    again.finalize()
    assert json.loads((trained_fold / "eval" / "metrics_fold0.json").read_text())["tta"] is False
    kept = [json.loads(f.read_text()) for f in (trained_fold / "eval").glob("metrics_fold0.*.json")]
    assert [k["tta"] for k in kept] == [True] and kept[0]["map"] == metrics["map"]


def test_evaluate_refuses_a_cache_of_another_image_size(trained_fold):
    """A checkpoint's heads scored on maps of another size than they were trained on would give numbers that mean
    nothing: with --image_size overridden to 128 for a 260 px checkpoint, the workflow refuses in one line and writes
    no metrics."""
    wf = _workflow(["train.yaml", "evaluate.yaml"], workflow_type="eval", bundle_root=str(trained_fold), fold=0, records=SUBSET,
                   cache_name="derm7pt-ci30", image_size=128, output_dir=str(trained_fold / "eval-128"))
    wf.initialize()
    with pytest.raises(RuntimeError) as failure:
        wf.run()
    cause = failure.value.__cause__
    assert isinstance(cause, ValueError) and "\n" not in str(cause), cause
    assert "trained on 260 px images, but the feature cache holds 128 px maps" in str(cause), cause
    assert not (trained_fold / "eval-128" / "metrics_fold0.json").exists()


def test_evaluate_refuses_a_checkpoint_trained_on_held_out_cases(trained_fold):
    """Fold 0's checkpoint scored on fold 1 (or the model on every case on any fold) would count cases it learned:
    the workflow refuses in one line naming how many held-out cases it trained on, and writes no metrics."""
    wf = _workflow(["train.yaml", "evaluate.yaml"], workflow_type="eval", bundle_root=str(trained_fold), fold=1, records=SUBSET,
                   cache_name="derm7pt-ci30", checkpoint=str(trained_fold / "models" / "model_fold0.pt"))
    wf.initialize()
    with pytest.raises(RuntimeError) as failure:
        wf.run()
    cause = failure.value.__cause__
    held_out = len(wf.parser.get_parsed_content("split")[1])
    assert isinstance(cause, ValueError) and "\n" not in str(cause), cause
    assert f"was trained on {held_out} of the {held_out} held-out cases" in str(cause) and "its own" in str(cause), cause
    assert not (trained_fold / "eval" / "metrics_fold1.json").exists()


def test_evaluate_refuses_a_missing_fold_checkpoint(trained_fold):
    """No model_fold1.pt: the workflow fails and says so (it never scores the untrained default)."""
    wf = _workflow(["train.yaml", "evaluate.yaml"], workflow_type="eval", bundle_root=str(trained_fold), fold=1, records=SUBSET, cache_name="derm7pt-ci30")
    wf.initialize()
    with pytest.raises(RuntimeError) as failure:  # MONAI wraps the error of the expression that raised it
        wf.run()
    cause = failure.value.__cause__
    assert isinstance(cause, FileNotFoundError) and "model_fold1.pt" in str(cause), cause
    assert not (trained_fold / "eval" / "metrics_fold1.json").exists()


def test_inference_workflow(trained_fold):
    wf = _workflow(
        ["inference.yaml"], workflow_type="infer", bundle_root=str(trained_fold), subset=4, top_k=3,
        checkpoint=str(trained_fold / "models" / "model_fold0.pt"),
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    written = json.loads((trained_fold / "eval" / "ranking.json").read_text())
    from monai_cir.networks import load_model

    # the output names the model that ranked: its checkpoint and fingerprint
    assert written["model"] == {"checkpoint": str(trained_fold / "models" / "model_fold0.pt"),
                                "fingerprint": load_model(trained_fold / "models" / "model_fold0.pt").fingerprint()}
    ranking = written["results"]
    assert len(ranking) == 4 and all(len(r["hits"]) == 3 for r in ranking)
    # how each query's text counted, as the app says it (ISIC UDA-1's age / sex texts name no finding: weight 0)
    assert all(r["text_use"] == {"weight": 0.0, "findings_read": []} and r["ranking"] == "similarity" for r in ranking), ranking
    # the collection ranks itself: leave-one-out, no query is its own best match
    assert all(r["query"] not in {h["case_id"] for h in r["hits"]} for r in ranking), ranking
    scores = [h["score"] for h in ranking[0]["hits"]]
    assert scores == sorted(scores, reverse=True)
    # your own queries against the library: --query_records
    wf = _workflow(["inference.yaml"], workflow_type="infer", bundle_root=str(trained_fold), subset=4, top_k=3,
                   checkpoint=str(trained_fold / "models" / "model_fold0.pt"), query_records="$@records[1:3]")
    wf.initialize()
    wf.run()
    wf.finalize()
    assert [r["query"] for r in json.loads((trained_fold / "eval" / "ranking.json").read_text())["results"]] == [r["query"] for r in ranking[1:3]]
    # the file says what it ranked: the library and the queries, which queries were library cases (leave-one-out)
    assert written["ranked"]["library"]["cases"] == 4 and written["ranked"]["queries"]["cases"] == 4
    assert written["ranked"]["queries"]["library_cases_left_out_of_their_own_ranking"] == 4
    assert written["ranked"]["queries"]["trained_on_by_the_model"] == 0
    # ... and how many queries the model trained on: their rankings are no held-out result
    from monai_cir.networks.checkpoint import read_checkpoint

    wf = _workflow(["inference.yaml"], workflow_type="infer", bundle_root=str(trained_fold), subset=4, top_k=3,
                   checkpoint=str(trained_fold / "models" / "model_fold0.pt"), query_records=SUBSET)
    wf.initialize()
    wf.run()
    wf.finalize()
    trained_on = read_checkpoint(trained_fold / "models" / "model_fold0.pt")["extra"]["trained_on"]
    ranked = json.loads((trained_fold / "eval" / "ranking.json").read_text())["ranked"]["queries"]
    assert ranked["trained_on_by_the_model"] == len(trained_on) > 0 and ranked["library_cases_left_out_of_their_own_ranking"] == 0
    # --subset applies to a library given with --records too (it ranked every case of --records)
    wf = _workflow(["inference.yaml"], workflow_type="infer", bundle_root=str(trained_fold), subset=3, top_k=2,
                   checkpoint=str(trained_fold / "models" / "model_fold0.pt"), records=SUBSET)
    wf.initialize()
    wf.run()
    wf.finalize()
    assert json.loads((trained_fold / "eval" / "ranking.json").read_text())["ranked"]["library"]["cases"] == 3


def test_inference_refuses_a_missing_checkpoint(tmp_path):
    """A missing or mistyped --checkpoint fails and names the file (never the untrained default ranked in its place)."""
    missing = tmp_path / "nonexist.pt"
    wf = _workflow(["inference.yaml"], workflow_type="infer", bundle_root=str(tmp_path), subset=3, checkpoint=str(missing))
    wf.initialize()
    with pytest.raises(RuntimeError) as failure:
        wf.run()
    cause = failure.value.__cause__
    assert isinstance(cause, FileNotFoundError) and str(missing) in str(cause), cause
    assert not (tmp_path / "eval" / "ranking.json").exists()


def test_an_existing_checkpoint_is_kept_and_an_interrupted_run_never_replaces_it(trained_fold, tmp_path):
    """train.yaml refuses an existing @checkpoint before any training unless overwrite; with overwrite, the stages
    write <checkpoint>.partial, so a run that fails in a later stage leaves the previous checkpoint byte for byte."""
    import shutil

    target = tmp_path / "models" / "model_fold0.pt"
    target.parent.mkdir()
    shutil.copy(trained_fold / "models" / "model_fold0.pt", target)
    before = target.read_bytes()
    common = dict(bundle_root=str(tmp_path), fold=0, records=SUBSET, cache_name="derm7pt-ci30", max_epochs=1, batch_size=12, val_fraction=0.25)
    wf = _workflow(["train.yaml"], overwrite="false", **common)  # as `--overwrite false` passes it: a string (it read as true)
    wf.initialize()
    with pytest.raises(RuntimeError) as failure:
        wf.run()
    assert isinstance(failure.value.__cause__, ValueError) and "--overwrite true" in str(failure.value.__cause__)
    assert wf.parser.get_parsed_content("train#trainer").state.epoch == 0  # refused before any training
    wf = _workflow(["train.yaml"], overwrite=True, late_fusion_stage="$int('interrupted in the second stage')", **common)
    wf.initialize()
    with pytest.raises(RuntimeError):
        wf.run()
    assert target.read_bytes() == before and (tmp_path / "models" / f"model_fold0.pt.{os.getpid()}.partial").is_file()


def test_cli_trains_and_the_bundle_evaluates_an_own_collection(shared_data, tmp_path):
    """`monai-cir train --images DIR --csv FILE` (ids outside the committed folds) trains fold 0 of the collection's
    stratified folds (no 'is the cache of Derm7pt?'), and evaluate.yaml scores that checkpoint on the same fold."""
    import csv

    from monai_cir.cli import main
    from monai_cir.engine.bundle import fold_split, subset_records
    from monai_cir.networks.checkpoint import read_checkpoint

    images = shared_data / "derm7pt" / "release_v0" / "images"
    table = tmp_path / "own-ci15.csv"
    with open(table, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["case_id", "image", "diagnosis", "text"])
        rows.writerows([f"own-{i}", r.image_path.relative_to(images), r.diagnosis, r.text] for i, r in enumerate(subset_records("derm7pt", 15)))
    out = tmp_path / "models" / "model_fold0.pt"
    assert main(["train", "--images", str(images), "--csv", str(table), "--fold", "0", "--epochs", "1", "--out", str(out),
                 "--log-dir", str(tmp_path / "logs")]) == 0
    from monai_cir.data import load_image_csv

    records = load_image_csv(images, table)
    train, held_out = fold_split(records, 0)
    assert read_checkpoint(out)["extra"]["trained_on"] == [records[i].case_id for i in train] and len(held_out) == 3
    assert main(["train", "--images", str(images), "--csv", str(table), "--fold", "0", "--out", str(out)]) == 2  # kept without --overwrite
    wf = _workflow(["train.yaml", "evaluate.yaml"], workflow_type="eval", bundle_root=str(tmp_path), fold=0, cache_name="own-ci15",
                   records=f"$monai_cir.data.load_image_csv({str(images)!r}, {str(table)!r})")
    wf.initialize()
    wf.run()
    wf.finalize()
    metrics = json.loads((tmp_path / "eval" / "metrics_fold0.json").read_text())
    assert metrics["n_queries"] == 3 and metrics["n_database"] == 12


def test_inference_ranks_as_the_app_shows_with_the_checkpoints_differential_slot(trained_fold, shared_data):
    """rank_collection applies the slot the checkpoint records, as the app does: the closest case of another
    diagnosis than the best match's, beyond rank 2, is shown at rank 2 with the app's notice; the rest is the
    leave-one-out similarity ranking (what differential=False gives)."""
    from monai_cir.engine.bundle import rank_collection, subset_records
    from monai_cir.networks import load_model

    net = load_model(trained_fold / "models" / "model_fold0.pt")
    records = subset_records("derm7pt", 12)
    plain = rank_collection(net, records, records, top_k=5, differential=False)
    net.checkpoint_info = {**net.checkpoint_info, "differential": {"margin": 100.0, "rank": 2}}  # opens whenever it can
    shown = rank_collection(net, records, records, top_k=5)
    assert [r["query"] for r in shown] == [r.case_id for r in records]
    opened = 0
    for before, after in zip(plain, shown):
        assert before["query"] not in {h["case_id"] for h in after["hits"]}
        best = before["hits"][0]["diagnosis"]
        other = next((h for h in before["hits"] if h["diagnosis"] != best), None)
        if other is None or before["hits"].index(other) >= 2:  # the closest other diagnosis lies beyond rank 2
            opened += 1
            assert after["differential"] is not None and after["differential"]["rank"] == 2, after
            assert after["hits"][0] == before["hits"][0] and after["hits"][1]["diagnosis"] != best
            assert after["hits"][1]["case_id"] == after["differential"]["case_id"]
            assert "rank 2 is the closest" in after["differential"]["notice"]
            rest = [h["case_id"] for h in before["hits"] if h["case_id"] != after["hits"][1]["case_id"]]
            assert [h["case_id"] for h in after["hits"][2:]] == rest[1:4]
        else:
            assert after["differential"] is None and after["hits"] == before["hits"]
    assert opened, "no query opened the slot: the test checks nothing"


def test_verify_metadata_against_shipped_schema(tmp_path):
    """metadata.json passes the shipped copy of the 20240725 schema (the one it names), offline; a network input
    without num_channels fails it, in network_data_format and in the query tower's query_data_format alike, and so
    does a missing required_packages_version (required since 20240725)."""
    from monai.bundle import verify_metadata

    schema = BUNDLE / "schema" / "meta_schema_20240725.json"
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert metadata["schema"].endswith("/" + schema.name)
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(schema))
    breakages = {
        "network_data_format": lambda m: m["network_data_format"]["inputs"]["image"].pop("num_channels"),
        "query_data_format": lambda m: m["query_data_format"]["inputs"]["text"].pop("num_channels"),
        "required_packages_version": lambda m: m.pop("required_packages_version"),
    }
    for name, breakage in breakages.items():
        broken = json.loads(json.dumps(metadata))
        breakage(broken)
        path = tmp_path / f"broken_{name}.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError):
            verify_metadata(meta_file=str(path), filepath=str(schema))


def test_verify_net_in_out(trained_fold):
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.yaml"),
        device="cpu",
        bundle_root=str(trained_fold),
        checkpoint=str(trained_fold / "models" / "model_fold0.pt"),
    )


def test_ckpt_export_of_another_checkpoint_needs_it_as_checkpoint_too(trained_fold, tmp_path):
    """The model card's ckpt_export with --ckpt_file of one's own checkpoint built network_def from the release model.pt
    and loaded the own weights into it: exported with the release model's β and late-fusion share (up to 0.116 off).
    Refused, naming the option; with --checkpoint the same file it exports that checkpoint's own embedding."""
    from monai.bundle import ckpt_export

    from monai_cir.networks import load_model

    own = trained_fold / "models" / "model_fold0.pt"
    common = dict(net_id="network_def", ckpt_file=str(own), key_in_ckpt="head", use_trace=True, input_shape=[1, 3, 260, 260],
                  meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.yaml"), bundle_root=str(BUNDLE))
    with pytest.raises(ValueError, match=r"give the file as --checkpoint too"):
        ckpt_export(filepath=str(tmp_path / "mixed.ts"), **common)
    ckpt_export(filepath=str(tmp_path / "own.ts"), checkpoint=str(own), **common)
    images = torch.rand(1, 3, 260, 260)
    exported = torch.jit.load(str(tmp_path / "own.ts"))
    torch.testing.assert_close(exported(images), load_model(own).encode_target(images), atol=1e-4, rtol=1e-4)


FINETUNE = dict(
    fold=-1, records="$monai_cir.engine.bundle.subset_records('derm7pt', 12)", image_size=64, max_epochs=1, batch_size=4,
    **{"train#trainer#epoch_length": 2},
)


def test_finetune_overlays_train_end_to_end_under_ddp_and_save_the_whole_network(tmp_path, shared_data, monkeypatch):
    """train + finetune + multi_gpu_train.yaml as torchrun would start rank 0 of 1 (no override: gloo and CPU chosen by
    the overlay on a machine without CUDA; finetune.yaml
    alone differs only in the wrapper and the sampler): two end-to-end steps on 12 real images at 64 px.
    The network is DistributedDataParallel over trainable encoders, the sampler a DistributedSampler; rank 0
    saves the whole network (monai-cir-net/1) and load_model rebuilds exactly the fine-tuned one."""
    from monai_cir.networks import encoder_fingerprint, load_model
    from monai_cir.networks.checkpoint import read_checkpoint
    from monai_cir.networks.image_encoder import load_offline_efficientnet_lite

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)
    # as written: on a machine without CUDA the overlay picks CPU processes, gloo and no device_ids by itself
    wf = _workflow(["train.yaml", "finetune.yaml", "multi_gpu_train.yaml"], bundle_root=str(tmp_path), **FINETUNE)
    wf.initialize()
    assert not wf.check_properties()
    wf.run()
    network = wf.parser.get_parsed_content("network")
    sampler = wf.parser.get_parsed_content("train#sampler")
    trained = wf.parser.get_parsed_content("network_def")
    wf.finalize()
    assert isinstance(network, torch.nn.parallel.DistributedDataParallel)
    assert isinstance(sampler, torch.utils.data.DistributedSampler)
    encoders = list(network.module.net.encoder_parameters())
    assert encoders and all(p.requires_grad for p in encoders) and all(p.grad is not None for p in network.module.net.image_encoder.parameters())

    ckpt = tmp_path / "models" / "model.pt"  # fold -1: every case of the subset trains
    assert read_checkpoint(ckpt)["format"] == "monai-cir-net/1"
    loaded = load_model(ckpt)
    assert encoder_fingerprint(loaded) == encoder_fingerprint(trained)
    pretrained = load_offline_efficientnet_lite("tf_efficientnet_lite2")  # the packaged ImageNet weights
    assert not torch.equal(loaded.image_encoder.backbone.state_dict()["conv_stem.weight"], pretrained["conv_stem.weight"])
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded.encode_target(images), trained.eval().encode_target(images), atol=1e-5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_bundle_flag_reads_what_the_command_line_passes():
    """`python -m monai.bundle run --differential false` passes the string 'false', which Python counts as true: every
    true/false setting of the configs reads it through flag(), and a value that is neither is refused, naming it."""
    from monai_cir.engine.bundle import flag

    assert [flag(v, "x") for v in (True, "true", "True", "yes", "1", 1)] == [True] * 6
    assert [flag(v, "x") for v in (False, "false", "False", "no", "0", 0, None)] == [False] * 7
    with pytest.raises(ValueError, match=r"--tta takes true or false, got 'maybe'"):
        flag("maybe", "tta")
    configs = "".join((BUNDLE / "configs" / name).read_text() for name in ("train.yaml", "evaluate.yaml", "inference.yaml", "finetune.yaml", "multi_gpu_train.yaml"))
    for name in ("overwrite", "tta", "differential", "frozen_batchnorm", "flip"):
        assert f"flag(@{name}, '{name}')" in configs, name


def test_own_records_get_a_feature_cache_of_their_own(tmp_path, shared_data):
    """--records without --cache_name used the name 'derm7pt': the own cases' features replaced Derm7pt's cache file
    (and passed as a built-in collection, past the checks of an own collection). The cache is named after the records'
    collection (the CSV's name); a subset of Derm7pt under Derm7pt's name is refused before anything is encoded."""
    import numpy as np
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(images / f"c{i}.png")
    (tmp_path / "mine.csv").write_text("image,diagnosis\n" + "".join(f"c{i}.png,{('nevus', 'melanoma')[i % 2]}\n" for i in range(4)))
    wf = _workflow(["train.yaml"], bundle_root=str(tmp_path), records=f"$monai_cir.data.load_image_csv({str(images)!r}, {str(tmp_path / 'mine.csv')!r})")
    assert wf.parser.get_parsed_content("cache_name") == "mine"
    wf = _workflow(["train.yaml"], bundle_root=str(tmp_path), records=SUBSET, dataset_dir=str(shared_data))
    with pytest.raises(RuntimeError) as failure:  # MONAI wraps the error of the component that raised it
        wf.parser.get_parsed_content("cache")
    assert "not the whole derm7pt collection: give them a cache name of their own" in str(failure.value.__cause__)


@pytest.mark.parametrize("options, said", [({"train": {"epoch": 5}}, "unknown training options ['epoch']"),
                                           ({"nett": {"dropout": 0.2}}, "late_fusion_options has unknown key(s) ['nett']"),
                                           ({"net": {"drop": 0.2}}, "late_fusion_options#net has unknown key(s) ['drop']")])
def test_a_late_fusion_option_typo_is_refused_before_any_training(tmp_path, options, said):
    """--late_fusion_options#train#epoch 5 (for epochs) was refused after the first stage's epochs had run; a misspelt
    top-level key was ignored. Checked when the workflow starts."""
    wf = _workflow(["train.yaml"], bundle_root=str(tmp_path), fold=0, records=SUBSET, cache_name="derm7pt-ci30", late_fusion_options=options)
    with pytest.raises(Exception) as failure:
        wf.initialize()
    assert said in str(failure.value) + str(failure.value.__cause__)


def test_add_prior_replaces_a_checkpoint_only_with_overwrite(trained_fold, tmp_path):
    """``--run_id add_prior`` changes an existing checkpoint (the release model.pt by default): like training, it
    refuses without ``--overwrite true`` and leaves the file as it was."""
    import shutil

    (tmp_path / "models").mkdir()
    ckpt = shutil.copy(trained_fold / "models" / "model_fold0.pt", tmp_path / "models" / "model_fold0.pt")
    before = Path(ckpt).read_bytes()
    wf = _workflow(["train.yaml"], bundle_root=str(tmp_path), fold=0, records=SUBSET, cache_name="derm7pt-ci30", run_id="add_prior")
    wf.initialize()
    with pytest.raises(RuntimeError) as failure:  # MONAI wraps the error of the expression that raised it
        wf.run()
    assert "pass --overwrite true to replace it" in str(failure.value.__cause__), failure.value.__cause__
    assert Path(ckpt).read_bytes() == before


def test_a_typo_in_prior_options_stops_train_yaml_before_any_training(tmp_path, shared_data):
    """prior_options is checked when the workflow initialises, not in the third stage after two have trained."""
    wf = _workflow(["train.yaml"], bundle_root=str(tmp_path), fold=0, records=SUBSET, cache_name="derm7pt-ci30", max_epochs=1,
                   prior_options={"inner_fold": 3})
    with pytest.raises(RuntimeError) as failure:  # MONAI wraps the error of the expression that raised it
        wf.initialize()
    assert "prior_options has unknown key(s) ['inner_fold']" in str(failure.value.__cause__ or failure.value)
    assert not (tmp_path / "models").exists()


def test_the_prior_stage_runs_again_on_its_own_checkpoint(trained_fold, tmp_path):
    """``--run_id add_prior`` onto a checkpoint that already has a prior (the shipped model.pt): the fit is replaced,
    the rest of the record kept, a recorded slot dropped (its margins belong to the previous ranking)."""
    import shutil

    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.differential import DifferentialSlot
    from monai_cir.engine.bundle import add_diagnosis_prior, fold_split, subset_records
    from monai_cir.networks import load_model
    from monai_cir.networks.checkpoint import read_checkpoint, record_in_checkpoint

    ckpt = shutil.copy(trained_fold / "models" / "model_fold0.pt", tmp_path / "model.pt")
    record_in_checkpoint(ckpt, differential=DifferentialSlot(margin=7.5, margin_by_similarity=0.27).to_dict())
    net = load_model(ckpt)
    records = subset_records("derm7pt", 30)
    cache = build_feature_cache("derm7pt-ci30", 260, net=net, records=records, progress=False)
    train, _ = fold_split(cache, 0)
    before = read_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"prior_options has unknown key\(s\) \['folds'\]"):
        add_diagnosis_prior(ckpt, cache, train, strength=3.0, options={"folds": 3})
    with pytest.raises(ValueError, match=r"inner_folds must be a whole number, 2 or more, got 1"):
        add_diagnosis_prior(ckpt, cache, train, strength=3.0, options={"inner_folds": 1})
    assert read_checkpoint(ckpt)["extra"] == before["extra"]  # refused before the file was touched
    add_diagnosis_prior(ckpt, cache, train, strength=3.0)
    after = read_checkpoint(ckpt)
    assert after["config"]["diagnosis_prior"]["strength"] == 3.0 and after["extra"]["diagnosis_prior"]["strength"] == 3.0
    assert "differential" not in after["extra"] and after["extra"]["trained_on"] == before["extra"]["trained_on"]
    assert all(torch.equal(after["head"][k], v) for k, v in before["head"].items() if not k.startswith("diagnosis_prior."))


def test_add_prior_refuses_the_training_cases_of_another_fold(trained_fold, tmp_path):
    """``--run_id add_prior --fold 1`` onto fold 0's checkpoint would fit the prior on fold 1's training cases (fold 0's
    held-out cases among them) and keep the record of fold 0: refused, the message names the checkpoint's fold; the
    checkpoint's own fold's cases are accepted (the release workflow: --fold -1 on model.pt, which records fold -1)."""
    import shutil

    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.engine.bundle import add_diagnosis_prior, fold_split, subset_records
    from monai_cir.networks import load_model
    from monai_cir.networks.checkpoint import read_checkpoint

    ckpt = shutil.copy(trained_fold / "models" / "model_fold0.pt", tmp_path / "model_fold0.pt")
    before = Path(ckpt).read_bytes()
    cache = build_feature_cache("derm7pt-ci30", 260, net=load_model(ckpt), records=subset_records("derm7pt", 30), progress=False)
    with pytest.raises(ValueError, match=r"trained on \d+ cases \(fold 0\).*pass --fold 0"):
        add_diagnosis_prior(ckpt, cache, fold_split(cache, 1)[0], strength=3.0)
    with pytest.raises(ValueError, match="pass --fold 0"):
        add_diagnosis_prior(ckpt, cache, fold_split(cache, -1)[0], strength=3.0)
    assert Path(ckpt).read_bytes() == before
    add_diagnosis_prior(ckpt, cache, fold_split(cache, 0)[0], strength=3.0, options={"c_grid": [0.03], "inner_folds": 2})
    after = read_checkpoint(ckpt)["extra"]
    assert after["fold"] == 0 and after["trained_collection"] == "derm7pt" and after["diagnosis_prior"]["strength"] == 3.0
    # more inner folds asked for than the smallest diagnosis has training cases: the record says how many were used
    train = fold_split(cache, 0)[0]
    smallest = int(np.bincount(cache.labels.numpy()[train]).min())
    add_diagnosis_prior(ckpt, cache, train, strength=3.0, options={"c_grid": [0.03], "inner_folds": 50})
    fit = read_checkpoint(ckpt)["extra"]["diagnosis_prior"]
    assert fit["inner_folds"] == 50 and fit["full_text"]["inner_folds"] == fit["partial_text"]["inner_folds"] == smallest < 50


def test_rank_collection_tells_cases_of_two_collections_apart(shared_data):
    """Leave-one-out drops a query's own library case, which is (collection, case id): a query of another collection
    whose case id equals a library case's is not that case (it is ranked, here first: the same image)."""
    import dataclasses

    from conftest import make_tiny_net

    from monai_cir.engine.bundle import rank_collection, subset_records

    net = make_tiny_net()
    records = subset_records("derm7pt", 6)
    own = rank_collection(net, records, records[:1], top_k=5, differential=False)
    assert records[0].case_id not in {h["case_id"] for h in own[0]["hits"]}  # its own case: left out
    foreign = dataclasses.replace(records[0], collection="elsewhere")  # another CSV's case with the same id
    other = rank_collection(net, records, [foreign], top_k=5, differential=False)
    assert other[0]["hits"][0]["case_id"] == records[0].case_id, other


def test_finetune_refuses_the_settings_it_does_not_use_and_runs_its_own_epochs(tmp_path, shared_data):
    """Found by review: finetune.yaml accepted --val_fraction, --patience, --flip and --text_variants and ignored them
    (no inner validation, no cache), and inherited train.yaml's 100 epochs (meant for early stopping on the cache)."""
    settings = {k: v for k, v in FINETUNE.items() if k != "max_epochs"}
    wf = _workflow(["train.yaml", "finetune.yaml"], bundle_root=str(tmp_path), **settings)
    assert wf.parser.get_parsed_content("max_epochs") == 6
    for name, value in (("val_fraction", 0.2), ("patience", 5), ("flip", "false"), ("text_variants", 3)):
        wf = _workflow(["train.yaml", "finetune.yaml"], bundle_root=str(tmp_path), **{**settings, name: value})
        with pytest.raises(RuntimeError) as refused:
            wf.initialize()
        cause = refused.value
        while cause.__cause__ is not None:
            cause = cause.__cause__
        assert f"does not use --{name} {value}" in str(cause)
