"""Sweep of the composed network's training regime on Derm7pt (issue 13): batch regime, text augmentation, lr, epochs, τ.

    .venv/bin/python bench/composed_sweep.py --folds 0 --only default paper_regime paper_regime_textaug8 \
        paper_regime_textaug4_findings --text-forms template,reworded,partial,demographics,empty   # the committed file

The composed default (:data:`monai_cir.engine.cv_methods.METHOD_DEFAULTS`) is the paper's regime (Adam 1e-4,
batches of 96, up to 100 epochs with early stopping, SupCon τ 0.2, composers at 3x the lr) on the template
texts, with the findings gate at query time (``composed_fullbatch`` is the full-batch regime). Each variant overrides the options of the ``composed`` method (``train`` / ``net`` / ``text`` dicts of
:data:`monai_cir.engine.cv_methods.METHOD_DEFAULTS`) and runs the protocol of ``monai-cir evaluate`` for
``composed`` and ``composed_image_query`` (the same model queried with the image alone).
``--references`` adds the ``late_fusion`` and ``late_fusion_fullbatch`` rows. Writes
``bench/results/derm7pt_composed_sweep.json`` and ``.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import begin, mean_std, write_results

_FINDINGS_ONLY = {"template": 0.5, "findings": 0.5}
# the paper's regime (the composed default before issue 13's sweep): early-stopped mini-batches of 96
_PAPER = {"lr": 1e-4, "batch_size": 96, "epochs": 100, "patience": 30, "val_fraction": 0.15, "temperature": 0.2, "target_weight": 1.0, "symmetric_weight": 0.0}
VARIANTS: dict[str, dict] = {
    "default": {},  # the composed default: paper regime, template texts, findings gate at query
    "paper_regime": {"train": dict(_PAPER)},
    # text augmentation (issue 13): 8 re-wordings per case in augment_report's full mix (subsets, orders,
    # styles, SR-coded, demographics, empty), or 4 with template + findings subsets only
    "paper_regime_textaug8": {"train": dict(_PAPER), "text": {"variants": 8}},
    "paper_regime_textaug4_findings": {"train": dict(_PAPER), "text": {"variants": 4, "mix": _FINDINGS_ONLY}},
    "textaug4_findings": {"text": {"variants": 4, "mix": _FINDINGS_ONLY}},
    "tau0.2": {"train": {"temperature": 0.2}},
    "tau0.05": {"train": {"temperature": 0.05}},
    "lr3e-4": {"train": {"lr": 3e-4}},
    "100ep": {"train": {"epochs": 100}},
    "400ep": {"train": {"epochs": 400}},
    "target_weight1": {"train": {"target_weight": 1.0}},
    "lrmult1": {"train": {"composer_lr_mult": 1.0}},
    "textdrop0.3": {"text": {"dropout": 0.3}},
}
from monai_cir.evaluation.protocol import METRIC_KEYS as KEYS  # noqa: E402 (bench/_common put the checkout on sys.path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=None)
    parser.add_argument("--references", action="store_true", help="also run late_fusion and late_fusion_fullbatch")
    parser.add_argument("--text-forms", default=None, help="comma list of text forms to score too (e.g. template,demographics)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/derm7pt_composed_sweep.json"))
    args = parser.parse_args(argv)
    header = begin(__file__, "derm7pt sweep of the composed training regime", argv)

    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.engine.cv_methods import override_options
    from monai_cir.evaluation import evaluate

    cache = build_feature_cache("derm7pt", 260)
    forms = [f for f in (args.text_forms or "").split(",") if f] or None
    start = time.perf_counter()
    rows = []

    def record(variant: str, options: dict, res: dict, t0: float) -> None:
        for name, entry in res["methods"].items():
            row = {"variant": variant, "method": name, "options": options, **{k: entry[k] for k in KEYS}, "seconds": round(time.perf_counter() - t0, 1)}
            if forms:
                row["text_forms"] = {form: {k: res["text_forms"]["derm7pt"][form][name][k] for k in ("acc@1", "map")} for form in forms}
            rows.append(row)
            print(f"{variant:28s} {name:22s} " + " ".join(f"{k} {row[k]['mean']:.1f}" for k in KEYS) + f"  ({row['seconds']:.0f} s)", flush=True)

    if args.references:
        t0 = time.perf_counter()
        record("reference", {}, evaluate(["late_fusion", "late_fusion_fullbatch"], folds=args.folds, cache=cache, progress=False, text_forms=forms), t0)
    for variant in args.only or list(VARIANTS):
        options = VARIANTS[variant]
        t0 = time.perf_counter()
        with override_options("composed", **json.loads(json.dumps(options))):
            res = evaluate(["composed", "composed_image_query"], folds=args.folds, cache=cache, progress=False, text_forms=forms)
        record(variant, options, res, t0)
    wall = time.perf_counter() - start
    commit = header["commit"]
    payload = {
        **header,
        "folds": args.folds,
        "wall_time_s": round(wall, 1),
        "rows": rows,
    }
    lines = [f"# Derm7pt: composed training regime sweep\n\n`{payload['command']}` (commit {commit['sha']}{', dirty' if commit['dirty'] else ''}), "
             f"folds {args.folds}, wall time {wall:.0f} s (load {payload['machine'].get('load_average_1_5_15')}); mean ± sample std over folds, percent.\n",
             "| Variant | Method | Acc@1 | Acc@2 | Acc@4 | mAP | P@5 | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = " | ".join(mean_std(r[k]) for k in KEYS)
        lines.append(f"| {r['variant']} | `{r['method']}` | {cells} | {r['seconds']:.0f} |")
    write_results(args.out, payload, lines, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
