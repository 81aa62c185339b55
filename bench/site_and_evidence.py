"""Site-conditioned search and the retrieval-based evidence summary on Derm7pt, 5-fold (issue 7).

For each method (a name registered with :mod:`monai_cir.evaluation`: the frozen-feature embedding
``frozen_multilevel_cosine``, the trained ``composed``...), per fold of the committed split:
queries = the held-out fold (image + text), database = the other four folds, indexed in a FAISS
:class:`~monai_cir.index.CaseIndex` with each case's anatomical site.

1. Site conditioning: every query searched unconditioned and with ``site=same``
   (:func:`monai_cir.sites_condition.resolve_site_condition` -> an index filter). Acc@1 and mAP
   (arXiv v1 Eqs. 10-14; with the condition, over the same-site database) and the share of
   returned cases on the query's site (top-1, top-16, whole ranking; must be 100%).
2. Evidence: the score-weighted diagnosis distribution of the top-k (k = 16) as a prediction.
   Accuracy, balanced accuracy and expected calibration error (10 bins) of
   (a) the plain majority vote of the 16 nearest (Tschandl et al. 2019) and (b) the calibrated vote:
   temperature and floor fitted (:func:`monai_cir.evidence.fit_calibration`) by *cross-fitting*: for
   test fold f, on the other folds' queries searched against databases without fold f. For a method
   without training this is a clean nested estimate; for a trained method fold f's labels were seen
   by the other folds' models (two calibration parameters; documented in the .md).
   Compared with logistic-regression classifiers on the same frozen features (pooled L/M/H, and
   pooled L/M/H + sentence embedding), C chosen by inner 3-fold CV on the training folds.
3. A reliability plot per method to ``output/figures/`` (git-ignored).

Writes ``bench/results/site_conditioned.json`` and ``.md``. Run::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/site_and_evidence.py --methods frozen_multilevel_cosine composed
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from _common import begin, write_results

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from monai_cir.evidence import (  # noqa: E402
    DEFAULT_K,
    MAJORITY_VOTE,
    expected_calibration_error,
    fit_calibration,
    neighbour_probabilities,
    plot_reliability,
)
from monai_cir.metrics import average_precision, summarize_folds  # noqa: E402
from monai_cir.sites_condition import resolve_site_condition, site_share  # noqa: E402

logger = logging.getLogger("site_and_evidence")
RESULTS = REPO / "bench" / "results"
FIGURES = REPO / "output" / "figures"


# ------------------------------------------------------------------------------ retrieval per fold
def _build_index(t: torch.Tensor, records: Sequence[Any], rows: np.ndarray):
    from monai_cir.index import CaseMetadata, create_index

    index = create_index(int(t.shape[1]), "bench-site-and-evidence")
    meta = [CaseMetadata(records[i].case_id, records[i].diagnosis, "derm7pt", site=records[i].site, extra={"row": int(i)}) for i in rows]
    index.add(t.float().numpy(), meta)
    return index


def _ranked_rows(hits: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([h.metadata.extra["row"] for h in hits], dtype=int), np.array([h.score for h in hits], dtype=np.float64)


def _query_metrics(labels: np.ndarray, query_label: int, ranked_rows: np.ndarray) -> tuple[float, float]:
    """(Acc@1, AP) of one query over its ranked database (Eqs. 10-13)."""
    rel = (labels[ranked_rows] == query_label)[None, :]
    return float(rel[0, :1].any()), float(average_precision(rel)[0])


def run_fold(method: Any, cache: Any, fold_of: np.ndarray, fold: int, config: dict[str, Any], seed: int, k: int) -> dict[str, Any]:
    """Search every query of ``fold`` unconditioned and ``site=same``; keep the top-k neighbours."""
    from monai_cir.evaluation import FoldContext, _similarity

    query = np.flatnonzero(fold_of == fold)
    database = np.flatnonzero(fold_of != fold)
    ctx = FoldContext(cache, query, database, int(fold), config, seed + int(fold))
    output = method.fn(ctx)
    if not (isinstance(output, (tuple, list)) and len(output) == 2):
        raise ValueError(f"method {method.name!r} returns a similarity matrix; site-conditioned search needs (Q, T) embeddings for the index")
    q, t = (torch.as_tensor(x).float() for x in output)
    _similarity((q, t), len(query), len(database), method.name)  # shape checks
    labels = cache.labels.numpy()
    records = cache.records
    index = _build_index(t, records, database)
    full = index.search(q.numpy(), k=len(database))
    out: dict[str, Any] = {"query_rows": query, "database_rows": database, "uncond": [], "same": [], "share": [], "fallback": 0,
                           "neighbours": [], "neighbours_same": []}
    for b, row in enumerate(query):
        ranked, scores = _ranked_rows(full[b])
        out["uncond"].append(_query_metrics(labels, labels[row], ranked))
        out["neighbours"].append((ranked, scores))
        filters, notice = resolve_site_condition("same", records[row].site)
        if filters is None:
            out["fallback"] += 1
            hits = full[b]
        else:
            hits = index.search(q[b].numpy(), k=len(database), filters=filters)[0]
        ranked_s, scores_s = _ranked_rows(hits)
        site = records[row].site
        out["share"].append((site_share(hits[:1], site), site_share(hits[:k], site), site_share(hits, site), len(hits)))
        out["same"].append(_query_metrics(labels, labels[row], ranked_s) if len(hits) else (0.0, 0.0))
        out["neighbours_same"].append((ranked_s, scores_s))
    return out


# ------------------------------------------------------------------------------ evidence
def _neighbour_arrays(neighbours: Sequence[tuple[np.ndarray, np.ndarray]], labels: np.ndarray, k: int, exclude: np.ndarray | None = None):
    """(Q, k) neighbour labels and scores, optionally skipping database rows in ``exclude``; -1 pads."""
    lab = np.full((len(neighbours), k), -1, dtype=int)
    sco = np.zeros((len(neighbours), k))
    for i, (rows, scores) in enumerate(neighbours):
        if exclude is not None:
            keep = ~np.isin(rows, exclude)
            rows, scores = rows[keep], scores[keep]
        rows, scores = rows[:k], scores[:k]
        lab[i, : len(rows)] = labels[rows]
        sco[i, : len(rows)] = scores
    return lab, sco


def _classification_metrics(probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score

    pred = probs.argmax(1)
    return {
        "accuracy": float((pred == truth).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(truth, pred)),
        "ece": expected_calibration_error(probs.max(1), pred == truth),
    }


def evidence_for_method(folds: dict[int, dict[str, Any]], labels: np.ndarray, fold_of: np.ndarray, n_classes: int, k: int, key: str = "neighbours") -> dict[str, Any]:
    """Majority vote vs the cross-fitted calibrated vote, per fold and pooled out-of-fold."""
    per_fold: dict[str, dict[str, list[float]]] = {"majority_vote": {}, "calibrated": {}}
    pooled: dict[str, list[np.ndarray]] = {"majority_vote": [], "calibrated": [], "truth": []}
    params = []
    for f, res in folds.items():
        truth = labels[res["query_rows"]]
        lab, sco = _neighbour_arrays(res[key], labels, k)
        # calibration data: the other folds' queries, searched without fold f's cases
        cal_lab, cal_sco, cal_truth = [], [], []
        for g, other in folds.items():
            if g == f:
                continue
            l2, s2 = _neighbour_arrays(other[key], labels, k, exclude=np.flatnonzero(fold_of == f))
            cal_lab.append(l2)
            cal_sco.append(s2)
            cal_truth.append(labels[other["query_rows"]])
        cal = fit_calibration(np.concatenate(cal_lab), np.concatenate(cal_sco), np.concatenate(cal_truth), n_classes, k=k,
                              description=f"cross-fitted for fold {f}")
        params.append({"fold": int(f), "temperature": "inf" if math.isinf(cal.temperature) else cal.temperature, "smoothing": cal.smoothing})
        for name, c in (("majority_vote", MAJORITY_VOTE), ("calibrated", cal)):
            probs = neighbour_probabilities(lab, sco, n_classes, c.temperature, c.smoothing)
            for metric, value in _classification_metrics(probs, truth).items():
                per_fold[name].setdefault(metric, []).append(value)
            pooled[name].append(probs)
        pooled["truth"].append(truth)
    truth_all = np.concatenate(pooled["truth"])
    # one calibration from every out-of-fold query (for deployment with a model of this method)
    all_lab, all_sco = zip(*(_neighbour_arrays(res[key], labels, k) for res in folds.values()))
    overall = fit_calibration(np.concatenate(all_lab), np.concatenate(all_sco), truth_all, n_classes, k=k,
                              description=f"fitted on {len(truth_all)} out-of-fold Derm7pt queries (5-fold CV)")
    out: dict[str, Any] = {"k": k, "calibration_per_fold": params, "calibration_all_folds": overall.to_dict(), "_calibration": overall}
    for name in ("majority_vote", "calibrated"):
        probs = np.concatenate(pooled[name])
        out[name] = {m: summarize_folds(v, scale=100.0, ndigits=2) for m, v in per_fold[name].items()}
        out[name]["ece_pooled"] = round(100 * expected_calibration_error(probs.max(1), probs.argmax(1) == truth_all), 2)
        out[name]["_probs"] = probs
    out["_truth"] = truth_all
    return out


def logistic_baselines(cache: Any, fold_of: np.ndarray, seed: int) -> dict[str, Any]:
    """Logistic regression on the frozen features (C by inner 3-fold CV), per fold and pooled."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    labels = cache.labels.numpy()
    pooled = torch.cat([torch.nn.functional.normalize(cache.pooled(i), dim=-1) for i in range(3)], dim=1).numpy()
    sentence = cache.sentence.float().numpy()
    feature_sets = {"logreg_image": pooled, "logreg_image_text": np.concatenate([pooled, sentence], axis=1)}
    out: dict[str, Any] = {}
    for name, x in feature_sets.items():
        per_fold: dict[str, list[float]] = {}
        probs_all, truth_all = [], []
        for f in sorted(set(fold_of.tolist())):
            tr, te = fold_of != f, fold_of == f
            # strong regularisation range only: with C > 1 lbfgs needs thousands of iterations on ~900
            # standardised features and the inner CV never picks it
            model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-4, 0, 5), cv=3, max_iter=500, random_state=seed))
            model.fit(x[tr], labels[tr])
            probs = model.predict_proba(x[te])
            for metric, value in _classification_metrics(probs, labels[te]).items():
                per_fold.setdefault(metric, []).append(value)
            probs_all.append(probs)
            truth_all.append(labels[te])
        probs, truth = np.concatenate(probs_all), np.concatenate(truth_all)
        out[name] = {m: summarize_folds(v, scale=100.0, ndigits=2) for m, v in per_fold.items()}
        out[name]["ece_pooled"] = round(100 * expected_calibration_error(probs.max(1), probs.argmax(1) == truth), 2)
        out[name]["features"] = "pooled frozen L/M/H (unit-norm each)" + (" + sentence embedding" if "text" in name else "")
        out[name]["_probs"], out[name]["_truth"] = probs, truth
    return out


# ------------------------------------------------------------------------------ main
def _strip_private(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_private(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [_strip_private(v) for v in obj]
    return obj


def evaluate_method(name: str, cache: Any, fold_of: np.ndarray, config: dict[str, Any], seed: int, k: int) -> dict[str, Any]:
    from monai_cir.evaluation import get_method

    method = get_method(name)
    labels = cache.labels.numpy()
    n_classes = int(labels.max()) + 1
    start = time.perf_counter()
    folds = {}
    for f in sorted(set(fold_of.tolist())):
        folds[f] = run_fold(method, cache, fold_of, f, config, seed, k)
        logger.info("%s fold %d done (%.0f s)", name, f, time.perf_counter() - start)
    res: dict[str, Any] = {"label": method.label, "trained": method.trained}
    metrics: dict[str, Any] = {}
    for cond in ("uncond", "same"):
        acc = [float(np.mean([m[0] for m in folds[f][cond]])) for f in folds]
        ap = [float(np.mean([m[1] for m in folds[f][cond]])) for f in folds]
        metrics[cond] = {"acc@1": summarize_folds(acc, 100.0, 2), "map": summarize_folds(ap, 100.0, 2)}
    shares = np.array([s for f in folds for s in folds[f]["share"]])
    records = cache.records
    per_site: dict[str, Any] = {}
    for f in folds:
        for row, u, s, sh in zip(folds[f]["query_rows"], folds[f]["uncond"], folds[f]["same"], folds[f]["share"]):
            d = per_site.setdefault(records[row].site, {"queries": 0, "acc@1_uncond": 0.0, "acc@1_same": 0.0, "map_uncond": 0.0, "map_same": 0.0, "database": 0})
            d["queries"] += 1
            d["acc@1_uncond"] += u[0]
            d["acc@1_same"] += s[0]
            d["map_uncond"] += u[1]
            d["map_same"] += s[1]
            d["database"] += sh[3]
    for d in per_site.values():
        n = d["queries"]
        for key in ("acc@1_uncond", "acc@1_same", "map_uncond", "map_same"):
            d[key] = round(100 * d[key] / n, 2)
        d["database"] = round(d["database"] / n, 1)  # mean same-site database size
    res["site_conditioning"] = {
        "unconditioned": metrics["uncond"],
        "same_site": metrics["same"],
        "delta_mean": {m: round(metrics["same"][m]["mean"] - metrics["uncond"][m]["mean"], 2) for m in ("acc@1", "map")},
        "same_site_share_percent": {
            "top1": round(100 * float(shares[:, 0].mean()), 2),
            f"top{k}": round(100 * float(shares[:, 1].mean()), 2),
            "whole_ranking": round(100 * float(shares[:, 2].mean()), 2),
            "min_over_queries": round(100 * float(shares[:, :3].min()), 2),
        },
        "fallback_queries_unknown_site": int(sum(folds[f]["fallback"] for f in folds)),
        "queries": int(len(shares)),
        "per_site": dict(sorted(per_site.items(), key=lambda kv: -kv[1]["queries"])),
    }
    res["evidence"] = evidence_for_method(folds, labels, fold_of, n_classes, k)
    res["evidence_same_site"] = evidence_for_method(folds, labels, fold_of, n_classes, k, key="neighbours_same")
    res["seconds"] = round(time.perf_counter() - start, 1)
    res["train_log"] = [e for e in config.get("_train_log", []) if e.get("method") == name]
    return res


def markdown(results: dict[str, Any]) -> list[str]:
    """The results file's table, as lines."""
    k = results["config"]["k"]
    commit = results.get("commit") or {}
    lines = [
        "# Site-conditioned search and retrieval-based evidence (Derm7pt, 5-fold)",
        "",
        f"Generated by `{results['command']}` ({results['created'][:10]}, commit {str(commit.get('sha'))[:12]}"
        f"{', dirty tree' if commit.get('dirty') else ''}); image size {results['config']['image_size']} px, "
        f"committed folds, queries = held-out fold (image + text), database = the other folds in a FAISS `CaseIndex`. "
        "Percent, mean ± sample std over 5 folds.",
        "",
        "## Site conditioning (`site=same` vs unconditioned)",
        "",
        "| method | Acc@1 any | Acc@1 same | Δ | mAP any | mAP same | Δ | same-site share top-1 / top-16 / all | fallbacks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(d: dict[str, Any]) -> str:
        return f"{d['mean']:.1f} ± {d['std']:.1f}" if d.get("std") is not None else f"{d['mean']:.1f}"

    for name, r in results["methods"].items():
        sc = r["site_conditioning"]
        sh = sc["same_site_share_percent"]
        lines.append(
            f"| {name} | {ms(sc['unconditioned']['acc@1'])} | {ms(sc['same_site']['acc@1'])} | {sc['delta_mean']['acc@1']:+.1f} | "
            f"{ms(sc['unconditioned']['map'])} | {ms(sc['same_site']['map'])} | {sc['delta_mean']['map']:+.1f} | "
            f"{sh['top1']:.0f} / {sh[f'top{k}']:.0f} / {sh['whole_ranking']:.0f} | {sc['fallback_queries_unknown_site']} |"
        )
    lines += [
        "",
        "mAP with `site=same` is computed over the same-site database only (fewer items, different class mix), so it is "
        "not the same quantity as the unconditioned mAP; Acc@1 compares directly.",
        "",
        "Per site (first method):",
        "",
        "| site | queries | mean same-site database | Acc@1 any | Acc@1 same | mAP any | mAP same |",
        "|---|---|---|---|---|---|---|",
    ]
    first = next(iter(results["methods"].values()))
    for site, d in first["site_conditioning"]["per_site"].items():
        lines.append(f"| {site} | {d['queries']} | {d['database']} | {d['acc@1_uncond']:.1f} | {d['acc@1_same']:.1f} | {d['map_uncond']:.1f} | {d['map_same']:.1f} |")
    lines += [
        "",
        f"## Retrieval-based prediction (top-{k}) vs a plain classifier",
        "",
        "| predictor | accuracy | balanced accuracy | ECE (per fold) | ECE (pooled) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["methods"].items():
        for key, tag in (("evidence", "any site"), ("evidence_same_site", "same site")):
            for kind, label in (("majority_vote", f"majority of {k} nearest"), ("calibrated", f"score-weighted top-{k}, calibrated")):
                e = r[key][kind]
                lines.append(f"| {name}: {label} ({tag}) | {ms(e['accuracy'])} | {ms(e['balanced_accuracy'])} | {ms(e['ece'])} | {e['ece_pooled']:.1f} |")
    for name, e in results["classifier"].items():
        lines.append(f"| {name} ({e['features']}) | {ms(e['accuracy'])} | {ms(e['balanced_accuracy'])} | {ms(e['ece'])} | {e['ece_pooled']:.1f} |")
    lines += [
        "",
        "Calibration: temperature T and floor ε of `monai_cir.evidence` fitted by NLL, cross-fitted (for test fold f, on the "
        "other folds' queries searched against databases without fold f). For trained methods, fold f's labels were seen by "
        "the other folds' models during their training, a mild optimism in two calibration parameters. Fitted values per fold:",
        "",
    ]
    for name, r in results["methods"].items():
        vals = ", ".join(f"f{p['fold']}: T={p['temperature'] if isinstance(p['temperature'], str) else round(p['temperature'], 4)}, ε={p['smoothing']:.2f}" for p in r["evidence"]["calibration_per_fold"])
        lines.append(f"- {name}: {vals}")
    lines += ["", f"Reliability plots (git-ignored): {', '.join(results['figures'])}", ""]
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["frozen_multilevel_cosine"], help="registered evaluation methods")
    parser.add_argument("--image-size", type=int, default=260)
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="neighbours that vote (Tschandl et al. 2019: 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method-options", type=json.loads, default={}, metavar="JSON",
                        help='options per trained method, as for monai-cir evaluate, e.g. \'{"composed": {"train": {"epochs": 20}}}\'')
    parser.add_argument("--out", type=Path, default=RESULTS / "site_conditioned.json")
    args = parser.parse_args(argv)
    header = begin(__file__, "site-conditioned search and retrieval-based evidence, Derm7pt 5-fold", argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from monai_cir.data import build_feature_cache
    from monai_cir.evaluation import fold_indices
    wall = time.perf_counter()
    cache = build_feature_cache("derm7pt", args.image_size)
    fold_of = fold_indices(cache)
    config: dict[str, Any] = {"image_size": args.image_size, "seed": args.seed, "method_options": args.method_options}
    results: dict[str, Any] = {
        **header,
        "config": {
            "image_size": args.image_size,
            "k": args.k,
            "seed": args.seed,
            "methods": list(args.methods),
            "method_options": args.method_options,
            "encoder_fingerprint": cache.fingerprint,
            "index": "FAISS CaseIndex (exact inner product), metadata filter {'site': query site}",
            "sites": {s: int(sum(r.site == s for r in cache.records)) for s in sorted({r.site for r in cache.records})},
        },
        "methods": {},
    }
    FIGURES.mkdir(parents=True, exist_ok=True)
    figures = []
    for name in args.methods:
        results["methods"][name] = evaluate_method(name, cache, fold_of, config, args.seed, args.k)
    results["classifier"] = logistic_baselines(cache, fold_of, args.seed)
    for name, r in results["methods"].items():
        truth = r["evidence"]["_truth"]
        curves = {
            f"majority of {args.k}": (r["evidence"]["majority_vote"]["_probs"].max(1), r["evidence"]["majority_vote"]["_probs"].argmax(1) == truth),
            f"top-{args.k} calibrated": (r["evidence"]["calibrated"]["_probs"].max(1), r["evidence"]["calibrated"]["_probs"].argmax(1) == truth),
        }
        for cname, c in results["classifier"].items():
            curves[cname] = (c["_probs"].max(1), c["_probs"].argmax(1) == c["_truth"])
        fig = plot_reliability(curves, FIGURES / f"reliability_{name}.png", title=f"Derm7pt 5-fold, {name}")
        r["evidence"]["_calibration"].save(REPO / "output" / "evidence" / f"evidence_calibration_{name}.json")
        figures.append(str(fig.relative_to(REPO)))
    results["figures"] = figures
    results["config"]["wall_s"] = round(time.perf_counter() - wall, 1)
    results["config"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    clean = _strip_private(results)
    write_results(args.out, clean, markdown(clean))
    return clean


if __name__ == "__main__":
    main()
