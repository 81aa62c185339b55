"""The differential slot on another site: the release checkpoint's Derm7pt margin against a margin refitted on
the site's own library (``monai-cir index fit-differential``), on ISIC UDA-1.

    .venv/bin/python bench/differential_site.py          # ~1 min on 2 CPUs (embeds the 555 images once)

The shipped checkpoint (``bundle/models/model.pt``) embeds ISIC UDA-1 (the app's library path,
:func:`monai_cir.retrieval.build_index`). Each image queries the other 554 with its image alone (the collection's
texts are age and sex: the findings gate leaves them out, so a query is its library vector). Rows: the similarity
ranking; the slot with the checkpoint's margin (fitted on Derm7pt); the slot with a margin fitted on this library
at the checkpoint's open rate (:func:`monai_cir.differential.fit_margin`), cross-fitted: the cases split in two halves
(seeded), each half ranked with the margin fitted on the other half's leave-one-out queries only; the same with the
rule before bundle 0.7.0 (the plain quantile of all margins). Writes ``bench/results/isic_differential_site.json``
and ``.md``. Nothing derived from the images is kept (the embeddings live in memory).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import begin, write_results

from monai_cir.evaluation.protocol import METRIC_KEYS as KEYS  # noqa: E402 (bench/_common put the checkout on sys.path)
RESULTS = Path("bench/results/isic_differential_site.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("bundle/models/model.pt"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    header = begin(__file__, "isic-uda1: the differential slot with the Derm7pt margin and with a site-fitted one", argv)

    import torch

    from monai_cir import retrieval
    from monai_cir.data import load_collection
    from monai_cir.differential import DifferentialSlot, differential_ranking, fit_margin, query_margins
    from monai_cir.metrics import leave_one_out_metrics
    from monai_cir.networks import load_model

    torch.set_num_threads(min(2, torch.get_num_threads()))
    net = load_model(args.model)
    shipped = DifferentialSlot.from_checkpoint_info(net.checkpoint_info)
    if shipped is None:
        raise SystemExit(f"{args.model} records no differential slot (bench/differential_slot.py --write-checkpoint)")
    records = load_collection("isic-uda1")
    start = time.perf_counter()
    index = retrieval.build_index(net, records, batch_size=16)
    embed_s = time.perf_counter() - start
    vectors = torch.as_tensor(np.asarray(index.vectors()))
    names = sorted({r.diagnosis for r in records})
    by_id = {r.case_id: names.index(r.diagnosis) for r in records}
    labels = np.array([by_id[c] for c in index.case_ids()])
    s = vectors @ vectors.T
    n = len(labels)

    def scored(scores: torch.Tensor) -> dict[str, float]:
        m = leave_one_out_metrics(scores, labels)
        return {k: round(100 * float(m[k]), 2) for k in KEYS}

    rows = [{"variant": "similarity ranking", **scored(s)}]
    shipped_scores, shipped_open = differential_ranking(s, labels, shipped, leave_one_out=True)
    rows.append({"variant": f"slot, the checkpoint's margin {shipped.margin:.4f} (Derm7pt held-out, open rate {shipped.open_rate:g})",
                 "margin": shipped.margin, "opened": int(shipped_open.sum()), **scored(shipped_scores)})
    # cross-fitted on the site: each half ranked with the margin of the other half's leave-one-out queries
    half = np.random.default_rng(args.seed).permutation(n) < n // 2
    margins, positions = query_margins(s.clone().fill_diagonal_(-torch.inf), labels)

    def cross_fitted(fit) -> dict:
        """Each half ranked with the slot whose margin ``fit(margins, positions)`` gives on the other half."""
        combined, opened, fitted = shipped_scores.clone(), 0, []
        for part in (half, ~half):
            slot = DifferentialSlot(fit(margins[~part], positions[~part]), rank=shipped.rank, open_rate=shipped.open_rate)
            scores, is_open = differential_ranking(s, labels, slot, leave_one_out=True)
            combined[torch.as_tensor(part)] = scores[torch.as_tensor(part)]
            opened += int(is_open[part].sum())
            fitted.append(round(slot.margin, 5))
        return {"margin": fitted, "opened": opened, **scored(combined)}

    rows.append({"variant": f"slot, margin refitted on this library (cross-fitted halves, open rate {shipped.open_rate:g})",
                 **cross_fitted(lambda m, p: fit_margin(m, p, shipped.open_rate, shipped.rank))})
    # the rule before bundle 0.7.0: the plain quantile of all the other half's margins (most of the least certain
    # queries here already have both diagnoses in their first cases, so the slot opens for few or none)
    rows.append({"variant": f"slot, refitted as the plain {shipped.open_rate:g} quantile of all margins (the rule before 0.7.0; cross-fitted halves)",
                 **cross_fitted(lambda m, p: float(np.quantile(m[np.isfinite(m)], shipped.open_rate)))})
    whole = fit_margin(margins, positions, shipped.open_rate, shipped.rank)
    for r in rows:
        print(f"{r['variant']:90s} " + " ".join(f"{k} {r[k]:.1f}" for k in KEYS) + (f"  opened {r['opened']}/{n}" if "opened" in r else ""))
    payload = {**header, "collection": "isic-uda1", "cases": n, "model": str(args.model), "embed_s": round(embed_s, 1),
               "checkpoint_slot": shipped.to_dict(), "site_margin_whole_library": round(whole, 5), "rows": rows}
    commit = header["commit"]
    lines = [f"# ISIC UDA-1: the differential slot with the Derm7pt margin and a site-fitted one\n\n`{payload['command']}` "
             f"(commit {commit['sha']}{', dirty' if commit['dirty'] else ''}); the shipped checkpoint, {n} images, each querying the "
             "other images with its image alone (leave-one-out), percent.\n",
             "| Ranking | Acc@1 | Acc@2 | Acc@4 | mAP | P@5 | slot opened |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | " + " | ".join(f"{r[k]:.1f}" for k in KEYS) + f" | {r.get('opened', '-')}{'/' + str(n) if 'opened' in r else ''} |")
    lines += ["", f"Margin fitted on the whole library at the same rate (what `monai-cir index fit-differential` records): {whole:.4f}."]
    write_results(args.out, payload, lines, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
