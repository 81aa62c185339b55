"""Probe of a lever for issue 13: the fine-tuned network's similarity ranked with the diagnosis prior fitted on
the frozen encoders' features.

    .venv/bin/python bench/finetuned_frozen_prior.py --folds 0     # one fold per process (~20 min on 2 CPUs),
    .venv/bin/python bench/finetuned_frozen_prior.py --folds 1     # each merged into the same results file
    ...

``bench/results/derm7pt_cv_finetuned_prior.md`` showed that the prior fitted on the fine-tuned encoders' own
features of the training cases is overconfident (the encoders were just fitted to those cases) and loses to the
shipped prior. This run keeps the shipped prior (``composed_late_fusion_prior``: probes fitted on the frozen
encoders' features of the fold's training cases, so its posterior is as honest as the release's) and changes
only ``S``:

- ``ft``: ``S_ft + (lambda / 10) * terms``: ``S_ft`` the fine-tuned release network's
  (``composed_finetuned_late_fusion``, six epochs, the same network as that method's), ``terms`` the shipped
  prior's ``10 w log p(y_c | q)`` (its lambda is 10), so ``lambda = 10`` is the shipped prior's strength and
  ``lambda = 0`` the fine-tuned network alone;
- ``ft+frozen``: the same with ``S = (S_ft + S_frozen) / 2``, ``S_frozen`` the shipped release network's;
- ``frozen``, ``lambda = 10``: the shipped method (``composed_late_fusion_prior``), the reference row.

A ``cross-fitted`` row per ``S`` picks, for each held-out fold, the lambda best on the other folds' mean of Acc@1,
mAP and P@5 (nothing is picked on the fold it scores): written once all five folds are in the file.
Writes ``bench/results/derm7pt_finetuned_frozen_prior.json`` and ``.md`` (or ``--out``), folds merged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import TARGETS, begin, cross_fit, evaluate_variants, mean_std, write_results

from monai_cir.evaluation.protocol import METRIC_KEYS as KEYS  # noqa: E402 (bench/_common put the checkout on sys.path)
LAMBDAS = (0.0, 0.3, 1.0, 3.0, 10.0)
SHIPPED_LAMBDA = 10.0  # the release prior's strength (DEFAULT_PRIOR_STRENGTH): its terms are 10 w log p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    parser.add_argument("--out", type=Path, default=Path("bench/results/derm7pt_finetuned_frozen_prior.json"))
    args = parser.parse_args(argv)
    header = begin(__file__, "derm7pt: the fine-tuned network's similarity with the frozen encoders' diagnosis prior", argv)

    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.engine import cv_methods, finetune
    from monai_cir.engine.diagnosis_prior import DEFAULT_PRIOR_STRENGTH, cached_prior_terms, prior_columns
    from monai_cir.evaluation import merge_results

    if DEFAULT_PRIOR_STRENGTH != SHIPPED_LAMBDA:
        raise RuntimeError(f"the shipped prior's strength is {DEFAULT_PRIOR_STRENGTH}, not {SHIPPED_LAMBDA}: update SHIPPED_LAMBDA")
    cache = build_feature_cache("derm7pt", 260)
    memo: dict[tuple, tuple] = {}

    def parts(ctx):
        # per fold and query text form: S_ft, S_frozen and the shipped prior's terms (its lambda, 10, included)
        key = (ctx.fold, id(ctx.query_cache))
        if key not in memo:
            q, t = finetune.composed_finetuned_late_fusion(ctx)
            s_ft = (q @ t.T).double()
            q0, t0 = cv_methods._composed_late_fusion(ctx)
            s_frozen = (q0 @ t0.T).double()
            net = cv_methods._release_prior_net(ctx.cache, ctx.train_indices, ctx.config, ctx.seed, ctx.state)
            terms = cached_prior_terms(net, ctx.query_cache, ctx.query_indices).double()
            memo[key] = (s_ft, s_frozen, terms[:, prior_columns(net.diagnosis_prior.classes, ctx.cache, ctx.database_indices)])
        return memo[key]

    def scored(ctx, which: str, lam: float):
        s_ft, s_frozen, terms = parts(ctx)
        s = {"ft": s_ft, "ft+frozen": (s_ft + s_frozen) / 2, "frozen": s_frozen}[which]
        return (s + (lam / SHIPPED_LAMBDA) * terms).float()

    grid = [(which, lam) for which in ("ft", "ft+frozen") for lam in args.lambdas] + [("frozen", SHIPPED_LAMBDA)]
    variants = {f"ftfp_{which}_{lam:g}": (f"S = {which}, + (lambda = {lam:g}) w log p(y_c | q), probes on frozen features",
                                         lambda ctx, w=which, lam=lam: scored(ctx, w, lam)) for which, lam in grid}
    res, wall = evaluate_variants(variants, args.folds, cache)
    res = {**res, "wall_time_s": round(wall, 1), "runs_commit": header["commit"]}
    if args.out.exists():  # another fold's run: merge (a fold run again replaces its figures)
        previous = json.loads(args.out.read_text())
        res = {**merge_results(previous["evaluation"], res)}
        runs = [*previous.get("runs", []), {"folds": args.folds, "commit": header["commit"], "created": header["created"], "wall_time_s": round(wall, 1)}]
    else:
        runs = [{"folds": args.folds, "commit": header["commit"], "created": header["created"], "wall_time_s": round(wall, 1)}]
    folds = res["config"]["folds"]
    rows = [{"S": which, "lambda": lam, **{k: res["methods"][name][k] for k in KEYS}} for name, (which, lam) in zip(variants, grid)]

    # lambda cross-fitted per S (once more than one fold is in the file)
    cross_fitted = [{"S": which, **cross_fit([r for r in rows if r["S"] == which], len(folds), KEYS)}
                    for which in ("ft", "ft+frozen")] if len(folds) > 1 else []
    for r in [*rows, *cross_fitted]:
        print(f"{r['S']:10s} lambda {r['lambda']!s:24s} " + "  ".join(f"{k} {r[k]['mean']:.1f}" for k in KEYS), flush=True)
    payload = {**header, "folds": folds, "runs": runs, "rows": rows, "cross_fitted": cross_fitted, "targets": TARGETS, "evaluation": res}
    lines = [
        "# Derm7pt: the fine-tuned network's similarity with the frozen encoders' diagnosis prior\n",
        f"`python bench/finetuned_frozen_prior.py --folds F`, folds {folds}, one process per fold: "
        + "; ".join(f"{r['folds']} at {r['commit']['sha'][:7]}{' (dirty)' if r['commit']['dirty'] else ''}, {r['wall_time_s']:.0f} s" for r in runs)
        + ". Mean ± sample std over folds, percent. Score: `S + lambda w log p(y_c | q)` with the shipped prior's probes (fitted on the frozen "
        "encoders' features of the fold's training cases); `ft`: S of the fine-tuned release network (`composed_finetuned_late_fusion`), "
        "`ft+frozen`: the mean of that S and the shipped network's, `frozen`: the shipped method (`composed_late_fusion_prior`).\n",
        "| S | lambda | Acc@1 | Acc@2 | Acc@4 | mAP | P@5 |",
        "|---|---|" + "---|" * len(KEYS),
    ]
    for r in rows:
        lines.append(f"| {r['S']} | {r['lambda']:g} | " + " | ".join(mean_std(r[k]) for k in KEYS) + " |")
    for r in cross_fitted:
        lines.append(f"| {r['S']} | cross-fitted ({', '.join(f'{v:g}' for v in r['lambda'])}) | " + " | ".join(mean_std(r[k]) for k in KEYS) + " |")
    lines.append(f"\nIssue 13's targets: {', '.join(f'{k} >= {v:g}' for k, v in TARGETS.items())}.")
    write_results(args.out, payload, lines, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
