"""The app's model stages on CUDA against CPU: same answers within fp16 tolerance, and what each costs.

    python bench/cuda_parity.py                                # Derm7pt: 32 queries against the other 856 cases
    python bench/cuda_parity.py --queries 8 --library 48       # a quick look

``bench/app_latency.py`` runs the deploy app itself (the Deploy SDK and its holoscan runtime) and repeats
its runs on CUDA where the machine has both. This bench needs neither: it runs the stages of the app that
touch the model, through the library functions the app calls, with the release network
(``bundle/models/model.pt``), once on CPU in float32 and once on CUDA under the fp16 autocast the network
uses there (:func:`monai_cir.config.autocast_for`):

- **embed the library** (:func:`monai_cir.retrieval.embed_library`, the index build): target embeddings;
- **encode the query** (:func:`monai_cir.retrieval.encode_query`, image + the case's 7-point text), one
  study at a time, then the same queries as one batch (``net.encode_query``, what a batch of studies runs);
- **search**: cosine scores of every query against the library and the top 5 (an exact search: what the
  flat index computes);
- **explain** (:func:`monai_cir.explain.explain_matches`) the top 5 matches of each query.

Parity (CUDA vs CPU): the smallest cosine between the two devices' embeddings, the largest score
difference, the share of queries with the same top 1 and the overlap of the top 5, the largest difference
of the explanations' scores and per-level local cosines. Figures: milliseconds per stage (median), CUDA
synchronised. Queries are the first ``--queries`` Derm7pt cases, the library the next ``--library``
(default: all the others); images are decoded and preprocessed once and shared by both devices, so the
comparison isolates the model. On a machine without CUDA the CPU figures are written and the JSON says
CUDA was not run. Writes ``bench/results/cuda_parity.json`` (figures only: no image data).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from _common import begin, write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "cuda_parity.json"
TOP_K = 5


def main() -> None:
    import torch
    from tqdm.auto import tqdm

    from monai_cir.data import load_collection
    from monai_cir.explain import explain_matches
    from monai_cir.networks import load_model
    from monai_cir.retrieval import embed_library, encode_query, to_image_tensor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--library", type=int, default=None, help="library cases (default: every case that is not a query)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the queries per device")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "bundle" / "models" / "model.pt")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--skip-encoder-check", action="store_true",
                        help="load the checkpoint although the installed encoder weights are not the ones it records "
                             "(e.g. weights carried to a GPU machine rounded to fp16): both devices run the same weights, "
                             "so the parity still holds for them; the JSON records it")
    args = parser.parse_args()

    header = begin(__file__, "the app's model stages on CUDA (fp16 autocast) vs CPU (float32)", None)
    started = time.perf_counter()
    records = load_collection("derm7pt")
    queries = records[: args.queries]
    library = records[args.queries : args.queries + args.library if args.library else None]
    if len(queries) < 1 or len(library) < TOP_K:
        raise ValueError(f"need at least 1 query and {TOP_K} library cases, got {len(queries)} and {len(library)}")
    print(f"{len(queries)} queries, {len(library)} library cases, checkpoint {args.checkpoint}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cpu_net = load_model(args.checkpoint, device="cpu", check_encoders=not args.skip_encoder_check)
    image_size = cpu_net.image_size
    query_images = [to_image_tensor(r.image_path, image_size) for r in queries]
    library_images = [to_image_tensor(r.image_path, image_size) for r in tqdm(library, desc="decoding library", unit="img")]
    texts = [r.text for r in queries]

    def synced(fn):  # wall milliseconds of fn(), the device drained before and after
        def timed(*a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return out, (time.perf_counter() - t0) * 1000

        return timed

    runs: dict[str, dict] = {}
    for device in devices:
        net = cpu_net if device == "cpu" else load_model(args.checkpoint, device=device, check_encoders=not args.skip_encoder_check)
        net.eval()
        # warm-up: the first CUDA forward builds its kernels and cuDNN plans
        encode_query(net, query_images[0], texts[0])
        # device given although the network is there already: a pass that ended elsewhere raises below
        embed_library(net, library_images[:16], batch_size=16, device=device, progress=False)
        targets, library_ms = synced(embed_library)(net, library_images, batch_size=16, device=device, progress=False)
        single_ms, batch_ms, search_ms, explain_ms = [], [], [], []
        for _ in range(args.repeats):
            q_rows = []
            for image, text in zip(query_images, texts):
                q, ms = synced(encode_query)(net, image, text)
                q_rows.append(q)
                single_ms.append(ms)
            q_single = np.concatenate(q_rows)
            with torch.inference_mode():
                q_batch, ms = synced(lambda net=net: net.encode_query(torch.stack(query_images).to(net.device), texts).float().cpu().numpy())()
            batch_ms.append(ms / len(queries))
            t0 = time.perf_counter()
            scores = q_single @ targets.T
            top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
            search_ms.append((time.perf_counter() - t0) * 1000 / len(queries))
        explanations = []
        for i, (image, text) in enumerate(zip(query_images, texts)):
            ex, ms = synced(explain_matches)(net, image, text, [library_images[j] for j in top[i]])
            explanations.append([(e.score, [lv.local_cosine for lv in e.levels]) for e in ex])
            explain_ms.append(ms)
        if net.device.type != device:  # every stage above must have run where this pass says
            raise RuntimeError(f"the {device} pass ended with the network on {net.device}")
        runs[device] = dict(
            targets=targets, queries=q_single, queries_batched=q_batch, scores=scores, top=top, explanations=explanations,
            ms=dict(
                embed_library_per_image=round(library_ms / len(library), 2),
                encode_query_one_study=round(statistics.median(single_ms), 2),
                encode_query_in_a_batch_per_study=round(statistics.median(batch_ms), 2),
                search_per_query=round(statistics.median(search_ms), 3),
                explain_top5_per_query=round(statistics.median(explain_ms), 2),
            ),
        )
        print(device, runs[device]["ms"])
        net = cpu_net = None  # the pass's network goes before the next device's loads

    def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    parity = None
    if "cuda" in runs:
        cpu, gpu = runs["cpu"], runs["cuda"]
        same_top1 = float(np.mean(cpu["top"][:, 0] == gpu["top"][:, 0]))
        overlap5 = float(np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(cpu["top"], gpu["top"])]))
        # the explanations are of each device's own top 5: compared where the matches agree
        ex_score, ex_local = [], []
        for i in range(len(queries)):
            for r in range(TOP_K):
                if cpu["top"][i, r] == gpu["top"][i, r]:
                    (sc, lc), (sg, lg) = cpu["explanations"][i][r], gpu["explanations"][i][r]
                    ex_score.append(abs(sc - sg))
                    ex_local.append(max(abs(x - y) for x, y in zip(lc, lg)))
        parity = dict(
            min_cosine_targets=round(float(cosines(cpu["targets"], gpu["targets"]).min()), 6),
            min_cosine_queries=round(float(cosines(cpu["queries"], gpu["queries"]).min()), 6),
            min_cosine_queries_batched=round(float(cosines(cpu["queries_batched"], gpu["queries_batched"]).min()), 6),
            max_abs_score_difference=round(float(np.abs(cpu["scores"] - gpu["scores"]).max()), 6),
            same_top1=round(same_top1, 4),
            top5_overlap=round(overlap5, 4),
            explained_pairs_compared=len(ex_score),
            max_abs_explained_score_difference=round(max(ex_score), 6) if ex_score else None,
            max_abs_level_local_cosine_difference=round(max(ex_local), 6) if ex_local else None,
        )
        # a top-1 that differs is only fp16 noise if its two scores were within the score tolerance on CPU
        flips = np.nonzero(cpu["top"][:, 0] != gpu["top"][:, 0])[0]
        parity["top1_changes_score_gap_on_cpu"] = [round(float(cpu["scores"][i, cpu["top"][i, 0]] - cpu["scores"][i, gpu["top"][i, 0]]), 6) for i in flips]
        print("parity", json.dumps(parity))
    payload = dict(
        **header,
        config=dict(collection="derm7pt", queries=len(queries), library=len(library), repeats=args.repeats, checkpoint=str(args.checkpoint.relative_to(ROOT) if args.checkpoint.is_relative_to(ROOT) else args.checkpoint), top_k=TOP_K, image_size=image_size,
                    encoder_check=not args.skip_encoder_check),
        milliseconds={d: r["ms"] for d, r in runs.items()},
        cuda="run" if "cuda" in runs else "not run: no CUDA device on this machine",
        parity=parity,
        wall_s=round(time.perf_counter() - started, 1),
    )
    write_results(args.out, payload, indent=2)


if __name__ == "__main__":
    main()
