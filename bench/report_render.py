"""What the DICOM answer costs per study: the similar-cases SR (TID 1500) and the PDF report.

    python bench/report_render.py [--repeats 30] [--k 5]

Real ISIC UDA-1 images (a query and k library cases, thumbnails at the app's 384 px) go through
:func:`monai_cir.dicom.sr.similar_cases_sr` and :func:`monai_cir.dicom.report_pdf.render_report_pdf`
as the deploy app calls them: the PDF alone (page 1), the PDF with its explanation page (five cases a page)
(synthetic heatmaps at the network's 260 px), its Encapsulated PDF wrapping, and the SR, each
built and written to a temp folder. Also the cold import of the PDF module (a fresh interpreter).
Writes ``bench/results/report_render.json`` and ``.md``. Nothing derived from the images is kept.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
from _common import begin, write_results

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "report_render.json"
# the reports' score range: Eq. 9 over three levels (the synthetic hits score 2.45 ... 2.5 - 0.05 k)
SCORE_RANGE = (-3.0, 3.0)
sys.path.insert(0, str(REPO))


def _times(fn, repeats: int) -> dict[str, float]:
    fn()  # warm
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        values.append(1000 * (time.perf_counter() - start))
    values.sort()
    return {"p50_ms": round(statistics.median(values), 2), "p95_ms": round(values[int(0.95 * (len(values) - 1))], 2), "min_ms": round(values[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    header = begin(__file__, "report rendering (SR + PDF) per study", None)

    from PIL import Image

    from monai_cir.data import load_collection
    from monai_cir.dicom.dicomize import case_uids, dermoscopy_image_dataset
    from monai_cir.dicom.report_pdf import encapsulated_pdf_dataset, render_report_pdf
    from monai_cir.dicom.sr import similar_cases_sr
    from monai_cir.evidence import summarize_evidence
    from monai_cir.explain import Explanation, TokenWeight
    from monai_cir.index import CaseMetadata, SearchHit

    records = load_collection("isic-uda1")[: args.k + 1]

    def load(path: Path, side: int) -> np.ndarray:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((side, side))
            return np.asarray(img)

    query_image = load(records[0].image_path, 2048)
    thumbs = {r.case_id: load(r.image_path, 384) for r in records[1:]}
    query = dermoscopy_image_dataset(pixels=query_image, uids=case_uids("bench", "query"), patient_sex="F", patient_age="055Y", compression="none")
    hits = []
    for rank, record in enumerate(records[1:], 1):
        uids = case_uids(record.collection, record.case_id)
        meta = CaseMetadata(record.case_id, record.diagnosis, record.collection, confirmation=record.confirmation, study_uid=uids.study_uid,
                            series_uid=uids.image_series_uid, sop_instance_uid=uids.image_uid, sop_class_uid=str(query.SOPClassUID))
        hits.append(SearchHit(rank, record.case_id, 2.5 - 0.05 * rank, meta))
    summary = summarize_evidence(hits)
    rng = np.random.default_rng(0)
    small = load(records[0].image_path, 260)[:260, :260] / 255.0
    explanations = {
        h.rank: Explanation(
            score=h.score, local_score=1.0, global_score=1.0, beta=0.6, text="", levels=[NS(level="H", gate=0.2)],
            tokens=[TokenWeight("network", 0.5)], query_heatmap=rng.random(small.shape[:2]), target_heatmap=rng.random(small.shape[:2]),
            query_image=small, target_image=small,
        )
        for h in hits
    }
    text = "Pigment network: atypical. Streaks: absent. Blue-whitish veil: present. Elevation: flat. Location: back. Sex: female."

    def pdf(with_explanations: bool) -> bytes:
        return render_report_pdf(
            query_image, text, hits, image_loader=lambda hit: thumbs[hit.case_id], evidence_summary=summary,
            explanations=explanations if with_explanations else None, study=query, score_range=SCORE_RANGE,
        )

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)

        def encapsulate() -> None:
            encapsulated_pdf_dataset(pdf(False), query).save_as(out / "report.dcm", enforce_file_format=True)

        def sr() -> None:
            similar_cases_sr(query, hits, query_text=text, evidence_summary=summary, score_range=SCORE_RANGE).save_as(out / "sr.dcm", enforce_file_format=True)

        figures = {
            "pdf_page1": _times(lambda: pdf(False), args.repeats),
            "pdf_with_explanation_pages": _times(lambda: pdf(True), args.repeats),
            "pdf_page1_encapsulated_and_written": _times(encapsulate, args.repeats),
            "sr_built_and_written": _times(sr, args.repeats),
        }
        figures["pdf_bytes_page1"] = len(pdf(False))
        figures["pdf_bytes_with_explanations"] = len(pdf(True))
    for key, modules in (("cold_import_report_pdf_ms", "monai_cir.dicom.report_pdf, reportlab.pdfgen.canvas"), ("cold_import_reportlab_ms", "reportlab.pdfgen.canvas")):
        cold = subprocess.run(
            [sys.executable, "-c", f"import time; t = time.perf_counter(); import {modules}; print(1000 * (time.perf_counter() - t))"],
            capture_output=True, text=True, check=True, cwd=REPO,
        )
        figures[key] = round(float(cold.stdout.strip().splitlines()[-1]), 1)
    payload = {
        **header,
        "inputs": {"collection": "isic-uda1", "query": records[0].case_id, "k": args.k, "repeats": args.repeats,
                   "thumbnail_px": 384, "explanation_px": 260},
        "figures": figures,
    }
    lines = [
        "# Report rendering (SR + PDF) per study",
        "",
        f"Commit `{payload['commit']['sha']}` (dirty: {payload['commit']['dirty']}), {payload['machine']['cpu']}, "
        f"{payload['machine']['cpu_count']} CPUs, load {payload['machine'].get('load_average_1_5_15')}.",
        f"k = {args.k} real ISIC UDA-1 cases, {args.repeats} repeats, warm process.",
        "",
        "| step | p50 ms | p95 ms |",
        "|---|---|---|",
    ]
    for key, value in figures.items():
        if isinstance(value, dict):
            lines.append(f"| {key.replace('_', ' ')} | {value['p50_ms']} | {value['p95_ms']} |")
    lines += ["", f"Cold import of the PDF module: {figures['cold_import_report_pdf_ms']} ms (reportlab alone {figures['cold_import_reportlab_ms']} ms). "
              f"PDF size: {figures['pdf_bytes_page1']} bytes (page 1), {figures['pdf_bytes_with_explanations']} with explanation pages."]
    lines += ["", "Figures taken while other work shares the cores are inflated by about the load over the core count.",
              "The cold import is mostly `import monai_cir` itself; the SR cost is building highdicom's content items into the TID 1500 tree and pydicom writing it."]
    print("\n".join(lines))
    write_results(RESULTS, payload, lines)


if __name__ == "__main__":
    main()
