"""The app's pipeline kept warm: the same operators as :class:`deploy_app.app.SimilarCasesApp`, built
once (network and case index loaded once), run on one input folder after another.

``python -m deploy_app`` answers one folder per process: Holoscan runs ``compose`` on each
``Application.run()``, which would reload the network and the index for every study. A DICOM node
(:mod:`monai_cir.service`) answers studies as they arrive, so it builds the operators here once and
calls their SDK-free methods (``load``, ``run``, ``write``) in the order ``compose`` wires them.
When ``compose`` changes, change :meth:`WarmPipeline.answer` with it (the hook that would remove
this copy of the wiring: an ``Application`` method that builds the operators once and runs the
graph on a given input / output folder; see docs/pacs.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import APP_NAME, __version__
from .settings import AppSettings

__all__ = ["PipelineResult", "WarmPipeline"]

logger = logging.getLogger(__name__)

DICOM_OUTPUTS = ("sr", "encapsulated_pdf")  # what goes back to the PACS (the plain PDF stays on disk)


@dataclass
class PipelineResult:
    """What one run made of an input folder."""

    answered: int
    dicom_outputs: list[Path] = field(default_factory=list)  # SR + Encapsulated PDF of every answered query
    problems: list[dict[str, Any]] = field(default_factory=list)  # as in problems.json
    summary: dict[str, Any] = field(default_factory=dict)  # as in results.json


class WarmPipeline:
    """Loads the network and the case index once; :meth:`answer` runs the app's operators on a folder.

    Args:
        models_path: the app's MODELS folder (``model.pt`` + ``index/``, see docs/deploy.md).
        settings: the app's settings (``app.yaml`` < environment); publishing settings are ignored:
            the caller returns the outputs (with retries) itself.
    """

    def __init__(self, models_path: str | Path, settings: AppSettings | None = None) -> None:
        from monai.deploy.core import Application

        from .operators.dermoscopy_loader import DermoscopyStudyLoaderOperator
        from .operators.retrieval import ComposedRetrievalOperator, load_models

        self.settings = settings or AppSettings.resolve()
        s = self.settings
        self._fragment = Application()  # owns the operators; never run
        self.loader = DermoscopyStudyLoaderOperator(self._fragment, input_folder=".", name="dermoscopy_loader_op")
        self.retrieval = ComposedRetrievalOperator(
            self._fragment, models=load_models(Path(models_path), device=s.device), top_k=s.top_k, batch_size=s.batch_size,
            site=s.site, explain=s.explain, name="retrieval_op",
        )
        self.run_info = {"app": f"{APP_NAME} {__version__}", "device": str(self.retrieval.net.device), "model_load_s": round(self.retrieval.models.load_s, 3), "index_cases": len(self.retrieval.index), "settings": s.to_dict()}
        self._count = 0

    def answer(self, input_folder: str | Path, output_folder: str | Path) -> PipelineResult:
        """Every dermoscopy image of ``input_folder`` answered into ``output_folder`` (SR, PDF,
        Encapsulated PDF, results.json, problems.json), as ``python -m deploy_app -i IN -o OUT`` does."""
        from .operators.pdf_writer import SimilarCasesPDFWriterOperator
        from .operators.results_writer import ResultsWriterOperator
        from .operators.sr_writer import SimilarCasesSRWriterOperator

        output_folder = Path(output_folder)
        output_folder.mkdir(parents=True, exist_ok=True)
        self._count += 1
        start = time.perf_counter()
        results, problems = self.loader.load(Path(input_folder))
        self.retrieval.run(results)
        SimilarCasesSRWriterOperator(self._fragment, output_folder=output_folder, name=f"sr_writer_op_{self._count}").run(results)
        if self.settings.write_pdf:
            SimilarCasesPDFWriterOperator(self._fragment, output_folder=output_folder, name=f"pdf_writer_op_{self._count}").run(results)
        writer = ResultsWriterOperator(self._fragment, output_folder=output_folder, run_info={**self.run_info, "answer_s": None}, name=f"results_writer_op_{self._count}")
        writer.run_info["answer_s"] = round(time.perf_counter() - start, 3)
        summary = writer.write(results, problems)
        outputs = [Path(r.outputs[k]) for r in results if r.ok for k in DICOM_OUTPUTS if k in r.outputs]
        answered = sum(r.ok for r in results)
        problem_records = [p.to_dict() for p in problems] + [r.problem().to_dict() for r in results if not r.ok]
        return PipelineResult(answered=answered, dicom_outputs=outputs, problems=problem_records, summary=summary)
