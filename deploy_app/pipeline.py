"""The app as the DICOM service (:mod:`monai_cir.service`) calls it: one study folder at a time, in
this process, with the network and the case index loaded once (:func:`deploy_app.app.load_models` +
:func:`deploy_app.app.run_app`, the same operators as ``python -m deploy_app``).

The service returns the outputs itself (with retries when the return node is down), so the app's
own publishing settings are switched off here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .settings import AppSettings

__all__ = ["PipelineResult", "WarmPipeline"]

DICOM_OUTPUTS = ("sr", "encapsulated_pdf")  # what goes back to the PACS (the plain PDF stays on disk)


@dataclass
class PipelineResult:
    """What one run made of an input folder."""

    answered: int
    dicom_outputs: list[Path] = field(default_factory=list)  # SR + Encapsulated PDF of every answered query
    problems: list[dict[str, Any]] = field(default_factory=list)  # problems.json
    summary: dict[str, Any] = field(default_factory=dict)  # results.json


class WarmPipeline:
    """Loads MODELS once; :meth:`answer` runs the app on one folder.

    Args:
        models_path: the app's MODELS folder (``model.pt`` + ``index/``, see docs/deploy.md).
        settings: the app's settings (default ``app.yaml`` < environment).
    """

    def __init__(self, models_path: str | Path, settings: AppSettings | None = None) -> None:
        from .app import load_models

        settings = settings or AppSettings.resolve()
        self.settings = dataclasses.replace(settings, publish_dicom=None, publish_dicomweb=None)
        self.models_path = Path(models_path)
        self.models = load_models(models_path, device=self.settings.device)
        self.run_info = {"index_cases": len(self.models.index), "device": str(self.models.device), "model_load_s": round(self.models.load_s, 3)}

    def answer(self, input_folder: str | Path, output_folder: str | Path) -> PipelineResult:
        """``python -m deploy_app -i input_folder -o output_folder`` without reloading the models."""
        from .app import load_models, run_app
        from .operators.results_writer import PROBLEMS_FILE

        # the index as it is now: `monai-cir index remove` (consent withdrawn) or `add` while the service runs must be
        # what the next study searches (load_models returns the loaded object at the cost of a stat when nothing changed)
        self.models = load_models(self.models_path, device=self.settings.device)
        output_folder = Path(output_folder)
        summary = run_app(input_folder, output_folder, self.models, self.settings)
        outputs = [output_folder / q["outputs"][k] for q in summary["queries"] for k in DICOM_OUTPUTS if k in q.get("outputs", {})]
        problems = json.loads((output_folder / PROBLEMS_FILE).read_text())
        return PipelineResult(answered=len(summary["queries"]), dicom_outputs=outputs, problems=problems, summary=summary)
