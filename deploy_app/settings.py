"""Run-time settings of the app: ``app.yaml`` (``settings:``), then environment variables, then flags.

The SDK owns ``-i/-o/-m/-l/-w`` (and ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` /
``HOLOSCAN_MODEL_PATH``); everything else the app understands is here, so that a MAP started by a
platform (which passes only the SDK's flags) is configured through ``app.yaml`` or the environment.

=============================  ===============================  ============================================
setting                        environment variable             flag
=============================  ===============================  ============================================
top_k (5)                      ``MONAI_CIR_TOP_K``              ``-k / --top-k``
batch_size (auto: 16 GPU/4)    ``MONAI_CIR_BATCH_SIZE``         ``--batch-size``
device (auto)                  ``MONAI_CIR_DEVICE``             ``--device {auto,cpu,cuda}``
site (any)                     ``MONAI_CIR_SITE``               ``--site {any,same,<site>}``
publish_dicom                  ``MONAI_CIR_PUBLISH_DICOM``      ``--publish-dicom HOST:PORT:AET``
publish_dicomweb               ``MONAI_CIR_PUBLISH_DICOMWEB``   ``--publish-dicomweb URL``
calling_aet (MONAICIR)         ``MONAI_CIR_CALLING_AET``        ``--calling-aet AET``
write_pdf (true)               ``MONAI_CIR_WRITE_PDF``          ``--no-pdf``
explain (true)                 ``MONAI_CIR_EXPLAIN``            ``--no-explain``
differential (true)            ``MONAI_CIR_DIFFERENTIAL``       ``--no-differential``
=============================  ===============================  ============================================
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_cir.config import layered_settings
from monai_cir.dicom.publish import DicomNode, check_ae_title, parse_dicom_node

__all__ = ["APP_YAML", "AppSettings", "DicomNode", "parse_dicom_node", "split_argv"]

APP_YAML = Path(__file__).resolve().parent / "app.yaml"

ENV = {
    "top_k": "MONAI_CIR_TOP_K",
    "batch_size": "MONAI_CIR_BATCH_SIZE",
    "device": "MONAI_CIR_DEVICE",
    "site": "MONAI_CIR_SITE",
    "publish_dicom": "MONAI_CIR_PUBLISH_DICOM",
    "publish_dicomweb": "MONAI_CIR_PUBLISH_DICOMWEB",
    "calling_aet": "MONAI_CIR_CALLING_AET",
    "write_pdf": "MONAI_CIR_WRITE_PDF",
    "explain": "MONAI_CIR_EXPLAIN",
    "differential": "MONAI_CIR_DIFFERENTIAL",
}


def _where(key: str) -> str:
    """How a setting is named in an error: by its name and its environment variable (the flag is in ``--help``)."""
    return f"{key} ({ENV[key]})"


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{_where(key)} must be true or false (or 1/0, yes/no, on/off), got {value!r}")


def _count(value: Any, key: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or isinstance(value, bool):
        raise ValueError(f"{_where(key)} must be a whole number >= 1, got {value!r}")
    return number


@dataclass
class AppSettings:
    """What the app does besides reading IN and MODELS and writing OUT."""

    top_k: int = 5
    batch_size: int | None = None
    device: str = "auto"
    site: str = "any"
    publish_dicom: str | None = None
    publish_dicomweb: str | None = None
    calling_aet: str = "MONAICIR"
    write_pdf: bool = True
    explain: bool = True  # region-mask heatmaps and attended words per match, in the PDF and the SR
    # an uncertain query's closest case of the runner-up diagnosis at rank 4 (monai_cir.differential), when the
    # checkpoint records the slot's margin; false = the plain similarity ranking
    differential: bool = True

    def __post_init__(self) -> None:
        self.top_k = _count(self.top_k, "top_k")
        self.batch_size = None if self.batch_size in (None, "", "auto") else _count(self.batch_size, "batch_size")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"{_where('device')} must be auto, cpu or cuda[:N], got {self.device!r}")
        self.write_pdf = _bool(self.write_pdf, "write_pdf")
        self.explain = _bool(self.explain, "explain")
        self.differential = _bool(self.differential, "differential")
        self.publish_dicom = self.publish_dicom or None
        self.publish_dicomweb = self.publish_dicomweb or None
        if self.publish_dicom:
            try:
                parse_dicom_node(self.publish_dicom)
            except ValueError as err:
                raise ValueError(f"{_where('publish_dicom')}: {err}") from None
        if self.publish_dicomweb and not str(self.publish_dicomweb).startswith(("http://", "https://")):
            raise ValueError(f"{_where('publish_dicomweb')} must be an http(s) URL of a DICOMweb service, got {self.publish_dicomweb!r}")
        check_ae_title(self.calling_aet, _where("calling_aet"))
        from monai_cir.sites_condition import resolve_site_condition

        try:  # a site the vocabulary does not know would skip every study (before: exit 0, each study a problem)
            resolve_site_condition(self.site, None)
        except ValueError as err:
            raise ValueError(f"{_where('site')}: {err}") from None

    @property
    def dicom_node(self) -> DicomNode | None:
        return parse_dicom_node(self.publish_dicom) if self.publish_dicom else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def resolve(cls, flags: argparse.Namespace | None = None, app_yaml: Path | None = None, environ: Mapping[str, str] | None = None) -> AppSettings:
        """``settings:`` of app.yaml (``app_yaml``, default :data:`APP_YAML`) < environment < flags;
        an empty value (None, blank, []) in a layer leaves the one below (:func:`monai_cir.config.layered_settings`)."""
        known = [f.name for f in dataclasses.fields(cls)]
        app_yaml = APP_YAML if app_yaml is None else app_yaml
        return cls(**layered_settings("settings", known, ENV, app_yaml=app_yaml, environ=environ, flags=None if flags is None else vars(flags)))


def app_arg_parser() -> argparse.ArgumentParser:
    """The app's own flags (the SDK's -i/-o/-m/-l/-w are parsed by the SDK)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-k", "--top-k", dest="top_k", type=int, help="similar cases per query (default 5)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="queries per forward pass (default 16 on GPU, 4 on CPU)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the network runs (default: CUDA when present)")
    parser.add_argument("--site", help="anatomical-site condition: any (default), same (the query's site) or a site name")
    parser.add_argument("--publish-dicom", dest="publish_dicom", metavar="HOST:PORT:AET", help="C-STORE the outputs to this DICOM node")
    parser.add_argument("--publish-dicomweb", dest="publish_dicomweb", metavar="URL", help="STOW-RS the outputs to this DICOMweb service")
    parser.add_argument("--calling-aet", dest="calling_aet", help="our AE title for C-STORE (default MONAICIR)")
    parser.add_argument("--no-pdf", dest="write_pdf", action="store_const", const=False, help="write the SR and results.json only")
    parser.add_argument("--no-explain", dest="explain", action="store_const", const=False, help="skip the per-match explanations (faster)")
    parser.add_argument("--no-differential", dest="differential", action="store_const", const=False,
                        help="show the plain similarity ranking (no closest case of the runner-up diagnosis for uncertain queries)")
    return parser


def split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Separate the app's flags from the SDK's: returns ``(app flags, remaining argv)``.

    ``argv[0]`` is the program name, as in ``sys.argv``."""
    flags, rest = app_arg_parser().parse_known_args(list(argv[1:]))
    return flags, [argv[0], *rest]
