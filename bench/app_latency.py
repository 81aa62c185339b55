"""Per-study latency of the deploy app, cold and warm -> ``bench/results/app_latency.json``.

- **cold**: process start to output for one study: ``python -m deploy_app`` as a subprocess, wall
  time from launch to exit (SDK/holoscan import, model + index load, one query, SR, PDFs,
  results.json). Run ``--cold-runs`` times.
- **warm**: the model is loaded; one app run answers ``--studies`` studies one at a time
  (``--batch-size 1``), and each study's latency is the sum of its stages (load share, preprocess,
  encode, search, SR, PDF) from ``results.json``; the first study is reported apart (lazy imports)
  and the others summarised. Also the same studies with batching (amortised per study).

The case library is the demo's (``monai-cir demo``: ISIC UDA-1 minus the held-out query, dicomized
and indexed under ``.cache/demo``), built here when missing. Query studies: the demo's held-out
case plus library cases re-dicomized as new studies with their own text (latency does not depend
on whether a query is in the library). GPU figures are taken when CUDA is available; otherwise the
JSON says so.

    .venv/bin/python bench/app_latency.py [--studies 8] [--cold-runs 2] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT_JSON = REPO / "bench" / "results" / "app_latency.json"
STAGES = ("load", "preprocess", "encode", "search", "sr", "pdf")


def machine() -> dict:
    from monai_cir.provenance import machine_info

    return machine_info()


def run_app(inputs: Path, out: Path, models: Path, extra: list[str]) -> tuple[float, dict]:
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "deploy_app", "-i", str(inputs), "-o", str(out), "-m", str(models), *extra]
    start = time.perf_counter()
    proc = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"app failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return wall, json.loads((out / "results.json").read_text())


def per_study_ms(summary: dict) -> list[float]:
    return [sum(q["timing_ms"].get(s, 0.0) for s in STAGES) for q in summary["queries"]]


def stats(values: list[float]) -> dict:
    values = sorted(values)
    return {
        "n": len(values),
        "median": round(statistics.median(values), 1),
        "mean": round(statistics.fmean(values), 1),
        "min": round(values[0], 1),
        "max": round(values[-1], 1),
    }


def stage_medians(summary: dict, skip_first: bool = True) -> dict:
    queries = summary["queries"][1:] if skip_first and len(summary["queries"]) > 1 else summary["queries"]
    return {s: round(statistics.median(q["timing_ms"].get(s, 0.0) for q in queries), 1) for s in STAGES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=8, help="query studies in the warm run (default 8)")
    parser.add_argument("--cold-runs", type=int, default=2, help="single-study app launches (default 2)")
    parser.add_argument("--limit", type=int, default=None, help="demo library size (default: the demo's, all 554)")
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import dataclasses

    import torch

    from monai_cir.cli.demo import DEMO_QUERY_ID, _select_library, build_demo_library
    from monai_cir.config import cache_dir
    from monai_cir.data import load_isic_uda1
    from monai_cir.dicom.dicomize import dicomize_record

    records = load_isic_uda1()
    held_out, library_records = _select_library(records, DEMO_QUERY_ID, args.limit)
    cache = cache_dir("demo")
    _, models = build_demo_library(library_records, cache, rebuild=False)

    work = cache_dir("bench", "app_latency")
    single, several = work / "single", work / "several"
    for folder in (single, several):
        if folder.exists():
            shutil.rmtree(folder)
    dicomize_record(held_out, single, include_diagnosis=False)
    dicomize_record(held_out, several, include_diagnosis=False)
    for i, record in enumerate(library_records[: args.studies - 1]):
        # a new study of the same image: another collection name gives other UIDs and patient
        dicomize_record(dataclasses.replace(record, collection="bench-query", text=f"{record.text}; lesion {i + 1}"), several, include_diagnosis=False)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report: dict = {
        "machine": machine(),
        "library_cases": len(library_records),
        "what": {
            "cold_s": "wall time of `python -m deploy_app` on one study: process start (SDK/holoscan import, model and index load) to exit with all outputs",
            "warm_ms": "one app run, model loaded, studies answered one at a time (--batch-size 1); per study: load share + preprocess + encode + search + SR + PDF (both PDFs) from results.json; the first study apart",
            "batched_ms": "same studies, --batch-size N: per-study share of the run",
        },
        "results": [],
    }
    if not torch.cuda.is_available():
        report["gpu"] = "no GPU in this session: CPU figures only (the app runs on CUDA with fp16 autocast and batch 16 when one is present)"
    for device in devices:
        entry: dict = {"device": device if device == "cpu" else f"cuda ({torch.cuda.get_device_name(0)})"}
        cold = []
        for i in range(args.cold_runs):
            wall, summary = run_app(single, work / "out-cold", models, ["--device", device])
            cold.append(wall)
            print(f"[{device}] cold run {i + 1}: {wall:.1f} s (process start to ready {summary['process_start_to_ready_s']:.1f} s, model+index load {summary['model_load_s']:.1f} s)")
        entry["cold_s"] = {**stats(cold), "runs": [round(c, 2) for c in cold], "process_start_to_ready_s": summary["process_start_to_ready_s"], "model_and_index_load_s": summary["model_load_s"]}

        wall, summary = run_app(several, work / "out-warm", models, ["--device", device, "--batch-size", "1"])
        per_study = per_study_ms(summary)
        entry["warm_ms"] = {
            "first_study": round(per_study[0], 1),
            "other_studies": stats(per_study[1:]),
            "stage_medians_other_studies": stage_medians(summary),
            "run_wall_s": round(wall, 2),
            "studies": len(per_study),
        }
        print(f"[{device}] warm: first {per_study[0]:.0f} ms, then median {statistics.median(per_study[1:]):.0f} ms/study; stages {stage_medians(summary)}")
        batch = len(per_study)
        wall_b, summary_b = run_app(several, work / "out-batched", models, ["--device", device, "--batch-size", str(batch)])
        per_study_b = per_study_ms(summary_b)
        entry["batched_ms"] = {"batch_size": batch, "per_study": stats(per_study_b), "stage_medians": stage_medians(summary_b, skip_first=False), "run_wall_s": round(wall_b, 2)}
        print(f"[{device}] batched ({batch}): median {statistics.median(per_study_b):.0f} ms/study")
        report["results"].append(entry)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
