"""bench/plot_cv.py draws a `monai-cir evaluate` results file (the picture beside the README's table)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import plot_cv  # noqa: E402  (bench/ is a folder of scripts, not a package)


def test_plots_the_committed_results_file(tmp_path: Path):
    results = json.loads((BENCH / "results" / "derm7pt_cv.json").read_text())
    out = plot_cv.plot_results(results, tmp_path / "cv.png")
    with Image.open(out) as image:
        assert image.format == "PNG"
        # one row per method: the figure grows with the methods it lists
        height_all = image.size[1]
    few = {**results, "methods": dict(list(results["methods"].items())[:2])}
    with Image.open(plot_cv.plot_results(few, tmp_path / "few.png")) as image:
        assert image.size[1] < height_all


def test_a_file_without_methods_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="lists no methods"):
        plot_cv.plot_results({"commit": {"sha": "0" * 40}}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
