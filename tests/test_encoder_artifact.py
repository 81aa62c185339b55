"""The encoder artifact (monai_cir.networks.scripted): TorchScript encoders that stand in for the eager
ones on CPU. Tiny random-weight networks (conftest.make_tiny_net); the real encoders are covered by
tests/test_deploy_app.py (the app runs on the artifact the index build writes)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from tests.conftest import activate_head, make_tiny_net

TEXTS = ["atypical pigment network, irregular streaks", "", "dots and globules on the back"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A tiny network with a non-trivial head, its whole-network checkpoint and its artifact."""
    from monai_cir.networks import save_checkpoint, write_encoder_artifact

    root = tmp_path_factory.mktemp("artifact")
    net = activate_head(make_tiny_net())
    # whole network (encoders included): load_model rebuilds the tiny architecture offline
    save_checkpoint(net, root / "model.pt", include_encoders=True)
    write_encoder_artifact(net, root / "index" / "encoders")
    return net, root


def _expected(net) -> dict:
    from monai_cir.networks import encoder_fingerprint

    return {"encoder_fingerprint": encoder_fingerprint(net), "image_model": net.config["image_model"], "text_model": net.config["text_model"], "image_size": net.image_size}


def test_scripted_encoders_reproduce_the_eager_ones(artifact):
    """Maps, tokens, token embeddings and weights equal the eager encoders' at batch sizes and text
    lengths other than the traced ones; the tokenizer answers what the explanations ask of it."""
    from monai_cir.networks import load_encoder_artifact

    net, root = artifact
    image, text = load_encoder_artifact(root / "index" / "encoders", _expected(net))
    with torch.inference_mode():
        for n in (1, 3):
            images = torch.rand(n, 3, net.image_size, net.image_size, generator=torch.Generator().manual_seed(n))
            for ours, theirs in zip(image(images), net.image_encoder(images), strict=True):
                torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        for texts in (TEXTS, TEXTS[:1], ["x " * 40]):
            ours, theirs = text.tokenize(texts), net.text_encoder.tokenize(texts)
            assert {k: v.tolist() for k, v in ours.items()} == {k: v.tolist() for k, v in theirs.items()}
            (z, mask), (z_ref, mask_ref) = text(texts), net.text_encoder(texts)
            assert torch.equal(mask, mask_ref)
            torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-6)
    ids = text.tokenize(TEXTS[:1])["input_ids"][0].tolist()
    assert text.tokenizer.convert_ids_to_tokens(ids) == net.text_encoder.tokenizer.convert_ids_to_tokens(ids)
    assert sorted(text.tokenizer.all_special_tokens) == sorted(net.text_encoder.tokenizer.all_special_tokens)
    assert (image.channels, image.model_name, text.dim, text.name_or_path, text.max_length) == (
        net.image_encoder.channels, net.image_encoder.model_name, net.text_encoder.dim, net.text_encoder.name_or_path, net.text_encoder.max_length,
    )
    for ours, theirs in ((image, net.image_encoder), (text, net.text_encoder)):
        mine, ref = ours.state_dict(), theirs.state_dict()
        assert list(sorted(mine)) == list(sorted(ref))  # no extra buffers from the trace
        assert all(torch.equal(mine[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match="traced at"):
        image(torch.rand(1, 3, net.image_size + 32, net.image_size + 32))



def test_folded_batchnorm_serves_inference_only_and_follows_the_weights(artifact):
    """fold_batchnorm (the deploy app's CPU path): inference forwards run a copy without BatchNorm nodes
    and give the trace's maps to float32 rounding; forwards with gradients run the trace as traced; an
    in-place weight update is folded again at the next inference forward; state_dict is unchanged."""
    from monai_cir.networks import load_encoder_artifact

    net, root = artifact
    image, _ = load_encoder_artifact(root / "index" / "encoders", _expected(net))
    before = image.state_dict()
    image.fold_batchnorm()
    assert "batch_norm" in str(image.backbone.inlined_graph)  # the tiny EfficientNet has BatchNorms to fold
    folded = image._folded_backbone()
    assert "batch_norm" not in str(folded.inlined_graph)
    assert list(image.state_dict()) == list(before)
    images = torch.rand(2, 3, net.image_size, net.image_size, generator=torch.Generator().manual_seed(3))

    def traced() -> list[torch.Tensor]:
        with torch.jit.optimized_execution(False), torch.no_grad():
            return list(image.backbone(image.normalize(images)))

    with torch.inference_mode():
        maps = image(images)
        with torch.jit.optimized_execution(False):
            by_folded = folded(image.normalize(images))
    for ours, folded_map, plain, eager in zip(maps, by_folded, traced(), net.image_encoder(images), strict=True):
        assert torch.equal(ours, folded_map.permute(0, 3, 1, 2) if image.channels_last_output else folded_map)  # the folded copy ran
        assert not torch.equal(folded_map, plain)  # folding reorders the products: not bit for bit...
        torch.testing.assert_close(ours, eager.detach(), rtol=1e-4, atol=1e-5)  # ...but the same maps
    with torch.enable_grad():
        for ours, theirs in zip(image(images), net.image_encoder(images), strict=True):
            assert torch.equal(ours.detach(), theirs.detach())  # the trace itself, bit for bit
    with torch.no_grad():
        next(image.backbone.parameters()).add_(0.5)
    with torch.inference_mode():
        updated = image(images)
    assert image._folded_backbone() is not folded
    for ours, theirs in zip(updated, traced(), strict=True):
        # (the updated weights make maps up to ~30, and the reordered float32 sums' rounding grows with them: an element
        # near zero was 1.2e-5 off on one 2-CPU machine, every run, past an atol of 1e-5 that others met; a copy left unfolded
        # is off by about 30)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_network_on_the_artifact_has_the_same_fingerprint_and_queries(artifact):
    """load_model with the artifact: scripted encoders, the fingerprint an index records unchanged,
    the composed query embedding and the similarity equal the eager network's."""
    from monai_cir.networks import ScriptedImageEncoder, ScriptedTextEncoder, load_model
    from monai_cir.retrieval import captured_image_maps

    net, root = artifact
    scripted = load_model(root / "model.pt", encoder_artifact=root / "index" / "encoders")
    assert isinstance(scripted.image_encoder, ScriptedImageEncoder) and isinstance(scripted.text_encoder, ScriptedTextEncoder)
    assert scripted.fingerprint() == net.fingerprint()
    images = torch.rand(3, 3, net.image_size, net.image_size, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode(), captured_image_maps(scripted) as captured:  # the app's hook on the image encoder
        query = scripted.encode_query(images, TEXTS)
        torch.testing.assert_close(query, net.encode_query(images, TEXTS), rtol=0, atol=1e-5)
        torch.testing.assert_close(scripted.similarity(images, TEXTS, images), net.similarity(images, TEXTS, images), rtol=0, atol=1e-5)
    assert len(captured) >= 1 and len(captured[0]) == 3


def test_stale_or_damaged_artifact_falls_back_to_the_eager_encoders(artifact, tmp_path, caplog):
    """Another network's artifact, a truncated trace, an edited tokenizer, a missing artifact: the eager
    encoders, one log line saying why, the same network."""
    import shutil

    from monai_cir.networks import HierarchicalImageEncoder, load_model, write_encoder_artifact

    net, root = artifact
    other = make_tiny_net()
    with torch.no_grad():
        next(other.image_encoder.parameters()).add_(1.0)  # other encoder weights: another fingerprint
    stale = write_encoder_artifact(other, tmp_path / "stale")
    truncated = shutil.copytree(root / "index" / "encoders", tmp_path / "truncated")
    data = (truncated / "text.ts").read_bytes()
    (truncated / "text.ts").write_bytes(data[: len(data) // 2])
    modified = shutil.copytree(root / "index" / "encoders", tmp_path / "modified")  # still loads: only the SHA-256 tells
    vocab_edit = (modified / "tokenizer.json").read_text().replace('"[UNK]"', '"[UNX]"')
    (modified / "tokenizer.json").write_text(vocab_edit)
    cases = {
        stale: "written for another network", truncated: "damaged", modified: "damaged", tmp_path / "missing": "no encoder artifact",
    }
    for folder, reason in cases.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="monai_cir.networks.checkpoint"):
            loaded = load_model(root / "model.pt", encoder_artifact=folder)
        lines = [r.getMessage() for r in caplog.records if r.name == "monai_cir.networks.checkpoint" and r.levelno >= logging.WARNING]
        assert len(lines) == 1 and reason in lines[0] and "encoder artifact not used" in lines[0], (folder, lines)
        assert isinstance(loaded.image_encoder, HierarchicalImageEncoder)
        assert loaded.fingerprint() == net.fingerprint()


def test_artifact_is_refused_for_another_image_size_or_torch(artifact, tmp_path):
    import shutil

    from monai_cir.networks import EncoderArtifactError, load_encoder_artifact

    net, root = artifact
    folder = shutil.copytree(root / "index" / "encoders", tmp_path / "encoders")
    with pytest.raises(EncoderArtifactError, match="image_size"):
        load_encoder_artifact(folder, {**_expected(net), "image_size": net.image_size * 2})
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "torch": "0.0.1"}))
    with pytest.raises(EncoderArtifactError, match="torch"):
        load_encoder_artifact(folder, _expected(net))


def test_refresh_keeps_a_current_artifact_and_replaces_a_stale_one(artifact, tmp_path):
    """``index add`` keeps the artifact of the same network (no rewrite); another network's is replaced
    whole (no temporary folder left behind)."""
    from monai_cir.networks import refresh_encoder_artifact
    from monai_cir.networks.scripted import artifact_is_current

    net, _ = artifact
    index = tmp_path / "index"
    folder = refresh_encoder_artifact(net, index)
    assert folder is not None and artifact_is_current(folder, net)
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert refresh_encoder_artifact(net, index) == folder and (folder / "manifest.json").stat().st_mtime_ns == stamp
    other = make_tiny_net()
    with torch.no_grad():
        next(other.text_encoder.parameters()).add_(1.0)
    assert not artifact_is_current(folder, other)
    refresh_encoder_artifact(other, index)
    assert artifact_is_current(folder, other) and not artifact_is_current(folder, net)
    assert sorted(p.name for p in index.iterdir()) == ["encoders"]


def test_networks_import_without_timm_or_transformers():
    """The library modules the app imports do not import timm, torchvision or transformers: only
    building an eager encoder does."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = (
        "import sys\n"
        "import monai_cir.networks, monai_cir.retrieval, monai_cir.explain, monai_cir.grid_store, monai_cir.index\n"
        "bad = sorted(m for m in ('timm', 'torchvision', 'transformers') if m in sys.modules)\n"
        "print('imported:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def test_writing_the_artifact_logs_no_false_alarm_from_transformers(tmp_path, capfd, caplog):
    """Tracing the text model reads its attributes, transformers' ``loss_function`` property among them, which
    warns about a training loss this retrieval model never uses: the artifact is written without that line (it
    showed in the demo's output)."""
    from transformers.utils import logging as hf_logging

    from monai_cir.networks import write_encoder_artifact

    hf_logging.warning_once.cache_clear()  # the warning is said once per process: make this the first time
    with caplog.at_level(logging.WARNING):
        write_encoder_artifact(make_tiny_net(), tmp_path / "encoders")
    assert "loss_type" not in capfd.readouterr().err + caplog.text
    assert (tmp_path / "encoders" / "manifest.json").is_file()
