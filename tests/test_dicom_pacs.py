"""A real PACS: Orthanc on loopback; C-STORE dicomized studies and the answers, read back over
DICOMweb (QIDO to find, WADO to retrieve), unchanged."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pydicom
import pytest

try:
    from tests.orthanc import orthanc_server
except ImportError:  # pytest's rootdir-less import mode
    from orthanc import orthanc_server  # type: ignore[no-redef]  # noqa: F401

pytestmark = [pytest.mark.pacs, pytest.mark.slow]


def _retrieve(client, ds):
    # transfer-syntax=* : the stored bytes, no transcoding by the server
    return client.retrieve_instance(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=(("application/dicom", "*"),)
    )


def test_store_and_read_back_over_dicomweb(orthanc_server, shared_data, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    from monai_cir.data.collections import load_collection
    from monai_cir.dicom.dicomize import dicomize_records
    from monai_cir.dicom.publish import c_store, stow_rs
    from monai_cir.dicom.reader import read_dicom_folder
    from monai_cir.dicom.report_pdf import similar_cases_pdf
    from monai_cir.dicom.sr import read_similar_cases_sr, similar_cases_sr

    done, failed = dicomize_records(load_collection("isic-uda1")[:3], tmp_path / "studies", progress=False)
    assert not failed
    scan = read_dicom_folder(tmp_path / "studies")
    query, library = scan.queries[0], scan.queries[1:]
    hits = [
        NS(rank=i, case_id=q.case_id, score=1.0 - i / 10, metadata=NS(diagnosis=q.diagnosis, study_uid=q.study_uid, series_uid=q.series_uid,
           sop_instance_uid=q.sop_instance_uid, sop_class_uid=q.sop_class_uid, collection=q.collection, site=q.site))
        for i, q in enumerate(library, 1)
    ]
    answer = similar_cases_sr(query, hits)
    pdf = similar_cases_pdf(query, hits)

    files = [c.image_file for c in done] + [c.sr_file for c in done]
    results = c_store(files + [answer], orthanc_server.node)
    assert all(r.ok for r in results), results
    # the PDF over STOW-RS (the other publishing path)
    assert all(r.ok for r in stow_rs([pdf], orthanc_server.dicomweb_url))

    client = DICOMwebClient(orthanc_server.dicomweb_url)
    originals = [pydicom.dcmread(f) for f in files] + [answer, pdf]
    for original in originals:
        found = client.search_for_instances(study_instance_uid=original.StudyInstanceUID)
        uids = {pydicom.Dataset.from_json(item).SOPInstanceUID for item in found}
        assert original.SOPInstanceUID in uids
        try:
            back = _retrieve(client, original)
        except Exception as err:
            raise AssertionError(f"WADO of {original.SOPClassUID.name}: {err}") from err
        assert back.SOPInstanceUID == original.SOPInstanceUID and back.SOPClassUID == original.SOPClassUID
        if "PixelData" in original:
            assert str(back.file_meta.TransferSyntaxUID) == str(original.file_meta.TransferSyntaxUID)
            assert back.PixelData == original.PixelData  # same bytes (JPEG stream untouched)
        if "ContentSequence" in original:
            assert back.ContentSequence == original.ContentSequence
        if "EncapsulatedDocument" in original:
            assert back.EncapsulatedDocument == original.EncapsulatedDocument

    report = read_similar_cases_sr(_retrieve(client, answer))
    assert [(m.rank, m.sop_instance_uid) for m in report.matches] == [(h.rank, h.metadata.sop_instance_uid) for h in hits]


# ---------------------------------------------------------------------------------------------
# The hospital loop: Orthanc routes stable dermoscopy studies (Lua OnStableStudy) to the service,
# which answers them with the app's operators and C-STOREs the SR and PDF back into the study.
# ---------------------------------------------------------------------------------------------
def _referenced_uids(items) -> list[str]:
    uids = []
    for item in items:
        for ref in item.get("ReferencedSOPSequence", []):
            uids.append(str(ref.ReferencedSOPInstanceUID))
        uids.extend(_referenced_uids(item.get("ContentSequence", [])))
    return uids


@pytest.fixture(scope="module")
def hospital(tmp_path_factory, shared_data):
    """Orthanc (with the routing script) holding 8 library cases, MODELS indexed from it over
    DICOMweb, the service (real offline model, warm), and three query studies (one corrupt)."""
    from pydicom.encaps import encapsulate

    from deploy_app.settings import AppSettings
    from monai_cir.data.collections import load_collection
    from monai_cir.dicom.dicomize import dicomize_record

    try:
        from tests.hospital import HospitalLoop, as_query_study
        from tests.orthanc import orthanc_available
    except ImportError:
        from hospital import HospitalLoop, as_query_study  # type: ignore[no-redef]
        from orthanc import orthanc_available  # type: ignore[no-redef]

    if not orthanc_available():
        pytest.fail("Orthanc and orthanc-dicomweb are not installed: run scripts/install_system_tools.sh")
    root = tmp_path_factory.mktemp("hospital")
    records = load_collection("isic-uda1", root=shared_data)
    # Orthanc forwards a stable study one association per instance; on a loaded 2-core machine two of them
    # came 0.56 s apart, so a quiet time of 0.5 s ran a study on its SR alone (then again, answered, once the
    # image came): 1.5 s leaves room for that (the service's default is 2 s)
    with HospitalLoop(root, records[:8], stable_age=1, quiet_s=1.5, app_settings=AppSettings(top_k=3, explain=False)) as loop:
        queries = {}
        for name, record in (("first", records[8]), ("second", records[9]), ("corrupt", records[10])):
            case = dicomize_record(record, root / "made" / name, include_diagnosis=False)
            queries[name] = as_query_study(case, root / "queries" / name)
        bad = pydicom.dcmread(queries["corrupt"][0])
        bad.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + bytes(range(256)) * 4 + b"\xff\xd9"])
        bad.save_as(queries["corrupt"][0], enforce_file_format=True)
        yield loop, queries


@pytest.mark.integration  # the real offline model and real ISIC images
def test_storescu_into_orthanc_comes_back_with_similar_cases(hospital):
    import json
    import time
    import urllib.request

    from dicomweb_client.api import DICOMwebClient

    loop, queries = hospital
    server, service = loop.server, loop.service
    client = DICOMwebClient(server.dicomweb_url)
    study = {name: str(pydicom.dcmread(files[0]).StudyInstanceUID) for name, files in queries.items()}
    sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for files in queries.values() for f in files}
    # the first study, then a corrupt one and a second while the first is being answered
    server.storescu(queries["first"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (service.status(study["first"]) or {}).get("state") not in ("processing", "returned"):
        time.sleep(0.05)
    server.storescu(queries["corrupt"])
    server.storescu(queries["second"])

    answers = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(answers) < 2:
        for name in ("first", "second"):
            found = loop.answers(client, study[name], sent)
            if set(found) >= {"1.2.840.10008.5.1.4.1.1.104.1"} and len(found) == 2:  # the SR and the Encapsulated PDF, by QIDO-RS, in the query's study
                answers[name] = found
        time.sleep(0.2)
    assert set(answers) == {"first", "second"}, f"statuses: {service.statuses()}\nOrthanc log:\n{server.log_tail()}"

    library_uids = loop.library_uids()
    for name, found in answers.items():
        sr_meta = next(ds for uid, ds in found.items() if uid != "1.2.840.10008.5.1.4.1.1.104.1")
        sr = _retrieve(client, sr_meta)
        references = [uid for uid in _referenced_uids(sr.ContentSequence) if uid in library_uids]
        assert len(references) == 3, (name, _referenced_uids(sr.ContentSequence))
        for uid in references:  # each reference resolves to the library instance in the PACS
            hit = client.search_for_instances(search_filters={"SOPInstanceUID": uid})
            assert len(hit) == 1
            instance = _retrieve(client, pydicom.Dataset.from_json(hit[0]))
            assert str(instance.SOPInstanceUID) == uid and str(instance.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.77.1.7"
    # the index built from the PACS over DICOMweb keeps, per case, the UIDs and the WADO-RS URL
    from monai_cir.index import load_index

    index = load_index(loop.models / "index")
    case = index.get(index.case_ids()[0])
    assert case.collection == "isic-uda1" and case.sop_instance_uid in library_uids
    assert case.retrieve_url == f"{server.dicomweb_url}/studies/{case.study_uid}/series/{case.series_uid}/instances/{case.sop_instance_uid}"
    assert _retrieve(client, pydicom.Dataset.from_json(client.search_for_instances(search_filters={"SOPInstanceUID": case.sop_instance_uid})[0])).SOPInstanceUID == case.sop_instance_uid
    corrupt = service.status(study["corrupt"])
    assert corrupt is not None and corrupt["state"] == "failed" and corrupt["error"], service.statuses()
    assert loop.answers(client, study["corrupt"], sent) == {}
    # answered once: the answer stored into the study does not send the study round again
    # (Orthanc's StableAge 1 s + the service's quiet time 1.5 s + an answer take well under 8 s)
    time.sleep(8)
    assert sorted(loop.answered) == sorted(study.values()), service.statuses()

    with urllib.request.urlopen(f"{server.http_url}/jobs?expand", timeout=10) as response:
        forwards = [job for job in json.load(response) if job.get("Type") == "DicomModalityStore"]
    assert len(forwards) == 3, [job.get("Content") for job in forwards]  # the three query studies, once each (not the library)
    assert len(loop.answers(client, study["first"], sent)) == 2


def test_index_add_over_dicomweb_equals_a_fresh_build(orthanc_server, shared_data, tmp_path, capsys):
    """`monai-cir index add --dicomweb`: the library grows in the PACS; the index takes the new studies
    without re-embedding the ones it has, keeps their UIDs and WADO-RS URL, and equals a fresh build."""
    import warnings

    import numpy as np

    from monai_cir.cli import main
    from monai_cir.data.collections import load_collection
    from monai_cir.dicom.dicomize import dicomize_record
    from monai_cir.index import load_index
    from monai_cir.networks import load_model, save_checkpoint

    url = orthanc_server.dicomweb_url
    # a collection of its own (StudyDescription "monai-cir case add-test"): other tests store into the same Orthanc
    records = [NS(**{**vars(r), "collection": "add-test"}) for r in load_collection("isic-uda1", root=shared_data)[:5]]
    cases = [dicomize_record(r, tmp_path / "library") for r in records]
    model = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        save_checkpoint(load_model(None), model, note="untrained offline default (index add test)")
    source = ["--dicomweb", url, "--filter", "StudyDescription=monai-cir case add-test", "--model", str(model)]

    orthanc_server.storescu([f for c in cases[:3] for f in (c.image_file, c.sr_file)])
    assert main(["index", "build", *source, "--pull-to", str(tmp_path / "pulled"), "--out", str(tmp_path / "grown")]) == 0
    before = load_index(tmp_path / "grown")
    assert sorted(before.case_ids()) == sorted(r.case_id for r in records[:3])
    kept = {cid: np.array(before.vectors()[i]) for i, cid in enumerate(before.case_ids())}

    orthanc_server.storescu([f for c in cases[3:] for f in (c.image_file, c.sr_file)])
    capsys.readouterr()
    assert main(["index", "add", str(tmp_path / "grown"), *source, "--pull-to", str(tmp_path / "pulled")]) == 0
    assert "added 2 cases" in capsys.readouterr().out  # the three already there are not embedded again
    grown = load_index(tmp_path / "grown")
    assert sorted(grown.case_ids()) == sorted(r.case_id for r in records)
    for cid, vector in kept.items():
        assert np.array_equal(grown.vectors()[grown.case_ids().index(cid)], vector)
    for case in cases[3:]:
        meta = grown.get(case.case_id)
        image = pydicom.dcmread(case.image_file, stop_before_pixels=True)
        assert (meta.study_uid, meta.series_uid, meta.sop_instance_uid) == (image.StudyInstanceUID, image.SeriesInstanceUID, image.SOPInstanceUID)
        assert meta.retrieve_url == f"{url}/studies/{meta.study_uid}/series/{meta.series_uid}/instances/{meta.sop_instance_uid}"
        assert meta.collection == "add-test" and meta.diagnosis == next(r.diagnosis for r in records if r.case_id == case.case_id)

    # the same as building it in one go from the PACS as it is now
    assert main(["index", "build", *source, "--out", str(tmp_path / "fresh")]) == 0
    fresh = load_index(tmp_path / "fresh")
    assert sorted(fresh.case_ids()) == sorted(grown.case_ids())
    for cid in fresh.case_ids():
        a, b = fresh.get(cid), grown.get(cid)
        assert (a.study_uid, a.sop_instance_uid, a.retrieve_url, a.diagnosis, a.confirmation) == (b.study_uid, b.sop_instance_uid, b.retrieve_url, b.diagnosis, b.confirmation)
        np.testing.assert_allclose(fresh.vectors()[fresh.case_ids().index(cid)], grown.vectors()[grown.case_ids().index(cid)], atol=1e-5)
    queries = np.array(fresh.vectors()[:2])
    assert [[h.case_id for h in hits] for hits in fresh.search(queries, k=5)] == [[h.case_id for h in hits] for hits in grown.search(queries, k=5)]
