"""The differential slot refitted on a library, measured on composed queries (Derm7pt): does a margin fitted the
way ``monai-cir index fit-differential`` fits it (each library case queries the others with its image alone)
open the slot for the intended share of queries that carry findings text?

    .venv/bin/python bench/differential_refit.py          # the committed file (5 folds, ~10 min on 2 CPUs)

Per fold, the release network trained without the fold (the models ``monai-cir evaluate`` trains): its library is
the other four folds' target vectors; their image-only leave-one-out margins (the library vector is the
image-only query: :func:`monai_cir.differential.library_margins` computes the same through an index) give the
margin at :data:`~monai_cir.differential.DEFAULT_OPEN_RATE` (:func:`~monai_cir.differential.fit_margin`); the
held-out fold's template-text queries are ranked with it. Rows: the similarity ranking; the slot as the
evaluation fits it (the other folds' held-out composed queries, ``composed_late_fusion_differential``); the slot
refitted on the fold's library. Writes ``bench/results/derm7pt_differential_refit.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import begin, evaluate_variants, mean_std, write_results

from monai_cir.evaluation.protocol import METRIC_KEYS as KEYS  # noqa: E402 (bench/_common put the checkout on sys.path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("bench/results/derm7pt_differential_refit.json"))
    args = parser.parse_args(argv)
    header = begin(__file__, "derm7pt: the differential slot refitted on the library, on composed queries", argv)

    import math

    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.differential import DEFAULT_OPEN_RATE, DifferentialSlot, differential_ranking, fit_margin, query_margins
    from monai_cir.engine import cv_methods

    per_fold: dict[str, dict[int, dict]] = {"evaluation": {}, "library": {}}

    def evaluation_slot(ctx):
        slot = cv_methods.release_differential_slot(ctx)
        q, t = cv_methods._composed_late_fusion(ctx)
        scores, opened = differential_ranking(q @ t.T, ctx.database_labels, slot)
        per_fold["evaluation"][ctx.fold] = {"margin": round(slot.margin, 5), "opened": round(float(opened.mean()), 4)}
        return scores

    def library_slot(ctx):
        q, t = cv_methods._composed_late_fusion(ctx)
        library = t @ t.T  # each library case queries the others, image only (itself left out)
        margins, positions = query_margins(library.double().fill_diagonal_(-math.inf), ctx.database_labels)
        slot = DifferentialSlot(fit_margin(margins, positions, DEFAULT_OPEN_RATE), open_rate=DEFAULT_OPEN_RATE)
        _, library_opened = differential_ranking(library, ctx.database_labels, slot, leave_one_out=True)
        scores, opened = differential_ranking(q @ t.T, ctx.database_labels, slot)
        per_fold["library"][ctx.fold] = {"margin": round(slot.margin, 5), "opened": round(float(opened.mean()), 4),
                                         "library_opened": round(float(library_opened.mean()), 4)}
        return scores

    variants = {
        "refit_similarity": ("release network, similarity ranking", lambda ctx: cv_methods._composed_late_fusion(ctx)),
        "refit_evaluation": ("slot fitted on the other folds' held-out composed queries (as evaluated and shipped)", evaluation_slot),
        "refit_library": ("slot refitted on the fold's library, image-only leave-one-out (as fit-differential)", library_slot),
    }
    cache = build_feature_cache("derm7pt", 260)
    res, wall = evaluate_variants(variants, args.folds, cache)
    rows = []
    for name, (label, _) in variants.items():
        fits = per_fold.get(name.removeprefix("refit_"), {})
        rows.append({"variant": label, "method": name, **{k: res["methods"][name][k] for k in KEYS},
                     "per_fold": [fits[f] for f in args.folds] if fits else None})
        print(f"{label:90s} " + " ".join(f"{k} {res['methods'][name][k]['mean']:.1f}" for k in KEYS), flush=True)
    commit = header["commit"]
    payload = {**header, "folds": args.folds, "open_rate": DEFAULT_OPEN_RATE, "wall_time_s": round(wall, 1), "rows": rows}
    lines = [f"# Derm7pt: the differential slot refitted on the library, on composed queries\n\n`{payload['command']}` "
             f"(commit {commit['sha']}{', dirty' if commit['dirty'] else ''}), folds {args.folds}, wall time {wall:.0f} s; "
             f"mean ± sample std over folds, percent; open rate {DEFAULT_OPEN_RATE:g}; queries: the held-out fold's template texts.\n",
             "| Ranking | Acc@1 | Acc@2 | Acc@4 | mAP | P@5 | margin per fold | held-out queries opened | library queries opened |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fits = r["per_fold"] or []
        margins = ", ".join(f"{f['margin']:.3f}" for f in fits) or "-"
        opened = ", ".join(f"{100 * f['opened']:.0f}%" for f in fits) or "-"
        library = ", ".join(f"{100 * f['library_opened']:.0f}%" for f in fits if "library_opened" in f) or "-"
        lines.append(f"| {r['variant']} | " + " | ".join(mean_std(r[k]) for k in KEYS) + f" | {margins} | {opened} | {library} |")
    write_results(args.out, payload, lines, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
