"""The differential slot (:mod:`monai_cir.differential`) on Derm7pt: what each open rate buys and costs, and
the margin the release checkpoint records.

    .venv/bin/python bench/differential_slot.py                  # the committed file (5 folds, ~10 min on 2 CPUs)
    .venv/bin/python bench/differential_slot.py --write-checkpoint bundle/models/model.pt
    .venv/bin/python bench/differential_slot.py --prior --write-checkpoint bundle/models/model.pt   # with the diagnosis prior

The release network (``composed_late_fusion``) is trained once per fold (the models ``monai-cir evaluate``
trains). For each open rate of a grid fixed in advance (2.5-30%), every fold's margin is fitted on the other
four folds' held-out queries only (:func:`monai_cir.engine.cv_methods.release_differential_slot`), and the
fold is ranked as the app ranks it. Rate 0 is the release network as ranked by similarity alone.

The release checkpoint (trained on all 888 cases) has no held-out queries of its own: its margin is the one
fitted on all five folds' held-out queries at :data:`monai_cir.differential.DEFAULT_OPEN_RATE`, which
``--write-checkpoint`` records in the checkpoint (``extra["differential"]``; weights untouched). The fold
networks' scores and the release network's are on the same scale only as far as the same recipe makes them:
the folds' margins at that rate spread over the range the results file gives.

``--prior``: the release network ranked with its diagnosis prior (``composed_late_fusion_prior``: ``S + λ w log p(y_c |
q)``, the prior fitted on each fold's training cases), the margins in that score's units: what a checkpoint with a
prior records.

Writes ``bench/results/derm7pt_differential_slot.json`` (``--prior``: ``derm7pt_differential_slot_prior.json``), ``.md``
and ``.png`` (Acc@4 and P@5 against the rate).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import PAPER, TARGETS, begin, evaluate_variants, mean_std, write_results

from monai_cir.evaluation.protocol import METRIC_KEYS as KEYS  # noqa: E402 (bench/_common put the checkout on sys.path)
RATES = (0.0, 0.025, 0.05, 0.1, 0.125, 0.15, 0.2, 0.3)
RESULTS = Path("bench/results/derm7pt_differential_slot.json")


def plot(rows: list[dict], chosen: float, path: Path, network: str = "the release network") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [100 * r["open_rate"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    for key, colour in (("acc@4", "tab:blue"), ("p@5", "tab:orange"), ("map", "tab:green"), ("acc@1", "tab:grey")):
        ax.plot(rates, [r[key]["mean"] for r in rows], "o-", color=colour, label=key.replace("map", "mAP").replace("acc", "Acc").replace("p@", "P@"))
        if key in TARGETS:
            ax.axhline(TARGETS[key], color=colour, ls=":", lw=1)
    ax.axhline(PAPER["acc@4"], color="tab:blue", ls="--", lw=0.8, label="paper Acc@4")
    ax.axvline(100 * chosen, color="black", lw=0.8, alpha=0.5)
    ax.set_xlabel("open rate fitted on the other folds' held-out queries (%)")
    ax.set_ylabel("5-fold mean (%)")
    ax.set_title(f"Derm7pt: the differential slot (rank 4) on {network}", fontsize=10)
    ax.legend(fontsize=8, loc="lower left", ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--prior", action="store_true", help="the release network with its diagnosis prior (composed_late_fusion_prior)")
    parser.add_argument("--out", type=Path, default=None, help=f"default {RESULTS} ({RESULTS.stem}_prior.json with --prior)")
    parser.add_argument("--write-checkpoint", type=Path, default=None, help="record the fitted slot in this checkpoint (the release model.pt)")
    args = parser.parse_args(argv)
    args.out = args.out or (RESULTS.with_name(f"{RESULTS.stem}_prior.json") if args.prior else RESULTS)
    network = "the release network with its diagnosis prior" if args.prior else "the release network"
    header = begin(__file__, f"derm7pt: the differential slot on {network}", argv)

    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.differential import DEFAULT_OPEN_RATE, DEFAULT_RANK, DifferentialSlot, differential_ranking
    from monai_cir.engine import cv_methods

    contexts, opened = {}, {}

    def variant(ctx, rate):
        contexts[ctx.fold] = ctx
        if args.prior:
            ranking, acted = cv_methods._composed_late_fusion_prior(ctx)
        else:
            q, t = cv_methods._composed_late_fusion(ctx)
            ranking, acted = q @ t.T, None
        if rate == 0:
            return ranking
        slot = cv_methods.release_differential_slot(ctx, rate, prior=args.prior)
        scores, is_open = differential_ranking(ranking, ctx.database_labels, slot, prior_acted=acted)
        opened.setdefault(rate, {})[ctx.fold] = (float(is_open.mean()), slot.margin)
        return scores

    cache = build_feature_cache("derm7pt", 260)
    names = {f"differential_rate_{rate:g}": rate for rate in RATES}
    res, wall = evaluate_variants(
        {name: (f"{network}, no slot" if rate == 0 else f"open rate {100 * rate:g}%", lambda ctx, r=rate: variant(ctx, r))
         for name, rate in names.items()},
        args.folds, cache,
    )

    rows = []
    for name, rate in names.items():
        per_fold = opened.get(rate, {})
        rows.append({"open_rate": rate, "method": name, **{k: res["methods"][name][k] for k in KEYS},
                     "opened_share_per_fold": [round(per_fold[f][0], 4) for f in args.folds] if per_fold else None,
                     "margin_per_fold": [round(per_fold[f][1], 5) for f in args.folds] if per_fold else None})
    # the release checkpoint's margin: every fold's held-out queries (memoised with the fold networks above)
    last = contexts[args.folds[-1]]
    pooled = cv_methods._release_slot(last.cache, last.config, last.state, list(args.folds), DEFAULT_OPEN_RATE, prior=args.prior)
    release = DifferentialSlot(pooled.margin, rank=DEFAULT_RANK, open_rate=DEFAULT_OPEN_RATE, margin_by_similarity=pooled.margin_by_similarity,
                               description=f"fitted on the held-out queries of Derm7pt folds {args.folds} under each fold's release "
                                           f"network{' and its diagnosis prior' if args.prior else ''} (bench/differential_slot.py"
                                           f"{' --prior' if args.prior else ''}, commit {header['commit']['sha'][:7]})")
    for r in rows:
        print(f"rate {r['open_rate']:<6g} " + " ".join(f"{k} {r[k]['mean']:.1f}" for k in KEYS), flush=True)
    print(f"release checkpoint's slot: margin {release.margin:.4f} at open rate {DEFAULT_OPEN_RATE}"
          + (f" (queries the prior leaves alone: {release.margin_by_similarity:.4f})" if release.margin_by_similarity else ""))
    png = plot(rows, DEFAULT_OPEN_RATE, args.out.with_suffix(".png"), network)
    payload = {**header, "folds": args.folds, "wall_time_s": round(wall, 1), "rank": DEFAULT_RANK, "rows": rows,
               "release_slot": release.to_dict(), "figure": str(png), "train_log": res.get("train_log")}
    commit = header["commit"]
    lines = [f"# Derm7pt: the differential slot on {network}\n\n`{payload['command']}` (commit {commit['sha']}"
             f"{', dirty' if commit['dirty'] else ''}), folds {args.folds}, wall time {wall:.0f} s; mean ± sample std over folds, percent. "
             f"Each fold's margin fitted on the other folds' held-out queries at the open rate; the slot shows the closest case "
             f"of another diagnosis at rank {DEFAULT_RANK} when the query's score margin to it is under the margin.\n",
             "| Open rate | Acc@1 | Acc@2 | Acc@4 | mAP | P@5 | opened (held-out, per fold) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        share = ", ".join(f"{100 * x:.0f}%" for x in r["opened_share_per_fold"]) if r["opened_share_per_fold"] else "-"
        lines.append(f"| {100 * r['open_rate']:g}% | " + " | ".join(mean_std(r[k]) for k in KEYS) + f" | {share} |")
    lines += ["", f"Release checkpoint: margin {release.margin:.4f} (open rate {100 * DEFAULT_OPEN_RATE:g}% of all five folds' held-out queries)"
              + (f"; for queries the prior leaves alone (no finding named: ranked by similarity) {release.margin_by_similarity:.4f}, fitted "
                 "without the prior" if release.margin_by_similarity else "") + ".",
              "", f"![Acc@4, P@5, mAP and Acc@1 against the open rate]({png.name})"]
    write_results(args.out, payload, lines, indent=2)
    if args.write_checkpoint is not None:
        from monai_cir.networks.checkpoint import read_checkpoint, record_in_checkpoint

        if bool(read_checkpoint(args.write_checkpoint)["config"].get("diagnosis_prior")) != args.prior:
            raise SystemExit(f"{args.write_checkpoint} {'ranks' if not args.prior else 'does not rank'} with a diagnosis prior: "
                             f"run {'with' if not args.prior else 'without'} --prior to fit its slot in its ranking's units")
        record_in_checkpoint(args.write_checkpoint, differential=release.to_dict())
        print(f"recorded the slot in {args.write_checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
