"""The MONAI Deploy app: its input checks on synthetic DICOM, then the app end to end.

Unit tests (synthetic DICOM made here, no network): what the app refuses, notices and links
(truncated files and JPEG streams, blank frames, greyscale images, SR text by reference), and that
feature caches refuse a file crafted to run code.

Integration (real offline weights, real ISIC images): one app run as a subprocess (the SDK import
costs seconds) answers every case of this module:

- ``in_library``: an ISIC case whose own image is in the library -> that case at rank 1, said so;
- ``held_out``: an ISIC case not in the library (the demo's situation);
- ``corrupt``: a study whose image has a corrupt JPEG stream -> reported and skipped;
- ``junk.txt``: not DICOM -> reported and skipped;

and, when Orthanc is installed, publishes the results to it by C-STORE and STOW-RS; the test
reads them back over DICOMweb (QIDO-RS + WADO-RS). Then the app in this process on the models
layout ``monai-deploy package`` writes (``models/models/model.pt`` + ``models/index``), with the
models loaded once across runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.orthanc import OrthancServer, orthanc_available
from conftest import SCORE_RANGE

REPO = Path(__file__).resolve().parents[1]
LIBRARY_SIZE = 12


# ------------------------------------------------------------------------------------------------
# input checks on synthetic DICOM
# ------------------------------------------------------------------------------------------------
def _lesion(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    """A smooth colour image with texture: not blank, not greyscale."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx * 1.2, yy * 1.5, (xx + yy) * 0.7], -1) % 256
    return np.clip(image + rng.integers(-15, 15, image.shape), 0, 255).astype(np.uint8)


def _image(folder: Path, name: str, pixels: np.ndarray | None = None, jpeg: bool = False, case: str | None = None) -> pydicom.Dataset:
    """A Dermoscopic Photography instance of the synthetic case ``case`` (default ``name``), saved as ``folder/name.dcm``."""
    from PIL import Image

    from monai_cir.dicom.dicomize import case_uids, dermoscopy_image_dataset

    pixels = _lesion() if pixels is None else pixels
    uids = case_uids("synthetic", case or name)
    if jpeg:
        source = folder / f"{name}.jpg"
        Image.fromarray(pixels).save(source, quality=90)
        ds = dermoscopy_image_dataset(source, uids=uids, compression="jpeg")
        source.unlink()
    else:
        ds = dermoscopy_image_dataset(pixels=pixels, uids=uids, compression="none")
    if case is not None:  # another image of the same study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / f"{name}.dcm", enforce_file_format=True)
    return ds


def _report(folder: Path, name: str, image: pydicom.Dataset, text: str) -> None:
    """An SR with ``text`` that references ``image`` (evidence + IMAGE item), as dicomize writes it."""
    from monai_cir.dicom.dicomize import case_report_sr

    case_report_sr(image, text).save_as(folder / f"{name}.dcm", enforce_file_format=True)


def _scan(folder: Path):
    from monai_cir.dicom.reader import read_dicom_folder

    scan = read_dicom_folder(folder)
    return scan, {Path(p.path).stem: p.message for p in scan.problems}


def test_truncated_jpeg_stream_is_reported_not_answered(tmp_path):
    from pydicom.encaps import encapsulate, generate_frames

    good = _image(tmp_path, "good", jpeg=True)
    bad = _image(tmp_path, "cut_stream", jpeg=True, case="cut_stream")
    frame = next(generate_frames(bad.PixelData, number_of_frames=1))
    bad.PixelData = encapsulate([frame[: len(frame) // 2]])  # the decoder would pad the rest grey
    bad.save_as(tmp_path / "cut_stream.dcm", enforce_file_format=True)
    assert np.asarray(pydicom.dcmread(tmp_path / "cut_stream.dcm").pixel_array).shape == (120, 160, 3)  # decodes silently

    scan, problems = _scan(tmp_path)
    assert [q.sop_instance_uid for q in scan.queries] == [good.SOPInstanceUID]
    assert "truncated JPEG stream" in problems["cut_stream"] and "not answered" in problems["cut_stream"]


def test_truncated_file_says_truncated(tmp_path):
    _image(tmp_path, "whole", jpeg=True)
    data = (tmp_path / "whole.dcm").read_bytes()
    for cut in (200, 700, len(data) // 2, len(data) - 3):  # in the file meta, the header, the pixel data
        (tmp_path / f"cut{cut}.dcm").write_bytes(data[:cut])
    (tmp_path / "zero_padded.dcm").write_bytes(data + bytes(6))  # trailing padding is not a cut
    scan, problems = _scan(tmp_path)
    # the padded copy is read as complete: the same instance as "whole", so answered once with it
    assert [Path(q.source_path).stem for q in scan.queries] == ["whole"] and len(problems) == 4
    assert "the same instance was received 2 times: answered once" in scan.queries[0].notices
    for name, message in problems.items():
        assert message.startswith("truncated DICOM file"), (name, message)
        assert "SOP Class UID" not in message and "pixel data (7FE0" not in message


def test_blank_frames_are_reported_not_answered(tmp_path):
    rng = np.random.default_rng(1)
    _image(tmp_path, "lesion")
    _image(tmp_path, "constant", pixels=np.full((120, 160, 3), 187, np.uint8))
    nearly = np.clip(np.full((120, 160, 3), 90) + rng.integers(-1, 2, (120, 160, 3)), 0, 255).astype(np.uint8)
    nearly[5, 5] = 255  # a hot pixel does not make it an image
    _image(tmp_path, "nearly_constant", pixels=nearly)
    # a flat field of view inside the black frame a dermatoscope leaves: the network sees the field only (preprocess_image
    # crops the frame), so it is as blank as a library image the index leaves out for it (found by the codebase review:
    # the query was checked with its frame, answered, and the same image left out of a library as blank)
    framed = np.zeros((120, 160, 3), np.uint8)
    framed[20:100, 30:130] = 128
    _image(tmp_path, "framed_flat", pixels=framed)
    scan, problems = _scan(tmp_path)
    assert [Path(q.source_path).stem for q in scan.queries] == ["lesion"]
    assert set(problems) == {"constant", "nearly_constant", "framed_flat"}
    assert all("blank" in m and "not answered" in m for m in problems.values())


def test_greyscale_image_is_answered_with_a_notice(tmp_path):
    _image(tmp_path, "colour")
    grey = _lesion(seed=2)[..., :1].repeat(3, axis=-1)  # R = G = B
    _image(tmp_path, "grey_rgb", pixels=grey)
    mono = _image(tmp_path, "mono", pixels=grey, case="mono")
    mono.SamplesPerPixel, mono.PhotometricInterpretation = 1, "MONOCHROME2"
    del mono.PlanarConfiguration
    mono.PixelData = np.ascontiguousarray(grey[..., 0]).tobytes()
    mono.save_as(tmp_path / "mono.dcm", enforce_file_format=True)

    scan, problems = _scan(tmp_path)
    assert problems == {}
    notices = {Path(q.source_path).stem: q.notices for q in scan.queries}
    assert set(notices) == {"colour", "grey_rgb", "mono"}
    for name in ("grey_rgb", "mono"):
        assert any(n.startswith("greyscale image") for n in notices[name]), notices[name]
    assert not any("greyscale" in n for n in notices["colour"])


def test_sr_text_goes_to_the_image_it_references(tmp_path):
    first = _image(tmp_path, "one", case="study")
    second = _image(tmp_path, "two", case="study", pixels=_lesion(seed=3))
    third = _image(tmp_path, "three", case="study", pixels=_lesion(seed=4))
    assert first.StudyInstanceUID == second.StudyInstanceUID == third.StudyInstanceUID
    _report(tmp_path, "sr", second, "raised nodule, left forearm")

    scan, problems = _scan(tmp_path)
    assert problems == {}
    by_name = {Path(q.source_path).stem: q for q in scan.queries}
    assert by_name["two"].text == "raised nodule, left forearm" and by_name["two"].text_source == "sr"
    for name in ("one", "three"):
        assert by_name[name].text == "" and by_name[name].text_source == "none", name


def test_repaired_study_uid_keeps_its_sr_text(tmp_path):
    image = _image(tmp_path, "image")
    _report(tmp_path, "sr", image, "itchy pigmented macule")
    stripped = pydicom.dcmread(tmp_path / "image.dcm")
    del stripped.StudyInstanceUID
    stripped.save_as(tmp_path / "image.dcm", enforce_file_format=True)

    scan, problems = _scan(tmp_path)
    assert problems == {} and len(scan.queries) == 1
    query = scan.queries[0]
    assert query.text == "itchy pigmented macule" and query.text_source == "sr"
    assert query.study_uid == image.StudyInstanceUID  # the answer is filed in the SR's study
    assert any("missing Study Instance UID: taken from the SR" in n for n in query.notices)


def _evidence(*instances: pydicom.Dataset) -> list[pydicom.Dataset]:
    """A hierarchical SOP instance reference (study > series > instance) to each of ``instances``."""
    from pydicom.dataset import Dataset

    studies = []
    for instance in instances:
        sop = Dataset()
        sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = instance.SOPClassUID, instance.SOPInstanceUID
        series, study = Dataset(), Dataset()
        series.SeriesInstanceUID, series.ReferencedSOPSequence = instance.SeriesInstanceUID, [sop]
        study.StudyInstanceUID, study.ReferencedSeriesSequence = instance.StudyInstanceUID, [series]
        studies.append(study)
    return studies


@pytest.mark.parametrize("damage, said", [
    ("unknown_vr", "unreadable report SR: an element inside it is damaged (NotImplementedError: Unknown Value Representation 'ZZ'"),
    ("length_too_long", "its Text Value (0040,A160) holds bytes that are not text"),
    ("length_too_short", "without its Private Creator"),
    ("sequence_past_the_end", "truncated DICOM file"),
])
def test_a_damaged_report_sr_is_reported_and_its_image_answered_image_only(tmp_path, damage, said):
    """Damage inside an SR's content tree that pydicom reads without an error, or raises on only when the element is
    used: an unknown VR stopped the scan (the app lost the whole batch); a Text Value whose length runs past its item
    took in the binary of the elements after it ("irregular streaks\\x00\\xfe\\xff..." as the finding text), one cut
    short gave "irre" and the rest parsed as a private element; a nested sequence running past the end of the file was
    reported, but its image said "no SR in the study". Each is reported, the batch answered, and the image answered
    image-only, saying its report could not be read."""
    import struct

    good = _image(tmp_path, "good")
    _report(tmp_path, "good_sr", good, "atypical pigment network")
    bad = _image(tmp_path, "bad", pixels=_lesion(seed=2))
    _report(tmp_path, "bad_sr", bad, "irregular streaks and dots")
    raw = bytearray((tmp_path / "bad_sr.dcm").read_bytes())
    text = raw.find(struct.pack("<HH", 0x0040, 0xA160) + b"UT\x00\x00")  # a Text Value, nested in the content tree
    content = raw.find(struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00")  # the top Content Sequence
    assert text > content > 0
    if damage == "unknown_vr":
        raw[text + 4 : text + 6] = b"ZZ"
    else:
        at, length = {"length_too_long": (text, 0x7FFFFFF0), "length_too_short": (text, 4), "sequence_past_the_end": (content, 0x7FFFFFF0)}[damage]
        raw[at + 8 : at + 12] = struct.pack("<I", length)
    (tmp_path / "bad_sr.dcm").write_bytes(bytes(raw))

    scan, problems = _scan(tmp_path)
    assert set(problems) == {"bad_sr"} and said in problems["bad_sr"] and "re-send" in problems["bad_sr"], problems
    by_name = {Path(q.source_path).stem: q for q in scan.queries}
    assert by_name["good"].text == "atypical pigment network"
    assert by_name["bad"].text == "" and by_name["bad"].text_source == "none", by_name["bad"].text
    assert any("could not be read" in n and "image-only" in n for n in by_name["bad"].notices), by_name["bad"].notices
    assert not any("no SR in the study" in n for n in by_name["bad"].notices)


def test_report_text_with_the_characters_text_holds_is_read_as_written(tmp_path):
    """What the damage check refuses is what no text holds: tabs, line breaks and accents are text."""
    image = _image(tmp_path, "image")
    _report(tmp_path, "sr", image, "Befund:\tatypisches Netzwerk,\r\nregressionsähnliche Strukturen")
    scan, problems = _scan(tmp_path)
    assert problems == {} and scan.queries[0].text == "Befund:\tatypisches Netzwerk,\r\nregressionsähnliche Strukturen"


def test_a_vl_photographic_image_not_said_to_be_dermoscopy_gets_a_notice(tmp_path):
    """Older archives store dermoscopy as VL Photographic (XC), and a clinical photograph of the lesion is VL
    Photographic too: answered as dermoscopy, without a word, it gave matches that mean nothing. An XC image is
    dermoscopy when a dermoscope attribute (Dermoscopic Image Module) or a description says so."""
    from pydicom.uid import VLPhotographicImageStorage

    from monai_cir.dicom.reader import NOT_SAID_DERMOSCOPY_NOTICE

    _image(tmp_path, "dms")
    variants = {"plain_xc": {}, "described": {"SeriesDescription": "Dermatoscopy left shoulder"},
                "image_type": {"ImageType": ["ORIGINAL", "PRIMARY", "EPILUMINESCENCE"]}, "dermoscope": {"ContactMethod": "CONTACT"},
                "clinical": {"SeriesDescription": "clinical overview"},
                # found by review: the study's description said "Dermoscopy" of the clinical photograph it also holds
                "clinical_in_dermoscopy_study": {"StudyDescription": "Dermoscopy", "SeriesDescription": "Clinical overview photograph"}}
    for seed, (name, attributes) in enumerate(variants.items(), start=3):
        ds = _image(tmp_path, name, pixels=_lesion(seed=seed))
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = VLPhotographicImageStorage
        ds.Modality = "XC"
        for keyword in ("SeriesDescription", "StudyDescription", "ImageType", "LightSourcePolarization", "EmitterColorTemperature",
                        "ContactMethod", "ImmersionMedia", "OpticalMagnificationFactor"):  # what dicomize writes of a dermoscopy image
            if keyword in ds:
                delattr(ds, keyword)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)

    scan, problems = _scan(tmp_path)
    assert problems == {}
    noticed = {Path(q.source_path).stem for q in scan.queries if NOT_SAID_DERMOSCOPY_NOTICE in q.notices}
    assert noticed == {"plain_xc", "clinical", "clinical_in_dermoscopy_study"}


def test_a_follow_up_report_gives_no_text_to_the_baseline_it_compares_with(tmp_path):
    """A follow-up study's SR describes its new image and lists the earlier study's image in Pertinent Other
    Evidence, as the comparison: the baseline image is not what the report describes."""
    from monai_cir.dicom.dicomize import case_report_sr

    baseline = _image(tmp_path, "baseline")
    follow_up = _image(tmp_path, "follow_up", pixels=_lesion(seed=5))
    follow_up.PatientID, follow_up.PatientName = baseline.PatientID, baseline.PatientName  # the same patient's next visit
    follow_up.save_as(tmp_path / "follow_up.dcm", enforce_file_format=True)
    sr = case_report_sr(follow_up, "new irregular streaks since the baseline")
    sr.PertinentOtherEvidenceSequence = _evidence(baseline)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert baseline.StudyInstanceUID != follow_up.StudyInstanceUID

    scan, problems = _scan(tmp_path)
    by_name = {Path(q.source_path).stem: q for q in scan.queries}
    assert problems == {}
    assert by_name["follow_up"].text == "new irregular streaks since the baseline"
    assert by_name["baseline"].text == "" and by_name["baseline"].text_source == "none"


def test_a_report_filed_in_another_study_is_used_and_said(tmp_path):
    """A report whose only reference is in Pertinent Other Evidence (a report written in a study of its own
    lists its image there) still describes that image: used, with a notice naming the other study."""
    from monai_cir.dicom.dicomize import case_report_sr

    image = _image(tmp_path, "image")
    sr = case_report_sr(image, "itchy pigmented macule")
    del sr.CurrentRequestedProcedureEvidenceSequence
    sr.PertinentOtherEvidenceSequence = _evidence(image)
    sr.StudyInstanceUID = pydicom.uid.generate_uid()
    _drop_image_items(sr)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)

    scan, problems = _scan(tmp_path)
    assert problems == {} and scan.queries[0].text == "itchy pigmented macule"
    assert any("is of another study" in n and sr.StudyInstanceUID in n for n in scan.queries[0].notices), scan.queries[0].notices


def _drop_image_items(ds: pydicom.Dataset) -> None:
    """``ds``'s content tree without its IMAGE items (a report that references its image by evidence only)."""
    for item in ds.get("ContentSequence", []):
        _drop_image_items(item)
    if "ContentSequence" in ds:
        ds.ContentSequence = [item for item in ds.ContentSequence if item.get("ValueType") != "IMAGE"]


def test_an_amended_report_replaces_the_one_it_names(tmp_path):
    """A corrected SR names the report it corrects (Predecessor Documents Sequence): only its text is used
    (joined, the two would state each finding both ways), and the replaced one is reported."""
    from monai_cir.dicom.dicomize import case_report_sr

    image = _image(tmp_path, "image")
    first = case_report_sr(image, "atypical pigment network, blue-whitish veil")
    first.save_as(tmp_path / "preliminary.dcm", enforce_file_format=True)
    amended = case_report_sr(image, "amended: typical pigment network, no blue-whitish veil")
    assert amended.SOPInstanceUID != first.SOPInstanceUID
    amended.PredecessorDocumentsSequence = _evidence(first)
    amended.save_as(tmp_path / "amended.dcm", enforce_file_format=True)

    scan, problems = _scan(tmp_path)
    assert [q.text for q in scan.queries] == ["amended: typical pigment network, no blue-whitish veil"]
    assert set(problems) == {"preliminary"} and "replaced by the amended report" in problems["preliminary"]
    assert not any("joined" in n for n in scan.queries[0].notices)


def test_a_study_report_shared_by_several_images_says_so(tmp_path):
    first = _image(tmp_path, "one", case="study")
    _image(tmp_path, "two", case="study", pixels=_lesion(seed=3))
    from monai_cir.dicom.dicomize import case_report_sr

    sr = case_report_sr(first, "left forearm lesion")
    del sr.CurrentRequestedProcedureEvidenceSequence
    _drop_image_items(sr)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)

    scan, problems = _scan(tmp_path)
    assert problems == {} and [q.text for q in scan.queries] == ["left forearm lesion"] * 2
    for query in scan.queries:
        assert any("its text is used, as for the study's 1 other image" in n for n in query.notices), query.notices


def test_a_folder_of_large_images_is_read_one_image_at_a_time(tmp_path):
    """The scan holds one image's pixel data at a time, not the batch's: a folder of large images must
    not need their whole size in memory at once (the app's MAP declares a memory limit)."""
    import tracemalloc

    from monai_cir.dicom.reader import read_dicom_folder

    for i in range(8):
        _image(tmp_path, f"large{i}", pixels=np.tile(_lesion(seed=i), (6, 6, 1)))  # 960 x 720 RGB, 2 MB each
    one_file = 960 * 720 * 3
    tracemalloc.start()
    try:
        scan = read_dicom_folder(tmp_path, max_side=64)  # the queries' own images are small
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(scan.queries) == 8 and not scan.problems
    assert peak < 5 * one_file, f"peak {peak / 2**20:.1f} MiB for 8 files of {one_file / 2**20:.1f} MiB"


@pytest.mark.parametrize("uid", ["..", "problems.json", "1.2.3/../../x", "1.2.840.99999." + "1" * 60])
def test_an_instance_uid_that_is_no_uid_never_names_a_folder_outside_its_place(tmp_path, uid):
    """The answer's folder is named by the image's SOP Instance UID only when it is one (digits and dots, at
    most 64 characters); the image is still answered, with a notice that its UID breaks DICOM's rules."""
    from deploy_app.operators.common import query_id_of

    image = _image(tmp_path, "image")
    image.SOPInstanceUID = image.file_meta.MediaStorageSOPInstanceUID = uid
    image.save_as(tmp_path / "image.dcm", enforce_file_format=True)
    scan, problems = _scan(tmp_path)
    assert problems == {} and len(scan.queries) == 1
    query = scan.queries[0]
    assert any(n.startswith("SOP Instance UID") and "breaks DICOM's rules" in n for n in query.notices), query.notices
    name = query_id_of(query, 0)
    assert re.fullmatch(r"query-[0-9a-f]{16}", name) and name == query_id_of(query, 7)  # the same every run
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    valid = dataclasses.replace(query, sop_instance_uid="1.2.840.10008.99.1", frame_number=2)
    assert query_id_of(valid, 0) == "1.2.840.10008.99.1-f2"


def test_feature_cache_refuses_a_file_that_runs_code(tmp_path, monkeypatch, caplog):
    import torch

    from monai_cir.data import feature_cache
    from monai_cir.data.collections import CaseRecord

    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (Path.touch, (marker,))

    records = [CaseRecord(case_id="c1", image_path=tmp_path / "c1.png", diagnosis="nevus", label=1, text="t", site="trunk", collection="x", metadata={"age": np.int64(40)})]
    payload = {
        "format": feature_cache.CACHE_FORMAT, "fingerprint": "f", "image_size": 64, "collection": "x",
        "records": [feature_cache._record_to_dict(r) for r in records], "labels": torch.tensor([1]),
        "maps": [torch.zeros(1, 2, 2, 2)] * 3, "maps_flipped": None, "tokens": torch.zeros(1, 1, 4),
        "token_mask": torch.ones(1, 1, dtype=torch.bool), "sentence": torch.zeros(1, 4),
    }
    good = tmp_path / "good.pt"
    torch.save(payload, good)  # what build_feature_cache writes (numpy metadata made plain)
    read = feature_cache._read_payload(good, "f", 64)
    assert read is not None and feature_cache._load(read, good, records, "f", 64, flipped=False) is not None

    evil = tmp_path / "evil.pt"
    torch.save({**payload, "build_seconds": RunsCode()}, evil)
    assert feature_cache._read_payload(evil, "f", 64) is None  # refused: rebuilt
    assert not marker.exists()
    # found by review: the warning relayed torch's advice to load the file with weights_only=False (running its code)
    assert "can still be loaded" not in caplog.text and "Unsupported global" in caplog.text  # what is wrong, not how to load it


def _dciodvfy_errors(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy (Debian dicom3tools) is missing: run scripts/install_system_tools.sh")
    out = subprocess.run([tool, str(path)], check=False, capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_in_a_passing_thread_returns_raises_and_ends():
    """``in_a_passing_thread``: the work's result, or its exception in the caller's thread, from a
    thread other than the caller's that has ended by then."""
    import threading

    from monai_cir.config import in_a_passing_thread

    ran_in = []

    def work(a, b=0):
        ran_in.append(threading.current_thread())
        return a + b

    assert in_a_passing_thread(work, 2, b=3) == 5
    assert ran_in[0] is not threading.current_thread() and not ran_in[0].is_alive()

    def broken():
        raise KeyError("no such index")

    with pytest.raises(KeyError, match="no such index"):
        in_a_passing_thread(broken)


def test_writers_split_a_batch_over_worker_processes(tmp_path):
    """The SR / PDF writers' work on a batch runs in forked workers (one per CPU): each study's
    outputs come back, a failing study is marked and the others are written, and the first study a
    process writes runs in the process itself (its workers inherit what it loaded)."""
    from monai.deploy.core import Fragment

    from deploy_app.operators import common
    from deploy_app.operators.common import QueryResult, ResultsOperator

    def write(result: QueryResult) -> None:
        if result.query_id == "q3":
            raise ValueError("boom")
        path = tmp_path / f"{result.query_id}.txt"
        path.write_text(str(os.getpid()))
        result.outputs["sr"] = str(path)

    operator = ResultsOperator(Fragment(), name="writer")
    results = [QueryResult(query_id=f"q{i}", query=None) for i in range(8)]
    results[5].fail("retrieval", "not answered")
    common._STAGES_RUN_HERE.discard("sr")
    operator.for_each_answered(results, "sr", write, "write the SR", parallel=True)

    failed = results[3]
    assert failed.error == "cannot write the SR: ValueError: boom" and failed.error_stage == "sr" and not failed.outputs
    assert results[5].error == "not answered" and not results[5].outputs
    written = [r for i, r in enumerate(results) if i not in (3, 5)]
    assert all(Path(r.outputs["sr"]).is_file() and r.timing_ms["sr"] > 0 for r in written)
    pids = {r.query_id: int(Path(r.outputs["sr"]).read_text()) for r in written}
    assert pids.pop("q0") == os.getpid(), "the first study of the stage runs in this process"
    if len(os.sched_getaffinity(0)) > 1:
        assert os.getpid() not in pids.values(), f"the rest ran in worker processes: {pids}"


def test_reports_explain_in_the_process_when_a_worker_cannot(tmp_path, monkeypatch):
    """A forked worker cannot use its parent's CUDA context: explanations of a network on CUDA
    (``PendingExplanations.forkable`` false) are made in the process, then the SR is written in the
    workers; explanations a worker can make are made there, with the SR, in one pass."""
    from monai.deploy.core import Fragment

    from deploy_app.operators import common, reports
    from deploy_app.operators.common import QueryResult

    class Pending:
        def __init__(self, forkable: bool) -> None:
            self.forkable = forkable

        def explain(self) -> dict:
            return {1: os.getpid()}  # where it ran, carried to the SR

    def write_sr(result, path, score_range, *parameters):
        path.write_text(f"{result.explanations[1]} {os.getpid()}")
        return path

    monkeypatch.setattr(reports, "write_similar_cases_sr", write_sr)
    monkeypatch.setattr(common, "_STAGES_RUN_HERE", {"reports"})  # every study to the workers
    results = [QueryResult(query_id=f"q{i}", query=None, pending_explanations=Pending(forkable=i % 2 == 0)) for i in range(6)]
    operator = reports.SimilarCasesReportsOperator(Fragment(), output_folder=tmp_path, write_pdf=False, name="reports", score_range=SCORE_RANGE)
    operator.run(results)

    assert all(r.ok for r in results), [r.error for r in results]
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("needs two CPUs (forked workers); CI has two")
    for i, result in enumerate(results):
        explained_in, written_in = map(int, Path(result.outputs["sr"]).read_text().split())
        assert written_in != os.getpid(), "the SR is written in a worker"
        if i % 2:
            assert explained_in == os.getpid(), "not forkable: explained in the process"
        else:
            assert explained_in == written_in, "forkable: explained where the SR is written"
        assert result.timing_ms["explain"] > 0 and result.timing_ms["sr"] > 0 and "reports" not in result.timing_ms


def test_a_batch_decodes_each_shown_case_once_before_its_workers_fork(tmp_path, monkeypatch):
    """The library cases a batch's PDFs show are decoded in the process, before the reports pass forks: each
    worker finds every match's thumbnail in the cache it inherited (a worker's own cache ends with it, so it
    would otherwise decode each case it shows again, batch after batch)."""
    from types import SimpleNamespace

    from monai.deploy.core import Fragment
    from PIL import Image

    from deploy_app.operators import common, reports
    from deploy_app.operators.common import QueryResult, clear_library_images, library_image

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"case{i}.png")
        Image.fromarray(np.full((600, 500, 3), 40 * (i + 1), np.uint8)).save(paths[-1])

    def hits(cases: list[int]) -> list[SimpleNamespace]:
        return [SimpleNamespace(rank=r + 1, case_id=f"c{i}", metadata=SimpleNamespace(image_path=str(paths[i]), diagnosis="nevus")) for r, i in enumerate(cases)]

    def write_pdf(result, pdf, encapsulated, score_range, *parameters):
        before = common._library_view.cache_info().misses
        shown = [library_image(hit) for hit in result.hits]  # what the PDF draws (report_pdf's image_loader)
        pdf.write_text(f"{common._library_view.cache_info().misses - before} {os.getpid()} {all(s is not None for s in shown)}")
        encapsulated.write_text("")

    monkeypatch.setattr(reports, "write_report", write_pdf)
    monkeypatch.setattr(reports, "write_similar_cases_sr", lambda result, path, score_range: path.write_text("") or path)
    monkeypatch.setattr(common, "_STAGES_RUN_HERE", {"reports"})  # every study to the workers
    clear_library_images()
    results = [QueryResult(query_id=f"q{i}", query=None, hits=hits([i % 3, (i + 1) % 3])) for i in range(6)]
    reports.SimilarCasesReportsOperator(Fragment(), output_folder=tmp_path / "out", name="reports", score_range=SCORE_RANGE).run(results)

    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("needs two CPUs (forked workers); CI has two")
    assert all(r.ok for r in results), [r.error for r in results]
    for result in results:
        misses, pid, drawn = Path(result.outputs["pdf"]).read_text().split()
        assert int(pid) != os.getpid() and drawn == "True"
        assert int(misses) == 0, f"{result.query_id}: a worker decoded {misses} shown case(s) itself"
    assert common._library_view.cache_info().currsize == 3, "decoded here, once per case"
    assert all(r.timing_ms["pdf"] > 0 for r in results)
    # more cases than the cache keeps: not decoded here (they would push each other out before the workers fork)
    clear_library_images()
    monkeypatch.setattr(reports, "library_cache_size", lambda: 2)
    results = [QueryResult(query_id=f"q{i}", query=None, hits=hits([i % 3, (i + 1) % 3])) for i in range(6)]
    reports.SimilarCasesReportsOperator(Fragment(), output_folder=tmp_path / "out2", name="reports", score_range=SCORE_RANGE).run(results)
    assert all(r.ok for r in results) and common._library_view.cache_info().currsize == 0
    clear_library_images()


def test_each_notice_is_given_once_in_the_order_it_arose(tmp_path):
    """Notices are added in one place (QueryResult.add_notices): a notice said twice (the reader's and the retrieval's)
    is listed once, None and blank ones are skipped, and results.json lists them as added."""
    from monai.deploy.core import Fragment

    from deploy_app.operators.common import QueryResult
    from deploy_app.operators.results_writer import ResultsWriterOperator

    result = QueryResult(query_id="q", query=None)
    result.add_notices("greyscale image", None, "  ", "site unknown")
    result.add_notices("site unknown", "the prior ordered the cases")
    assert result.notices == ["greyscale image", "site unknown", "the prior ordered the cases"]
    summary = ResultsWriterOperator(Fragment(), output_folder=tmp_path, name="results").write([result], [])
    assert summary["queries"][0]["notices"] == result.notices


def test_a_report_part_that_fails_loses_only_itself(tmp_path, monkeypatch):
    """Explanations, SR and PDF are written apart, in the process and in forked workers: a failed
    explanation leaves reports that say they have none; a failed SR leaves the PDF, a failed PDF the
    SR, the query answered with what was written and the failure in ``output_errors``; a query fails
    only when neither report was written."""
    from monai.deploy.core import Fragment

    from deploy_app.operators import common, reports
    from deploy_app.operators.common import QueryResult

    class Pending:
        forkable = True

        def __init__(self, fails: bool) -> None:
            self.fails = fails

        def explain(self) -> dict:
            if self.fails:
                raise RuntimeError("no grid maps")
            return {1: "why"}

    def write_sr(result, path, score_range, *parameters):
        if result.query_id in ("sr", "both", "all"):
            raise OSError("disk full")
        path.write_text(" | ".join(result.notices))
        return path

    def write_pdf(result, pdf, encapsulated, score_range, *parameters):
        pdf.write_text(" | ".join(result.notices))
        if result.query_id in ("pdf", "both", "all"):
            raise ValueError("no room on the page")  # after the plain PDF, before its DICOM: the part's files must go
        encapsulated.write_text("")

    monkeypatch.setattr(reports, "write_similar_cases_sr", write_sr)
    monkeypatch.setattr(reports, "write_report", write_pdf)
    for forked in (False, True):
        monkeypatch.setattr(common, "_STAGES_RUN_HERE", {"reports"} if forked else set())
        monkeypatch.setattr(common, "PARALLEL_MIN_STUDIES", 2 if forked else 100)
        names = ("fine", "explain", "sr", "pdf", "both", "all")
        results = [QueryResult(query_id=name, query=None, pending_explanations=Pending(fails=name in ("explain", "all"))) for name in names]
        reports.SimilarCasesReportsOperator(Fragment(), output_folder=tmp_path / str(forked), name="reports", score_range=SCORE_RANGE).run(results)
        by = dict(zip(names, results))

        assert [name for name in names if by[name].ok] == ["fine", "explain", "sr", "pdf"], forked
        assert sorted(by["fine"].outputs) == ["encapsulated_pdf", "pdf", "sr"] and not by["fine"].output_errors
        assert by["explain"].output_errors == {"explain": "cannot explain the matches: RuntimeError: no grid maps"}
        assert by["explain"].notices == [reports.EXPLANATION_FAILED_NOTICE] and not by["explain"].explanations
        for written in ("sr", "pdf"):
            assert reports.EXPLANATION_FAILED_NOTICE in Path(by["explain"].outputs[written]).read_text(), "the report says it has no explanations"
        assert sorted(by["sr"].outputs) == ["encapsulated_pdf", "pdf"] and by["sr"].output_errors == {"sr": "cannot write the similar-cases SR: OSError: disk full"}
        assert sorted(by["pdf"].outputs) == ["sr"] and by["pdf"].output_errors == {"pdf": "cannot write the PDF report: ValueError: no room on the page"}
        assert by["both"].error == "cannot write the PDF report: ValueError: no room on the page" and by["both"].error_stage == "pdf"
        # every part's failure is kept, whether the study ran here or in a worker: the SR's beside the PDF's error
        assert by["both"].output_errors == {"sr": "cannot write the similar-cases SR: OSError: disk full"}
        assert by["all"].output_errors == {"explain": "cannot explain the matches: RuntimeError: no grid maps",
                                           "sr": "cannot write the similar-cases SR: OSError: disk full"}
        # results.json counts the queries not answered as skipped, and every entry of problems.json (a failed part of an
        # answered query too) as a problem (before: "skipped" counted the problems)
        from deploy_app.operators.results_writer import ResultsWriterOperator

        summary = ResultsWriterOperator(Fragment(), output_folder=tmp_path / f"results-{forked}", name="results").write(results, [])
        assert (summary["skipped"], summary["problems"]) == (2, 8) and len(summary["queries"]) == 4
        # a failed part leaves none of its files in the query's folder
        folder = tmp_path / str(forked)
        assert sorted(f.name for f in (folder / "pdf").iterdir()) == ["similar_cases_sr.dcm"]
        assert not list((folder / "both").iterdir()) and not list((folder / "all").iterdir())


@pytest.mark.slow
def test_sdk_import_skips_monai_core_until_it_is_used():
    """Importing the app does not run MONAI core's eager ``__init__`` (seconds of imports the app
    does not use); MONAI imported afterwards in the same process is complete and loaded once."""
    code = (
        "import sys\n"
        "import deploy_app.app\n"
        "assert 'monai.networks' not in sys.modules and 'monai.transforms' not in sys.modules\n"
        "from monai.transforms import Compose\n"
        "import monai.data.dataset, monai.networks.nets\n"
        "assert Compose is monai.data.dataset.Compose and monai.__version__\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.slow
def test_cli_exit_status_and_error_line_survive_the_fast_exit(tmp_path):
    """``python -m deploy_app`` leaves without the interpreter's teardown (``__main__._leave``): the
    exit status and the one-line error still come out, and the log is flushed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}
    (tmp_path / "in").mkdir()
    (tmp_path / "empty-models").mkdir()
    command = [sys.executable, "-m", "deploy_app", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "empty-models")]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert any(line.startswith("monai-cir-similar-cases: error: no model checkpoint in") for line in proc.stderr.splitlines()), proc.stderr[-3000:]


def test_app_folder_runs_as_a_map_runs_it(tmp_path):
    """A MAP runs ``python3 /opt/holoscan/app``: the staged app folder (docs/deploy.md: deploy_app
    with monai_cir copied in) under another name, nothing on PYTHONPATH."""
    staged = tmp_path / "app"
    shutil.copytree(REPO / "deploy_app", staged, ignore=shutil.ignore_patterns("__pycache__"))
    (staged / "monai_cir").symlink_to(REPO / "monai_cir")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(staged), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "app flags" in proc.stdout and "--publish-dicom" in proc.stdout


@pytest.fixture(scope="module")
def app_run(tmp_path_factory, shared_data):
    """Library + MODELS + input studies, Orthanc when available, and one run of the app."""
    from pydicom.encaps import encapsulate

    from monai_cir.cli.demo import index_dicom_library
    from monai_cir.data import load_isic_uda1
    from monai_cir.dicom.dicomize import dicomize_record

    root = tmp_path_factory.mktemp("deploy_app")
    records = load_isic_uda1(shared_data)
    library_records, held_out, corrupt_source = records[:LIBRARY_SIZE], records[LIBRARY_SIZE], records[LIBRARY_SIZE + 1]
    # the held-out query's report also names two 7-point findings: its text counts for 2/5 of the query
    held_out = dataclasses.replace(held_out, text=f"{held_out.text} Dermoscopy: atypical pigment network, irregular streaks.")
    for record in library_records:
        dicomize_record(record, root / "library")
    # found by review: the checkpoint was copied through a link at MODELS/model.pt, over the file it points to
    precious = root / "precious_release.pt"
    precious.write_bytes(b"another model's bytes")
    (root / "models").mkdir()
    (root / "models" / "model.pt").symlink_to(precious)
    assert index_dicom_library(root / "library", root / "models") == LIBRARY_SIZE
    assert precious.read_bytes() == b"another model's bytes" and not (root / "models" / "model.pt").is_symlink()

    inputs = root / "input"
    cases = {
        "in_library": dicomize_record(library_records[3], inputs / "in_library", include_diagnosis=False),
        "held_out": dicomize_record(held_out, inputs / "held_out", include_diagnosis=False),
        "corrupt": dicomize_record(corrupt_source, inputs / "corrupt", include_diagnosis=False),
    }
    bad = pydicom.dcmread(cases["corrupt"].image_file)
    bad.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + bytes(range(256)) * 4 + b"\xff\xd9"])
    bad.save_as(cases["corrupt"].image_file, enforce_file_format=True)
    (inputs / "junk.txt").write_text("this is not DICOM")

    server = None
    # -i/-o as flags, MODELS through the SDK's environment variable: both ways of configuring the app
    command = [sys.executable, "-m", "deploy_app", "-i", str(inputs), "-o", str(root / "out"), "-k", "5"]
    if orthanc_available():
        server = OrthancServer(root / "orthanc").start()
        command += ["--publish-dicom", f"127.0.0.1:{server.dicom_port}:{server.ae_title}", "--publish-dicomweb", server.dicomweb_url]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HOLOSCAN_MODEL_PATH": str(root / "models"),
    }
    try:
        proc = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        yield {"root": root, "out": root / "out", "proc": proc, "cases": cases, "library": library_records, "held_out": held_out, "server": server}
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="module")
def results(app_run):
    proc = app_run["proc"]
    assert proc.returncode == 0, f"the app failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    summary = json.loads((app_run["out"] / "results.json").read_text())
    by_patient = {q["patient_id"]: q for q in summary["queries"]}
    return summary, {name: by_patient.get(case.uids.patient_id) for name, case in app_run["cases"].items()}


@pytest.mark.integration
@pytest.mark.slow
def test_outputs_exist_and_pass_dciodvfy(app_run, results):
    _, answers = results
    for name in ("in_library", "held_out"):
        answer = answers[name]
        assert answer is not None, f"{name} was not answered"
        outputs = {k: app_run["out"] / v for k, v in answer["outputs"].items()}
        assert set(outputs) == {"sr", "pdf", "encapsulated_pdf"}
        assert all(p.is_file() and p.stat().st_size > 0 for p in outputs.values())
        assert outputs["pdf"].read_bytes().startswith(b"%PDF")
        for key in ("sr", "encapsulated_pdf"):
            errors = _dciodvfy_errors(outputs[key])
            assert not errors, f"dciodvfy errors in {outputs[key]}:\n" + "\n".join(errors)


@pytest.mark.integration
@pytest.mark.slow
def test_ranks_in_score_order_and_sr_round_trip(app_run, results):
    from monai_cir.dicom.sr import read_similar_cases_sr

    from monai_cir.data.report import recognised_findings
    from monai_cir.prior_ranking import PRIOR_NOTICE, PRIOR_RANKING, SIMILARITY_RANKING

    _, answers = results
    for name in ("in_library", "held_out"):
        top = answers[name]["top_k"]
        assert [h["rank"] for h in top] == list(range(1, 6))
        scores = [h["score"] for h in top]
        # the release ranks with its diagnosis prior when the text names findings (and says so): each case keeps its
        # similarity as its score, so the order is by similarity within a diagnosis and by the prior across them
        ordered = answers[name]["ranking"] == PRIOR_RANKING
        assert ordered == bool(recognised_findings(answers[name]["text"])) == (PRIOR_NOTICE in answers[name]["notices"])
        assert answers[name]["ranking"] in (PRIOR_RANKING, SIMILARITY_RANKING)
        for diagnosis in {h["diagnosis"] for h in top}:
            same = [h["score"] for h in top if h["diagnosis"] == diagnosis]
            assert same == sorted(same, reverse=True), (name, diagnosis)
        if not ordered:
            assert scores == sorted(scores, reverse=True)
        assert {h["case_id"] for h in top} <= {r.case_id for r in app_run["library"]}
        report = read_similar_cases_sr(app_run["out"] / answers[name]["outputs"]["sr"])
        assert report.ranking == answers[name]["ranking"]  # the order, coded in the SR as in results.json
        assert [m.rank for m in report.matches] == [1, 2, 3, 4, 5]
        assert [m.case_id for m in report.matches] == [h["case_id"] for h in top]
        assert [m.score for m in report.matches] == pytest.approx(scores, abs=1e-5)
        assert all(m.sop_instance_uid for m in report.matches)  # references to the library instances
        # the evidence summary (decision support) is in results.json and in the SR, and they agree
        evidence = answers[name]["evidence"]
        assert evidence["label"].lower().startswith("decision support")
        assert sum(evidence["distribution"].values()) == pytest.approx(1.0, abs=1e-6)
        assert report.evidence_summary is not None
        assert report.evidence_summary.predicted == evidence["predicted"]
        # where the prior put another diagnosis first than the evidence favours, a notice says so (results.json, SR)
        differ = (ordered and evidence["predicted"] != top[0]["diagnosis"]
                  and evidence["distribution"].get(top[0]["diagnosis"], 0.0) < evidence["confidence"])
        said = [n for n in answers[name]["notices"] if n.startswith("the evidence summary (")]
        assert len(said) == int(differ), (name, evidence["predicted"], top[0]["diagnosis"], said)
        disagreement = answers[name]["evidence_disagreement"]
        assert said == ([disagreement] if differ else []) and (disagreement is None) == (not differ)
        assert all(n in report.notices for n in said)
        # every match is explained (library images are reachable here): SR text, and the PDF's explanation page (5 rows)
        assert all(m.explanation and "local cosine" in m.explanation for m in report.matches)
        pdf = (app_run["out"] / answers[name]["outputs"]["pdf"]).read_bytes()
        assert len(re.findall(rb"/Type\s*/Page(?!s)", pdf)) == 2 and len(top) == 5


@pytest.mark.integration
@pytest.mark.slow
def test_hits_are_the_models_own_ranking(app_run, results):
    """The app's top-5 is what the network itself says: Eq. 9 recomputed here from the DICOM the
    app read (query image + SR text, every library image), ranked here. A pipeline that loses the
    text, preprocesses the query or the library differently, searches stale or shuffled vectors or
    ranks wrongly fails this; so does a model whose embeddings do not depend on the image."""
    import torch

    from monai_cir.dicom.dicomize import case_uids
    from monai_cir.dicom.reader import read_dicom_folder
    from monai_cir.networks import load_model
    from monai_cir.retrieval import to_image_tensor

    from monai_cir.data.report import recognised_findings
    from monai_cir.dicom.sr import read_similar_cases_sr

    _, answers = results
    acted: list[bool] = []
    net = load_model(app_run["root"] / "models" / "model.pt").eval()
    # the release network: Eq. 9 + the late-fusion branch at equal weight; the SR reports against its range
    assert net.late_fusion is not None and net.score_range == pytest.approx((-2.0, 2.0))
    report = read_similar_cases_sr(app_run["out"] / answers["held_out"]["outputs"]["sr"])
    assert report.score_range == pytest.approx(net.score_range)
    library = {r.case_id: read_dicom_folder(app_run["root"] / "library" / case_uids(r.collection, r.case_id).patient_id).queries[0] for r in app_run["library"]}
    ids = list(library)
    targets = torch.stack([to_image_tensor(library[i].image, net.image_size) for i in ids])
    for name in ("in_library", "held_out"):
        query = read_dicom_folder(app_run["cases"][name].image_file.parent).queries[0]
        assert query.text and answers[name]["text"] == query.text
        image = to_image_tensor(query.image, net.image_size)[None]
        with torch.inference_mode():
            scores = net.similarity(image, [query.text], targets)[0].tolist()
            _, terms = net.encode_query_and_terms(image, [query.text])
        # the ranking: S + the diagnosis prior's term of each case's diagnosis (the release carries the prior)
        classes = list(net.diagnosis_prior.classes)
        diagnosis = {r.case_id: r.diagnosis for r in app_run["library"]}
        term = {i: float(terms[0, classes.index(diagnosis[i]) if diagnosis[i] in classes else -1]) for i in ids}
        assert any(term.values()) == bool(recognised_findings(query.text))  # the prior acts where the SR text names findings
        acted.append(any(term.values()))
        ranking = sorted(((s + term[i], s, i) for s, i in zip(scores, ids)), reverse=True)
        shown = answers[name].get("differential")
        if shown:  # the checkpoint's differential slot opened: the closest case of another diagnosis, at its rank
            other = next(entry for entry in ranking if diagnosis[entry[2]] != diagnosis[ranking[0][2]])
            assert shown["case_id"] == other[2] and shown["margin"] == pytest.approx(ranking[0][0] - other[0], abs=1e-4), name
            ranking.remove(other)
            ranking.insert(shown["rank"] - 1, other)
        expected = ranking[:5]
        top = answers[name]["top_k"]
        assert [h["case_id"] for h in top] == [i for _, _, i in expected], name
        assert [h["score"] for h in top] == pytest.approx([s for _, s, _ in expected], abs=1e-4), name  # each its similarity
        assert max(scores) - min(scores) > 1e-2  # the image matters: not a constant embedding
    assert answers["in_library"]["top_k"][0]["case_id"] == app_run["library"][3].case_id
    # the query is that library case itself (the same SOP Instance UID), and the reader is told
    own = [n for n in answers["in_library"]["notices"] if "itself (the same SOP Instance UID)" in n]
    assert own == [f"the query image is library case {app_run['library'][3].case_id} itself (the same SOP Instance UID): it is its own "
                   "match at rank 1 and is counted in the evidence summary; compare the other cases"]
    assert app_run["held_out"].case_id not in {h["case_id"] for h in answers["held_out"]["top_k"]}
    assert not any("itself" in n for n in answers["held_out"]["notices"])
    assert acted == [False, True]  # the in-library query's text names no finding, the held-out one's does


@pytest.mark.integration
@pytest.mark.slow
def test_an_answer_the_prior_orders_against_the_evidence_says_so(app_run, results, tmp_path):
    """The app's notice where the evidence summary and the first case differ, forced (the fixture's own answers may
    agree): the held-out query, whose text names two findings (the prior acts), answered by the release model with a
    prior that favours the diagnosis its evidence summary does not. The first case is of that diagnosis, the summary
    (a vote by similarity) is unchanged, and results.json, the SR and the PDF say they differ."""
    import torch

    from deploy_app.app import load_models, run_app
    from deploy_app.settings import AppSettings
    from monai_cir.dicom.sr import read_similar_cases_sr
    from tests.test_dicom_io import pdf_text

    models = load_models(app_run["root"] / "models", device="cpu", cache=False)
    folder = app_run["cases"]["held_out"].image_file.parent
    settings = AppSettings(top_k=5, explain=False)
    voted = run_app(folder, tmp_path / "as_shipped", models, settings)["queries"][0]["evidence"]["predicted"]
    favoured = next(d for d in ("melanoma", "nevus") if d != voted)
    prior = models.net.diagnosis_prior
    classes, d = list(prior.classes), prior.mean.shape[1]
    for which in (0, 1):  # weights zero: the posterior is softmax(bias), ~1 for the favoured diagnosis
        prior.set_probe(which, torch.zeros(d), torch.ones(d), torch.zeros(len(classes), d), 10.0 * torch.eye(len(classes))[classes.index(favoured)])
    answer = run_app(folder, tmp_path / "forced", models, settings)["queries"][0]
    assert answer["top_k"][0]["diagnosis"] == favoured and answer["evidence"]["predicted"] == voted
    said = [n for n in answer["notices"] if n.startswith("the evidence summary (")]
    assert len(said) == 1 and f"favours {voted}" in said[0] and f"first case shown is a {favoured} case" in said[0]
    assert said[0] in read_similar_cases_sr(tmp_path / "forced" / answer["outputs"]["sr"]).notices
    page = " ".join(pdf_text((tmp_path / "forced" / answer["outputs"]["pdf"]).read_bytes())[0].split())
    assert " ".join(said[0].split()) in page


@pytest.mark.integration
@pytest.mark.slow
def test_a_long_report_is_read_for_its_findings_wherever_they_are(app_run, results, tmp_path):
    """A report longer than the text encoder reads (more than its max_length tokens), with a finding after the
    filler: the model is given the findings in the template's words (a short text), so every finding counts, the
    last included, and none of the filler reaches the query (before, only the first 512 tokens counted and the
    last finding was lost, while the notice listed it as read)."""
    import shutil

    import pydicom

    from deploy_app.app import load_models, run_app
    from deploy_app.settings import AppSettings
    from monai_cir.dicom.dicomize import case_report_sr

    _, answers = results
    assert not any("longer than the model reads" in n for a in answers.values() if a for n in a["notices"])
    models = load_models(app_run["root"] / "models", device="cpu", cache=False)
    limit = models.net.text_encoder.max_length
    folder = tmp_path / "long"
    shutil.copytree(app_run["cases"]["held_out"].image_file.parent, folder)
    image = pydicom.dcmread(app_run["cases"]["held_out"].image_file)
    text = ("Dermoscopy: atypical pigment network, irregular streaks. " + "The lesion was followed for many years. " * 120
            + "Blue-whitish veil present.")
    for sr in folder.glob("*.dcm"):
        if pydicom.dcmread(sr, stop_before_pixels=True).Modality == "SR":
            sr.unlink()
    case_report_sr(image, text).save_as(folder / "long_sr.dcm", enforce_file_format=True)
    answer = run_app(folder, tmp_path / "out", models, AppSettings(top_k=5, explain=False, write_pdf=False))["queries"][0]
    assert models.net.text_encoder.token_count(answer["text"]) > limit
    assert answer["text_use"] == {"weight": 0.6, "findings_read": ["pigment_network", "streaks", "blue_whitish_veil"]}
    assert not any("longer than the model reads" in n for n in answer["notices"]), answer["notices"]
    assert models.net.query_text(answer["text"]) == ("Lesion. Dermoscopy: atypical pigment network; irregular streaks; "
                                                     "blue-whitish veil present.")


@pytest.mark.integration
@pytest.mark.slow
def test_differential_slot_recorded_in_the_checkpoint_shows_the_runner_up_and_says_so(app_run, results, tmp_path):
    """A checkpoint that records a differential slot (:mod:`monai_cir.differential`): for a query whose
    first cases share one diagnosis, the closest case of the other diagnosis is shown at the slot's rank
    (ranks before it unchanged, the rest one lower), results.json records it and the SR says it in a notice;
    ``differential: false`` gives the plain ranking. The fixture's MODELS carry the release checkpoint, its slot included."""
    import torch

    from deploy_app.app import load_models, run_app
    from deploy_app.settings import AppSettings
    from monai_cir.dicom.reader import read_dicom_folder
    from monai_cir.dicom.sr import read_similar_cases_sr
    from monai_cir.differential import DifferentialSlot
    from monai_cir.networks.checkpoint import read_checkpoint, record_in_checkpoint
    from monai_cir.prior_ranking import PRIOR_RANKING
    from monai_cir.retrieval import to_image_tensor
    from tests.test_dicom_io import pdf_text

    models_dir = tmp_path / "models"
    models_dir.mkdir()
    shutil.copy2(app_run["root"] / "models" / "model.pt", models_dir / "model.pt")
    shutil.copytree(app_run["root"] / "models" / "index", models_dir / "index")
    plain_models = load_models(models_dir, device="cpu", cache=False)
    # the fixture's MODELS hold the release checkpoint as the demo copies it, the slot's margin included
    assert (models_dir / "model.pt").read_bytes() == (REPO / "bundle" / "models" / "model.pt").read_bytes()
    assert plain_models.differential == DifferentialSlot.from_checkpoint_info(read_checkpoint(REPO / "bundle" / "models" / "model.pt")["extra"])
    assert plain_models.differential is not None
    everything = AppSettings(top_k=LIBRARY_SIZE, explain=False, write_pdf=False, differential=False)
    opened = 0
    for name in ("in_library", "held_out"):
        folder = app_run["cases"][name].image_file.parent
        full = run_app(folder, tmp_path / f"full-{name}", plain_models, everything)["queries"][0]["top_k"]
        first = full[0]["diagnosis"]
        other = next(i for i, h in enumerate(full) if h["diagnosis"] != first)  # 0-based position
        if other < 2:
            continue  # rank 2 is already another diagnosis: no slot can open (checked for the other query)
        slot = DifferentialSlot(margin=1000.0, rank=2, description="test")  # in the prior ranking's units: opens
        record_in_checkpoint(models_dir / "model.pt", differential=slot.to_dict())
        models = load_models(models_dir, device="cpu", cache=False)
        assert models.differential == slot
        answer = run_app(folder, tmp_path / f"slot-{name}", models, AppSettings(top_k=5, explain=False))["queries"][0]
        expected = [full[0], full[other], *[h for h in full[1:] if h is not full[other]]][:5]
        assert [h["case_id"] for h in answer["top_k"]] == [h["case_id"] for h in expected]
        assert [h["rank"] for h in answer["top_k"]] == [1, 2, 3, 4, 5]
        assert answer["top_k"][1]["score"] == pytest.approx(full[other]["score"], abs=1e-5)  # its own score, said as it is
        # the margin is in the units of the ranking: similarity + the diagnosis prior's term (recomputed here)
        query = read_dicom_folder(folder).queries[0]
        with torch.inference_mode():
            _, terms = models.net.encode_query_and_terms(to_image_tensor(query.image, models.net.image_size)[None], [query.text])
        classes = list(models.net.diagnosis_prior.classes)
        term = {d: float(terms[0, classes.index(d) if d in classes else -1]) for d in (first, full[other]["diagnosis"])}
        ranking_margin = full[0]["score"] + term[first] - full[other]["score"] - term[full[other]["diagnosis"]]
        # its rank by similarity alone (the ranking's positions are the prior's where it acted), said in the notice
        acted = answer["ranking"] == PRIOR_RANKING
        by_similarity = 1 + sum(h["score"] > full[other]["score"] for h in full)
        assert acted or by_similarity == other + 1
        assert answer["differential"] == {"rank": 2, "case_id": full[other]["case_id"], "diagnosis": full[other]["diagnosis"],
                                          "similarity_rank": by_similarity, "margin": pytest.approx(ranking_margin, abs=1e-4),
                                          "max_margin": 1000.0}
        notice = slot.notice(full[other]["diagnosis"], by_similarity, first, answer["differential"]["margin"], prior=acted)
        assert ("nearly as likely, by the image, the findings" in notice) == acted
        assert notice in answer["notices"]
        assert notice in read_similar_cases_sr(tmp_path / f"slot-{name}" / answer["outputs"]["sr"]).notices
        shown = answer["top_k"]
        above = shown[answer["differential"]["rank"] - 1]["score"] > shown[answer["differential"]["rank"] - 2]["score"]
        mark = "differential; more similar than the case above: see Notes" if above else "differential: see Notes"
        assert mark in pdf_text((tmp_path / f"slot-{name}" / answer["outputs"]["pdf"]).read_bytes())[0]
        # found by review: the heading said "most similar first" over a list the slot reordered, and the SR coded the
        # placed case "Ranked by similarity"
        heading = "most similar first except rank 2" if not acted else "ordered by similarity and likely diagnosis"
        assert heading in " ".join(pdf_text((tmp_path / f"slot-{name}" / answer["outputs"]["pdf"]).read_bytes())[0].split())
        read_back = read_similar_cases_sr(tmp_path / f"slot-{name}" / answer["outputs"]["sr"])
        assert read_back.differential_rank == 2 and read_back.ranking == answer["ranking"]
        switched_off = run_app(folder, tmp_path / f"off-{name}", models, AppSettings(top_k=5, explain=False, write_pdf=False, differential=False))
        assert [h["case_id"] for h in switched_off["queries"][0]["top_k"]] == [h["case_id"] for h in full[:5]]
        assert switched_off["queries"][0]["differential"] is None
        opened += 1
    assert opened >= 1, "neither query's first two cases share a diagnosis: the slot was never exercised"


@pytest.mark.integration
@pytest.mark.slow
def test_packaged_models_layout_in_process_models_loaded_once(app_run, results, tmp_path, monkeypatch):
    """MODELS as ``monai-deploy package`` lays it out (``models/models/model.pt``, ``models/index``),
    the app run in this process twice on one :class:`LoadedModels` (what a DICOM service does):
    the same answers as the subprocess run, no reload; a changed index is loaded afresh. The network
    is loaded in a thread that has ended by the time load_models returns (the caller's thread keeps
    no torch thread team: ``monai_cir.config.in_a_passing_thread``)."""
    import threading

    import monai_cir.networks
    from deploy_app.app import load_models, run_app
    from deploy_app.settings import AppSettings

    loaded_in = []
    real_load_model = monai_cir.networks.load_model
    monkeypatch.setattr(monai_cir.networks, "load_model", lambda *a, **k: loaded_in.append(threading.current_thread()) or real_load_model(*a, **k))

    packaged = tmp_path / "models"
    (packaged / "models").mkdir(parents=True)
    shutil.copy2(app_run["root"] / "models" / "model.pt", packaged / "models" / "model.pt")
    shutil.copytree(app_run["root"] / "models" / "index", packaged / "index")

    models = load_models(packaged, device="cpu")
    assert models.checkpoint == (packaged / "models" / "model.pt").resolve()
    assert len(loaded_in) == 1 and loaded_in[0] is not threading.current_thread() and not loaded_in[0].is_alive()
    assert load_models(packaged, device="cpu") is models  # cached: path + file sizes/mtimes
    settings = AppSettings(explain=False, write_pdf=False)
    _, answers = results
    states = []
    for run in (1, 2):
        summary = run_app(app_run["cases"]["held_out"].image_file.parent, tmp_path / f"out{run}", models, settings)
        assert summary["earlier_answers_in_output"] == 0
        assert summary["models_reused"] is True and len(summary["queries"]) == 1
        states.append((summary["model"], summary["index"]))  # what the service compares between rounds
        top = summary["queries"][0]["top_k"]
        assert [h["case_id"] for h in top] == [h["case_id"] for h in answers["held_out"]["top_k"]]
        assert [h["score"] for h in top] == pytest.approx([h["score"] for h in answers["held_out"]["top_k"]], abs=1e-5)
        assert (tmp_path / f"out{run}" / summary["queries"][0]["outputs"]["sr"]).is_file()
        # which model and library answered reaches the PACS with the answer (found by the viewer review: the SR and the
        # PDF named only the package version): the SR's Algorithm Parameters, as results.json names them
        from monai_cir.dicom.sr import read_similar_cases_sr

        report = read_similar_cases_sr(tmp_path / f"out{run}" / summary["queries"][0]["outputs"]["sr"])
        assert report.algorithm_parameters == [f"model {summary['model'][:16]}", f"library {summary['index']}"]
    # an output folder that holds an earlier run's answers is said to (before: nothing said; results.json then listed
    # this run's queries beside the earlier run's folders)
    again = run_app(app_run["cases"]["in_library"].image_file.parent, tmp_path / "out1", models, settings)
    assert again["earlier_answers_in_output"] == 1 and len(again["queries"]) == 1
    # --site same for a query of a site no library case records: answered with no case, the condition said in words
    # (before: as the search's filter dict, "{'site': 'trunk'}")
    on_back = tmp_path / "on-back"
    on_back.mkdir()
    image = pydicom.dcmread(app_run["cases"]["held_out"].image_file)
    image.BodyPartExamined = "BACK"
    image.save_as(on_back / "image.dcm", enforce_file_format=True)
    same = run_app(on_back, tmp_path / "out-same", models, AppSettings(site="same", explain=False, write_pdf=False))
    assert same["queries"][0]["top_k"] == [] and "no similar case was found: no library case with site trunk" in same["queries"][0]["notices"]
    # a fixed site that no library case records would answer every study with no case: refused before any is read
    # (before: exit 0, an empty SR and PDF per study); the ISIC library records no site
    with pytest.raises(ValueError, match=r"site 'trunk' \(trunk\): no library case records this site \(the library's sites: unknown \d+\)"):
        run_app(app_run["cases"]["held_out"].image_file.parent, tmp_path / "out-site", models, AppSettings(site="trunk", explain=False, write_pdf=False))
    assert not list((tmp_path / "out-site").glob("*/*.dcm"))
    manifest = packaged / "index" / "manifest.json"
    stat = manifest.stat()
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_models(packaged, device="cpu") is not models  # a rebuilt index is not served stale
    assert states[0] == states[1] and all(states[0])
    assert load_models(packaged, device="cpu").index_state != models.index_state  # the library as loaded: another one


@pytest.mark.integration
@pytest.mark.slow
def test_cold_app_on_the_encoder_artifact_imports_no_timm_or_transformers(app_run, results, tmp_path):
    """A fresh process loads MODELS (the index build wrote ``index/encoders``) and answers a study with
    everything on (explanations, SR, PDF): the TorchScript encoders, none of timm, torchvision or
    transformers imported, nor sympy (torch's key_padding_mask check would import it on the first composed
    query: the held-out text names findings), the subprocess run's answer. (That run is on the artifact too; that its
    answer is the eager network's own ranking is test_hits_are_the_models_own_ranking.)"""
    code = (
        "import json, sys\n"
        "from deploy_app.app import load_models, run_app\n"
        "models = load_models(sys.argv[1], device='cpu')\n"
        "summary = run_app(sys.argv[2], sys.argv[3], models)\n"
        "heavy = sorted(m for m in ('timm', 'torchvision', 'transformers', 'sympy') if m in sys.modules)\n"
        "print(json.dumps({'encoders': [type(models.net.image_encoder).__name__, type(models.net.text_encoder).__name__],\n"
        "                  'imported': heavy, 'top_k': summary['queries'][0]['top_k'], 'pdf': bool(summary['queries'][0]['outputs'].get('pdf'))}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}
    folder = app_run["cases"]["held_out"].image_file.parent
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, str(app_run["root"] / "models"), str(folder), str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["encoders"] == ["ScriptedImageEncoder", "ScriptedTextEncoder"] and report["imported"] == [] and report["pdf"], report
    _, answers = results
    assert [h["case_id"] for h in report["top_k"]] == [h["case_id"] for h in answers["held_out"]["top_k"]]
    assert [h["score"] for h in report["top_k"]] == pytest.approx([h["score"] for h in answers["held_out"]["top_k"]], abs=1e-5)


@pytest.mark.integration
@pytest.mark.slow
def test_damaged_encoder_artifact_falls_back_to_the_eager_encoders_with_the_same_answer(app_run, results, tmp_path, caplog):
    """The artifact's query embedding is the eager network's (real weights, real query); a damaged
    artifact (a truncated trace) makes the app build the eager encoders, with one log line saying why,
    and answer as before."""
    import logging

    import torch

    from deploy_app.app import load_models, run_app
    from deploy_app.settings import AppSettings
    from monai_cir.dicom.reader import read_dicom_folder
    from monai_cir.networks import ENCODER_ARTIFACT_DIR, HierarchicalImageEncoder, ScriptedImageEncoder
    from monai_cir.retrieval import to_image_tensor

    damaged = shutil.copytree(app_run["root"] / "models", tmp_path / "models")
    trace = damaged / "index" / ENCODER_ARTIFACT_DIR / "image.ts"
    trace.write_bytes(trace.read_bytes()[:1000])
    scripted = load_models(app_run["root"] / "models", device="cpu")
    with caplog.at_level(logging.WARNING):
        eager = load_models(damaged, device="cpu", cache=False)
    assert isinstance(scripted.net.image_encoder, ScriptedImageEncoder)
    assert isinstance(eager.net.image_encoder, HierarchicalImageEncoder)
    lines = [r.getMessage() for r in caplog.records if "encoder artifact" in r.getMessage()]
    assert len(lines) == 1 and "damaged" in lines[0] and str(trace) in lines[0], lines

    folder = app_run["cases"]["held_out"].image_file.parent
    query = read_dicom_folder(folder).queries[0]
    image = to_image_tensor(query.image, eager.net.image_size)[None]
    with torch.inference_mode():
        torch.testing.assert_close(scripted.net.encode_query(image, [query.text]), eager.net.encode_query(image, [query.text]), rtol=0, atol=1e-5)
    summary = run_app(folder, tmp_path / "out", eager, AppSettings(explain=False, write_pdf=False))
    _, answers = results
    top = summary["queries"][0]["top_k"]
    assert [h["case_id"] for h in top] == [h["case_id"] for h in answers["held_out"]["top_k"]]
    assert [h["score"] for h in top] == pytest.approx([h["score"] for h in answers["held_out"]["top_k"]], abs=1e-5)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("grid_store", [False, True], ids=["no-grid-store", "grid-store"])
def test_batched_explanations_reuse_the_encoding_and_library_maps(app_run, results, tmp_path, monkeypatch, grid_store):
    """A batch's explanations reuse the queries' maps from their encoding and take each library
    case's grid maps from the store the index build wrote (``MODELS/index/grid_maps``), or without
    it run each library case through the image encoder once (then from the per-process cache):
    the same explanations as :func:`monai_cir.explain.explain_match` from scratch, each score the
    match's own."""
    import dataclasses

    import torch

    from deploy_app.app import load_models, run_app
    from deploy_app.operators import reports
    from deploy_app.operators import retrieval as retrieval_op
    from deploy_app.operators.common import LIBRARY_IMAGE_SIDE, library_image
    from deploy_app.settings import AppSettings
    from monai_cir.explain import explain_match
    from monai_cir.retrieval import to_image_tensor

    models = load_models(app_run["root"] / "models", device="cpu")
    assert models.grid_maps is not None and len(models.grid_maps) == LIBRARY_SIZE  # written by index_dicom_library
    if not grid_store:
        models = dataclasses.replace(models, grid_maps=None)
    retrieval_op.clear_library_caches()
    seen: list = []
    write = reports.write_similar_cases_sr
    monkeypatch.setattr(reports, "write_similar_cases_sr", lambda result, *a, **k: (seen.append(result), write(result, *a, **k))[1])
    encoded: list[int] = []
    handle = models.net.image_encoder.register_forward_hook(lambda module, args, out: encoded.append(int(args[0].shape[0])))
    settings = AppSettings(device="cpu", explain=True, write_pdf=False, batch_size=2)
    try:
        run_app(app_run["root"] / "input", tmp_path / "out1", models, settings)
        first, seen_first = sum(encoded), list(seen)
        encoded.clear()
        run_app(app_run["root"] / "input", tmp_path / "out2", models, settings)
    finally:
        handle.remove()
    assert len(seen_first) == 2
    cases = {hit.metadata.case_id for result in seen_first for hit in result.hits}
    # the two queries once, and without the store each library case among their hits once
    assert first == 2 + (0 if grid_store else len(cases))
    assert sum(encoded) == 2  # again: only the queries; the library cases' maps are cached
    for result in seen_first:
        query = to_image_tensor(result.query.image, models.net.image_size)
        assert sorted(result.explanations) == [hit.rank for hit in result.hits]
        for hit in result.hits:
            got = result.explanations[hit.rank]
            fresh = explain_match(models.net, query, result.query.text, library_image(hit, max_side=LIBRARY_IMAGE_SIDE))
            assert got.score == pytest.approx(hit.score, abs=1e-4)
            assert got.score == pytest.approx(fresh.score, abs=1e-5)
            np.testing.assert_allclose(got.query_heatmap, fresh.query_heatmap, atol=1e-6)
            np.testing.assert_allclose(got.target_heatmap, fresh.target_heatmap, atol=1e-6)
            np.testing.assert_array_equal(got.target_image, fresh.target_image)
            np.testing.assert_array_equal(got.query_image, fresh.query_image)
            for a, b in zip(got.levels, fresh.levels):
                np.testing.assert_allclose(a.query_regions, b.query_regions, atol=1e-6)
                np.testing.assert_allclose(a.target_regions, b.target_regions, atol=1e-6)
    with torch.no_grad():
        assert seen[-1].explanations[1].sr_text() == seen_first[-1].explanations[1].sr_text()


@pytest.mark.integration
@pytest.mark.slow
def test_batch_reports_in_forked_workers_match_the_process(app_run, results, tmp_path, monkeypatch):
    """From ``PARALLEL_MIN_STUDIES`` queries on, each query's explanations, SR and PDF are made in one
    pass in a forked worker: the same SR (matches, scores, explanation texts) and PDF pages as the
    pass in the process, the pass's time split over the explain / sr / pdf stages, and a part that
    fails names itself (stage and words) while the other queries are answered."""
    from deploy_app.app import load_models, run_app
    from deploy_app.operators import common, reports
    from deploy_app.settings import AppSettings
    from monai_cir.dicom.sr import read_similar_cases_sr

    models = load_models(app_run["root"] / "models", device="cpu")
    settings = AppSettings(device="cpu", explain=True, write_pdf=True, batch_size=2)
    in_process = run_app(app_run["root"] / "input", tmp_path / "here", models, settings)

    written_in = tmp_path / "written_in"
    written_in.mkdir()
    write = reports.write_similar_cases_sr

    def recorded(result, *args, **kwargs):
        (written_in / str(os.getpid())).touch()  # a file: a worker's memory does not come back
        return write(result, *args, **kwargs)

    monkeypatch.setattr(reports, "write_similar_cases_sr", recorded)
    monkeypatch.setattr(common, "PARALLEL_MIN_STUDIES", 2)
    monkeypatch.setattr(common, "_STAGES_RUN_HERE", {"reports"})  # both queries to the workers
    forked = run_app(app_run["root"] / "input", tmp_path / "forked", models, settings)

    pids = {int(f.name) for f in written_in.iterdir()}
    if len(os.sched_getaffinity(0)) > 1:
        assert pids and os.getpid() not in pids, f"written in {pids}, not in workers"
    assert len(forked["queries"]) == len(in_process["queries"]) == 2
    for here, there in zip(in_process["queries"], forked["queries"]):
        a = read_similar_cases_sr(tmp_path / "here" / here["outputs"]["sr"])
        b = read_similar_cases_sr(tmp_path / "forked" / there["outputs"]["sr"])
        assert [(m.case_id, m.explanation) for m in a.matches] == [(m.case_id, m.explanation) for m in b.matches]
        assert all(m.explanation and "local cosine" in m.explanation for m in b.matches)
        assert [m.score for m in a.matches] == pytest.approx([m.score for m in b.matches], abs=1e-6)
        pages = [len(re.findall(rb"/Type\s*/Page(?!s)", (tmp_path / run / q["outputs"]["pdf"]).read_bytes())) for run, q in (("here", here), ("forked", there))]
        assert pages[0] == pages[1] == 2  # the cases, then one page explaining the 5 matches
        timing = there["timing_ms"]
        assert all(timing[stage] > 0 for stage in ("explain", "sr", "pdf")) and not any(k.startswith("reports") for k in timing), timing

    unlucky = in_process["queries"][1]["query_id"]

    def broken_pdf(result, *args, **kwargs):
        if result.query_id == unlucky:
            raise ValueError("no room on the page")
        return write_report(result, *args, **kwargs)

    write_report = reports.write_report
    monkeypatch.setattr(reports, "write_report", broken_pdf)
    failed = run_app(app_run["root"] / "input", tmp_path / "failed", models, settings)
    problems = json.loads((tmp_path / "failed" / "problems.json").read_text())
    # the query keeps its SR: answered, without a PDF, the PDF's failure in problems.json
    assert [q["query_id"] for q in failed["queries"]] == [q["query_id"] for q in in_process["queries"]]
    assert [sorted(q["outputs"]) for q in failed["queries"]] == [["encapsulated_pdf", "pdf", "sr"], ["sr"]]
    assert [(p["query_id"], p["message"]) for p in problems if p["stage"] == "pdf"] == [(unlucky, "cannot write the PDF report: ValueError: no room on the page")]


@pytest.mark.integration
@pytest.mark.slow
def test_log_says_what_the_app_did_without_library_chatter(app_run, results):
    """At the default level the app's log has a line per study and the run's summary, not highdicom's
    INFO lines for every module it copies into an SR (about ten per study)."""
    proc = app_run["proc"]
    log = proc.stdout + proc.stderr
    assert re.search(r"answered \d+ queries, \d+ problem\(s\)", log), log[-3000:]
    assert "(highdicom" not in log, [line for line in log.splitlines() if "(highdicom" in line][:3]


@pytest.mark.integration
@pytest.mark.slow
def test_patient_and_study_carried_into_outputs(app_run, results):
    _, answers = results
    for name in ("in_library", "held_out"):
        case = app_run["cases"][name]
        source = pydicom.dcmread(case.image_file, stop_before_pixels=True)
        answer = answers[name]
        assert answer["study_uid"] == source.StudyInstanceUID == case.uids.study_uid
        assert answer["sop_instance_uid"] == source.SOPInstanceUID
        record = app_run["library"][3] if name == "in_library" else app_run["held_out"]
        assert answer["text"] == record.text and record.text  # the SR's text became the query text
        for key in ("sr", "encapsulated_pdf"):
            out = pydicom.dcmread(app_run["out"] / answer["outputs"][key])
            for keyword in ("PatientID", "PatientName", "PatientSex", "StudyInstanceUID", "StudyDate", "AccessionNumber"):
                assert str(out.get(keyword, "")) == str(source.get(keyword, "")), f"{key}: {keyword} not carried"
            assert out.SeriesInstanceUID != source.SeriesInstanceUID  # a new series in the same study
            assert out.SOPInstanceUID != source.SOPInstanceUID


@pytest.mark.integration
@pytest.mark.slow
def test_text_without_findings_is_left_out_and_said_so(app_run, results):
    """The in-library query's text is ISIC age / sex only: the findings gate leaves it out of the query,
    and results.json and the SR say so in one line (the clinician knows the answer is image-only). The
    held-out query's text names two findings: it counts for 40% of the query, and the notice says so
    (its ranking is checked against the network's own blended Eq. 9 in test_hits_are_the_models_own_ranking)."""
    from monai_cir.data.report import TEXT_NOT_USED_NOTICE, recognised_findings
    from monai_cir.dicom.sr import read_similar_cases_sr

    _, answers = results
    plain, partial = answers["in_library"], answers["held_out"]
    assert plain["text"] and not recognised_findings(plain["text"])
    assert TEXT_NOT_USED_NOTICE in plain["notices"], plain["notices"]
    assert TEXT_NOT_USED_NOTICE in read_similar_cases_sr(app_run["out"] / plain["outputs"]["sr"]).notices
    assert plain["text_use"] == {"weight": 0.0, "findings_read": []}
    # the held-out text names atypical pigment network and irregular streaks: read, named, 40%
    assert partial["text_use"] == {"weight": 0.4, "findings_read": ["pigment_network", "streaks"]}
    read = ("findings read in the query text: 2 of the 7 checklist findings (atypical pigment network, irregular streaks), so it counted for 40% "
            "of the query and the image alone for the rest; naming more of the findings (present or absent) gives the text more weight; "
            "the same share weighs the diagnosis these findings point to in the order (the diagnosis prior), which can decide the "
            "order even at a small share")  # the release model has a diagnosis prior
    assert TEXT_NOT_USED_NOTICE not in partial["notices"] and read in partial["notices"], partial["notices"]
    assert read in read_similar_cases_sr(app_run["out"] / partial["outputs"]["sr"]).notices


@pytest.mark.integration
@pytest.mark.slow
def test_what_the_image_alone_finds_is_recorded_beside_what_the_text_changed(app_run, results):
    """A query whose text counted gets what its image alone finds (the plain similarity ranking of the same image
    without text, as many cases as shown) in results.json and on the PDF, so a reader who wrote the findings sees
    what they changed; a query whose text did not count gets none."""
    from monai_cir.dicom.reader import read_dicom_folder
    from monai_cir.index import load_index
    from monai_cir.networks import load_model
    from monai_cir.retrieval import search

    from tests.test_dicom_io import pdf_text

    _, answers = results
    assert answers["in_library"]["image_alone"] is None  # its text counted for nothing: the answer is the image's
    answer = answers["held_out"]
    alone = answer["image_alone"]
    net = load_model(app_run["root"] / "models" / "model.pt").eval()
    index = load_index(app_run["root"] / "models" / "index")
    query = read_dicom_folder(app_run["cases"]["held_out"].image_file).queries[0]
    expected = search(net, index, query.image, "", k=len(answer["top_k"]))
    assert alone["case_ids"] == [h.case_id for h in expected] and alone["k"] == len(answer["top_k"])
    counts: dict[str, int] = {}
    for h in expected:
        counts[h.metadata.diagnosis] = counts.get(h.metadata.diagnosis, 0) + 1
    assert alone["counts"] == counts
    assert answer["evidence"]["library"] == index.info()["diagnosis"]  # the vote's base rate, beside it
    listed = ", ".join(f"{d} {n}" for d, n in alone["counts"].items())
    page = " ".join(pdf_text((app_run["out"] / answer["outputs"]["pdf"]).read_bytes())[0].split())
    assert f"Without the text, the image alone finds {listed} among its {alone['k']} most similar cases." in page
    # a notice exactly when the image alone favours another diagnosis than the cases shown (a tie favours none)
    def favoured(c: dict[str, int]) -> str | None:
        top = [d for d, n in c.items() if n == max(c.values())]
        return top[0] if len(top) == 1 else None

    shown: dict[str, int] = {}
    for h in answer["top_k"]:
        shown[h["diagnosis"]] = shown.get(h["diagnosis"], 0) + 1
    moved = [n for n in answer["notices"] if n.startswith("the image alone, without the text, finds")]
    assert len(moved) == (favoured(counts) != favoured(shown))


@pytest.mark.integration
@pytest.mark.slow
def test_bad_study_reported_and_skipped(app_run, results):
    summary, answers = results
    assert answers["corrupt"] is None
    assert len(summary["queries"]) == 2
    problems = json.loads((app_run["out"] / "problems.json").read_text())
    by_path = {Path(p["path"]).name if p.get("path") else None: p for p in problems}
    corrupt_file = str(app_run["cases"]["corrupt"].image_file)
    assert any(p.get("path") == corrupt_file and "pixel data" in p["message"] for p in problems), problems
    assert "junk.txt" in by_path and "not a DICOM file" in by_path["junk.txt"]["message"]
    corrupt_study = app_run["cases"]["corrupt"].uids.study_uid
    written = [pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in app_run["out"].rglob("*.dcm")]
    assert len(written) == 4 and corrupt_study not in written
    log = app_run["proc"].stdout + app_run["proc"].stderr
    assert corrupt_file in log and "junk.txt" in log  # a log line for each


@pytest.mark.integration
@pytest.mark.slow
def test_a_warm_service_searches_the_index_as_it_is_now(app_run, results, tmp_path):
    """`monai-cir serve` answers study after study with one WarmPipeline: a case removed with `monai-cir index remove`
    (consent withdrawn) while it ran was still returned until a restart, though docs/deploy.md says a service never
    searches a stale index. The next study searches the index as it is on disk."""
    from deploy_app.pipeline import WarmPipeline
    from deploy_app.settings import AppSettings
    from monai_cir.cli import main

    models = tmp_path / "models"
    shutil.copytree(app_run["root"] / "models", models)
    pipeline = WarmPipeline(models, AppSettings(explain=False, write_pdf=False))
    query = app_run["cases"]["held_out"].image_file.parent
    first = pipeline.answer(query, tmp_path / "out1").summary["queries"][0]["top_k"]
    removed = first[0]["case_id"]
    assert main(["index", "remove", str(models / "index"), removed]) == 0
    again = pipeline.answer(query, tmp_path / "out2").summary["queries"][0]["top_k"]
    assert removed not in [h["case_id"] for h in again]
    assert len(again) == len(first)  # another case takes its place


@pytest.mark.integration
@pytest.mark.slow
def test_an_input_with_nothing_to_answer_says_so_in_problems_json(app_run, results, tmp_path):
    """An empty input folder (a job started before its study was copied in), or one whose files are all refused,
    ended with an empty problems.json: a run with nothing to answer read as a run with nothing wrong."""
    from deploy_app.app import load_models, run_app
    from deploy_app.settings import AppSettings

    models = load_models(app_run["root"] / "models", device="cpu")
    settings = AppSettings(explain=False, write_pdf=False)
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    (tmp_path / "empty" / ".hidden" / "x.dcm").write_bytes(b"hidden files are not read")
    (tmp_path / "refused").mkdir()
    (tmp_path / "refused" / "notes.txt").write_text("not DICOM")
    for name, expected in (("empty", "the input folder holds no file to read: nothing to answer"),
                           ("refused", "no dermoscopy image answered among the input's 1 file(s)")):
        summary = run_app(tmp_path / name, tmp_path / f"out-{name}", models, settings)
        problems = json.loads((tmp_path / f"out-{name}" / "problems.json").read_text())
        assert summary["queries"] == [] and problems, name
        assert problems[-1]["stage"] == "input" and problems[-1]["message"].startswith(expected), problems
        assert problems[-1]["path"] == str(tmp_path / name)


@pytest.mark.integration
@pytest.mark.slow
def test_published_results_read_back_over_dicomweb(app_run, results):
    if app_run["server"] is None:
        pytest.skip("Orthanc and orthanc-dicomweb are not installed (run scripts/install_system_tools.sh)")
    from dicomweb_client.api import DICOMwebClient

    from monai_cir.dicom.sr import read_similar_cases_sr

    _, answers = results
    client = DICOMwebClient(url=app_run["server"].dicomweb_url)
    for name in ("in_library", "held_out"):
        answer = answers[name]
        assert not answer["published"]["errors"], answer["published"]
        assert len(answer["published"]["stored"]) == 4  # SR + PDF, by C-STORE and STOW-RS
        for key in ("sr", "encapsulated_pdf"):
            local = pydicom.dcmread(app_run["out"] / answer["outputs"][key])
            found = client.search_for_instances(study_instance_uid=answer["study_uid"], search_filters={"SOPInstanceUID": local.SOPInstanceUID})
            assert len(found) == 1, f"{key} of {name} not found by QIDO-RS"
            remote = client.retrieve_instance(answer["study_uid"], local.SeriesInstanceUID, local.SOPInstanceUID)
            assert remote.PatientID == local.PatientID and remote.SOPClassUID == local.SOPClassUID
            if key == "sr":
                a, b = read_similar_cases_sr(local), read_similar_cases_sr(remote)
                assert [(m.rank, m.case_id, m.score, m.sop_instance_uid) for m in a.matches] == [(m.rank, m.case_id, m.score, m.sop_instance_uid) for m in b.matches]
            else:
                assert remote.EncapsulatedDocument == local.EncapsulatedDocument


def _jpeg_stream(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_an_image_no_dermoscope_takes_is_reported_not_squeezed_square(tmp_path):
    """Found by review: a 6000 x 40 image passed the size check (its short side), was downscaled to 2048 x 14 and
    squeezed square for the model, answered with a "downscaled" notice only. Sides beyond 4:1 are reported."""
    _image(tmp_path, "strip", pixels=_lesion(h=40, w=400))
    _image(tmp_path, "wide", pixels=_lesion(h=100, w=400))  # 4:1, a wide dermoscopy frame: answered
    scan, problems = _scan(tmp_path)
    assert "sides differ more than 4:1" in problems["strip"] and "not answered" in problems["strip"]
    assert [Path(q.source_path).stem for q in scan.queries] == ["wide"]


def test_multi_frame_instances_whose_frames_and_header_disagree_or_whose_first_frame_is_blank(tmp_path):
    """Found by review: a blank frame 1 dropped the instance though frames 2-3 hold the lesion (never looked at); a JPEG
    instance whose Number of Frames says 3 and holds 1 was answered ("frames 2-3 ignored"); one that says 1 and holds 3
    answered frame 1 without a word; native pixels of 3 frames under Number of Frames 1 gave an internal shape error."""
    from pydicom.encaps import encapsulate

    lesion, blank = _lesion(seed=2), np.full((120, 160, 3), 128, np.uint8)
    for name, streams, frames in (("blank_first", [blank, lesion, lesion], 3), ("says_3_holds_1", [lesion], 3), ("says_1_holds_3", [lesion, lesion, lesion], 1)):
        ds = _image(tmp_path, name, jpeg=True)
        ds.PixelData = encapsulate([_jpeg_stream(p) for p in streams])
        ds["PixelData"].VR = "OB"
        ds.NumberOfFrames = frames
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
    native = _image(tmp_path, "native_says_1_holds_3")
    native.PixelData = np.stack([lesion] * 3).tobytes()
    native.save_as(tmp_path / "native_says_1_holds_3.dcm", enforce_file_format=True)
    every_blank = _image(tmp_path, "every_frame_blank", jpeg=True)
    every_blank.PixelData = encapsulate([_jpeg_stream(blank)] * 2)
    every_blank["PixelData"].VR = "OB"
    every_blank.NumberOfFrames = 2
    every_blank.save_as(tmp_path / "every_frame_blank.dcm", enforce_file_format=True)

    scan, problems = _scan(tmp_path)
    answered = {Path(q.source_path).stem: q for q in scan.queries}
    assert set(answered) == {"blank_first"} and answered["blank_first"].frame_number == 2
    assert "multi-frame instance: frame 2 of 3 used (frame 1 is blank), the others ignored" in answered["blank_first"].notices
    assert "Pixel Data holds 1 JPEG frame(s), Number of Frames (0028,0008) says 3" in problems["says_3_holds_1"]
    assert "Pixel Data holds 3 JPEG frame(s), Number of Frames (0028,0008) says 1" in problems["says_1_holds_3"]
    assert "Pixel Data holds 3 frame(s), Number of Frames (0028,0008) says 1" in problems["native_says_1_holds_3"]
    assert "frame 1 is blank (every frame is)" in problems["every_frame_blank"]


def test_one_uid_on_the_same_bytes_read_as_another_picture_is_a_collision(tmp_path):
    """Found by review: two files with one SOP Instance UID and the same pixel bytes but Rows / Columns swapped (or RGB
    against YBR_FULL) are two pictures; the reader kept the first as "received 2 times: answered once"."""
    first = _image(tmp_path / "geometry", "a", pixels=_lesion(h=120, w=160))
    second = pydicom.dcmread(tmp_path / "geometry" / "a.dcm")
    second.Rows, second.Columns = first.Columns, first.Rows
    second.save_as(tmp_path / "geometry" / "b.dcm", enforce_file_format=True)
    scan, problems = _scan(tmp_path / "geometry")
    assert not scan.queries and all("a UID collision upstream" in m for m in problems.values()) and len(problems) == 2
    assert all("the same pixels read as another picture" in m for m in problems.values())
    # found by review of the check: one instance sent twice in two native encodings (Implicit / Explicit VR Little
    # Endian, Planar Configuration absent / 0) is the same instance, answered once
    again = pydicom.dcmread(tmp_path / "geometry" / "a.dcm")
    (tmp_path / "encodings").mkdir()
    again.save_as(tmp_path / "encodings" / "explicit.dcm", enforce_file_format=True)
    again.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    del again.PlanarConfiguration
    again.save_as(tmp_path / "encodings" / "implicit.dcm", enforce_file_format=True, implicit_vr=True, little_endian=True)
    scan, problems = _scan(tmp_path / "encodings")
    assert len(scan.queries) == 1 and problems == {}


def test_a_palette_colour_image_keeps_the_colours_its_table_gives(tmp_path):
    """Found by review: a 16-bit colour table's output was stretched by the image's own range (mean red 168 where a
    viewer shows 103): entries are scaled by the table's bit depth."""
    index = _lesion(seed=5).mean(-1).astype(np.uint8)
    ds = _image(tmp_path, "palette")
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "PALETTE COLOR", 1
    del ds.PlanarConfiguration
    ds.PixelData = index.tobytes()
    table = np.stack([np.arange(256) * 257, np.arange(256) // 2 * 257, np.arange(256) // 4 * 257], -1).astype(np.uint16)
    for i, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table[:, i].tobytes())
    ds.save_as(tmp_path / "palette.dcm", enforce_file_format=True)
    scan, problems = _scan(tmp_path)
    assert problems == {} and len(scan.queries) == 1
    expected = (table[index] / 257).round().astype(np.uint8)
    assert np.abs(scan.queries[0].image.astype(int) - expected).max() <= 1


def test_a_larger_image_than_the_app_decodes_is_reported_and_a_large_jpeg_is_read_reduced(tmp_path, monkeypatch):
    """Found by review: Pillow refused a colour JPEG frame over ~179 Mpx (its decompression-bomb guard) and the reader
    fell back to pydicom's full-size decode (a 20000 x 15000 frame: 47 s, 7.8 GB: a process killed for memory stops the
    batch). The reader's own ceilings hold instead: a larger image is reported, a large JPEG read at a reduced scale."""
    from PIL import Image

    from monai_cir.dicom import reader

    _image(tmp_path / "big", "uncompressed", pixels=_lesion(h=300, w=400))
    monkeypatch.setattr(reader, "MAX_DECODED_PIXELS", 100_000)  # 300 x 400 = 120,000 pixels
    scan, problems = _scan(tmp_path / "big")
    assert not scan.queries and "larger than the app decodes" in problems["uncompressed"]

    (tmp_path / "jpeg").mkdir()
    _image(tmp_path / "jpeg", "large", pixels=_lesion(h=600, w=800), jpeg=True)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # Pillow's guard, as for a 179 Mpx frame: 480,000 > twice it
    monkeypatch.setattr(reader, "_to_rgb_frames", lambda *a: pytest.fail("decoded at full size by pydicom"))
    scan, problems = _scan(tmp_path / "jpeg")
    assert problems == {} and len(scan.queries) == 1 and Image.MAX_IMAGE_PIXELS == 100_000
    # found by review of the ceiling: a large JPEG the reduced-scale path cannot read is not decoded whole either
    monkeypatch.setattr(reader, "_pillow_baseline_frames", lambda *a: None)
    scan, problems = _scan(tmp_path / "jpeg")
    assert not scan.queries and "more than the app decodes whole" in problems["large"]
