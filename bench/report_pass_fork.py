"""What the forked workers of a batch cost beyond the work itself -> ``bench/results/report_pass_fork.json``.

The app's batch writes its reports (explanations, SR, PDF) in worker processes forked per batch
(:meth:`deploy_app.operators.common.ResultsOperator.for_each_answered`). A pool of workers kept for the
process's lifetime would save what a fork per batch costs: if the workers spend more CPU per study than
the app's own process does on the same work, the difference is that cost. This bench measures it, on the
batch of ``bench/app_latency.py`` (the same library and query studies):

- rounds alternate the same batch run two ways: ``forked`` (as the app runs it) and ``in_process`` (the
  parallel threshold raised so every study's reports are written in the app's process, one after another);
- per study, the report pass's CPU time where it ran (``time.process_time`` around the pass, inside the
  worker for ``forked``; in the app's process the explanations' forwards may use every torch thread, a
  worker uses one) and its minor page faults (copy-on-write copies of the fork's pages are among them);
- per run, the wall time per study and the CPU of the app's process and of its ended children.

Steady state: the batch runs once before the rounds (the library cases' caches filled; the pass's first
study in a process runs in the app's process, once). ``worker_cpu_outside_the_pass_per_study_ms``: the
workers' CPU that is not the pass (fork, start, teardown), per study. Run on a clean tree; on a shared VM
compare the two ways within a round (they run back to back).

    .venv/bin/python bench/report_pass_fork.py [--rounds 4] [--studies 16]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

from _common import begin, write_results

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "bench" / "results" / "report_pass_fork.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="rounds, each one forked and one in-process run of the batch (default 4)")
    parser.add_argument("--studies", type=int, default=16, help="studies in the batch (default 16)")
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args()
    header = begin(__file__, "the report pass of a batch: forked workers against the app's own process")

    from app_latency import cpu_split, prepare, run_app_in_process

    import deploy_app.operators.common as common
    from deploy_app.app import load_models
    from deploy_app.operators.reports import SimilarCasesReportsOperator
    from deploy_app.settings import AppSettings
    from monai_cir.provenance import machine_info

    models_dir, single, work, several, _, library_cases = prepare(120, args.studies)
    models = load_models(models_dir, device="cpu")
    settings = AppSettings(device="cpu", explain=True, write_pdf=True, batch_size=args.studies)

    # instrumentation: the pass's CPU and page faults where it runs, returned in timing_ms (a field a worker sends back)
    report_pass = SimilarCasesReportsOperator._report

    def measured_pass(self, result) -> None:
        cpu, faults = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        try:
            report_pass(self, result)
        finally:
            result.timing_ms["bench.pass_cpu"] = 1000 * (time.process_time() - cpu)
            result.timing_ms["bench.pass_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

    SimilarCasesReportsOperator._report = measured_pass
    forked_threshold = common.PARALLEL_MIN_STUDIES

    def run(way: str) -> dict:
        common.PARALLEL_MIN_STUDIES = forked_threshold if way == "forked" else 10**9
        start, (own, children) = time.perf_counter(), cpu_split()
        queries = run_app_in_process(several, work / "out-fork-probe", models, settings)["queries"]
        wall = time.perf_counter() - start
        own_after, children_after = cpu_split()
        figures = {
            "wall_per_study_ms": round(1000 * wall / len(queries), 1),
            "app_process_cpu_per_study_ms": round(1000 * (own_after - own) / len(queries), 1),
            "workers_cpu_per_study_ms": round(1000 * (children_after - children) / len(queries), 1),
            "report_pass_cpu_per_study_ms": round(statistics.fmean(q["timing_ms"]["bench.pass_cpu"] for q in queries), 1),
            "report_pass_minor_faults_per_study": round(statistics.fmean(q["timing_ms"]["bench.pass_faults"] for q in queries)),
        }
        if way == "forked":
            figures["worker_cpu_outside_the_pass_per_study_ms"] = round(figures["workers_cpu_per_study_ms"] - figures["report_pass_cpu_per_study_ms"], 1)
        return figures

    run("forked")  # steady state: the library cases' caches filled, the stage's first study run here once
    rounds = []
    for r in range(args.rounds):
        ways = ("forked", "in_process") if r % 2 == 0 else ("in_process", "forked")
        rounds.append({way: run(way) for way in ways})
        print(f"round {r + 1}: {rounds[-1]}", flush=True)
    common.PARALLEL_MIN_STUDIES = forked_threshold

    def median(way: str, key: str) -> float:
        return round(statistics.median(row[way][key] for row in rounds), 1)

    summary = {way: {key: median(way, key) for key in rounds[0][way]} for way in ("forked", "in_process")}
    summary["report_pass_cpu_forked_over_in_process_per_round"] = [
        round(row["forked"]["report_pass_cpu_per_study_ms"] / row["in_process"]["report_pass_cpu_per_study_ms"], 3) for row in rounds
    ]
    print(f"medians: {summary}", flush=True)
    payload = {
        **header,
        "library_cases": library_cases,
        "studies": args.studies,
        "what": __doc__.split("\n\n")[1].strip() + " " + __doc__.split("\n\n")[2].strip(),
        "rounds": rounds,
        "medians": summary,
        "machine_at_end": machine_info(),
    }
    write_results(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
