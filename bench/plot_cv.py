"""A picture of a ``monai-cir evaluate`` results file: every method's Acc@1, mAP and P@5, fold by fold, against
the paper's figures and the project's targets (issue 13).

One fold of Derm7pt holds ~178 queries, so one query is 0.56 points and the folds of one method spread by
several points: the picture shows that spread beside each mean, which a table of means hides, so a reader can
judge a one-point difference between two methods by eye.

    python bench/plot_cv.py                                   # bench/results/derm7pt_cv.json -> derm7pt_cv.png
    python bench/plot_cv.py bench/results/derm7pt_cv_release_ensemble2.json --out /tmp/ensemble.png

It reads only the results file (no data, no model): the figure is as current as that file, whose commit it
prints in its title.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from _common import PAPER, TARGETS

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = {"acc@1": "Acc@1", "map": "mAP", "p@5": "P@5 (top 5 with the query's diagnosis)"}  # key in the results file: axis label


def plot_results(results: dict, path: Path) -> Path:
    """Draw ``results`` (a ``monai-cir evaluate`` JSON payload) to ``path`` (PNG, written whole)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monai_cir.atomic import atomic_path

    methods = results.get("methods") or {}
    if not methods:
        raise ValueError("the results file lists no methods: is it a `monai-cir evaluate` output?")
    names = list(methods)[::-1]  # the file's first method on top
    metrics = [k for k in METRICS if any(k in methods[m] for m in names)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.45 * len(names) + 1.6), sharey=True)
    axes = axes if len(metrics) > 1 else [axes]
    for ax, key in zip(axes, metrics):
        label, paper, target = METRICS[key], PAPER.get(key), TARGETS.get(key)
        for y, name in enumerate(names):
            entry = methods[name].get(key)
            if not entry:
                continue
            ax.scatter(entry["folds"], [y] * len(entry["folds"]), s=12, color="grey", alpha=0.6, zorder=2)
            ax.scatter([entry["mean"]], [y], s=45, color="black", zorder=3)
            ax.text(entry["mean"], y + 0.22, f"{entry['mean']:.1f}", fontsize=7, ha="center")
        for value, style, what in ((paper, ":", "paper"), (target, "--", "target")):
            if value is not None:
                ax.axvline(value, ls=style, lw=1, color="tab:red" if what == "target" else "tab:blue")
                ax.text(value, len(names) - 0.4, f"{what} {value:g}", fontsize=7, rotation=90, va="top", ha="right")
        ax.set_xlabel(f"{label}, %")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    folds = results.get("config", {}).get("folds")
    sha = str((results.get("commit") or {}).get("sha") or "")
    code = f"commit {sha[:7]}" if re.fullmatch(r"[0-9a-f]{40}", sha) else "the commits of each method's runs are in the file"
    fig.suptitle(f"{results.get('config', {}).get('collection', '?')}, held-out folds {folds}: fold means (black) and "
                 f"each fold (grey); {code}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="?", default=RESULTS / "derm7pt_cv.json", help="a monai-cir evaluate results file (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="the PNG to write (default: the results file with .png)")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"no results file at {args.results}: run `monai-cir evaluate` first (README, Results)")
    out = plot_results(json.loads(args.results.read_text()), args.out or args.results.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
