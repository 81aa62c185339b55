"""One study on a machine shared with other work -> ``bench/results/shared_cpu.json``

A hospital's server runs more than this app. On this VM's 2 cores, another process keeping one core
busy nearly doubled one study's wall time (`bench/app_latency.py` measures a quiet machine). Torch's
CPU pool is GNU OpenMP: after each parallel operation its worker thread spins before it sleeps, and a
team whose other thread has lost its core waits at every barrier; the app's stages of many small
operations (the explanation, the text encoder) pay that at each of them.

Per configuration, a fresh process (the OpenMP settings are read when it starts) loads the models
once and answers the latency bench's single study (``bench/app_latency.py``'s library and query, built
the same way when missing), everything on (explanations, SR, PDF): ``--warm`` runs first, then
``--runs`` runs quiet and ``--runs`` runs while ``--busy`` other processes each keep a core busy (a
Python loop). Configurations:

- ``default``: torch's default (threads = CPUs, OpenMP's default wait policy): what the app does;
- ``omp_passive``: ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep at once instead of spinning);
- ``one_thread``: ``OMP_NUM_THREADS=1`` (torch in one thread).

Per configuration and condition: the median run's wall time and its stages (from results.json), and
the runs' CPU time (the process's, all threads) per study. The configurations run in ``--rounds`` rounds
(each round every configuration once, in turn: this VM drifts by a fifth from minute to minute), and
the figures are the median over the rounds (each round's listed). Run: ``.venv/bin/python bench/shared_cpu.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import begin, write_results

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "bench" / "results" / "shared_cpu.json"
CONFIGS = {
    "default": {},
    "omp_passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one_thread": {"OMP_NUM_THREADS": "1"},
}

# one configuration in a fresh process; argv: repo, models, study folder, out folder, warm, runs, busy -> JSON on stdout
CHILD = r"""
import json, statistics, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import torch
from monai_cir.config import in_a_passing_thread
from deploy_app.app import load_models, run_app
from deploy_app.settings import AppSettings

models_dir, study, out = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
warm, runs, busy = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
models = in_a_passing_thread(load_models, models_dir, device="cpu")  # as the app and the service load them
settings = AppSettings(device="cpu", explain=True, write_pdf=True, batch_size=1)
STAGES = ("load", "preprocess", "encode", "search", "explain", "sr", "pdf")

def measure(n):
    rows = []
    for _ in range(n):
        start, cpu = time.perf_counter(), time.process_time()
        summary = run_app(study, out, models, settings)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        timing = summary["queries"][0]["timing_ms"]
        rows.append((1000 * wall, 1000 * cpu, {s: round(timing.get(s, 0.0), 1) for s in STAGES}))
    rows.sort(key=lambda r: r[0])
    wall, _, stages = rows[len(rows) // 2]
    return {"wall_ms_p50": round(wall, 1), "wall_ms_each": [round(r[0], 1) for r in rows],
            "cpu_ms_p50": round(statistics.median(r[1] for r in rows), 1), "stages_ms_of_the_median_run": stages}

measure(warm)
result = {"torch_threads": torch.get_num_threads(), "quiet": measure(runs)}
spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
try:
    time.sleep(1.0)
    result["busy"] = measure(runs)
finally:
    for p in spinners:
        p.kill()
print(json.dumps(result))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9, help="runs per condition (median reported; default 9)")
    parser.add_argument("--warm", type=int, default=3, help="runs before measuring (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every configuration in turn (median reported; default 3)")
    parser.add_argument("--busy", type=int, default=1, help="other processes keeping a core busy in the busy condition (default 1)")
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args()
    header = begin(__file__, "one study on a machine shared with other work: quiet and with busy cores, per OpenMP setting")

    from app_latency import prepare

    models, single, work, _, _, library_cases = prepare(limit=120, studies=1)
    report = {**header, "library_cases": library_cases, "busy_processes": args.busy, "runs": args.runs, "rounds": args.rounds,
              "configs": {name: env or "torch's defaults" for name, env in CONFIGS.items()}, "results": {}}
    base_env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    rounds: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for r in range(args.rounds):
        for name, extra in CONFIGS.items():
            env = {**base_env, **extra, "HF_HUB_OFFLINE": "1"}
            command = [sys.executable, "-W", "ignore", "-c", CHILD, str(REPO), str(models), str(single), str(work / f"out-shared-{name}"),
                       str(args.warm), str(args.runs), str(args.busy)]
            proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rounds[name].append(result)
            print(f"round {r + 1}, {name} (torch threads {result['torch_threads']}): quiet {result['quiet']['wall_ms_p50']:.0f} ms "
                  f"(CPU {result['quiet']['cpu_ms_p50']:.0f}), {args.busy} core(s) busy {result['busy']['wall_ms_p50']:.0f} ms; "
                  f"stages quiet {result['quiet']['stages_ms_of_the_median_run']}, busy {result['busy']['stages_ms_of_the_median_run']}", flush=True)
    for name, results in rounds.items():
        # the round whose wall time is the median, per condition (its stages with it)
        report["results"][name] = {"torch_threads": results[0]["torch_threads"], "each_round": results}
        for condition in ("quiet", "busy"):
            ordered = sorted(results, key=lambda r: r[condition]["wall_ms_p50"])
            report["results"][name][condition] = ordered[len(ordered) // 2][condition]
    lines = ["# One study on a shared machine (`bench/shared_cpu.py`)", "",
             f"Commit {header['commit']['sha']} ({'dirty' if header['commit']['dirty'] else 'clean'}), {header['machine']['cpu']}, "
             f"{header['machine']['cpu_count']} CPUs; the latency bench's single study, everything on; median of {args.runs} runs, "
             f"the median round of {args.rounds}; "
             f"busy: {args.busy} other process(es) each keeping a core busy.", "",
             "| configuration | torch threads | quiet (ms) | busy (ms) | encode quiet / busy | explain quiet / busy |", "|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        q, b = r["quiet"], r["busy"]
        lines.append(f"| {name} | {r['torch_threads']} | {q['wall_ms_p50']:.0f} | {b['wall_ms_p50']:.0f} | "
                     f"{q['stages_ms_of_the_median_run']['encode']:.0f} / {b['stages_ms_of_the_median_run']['encode']:.0f} | "
                     f"{q['stages_ms_of_the_median_run']['explain']:.0f} / {b['stages_ms_of_the_median_run']['explain']:.0f} |")
    write_results(args.out, report, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
