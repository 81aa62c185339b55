"""Per-study cost of the deploy app, cold and warm, every stage it runs -> ``bench/results/app_latency.json``.

- **cold**: ``python -m deploy_app`` on one study as a subprocess (``--cold-runs`` times): wall time
  from launch to exit, and the app's own ``process_start_to_ready_s`` (imports + models loaded, from
  ``results.json``). Where that time goes: a fresh process times each import group and the model
  load in order (wall and CPU seconds), so the figure can be read on a loaded machine too. On CPU
  twice, launches interleaved: with the encoder artifact the index build writes
  (``MODELS/index/encoders``, TorchScript encoders: the app's path) and on a copy of MODELS without
  it (the fallback: encoders built with timm and transformers, the imports timed one by one).
- **warm, one study** (``--warm-runs`` times): the app in this process on one study, models loaded
  once (:func:`deploy_app.app.run_app` with one :class:`~deploy_app.app.LoadedModels`, as a DICOM
  service runs it), everything on (explanations, SR, PDF + Encapsulated PDF). Per run: the wall time
  of the whole run and its stages from ``results.json``: load (folder scan + DICOM decode),
  preprocess, encode, search, explain, SR, PDF; ``other`` = wall - stages (the SDK's graph, writing
  results.json / problems.json). Twice: ``steady`` (the library cases of the matches seen before in
  this process: their decoded images, thumbnails and grid maps cached, as in a service after its
  first studies) and ``first_sight`` (those caches cleared before each run, as for the first study
  after a start: the matches' images are decoded and their grid maps read from the store the index
  build wrote, ``MODELS/index/grid_maps``); then ``first_sight_without_grid_store`` (the same with
  no store: the matches run through the image encoder, as with an index built ``--no-grid-maps``).
- **warm, a batch** of ``--studies`` studies in one run (batch size = the number of studies),
  ``--batch-runs`` times (the median run reported, every run listed: on a shared VM the same run
  varies by a fifth from minute to minute): per-study cost = run wall / studies, against the
  single study's p50; first sight (caches cleared), then steady (the same batch again). Then
  **paired rounds** (``--paired-rounds``): three single-study runs and the batch back to back, order
  alternating, the batch's per-study wall over the three singles' median per round, and the median of
  those ratios (what the drift touches least: one single run alone varies by a fifth).

The case library: ISIC UDA-1 minus the demo's held-out query, ``--limit`` cases (evenly spaced per
class), dicomized and indexed with the trained head under the cache (``bench/app_latency``). Query
studies: the demo's held-out case, and library cases re-dicomized as new studies with their own text
(age, sex, site) and, by default (``--query-text findings``), a 7-point report in the template's words after
it (the commonest report of the study's diagnosis: ``QUERY_FINDINGS``), so that the release model's diagnosis prior orders every answer (its probes, one filtered search per
diagnosis, the evidence-disagreement check: the app's heavier path); ``--query-text own`` keeps the studies'
own text (no finding named: ranked by similarity alone, as the runs before 0.8 measured).
On CUDA (when present) the same runs again, and the CPU and CUDA top-k are compared; otherwise the
JSON says it was not run. Commit and machine (load average) are recorded: run on a clean tree.

    .venv/bin/python bench/app_latency.py [--studies 16] [--warm-runs 5] [--batch-runs 3] [--paired-rounds 5] [--cold-runs 1] [--limit 120]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from _common import begin, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT_JSON = REPO / "bench" / "results" / "app_latency.json"
STAGES = ("load", "preprocess", "encode", "search", "explain", "sr", "pdf")
# what --query-text findings adds to each query study's text: a full 7-point report in the template's words, the
# commonest kind for the study's diagnosis in Derm7pt (so the reports agree with the images as a clinic's would, and
# the evidence-disagreement notice appears where the images and the findings really differ, not on every answer)
QUERY_FINDINGS = {
    "melanoma": ("Dermoscopy: atypical pigment network; irregular streaks; irregular pigmentation; regression structures; "
                 "irregular dots and globules; blue-whitish veil present; no vascular structures."),
    "nevus": ("Dermoscopy: typical pigment network; no streaks; no pigmentation; no regression structures; regular dots and "
              "globules; no blue-whitish veil; no vascular structures."),
}

# a fresh process: import groups in the order the app meets them, then the models. argv: repo, MODELS,
# mode: "artifact" (MODELS/index/encoders present: what the app imports on its fast path) or "eager" (no
# artifact: the app's fallback, the encoders built with timm and transformers; the imports it needs
# timed one by one first)
COLD_BREAKDOWN = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
marks, t0, c0 = [], time.perf_counter(), time.process_time()
def mark(what):
    marks.append((what, time.perf_counter(), time.process_time()))
import torch; mark("torch")
import deploy_app.app as app; mark("deploy_app.app (holoscan, MONAI Deploy SDK, pydicom)")
if sys.argv[3] == "eager":
    import torchvision.ops.misc; mark("torchvision (timm imports torchvision.ops, which imports torch._dynamo)")
    import timm; mark("timm (the rest)")
    import transformers; mark("transformers")
    from transformers import BertModel; mark("transformers BertModel (modeling_utils: scipy via transformers.loss)")
    import faiss; mark("faiss")
    models = app.load_models(sys.argv[2], device="cpu"); mark("models: build network + load weights + index")
else:
    import faiss; mark("faiss")
    import tokenizers; mark("tokenizers")
    models = app.load_models(sys.argv[2], device="cpu"); mark("models: encoder artifact (SHA-256 + torch.jit.load) + head + fingerprint + index")
import monai_cir.data.report; mark("the findings reader (first query text: its phrasings' patterns compiled)")
import highdicom; mark("highdicom (first SR)")
import reportlab.pdfgen.canvas; mark("reportlab (first PDF)")
rows, last_w, last_c = [], t0, c0
for what, w, c in marks:
    rows.append({"step": what, "wall_s": round(w - last_w, 3), "cpu_s": round(c - last_c, 3)})
    last_w, last_c = w, c
rows.append({"image_encoder": type(models.net.image_encoder).__name__, "imported": sorted(m for m in ("timm", "torchvision", "transformers", "torch._dynamo", "scipy") if m in sys.modules)})
print(json.dumps(rows))
"""


# one worker of the parallelism probe: a fixed piece of the app's work, repeated from a start time (argv[4], epoch
# seconds) for argv[5] seconds, on one torch thread; prints how many times it ran. argv: repo, MODELS, work
# ("encode": the image + text forward of 4 studies, the app's CPU chunk; "sr_write": writing an answer's SR
# (pydicom, single-threaded Python: most of the reports pass), the SR file in argv[6])
PARALLEL_WORKER = r"""
import io, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
if sys.argv[3] == "encode":
    import deploy_app.app as app
    from deploy_app.operators.retrieval import _forward_images
    net = app.load_models(sys.argv[2], device="cpu").net
    images, texts = torch.rand(4, 3, net.image_size, net.image_size), ["irregular streaks; blue-whitish veil present"] * 4
    def once():
        with torch.inference_mode():
            net.encode_query_parts(_forward_images(net, images), texts, with_image_query=True)
else:
    import pydicom
    sr = pydicom.dcmread(sys.argv[6])
    def once():
        sr.save_as(io.BytesIO(), enforce_file_format=True)
once()
time.sleep(max(0.0, float(sys.argv[4]) - time.time()))
end, n = float(sys.argv[4]) + float(sys.argv[5]), 0
while time.time() < end:
    once(); n += 1
print(n)
"""


def machine_parallelism(models: Path, sr_file: Path, seconds: float = 6.0) -> dict:
    """How much more of the app's work this machine does with every CPU busy than with one: each kind of work
    (:data:`PARALLEL_WORKER`) in one process alone, then in as many processes as there are CPUs at once, on one torch
    thread each; ``speedup`` = the work done together over the work done alone. A batch cannot cost less per
    study than a single study's work over this speedup, whatever the CPU times add up to."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = {"cpus": cpus, "seconds": seconds}
    for work in ("encode", "sr_write"):
        rates = []
        for processes in (1, cpus):
            start = time.time() + 15  # after every worker has loaded what it needs
            procs = [subprocess.Popen([sys.executable, "-W", "ignore", "-c", PARALLEL_WORKER, str(REPO), str(models), work, str(start),
                                       str(seconds), str(sr_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                     for _ in range(processes)]
            counts = []
            for proc in procs:
                stdout, stderr = proc.communicate()
                if proc.returncode != 0:
                    raise RuntimeError(f"parallelism worker ({work}) failed:\n{stderr[-3000:]}")
                counts.append(int(stdout.strip().splitlines()[-1]))
            rates.append(sum(counts) / seconds)
        unit = "forwards of 4 studies per s" if work == "encode" else "SR writes per s"
        out[work] = {"unit": unit, "one_process": round(rates[0], 2), f"{cpus}_processes": round(rates[1], 2), "speedup": round(rates[1] / rates[0], 2)}
        print(f"[cpu] parallelism, {work}: {rates[0]:.2f} {unit} in one process, {rates[1]:.2f} in {cpus}: x{rates[1] / rates[0]:.2f}", flush=True)
    return out


def run_subprocess_app(inputs: Path, out: Path, models: Path, extra: list[str]) -> tuple[float, dict]:
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


def cold_breakdown(models: Path, mode: str) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", COLD_BREAKDOWN, str(REPO), str(models), mode], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"cold breakdown failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the app's writer workers)."""
    return sum(cpu_split())


def cpu_split() -> tuple[float, float]:
    """(this process's CPU seconds, its ended children's: the reports pass's forked workers)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), children.ru_utime + children.ru_stime


def stats(values: list[float]) -> dict:
    values = sorted(values)
    return {"n": len(values), "p50": round(statistics.median(values), 1), "mean": round(statistics.fmean(values), 1), "min": round(values[0], 1), "max": round(values[-1], 1)}


def stage_breakdown(summaries: list[tuple[float, dict]]) -> dict:
    """Median per stage over runs (ms per study), and ``other`` = run wall - stages."""
    per_run = []
    for wall, summary in summaries:
        queries = summary["queries"]
        stages = {s: sum(q["timing_ms"].get(s, 0.0) for q in queries) / len(queries) for s in STAGES}
        stages["other"] = 1000 * wall / len(queries) - sum(stages.values())
        per_run.append(stages)
    return {s: round(statistics.median(r[s] for r in per_run), 1) for s in (*STAGES, "other")}


def single_runs(folder: Path, out: Path, models, settings, n: int, first_sight: bool) -> tuple[list[tuple[float, dict]], list[float]]:
    from deploy_app.operators.retrieval import clear_library_caches

    runs, cpu_ms = [], []
    for _ in range(n):
        if first_sight:
            clear_library_caches()
        start, cpu = time.perf_counter(), cpu_seconds()
        summary = run_app_in_process(folder, out, models, settings)
        runs.append((time.perf_counter() - start, summary))
        cpu_ms.append(1000 * (cpu_seconds() - cpu))
    return runs, cpu_ms


def run_app_in_process(folder: Path, out: Path, models, settings) -> dict:
    from deploy_app.app import run_app

    return run_app(folder, out, models, settings)


def single_entry(runs: list[tuple[float, dict]], cpu_ms: list[float]) -> dict:
    return {**stats([1000 * w for w, _ in runs]), "stages_p50_ms": stage_breakdown(runs), "cpu_ms": stats(cpu_ms), "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def batch_entry(folder: Path, out: Path, models, settings, single: dict, first_sight: bool, runs: int) -> dict:
    """``runs`` batch runs; the figures are the median run's (by wall time), every run's per-study wall listed."""
    from deploy_app.operators.retrieval import clear_library_caches

    measured = []
    for _ in range(runs):
        if first_sight:
            clear_library_caches()
        start, (own, children) = time.perf_counter(), cpu_split()
        summary = run_app_in_process(folder, out, models, settings)
        own_after, children_after = cpu_split()
        measured.append((time.perf_counter() - start, own_after - own + children_after - children, summary, children_after - children))
    wall, cpu_s, summary, workers_s = sorted(measured, key=lambda m: m[0])[len(measured) // 2]
    answered = len(summary["queries"])
    per_study, per_cpu = 1000 * wall / answered, 1000 * cpu_s / answered
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    matches = [h["case_id"] for q in summary["queries"] for h in q["top_k"]]
    return {
        "studies": answered,
        "batch_size": settings.batch_size,
        "runs": runs,
        "per_study_ms_each_run": [round(1000 * w / answered, 1) for w, *_ in measured],
        "run_wall_s": round(wall, 2),
        "per_study_ms": round(per_study, 1),
        "per_study_over_single_p50": round(per_study / single["p50"], 3),
        "per_study_cpu_ms": round(per_cpu, 1),
        "per_study_cpu_over_single_cpu_p50": round(per_cpu / single["cpu_ms"]["p50"], 3),
        # where the batch's CPU goes: this process (decode, encode, search, SDK) and the reports pass's forked workers
        "per_study_cpu_ms_split": {"app_process": round(per_cpu - 1000 * workers_s / answered, 1), "report_workers": round(1000 * workers_s / answered, 1)},
        # the floor on this machine: the batch's CPU spread over every CPU, against the single study's wall time
        "cpu_floor_per_study_ms": round(per_cpu / cpus, 1),
        "cpu_floor_over_single_p50": round(per_cpu / cpus / single["p50"], 3),
        # what a batch shares: library cases matched by several studies are decoded and prepared once per process
        "matches": {"shown": len(matches), "distinct_library_cases": len(set(matches))},
        "stages_per_study_ms": stage_breakdown([(wall, summary)]),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def warm(device: str, models_dir: Path, single: Path, several: Path, work: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    from deploy_app.app import load_models
    from deploy_app.settings import AppSettings

    models = load_models(models_dir, device=device)
    settings = AppSettings(device=device, explain=True, write_pdf=True, batch_size=1)
    run_app_in_process(single, work / f"out-{device}-first", models, settings)  # first study of a process: lazy imports
    entry: dict = {}
    last = None
    without_store = dataclasses.replace(models, grid_maps=None)
    for name, first_sight, loaded in (("steady", False, models), ("first_sight", True, models), ("first_sight_without_grid_store", True, without_store)):
        runs, cpu_ms = single_runs(single, work / f"out-{device}-single", loaded, settings, args.warm_runs, first_sight)
        entry[name] = single_entry(runs, cpu_ms)
        last = last or runs[-1][1]
        print(f"[{device}] warm single study, {name}: p50 {entry[name]['p50']:.0f} ms (CPU {entry[name]['cpu_ms']['p50']:.0f} ms) over {len(runs)} runs; stages {entry[name]['stages_p50_ms']}", flush=True)
    settings_b = dataclasses.replace(settings, batch_size=len(list(several.iterdir())))
    batches = {}
    for name, first_sight in (("first_sight", True), ("steady", False)):
        batches[name] = batch_entry(several, work / f"out-{device}-batch", models, settings_b, entry[name], first_sight, args.batch_runs)
        b = batches[name]
        print(f"[{device}] batch of {b['studies']}, {name}: {b['per_study_ms']:.0f} ms per study (median of {b['runs']} runs: {b['per_study_ms_each_run']}) = {b['per_study_over_single_p50']:.2f} x the single study's p50 (CPU {b['per_study_cpu_over_single_cpu_p50']:.2f} x)", flush=True)
    batches["paired"] = paired_rounds(single, several, work / f"out-{device}-paired", models, settings, settings_b, args.paired_rounds)
    p = batches["paired"]
    print(f"[{device}] paired rounds (single, batch back to back), per-study ratio: median {p['steady_ratio_median']:.3f}, {p['first_sight_ratio_median']:.3f} at first sight (rounds: {p['rounds']})", flush=True)
    stored = len(models.grid_maps) if models.grid_maps is not None else 0
    # which answers the diagnosis prior ordered (its notice), and which said the evidence favours another diagnosis
    from monai_cir.prior_ranking import PRIOR_RANKING

    queries = run_app_in_process(several, work / f"out-{device}-batch", models, settings_b)["queries"]
    ordering = {"studies": len(queries), "ordered_by_the_prior": sum(q["ranking"] == PRIOR_RANKING for q in queries),
                "evidence_disagreement_notices": sum(q["evidence_disagreement"] is not None for q in queries)}
    print(f"[{device}] answers: {ordering}", flush=True)
    return {"library_grid_maps_stored": stored, "answers": ordering, "single_study_ms": entry, "batch": batches}, last


def paired_rounds(single: Path, several: Path, out: Path, models, settings, settings_b, rounds: int) -> dict:
    """The ratio measured the way the machine's drift touches least: per round, three single-study
    runs and one batch back to back (order alternating), steady and first sight; the ratio of the
    batch's per-study wall to the median of the round's singles, per round, and their median."""
    from deploy_app.operators.retrieval import clear_library_caches

    def timed(folder: Path, run_settings, first_sight: bool) -> float:
        if first_sight:
            clear_library_caches()
        start = time.perf_counter()
        summary = run_app_in_process(folder, out, models, run_settings)
        return (time.perf_counter() - start) / len(summary["queries"])

    table = []
    for r in range(rounds):
        row = {}
        for kind, first_sight in (("steady", False), ("first_sight", True)):
            if r % 2:
                batch = timed(several, settings_b, first_sight)
                singles = [timed(single, settings, first_sight) for _ in range(3)]
            else:
                singles = [timed(single, settings, first_sight) for _ in range(3)]
                batch = timed(several, settings_b, first_sight)
            one = statistics.median(singles)
            row[kind] = {
                "single_ms_each": [round(1000 * x, 1) for x in singles],
                "single_ms": round(1000 * one, 1),
                "batch_per_study_ms": round(1000 * batch, 1),
                "ratio": round(batch / one, 3),
            }
        table.append(row)
    return {
        "rounds": table,
        "steady_ratio_median": round(statistics.median(t["steady"]["ratio"] for t in table), 3),
        "first_sight_ratio_median": round(statistics.median(t["first_sight"]["ratio"] for t in table), 3),
    }


def prepare(limit: int, studies: int, query_text: str = "findings") -> tuple[Path, Path, Path, Path, list, int]:
    """The bench's case library and query studies, under the cache (``bench/app_latency``; the library built once):
    ``(MODELS, the single study's folder, the work folder, the batch's folder, the batch's query records, the
    library's cases)``.
    ``bench/shared_cpu.py`` uses the same."""
    from monai_cir.cli.demo import DEMO_QUERY_ID, _select_library, build_demo_library
    from monai_cir.config import cache_dir, in_a_passing_thread
    from monai_cir.data import load_isic_uda1
    from monai_cir.data.report import recognised_findings
    from monai_cir.dicom.dicomize import dicomize_record
    from monai_cir.index.base import GRID_STORE_DIR

    records = load_isic_uda1()
    held_out, library_records = _select_library(records, DEMO_QUERY_ID, limit)
    work = cache_dir("bench", "app_latency")
    cached = work / "library-cache" / "models" / "index" / GRID_STORE_DIR
    # in a thread that ends, as load_models loads: this process's main thread keeps no torch thread team
    # (it would slow the app's forwards in the SDK's thread; monai_cir.config.in_a_passing_thread)
    _, models = in_a_passing_thread(build_demo_library, library_records, work / "library-cache", rebuild=not cached.is_dir())

    single, several = work / "single", work / "several"
    for folder in (single, several):
        if folder.exists():
            shutil.rmtree(folder)
    for diagnosis, report_text in QUERY_FINDINGS.items():
        if len(recognised_findings(report_text)) < 5:
            raise RuntimeError(f"the bench's {diagnosis} report names {len(recognised_findings(report_text))} findings the gate reads, not 5 or more")

    def findings(record: object) -> str:  # "own": the texts exactly as before 0.8
        if query_text != "findings":
            return ""
        if record.diagnosis not in QUERY_FINDINGS:
            raise RuntimeError(f"the bench has no 7-point report for diagnosis {record.diagnosis!r}; add one to QUERY_FINDINGS")
        return f" {QUERY_FINDINGS[record.diagnosis]}"

    queries = [held_out, *library_records[: studies - 1]]
    held_out = dataclasses.replace(held_out, text=f"{held_out.text}{findings(held_out)}")
    dicomize_record(held_out, single, include_diagnosis=False)
    dicomize_record(held_out, several, include_diagnosis=False)
    for i, record in enumerate(queries[1:]):
        # a new study of the same image: another collection name gives other UIDs and patient
        extra = findings(record)
        dicomize_record(dataclasses.replace(record, collection="bench-query", text=f"{record.text}; lesion {i + 1}" + (f".{extra}" if extra else "")), several, include_diagnosis=False)
    return models, single, work, several, queries, len(library_records)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=16, help="studies in the batched run (default 16)")
    parser.add_argument("--warm-runs", type=int, default=5, help="warm runs of the single study (default 5)")
    parser.add_argument("--batch-runs", type=int, default=3, help="runs of the batch, first sight and steady each; the median run is reported (default 3)")
    parser.add_argument("--paired-rounds", type=int, default=5, help="paired rounds (three singles + the batch), steady and first sight each (default 5)")
    parser.add_argument("--cold-runs", type=int, default=1, help="single-study app launches (default 1)")
    parser.add_argument("--limit", type=int, default=120, help="library size (default 120; latency hardly depends on it: search is < 1 ms)")
    parser.add_argument("--query-text", choices=("findings", "own"), default="findings",
                        help="the query studies' text: their own (age, sex, site) plus a 7-point report, so the diagnosis prior "
                        "orders the answers (default), or their own alone")
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args()
    header = begin(__file__, "the deploy app per study: cold start, one study, a batch, stage by stage", None, machine=False)

    import torch

    from monai_cir.networks import ENCODER_ARTIFACT_DIR
    from monai_cir.provenance import machine_info

    models, single, work, several, queries, library_cases = prepare(args.limit, args.studies, args.query_text)
    # the same MODELS without the encoder artifact: the app's fallback (the encoders built eagerly)
    if not (models / "index" / ENCODER_ARTIFACT_DIR / "manifest.json").is_file():
        raise RuntimeError(f"{models}/index has no encoder artifact: the index build should have written it (see the log)")
    eager_models = work / "models-eager-fallback"
    if eager_models.exists():
        shutil.rmtree(eager_models)
    shutil.copytree(models, eager_models, ignore=shutil.ignore_patterns(ENCODER_ARTIFACT_DIR))

    report: dict = {
        **header,
        "machine_at_start": machine_info(),
        "library_cases": library_cases,
        "query_text": {"mode": args.query_text, "added_report_by_diagnosis": QUERY_FINDINGS if args.query_text == "findings" else None,
                       "query_studies_by_diagnosis": dict(sorted(Counter(r.diagnosis for r in queries).items()))},
        "what": {
            "cold_s": "`python -m deploy_app` on one study as a subprocess: wall time launch to exit; process_start_to_ready_s from results.json (imports + models loaded); on CPU with the encoder artifact (MODELS/index/encoders: the TorchScript encoders, no timm / torchvision / transformers import)",
            "cold_s_eager_fallback": "the same launches (interleaved with cold_s) on a copy of MODELS without the encoder artifact: the app's fallback, encoders built with timm and transformers",
            "cold_breakdown": "a fresh process on the artifact's path: each import group, then load_models, in order (wall and CPU seconds); the last row: the image encoder's class and which of timm, torchvision, transformers, torch._dynamo, scipy were imported",
            "cold_breakdown_eager_fallback": "the same without the artifact, with the imports the eager encoders need timmed one by one",
            "single_study_ms": "warm: the app in one process, models loaded once, one study per run, explanations + SR + PDF on; wall per run; stages from results.json, other = wall - stages (SDK graph, results.json); cpu_ms = CPU time of the process (all threads) and of its ended children (the reports' workers of a batch) per run: on a machine shared with other jobs it is the figure that load inflates least (wall ~ CPU for the single-threaded rendering when idle). steady: the matches' library cases seen before in this process (decoded images, thumbnails, grid maps cached); first_sight: those caches cleared before each run, the matches' grid maps read from MODELS/index/grid_maps (written by the index build); first_sight_without_grid_store: the same without that store (the matches run through the image encoder)",
            "batch": "warm: runs answering the studies together (batch_size = studies; the reports pass, explanations + SR + PDF, splits the studies over forked workers, one per CPU); per-study cost = run wall / studies, of the median of --batch-runs runs (each run's listed); first_sight (library caches cleared before each run) against the single study's first_sight p50, then steady (the same batch again) against the steady p50; paired: --paired-rounds rounds of three single-study runs and one batch back to back (order alternating), steady and first sight, the batch's per-study wall over the median of the round's three singles, per round, and the median of those ratios (the figure the machine's drift touches least); per_study_cpu_ms_split: the batch's CPU per study in the app's process and in the reports pass's forked workers; cpu_floor_per_study_ms: the batch's CPU per study over the CPUs (a batch whose wall time is near it has no idle CPU left to use), cpu_floor_over_single_p50 that floor over the single study's p50 (the lowest ratio this machine allows without less CPU work per study); matches: the cases shown over the batch and the distinct library cases among them (each prepared once per process: the work a batch shares)",
            "machine_parallelism": "how much more of the app's work the machine does with every CPU busy than with one (the batch's reports pass and encode run on every CPU): two kinds of work, each repeated for `seconds` in one process alone, then in one process per CPU at once, one torch thread each: encode (the image + text forward of 4 studies, the app's CPU chunk) and sr_write (writing an answer's SR with pydicom: single-threaded Python, most of the reports pass); speedup = the work done together over the work done alone (the CPU count on a machine whose CPUs share nothing; less where they share a core or memory bandwidth). A batch's per-study wall cannot go below a single study's work over this speedup",
            "cold_first_study_s": "launch_to_exit - process_start_to_ready: the first study of a fresh process (its lazy imports: highdicom, reportlab; the first forwards) and the SDK's shutdown",
        },
        "results": [],
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" not in devices:
        report["cuda"] = "not run: no GPU in this session (the app runs on CUDA with fp16 autocast when one is present; rerun this bench there)"
    answers = {}
    for device in devices:
        entry: dict = {"device": device if device == "cpu" else f"cuda ({torch.cuda.get_device_name(0)})"}
        # on CPU the encoder artifact's path and the eager fallback, launches interleaved (same load)
        variants = {"cold_s": models, "cold_s_eager_fallback": eager_models} if device == "cpu" else {"cold_s": models}
        cold: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for i in range(args.cold_runs):
            for name, folder in variants.items():
                wall, summary = run_subprocess_app(single, work / "out-cold", folder, ["--device", device])
                cold[name].append((wall, summary["process_start_to_ready_s"]))
                print(f"[{device}] {name} run {i + 1}: {wall:.1f} s to exit, process start to ready {summary['process_start_to_ready_s']:.1f} s", flush=True)
        for name, runs in cold.items():
            entry[name] = {
                "launch_to_exit": [round(w, 2) for w, _ in runs],
                "process_start_to_ready": [round(r, 2) for _, r in runs],
                "first_study_and_exit": [round(w - r, 2) for w, r in runs],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
            }
        if device == "cpu":
            entry["cold_breakdown"] = cold_breakdown(models, "artifact")
            entry["cold_breakdown_eager_fallback"] = cold_breakdown(eager_models, "eager")
            print(f"[cpu] cold breakdown: {entry['cold_breakdown']}\n[cpu] eager fallback: {entry['cold_breakdown_eager_fallback']}", flush=True)
        warm_entry, last = warm(device, models, single, several, work, args)
        entry.update(warm_entry)
        if device == "cpu":
            sr_file = next((work / "out-cpu-single").rglob("similar_cases_sr.dcm"))
            entry["machine_parallelism"] = machine_parallelism(models, sr_file)
        answers[device] = last["queries"][0]["top_k"]
        report["results"].append(entry)
    if "cuda" in answers:
        cpu, gpu = answers["cpu"], answers["cuda"]
        report["cpu_vs_cuda"] = {
            "same_case_ids": [h["case_id"] for h in cpu] == [h["case_id"] for h in gpu],
            "max_abs_score_difference": round(max(abs(a["score"] - b["score"]) for a, b in zip(cpu, gpu)), 6),
        }
    report["machine_at_end"] = machine_info()
    write_results(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
