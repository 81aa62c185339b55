#!/usr/bin/env python
"""OHIF, a viewer hospitals use, shows what the service returned into the study.

The whole hospital loop runs on loopback (``tests/hospital.py``: Orthanc routing stable dermoscopy
studies to the DICOM service, which answers with the deploy app's pipeline), on **synthetic**
images made here. A query study is C-STOREd into Orthanc; once its similar-cases SR and Encapsulated
PDF are in the study, OHIF's built viewer (npm ``@ohif/app``) is served on the same origin as
Orthanc's DICOMweb and opened in headless Chromium, driven over the DevTools protocol:

1. the study list (``/``) has the study, with the results' modalities (DOC, SR);
2. its row selected, OHIF asks ``/dicom-web/studies/<uid>/series`` and lists the results' series;
3. the viewer (``/viewer?StudyInstanceUIDs=<uid>``) lists every series of the study;
4. the PDF series in the viewport: OHIF fetched the document and put it in a PDF ``<object>``;

and records what OHIF makes of the dermoscopy image, the similar-cases SR (TID 1500) and the
query's case report SR (``observations``: docs/dicom.md, "Viewer").

Screenshots (synthetic images only) and ``viewer.json`` (what was checked) go to ``--out``
(default ``output/viewer/``, git-ignored). Exit status 0 when every check passed. See docs/viewer.md.

    python scripts/viewer_check.py [--out output/viewer] [--ohif-version 3.13.2]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import mimetypes
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: import the project and tests/ from this checkout
    sys.path.insert(0, str(REPO))

OHIF_VERSION = "3.13.2"  # the version this check was written against (docs/viewer.md)
OHIF_CACHE = REPO / ".cache" / "ohif"

# OHIF reads this instead of the app-config.js in its dist: one DICOMweb source, the page's own
# origin (the server below proxies /dicom-web to Orthanc), so no CORS and no host name in the config.
# Keys as in OHIF's config/default.js of the tested version and Orthanc's own OHIF plugin.
APP_CONFIG = """window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  customizationService: { 'ohif.tours': { $set: [] } },  // no onboarding tour over the screenshots
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (monai-cir check)',
        name: 'orthanc',
        wadoUriRoot: window.location.origin + '/dicom-web',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: true,
        singlepart: 'bulkdata,video',  // not 'pdf': OHIF then asks /rendered, which Orthanc's DICOMweb 1.7 refuses (400)
        acceptHeader: ['multipart/related; type=application/octet-stream; transfer-syntax=*'],
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


# ------------------------------------------------------------------------------------------------
# OHIF's built viewer, from npm, into a git-ignored cache
# ------------------------------------------------------------------------------------------------
def ensure_ohif(version: str = OHIF_VERSION, cache: Path = OHIF_CACHE) -> Path:
    """The ``dist/`` folder of ``@ohif/app@version``, fetched once with ``npm pack`` (no build)."""
    dist = cache / version / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is missing (Debian nodejs/npm): run scripts/install_system_tools.sh, or unpack @ohif/app's tarball into " + str(dist.parent.parent))
    target = cache / version
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        proc = subprocess.run([npm, "pack", f"@ohif/app@{version}", "--pack-destination", tmp], capture_output=True, text=True, timeout=600, check=False)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            with contextlib.suppress(OSError):
                target.rmdir()  # left empty, it looked like a fetched viewer to the next run's eye
            raise RuntimeError(f"npm pack @ohif/app@{version} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(target, filter="data")
    if not (dist / "index.html").is_file():
        raise RuntimeError(f"@ohif/app@{version} has no dist/index.html under {target}: this version does not ship the built viewer")
    return dist


# ------------------------------------------------------------------------------------------------
# The viewer's origin: OHIF's static files + Orthanc's DICOMweb behind one port
# ------------------------------------------------------------------------------------------------
def _split_includefield(path: str) -> str:
    """``includefield=a,b`` as ``includefield=a&includefield=b``: both are QIDO-RS (PS3.18 8.3.4.3),
    but Orthanc's DICOMweb 1.7 ignores the comma form, and OHIF sends it (the study list's
    Description column would stay empty)."""
    if "?" not in path:
        return path
    base, query = path.split("?", 1)
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    split = [(k, part) for k, v in pairs for part in (v.split(",") if k.lower() == "includefield" else [v])]
    return f"{base}?{urllib.parse.urlencode(split)}"


class ViewerServer:
    """Serve ``dist`` (SPA: unknown paths get index.html) and proxy ``/dicom-web/`` to ``dicomweb_url``
    on ``127.0.0.1``; ``requests`` records (method, path, status) of every DICOMweb call, ``pdf_paths``
    those whose answer held a PDF."""

    def __init__(self, dist: Path, dicomweb_url: str, app_config: str = APP_CONFIG) -> None:
        self.dist = dist.resolve()
        self.upstream = dicomweb_url.rstrip("/")
        self.app_config = app_config.encode()
        self.requests: list[tuple[str, str, int]] = []
        self.pdf_paths: set[str] = set()  # DICOMweb answers that carried a PDF document
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> ViewerServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet: the check prints its own summary
                pass

            def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(body)
                    except (BrokenPipeError, ConnectionResetError):  # the page moved on (navigation)
                        pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path.startswith("/dicom-web/"):
                    return self._proxy()
                if path == "/app-config.js":
                    return self._send(200, owner.app_config, "application/javascript")
                file = (owner.dist / path.lstrip("/")).resolve()
                if not (file.is_file() and file.is_relative_to(owner.dist)):
                    file = owner.dist / "index.html"  # OHIF's client-side routes (/viewer, /, ...)
                kind = "application/wasm" if file.suffix == ".wasm" else (mimetypes.guess_type(file.name)[0] or "application/octet-stream")
                self._send(200, file.read_bytes(), kind)

            do_HEAD = do_GET

            def _proxy(self) -> None:
                url = owner.upstream + _split_includefield(self.path[len("/dicom-web"):])
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type")}
                # Orthanc's DICOMweb writes absolute BulkDataURIs from the Host header: the viewer's
                # origin, or the browser would fetch the PDF cross-origin from Orthanc (and fail, CORS)
                headers["Host"] = self.headers.get("Host", "")
                headers["Forwarded"] = f"host={headers['Host']};proto=http"
                try:
                    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
                        status, body, kind = response.status, response.read(), response.headers.get("Content-Type", "application/octet-stream")
                except urllib.error.HTTPError as err:
                    status, body, kind = err.code, err.read(), err.headers.get("Content-Type", "text/plain")
                except (urllib.error.URLError, OSError) as err:
                    status, body, kind = 502, f"Orthanc did not answer: {err}".encode(), "text/plain"
                owner.requests.append((self.command, self.path, status))
                if b"%PDF-" in body[:4096]:  # a PDF's header in the answer (multipart/related or not)
                    owner.pdf_paths.add(self.path)
                self._send(status, body, kind)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="viewer-http", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


# ------------------------------------------------------------------------------------------------
# Headless Chromium over the DevTools protocol (CDP), through --remote-debugging-pipe: JSON
# messages separated by NUL on fds 3 (to the browser) and 4 (from it); no WebSocket library needed.
# ------------------------------------------------------------------------------------------------
class Chromium:
    """One headless Chromium with one page; :meth:`call` sends a CDP command to that page."""

    def __init__(self, profile: Path, width: int = 1600, height: int = 1000, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if self.binary is None:
            raise RuntimeError("no Chromium found (Debian package chromium): run scripts/install_system_tools.sh")
        self.profile, self.width, self.height = profile, width, height
        self.events: list[dict] = []
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._next_id = 0
        self.session: str | None = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> Chromium:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:  # the pipe ends as fds 3 and 4 in the child, whatever their numbers here
            high_r, high_w = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        args = [
            self.binary, "--headless", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
            "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
            "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage",
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader",  # WebGL on the CPU (no GPU here)
            f"--window-size={self.width},{self.height}", "about:blank",
        ]
        self._log = open(self.profile / "chromium.log", "wb")  # noqa: SIM115 (open while Chromium runs; closed in stop)
        # preexec_fn runs only fcntl/dup2 (async-signal-safe) between fork and exec
        self.proc = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=child_fds, stdout=subprocess.DEVNULL, stderr=self._log)  # noqa: PLW1509
        os.close(to_browser_r)
        os.close(from_browser_w)
        threading.Thread(target=self._read, name="cdp-reader", daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        return self

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                with self._cond:
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()

    def call(self, method: str, params: dict | None = None, timeout: float = 60.0, session: bool = True) -> dict:
        """Send one CDP command (to the page unless ``session=False``) and wait for its reply."""
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while ident not in self._replies:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"Chromium exited ({self.proc.returncode}); see {self.profile / 'chromium.log'}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"CDP {method}: no reply within {timeout} s")
                self._cond.wait(min(left, 1.0))
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"CDP {method} failed: {reply['error']}")
        return reply.get("result", {})

    def console(self, since: int = 0) -> list[str]:
        """The page's console messages, uncaught exceptions and failed loads (from event ``since`` on)."""
        lines = []
        for event in list(self.events)[since:]:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                lines.append(f"console.{params.get('type')}: " + " ".join(str(a.get("value", a.get("description", "")))[:300] for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                lines.append(f"exception: {details.get('text')} {details.get('exception', {}).get('description', '')[:300]}")
            elif method == "Network.loadingFailed":
                lines.append(f"load failed: {params.get('errorText')} {params.get('type')}")
        return lines

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails'].get('text')} in {expression[:80]!r}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll ``expression`` in the page until it is truthy; its value, or TimeoutError naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:  # the page is between documents (navigation)
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not seen within {timeout:.0f} s")
            time.sleep(0.5)

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.call("Browser.close", session=False, timeout=5)
            except (RuntimeError, TimeoutError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for fd in (getattr(self, "_to_browser", None), getattr(self, "_from_browser", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()


# ------------------------------------------------------------------------------------------------
# Synthetic cases: a dark, irregular lesion on skin (made by code, so screenshots may be kept)
# ------------------------------------------------------------------------------------------------
DIAGNOSES = ("melanoma", "nevus", "benign keratosis")


def synthetic_lesion(seed: int, size: int = 384) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    angle = np.arctan2(yy, xx)
    radius = 0.22 + 0.05 * np.sin(3 * angle + seed) + 0.03 * np.sin(7 * angle + 2 * seed)
    inside = np.clip((radius - np.hypot(xx, yy)) * 40, 0, 1)[..., None]
    skin = np.array([222, 176, 150]) + rng.normal(0, 6, (size, size, 3))
    lesion = np.array([95 + 20 * (seed % 3), 60, 45]) + rng.normal(0, 12, (size, size, 3))
    return np.clip(skin * (1 - inside) + lesion * inside, 0, 255).astype(np.uint8)


def synthetic_records(folder: Path, count: int, prefix: str) -> list[SimpleNamespace]:
    """Records as :func:`monai_cir.dicom.dicomize.dicomize_record` takes them, with JPEG images."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        path = folder / f"{prefix}{i}.jpg"
        Image.fromarray(synthetic_lesion(seed=zlib.crc32(f"{prefix}{i}".encode()) % 1000)).save(path, quality=90)  # 4:2:0, carried as JPEG Baseline
        records.append(SimpleNamespace(
            case_id=f"{prefix}{i}", image_path=path, diagnosis=DIAGNOSES[i % len(DIAGNOSES)], label=i % len(DIAGNOSES),
            text="irregular pigmented lesion on the back, growing", site="back", collection="synthetic",
            metadata={"sex": "female", "age_approx": 50 + i}, confirmation="histopathology" if i % 2 == 0 else "follow-up",
        ))
    return records


# ------------------------------------------------------------------------------------------------
# The check
# ------------------------------------------------------------------------------------------------
@dataclass
class ViewerResult:
    """What the check saw; ``failures`` empty when every check passed."""

    ohif_version: str
    study_uid: str = ""
    patient_id: str = ""
    series: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> {uid, modality, description}
    checks: dict[str, Any] = field(default_factory=dict)  # name -> {ok, detail}: what must work
    observations: dict[str, Any] = field(default_factory=dict)  # what OHIF made of the rest (docs/dicom.md)
    screenshots: list[str] = field(default_factory=list)
    dicomweb_requests: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# Page scripts, on OHIF 3.13's DOM (data-cy attributes of its study browser; the dicom-pdf
# viewport's <object>).
_BODY_TEXT = "document.body ? document.body.innerText : ''"
_THUMBNAILS = """Array.from(document.querySelectorAll('[data-cy^="study-browser-thumbnail"]')).map(e => ({
  modality: (e.querySelector('[data-cy="series-modality-label"]') || {}).innerText || '',
  description: (e.querySelector('[data-cy="series-description-label"]') || {}).innerText || ''}))"""
# the element once its document is set: OHIF creates the <object> first and sets its data (a blob: URL of the fetched
# bulk data) after the fetch, so an element seen before then says nothing yet (under load it was seen with data '')
_PDF_OBJECT = """(() => { const e = Array.from(document.querySelectorAll('object, embed, iframe')).find(e => /pdf/i.test(e.type || ''));
  return e && (e.data || e.src) ? {tag: e.tagName, type: e.type || '', data: e.data || e.src} : null; })()"""
_VIEWPORT_TEXT = "(document.querySelector('[data-cy=\"viewport-grid\"]') || document.body).innerText"
_IMAGE_DRAWN = """(() => { const c = Array.from(document.querySelectorAll('[data-cy="viewport-grid"] canvas')).find(c => c.width > 100);
  if (!c) return null; const g = c.getContext('2d', {willReadFrequently: true}); if (!g) return {canvas: true};
  const d = g.getImageData(0, 0, c.width, c.height).data; let lit = 0; for (let i = 0; i < d.length; i += 4 * 97) lit += d[i] + d[i + 1] + d[i + 2] > 60;
  return lit > 50 ? {lit, w: c.width, h: c.height} : null; })()"""


def _study_series(client: Any, study_uid: str, sent: dict[str, str]) -> dict[str, dict[str, str]]:
    """The study's series by role: ``image`` and ``case report`` (sent), ``results SR`` and ``results PDF``."""
    import pydicom

    roles: dict[str, dict[str, str]] = {}
    for item in client.search_for_series(study_instance_uid=study_uid):
        ds = pydicom.Dataset.from_json(item)
        uid, modality = str(ds.SeriesInstanceUID), str(ds.get("Modality", ""))
        role = sent.get(uid) or ("results PDF" if modality == "DOC" else "results SR" if modality == "SR" else f"other {modality}")
        roles[role] = {"uid": uid, "modality": modality, "description": str(ds.get("SeriesDescription", ""))}
    return roles


def run_check(out_dir: Path, ohif_version: str = OHIF_VERSION, timeout_s: float = 240.0, log: Callable[[str], None] = print) -> ViewerResult:
    """Run the loop, open OHIF on the answered study, save screenshots + ``viewer.json`` into ``out_dir``."""
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from deploy_app.settings import AppSettings
    from monai_cir.dicom.dicomize import dicomize_record
    from tests.hospital import HospitalLoop, as_query_study
    from tests.orthanc import orthanc_available

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):  # screenshots of an earlier run would pass for this one's
        old.unlink()
    result = ViewerResult(ohif_version=ohif_version)
    clock = time.monotonic()
    if not orthanc_available():
        raise RuntimeError("Orthanc and orthanc-dicomweb are not installed: run scripts/install_system_tools.sh")
    dist = ensure_ohif(ohif_version)
    result.seconds["ohif_ready"] = round(time.monotonic() - clock, 1)

    with tempfile.TemporaryDirectory(prefix="viewer-check-") as tmp:
        root = Path(tmp)
        library = synthetic_records(root / "images", 6, "lib")
        query_record = synthetic_records(root / "images", 1, "query")[0]
        # explain=False: the explanation pages need the library images, which the service does not fetch here
        with HospitalLoop(root / "hospital", library, stable_age=1, quiet_s=0.5, app_settings=AppSettings(top_k=3, explain=False)) as loop:
            result.seconds["loop_ready"] = round(time.monotonic() - clock, 1)
            case = dicomize_record(query_record, root / "made", include_diagnosis=False)
            query_files = as_query_study(case, root / "query")
            image, report = (pydicom.dcmread(f, stop_before_pixels=True) for f in query_files)
            result.study_uid = study_uid = str(image.StudyInstanceUID)
            result.patient_id = str(image.PatientID)
            sent = {str(image.SeriesInstanceUID): "image", str(report.SeriesInstanceUID): "case report"}
            loop.server.storescu(query_files)
            client = DICOMwebClient(loop.server.dicomweb_url)
            deadline = time.monotonic() + timeout_s
            while True:
                result.series = _study_series(client, study_uid, sent)
                if {"results SR", "results PDF"} <= set(result.series):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the service did not return SR + PDF into the study within {timeout_s} s: series {result.series}; status {loop.service.status(study_uid)}")
                time.sleep(0.5)
            result.seconds["answered"] = round(time.monotonic() - clock, 1)
            log(f"[viewer] study {study_uid} answered: {sorted(result.series)}")

            server = ViewerServer(dist, loop.server.dicomweb_url).start()
            profile = root / "chromium-profile"
            profile.mkdir()
            browser = Chromium(profile)
            try:
                browser.start()
                _browse(browser, server, result, out_dir, log)
            finally:
                browser.stop()
                server.stop()
                result.dicomweb_requests = [f"{m} {p} {st}" for m, p, st in server.requests]
                (out_dir / "console.log").write_text("\n".join(browser.console()))
                (out_dir / "viewer.json").write_text(json.dumps(result.__dict__, indent=2, default=str))
                if (profile / "chromium.log").is_file():
                    shutil.copy(profile / "chromium.log", out_dir / "chromium.log")
    result.seconds["total"] = round(time.monotonic() - clock, 1)
    (out_dir / "viewer.json").write_text(json.dumps(result.__dict__, indent=2, default=str))
    return result


def _check(result: ViewerResult, name: str, ok: bool, detail: Any) -> bool:
    result.checks[name] = {"ok": bool(ok), "detail": detail}
    if not ok:
        result.failures.append(f"{name}: {detail}")
    return ok


def _notable(lines: list[str]) -> list[str]:
    """Console lines that say what OHIF refused or failed to show (its warnings and errors)."""
    keep = ("console.warning", "console.error", "exception", "load failed", "rehydratable", "Error Boundary")
    return sorted({line[:300] for line in lines if any(k in line for k in keep)})


def _fetched(server: ViewerServer, series_uid: str, exclude: str = "/metadata") -> list[str]:
    """Paths OHIF fetched (200) below one series, other than its metadata."""
    return [p for _, p, status in server.requests if status == 200 and f"/series/{series_uid}/" in p and exclude not in p]


def _browse(browser: Chromium, server: ViewerServer, result: ViewerResult, out_dir: Path, log: Callable[[str], None]) -> None:
    study, patient, series = result.study_uid, result.patient_id, result.series
    shot = lambda name: result.screenshots.append(str(browser.screenshot(out_dir / name)))

    def wait(name: str, expression: str, timeout: float, what: str) -> Any:
        try:
            return browser.wait_for(expression, timeout, what)
        except TimeoutError as err:
            _check(result, name, False, f"{err}; page text: {browser.evaluate(_BODY_TEXT)[:400]!r}")
            return None

    # 1. the study list: the query study's row names the results' modalities
    browser.goto(server.url + "/")
    row = wait("study_list", f"""(() => {{ const row = Array.from(document.querySelectorAll('tr, [role="row"]')).find(e => e.innerText.includes({json.dumps(patient)}));
        if (!row) return null; const r = row.getBoundingClientRect(); return {{text: row.innerText, x: r.x + Math.min(r.width / 2, 150), y: r.y + r.height / 2}}; }})()""", 90, f"a study list row for patient {patient}")
    shot("1-study-list.png")
    if row is not None:
        modalities = next((w for w in row["text"].split() if "\\" in w), "")
        _check(result, "study_list", {"SR", "DOC"} <= set(modalities.split("\\")), f"row {' '.join(row['text'].split())!r}")

        # 2. the row selected: OHIF asks Orthanc for the study's series and lists the results'
        browser.click(row["x"], row["y"])
        pdf_description = series["results PDF"]["description"]
        if wait("study_series", f"document.body.innerText.includes({json.dumps(pdf_description)})", 60, "the results' series listed after a click on the study's row") is not None:
            path = f"/dicom-web/studies/{study}/series"
            asked = [p for _, p, status in server.requests if p.split("?")[0] == path and status == 200]
            _check(result, "study_series", bool(asked), f"lists {pdf_description!r}; OHIF GET {asked[:1] or path + ' (not asked)'}")
        time.sleep(1.0)
        shot("2-study-series.png")

    # 3. the viewer on the study: its study browser shows every series (modality + description)
    viewer = f"{server.url}/viewer?StudyInstanceUIDs={study}"
    expected = sorted((s["modality"], s["description"]) for s in series.values())
    browser.goto(viewer)
    shown = wait("viewer_series", f"(() => {{ const t = {_THUMBNAILS}; return t.length >= {len(expected)} ? t : null; }})()", 120, f"{len(expected)} series in the viewer's study browser")
    time.sleep(2.0)
    shot("3-viewer-study.png")
    if shown is not None:
        seen = sorted((t["modality"], t["description"]) for t in shown)
        _check(result, "viewer_series", seen == expected, f"study browser {seen}; in Orthanc {expected}")

    # 4. the dermoscopy image in the viewport. OHIF 3.13 has no SOP class handler for Dermoscopic
    # Photography (1.2.840.10008.5.1.4.1.1.77.1.7): recorded, not required (docs/dicom.md)
    image_series = series["image"]["uid"]
    mark = len(browser.events)
    browser.goto(f"{viewer}&initialSeriesInstanceUID={image_series}")
    try:
        drawn = browser.wait_for(_IMAGE_DRAWN, 15, "the dermoscopy image drawn in the viewport")
    except TimeoutError:
        drawn = None
    shot("4-viewer-image.png")
    result.observations["image"] = {"drawn": drawn, "fetched": _fetched(server, image_series)[-1:], "viewport_text": browser.evaluate(_VIEWPORT_TEXT)[:200],
                                    "console": _notable(browser.console(mark))}

    # 5. the PDF in the viewport (dicom-pdf extension: the document's bulk data into an <object>)
    pdf_series = series["results PDF"]["uid"]
    mark = len(browser.events)
    browser.goto(f"{viewer}&initialSeriesInstanceUID={pdf_series}")
    pdf = wait("pdf_viewport", _PDF_OBJECT, 90, "a PDF <object> with its document in the viewport")
    time.sleep(5.0)  # the browser's PDF viewer draws after the element exists
    shot("5-viewer-pdf.png")
    if pdf is not None:
        fetched = [p for p in _fetched(server, pdf_series) if p in server.pdf_paths]
        _check(result, "pdf_viewport", bool(fetched) and pdf["data"].startswith("blob:"),
               f"{pdf['tag']} {pdf['type']} data={pdf['data'][:40]!r}; fetched {fetched[-1:] or 'nothing'}; console {_notable(browser.console(mark))[:3]}")

    # 6. the similar-cases SR in the viewport (cornerstone-dicom-sr takes TID 1500): what OHIF makes of it
    mark = len(browser.events)
    browser.goto(f"{viewer}&initialSeriesInstanceUID={series['results SR']['uid']}")
    time.sleep(8.0)  # OHIF gives no sign of "done" for an SR it cannot hydrate: wait, then look
    shot("6-viewer-sr.png")
    text = browser.evaluate(_VIEWPORT_TEXT)
    result.observations["results SR"] = {"viewport_text": text[:1000], "console": _notable(browser.console(mark))}

    # 7. the query's own case report SR (no template: OHIF's text view of the content tree), for comparison
    browser.goto(f"{viewer}&initialSeriesInstanceUID={series['case report']['uid']}")
    shown = wait("case_report_sr", f"(() => {{ const t = {_VIEWPORT_TEXT}; return t.includes('Finding') ? t : null; }})()", 60, "the case report SR's text in the viewport")
    shot("7-viewer-case-report.png")
    if shown is not None:
        result.observations["case report SR"] = {"viewport_text": shown[:600]}
    log("[viewer] results SR in the viewport: " + json.dumps(result.observations["results SR"])[:600])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "output" / "viewer", help="screenshots and viewer.json (git-ignored)")
    parser.add_argument("--ohif-version", default=OHIF_VERSION, help="@ohif/app version (npm)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for the service's answer")
    args = parser.parse_args(argv)
    result = run_check(args.out, args.ohif_version, args.timeout)
    for name, check in result.checks.items():
        print(f"[viewer] {'ok  ' if check['ok'] else 'FAIL'} {name}: {check['detail']}")
    print(f"[viewer] screenshots in {args.out}; {result.seconds}")
    return 1 if result.failures or not result.checks else 0


if __name__ == "__main__":
    sys.exit(main())
