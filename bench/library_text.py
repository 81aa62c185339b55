"""Probe of a lever for issue 13: does the library case's own findings text help? A case library holds each
case's report, so the target side could read it too (the paper's target is the image alone).

    .venv/bin/python bench/library_text.py          # the committed file (5 folds, ~10 min on 2 CPUs)

One small trainer for every row but the first, so that the rows differ only in what the target reads: the
full-batch late-fusion recipe (Adam lr 1e-3, wd 1e-5, the training folds as one batch, 200 epochs, symmetric
multi-positive SupCon at tau 0.1, 512-unit hidden layer with BatchNorm and dropout 0.1, inputs standardised with
training statistics), on the cached pooled L/M/H features (flip-averaged) and MiniLM sentence embeddings of the
template texts. Rows: the evaluation's own ``late_fusion_fullbatch`` (reference); the control (query = image +
text, target = image); target = image + the library case's own text (two MLPs, and one MLP shared by both sides);
the control plus a text-to-text cosine of the standardised sentence embeddings at weights 0.1-1. Scored by
:func:`monai_cir.evaluation.evaluate` on the committed folds. Writes ``bench/results/derm7pt_library_text.json``
and ``.md``. Nothing derived from the images is kept (the features come from the git-ignored cache).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import begin, evaluate_variants, mean_std, write_results

from monai_cir.evaluation.protocol import METRIC_KEYS as KEYS  # noqa: E402 (bench/_common put the checkout on sys.path)
TEXT_WEIGHTS = (0.1, 0.25, 0.5, 1.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/results/derm7pt_library_text.json"))
    args = parser.parse_args(argv)
    header = begin(__file__, "derm7pt: the library case's own text on the target side", argv)

    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.engine import cv_methods
    from monai_cir.engine.data import cache_maps
    from monai_cir.losses import multi_positive_supcon

    def mlp(width: int) -> nn.Module:
        return nn.Sequential(nn.Linear(width, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(0.1), nn.Linear(512, 256))

    pooled_inputs: dict[int, tuple] = {}

    def inputs(cache):
        # pooled L/M/H features averaged with the mirror image's (the evaluation's flip TTA) and sentence embeddings
        if id(cache) not in pooled_inputs:
            pooled = [torch.cat([m.float().mean(dim=(2, 3)) for m in cache_maps(cache, flipped)], 1) for flipped in (False, True)]
            pooled_inputs[id(cache)] = ((pooled[0] + pooled[1]) / 2, torch.as_tensor(cache.sentence).float(), cache)
        return pooled_inputs[id(cache)][:2]

    def trained(ctx, target_text: bool, shared: bool):
        key = ("library_text", ctx.fold, target_text, shared)
        if key in ctx.state.memo:
            return ctx.state.memo[key]
        image, sentence = inputs(ctx.cache)
        train = torch.as_tensor(ctx.database_indices)
        labels = torch.as_tensor(ctx.cache.labels)[train].long()
        stats = [(x[train].mean(0), x[train].std(0) + 1e-6) for x in (image, sentence)]
        torch.manual_seed(ctx.seed)
        query_mlp = mlp(image.shape[1] + sentence.shape[1])
        target_mlp = query_mlp if shared else mlp(image.shape[1] + (sentence.shape[1] if target_text else 0))

        def embed(net, rows, with_text, image_source=image, sentence_source=sentence):
            parts = [(image_source[rows] - stats[0][0]) / stats[0][1]]
            if with_text:
                parts.append((sentence_source[rows] - stats[1][0]) / stats[1][1])
            return F.normalize(net(torch.cat(parts, 1)), dim=-1)

        params = list(query_mlp.parameters()) + ([] if shared else list(target_mlp.parameters()))
        optimiser = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5)
        for _ in range(args.epochs):
            query_mlp.train()
            target_mlp.train()
            logits = embed(query_mlp, train, True) @ embed(target_mlp, train, target_text).T / 0.1
            loss = multi_positive_supcon(logits, labels, labels) + multi_positive_supcon(logits.T, labels, labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        query_mlp.eval()
        target_mlp.eval()
        with torch.no_grad():
            query_image, query_sentence = inputs(ctx.query_cache)
            rows = torch.as_tensor(ctx.query_indices)
            q = embed(query_mlp, rows, True, query_image, query_sentence)
            t = embed(target_mlp, train, target_text)
        ctx.state.memo[key] = (q, t)
        return q, t

    def text_cosine(ctx):
        _, sentence = inputs(ctx.cache)
        _, query_sentence = inputs(ctx.query_cache)
        train = torch.as_tensor(ctx.database_indices)
        mean, std = sentence[train].mean(0), sentence[train].std(0) + 1e-6
        q = F.normalize((query_sentence[torch.as_tensor(ctx.query_indices)] - mean) / std, dim=-1)
        return q @ F.normalize((sentence[train] - mean) / std, dim=-1).T

    def with_text_cosine(ctx, weight: float):
        q, t = trained(ctx, False, False)
        return q @ t.T + weight * text_cosine(ctx)

    variants = {
        "library_text_reference": ("late_fusion_fullbatch (the evaluation's method)", lambda ctx: cv_methods.late_fusion_fullbatch(ctx)),
        "library_text_control": ("control: query image + text, target image", lambda ctx: trained(ctx, False, False)),
        "library_text_target_text": ("target image + the library case's own text", lambda ctx: trained(ctx, True, False)),
        "library_text_shared": ("one MLP for both sides (image + text)", lambda ctx: trained(ctx, True, True)),
        **{f"library_text_cosine_{w:g}": (f"control + {w:g} x text-text cosine", lambda ctx, w=w: with_text_cosine(ctx, w)) for w in TEXT_WEIGHTS},
    }
    cache = build_feature_cache("derm7pt", 260)
    res, wall = evaluate_variants(variants, args.folds, cache)
    rows = [{"variant": label, "method": name, **{k: res["methods"][name][k] for k in KEYS}} for name, (label, _) in variants.items()]
    for r in rows:
        print(f"{r['variant']:52s} " + " ".join(f"{k} {r[k]['mean']:.1f}" for k in KEYS), flush=True)
    commit = header["commit"]
    payload = {**header, "folds": args.folds, "epochs": args.epochs, "wall_time_s": round(wall, 1), "rows": rows}
    lines = [f"# Derm7pt: the library case's own text on the target side\n\n`{payload['command']}` (commit {commit['sha']}"
             f"{', dirty' if commit['dirty'] else ''}), folds {args.folds}, wall time {wall:.0f} s; mean ± sample std over folds, "
             "percent; template texts on both sides.\n",
             "| Variant | Acc@1 | Acc@2 | Acc@4 | mAP | P@5 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | " + " | ".join(mean_std(r[k]) for k in KEYS) + " |")
    write_results(args.out, payload, lines, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
