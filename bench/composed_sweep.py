"""Sweep of the composed network's training regime on Derm7pt (issue 13): batch regime, lr, epochs, τ.

    .venv/bin/python bench/composed_sweep.py --folds 0 --only fullbatch fullbatch_tau0.2   # quick fold-0 checks
    .venv/bin/python bench/composed_sweep.py --folds 0 1 2 3 4 --only paper fullbatch --references

Each variant overrides the options of the ``composed`` method (``train`` / ``net`` / ``text`` dicts of
:data:`monai_cir.engine.cv_methods.METHOD_DEFAULTS`) and runs the protocol of ``monai-cir evaluate`` for
``composed`` and ``composed_image_query`` (the same model queried with the image alone).
``--references`` adds the ``late_fusion`` and ``late_fusion_fullbatch`` rows. Writes
``bench/results/derm7pt_composed_sweep.json`` and ``.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_FULL = {"lr": 1e-3, "batch_size": 0, "epochs": 200, "patience": 0, "val_fraction": 0.0, "temperature": 0.1, "target_weight": 0.0, "symmetric_weight": 1.0}
_FINDINGS_ONLY = {"template": 0.5, "findings": 0.5}
VARIANTS: dict[str, dict] = {
    "paper": {},  # the default composed regime (early-stopped, batches of 96; template texts, findings gate at query)
    # text augmentation (issue 13): 8 re-wordings per case in augment_report's full mix (subsets, orders,
    # styles, SR-coded, demographics, empty), or 4 / 8 with template + findings subsets only
    "textaug8": {"text": {"variants": 8}},
    "textaug4_findings": {"text": {"variants": 4, "mix": _FINDINGS_ONLY}},
    "textaug8_findings": {"text": {"variants": 8, "mix": _FINDINGS_ONLY}},
    "fullbatch_textaug4_findings": {"train": dict(_FULL), "text": {"variants": 4, "mix": _FINDINGS_ONLY}},
    "fullbatch": {"train": dict(_FULL)},
    "fullbatch_tau0.2": {"train": {**_FULL, "temperature": 0.2}},
    "fullbatch_tau0.05": {"train": {**_FULL, "temperature": 0.05}},
    "fullbatch_lr3e-4": {"train": {**_FULL, "lr": 3e-4}},
    "fullbatch_lr3e-3": {"train": {**_FULL, "lr": 3e-3}},
    "fullbatch_100ep": {"train": {**_FULL, "epochs": 100}},
    "fullbatch_400ep": {"train": {**_FULL, "epochs": 400}},
    "fullbatch_tt1": {"train": {**_FULL, "target_weight": 1.0}},
    "fullbatch_lrmult1": {"train": {**_FULL, "composer_lr_mult": 1.0}},
    "fullbatch_textdrop0.3": {"train": dict(_FULL), "text": {"dropout": 0.3}},
    "fullbatch_textaug4": {"train": dict(_FULL), "text": {"variants": 4}},
    "fullbatch_textaug4_drop0.2": {"train": dict(_FULL), "text": {"variants": 4, "dropout": 0.2}},
}
KEYS = ("acc@1", "acc@2", "acc@4", "map", "p@5")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=None)
    parser.add_argument("--references", action="store_true", help="also run late_fusion and late_fusion_fullbatch")
    parser.add_argument("--text-forms", default=None, help="comma list of text forms to score too (e.g. template,demographics)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/derm7pt_composed_sweep.json"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.engine.cv_methods import override_options
    from monai_cir.evaluation import evaluate
    from monai_cir.provenance import git_commit, machine_info

    commit = git_commit()
    print(f"commit {commit['sha']}{' (dirty)' if commit['dirty'] else ''}", flush=True)
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
    payload = {
        "benchmark": "derm7pt sweep of the composed training regime (bench/composed_sweep.py)",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/composed_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit,
        "machine": machine_info(),
        "folds": args.folds,
        "wall_time_s": round(wall, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# Derm7pt: composed training regime sweep\n\n`{payload['command']}` (commit {commit['sha']}{', dirty' if commit['dirty'] else ''}), "
             f"folds {args.folds}, wall time {wall:.0f} s (load {payload['machine'].get('load_average_1_5_15')}); mean ± sample std over folds, percent.\n",
             "| Variant | Method | Acc@1 | Acc@2 | Acc@4 | mAP | P@5 | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = " | ".join(f"{r[k]['mean']:.1f}" + (f" ± {r[k]['std']:.1f}" if r[k].get("std") is not None else "") for k in KEYS)
        lines.append(f"| {r['variant']} | `{r['method']}` | {cells} | {r['seconds']:.0f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
