"""monai-cir similar-cases app: DICOM dermoscopy studies in, ranked similar library cases out.

Pipeline (``compose``)::

    DermoscopyStudyLoaderOperator ──queries──> ComposedRetrievalOperator ──results──> SimilarCasesSRWriterOperator
          │                                                                                │ results
          │                                                                   SimilarCasesPDFWriterOperator
          │                                                                                │ results
          │                                                           [DICOMPublisherOperator, when configured]
          │                                                                                │ results
          └──────────────────────────problems──────────────────────────────> ResultsWriterOperator

Run::

    python -m deploy_app -i IN -o OUT -m MODELS [-k 5] [--publish-dicom HOST:PORT:AET] [--publish-dicomweb URL]

or with ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_MODEL_PATH``. MODELS holds
``model.pt`` (or is a bundle folder with ``models/model.pt``) and ``index/`` (the case index).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application

from . import APP_NAME, __version__
from .operators.dermoscopy_loader import DermoscopyStudyLoaderOperator
from .operators.pdf_writer import SimilarCasesPDFWriterOperator
from .operators.publisher import DICOMPublisherOperator
from .operators.results_writer import ResultsWriterOperator
from .operators.retrieval import ComposedRetrievalOperator, ModelsLayoutError
from .operators.sr_writer import SimilarCasesSRWriterOperator
from .settings import AppSettings, split_argv

__all__ = ["SimilarCasesApp", "main"]


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
    """Composed vision-language retrieval of similar skin-lesion cases as a MONAI Deploy app."""

    def __init__(self, *args, settings: AppSettings | None = None, **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.settings = settings or AppSettings.resolve()
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        """Creates the operators and connects them (SDK style: paths from the app context)."""
        self._logger.info(f"Begin {self.compose.__name__}")
        app_context: AppContext = Application.init_app_context(self.argv)
        input_path = Path(app_context.input_path)
        output_path = Path(app_context.output_path)
        models_path = Path(app_context.model_path)
        output_path.mkdir(parents=True, exist_ok=True)
        s = self.settings
        self._logger.info(f"input {input_path}, output {output_path}, models {models_path}, settings {s.to_dict()}")

        loader = DermoscopyStudyLoaderOperator(self, CountCondition(self, 1), input_folder=input_path, name="dermoscopy_loader_op")
        retrieval = ComposedRetrievalOperator(
            self, models_path=models_path, top_k=s.top_k, batch_size=s.batch_size, device=s.device, site=s.site, explain=s.explain, name="retrieval_op"
        )
        sr_writer = SimilarCasesSRWriterOperator(self, output_folder=output_path, name="sr_writer_op")
        last = sr_writer
        self.add_flow(loader, retrieval, {("queries", "queries")})
        self.add_flow(retrieval, sr_writer, {("results", "results")})
        if s.write_pdf:
            pdf_writer = SimilarCasesPDFWriterOperator(self, output_folder=output_path, name="pdf_writer_op")
            self.add_flow(last, pdf_writer, {("results", "results")})
            last = pdf_writer
        if s.publish_dicom or s.publish_dicomweb:
            publisher = DICOMPublisherOperator(
                self, dicom_node=s.dicom_node, dicomweb_url=s.publish_dicomweb, calling_aet=s.calling_aet, name="publisher_op"
            )
            self.add_flow(last, publisher, {("results", "results")})
            last = publisher
        run_info = {
            "app": f"{APP_NAME} {__version__}",
            "device": str(retrieval.net.device),
            "model_load_s": round(retrieval.load_s, 3),
            "process_start_to_ready_s": round(seconds_since_process_start() or -1.0, 3),
            "index_cases": len(retrieval.index),
            "settings": s.to_dict(),
        }
        results_writer = ResultsWriterOperator(self, output_folder=output_path, run_info=run_info, name="results_writer_op")
        self.add_flow(last, results_writer, {("results", "results")})
        self.add_flow(loader, results_writer, {("problems", "problems")})
        self._logger.info(f"End {self.compose.__name__}")


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
