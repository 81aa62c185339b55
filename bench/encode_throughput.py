"""Library embedding throughput and composed-query latency.

1. Images/s through ``net.encode_target`` (validation, normalisation, backbone, region masks,
   projections, normalised blocks) against the raw timm backbone forward alone, on the same batch at
   the same resolution, in one run, as paired rounds (raw and ours back to back, the order alternating
   between rounds): ``ratio`` = the median over rounds of our time / raw time (goal <= 1.15). Pairing
   cancels most of the drift in load on a machine shared with other jobs.
2. A composed query end to end: read + preprocess the image, encode image + text, search a library
   of 1e5 vectors (the default FAISS index, so approximate beyond ``exact_max``), split by stage.

Writes ``bench/results/encode_throughput.json``.   python bench/encode_throughput.py  (~3 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import begin, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search_scale import Synthesizer, machine_extra, real_embeddings

from monai_cir import retrieval
from monai_cir.config import data_root
from monai_cir.data import load_image
from monai_cir.index import CaseMetadata, FaissCaseIndex
from monai_cir.networks import load_model

RESULTS = REPO / "bench" / "results" / "encode_throughput.json"
TEXT = "Female, age 55. Dermoscopy: atypical pigment network, irregular dots and globules, blue-whitish veil present. Located on the back."


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=16, help="paired timing rounds (each: one raw, one ours)")
    parser.add_argument("--library", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    wall = time.perf_counter()
    header = begin(__file__, "library encoding throughput and one composed query's latency", None, **machine_extra())
    print("machine:", json.dumps(header["machine"]), flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = load_model()
    device = net.device
    size = net.image_size
    paths = sorted((data_root() / "isic-uda1" / "images").glob("*.jpg"))
    if len(paths) >= args.batch_size:
        batch = torch.stack([load_image(p, size) for p in paths[: args.batch_size]]).to(device)
        source = "ISIC UDA-1 images"
    else:
        batch = torch.rand(args.batch_size, 3, size, size, device=device)
        source = "random pixels (no data found)"
    print(f"inputs: batch {args.batch_size} x 3 x {size} x {size} ({source}), device {device}, torch threads {torch.get_num_threads()}", flush=True)

    backbone = net.image_encoder.backbone

    def raw() -> None:
        with torch.inference_mode(), net._autocast():
            backbone(batch)

    def ours() -> None:
        with torch.inference_mode():
            net.encode_target(batch)

    raw(), ours()  # warm-up
    raw_t, ours_t = [], []
    for r in range(args.rounds):  # back to back, order alternating, so drift in machine load hits both alike
        if r % 2:
            ours_t += timed(ours, 1)
            raw_t += timed(raw, 1)
        else:
            raw_t += timed(raw, 1)
            ours_t += timed(ours, 1)
    raw_s, ours_s = float(np.median(raw_t)), float(np.median(ours_t))
    paired = np.array(ours_t) / np.array(raw_t)
    ratio = float(np.median(paired))
    print(f"raw backbone: {args.batch_size / raw_s:.1f} img/s; encode_target: {args.batch_size / ours_s:.1f} img/s; ratio {ratio:.3f} (paired rounds: IQR {np.percentile(paired, 25):.3f}-{np.percentile(paired, 75):.3f})", flush=True)

    # composed query end to end against a library of args.library vectors shaped like real ones
    real, labels, _, blocks = real_embeddings(net)
    synth = Synthesizer(real, labels, blocks)
    index = FaissCaseIndex(net.embedding_dim, retrieval.model_fingerprint(net))
    rng = np.random.default_rng(0)
    for start in range(0, args.library, 100_000):
        m = min(100_000, args.library - start)
        x, diag = synth.sample(m, rng)
        index.add(x, [CaseMetadata(f"s{start + i}", str(d), "synthetic") for i, d in enumerate(diag)])
    t0 = time.perf_counter()
    index.search(x[0], 10)  # builds the approximate index when the library exceeds exact_max
    print(f"library: {len(index):,} vectors, approximate index: {index.uses_ann} (ready in {time.perf_counter() - t0:.1f} s)", flush=True)
    stages: dict[str, list[float]] = {"preprocess": [], "encode_query": [], "search": [], "total": []}
    query_paths = (paths[args.batch_size :] or [None])[: args.queries]
    for i in range(args.queries + 2):
        path = query_paths[i % len(query_paths)]
        t0 = time.perf_counter()
        image = load_image(path, size) if path is not None else torch.rand(3, size, size)
        t1 = time.perf_counter()
        q = retrieval.encode_query(net, image, TEXT)
        t2 = time.perf_counter()
        index.search(q, 10, fingerprint=retrieval.model_fingerprint(net))
        t3 = time.perf_counter()
        if i >= 2:  # warm-up
            for key, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                stages[key].append(value * 1e3)
    latency = {f"{key}_p50_ms": round(float(np.percentile(v, 50)), 2) for key, v in stages.items()}
    latency["total_p99_ms"] = round(float(np.percentile(stages["total"], 99)), 2)
    print("composed query:", latency, flush=True)

    payload = {
        **header,
        "device": str(device),
        "image_size": size,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "images_per_s": {"encode_target": round(args.batch_size / ours_s, 2), "raw_backbone": round(args.batch_size / raw_s, 2)},
        "batch_s_median": {"encode_target": round(ours_s, 4), "raw_backbone": round(raw_s, 4)},
        "ratio": round(ratio, 4),
        "ratio_iqr": [round(float(np.percentile(paired, 25)), 4), round(float(np.percentile(paired, 75)), 4)],
        "ratio_of_medians": round(ours_s / raw_s, 4),
        "composed_query": {"library_size": len(index), "approximate_index": index.uses_ann, "k": 10, "queries": args.queries, "text_chars": len(TEXT), **latency},
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    write_results(args.out, payload)


if __name__ == "__main__":
    main()
