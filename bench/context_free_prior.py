"""The diagnosis prior's probes on findings written without context -> ``bench/results/derm7pt_context_free_prior.json``.

The measurement behind 0.9's prior (:func:`monai_cir.engine.diagnosis_prior.fit_diagnosis_prior`): its partial-text
probe is the "partial probe, + findings without context (0.9)" row, its full-text probe the "0.8" one (fitting it on
context-free texts too lowered the template ranking). The 0.8 prior fitted two logistic probes of the
query's diagnosis on ``[sentence, pooled L/M/H]``: ``full`` on the training cases' template reports, ``partial`` on those
and the same cases' partial reports (1-4 findings). Both kinds of text state the case's context (elevation, location,
sex). A clinician's text often does not ("BWV present, irregular streaks"): the findings gate then gives the network
"Lesion. Dermoscopy: ..." (:func:`monai_cir.data.report.query_text`), a text neither probe was fitted on. When the reader
read three held-out nouns (2101a4b), such texts ranked below the image alone (``derm7pt_cv_reworded_read.md``).

Per fold of the committed folds, each probe is fitted as the prior fits it (``_fit_probe``: C by inner cross-validation,
a case's texts never split), once on texts with context (0.8) and once with the same cases' findings also written without context
(the partial probe: 1-4 findings and all of them; the full probe: all of them), and scored by held-out accuracy on:
template reports, partial reports, the three findings a held-out style's text gave (streaks, pigmentation, veil) without
context, 1-4 findings without context, all findings without context. The figure to compare: the image-only ranking's
Acc@1, 77.9 (``derm7pt_cv.md``'s text forms, ``composed_late_fusion``'s empty text), since the shipped ranking puts the
predicted diagnosis first (Acc@1 ~ the probe's accuracy).

    .venv/bin/python bench/context_free_prior.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from _common import begin, write_results

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "bench" / "results" / "derm7pt_context_free_prior.json"
THREE = ("streaks", "pigmentation", "blue_whitish_veil")  # what the held-out styles gave when 2101a4b read their nouns
SETS = ("template", "partial", "three findings, no context", "1-4 findings, no context", "all findings, no context")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args()
    header = begin(__file__, "derm7pt: the diagnosis prior's probes on findings written without context")

    import numpy as np
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from monai_cir.data.feature_cache import build_feature_cache
    from monai_cir.data.folds import load_folds
    from monai_cir.data.report import findings_report, report_fields
    from monai_cir.engine.diagnosis_prior import PRIOR_C_GRID, PRIOR_INNER_FOLDS, _fit_probe, prior_inputs
    from monai_cir.evaluation.text_forms import text_form_cache, texts_cache

    cache = build_feature_cache("derm7pt", 260)
    y = cache.labels.numpy()
    folds = load_folds()
    fold_of = np.array([folds[r.case_id] for r in cache.records])

    rng = np.random.default_rng(0)
    three, some, every = [], [], []
    for record in cache.records:  # "Lesion. Dermoscopy: ...": what query_text gives a text that states no context
        findings = dict(report_fields(record).criteria)
        keys = list(findings)
        picked = rng.choice(len(keys), size=min(int(rng.integers(1, 5)), len(keys)), replace=False)
        three.append(findings_report([(k, findings[k]) for k in THREE if k in findings]))
        some.append(findings_report([(keys[i], findings[keys[i]]) for i in picked]))
        every.append(findings_report(findings.items()))
    caches = {"template": cache, "partial": text_form_cache(cache, "partial"), "three findings, no context": texts_cache(cache, three),
              "1-4 findings, no context": texts_cache(cache, some), "all findings, no context": texts_cache(cache, every)}
    print(f"e.g. {three[0]!r} / {some[0]!r}", flush=True)

    fitted_on = {
        "partial probe, 0.8 (texts with context)": ("template", "partial"),
        "partial probe, + findings without context (0.9)": ("template", "partial", "1-4 findings, no context", "all findings, no context"),
        "full probe, 0.8 (texts with context)": ("template",),
        "full probe, + findings without context (not shipped)": ("template", "all findings, no context"),
    }
    per_fold: dict[str, dict[str, list[float]]] = {name: {s: [] for s in SETS} for name in fitted_on}
    chosen_c: dict[str, list[float]] = {name: [] for name in fitted_on}
    for fold in range(5):
        train, test = np.where(fold_of != fold)[0], np.where(fold_of == fold)[0]
        for name, sets in fitted_on.items():
            x = np.vstack([prior_inputs(caches[s], train) for s in sets])
            groups = np.concatenate([train] * len(sets)) if len(sets) > 1 else None
            model, c, _, _ = _fit_probe(x, np.concatenate([y[train]] * len(sets)), groups, 0, PRIOR_C_GRID, PRIOR_INNER_FOLDS)
            chosen_c[name].append(c)
            for s in SETS:
                per_fold[name][s].append(round(100 * float((model.predict(prior_inputs(caches[s], test)) == y[test]).mean()), 2))
        print(f"fold {fold}: " + "; ".join(f"{n}: {per_fold[n]['three findings, no context'][-1]:.1f}" for n in fitted_on), flush=True)

    summary = {name: {s: {"mean": round(statistics.fmean(v), 1), "std": round(statistics.stdev(v), 1), "folds": v} for s, v in sets.items()}
               for name, sets in per_fold.items()}
    report = {**header, "folds": list(range(5)), "c_grid": list(PRIOR_C_GRID), "inner_folds": PRIOR_INNER_FOLDS,
              "examples": {"three findings, no context": three[0], "1-4 findings, no context": some[0], "all findings, no context": every[0]},
              "fitted_on": {k: list(v) for k, v in fitted_on.items()}, "chosen_c": chosen_c, "accuracy": summary,
              "image_only_ranking_acc1": {"value": 77.9, "source": "bench/results/derm7pt_cv.md, text forms, composed_late_fusion, empty"}}
    lines = ["# Derm7pt: the diagnosis prior's probes on findings written without context (bench/context_free_prior.py)", "",
             f"commit {header['commit']['sha'][:7] if header['commit']['sha'] else '?'}{' (DIRTY)' if header['commit'].get('dirty') else ''}; "
             "`python bench/context_free_prior.py`; held-out accuracy (%), mean ± sample std over the 5 committed folds. "
             "The image-only ranking's Acc@1 is 77.9 (derm7pt_cv.md).", "",
             "| probe | " + " | ".join(SETS) + " |", "|---|" + "---|" * len(SETS)]
    lines += [f"| {name} | " + " | ".join(f"{summary[name][s]['mean']:.1f} ± {summary[name][s]['std']:.1f}" for s in SETS) + " |" for name in fitted_on]
    lines += ["", f"Examples: `{three[0]}` (three findings), `{some[0]}` (1-4 findings)."]
    print("\n".join(lines), flush=True)
    write_results(args.out, report, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
