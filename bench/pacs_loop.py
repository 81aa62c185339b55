"""Seconds from the end of C-STORE into the PACS to the answer being queryable there -> ``bench/results/pacs_loop.json``.

The hospital loop on loopback (``tests/hospital.py``): Debian's Orthanc holds a case library of
``--library`` ISIC UDA-1 cases (dicomized), the index is built from it over DICOMweb
(``monai-cir index build --dicomweb``), and the service (``monai_cir.service.DicomService`` with the
app's operators warm, the app's ``app.yaml`` settings: top-5, explanations, PDF) listens for Orthanc,
which forwards each stable dermoscopy study (Lua ``OnStableStudy``).

Per study: ``storescu`` of the image + its report SR into Orthanc; the clock starts when storescu
returns and stops when QIDO-RS (polled every 50 ms) finds both the SR and the Encapsulated PDF in
the study. One warm-up study is not counted; ``--studies`` are sent one after another. Waiting
times are part of the figure and are reported apart:

- Orthanc ``StableAge`` (``--stable-age``, default 2 s; Orthanc's default is 60 s, meant for
  modalities that send a study over minutes; a dermoscopy camera sends one or two images at once),
- the service's quiet time (``--quiet``, default 1 s after the last instance and the association's end).

    .venv/bin/python bench/pacs_loop.py [--studies 10] [--library 24] [--stable-age 2] [--quiet 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import begin, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT_JSON = REPO / "bench" / "results" / "pacs_loop.json"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--library", type=int, default=24)
    parser.add_argument("--stable-age", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one answer")
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args()
    header = begin(__file__, "PACS loop: storescu into Orthanc to SR + PDF queryable by QIDO-RS", None)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from deploy_app.settings import AppSettings
    from monai_cir.data.collections import load_collection
    from monai_cir.dicom.dicomize import dicomize_record
    from tests.hospital import HospitalLoop, as_query_study

    records = load_collection("isic-uda1")
    library, queries = records[: args.library], records[args.library : args.library + args.studies + 1]
    settings = AppSettings.resolve()  # app.yaml < environment: what a deployment runs
    root = Path(tempfile.mkdtemp(prefix="pacs-loop-"))
    rows = []
    setup_start = time.perf_counter()
    with HospitalLoop(root, library, stable_age=args.stable_age, quiet_s=args.quiet, app_settings=settings) as loop:
        setup_s = time.perf_counter() - setup_start
        client = DICOMwebClient(loop.server.dicomweb_url)
        for i, record in enumerate(queries):
            case = dicomize_record(record, root / "made" / str(i), include_diagnosis=False)
            files = as_query_study(case, root / "queries" / str(i))
            sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
            study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            loop.server.storescu(files)
            stored = time.perf_counter()
            stored_wall = time.time()
            while time.perf_counter() - stored < args.timeout:
                found = loop.answers(client, study_uid, sent)
                if PDF in found and len(found) >= 2:
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError(f"study {i}: no answer within {args.timeout} s; status {loop.service.status(study_uid)}")
            latency = time.perf_counter() - stored
            while (status := loop.service.status(study_uid) or {}).get("state") != "returned" and time.perf_counter() - stored < args.timeout:
                time.sleep(0.02)  # the service records "returned" just after the C-STORE that QIDO already sees
            row = {
                "study": i,
                "seconds": round(latency, 3),
                "orthanc_to_service_s": round(status["first_received"] - stored_wall, 3),  # StableAge + Orthanc's stable check + forwarding
                "service_answer_s": round(status["finished"] - status["started"], 3),  # the app's operators, warm
                "service_received_to_returned_s": round(status["returned"] - status["first_received"], 3),
            }
            summary = json.loads((loop.service.dirs["results"] / study_uid / "results.json").read_text())
            row["app_stages_ms"] = {k: round(v) for k, v in summary["queries"][0]["timing_ms"].items()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    counted = rows[1:]  # the first study warms lazy imports
    seconds = [r["seconds"] for r in counted]
    answer = [r["service_answer_s"] for r in counted]
    result = {
        **header,
        "what": "seconds from the end of storescu into Orthanc to SR + Encapsulated PDF queryable by QIDO-RS in the same study",
        "inputs": {
            "library_cases": len(library), "query_studies": len(counted), "warmup_studies": 1, "collection": "isic-uda1",
            "model": "untrained offline default (EfficientNet-Lite2 + MiniLM, 260 px)", "app_settings": settings.to_dict(),
        },
        "waits": {
            "orthanc_stable_age_s": args.stable_age, "service_quiet_s": args.quiet,
            "note": "Orthanc checks for stable studies about once a second, so a study is forwarded StableAge to StableAge + 1 s after its last instance",
        },
        "setup_s": round(setup_s, 1),
        "seconds_p50": round(statistics.median(seconds), 3),
        "seconds_p95": round(percentile(seconds, 0.95), 3),
        "seconds_minus_waits_p50": round(statistics.median(seconds) - args.stable_age - args.quiet, 3),
        "service_answer_s_p50": round(statistics.median(answer), 3),
        "service_answer_s_p95": round(percentile(answer, 0.95), 3),
        "app_stages_ms_p50": {k: round(statistics.median(r["app_stages_ms"].get(k, 0) for r in counted)) for k in counted[0]["app_stages_ms"]},
        "target": "p50 <= 2 s + StableAge + quiet time",
        "target_met": statistics.median(seconds) <= 2.0 + args.stable_age + args.quiet,
        "studies": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("studies", "machine")}, indent=1))
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
