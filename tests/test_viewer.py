"""A real viewer: OHIF (npm ``@ohif/app``) in headless Chromium against Orthanc's DICOMweb shows
the similar-cases results the service returned into the study (``scripts/viewer_check.py``).

Synthetic images only; the hospital loop of ``tests/hospital.py`` (Orthanc routing, the service,
the app's pipeline on the offline model). Asserted from the page's DOM (over the DevTools
protocol) and from the DICOMweb requests OHIF made through the viewer's origin, not from pixels.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

try:
    from tests.orthanc import orthanc_available
except ImportError:  # pytest's rootdir-less import mode
    from orthanc import orthanc_available  # type: ignore[no-redef]

pytestmark = [pytest.mark.pacs, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def _viewer_check():
    spec = importlib.util.spec_from_file_location("viewer_check", REPO / "scripts" / "viewer_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["viewer_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    check = _viewer_check()
    if not orthanc_available():
        pytest.skip("Orthanc and orthanc-dicomweb are not installed (run scripts/install_system_tools.sh)")
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("Chromium is not installed (run scripts/install_system_tools.sh --viewer)")
    if not (check.OHIF_CACHE / check.OHIF_VERSION / "package" / "dist" / "index.html").is_file() and not shutil.which("npm"):
        pytest.skip(f"OHIF {check.OHIF_VERSION} is not in {check.OHIF_CACHE} and npm is missing to fetch it (scripts/install_system_tools.sh --viewer)")
    try:  # fetched once; a machine without the network (npm: ENOTCACHED) has no viewer to test, and is told why
        check.ensure_ohif()
    except RuntimeError as err:
        pytest.skip(f"OHIF {check.OHIF_VERSION} could not be fetched: {str(err)[:300]}")
    out = tmp_path_factory.mktemp("viewer")
    return check.run_check(out, log=lambda line: None), out


def test_study_list_lists_the_study_with_its_results(viewer):
    result, _ = viewer
    assert result.checks["study_list"]["ok"], result.checks["study_list"]
    # selecting the row made OHIF query the study's series and list the results' series
    assert result.checks["study_series"]["ok"], result.checks["study_series"]


def test_viewer_shows_every_series_and_the_pdf(viewer):
    result, out = viewer
    assert result.checks["viewer_series"]["ok"], result.checks["viewer_series"]
    # the PDF: OHIF fetched the Encapsulated Document through DICOMweb and put it in the viewport
    assert result.checks["pdf_viewport"]["ok"], result.checks["pdf_viewport"]
    assert not result.failures, result.failures
    assert {Path(p).name for p in result.screenshots} >= {"1-study-list.png", "3-viewer-study.png", "5-viewer-pdf.png", "6-viewer-sr.png"}
    assert all((out / Path(p).name).stat().st_size > 10_000 for p in result.screenshots)  # a rendered page, not an empty PNG
