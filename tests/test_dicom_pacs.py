"""A real PACS: Orthanc on loopback; C-STORE dicomized studies and the answers, read back over
DICOMweb (QIDO to find, WADO to retrieve), unchanged."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pydicom
import pytest

from conftest import SCORE_RANGE

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
    answer = similar_cases_sr(query, hits, score_range=SCORE_RANGE)
    pdf = similar_cases_pdf(query, hits, score_range=SCORE_RANGE)

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
    import time

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

    # the three query studies, once each (not the library, not the answers): one job each, its instances the study's
    forwards = {}
    for job in _store_jobs(server).values():
        studies = {_rest(server, f"/instances/{i}/study")["MainDicomTags"]["StudyInstanceUID"] for i in job["Content"]["ParentResources"]}
        assert len(studies) == 1, job["Content"]
        forwards.setdefault(studies.pop(), []).append(sorted(job["Content"]["ParentResources"]))
    assert forwards == {study[name]: [sorted(_orthanc_id(server, _sop_uid(f)) for f in files)] for name, files in queries.items()}, forwards
    assert len(loop.answers(client, study["first"], sent)) == 2


# ---------------------------------------------------------------------------------------------
# The routing script, per instance: an image added to an answered study is forwarded alone and
# answered; the service's answers are never forwarded, whichever way they came back (C-STORE or
# STOW-RS); a forward that failed goes again with the study's next one.
# ---------------------------------------------------------------------------------------------
def _rest(server, path: str, method: str = "GET", body=None):
    import json
    import urllib.request

    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(server.http_url + path, data=data, method=method), timeout=10) as response:
        text = response.read()
    return json.loads(text) if text.strip() else None


def _store_jobs(server) -> dict[str, dict]:
    """Orthanc's store jobs to a modality (what the routing script submits), by job ID, oldest first."""
    jobs = sorted((job for job in _rest(server, "/jobs?expand") if job.get("Type") == "DicomModalityStore"), key=lambda job: job["CreationTime"])
    return {job["ID"]: job for job in jobs}


def _orthanc_id(server, uid: str, level: str = "Instance") -> str:
    return next(hit["ID"] for hit in _rest(server, "/tools/lookup", "POST", uid.encode()) if hit["Type"] == level)


def _sop_uid(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _settled(server, study_uid: str, timeout: float = 30.0) -> None:
    """Wait until Orthanc calls the study stable, and for the script's forward (if any) to be submitted."""
    import time

    study_id = _orthanc_id(server, study_uid, "Study")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not _rest(server, f"/studies/{study_id}").get("IsStable"):
        time.sleep(0.1)
    time.sleep(1.5)


def _wait(condition, timeout: float, what: str):
    from conftest import wait_for

    return wait_for(condition, timeout, what, every=0.2)  # each poll asks Orthanc's REST API


def _orthanc_refusing_the_service(root, modalities: bool):
    """An Orthanc of its own with the routing script, whose service is a closed port (connections refused):
    declared as the ``monaicir`` modality when ``modalities``, else not declared; and that port."""
    import socket

    from monai_cir.service import orthanc_lua

    try:
        from tests.orthanc import OrthancServer, orthanc_available
    except ImportError:
        from orthanc import OrthancServer, orthanc_available  # type: ignore[no-redef]

    if not orthanc_available():
        pytest.skip("Orthanc and orthanc-dicomweb are not installed (run scripts/install_system_tools.sh)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        down = sock.getsockname()[1]  # closed again: connections are refused
    declared = {"monaicir": ["MONAICIR", "127.0.0.1", down]} if modalities else {}
    return OrthancServer(root / "orthanc", modalities=declared, lua=orthanc_lua(), stable_age=1), down


def _answer_srs(client, study_uid: str, sent: set[str]) -> list:
    """The similar-cases SRs in the study (retrieved), oldest first."""
    found = [pydicom.Dataset.from_json(item) for item in client.search_for_instances(study_instance_uid=study_uid)]
    srs = [_retrieve(client, ds) for ds in found if str(ds.SOPInstanceUID) not in sent and str(ds.SOPClassUID).startswith("1.2.840.10008.5.1.4.1.1.88.")]
    return sorted(srs, key=lambda sr: (str(sr.get("ContentDate", "")), str(sr.get("ContentTime", ""))))


def _evidence(sr) -> set[str]:
    """The SOP Instance UIDs an SR lists as its evidence (the query's instances)."""
    return {str(ref.ReferencedSOPInstanceUID) for study in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}


def _query(root, record, name: str) -> list:
    from monai_cir.dicom.dicomize import dicomize_record

    try:
        from tests.hospital import as_query_study
    except ImportError:
        from hospital import as_query_study  # type: ignore[no-redef]
    return as_query_study(dicomize_record(record, root / "made" / name, include_diagnosis=False), root / "queries" / name)


def _image_into(root, record, study, name: str):
    """A dermoscopy image of ``record`` taken later in the same patient's ``study`` (a new series)."""
    from monai_cir.dicom.dicomize import dicomize_record

    ds = pydicom.dcmread(dicomize_record(record, root / "made" / name, include_diagnosis=False).image_file)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription"):
        if keyword in study:
            setattr(ds, keyword, study[keyword].value)
    ds.InstanceNumber = 2
    out = root / "queries" / name / "image.dcm"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_the_routing_script_knows_the_services_answers_and_classes(shared_data, tmp_path):
    """The script's constants are what the service writes and takes: its similar-cases SR has the
    Manufacturer, Model Name and title the script looks for, a query's case SR has not; its SOP classes
    are the service's. ``orthanc_lua`` fills in the modality, AE title and mark."""
    import re

    from monai_cir.data.collections import load_collection
    from monai_cir.dicom.dicomize import dicomize_records
    from monai_cir.dicom.reader import read_dicom_folder
    from monai_cir.dicom.sr import similar_cases_sr
    from monai_cir.service import ORTHANC_LUA, SUPPORTED_SOP_CLASSES, orthanc_lua

    text = ORTHANC_LUA.read_text()
    constant = {name: value for name, value in re.findall(r"^local (\w+) = '([^']*)'", text, re.M)}
    classes = set(re.findall(r"\['([0-9.]+)'\] = true", text))
    assert classes == set(SUPPORTED_SOP_CLASSES)

    done, _ = dicomize_records(load_collection("isic-uda1", root=shared_data)[:2], tmp_path, progress=False)
    scan = read_dicom_folder(tmp_path)
    query, case = scan.queries[0], scan.queries[1]
    hit = NS(rank=1, case_id=case.case_id, score=0.9, metadata=NS(diagnosis=case.diagnosis, study_uid=case.study_uid, series_uid=case.series_uid,
             sop_instance_uid=case.sop_instance_uid, sop_class_uid=case.sop_class_uid, collection=case.collection, site=case.site))

    def is_answer(ds) -> bool:  # IsAnswerSR
        return (str(ds.get("Manufacturer", "")), str(ds.get("ManufacturerModelName", "")), str(ds.ConceptNameCodeSequence[0].CodeValue)) == \
            (constant["MANUFACTURER"], constant["MODEL_NAME"], constant["ANSWER_TITLE"])

    answer = similar_cases_sr(query, [hit], score_range=SCORE_RANGE)
    assert str(answer.SOPClassUID) in classes and is_answer(answer)
    assert not any(is_answer(pydicom.dcmread(c.sr_file)) for c in done)  # a query's text: forwarded

    filled = orthanc_lua("pacs-x", "SVCAE", mark=5000)
    assert "local TARGET = 'pacs-x'" in filled and "local SERVICE_AET = 'SVCAE'" in filled and "local MARK = '5000'" in filled
    assert orthanc_lua() == text
    for bad in ({"target": "x'y"}, {"service_aet": ""}, {"mark": 1023}):
        with pytest.raises(ValueError):
            orthanc_lua(**bad)


@pytest.mark.integration  # the real offline model and real ISIC images
def test_an_image_added_to_an_answered_study_is_forwarded_alone_and_answered(hospital, shared_data):
    from dicomweb_client.api import DICOMwebClient

    from monai_cir.data.collections import load_collection

    loop, _ = hospital
    server, service = loop.server, loop.service
    client = DICOMwebClient(server.dicomweb_url)
    records = load_collection("isic-uda1", root=shared_data)
    files = _query(loop.root, records[11], "answered-then-added")
    study = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid, first_image = str(study.StudyInstanceUID), str(study.SOPInstanceUID)
    added = _image_into(loop.root, records[12], study, "added-later")
    sent = {_sop_uid(f) for f in files}
    before = set(_store_jobs(server))

    server.storescu(files)
    _wait(lambda: len(_answer_srs(client, study_uid, sent)) == 1, 120, f"the first answer; statuses: {service.status(study_uid)}")
    _settled(server, study_uid)  # the answer made the study stable again: nothing to send
    jobs = [job for job_id, job in _store_jobs(server).items() if job_id not in before]
    assert [sorted(job["Content"]["ParentResources"]) for job in jobs] == [sorted(_orthanc_id(server, uid) for uid in sent)], jobs
    answered_rounds = len(service.status(study_uid)["rounds"])

    # a second image of the same study, a few minutes later
    server.storescu([added])
    sent.add(_sop_uid(added))
    _wait(lambda: len((service.status(study_uid) or {}).get("rounds", [])) > answered_rounds
          and service.status(study_uid)["state"] == "returned", 120, "the added image's round")
    _settled(server, study_uid)
    jobs = [job for job_id, job in _store_jobs(server).items() if job_id not in before]
    assert len(jobs) == 2, [job["Content"] for job in jobs]
    assert sorted(jobs[-1]["Content"]["ParentResources"]) == [_orthanc_id(server, _sop_uid(added))]  # it alone
    status = service.status(study_uid)
    assert status["instances"] == 3, status  # the first image and its SR were not sent again
    assert [(r["state"], r["new_instances"]) for r in status["rounds"][answered_rounds:]] == [("returned", 1)], status["rounds"]
    srs = _answer_srs(client, study_uid, sent)
    # one answer per image: the added image's, and the first image's from the first round (its text did not change,
    # so the added image's round did not return it again: the round lists it as unchanged)
    assert sorted(sorted(_evidence(sr)) for sr in srs) == sorted([[first_image], [_sop_uid(added)]]), [_evidence(sr) for sr in srs]
    assert status["rounds"][-1]["unchanged"] == [first_image], status["rounds"][-1]


@pytest.mark.integration  # the real offline model and real ISIC images
def test_answers_returned_over_stow_rs_are_not_forwarded_again(hospital, shared_data, tmp_path):
    """``--return-dicomweb``: the answer comes back with no RemoteAET; the script still knows it for the
    service's (its DICOM attributes), so the answered study is not sent round again."""
    import socket

    from dicomweb_client.api import DICOMwebClient

    from monai_cir.data.collections import load_collection
    from monai_cir.service import DicomService

    loop, _ = hospital
    server = loop.server
    client = DICOMwebClient(server.dicomweb_url)
    files = _query(loop.root, load_collection("isic-uda1", root=shared_data)[13], "stow")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    sent = {_sop_uid(f) for f in files}
    answered = []

    def answer(input_folder, output_folder):
        answered.append(input_folder.name)
        return loop.pipeline.answer(input_folder, output_folder)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    service = DicomService(answer, tmp_path / "spool", port=port, peers=[server.ae_title], return_dicomweb=server.dicomweb_url, quiet_s=1.5, retry_s=2)
    original = _rest(server, "/modalities?expand")["monaicir"]
    service.start()
    try:  # the script's modality is this service for the test
        _rest(server, "/modalities/monaicir", "PUT", {"AET": "MONAICIR", "Host": "127.0.0.1", "Port": port})
        before = set(_store_jobs(server))
        server.storescu(files)
        found = _wait(lambda: (a := loop.answers(client, study_uid, sent)) and len(a) == 2 and a, 120,
                      f"the answer over STOW-RS; status: {service.status(study_uid)}")
        for ds in found.values():  # what the RemoteAET rule looks at is not there (Orthanc writes it empty)
            assert not _rest(server, f"/instances/{_orthanc_id(server, str(ds.SOPInstanceUID))}/metadata?expand").get("RemoteAET")
        _settled(server, study_uid)  # the answer made the study stable again
        jobs = [job for job_id, job in _store_jobs(server).items() if job_id not in before]
        assert [sorted(job["Content"]["ParentResources"]) for job in jobs] == [sorted(_orthanc_id(server, uid) for uid in sent)], \
            f"{[job['Content'] for job in jobs]}\nOrthanc log:\n{server.log_tail()}"
        assert answered == [study_uid] and len(service.status(study_uid)["rounds"]) == 1, service.status(study_uid)
        assert len(loop.answers(client, study_uid, sent)) == 2
    finally:
        _rest(server, "/modalities/monaicir", "PUT", {k: original[k] for k in ("AET", "Host", "Port")})
        service.stop()


def test_a_forward_that_failed_goes_with_the_studys_next_one(shared_data, tmp_path):
    """The service down: the store job fails, the script clears its marks, and the study's next forward
    sends those instances again with the new one (no model: nothing listens at the service's port)."""
    from monai_cir.data.collections import load_collection

    orthanc, _ = _orthanc_refusing_the_service(tmp_path, modalities=True)
    records = load_collection("isic-uda1", root=shared_data)
    files = _query(tmp_path, records[14], "down")
    study = pydicom.dcmread(files[0], stop_before_pixels=True)
    added = _image_into(tmp_path, records[15], study, "down-added")
    with orthanc as server:
        def failed_jobs(count):
            jobs = list(_store_jobs(server).values())
            return len(jobs) == count and all(job["State"] == "Failure" for job in jobs) and jobs

        server.storescu(files)
        first = _wait(lambda: failed_jobs(1), 30, "the first forward to fail")
        ids = sorted(_orthanc_id(server, _sop_uid(f)) for f in files)
        assert sorted(first[0]["Content"]["ParentResources"]) == ids
        _wait(lambda: all("4711" not in _rest(server, f"/instances/{i}/metadata?expand") for i in ids), 10, "the marks to be cleared")

        server.storescu([added])
        jobs = _wait(lambda: failed_jobs(2), 30, "the next forward")
        assert sorted(jobs[-1]["Content"]["ParentResources"]) == sorted([*ids, _orthanc_id(server, _sop_uid(added))]), server.log_tail()


def test_a_forward_that_made_no_job_is_not_lost(shared_data, tmp_path):
    """The service's modality missing from DicomModalities: Orthanc refuses the store request, no job is made (so no
    OnJobFailure comes), and the script unmarks the instances itself; once the modality is declared, the study's next
    forward sends them with the new one."""
    from monai_cir.data.collections import load_collection

    orthanc, down = _orthanc_refusing_the_service(tmp_path, modalities=False)
    records = load_collection("isic-uda1", root=shared_data)
    files = _query(tmp_path, records[16], "no-modality")
    study = pydicom.dcmread(files[0], stop_before_pixels=True)
    added = _image_into(tmp_path, records[17], study, "no-modality-added")
    with orthanc as server:
        server.storescu(files)
        ids = sorted(_orthanc_id(server, _sop_uid(f)) for f in files)
        _wait(lambda: "could not forward study" in server.log_tail(), 30, "the refused forward to be logged")
        assert not _store_jobs(server)
        assert all("4711" not in _rest(server, f"/instances/{i}/metadata?expand") for i in ids), "marked, yet never sent"
        _rest(server, "/modalities/monaicir", "PUT", {"AET": "MONAICIR", "Host": "127.0.0.1", "Port": down})
        server.storescu([added])
        jobs = _wait(lambda: (j := list(_store_jobs(server).values())) and j, 30, "the next forward")
        assert sorted(jobs[-1]["Content"]["ParentResources"]) == sorted([*ids, _orthanc_id(server, _sop_uid(added))]), server.log_tail()


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

    # a study deleted from the PACS (consent withdrawn), the index rebuilt as the docs say (the same --pull-to): it stayed in
    # the index, read back from the pull folder; only the studies the search finds are indexed now
    withdrawn = cases[1]
    _rest(orthanc_server, f"/studies/{_orthanc_id(orthanc_server, withdrawn.uids.study_uid, 'Study')}", "DELETE")
    assert main(["index", "build", *source, "--pull-to", str(tmp_path / "pulled"), "--out", str(tmp_path / "grown"), "--overwrite"]) == 0
    rebuilt = load_index(tmp_path / "grown")
    assert sorted(rebuilt.case_ids()) == sorted(r.case_id for r in records if r.case_id != withdrawn.case_id)


@pytest.mark.parametrize("name", ["Öztürk^Ayşe", "山田^太郎"])
def test_a_name_outside_latin_1_comes_back_whole_from_the_pacs_study_list(orthanc_server, tmp_path, name):
    """Found by the viewer review: with Orthanc's default encoding (Latin-1) its QIDO-RS answer, what OHIF's study list
    shows, read 'Öztürk^Aye' for an instance written in UTF-8 (as the app writes its answers) and '^' for '山田^太郎'.
    The configuration docs/pacs.md gives (and these tests run) sets "DefaultEncoding": "Utf8"."""
    import numpy as np
    from dicomweb_client.api import DICOMwebClient

    from monai_cir.dicom.dicomize import case_uids, dermoscopy_image_dataset

    ds = dermoscopy_image_dataset(pixels=np.full((64, 64, 3), 120, np.uint8), uids=case_uids("synthetic", f"utf8-{name}"))
    ds.SpecificCharacterSet, ds.PatientName, ds.PatientID = "ISO_IR 192", name, f"UTF8-{len(name)}"
    ds.save_as(tmp_path / "image.dcm", enforce_file_format=True)
    orthanc_server.storescu([tmp_path / "image.dcm"])
    found = DICOMwebClient(orthanc_server.dicomweb_url).search_for_studies(search_filters={"StudyInstanceUID": ds.StudyInstanceUID})
    assert len(found) == 1
    assert str(pydicom.Dataset.from_json(found[0]).PatientName) == name
