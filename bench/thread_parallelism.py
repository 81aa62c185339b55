"""Does a forward get both CPUs in a thread other than the one that ran torch first? -> ``bench/results/thread_parallelism.json``

The Deploy SDK runs the app's operators in a thread of its own, while a process loads its models in
its main thread. Torch's CPU pool (GNU OpenMP) keeps a team of worker threads for every thread that
ran a parallel operation, for the life of that thread. This bench times the shipped image encoder
(EfficientNet-Lite2, the encoder artifact's path is not needed: the eager pretrained backbone, 260 px,
one image, torch's default thread count) in three fresh processes:

- ``main``: the forwards in the main thread (the only thread with a team);
- ``other thread, main holds a team``: the main thread ran one forward first (as ``load_models`` did
  when it loaded in the caller's thread), then the forwards run in another thread;
- ``other thread, main holds none``: the encoder built in a thread that ended and the main thread ran
  nothing parallel (as ``load_models`` does now: :func:`monai_cir.config.in_a_passing_thread`), the
  forwards run in another thread. (In the other two cases the encoder is built in the main thread.)

Per case: wall ms per forward (median of ``--rounds`` rounds of ``--forwards``), and CPU / wall (how
many CPUs the forward kept busy). Run: ``.venv/bin/python bench/thread_parallelism.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import begin, write_results

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "bench" / "results" / "thread_parallelism.json"
CASES = {
    "main": "the forwards in the main thread",
    "other_thread_main_holds_a_team": "the main thread ran one forward first; the forwards in another thread",
    "other_thread_main_holds_none": "the main thread ran nothing parallel; the forwards in another thread",
}

# one case in a fresh process; argv: repo, case, rounds, forwards -> JSON on stdout
CASE = r"""
import json, statistics, sys, threading, time
sys.path.insert(0, sys.argv[1])
import warnings
warnings.simplefilter("ignore")
import torch
from monai_cir.networks.image_encoder import HierarchicalImageEncoder
case, rounds, forwards = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from monai_cir.config import in_a_passing_thread
build = lambda: HierarchicalImageEncoder("tf_efficientnet_lite2", pretrained="offline").eval()
# loading the weights runs parallel copies: in the main thread except where the main thread must hold none
encoder = in_a_passing_thread(build) if case == "other_thread_main_holds_none" else build()
result = {}

def run():
    x = torch.rand(1, 3, 260, 260).contiguous(memory_format=torch.channels_last)  # made here: even this is a parallel op
    with torch.inference_mode():
        for _ in range(3):
            encoder(x)
        walls, ratios = [], []
        for _ in range(rounds):
            t, c = time.perf_counter(), time.process_time()
            for _ in range(forwards):
                encoder(x)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            walls.append(1000 * wall / forwards)
            ratios.append(cpu / wall)
    result.update(ms_per_forward=round(statistics.median(walls), 2), ms_each_round=[round(w, 2) for w in walls],
                  cpus_busy=round(statistics.median(ratios), 2), torch_threads=torch.get_num_threads())

if case == "main":
    run()
else:
    if case == "other_thread_main_holds_a_team":
        with torch.inference_mode():
            encoder(torch.rand(1, 3, 260, 260))
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
print(json.dumps(result))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--forwards", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per case, cases interleaved (default 2)")
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args()
    header = begin(__file__, "does a forward get both CPUs in a thread other than the one that ran torch first", None)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs: dict[str, list[dict]] = {case: [] for case in CASES}
    for repeat in range(args.repeats):
        for case in CASES:
            out = subprocess.run(
                [sys.executable, "-c", CASE, str(REPO), case, str(args.rounds), str(args.forwards)],
                check=True, capture_output=True, text=True, env=env, timeout=600,
            )
            runs[case].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"[{repeat + 1}/{args.repeats}] {case}: {runs[case][-1]}", flush=True)
    report = {
        **header,
        "what": {**CASES, "ms_per_forward": "median over the process's rounds, then over processes", "cpus_busy": "process CPU time / wall time while forwarding"},
        "inputs": {"encoder": "tf_efficientnet_lite2 (offline ImageNet weights), eager", "image": "1 x 3 x 260 x 260, channels last", "rounds": args.rounds, "forwards": args.forwards, "processes_per_case": args.repeats},
        "results": {
            case: {
                "ms_per_forward": round(statistics.median(r["ms_per_forward"] for r in rs), 2),
                "cpus_busy": round(statistics.median(r["cpus_busy"] for r in rs), 2),
                "processes": rs,
            }
            for case, rs in runs.items()
        },
    }
    for case, r in report["results"].items():
        print(f"{case:34s} {r['ms_per_forward']:6.1f} ms per forward, {r['cpus_busy']:.2f} CPUs busy")
    write_results(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
