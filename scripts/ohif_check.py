"""Open the answered study in a real viewer: OHIF (npm ``@ohif/app``'s built ``dist/``) against Orthanc's
DICOMweb on the same origin, in headless Chromium (Debian ``chromium``); screenshots to ``--out``.

What it does:

1. the hospital loop on loopback (``tests/hospital.py``: Orthanc with the routing script, a small
   ISIC UDA-1 library, the index from Orthanc over DICOMweb, the service warm), one query study
   sent with ``storescu`` and answered (SR + Encapsulated PDF in the study);
2. a small HTTP server on 127.0.0.1 that serves OHIF's ``dist/`` with an ``app-config.js`` naming
   ``/dicom-web`` as its DICOMweb data source, and proxies ``/dicom-web/...`` to Orthanc (one origin,
   so no CORS set-up);
3. headless Chromium screenshots: the study list, the query study in the viewer (its series panel:
   the dermoscopy image, the report SR, the similar-cases SR and the PDF), and the viewer opened on
   the PDF series and on the similar-cases SR series (``initialSeriesInstanceUID``).

The screenshots show data images: they go to ``--out`` (default ``output/ohif-check``, git-ignored)
and are never committed. Takes a few minutes on 2 CPU cores (OHIF's bundle is ~200 MB)::

    npm pack @ohif/app@3.12.10 && tar xzf ohif-app-3.12.10.tgz      # -> package/dist
    .venv/bin/python scripts/ohif_check.py --ohif package/dist [--out output/ohif-check]
"""

from __future__ import annotations

import argparse
import http.server
import json
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

APP_CONFIG = """window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  investigationalUseDialog: { option: 'never' },
  customizationService: { 'ohif.tours': { $set: [] } },  // no onboarding tour over the screenshots
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (monai-cir loop)',
      name: 'orthanc',
      wadoUriRoot: '/wado',
      qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      dicomUploadEnabled: false,
      bulkDataURI: { enabled: true },
      omitQuotationForMultipartRequest: true,
    },
  }],
};
"""


def serve_ohif(dist: Path, orthanc_url: str) -> tuple[socketserver.TCPServer, int]:
    """OHIF's files, ``/app-config.js`` replaced, ``/dicom-web`` and ``/wado`` proxied to Orthanc."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(dist), **kwargs)

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path.startswith(("/dicom-web", "/wado")):
                return self._proxy()
            if path == "/app-config.js":
                body = APP_CONFIG.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/javascript")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return None
            if not (dist / path.lstrip("/")).is_file():
                self.path = "/index.html"  # the single-page app's routes
            return super().do_GET()

        def _proxy(self):
            request = urllib.request.Request(orthanc_url + self.path, headers={k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    body, status, headers = response.read(), response.status, response.headers
            except urllib.error.HTTPError as err:
                body, status, headers = err.read(), err.code, err.headers
            self.send_response(status)
            for key in ("Content-Type",):
                if headers.get(key):
                    self.send_header(key, headers[key])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def screenshot(chromium: str, url: str, path: Path, wait_ms: int) -> None:
    command = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1600,1000",
               f"--virtual-time-budget={wait_ms}", f"--screenshot={path}", url]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    if not path.is_file():
        raise RuntimeError(f"chromium wrote no screenshot for {url}: {proc.stderr[-2000:]}")
    print(f"[ohif] {path.name}: {url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ohif", type=Path, required=True, help="OHIF's built viewer: the dist/ folder of the npm package @ohif/app")
    parser.add_argument("--out", type=Path, default=REPO / "output" / "ohif-check")
    parser.add_argument("--library", type=int, default=6)
    parser.add_argument("--wait-ms", type=int, default=25000, help="Chromium's virtual time budget per page")
    parser.add_argument("--keep-serving", type=float, default=0, metavar="S", help="keep Orthanc + OHIF up S seconds after the screenshots (to look by hand)")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is missing: apt-get install chromium (scripts/install_system_tools.sh --viewer)")
    if not (args.ohif / "index.html").is_file():
        raise SystemExit(f"{args.ohif} is not OHIF's dist/ (no index.html): npm pack @ohif/app and unpack it")

    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from deploy_app.settings import AppSettings
    from monai_cir.data.collections import load_collection
    from monai_cir.dicom.dicomize import dicomize_record
    from tests.hospital import HospitalLoop, as_query_study

    args.out.mkdir(parents=True, exist_ok=True)
    records = load_collection("isic-uda1")
    root = Path(tempfile.mkdtemp(prefix="ohif-check-"))
    with HospitalLoop(root, records[: args.library], stable_age=1, quiet_s=0.5, app_settings=AppSettings(top_k=3)) as loop:
        case = dicomize_record(records[args.library], root / "made", include_diagnosis=False)
        files = as_query_study(case, root / "query")
        sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        loop.server.storescu(files)
        client = DICOMwebClient(loop.server.dicomweb_url)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(found := loop.answers(client, study_uid, sent)) < 2:
            time.sleep(0.2)
        if len(found) < 2:
            raise SystemExit(f"no answer in Orthanc: {loop.service.status(study_uid)}")
        pdf = found["1.2.840.10008.5.1.4.1.1.104.1"]
        sr = next(ds for uid, ds in found.items() if uid != "1.2.840.10008.5.1.4.1.1.104.1")
        server, port = serve_ohif(args.ohif, loop.server.http_url)
        base = f"http://127.0.0.1:{port}"
        viewer = f"{base}/viewer?StudyInstanceUIDs={study_uid}"
        shots = {
            "1-study-list.png": f"{base}/",
            "2-viewer-study.png": viewer,
            "3-viewer-pdf.png": f"{viewer}&initialSeriesInstanceUID={pdf.SeriesInstanceUID}",
            "4-viewer-sr.png": f"{viewer}&initialSeriesInstanceUID={sr.SeriesInstanceUID}",
        }
        for name, url in shots.items():
            screenshot(chromium, url, args.out / name, args.wait_ms)
        (args.out / "urls.json").write_text(json.dumps({"study": study_uid, "pdf_series": str(pdf.SeriesInstanceUID), "sr_series": str(sr.SeriesInstanceUID), **shots}, indent=1))
        if args.keep_serving:
            print(f"[ohif] serving {base} for {args.keep_serving:.0f} s")
            time.sleep(args.keep_serving)
        server.shutdown()
    print(f"[ohif] screenshots in {args.out} (they show data images: do not commit them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
