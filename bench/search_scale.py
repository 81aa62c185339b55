"""Case-index search at library scale: exact vs approximate, N = 1e4, 1e5, 1e6.

Vectors are shaped like real ones: the 555 ISIC UDA-1 images are embedded by the shipped model
(target embeddings T at 260 px, cached under .cache/bench/, never committed), and more library
vectors are synthesised around them with class structure: a real anchor, moved part of the way
towards another real case of the same class, plus Gaussian noise in that class's top-64 principal
directions (scaled by the class's own spread), then every block renormalised to the weight it has
in a real embedding (the network's ``embedding_blocks``: sqrt(beta) / sqrt(1 - beta) per level, times
sqrt(1 - a), and the late-fusion block at sqrt(a)). Queries are fresh draws of the same
process (not in the library). Isotropic random vectors would have no neighbourhood structure.

For each N: single-query latency p50/p99 through ``CaseIndex.search`` (what a user pays: Python,
FAISS and hit assembly), recall@10 of the approximate index against exact search, bytes per vector
and build time. Then a query whose text names 7-point findings, as the release model ranks it
(:class:`monai_cir.prior_ranking.PriorRankedIndex`: ``K = S + λ log p(y_c | q)``, one filtered search
per diagnosis of the model's prior and one for the library's other diagnoses, merged): latency on the
exact index and on the approximate one at its default nprobe, recall@10 against the exact ``K``
ranking computed densely. Each query's posterior ``p`` is drawn from a flat Dirichlet over the
prior's diagnoses (the searches cost the same whatever ``p`` is; it decides the merge). Writes
``bench/results/search_scale.json``.

    python bench/search_scale.py            # ~10-15 min on 2 cores, ~6 GB RAM at 1e6
    python bench/search_scale.py --sizes 10000 100000 --queries 100
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np
from _common import begin, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monai_cir.config import cache_dir
from monai_cir.index import CaseMetadata, FaissCaseIndex
from monai_cir.networks.diagnosis_prior import DEFAULT_PRIOR_STRENGTH, term_columns
from monai_cir.differential import DifferentialSlot
from monai_cir.prior_ranking import PriorRankedIndex
from monai_cir.retrieval import ranked_answer

RESULTS = REPO / "bench" / "results" / "search_scale.json"
K = 10
EVIDENCE_POOL = 16  # the cases the app's evidence summary votes over (its calibration's k)


def machine_extra() -> dict:
    """What the search figures also depend on, recorded beside the machine."""
    return dict(
        faiss=faiss.__version__,
        faiss_threads=faiss.omp_get_max_threads(),
        numpy=np.__version__,
        note="a 2-core VM shared with other jobs; single-query latency, one thread per query in FAISS",
    )


def real_embeddings(net=None) -> tuple[np.ndarray, np.ndarray, str, list[tuple[int, float]]]:
    """ISIC UDA-1 target embeddings of ``net`` (default: the shipped model, ``bundle/models/model.pt``,
    the release network: what a library index holds) at its image size, its fingerprint and its
    embedding blocks (cached, keyed by the fingerprint: derived from images, never committed)."""
    if net is None:
        from monai_cir.networks import load_model

        net = load_model()
    net = net.eval()
    fingerprint = net.fingerprint()
    path = cache_dir("bench") / f"isic-uda1_target_{net.image_size}_{fingerprint[:12]}.npz"
    if not path.is_file():
        from monai_cir import retrieval
        from monai_cir.data import load_collection

        print(f"embedding ISIC UDA-1 at {net.image_size} px (once; cached at {path}) ...", flush=True)
        records = load_collection("isic-uda1")
        emb = retrieval.embed_library(net, records, batch_size=16, device="cpu")
        np.savez(path, embeddings=emb, case_ids=np.array([r.case_id for r in records]), diagnosis=np.array([r.diagnosis for r in records]))
    data = np.load(path)
    return data["embeddings"].astype(np.float32), data["diagnosis"], fingerprint, net.embedding_blocks


class Synthesizer:
    """Library-like vectors around the real ones, with their class structure (module docstring)."""

    def __init__(
        self, real: np.ndarray, labels: np.ndarray, blocks: list[tuple[int, float]], rank: int = 64, spread: float = 0.5, pull: float = 0.5
    ) -> None:
        self.real, self.spread, self.pull = real, spread, pull
        bounds = np.cumsum([0] + [width for width, _ in blocks])  # the network's embedding_blocks
        self.blocks = list(itertools.pairwise(bounds))
        weights = [weight for _, weight in blocks]
        norms = [np.linalg.norm(real[:, a:b], axis=1) for a, b in self.blocks]
        for w, n in zip(weights, norms):  # the block layout of the real embeddings is what we assume
            assert np.allclose(n, w, atol=1e-3), "unexpected embedding block layout"
        self.weights = np.array(weights, np.float32)
        self.classes = sorted(set(labels.tolist()))
        self.members = {c: np.flatnonzero(labels == c) for c in self.classes}
        self.prior = np.array([len(self.members[c]) for c in self.classes], float) / len(labels)
        self.basis = {}
        for c in self.classes:
            x = real[self.members[c]]
            _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
            r = min(rank, len(s))
            self.basis[c] = ((s[:r] / np.sqrt(max(1, len(x) - 1)))[:, None] * vt[:r]).astype(np.float32)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cls = rng.choice(len(self.classes), size=n, p=self.prior)
        out = np.empty((n, self.real.shape[1]), np.float32)
        for ci, c in enumerate(self.classes):
            idx = np.flatnonzero(cls == ci)
            if not len(idx):
                continue
            members = self.members[c]
            a = self.real[rng.choice(members, size=len(idx))]
            b = self.real[rng.choice(members, size=len(idx))]
            t = rng.uniform(0, self.pull, size=(len(idx), 1)).astype(np.float32)
            noise = rng.standard_normal((len(idx), self.basis[c].shape[0]), dtype=np.float32) @ self.basis[c]
            out[idx] = a + t * (b - a) + self.spread * noise
        for w, (lo, hi) in zip(self.weights, self.blocks):
            out[:, lo:hi] *= w / np.linalg.norm(out[:, lo:hi], axis=1, keepdims=True)
        return out, np.array(self.classes)[cls]


def timed_ms(fn, n: int, warmup: int = 3) -> np.ndarray:
    """Wall time of ``fn(i)`` for i < n, after ``warmup`` untimed calls."""
    for i in range(min(warmup, n)):
        fn(i)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1e3)
    return np.array(times)


def latency(index: FaissCaseIndex, queries: np.ndarray) -> np.ndarray:
    """Single-query ``index.search`` wall times, ms."""
    return timed_ms(lambda i: index.search(queries[i], K), len(queries))


def ids_of(hits) -> list[list[str]]:
    return [[h.case_id for h in row] for row in hits]


def prior_terms(n_queries: int, classes: list[str], rng: np.random.Generator) -> np.ndarray:
    """(n_queries, C + 1) ranking terms as the release model's prior gives them to a text naming >= 5 findings
    (gate weight 1): ``λ log p`` per class, then ``λ E_p[log p]`` for any other diagnosis; ``p`` ~ Dirichlet(1)."""
    p = np.clip(rng.dirichlet(np.ones(len(classes)), size=n_queries), 1e-6, None)
    log_p = np.log(p / p.sum(axis=1, keepdims=True))
    return DEFAULT_PRIOR_STRENGTH * np.concatenate([log_p, (p * log_p).sum(axis=1, keepdims=True)], axis=1)


def prior_truth(index: FaissCaseIndex, queries: np.ndarray, terms: np.ndarray, classes: list[str]) -> list[list[str]]:
    """The exact top K of ``S + t(y_c)`` for each query, computed densely over every stored vector."""
    diagnoses = [m.diagnosis for m in index._meta]
    columns = np.array(term_columns(classes, diagnoses))
    x, ids = index.vectors(), index.case_ids()
    truth = []
    for q, t in zip(queries, terms):
        score = x @ q + t[columns]
        top = np.argpartition(-score, K)[:K]
        truth.append([ids[i] for i in top[np.argsort(-score[top], kind="stable")]])
    return truth


def prior_row(index: FaissCaseIndex, queries: np.ndarray, terms: np.ndarray, classes: list[str], truth: list[list[str]], method: str,
              slot: DifferentialSlot | None) -> dict:
    """The prior's ranking alone (``PriorRankedIndex.search``, the ranked index built per query): latency and recall@10
    of ``K``; and the whole answer's search as the app runs it (:func:`monai_cir.retrieval.ranked_answer`: the pool of
    16 by ``S`` the evidence summary votes over, the prior's ranking, the release's differential slot)."""
    diagnoses = sorted(index.info()["diagnosis"])
    prior = SimpleNamespace(classes=classes)

    def search(i: int) -> list[str]:
        return [h.case_id for h in PriorRankedIndex(index, terms[i], classes, diagnoses).search(queries[i], K)[0]]

    found = [search(i) for i in range(len(queries))]
    times = timed_ms(search, len(queries))
    answer_times = timed_ms(lambda i: ranked_answer(index, queries[i], 5, EVIDENCE_POOL, terms=terms[i], prior=prior, slot=slot, diagnoses=diagnoses), len(queries))
    recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth)]))
    groups = len([c for c in classes if c in diagnoses]) + int(any(d not in classes for d in diagnoses))
    row = {"n": index.__len__(), "method": method, "p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3),
           "recall@10": round(recall, 4), "queries_timed": len(times), "searches_per_query": groups,
           "answer_p50_ms": round(float(np.percentile(answer_times, 50)), 3), "answer_p99_ms": round(float(np.percentile(answer_times, 99)), 3),
           "ranking": "K = S + lambda log p(y_c | q) (the release model's diagnosis prior, text naming >= 5 findings)",
           "answer": f"ranked_answer: top 5 shown, a pool of {EVIDENCE_POOL} by S, the release's differential slot ({'on' if slot else 'none recorded'})"}
    print(f"  {method}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, recall@10 of K {recall:.4f} ({groups} searches a query); "
          f"the whole answer's search p50 {row['answer_p50_ms']:.2f} ms", flush=True)
    return row


def run_size(n: int, synth: Synthesizer, queries: np.ndarray, nprobes: list[int], exact_queries: int, seed: int, hnsw_max: int,
             classes: list[str], terms: np.ndarray, slot: DifferentialSlot | None) -> list[dict]:
    rng = np.random.default_rng(seed)
    index = FaissCaseIndex(queries.shape[1], "bench", exact_max=n)  # exact until we build the ANN below
    t0 = time.perf_counter()
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x, diag = synth.sample(m, rng)
        index.add(x, [CaseMetadata(f"s{start + i}", str(d), "synthetic") for i, d in enumerate(diag)])
    gen_s = time.perf_counter() - t0
    print(f"  N={n:,}: generated and stored in {gen_s:.1f} s", flush=True)
    rows = []

    t0 = time.perf_counter()
    truth = ids_of(index.search(queries, K))  # batched exact: the ground truth
    print(f"  exact ground truth for {len(queries)} queries: {time.perf_counter() - t0:.1f} s", flush=True)
    lat = latency(index, queries[:exact_queries])
    rows.append({"n": n, "method": "exact", "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
                 "recall@10": 1.0, "bytes_per_vector": 4 * index.dim, "build_s": 0.0, "queries_timed": len(lat),
                 "index": "IndexFlatIP (float32)"})
    print(f"  exact: p50 {rows[-1]['p50_ms']:.2f} ms, p99 {rows[-1]['p99_ms']:.2f} ms ({len(lat)} queries)", flush=True)
    k_truth = prior_truth(index, queries, terms, classes)
    rows.append(prior_row(index, queries[:exact_queries], terms, classes, k_truth, "prior-ranked, exact (IndexFlatIP, one filtered search per diagnosis)", slot))

    index.exact_max = 0  # from here on every search goes through the approximate index
    build_s = index.build_ann(seed=seed)
    ann_bytes = faiss.serialize_index(index._ann).nbytes
    nlist = faiss.extract_index_ivf(index._ann).nlist
    for nprobe in nprobes:
        index.nprobe = nprobe
        found = ids_of(index.search(queries, K))
        recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth)]))
        lat = latency(index, queries)
        rows.append({"n": n, "method": f"pca{index.ann_dim}-ivf{nlist}-sq8-rerank{index.rerank_factor}x (nprobe={nprobe})",
                     "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
                     "recall@10": round(recall, 4), "bytes_per_vector": round(4 * index.dim + ann_bytes / n, 1),
                     "ann_bytes_per_vector": round(ann_bytes / n, 1), "build_s": round(build_s, 2), "queries_timed": len(lat), "nprobe": nprobe, "nlist": nlist})
        print(f"  ANN nprobe={nprobe}: p50 {rows[-1]['p50_ms']:.2f} ms, p99 {rows[-1]['p99_ms']:.2f} ms, recall@10 {recall:.4f}, build {build_s:.1f} s", flush=True)
    index.nprobe = FaissCaseIndex(1, "defaults").nprobe  # the index's default, as the app searches
    rows.append(prior_row(index, queries, terms, classes, k_truth,
                          f"prior-ranked, pca{index.ann_dim}-ivf{nlist}-sq8-rerank{index.rerank_factor}x (nprobe={index.nprobe}), one filtered search per diagnosis", slot))
    if n <= hnsw_max:
        rows.extend(run_hnsw(index, queries, truth))
    del index
    return rows


def run_hnsw(index: FaissCaseIndex, queries: np.ndarray, truth: list[list[str]], m: int = 32, ef_search: int = 64) -> list[dict]:
    """The alternative considered: HNSW over the same 256-d projection, same exact re-scoring."""
    x = index.vectors()
    n = x.shape[0]
    projection = faiss.downcast_VectorTransform(index._ann.chain.at(0))
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(projection.d_out, m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    for start in range(0, n, 100_000):
        hnsw.add(projection.apply(np.ascontiguousarray(x[start : start + 100_000])))
    build_s = time.perf_counter() - t0
    hnsw.hnsw.efSearch = ef_search
    kk = K * index.rerank_factor

    def search(q: np.ndarray) -> list[str]:
        _, cand = hnsw.search(projection.apply(q[None]), kk)
        cand = cand[0][cand[0] >= 0]
        top = cand[np.argsort(-(x[cand] @ q), kind="stable")[:K]]
        return [index._meta[i].case_id for i in top]

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # as FaissCaseIndex does for a single query
    found = [search(q) for q in queries]
    times = timed_ms(lambda i: search(queries[i]), len(queries), warmup=0)  # the recall pass above warmed it
    faiss.omp_set_num_threads(threads)
    recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth)]))
    nbytes = faiss.serialize_index(hnsw).nbytes
    row = {"n": n, "method": f"pca{projection.d_out}-hnsw{m}-rerank{index.rerank_factor}x (efSearch={ef_search})", "p50_ms": round(float(np.percentile(times, 50)), 3),
           "p99_ms": round(float(np.percentile(times, 99)), 3), "recall@10": round(recall, 4), "bytes_per_vector": round(4 * index.dim + nbytes / n, 1),
           "ann_bytes_per_vector": round(nbytes / n, 1), "build_s": round(build_s, 2), "queries_timed": len(times), "note": "build excludes the projection's training (shared with IVF)"}
    print(f"  HNSW: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, recall@10 {recall:.4f}, build {build_s:.1f} s", flush=True)
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--queries", type=int, default=200, help="queries for recall and ANN latency")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="also measure HNSW (the alternative) up to this N")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    wall = time.perf_counter()
    header = begin(__file__, "exact and approximate case search from 10^4 to 10^6 cases", None, **machine_extra())
    print("machine:", json.dumps(header["machine"]), flush=True)
    from monai_cir.networks import load_model

    net = load_model()
    if net.diagnosis_prior is None:
        raise SystemExit("the shipped model has no diagnosis prior: the prior-ranked rows need one (bundle/models/model.pt >= 0.8.0)")
    classes = list(net.diagnosis_prior.classes)
    slot = DifferentialSlot.from_checkpoint_info(getattr(net, "checkpoint_info", None))
    real, labels, fingerprint, blocks = real_embeddings(net)
    print(f"inputs: {real.shape[0]} real ISIC UDA-1 embeddings, D={real.shape[1]}, classes {dict(zip(*np.unique(labels, return_counts=True)))}", flush=True)
    synth = Synthesizer(real, labels, blocks)
    queries, _ = synth.sample(args.queries, np.random.default_rng(args.seed + 1000))
    terms = prior_terms(args.queries, classes, np.random.default_rng(args.seed + 2000))
    results = []
    for n in args.sizes:
        exact_queries = 200 if n <= 10_000 else 100 if n <= 100_000 else 30
        results.extend(run_size(n, synth, queries, args.nprobe, min(exact_queries, args.queries), args.seed, args.hnsw_max, classes, terms, slot))
    payload = {
        **header,
        "inputs": {
            "real_vectors": int(real.shape[0]), "dim": int(real.shape[1]), "model": f"the shipped model (bundle/models/model.pt: the release network, EfficientNet-Lite2 + MiniLM, 260 px), fingerprint {fingerprint[:12]}",
            "blocks": [[width, round(weight, 4)] for width, weight in blocks],
            "synthesis": "real anchor + U(0,0.5) pull towards a same-class real case + 0.5 x class top-64 PCA noise, blocks renormalised",
            "queries": args.queries, "k": K, "seed": args.seed,
            "prior": {"classes": classes, "strength": DEFAULT_PRIOR_STRENGTH, "posterior": "Dirichlet(1) per query, seed + 2000"},
        },
        "results": results,
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    print(json.dumps(payload["results"], indent=1))
    write_results(args.out, payload)


if __name__ == "__main__":
    main()
