"""Send results to a PACS: DICOM C-STORE (pynetdicom) and DICOMweb STOW-RS (dicomweb-client).

Both take files or pydicom datasets and return one :class:`StoreResult` per object; a refused
object does not stop the others. Presentation contexts are proposed per SOP class with the
object's own transfer syntax (JPEG Baseline images are sent as they are, never transcoded).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = ["NODE_SYNTAX", "DicomNode", "StoreResult", "c_store", "check_ae_title", "parse_dicom_node", "stow_rs"]

logger = logging.getLogger(__name__)


NODE_SYNTAX = "HOST:PORT:AET or AET@HOST:PORT (e.g. 127.0.0.1:4242:ORTHANC)"

# a host name or an IP address (IPv6 unbracketed, as sockets take it, with an optional %zone)
_HOST = re.compile(r"[A-Za-z0-9._:%-]*[A-Za-z0-9][A-Za-z0-9._:%-]*")


def check_ae_title(value: str, what: str) -> str:
    """``value`` when it is a valid DICOM AE title (PS3.5 VR AE), else a ``ValueError`` naming ``what``.

    Why here: every AE title the project sends or answers with (C-STORE destination, calling AE,
    the service's own, its peers) is checked by this one rule, so they fail alike and early
    instead of at association time."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be an AE title of 1..16 characters, got {value!r}")
    if len(value) > 16:
        raise ValueError(f"{what} must be an AE title of at most 16 characters, got {value!r} ({len(value)})")
    if any(c == "\\" or not " " <= c <= "~" for c in value):
        raise ValueError(f"{what} must be printable ASCII without a backslash (DICOM AE title), got {value!r}")
    return value


@dataclass(frozen=True)
class DicomNode:
    """A DICOM application entity to associate with: AE title, host, port, checked when made.

    Written ``HOST:PORT:AET`` (``str(node)``; what ``results.json`` records; ``AET@HOST:PORT`` when the AE
    title holds a ':', which the first form cannot delimit) or ``AET@HOST:PORT``: :func:`parse_dicom_node` reads
    both, and reads ``str(node)`` back as the same node."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "DicomNode.ae_title")
        if not isinstance(self.host, str) or not _HOST.fullmatch(self.host):
            raise ValueError(f"DicomNode.host must be a host name or IP address (letters, digits, '.', '-', ':'), got {self.host!r}")
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"DicomNode.port must be an integer in 1..65535, got {port!r}")

    def __str__(self) -> str:
        if ":" in self.ae_title:  # HOST:PORT:AET splits at the AE title's own ':'; AET@HOST:PORT reads from the last '@'
            return f"{self.ae_title}@{self.host}:{self.port}"
        return f"{self.host}:{self.port}:{self.ae_title}"


def parse_dicom_node(text: str) -> DicomNode:
    """``"127.0.0.1:4242:ORTHANC"`` or ``"ORTHANC@127.0.0.1:4242"`` -> :class:`DicomNode`.

    The AE title is required: an SCP refuses a called AE title it is not configured with, so a
    guessed default would only fail later, at association, with a less helpful message."""
    value = str(text).strip()
    # AET@HOST:PORT when what follows the last '@' is HOST:PORT (an AE title may hold '@' or ':'
    # itself), else HOST:PORT:AET split from the right (a host may hold ':' itself: IPv6)
    at_form = re.fullmatch(r"(?P<aet>.*)@(?P<host>[^@]*):(?P<port>[^:@]*)", value)
    parts = at_form or re.fullmatch(r"(?P<host>.*):(?P<port>[^:]*):(?P<aet>[^:]*)", value)
    host, port, aet = (parts.group(k).strip() for k in ("host", "port", "aet")) if parts else ("", "", "")
    if (at_form and not aet) or re.fullmatch(r"[^:@]+:\d+", value):  # "@HOST:PORT" or "HOST:PORT"
        raise ValueError(f"DICOM node {value!r} has no AE title: write it as {NODE_SYNTAX}, with the AE title the node is configured with")
    if not host or not port or not aet:
        raise ValueError(f"DICOM node {value!r} is not a node address: write it as {NODE_SYNTAX}")
    if not port.isdigit():
        raise ValueError(f"the port of DICOM node {value!r} must be a number in 1..65535, got {port!r}")
    try:
        return DicomNode(aet, host, int(port))
    except ValueError as err:
        raise ValueError(f"DICOM node {value!r}: {err}") from None


@dataclass(frozen=True)
class StoreResult:
    """The outcome of storing one object."""

    sop_instance_uid: str
    ok: bool
    status: int | None
    message: str = ""


def _datasets(items: Iterable[str | Path | Dataset]) -> list[Dataset]:
    out = []
    for item in items:
        out.append(item if isinstance(item, Dataset) else pydicom.dcmread(item))
    return out


def _as_file(ds: Dataset) -> Dataset:
    """The dataset as read back from a conformant Part 10 file (preamble, DICM prefix, file meta):
    STOW-RS sends Part 10 bytes, and a plain in-memory Dataset would be written without them."""
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return str(ts or ExplicitVRLittleEndian)


# seconds to wait for a node's answer to an association request (c_store)
ASSOCIATION_TIMEOUT_S = 10.0


def c_store(
    items: Sequence[str | Path | Dataset],
    node: DicomNode | str,
    calling_ae: str = "MONAI-CIR",
    timeout: float = 30.0,
) -> list[StoreResult]:
    """C-STORE files / datasets to ``node`` over one association.

    Raises ``ConnectionError`` when no association can be made; per-object refusals come back as
    results with ``ok=False``."""
    from pynetdicom import AE

    node = parse_dicom_node(node) if isinstance(node, str) else node
    datasets = _datasets(items)
    contexts: dict[str, set[str]] = {}
    for ds in datasets:
        ts = _transfer_syntax(ds)
        syntaxes = contexts.setdefault(str(ds.SOPClassUID), set())
        syntaxes.add(ts)
        if ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            syntaxes.update({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
    ae = AE(ae_title=calling_ae)
    ae.dimse_timeout = ae.network_timeout = timeout
    # a node that takes the connection and never answers the association request (hung) holds the caller this long: the
    # DICOM service's worker, which answers the next studies when it is free, so the wait is bounded apart
    ae.acse_timeout = min(timeout, ASSOCIATION_TIMEOUT_S)
    count = 0
    for sop_class, syntaxes in contexts.items():
        for ts in sorted(syntaxes):  # one context per transfer syntax: the SCP may accept some only
            if count >= 128:
                raise ValueError("too many SOP class / transfer syntax combinations for one association (128)")
            ae.add_requested_context(sop_class, [ts])
            count += 1
    started = time.monotonic()
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        if assoc.is_rejected:
            why = "the node rejected the association (is our AE title known to it?)"
        elif time.monotonic() - started >= ae.acse_timeout - 0.5:
            why = f"no answer to the association request within {ae.acse_timeout:.0f} s (the node takes the connection but does not answer: hung?)"
        else:
            why = _unreachable(node) or "the node aborted the association"
        raise ConnectionError(f"no DICOM association with {node}: {why}")
    results = []
    try:
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as err:  # e.g. no accepted context for this object
                results.append(StoreResult(uid, False, None, str(err)))
                continue
            code = int(status.Status) if status and "Status" in status else None
            ok = code is not None and (code == 0x0000 or 0xB000 <= code <= 0xBFFF)
            message = "" if ok else ("no response" if code is None else f"status 0x{code:04X}")
            results.append(StoreResult(uid, ok, code, message))
    finally:
        assoc.release()
    for result in results:
        if not result.ok:
            logger.warning("C-STORE of %s to %s failed: %s", result.sop_instance_uid, node, result.message)
    return results


def _unreachable(node: DicomNode) -> str | None:
    """Why no TCP connection to ``node`` can be made ("unreachable: ..."), None when one can."""
    import socket

    try:
        socket.create_connection((node.host, node.port), timeout=2.0).close()
    except OSError as err:
        return f"unreachable ({err.strerror or err}: nothing listens there, or a firewall)"
    return None


def stow_rs(
    items: Sequence[str | Path | Dataset],
    url: str,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> list[StoreResult]:
    """STOW-RS files / datasets to the DICOMweb service at ``url`` (e.g. ``http://host:8042/dicom-web``)."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=url, headers=headers, timeout=timeout)
    # one attempt, bounded by ``timeout``: dicomweb-client's default (5 attempts, and a retry on every exception, a
    # timeout included) held the app 3 minutes on a hung node; the service retries a failed return itself (retry_s)
    client.set_http_retry_params(retry=False)
    datasets = [_as_file(ds) for ds in _datasets(items)]
    response = client.store_instances(datasets)
    # an instance is stored when the answer lists it (Referenced SOP Sequence, PS3.18 10.5.3): an answer that lists
    # nothing (a login page an auth proxy redirected the POST to, an HTML 200: dicomweb-client reads either as an empty
    # data set) stored nothing, and must not count as delivered
    failed = {}
    for item in response.get("FailedSOPSequence", []) or []:
        failed[str(item.get("ReferencedSOPInstanceUID", ""))] = int(item.get("FailureReason", 0x0110))
    stored = {str(item.get("ReferencedSOPInstanceUID", "")) for item in response.get("ReferencedSOPSequence", []) or []}
    results = []
    for ds in datasets:
        uid = str(ds.SOPInstanceUID)
        if uid in failed:
            results.append(StoreResult(uid, False, failed[uid], f"failure reason 0x{failed[uid]:04X}"))
        elif uid in stored:
            results.append(StoreResult(uid, True, 0))
        elif not stored and not failed:
            results.append(StoreResult(uid, False, 0x0110, f"the answer of {url} is no STOW-RS response (it lists no stored or failed "
                                                           "instance: a login page or a proxy's?): not stored"))
        else:
            results.append(StoreResult(uid, False, 0x0110, "the STOW-RS response does not list this instance as stored: not stored"))
    return results
