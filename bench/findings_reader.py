"""Probe of a lever for issue 13: can the packaged text encoder read 7-point findings written in words it was
never trained on?

    .venv/bin/python bench/findings_reader.py          # the committed file (~3 min on 2 CPUs)

Why. The findings gate (:func:`monai_cir.data.report.recognised_findings`) reads a finding only in the words of the
training texts, so a report in other words (the ``reworded`` evaluation form, :data:`~monai_cir.data.report.HELD_OUT_STYLES`:
"reticular pattern", "radial streaming", "blotches"...) is answered from the image alone: it never hurts, but it
never helps either (Derm7pt 77.9 / mAP 81.4 against 83.7 / 86.4 for the template's words). A reader that mapped any
wording back onto the checklist could rewrite the text in the template's words before it is composed, and the
query would rank as a template query does. This measures whether the offline MiniLM (the only text encoder that
loads here, DESIGN.md section 4) can be that reader, before any of it is built.

Readers, each scored per recorded criterion of every Derm7pt case (recall: the criterion is read; value: read with
its recorded value, ``absent`` included; false reads: criteria read that the text does not record):

- ``gate``: the product's findings gate (criteria only; lexical, training words).
- ``phrase``: each clause of the text (split at ``. ; : ,`` and line ends) goes to its nearest training phrasing
  of a (criterion, value) pair by MiniLM cosine (every :data:`~monai_cir.data.report.TRAINING_STYLES` style's and
  the template's phrasing of every value Derm7pt records), read when the cosine is at least ``tau``; a clause with
  a negation cue (NegEx's general triggers: no, not, without, negative, absent, absence, none, free of, a lone
  "-") is read as ``absent``, any other as its nearest non-absent value of that criterion.
- ``noun``: the clause with polarity and grade words removed, to its nearest training noun of a criterion
  (criteria only). The removed words were listed after reading the held-out styles (they include "seen",
  "observed", "regular"): this reader is favoured, not independent, and still an upper bound of the approach.

``tau`` is a grid; nothing is fitted. Writes ``bench/results/derm7pt_findings_reader.json`` and ``.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

from _common import begin, write_results

TAUS = (0.3, 0.4, 0.5, 0.6)
FORMS = ("template", "reworded", "partial")
NEGATION = re.compile(r"\b(no|not|without|negative|absent|absence|none|free of)\b|(?<=\s)-(?=\s|$)")
POLARITY_AND_GRADES = re.compile(r"\b(no|not|without|negative|for|absent|present|seen|observed|shows|with|on|dermoscopy|examination|"
                                 r"regular|irregular|typical|atypical|diffuse|localized|blue|white|areas|and|or)\b")


def clauses(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"[.;:,\n]", text) if p.strip()]


def _value(row: dict) -> str:
    return "" if row["value_accuracy"] is None else f"{row['value_accuracy']:.1f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/derm7pt_findings_reader.json"))
    args = parser.parse_args(argv)
    header = begin(__file__, "derm7pt: reading 7-point findings in other words with the packaged MiniLM", argv)
    start = time.perf_counter()

    import torch

    from monai_cir.data import report as R
    from monai_cir.data.collections import load_collection
    from monai_cir.networks.late_fusion import sentence_embedding
    from monai_cir.networks.text_encoder import TextEncoder

    torch.set_num_threads(min(2, torch.get_num_threads()))
    encoder = TextEncoder("offline-minilm", pretrained=True).eval()

    @torch.inference_mode()
    def embed(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 256):
            tokens, mask = encoder(texts[i : i + 256])
            out.append(torch.nn.functional.normalize(sentence_embedding(tokens, mask), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, encoder.dim)

    records = load_collection("derm7pt")
    truths = [dict(R.report_fields(r).criteria) for r in records]
    values: dict[str, set[str]] = {key: set() for key, _ in R.CRITERIA}
    for truth in truths:
        for key, value in truth.items():
            values[key].add(value)
    phrases = list(dict.fromkeys(
        (phrasing, key, value)
        for key, noun in R.CRITERIA for value in sorted(values[key])
        for phrasing in (R._criterion(value, noun), *(style.finding(key, value) for style in R.TRAINING_STYLES.values()))))
    nouns = [(noun, key) for key, words in R._training_vocabulary().items() for noun in words]
    phrase_vectors, noun_vectors = embed([p for p, _, _ in phrases]), embed([n for n, _ in nouns])

    rows, misses = [], {}
    for form in FORMS:
        texts = R.render_reports(records, form, 0)
        # a partial text records only the criteria it keeps: score it against what it says
        said = [truth if form != "partial" else {k: v for k, v in truth.items() if k in R.recognised_findings(text)}
                for truth, text in zip(truths, texts)]
        parts = [clauses(t) for t in texts]
        flat = [c for p in parts for c in p]
        owner = [i for i, p in enumerate(parts) for _ in p]
        to_phrase = embed(flat) @ phrase_vectors.T
        to_noun = embed([POLARITY_AND_GRADES.sub(" ", c.lower()).strip() or c for c in flat]) @ noun_vectors.T
        total = sum(len(t) for t in said)

        def score(reader: str, tau: float | None, reads: list[dict[str, str | None]]) -> dict:
            recall = sum(k in got for truth, got in zip(said, reads) for k in truth)
            value = sum(got.get(k) == v for truth, got in zip(said, reads) for k, v in truth.items())
            false = sum(k not in truth for truth, got in zip(said, reads) for k in got)
            missed = Counter(k for truth, got in zip(said, reads) for k in truth if k not in got)
            misses[(form, reader, tau)] = dict(missed.most_common())
            return {"form": form, "reader": reader, "tau": tau, "criteria": total, "recall": round(100 * recall / total, 1),
                    "value_accuracy": round(100 * value / total, 1) if reader == "phrase" else None, "false_reads": false,
                    "never_read": sorted(k for k, _ in R.CRITERIA if missed[k] and missed[k] == sum(k in t for t in said))}

        rows.append(score("gate", None, [dict.fromkeys(R.recognised_findings(t)) for t in texts]))
        for tau in TAUS:
            phrase_reads: list[dict[str, str | None]] = [{} for _ in texts]
            best: list[dict[str, float]] = [{} for _ in texts]
            noun_reads: list[dict[str, str | None]] = [{} for _ in texts]
            for j, (clause, i) in enumerate(zip(flat, owner)):
                s, at = to_phrase[j].max(0)
                if float(s) >= tau:
                    _, key, _ = phrases[int(at)]
                    if NEGATION.search(f" {clause.lower()} "):
                        value = "absent"
                    else:
                        candidates = [n for n, (_, k, v) in enumerate(phrases) if k == key and v != "absent"]
                        value = phrases[max(candidates, key=lambda n: float(to_phrase[j, n]))][2]
                    if float(s) > best[i].get(key, -1.0):
                        best[i][key], phrase_reads[i][key] = float(s), value
                s, at = to_noun[j].max(0)
                if float(s) >= tau:
                    noun_reads[i].setdefault(nouns[int(at)][1], None)
            rows.append(score("phrase", tau, phrase_reads))
            rows.append(score("noun", tau, noun_reads))
        for r in rows[-(1 + 2 * len(TAUS)):]:
            print(f"{form:9s} {r['reader']:6s} tau {r['tau']!s:5s} recall {r['recall']:5.1f} value {r['value_accuracy']!s:5s} "
                  f"false {r['false_reads']:4d} never read {r['never_read']}", flush=True)
    wall = time.perf_counter() - start
    payload = {**header, "wall_time_s": round(wall, 1), "cases": len(records), "taus": list(TAUS), "phrases": len(phrases),
               "nouns": len(nouns), "rows": rows,
               "missed_per_criterion": [{"form": f, "reader": r, "tau": t, "missed": m} for (f, r, t), m in misses.items()]}
    commit = header["commit"]
    lines = [
        "# Derm7pt: reading 7-point findings in other words with the packaged MiniLM\n",
        f"`{payload['command']}` (commit {commit['sha']}{', dirty' if commit['dirty'] else ''}), {len(records)} cases, wall time {wall:.0f} s. "
        "Per recorded criterion of every case (partial: of those its text keeps), percent: recall = the criterion is read, value = read "
        "with its recorded value; false reads = criteria read that the text does not record (count). `gate`: the product's findings gate "
        "(training words); `phrase`: each clause to its nearest training phrasing by MiniLM cosine >= tau, negation cues read as absent; "
        "`noun`: the clause without polarity and grade words to its nearest training noun (favoured: see the script).\n",
        "| Form | Reader | tau | Recall | Value | False reads | Never read |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['form']} | {r['reader']} | {'' if r['tau'] is None else r['tau']} | {r['recall']:.1f} | {_value(r)} | "
          f"{r['false_reads']} | {', '.join(r['never_read']) or '-'} |" for r in rows],
    ]
    write_results(args.out, payload, lines, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
