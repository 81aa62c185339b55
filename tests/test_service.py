"""The DICOM node (``monai_cir.service``) on loopback with a stand-in pipeline: peers, study grouping,
bad input, a return node that is down, restarts. (The real pipeline and a real PACS:
``tests/test_dicom_pacs.py``.)"""

from __future__ import annotations

import copy
import io
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from monai_cir.dicom.dicomize import case_report_sr, case_uids, dermoscopy_image_dataset
from monai_cir.dicom.publish import DicomNode, c_store
from monai_cir.service import DicomService, ServiceSettings
from monai_cir.service.dicom_node import _Pending

from conftest import wait_for

PEER = "PACS"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_study(name: str, with_image: bool = True) -> list[Dataset]:
    """A synthetic dermoscopy study: one DMS image (uncompressed noise) and its report SR."""
    uids = case_uids("synthetic", name)
    pixels = np.random.default_rng(abs(hash(name)) % 2**32).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    image = dermoscopy_image_dataset(pixels=pixels, uids=uids, compression="none")
    sr = case_report_sr(image, "raised lesion, irregular pigment network", case_id=name, sr_series_uid=uids.sr_series_uid, sr_uid=uids.sr_uid)
    return [image, sr] if with_image else [sr]


class StandInPipeline:
    """Answers each dermoscopy image of a study with one Encapsulated PDF in its study; fails the
    studies whose image is named in ``fail``; counts calls."""

    def __init__(self, fail: set[str] = frozenset(), delay_s: float = 0.0, summary: bool = True, sr: bool = False) -> None:
        self.fail, self.delay_s, self.calls, self.texts, self.sr = set(fail), delay_s, [], [], sr
        # summary: say per query what it was answered with, and the run's model and library, as the app's results.json does
        self.summary, self.model, self.index = summary, "model-1", "library-1"

    def __call__(self, input_folder: Path, output_folder: Path):
        from monai_cir.dicom.reader import read_dicom_folder

        self.calls.append(input_folder.name)
        time.sleep(self.delay_s)
        scan = read_dicom_folder(input_folder)
        self.texts.append([q.text for q in scan.queries])
        if any(q.study_uid in self.fail for q in scan.queries):
            raise RuntimeError("stand-in pipeline failure")
        output_folder.mkdir(parents=True, exist_ok=True)
        outputs, queries = [], []
        for q in scan.queries:
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID, ds.SOPInstanceUID = ENCAPSULATED_PDF, generate_uid()
            ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID, ds.Modality = q.study_uid, generate_uid(), q.patient_id, "DOC"
            ds.MIMETypeOfEncapsulatedDocument, ds.EncapsulatedDocument = "application/pdf", b"%PDF-1.4\n%%EOF\n"
            path = output_folder / f"{q.sop_instance_uid}.dcm"
            ds.save_as(path, enforce_file_format=True)
            outputs.append(path)
            written = {"encapsulated_pdf": path.name}
            if self.sr:  # a similar-cases SR too (its content does not matter here)
                sr = Dataset()
                sr.file_meta = FileMetaDataset()
                sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                sr.SOPClassUID, sr.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.33", generate_uid()
                sr.file_meta.MediaStorageSOPClassUID, sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPClassUID, sr.SOPInstanceUID
                sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.PatientID, sr.Modality = q.study_uid, generate_uid(), q.patient_id, "SR"
                sr_path = output_folder / f"{q.sop_instance_uid}-sr.dcm"
                sr.save_as(sr_path, enforce_file_format=True)
                outputs.append(sr_path)
                written["sr"] = sr_path.name
            # what the app's results.json says of each query (WarmPipeline's summary): the service reads it
            queries.append({"sop_instance_uid": q.sop_instance_uid, "text": q.text, "outputs": written})
        problems = [{"stage": "input", "message": p.message} for p in scan.problems]
        if not self.summary:
            return SimpleNamespace(answered=len(scan.queries), dicom_outputs=outputs, problems=problems)
        return SimpleNamespace(answered=len(scan.queries), dicom_outputs=outputs, problems=problems,
                               summary={"model": self.model, "index": self.index, "index_cases": 3, "settings": {}, "queries": queries})


class ReturnNode:
    """A storage SCP standing in for the PACS that receives the answers."""

    def __init__(self, port: int) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        self.port, self.received = port, []
        ae = AE(ae_title=PEER)
        ae.add_supported_context(ENCAPSULATED_PDF, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context("1.2.840.10008.5.1.4.1.1.88.33", ALL_TRANSFER_SYNTAXES)
        self._ae, self._evt = ae, evt
        self._server = None

    def start(self) -> ReturnNode:
        def on_store(event):
            self.received.append(event.dataset)
            return 0x0000

        self._server = self._ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(self._evt.EVT_C_STORE, on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


@pytest.fixture()
def node(tmp_path):
    """A return node (running), a stand-in pipeline and a service factory (stopped at the end)."""
    ret = ReturnNode(free_port()).start()
    services = []

    def make(pipeline=None, **kwargs):
        kwargs.setdefault("return_node", f"127.0.0.1:{ret.port}:{PEER}")
        kwargs.setdefault("peers", [PEER])
        kwargs.setdefault("quiet_s", 0.3)
        service = DicomService(pipeline or StandInPipeline(), tmp_path / "spool", port=free_port(), **kwargs)
        services.append(service)
        return service.start()

    yield SimpleNamespace(ret=ret, make=make)
    for service in services:
        service.stop()
    ret.stop()


def address(service: DicomService) -> DicomNode:
    return DicomNode(service.ae_title, "127.0.0.1", service.port)


def new_instance(ds: Dataset) -> Dataset:
    """A copy of ``ds`` under a new SOP Instance UID: another instance of the same study (an image added, an SR sent again)."""
    copied = copy.deepcopy(ds)
    copied.SOPInstanceUID = generate_uid()
    copied.file_meta.MediaStorageSOPInstanceUID = copied.SOPInstanceUID
    return copied


def state_of(service: DicomService, study_uid: str, *states: str, timeout: float = 20.0) -> dict:
    return wait_for(lambda: (s := service.status(study_uid)) and s["state"] in states and s, timeout, f"study state in {states}")


def echo(service: DicomService, calling_ae: str = PEER) -> int | None:
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", service.port, ae_title=service.ae_title)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_a_study_is_grouped_answered_and_returned(node):
    pipeline = StandInPipeline()
    service = node.make(pipeline, quiet_s=3.0)  # longer than the gap between the two associations, even on a busy machine
    assert echo(service) == 0x0000
    study = make_study("one")
    # the image and its SR arrive over two associations: still one study, answered once
    assert all(r.ok for r in c_store(study[:1], address(service), calling_ae=PEER))
    assert all(r.ok for r in c_store(study[1:], address(service), calling_ae=PEER))
    status = state_of(service, study[0].StudyInstanceUID, "returned")
    assert status["instances"] == 2 and status["answered"] == 1 and status["return_attempts"] == 1
    assert pipeline.calls == [study[0].StudyInstanceUID]
    assert [str(ds.StudyInstanceUID) for ds in node.ret.received] == [study[0].StudyInstanceUID]
    assert not any((service.workdir / d / study[0].StudyInstanceUID).exists() for d in ("incoming", "processing", "outbox"))
    assert "PatientName" not in status and str(study[0].PatientID) not in (service.workdir / "status" / f"{study[0].StudyInstanceUID}.json").read_text()


def test_a_peer_not_configured_is_refused(node):
    service = node.make(peers=[PEER, "ORTHANC@10.9.9.9"])
    assert echo(service, calling_ae="INTRUDER") is None  # association rejected
    with pytest.raises(ConnectionError):
        c_store(make_study("intruder"), address(service), calling_ae="INTRUDER")
    # the right AE title from another host than configured: each request refused as not authorized
    results = c_store(make_study("wrong-host"), address(service), calling_ae="ORTHANC")
    assert [r.status for r in results] == [0x0124, 0x0124]
    assert echo(service, calling_ae="ORTHANC") == 0x0124
    assert not any((service.workdir / "incoming").iterdir())
    assert echo(service) == 0x0000  # still serving


def test_non_dicom_payload_and_unsupported_sop_class(node, tmp_path, monkeypatch):
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom import AE, _config

    service = node.make()
    # bytes on the port that are no DICOM at all
    with socket.create_connection(("127.0.0.1", service.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8)
    # a C-STORE whose data set is not DICOM (valid file meta, then garbage)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = "1.2.840.10008.5.1.4.1.1.77.1.7", generate_uid(), ExplicitVRLittleEndian
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(buffer.getvalue() + b"\x08\x00\x05\x00CS\xff\xff" + b"this is not a data set" * 20)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes as they are
    ae = AE(ae_title=PEER)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.77.1.7", ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)  # CT Image Storage
    assoc = ae.associate("127.0.0.1", service.port, ae_title=service.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(junk)
        assert int(status.Status) == 0xC000  # cannot understand
        ct_context = [c for c in assoc.accepted_contexts if c.abstract_syntax == "1.2.840.10008.5.1.4.1.1.2"]
        assert ct_context == []  # unsupported SOP class: its presentation context is refused
        ct = make_study("ct")[0]
        ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(ct)
    finally:
        assoc.release()
    assert not any((service.workdir / "incoming").iterdir())
    # still serving: a good study afterwards is answered
    study = make_study("after-junk")
    assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
    state_of(service, study[0].StudyInstanceUID, "returned")


def test_a_study_without_dermoscopy_image_and_a_failing_study_are_reported(node):
    bad = make_study("fails")
    pipeline = StandInPipeline(fail={bad[0].StudyInstanceUID})
    service = node.make(pipeline)
    no_image = make_study("no-image", with_image=False)
    good = make_study("good")
    for study in (no_image, bad, good):
        assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
    failed = state_of(service, no_image[0].StudyInstanceUID, "failed")
    assert "no dermoscopy image" in failed["error"]
    crashed = state_of(service, bad[0].StudyInstanceUID, "failed")
    assert "stand-in pipeline failure" in crashed["error"]
    assert (service.workdir / "failed" / bad[0].StudyInstanceUID).is_dir()  # input kept for the integrator
    state_of(service, good[0].StudyInstanceUID, "returned")
    assert [str(ds.StudyInstanceUID) for ds in node.ret.received] == [good[0].StudyInstanceUID]


def test_a_return_node_that_is_down_keeps_and_retries(tmp_path):
    port = free_port()  # nobody listens yet
    service = DicomService(StandInPipeline(), tmp_path / "spool", port=free_port(), peers=[PEER], return_node=f"127.0.0.1:{port}:{PEER}", quiet_s=0.2, retry_s=0.5).start()
    ret = ReturnNode(port)
    try:
        study = make_study("down")
        assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
        pending = state_of(service, study[0].StudyInstanceUID, "return-pending")
        assert "ConnectionError" in pending["error"]
        outbox = service.workdir / "outbox" / study[0].StudyInstanceUID
        assert len(list(outbox.glob("*.dcm"))) == 1  # kept on disk
        ret.start()  # the node comes back: the next retry delivers
        returned = state_of(service, study[0].StudyInstanceUID, "returned")
        assert returned["return_attempts"] >= 2 and len(ret.received) == 1 and not outbox.exists()
    finally:
        service.stop()
        ret.stop()


def test_restart_picks_up_what_was_left(node, tmp_path):
    pipeline = StandInPipeline()
    first = node.make(pipeline, quiet_s=3600)  # never complete while this one runs
    study = make_study("restart")
    assert all(r.ok for r in c_store(study, address(first), calling_ae=PEER))
    first.stop()
    assert pipeline.calls == [] and len(list((first.workdir / "incoming" / study[0].StudyInstanceUID).iterdir())) == 2
    second = node.make(pipeline)  # same spool
    state_of(second, study[0].StudyInstanceUID, "returned")
    assert pipeline.calls == [study[0].StudyInstanceUID] and len(node.ret.received) == 1


def test_a_study_that_stopped_the_service_twice_is_set_aside_at_start(node):
    """A study that kills the service while it is answered (out of memory) was queued again at every start: under
    systemd's Restart=on-failure the service died again and again and answered nothing more. After two interrupted
    rounds in a row the study is set aside (failed/, the reason in its status) and the others are answered."""
    import json

    pipeline = StandInPipeline()
    first = node.make(pipeline, quiet_s=3600)
    poison, other = make_study("poison"), make_study("other")
    for study in (poison, other):
        assert all(r.ok for r in c_store(study, address(first), calling_ae=PEER))
    first.stop()
    uid = poison[0].StudyInstanceUID
    record = first.workdir / "status" / f"{uid}.json"
    status = json.loads(record.read_text()) if record.exists() else {"study_uid": uid}
    status["rounds"] = [{"round": 1, "state": "interrupted"}, {"round": 2, "state": "processing"}]  # died in round 1, then in round 2
    record.write_text(json.dumps(status))
    (first.workdir / "incoming" / uid).rename(first.workdir / "processing" / uid)

    second = node.make(pipeline)
    failed = state_of(second, uid, "failed")
    assert "the service stopped 2 times while answering this study" in failed["error"] and "send it again" in failed["error"]
    state_of(second, other[0].StudyInstanceUID, "returned")
    assert pipeline.calls == [other[0].StudyInstanceUID]
    assert len(list((second.workdir / "failed" / uid).glob("*.dcm"))) == 2


def test_settings_from_app_yaml_environment_and_flags(tmp_path):
    yaml_file = tmp_path / "app.yaml"
    yaml_file.write_text("serve:\n  port: 11000\n  quiet_s: 5\n  return_node: 10.0.0.5:4242:ORTHANC\n")
    s = ServiceSettings.resolve(app_yaml=yaml_file, environ={"MONAI_CIR_SERVE_QUIET_S": "1.5", "HOLOSCAN_MODEL_PATH": "/models"})
    assert (s.port, s.quiet_s, s.models, s.peers) == (11000, 1.5, "/models", ["ORTHANC"])  # peer defaults to the return node
    s = ServiceSettings.resolve({"port": 104, "peers": ["A@1.2.3.4", "B"]}, app_yaml=yaml_file, environ={"MONAI_CIR_SERVE_PEERS": "X"})
    assert (s.port, s.peers) == (104, ["A@1.2.3.4", "B"])
    assert ServiceSettings.resolve(app_yaml=yaml_file, environ={"MONAI_CIR_SERVE_PEERS": "X, Y@10.0.0.7"}).peers == ["X", "Y@10.0.0.7"]
    with pytest.raises(ValueError, match=r"peer 'Y@no-such-host.invalid': host 'no-such-host.invalid' does not resolve .*give its IP address"):
        ServiceSettings.resolve(app_yaml=yaml_file, environ={"MONAI_CIR_SERVE_PEERS": "Y@no-such-host.invalid"})
    # the return node is checked even when the peers are given (no AE title: no default is guessed)
    with pytest.raises(ValueError, match=r"return_node \(MONAI_CIR_SERVE_RETURN\): DICOM node '10.0.0.5:4242' has no AE title: write it as HOST:PORT:AET"):
        ServiceSettings.resolve({"peers": ["X"]}, app_yaml=yaml_file, environ={"MONAI_CIR_SERVE_RETURN": "10.0.0.5:4242"})
    yaml_file.write_text("serve:\n  prot: 1\n")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['prot'\] in 'serve:'"):
        ServiceSettings.resolve(app_yaml=yaml_file, environ={})
    with pytest.raises(ValueError, match="no peer is configured"):
        DicomService(StandInPipeline(), tmp_path, return_dicomweb="http://x/dicom-web")


def test_results_can_go_back_by_stow_rs(tmp_path):
    from dicomweb_client.api import DICOMwebClient

    try:
        from tests.orthanc import OrthancServer, orthanc_available
    except ImportError:
        from orthanc import OrthancServer, orthanc_available  # type: ignore[no-redef]

    if not orthanc_available():
        pytest.fail("Orthanc and orthanc-dicomweb are not installed: run scripts/install_system_tools.sh")
    with OrthancServer(tmp_path / "orthanc") as server:
        service = DicomService(StandInPipeline(), tmp_path / "spool", port=free_port(), peers=[PEER], return_dicomweb=server.dicomweb_url, quiet_s=0.2).start()
        try:
            study = make_study("stow")
            assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
            state_of(service, study[0].StudyInstanceUID, "returned")
            found = DICOMwebClient(server.dicomweb_url).search_for_instances(study_instance_uid=study[0].StudyInstanceUID)
            assert [pydicom.Dataset.from_json(f).SOPClassUID for f in found] == [ENCAPSULATED_PDF]
        finally:
            service.stop()



def test_a_peer_given_by_host_name_is_known_by_its_address(node):
    """`--peer PACS@localhost`, as the help's AET[@HOST] allows: the name was compared as text with the caller's IP
    address, so every study of that PACS was refused (0x0124: "not a configured peer"). The name is resolved at start."""
    from monai_cir.service import parse_peer

    peer = parse_peer(f"{PEER}@localhost")
    assert "127.0.0.1" in peer.addresses and peer.allows(PEER, "127.0.0.1") and peer.allows(PEER, "::ffff:127.0.0.1")
    assert not peer.allows(PEER, "10.0.0.9") and not peer.allows("OTHER", "127.0.0.1")
    service = node.make(peers=[f"{PEER}@localhost"])
    study = make_study("peer-by-name")
    assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
    state_of(service, study[0].StudyInstanceUID, "returned")


def test_a_hung_return_node_is_given_up_on_soon_and_said_so(monkeypatch):
    """A return node that takes the connection and never answers held the service's worker 30 s per attempt (the next
    studies waited unanswered) and was reported as "rejected, aborted or unreachable". The wait for the association's
    answer is bounded, and the reason says what happened."""
    import threading

    from monai_cir.dicom import publish

    monkeypatch.setattr(publish, "ASSOCIATION_TIMEOUT_S", 1.0)
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(4)
    held = []
    threading.Thread(target=lambda: held.append(hung.accept()), daemon=True).start()  # takes the connection, says nothing
    start = time.monotonic()
    try:
        with pytest.raises(ConnectionError, match=r"no answer to the association request within 1 s .*hung\?"):
            c_store(make_study("hung"), DicomNode("HUNG", "127.0.0.1", hung.getsockname()[1]), calling_ae=PEER)
    finally:
        hung.close()
    assert time.monotonic() - start < 10
    with pytest.raises(ConnectionError, match=r"unreachable"):
        c_store(make_study("nobody"), DicomNode("NOBODY", "127.0.0.1", free_port()), calling_ae=PEER)


@pytest.mark.parametrize("answer", ["login_redirect", "html_200", "empty_dicom_json"])
def test_a_stow_rs_answer_that_lists_nothing_stored_is_not_a_delivery(answer):
    """A DICOMweb URL behind an auth proxy (the POST redirected to a login page), a proxy's HTML page, or an answer that
    lists no instance: dicomweb-client reads each as an empty data set, and every instance counted as stored, the study
    "returned" and its outbox copy deleted, though the PACS never had it. Only what the answer lists is stored."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from monai_cir.dicom.publish import stow_rs

    class Proxy(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, kind: str, body: bytes, location: str | None = None) -> None:
            self.send_response(code)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if answer == "login_redirect":
                self._send(302, "text/html", b"", location="/login")
            elif answer == "html_200":
                self._send(200, "text/html", b"<html>Please sign in</html>")
            else:
                self._send(200, "application/dicom+json", b"{}")

        def do_GET(self):
            self._send(200, "text/html", b"<html>Please sign in</html>")

    server = HTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        results = stow_rs(make_study("stow-proxy"), f"http://127.0.0.1:{server.server_port}/dicom-web", timeout=10)
    finally:
        server.shutdown()
    assert results and not any(r.ok for r in results), results
    assert all("no STOW-RS response" in r.message and "not stored" in r.message for r in results)


def rounds_of(service: DicomService, study_uid: str, n: int, *states: str, timeout: float = 20.0) -> dict:
    """The status once the study's n-th round has ended in one of ``states``."""
    def done():
        s = service.status(study_uid)
        return s and len(s.get("rounds", [])) >= n and s["rounds"][n - 1]["state"] in states and s
    return wait_for(done, timeout, f"round {n} in {states}")


def test_a_failure_outside_the_pipeline_fails_that_study_and_the_worker_goes_on(node):
    """A spool that cannot be written (here: processing/, then outbox/, a file) fails that study, with
    its reason, its input kept; the worker thread lives on and answers the next study."""
    import shutil

    service = node.make()
    spool = service.workdir
    shutil.rmtree(spool / "processing")
    (spool / "processing").write_text("not a folder")  # the round cannot even start
    first = make_study("spool-processing")
    assert all(r.ok for r in c_store(first, address(service), calling_ae=PEER))
    failed = state_of(service, first[0].StudyInstanceUID, "failed")
    assert "NotADirectoryError" in failed["error"] or "FileExistsError" in failed["error"]
    assert len(list((spool / "incoming" / first[0].StudyInstanceUID).glob("*.dcm"))) == 2  # input kept
    (spool / "processing").unlink()
    (spool / "processing").mkdir()
    shutil.rmtree(spool / "outbox")
    (spool / "outbox").write_text("not a folder")  # answered, but the answer cannot be put in the outbox
    second = make_study("spool-outbox")
    assert all(r.ok for r in c_store(second, address(service), calling_ae=PEER))
    failed = state_of(service, second[0].StudyInstanceUID, "failed")
    assert "\n" not in failed["error"] and failed["rounds"][-1]["state"] == "failed"
    assert len(list((spool / "failed" / second[0].StudyInstanceUID).glob("*.dcm"))) == 2
    (spool / "outbox").unlink()
    (spool / "outbox").mkdir()
    third = make_study("spool-ok")
    assert all(r.ok for r in c_store(third, address(service), calling_ae=PEER))
    state_of(service, third[0].StudyInstanceUID, "returned")
    assert service._worker.is_alive()
    assert [str(ds.StudyInstanceUID) for ds in node.ret.received] == [third[0].StudyInstanceUID]


def test_uids_that_are_not_dicom_uids_are_refused_and_nothing_is_kept(node, tmp_path):
    from monai_cir.service.dicom_node import _uid_path

    service = node.make()  # spool: tmp_path / "spool"
    outside = tmp_path / "outside"
    bad_uids = ["../../outside/pwned", "../outside", "1.2.3/4", "1.2.x", "1.2." + "3" * 70]
    for i, uid in enumerate(bad_uids):
        for which in ("StudyInstanceUID", "SOPInstanceUID")[: 1 if len(uid) > 64 else 2]:  # (the SCU refuses a long SOP UID itself)
            study = make_study(f"bad-uid-{i}-{which}")[:1]
            setattr(study[0], which, uid)
            if which == "SOPInstanceUID":
                study[0].file_meta.MediaStorageSOPInstanceUID = uid
            results = c_store(study, address(service), calling_ae=PEER)
            assert [r.status for r in results] == [0xC000], (which, uid)
    assert not outside.exists() and not list(tmp_path.glob("outside*")) and not any((service.workdir / "incoming").iterdir())
    assert not any((service.workdir / "status").iterdir())
    for uid in bad_uids + ["..", ".", "", "1..2", "a.b"]:
        with pytest.raises(ValueError):
            _uid_path(service.workdir, uid)
        assert service.status(uid) is None
    good = make_study("after-bad-uids")
    assert all(r.ok for r in c_store(good, address(service), calling_ae=PEER))
    state_of(service, good[0].StudyInstanceUID, "returned")


def test_a_study_in_two_rounds_is_answered_over_all_its_instances(node):
    pipeline = StandInPipeline()
    service = node.make(pipeline)
    # the SR first (a round with no image: failed), the image after the quiet time: answered WITH the SR's text
    sr_first = make_study("sr-first")
    study_uid = sr_first[0].StudyInstanceUID
    assert all(r.ok for r in c_store(sr_first[1:], address(service), calling_ae=PEER))
    rounds_of(service, study_uid, 1, "failed")
    assert all(r.ok for r in c_store(sr_first[:1], address(service), calling_ae=PEER))
    status = rounds_of(service, study_uid, 2, "returned")
    assert pipeline.texts[-1] == ["raised lesion, irregular pigment network"]
    assert [r["state"] for r in status["rounds"]] == ["failed", "returned"] and status["state"] == "returned"
    assert status["instances"] == 2 and status["rounds"][1]["instances"] == 2 and status["rounds"][1]["new_instances"] == 1
    # the image first (answered without text), the SR later: answered again with the text, both answers kept
    image_first = make_study("image-first")
    study_uid = image_first[0].StudyInstanceUID
    assert all(r.ok for r in c_store(image_first[:1], address(service), calling_ae=PEER))
    rounds_of(service, study_uid, 1, "returned")
    assert pipeline.texts[-1] == [""]
    assert all(r.ok for r in c_store(image_first[1:], address(service), calling_ae=PEER))
    status = rounds_of(service, study_uid, 2, "returned")
    assert pipeline.texts[-1] == ["raised lesion, irregular pigment network"]
    assert [r["state"] for r in status["rounds"]] == ["returned", "returned"]
    for rnd in status["rounds"]:  # each round's results in their own folder, none deleted
        assert len(list((service.workdir / rnd["results"]).glob("*.dcm"))) == 1
    assert [str(ds.StudyInstanceUID) for ds in node.ret.received].count(study_uid) == 2  # the PACS gets the corrected answer
    assert len(list((service.workdir / "inputs" / study_uid).glob("*.dcm"))) == 2
    # each round's processing folder is emptied, the earlier instances' links included (os.replace of a hard link
    # onto its own file does nothing, which left them behind and failed the round's bookkeeping)
    assert not (service.workdir / "processing" / study_uid).exists()


def test_a_later_failed_round_adds_to_the_failed_input(node):
    study = make_study("fails-twice")
    service = node.make(StandInPipeline(fail={study[0].StudyInstanceUID}))
    failed = service.workdir / "failed" / study[0].StudyInstanceUID
    assert all(r.ok for r in c_store(study[:1], address(service), calling_ae=PEER))
    rounds_of(service, study[0].StudyInstanceUID, 1, "failed")
    first_bytes = (failed / f"{study[0].SOPInstanceUID}.dcm").read_bytes()
    # the same image again, changed (same SOP Instance UID), and the SR: a second failed round
    study[0].PixelData = bytes(255 - b for b in study[0].PixelData)
    assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
    rounds_of(service, study[0].StudyInstanceUID, 2, "failed")
    kept = sorted(p.name for p in failed.glob("*.dcm"))
    assert len(kept) == 3, kept  # the first image, its second version, the SR: nothing deleted
    assert (failed / f"{study[0].SOPInstanceUID}.dcm").read_bytes() == first_bytes


def test_a_study_sent_twice_is_answered_once(node):
    pipeline = StandInPipeline()
    service = node.make(pipeline)
    study = make_study("twice")
    assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
    rounds_of(service, study[0].StudyInstanceUID, 1, "returned")
    assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
    status = rounds_of(service, study[0].StudyInstanceUID, 2, "duplicate", "returned", "failed")
    assert status["rounds"][1]["state"] == "duplicate" and status["state"] == "returned"
    assert "already returned" in status["rounds"][1]["note"]
    # one instance sent again (the others are in inputs/ and linked into the round): a duplicate too, not a failure
    assert all(r.ok for r in c_store(study[:1], address(service), calling_ae=PEER))
    status = rounds_of(service, study[0].StudyInstanceUID, 3, "duplicate", "returned", "failed")
    assert status["rounds"][2]["state"] == "duplicate" and status["state"] == "returned", status
    assert len(pipeline.calls) == 1 and len(node.ret.received) == 1


def test_the_publisher_log_says_what_was_stored_and_what_failed(node, tmp_path, caplog):
    import logging

    from deploy_app.operators.common import QueryResult
    from deploy_app.operators.publisher import DICOMPublisherOperator

    files = StandInPipeline()(_folder_of(tmp_path / "in", make_study("publish")), tmp_path / "out").dicom_outputs
    results = [QueryResult(query_id="q1", query=None, outputs={"sr": str(files[0])})]
    log = logging.getLogger("test.publisher")
    for port, expected, level in ((free_port(), "0 of 1 file(s) stored", logging.ERROR), (node.ret.port, "1 of 1 file(s) stored", logging.INFO)):
        op = SimpleNamespace(dicom_node=DicomNode(PEER, "127.0.0.1", port), dicomweb_url=None, calling_aet="MONAICIR", _logger=log)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="test.publisher"):
            DICOMPublisherOperator.run(op, results)
        summary = [r for r in caplog.records if r.getMessage().startswith("published")]
        assert len(summary) == 1 and expected in summary[0].getMessage() and summary[0].levelno == level, caplog.text
        assert ("failed" in summary[0].getMessage()) == (level == logging.ERROR)


def _folder_of(folder: Path, datasets: list[Dataset]) -> Path:
    folder.mkdir(parents=True)
    for ds in datasets:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return folder


def test_serve_port_out_of_range_in_use_and_no_peer_are_one_line_errors(tmp_path, capsys):
    from monai_cir.cli import main
    from monai_cir.service.dicom_node import CannotListen

    models = tmp_path / "models"
    models.mkdir()  # empty: every check below must come before the models load
    with pytest.raises(ValueError, match=r"port \(MONAI_CIR_SERVE_PORT, --port\) must be a TCP port, 1-65535, got 99999"):
        ServiceSettings(port=99999, return_node=f"127.0.0.1:104:{PEER}")
    base = ["serve", "--models", str(models), "--workdir", str(tmp_path / "spool")]
    assert main([*base, "--port", "99999", "--return", f"127.0.0.1:104:{PEER}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "port" in err and "99999" in err and "\n" not in err and "Traceback" not in err
    assert main([*base, "--return-dicomweb", "http://127.0.0.1:1/dicom-web"]) == 2
    assert "no peer is configured" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main([*base, "--port", str(port), "--return", f"127.0.0.1:104:{PEER}"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"127.0.0.1:{port}" in err and "--port" in err and "\n" not in err and "Traceback" not in err
        service = DicomService(StandInPipeline(), tmp_path / "spool", port=port, peers=[PEER], return_node=f"127.0.0.1:104:{PEER}")
        with pytest.raises(CannotListen, match=f"cannot listen on 127.0.0.1:{port}"):
            service.start()
        service.stop()


def test_a_round_with_nothing_new_leaves_the_studys_state_as_its_last_round_left_it(node):
    """An instance registered (pending, "receiving") after the round before had already taken its file: the next round
    finds nothing new and must not leave the study "receiving" for good, but as its last round left it."""
    service = node.make(StandInPipeline())
    study = make_study("late-registration")
    study_uid = str(study[0].StudyInstanceUID)
    assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
    rounds_of(service, study_uid, 1, "returned")
    wait_for(lambda: service.status(study_uid)["state"] == "returned", 10.0, "returned")
    with service._lock:  # what _on_store leaves when its file went into the round before: pending, "receiving", no file
        status = service._status_of(study_uid)
        status.state = "receiving"
        service._save_status(status)
        service._pending[study_uid] = _Pending(time.monotonic() - 10)
    wait_for(lambda: service.status(study_uid)["state"] == "returned", 10.0, "the state the last round left")
    assert len(service.status(study_uid)["rounds"]) == 1


def test_an_image_added_to_an_answered_study_is_answered_and_the_earlier_answer_stands(node):
    """A study that gains an image after its answer was returned: the round answers the study again, and returns the
    added image's answer only (the earlier image, same text, keeps its answer: the PACS does not get a second copy);
    an SR that changes an image's text returns that image's answer again; a new SR with the same text changes no
    answer and returns nothing, and sent again it is a duplicate; another model answers every image again."""
    pipeline = StandInPipeline()
    service = node.make(pipeline)
    first = make_study("grows")
    study_uid = first[0].StudyInstanceUID
    assert all(r.ok for r in c_store(first[:1], address(service), calling_ae=PEER))
    rounds_of(service, study_uid, 1, "returned")
    added = new_instance(first[0])
    assert all(r.ok for r in c_store([added], address(service), calling_ae=PEER))
    status = rounds_of(service, study_uid, 2, "returned")
    assert status["rounds"][1]["unchanged"] == [str(first[0].SOPInstanceUID)]
    returned = [str(ds.StudyInstanceUID) for ds in node.ret.received].count(study_uid)
    assert returned == 2, f"{returned} answers returned: the first image's again?"
    assert sorted(status["returned_answers"]) == sorted([str(first[0].SOPInstanceUID), str(added.SOPInstanceUID)])
    # the report SR comes, referencing the first image: its text changes, its answer is returned again; the added
    # image's (the SR's text is not its own) stands
    assert all(r.ok for r in c_store(first[1:], address(service), calling_ae=PEER))
    status = rounds_of(service, study_uid, 3, "returned")
    assert status["rounds"][2]["unchanged"] == [str(added.SOPInstanceUID)]
    assert [str(ds.StudyInstanceUID) for ds in node.ret.received].count(study_uid) == 3
    # another SR with the same text: no answer changes, nothing is returned, the study stays returned
    again = new_instance(first[1])
    assert all(r.ok for r in c_store([again], address(service), calling_ae=PEER))
    status = rounds_of(service, study_uid, 4, "unchanged", "returned", "failed")
    assert status["rounds"][3]["state"] == "unchanged" and status["state"] == "returned", status
    assert "answered and returned before with the same text" in status["rounds"][3]["note"]
    assert [str(ds.StudyInstanceUID) for ds in node.ret.received].count(study_uid) == 3
    # that SR sent again: part of answers returned, a duplicate (the pipeline is not run)
    calls = len(pipeline.calls)
    assert all(r.ok for r in c_store([again], address(service), calling_ae=PEER))
    status = rounds_of(service, study_uid, 5, "duplicate", "unchanged", "returned", "failed")
    assert status["rounds"][4]["state"] == "duplicate" and len(pipeline.calls) == calls, status["rounds"][4]
    # another model answers (a service restarted with new MODELS): an image added now has every answer returned again
    pipeline.model = "model-2"
    third = new_instance(first[0])
    assert all(r.ok for r in c_store([third], address(service), calling_ae=PEER))
    status = rounds_of(service, study_uid, 6, "returned", "failed")
    assert "unchanged" not in status["rounds"][5] and [str(ds.StudyInstanceUID) for ds in node.ret.received].count(study_uid) == 6
    # another library of the same size (a case added, another removed): the same
    pipeline.index = "library-2"
    fourth = new_instance(first[0])
    assert all(r.ok for r in c_store([fourth], address(service), calling_ae=PEER))
    status = rounds_of(service, study_uid, 7, "returned", "failed")
    assert "unchanged" not in status["rounds"][6] and [str(ds.StudyInstanceUID) for ds in node.ret.received].count(study_uid) == 10


def test_a_pipeline_without_a_summary_gets_every_answer_returned(node):
    """A pipeline of one's own whose result says nothing of what each image was answered with: every round returns
    every answer (the earlier image's again beside the added one's), as before the rule."""
    service = node.make(StandInPipeline(summary=False))
    first = make_study("no-summary")
    study_uid = first[0].StudyInstanceUID
    assert all(r.ok for r in c_store(first[:1], address(service), calling_ae=PEER))
    rounds_of(service, study_uid, 1, "returned")
    added = new_instance(first[0])
    assert all(r.ok for r in c_store([added], address(service), calling_ae=PEER))
    status = rounds_of(service, study_uid, 2, "returned", "failed")
    assert "unchanged" not in status["rounds"][1] and status["returned_answers"] == {}
    assert [str(ds.StudyInstanceUID) for ds in node.ret.received].count(study_uid) == 3


def test_a_hung_return_node_does_not_hold_up_answering_the_next_study(monkeypatch, tmp_path):
    """Returning runs on a thread of its own: while the return node hangs (it takes the connection and never answers,
    up to publish.ASSOCIATION_TIMEOUT_S per attempt) the next study is answered, not held until the attempt gives up."""
    import threading

    from monai_cir.dicom import publish

    monkeypatch.setattr(publish, "ASSOCIATION_TIMEOUT_S", 4.0)
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(hung.accept()) for _ in range(8)], daemon=True).start()
    service = DicomService(StandInPipeline(), tmp_path / "spool", port=free_port(), peers=[PEER], quiet_s=0.2, retry_s=60,
                           return_node=f"127.0.0.1:{hung.getsockname()[1]}:HUNG").start()
    try:
        first, second = make_study("hung-first"), make_study("hung-second")
        assert all(r.ok for r in c_store(first, address(service), calling_ae=PEER))
        state_of(service, first[0].StudyInstanceUID, "answered")  # answered; its return attempt now hangs
        assert all(r.ok for r in c_store(second, address(service), calling_ae=PEER))
        answered = time.monotonic()
        state_of(service, second[0].StudyInstanceUID, "answered", "return-pending", timeout=20)
        assert time.monotonic() - answered < 3.0  # the old worker sent first's answer (4 s) before answering second
        pending = [state_of(service, s[0].StudyInstanceUID, "return-pending", timeout=20) for s in (first, second)]
        assert all("hung?" in p["error"] and p["return_attempts"] == 1 for p in pending)
        assert all(len(list((service.workdir / "outbox" / s[0].StudyInstanceUID).glob("*.dcm"))) == 1 for s in (first, second))
    finally:
        service.stop()
        hung.close()


def test_an_image_answered_again_names_the_answer_it_replaces(node):
    """Found by review: a study answered again (its report SR came after its image: the first answer image-only) left
    two look-alike answers in the PACS, nothing linking them. The new similar-cases SR names the one returned before in
    its Predecessor Documents Sequence."""
    service = node.make(StandInPipeline(sr=True))
    study = make_study("replaced")
    study_uid = study[0].StudyInstanceUID
    assert all(r.ok for r in c_store(study[:1], address(service), calling_ae=PEER))
    first = rounds_of(service, study_uid, 1, "returned")
    earlier = first["returned_srs"][str(study[0].SOPInstanceUID)]
    assert all(r.ok for r in c_store(study[1:], address(service), calling_ae=PEER))  # the report: the text changes
    rounds_of(service, study_uid, 2, "returned")
    srs = [ds for ds in node.ret.received if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"]
    assert len(srs) == 2 and "PredecessorDocumentsSequence" not in srs[0]
    (item,) = srs[1].PredecessorDocumentsSequence
    (series,) = item.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    assert (item.StudyInstanceUID, series.SeriesInstanceUID, instance.ReferencedSOPInstanceUID) == (earlier["study"], earlier["series"], earlier["sop"])
    assert instance.ReferencedSOPInstanceUID == srs[0].SOPInstanceUID


def test_stow_rs_to_a_hung_node_gives_up_after_its_timeout():
    """Found by review: dicomweb-client's default retried every exception 5 times with back-off, so a DICOMweb node that
    takes the connection and never answers held the app's publish step about 3 minutes (C-STORE: 10 s)."""
    import threading

    from monai_cir.dicom.publish import stow_rs

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(hung.accept()) for _ in range(8)], daemon=True).start()
    start = time.monotonic()
    try:
        with pytest.raises(Exception, match="(?i)timed? ?out"):
            stow_rs(make_study("stow-hung")[:1], f"http://127.0.0.1:{hung.getsockname()[1]}/dicom-web", timeout=1.0)
    finally:
        hung.close()
    assert time.monotonic() - start < 4.0 and len(held) == 1  # one attempt


class _PickyReturnNode(ReturnNode):
    """A return node that refuses Encapsulated PDFs with ``status`` (0xA900: for good; 0xA700 once: for now)."""

    def __init__(self, port: int, status: int, times: int | None = None) -> None:
        super().__init__(port)
        self.status, self.times, self.classes = status, times, []

    def start(self) -> ReturnNode:
        def on_store(event):
            self.classes.append(str(event.dataset.SOPClassUID))
            if str(event.dataset.SOPClassUID) == ENCAPSULATED_PDF and (self.times is None or self.times > 0):
                self.times = None if self.times is None else self.times - 1
                return self.status
            self.received.append(event.dataset)
            return 0x0000

        self._server = self._ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(self._evt.EVT_C_STORE, on_store)])
        return self


def test_a_return_node_refusing_an_object_for_good_is_not_sent_it_forever(tmp_path):
    """Found by review: a PACS refusing the PDF (0xA900) while storing the SR got both again every retry_s, forever,
    the study stuck at return-pending. Stored objects leave the outbox; a refusal that sending again cannot change
    fails the round, says so, and keeps the object in failed/; a refusal for now (0xA700) is retried, alone."""
    from collections import Counter

    # 0xC211: pynetdicom's answer when its store handler fails (a full disk at the PACS): worth retrying
    for status, times, final in ((0xA900, None, "failed"), (0xA700, 1, "returned"), (0xC211, 1, "returned")):
        ret = _PickyReturnNode(free_port(), status, times).start()
        service = DicomService(StandInPipeline(sr=True), tmp_path / f"spool-{status:x}", port=free_port(), peers=[PEER],
                               return_node=f"127.0.0.1:{ret.port}:{PEER}", quiet_s=0.3, retry_s=0.3).start()
        try:
            study = make_study(f"refused-{status:x}")
            assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
            settled = state_of(service, study[0].StudyInstanceUID, final)
            time.sleep(1.0)  # three retry periods: nothing more is sent
            sent = Counter(ret.classes)
            assert sent["1.2.840.10008.5.1.4.1.1.88.33"] == 1, sent  # the SR, stored at the first attempt, is not sent again
            assert sent[ENCAPSULATED_PDF] == (1 if final == "failed" else 2), sent
            if final == "failed":
                assert "refused by" in settled["error"] and "for good" in settled["error"] and settled["rounds"][-1]["state"] == "failed"
                kept = service.workdir / "failed" / study[0].StudyInstanceUID / "refused-by-return-node"
                assert len(list(kept.glob("*.dcm"))) == 1
        finally:
            service.stop()
            ret.stop()


def test_a_delivery_whose_status_record_could_not_be_written_is_not_retried_forever(node, monkeypatch):
    """Found by review: the outbox was deleted before the "returned" record was saved; with that save failing (disk
    full), the next retry sent an empty outbox, failed, and was logged every retry_s forever, the study return-pending."""
    import errno

    import monai_cir.service.dicom_node as dicom_node

    real = dicom_node.atomic_write_bytes
    once = {"fail": True}

    def flaky(path, data, durable=False):
        if once["fail"] and b'"state": "returned"' in data:
            once["fail"] = False
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, durable=durable)

    monkeypatch.setattr(dicom_node, "atomic_write_bytes", flaky)
    service = node.make(retry_s=0.3)
    study = make_study("delivered")
    assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
    returned = state_of(service, study[0].StudyInstanceUID, "returned")
    assert not once["fail"] and returned["error"] is None and len(node.ret.received) == 1
    assert not (service.workdir / "outbox" / study[0].StudyInstanceUID).exists()


def _return_node_down_at_first(pipeline: StandInPipeline, tmp_path: Path) -> tuple[DicomService, ReturnNode]:
    """A running service whose return node is not listening yet (``ret.start()`` brings it up)."""
    port = free_port()
    service = DicomService(pipeline, tmp_path / "spool", port=free_port(), peers=[PEER], return_node=f"127.0.0.1:{port}:{PEER}",
                           quiet_s=0.3, retry_s=0.5).start()
    return service, ReturnNode(port)


def test_a_next_answer_that_cannot_be_queued_leaves_the_earlier_one_to_deliver(tmp_path, monkeypatch):
    """Found by review: the earlier round's answer (the PACS down) was deleted before the next one was copied into the
    outbox; a disk full mid-copy lost both, and the cut-off file was retried forever. The next answer is staged whole
    beside the outbox and swapped in; failing, its round fails and the earlier answer is delivered."""
    import errno

    import monai_cir.service.dicom_node as dicom_node

    service, ret = _return_node_down_at_first(StandInPipeline(), tmp_path)
    try:
        study = make_study("pending")
        uid = study[0].StudyInstanceUID
        assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
        state_of(service, uid, "return-pending")
        real = dicom_node.shutil.copy2

        def disk_full(src, dst, **kwargs):
            if "outbox" in str(dst):
                Path(dst).write_bytes(Path(src).read_bytes()[:100])  # what ENOSPC mid-copy leaves
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(src, dst, **kwargs)

        monkeypatch.setattr(dicom_node.shutil, "copy2", disk_full)
        assert all(r.ok for r in c_store([new_instance(study[0])], address(service), calling_ae=PEER))  # an image added
        rounds_of(service, uid, 2, "failed")
        monkeypatch.setattr(dicom_node.shutil, "copy2", real)
        ret.start()  # the PACS is back: round 1's answer goes
        returned = state_of(service, uid, "returned")
        assert [r["state"] for r in returned["rounds"]] == ["returned", "failed"] and len(ret.received) == 1
        assert not any((service.workdir / "outbox").iterdir())
    finally:
        service.stop()
        ret.stop()


def test_a_study_sent_again_while_its_answer_is_on_its_way_is_answered_once(tmp_path):
    """Found by review: only rounds already returned counted for the duplicate check: with a slow or down PACS, a study
    sent again was answered a second time (and the PACS got two SRs of one image, unlinked)."""
    pipeline = StandInPipeline()
    service, ret = _return_node_down_at_first(pipeline, tmp_path)
    try:
        study = make_study("resent")
        uid = study[0].StudyInstanceUID
        assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
        state_of(service, uid, "return-pending")
        assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))  # the same instances again
        rounds_of(service, uid, 2, "duplicate")
        ret.start()
        returned = state_of(service, uid, "returned")
        assert len(pipeline.calls) == 1 and len(ret.received) == 1 and [r["state"] for r in returned["rounds"]] == ["returned", "duplicate"]
    finally:
        service.stop()
        ret.stop()


def test_idle_connections_do_not_lock_the_peers_out(node, caplog):
    """Found by review: pynetdicom's defaults (10 associations, 30 s to ask for one) let any host hold every slot with
    silent TCP connections: the PACS was rejected, and the log blamed the PACS's AE title. A silent connection is dropped
    after 5 s; a rejection for the limit says so."""
    import socket

    from monai_cir.service.dicom_node import ACSE_TIMEOUT_S, MAX_ASSOCIATIONS

    service = node.make()
    idle = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(12)]
    try:
        assert echo(service) == 0  # 12 silent connections: the peer is still served (10 were the limit)
        idle += [socket.create_connection(("127.0.0.1", service.port)) for _ in range(MAX_ASSOCIATIONS)]
        time.sleep(0.5)
        assert echo(service) is None
        assert f"the node's limit of {MAX_ASSOCIATIONS} associations at once is reached" in caplog.text
        time.sleep(ACSE_TIMEOUT_S + 1.0)  # the silent connections are dropped
        assert echo(service) == 0
    finally:
        for connection in idle:
            connection.close()


def test_a_study_the_service_stop_cut_short_is_not_counted_as_one_that_crashed_it(node):
    """Found by review: a stop (SIGTERM: a deploy, systemctl restart) waits 60 s for the study in progress; a longer
    one was recorded as interrupted like a crash, and after two planned restarts it was set aside as "killed: out of
    memory? or a crash". A study the stop cut short is answered again at the next start, not counted."""
    import threading

    release = threading.Event()

    class Endless(StandInPipeline):  # answering outlasts the stop's wait: as when the process exits with it unfinished
        def __call__(self, *args, **kwargs):
            self.calls.append("blocked")
            release.wait(60)
            raise RuntimeError("the process had exited")

    study = make_study("long")
    uid = study[0].StudyInstanceUID
    try:
        for restart in range(2):
            service = node.make(Endless())
            if restart == 0:
                assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
            state_of(service, uid, "processing")
            wait_for(lambda: len(service.pipeline.calls) == 1, 20, "the study being answered")
            service.stop(timeout=0.2)
        service = node.make(StandInPipeline())
        returned = state_of(service, uid, "returned")
        assert [r["state"] for r in returned["rounds"]] == ["stopped", "stopped", "returned"]
    finally:
        release.set()


def test_the_worker_releases_the_studies_it_ends(node):
    """Found by review of the fix above: a study the worker ended itself (failed, duplicate, unchanged) kept its
    in-memory record for the service's life, one more for each such study."""
    pipeline = StandInPipeline(fail={"x"})
    service = node.make(pipeline)
    study = make_study("fails")
    pipeline.fail = {study[0].StudyInstanceUID}
    assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
    state_of(service, study[0].StudyInstanceUID, "failed")
    wait_for(lambda: study[0].StudyInstanceUID not in service._statuses, 10, "the study's record released")


def test_received_instances_and_status_records_are_on_the_disk_before_they_are_acknowledged(node, monkeypatch):
    """Found by review: a C-STORE was acknowledged before the instance was flushed to the disk (a power loss could
    leave an empty file behind an acknowledgment, and an empty status record read as a fresh study)."""
    import monai_cir.service.dicom_node as dicom_node

    writes = []
    real = dicom_node.atomic_write_bytes

    def recorded(path, data, durable=False):
        writes.append((Path(path).suffix, durable))
        return real(path, data, durable=durable)

    monkeypatch.setattr(dicom_node, "atomic_write_bytes", recorded)
    service = node.make()
    study = make_study("durable")
    assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
    state_of(service, study[0].StudyInstanceUID, "returned")
    instances, records = [d for s, d in writes if s == ".dcm"], [d for s, d in writes if s == ".json"]
    assert len(instances) == len(study) and all(instances) and records and all(records)


def test_a_received_instance_is_stored_as_sent_without_being_decoded(node, monkeypatch):
    """Found by the service review: each instance was decoded, encoded again into a buffer and copied (about 4x its
    size in memory: a 300 MiB instance raised the peak by 1.2 GB; ten at once could get the service killed). It is
    written as sent, only its two UIDs read."""
    import pynetdicom.events

    service = node.make()
    decode = pynetdicom.events.Event.dataset.fget

    def decoded(self):
        if self.assoc.acceptor.ae_title == service.ae_title:  # the service's C-STOREs (the return node stays as it is)
            raise AssertionError("the whole dataset was decoded")
        return decode(self)

    monkeypatch.setattr(pynetdicom.events.Event, "dataset", property(decoded))
    study = make_study("as-sent")
    assert all(r.ok for r in c_store(study, address(service), calling_ae=PEER))
    returned = state_of(service, study[0].StudyInstanceUID, "returned")
    assert returned["instances"] == len(study) and len(node.ret.received) == 1


def test_a_study_that_holds_the_worker_too_long_is_said_in_the_log(node, caplog):
    """Found by the service review: a pipeline that hangs blocked every later study, the state 'processing' forever
    and nothing in the log. After stalled_s, and every stalled_s again, the log names the study and how many wait."""
    import threading

    release = threading.Event()

    class Hangs(StandInPipeline):
        def __call__(self, *args, **kwargs):
            self.calls.append("hung")
            release.wait(30)
            return super().__call__(*args, **kwargs)

    service = node.make(Hangs(), stalled_s=0.4)
    first, second = make_study("hangs"), make_study("waits")
    try:
        assert all(r.ok for r in c_store(first, address(service), calling_ae=PEER))
        state_of(service, first[0].StudyInstanceUID, "processing")
        assert all(r.ok for r in c_store(second, address(service), calling_ae=PEER))
        wait_for(lambda: caplog.text.count(f"study {first[0].StudyInstanceUID} has been answered for") >= 2, 10, "the stall said twice")
        assert "1 other study wait behind it" in caplog.text
    finally:
        release.set()
    state_of(service, second[0].StudyInstanceUID, "returned")
