"""``monai-cir demo``: the main job on embedded defaults.

1. the demo case library: ISIC UDA-1 (``$MONAI_CIR_DATA/isic-uda1``) minus one held-out case,
   dicomized into ``.cache/demo/library`` and indexed (FAISS) into ``.cache/demo/models/index``,
   with the model beside it (``.cache/demo/models/model.pt`` when a trained checkpoint exists);
   both are reused on the next run while the model and the library are unchanged;
2. a query study from the held-out case (not in the library): its dermoscopy image and an SR with
   a short clinical text from age and sex (never the diagnosis);
3. the deploy app run on it as a subprocess (``python -m deploy_app -i ... -o ... -m ...``);
4. where the SR and the PDF are, and the top-5 (rank, diagnosis, score).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["DEMO_QUERY_ID", "add_parser", "run"]

REPO_ROOT = Path(__file__).resolve().parents[2]
# what the demo's output folder holds (its log of the app, the app's results.json and problems.json, a folder per
# query): a folder holding anything else is not replaced
DEMO_OUTPUT_NAMES = {"app.log", "results.json", "problems.json"}
# the held-out query: a histopathology-confirmed melanoma of ISIC UDA-1 (female, about 60)
DEMO_QUERY_ID = "ISIC_0000002"
STAMP = "demo-library.json"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="index the demo case library and answer a composed query through the deploy app",
        description=(
            "Builds the demo case library from ISIC UDA-1 (dicomized and indexed under .cache/demo, reused when present), "
            "makes a query study from an image that is not in the library, runs the MONAI Deploy app on it "
            "(python -m deploy_app) and prints where the SR and the PDF are and the top-5 similar cases."
        ),
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="app output folder (default output/demo: in the checkout, git-ignored; the current folder's for an installed package)")
    parser.add_argument("--limit", type=int, default=None, help="library size (default: all 554 other ISIC UDA-1 images)")
    parser.add_argument("--query", default=DEMO_QUERY_ID, help=f"ISIC id of the held-out query case (default {DEMO_QUERY_ID})")
    parser.add_argument("--text", default=None, help="clinical text of the query (default: from the case's age and sex)")
    parser.add_argument("-k", "--top-k", type=int, default=5, help="similar cases to show (default 5)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the library and its index even if they are up to date")
    parser.add_argument("--data-root", type=Path, default=None, help="data root (default $MONAI_CIR_DATA or ../shared/data)")
    parser.set_defaults(func=run)
    return parser


def _select_library(records: list, query_id: str, limit: int | None) -> tuple[object, list]:
    query = next((r for r in records if r.case_id == query_id), None)
    if query is None:
        raise ValueError(f"query case {query_id!r} is not in ISIC UDA-1; give another --query")
    others = [r for r in records if r.case_id != query_id]
    if limit is not None:
        if limit < 2:
            raise ValueError(f"--limit must be at least 2, got {limit}")
        if limit < len(others):
            # evenly spaced over each class, so a small library keeps the class mix
            by_class: dict[str, list] = {}
            for r in others:
                by_class.setdefault(r.diagnosis, []).append(r)
            chosen = []
            for items in by_class.values():
                n = max(1, round(limit * len(items) / len(others)))
                step = len(items) / n
                chosen.extend(items[int(i * step)] for i in range(n))
            others = sorted(chosen, key=lambda r: r.case_id)[:limit]
    return query, others


def build_demo_library(records: list, cache: Path, rebuild: bool = False) -> tuple[Path, Path]:
    """Dicomize and index the library (reused when the model and the case list are unchanged).

    Returns ``(library folder, models folder)``; the models folder is the app's MODELS."""
    from monai_cir.atomic import sha256_file
    from monai_cir.dicom.dicomize import case_uids, dicomize_record

    library, models = cache / "library", cache / "models"
    checkpoint = demo_checkpoint()
    stamp = {
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint is not None else None,
        "cases": sorted(r.case_id for r in records),
    }
    stamp_file = models / STAMP
    if not rebuild and stamp_file.is_file() and (models / "index" / "manifest.json").is_file():
        try:
            same = json.loads(stamp_file.read_text()) == stamp
        except json.JSONDecodeError:
            same = False
        if same and _index_matches_model(models):
            print(f"[demo] reusing the case library ({len(records)} cases) in {library} and its index in {models / 'index'}")
            return library, models

    from ..progress import progress_bar

    start = time.perf_counter()
    library.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for record in progress_bar(records, desc="[demo] dicomizing the library", unit="case"):
        uids = case_uids(record.collection, record.case_id)
        wanted.add(uids.patient_id)
        folder = library / uids.patient_id
        if rebuild or not ((folder / "image.dcm").is_file() and (folder / "report.dcm").is_file()):
            dicomize_record(record, library)
    for stale in library.iterdir():  # cases of an earlier, larger --limit
        if stale.is_dir() and stale.name not in wanted:
            shutil.rmtree(stale)
    print(f"[demo] dicomized {len(records)} cases into {library} ({time.perf_counter() - start:.0f} s)")

    if models.exists():
        shutil.rmtree(models)
    start = time.perf_counter()
    count = index_dicom_library(library, models, checkpoint)
    stamp_file.write_text(json.dumps(stamp, indent=1))
    print(f"[demo] indexed {count} library images into {models / 'index'} ({time.perf_counter() - start:.0f} s)")
    return library, models


def _index_matches_model(models: Path) -> bool:
    """Does ``models/model.pt`` still load with this code, and did it build ``models/index``? (When it
    did, the index's encoder artifact is written if it is missing or stale.)

    (A network change, e.g. a new head layout, makes an older saved checkpoint unloadable.)"""
    from monai_cir.index import read_manifest
    from monai_cir.networks import load_model, refresh_encoder_artifact
    from monai_cir.retrieval import model_fingerprint

    try:
        net = load_model(models / "model.pt")
        if model_fingerprint(net) == read_manifest(models / "index").get("fingerprint"):
            refresh_encoder_artifact(net, models / "index")  # a library indexed before the artifact existed
            return True
        print("[demo] the saved model no longer matches the index: rebuilding")
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"[demo] the saved model no longer loads ({err}): rebuilding")
    return False


def demo_checkpoint() -> Path | None:
    """The trained checkpoint file the demo serves: ``$MONAI_CIR_MODEL`` (a ``.pt`` file or a bundle folder),
    else the checkout's ``bundle/models/model.pt``; None when there is none."""
    from monai_cir.networks.checkpoint import checkpoint_in_folder, default_checkpoint_path

    checkpoint = default_checkpoint_path()
    if checkpoint is not None and checkpoint.is_dir():  # a bundle or MODELS folder
        checkpoint = checkpoint_in_folder(checkpoint) or checkpoint / "model.pt"
    if checkpoint is not None and not checkpoint.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {checkpoint} (from $MONAI_CIR_MODEL)")
    return checkpoint


def index_dicom_library(library: Path, models: Path, checkpoint: Path | None = None) -> int:
    """Fill the app's MODELS folder: ``models/model.pt`` and ``models/index`` (FAISS) of every
    dermoscopy image of a DICOM folder (what ``monai-cir index build --dicom`` does).

    ``checkpoint``: the trained checkpoint, copied byte for byte (everything it records, the differential
    slot's margin included); default :func:`demo_checkpoint`. With none at all, the untrained offline default
    is saved, so that the app loads exactly the weights the index was built with."""
    import warnings

    from monai_cir import retrieval
    from monai_cir.config import resolve_device
    from monai_cir.atomic import atomic_path
    from monai_cir.networks import load_model, refresh_encoder_artifact, save_checkpoint

    models.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint if checkpoint is not None else demo_checkpoint()
    if checkpoint is not None:
        net = load_model(checkpoint, device=resolve_device())
        with atomic_path(models / "model.pt") as tmp:  # whole, and a link there is replaced, not written through (a release model)
            shutil.copy2(checkpoint, tmp)
        print(f"[demo] model: {checkpoint} (copied to {models / 'model.pt'})")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            net = load_model(None, device=resolve_device())
        save_checkpoint(net, models / "model.pt", note="untrained offline default (demo)")
        print(f"[demo] model: no trained checkpoint (bundle/models/model.pt or $MONAI_CIR_MODEL): the untrained offline default, saved to {models / 'model.pt'}")
    from monai_cir.index.base import GRID_STORE_DIR

    queries, metadata = retrieval.dicom_library(library)
    index = retrieval.build_index(net, queries, metadata=metadata, batch_size=16, grid_store=models / "index" / GRID_STORE_DIR)
    index.save(models / "index")
    refresh_encoder_artifact(net, models / "index")  # the app's fast start (monai_cir.networks.scripted)
    return len(index)


def make_query_study(record, folder: Path, text: str | None) -> Path:
    """The held-out case as a DICOM study (image + SR with the text, no diagnosis) in a fresh folder."""
    import dataclasses

    from monai_cir.dicom.dicomize import dicomize_record

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if text is not None:
        record = dataclasses.replace(record, text=text)
    dicomize_record(record, folder, include_diagnosis=False)
    return folder


def _earlier_demo_output(folder: Path) -> bool:
    """Whether ``folder`` may be replaced by the demo: empty, or an earlier demo's answer (the app's results.json and
    log, nothing else of the user's: a folder of one's own named by --out was deleted whole)."""
    if not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    return not entries or ((folder / "app.log").is_file() and all(p.name in DEMO_OUTPUT_NAMES or p.is_dir() and _app_folder(p) for p in entries))


def _app_folder(folder: Path) -> bool:
    """A per-query folder the app writes (its SR / PDF files), nothing else in it."""
    return all(p.is_file() and p.suffix in (".dcm", ".pdf", ".json", ".png") for p in folder.iterdir())


def run(args: argparse.Namespace) -> int:
    from monai_cir.config import cache_dir, in_checkout, quiet_chatty_loggers

    quiet_chatty_loggers()  # the demo prints its own progress
    from monai_cir.data import load_isic_uda1

    if args.top_k < 1:  # before the library is built (minutes on a first run), in the demo's own terms
        raise ValueError(f"-k must be >= 1, got {args.top_k}")
    # in a checkout, its git-ignored output/; an installed package writes under the current folder (never site-packages)
    out = Path(args.out or (REPO_ROOT if in_checkout() else Path.cwd()) / "output" / "demo").resolve()
    if out.exists() and not _earlier_demo_output(out):
        raise ValueError(f"--out {out} is not empty and holds no earlier demo answer: the demo replaces its output folder "
                         "whole, so give a new or empty folder (or an earlier demo's --out)")
    t0 = time.perf_counter()
    records = load_isic_uda1(args.data_root)
    query, library_records = _select_library(records, args.query, args.limit)
    cache = cache_dir("demo")
    _, models = build_demo_library(library_records, cache, rebuild=args.rebuild)
    query_dir = make_query_study(query, cache / "query", args.text)
    print(f"[demo] query study: {query.case_id} ({query.diagnosis}, held out of the library), text {(args.text if args.text is not None else query.text)!r}")

    if out.exists():  # an earlier demo's answer (checked above): replaced whole
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    command = [sys.executable, "-m", "deploy_app", "-i", str(query_dir), "-o", str(out), "-m", str(models), "-k", str(args.top_k)]
    print(f"[demo] running the deploy app: {' '.join(command)}")
    start = time.perf_counter()
    log_file = out / "app.log"
    with open(log_file, "w") as log:
        proc = subprocess.run(command, check=False, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    app_s = time.perf_counter() - start
    results_file = out / "results.json"
    if proc.returncode != 0 or not results_file.is_file():
        tail = log_file.read_text(errors="replace").splitlines()[-25:]
        print("\n".join(tail), file=sys.stderr)
        raise RuntimeError(f"the deploy app failed (exit code {proc.returncode}); full log: {log_file}")
    results = json.loads(results_file.read_text())
    problems = json.loads((out / "problems.json").read_text()) if (out / "problems.json").is_file() else []
    if not results["queries"]:
        raise RuntimeError(f"the deploy app answered no query; see {out / 'problems.json'}: {problems}")
    answer = results["queries"][0]
    outputs = {k: out / v for k, v in answer["outputs"].items()}
    print(f"[demo] the app answered in {app_s:.0f} s (log: {log_file})")
    print()
    print(f"Query {query.case_id}: {answer['text'] or '(image only)'}  [true diagnosis: {query.diagnosis}]")
    for key, label in (("sr", "Similar-cases SR (DICOM)"), ("encapsulated_pdf", "Report, Encapsulated PDF (DICOM)"), ("pdf", "Report, PDF")):
        if key in outputs:
            print(f"  {label + ':':34s} {outputs[key]}")
    print(f"  {'Summary (JSON):':34s} {results_file}")
    print()
    print(f"Top-{len(answer['top_k'])} similar cases (library of {results.get('index_cases', '?')}):")
    print(f"  {'rank':>4}  {'diagnosis':<10}  {'score':>7}  case")
    for hit in answer["top_k"]:
        print(f"  {hit['rank']:>4}  {hit['diagnosis']:<10}  {hit['score']:7.4f}  {hit['case_id']}")
    evidence = answer.get("evidence")
    if evidence:
        share = ", ".join(f"{d} {100 * p:.0f}%" for d, p in evidence["distribution"].items())
        print(f"\n{evidence['label']}: among the {evidence['k']} most similar cases (score-weighted) {share}")
    for notice in answer.get("notices", []):
        print(f"  note: {notice}")
    print(f"\n[demo] done in {time.perf_counter() - t0:.0f} s")
    return 0
