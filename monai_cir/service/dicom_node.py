"""A DICOM node a PACS routes dermoscopy studies to: C-ECHO and C-STORE in, similar cases back.

Life of a study (every step on disk under ``workdir``, so a restart loses nothing)::

    C-STORE from a configured peer -> incoming/<study>/<sop>.dcm
    quiet for ``quiet_s`` and no open association still sending it -> processing/<study>/
    pipeline(processing/<study>, results/<study>)        (the deploy app's operators, models warm)
    SR + Encapsulated PDF -> outbox/<study>/ -> C-STORE to the return node (or STOW-RS)
    delivered: outbox and processing copies deleted; status/<study>.json says "returned"

A study that fails (unreadable, no dermoscopy image, a pipeline error) is recorded as ``failed`` in
``status/<study>.json`` (and logged, by Study Instance UID only: no patient names in the log) and
its input is kept in ``failed/<study>/`` for the integrator; the service goes on with the next.
A return node that is down leaves the outputs in ``outbox/<study>/``: they are retried every
``retry_s`` seconds (also after a restart), and the status says ``return-pending`` with the error.

Why pynetdicom: it is the DICOM networking library of the Python DICOM stack this project already
uses (pydicom datasets in, highdicom / pydicom objects out), runs in-process next to the warm
network (no second process, no file hand-off), and gives per-association events to group instances
by study; ``storescp`` (DCMTK) would need a second process and a folder watcher, Orthanc's own
plugins would tie the service to one PACS.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
from ..dicom.publish import (
    DicomNode,
    c_store,
    check_ae_title,
    parse_dicom_node,
    stow_rs,
)

__all__ = ["SUPPORTED_SOP_CLASSES", "DicomService", "Peer", "StudyStatus", "parse_peer"]

logger = logging.getLogger(__name__)

# What the service takes: dermoscopy images and the SRs that carry their report text.
SUPPORTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.7": "Dermoscopic Photography Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage",
}
VERIFICATION = "1.2.840.10008.1.1"

STATUS_SUCCESS = 0x0000
STATUS_NOT_AUTHORIZED = 0x0124  # Refused: Not Authorized (PS3.7 C.4.2: the peer is not configured)
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Peer:
    """A caller allowed to send: AE title, and host when given (``AET`` or ``AET@HOST``)."""

    ae_title: str
    host: str | None = None

    def allows(self, ae_title: str, host: str) -> bool:
        return ae_title == self.ae_title and (self.host is None or self.host == host)

    def __str__(self) -> str:
        return self.ae_title + (f"@{self.host}" if self.host else "")


def parse_peer(text: str) -> Peer:
    """``"ORTHANC"`` or ``"ORTHANC@10.0.0.5"`` -> :class:`Peer`."""
    ae, _, host = str(text).strip().partition("@")
    check_ae_title(ae, f"the AE title of peer {text!r} (AE_TITLE or AE_TITLE@HOST)")
    return Peer(ae, host.strip() or None)


@dataclass
class StudyStatus:
    """The status record of one study (``status/<study>.json``); no patient name or ID in it."""

    study_uid: str
    state: str = "receiving"  # receiving | processing | answered | returned | return-pending | failed
    instances: int = 0
    received_from: list[str] = field(default_factory=list)
    first_received: float | None = None
    last_received: float | None = None
    started: float | None = None
    finished: float | None = None
    answered: int = 0
    outputs: list[str] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    return_attempts: int = 0
    returned: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Pending:
    last_received: float
    open_associations: set[int] = field(default_factory=set)
    status: StudyStatus | None = None


class DicomService:
    """The DICOM node. ``pipeline(input_folder, output_folder)`` answers one study and returns an
    object with ``answered`` (int), ``dicom_outputs`` (files to return) and ``problems`` (list of
    dicts), e.g. :meth:`deploy_app.pipeline.WarmPipeline.answer`.

    Args:
        pipeline: the work per complete study.
        workdir: the spool (see the module docstring).
        ae_title / host / port: where the service listens.
        peers: callers allowed to send (others are refused at association); at least one.
        return_node: ``HOST:PORT:AET`` to C-STORE the outputs to; ``return_dicomweb``: a URL to STOW-RS to.
        quiet_s: a study is complete when nothing arrived for it for this long (and no association
            still sending it is open).
        retry_s: seconds between attempts to return outputs to a node that was down.
    """

    def __init__(
        self,
        pipeline: Callable[[Path, Path], Any],
        workdir: str | Path,
        ae_title: str = "MONAICIR",
        host: str = "127.0.0.1",
        port: int = 11112,
        peers: Sequence[Peer | str] = (),
        return_node: str | None = None,
        return_dicomweb: str | None = None,
        quiet_s: float = 2.0,
        retry_s: float = 30.0,
    ) -> None:
        check_ae_title(ae_title, "the service's AE title (ae_title, --ae)")
        self.peers = [p if isinstance(p, Peer) else parse_peer(p) for p in peers]
        if not self.peers:
            raise ValueError("no peer is configured: give the PACS that sends studies (--peer AET[@HOST]); unknown callers are refused")
        if not return_node and not return_dicomweb:
            raise ValueError("nowhere to return the results: give --return HOST:PORT:AET or --return-dicomweb URL")
        if quiet_s < 0 or retry_s <= 0:
            raise ValueError(f"quiet_s must be >= 0 and retry_s > 0, got {quiet_s}, {retry_s}")
        self.pipeline = pipeline
        self.workdir = Path(workdir)
        self.ae_title, self.host, self.port = ae_title, host, int(port)
        self.return_node: DicomNode | None = parse_dicom_node(return_node) if return_node else None
        self.return_dicomweb = return_dicomweb
        self.quiet_s, self.retry_s = float(quiet_s), float(retry_s)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: dict[str, _Pending] = {}
        self._next_retry: dict[str, float] = {}
        self._server: Any = None
        self._worker: threading.Thread | None = None
        self.dirs = {name: self.workdir / name for name in ("incoming", "processing", "results", "outbox", "failed", "status")}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DicomService:
        """Recover what a previous run left on disk, listen, and start the worker thread."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        for folder in self.dirs.values():
            folder.mkdir(parents=True, exist_ok=True)
        self._recover()
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = sorted({p.ae_title for p in self.peers})  # others: A-ASSOCIATE-RJ
        ae.maximum_pdu_size = 0
        for uid in SUPPORTED_SOP_CLASSES:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="monai-cir-service", daemon=True)
        self._worker.start()
        logger.info("DICOM node %s listening on %s:%d; peers %s; returns to %s", self.ae_title, self.host, self.port,
                    ", ".join(map(str, self.peers)), self.return_node or self.return_dicomweb)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop listening, let the study in progress finish, stop the worker. What is still queued
        stays on disk and is picked up by the next :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout)
            self._worker = None
        logger.info("DICOM node %s stopped", self.ae_title)

    def __enter__(self) -> DicomService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Run until SIGTERM / SIGINT (what ``monai-cir serve`` does)."""
        import signal

        self.start()
        stopped = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopped.set())
        try:
            while not stopped.wait(1.0):
                pass
        finally:
            self.stop()

    # ------------------------------------------------------------------ status
    def status(self, study_uid: str) -> dict[str, Any] | None:
        path = self.dirs["status"] / f"{study_uid}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def statuses(self) -> list[dict[str, Any]]:
        return [s for p in sorted(self.dirs["status"].glob("*.json")) if (s := self.status(p.stem)) is not None]

    def _save_status(self, status: StudyStatus) -> None:
        atomic_write_bytes(self.dirs["status"] / f"{status.study_uid}.json", json.dumps(status.to_dict(), indent=1, default=str).encode())

    def _load_status(self, study_uid: str) -> StudyStatus:
        data = self.status(study_uid)
        if data:
            known = StudyStatus.__dataclass_fields__
            return StudyStatus(**{k: v for k, v in data.items() if k in known})
        return StudyStatus(study_uid)

    # ------------------------------------------------------------------ DIMSE handlers (server threads)
    def _caller(self, event: Any) -> tuple[str, str]:
        requestor = event.assoc.requestor
        ae = requestor.ae_title
        ae = ae.decode(errors="replace") if isinstance(ae, bytes) else str(ae)
        return ae.strip(), str(requestor.address)

    def _allowed(self, event: Any) -> bool:
        ae, host = self._caller(event)
        if any(p.allows(ae, host) for p in self.peers):
            return True
        logger.warning("refused a request from %s@%s: not a configured peer", ae, host)
        return False

    def _on_echo(self, event: Any) -> int:
        return STATUS_SUCCESS if self._allowed(event) else STATUS_NOT_AUTHORIZED

    def _on_rejected(self, event: Any) -> None:
        ae, host = self._caller(event)
        logger.warning("association from %s@%s rejected (not a configured peer, or called AE title not %s)", ae, host, self.ae_title)

    def _on_store(self, event: Any) -> int:
        if not self._allowed(event):
            return STATUS_NOT_AUTHORIZED
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            study_uid = str(ds.StudyInstanceUID)
            sop_uid = str(ds.SOPInstanceUID)
            if not study_uid or not sop_uid:
                raise ValueError("no Study or SOP Instance UID")
        except Exception as err:  # noqa: BLE001 (a payload that does not decode)
            logger.warning("C-STORE refused: the dataset cannot be read (%s: %s)", type(err).__name__, err)
            return STATUS_CANNOT_UNDERSTAND
        folder = self.dirs["incoming"] / _safe(study_uid)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            import io

            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            atomic_write_bytes(folder / f"{_safe(sop_uid)}.dcm", buffer.getvalue())
        except Exception as err:  # noqa: BLE001 (disk full, unwritable spool)
            logger.error("C-STORE of an instance of study %s could not be stored: %s", study_uid, err)
            return STATUS_OUT_OF_RESOURCES
        ae, host = self._caller(event)
        with self._lock:
            pending = self._pending.setdefault(study_uid, _Pending(time.monotonic()))
            pending.last_received = time.monotonic()
            pending.open_associations.add(id(event.assoc))
            status = pending.status or self._load_status(study_uid)
            if status.state not in ("receiving",):
                status = StudyStatus(study_uid)  # the study is sent again: a new answer
            status.instances += 1
            status.received_from = sorted({*status.received_from, f"{ae}@{host}"})
            status.first_received = status.first_received or time.time()
            status.last_received = time.time()
            pending.status = status
            if status.instances == 1:
                self._save_status(status)
        return STATUS_SUCCESS

    def _on_closed(self, event: Any) -> None:
        with self._lock:
            for pending in self._pending.values():
                pending.open_associations.discard(id(event.assoc))
        self._wake.set()

    # ------------------------------------------------------------------ the worker
    def _recover(self) -> None:
        """Requeue what a previous run left: studies half received or half processed, and outputs
        not yet returned."""
        for folder in sorted(self.dirs["processing"].iterdir()):
            target = self.dirs["incoming"] / folder.name
            target.mkdir(parents=True, exist_ok=True)
            for file in folder.iterdir():
                os.replace(file, target / file.name)
            shutil.rmtree(folder, ignore_errors=True)
        now = time.monotonic()
        for folder in sorted(self.dirs["incoming"].iterdir()):
            if folder.is_dir():
                status = self._load_status(folder.name)
                status.state = "receiving"
                status.instances = sum(1 for f in folder.glob("*.dcm"))
                self._pending[folder.name] = _Pending(now, status=status)
                logger.info("study %s: %d instance(s) from a previous run, queued", folder.name, status.instances)
        for folder in sorted(self.dirs["outbox"].iterdir()):
            if folder.is_dir():
                self._next_retry[folder.name] = 0.0
                logger.info("study %s: results from a previous run not yet returned, retrying", folder.name)

    def _ready(self) -> str | None:
        now = time.monotonic()
        with self._lock:
            for study_uid, pending in sorted(self._pending.items(), key=lambda kv: kv[1].last_received):
                if not pending.open_associations and now - pending.last_received >= self.quiet_s:
                    return study_uid
        return None

    def _work(self) -> None:
        while not self._stop.is_set():
            study_uid = self._ready()
            if study_uid is not None:
                self._process(study_uid)
                continue
            self._retry_due()
            self._wake.wait(0.05)
            self._wake.clear()

    def _process(self, study_uid: str) -> None:
        with self._lock:
            pending = self._pending.pop(study_uid)
            status = pending.status or self._load_status(study_uid)
            source = self.dirs["incoming"] / _safe(study_uid)
            work = self.dirs["processing"] / _safe(study_uid)
            shutil.rmtree(work, ignore_errors=True)
            os.replace(source, work)  # later instances of this study start a new incoming folder
        status.state, status.started = "processing", time.time()
        self._save_status(status)
        out = self.dirs["results"] / _safe(study_uid)
        shutil.rmtree(out, ignore_errors=True)
        try:
            result = self.pipeline(work, out)
            status.answered = int(result.answered)
            status.problems = list(result.problems)
            outputs = [Path(p) for p in result.dicom_outputs]
            if not status.answered or not outputs:
                raise ValueError("no dermoscopy image of the study could be answered" + (f" ({status.problems[0].get('message')})" if status.problems else ""))
        except Exception as err:  # noqa: BLE001 (one failing study must not stop the service)
            status.state, status.error, status.finished = "failed", f"{type(err).__name__}: {err}", time.time()
            failed = self.dirs["failed"] / _safe(study_uid)
            shutil.rmtree(failed, ignore_errors=True)
            os.replace(work, failed)
            self._save_status(status)  # last: a status record describes what is on disk
            logger.error("study %s failed: %s (input kept in %s)", study_uid, status.error, failed)
            return
        outbox = self.dirs["outbox"] / _safe(study_uid)
        outbox.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(outputs):
            shutil.copy2(path, outbox / f"{i:03d}-{path.name}")
        status.outputs = [p.name for p in sorted(outbox.iterdir())]
        status.state, status.finished = "answered", time.time()
        self._save_status(status)  # answered and on disk: from here on the outputs survive a restart
        shutil.rmtree(work, ignore_errors=True)
        logger.info("study %s: %d quer%s answered in %.2f s", study_uid, status.answered, "y" if status.answered == 1 else "ies", status.finished - status.started)
        self._return(study_uid, status)

    def _return(self, study_uid: str, status: StudyStatus) -> None:
        outbox = self.dirs["outbox"] / _safe(study_uid)
        files = sorted(outbox.glob("*.dcm"))
        status.return_attempts += 1
        try:
            if self.return_node is not None:
                results = c_store(files, self.return_node, calling_ae=self.ae_title)
            else:
                results = stow_rs(files, str(self.return_dicomweb))
            refused = [r for r in results if not r.ok]
            if len(results) != len(files):
                raise ConnectionError(f"{len(results)} store result(s) for {len(files)} object(s)")
            if refused:
                raise ConnectionError(f"{len(refused)} of {len(results)} object(s) refused: {refused[0].message}")
        except Exception as err:  # noqa: BLE001 (node down, refused: keep the outputs, retry later)
            status.state, status.error = "return-pending", f"{type(err).__name__}: {err}"
            self._next_retry[study_uid] = time.monotonic() + self.retry_s
            self._save_status(status)
            logger.error("study %s: results not returned (attempt %d: %s); kept in %s, retrying every %.0f s",
                         study_uid, status.return_attempts, status.error, outbox, self.retry_s)
            return
        self._next_retry.pop(study_uid, None)
        shutil.rmtree(outbox, ignore_errors=True)
        status.state, status.error, status.returned = "returned", None, time.time()
        self._save_status(status)
        logger.info("study %s: %d object(s) returned to %s", study_uid, len(files), self.return_node or self.return_dicomweb)

    def _retry_due(self) -> None:
        now = time.monotonic()
        for study_uid, due in list(self._next_retry.items()):
            if due <= now and not self._stop.is_set():
                self._return(study_uid, self._load_status(study_uid))


def _safe(uid: str) -> str:
    """A UID as a file name (UIDs are digits and dots; anything else is replaced)."""
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in uid)[:128]
