"""A real PACS for tests: Debian's Orthanc with the DICOMweb plugin, on loopback, free ports.

Usage in a test module::

    from tests.orthanc import orthanc_server  # noqa: F401  (the pytest fixture)

    def test_x(orthanc_server):
        orthanc_server.node          # DicomNode for C-STORE (AE title ORTHANC)
        orthanc_server.dicomweb_url  # http://127.0.0.1:PORT/dicom-web

or as a context manager: ``with OrthancServer(tmp_path) as server: ...``. Tests using it are
skipped when ``Orthanc`` or the DICOMweb plugin is not installed (``scripts/install_system_tools.sh``
installs them).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

__all__ = ["OrthancServer", "find_dicomweb_plugin", "orthanc_available", "orthanc_server"]

AE_TITLE = "ORTHANC"
_PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/lib/*/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so*",
)


def find_dicomweb_plugin() -> str | None:
    """Path of the installed DICOMweb plugin (``orthanc-dicomweb``), or None."""
    try:
        listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=10).stdout
        for line in listing.splitlines():
            if "libOrthancDicomWeb.so" in line and os.path.isfile(line):
                return line
    except (OSError, subprocess.SubprocessError):
        pass
    for pattern in _PLUGIN_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def orthanc_available() -> bool:
    return shutil.which("Orthanc") is not None and find_dicomweb_plugin() is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OrthancServer:
    """Start ``Orthanc`` with a JSON config in ``workdir``; stop it (and only it) at the end."""

    def __init__(
        self,
        workdir: str | Path,
        ae_title: str = AE_TITLE,
        startup_timeout: float = 60.0,
        modalities: dict[str, list] | None = None,
        lua: str | None = None,
        stable_age: int | None = None,
        extra: dict | None = None,
    ) -> None:
        """``modalities``: DicomModalities (name -> [AET, host, port]); ``lua``: a Lua script's text
        (``LuaScripts``); ``stable_age``: seconds after the last instance before a study is stable;
        ``extra``: more configuration keys (e.g. ServeFolders)."""
        self.workdir = Path(workdir)
        self.ae_title = ae_title
        self.modalities = dict(modalities or {})
        self.lua = lua
        self.stable_age = stable_age
        self.extra = dict(extra or {})
        self.http_port = _free_port()
        self.dicom_port = _free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = _free_port()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def node(self):
        from monai_cir.dicom.publish import DicomNode

        return DicomNode(self.ae_title, "127.0.0.1", self.dicom_port)

    def config(self) -> dict:
        plugin = find_dicomweb_plugin()
        if plugin is None:
            raise RuntimeError("the Orthanc DICOMweb plugin is not installed (Debian package orthanc-dicomweb)")
        storage = self.workdir / "db"
        storage.mkdir(parents=True, exist_ok=True)
        optional: dict = {}
        if self.modalities:
            optional["DicomModalities"] = self.modalities
        if self.lua is not None:
            script = self.workdir / "route.lua"
            script.write_text(self.lua)
            optional["LuaScripts"] = [str(script)]
        if self.stable_age is not None:
            optional["StableAge"] = int(self.stable_age)
        return {
            "Name": "monai-cir-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # HTTP from loopback only
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,  # Dermoscopic Photography may postdate the DCMTK it is built on
            # the QIDO-RS answers (OHIF's study list) in UTF-8, as the app writes: Latin-1, the default, lost "ş" and "山田"
            "DefaultEncoding": "Utf8",
            "StorageCompression": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full"},
            **optional,
            **self.extra,
        }

    def start(self) -> OrthancServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(["Orthanc", str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/system", timeout=2) as response:
                    if response.status == 200 and self._dicomweb_ready():
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer /system within {self.startup_timeout} s; log:\n{self.log_tail()}")

    def _dicomweb_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.dicomweb_url}/studies", timeout=2) as response:
                return response.status in (200, 204)
        except urllib.error.HTTPError as err:
            return err.code == 204
        except (urllib.error.URLError, OSError):
            return False

    def storescu(self, files, calling_ae: str = "MODALITY") -> None:
        """C-STORE files with DCMTK's ``storescu``, as a modality would (``-R``: propose exactly each
        file's SOP class and transfer syntax, ``-xy``: JPEG Baseline as stored, no transcoding)."""
        tool = shutil.which("storescu")
        if tool is None:
            raise RuntimeError("storescu (Debian dcmtk) is missing: run scripts/install_system_tools.sh")
        command = [tool, "-R", "-xy", "-aec", self.ae_title, "-aet", calling_ae, "127.0.0.1", str(self.dicom_port), *map(str, files)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stdout}{proc.stderr}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="module")
def orthanc_server(tmp_path_factory):
    """A running Orthanc (module scope), stopped after the module's tests."""
    if not orthanc_available():
        pytest.skip("Orthanc and orthanc-dicomweb are not installed (run scripts/install_system_tools.sh)")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
