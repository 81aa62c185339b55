"""Ablations of the composed method on Derm7pt (issue 8): beta, k region masks, feature levels, input size.

    .venv/bin/python bench/ablations.py                       # all variants, 5 folds, 260 px (+ 512 px row)
    .venv/bin/python bench/ablations.py --folds 0 1 --only beta

Each variant changes one option of the default ``composed`` method (beta 0.6, k 4, levels L M H, 260 px) and
runs the same protocol as ``monai-cir evaluate`` (per fold: train on the other folds, query the held-out
fold). Writes ``bench/results/derm7pt_ablations.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import begin, mean_std, write_results

VARIANTS = {
    "beta": [("beta=0", {"net": {"beta": 0.0}}), ("beta=0.3", {"net": {"beta": 0.3}}), ("beta=0.6 (default)", {}), ("beta=0.8", {"net": {"beta": 0.8}}), ("beta=1", {"net": {"beta": 1.0}})],
    "k": [("k=1", {"net": {"num_masks": 1}}), ("k=4 (default)", {}), ("k=8", {"net": {"num_masks": 8}})],
    "levels": [("levels H", {"net": {"levels": ["H"]}}), ("levels M,H", {"net": {"levels": ["M", "H"]}}), ("levels L,M,H (default)", {})],
}
KEYS = ("acc@1", "acc@2", "acc@4", "map")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS) + ["size"], default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[260, 512], help="input sizes compared (default 260 512)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/derm7pt_ablations.json"))
    parser.add_argument("--epochs", type=int, default=None, help="cap the epochs (quick proxy; recorded)")
    args = parser.parse_args(argv)
    header = begin(__file__, "derm7pt ablations of the composed method", argv)

    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.engine.cv_methods import override_options
    from monai_cir.evaluation import evaluate

    start = time.perf_counter()
    rows = []
    groups = args.only or sorted(VARIANTS) + ["size"]
    caches = {}

    def cache_for(size: int):
        if size not in caches:
            caches[size] = build_feature_cache("derm7pt", size)
        return caches[size]

    def run(group: str, name: str, options: dict, size: int = 260) -> None:
        options = json.loads(json.dumps(options))
        if args.epochs:
            options.setdefault("train", {})["epochs"] = args.epochs
        t0 = time.perf_counter()
        with override_options("composed", **options):
            res = evaluate(["composed"], image_size=size, folds=args.folds, cache=cache_for(size), progress=False)
        entry = res["methods"]["composed"]
        row = {"group": group, "variant": name, "image_size": size, "options": options, **{k: entry[k] for k in KEYS}, "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"{group:7s} {name:26s} {size}px " + " ".join(f"{k} {row[k]['mean']:.1f}" for k in KEYS) + f"  ({row['seconds']:.0f} s)", flush=True)

    default_done = None
    for group in groups:
        if group == "size":
            for size in args.sizes:
                if size == 260 and default_done is not None:
                    rows.append({**default_done, "group": "size", "variant": "260 px (default)"})
                    continue
                run("size", f"{size} px" + (" (default)" if size == 260 else ""), {}, size)
            continue
        for name, options in VARIANTS[group]:
            if not options and default_done is not None:
                rows.append({**default_done, "group": group, "variant": name})
                continue
            run(group, name, options)
            if not options:
                default_done = dict(rows[-1])
    wall = time.perf_counter() - start
    commit = header["commit"]
    payload = {
        **header,
        "folds": args.folds,
        "epochs_cap": args.epochs,
        "wall_time_s": round(wall, 1),
        "rows": rows,
    }
    lines = [f"# Derm7pt ablations (composed)\n\n`{payload['command']}` (commit {commit['sha']}{', dirty' if commit['dirty'] else ''}), folds {args.folds}, wall time {wall:.0f} s; mean ± sample std over folds, percent.\n",
             "| Group | Variant | Size | Acc@1 | Acc@2 | Acc@4 | mAP | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = " | ".join(mean_std(r[k]) for k in KEYS)
        lines.append(f"| {r['group']} | {r['variant']} | {r['image_size']} | {cells} | {r['seconds']:.0f} |")
    write_results(args.out, payload, lines, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
