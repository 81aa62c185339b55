"""Command-line behaviour found by a research group training on its own data: fit-differential's training cases are
(collection, case id), search says when the query image is a library case and how to query an index of another
model, and the help lists every optional CSV column."""

from __future__ import annotations

import dataclasses
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


def _random_images_and_tiny_net(tmp_path, monkeypatch, shapes: list[tuple[int, int]]):
    """``tmp_path/images`` with one random-pixel PNG per shape (``case<i>.png``), and ``load_model`` giving a tiny network."""
    import monai_cir.networks

    net = make_tiny_net()
    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: net)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, shape in enumerate(shapes):
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(images / f"case{i}.png")
    return images


@pytest.fixture
def library(tmp_path, monkeypatch):
    """A built index of 6 synthetic images (generated pixels), searched with the network that built it."""
    from monai_cir.cli import main

    images = _random_images_and_tiny_net(tmp_path, monkeypatch, [(40 + 4 * i, 48) for i in range(6)])
    table = tmp_path / "cases.csv"
    table.write_text("case_id,image,diagnosis\n" + "".join(f"case{i},case{i}.png,{('melanoma', 'nevus')[i % 2]}\n" for i in range(6)))
    assert main(["index", "build", "--images", str(images), "--csv", str(table), "--out", str(tmp_path / "ix"), "--no-grid-maps"]) == 0
    return tmp_path / "ix", images


def test_search_refuses_a_blank_or_tiny_image_and_notes_a_greyscale_one(library, tmp_path, capsys):
    """The deploy app's checks of a query image, for an image file: a blank (constant) or tiny image is not answered
    (before: a confident ranking of a black frame), a greyscale one is answered with the app's notice."""
    from monai_cir.cli import main
    from monai_cir.data.preprocess import GREYSCALE_NOTICE

    index, images = library
    Image.new("RGB", (300, 200), (0, 0, 0)).save(tmp_path / "black.png")
    Image.new("RGB", (4, 4), (120, 60, 30)).save(tmp_path / "tiny.png")
    grey = np.random.default_rng(2).integers(0, 255, (60, 60), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    capsys.readouterr()
    query = ["search", "--index", str(index), "--json", "--image"]
    assert main([*query, str(tmp_path / "black.png")]) == 2
    assert "black.png: the image is blank: its pixels are constant or nearly so (range 0 of 255 grey levels): not answered" in capsys.readouterr().err
    assert main([*query, str(tmp_path / "tiny.png")]) == 2
    assert "tiny.png: image of 4x4 pixels: too small for a dermoscopy query (at least 32 pixels a side)" in capsys.readouterr().err
    assert main([*query, str(tmp_path / "grey.png")]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["notices"][0] == GREYSCALE_NOTICE and len(answer["hits"]) == 5
    assert main([*query, str(images / "case1.png")]) == 0
    assert GREYSCALE_NOTICE not in json.loads(capsys.readouterr().out)["notices"]
    # options that would fail, or be ignored, after the search are refused before it
    case = str(images / "case1.png")
    assert main([*query, case, "--explain", str(tmp_path / "why.jpg")]) == 2
    assert "--explain writes a PNG figure: give a path ending in .png" in capsys.readouterr().err
    assert main([*query, case, "--calibration", str(tmp_path / "nowhere.json")]) == 2
    assert "--calibration calibrates the evidence summary: add --evidence" in capsys.readouterr().err
    assert main([*query, case, "--evidence", "--calibration", str(tmp_path / "nowhere.json")]) == 2
    assert "--calibration file not found" in capsys.readouterr().err
    (tmp_path / "image.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # a DICOM file's preamble and magic
    assert main([*query, str(tmp_path / "image.dcm")]) == 2
    assert "image.dcm is a DICOM file: `monai-cir search` reads image files" in capsys.readouterr().err
    assert main([*query, case, "--text", "L\udce4sion flach"]) == 2  # "Läsion" typed in Latin-1 on a UTF-8 system
    assert "--text is not UTF-8 text (byte 0xe4 at character 2)" in capsys.readouterr().err
    assert main([*query, case, "--query-site", "back"]) == 2
    assert "--query-site is used by --site same" in capsys.readouterr().err
    # fewer cases than asked for, and none: said in words
    assert main([*query, case, "-k", "10"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["hits"]) == 6 and "6 of the 10 cases asked for (-k): the library has no more" in answer["notices"], answer["notices"]
    assert main(["search", "--index", str(index), "--image", case, "--site", "back"]) == 0
    assert "no matching cases with site trunk" in capsys.readouterr().out  # ("back": the trunk, in the vocabulary)


def test_index_build_leaves_a_blank_library_image_out_and_says_so(tmp_path, monkeypatch, caplog):
    """A black frame in the library (a failed export) would be shown as a similar case: it is reported and left out,
    the other cases are indexed (before: indexed without a word). A greyscale image is indexed with a warning that names
    it (before: without a word; the model matches it without the colour cues it was trained on)."""
    from monai_cir.cli import main
    from monai_cir.index import load_index

    images = _random_images_and_tiny_net(tmp_path, monkeypatch, [(48, 48)] * 3)
    Image.new("RGB", (64, 64), (0, 0, 0)).save(images / "black.png")
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64), dtype=np.uint8)).convert("RGB").save(images / "grey.png")
    table = tmp_path / "cases.csv"
    table.write_text("case_id,image,diagnosis\n" + "".join(f"case{i},case{i}.png,nevus\n" for i in range(3))
                     + "black,black.png,melanoma\ngrey,grey.png,nevus\n")
    with caplog.at_level("WARNING", logger="monai_cir.retrieval"):
        assert main(["index", "build", "--images", str(images), "--csv", str(table), "--out", str(tmp_path / "ix"), "--no-grid-maps"]) == 0
    assert sorted(load_index(tmp_path / "ix").case_ids()) == ["case0", "case1", "case2", "grey"]
    warnings = [r.getMessage() for r in caplog.records]
    assert any("1 library image(s) are blank" in m and "black (black.png)" in m for m in warnings), caplog.text
    assert any("1 library image(s) are greyscale, indexed" in m and m.endswith(": grey (grey.png)") for m in warnings), caplog.text


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


def test_search_says_what_the_image_alone_finds_when_the_text_counted(library, capsys):
    """As the deploy app: a text that counted gets what the same image finds without it (the image-only query's plain
    similarity ranking, as many cases as shown) in the JSON and under the table; an image-only query gets none."""
    import monai_cir.networks
    from monai_cir.cli import main
    from monai_cir.index import load_index
    from monai_cir.retrieval import search, text_use

    index, images = library
    net = monai_cir.networks.load_model()
    text = "atypical pigment network; irregular streaks; blue-whitish veil"
    assert float(net.text_weights([text])[0]) > 0, "the text must count for the check to mean anything"
    capsys.readouterr()
    query = ["search", "--index", str(index), "--image", str(images / "case3.png"), "-k", "4"]
    assert main([*query, "--text", text, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    expected = search(net, load_index(index), images / "case3.png", "", k=4)
    counts: dict[str, int] = {}
    for hit in expected:
        counts[hit.metadata.diagnosis] = counts.get(hit.metadata.diagnosis, 0) + 1
    assert answer["image_alone"]["case_ids"] == [h.case_id for h in expected] and answer["image_alone"]["k"] == 4
    assert answer["image_alone"]["counts"] == dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    # how the text counted, in the app's words (retrieval.answer's record, computed once)
    use, notices = text_use(net, text)
    assert answer["text_use"] == use and use["findings_read"] == ["pigment_network", "streaks", "blue_whitish_veil"]
    assert answer["notices"][: len(notices)] == notices and notices[0].startswith("findings read in the query text")
    assert main([*query, "--text", text]) == 0
    listed = ", ".join(f"{d} {n}" for d, n in answer["image_alone"]["counts"].items())
    assert f"Without the text, the image alone finds {listed} among its 4 most similar cases." in capsys.readouterr().out
    assert main([*query, "--json"]) == 0
    image_only = json.loads(capsys.readouterr().out)
    assert image_only["image_alone"] is None and image_only["text_use"] is None


def test_a_text_about_several_lesions_is_not_used_and_the_notice_says_why():
    """The same findings count for one lesion; written of two lesions they are not read (the image shows one of them,
    the text does not say which), and the notice says that, not that the text names no finding."""
    import monai_cir.networks
    from monai_cir.data.report import SEVERAL_LESIONS_NOTICE, TEXT_NOT_USED_NOTICE
    from monai_cir.retrieval import text_use

    net = monai_cir.networks.load_model()
    use, notices = text_use(net, "Lesion 1: atypical pigment network, blue-whitish veil; lesion 2: typical pigment network")
    assert use == {"weight": 0.0, "findings_read": []} and notices == [SEVERAL_LESIONS_NOTICE]
    use, notices = text_use(net, "atypical pigment network, blue-whitish veil")
    assert use["weight"] > 0 and use["findings_read"] == ["pigment_network", "blue_whitish_veil"]
    assert notices[0].startswith("findings read in the query text")
    assert text_use(net, "62 year old man, back")[1] == [TEXT_NOT_USED_NOTICE]


def test_image_alone_notice_when_the_image_favours_another_diagnosis():
    """The notice comes exactly when the image alone favours another diagnosis than the cases shown (a tie favours
    none), and names the findings as the model read them."""
    from monai_cir.index import CaseMetadata, SearchHit, create_index
    from monai_cir.retrieval import image_alone

    index = create_index(2, "fp")
    angles = np.linspace(0.0, 1.0, 6)
    index.add(np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32),
              [CaseMetadata(f"c{i}", ("melanoma", "melanoma", "melanoma", "nevus", "nevus", "nevus")[i], "x") for i in range(6)])

    def shown(*diagnoses: str) -> list:
        return [SearchHit(rank=r + 1, case_id=f"s{r}", score=0.5, metadata=CaseMetadata(f"s{r}", d, "x")) for r, d in enumerate(diagnoses)]

    near_melanoma = np.array([1.0, 0.0], dtype=np.float32)
    record, notice = image_alone(index, near_melanoma, shown("nevus", "nevus", "melanoma"), "no streaks; BWV +")
    assert record == {"k": 3, "counts": {"melanoma": 3}, "case_ids": ["c0", "c1", "c2"]}
    assert notice is not None and notice.startswith("the image alone, without the text, finds melanoma 3 among its 3 most similar cases")
    assert "(no streaks, blue-whitish veil present) moved the answer towards nevus" in notice, notice
    assert image_alone(index, near_melanoma, shown("melanoma", "nevus", "melanoma"), "BWV +")[1] is None  # same favourite
    assert image_alone(index, near_melanoma, [], "BWV +") == ({"k": 0, "counts": {}, "case_ids": []}, None)  # nothing shown
    between = np.array([np.cos(0.5), np.sin(0.5)], dtype=np.float32)  # its two closest cases: one of each diagnosis
    assert image_alone(index, between, shown("nevus", "melanoma"), "BWV +")[1] is None  # both ties: neither favours one
    moved = image_alone(index, between, shown("nevus", "nevus"), "BWV +")[1]
    assert moved is not None and "melanoma 1" in moved and "nevus 1 among its 2" in moved.replace("nevus 1, melanoma 1", "melanoma 1, nevus 1") and "towards nevus" in moved, moved


def test_index_build_refuses_an_out_folder_it_cannot_write_before_embedding(tmp_path, capsys, monkeypatch):
    """--out under a file, or in a folder the system refuses, is found before the model loads (before: after the
    embedding, as a traceback, the embedding lost)."""
    import monai_cir.networks
    from monai_cir.cli import main

    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (16, 12), (120, 80, 60)).save(images / "a.png")
    table = tmp_path / "cases.csv"
    table.write_text("image,diagnosis\na.png,nevus\n")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(monai_cir.networks, "load_model", no_model)
    build = ["index", "build", "--images", str(images), "--csv", str(table), "--out"]
    assert main([*build, str(table / "index")]) == 2
    assert f"{table} is a file, not a folder" in capsys.readouterr().err
    assert main([*build, "/proc/monai-cir-index"]) == 2
    assert "cannot write in /proc" in capsys.readouterr().err


def test_system_errors_are_one_line_and_a_closed_pipe_is_no_error(monkeypatch, capsys):
    """An OSError that is no bad input of the user's (a folder the system refuses) is one line naming it, not a
    traceback (--verbose keeps the traceback); a reader that stops reading (`| head`) ends the command quietly."""
    import monai_cir.cli.index as index_cli
    from monai_cir.cli import main

    def refused(args):
        raise PermissionError(13, "Permission denied", "/srv/pacs/index")

    monkeypatch.setattr(index_cli, "run_info", refused)
    assert main(["index", "info", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "monai-cir index: error: [Errno 13] Permission denied: '/srv/pacs/index'" in err, err
    with pytest.raises(PermissionError):
        main(["--verbose", "index", "info", "somewhere"])
    # a closed pipe: the command's reader stops after a few bytes
    import subprocess
    import sys

    script = ("import sys, monai_cir.cli.index as index_cli\n"
              "def chatty(args):\n    for i in range(200000):\n        print('case', i)\n    return 0\n"
              "index_cli.run_info = chatty\nfrom monai_cir.cli import main\nsys.exit(main(['index', 'info', 'x']))\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.read(20)
    process.stdout.close()
    assert process.wait(timeout=120) == 0
    stderr = process.stderr.read().decode()
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_tqdm_disable_hides_every_progress_bar(tmp_path):
    """TQDM_DISABLE=1 (tqdm's own setting, read when tqdm is imported; CI logs set it) hides the bars the code shows by
    default: an explicit disable=False (the "embedding library" bar) overrode it."""
    import os
    import subprocess
    import sys

    script = tmp_path / "embed.py"
    script.write_text(
        "import sys\n"
        "import numpy as np\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "from conftest import make_tiny_net\n"
        "from monai_cir.retrieval import embed_library\n"
        "images = [np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8) for i in range(3)]\n"
        "embed_library(make_tiny_net(), images, progress=sys.argv[1] == 'on')\n")

    def bar_shown(progress: str, **env: str) -> bool:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")} | env
        run = subprocess.run([sys.executable, str(script), progress], env=environ, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        return "embedding library" in run.stderr

    assert not bar_shown("on", TQDM_DISABLE="1")
    assert bar_shown("on")


def test_search_explains_matches_of_an_index_built_from_dicom_and_never_writes_over_the_query(tmp_path, monkeypatch, capsys):
    """Found by review: `search --explain` on an index built with --dicom (the integrator's library) failed, blaming the
    library file ("cannot identify image file ... image.dcm": read with Pillow); `--explain` naming the query image
    replaced the lesion photo with the figure; a library file replaced since indexing was explained as if it were the
    ranked image, without a word."""
    from types import SimpleNamespace

    from monai_cir.cli import main
    from monai_cir.dicom.dicomize import dicomize_records

    images = _random_images_and_tiny_net(tmp_path, monkeypatch, [(48, 56)] * 4)
    records = [SimpleNamespace(case_id=f"case{i}", image_path=images / f"case{i}.png", diagnosis=("melanoma", "nevus")[i % 2], text="",
                               site="trunk", collection="mine", metadata={}) for i in range(4)]
    done, failed = dicomize_records(records, tmp_path / "dicom", progress=False)
    assert len(done) == 4 and not failed
    assert main(["index", "build", "--dicom", str(tmp_path / "dicom"), "--out", str(tmp_path / "ix"), "--no-grid-maps"]) == 0
    query = images / "case1.png"
    before = query.read_bytes()
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "ix"), "--image", str(query), "-k", "2", "--explain", str(tmp_path / "why.png")]) == 0
    assert (tmp_path / "why.png").stat().st_size > 0 and "explanations written to" in capsys.readouterr().out
    assert main(["search", "--index", str(tmp_path / "ix"), "--image", str(query), "--explain", str(query.with_suffix(".png"))]) == 2
    assert "is the query image: the figure would replace it" in capsys.readouterr().err and query.read_bytes() == before
    # a library file replaced since it was indexed: its explanation shows another image than the ranked one, and says so
    shutil.copy(done[3].image_file, tmp_path / "case3.dcm")
    for case in done[:3]:
        shutil.copy(tmp_path / "case3.dcm", case.image_file)
    assert main(["search", "--index", str(tmp_path / "ix"), "--image", str(query), "-k", "2", "--json", "--explain", str(tmp_path / "why.png")]) == 0
    notes = json.loads(capsys.readouterr().out)["notices"]
    assert any("no longer gives the score it was ranked by: the file changed since it was indexed" in n for n in notes), notes


def test_a_query_that_is_a_library_case_ranked_below_those_shown_is_said_to_be_in_the_evidence(library, capsys, monkeypatch):
    """Found by review: the note looked at the shown cases only; a query image that is a library case pushed below them
    (by the diagnosis prior) still voted in the evidence summary with its own recorded diagnosis, without a word."""
    from monai_cir import retrieval
    from monai_cir.cli import main

    index, images = library
    real = retrieval.ranked_answer

    def own_case_below(*args, **kwargs):  # the prior's reordering, played: the query's own case leaves the shown cases
        shown = real(*args, **kwargs)
        return dataclasses.replace(shown, hits=[h for h in shown.hits if h.case_id != "case2"])  # the pool keeps it

    monkeypatch.setattr(retrieval, "ranked_answer", own_case_below)
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--image", str(images / "case2.png"), "--json", "--evidence", "-k", "2"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert "case2" not in [h["case_id"] for h in answer["hits"]] and answer["own_case"] is None
    assert any("library case case2 itself (the same image file): not among the cases shown, it is among those the evidence summary "
               "counts" in n for n in answer["notices"]), answer["notices"]


def test_demo_never_deletes_a_folder_of_ones_own_and_checks_k_before_building(tmp_path, capsys, monkeypatch):
    """Found by review: `monai-cir demo --out DIR` deleted DIR whole (a results folder, `.`), and `-k 0` failed with a
    traceback after the library was built (minutes). Both are refused first, in one line; an earlier demo's answer
    folder (the app's files and log) is still replaced."""
    import monai_cir.data
    from monai_cir.cli import main
    from monai_cir.cli.demo import _earlier_demo_output

    loaded = []
    monkeypatch.setattr(monai_cir.data, "load_isic_uda1", lambda *a, **k: loaded.append(1) or pytest.fail("the library was built"))
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(precious)]) == 2
    assert "is not empty and holds no earlier demo answer" in capsys.readouterr().err and (precious / "notes.txt").read_text() == "mine"
    assert main(["demo", "-k", "0", "--out", str(tmp_path / "new")]) == 2
    assert "-k must be >= 1, got 0" in capsys.readouterr().err and not loaded
    earlier = tmp_path / "earlier"
    (earlier / "ISIC_0000001").mkdir(parents=True)
    for name in ("app.log", "results.json", "problems.json"):
        (earlier / name).write_text("{}")
    (earlier / "ISIC_0000001" / "similar_cases_sr.dcm").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert _earlier_demo_output(earlier) and _earlier_demo_output(tmp_path / "empty")
    (earlier / "ISIC_0000001" / "my_notes.docx").write_text("mine")
    assert not _earlier_demo_output(earlier)


def test_an_installed_package_writes_its_cache_and_demo_output_outside_site_packages(tmp_path, monkeypatch):
    """Found by review: installed with pip (no checkout around it), the demo wrote its output and its cache into
    site-packages (the folder above the package). Outside a checkout the cache goes to $XDG_CACHE_HOME/monai-cir and
    the demo's output under the current folder."""
    import monai_cir.config as config

    site = tmp_path / "site-packages"
    (site / "monai_cir").mkdir(parents=True)
    monkeypatch.delenv(config.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config.in_checkout()  # this checkout
    monkeypatch.setattr(config, "_REPO_ROOT", site)
    assert not config.in_checkout()
    assert config.cache_dir("demo") == tmp_path / "xdg" / "monai-cir" / "demo" and not (site / ".cache").exists()


def test_a_text_longer_than_the_reader_reads_is_read_in_its_first_part_and_the_notice_says_so():
    """Found by the reader review: the reader's time grew with the square (a padded column, tabs: the cube) of the text's
    length and nothing bounded it; the app joins every SR text of a study. It reads the first MAX_READ_CHARS characters,
    says so, and a padded column (a noun, thousands of spaces or tabs, its value) still reads as its value."""
    import monai_cir.networks
    from monai_cir.data.report import MAX_READ_CHARS, read_findings
    from monai_cir.retrieval import text_use

    net = monai_cir.networks.load_model()
    head = "atypical pigment network; blue-whitish veil present."
    text = head + " " + "The patient was seen in clinic today. " * (MAX_READ_CHARS // 30) + "Irregular streaks."
    assert len(text) > MAX_READ_CHARS
    use, notices = text_use(net, text)
    assert use["findings_read"] == ["pigment_network", "blue_whitish_veil"]  # the streaks lie beyond the part read
    assert f"the query text is {len(text)} characters long: the findings were read in its first {MAX_READ_CHARS} only" in notices[0]
    assert not any("characters long" in n for n in text_use(net, head)[1])
    for gap in (" " * 3000, "\t" * 3000, " \t" * 1500):
        assert read_findings("Blue-whitish veil" + gap + "absent\n") == (("blue_whitish_veil", "absent"),), repr(gap[:4])
