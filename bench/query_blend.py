"""Probe of a lever for "text never hurts" (issue 13): blend the composed query with the same network's
image-only query, ``Q = w Q_composed + (1 - w) Q_image``. The rule ``w = min(1, n / 5)`` it picked is the
network's default since bundle 0.4.0 (``ComposedRetrievalNet(full_text_findings=5)``); the probe reads the
plain composed query (``full_text_findings=1``) and blends it itself.

    .venv/bin/python bench/query_blend.py          # the committed file (5 folds, template + partial texts)

Both are ``embed_maps`` vectors of one network, so ``Q . T = w S_composed + (1 - w) S_image`` (Eq. 9 on
each): the blend is a blend of scores, and its region decomposition is the same blend of the two
decompositions. Rules for ``w`` per query: constants, and functions of ``n``, the number of 7-point
criteria the text names (:func:`monai_cir.data.report.recognised_findings`): a template text names all 7,
a partial one 1-4. A text the findings gate drops gives the image-only query under every rule (its
composed query is the image-only one). The ``composed`` method is trained once per fold (the same models
as ``monai-cir evaluate``); its three embeddings are computed once per fold and text form, and every rule
reuses them. Writes
``bench/results/derm7pt_query_blend.json`` and ``.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from _common import begin, evaluate_variants, mean_std, write_results

from monai_cir.evaluation.protocol import METRIC_KEYS as KEYS  # noqa: E402 (bench/_common put the checkout on sys.path)
FORMS = ("template", "partial")
RULES = {
    "w=1 (the plain gate, the default before 0.4.0)": lambda n: n.new_ones(n.shape),
    "w=0 (the image-only query)": lambda n: n.new_zeros(n.shape),
    "w=0.8": lambda n: n.new_full(n.shape, 0.8),
    "w=0.65": lambda n: n.new_full(n.shape, 0.65),
    "w=0.5": lambda n: n.new_full(n.shape, 0.5),
    "w=n/7": lambda n: n / 7,
    "w=min(1,n/5) (the default since 0.4.0, full_text_findings=5)": lambda n: (n / 5).clamp(max=1),
    "w=sqrt(n/7)": lambda n: (n / 7).sqrt(),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("bench/results/derm7pt_query_blend.json"))
    args = parser.parse_args(argv)
    header = begin(__file__, "derm7pt: blending the composed query with the image-only query", argv)

    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.data.report import recognised_findings
    from monai_cir.engine import cv_methods
    from monai_cir.evaluation import text_form_cache

    def embeddings(ctx):
        # (Q_composed, Q_image, T, n) of a fold and text form, once: every rule is a different mix of them
        texts = [ctx.query_cache.records[int(i)].text for i in ctx.query_indices]
        key = ("query_blend", ctx.fold, hashlib.sha256("\x00".join(texts).encode()).hexdigest())
        if key not in ctx.state.memo:
            models = cv_methods.train_method("composed", ctx.cache, ctx.train_indices, ctx.config, ctx.seed, ctx.state)
            tta = cv_methods.method_options("composed", ctx.config)["train"].get("tta", True)
            empty = text_form_cache(ctx.query_cache, "empty")
            # the composed query itself: the plain gate (the network's default now blends by findings)
            q_text = cv_methods._concat([m.encode_queries(ctx.query_cache, ctx.query_indices, tta=tta, full_text_findings=1) for m in models])
            q_image = cv_methods._concat([m.encode_queries(empty, ctx.query_indices, tta=tta) for m in models])
            t = cv_methods._concat([m.encode_targets(ctx.cache, ctx.database_indices, tta=tta) for m in models])
            n = torch.tensor([len(recognised_findings(text)) for text in texts], dtype=torch.float32)
            ctx.state.memo[key] = (q_text, q_image, t, n)
        return ctx.state.memo[key]

    def blended(ctx, rule):
        q_text, q_image, t, n = embeddings(ctx)
        w = rule(n).clamp(0, 1).view(-1, 1)
        return w * q_text + (1 - w) * q_image, t

    cache = build_feature_cache("derm7pt", 260)
    names = {rule: f"query_blend_{i}" for i, rule in enumerate(RULES)}
    variants = {name: (rule, lambda ctx, fn=RULES[rule]: blended(ctx, fn)) for rule, name in names.items()}
    res, wall = evaluate_variants(variants, args.folds, cache, text_forms=list(FORMS))
    rows = []
    for rule, name in names.items():
        row = {"rule": rule, **{form: {k: res["text_forms"]["derm7pt"][form][name][k] for k in KEYS} for form in FORMS}}
        rows.append(row)
        print(f"{rule:28s} " + "  ".join(f"{form} Acc@1 {row[form]['acc@1']['mean']:.1f} mAP {row[form]['map']['mean']:.1f}" for form in FORMS), flush=True)
    commit = header["commit"]
    payload = {
        **header,
        "folds": args.folds,
        "wall_time_s": round(wall, 1),
        "rows": rows,
        "train_log": res.get("train_log"),
    }
    lines = [f"# Derm7pt: composed query blended with the image-only query\n\n`{payload['command']}` (commit {commit['sha']}"
             f"{', dirty' if commit['dirty'] else ''}), folds {args.folds}, wall time {wall:.0f} s; mean ± sample std over folds, percent. "
             "Row w=0 is the same network's image-only query, the reference of \"text never hurts\".\n",
             "| Rule | " + " | ".join(f"{form} {k}" for form in FORMS for k in ("Acc@1", "Acc@4", "mAP", "P@5")) + " |",
             "|---|" + "---|" * (4 * len(FORMS))]
    for r in rows:
        cells = " | ".join(mean_std(r[form][k]) for form in FORMS for k in ("acc@1", "acc@4", "map", "p@5"))
        lines.append(f"| {r['rule']} | {cells} |")
    write_results(args.out, payload, lines, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
