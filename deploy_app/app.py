"""monai-cir similar-cases app: DICOM dermoscopy studies in, ranked similar library cases out.

Pipeline (``compose``)::

    DermoscopyStudyLoaderOperator ──queries──> ComposedRetrievalOperator ──results──> SimilarCasesReportsOperator
          │                                                              (explanations, SR, PDF)  │ results
          │                                                                   [DICOMPublisherOperator, when configured]
          │                                                                                │ results
          └──────────────────────────problems──────────────────────────────> ResultsWriterOperator

Run::

    python -m deploy_app -i IN -o OUT -m MODELS [-k 5] [--publish-dicom HOST:PORT:AET] [--publish-dicomweb URL]

or with ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_MODEL_PATH``. MODELS holds
``model.pt`` (or ``models/model.pt``, the layout ``monai-deploy package`` writes) and ``index/``
(the case index); see ``docs/deploy.md``.

**Many studies, one process** (a DICOM service such as ``monai-cir serve``): the network, the
index and the calibration are loaded once and reused::

    from deploy_app.app import load_models, run_app

    models = load_models("MODELS")                 # cached per process: MODELS path + file sizes/mtimes
    summary = run_app("study-1/", "out-1/", models)  # the results.json payload
    summary = run_app("study-2/", "out-2/", models)  # no reload

``run_app`` builds a fresh :class:`SimilarCasesApp` (the SDK composes a graph per run) around the
same :class:`~deploy_app.operators.retrieval.LoadedModels`; ``SimilarCasesApp(argv, models=...)``
does the same for a caller that drives the SDK itself. Without ``models=``, the app calls
:func:`load_models` on ``-m`` / ``HOLOSCAN_MODEL_PATH``, whose per-process cache gives the same
reuse; a rebuilt index or a new checkpoint (another size or mtime) is loaded afresh.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application

from . import APP_NAME, __version__
from .operators.dermoscopy_loader import DermoscopyStudyLoaderOperator
from .operators.publisher import DICOMPublisherOperator
from .operators.reports import SimilarCasesReportsOperator
from .operators.results_writer import RESULTS_FILE, ResultsWriterOperator
from .operators.retrieval import (
    ComposedRetrievalOperator,
    LoadedModels,
    ModelsLayoutError,
    load_models,
)
from .settings import AppSettings, split_argv

__all__ = ["LoadedModels", "SimilarCasesApp", "load_models", "main", "run_app"]


def seconds_since_process_start() -> float | None:
    """Wall time since this process started (from ``/proc``; None where unavailable)."""
    import os

    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class SimilarCasesApp(Application):
    """Composed vision-language retrieval of similar skin-lesion cases as a MONAI Deploy app.

    Args:
        argv: the SDK's command line (``[python, prog, -i IN, -o OUT, -m MODELS]``).
        settings: the app's own settings (default: ``app.yaml`` < environment).
        models: what :func:`load_models` returned, to reuse across runs; default: loaded (and
            cached for the process) from the SDK's model path.
    """

    def __init__(self, *args: Any, settings: AppSettings | None = None, models: LoadedModels | None = None, **kwargs: Any) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.settings = settings or AppSettings.resolve()
        self.models = models
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        """Creates the operators and connects them (SDK style: paths from the app context)."""
        self._logger.info(f"Begin {self.compose.__name__}")
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # -l DEBUG keeps every library's detail
            from monai_cir.config import quiet_chatty_loggers

            quiet_chatty_loggers()
        app_context: AppContext = Application.init_app_context(self.argv)
        input_path = Path(app_context.input_path)
        output_path = Path(app_context.output_path)
        output_path.mkdir(parents=True, exist_ok=True)
        earlier = _earlier_answers(output_path, self._logger)
        s = self.settings
        reused = self.models is not None
        if self.models is None:
            self.models = load_models(Path(app_context.model_path), device=s.device)
        models = self.models
        self._logger.info(f"input {input_path}, output {output_path}, models {models.index_dir.parent}, settings {s.to_dict()}")
        _check_site_in_library(s.site, models)

        loader = DermoscopyStudyLoaderOperator(self, CountCondition(self, 1), input_folder=input_path, name="dermoscopy_loader_op")
        retrieval = ComposedRetrievalOperator(
            self, models=models, top_k=s.top_k, batch_size=s.batch_size, site=s.site, explain=s.explain,
            differential=s.differential, name="retrieval_op"
        )
        from monai_cir.retrieval import model_fingerprint

        # the SR and the PDF report similarity against the best score this network can give, and name the model and the
        # library that answered (results.json's "model" and "index")
        reports = SimilarCasesReportsOperator(
            self, output_folder=output_path, score_range=models.net.score_range, write_pdf=s.write_pdf, name="reports_op",
            algorithm_parameters=(f"model {model_fingerprint(models.net)[:16]}", f"library {models.index_state}"),
        )
        last = reports
        self.add_flow(loader, retrieval, {("queries", "queries")})
        self.add_flow(retrieval, reports, {("results", "results")})
        if s.publish_dicom or s.publish_dicomweb:
            publisher = DICOMPublisherOperator(
                self, dicom_node=s.dicom_node, dicomweb_url=s.publish_dicomweb, calling_aet=s.calling_aet, name="publisher_op"
            )
            self.add_flow(last, publisher, {("results", "results")})
            last = publisher
        run_info = {
            "app": f"{APP_NAME} {__version__}",
            "device": str(models.device),
            "model_load_s": round(models.load_s, 3),
            "models_reused": reused,
            "process_start_to_ready_s": round(seconds_since_process_start() or -1.0, 3),
            "index_cases": len(models.index),
            "index": models.index_state,  # which library (a digest of its files as loaded)
            "model": model_fingerprint(models.net),  # which network answered (a service's later rounds compare them)
            "settings": s.to_dict(),
            # query folders an earlier run left in OUT (they are not this run's answers)
            "earlier_answers_in_output": len(earlier),
        }
        results_writer = ResultsWriterOperator(self, output_folder=output_path, run_info=run_info, name="results_writer_op")
        self.add_flow(last, results_writer, {("results", "results")})
        self.add_flow(loader, results_writer, {("problems", "problems")})
        self._logger.info(f"End {self.compose.__name__}")


def _earlier_answers(output_path: Path, logger: logging.Logger) -> list[str]:
    """The query folders of an earlier run's answers in OUT, said in the log (and recorded in results.json by the
    caller), since results.json will list this run's only and whatever reads OUT (a watcher, a person) could take the
    old reports for new ones. Nothing is deleted: the files are the user's."""
    from .operators.sr_writer import SR_FILE

    earlier = sorted(p.parent.name for p in output_path.glob(f"*/{SR_FILE}"))
    if earlier or (output_path / RESULTS_FILE).exists():
        logger.warning("the output folder %s holds an earlier run's answers (%d query folder(s)%s): this run's results.json will list "
                       "its own queries only, and a query answered again is overwritten; use an empty output folder per run",
                       output_path, len(earlier), (": " + ", ".join(earlier[:3]) + (", ..." if len(earlier) > 3 else "")) if earlier else "")
    return earlier


_LIBRARY_SITES: dict[str, dict[str, int]] = {}  # per library as loaded (LoadedModels.index_state): its cases per site


def _check_site_in_library(site: str, models: LoadedModels) -> None:
    """A fixed site condition (``--site trunk``) that no library case records would answer every study with no case
    (before: exit 0, an empty SR and PDF per study): refused before any study is read. The library's sites are
    counted once per library (a service's rounds reuse the count)."""
    from monai_cir.sites_condition import resolve_site_condition

    filters, _ = resolve_site_condition(site, None)  # ("same" without a query site: no filter)
    if filters is None:
        return
    if models.index_state not in _LIBRARY_SITES:
        _LIBRARY_SITES[models.index_state] = models.index.info()["site"]
    sites = _LIBRARY_SITES[models.index_state]
    if not sites.get(filters["site"]):
        recorded = ", ".join(f"{name} {count}" for name, count in sorted(sites.items(), key=lambda kv: -kv[1])) or "none"
        raise ValueError(f"site {site!r} ({filters['site']}): no library case records this site (the library's sites: {recorded}); "
                         f"every study would be answered with no case. Use --site any, or build the library with a site column")


def run_app(
    input_folder: str | Path, output_folder: str | Path, models: LoadedModels | str | Path, settings: AppSettings | None = None
) -> dict[str, Any]:
    """One run of the app in this process (the same operators as ``python -m deploy_app``).

    Args:
        input_folder: DICOM files of one or more studies.
        output_folder: where the SR, the PDFs, ``results.json`` and ``problems.json`` go.
        models: a :class:`LoadedModels` (reused as is) or a MODELS folder (through the
            per-process cache of :func:`load_models`).
        settings: default ``app.yaml`` < environment.

    Returns:
        the ``results.json`` payload.

    The SDK runs the operators in a thread of its own: their forwards get both CPUs only while no other
    living thread of the process has run torch in parallel (torch's OpenMP team; see
    :func:`monai_cir.config.in_a_passing_thread`). :func:`load_models` loads in a thread that ends; do
    your own torch work before a call the same way.
    """
    settings = settings or AppSettings.resolve()
    if not isinstance(models, LoadedModels):
        models = load_models(models, device=settings.device)
    argv = [sys.executable, APP_NAME, "-i", str(input_folder), "-o", str(output_folder), "-m", str(models.index_dir.parent)]
    SimilarCasesApp(argv, settings=settings, models=models).run()
    return json.loads((Path(output_folder) / RESULTS_FILE).read_text())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m deploy_app``: the app's own flags, then the SDK's (-i/-o/-m/-l/-w)."""
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv[1:]):
        from .settings import app_arg_parser

        print(__doc__)
        print("app flags (besides the SDK's -i IN -o OUT -m MODELS -l LEVEL):")
        app_arg_parser().print_help()
        return 0
    try:
        flags, sdk_argv = split_argv(argv)
        settings = AppSettings.resolve(flags)
        app = SimilarCasesApp([sys.executable, *sdk_argv], settings=settings)
        app.run()
    except (ModelsLayoutError, FileNotFoundError, ValueError) as err:
        logging.getLogger(__name__).error("%s", err)
        print(f"{APP_NAME}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
