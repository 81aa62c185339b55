"""Probe of a search-time lever for issue 13's mAP target: query expansion and database-side augmentation
on the release network's embeddings (no retraining).

    .venv/bin/python bench/query_expansion.py        # the committed file (5 folds, ~11 min on 2 CPUs)

- α-QE (Radenović et al., TPAMI 2019): the query is replaced by ``q + Σ_{i<=k} max(0, s_i)^α t_i`` over its
  top-k library cases (``s_i = q·t_i``), then searched again.
- DBA (database-side augmentation): every library embedding becomes ``Σ_{j<=k+1} max(0, t·t_j)^α t_j`` over
  itself and its k nearest library cases, at indexing time.

Both keep one inner product per query. The release network (``composed_late_fusion``) is trained once per
fold (the same models as ``monai-cir evaluate``); every variant reuses its ``(Q, T)``. The grid is fixed in
advance (k in 2-10, α 1 or 3; DBA k 3 or 5), not tuned on these folds. Writes
``bench/results/derm7pt_query_expansion.json`` and ``.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import begin, evaluate_variants, mean_std, write_results

from monai_cir.evaluation.protocol import METRIC_KEYS as KEYS  # noqa: E402 (bench/_common put the checkout on sys.path)
# (DBA k, QE k, α); (0, 0, ·) is the release network as shipped
VARIANTS = [(0, 0, 3.0)] + [(0, k, 3.0) for k in (2, 3, 5, 10)] + [(0, k, 1.0) for k in (3, 5)] + [(d, k, 3.0) for d in (3, 5) for k in (0, 3, 10)]


def expand_queries(q, t, k: int, alpha: float):
    """α-QE: ``q + Σ_{i<=k} max(0, q·t_i)^α t_i`` over the query's top-k rows of ``t`` (k = 0: ``q``)."""
    if k == 0:
        return q
    scores, rows = (q @ t.T).topk(k, dim=1)
    return q + (scores.clamp(min=0) ** alpha).unsqueeze(-1).mul(t[rows]).sum(1)


def augment_database(t, k: int, alpha: float):
    """DBA: each row of ``t`` replaced by ``Σ max(0, t·t_j)^α t_j`` over itself and its k nearest rows (k = 0: ``t``)."""
    if k == 0:
        return t
    scores, rows = (t @ t.T).topk(k + 1, dim=1)
    return (scores.clamp(min=0) ** alpha).unsqueeze(-1).mul(t[rows]).sum(1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("bench/results/derm7pt_query_expansion.json"))
    args = parser.parse_args(argv)
    header = begin(__file__, "derm7pt: query expansion and database-side augmentation on the release network", argv)

    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.engine import cv_methods

    def release(ctx):
        key = ("query_expansion", ctx.fold)
        if key not in ctx.state.memo:
            ctx.state.memo[key] = cv_methods._composed_late_fusion(ctx)
        return ctx.state.memo[key]

    def variant(ctx, dba_k, qe_k, alpha):
        q, t = release(ctx)
        t = augment_database(t, dba_k, alpha)
        return expand_queries(q, t, qe_k, alpha), t

    cache = build_feature_cache("derm7pt", 260)
    names = {}
    variants = {}
    for dba_k, qe_k, alpha in VARIANTS:
        label = "release network as shipped" if dba_k == qe_k == 0 else f"DBA k={dba_k}, α-QE k={qe_k}, α={alpha:g}"
        name = f"qe_dba{dba_k}_qe{qe_k}_a{alpha:g}"
        variants[name] = (label, lambda ctx, v=(dba_k, qe_k, alpha): variant(ctx, *v))
        names[name] = label
    res, wall = evaluate_variants(variants, args.folds, cache)
    rows = [{"variant": label, "method": name, **{k: res["methods"][name][k] for k in KEYS}} for name, label in names.items()]
    for r in rows:
        print(f"{r['variant']:34s} " + " ".join(f"{k} {r[k]['mean']:.1f}" for k in KEYS), flush=True)
    commit = header["commit"]
    payload = {
        **header,
        "folds": args.folds,
        "wall_time_s": round(wall, 1),
        "rows": rows,
        "train_log": res.get("train_log"),
    }
    lines = [f"# Derm7pt: query expansion / database-side augmentation on the release network\n\n`{payload['command']}` (commit {commit['sha']}"
             f"{', dirty' if commit['dirty'] else ''}), folds {args.folds}, wall time {wall:.0f} s; mean ± sample std over folds, percent.\n",
             "| Variant | Acc@1 | Acc@2 | Acc@4 | mAP | P@5 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | " + " | ".join(mean_std(r[k]) for k in KEYS) + " |")
    write_results(args.out, payload, lines, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
