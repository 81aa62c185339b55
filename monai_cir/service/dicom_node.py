"""A DICOM node a PACS routes dermoscopy studies to: C-ECHO and C-STORE in, similar cases back.

Life of a study (every step on disk under ``workdir``, so a restart loses nothing)::

    C-STORE from a configured peer -> incoming/<study>/<sop>.dcm
    quiet for ``quiet_s`` and no open association still sending it -> a round of the study:
      the new instances -> processing/<study>/, beside (hard links to) the study's earlier instances
      pipeline(processing/<study>, results/<study>[/round-<n>])  (the deploy app's operators, models warm)
      the round's instances -> inputs/<study>/ (every instance of the study received so far)
    SR + Encapsulated PDF -> outbox/<study>/ -> C-STORE to the return node (or STOW-RS), on a thread of its own
    delivered: outbox copies deleted; status/<study>.json says "returned", with every round in "rounds"

Answering and returning run on two threads: a return node that is slow, down or hung (it takes the
connection and never answers: up to ``publish.ASSOCIATION_TIMEOUT_S`` per attempt) delays only the
returns, never the answering of the next studies. A study's outbox is changed by one of them at a time
(a per-study lock): a round answered while the previous round's answer is being sent replaces it after
that attempt.

A study may arrive in several rounds (its SR first, its image after the quiet time; or an image
added later): each round is answered over all the study's instances received so far, so a late
image is answered with the earlier SR's text and a late SR answers the image again with its text.
What goes back is what changed: an image whose answer was returned before with the same text
(an earlier image of a study that gained another), by the same model, library and settings,
keeps that answer, and only the others' answers are returned (the round's ``unchanged`` lists it). Each round's results stay in their own folder. A
round whose instances (SOP Instance UIDs) were all part of an answer already returned (a study sent
twice) is not answered again (status and log say so).

A round that fails (unreadable, no dermoscopy image, a pipeline error, a spool that cannot be
written) is recorded as ``failed`` in ``status/<study>.json`` with a one-line reason (and logged, by
Study Instance UID only: no patient names in the log); its input is added to ``failed/<study>/``
(never deleted) for the integrator, and the service goes on with the next study. A return node that
is down leaves the outputs in ``outbox/<study>/``: they are retried every ``retry_s`` seconds (also
after a restart), and the status says ``return-pending`` with the error.

Study and SOP Instance UIDs come from the network: an instance whose UIDs are not DICOM UIDs (digits
and dots, at most 64 characters) is refused (0xC000) and not kept, and every path built from a UID
goes through :func:`_uid_path`, which cannot leave its folder.

Why pynetdicom: it is the DICOM networking library of the Python DICOM stack this project already
uses (pydicom datasets in, highdicom / pydicom objects out), runs in-process next to the warm
network (no second process, no file hand-off), and gives per-association events to group instances
by study; ``storescp`` (DCMTK) would need a second process and a folder watcher, Orthanc's own
plugins would tie the service to one PACS.
"""

from __future__ import annotations

import contextlib
import filecmp
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
from ..dicom.codes import is_dicom_uid
from ..dicom.publish import (
    DicomNode,
    c_store,
    check_ae_title,
    parse_dicom_node,
    stow_rs,
)

__all__ = ["SUPPORTED_SOP_CLASSES", "CannotListen", "DicomService", "Peer", "StudyStatus", "parse_peer"]

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
# how long a connection may wait before asking for an association, and how many associations are served at once
ACSE_TIMEOUT_S = 5.0
MAX_ASSOCIATIONS = 32

def _uid_path(folder: Path, uid: str, suffix: str = "") -> Path:
    """``folder/<uid><suffix>``: the one way a path is built from a UID. A name of digits and dots that
    starts with a digit is one entry of ``folder`` (never ``..``, never a subfolder); anything else raises."""
    if not is_dicom_uid(uid):
        raise ValueError(f"not a DICOM UID (digits and dots, at most 64 characters): {str(uid)[:80]!r}")
    return folder / f"{uid}{suffix}"


class CannotListen(OSError):
    """The service could not bind its address (port in use, an address not of this machine)."""

    def __init__(self, host: str, port: int, err: OSError) -> None:
        self.host, self.port, self.reason = host, port, err.strerror or str(err)
        super().__init__(err.errno, f"cannot listen on {host}:{port}: {self.reason}")


@dataclass(frozen=True)
class Peer:
    """A caller allowed to send: AE title, and host when given (``AET`` or ``AET@HOST``); ``addresses``: the host's IP
    addresses (an IP address itself, or what a host name resolved to when the peer was parsed), which a caller's
    address is compared with."""

    ae_title: str
    host: str | None = None
    addresses: tuple[str, ...] = ()

    def allows(self, ae_title: str, host: str) -> bool:
        return ae_title == self.ae_title and (self.host is None or _plain_address(host) in (self.addresses or (self.host,)))

    def __str__(self) -> str:
        return self.ae_title + (f"@{self.host}" if self.host else "")


# a study whose rounds the service's stopping interrupted this many times in a row is set aside at start, not queued
# (a study the service's own stop cut short, recorded in _STOPPED_DURING, does not count)
MAX_INTERRUPTED_ROUNDS = 2
MAX_STOPPED_ROUNDS = 5  # rounds cut by stops and kills in a row (a study that outlasts every stop's wait)
_STOPPED_DURING = "stopped-during.json"


def parse_peer(text: str) -> Peer:
    """``"ORTHANC"``, ``"ORTHANC@10.0.0.5"`` or ``"ORTHANC@pacs.hospital.org"`` -> :class:`Peer`. A host name is resolved
    here, once: a caller is known by its IP address (a name compared as text matched no caller, and every study from
    that PACS was refused); one that does not resolve is refused now, in one line."""
    import ipaddress
    import socket

    ae, _, host = str(text).strip().partition("@")
    check_ae_title(ae, f"the AE title of peer {text!r} (AE_TITLE or AE_TITLE@HOST)")
    host = host.strip()
    if not host:
        return Peer(ae)
    try:
        return Peer(ae, host, (str(ipaddress.ip_address(host)),))
    except ValueError:
        pass
    try:
        addresses = sorted({_plain_address(str(info[4][0])) for info in socket.getaddrinfo(host, None)})
    except OSError as err:
        raise ValueError(f"peer {text!r}: host {host!r} does not resolve ({err.strerror or err}); give its IP address (AE_TITLE@10.0.0.5)") from None
    return Peer(ae, host, tuple(addresses))


def _plain_address(address: str) -> str:
    """An IP address as one spelling: an IPv4 address mapped into IPv6 (``::ffff:10.0.0.5``) as IPv4."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(str(address).split("%")[0])
    except ValueError:
        return str(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


@dataclass
class StudyStatus:
    """The status record of one study (``status/<study>.json``); no patient name or ID in it.

    The top-level fields describe the study's latest round; ``rounds`` keeps every round (its state,
    instances, answer, results folder, error); ``returned_instances`` the SOP Instance UIDs that were
    part of an answer already returned (a round of only those is not answered again);
    ``returned_answers`` the images whose answer was returned: SOP Instance UID -> a digest of what
    it was answered with (its text, the model, the library, the settings: a later round returns an
    image's answer again only when one of them changed); ``returned_srs`` the similar-cases SR last returned for each
    image (SOP Instance UID -> its study, series, SOP class and instance UIDs): a later answer of the image names it in its
    Predecessor Documents Sequence, so that a PACS, a RIS or a reader sees which answer replaces which."""

    study_uid: str
    state: str = "receiving"  # receiving | processing | answered | returned | return-pending | failed
    instances: int = 0  # instances received, all rounds
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
    rounds: list[dict[str, Any]] = field(default_factory=list)
    returned_instances: list[str] = field(default_factory=list)
    returned_answers: dict[str, str] = field(default_factory=dict)
    returned_srs: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Pending:
    last_received: float
    open_associations: set[int] = field(default_factory=set)


class DicomService:
    """The DICOM node. ``pipeline(input_folder, output_folder)`` answers one study and returns an
    object with ``answered`` (int), ``dicom_outputs`` (files to return) and ``problems`` (list of
    dicts), e.g. :meth:`deploy_app.pipeline.WarmPipeline.answer`; with a ``summary`` (the app's
    results.json: per query its ``sop_instance_uid``, ``text`` and ``outputs``), an image answered and
    returned before with the same text keeps its earlier answer (its outputs are not returned again).

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
        stalled_s: float = 600.0,
    ) -> None:
        """``stalled_s``: how long answering one study may take before the log says, and says again every as long,
        that it holds up the studies queued behind it (a hung pipeline answered nothing more, without a word)."""
        check_ae_title(ae_title, "the service's AE title (ae_title, --ae)")
        self.peers = [p if isinstance(p, Peer) else parse_peer(p) for p in peers]
        if not self.peers:
            raise ValueError("no peer is configured: give the PACS that sends studies (--peer AET[@HOST]); unknown callers are refused")
        if not return_node and not return_dicomweb:
            raise ValueError("nowhere to return the results: give --return HOST:PORT:AET or --return-dicomweb URL")
        if quiet_s < 0 or retry_s <= 0:
            raise ValueError(f"quiet_s must be >= 0 and retry_s > 0, got {quiet_s}, {retry_s}")
        if not 0 < int(port) < 65536:
            raise ValueError(f"port must be 1-65535, got {port}")
        self.pipeline = pipeline
        self.workdir = Path(workdir)
        self.ae_title, self.host, self.port = ae_title, host, int(port)
        self.return_node: DicomNode | None = parse_dicom_node(return_node) if return_node else None
        self.return_dicomweb = return_dicomweb
        self.quiet_s, self.retry_s, self.stalled_s = float(quiet_s), float(retry_s), float(stalled_s)
        self._processing_since = 0.0  # monotonic start of the study the worker answers
        self._stall_said = 0  # how many stalled_s periods of it the log has said
        self._lock = threading.RLock()  # guards _pending, _statuses and every status change + save
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: dict[str, _Pending] = {}
        self._statuses: dict[str, StudyStatus] = {}  # the studies in flight (one record per study, shared by the threads)
        self._next_retry: dict[str, float] = {}
        self._server: Any = None
        self._worker: threading.Thread | None = None
        self._deliverer: threading.Thread | None = None
        self._deliver_wake = threading.Event()
        self._outbox_locks: dict[str, threading.Lock] = {}  # per study: the deliverer's send vs the worker's next answer
        self._processing: str | None = None  # the study the worker is answering
        self.dirs = {name: self.workdir / name for name in ("incoming", "processing", "inputs", "results", "outbox", "failed", "status")}

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
        # a connection that sends no association request is dropped after ACSE_TIMEOUT_S (pynetdicom's 30 s let a host
        # hold the association slots with idle connections: the PACS was rejected meanwhile)
        ae.acse_timeout = ACSE_TIMEOUT_S
        ae.maximum_associations = MAX_ASSOCIATIONS
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
        try:
            self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        except OSError as err:  # the port is taken, or the address is not this machine's
            raise CannotListen(self.host, self.port, err) from err
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="monai-cir-service", daemon=True)
        self._worker.start()
        self._deliverer = threading.Thread(target=self._deliver, name="monai-cir-return", daemon=True)
        self._deliverer.start()
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
        self._deliver_wake.set()
        deadline = time.monotonic() + timeout
        for thread in (self._worker, self._deliverer):  # a send in progress ends within its association timeout
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            cut = self._processing
        if cut is not None:  # still answering when the wait ended: the next start runs it again, as no crash of it
            from ..atomic import atomic_write_text

            atomic_write_text(self.workdir / _STOPPED_DURING, json.dumps({"study": cut}))
            logger.warning("study %s: still being answered after %.0f s; stopped, it is answered again at the next start", cut, timeout)
        self._worker = self._deliverer = None
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
        if not is_dicom_uid(study_uid):
            return None
        try:
            return json.loads(_uid_path(self.dirs["status"], study_uid, ".json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def statuses(self) -> list[dict[str, Any]]:
        return [s for p in sorted(self.dirs["status"].glob("*.json")) if (s := self.status(p.stem)) is not None]

    def _save_status(self, status: StudyStatus) -> None:
        with self._lock:
            data = json.dumps(status.to_dict(), indent=1, default=str).encode()
            atomic_write_bytes(_uid_path(self.dirs["status"], status.study_uid, ".json"), data, durable=True)

    def _load_status(self, study_uid: str) -> StudyStatus:
        data = self.status(study_uid)
        if data:
            known = StudyStatus.__dataclass_fields__
            return StudyStatus(**{k: v for k, v in data.items() if k in known})
        return StudyStatus(study_uid)

    def _status_of(self, study_uid: str) -> StudyStatus:
        """The one in-memory record of a study in flight (loaded from disk the first time)."""
        with self._lock:
            status = self._statuses.get(study_uid)
            if status is None:
                status = self._statuses[study_uid] = self._load_status(study_uid)
            return status

    def _settled(self, study_uid: str, state: str) -> str:
        """``state``, or ``receiving`` when instances of a next round arrived meanwhile."""
        with self._lock:
            return "receiving" if study_uid in self._pending else state

    def _release(self, study_uid: str) -> None:
        """Forget the in-memory record of a study with nothing left to do (its file stays); not while the worker
        processes it (the deliverer released it mid-round, and the worker's next step loaded a second record)."""
        with self._lock:
            worker = threading.current_thread() is self._worker  # the worker releases the study it ends itself
            if study_uid not in self._pending and study_uid not in self._next_retry and (worker or study_uid != self._processing):
                self._statuses.pop(study_uid, None)
                self._outbox_locks.pop(study_uid, None)

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
        active = [a for a in event.assoc.ae.active_associations if a.is_acceptor]
        if len(active) > event.assoc.ae.maximum_associations:  # the reason pynetdicom rejected it: say the right one
            logger.warning("association from %s@%s rejected: the node's limit of %d associations at once is reached (connections "
                           "that are slow or send nothing hold them; keep the node reachable from its peers only)",
                           ae, host, event.assoc.ae.maximum_associations)
            return
        logger.warning("association from %s@%s rejected (not a configured peer, or called AE title not %s)", ae, host, self.ae_title)

    def _on_store(self, event: Any) -> int:
        if not self._allowed(event):
            return STATUS_NOT_AUTHORIZED
        try:
            import io

            import pydicom

            # the instance as sent, not decoded and encoded again: its bytes once in memory (with a decoded copy and a
            # buffer, a 300 MiB instance took 1.2 GB more), and only the two UIDs read from it
            encoded = event.encoded_dataset(include_meta=True)
            ds = pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SOPInstanceUID"])
            study_uid = str(ds.get("StudyInstanceUID", "") or "")
            sop_uid = str(ds.get("SOPInstanceUID", "") or "")
            if not study_uid or not sop_uid:
                raise ValueError("no Study or SOP Instance UID")
        except Exception as err:  # noqa: BLE001 (a payload that does not decode)
            logger.warning("C-STORE refused: the dataset cannot be read (%s: %s)", type(err).__name__, err)
            return STATUS_CANNOT_UNDERSTAND
        bad = [f"{name} {uid[:80]!r}" for name, uid in (("Study Instance UID", study_uid), ("SOP Instance UID", sop_uid)) if not is_dicom_uid(uid)]
        if bad:  # the UIDs name the spool's files: anything but digits and dots is refused, nothing kept
            logger.warning("C-STORE refused: %s not a DICOM UID (digits and dots, at most 64 characters)", " and ".join(bad))
            return STATUS_CANNOT_UNDERSTAND
        try:
            folder = _uid_path(self.dirs["incoming"], study_uid)
            for attempt in range(2):  # the worker may remove the (empty) folder between the two steps
                folder.mkdir(parents=True, exist_ok=True)
                try:
                    # on the disk before the C-STORE is acknowledged (the sender may then delete its copy)
                    atomic_write_bytes(_uid_path(folder, sop_uid, ".dcm"), encoded, durable=True)
                    break
                except FileNotFoundError:
                    if attempt:
                        raise
        except Exception as err:  # noqa: BLE001 (disk full, unwritable spool)
            logger.error("C-STORE of an instance of study %s could not be stored: %s", study_uid, err)
            return STATUS_OUT_OF_RESOURCES
        ae, host = self._caller(event)
        with self._lock:
            pending = self._pending.setdefault(study_uid, _Pending(time.monotonic()))
            pending.last_received = time.monotonic()
            pending.open_associations.add(id(event.assoc))
            status = self._status_of(study_uid)
            new_round = status.state != "receiving"  # sent again or completed: a new round, the history stays
            status.state = "receiving"
            status.instances += 1
            status.received_from = sorted({*status.received_from, f"{ae}@{host}"})
            status.first_received = status.first_received or time.time()
            status.last_received = time.time()
            if new_round:
                logger.info("study %s: receiving (round %d)", study_uid, len(status.rounds) + 1)
            try:  # at every instance: the record on disk counts what is on disk
                self._save_status(status)
            except Exception as err:  # noqa: BLE001 (the instance is on disk; the worker reports the spool)
                logger.error("study %s: status record not written: %s", study_uid, err)
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
            if not is_dicom_uid(folder.name):
                logger.warning("%s: not a study of this service (the name is no DICOM UID), left alone", folder)
                continue
            target = _uid_path(self.dirs["incoming"], folder.name)
            earlier = _uid_path(self.dirs["inputs"], folder.name)
            target.mkdir(parents=True, exist_ok=True)
            for file in folder.iterdir():
                if _same_file(file, earlier / file.name):
                    file.unlink()  # a link to an earlier round's instance: it is in inputs/ already
                else:
                    os.replace(file, target / file.name)
            shutil.rmtree(folder, ignore_errors=True)
        now = time.monotonic()
        stopped_during = None  # the study a stop the service chose cut short (stop()): no crash of it
        marker = self.workdir / _STOPPED_DURING
        if marker.is_file():
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stopped_during = json.loads(marker.read_text()).get("study")
            marker.unlink(missing_ok=True)
        for folder in sorted(self.dirs["outbox"].iterdir()):
            if folder.is_dir() and folder.name.endswith(".new"):  # a next answer cut while it was staged
                shutil.rmtree(folder, ignore_errors=True)
        for folder in sorted(self.dirs["incoming"].iterdir()):
            if not folder.is_dir() or not is_dicom_uid(folder.name):
                continue
            if not any(folder.glob("*.dcm")):
                with contextlib.suppress(OSError):
                    folder.rmdir()
                continue
            status = self._status_of(folder.name)
            status.state = "receiving"
            for rnd in status.rounds:
                if rnd.get("state") == "processing":
                    # the service stopped during it: the round is run again; counted as a crash unless stop() cut it
                    rnd["state"] = "stopped" if folder.name == stopped_during else "interrupted"
            cut = next((i for i, rnd in enumerate(reversed(status.rounds)) if rnd.get("state") not in ("interrupted", "stopped")), len(status.rounds))
            killed = sum(rnd.get("state") == "interrupted" for rnd in status.rounds[len(status.rounds) - cut:])
            # a study that kills the service (memory) would kill it at every start; one that outlasts every stop's wait
            # (a hung pipeline) would be retried at every start
            if killed >= MAX_INTERRUPTED_ROUNDS or cut >= MAX_STOPPED_ROUNDS:
                self._set_aside(folder, status, cut)
                continue
            self._pending[folder.name] = _Pending(now)
            logger.info("study %s: %d new instance(s) from a previous run, queued", folder.name, sum(1 for _ in folder.glob("*.dcm")))
        for folder in sorted(self.dirs["outbox"].iterdir()):
            if folder.is_dir() and is_dicom_uid(folder.name):
                self._next_retry[folder.name] = 0.0
                logger.info("study %s: results from a previous run not yet returned, retrying", folder.name)

    def _set_aside(self, folder: Path, status: StudyStatus, stopped: int) -> None:
        """A study the service stopped answering ``stopped`` times in a row (killed while answering it: out of memory, a
        crash): its instances go to failed/<study>/ and it is not answered again on its own, so that the service does
        not die again at every start; sent again, it is answered again."""
        failed = _uid_path(self.dirs["failed"], folder.name)
        failed.mkdir(parents=True, exist_ok=True)
        for file in sorted(folder.iterdir()):
            os.replace(file, failed / file.name)
        with contextlib.suppress(OSError):
            folder.rmdir()
        status.state, status.finished = "failed", time.time()
        status.error = (f"the service stopped {stopped} times while answering this study (killed: out of memory? or a crash): not answered again "
                        f"on its own, so that it does not stop the service at every start; its instances are in {failed}; send it again to retry")
        self._save_status(status)
        logger.error("study %s: %s", folder.name, status.error)

    def _ready(self) -> str | None:
        now = time.monotonic()
        with self._lock:
            for study_uid, pending in sorted(self._pending.items(), key=lambda kv: kv[1].last_received):
                if not pending.open_associations and now - pending.last_received >= self.quiet_s:
                    return study_uid
        return None

    def _work(self) -> None:
        """The worker thread: never ends on an error (one study's failure is that study's, logged)."""
        while not self._stop.is_set():
            study_uid = None
            try:
                study_uid = self._ready()
                if study_uid is not None:
                    with self._lock:
                        self._processing, self._processing_since, self._stall_said = study_uid, time.monotonic(), 0
                    try:
                        self._process(study_uid)
                    finally:
                        with self._lock:
                            self._processing = None
                    continue
                self._wake.wait(0.05)
                self._wake.clear()
            except Exception as err:  # noqa: BLE001 (anything: the service must go on with the next study)
                try:
                    self._worker_error(study_uid, err)
                except Exception:  # noqa: BLE001 (even the report failed: log it, never end the thread)
                    logger.exception("study %s: %s; recording the failure failed too", study_uid, _one_line(err))
                time.sleep(0.05)

    def _worker_error(self, study_uid: str | None, err: BaseException) -> None:
        reason = _one_line(err)
        if study_uid is None:
            logger.error("service worker: %s (going on)", reason)
            return
        with self._lock:
            self._pending.pop(study_uid, None)
            status = self._status_of(study_uid)
            status.state, status.error, status.finished = "failed", reason, time.time()
            if status.rounds and status.rounds[-1].get("state") == "processing":
                status.rounds[-1].update(state="failed", error=reason, finished=status.finished)
            where = [str(p) for d in ("processing", "incoming") if (p := _uid_path(self.dirs[d], study_uid)).exists()]
            try:
                self._save_status(status)
            except Exception as save_err:  # noqa: BLE001
                reason += f"; status record not written: {_one_line(save_err)}"
        logger.error("study %s failed: %s (input kept in %s)", study_uid, reason, ", ".join(where) or "inputs/")
        self._release(study_uid)

    def _process(self, study_uid: str) -> None:
        """One round of a study: its new instances with every earlier one, answered and returned."""
        incoming = _uid_path(self.dirs["incoming"], study_uid)
        work = _uid_path(self.dirs["processing"], study_uid)
        inputs = _uid_path(self.dirs["inputs"], study_uid)
        with self._lock:
            self._pending.pop(study_uid, None)
            status = self._status_of(study_uid)
            work.mkdir(parents=True, exist_ok=True)
            if incoming.is_dir():
                for file in sorted(incoming.glob("*.dcm")):
                    os.replace(file, work / file.name)  # a resent instance replaces its earlier copy
                with contextlib.suppress(OSError):
                    incoming.rmdir()  # later instances of this study start a new incoming folder (a new round)
        new = sorted(f.name for f in work.glob("*.dcm") if not _same_file(f, inputs / f.name))
        if not new:
            with self._lock:  # nothing new (its file was taken by the round before): the study's state is that round's
                if status.state == "receiving" and study_uid not in self._pending and status.rounds:
                    status.state = next((r["state"] for r in reversed(status.rounds)
                                         if r.get("state") in ("answered", "returned", "return-pending", "failed")), status.state)
                    with contextlib.suppress(Exception):
                        self._save_status(status)
            with contextlib.suppress(OSError):
                work.rmdir()
            self._release(study_uid)
            return
        if inputs.is_dir():  # the study's earlier instances: every round sees the whole study so far
            for file in sorted(inputs.glob("*.dcm")):
                if not (work / file.name).exists():
                    _link(file, work / file.name)
        sops = sorted(f.name[: -len(".dcm")] for f in work.glob("*.dcm"))
        new_sops = [name[: -len(".dcm")] for name in new]
        with self._lock:
            rnd: dict[str, Any] = {"round": len(status.rounds) + 1, "state": "processing", "new_instances": len(new), "instances": len(sops), "started": time.time()}
            # instances of an answer returned, or answered and still on its way to the return node (a slow PACS): sent
            # again, they are a duplicate (they were answered a second time, and the PACS got two SRs of one image)
            on_its_way = {sop for r in status.rounds if r.get("state") in ("answered", "return-pending") for sop in r.get("input_sops", [])}
            if set(new_sops) <= set(status.returned_instances) | on_its_way:
                rnd.update(state="duplicate", finished=rnd["started"], note=f"all {len(new)} instance(s) were part of an answer already returned or on its way: not answered again")
                before = next((r["state"] for r in reversed(status.rounds) if r.get("state") in ("answered", "returned", "return-pending")), "returned")
                status.rounds.append(rnd)
                status.state = self._settled(study_uid, before)
                if before == "returned":
                    status.error = None
                self._save_status(status)
                logger.info("study %s: %d instance(s) sent again, all part of an answer already returned: not answered again", study_uid, len(new))
                self._absorb(work, inputs)
                self._release(study_uid)
                return
            status.rounds.append(rnd)
            status.state, status.started, status.finished, status.error = "processing", rnd["started"], None, None
            self._save_status(status)
        # the first round's results in results/<study>/ (most studies have one round), a later round's in
        # results/<study>/round-<n>/: no round's results are written over or deleted
        out = _uid_path(self.dirs["results"], study_uid)
        if rnd["round"] > 1:
            out = out / f"round-{rnd['round']}"
        while out.exists():  # never over an earlier round's results
            out = out.with_name(out.name + "+")
        with self._lock:  # the receiving thread may be writing this record
            rnd["results"] = str(out.relative_to(self.workdir))
        try:
            result = self.pipeline(work, out)
            answered, problems = int(result.answered), list(result.problems)
            outputs = [Path(p) for p in result.dicom_outputs]
            if not answered or not outputs:
                raise ValueError("no dermoscopy image of the study could be answered" + (f" ({problems[0].get('message')})" if problems else ""))
            keys, unchanged = _answer_keys(result, out, outputs, status.returned_answers)
            if unchanged:  # answered and returned before with the same text: that answer stands
                dropped = {path for paths in unchanged.values() for path in paths}
                outputs = [p for p in outputs if p not in dropped]
                with self._lock:
                    rnd["unchanged"] = sorted(unchanged)
            # an image answered again (its text changed, another model): its new SR names the one it replaces
            answer_srs = _link_predecessors(result, out, outputs, status.returned_srs)
            if not outputs:
                with self._lock:
                    # an earlier round's answer may still be on its way (answered): its delivery settles the state then
                    before = next((r["state"] for r in reversed(status.rounds[:-1]) if r.get("state") in ("answered", "returned", "return-pending")), "returned")
                    status.finished = time.time()
                    status.answered, status.problems = answered, problems
                    rnd.update(state="unchanged", answered=answered, problems=problems, finished=status.finished, input_sops=sops,
                               note=f"every image was answered and returned before with the same text ({len(unchanged)}): those answers stand")
                    # its instances are part of answers returned: sent again, they are a duplicate (not run again)
                    status.returned_instances = sorted({*status.returned_instances, *sops})
                    status.state = self._settled(study_uid, before)
                    self._save_status(status)
                logger.info("study %s: round %d changed no answer (%d image(s) answered before with the same text): nothing returned",
                            study_uid, rnd["round"], len(unchanged))
                for problem in problems:
                    logger.warning("study %s: round %d: %s", study_uid, rnd["round"], problem.get("message", problem))
                self._absorb(work, inputs)
                self._release(study_uid)
                return
            outbox = _uid_path(self.dirs["outbox"], study_uid)
            # not while the deliverer sends the previous round's answer from this outbox (lock order: outbox, then _lock)
            with self._outbox_lock(study_uid), self._lock:
                # built whole beside the outbox, then swapped in: a copy that fails (disk full) leaves the earlier
                # round's answer, still to be delivered, as it was (it was deleted first, and a cut-off file retried forever)
                staged = outbox.with_name(outbox.name + ".new")
                shutil.rmtree(staged, ignore_errors=True)
                try:
                    staged.mkdir(parents=True)
                    for i, path in enumerate(outputs):
                        shutil.copy2(path, staged / f"{i:03d}-{path.name}")
                except BaseException:
                    shutil.rmtree(staged, ignore_errors=True)
                    raise
                superseded = outbox.exists()  # an earlier round's answer not yet delivered: this one replaces it
                if superseded:
                    shutil.rmtree(outbox)  # its files stay in that round's results folder
                    for earlier in status.rounds[:-1]:
                        if earlier.get("state") in ("answered", "return-pending"):
                            earlier["state"] = "superseded"
                os.replace(staged, outbox)
                status.answered, status.problems = answered, problems
                status.outputs = [p.name for p in sorted(outbox.iterdir())]
                status.finished = time.time()
                rnd.update(state="answered", answered=answered, outputs=status.outputs, finished=status.finished, input_sops=sops, answer_keys=keys,
                           answer_srs=answer_srs)
                status.state = self._settled(study_uid, "answered")
                self._save_status(status)  # answered and on disk: from here on the outputs survive a restart
        except Exception as err:  # noqa: BLE001 (one failing round must not stop the service)
            self._round_failed(study_uid, status, rnd, _one_line(err), work, inputs)
            return
        try:
            self._absorb(work, inputs)
        except Exception as err:  # noqa: BLE001 (the answer is in the outbox; the input stays in processing/)
            logger.error("study %s: the round's input stays in %s: %s", study_uid, work, _one_line(err))
        logger.info("study %s: %d quer%s answered in %.2f s (round %d, %d instance(s), %d new)", study_uid, answered, "y" if answered == 1 else "ies",
                    status.finished - status.started, rnd["round"], len(sops), len(new))
        with self._lock:
            self._next_retry[study_uid] = 0.0  # due now, on the deliverer's thread
        self._deliver_wake.set()

    def _round_failed(self, study_uid: str, status: StudyStatus, rnd: dict[str, Any], reason: str, work: Path, inputs: Path) -> None:
        """A failed round: its input added to failed/<study>/ (never deleted) and kept for later rounds."""
        failed = _uid_path(self.dirs["failed"], study_uid)
        kept = str(failed)
        try:
            failed.mkdir(parents=True, exist_ok=True)
            for file in sorted(work.glob("*.dcm")):
                target = failed / file.name
                if target.exists() and (_same_file(file, target) or filecmp.cmp(file, target, shallow=False)):
                    continue
                if target.exists():  # another version of the instance: both kept
                    target = failed / f"{file.stem}-round{rnd['round']}.dcm"
                _link(file, target)
            self._absorb(work, inputs)
        except Exception as err:  # noqa: BLE001 (a spool that cannot be written: the input stays where it is)
            kept = f"{work} (not moved: {_one_line(err)})"
        with self._lock:
            status.state, status.error, status.finished = self._settled(study_uid, "failed"), reason, time.time()
            rnd.update(state="failed", error=reason, finished=status.finished)
            try:
                self._save_status(status)  # last: a status record describes what is on disk
            except Exception as err:  # noqa: BLE001
                reason += f"; status record not written: {_one_line(err)}"
        logger.error("study %s failed (round %d): %s (input kept in %s)", study_uid, rnd["round"], reason, kept)
        self._release(study_uid)

    def _absorb(self, work: Path, inputs: Path) -> None:
        """The round's instances join the study's earlier ones (inputs/<study>/); processing/ is emptied."""
        inputs.mkdir(parents=True, exist_ok=True)
        for file in sorted(work.iterdir()):
            if _same_file(file, inputs / file.name):
                file.unlink()  # a link to an earlier round's instance (os.replace of a file onto itself does nothing)
            else:
                os.replace(file, inputs / file.name)
        work.rmdir()

    def _fail_refused_round(self, study_uid: str, status: StudyStatus, rnd: dict[str, Any] | None, outbox: Path, refused: list[Any]) -> None:
        """The return node refused objects for good (:func:`_refused_for_good`): the round fails with the reason, the
        objects go to failed/<study>/refused-by-return-node/ and are not sent again (they were, every retry_s, forever)."""
        reason = (f"{len(refused)} object(s) refused by {self.return_node or self.return_dicomweb} for good ({refused[0].message}): "
                  "not sent again; the objects are kept in failed/")
        kept = _uid_path(self.dirs["failed"], study_uid) / "refused-by-return-node"
        with self._lock:
            kept.parent.mkdir(parents=True, exist_ok=True)
            if kept.exists():
                shutil.rmtree(kept)
            os.replace(outbox, kept)
            self._next_retry.pop(study_uid, None)
            status.error = reason
            if status.state not in ("receiving", "processing"):
                status.state = "failed"
            if rnd is not None:
                rnd.update(state="failed", error=reason, finished=time.time())
            self._save_status(status)
        logger.error("study %s: %s", study_uid, reason)
        self._release(study_uid)

    # ------------------------------------------------------------------ the deliverer
    def _outbox_lock(self, study_uid: str) -> threading.Lock:
        with self._lock:
            return self._outbox_locks.setdefault(study_uid, threading.Lock())

    def _deliver(self) -> None:
        """The deliverer thread: returns answered studies and retries those whose return failed, oldest due first;
        never ends on an error."""
        while not self._stop.is_set():
            study_uid = None
            try:
                self._say_if_stalled()
                study_uid = self._due()
                if study_uid is not None:
                    self._return(study_uid, self._status_of(study_uid))
                    continue
            except Exception as err:  # noqa: BLE001 (e.g. the status record cannot be written: try again later)
                if study_uid is not None:
                    with self._lock:
                        self._next_retry[study_uid] = time.monotonic() + self.retry_s
                logger.error("study %s: returning the results failed: %s; retrying in %.0f s", study_uid, _one_line(err), self.retry_s)
            self._deliver_wake.wait(0.05)
            self._deliver_wake.clear()

    def _say_if_stalled(self) -> None:
        """A study answered for longer than ``stalled_s``: logged then, and again every ``stalled_s``, with how many
        studies wait behind it (on the deliverer's thread, which the worker's study does not hold up)."""
        with self._lock:
            study_uid, since, said = self._processing, self._processing_since, self._stall_said
            waiting = len(self._pending) - (study_uid in self._pending)
        if study_uid is None:
            return
        periods = int((time.monotonic() - since) // self.stalled_s)
        if periods > said:
            with self._lock:
                self._stall_said = periods
            logger.warning("study %s has been answered for %.0f s (the pipeline stalled?); %d other stud%s wait behind it; a stop "
                           "(SIGTERM) answers it again at the next start", study_uid, periods * self.stalled_s, waiting,
                           "y" if waiting == 1 else "ies")

    def _due(self) -> str | None:
        now = time.monotonic()
        with self._lock:
            due = [(when, study_uid) for study_uid, when in self._next_retry.items() if when <= now]
        return min(due)[1] if due else None

    def _return(self, study_uid: str, status: StudyStatus) -> None:
        with self._outbox_lock(study_uid):  # the worker does not replace this outbox while it is being sent
            self._return_outbox(study_uid, status)

    def _return_outbox(self, study_uid: str, status: StudyStatus) -> None:
        outbox = _uid_path(self.dirs["outbox"], study_uid)
        files = sorted(outbox.glob("*.dcm"))
        with self._lock:
            rnd = next((r for r in reversed(status.rounds) if r.get("state") in ("answered", "return-pending")), None)
            status.return_attempts += 1
        try:
            if files:  # none left: every object was stored by an earlier attempt whose status record was not written
                if self.return_node is not None:
                    results = c_store(files, self.return_node, calling_ae=self.ae_title)
                else:
                    results = stow_rs(files, str(self.return_dicomweb))
                if len(results) != len(files):
                    raise ConnectionError(f"{len(results)} store result(s) for {len(files)} object(s)")
                for file, result in zip(files, results):
                    if result.ok:  # stored: a retry sends only what the node has not (it re-sent every object each time)
                        file.unlink(missing_ok=True)
                refused = [r for r in results if not r.ok]
                if refused and all(_refused_for_good(r) for r in refused):
                    self._fail_refused_round(study_uid, status, rnd, outbox, refused)
                    return
                if refused:
                    raise ConnectionError(f"{len(refused)} of {len(results)} object(s) refused: {refused[0].message}")
        except Exception as err:  # noqa: BLE001 (node down, refused: keep the outputs, retry later)
            with self._lock:
                status.error = _one_line(err)
                if status.state not in ("receiving", "processing"):  # not while a newer round is received or answered
                    status.state = "return-pending"
                if rnd is not None:
                    rnd.update(state="return-pending", error=status.error)
                self._next_retry[study_uid] = time.monotonic() + self.retry_s
                self._save_status(status)
            logger.error("study %s: results not returned (attempt %d: %s); kept in %s, retrying every %.0f s",
                         study_uid, status.return_attempts, status.error, outbox, self.retry_s)
            return
        with self._lock:
            status.returned = time.time()
            if status.state not in ("receiving", "processing"):
                status.state, status.error = "returned", None
            if rnd is not None:
                rnd.update(state="returned", error=None, returned=status.returned)
                status.returned_instances = sorted({*status.returned_instances, *rnd.get("input_sops", [])})
                status.returned_answers.update(rnd.get("answer_keys", {}))
                status.returned_srs.update(rnd.get("answer_srs", {}))
            self._save_status(status)  # first: a record not written leaves the (empty) outbox, delivered on the next try
            self._next_retry.pop(study_uid, None)
            shutil.rmtree(outbox, ignore_errors=True)
        logger.info("study %s: %d object(s) returned to %s", study_uid, len(files), self.return_node or self.return_dicomweb)
        self._release(study_uid)


def _refused_for_good(result: Any) -> bool:
    """Whether a store result is a refusal that sending again cannot change: the object does not match its SOP class
    (0xA9xx), cannot be understood (0xCxxx), its SOP class is not supported (0x0122) or no presentation context accepts
    it; out of resources (0xA7xx), any 0xCxxx (pynetdicom answers 0xC211 when its store handler fails: a full disk, a
    locked database), no response or a network failure are worth retrying."""
    code = getattr(result, "status", None)
    if code is None:
        return "context" in str(getattr(result, "message", "")).lower()
    return 0xA900 <= code <= 0xA9FF or code == 0x0122


def _link_predecessors(result: Any, out: Path, outputs: list[Path], returned: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The similar-cases SR of each image this round returns (from the pipeline's ``summary``: SOP Instance UID -> its
    study, series, class and instance UIDs); an image whose earlier SR was returned (``returned``) gets that SR in its new
    SR's Predecessor Documents Sequence (the file rewritten in place, before it is queued). No summary: nothing."""
    import pydicom
    from pydicom.dataset import Dataset

    from ..atomic import atomic_path

    summary = getattr(result, "summary", None)
    srs: dict[str, dict[str, str]] = {}
    if not isinstance(summary, dict):
        return srs
    for query in summary.get("queries", []):
        sop, rel = query.get("sop_instance_uid"), (query.get("outputs") or {}).get("sr")
        path = out / str(rel) if rel else None
        if not sop or path is None or path not in outputs:
            continue
        earlier = returned.get(sop)
        try:  # its UIDs only (no content tree parsed), unless it is rewritten
            ds = pydicom.dcmread(path, specific_tags=None if earlier else ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"])
        except Exception as err:  # noqa: BLE001 (the answer goes back all the same, unlinked)
            logger.warning("%s: the answer's SR could not be read to link the one it replaces: %s", path, _one_line(err))
            continue
        if earlier and earlier.get("sop") != str(ds.SOPInstanceUID):
            instance = Dataset()
            instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = earlier["class"], earlier["sop"]
            series = Dataset()
            series.SeriesInstanceUID, series.ReferencedSOPSequence = earlier["series"], [instance]
            item = Dataset()
            item.StudyInstanceUID, item.ReferencedSeriesSequence = earlier["study"], [series]
            ds.PredecessorDocumentsSequence = [item]
            with atomic_path(path) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        srs[sop] = {"study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID), "class": str(ds.SOPClassUID), "sop": str(ds.SOPInstanceUID)}
    return srs


def _answer_keys(result: Any, out: Path, outputs: list[Path], returned: dict[str, str]) -> tuple[dict[str, str], dict[str, list[Path]]]:
    """``(keys, unchanged)`` of a round's answers, from the pipeline's ``summary`` (none: ``({}, {})``, every
    output returned): ``keys`` SOP Instance UID -> digest of what each image was answered with (its text, and the
    run's model, library and settings, as the summary states them), for the images with outputs to return;
    ``unchanged`` SOP Instance UID -> its outputs, for the images ``returned`` holds with the same digest. A query
    whose text the summary does not state is always returned."""
    import hashlib

    summary = getattr(result, "summary", None)
    keys: dict[str, str] = {}
    unchanged: dict[str, list[Path]] = {}
    if not isinstance(summary, dict):
        return keys, unchanged
    run = {name: summary.get(name) for name in ("model", "index", "index_cases", "settings")}
    for query in summary.get("queries", []):
        sop = query.get("sop_instance_uid")
        paths = [p for p in (out / str(rel) for rel in (query.get("outputs") or {}).values()) if p in outputs]
        if not sop or not paths or "text" not in query:
            continue
        digest = hashlib.sha256(json.dumps({**run, "text": query["text"] or ""}, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if returned.get(sop) == digest:
            unchanged[sop] = paths
        else:
            keys[sop] = digest
    return keys, unchanged


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:500]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _link(source: Path, target: Path) -> None:
    """A hard link (no second copy of the pixels), a copy where links are not possible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
