"""Collections, report template, sites and folds on the real data; bad input names file and row.

Bad-input tests copy a few rows of meta.csv into a temporary folder; no image is ever copied."""

from __future__ import annotations

import collections
import csv
import re
from pathlib import Path

import numpy as np
import pytest

from monai_cir.data import (
    CLASS_NAMES,
    load_collection,
    load_folds,
    load_image_csv,
    meta_report,
)
from monai_cir.data.collections import load_derm7pt
from monai_cir.data.folds import FOLDS_FILE
from monai_cir.data.report import FORBIDDEN_WORDS
from monai_cir.data.sites import (
    DERM7PT_LOCATION_TO_SITE,
    SITE_CODES,
    SITES,
    normalize_site,
)


@pytest.fixture(scope="module")
def derm7pt(shared_data):
    return load_collection("derm7pt", shared_data)


def test_derm7pt_subset_counts(derm7pt):
    assert len(derm7pt) == 888
    counts = collections.Counter(r.diagnosis for r in derm7pt)
    assert counts == {"melanoma": 252, "nevus": 575, "benign keratosis": 61}
    assert all(r.label == CLASS_NAMES.index(r.diagnosis) for r in derm7pt)
    assert len({r.case_id for r in derm7pt}) == 888
    assert all(r.site in SITES and r.site != "unknown" for r in derm7pt)
    first = derm7pt[0]
    assert {"diagnosis", "management", "sex", "elevation", "location", "case_num"} <= set(first.metadata)
    assert first.image_path.is_file()


def test_report_never_leaks_the_label(derm7pt):
    pattern = re.compile("|".join(re.escape(w) for w in FORBIDDEN_WORDS), re.IGNORECASE)
    for r in derm7pt:
        assert r.text and not pattern.search(r.text), (r.case_id, r.text)
        # the raw diagnosis and management strings never appear either
        assert r.metadata["diagnosis"] not in r.text.lower()
        assert r.metadata["management"] not in r.text.lower()


def test_report_template_fields():
    text = meta_report(
        {"pigment_network": "atypical", "streaks": "absent", "blue_whitish_veil": "present", "vascular_structures": "within regression",
             "elevation": "flat", "location": "head neck", "sex": "male", "diagnosis": "melanoma (in situ)", "management": "excision"}
    )
    assert text.startswith("Flat lesion on the head or neck of a male patient.")
    assert "atypical pigment network" in text and "no streaks" in text and "blue-whitish veil present" in text
    assert "vascular structures within regression" in text
    assert "melanoma" not in text and "excision" not in text
    assert meta_report({}) == ""
    assert meta_report({"sex": "female"}) == "Lesion of a female patient."


def test_isic_uda1(shared_data):
    records = load_collection("isic-uda1", shared_data)
    assert len(records) == 555
    assert collections.Counter(r.diagnosis for r in records) == {"melanoma": 159, "nevus": 396}
    assert records[0].text == "female, about 55 years"
    assert all(r.site == "unknown" for r in records)


def test_sites_vocabulary():
    assert set(DERM7PT_LOCATION_TO_SITE.values()) <= set(SITES)
    assert all(SITE_CODES[s] is not None for s in SITES if s != "unknown")
    assert normalize_site("head neck") == "head and neck" and normalize_site(None) == "unknown"
    with pytest.raises(ValueError, match="unknown anatomical site"):
        normalize_site("elbow pit")


def test_folds_cover_all_cases_and_are_stratified(derm7pt):
    folds = load_folds()
    assert set(folds) == {r.case_id for r in derm7pt}
    assert set(folds.values()) == {0, 1, 2, 3, 4}
    table = np.zeros((5, 3), int)
    for r in derm7pt:
        table[folds[r.case_id], r.label] += 1
    expected = table.sum(0) / 5
    assert np.all(np.abs(table - expected) <= 1), table
    text = FOLDS_FILE.read_text()
    assert text.startswith("case_num,fold\n") and len(text) < 10_000  # case numbers only, no image data


# ----------------------------------------------------------------------------- bad input
def _tmp_release(tmp_path: Path, shared_data: Path, n_rows: int = 5) -> Path:
    """A fake data root holding only the header and a few rows of the real meta.csv (no images)."""
    src = shared_data / "derm7pt" / "release_v0" / "meta" / "meta.csv"
    lines = src.read_text().splitlines()[: n_rows + 1]
    meta = tmp_path / "derm7pt" / "release_v0" / "meta"
    meta.mkdir(parents=True)
    (tmp_path / "derm7pt" / "release_v0" / "images").mkdir()
    (meta / "meta.csv").write_text("\n".join(lines) + "\n")
    return meta / "meta.csv"


def test_missing_data_root_says_how_to_get_derm7pt(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_collection("derm7pt", tmp_path / "nowhere")
    message = str(err.value)
    assert "derm.cs.sfu.ca" in message and "MONAI_CIR_DATA" in message and "research" in message


def test_missing_image_names_file_and_row(tmp_path, shared_data):
    csv_path = _tmp_release(tmp_path, shared_data, n_rows=60)  # rows with melanoma / nevus cases
    with pytest.raises(FileNotFoundError) as err:
        load_derm7pt(tmp_path)
    message = str(err.value)
    assert "image file not found" in message and str(csv_path) in message and re.search(r"row \d+", message)


def test_malformed_meta_csv_names_file_and_row(tmp_path, shared_data):
    csv_path = _tmp_release(tmp_path, shared_data, n_rows=60)
    rows = list(csv.reader(csv_path.open()))
    target = next(i for i, row in enumerate(rows[1:], start=1) if row[1].endswith("nevus"))
    rows[target][0] = "not-a-number"
    with csv_path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(ValueError) as err:
        load_derm7pt(tmp_path, check_images=False)
    assert str(csv_path) in str(err.value) and f"row {target + 1} (data row {target})" in str(err.value) and "case_num" in str(err.value)
    # a missing column names the file and the column
    csv_path.write_text("case_num,diagnosis\n1,clark nevus\n")
    with pytest.raises(ValueError, match="missing column"):
        load_derm7pt(tmp_path)


def test_load_image_csv(tmp_path):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (32, 24), (120, 80, 60)).save(images / "a.png")  # synthetic pixels, not data
    Image.new("RGB", (32, 24), (20, 80, 60)).save(images / "b.png")
    table = tmp_path / "cases.csv"
    table.write_text("image,diagnosis,case_id,text,site\na.png,mel,c1,flat lesion,back\nb.png,dermatofibroma,,,\n")
    records = load_image_csv(images, table)
    assert [r.case_id for r in records] == ["c1", "b"]
    assert records[0].diagnosis == "melanoma" and records[0].label == 0 and records[0].site == "trunk"
    assert records[1].label == len(CLASS_NAMES) and records[1].site == "unknown" and records[1].text == ""
    table.write_text("image,diagnosis\na.png,nevus\nmissing.png,nevus\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.png.*row 3"):
        load_image_csv(images, table)
    # found by review: a second "diagnosis" column (pandas names it diagnosis.1) was silently ignored
    table.write_text("\ufeffimage,diagnosis,text,diagnosis\na.png,nevus,,melanoma\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"column\(s\) \['diagnosis'\] appear more than once in the header"):
        load_image_csv(images, table)


def _user_folder(tmp_path: Path, names: tuple[str, ...] = ("a.png", "b.png", "c.png")) -> Path:
    """A folder of tiny synthetic images (generated pixels, not data)."""
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    for i, name in enumerate(names):  # textured (a constant image is blank to the model), stored uncompressed: one size for all
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(images / name, compress_level=0)
    return images


def test_image_csv_warns_about_nonstandard_diagnoses(tmp_path, caplog):
    """A misspelt label is kept as a class of its own (a site may have its own classes) but never silently."""
    images = _user_folder(tmp_path)
    table = tmp_path / "cases.csv"
    table.write_text("image,diagnosis\na.png,Melanomma\nb.png,melanomma\nc.png,dermatofibroma\n")
    with caplog.at_level("WARNING", logger="monai_cir.data.collections"):
        records = load_image_csv(images, table)
    assert [r.diagnosis for r in records] == ["melanomma", "melanomma", "dermatofibroma"]
    assert [r.label for r in records] == [4, 4, 3]  # still accepted, after the standard classes
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert str(table) in warning and "'melanomma' (2 rows)" in warning and "'dermatofibroma' (1 row)" in warning
    assert "melanoma, nevus, benign keratosis" in warning and "bkl" in warning
    caplog.clear()
    table.write_text("image,diagnosis\na.png,mel\nb.png,Nevus\nc.png,seborrheic keratosis\n")
    with caplog.at_level("WARNING", logger="monai_cir.data.collections"):
        load_image_csv(images, table)
    assert not caplog.records  # standard names and their aliases: nothing to say


def test_image_csv_checks_every_image_before_returning(tmp_path, monkeypatch):
    """All unreadable images are listed in one error with their CSV rows, before any embedding can start."""
    from monai_cir.data import collections as collections_module

    images = _user_folder(tmp_path)
    rng = np.random.default_rng(0)
    (images / "noise.jpg").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())  # random bytes named .jpg
    damaged = bytearray((images / "a.png").read_bytes())
    damaged[damaged.index(b"IDAT") + 8] ^= 0xFF  # a damaged PNG: it opens, only verify() finds the bad checksum
    (images / "cut.png").write_bytes(bytes(damaged))
    table = tmp_path / "cases.csv"
    table.write_text("image,diagnosis\na.png,nevus\nnoise.jpg,nevus\nb.png,mel\ngone.png,nevus\ncut.png,nevus\n")
    with pytest.raises(ValueError) as err:
        load_image_csv(images, table)
    message = str(err.value)
    assert message.startswith(f"3 of the 5 images listed in {table} cannot be read")
    assert re.search(r"noise\.jpg \(CSV row 3: not a readable image", message)
    assert "gone.png (CSV row 5: not found)" in message and re.search(r"cut\.png \(CSV row 6: not a readable image", message)
    assert "a.png" not in message and "b.png" not in message
    monkeypatch.setattr(collections_module, "MAX_LISTED_IMAGES", 1)
    with pytest.raises(ValueError, match=r"noise\.jpg .*; and 2 more\."):
        load_image_csv(images, table)


def test_image_csv_finds_a_truncated_jpeg_before_embedding(tmp_path):
    """A JPEG cut off part-way (a copy that stopped) opens and passes PIL's verify(), which does not decode a JPEG:
    it was found only when the embedding reached it, one file per run. It is listed with its row up front."""
    from PIL import Image

    images = _user_folder(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / "whole.jpg", quality=90)
    data = (images / "whole.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(data[: len(data) // 2])
    (images / "padded.jpg").write_bytes(data + b"\x00" * 100)  # bytes after the end marker: a whole image
    table = tmp_path / "cases.csv"
    table.write_text("image,diagnosis\nwhole.jpg,nevus\ncut.jpg,nevus\npadded.jpg,melanoma\n")
    with pytest.raises(ValueError) as err:
        load_image_csv(images, table)
    message = str(err.value)
    assert message.startswith(f"1 of the 3 images listed in {table} cannot be read") and "cut.jpg (CSV row 3: a truncated JPEG" in message, message


def test_image_csv_trailing_commas_and_wrong_encodings(tmp_path):
    """A spreadsheet's export with a comma after every row's last value keeps its columns (before: the image names
    became the row index and the diagnosis column read empty); a file in another encoding than UTF-8, or an empty
    file, is refused with what to do."""
    images = _user_folder(tmp_path)
    table = tmp_path / "cases.csv"
    table.write_text("image,diagnosis\na.png,nevus,\nb.png,melanoma,\n")
    records = load_image_csv(images, table)
    assert [(r.image_path.name, r.diagnosis) for r in records] == [("a.png", "nevus"), ("b.png", "melanoma")]
    table.write_bytes("image,diagnosis,text\na.png,nevus,L\xe4sion flach\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"cases\.csv: it is not UTF-8 text .*save it as 'CSV UTF-8'"):
        load_image_csv(images, table)
    table.write_text("")
    with pytest.raises(ValueError, match=r"cases\.csv: the file is empty; it needs a header line"):
        load_image_csv(images, table)


def test_image_csv_paths_are_absolute(tmp_path, monkeypatch):
    """A relative --images folder is stored resolved: search and explain run from other folders."""
    _user_folder(tmp_path)
    (tmp_path / "cases.csv").write_text("image,diagnosis\na.png,nevus\n")
    monkeypatch.chdir(tmp_path / "imgs")
    [record] = load_image_csv("../imgs", "../cases.csv")
    assert record.image_path.is_absolute() and record.image_path == (tmp_path / "imgs" / "a.png").resolve()
    monkeypatch.chdir(tmp_path.parent)
    assert record.image_path.is_file()


def test_header_only_image_csv_is_an_error(tmp_path):
    images = _user_folder(tmp_path)
    table = tmp_path / "cases.csv"
    table.write_text("image,diagnosis,confirmation\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(table))}: the CSV has no rows"):
        load_image_csv(images, table)


def test_black_border_removal_crops_the_frame_only():
    """The dermatoscope's black frame goes; a row or column counts as frame only where almost every
    pixel is dark in every channel; a dark lesion inside stays; a dark image is not cropped away."""
    from monai_cir.data.preprocess import remove_black_border

    rng = np.random.default_rng(0)
    image = np.full((100, 120, 3), 150, np.uint8)
    image[:10] = image[-7:] = 0
    image[:, :12] = image[:, -5:] = rng.integers(0, 20, (100, 5, 3), np.uint8)[:, :1]  # dark noise under the threshold
    image[40:60, 50:70] = 5  # a dark lesion inside the field of view
    image[:10, 12:115, 2] = np.where(np.arange(103) % 2 == 0, 25, 0)  # top rows: blue at 25 in every other column -> content
    cropped = remove_black_border(image)
    assert cropped.shape == (100 - 7, 120 - 12 - 5, 3)  # the top rows stay (half their pixels are not dark in blue)
    np.testing.assert_array_equal(cropped, image[:93, 12:115])
    dark = np.full((80, 80, 3), 10, np.uint8)
    dark[30:40, 30:40] = 200  # cropping would keep less than a quarter: unchanged
    np.testing.assert_array_equal(remove_black_border(dark), dark)


def test_data_md_lists_every_confirmation_word():
    """docs/data.md's table of the `confirmation` column is the code's (CONFIRMATION_WORDS), word for word."""
    from monai_cir.data.collections import CONFIRMATION_WORDS

    docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    for status, words in CONFIRMATION_WORDS.items():
        row = next(line for line in docs.splitlines() if line.startswith(f"| `{status}` | "))
        assert set(re.findall(r"`([^`]+)`", row)[1:]) == set(words), (status, row)


def test_feature_cache_is_rebuilt_when_an_image_file_is_replaced(tmp_path, monkeypatch, caplog):
    """The cache's staleness key holds each image file's size, mtime_ns and digest: an image replaced under the same name
    (same case id, path, text and label) rebuilds the cache, and the log says why; an unchanged collection reuses it, and
    so does a copy of it whose files have new modification times but the same bytes (a collection copied to another
    machine: encoding it again there would move every result trained on it). A file of the same size with other bytes
    and a new time is a replaced image."""
    import logging
    import os

    import torch
    from conftest import make_tiny_net
    from PIL import Image

    from monai_cir.data.feature_cache import CACHE_FORMAT, build_feature_cache

    monkeypatch.setenv("MONAI_CIR_CACHE", str(tmp_path / "cache"))
    images = _user_folder(tmp_path, ("a.png", "b.png", "c.png", "d.png"))
    table = tmp_path / "mine.csv"
    table.write_text("image,diagnosis\na.png,melanoma\nb.png,nevus\nc.png,melanoma\nd.png,nevus\n")
    records = load_image_csv(images, table)
    net = make_tiny_net()
    first = build_feature_cache("mine", 64, net=net, records=records, flipped=False, progress=False)
    assert CACHE_FORMAT.endswith("/3") and torch.load(first.path, weights_only=True)["image_files"][0][0] == (images / "a.png").stat().st_size
    with caplog.at_level(logging.INFO, logger="monai_cir.data.feature_cache"):
        again = build_feature_cache("mine", 64, net=net, records=records, flipped=False, progress=False)
    assert "feature cache loaded" in caplog.text and "stale" not in caplog.text
    assert torch.equal(again.maps[2], first.maps[2])
    for name in ("a.png", "c.png"):  # copied: the same bytes, another modification time
        st = (images / name).stat()
        os.utime(images / name, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_cir.data.feature_cache"):
        copied = build_feature_cache("mine", 64, net=net, records=records, flipped=False, progress=False)
    assert "2 image files have another modification time but the bytes they had" in caplog.text and "stale" not in caplog.text, caplog.text
    assert torch.equal(copied.maps[2], first.maps[2])
    size = (images / "d.png").stat().st_size
    Image.fromarray(np.random.default_rng(99).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(images / "d.png", compress_level=0)  # another image of the same size, a new time
    st = (images / "d.png").stat()
    assert st.st_size == size
    os.utime(images / "d.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_cir.data.feature_cache"):
        build_feature_cache("mine", 64, net=net, records=records, flipped=False, progress=False)
    assert "stale (image files replaced or changed since it was built: 1, first ['d']" in caplog.text, caplog.text
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(images / "b.png")  # another image, same name
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_cir.data.feature_cache"):
        rebuilt = build_feature_cache("mine", 64, net=net, records=load_image_csv(images, table), flipped=False, progress=False)
    assert "stale (image files replaced or changed" in caplog.text and "'b'" in caplog.text, caplog.text
    assert not torch.equal(rebuilt.maps[2][1], first.maps[2][1]) and torch.equal(rebuilt.maps[2][0], first.maps[2][0])


def test_feature_cache_keeps_the_image_features_of_unchanged_files_when_the_csv_is_edited(tmp_path, monkeypatch, caplog):
    """Editing a text or a label of a CSV, or adding and reordering rows, re-encoded every image (a 10,000-image collection:
    a quarter of an hour on 2 cores for a typo): the unchanged files' image features are kept, only the new image is
    encoded, and the cache equals a full rebuild (the kept rows bit for bit; texts and labels taken anew)."""
    import logging

    import torch
    from conftest import make_tiny_net
    from PIL import Image

    from monai_cir.data import feature_cache
    from monai_cir.data.feature_cache import build_feature_cache

    monkeypatch.setenv("MONAI_CIR_CACHE", str(tmp_path / "cache"))
    images = _user_folder(tmp_path, ("a.png", "b.png", "c.png", "d.png"))
    rng = np.random.default_rng(3)
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png"):  # images with content, so that their features differ
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(images / name)
    table = tmp_path / "mine.csv"
    table.write_text("image,diagnosis,text\na.png,melanoma,\nb.png,nevus,flat\nc.png,melanoma,\nd.png,nevus,\n")
    net = make_tiny_net()
    build_feature_cache("mine", 64, net=net, records=load_image_csv(images, table), flipped=True, progress=False)
    table.write_text("image,diagnosis,text\ne.png,melanoma,new case\nc.png,nevus,relabelled\na.png,melanoma,irregular streaks\n"
                     "b.png,nevus,flat\nd.png,nevus,\n")
    records = load_image_csv(images, table)
    encoded = []
    real_encode = feature_cache.encode_collection
    monkeypatch.setattr(feature_cache, "encode_collection", lambda net, records, *a, **k: encoded.append([r.case_id for r in records]) or real_encode(net, records, *a, **k))
    with caplog.at_level(logging.INFO, logger="monai_cir.data.feature_cache"):
        edited = build_feature_cache("mine", 64, net=net, records=records, flipped=True, progress=False)
    assert encoded == [["e"]], encoded
    assert "the image features of 4 of 5 records reused" in caplog.text, caplog.text
    assert build_feature_cache("mine", 64, net=net, records=records, flipped=True, progress=False).path == edited.path  # saved: loaded as is
    assert encoded == [["e"]]
    whole = build_feature_cache("mine", 64, net=net, records=records, flipped=True, rebuild=True, progress=False)
    assert encoded[-1] == ["e", "c", "a", "b", "d"]
    for a, b in zip(edited.maps + edited.maps_flipped, whole.maps + whole.maps_flipped):
        assert torch.equal(a[1:], b[1:])  # the kept rows as they were
        assert torch.allclose(a[0].float(), b[0].float(), atol=1e-4, rtol=0)  # the new image: a batch of one may move the last fp16 bit
    assert torch.equal(edited.tokens, whole.tokens) and torch.equal(edited.token_mask, whole.token_mask) and torch.equal(edited.sentence, whole.sentence)
    assert edited.labels.tolist() == whole.labels.tolist() == [r.label for r in records]


def test_an_own_collection_with_blank_images_is_refused_for_training_and_evaluation(tmp_path, monkeypatch):
    """A black frame or a failed export in a group's own CSV was trained on and scored like any case (the index build
    leaves such images out, the feature cache did not look). Refused after the features are saved, naming the rows;
    with those rows left out the next run encodes nothing again."""
    from PIL import Image
    from conftest import make_tiny_net

    from monai_cir.data import feature_cache
    from monai_cir.data.feature_cache import build_feature_cache

    monkeypatch.setenv("MONAI_CIR_CACHE", str(tmp_path / "cache"))
    images = _user_folder(tmp_path, ("a.png", "b.png", "c.png", "d.png"))
    rng = np.random.default_rng(5)
    for name in ("a.png", "b.png", "d.png"):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(images / name)
    Image.new("RGB", (32, 24), (3, 3, 3)).save(images / "c.png")  # a black frame
    table = tmp_path / "mine.csv"
    table.write_text("image,diagnosis\na.png,melanoma\nb.png,nevus\nc.png,melanoma\nd.png,nevus\n")
    net = make_tiny_net()
    for attempt in (1, 2):  # built, then loaded: refused both times
        with pytest.raises(ValueError, match=r"1 of the 4 images of 'mine' are blank as the model sees them .*c \(.*c\.png\); leave their rows out"):
            build_feature_cache("mine", 64, net=net, records=load_image_csv(images, table), flipped=False, progress=False)
    table.write_text("image,diagnosis\na.png,melanoma\nb.png,nevus\nd.png,nevus\n")
    encoded = []
    real_encode = feature_cache.encode_collection
    monkeypatch.setattr(feature_cache, "encode_collection", lambda net, records, *a, **k: encoded.append(len(records)) or real_encode(net, records, *a, **k))
    cache = build_feature_cache("mine", 64, net=net, records=load_image_csv(images, table), flipped=False, progress=False)
    assert len(cache) == 3 and cache.blank == [] and encoded == []


def test_feature_cache_of_an_older_format_is_rebuilt(tmp_path, monkeypatch, caplog):
    """A cache file written before this format (/1: no image files in its key, texts encoded the old way) is rebuilt once."""
    import logging

    import torch
    from conftest import make_tiny_net

    from monai_cir.data.feature_cache import build_feature_cache

    monkeypatch.setenv("MONAI_CIR_CACHE", str(tmp_path / "cache"))
    images = _user_folder(tmp_path, ("a.png", "b.png"))
    table = tmp_path / "mine.csv"
    table.write_text("image,diagnosis\na.png,melanoma\nb.png,nevus\n")
    records = load_image_csv(images, table)
    net = make_tiny_net()
    cache = build_feature_cache("mine", 64, net=net, records=records, flipped=False, progress=False)
    payload = torch.load(cache.path, weights_only=True)
    payload["format"] = "monai-cir-features/1"
    payload.pop("image_files")
    torch.save(payload, cache.path)
    with caplog.at_level(logging.INFO, logger="monai_cir.data.feature_cache"):
        build_feature_cache("mine", 64, net=net, records=records, flipped=False, progress=False)
    assert "has format 'monai-cir-features/1'" in caplog.text and "rebuilding" in caplog.text
    assert "image_files" in torch.load(cache.path, weights_only=True)


def test_relabelled_collection_gets_another_fold_assignment(derm7pt):
    """collection_folds' description covers the labels (and folds): the same case ids in the same order with other
    diagnoses stratify into other folds, and their results must not merge into the old ones; Derm7pt's committed
    folds have no description (unchanged)."""
    from monai_cir.data.folds import collection_folds

    ids = [f"own-{i}" for i in range(40)]
    labels = [0] * 20 + [1] * 20
    relabelled = [0, 1] * 20
    folds, description = collection_folds(ids, labels)
    other_folds, other = collection_folds(ids, relabelled)
    assert description is not None and other is not None and description != other
    assert collection_folds(ids, labels)[1] == description  # deterministic for one CSV
    assert "labels and folds sha256" in description
    committed = collection_folds([r.case_id for r in derm7pt], [r.label for r in derm7pt])
    assert committed[1] is None and committed[0] == [load_folds()[r.case_id] for r in derm7pt]


def test_images_of_one_lesion_or_patient_stay_in_one_fold(tmp_path):
    """A CSV's lesion_id / patient_id column keeps a lesion's (a patient's) images in one fold, stratified by
    diagnosis still; a CSV without it, or with every value distinct, keeps the ungrouped folds as before."""
    from monai_cir.data.collections import CaseRecord
    from monai_cir.data.folds import collection_folds, make_folds

    def records(column: str | None, group_of) -> list:
        return [CaseRecord(f"c{i}", tmp_path / f"c{i}.png", "melanoma" if i % 3 == 0 else "nevus", int(i % 3 != 0), "",
                           metadata={column: group_of(i)} if column else {}) for i in range(60)]

    lesions = records("lesion_id", lambda i: f"L{i // 3}")  # three images of each of 20 lesions
    ids, labels = [r.case_id for r in lesions], [r.label for r in lesions]
    folds, description = collection_folds(ids, labels, lesions)
    by_lesion = collections.defaultdict(set)
    for record, fold in zip(lesions, folds):
        by_lesion[record.metadata["lesion_id"]].add(fold)
    assert all(len(f) == 1 for f in by_lesion.values()) and set(folds) == set(range(5))
    assert "each lesion_id's cases in one fold (StratifiedGroupKFold" in description
    assert collection_folds(ids, labels)[0] != folds  # ungrouped, the lesions' images are split over folds
    patients = records("patient_id", lambda i: f"P{i // 6}" if i < 54 else "")  # the last six: a patient of their own each
    grouped = collection_folds(ids, labels, patients)
    assert "each patient_id's cases in one fold" in grouped[1]
    assert all(len({f for r, f in zip(patients, grouped[0]) if r.metadata["patient_id"] == p}) == 1 for p in {f"P{k}" for k in range(9)})
    distinct = records("lesion_id", lambda i: f"L{i}")
    plain = collection_folds(ids, labels)
    assert collection_folds(ids, labels, distinct) == plain and plain[0] == make_folds(labels)
    assert "StratifiedKFold" in plain[1] and "Group" not in plain[1]
    with pytest.raises(ValueError, match="at least 5 patients / lesions; the 60 cases are of 3"):
        collection_folds(ids, labels, records("lesion_id", lambda i: f"L{i % 3}"))


def test_image_csv_refuses_an_image_listed_twice_and_warns_about_copies(tmp_path, caplog):
    images = _user_folder(tmp_path)
    (images / "copy_of_a.png").write_bytes((images / "a.png").read_bytes())
    table = tmp_path / "cases.csv"
    table.write_text("image,diagnosis,case_id\na.png,nevus,c1\nb.png,nevus,c2\n./a.png,nevus,c3\n")
    with pytest.raises(ValueError, match=r"row 4.*'./a.png' is listed already, in CSV row 2"):
        load_image_csv(images, table)
    table.write_text("image,diagnosis\na.png,nevus\nb.png,nevus\ncopy_of_a.png,melanoma\n")
    with caplog.at_level("WARNING", logger="monai_cir.data.collections"):
        load_image_csv(images, table)
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "same image file content" in r.getMessage()]
    assert "a = copy_of_a" in warning and "lesion_id" in warning
    caplog.clear()
    table.write_text("image,diagnosis,lesion_id\na.png,nevus,L1\nb.png,nevus,L2\ncopy_of_a.png,melanoma,L1\n")
    with caplog.at_level("WARNING", logger="monai_cir.data.collections"):
        load_image_csv(images, table)
    assert not any("same image file content" in r.getMessage() for r in caplog.records)  # one lesion: kept together


def test_semicolon_or_tab_separated_csv_says_it_must_be_comma_separated(tmp_path):
    images = _user_folder(tmp_path)
    table = tmp_path / "semi.csv"
    table.write_text("image;diagnosis;text\na.png;melanoma;flat, irregular\nb.png;nevus;regular\n")  # a comma in a text: pandas fails
    with pytest.raises(ValueError, match=r"semi\.csv.*must be comma-separated.*';' \(semicolons\)"):
        load_image_csv(images, table)
    table.write_text("image;diagnosis\na.png;melanoma\nb.png;nevus\n")  # parses as one column
    with pytest.raises(ValueError, match=r"semi\.csv.*must be comma-separated.*';' \(semicolons\)"):
        load_image_csv(images, table)
    tabs = tmp_path / "tabs.csv"
    tabs.write_text("image\tdiagnosis\na.png\tmelanoma\n")
    with pytest.raises(ValueError, match=r"tabs\.csv.*must be comma-separated.*tabs"):
        load_image_csv(images, tabs)


def test_image_csv_case_ids_lose_surrounding_spaces(tmp_path):
    images = _user_folder(tmp_path)
    table = tmp_path / "cases.csv"
    table.write_text("image,diagnosis,case_id\na.png,melanoma, c1 \nb.png,nevus,c2\n")
    assert [r.case_id for r in load_image_csv(images, table)] == ["c1", "c2"]
