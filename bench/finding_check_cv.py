"""How the findings reader's learned check trades wrong readings for stated ones, by threshold ->
``bench/results/finding_check_cv.{json,md}``.

The check (:mod:`monai_cir.data.finding_check`) is trained on the reviews not held out. Here they are split into five
folds by review (every fifth review, in name order); each fold's reviews are read by the rules alone and by the rules
with a check trained on the other folds' reviews and the project's own texts (as ``python -m
monai_cir.data.finding_check`` trains), at each threshold. The threshold the reader uses is the highest at which the
check lost at most 2% of the folds' stated findings and, trained as shipped (every trained review and the project's own
texts), keeps every phrasing of a finding the rules know written alone, as it is and as a sentence ("irregular
streaks", "Irregular streaks.": a text that is a finding and nothing else states it; ``tests/test_finding_check.py``
holds the shipped check to it). That check's readings of the held-out reviews at each threshold are reported beside,
not used to choose (``bench/reader_safety.py`` measures the shipped check on them).

    python bench/finding_check_cv.py [--thresholds 0.5,0.55,0.6,0.65,0.7] [--out bench/results/finding_check_cv.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import begin, write_results

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "bench" / "results" / "finding_check_cv.json"
FOLDS = 5
MAX_STATED_LOST = 0.02


def tally(entries: list[dict], check, thresholds: list[float], rules: dict, by_threshold: dict) -> int:
    """Adds the reviews' ``entries`` read by the rules alone to ``rules`` and with ``check`` at each threshold to
    ``by_threshold`` (texts read wrong: a reading outside what the review expects or allows; stated findings read);
    returns the stated findings the entries hold."""
    from monai_cir.data.report import read_by_rules

    stated = 0
    for e in entries:
        expected = {tuple(f) for f in e["expected"]}
        allowed = expected | {tuple(f) for f in e["allowed"]}
        readings = read_by_rules(e["text"])
        probability = {f: check.probability(e["text"], *f) for f in readings}
        stated += len(expected)
        rules["wrong"] += bool(set(readings) - allowed)
        rules["read_of_expected"] += len(set(readings) & expected)
        for t in thresholds:
            kept = {f for f in readings if probability[f] >= t}
            by_threshold[t]["wrong"] += bool(kept - allowed)
            by_threshold[t]["read_of_expected"] += len(kept & expected)
    return stated


def shipped_check_by_threshold(fc, entries: list[dict], earlier: dict, own: list, held_out: list[dict], thresholds: list[float]) -> dict:
    """The check trained as ``python -m monai_cir.data.finding_check`` trains it, by threshold: the phrasings of a finding
    written alone whose rules' reading it drops, and its readings of the held-out reviews (texts read wrong, stated
    findings read) beside the rules alone's."""
    from monai_cir.data.report import read_by_rules

    check = fc.train(fc.review_examples(entries, earlier, read_by_rules) + own, threshold=thresholds[0])
    alone = [text for text, _ in fc.phrasings_alone()]
    lowest = {text: min((check.probability(text, *f) for f in read_by_rules(text)), default=1.0) for text in alone}
    rules, by_threshold = {"wrong": 0, "read_of_expected": 0}, {t: {"wrong": 0, "read_of_expected": 0} for t in thresholds}
    tally(held_out, check, thresholds, rules, by_threshold)
    return {"phrasings_alone": len(alone),
            "phrasings_alone_dropped": {str(t): [text for text in alone if lowest[text] < t] for t in thresholds},
            "held_out_reviews": {"texts": len(held_out), "rules_alone": rules, "with_check": {str(t): row for t, row in by_threshold.items()}}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thresholds", default="0.5,0.55,0.6,0.65,0.7")
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    header = begin(__file__, "the findings reader's learned check by threshold, 5-fold over the trained reviews", argv)
    from monai_cir.data import finding_check as fc
    from monai_cir.data.collections import load_derm7pt
    from monai_cir.data.report import read_by_rules

    reviewed = json.loads(fc.REVIEWED.read_text(encoding="utf-8"))
    held_out = set(reviewed.get("held_out_reviews", []))
    entries = [e for e in reviewed["texts"] if e["review"] not in held_out]
    earlier = json.loads(fc.EARLIER_READINGS.read_text(encoding="utf-8"))["readings"]
    own = fc.own_text_examples(load_derm7pt(check_images=False), read_by_rules) + fc.phrasing_examples(read_by_rules)
    reviews = sorted({e["review"] for e in entries})
    rules = {"wrong": 0, "read_of_expected": 0}
    by_threshold = {t: {"wrong": 0, "read_of_expected": 0} for t in thresholds}
    expected_total = 0
    for fold in range(FOLDS):
        scored = set(reviews[fold::FOLDS])
        train_entries = [e for e in entries if e["review"] not in scored]
        check = fc.train(fc.review_examples(train_entries, earlier, read_by_rules) + own, threshold=thresholds[0])
        expected_total += tally([e for e in entries if e["review"] in scored], check, thresholds, rules, by_threshold)
        print(f"fold {fold} ({', '.join(sorted(scored))}) done", flush=True)
    for row in by_threshold.values():
        row["stated_lost_share"] = round(1 - row["read_of_expected"] / rules["read_of_expected"], 4)
    shipped_recipe = shipped_check_by_threshold(fc, entries, earlier, own, [e for e in reviewed["texts"] if e["review"] in held_out], thresholds)
    allowed_thresholds = [t for t in thresholds if by_threshold[t]["stated_lost_share"] <= MAX_STATED_LOST
                          and not shipped_recipe["phrasings_alone_dropped"][str(t)]]
    chosen = max(allowed_thresholds) if allowed_thresholds else None
    results = {"reviews": reviews, "held_out_reviews_not_used": sorted(held_out), "folds": FOLDS, "texts": len(entries),
               "expected_findings": expected_total, "rules_alone": rules,
               "with_check": {str(t): row for t, row in by_threshold.items()},
               "check_as_shipped": shipped_recipe,
               "rule": f"the highest threshold losing at most {MAX_STATED_LOST:.0%} of the stated findings the rules read "
                       "and keeping every phrasing of a finding written alone",
               "chosen_threshold": chosen}
    print(json.dumps(results, indent=1))
    lines = [f"# {header['benchmark']}", "", f"commit {header['commit']['sha'][:7]}{' (dirty)' if header['commit']['dirty'] else ''}; "
             f"`{header['command']}`", "",
             f"{len(entries)} texts of {len(reviews)} reviews ({reviews[0]} to {reviews[-1]}), {FOLDS} folds by review; "
             f"{expected_total} stated findings. Held out, not used: {', '.join(sorted(held_out))}.", "",
             "| reader | texts read wrong | stated findings read | stated lost |", "|---|---|---|---|",
             f"| rules alone | {rules['wrong']} | {rules['read_of_expected']} | |"]
    lines += [f"| rules + check, threshold {t} | {row['wrong']} | {row['read_of_expected']} | {row['stated_lost_share']:.1%} |"
              for t, row in by_threshold.items()]
    held = shipped_recipe["held_out_reviews"]
    lines += ["", "The check trained as shipped (every trained review and the project's own texts), by threshold: the phrasings "
              f"of a finding written alone ({shipped_recipe['phrasings_alone']} texts) it drops, and its readings of the "
              f"held-out reviews ({held['texts']} texts; reported, not used to choose):", "",
              "| reader | phrasings alone dropped | held out: texts read wrong | held out: stated findings read |", "|---|---|---|---|",
              f"| rules alone | | {held['rules_alone']['wrong']} | {held['rules_alone']['read_of_expected']} |"]
    lines += [f"| rules + check, threshold {t} | {len(shipped_recipe['phrasings_alone_dropped'][str(t)])}"
              f"{' (' + ', '.join(repr(x) for x in shipped_recipe['phrasings_alone_dropped'][str(t)][:4]) + ')' if shipped_recipe['phrasings_alone_dropped'][str(t)] else ''}"
              f" | {held['with_check'][str(t)]['wrong']} | {held['with_check'][str(t)]['read_of_expected']} |" for t in thresholds]
    lines += ["", f"Chosen ({results['rule']}): {chosen}."]
    write_results(args.out, {**header, "results": results}, markdown=lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
