"""Image files are decoded one way (:func:`monai_cir.data.preprocess.read_rgb`): by training and the
index (``load_image``), by ``dicomize`` when it stores pixels, and by the deploy app's library images,
which report a file they cannot read instead of dropping it silently."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pydicom
import pytest
from PIL import Image

from monai_cir.data.preprocess import load_image, preprocess_image, read_rgb


def _rgb(h: int = 40, w: int = 56) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (np.stack([xx * 4, yy * 6, (xx + yy) * 3], -1) % 256).astype(np.uint8)


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _truncated_png(path: Path) -> Path:
    data = (_png(path, _rgb())).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ------------------------------------------------------------------------------------------------
# read_rgb and load_image
# ------------------------------------------------------------------------------------------------
def test_read_rgb_gives_hwc_uint8_rgb_with_alpha_dropped_and_grey_replicated(tmp_path):
    rgb = _rgb()
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], -1)  # a nearly transparent alpha
    out = read_rgb(_png(tmp_path / "rgba.png", rgba))
    assert out.dtype == np.uint8 and out.shape == rgb.shape and np.array_equal(out, rgb)  # dropped, not composited
    grey = read_rgb(_png(tmp_path / "grey.png", rgb[..., 0]))
    assert grey.shape == rgb.shape and all(np.array_equal(grey[..., c], rgb[..., 0]) for c in range(3))
    # 16-bit greyscale (Pillow's I;16) is rescaled by its range, as a greyscale DICOM frame, not clipped to white
    wide = (np.arange(40 * 56).reshape(40, 56) * 20).astype(np.uint16)
    grey16 = read_rgb(_png(tmp_path / "grey16.png", wide))
    assert grey16.dtype == np.uint8 and grey16.shape == (40, 56, 3) and not grey16.flags.writeable
    assert grey16.min() == 0 and grey16.max() == 255 and abs(int(grey16[20, 0, 0]) - round(20 * 56 * 20 / wide.max() * 255)) <= 1


def test_a_broken_image_file_is_a_value_error_naming_the_file_and_what_to_do(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    for path, what in ((_truncated_png(tmp_path / "half.png"), "image file is truncated"), (tmp_path / "notes.png", "cannot identify image file")):
        with pytest.raises(ValueError, match=r"cannot read image .*: .*replace the file or re-export it") as err:
            read_rgb(path)
        assert what in str(err.value) and str(err.value).count(path.name) == 1  # Pillow's message may name the file too: once
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        read_rgb(tmp_path / "missing.png")


def test_load_image_reads_through_read_rgb(tmp_path, monkeypatch):
    import monai_cir.data.preprocess as preprocess

    path = _png(tmp_path / "case.png", _rgb())
    assert np.array_equal(load_image(path, 32).numpy(), preprocess_image(read_rgb(path), 32).numpy())
    read = []
    monkeypatch.setattr(preprocess, "read_rgb", lambda p: read.append(p) or _rgb())
    load_image(path, 32)
    assert read == [path]


# ------------------------------------------------------------------------------------------------
# dicomize
# ------------------------------------------------------------------------------------------------
def _record(image_path: Path, site: str = "trunk") -> NS:
    return NS(
        case_id="case-1", image_path=image_path, diagnosis="nevus", text="a brown macule", site=site,
        collection="mine", metadata={"sex": "female", "age_approx": 55}, confirmation="histopathology",
    )


def test_dicomize_stores_the_pixels_read_rgb_reads(tmp_path):
    from monai_cir.dicom.dicomize import dicomize_record

    rgba = np.concatenate([_rgb(), np.full((40, 56, 1), 200, np.uint8)], -1)
    path = _png(tmp_path / "case.png", rgba)
    case = dicomize_record(_record(path), tmp_path / "out")
    ds = pydicom.dcmread(case.image_file)
    assert np.array_equal(ds.pixel_array, read_rgb(path))
    with pytest.raises(ValueError, match=r"cannot read image .*half\.png: .*re-export"):  # read_rgb's message
        dicomize_record(_record(_truncated_png(tmp_path / "half.png")), tmp_path / "out")


def test_an_unknown_site_is_a_notice_and_the_image_is_read_and_encoded_once(tmp_path, monkeypatch):
    import monai_cir.dicom.dicomize as dz

    path = _png(tmp_path / "case.png", _rgb())
    reads, builds = [], []
    monkeypatch.setattr(dz, "read_rgb", lambda p: reads.append(p) or read_rgb(p))
    build = dz.dermoscopy_image_dataset
    monkeypatch.setattr(dz, "dermoscopy_image_dataset", lambda *a, **k: builds.append(k.get("site")) or build(*a, **k))
    case = dz.dicomize_record(_record(path, site="left elbow crease"), tmp_path / "out")
    assert reads == [path] and builds == ["unknown"]
    assert case.notices == ["site 'left elbow crease' not in the vocabulary: Anatomic Region Sequence left empty"]
    ds = pydicom.dcmread(case.image_file)
    assert "AnatomicRegionSequence" not in ds
    # the rest of the case is kept as for a known site
    assert ds.PatientAge == "055Y" and ds.PatientSex == "F" and ds.SeriesDescription == "Dermoscopy (mine)"

    known = dz.dicomize_record(_record(path, site="Torso"), tmp_path / "known")  # an alias of "trunk"
    assert known.notices == [] and pydicom.dcmread(known.image_file).AnatomicRegionSequence[0].CodeValue == "22943007"


# ------------------------------------------------------------------------------------------------
# deploy app: library images
# ------------------------------------------------------------------------------------------------
@pytest.fixture()
def common():
    from deploy_app.operators import common

    common.clear_library_images()
    yield common
    common.clear_library_images()


def _hit(path: Path) -> NS:
    return NS(metadata=NS(image_path=str(path)))


def test_a_library_image_file_is_decoded_by_read_rgb_without_trying_dicom(common, tmp_path, monkeypatch):
    import monai_cir.dicom.reader as reader

    array = np.repeat(np.repeat(_rgb(), 4, 0), 4, 1)  # 160 x 224
    path = _png(tmp_path / "case.png", array)
    monkeypatch.setattr(reader, "read_dicom_folder", lambda *a, **k: pytest.fail("an image file was parsed as DICOM"))
    shown = common.library_image(_hit(path), max_side=100)
    assert shown.shape == (71, 100, 3) and np.array_equal(shown, common._thumbnail(read_rgb(path), 100))
    assert np.array_equal(common.library_image(_hit(path), max_side=1024), array)  # never upscaled


def test_an_unreadable_library_image_is_logged_once_and_shown_as_a_placeholder(common, tmp_path, caplog):
    broken = _truncated_png(tmp_path / "half.png")
    from monai_cir.dicom.dicomize import dicomize_record

    bad_dicom = dicomize_record(_record(_png(tmp_path / "case.png", _rgb())), tmp_path / "library").image_file
    bad_dicom.write_bytes(bad_dicom.read_bytes()[:-1000])  # a library DICOM file cut short
    with caplog.at_level(logging.WARNING, logger=common.__name__):
        for _ in range(2):  # the explanation and the PDF both ask: one warning per file
            assert common.library_image(_hit(broken)) is None
            assert common.library_image(_hit(broken), max_side=64) is None
            assert common.library_target(_hit(broken), 32) is None
            assert common.library_image(_hit(bad_dicom)) is None
    warnings = [r.getMessage() for r in caplog.records if r.name == common.__name__ and r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "half.png" in warnings[0] and "re-export" in warnings[0]
    assert str(bad_dicom) in warnings[1] and "placeholder" in warnings[1]
