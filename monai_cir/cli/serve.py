"""``monai-cir serve``: the DICOM node a PACS routes dermoscopy studies to (see docs/pacs.md).

    monai-cir serve --ae MONAICIR --port 11112 --models MODELS --return 10.0.0.5:4242:ORTHANC
    monai-cir serve --models MODELS --return-dicomweb http://pacs:8042/dicom-web --peer ORTHANC@10.0.0.5

Each complete study (quiet for --quiet-time seconds) goes through the deploy app's operators with
the network and the case index loaded once; the similar-cases SR and the Encapsulated PDF go back to
--return (C-STORE) or --return-dicomweb (STOW-RS). Settings also come from the ``serve:`` section of
deploy_app/app.yaml and MONAI_CIR_SERVE_* variables; the app's own settings (top_k, explain, ...)
from its ``settings:`` section, as for ``python -m deploy_app``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the DICOM node a PACS routes studies to", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ae", dest="ae_title", help="our AE title (default MONAICIR)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, help="DICOM port (default 11112)")
    parser.add_argument("--models", help="the app's MODELS folder: model.pt + index/ (default $HOLOSCAN_MODEL_PATH)")
    parser.add_argument("--peer", dest="peers", action="append", metavar="AET[@HOST]", help="a caller allowed to send (repeatable; default: the --return node's AE title)")
    parser.add_argument("--return", dest="return_node", metavar="HOST:PORT:AET", help="C-STORE the results to this node")
    parser.add_argument("--return-dicomweb", dest="return_dicomweb", metavar="URL", help="STOW-RS the results to this DICOMweb service instead")
    parser.add_argument("--quiet-time", dest="quiet_s", type=float, metavar="S", help="a study is complete after S seconds without a new instance (default 2)")
    parser.add_argument("--retry-every", dest="retry_s", type=float, metavar="S", help="retry returning results to a node that was down every S seconds (default 30)")
    parser.add_argument("--workdir", help="spool folder: incoming, outbox, status records (default ./monai-cir-service)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from monai_cir.service import DicomService, ServiceSettings
    from monai_cir.service.dicom_node import CannotListen

    keys = ("ae_title", "host", "port", "models", "peers", "return_node", "return_dicomweb", "quiet_s", "retry_s", "workdir")
    settings = ServiceSettings.resolve({k: getattr(args, k) for k in keys})
    if not settings.models:
        raise ValueError("no MODELS folder: give --models DIR (model.pt + index/) or set HOLOSCAN_MODEL_PATH")
    if not Path(settings.models).is_dir():
        raise FileNotFoundError(f"models folder not found: {settings.models}")
    # every check of the service's settings (peers, return node, waits) before the models load
    service = DicomService(
        _not_loaded, settings.workdir, ae_title=settings.ae_title, host=settings.host, port=settings.port, peers=settings.peers,
        return_node=settings.return_node, return_dicomweb=settings.return_dicomweb, quiet_s=settings.quiet_s, retry_s=settings.retry_s,
    )
    busy = _cannot_listen(settings.host, settings.port)  # the port, too: no model load for a service that cannot start
    if busy:
        print(busy, file=sys.stderr, flush=True)
        return 2
    from deploy_app.pipeline import WarmPipeline

    pipeline = WarmPipeline(settings.models)
    service.pipeline = pipeline.answer
    print(f"monai-cir serve: starting {settings.ae_title} on {settings.host}:{settings.port}, models {settings.models} ({pipeline.run_info['index_cases']} library cases); SIGTERM or Ctrl-C stops it", flush=True)
    try:
        service.serve_forever()
    except CannotListen as err:  # the port was taken meanwhile, or the address is not this machine's
        print(_listen_error(settings.host, settings.port, err.reason), file=sys.stderr, flush=True)
        return 2
    return 0


def _not_loaded(input_folder: Path, output_folder: Path) -> Any:
    raise RuntimeError("the models are not loaded yet")


def _listen_error(host: str, port: int, reason: str) -> str:
    return (f"monai-cir serve: error: cannot listen on {host}:{port}: {reason}; "
            f"is another service (another monai-cir serve?) on port {port}? Stop it, or give another --port (MONAI_CIR_SERVE_PORT)")


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the service could not listen on host:port (a test bind, as the server binds: SO_REUSEADDR), or None."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        return f"monai-cir serve: error: cannot listen on {host}:{port}: {err}; give --host an address of this machine (MONAI_CIR_SERVE_HOST)"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            return _listen_error(host, port, err.strerror or str(err))
    return None
