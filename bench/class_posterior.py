"""Probe of a lever for issue 13: rank with the query's diagnosis posterior as well as the similarity.

    .venv/bin/python bench/class_posterior.py          # the committed file (5 folds, ~12 min on 2 CPUs)

The release network's score ``S`` (``composed_late_fusion``, trained per fold as ``monai-cir evaluate`` trains
it) plus ``lambda * log p(y_c | q)``: ``p`` is a plain classifier's posterior of the query's diagnosis, ``y_c``
the library case's (biopsy-confirmed) diagnosis. ``lambda = 0`` is the release ranking; a large ``lambda`` sorts
the library by the query's predicted diagnosis first and by ``S`` within it. It is still one inner product
(``[Q, lambda log p(q)] . [T, onehot(y_c)]``), so an index could serve it; the product does not (yet).

The classifier is a standardised logistic regression (``bench/query_ceiling.py``'s probe) on one of two
query inputs: ``criteria+sentence+image`` (one-hot 7-point criteria + elevation / location / sex, MiniLM
sentence embedding, frozen pooled L/M/H image features: that benchmark's best) or ``sentence+image`` (what the
network's late-fusion branch already reads: no structured findings needed, any wording goes through MiniLM).
Its ``C`` is chosen by 5-fold cross-validation inside each fold's training cases, and it is fitted on them,
never on the held-out fold. The criteria come from the cases' structured fields and the sentence from the
template text: the rows hold for template-worded text (other wordings: not measured here). ``lambda`` rows: a
grid, and one row per probe whose ``lambda`` is cross-fitted (each held-out fold takes the grid value best on
the other four folds' mean of Acc@1, mAP and P@5: nothing is picked on the fold it scores). Writes
``bench/results/derm7pt_class_posterior.json`` and ``.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import TARGETS, begin, evaluate_variants, mean_std, write_results

KEYS = ("acc@1", "acc@2", "acc@4", "map", "p@5")
LAMBDAS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 1000.0)
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("bench/results/derm7pt_class_posterior.json"))
    args = parser.parse_args(argv)
    header = begin(__file__, "derm7pt: the release ranking plus the query's diagnosis posterior", argv)

    import numpy as np
    import torch
    from query_ceiling import logistic, query_inputs
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.engine import cv_methods

    cache = build_feature_cache("derm7pt", 260)
    parts = query_inputs(cache)
    probe_inputs = {"criteria+sentence+image": np.hstack([parts["criteria"], parts["sentence"], parts["image"]]),
                    "sentence+image": np.hstack([parts["sentence"], parts["image"]])}
    y = cache.labels.numpy()
    memo: dict[tuple, tuple] = {}
    chosen_c: dict[tuple, float] = {}

    def release_and_posterior(ctx, probe: str):
        # the release network's S (shared by every variant through the evaluation's memo) and the probe's log
        # posterior of each library case's diagnosis, once per fold and probe
        if (probe, ctx.fold) not in memo:
            q, t = cv_methods._composed_late_fusion(ctx)
            x, train = probe_inputs[probe], ctx.train_indices
            search = GridSearchCV(logistic(C_GRID[0]), {"logisticregression__C": list(C_GRID)},
                                  cv=StratifiedKFold(5, shuffle=True, random_state=ctx.seed), scoring="accuracy")
            search.fit(x[train], y[train])
            chosen_c[(probe, ctx.fold)] = float(search.best_params_["logisticregression__C"])
            posterior = search.best_estimator_.predict_proba(x[ctx.query_indices])
            columns = np.searchsorted(search.best_estimator_.classes_, ctx.database_labels)
            log_p = torch.as_tensor(np.log(np.clip(posterior[:, columns], 1e-12, None)), dtype=torch.float64)
            memo[(probe, ctx.fold)] = ((q @ t.T).double(), log_p, float((posterior.argmax(1) == ctx.query_labels).mean()))
        return memo[(probe, ctx.fold)]

    def scored(ctx, probe: str, lam: float):
        s, log_p, _ = release_and_posterior(ctx, probe)
        return (s + lam * log_p).float()

    grid = [(probe, lam) for probe in probe_inputs for lam in LAMBDAS]
    variants = {f"posterior_{i}": (f"S + {lam:g} log p(y_c | q), probe on {probe}", lambda ctx, p=probe, lam=lam: scored(ctx, p, lam))
                for i, (probe, lam) in enumerate(grid)}
    res, wall = evaluate_variants(variants, args.folds, cache)
    rows = [{"probe": probe, "lambda": lam, **{k: res["methods"][name][k] for k in KEYS}} for name, (probe, lam) in zip(variants, grid)]

    def balanced(row, fold_at):  # the mean of Acc@1, mAP and P@5 on one fold: what lambda is cross-fitted on
        return np.mean([row[k]["folds"][fold_at] for k in ("acc@1", "map", "p@5")])

    cross_fitted = []
    for probe in probe_inputs:
        own = [r for r in rows if r["probe"] == probe]
        picked, fitted = [], {k: [] for k in KEYS}
        for at in range(len(args.folds)):
            others = [i for i in range(len(args.folds)) if i != at]
            best = max(own, key=lambda r: np.mean([balanced(r, i) for i in others]) if others else 0.0)
            picked.append(best["lambda"])
            for k in KEYS:
                fitted[k].append(best[k]["folds"][at])
        cross_fitted.append({"probe": probe, "lambda": picked, **{k: {"folds": v, "mean": round(float(np.mean(v)), 2),
                             "std": round(float(np.std(v, ddof=1)), 2) if len(v) > 1 else None} for k, v in fitted.items()}})
    probes = {probe: {"C_chosen": [chosen_c[(probe, f)] for f in args.folds],
                      "held_out_accuracy": [round(100 * memo[(probe, f)][2], 2) for f in args.folds]} for probe in probe_inputs}
    for r in [*rows, *cross_fitted]:
        print(f"{r['probe']:24s} lambda {r['lambda']!s:28s} " + "  ".join(f"{k} {r[k]['mean']:.1f}" for k in KEYS), flush=True)
    payload = {
        **header,
        "folds": args.folds,
        "wall_time_s": round(wall, 1),
        "C_grid": list(C_GRID),
        "probes": probes,
        "rows": rows,
        "cross_fitted": cross_fitted,
        "targets": TARGETS,
        "train_log": res.get("train_log"),
    }
    commit = header["commit"]
    lines = [
        "# Derm7pt: the release ranking plus the query's diagnosis posterior\n",
        f"`{payload['command']}` (commit {commit['sha']}{', dirty' if commit['dirty'] else ''}), folds {args.folds}, wall time {wall:.0f} s; "
        "mean ± sample std over folds, percent. Score: `S + lambda log p(y_c | q)`, S the release network's (trained per fold), p a "
        "logistic probe of the query's diagnosis on the inputs named (C by inner CV on the training cases). lambda 0 is the release "
        "ranking; 1000 sorts by predicted diagnosis first.\n",
        *[f"- probe on {probe}: C {v['C_chosen']}, held-out accuracy {v['held_out_accuracy']} (mean {np.mean(v['held_out_accuracy']):.1f})"
          for probe, v in probes.items()],
        "",
        "| Probe | lambda | " + " | ".join(("Acc@1", "Acc@2", "Acc@4", "mAP", "P@5")) + " |",
        "|---|---|" + "---|" * len(KEYS),
    ]
    for r in rows:
        lines.append(f"| {r['probe']} | {r['lambda']:g} | " + " | ".join(mean_std(r[k]) for k in KEYS) + " |")
    for r in cross_fitted:
        lines.append(f"| {r['probe']} | cross-fitted ({', '.join(f'{v:g}' for v in r['lambda'])}) | " + " | ".join(mean_std(r[k]) for k in KEYS) + " |")
    lines.append(f"\nIssue 13's targets: {', '.join(f'{k} >= {v:g}' for k, v in TARGETS.items())}.")
    write_results(args.out, payload, lines, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
