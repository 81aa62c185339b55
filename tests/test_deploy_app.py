"""End to end: the MONAI Deploy app run as a subprocess on several DICOM studies.

One app run (the SDK import costs ~20 s) answers every case of this module:

- ``in_library``: an ISIC case whose own image is in the library -> that case at rank 1;
- ``held_out``: an ISIC case not in the library (the demo's situation);
- ``corrupt``: a study whose image has a corrupt JPEG stream -> reported and skipped;
- ``junk.txt``: not DICOM -> reported and skipped;

and, when Orthanc is installed, publishes the results to it by C-STORE and STOW-RS; the test
reads them back over DICOMweb (QIDO-RS + WADO-RS).
"""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests.orthanc import OrthancServer, orthanc_available

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
LIBRARY_SIZE = 12


def _dciodvfy_errors(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy (Debian dicom3tools) is missing: run scripts/install_system_tools.sh")
    out = subprocess.run([tool, str(path)], check=False, capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


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
    for record in library_records:
        dicomize_record(record, root / "library")
    assert index_dicom_library(root / "library", root / "models") == LIBRARY_SIZE

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


def test_ranks_in_score_order_and_sr_round_trip(app_run, results):
    from monai_cir.dicom.sr import read_similar_cases_sr

    _, answers = results
    for name in ("in_library", "held_out"):
        top = answers[name]["top_k"]
        assert [h["rank"] for h in top] == list(range(1, 6))
        scores = [h["score"] for h in top]
        assert scores == sorted(scores, reverse=True)
        assert {h["case_id"] for h in top} <= {r.case_id for r in app_run["library"]}
        report = read_similar_cases_sr(app_run["out"] / answers[name]["outputs"]["sr"])
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
        # every match is explained (library images are reachable here): SR text and one PDF page each
        assert all(m.explanation and "local cosine" in m.explanation for m in report.matches)
        pdf = (app_run["out"] / answers[name]["outputs"]["pdf"]).read_bytes()
        assert len(re.findall(rb"/Type\s*/Page(?!s)", pdf)) >= 1 + len(top)


def test_own_image_is_rank_one(app_run, results):
    _, answers = results
    top = answers["in_library"]["top_k"]
    assert top[0]["case_id"] == app_run["library"][3].case_id
    assert top[0]["score"] > top[1]["score"]
    assert app_run["held_out"].case_id not in {h["case_id"] for h in answers["held_out"]["top_k"]}


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
