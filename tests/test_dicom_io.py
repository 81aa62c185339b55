"""DICOM in and out (issue 5): dicomize, reader rules and bad input, similar-cases SR, PDF.

Every object written is checked with dciodvfy (dicom3tools) and the SR with dsrdump (DCMTK);
``scripts/install_system_tools.sh`` installs them. Files derived from the shared data go to tmp dirs.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    VLPhotographicImageStorage,
    generate_uid,
)

from monai_cir.dicom import codes as C
from monai_cir.dicom.dicomize import (
    case_report_sr,
    case_uids,
    dermoscopy_image_dataset,
    dicomize_records,
    pseudonym,
)
from monai_cir.dicom.reader import DermoscopyQuery, InputProblem, read_dicom_folder
from monai_cir.dicom.report_pdf import similar_cases_pdf
from monai_cir.dicom.sr import read_similar_cases_sr, similar_cases_sr, similarity_percent
from conftest import SCORE_RANGE

N_ISIC = 3


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of dciodvfy for a file."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy (Debian dicom3tools) is missing: run scripts/install_system_tools.sh")
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    return [l for l in lines if l.startswith("Error")], [l for l in lines if l.startswith("Warning")]


# Warnings expected from the 2022 dicom3tools (reported in docs/dicom.md): it predates Modality DMS
# and Device UID in the Contributing Equipment Sequence. No coding-scheme warning is expected: it
# checks Coding Scheme Designators (and UIDs) against a fixed list, and every object uses standard
# schemes only (project concepts are OIDs in ISO_OID, monai_cir.dicom.codes); assert_valid fails on any.
EXPECTED_WARNINGS = (
    "Unrecognized defined term <DMS>",
    "attribute <Laterality>",
    "(0x0018,0x1002) UI Device UID",
    "this is a Standard Extended SOP Class",
)


def assert_valid(path: Path, empty: tuple[str, ...] = ()) -> None:
    """No dciodvfy error, and no warning but the expected ones; ``empty``: Type 2 attributes (dciodvfy's
    names, e.g. "Patient ID") left empty on purpose, which dciodvfy notes a DICOMDIR would want."""
    errors, warnings = dciodvfy(path)
    assert not errors, f"dciodvfy errors for {path}:\n" + "\n".join(errors)
    schemes = [w for w in warnings if "Coding Scheme" in w]
    assert not schemes, f"dciodvfy does not know a coding scheme in {path}:\n" + "\n".join(schemes)
    expected = EXPECTED_WARNINGS + tuple(f"needed to build DICOMDIR - {name}" for name in empty)
    unexpected = [w for w in warnings if not any(e in w for e in expected)]
    assert not unexpected, f"unexpected dciodvfy warnings for {path}:\n" + "\n".join(unexpected)


def synthetic_image(h=96, w=128, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros((h, w, 3), np.uint8)
    base[..., 0] = np.linspace(40, 220, w, dtype=np.uint8)[None]
    base[..., 1] = np.linspace(30, 180, h, dtype=np.uint8)[:, None]
    base[..., 2] = 90
    return np.clip(base + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)


def make_case(out: Path, name: str, pixels: np.ndarray | None = None, text: str | None = "a flat brown lesion", **kwargs) -> Path:
    """A synthetic study (image + optional SR) in ``out/name``; returns the folder."""
    uids = case_uids("synthetic", name)
    ds = dermoscopy_image_dataset(pixels=synthetic_image() if pixels is None else pixels, uids=uids, **kwargs)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "image.dcm", enforce_file_format=True)
    if text is not None:
        case_report_sr(ds, text, sr_series_uid=uids.sr_series_uid, sr_uid=uids.sr_uid).save_as(folder / "sr.dcm", enforce_file_format=True)
    return folder


# ------------------------------------------------------------------------------------------------
# dicomize: real ISIC images (written to a tmp dir) + a synthetic PNG case
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dicomized(tmp_path_factory, shared_data):
    from monai_cir.data.collections import load_collection

    tmp = tmp_path_factory.mktemp("dicomized")
    records = load_collection("isic-uda1")[:N_ISIC]
    png = tmp / "src" / "lesion.png"
    png.parent.mkdir()
    Image.fromarray(synthetic_image(80, 100, seed=3)).save(png)
    records.append(NS(case_id="png-1", image_path=png, diagnosis="benign keratosis", text="scaly plaque, trunk", site="trunk", collection="user", metadata={"sex": "male"}))
    done, failed = dicomize_records(records, tmp / "out", progress=False)
    assert not failed
    return NS(records=records, done=done, out=tmp / "out")


def test_dicomize_files_pass_dciodvfy(dicomized):
    assert len(dicomized.done) == N_ISIC + 1
    for case in dicomized.done:
        assert_valid(case.image_file)
        assert_valid(case.sr_file)
        assert coding_scheme_warnings(case.image_file) == []  # the images use standard codes only
    transfer = [c.transfer_syntax for c in dicomized.done]
    assert transfer[:N_ISIC] == [JPEGBaseline8Bit] * N_ISIC  # ISIC JPEGs carried as they are
    assert transfer[-1] == ExplicitVRLittleEndian  # PNG -> uncompressed


def test_dicomize_pseudonyms_and_uids_are_deterministic(dicomized):
    case = dicomized.done[0]
    record = dicomized.records[0]
    assert case.uids == case_uids("isic-uda1", record.case_id)
    ds = pydicom.dcmread(case.image_file)
    assert ds.PatientID == pseudonym("isic-uda1", record.case_id) != record.case_id
    assert record.case_id not in str(ds.PatientName)
    assert ds.Modality == "DMS" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.7"
    assert ds.PatientIdentityRemoved == "YES"


def test_read_dicomized_collection(dicomized):
    scan = read_dicom_folder(dicomized.out)
    assert scan.problems == []
    by_case = {q.case_id: q for q in scan.queries}
    assert set(by_case) == {r.case_id for r in dicomized.records}
    for record in dicomized.records:
        query = by_case[record.case_id]
        assert query.text == record.text.strip()
        assert query.text_source == "sr"
        assert query.diagnosis == record.diagnosis
        assert record.diagnosis not in query.text  # the label never leaks into the query text
        assert query.collection == record.collection
        assert query.confirmation == getattr(record, "confirmation", "unknown")
        source = np.asarray(Image.open(record.image_path).convert("RGB"))
        assert query.image.shape == source.shape
        # ISIC: the same JPEG stream, read by the decoder that read the file (the training's); PNG: stored
        # uncompressed. Either way the pixels the network was trained on, exactly
        np.testing.assert_array_equal(query.image, source)
    assert by_case["png-1"].site == "trunk"


def test_cli_dicomize(tmp_path, shared_data):
    from monai_cir.cli import main

    assert main(["dicomize", "--collection", "isic-uda1", "--out", str(tmp_path), "--limit", "2", "--no-progress"]) == 0
    assert len(list(tmp_path.glob("*/image.dcm"))) == 2 and len(list(tmp_path.glob("*/report.dcm"))) == 2


def test_cli_dicomize_refuses_an_out_folder_it_cannot_write_in_one_line(tmp_path, shared_data, capsys):
    """Before: one error per case (each study's write failed in turn); now one line before any case is read."""
    from monai_cir.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["dicomize", "--collection", "isic-uda1", "--out", str(tmp_path / "notes.txt" / "dicom"), "--limit", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.txt is a file, not a folder" in err, err
    assert main(["dicomize", "--collection", "isic-uda1", "--out", "/proc/monai-cir-dicom", "--limit", "2", "--no-progress"]) == 2
    assert "--out /proc/monai-cir-dicom: cannot write in /proc" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# reader: SR variants and bad input
# ------------------------------------------------------------------------------------------------
def _enhanced_sr(image: Dataset, items, sop_class: str | None = None, reference: bool = True) -> Dataset:
    import highdicom as hd
    from highdicom.sr import ImageContentItem, RelationshipTypeValues

    from monai_cir.dicom.sr import container

    items = list(items)
    if reference:
        items.append(ImageContentItem(C.SOURCE_IMAGE, image.SOPClassUID, image.SOPInstanceUID, relationship_type=RelationshipTypeValues.CONTAINS))
    sr = hd.sr.EnhancedSR(
        evidence=[image], content=container(C.FINDINGS, items), series_instance_uid=hd.UID(), series_number=5,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
    )
    if not reference:
        del sr.CurrentRequestedProcedureEvidenceSequence
    if sop_class:
        sr.SOPClassUID = sop_class
        sr.file_meta.MediaStorageSOPClassUID = sop_class
    return sr


def test_sr_variants_text(tmp_path):
    from highdicom.sr import CodeContentItem, RelationshipTypeValues, TextContentItem
    from pydicom.sr.coding import Code

    contains = RelationshipTypeValues.CONTAINS
    # Basic Text SR with TEXT and a coded finding; Enhanced SR; no SR; empty text; unreferenced only SR
    folder = make_case(tmp_path, "basic", text=None)
    image = pydicom.dcmread(folder / "image.dcm", stop_before_pixels=True)
    items = [
        TextContentItem(C.FINDING, "irregular streaks", relationship_type=contains),
        CodeContentItem(C.FINDING, Code("247441003", "SCT", "Erythema"), relationship_type=contains),
        CodeContentItem(Code("123", "99X", "Elevation"), Code("1", "99X", "palpable"), relationship_type=contains),
    ]
    _enhanced_sr(image, items, sop_class="1.2.840.10008.5.1.4.1.1.88.11").save_as(folder / "basic.dcm", enforce_file_format=True)
    folder = make_case(tmp_path, "enhanced", text=None)
    image = pydicom.dcmread(folder / "image.dcm", stop_before_pixels=True)
    _enhanced_sr(image, [TextContentItem(C.FINDING, "blue-white veil", relationship_type=contains)]).save_as(folder / "e.dcm", enforce_file_format=True)
    folder = make_case(tmp_path, "unreferenced", text=None)
    image = pydicom.dcmread(folder / "image.dcm", stop_before_pixels=True)
    _enhanced_sr(image, [TextContentItem(C.FINDING, "only sr", relationship_type=contains)], reference=False).save_as(folder / "u.dcm", enforce_file_format=True)
    make_case(tmp_path, "nosr", text=None)
    make_case(tmp_path, "empty", text="")

    scan = read_dicom_folder(tmp_path)
    assert scan.problems == []
    q = {Path(x.source_path).parent.name: x for x in scan.queries}
    assert q["basic"].text == "irregular streaks\nErythema\nElevation: palpable"
    assert q["enhanced"].text == "blue-white veil" and q["enhanced"].text_source == "sr"
    assert q["unreferenced"].text == "only sr" and q["unreferenced"].text_source == "study-sr"
    assert any("does not reference" in n for n in q["unreferenced"].notices)
    assert q["nosr"].text == "" and q["nosr"].text_source == "none" and q["nosr"].is_image_only
    assert any("no SR" in n for n in q["nosr"].notices)
    assert q["empty"].text == "" and any("no text" in n for n in q["empty"].notices)


def _native(name: str, pixels: np.ndarray, photometric: str, sop_class: str = VLPhotographicImageStorage, frames: int = 1) -> Dataset:
    """An uncompressed XC image dataset with arbitrary pixels (pydicom only)."""
    uids = case_uids("synthetic", name)
    ds = dermoscopy_image_dataset(pixels=synthetic_image(8, 8), uids=uids)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = "XC"
    pixels = np.ascontiguousarray(pixels)
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 + (frames > 1) else 3
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[(frames > 1) : (frames > 1) + 2]
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    if ds.SamplesPerPixel == 1 and "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    return ds


def test_pixel_variants(tmp_path):
    rgb = synthetic_image(64, 80)
    # 16-bit greyscale
    grey16 = (np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 7) % 4096
    _native("grey16", grey16, "MONOCHROME2").save_as(tmp_path / "grey16.dcm", enforce_file_format=True)
    # 16-bit colour over its whole stored range: read without a notice
    rgb16 = rgb.astype(np.uint16) * 257
    _native("rgb16", rgb16, "RGB").save_as(tmp_path / "rgb16.dcm", enforce_file_format=True)
    _native("rgb12in16", rgb.astype(np.uint16) * 16, "RGB").save_as(tmp_path / "rgb12in16.dcm", enforce_file_format=True)
    _native("rgb8in16", rgb.astype(np.uint16), "RGB").save_as(tmp_path / "rgb8in16.dcm", enforce_file_format=True)
    # PALETTE COLOR with a 12-bit index and 16-bit tables: the tables' output is scaled as 16-bit, not by the index's bits
    index = (np.arange(64 * 80).reshape(64, 80) % 4096).astype(np.uint16)
    palette = _native("palette12", index, "PALETTE COLOR")
    palette.BitsStored, palette.HighBit = 12, 11
    ramp = np.linspace(0, 65535, 4096).astype(np.uint16)
    for colour, table in (("Red", ramp), ("Green", ramp[::-1].copy()), ("Blue", np.full(4096, 32768, np.uint16))):
        setattr(palette, f"{colour}PaletteColorLookupTableDescriptor", [4096, 0, 16])
        setattr(palette, f"{colour}PaletteColorLookupTableData", table.tobytes())
    palette.save_as(tmp_path / "palette12.dcm", enforce_file_format=True)
    # YBR_FULL (uncompressed)
    from pydicom.pixels import convert_color_space

    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    _native("ybr", ybr, "YBR_FULL").save_as(tmp_path / "ybr.dcm", enforce_file_format=True)
    # multi-frame RGB
    stack = np.stack([rgb, 255 - rgb])
    _native("multi", stack, "RGB", frames=2).save_as(tmp_path / "multi.dcm", enforce_file_format=True)
    # huge image
    huge = np.zeros((4000, 4000, 3), np.uint8)
    huge[1000:3000, 1000:3000] = np.linspace(60, 220, 2000, dtype=np.uint8)[:, None, None]  # a field with content (a flat one is blank)
    dermoscopy_image_dataset(pixels=huge, uids=case_uids("synthetic", "huge")).save_as(tmp_path / "huge.dcm", enforce_file_format=True)

    scan = read_dicom_folder(tmp_path)
    assert scan.problems == []
    q = {Path(x.source_path).stem: x for x in scan.queries}
    g = q["grey16"].image
    assert g.shape == (64, 80, 3) and g.dtype == np.uint8 and g.max() == 255 and (g[..., 0] == g[..., 2]).all()
    # colour in 16 bits: the same colours as in 8 (not stretched by its own range), without a notice; 12 bits of
    # values in a 16-bit store: read by the stored range, as a viewer shows it, and called dim
    np.testing.assert_array_equal(q["rgb16"].image, rgb)
    # a dim one (12 or 8 bits of values in a 16-bit store) is stretched by its own range, as before, and says so: read by
    # the stored range it would be a few grey levels (8 in 16 bits: "blank")
    from monai_cir.data.preprocess import to_rgb_uint8

    np.testing.assert_array_equal(q["rgb12in16"].image, to_rgb_uint8(rgb.astype(np.uint16) * 16))
    np.testing.assert_array_equal(q["rgb8in16"].image, to_rgb_uint8(rgb.astype(np.uint16)))
    assert [n for n in q["rgb12in16"].notices if n.startswith("dim image")] == [
        "dim image: its values span 5% of its 16-bit range, so its contrast was stretched to the full range for the search: "
        "it looks darker in a viewer than what the search compared"]
    assert [n for n in q["rgb8in16"].notices if n.startswith("dim image")]
    assert not [n for n in q["grey16"].notices + q["rgb16"].notices + q["palette12"].notices if n.startswith("dim image")]
    # the palette's red ramp over the whole 16-bit table range: index 4095 is full red, index 2048 about half
    red = q["palette12"].image[..., 0].astype(int)
    assert red.max() == 255 and abs(int(red.reshape(-1)[2048]) - 128) <= 2, (red.max(), red.reshape(-1)[2048])
    assert np.abs(q["ybr"].image.astype(int) - rgb.astype(int)).max() <= 2
    assert q["multi"].frame_number is None or q["multi"].frame_number == 1
    np.testing.assert_array_equal(q["multi"].image, rgb)
    assert any("multi-frame" in n for n in q["multi"].notices)
    assert q["huge"].image.shape == (2048, 2048, 3) and any("downscaled" in n for n in q["huge"].notices)
    frames = read_dicom_folder(tmp_path / "multi.dcm", all_frames=True).queries
    assert [f.frame_number for f in frames] == [1, 2]
    np.testing.assert_array_equal(frames[1].image, 255 - rgb)


def test_jpeg_baseline_frames_large_and_multi_frame(tmp_path, monkeypatch):
    """The Pillow path of a JPEG Baseline instance: a frame over twice max_side is decoded at a reduced
    DCT scale (and the notice names its stored size); a multi-frame instance gives the frames asked for."""
    from PIL import JpegImagePlugin

    big = np.kron(synthetic_image(44, 44, seed=5), np.ones((100, 100, 1), np.uint8))  # 4400 x 4400
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    record = NS(case_id="big", image_path=tmp_path / "big.jpg", diagnosis="nevus", text="a large photograph", site="back", collection="user", metadata={})
    (done,), failed = dicomize_records([record], tmp_path / "big", progress=False)
    assert not failed and done.transfer_syntax == JPEGBaseline8Bit
    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda img, mode, size: drafts.append(size) or real_draft(img, mode, size))
    (query,) = read_dicom_folder(tmp_path / "big").queries
    assert drafts == [(2048, 2048)]  # decoded at half scale (2200 x 2200), then downscaled
    assert query.image.shape == (2048, 2048, 3)
    assert any("image of 4400x4400 downscaled to fit 2048 pixels" in n for n in query.notices)
    full = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize((2048, 2048), Image.Resampling.LANCZOS))
    assert np.abs(query.image.astype(int) - full.astype(int)).mean() < 2.0
    drafts.clear()
    assert read_dicom_folder(tmp_path / "big", max_side=4400).queries[0].image.shape == (4400, 4400, 3) and drafts == []

    # two frames, two JPEG streams
    from pydicom.encaps import encapsulate

    streams, frames = [], [synthetic_image(64, 80, seed=1), 255 - synthetic_image(64, 80, seed=2)]
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"f{i}.jpg", quality=95)
        streams.append((tmp_path / f"f{i}.jpg").read_bytes())
    ds = pydicom.dcmread(done.image_file)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 64, 80, 2
    ds.PixelData = encapsulate(streams)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    (tmp_path / "multi").mkdir()
    ds.save_as(tmp_path / "multi" / "multi.dcm", enforce_file_format=True)
    decoded = [np.asarray(Image.open(tmp_path / f"f{i}.jpg").convert("RGB")) for i in range(2)]
    (first,) = read_dicom_folder(tmp_path / "multi").queries
    np.testing.assert_array_equal(first.image, decoded[0])
    assert any("frame 1 of 2 used" in n for n in first.notices)
    both = read_dicom_folder(tmp_path / "multi", all_frames=True).queries
    assert [q.frame_number for q in both] == [1, 2]
    np.testing.assert_array_equal(both[1].image, decoded[1])


def test_bad_inputs_are_reported_and_the_batch_goes_on(tmp_path):
    good = make_case(tmp_path, "good")
    # a PNG renamed .dcm
    Image.fromarray(synthetic_image()).save(tmp_path / "photo.png")
    (tmp_path / "photo.png").rename(tmp_path / "renamed.dcm")
    ds = pydicom.dcmread(good / "image.dcm")
    # DICOM without pixel data
    nopix = copy.deepcopy(ds)
    del nopix.PixelData
    nopix.SOPInstanceUID = nopix.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    nopix.save_as(tmp_path / "nopixels.dcm", enforce_file_format=True)
    # unsupported SOP class (CT Image Storage)
    ct = copy.deepcopy(ds)
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    # truncated native pixel data
    short = copy.deepcopy(ds)
    short.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    short.SOPInstanceUID = short.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    short.save_as(tmp_path / "truncated.dcm", enforce_file_format=True)
    # corrupt JPEG stream
    from pydicom.encaps import encapsulate

    bad_jpeg = copy.deepcopy(ds)
    bad_jpeg.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    bad_jpeg.PhotometricInterpretation = "YBR_FULL_422"
    bad_jpeg.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + bytes(range(256)) * 4 + b"\xff\xd9"])
    bad_jpeg.SOPInstanceUID = bad_jpeg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    bad_jpeg.save_as(tmp_path / "badjpeg.dcm", enforce_file_format=True)
    # missing Patient / Study attributes: repaired with notices
    anon = make_case(tmp_path, "anon", text=None)
    a = pydicom.dcmread(anon / "image.dcm")
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "PatientSex", "StudyDate"):
        delattr(a, keyword)
    a.save_as(anon / "image.dcm", enforce_file_format=True)

    scan = read_dicom_folder(tmp_path)
    problems = {Path(p.path).name: p.message for p in scan.problems}
    assert "not a DICOM file" in problems["renamed.dcm"]
    assert "without pixel data" in problems["nopixels.dcm"]
    assert "unsupported SOP class 1.2.840.10008.5.1.4.1.1.2" in problems["ct.dcm"] and "CT Image Storage" in problems["ct.dcm"]
    assert "corrupt or undecodable pixel data" in problems["truncated.dcm"]
    assert "corrupt or undecodable pixel data" in problems["badjpeg.dcm"]
    assert len(scan.problems) == 5 and all(isinstance(p, InputProblem) for p in scan.problems)
    q = {Path(x.source_path).parent.name: x for x in scan.queries}
    assert set(q) == {"good", "anon"}
    assert q["good"].text == "a flat brown lesion"
    repaired = q["anon"]
    # no Patient ID: none made up (the answer must file under its image's patient and study)
    assert repaired.patient_id == "" and repaired.study_uid
    assert any("no Patient ID" in n for n in repaired.notices) and any("Study Instance UID" in n for n in repaired.notices)
    # the repaired dataset is complete enough to answer, with the image's (empty) Patient ID
    similar_cases_sr(repaired, [], score_range=SCORE_RANGE).save_as(tmp_path / "answer.dcm", enforce_file_format=True)
    similar_cases_pdf(repaired, [], score_range=SCORE_RANGE).save_as(tmp_path / "answer_pdf.dcm", enforce_file_format=True)
    for name in ("answer.dcm", "answer_pdf.dcm"):
        answer = pydicom.dcmread(tmp_path / name)
        assert answer.PatientID == "" and answer.StudyInstanceUID == repaired.study_uid
        assert_valid(tmp_path / name, empty=("Patient ID", "Study Date"))



def _variant(source: Path, folder: Path, name: str = "image.dcm", **attributes) -> Path:
    """A copy of a DICOM file in ``folder`` with ``attributes`` set (the same SOP Instance UID unless given)."""
    ds = pydicom.dcmread(source)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / name, enforce_file_format=True)
    return folder / name


def test_one_unreadable_image_does_not_stop_the_scan(tmp_path):
    """An image whose header cannot be read as it says (Number of Frames "x") is reported, naming the
    attribute, and the other studies are answered; so are an empty pixel data and a tiny image."""
    make_case(tmp_path, "good")
    bad = make_case(tmp_path, "frames", text=None)
    ds = pydicom.dcmread(bad / "image.dcm")
    ds.NumberOfFrames = 1
    ds.save_as(bad / "image.dcm", enforce_file_format=True)
    raw = (bad / "image.dcm").read_bytes()
    pattern = b"\x28\x00\x08\x00IS\x02\x001 "  # (0028,0008) IS "1 ", explicit VR little endian
    assert raw.count(pattern) == 1
    (bad / "image.dcm").write_bytes(raw.replace(pattern, pattern[:-2] + b"x "))
    empty = make_case(tmp_path, "empty", text=None)
    ds = pydicom.dcmread(empty / "image.dcm")
    ds.PixelData = b""
    ds.save_as(empty / "image.dcm", enforce_file_format=True)
    make_case(tmp_path, "tiny", pixels=synthetic_image(8, 8), text=None)
    # a whole data set without preamble and file meta (not a Part 10 file): not a cut file
    nometa = make_case(tmp_path, "nometa", text=None)
    ds = pydicom.dcmread(nometa / "image.dcm")
    del ds.file_meta
    ds.save_as(nometa / "image.dcm", enforce_file_format=False, implicit_vr=True, little_endian=True)

    scan = read_dicom_folder(tmp_path)
    problems = {Path(p.path).parent.name: p.message for p in scan.problems}
    assert [Path(q.source_path).parent.name for q in scan.queries] == ["good"]
    assert "invalid Number of Frames (0028,0008) 'x'" in problems["frames"] and problems["frames"].endswith("skipped")
    assert "pixel data (7FE0,0010) is empty" in problems["empty"]
    assert "image of 8x8 pixels" in problems["tiny"] and "too small" in problems["tiny"]
    assert problems["nometa"].startswith("DICOM file without a Transfer Syntax UID (0002,0010)") and "truncated" not in problems["nometa"]


def test_an_instance_received_twice_is_answered_once(tmp_path):
    """The same image and SR copied twice into the input: one query, its text not doubled, and a notice."""
    case = make_case(tmp_path, "case")
    shutil.copytree(case, tmp_path / "again")
    scan = read_dicom_folder(tmp_path)
    assert len(scan.queries) == 1 and not scan.problems
    query = scan.queries[0]
    assert query.text == "a flat brown lesion" and len(query.sr_uids) == 1
    assert any("received 2 times: answered once" in n for n in query.notices)


def test_a_uid_collision_gives_no_patient_anothers_report(tmp_path):
    """Two patients' images with one SOP Instance UID (a collision upstream): neither is answered, so
    neither gets the other's report text; an SR of another patient that references an image gives it
    no text."""
    first = make_case(tmp_path / "in", "first", text="first patient's report")
    second = make_case(tmp_path / "in", "second", pixels=255 - synthetic_image(), text="second patient's report")
    image = pydicom.dcmread(first / "image.dcm")
    other = pydicom.dcmread(second / "image.dcm")
    _variant(second / "image.dcm", second, SOPInstanceUID=image.SOPInstanceUID)
    sr = pydicom.dcmread(second / "sr.dcm")
    for study in sr.CurrentRequestedProcedureEvidenceSequence:
        for series in study.ReferencedSeriesSequence:
            for item in series.ReferencedSOPSequence:
                item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    sr.save_as(second / "sr.dcm", enforce_file_format=True)
    scan = read_dicom_folder(tmp_path / "in")
    assert scan.queries == []
    messages = {Path(p.path).parent.name: p.message for p in scan.problems}
    assert set(messages) == {"first", "second"} and all("UID collision" in m for m in messages.values())

    # the second patient's SR alone, referencing the first patient's image
    (second / "image.dcm").unlink()
    scan = read_dicom_folder(tmp_path / "in")
    assert len(scan.queries) == 1 and scan.queries[0].patient_id == image.PatientID != other.PatientID
    assert scan.queries[0].text == "first patient's report"
    assert any(f"an SR of another patient ({other.PatientID})" in n for n in scan.queries[0].notices)



def _also_references(sr_path: Path, image: Dataset) -> None:
    """Make the SR at ``sr_path`` reference ``image`` too (its evidence, under the image's study)."""
    sr = pydicom.dcmread(sr_path)
    ref, series, study = Dataset(), Dataset(), Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
    series.SeriesInstanceUID, series.ReferencedSOPSequence = image.SeriesInstanceUID, [ref]
    study.StudyInstanceUID, study.ReferencedSeriesSequence = image.StudyInstanceUID, [series]
    sr.CurrentRequestedProcedureEvidenceSequence.append(study)
    sr.save_as(sr_path, enforce_file_format=True)


def test_report_text_comes_from_its_own_patient_and_study(tmp_path):
    """Which report an image's query text comes from, where UIDs and identities disagree (a second review):
    never another patient's, this study's before another's, and every time the notice says what was left out."""
    from highdicom.sr import RelationshipTypeValues, TextContentItem

    def one(folder: Path) -> DermoscopyQuery:
        scan = read_dicom_folder(folder)
        assert len(scan.queries) == 1, scan.problems
        return scan.queries[0]

    # the study's only SR references no image and is of another patient: its text is not used
    a = make_case(tmp_path / "a", "case", text=None)
    sr = _enhanced_sr(pydicom.dcmread(a / "image.dcm"), [TextContentItem(C.FINDING, "another patient's report", relationship_type=RelationshipTypeValues.CONTAINS)], reference=False)
    sr.PatientID = "SOMEONE-ELSE"
    sr.save_as(a / "sr.dcm", enforce_file_format=True)
    query = one(tmp_path / "a")
    assert query.text == "" and any("is of another patient (SOMEONE-ELSE): its text is not used" in n for n in query.notices)
    assert not any("no SR in the study" in n or "none references this image" in n for n in query.notices), query.notices

    # an image without Patient ID takes its report's text, and the notice names the report's patient
    b = make_case(tmp_path / "b", "case", text="the report")
    patient = pydicom.dcmread(b / "sr.dcm").PatientID
    _variant(b / "image.dcm", b, PatientID="")
    query = one(tmp_path / "b")
    assert query.text == "the report"
    assert f"this image has no Patient ID, the report used is of Patient ID {patient}: check that it is this patient's" in query.notices

    # an SR that also references another study's image: that image keeps its own study's report only
    first = make_case(tmp_path / "c", "first", text="report one")
    second = make_case(tmp_path / "c", "second", pixels=255 - synthetic_image(), text="report two")
    other = pydicom.dcmread(second / "image.dcm")
    other.PatientID = pydicom.dcmread(first / "image.dcm").PatientID  # the same patient, two studies
    other.save_as(second / "image.dcm", enforce_file_format=True)
    twin = pydicom.dcmread(second / "sr.dcm")
    twin.PatientID = other.PatientID
    twin.save_as(second / "sr.dcm", enforce_file_format=True)
    _also_references(first / "sr.dcm", other)
    texts = {Path(q.source_path).parent.name: q for q in read_dicom_folder(tmp_path / "c").queries}
    assert texts["first"].text == "report one" and texts["second"].text == "report two"
    assert any("an SR of another study" in n and "only this study's report is used" in n for n in texts["second"].notices)

    # an SR and an image with one SOP Instance UID collide: neither is used
    d = make_case(tmp_path / "d", "case")
    image = pydicom.dcmread(d / "image.dcm")
    _variant(d / "sr.dcm", d, name="sr.dcm", SOPInstanceUID=image.SOPInstanceUID)
    scan = read_dicom_folder(tmp_path / "d")
    assert scan.queries == [] and len(scan.problems) == 2 and all("(an SR and an image)" in p.message for p in scan.problems)

    # two copies of one study, the second SR amended under the same UID: both SRs refused, the image answered once
    e = make_case(tmp_path / "e", "case")
    shutil.copytree(e, tmp_path / "e" / "again")
    amended = pydicom.dcmread(tmp_path / "e" / "again" / "sr.dcm")
    for item in _items(amended):
        if item.get("ValueType") == "TEXT" and str(item.get("TextValue", "")) == "a flat brown lesion":
            item.TextValue = "an amended report"
    amended.save_as(tmp_path / "e" / "again" / "sr.dcm", enforce_file_format=True)
    scan = read_dicom_folder(tmp_path / "e")
    assert len(scan.queries) == 1 and scan.queries[0].text == ""
    assert sorted(Path(p.path).name for p in scan.problems) == ["sr.dcm", "sr.dcm"] and all("(another report)" in p.message for p in scan.problems)
    assert any("report SR(s) of this study not used: each shares its SOP Instance UID with another instance" in n for n in scan.queries[0].notices)
    assert not any("no SR in the study" in n for n in scan.queries[0].notices)

def test_an_sr_without_its_image_is_reported(tmp_path):
    case = make_case(tmp_path / "in", "case")
    (case / "image.dcm").unlink()
    scan = read_dicom_folder(tmp_path / "in")
    assert scan.queries == [] and len(scan.problems) == 1
    assert scan.problems[0].path.endswith("sr.dcm") and "references no image of this input" in scan.problems[0].message


def test_invalid_patient_and_study_values_are_emptied_and_the_answer_written(tmp_path, dicomized):
    """Values DICOM does not allow in the attributes the answer copies (a 4-digit birth date, a date with
    dashes, a time with colons, "female") are left empty with a notice: the SR and the PDF are written."""
    case = make_case(tmp_path, "case")
    _variant(case / "image.dcm", case, PatientBirthDate="1960", StudyDate="2023-01-05", StudyTime="12:30:00", PatientSex="female")
    query = read_dicom_folder(tmp_path).queries[0]
    for keyword in ("PatientBirthDate", "StudyDate", "StudyTime", "PatientSex"):
        assert query.dataset.get(keyword) == ""
    assert any("invalid Patient's Birth Date '1960'" in n for n in query.notices)
    assert any("invalid Patient's Sex 'female' (M, F or O)" in n for n in query.notices)
    sr = similar_cases_sr(query, _hits(read_dicom_folder(dicomized.out).queries[1:3]), score_range=SCORE_RANGE)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert_valid(tmp_path / "sr.dcm", empty=("Study Date", "Study Time"))
    # a multi-valued Patient ID (invalid, but sent) reads as DICOM writes it, not as a Python list
    multi = make_case(tmp_path / "multi", "case")
    _variant(multi / "image.dcm", multi, PatientID=["12345", "67890"])
    read = read_dicom_folder(tmp_path / "multi").queries[0]
    assert read.patient_id == "12345\\67890"
    # identifying values that break their VR are copied as received (repaired, the answer would leave its study), and said
    assert [n for n in read.notices if "breaks DICOM's rules" in n] == [
        "Patient ID \"12345\\67890\" breaks DICOM's rules for it (2 values where one is allowed): copied as received so that the "
        "answer is filed with its study; a PACS that checks values may refuse the answer"]
    long_id = make_case(tmp_path / "long", "case")
    _variant(long_id / "image.dcm", long_id, PatientID="P" * 80, PatientName="Doe^Jane\x01", AccessionNumber="A" * 20)
    breaches = [n for n in read_dicom_folder(tmp_path / "long").queries[0].notices if "breaks DICOM's rules" in n]
    assert len(breaches) == 3 and "exceeds the maximum length of 64 allowed for VR LO" in breaches[0]
    assert "control characters" in breaches[1] and "maximum length of 16 allowed for VR SH" in breaches[2]
    good = make_case(tmp_path / "ok", "case")
    _variant(good / "image.dcm", good, PatientBirthDate="19600101", StudyTime="123000.5", PatientSex="F")
    assert not any("invalid" in n or "breaks DICOM's rules" in n for n in read_dicom_folder(tmp_path / "ok").queries[0].notices)


def test_answers_are_utf8_whatever_the_query_character_set(tmp_path, dicomized):
    """A Japanese site's image (ISO 2022 IR 87, which highdicom cannot write) and a report in UTF-8 under an
    image without a character set: the SR and the PDF are written in UTF-8 with the names and text intact."""
    case = make_case(tmp_path, "jp", text="背中の病変 — naevus?")
    _variant(case / "image.dcm", case, SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName="ヤマダ^タロウ=山田^太郎")
    query = read_dicom_folder(tmp_path).queries[0]
    assert str(query.dataset.PatientName) == "ヤマダ^タロウ=山田^太郎"
    sr = similar_cases_sr(query, _hits(read_dicom_folder(dicomized.out).queries[1:3]), score_range=SCORE_RANGE)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    back = pydicom.dcmread(tmp_path / "sr.dcm")
    assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == "ヤマダ^タロウ=山田^太郎"
    assert any("背中の病変 — naevus?" in str(item.get("TextValue", "")) for item in _items(back))
    assert_valid(tmp_path / "sr.dcm")
    pdf = similar_cases_pdf(query, [], score_range=SCORE_RANGE)
    pdf.save_as(tmp_path / "pdf.dcm", enforce_file_format=True)
    back = pydicom.dcmread(tmp_path / "pdf.dcm")
    assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == "ヤマダ^タロウ=山田^太郎"
    assert [(s.ReferencedSOPClassUID, s.ReferencedSOPInstanceUID) for s in back.SourceInstanceSequence] == [(query.sop_class_uid, query.sop_instance_uid)]
    # the PDF draws each text in a font that has its characters (black boxes otherwise): the Japanese report in
    # a Japanese CID font, Greek in the embedded DejaVu Sans, Latin-1 in the base fonts
    from reportlab.pdfbase import pdfmetrics

    from monai_cir.dicom.report_pdf import render_report_pdf, text_font

    document = back.EncapsulatedDocument
    assert b"HeiseiKakuGo-W5" in document
    greek = "Παπαδοπούλου: άτυπο δίκτυο"
    assert text_font("naevus, café-au-lait") == "Helvetica" and text_font("背中") == "STSong-Light" and text_font("등") == "HYGothic-Medium"
    assert text_font(greek) == "DejaVuSans" and text_font(greek, "Helvetica-Bold") == "DejaVuSans-Bold"
    face = pdfmetrics.getFont("DejaVuSans").face
    assert all(ord(ch) in face.charToGlyph for ch in greek if not ch.isspace())
    rendered = render_report_pdf(query.image, greek, [], score_range=SCORE_RANGE)
    assert b"DejaVuSans" in rendered and b"/FontFile2" in rendered  # embedded, not named only
    # the app's own PDF sent back with the study is not a query, and says so
    shutil.copy(tmp_path / "pdf.dcm", case / "answer.dcm")
    problems = read_dicom_folder(tmp_path / "jp").problems
    assert [p.message for p in problems] == ["this app's own report (the Encapsulated PDF of an earlier answer), not a query: skipped"]


def _items(ds: Dataset):
    for item in ds.get("ContentSequence", []) or []:
        yield item
        yield from _items(item)

def test_query_validates_at_construction():
    with pytest.raises(ValueError, match="image"):
        DermoscopyQuery(np.zeros((4, 4), np.uint8), "", "none", [], "unknown", "p", "", "1", "1", "1", "1", "x", Dataset())
    with pytest.raises(ValueError, match="text_source"):
        DermoscopyQuery(np.zeros((4, 4, 3), np.uint8), "", "bogus", [], "unknown", "p", "", "1", "1", "1", "1", "x", Dataset())


# ------------------------------------------------------------------------------------------------
# similar-cases SR and PDF
# ------------------------------------------------------------------------------------------------
CONFIRMATION_CYCLE = ("histopathology", "unknown", "follow-up", "expert consensus")


def _hits(queries):
    hits = []
    for rank, lib in enumerate(queries, 1):
        meta = NS(diagnosis=lib.diagnosis, study_uid=lib.study_uid, series_uid=lib.series_uid, sop_instance_uid=lib.sop_instance_uid,
                  sop_class_uid=lib.sop_class_uid, collection=lib.collection, site=lib.site,
                  confirmation=CONFIRMATION_CYCLE[(rank - 1) % len(CONFIRMATION_CYCLE)])
        hits.append(NS(rank=rank, case_id=lib.case_id, score=round(2.95 - 0.1234567 * rank, 7), metadata=meta))
    return hits


def _no_uid_hit(rank: int, **meta) -> NS:
    fields = dict(diagnosis="melanoma", study_uid=None, series_uid=None, sop_instance_uid=None, sop_class_uid=None,
                  collection="files", site="unknown", confirmation="histopathology")
    return NS(rank=rank, case_id=f"jpeg-only-{rank}", score=0.01, metadata=NS(**{**fields, **meta}))


def _summary(hits):
    from monai_cir.evidence import EvidenceCalibration, summarize_evidence

    return summarize_evidence(
        [{"diagnosis": h.metadata.diagnosis, "score": h.score} for h in hits],
        calibration=EvidenceCalibration(temperature=0.2, smoothing=0.1, fitted=True), classes=["melanoma", "nevus", "benign keratosis"],
    )


def coding_scheme_warnings(path: Path) -> list[str]:
    return [w for w in dciodvfy(path)[1] if "Coding Scheme" in w]


def _codes(ds: Dataset):
    """Every code item (anything with a Coding Scheme Designator) in a dataset, recursively."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                if "CodingSchemeDesignator" in item:
                    yield item
                yield from _codes(item)


def _designators(ds: Dataset) -> set[str]:
    return {str(c.CodingSchemeDesignator) for c in _codes(ds)}


def test_similar_cases_sr_is_tid1500_and_reads_back_through_highdicom(dicomized, tmp_path):
    import highdicom as hd

    scan = read_dicom_folder(dicomized.out)
    query, library = scan.queries[0], scan.queries[1:]
    hits = _hits(library) + [_no_uid_hit(len(library) + 1, site="trunk")]  # (a case with a site)
    summary = _summary(hits)
    sr = similar_cases_sr(query, hits, evidence_summary=summary, explanations={1: "pigment network, 'brown'"}, ranking="similarity_and_diagnosis_prior", score_range=SCORE_RANGE)
    path = tmp_path / "similar.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_valid(path)
    assert coding_scheme_warnings(path) == []  # standard schemes only (ISO_OID for the project concepts)
    dump = subprocess.run(["dsrdump", "+Pt", str(path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "TID 1500" in dump.stdout and "TID 1501" in dump.stdout and "Similarity score" in dump.stdout

    ds = pydicom.dcmread(path)
    assert ds.PatientID == query.patient_id and ds.StudyInstanceUID == query.study_uid
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500" and ds.VerificationFlag == "UNVERIFIED"
    assert ds.SOPInstanceUID.startswith(C.UID_ROOT) and ds.SeriesInstanceUID.startswith(C.UID_ROOT)
    other = {s.StudyInstanceUID for s in ds.PertinentOtherEvidenceSequence}
    assert other == {h.metadata.study_uid for h in hits if h.metadata.study_uid}
    designators = _designators(ds)
    assert C.LEGACY_PRIVATE_SCHEME not in designators and not any(d.startswith("99") for d in designators - {"99IHE"})
    assert {d for d in designators} <= {"DCM", "SCT", "LN", "UCUM", "UMLS", "RFC5646", "99IHE", C.OID_SCHEME}
    project = [c for c in _codes(ds) if c.CodingSchemeDesignator == C.OID_SCHEME]
    assert project and all(c.LongCodeValue.startswith(C.CONCEPT_ROOT) and "CodeValue" not in c for c in project)
    # IHE AI Results: the algorithm as Contributing Equipment
    ours = [e for e in ds.ContributingEquipmentSequence if e.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"]
    assert len(ours) == 1 and ours[0].DeviceUID == C.DEVICE_UID and ours[0].ManufacturerModelName == C.MODEL_NAME
    purpose = ours[0].PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == ("Newcode1", "99IHE", "Processing Algorithm")
    assert ours[0].SoftwareVersions == C.software_version()

    # highdicom's own TID 1500 classes see one measurement group per case (+ one per evidence diagnosis)
    document = hd.sr.srread(path)
    assert isinstance(document.content, hd.sr.MeasurementReport)
    groups = document.content.get_image_measurement_groups()
    assert len(groups) == len(hits) + len(summary.distribution)
    nevus = groups[[h.metadata.diagnosis for h in hits].index("nevus")].get_qualitative_evaluations(name=C.CASE_DIAGNOSIS)[0].value
    assert (nevus.value, nevus.scheme_designator) == ("400096001", "SCT")
    # a case's diagnosis and site are another patient's: never the standard Diagnosis or Finding Site of a group whose
    # subject is this patient's lesion (found by the viewer review: dsrdump showed 'Finding Site = Trunk' and 'Diagnosis =
    # Malignant melanoma' for a head-and-neck query); the evidence summary's groups keep Diagnosis, its suggestion
    cases = groups[: len(hits)]
    assert all(not g.get_qualitative_evaluations(name=C.DIAGNOSIS) and not g.finding_sites for g in cases)
    sited = [g.get_qualitative_evaluations(name=C.CASE_SITE) for g, h in zip(cases, hits) if h.metadata.site not in (None, "unknown")]
    assert sited and all(len(s) == 1 for s in sited)
    assert all(g.get_qualitative_evaluations(name=C.DIAGNOSIS) for g in groups[len(hits):])

    report = read_similar_cases_sr(path)
    assert report.template == "1500" and report.score_range == (-3.0, 3.0)
    assert report.ranking == "similarity_and_diagnosis_prior"  # coded in each case's group: no notice to parse
    with pytest.raises(ValueError, match="unknown ranking 'best first'"):
        similar_cases_sr(query, hits, ranking="best first", score_range=SCORE_RANGE)
    assert report.query_sop_instance_uid == query.sop_instance_uid and report.query_text == query.text
    assert [m.rank for m in report.matches] == [h.rank for h in hits]
    for match, hit in zip(report.matches, hits):
        assert match.score == pytest.approx(hit.score, abs=1e-9)
        assert match.diagnosis == hit.metadata.diagnosis and match.case_id == hit.case_id
        assert match.site == (hit.metadata.site if hit.metadata.site not in (None, "unknown") else None)
        assert match.confirmation == hit.metadata.confirmation and match.collection == hit.metadata.collection
        assert match.sop_instance_uid == hit.metadata.sop_instance_uid
        assert match.study_uid == hit.metadata.study_uid and match.series_uid == hit.metadata.series_uid
    assert report.matches[0].explanation.startswith("pigment network") and report.matches[1].explanation is None
    back = report.evidence_summary
    assert back.predicted == summary.predicted and back.k == summary.k == len(hits) and back.counts == summary.counts
    assert back.calibrated is True and back.method == summary.method
    assert back.distribution == pytest.approx(summary.distribution, abs=1e-9) and back.confidence == pytest.approx(summary.confidence, abs=1e-9)
    # an answer sent back beside the input is no query and gives no text; the reader says so in one line
    shutil.copy(path, dicomized.out / "answer.dcm")
    try:
        again = read_dicom_folder(dicomized.out)
        assert [(Path(p.path).name, p.message) for p in again.problems] == [
            ("answer.dcm", "a similar-cases SR (an earlier answer of this app), not a query: skipped")]
        assert {x.text for x in again.queries} == {x.text for x in scan.queries}
    finally:
        (dicomized.out / "answer.dcm").unlink()


def _items(ds: Dataset):
    """Every SR content item of a dataset, recursively."""
    for item in ds.get("ContentSequence", []) or []:
        yield item
        yield from _items(item)


def _as_first_release(ds: Dataset) -> int:
    """Rewrite the project concepts of ``ds`` as the first releases wrote them (99MONAICIR; a case's diagnosis and site as
    the standard Diagnosis and Finding Site); returns how many."""
    changed = 0
    for item in _items(ds):
        name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
        key = None if name is None else (str(name.CodingSchemeDesignator), str(name.get("LongCodeValue", name.get("CodeValue", ""))))
        for concept, (value, scheme, meaning, relationship) in (
            (C.CASE_DIAGNOSIS, (C.DIAGNOSIS.value, "SCT", C.DIAGNOSIS.meaning, "CONTAINS")),
            (C.CASE_SITE, ("363698007", "SCT", "Finding site", "HAS CONCEPT MOD")),
        ):
            if key == (concept.scheme_designator, concept.value):
                del name.LongCodeValue
                name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = value, scheme, meaning
                item.RelationshipType = relationship
                changed += 1
    legacy = {now: old for old, now in C._LEGACY_ALIASES.items()}
    for item in _codes(ds):
        key = (str(item.CodingSchemeDesignator), str(item.get("LongCodeValue", item.get("CodeValue", ""))))
        if key in legacy:
            scheme, value = legacy[key]
            if "LongCodeValue" in item:
                del item.LongCodeValue
            item.CodeValue, item.CodingSchemeDesignator = value, scheme
            changed += 1
    return changed


def test_sr_of_the_first_releases_still_reads_back(dicomized, tmp_path):
    """SRs written with the private 99MONAICIR codes (before the project concepts became OIDs), and with each case's
    diagnosis and site as the standard Diagnosis and Finding Site, read back the same."""
    scan = read_dicom_folder(dicomized.out)
    query, library = scan.queries[0], scan.queries[1:]
    hits = _hits(library) + [_no_uid_hit(len(library) + 1, site="trunk")]
    summary = _summary(hits)
    sr = similar_cases_sr(query, hits, evidence_summary=summary, explanations={1: "pigment network"}, score_range=SCORE_RANGE)
    now = read_similar_cases_sr(sr)
    old = copy.deepcopy(sr)
    assert _as_first_release(old) > 10 and C.LEGACY_PRIVATE_SCHEME in _designators(old) and C.OID_SCHEME not in _designators(old)
    then = read_similar_cases_sr(old)
    assert then.matches == now.matches and then.evidence_summary == now.evidence_summary
    assert [m.rank for m in then.matches] == [h.rank for h in hits]
    assert {m.confirmation for m in then.matches} == {h.metadata.confirmation for h in hits}
    # a library case SR of the first releases: diagnosis, confirmation, case id and collection
    case = dicomized.done[-1]  # the synthetic "benign keratosis" case
    ds = pydicom.dcmread(case.sr_file)
    assert _as_first_release(ds) >= 4
    from monai_cir.dicom.reader import read_sr_text

    info = read_sr_text(ds)
    assert (info.case_id, info.collection, info.diagnosis) == ("png-1", "user", "benign keratosis")


def test_query_study_carries_no_library_labels(tmp_path, shared_data):
    """A query study (dicomize --no-diagnosis) is no library case: no case id, collection or diagnosis in its SR."""
    from monai_cir.data.collections import load_collection
    from monai_cir.dicom.dicomize import dicomize_record

    record = load_collection("isic-uda1")[0]
    case = dicomize_record(record, tmp_path / "q", include_diagnosis=False)
    assert_valid(case.sr_file)
    names = {str(c.CodeMeaning) for c in _codes(pydicom.dcmread(case.sr_file))}
    assert not names & {C.CASE_IDENTIFIER.meaning, C.CASE_COLLECTION.meaning, C.DIAGNOSIS.meaning, C.DIAGNOSIS_CONFIRMATION.meaning}
    dump = subprocess.run(["dsrdump", str(case.sr_file)], capture_output=True, text=True, timeout=60).stdout
    assert record.case_id not in dump and "Library case identifier" not in dump
    (query,) = read_dicom_folder(tmp_path / "q").queries
    assert query.case_id is None and query.collection is None and query.diagnosis is None
    assert query.text == record.text.strip()


def _elements(ds: Dataset, path: str = "") -> list[tuple[str, str, object]]:
    """(path, VR, value) of every element of a dataset and its file meta, recursively, in tag order."""
    rows = []
    for elem in ([*ds.file_meta, *ds] if path == "" and "file_meta" in ds.__dict__ else ds):
        where = f"{path}/{elem.keyword or elem.tag}"
        if elem.VR == "SQ":
            rows.append((where, "SQ", len(elem.value)))
            for i, item in enumerate(elem.value):
                rows += _elements(item, f"{where}[{i}]")
        else:
            rows.append((where, elem.VR, elem.value))
    return rows


def _comparable(a: Dataset, b: Dataset) -> tuple[list, list]:
    """Both datasets' elements with date/time values blanked and the UIDs that only one of them has
    (generated afresh by each build) numbered in order of appearance: equal lists = the same SR."""
    rows = _elements(a), _elements(b)
    uids = [{str(v) for _, vr, v in r if vr == "UI"} for r in rows]
    fresh = uids[0] ^ uids[1]
    out = []
    for r in rows:
        numbers: dict[str, str] = {}
        out.append([
            (where, vr, "<date/time>" if vr in ("DA", "TM", "DT")
             else numbers.setdefault(str(v), f"<fresh uid {len(numbers)}>") if vr == "UI" and str(v) in fresh else v)
            for where, vr, v in r
        ])
    return out[0], out[1]


def test_fast_sr_assembly_equals_highdicoms_constructor(dicomized, tmp_path):
    """similar_cases_sr assembles the document around highdicom's content items without the
    ComprehensiveSR constructor's deep copy / re-parse / tree search (issue 15): the file must be the
    one the plain constructor writes, element by element. Hits: library instances in other studies,
    one without UIDs, one that is the query image itself (evidence listed once) and one in the
    query's own study (Current Requested Procedure Evidence); an evidence summary; explanations."""
    import highdicom as hd
    from monai_cir.dicom.sr import _assembled_comprehensive_sr

    scan = read_dicom_folder(dicomized.out)
    query, library = scan.queries[0], scan.queries[1:]
    hits = _hits(library) + [_no_uid_hit(len(library) + 1)]
    itself = NS(**{**vars(hits[0].metadata), **{k: getattr(query, k) for k in ("study_uid", "series_uid", "sop_instance_uid", "sop_class_uid")}})
    same_study = NS(**{**vars(hits[1].metadata), "study_uid": query.study_uid, "series_uid": "1.2.826.0.1.3680043.10.1432.77",
                       "sop_instance_uid": "1.2.826.0.1.3680043.10.1432.78"})
    hits += [NS(rank=len(hits) + 1, case_id="itself", score=1.5, metadata=itself), NS(rank=len(hits) + 2, case_id="same-study", score=1.0, metadata=same_study)]
    kwargs = dict(evidence_summary=_summary(hits[: len(library)]), explanations={1: "pigment network", 3: "streaks"}, notices=["a notice"], score_range=SCORE_RANGE,
                  series_uid="1.2.826.0.1.3680043.10.1432.1", sop_instance_uid="1.2.826.0.1.3680043.10.1432.2")
    files = {}
    for plain in (False, True):
        sr = similar_cases_sr(query, hits, plain_highdicom=plain, **kwargs)
        files[plain] = tmp_path / f"plain-{plain}.dcm"
        sr.save_as(files[plain], enforce_file_format=True)
        if not plain:
            fast = sr
    fast_rows, plain_rows = _comparable(pydicom.dcmread(files[False]), pydicom.dcmread(files[True]))
    assert len(fast_rows) > 1000
    only_fast, only_plain = [r for r in fast_rows if r not in plain_rows], [r for r in plain_rows if r not in fast_rows]
    assert (only_fast, only_plain) == ([], []) and fast_rows == plain_rows
    ds = pydicom.dcmread(files[False])
    assert [s.StudyInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence] == [query.study_uid]
    assert len(ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence) == 2
    assert len(ds.PertinentOtherEvidenceSequence) == len(library)
    assert read_similar_cases_sr(files[False]) == read_similar_cases_sr(files[True])
    assert isinstance(fast.content, hd.sr.MeasurementReport) and fast.content[0].ContentSequence is fast.ContentSequence

    # what highdicom's tree search checked is still checked: an instance referenced but not in the evidence
    with pytest.raises(ValueError, match=library[0].sop_instance_uid):
        _assembled_comprehensive_sr(evidence=[query.dataset], content=fast.content, series_instance_uid="1.2.3", series_number=1,
                                    sop_instance_uid="1.2.3.4", instance_number=1)


def test_similar_cases_sr_without_hits_is_still_a_valid_tid1500(dicomized, tmp_path):
    query = read_dicom_folder(dicomized.out).queries[0]
    path = tmp_path / "empty.dcm"
    similar_cases_sr(query, [], score_range=SCORE_RANGE).save_as(path, enforce_file_format=True)
    assert_valid(path)
    report = read_similar_cases_sr(path)
    assert report.matches == [] and "no similar case was found" in report.notices and report.evidence_summary is None
    # the app's own words for it (why nothing was found) are said once, not followed by the generic sentence
    why = "no similar case was found: no library case with site trunk"
    similar_cases_sr(query, [], notices=[why], score_range=SCORE_RANGE).save_as(path, enforce_file_format=True)
    assert [n for n in read_similar_cases_sr(path).notices if "no similar case" in n] == [why]


def test_similarity_percent_is_a_whole_percent_and_never_minus_zero():
    """What the PDF prints: a score a hair below 0 is "0%", not "-0%" (a case the diagnosis prior brought up; the answer's
    notice says it is not similar), the best possible score 100%."""
    assert f"{similarity_percent(-0.006, (-1.0, 1.5)):.0f}%" == "0%"
    assert f"{similarity_percent(-0.27, (-1.0, 1.5)):.0f}%" == "-18%"
    assert similarity_percent(1.5, (-1.0, 1.5)) == 100.0
    # no default range: ±3 (Eq. 9 over three levels) printed 53% for the release network's 80% (its range is ±2)
    with pytest.raises(TypeError, match="score_range"):
        similarity_percent(1.6)


def test_similar_cases_sr_rejects_bad_hits(dicomized):
    from monai_cir.evidence import EvidenceSummary

    query = read_dicom_folder(dicomized.out).queries[0]
    meta = NS(diagnosis="nevus", study_uid=None, series_uid=None, sop_instance_uid=None, sop_class_uid=None, collection="", site="", confirmation="unknown")
    with pytest.raises(ValueError, match="rank"):
        similar_cases_sr(query, [NS(rank=0, case_id="a", score=0.5, metadata=meta)], score_range=SCORE_RANGE)
    with pytest.raises(ValueError, match="score"):
        similar_cases_sr(query, [NS(rank=1, case_id="a", score=float("nan"), metadata=meta)], score_range=SCORE_RANGE)
    with pytest.raises(ValueError, match="confirmation"):
        similar_cases_sr(query, [NS(rank=1, case_id="a", score=0.5, metadata=NS(**{**vars(meta), "confirmation": "biopsy?"}))], score_range=SCORE_RANGE)
    with pytest.raises(ValueError, match="confidence"):
        EvidenceSummary(3, {"nevus": 1.0}, "nevus", 1.5)
    with pytest.raises(ValueError, match="unknown evidence summary fields"):
        EvidenceSummary.coerce({"distribution": {"nevus": 1.0}, "prediction": "nevus", "confidence": 0.9, "k": 3})


def pdf_text(pdf: bytes) -> list[str]:
    """The text of each page of a reportlab PDF (page streams: Flate, binary).

    Each stream is read as exactly its dictionary's ``/Length`` bytes: compressed data may end in a byte
    that looks like whitespace, so stripping it (as this helper once did) lost a page now and then."""
    import re
    import zlib

    pages = []
    for match in re.finditer(rb"/Length (\d+)[^>]*>>\s*stream\r?\n", pdf):
        data = pdf[match.end(): match.end() + int(match.group(1))]
        try:
            content = zlib.decompress(data)
        except zlib.error:
            continue  # an image (DCT) stream
        if b" Tj" in content:
            pages.append(" ".join(m.decode("latin-1") for m in re.findall(rb"\((.*?)\) Tj", content)).replace("\\(", "(").replace("\\)", ")"))
    return pages


def test_pdf_report_says_what_is_true_in_a_clinicians_words(dicomized, tmp_path):
    from monai_cir.dicom.report_pdf import CONFIRMATION_WORDS
    from monai_cir.explain import Explanation, TokenWeight

    scan = read_dicom_folder(dicomized.out)
    query, library = scan.queries[0], scan.queries[1:]
    images = {q.case_id: q.image for q in library}
    hits = _hits(library) + [_no_uid_hit(len(library) + 1, confirmation="expert consensus", diagnosis="nevus")]
    assert {h.metadata.confirmation for h in hits} == set(CONFIRMATION_WORDS)  # every status is shown once at least
    summary = _summary(hits)
    heat = np.zeros(query.image.shape[:2])
    heat[10:20, 10:20] = 1.0
    explanation = Explanation(
        score=2.472, local_score=1.2, global_score=1.1, beta=0.6, text=query.text, levels=[NS(level="H", gate=0.3)], tokens=[TokenWeight("brown", 0.6)],
        query_heatmap=heat, target_heatmap=heat, query_image=query.image / 255.0, target_image=query.image / 255.0,
    )
    ds = similar_cases_pdf(query, hits, image_loader=lambda hit: images.get(hit.case_id), evidence_summary=summary,
                           explanations={1: explanation}, ordered_by_prior=False, score_range=SCORE_RANGE)
    path = tmp_path / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert_valid(path)
    assert coding_scheme_warnings(path) == []
    back = pydicom.dcmread(path)
    pdf = back.EncapsulatedDocument[: back.EncapsulatedDocumentLength]
    assert pdf.startswith(b"%PDF") and back.StudyInstanceUID == query.study_uid and back.PatientID == query.patient_id
    assert back.Modality == "DOC" and back.SOPInstanceUID.startswith(C.UID_ROOT)
    first, *explained = pdf_text(pdf)
    assert len(explained) == 1 and "Why these cases look similar to the query" in explained[0]
    assert "Similar cases from the case library" in first and "DECISION SUPPORT, NOT A DIAGNOSIS" in first
    assert C.software_version() in first and "Report of 20" in first
    assert query.text.split()[0] in first and "Evidence summary" in first and f"{summary.predicted}" in first
    biopsied = sum(h.metadata.confirmation == "histopathology" for h in hits)
    assert f"{len(hits)} similar cases, most similar first ({biopsied} of them biopsy-confirmed)" in first
    # every page names its patient and says where it stands, should it be printed or filed apart
    pages = pdf_text(pdf)
    assert all(f"page {i} of {len(pages)}" in text and f"Patient ID {query.patient_id}" in text for i, text in enumerate(pages, start=1))
    # "biopsy-confirmed" is said of the histopathology cases only (and once in the heading)
    assert first.count("biopsy-confirmed") == biopsied + 1
    for hit in hits:
        assert f"{similarity_percent(hit.score, SCORE_RANGE):.0f}%" in first
    for status, words in CONFIRMATION_WORDS.items():
        assert first.count(words) == sum(h.metadata.confirmation == status for h in hits), status
    for page in (first, *explained):
        assert "gate" not in page and "S=" not in page and "2.472" not in page and "cosine" not in page
    assert "brown" in explained[0]
    # the patient's sex and age when the study has them
    study = copy.deepcopy(query.dataset)
    study.PatientSex, study.PatientAge = "F", "063Y"
    from monai_cir.dicom.report_pdf import render_report_pdf

    page = pdf_text(render_report_pdf(query.image, query.text, hits[:1], study=study, score_range=SCORE_RANGE))[0]
    assert "sex female, age 63 years" in page
    # the patient by name and birth date too, in the header and the footer (found by the viewer review: a page printed or
    # filed apart named its patient by the ID alone)
    study.PatientName, study.PatientBirthDate = "Doe^Jane^Q^Dr", "19630214"
    page = pdf_text(render_report_pdf(query.image, query.text, hits[:1], study=study, score_range=SCORE_RANGE))[0]
    assert page.count("Patient Doe, Dr Jane Q") == 2 and page.count("born 1963-02-14") == 2, page
    # a long name, an ID and an accession: the footer keeps its disclaimer and the report's time (the diff review: cut at 150
    # characters, it lost both, and the header ran off the page)
    study.PatientName, study.AccessionNumber = "Schmidt-Hoffmann^Anna-Katharina^Maria-Theresia", "ACC-2026-000123456"
    page = pdf_text(render_report_pdf(query.image, query.text, hits[:1], study=study, score_range=SCORE_RANGE))[0]
    footer = page[page.rindex("decision support, not a diagnosis   |"):]
    assert "Patient Schmidt-Hoffmann" in footer and "page 1 of 1" in footer, footer
    # and which model and library answered, as the app names them (the SR's Algorithm Parameters)
    page = pdf_text(render_report_pdf(query.image, query.text, hits[:1], study=study, score_range=SCORE_RANGE,
                                      algorithm_parameters=["model 0123456789abcdef", "library fedcba9876543210"]))[0]
    assert "(model 0123456789abcdef, library fedcba9876543210)" in page
    # the differential case's row says it is shown for the differential (the notice says why)
    assert "differential" not in first
    marked = pdf_text(render_report_pdf(query.image, query.text, hits, differential_rank=2, notices=["rank 2 is the closest ..."], score_range=SCORE_RANGE))[0]
    assert marked.count("differential: see Notes") == 1
    # a case that scores above the one ranked before it (the prior, or the slot, put it there) says so in its row
    lifted = [hits[0], dataclasses.replace(hits[1], score=hits[0].score + 0.1)] if dataclasses.is_dataclass(hits[0]) else [
        hits[0], NS(**{**vars(hits[1]), "score": hits[0].score + 0.1})]
    rows = pdf_text(render_report_pdf(query.image, query.text, lifted, score_range=SCORE_RANGE))[0]
    assert rows.count("more similar than the case above: see Notes") == 1 and "more similar" not in first
    # the notices a prior-ordered answer can carry (text partly used, site, prior, slot, evidence disagreement), in their
    # real words, beside a long query text: every one reaches the page to its last word, and the cases' table with them
    from monai_cir.data.report import text_use_notice
    from monai_cir.differential import DifferentialSlot
    from monai_cir.prior_ranking import PRIOR_NOTICE
    from monai_cir.sites_condition import UNKNOWN_SITE_NOTICE

    last = ("the evidence summary (the 16 most similar cases) favours nevus (72%, uncalibrated), while the first case shown "
            "is a melanoma case (the order also weighs the diagnosis the image and findings point to): compare both")
    slot = DifferentialSlot(rank=4, margin=7.5204).notice("nevus", 9, "melanoma", 3.1, prior=True)
    notices = [text_use_notice(0.4, ["pigment_network", "streaks"]), UNKNOWN_SITE_NOTICE, PRIOR_NOTICE, slot, last]
    long_text = ("Dermoscopy: atypical pigment network; irregular streaks; irregular pigmentation; regression structures; irregular "
                 "dots and globules; blue-whitish veil present; no vascular structures. Palpable lesion of the upper back, "
                 "female patient, 63 years; the lesion changed in size and colour over the last six months.")
    page = " ".join(pdf_text(render_report_pdf(query.image, long_text, hits, differential_rank=4, notices=notices, ordered_by_prior=True, score_range=SCORE_RANGE))[0].split())
    notes = page[page.index("Notes:"):]
    for notice in notices:
        assert " ".join(notice.split()) in notes, notice
    # the prior ordered these cases: the header says so, not "most similar first"
    assert "..." not in notes and f"{len(hits)} similar cases, ordered by similarity and likely diagnosis" in page
    assert all(f"{similarity_percent(h.score, SCORE_RANGE):.0f}%" in page for h in hits)  # every case's row, below the notes
    # the heading follows how the caller says the cases were ordered, and claims no order when it is not said
    plain = " ".join(pdf_text(render_report_pdf(query.image, long_text, hits, ordered_by_prior=False, score_range=SCORE_RANGE))[0].split())
    assert f"{len(hits)} similar cases, most similar first" in plain and "likely diagnosis" not in plain
    unstated = " ".join(pdf_text(render_report_pdf(query.image, long_text, hits, notices=notices, score_range=SCORE_RANGE))[0].split())
    assert f"{len(hits)} similar cases (" in unstated and "most similar first" not in unstated


def test_pdf_explanations_share_one_page_with_a_colour_scale():
    """Five explained cases take one page after the cases' page: a row per case (its id, diagnosis, confirmation,
    similarity), what holds for every case said once (what red means, with the overlay's colour scale, and the
    query's words); a sixth case starts a second explanation page. Whether the query text changed the match is
    said per row only where the cases differ; a ready-made figure takes its row's place."""
    from monai_cir.dicom.report_pdf import CONFIRMATION_WORDS, render_report_pdf
    from monai_cir.explain import Explanation, TokenWeight

    rng = np.random.default_rng(0)
    image = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    heat = rng.random((96, 128))
    hits = [_no_uid_hit(rank, diagnosis=("melanoma", "nevus")[rank % 2], confirmation=CONFIRMATION_CYCLE[rank % 4]) for rank in range(1, 7)]
    for hit in hits:
        hit.case_id, hit.score = f"library-case-{hit.rank}", 2.9 - 0.1 * hit.rank

    def explanation(gate: float = 0.3) -> Explanation:
        return Explanation(
            score=2.0, local_score=1.0, global_score=1.0, beta=0.6, text="brown network", levels=[NS(level="H", gate=gate)],
            tokens=[TokenWeight("brown", 0.6), TokenWeight("network", 0.4)], query_heatmap=heat, target_heatmap=heat,
            query_image=image / 255.0, target_image=image / 255.0,
        )

    pages = pdf_text(render_report_pdf(image, "brown network", hits, explanations={h.rank: explanation() for h in hits[:5]}, score_range=SCORE_RANGE))
    assert len(pages) == 2 and all(f"page {i} of 2" in text for i, text in enumerate(pages, start=1))
    page = " ".join(pages[1].split())
    assert "Why these cases look similar to the query" in page and "DECISION SUPPORT, NOT A DIAGNOSIS" in page
    assert all(f"library-case-{rank}" in page for rank in range(1, 6)) and "library-case-6" not in page
    for hit in hits[:5]:
        assert f"similarity {similarity_percent(hit.score, SCORE_RANGE):.0f}% of the best possible" in page
        assert CONFIRMATION_WORDS[hit.metadata.confirmation] in page
    assert "weaker" in page and "stronger contribution to the similarity" in page and "Relative within each image" in page
    assert page.count("Red areas raised the similarity the most") == 1
    assert page.count("Words of the query text the model attended to most (the same for every case): brown, network.") == 1

    # six cases: a second explanation page; case 2's text did not count (said in its row, and so in every row), case 4
    # is a ready-made figure
    explanations = {h.rank: explanation(0.0 if h.rank == 2 else 0.3) for h in hits}
    explanations[4] = np.full((60, 200, 3), 200, np.uint8)
    pages = [" ".join(text.split()) for text in pdf_text(render_report_pdf(image, "brown network", hits, explanations=explanations, score_range=SCORE_RANGE))]
    assert len(pages) == 3 and "page 3 of 3" in pages[2] and "library-case-6" in pages[2]
    assert all(f"library-case-{rank}" in pages[1] for rank in range(1, 6))
    assert pages[1].count("The query text did not change this match: the image alone made it similar.") == 1
    assert pages[1].count("Words of the query text the model attended to most: brown, network.") == 3  # cases 1, 3, 5
    assert all(text.count("Red areas raised the similarity the most") == 1 and "the same for every case" not in text for text in pages[1:])


def test_each_explanation_row_says_how_much_of_its_score_the_red_areas_carry():
    """Found by review: the explanation page, titled "Why these cases look similar", drew red maps that carry 13-25% of
    the release model's score without a word on the rest (the images' likeness as a whole, the projection residual)."""
    from monai_cir.dicom.report_pdf import render_report_pdf, score_shares
    from monai_cir.explain import Explanation, LevelExplanation

    rng = np.random.default_rng(0)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    heat = rng.random((64, 64))
    zeros = np.zeros((2, 4, 4))
    level = LevelExplanation(level="H", query_masks=zeros, target_masks=zeros, query_regions=np.array([0.2, 0.1]), target_regions=np.array([0.25, 0.05]),
                             query_positions=zeros[0], target_positions=zeros[0], query_residual=0.1, target_residual=0.1,
                             local_cosine=0.4, global_cosine=0.5, gate=0.3, token_attention=np.zeros(1))
    # beta 0.6, late-fusion share 0.5: regions 0.5 * 0.6 * 0.3 = 0.09, whole 0.5 * 0.4 * 0.5 + 0.5 * 0.6 = 0.4, residual 0.03
    explanation = Explanation(score=0.52, local_score=0.4, global_score=0.5, beta=0.6, text="", levels=[level], tokens=[],
                              query_heatmap=heat, target_heatmap=heat, query_image=image / 255.0, target_image=image / 255.0,
                              late_fusion_share=0.5, late_fusion_cosine=0.6)
    regions, whole = score_shares(explanation)
    assert regions == pytest.approx(0.09 / 0.52) and whole == pytest.approx(0.4 / 0.52)
    hit = _no_uid_hit(1)
    hit.score = 0.52
    page = " ".join(pdf_text(render_report_pdf(image, "", [hit], explanations={1: explanation}, score_range=SCORE_RANGE))[1].split())
    assert "red areas: 17% of this score; the images' likeness as a whole: 77%" in page


# ------------------------------------------------------------------------------------------------
# confirmation status: collections, dicomize -> reader -> index
# ------------------------------------------------------------------------------------------------
def test_confirmation_of_the_real_collections(shared_data):
    from monai_cir.data.collections import load_derm7pt, load_isic_uda1

    isic = load_isic_uda1(shared_data, check_images=False)
    by = {(r.diagnosis, r.confirmation) for r in isic}
    # ISIC UDA-1: every melanoma is histopathology-confirmed; no nevus has a confirmation type
    assert by == {("melanoma", "histopathology"), ("nevus", "unknown")}
    assert sum(r.confirmation == "histopathology" for r in isic) == 159
    derm = load_derm7pt(shared_data, check_images=False)
    management = {r.metadata["management"]: r.confirmation for r in derm}
    assert management == {"excision": "histopathology", "clinical follow up": "follow-up", "no further examination": "expert consensus"}
    counts = {c: sum(r.confirmation == c for r in derm) for c in ("histopathology", "follow-up", "expert consensus")}
    assert counts == {"histopathology": 544, "follow-up": 284, "expert consensus": 60}  # docs/dicom.md quotes these
    assert all(r.confirmation == "histopathology" for r in derm if r.diagnosis == "melanoma")


def test_confirmation_from_a_users_csv(tmp_path):
    from monai_cir.data.collections import load_image_csv

    Image.fromarray(synthetic_image()).save(tmp_path / "a.png")
    Image.fromarray(synthetic_image(seed=1)).save(tmp_path / "b.png")
    csv = tmp_path / "cases.csv"
    csv.write_text("image,diagnosis,confirmation\na.png,melanoma,Histopathology\nb.png,nevus,\n")
    assert [r.confirmation for r in load_image_csv(tmp_path, csv)] == ["histopathology", "unknown"]
    csv.write_text("image,diagnosis,confirmation\na.png,melanoma,probably\n")
    with pytest.raises(ValueError, match=r"row 2 .*unknown diagnosis confirmation 'probably'"):
        load_image_csv(tmp_path, csv)


def test_confirmation_travels_from_dicomize_to_the_index(tmp_path, monkeypatch, capsys):
    """dicomize writes it into the case SR, the reader returns it, `index build --dicom` stores it,
    and `--confirmed-only` keeps only the histopathology-confirmed cases."""
    import monai_cir.networks
    from monai_cir.cli import main
    from monai_cir.index import load_index

    from conftest import make_tiny_net

    records = []
    for i, confirmation in enumerate(("histopathology", "follow-up", "unknown", "histopathology", "expert consensus")):
        png = tmp_path / "src" / f"c{i}.png"
        png.parent.mkdir(exist_ok=True)
        Image.fromarray(synthetic_image(seed=i)).save(png)
        records.append(NS(case_id=f"c{i}", image_path=png, diagnosis=("melanoma", "nevus")[i % 2], text="", site="trunk",
                          collection="synthetic", metadata={}, confirmation=confirmation))
    done, failed = dicomize_records(records, tmp_path / "dicom", progress=False)
    assert not failed
    for case in done:
        assert_valid(case.sr_file)
    scan = read_dicom_folder(tmp_path / "dicom")
    assert {q.case_id: q.confirmation for q in scan.queries} == {r.case_id: r.confirmation for r in records}
    assert all("histopathology" not in q.text and "follow" not in q.text for q in scan.queries)  # never part of the query text

    net = make_tiny_net()
    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: net)
    (tmp_path / "dicom" / "broken.dcm").write_bytes(b"DICM" * 40)  # reported and skipped: the summary line counts it
    capsys.readouterr()
    assert main(["index", "build", "--dicom", str(tmp_path / "dicom"), "--out", str(tmp_path / "all")]) == 0
    assert "indexed 5 cases" in (out := capsys.readouterr().out) and "; 1 DICOM input(s) skipped, not indexed" in out and "broken.dcm" in out, out
    index = load_index(tmp_path / "all")
    assert {c: index.get(c).confirmation for c in index.case_ids()} == {r.case_id: r.confirmation for r in records}
    assert main(["index", "build", "--dicom", str(tmp_path / "dicom"), "--out", str(tmp_path / "biopsied"), "--confirmed-only"]) == 0
    assert sorted(load_index(tmp_path / "biopsied").case_ids()) == ["c0", "c3"]
    capsys.readouterr()


def test_results_json_record_says_how_each_case_was_confirmed(tmp_path):
    from deploy_app.operators.common import QueryResult
    from deploy_app.operators.results_writer import result_record
    from monai_cir.evidence import summarize_evidence
    from monai_cir.index import CaseMetadata, SearchHit

    hits = [
        SearchHit(1, "a", 2.0, CaseMetadata("a", "melanoma", "isic-uda1", confirmation="histopathology")),
        SearchHit(2, "b", 1.5, CaseMetadata("b", "nevus", "isic-uda1")),
    ]
    query = NS(patient_id="p", patient_name="", study_uid="1.2", series_uid="1.3", sop_instance_uid="1.4", text="", site="trunk", dataset=None)
    record = result_record(QueryResult("q", query, hits=hits, evidence=summarize_evidence(hits)), tmp_path)
    assert [(h["case_id"], h["confirmation"]) for h in record["top_k"]] == [("a", "histopathology"), ("b", "unknown")]
    assert record["evidence"]["predicted"] == "melanoma" and record["evidence"]["k"] == 2


def test_a_dicom_library_from_a_relative_folder_stores_absolute_paths(tmp_path, monkeypatch):
    """The app and ``search --explain`` read a library case's image from wherever they run."""
    from monai_cir.retrieval import dicom_library

    make_case(tmp_path / "library", "case")
    monkeypatch.chdir(tmp_path)
    _, metadata = dicom_library("library")
    assert len(metadata) == 1 and Path(metadata[0].image_path).is_absolute()
    monkeypatch.chdir("/")
    assert Path(metadata[0].image_path).is_file()


def test_a_report_sent_twice_is_read_once_and_two_reports_are_joined(tmp_path):
    """Two SRs referencing one image with the same text (a report sent again as a new instance) give that text once;
    two with different texts are joined; the notice says which."""
    folder = make_case(tmp_path, "twice", text="irregular streaks; blue-whitish veil")
    sr = pydicom.dcmread(folder / "sr.dcm")
    sr.SOPInstanceUID = generate_uid()
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.save_as(folder / "sr-again.dcm", enforce_file_format=True)
    query = read_dicom_folder(folder).queries[0]
    assert query.text == "irregular streaks; blue-whitish veil", query.text
    assert "2 SRs reference this image, with the same text: it is used once" in query.notices
    other = make_case(tmp_path / "other", "twice", text="raised, on the back").parent / "twice" / "sr.dcm"
    amended = pydicom.dcmread(other)
    amended.SOPInstanceUID = generate_uid()
    amended.file_meta.MediaStorageSOPInstanceUID = amended.SOPInstanceUID
    amended.save_as(folder / "sr-again.dcm", enforce_file_format=True)
    query = read_dicom_folder(folder).queries[0]
    assert query.text.split("\n") == sorted(["irregular streaks; blue-whitish veil", "raised, on the back"], key=query.text.index)
    assert "2 SRs reference this image: their texts are joined" in query.notices


def test_two_reports_of_which_one_is_empty_say_so(tmp_path):
    """Two SRs referencing one image, one without text: its text is used, and the notice does not call them the same."""
    folder = make_case(tmp_path, "one-empty", text="irregular streaks")
    sr = pydicom.dcmread(make_case(tmp_path / "other", "one-empty", text="").parent / "one-empty" / "sr.dcm")
    sr.SOPInstanceUID = generate_uid()
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.save_as(folder / "sr-empty.dcm", enforce_file_format=True)
    query = read_dicom_folder(folder).queries[0]
    assert query.text == "irregular streaks"
    assert "2 SRs reference this image; only one holds text: it is used" in query.notices, query.notices


def test_answers_to_several_images_of_a_study_are_told_apart_and_valid(tmp_path, dicomized):
    """Found by review: the answers to two images of one study were labelled alike (the same series description, no
    image named in the PDF), every patient's SR tracked a library case under one UID, a multi-valued accession printed
    as a Python list, a long Study Description or a multi-valued Referring Physician's Name (which only describe the
    study) made both answers invalid, and the answers' local times carried no offset within a study that has one."""
    from monai_cir.dicom.report_pdf import encapsulated_pdf_dataset

    study = {"StudyDescription": "Dermoscopy of the back, follow-up " + "x" * 70,
             "ReferringPhysicianName": ["Doe^John", "Roe^Richard"], "TimezoneOffsetFromUTC": "+0900"}
    case = make_case(tmp_path, "two")
    first = _variant(case / "image.dcm", case, **study)
    _variant(first, case, name="second.dcm", SOPInstanceUID=generate_uid(), InstanceNumber=2)
    scan = read_dicom_folder(tmp_path)
    queries = sorted(scan.queries, key=lambda q: int(q.dataset.InstanceNumber))
    assert len(queries) == 2
    notices = queries[0].notices
    assert any(n.startswith("Study Description is longer than DICOM allows") for n in notices)
    assert any(n.startswith("Referring Physician's Name has 2 values where one is allowed: the answer carries the first, 'Doe^John'") for n in notices)
    hits = _hits(read_dicom_folder(dicomized.out).queries[1:3])
    srs, pdfs = [], []
    for i, query in enumerate(queries):
        sr = similar_cases_sr(query, hits, score_range=SCORE_RANGE)
        sr.save_as(tmp_path / f"sr{i}.dcm", enforce_file_format=True)
        similar_cases_pdf(query, hits, score_range=SCORE_RANGE).save_as(tmp_path / f"pdf{i}.dcm", enforce_file_format=True)
        srs.append(pydicom.dcmread(tmp_path / f"sr{i}.dcm"))
        pdfs.append(pydicom.dcmread(tmp_path / f"pdf{i}.dcm"))
        for kind in ("sr", "pdf"):
            assert_valid(tmp_path / f"{kind}{i}.dcm")
    # each answer named with its time (found by the viewer review: OHIF's study browser shows the description, not the
    # series date, so two answers to one image looked the same there)
    from monai_cir.dicom.sr import answer_time

    when = [answer_time(ds) for ds in srs + pdfs]
    assert all(len(w) == 12 and w[2] == " " and w[-3] == ":" for w in when), when
    for ds, w in zip(srs + pdfs, when):  # the series' own date and time, "08 Dec 14:05"
        assert w[:2] == ds.SeriesDate[6:8] and w[-5:] == f"{ds.SeriesTime[:2]}:{ds.SeriesTime[2:4]}"
    assert [ds.SeriesDescription for ds in srs] == [f"Similar cases {when[0]}, series 1 image 1 (decision support)",
                                                    f"Similar cases {when[1]}, series 1 image 2 (decision support)"]
    assert [ds.SeriesDescription for ds in pdfs] == [f"Similar cases report {when[2]}, series 1 image 1", f"Similar cases report {when[3]}, series 1 image 2"]
    assert pdfs[1].DocumentTitle == f"Similar cases report {when[3]}, series 1 image 2 (decision support)"
    assert all(len(ds.SeriesDescription) <= 64 for ds in srs + pdfs)
    long_label = copy.deepcopy(queries[0].dataset)  # a long image label is cut, never the "(decision support)" (the diff review)
    long_label.SeriesNumber, long_label.InstanceNumber = 1001, 12345
    described = similar_cases_sr(long_label, hits, score_range=SCORE_RANGE).SeriesDescription
    assert len(described) <= 64 and described.endswith(" (decision support)") and "series 1001" in described, described
    stamped = pydicom.Dataset()
    stamped.SeriesDate, stamped.SeriesTime = "20261208", "140559.123"
    assert answer_time(stamped) == "08 Dec 14:05" and answer_time(pydicom.Dataset()) == ""
    assert encapsulated_pdf_dataset(b"%PDF-1.4\n", queries[0].dataset, frame_number=3).SeriesDescription.endswith("image 1 frame 3")
    for i, ds in enumerate(pdfs):
        pages = pdf_text(ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength])
        assert all(f"query series 1 image {i + 1}" in page for page in pages)
    # a multi-valued accession (invalid, copied as received: an identifier) printed as DICOM writes it
    from monai_cir.dicom.report_pdf import render_report_pdf

    accessions = copy.deepcopy(queries[0].dataset)
    accessions.AccessionNumber = ["ACC1", "ACC2"]
    page = pdf_text(render_report_pdf(queries[0].image, "", hits, study=accessions, score_range=SCORE_RANGE))[0].replace("\\\\", "\\")  # PDF's escape
    assert "accession ACC1\\ACC2" in page and "['ACC1'" not in page
    # one tracked finding per query image and case: the same library case found for two images is two findings
    tracking = [{str(item.UID) for item in _items(ds) if item.get("ValueType") == "UIDREF" and item.ConceptNameCodeSequence[0].CodeValue == "112040"}
                for ds in srs]  # 112040: Tracking Unique Identifier
    assert len(tracking[0]) == len(hits) and not tracking[0] & tracking[1]
    for ds in (*srs, *pdfs):
        assert ds.StudyDescription.startswith("Dermoscopy of the back") and len(ds.StudyDescription.encode()) <= 64
        assert str(ds.ReferringPhysicianName) == "Doe^John"
        assert ds.TimezoneOffsetFromUTC and ds.SeriesDate == ds.ContentDate and ds.SeriesTime == ds.ContentTime


def test_dicomize_never_writes_one_case_over_another_with_the_same_id(tmp_path):
    """Found by review: UIDs and folder come from (collection, case id) alone, so January's IMG_0001 of cases.csv was
    replaced by February's IMG_0001 of another cases.csv without a word ("1 studies written" both times), and the
    PACS-known UIDs then named other pixels. Another image under the same id is refused; the same one is rewritten."""
    from monai_cir.dicom.dicomize import dicomize_records

    january, february = tmp_path / "jan.png", tmp_path / "feb.png"
    Image.fromarray(synthetic_image(seed=1)).save(january)
    Image.fromarray(synthetic_image(seed=2)[::-1].copy()).save(february)

    def record(path, diagnosis):
        return NS(case_id="IMG_0001", image_path=path, diagnosis=diagnosis, text="", site="trunk", collection="cases", metadata={})

    done, failed = dicomize_records([record(january, "nevus")], tmp_path / "out", progress=False)
    kept = done[0].image_file.read_bytes()
    done, failed = dicomize_records([record(february, "melanoma")], tmp_path / "out", progress=False)
    assert not done and len(failed) == 1 and "already holds case 'IMG_0001' of collection 'cases' with another image" in failed[0][1]
    assert len(list((tmp_path / "out").glob("*/image.dcm"))) == 1
    assert next((tmp_path / "out").glob("*/image.dcm")).read_bytes() == kept
    done, failed = dicomize_records([record(january, "nevus")], tmp_path / "out", progress=False)  # the same case again: fine
    assert len(done) == 1 and not failed
    done, failed = dicomize_records([record(january, "nevus")], tmp_path / "out", compression="none", progress=False)  # re-encoded
    assert len(done) == 1 and not failed


def test_dicomize_says_a_jpeg_source_was_lossy_whatever_its_file_name(tmp_path):
    """Found by review: the lossy flag was decided by the file name (.jpg / .jpeg): a JPEG named .jfif or without an
    extension, written uncompressed, claimed Lossy Image Compression 00 (never lossy-compressed)."""
    source = Image.fromarray(synthetic_image(seed=4))
    names = {"lesion.jfif": "JPEG", "lesion": "JPEG", "progressive.jpg": "JPEG", "lesion.png": "PNG"}
    for name, fmt in names.items():
        source.save(tmp_path / name, format=fmt, **({"progressive": True} if name.startswith("progressive") else {}))
        ds = dermoscopy_image_dataset(tmp_path / name, uids=case_uids("synthetic", name), compression="none")
        assert ds.LossyImageCompression == ("00" if fmt == "PNG" else "01"), name
        if fmt == "JPEG":
            assert ds.LossyImageCompressionMethod == "ISO_10918_1"
            assert float(ds.LossyImageCompressionRatio) > 2  # the source's own ratio, not "1"


def test_dicomize_says_a_lossy_webp_or_jpeg_tiff_source_was_lossy(tmp_path):
    """Found by review: only a JPEG source set Lossy Image Compression 01; a lossy WebP (a phone's or a web export) or a
    TIFF holding JPEG strips, stored uncompressed, claimed 00 (never lossy-compressed). A lossless WebP or TIFF stays 00."""
    source = Image.fromarray(synthetic_image(seed=5))
    cases = {
        "lossy.webp": ({"format": "WEBP", "quality": 80}, "01", None),
        "lossless.webp": ({"format": "WEBP", "lossless": True}, "00", None),
        "jpeg.tif": ({"format": "TIFF", "compression": "jpeg"}, "01", "ISO_10918_1"),
        "lzw.tif": ({"format": "TIFF", "compression": "tiff_lzw"}, "00", None),
    }
    for name, (options, flag, method) in cases.items():
        source.save(tmp_path / name, **options)
        ds = dermoscopy_image_dataset(tmp_path / name, uids=case_uids("synthetic", name), compression="jpeg")
        assert ds.LossyImageCompression == flag, name
        assert ds.get("LossyImageCompressionMethod") == method, name


def test_dicomize_writes_whole_files_and_writes_over_a_cut_off_one(tmp_path, monkeypatch):
    """Found by review: a demo killed while dicomizing left cut-off image.dcm / report.dcm (written in place), and every
    later run, --rebuild included, was refused as "another image". Files are written whole (temporary name, rename),
    and an existing file that cannot be read is no other case's image: it is written over."""
    import pydicom as pd

    from monai_cir.dicom.dicomize import dicomize_records

    source = tmp_path / "lesion.png"
    Image.fromarray(synthetic_image(seed=7)).save(source)
    record = NS(case_id="IMG_0007", image_path=source, diagnosis="nevus", text="", site="trunk", collection="cases", metadata={})
    (done,), _ = dicomize_records([record], tmp_path / "out", progress=False)
    whole = done.image_file.read_bytes()
    done.image_file.write_bytes(whole[: len(whole) // 3])  # what a kill in an earlier version left
    done.sr_file.write_bytes(b"")
    (again,), failed = dicomize_records([record], tmp_path / "out", progress=False)
    assert not failed and again.image_file.read_bytes() == whole and pd.dcmread(again.sr_file).SOPInstanceUID
    # a write that fails midway leaves the file there as it was, and no temporary file
    monkeypatch.setattr(pd.dataset.Dataset, "save_as", lambda self, path, **kw: (open(path, "wb").write(b"DICM-cut"), (_ for _ in ()).throw(OSError("disk full")))[1])
    _, failed = dicomize_records([record], tmp_path / "out", progress=False)
    assert failed and again.image_file.read_bytes() == whole
    assert [p.name for p in again.image_file.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("meaning, code, csv_value", [
    ("Seborrheic keratosis", ("SCT", "254669009"), "Seborrheic keratosis"),
    ("Melanoma in situ", ("SCT", "109878004"), "melanoma in situ"),
    ("BKL", ("99LOCAL", "BKL"), "bkl"),
    ("Dermatofibroma", ("99LOCAL", "DF"), "dermatofibroma"),
])
def test_a_coded_diagnosis_is_named_as_a_csv_library_names_it(meaning, code, csv_value):
    """Found by the codebase review: a library read from DICOM named a diagnosis by its code meaning, lower-cased, where
    a CSV library normalises it (normalize_diagnosis): "Seborrheic keratosis" was ``benign keratosis`` from a CSV and
    ``seborrheic keratosis`` from an SR, two classes for the evidence vote and the diagnosis prior."""
    from monai_cir.data import normalize_diagnosis

    assert C.diagnosis_from_code(*code, meaning) == normalize_diagnosis(csv_value)
    # the project's own codes still read back as their names
    for name in ("melanoma", "nevus", "benign keratosis", "dermatofibroma"):
        coded = C.diagnosis_code(name)
        assert C.diagnosis_from_code(coded.scheme_designator, coded.value, coded.meaning) == name


def _sr_item(relationship: str, value_type: str, name, value=None, children=()) -> Dataset:
    from pydicom.sequence import Sequence

    item = Dataset()
    item.RelationshipType, item.ValueType = relationship, value_type
    item.ConceptNameCodeSequence = Sequence([_code_item(*name)])
    if value_type == "CODE":
        item.ConceptCodeSequence = Sequence([_code_item(*value)])
    elif value_type == "TEXT":
        item.TextValue = value
    if children:
        item.ContentSequence = Sequence(list(children))
    return item


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


@pytest.mark.parametrize(("relationship", "modifier", "text", "findings"), [
    ("HAS CONCEPT MOD", (("P", "99X", "Presence"), ("2667000", "SCT", "Absent")), "Blue-whitish veil: Absent", (("blue_whitish_veil", "absent"),)),
    ("HAS PROPERTIES", (("P", "99X", "Presence"), ("2667000", "SCT", "Absent")), "Blue-whitish veil: Absent", (("blue_whitish_veil", "absent"),)),
    ("HAS CONCEPT MOD", (("C", "99X", "Certainty"), ("P", "99X", "Possible")), "Blue-whitish veil (Certainty: Possible)", ()),
    ("HAS CONCEPT MOD", (("272741003", "SCT", "Laterality"), ("7771000", "SCT", "Left")), "Blue-whitish veil (Laterality: Left)",
     (("blue_whitish_veil", "present"),)),
])
def test_a_coded_findings_modifier_is_read_with_it(relationship, modifier, text, findings):
    """Found by the reader review: a coded finding "Blue-whitish veil" with a concept modifier "Presence = Absent" gave the
    text "Blue-whitish veil" (the modifier dropped) and, as a property, "Blue-whitish veil" and "Presence: Absent" on lines
    of their own: the veil read PRESENT either way. A presence value is the item's value; any other modifier rides along
    in brackets on its line, where a doubt leaves the finding unread."""
    from pydicom.sequence import Sequence

    from monai_cir.data.report import read_findings
    from monai_cir.dicom.reader import read_sr_text

    ds = Dataset()
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SOPClassUID = "1.2.3", "1.2", "1.2.840.10008.5.1.4.1.1.88.33"
    (mod_name, mod_value) = modifier
    finding = _sr_item("CONTAINS", "CODE", ("121071", "DCM", "Finding"), ("0001", "99X", "Blue-whitish veil"),
                       [_sr_item(relationship, "CODE", mod_name, mod_value)])
    ds.ContentSequence = Sequence([finding, _sr_item("CONTAINS", "TEXT", ("121071", "DCM", "Finding"), "irregular streaks")])
    info = read_sr_text(ds)
    assert info.texts == [text, "irregular streaks"]
    assert set(read_findings("\n".join(info.texts))) == {("streaks", "irregular"), *findings}


def test_the_pdf_carries_the_patient_and_study_identifiers_its_sr_carries(tmp_path):
    """Found by the viewer review: the Encapsulated PDF left out the issuer of the patient ID, the other patient IDs, the
    accession number's issuer and the patient's age, which its sibling SR carries (highdicom copies the modules), so a
    PACS that matches patients by ID and issuer could file the PDF apart from the SR. Values in a sequence, in the study's
    Latin-1, must arrive decoded in both UTF-8 answers (the SR, copied by highdicom as read, had "Rh\ufffdne")."""
    from monai_cir.dicom.report_pdf import encapsulated_pdf_dataset

    ds = dermoscopy_image_dataset(pixels=synthetic_image(), uids=case_uids("synthetic", "identifiers"))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.IssuerOfPatientID, ds.PatientAge = "Müller^Jürgen", "Hôpital-A", "064Y"
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID = "X9", "Clinique Rhône", "TEXT"
    ds.OtherPatientIDsSequence = [other]
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "Hôpital"
    ds.IssuerOfAccessionNumberSequence = [issuer]
    ds.save_as(tmp_path / "study.dcm", enforce_file_format=True)
    study = pydicom.dcmread(tmp_path / "study.dcm")
    encapsulated_pdf_dataset(b"%PDF-1.4 test", study).save_as(tmp_path / "pdf.dcm", enforce_file_format=True)
    similar_cases_sr(study, [], score_range=SCORE_RANGE).save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    pdf, sr = pydicom.dcmread(tmp_path / "pdf.dcm"), pydicom.dcmread(tmp_path / "sr.dcm")
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientAge", "AccessionNumber", "StudyInstanceUID"):
        assert pdf.get(keyword) == sr.get(keyword), keyword
    assert pdf.OtherPatientIDsSequence[0].IssuerOfPatientID == sr.OtherPatientIDsSequence[0].IssuerOfPatientID == "Clinique Rhône"
    assert pdf.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID == "Hôpital"
    assert str(pdf.PatientName) == "Müller^Jürgen" and pdf.IssuerOfPatientID == "Hôpital-A"
