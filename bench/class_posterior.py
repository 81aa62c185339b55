"""Probe of a lever for issue 13: rank with the query's diagnosis posterior as well as the similarity.

    .venv/bin/python bench/class_posterior.py          # the committed file (5 folds, ~12 min on 2 CPUs)
    .venv/bin/python bench/class_posterior.py --probes sentence+image gated gated+partial --lambdas 0 0.3 1 10 \
        --text-forms template,reworded,partial,demographics,empty --out bench/results/derm7pt_class_posterior_text_forms.json

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
the other four folds' mean of Acc@1, mAP and P@5: nothing is picked on the fold it scores). Every row is also ranked as
the app ranks, with the differential slot (:mod:`monai_cir.differential`) fitted in that row's score units on the
other folds' held-out queries, as the release's slot is. Writes
``bench/results/derm7pt_class_posterior.json`` and ``.md`` (or ``--out``).

With ``--text-forms`` every row is also scored with the query texts in other forms (the release network and the
probes still trained on template texts): ``empty`` is each row's image-only query, so "text never hurts" reads
along a row. A third rule, ``gated``, applies the network's findings gate to the posterior term: the sentence + image
probe's, times ``w = min(1, n / 5)`` (``n``: the 7-point findings the text names), so a text naming none is
ranked by ``S`` alone, as the release ranks it; ``gated+partial`` the same with the probe fitted on the training
cases' template texts and their partial-form texts (the inner CV keeps a case's two texts together);
``gated+matched`` the template probe for a text naming 5 or more findings and that second probe for one naming
fewer (a rule chosen after the ``gated`` and ``gated+partial`` rows of these folds: its figures are not an
independent test). ``--min-findings 2 3`` adds each gated rule with a floor: a text naming fewer findings than that
is ranked by ``S`` alone (rows ``<rule> >=N``), to see whether one finding should move the ranking at all:

    .venv/bin/python bench/class_posterior.py --probes gated+matched --lambdas 0 10 --min-findings 1 2 3 \
        --text-forms partial,template --out bench/results/derm7pt_class_posterior_findings_floor.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from _common import TARGETS, begin, cross_fit, evaluate_variants, mean_std, write_results

from monai_cir.evaluation.protocol import METRIC_KEYS as KEYS  # noqa: E402 (bench/_common put the checkout on sys.path)
LAMBDAS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 1000.0)
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)
PROBES = ("criteria+sentence+image", "sentence+image", "gated", "gated+partial", "gated+matched")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--probes", nargs="+", choices=PROBES, default=["criteria+sentence+image", "sentence+image"])
    parser.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    parser.add_argument("--text-forms", default="", help="also score the query texts in these forms (comma-separated, as "
                        "monai-cir evaluate --text-forms; 'empty' is each row's image-only query); not with the criteria probe")
    parser.add_argument("--out", type=Path, default=Path("bench/results/derm7pt_class_posterior.json"))
    parser.add_argument("--min-findings", type=int, nargs="+", default=[1],
                        help="floors for the gated rules: a text naming fewer 7-point findings gets no posterior term (1: none)")
    args = parser.parse_args(argv)
    # a gated rule with a floor is a probe of its own: "<rule> >=N"
    args.probes = [p if m <= 1 or not p.startswith("gated") else f"{p} >={m}" for p in args.probes for m in sorted(set(args.min_findings))
                   if m <= 1 or p.startswith("gated")]
    forms = [f for f in args.text_forms.split(",") if f]
    if forms and "criteria+sentence+image" in args.probes:
        parser.error("the criteria probe reads the cases' structured findings, not the query text: leave it out with --text-forms")
    header = begin(__file__, "derm7pt: the release ranking plus the query's diagnosis posterior", argv)

    import numpy as np
    import torch
    from query_ceiling import logistic, query_inputs
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.data.report import recognised_findings
    from monai_cir.differential import DifferentialSlot, differential_ranking, fit_margin, query_margins
    from monai_cir.engine import cv_methods
    from monai_cir.metrics import retrieval_metrics
    from monai_cir.evaluation import text_form_cache

    cache = build_feature_cache("derm7pt", 260)
    parts = query_inputs(cache)
    y = cache.labels.numpy()
    fits: dict[tuple, Any] = {}
    text_caches: dict[str, Any] = {}
    chosen_c: dict[tuple, float] = {}
    memo: dict[tuple, tuple] = {}

    def inputs(kind: str, query_cache, rows):
        # a probe's input rows: the sentence from the cache the queries come from (their text form), the rest as cached
        sentence = torch.as_tensor(query_cache.sentence).float().numpy()[rows]
        return {"criteria+sentence+image": lambda: np.hstack([parts["criteria"][rows], sentence, parts["image"][rows]]),
                "sentence+image": lambda: np.hstack([sentence, parts["image"][rows]])}[kind]()

    def fitted_probe(kind: str, ctx, partial_too: bool = False):
        # the probe fitted on the fold's training cases (template texts; partial_too: and the same cases' texts in the
        # partial form, a case's two texts never split by the inner CV), C by inner 5-fold CV there
        if (kind, ctx.fold, partial_too) not in fits:
            train = ctx.train_indices
            x_fit, y_fit, groups = inputs(kind, cache, train), y[train], train
            if partial_too:
                if "partial" not in text_caches:
                    text_caches["partial"] = text_form_cache(cache, "partial")
                x_fit = np.vstack([x_fit, inputs(kind, text_caches["partial"], train)])
                y_fit, groups = np.concatenate([y_fit, y_fit]), np.concatenate([groups, groups])
            inner = (StratifiedGroupKFold if partial_too else StratifiedKFold)(5, shuffle=True, random_state=ctx.seed)
            search = GridSearchCV(logistic(C_GRID[0]), {"logisticregression__C": list(C_GRID)}, cv=inner, scoring="accuracy")
            search.fit(x_fit, y_fit, **({"groups": groups} if partial_too else {}))
            chosen_c[(kind, ctx.fold, partial_too)] = float(search.best_params_["logisticregression__C"])
            fits[(kind, ctx.fold, partial_too)] = search.best_estimator_
        return fits[(kind, ctx.fold, partial_too)]

    def rule(probe: str) -> tuple[str, int]:
        """(the rule's name, its findings floor) of a probe name such as ``gated+matched >=2``."""
        name, _, floor = probe.partition(" >=")
        return name, int(floor or 1)

    def text_weight(ctx, floor: int = 1) -> np.ndarray:
        # the network's findings gate: w = min(1, n / 5), n the 7-point findings the query text names (full_text_findings=5);
        # 0 below the floor
        n = np.array([len(recognised_findings(ctx.query_cache.records[int(i)].text)) for i in ctx.query_indices], dtype=float)
        return np.where(n >= floor, np.minimum(1.0, n / 5), 0.0)

    def release_and_posterior(ctx, probe: str):
        # the release network's S (its training shared by every variant through the evaluation's memo) and the
        # probe's log posterior of each library case's diagnosis, once per fold, probe and query text form;
        # "gated": the sentence + image probe's, weighted by the findings gate (a text naming none: S alone)
        key = (probe, ctx.fold, id(ctx.query_cache))
        name, floor = rule(probe)
        if key not in memo:
            q, t = cv_methods._composed_late_fusion(ctx)
            kind = "sentence+image" if name.startswith("gated") else name
            model = fitted_probe(kind, ctx, partial_too=name == "gated+partial")
            x_query = inputs(kind, ctx.query_cache, ctx.query_indices)
            p = model.predict_proba(x_query)
            if name == "gated+matched":  # a text naming fewer than 5 findings: the probe also fitted on partial texts
                partly = text_weight(ctx) < 1
                if partly.any():
                    p[partly] = fitted_probe(kind, ctx, partial_too=True).predict_proba(x_query[partly])
            log_p = np.log(np.clip(p[:, np.searchsorted(model.classes_, ctx.database_labels)], 1e-12, None))
            if name.startswith("gated"):
                log_p = text_weight(ctx, floor)[:, None] * log_p
            memo[key] = ((q @ t.T).double(), torch.as_tensor(log_p, dtype=torch.float64), float((p.argmax(1) == ctx.query_labels).mean()),
                         ctx.query_labels, ctx.database_labels)
        return memo[key]

    def scored(ctx, probe: str, lam: float):
        s, log_p = release_and_posterior(ctx, probe)[:2]
        return (s + lam * log_p).float()

    grid = [(probe, lam) for probe in args.probes for lam in args.lambdas]
    variants = {f"posterior_{i}": (f"S + {lam:g} log p(y_c | q), probe on {probe}", lambda ctx, p=probe, lam=lam: scored(ctx, p, lam))
                for i, (probe, lam) in enumerate(grid)}
    res, wall = evaluate_variants(variants, args.folds, cache, text_forms=forms)
    rows = [{"probe": probe, "lambda": lam, **{k: res["methods"][name][k] for k in KEYS},
             **({"text_forms": {form: {k: res["text_forms"]["derm7pt"][form][name][k] for k in KEYS} for form in forms}} if forms else {})}
            for name, (probe, lam) in zip(variants, grid)]

    # as the app ranks: each row's score with the differential slot (rank 4, opening for 15% of held-out queries), its
    # margin fitted in that score's units on the other folds' held-out template queries (as the release's slot is)
    with_slot = []
    for probe, lam in grid:
        scores = {f: memo[(probe, f, id(cache))] for f in args.folds}
        combined = {f: v[0] + lam * v[1] for f, v in scores.items()}
        margins = {f: query_margins(combined[f], scores[f][4]) for f in args.folds}
        per_fold: dict[str, list[float]] = {k: [] for k in (*KEYS, "opened")}
        for f in args.folds:
            others = [g for g in args.folds if g != f]
            if not others:
                break
            slot = DifferentialSlot(fit_margin(*(np.concatenate(part) for part in zip(*(margins[g] for g in others)))))
            shown, opened = differential_ranking(combined[f], scores[f][4], slot)
            m = retrieval_metrics(shown, scores[f][3], scores[f][4])
            for k in KEYS:
                per_fold[k].append(100 * m[k])
            per_fold["opened"].append(100 * float(opened.mean()))
        if per_fold["opened"]:
            with_slot.append({"probe": probe, "lambda": lam, **{k: {"folds": [round(x, 2) for x in v], "mean": round(float(np.mean(v)), 2),
                              "std": round(float(np.std(v, ddof=1)), 2) if len(v) > 1 else None} for k, v in per_fold.items()}})
    # lambda cross-fitted per probe: each held-out fold takes the value best on the other folds' Acc@1, mAP and P@5
    cross_fitted = [{"probe": probe, **cross_fit([r for r in rows if r["probe"] == probe], len(args.folds), KEYS)} for probe in args.probes]
    probes = {probe: {"C_chosen": [chosen_c[("sentence+image" if probe.startswith("gated") else probe, f, rule(probe)[0] == "gated+partial")] for f in args.folds],
                      "held_out_accuracy": [round(100 * memo[(probe, f, id(cache))][2], 2) for f in args.folds]} for probe in args.probes}
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
        "with_differential_slot": with_slot,
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
    if with_slot:
        lines += ["", "As the app ranks: each row's score with the differential slot (rank 4; margin fitted in that score's units to open "
                  "for 15% of the other folds' held-out queries)\n",
                  "| Probe | lambda | Acc@1 | Acc@2 | Acc@4 | mAP | P@5 | opened |", "|---|---|" + "---|" * (len(KEYS) + 1)]
        for r in with_slot:
            lines.append(f"| {r['probe']} | {r['lambda']:g} | " + " | ".join(mean_std(r[k]) for k in (*KEYS, "opened")) + " |")
    if forms:
        lines += ["", "Query texts in other forms (Acc@1 / mAP / P@5; the probes were fitted on template texts, `gated+partial`'s also on partial ones; `empty` is each row's "
                  "image-only query, the reference of \"text never hurts\"; `gated`: the sentence + image probe's term times the findings "
                  "gate's w = min(1, n / 5), so a text naming no finding is ranked by S alone)\n",
                  "| Probe | lambda | " + " | ".join(forms) + " |", "|---|---|" + "---|" * len(forms)]
        for r in rows:
            lines.append(f"| {r['probe']} | {r['lambda']:g} | " + " | ".join(
                " / ".join(f"{r['text_forms'][form][k]['mean']:.1f}" for k in ("acc@1", "map", "p@5")) for form in forms) + " |")
    write_results(args.out, payload, lines, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
