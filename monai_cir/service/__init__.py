"""The hospital loop: a DICOM node (:class:`DicomService`) that a PACS routes dermoscopy studies to,
answering each with the deploy app's similar-cases SR and PDF, returned into the same study.

Settings (``serve`` section of ``deploy_app/app.yaml`` < environment < ``monai-cir serve`` flags):

==================  ==============================  ======================  ===========================
setting             environment variable            flag                    default
==================  ==============================  ======================  ===========================
ae_title            ``MONAI_CIR_SERVE_AE``           ``--ae``                MONAICIR
host                ``MONAI_CIR_SERVE_HOST``         ``--host``              127.0.0.1
port                ``MONAI_CIR_SERVE_PORT``         ``--port``              11112
models              ``HOLOSCAN_MODEL_PATH``          ``--models``            (required)
peers               ``MONAI_CIR_SERVE_PEERS``        ``--peer`` (repeat)     the return node's AE title
return_node         ``MONAI_CIR_SERVE_RETURN``       ``--return``            (this or return_dicomweb)
return_dicomweb     ``MONAI_CIR_SERVE_RETURN_URL``   ``--return-dicomweb``
quiet_s             ``MONAI_CIR_SERVE_QUIET_S``      ``--quiet-time``        2
retry_s             ``MONAI_CIR_SERVE_RETRY_S``      ``--retry-every``       30
workdir             ``MONAI_CIR_SERVE_WORKDIR``      ``--workdir``           ./monai-cir-service
==================  ==============================  ======================  ===========================

``MONAI_CIR_SERVE_PEERS`` is comma-separated (``ORTHANC@10.0.0.5,MODALITY1``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import layered_settings
from ..dicom.publish import parse_dicom_node
from .dicom_node import (
    SUPPORTED_SOP_CLASSES,
    DicomService,
    Peer,
    StudyStatus,
    parse_peer,
)

__all__ = ["ORTHANC_LUA", "SUPPORTED_SOP_CLASSES", "DicomService", "Peer", "ServiceSettings", "StudyStatus", "orthanc_lua", "parse_peer"]

ORTHANC_LUA = Path(__file__).resolve().parents[1] / "resources" / "orthanc_forward_dermoscopy.lua"


def orthanc_lua(target: str = "monaicir", service_aet: str = "MONAICIR", mark: int = 4711) -> str:
    """The Orthanc Lua script that routes dermoscopy instances to the service (``LuaScripts``), for
    the ``DicomModalities`` entry ``target``, the service's AE title, and ``mark``: the Orthanc user
    metadata index (1024-65535) with which it marks the instances sent (change it only where the
    PACS's ``UserMetadata`` already uses 4711)."""
    if not 1024 <= int(mark) <= 65535:
        raise ValueError(f"mark must be an Orthanc user metadata index, 1024-65535, got {mark}")
    for name, value in (("target", target), ("service_aet", service_aet)):
        if not value or "'" in value or "\\" in value or "\n" in value:
            raise ValueError(f"{name} cannot go into the Lua script: {value!r} (give a non-empty name without quote, backslash or newline)")
    text = ORTHANC_LUA.read_text()
    text = text.replace("local TARGET = 'monaicir'", f"local TARGET = '{target}'", 1)
    text = text.replace("local MARK = '4711'", f"local MARK = '{int(mark)}'", 1)
    return text.replace("local SERVICE_AET = 'MONAICIR'", f"local SERVICE_AET = '{service_aet}'", 1)


ENV = {
    "ae_title": "MONAI_CIR_SERVE_AE",
    "host": "MONAI_CIR_SERVE_HOST",
    "port": "MONAI_CIR_SERVE_PORT",
    "models": "HOLOSCAN_MODEL_PATH",
    "peers": "MONAI_CIR_SERVE_PEERS",
    "return_node": "MONAI_CIR_SERVE_RETURN",
    "return_dicomweb": "MONAI_CIR_SERVE_RETURN_URL",
    "quiet_s": "MONAI_CIR_SERVE_QUIET_S",
    "retry_s": "MONAI_CIR_SERVE_RETRY_S",
    "workdir": "MONAI_CIR_SERVE_WORKDIR",
}


@dataclass
class ServiceSettings:
    """Where the service listens, whom it accepts, where it returns results."""

    models: str | None = None
    ae_title: str = "MONAICIR"
    host: str = "127.0.0.1"
    port: int = 11112
    peers: list[str] = field(default_factory=list)
    return_node: str | None = None
    return_dicomweb: str | None = None
    quiet_s: float = 2.0
    retry_s: float = 30.0
    workdir: str = "monai-cir-service"

    def __post_init__(self) -> None:
        if isinstance(self.peers, str):
            self.peers = [p for p in (x.strip() for x in self.peers.split(",")) if p]
        self.peers = list(self.peers or [])
        for key, kind in (("port", int), ("quiet_s", float), ("retry_s", float)):
            try:
                setattr(self, key, kind(getattr(self, key)))
            except (TypeError, ValueError):
                raise ValueError(f"{key} ({ENV[key]}) must be a {'whole ' if kind is int else ''}number, got {getattr(self, key)!r}") from None
        if not 0 < self.port < 65536:
            raise ValueError(f"port ({ENV['port']}, --port) must be a TCP port, 1-65535, got {self.port}")
        if self.return_node:
            try:
                node = parse_dicom_node(self.return_node)
            except ValueError as err:
                raise ValueError(f"return_node ({ENV['return_node']}): {err}") from None
            if not self.peers:  # the PACS that routes studies here is usually the node the answers go back to
                self.peers = [node.ae_title]
        for peer in self.peers:
            parse_peer(peer)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def resolve(cls, flags: Mapping[str, Any] | None = None, app_yaml: Path | None = None, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        """``serve:`` of app.yaml (``app_yaml``, default the app's) < environment < flags; an empty
        value (None, blank, []) in a layer leaves the one below (:func:`monai_cir.config.layered_settings`)."""
        if app_yaml is None:  # the service is configured in the app's app.yaml
            from deploy_app.settings import APP_YAML

            app_yaml = APP_YAML
        known = [f.name for f in dataclasses.fields(cls)]
        return cls(**layered_settings("serve", known, ENV, app_yaml=app_yaml, environ=environ, flags=flags))
