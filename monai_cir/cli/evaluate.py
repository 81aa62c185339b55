"""``monai-cir evaluate``: the paper's 5-fold protocol on Derm7pt (or on your own collection) for every method, in one run.

Writes ``--out`` (default ``output/<collection>_cv.json``, git-ignored: ``output/derm7pt_cv.json``; the committed
``bench/results/derm7pt_cv.json`` is written only when named, as the README command does) with, per method,
``{"acc@1": {"folds", "mean", "std"}, ..., "map": ..., "p@5": ...}`` in percent (per-fold values unrounded),
plus commit, config, wall time and machine, and a markdown table beside it, and prints the table.

``--images DIR --csv FILE`` (the input ``monai-cir index build`` takes) cross-validates your own collection
instead of Derm7pt: its feature cache is built once (git-ignored cache folder), and its cases are split into
5 folds stratified by diagnosis, seed 0, in CSV order (:func:`monai_cir.data.folds.collection_folds`), the
same folds on every run of the same CSV.

Resumable runs: when ``--out`` exists and was made with the same settings, the folds of this run are
merged into it (``--folds 0``, then ``--folds 1,2``... fill one file; a fold run again replaces its
earlier value; each method lists its runs under ``"runs"``: folds, commit, clean or not, and the processor they ran
on, since another CPU model can tip a query). Each fold of each method is merged into
``--out`` as soon as it is done, so a run cut short (a deadline, a crash, a killed fine-tuning run) keeps the
folds it finished: run the others with ``--folds``. ``--overwrite`` replaces the file instead. Whether this run can merge (same seed, image size, collection...) is
checked before any fold is computed. ``--figure DIR`` also draws the qualitative figure (paper Fig. 3; default: no
figure): it shows the collection's images, so DIR must be a git-ignored folder such as ``output/figures``; never commit it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .train import NUM_FOLDS

__all__ = ["add_parser", "run"]

OUTPUT_DIR = Path("output")  # git-ignored: a quick run never rewrites a committed results file


def _fold_list(text: str) -> list[int]:
    try:
        folds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"folds must be integers such as 0,1 or 0 1, got {text!r}") from None
    if not folds or any(f < 0 for f in folds):
        raise argparse.ArgumentTypeError(f"folds must be 0-based fold numbers such as 0,1, got {text!r}")
    if any(f >= NUM_FOLDS for f in folds):  # said now, not after the folds before it have run
        raise argparse.ArgumentTypeError(f"there are {NUM_FOLDS} folds, 0 to {NUM_FOLDS - 1}: got {text!r}")
    return folds


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="5-fold cross-validation on Derm7pt (paper protocol, Eqs. 10-14)",
        description=(
            "Per fold: queries = held-out fold (image + text), database = other four folds (images only), "
            "relevant = same class. Reports Acc@1/2/4 and mAP per fold and mean ± sample std, in percent."
        ),
    )
    parser.add_argument("--methods", nargs="+", default=None,
                        help="methods to run (default: every registered method, the end-to-end fine-tuned ones included: "
                             "30+ min a fold on a 2-core CPU; see --list-methods)")
    parser.add_argument("--list-methods", action="store_true", help="print the registered methods and exit")
    parser.add_argument("--image-size", type=int, default=260, help="preprocessing size of the feature cache (default 260)")
    parser.add_argument("--folds", type=_fold_list, nargs="+", default=[[0, 1, 2, 3, 4]], metavar="FOLDS",
                        help="held-out folds, 0-based, e.g. 0,1 or 0 1 (default all five); merged into --out when it exists")
    parser.add_argument("--text-forms", type=lambda t: [f for f in t.split(",") if f], default=None, metavar="FORMS",
                        help="also score every method with the query texts in these forms, e.g. template,reworded,partial,demographics,empty "
                             "(models trained once per fold on the template texts; one table per form and collection)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out instead of merging this run's folds into it")
    parser.add_argument("--cross-site", default=None, metavar="COLLECTION", help="also run leave-one-out on another collection, e.g. isic-uda1")
    parser.add_argument("--seed", type=int, default=0, help="base seed (a method gets seed + fold)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results JSON (default {OUTPUT_DIR}/<collection>_cv.json, e.g. {OUTPUT_DIR}/derm7pt_cv.json); the .md table goes beside it")
    parser.add_argument("--figure", type=Path, default=None, metavar="DIR", help="write the qualitative figure (Fig. 3) to DIR, a git-ignored folder such as output/figures")
    parser.add_argument("--figure-method", default=None, help="method shown in the figure (default: the first of --methods)")
    parser.add_argument("--method-options", type=json.loads, default=None, metavar="JSON", help='per-method options, e.g. \'{"composed": {"beta": 0.6}}\'')
    parser.add_argument("--data-root", type=Path, default=None, help="data root (default $MONAI_CIR_DATA or ../shared/data)")
    parser.add_argument("--images", type=Path, metavar="DIR", help="your own collection instead of Derm7pt: a folder of images, described by --csv")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="with --images: columns image, diagnosis (optional: case_id, text, site, confirmation = histopathology, "
                             "follow-up, expert consensus or unknown; biopsy / histology / excision also mean histopathology); "
                             "5 folds stratified by diagnosis, seed 0, in CSV order. See docs/data.md")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import datetime
    import time
    import uuid

    from ..atomic import atomic_write_text, exclusive_lock
    from ..evaluation import TEXT_FORMS, available_methods, evaluate, merge_results, merged_commit, results_header, results_table, text_forms_table
    from ..evaluation.protocol import check_collection_classes, check_mergeable
    from ..provenance import busy_warning, git_commit, machine_info

    if (args.images is None) != (args.csv is None):
        raise ValueError("--images DIR and --csv FILE go together (a folder of images and the CSV describing them: columns image, diagnosis)")
    folds = sorted({f for group in args.folds for f in group})
    unknown_forms = sorted(set(args.text_forms or []) - set(TEXT_FORMS))
    if unknown_forms:
        raise ValueError(f"unknown text form(s) {unknown_forms}; known: {', '.join(TEXT_FORMS)}")
    methods = available_methods()
    if args.list_methods:
        for name, method in methods.items():
            print(f"{name:28s} {'trained' if method.trained else 'frozen/untrained':18s} {method.label}")
        return 0
    names = args.methods or list(methods)
    unknown = [n for n in names if n not in methods]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {sorted(methods)}")
    figure_method = args.figure_method or names[0]
    if args.figure is not None and figure_method not in names:
        raise ValueError(f"--figure-method {figure_method!r} is not among --methods {names}")

    cache = None
    if args.images is not None:
        from ..data import feature_cache
        from ..data.collections import load_image_csv

        records = load_image_csv(args.images, args.csv)
        check_collection_classes(records, folds, [methods[n] for n in names])  # before the images are embedded
        cache = feature_cache.build_feature_cache(records[0].collection, args.image_size, records=records)
    collection = "derm7pt" if cache is None else records[0].collection
    if args.out is None:
        args.out = OUTPUT_DIR / f"{collection}_cv.json"

    commit = git_commit()  # the code that runs, not what the tree holds when the run ends
    host = machine_info()
    if warning := busy_warning(host):
        print(f"WARNING: {warning}", flush=True)
    # each run of a merged file names the processor it ran on: the same code gives float-level differences
    # (a query flipped here and there) on another CPU model, and the folds of one file may come from several
    run_machine = {"cpu": host.get("cpu"), "cuda": host.get("cuda")}
    start = last_write = time.perf_counter()
    state: dict = {"first": True, "written": None, "reported": 0}  # reported: train_log entries written
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run_id = f"{datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')} {uuid.uuid4().hex[:8]}"  # this invocation's folds are one run

    def write(part: dict) -> None:
        """Merge one part of this run's results (a fold of a method, or the cross-site blocks) into --out (and its table), under the lock."""
        nonlocal last_write
        now = time.perf_counter()
        for entry in part["methods"].values():
            entry["runs"] = [{"run": run_id, "folds": entry["held_out_folds"], "commit": commit.get("sha"), "dirty": commit.get("dirty"),
                              "command": getattr(args, "command_line", None),
                              "machine": run_machine, "wall_time_s": round(float(entry.get("seconds", 0.0)), 1)}]
        payload = {
            "benchmark": f"{part['config']['collection']} 5-fold cross-validation (monai-cir evaluate)",
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": getattr(args, "command_line", None),
            "commit": commit,
            "config": part["config"],
            "wall_time_s": round(now - last_write, 1),
            "machine": machine_info(),
            "methods": part["methods"],
            "cross_site": part["cross_site"],
            "train_log": part["train_log"],
        }
        if part.get("text_forms"):
            payload["text_forms"] = part["text_forms"]
        with exclusive_lock(args.out, "runs of other folds merge into it"):  # read-merge-write: runs of other folds may merge at the same time
            if args.out.exists() and not (args.overwrite and state["first"]):
                previous = json.loads(args.out.read_text())
            else:  # a new file holds the folds done, not the folds asked for
                previous = {**payload, "methods": {}, "cross_site": {}, "train_log": [], "text_forms": {}, "wall_time_s": 0.0}
            merged = merge_results(previous, payload)
            payload = {**merged, "created": payload["created"], "command": payload["command"], "machine": payload["machine"], "commit": merged_commit(merged, commit),
                       "wall_time_s": round(float(previous.get("wall_time_s", 0.0)) + payload["wall_time_s"], 1)}
            atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
            table = results_table(payload) + ("\n" + text_forms_table(payload) if payload.get("text_forms") else "")
            header = results_header(payload, args.image_size)
            atomic_write_text(args.out.with_suffix(".md"), header + table)
        last_write = now
        state["first"] = False
        state["written"] = payload
        state["reported"] += len(part["train_log"])
        for name, entry in part["methods"].items():
            print(f"wrote {name} fold {', '.join(map(str, entry['held_out_folds']))} into {args.out} "
                  f"(it now holds folds {', '.join(map(str, payload['methods'][name]['held_out_folds']))} of {name})", flush=True)

    def check_merge(config: dict) -> None:
        """Before any fold is computed: a run that cannot merge into --out fails now, not after its folds."""
        if args.out.exists() and not args.overwrite:
            check_mergeable(json.loads(args.out.read_text()).get("config", {}), config)

    results = evaluate(
        names,
        cache=cache,
        on_start=check_merge,
        image_size=args.image_size,
        folds=folds,
        cross_site=args.cross_site,
        seed=args.seed,
        keep_rankings=args.figure is not None,
        root=args.data_root,
        method_options=args.method_options,
        text_forms=args.text_forms,
        on_fold_done=write,  # each fold of each method is saved when done: a run cut short keeps them
    )
    rankings = results.pop("_rankings", None)
    cache = results.pop("_cache", None)
    # what the methods' parts did not carry: the cross-site blocks (and their text forms), the last log entries
    rest = {"config": results["config"], "methods": {}, "cross_site": results["cross_site"], "train_log": results["train_log"][state["reported"]:],
            "text_forms": {c: f for c, f in results.get("text_forms", {}).items() if c != "derm7pt"}}
    write(rest)
    payload = state["written"]
    table = results_table(payload) + ("\n" + text_forms_table(payload) if payload.get("text_forms") else "")
    print(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} ({time.perf_counter() - start:.0f} s)")
    if args.figure is not None and rankings:
        from ..evaluation import retrieval_figure

        path = retrieval_figure(cache, rankings[figure_method], figure_method, args.figure, image_size=args.image_size)
        print(f"wrote {path} (shows the collection's images: never commit it)")
    return 0
