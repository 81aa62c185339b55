"""Command-line behaviour found by a research group training on its own data: fit-differential's training cases are
(collection, case id), search says when the query image is a library case and how to query an index of another
model, and the help lists every optional CSV column."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_tiny_net
from PIL import Image


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny batches (conftest.one_torch_thread)


def _checkpoint_and_index(tmp_path, collection: str = "mine", n: int = 60):
    """A tiny checkpoint and an index of ``n`` random unit vectors under its fingerprint, every case of ``collection``."""
    from monai_cir.index import CaseMetadata, create_index
    from monai_cir.networks import load_model, save_checkpoint
    from monai_cir.retrieval import model_fingerprint

    checkpoint = save_checkpoint(make_tiny_net(), tmp_path / "model.pt", include_encoders=True, epoch=1)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.array(["nevus", "melanoma", "benign keratosis"])[rng.integers(0, 3, size=n)]
    index = create_index(16, model_fingerprint(load_model(checkpoint)))
    index.add(vectors, [CaseMetadata(f"c{i:03d}", str(d), collection) for i, d in enumerate(labels)])
    index.save(tmp_path / "index")
    return checkpoint, index


def test_fit_differential_matches_training_cases_by_collection_and_case_id(tmp_path, capsys):
    """Library cases of another collection whose case ids equal the checkpoint's training cases' did not train it:
    they query. Without a recorded collection the match is by case id alone, and the note says so."""
    from monai_cir.cli import main
    from monai_cir.differential import DifferentialSlot
    from monai_cir.networks.checkpoint import read_checkpoint, record_in_checkpoint

    checkpoint, index = _checkpoint_and_index(tmp_path, collection="mine")
    trained = index.case_ids()[:30]
    command = ["index", "fit-differential", str(tmp_path / "index"), "--model", str(checkpoint), "--open-rate", "0.2"]
    record_in_checkpoint(checkpoint, trained_on=trained, trained_collection="another-site")  # same ids, no case of that collection
    assert main(command) == 0
    # a collection's name is the name a run gave it: the same cases indexed under another name still did not query
    # (matched by id, and the note says why), so a training case never biases the margin
    err = capsys.readouterr().err
    assert "30 of the 60 library cases trained this model (matched by case id alone: no library case is of the collection it trained on ('another-site'" in err, err
    assert DifferentialSlot.from_checkpoint_info(read_checkpoint(checkpoint)["extra"]).description.startswith("fitted on 30 image-only")
    record_in_checkpoint(checkpoint, trained_collection="mine")
    assert main(command) == 0
    err = capsys.readouterr().err
    assert "30 of the 60 library cases trained this model (matched by their collection 'mine' and case id)" in err, err
    extra = {k: v for k, v in read_checkpoint(checkpoint)["extra"].items() if k != "trained_collection"}
    from monai_cir.networks.checkpoint import save_checkpoint
    from monai_cir.networks import load_model

    save_checkpoint(load_model(checkpoint), checkpoint, include_encoders=True, **extra)  # a checkpoint recording bare ids only
    assert main(command) == 0
    err = capsys.readouterr().err
    assert "30 of the 60 library cases trained this model (matched by case id alone" in err, err


@pytest.fixture
def library(tmp_path, monkeypatch):
    """A built index of 6 synthetic images (generated pixels), searched with the network that built it."""
    import monai_cir.networks
    from monai_cir.cli import main

    net = make_tiny_net()
    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: net)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40 + 4 * i, 48, 3), dtype=np.uint8)).save(images / f"case{i}.png")
    table = tmp_path / "cases.csv"
    table.write_text("case_id,image,diagnosis\n" + "".join(f"case{i},case{i}.png,{('melanoma', 'nevus')[i % 2]}\n" for i in range(6)))
    assert main(["index", "build", "--images", str(images), "--csv", str(table), "--out", str(tmp_path / "ix"), "--no-grid-maps"]) == 0
    return tmp_path / "ix", images


def test_search_says_when_the_query_image_is_a_library_case(library, tmp_path, capsys):
    """As the deploy app: a query image that is a library case's own image (the file, or a copy of it) is its own match
    at rank 1, and a note says so; another image gets no such note."""
    from monai_cir.cli import main

    index, images = library
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--image", str(images / "case2.png"), "--json", "--evidence"]) == 0
    captured = capsys.readouterr()
    answer = json.loads(captured.out)
    assert answer["hits"][0]["case_id"] == "case2" and answer["own_case"] == "case2"
    note = "the query image is library case case2 itself (the same image file): it is its own match at rank 1 and is counted in the evidence summary"
    assert note in captured.err and any(note in n for n in answer["notices"]), captured.err
    copy = shutil.copy(images / "case4.png", tmp_path / "sent-again.png")
    assert main(["search", "--index", str(index), "--image", str(copy)]) == 0
    assert "library case case4 itself" in capsys.readouterr().err
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (44, 48, 3), dtype=np.uint8)).save(tmp_path / "new.png")
    assert main(["search", "--index", str(index), "--image", str(tmp_path / "new.png"), "--json"]) == 0
    captured = capsys.readouterr()
    assert "itself" not in captured.err and json.loads(captured.out)["own_case"] is None


def test_search_with_another_model_names_both_remedies(library, monkeypatch, capsys):
    """An index built by another model: the usual fix is --model <the checkpoint the index was built with>; rebuilding
    the index for the model searched with is the other."""
    import monai_cir.networks
    from monai_cir.cli import main

    index, images = library
    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: make_tiny_net(beta=0.5))
    assert main(["search", "--index", str(index), "--image", str(images / "case1.png")]) == 2
    err = capsys.readouterr().err
    assert "search with the model the index was built with (--model <its checkpoint>)" in err and "rebuild the index" in err, err


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_help_lists_every_optional_csv_column(command, capsys):
    from monai_cir.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "optional: case_id, text, site, confirmation = histopathology, follow-up, expert consensus or unknown" in text, text
    assert "one Derm7pt fold" not in text
