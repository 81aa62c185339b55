"""``monai-cir search``: the library cases most similar to a dermoscopy image + clinical text.

    monai-cir search --index output/isic-index --image lesion.jpg --text "raised, irregular pigment network" -k 5
    monai-cir search --index output/d7 --image lesion.jpg --text "..." --site same --query-site trunk --json
    monai-cir search --index output/d7 --image lesion.jpg --text "..." --evidence --explain output/why.png

Scores are S(q, t) of the paper's Eq. 9 (higher is more similar); with a diagnosis prior in the checkpoint, a query
whose text names 7-point findings is ordered by S plus its diagnosis posterior (:mod:`monai_cir.prior_ranking`), with a note. When the checkpoint records a differential
slot (:mod:`monai_cir.differential`), an uncertain query is shown as the deploy app shows it: the closest case
of the runner-up diagnosis at the slot's rank, with a note (``--no-differential``: the similarity ranking). The confirmation column says how
each case's diagnosis was established; only "histopathology" is biopsy-confirmed. The index must
have been built by the same model (``--model``) and preprocessing; otherwise the search is refused. A query image
that is itself a library case (the same image file) is its own best match: a note says so, as the deploy app does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]

# an explanation's score further than this from its hit's: the library file is not the image that was indexed (the
# same file scores the same up to float rounding, ~1e-5; the score spans -3 to 3)
STALE_SCORE_GAP = 0.01


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("search", help="find the cases most similar to an image + clinical text", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, metavar="DIR", help="index folder from `monai-cir index build`")
    parser.add_argument("--image", type=Path, required=True, help="the query's dermoscopy image (JPEG, PNG...)")
    parser.add_argument("--text", default="", help="the clinical text of the query (empty: image-only search)")
    parser.add_argument("-k", type=int, default=5, help="how many cases to return (default 5)")
    parser.add_argument("--site", default="any", metavar="same|NAME|any", help="site condition: any (default), same (the query's site, --query-site) or a site name")
    parser.add_argument("--query-site", metavar="NAME", help="the query lesion's anatomical site (for --site same)")
    parser.add_argument("--model", help="checkpoint or bundle folder the index was built with (default as for `index build`)")
    parser.add_argument("--device", help="cuda, cpu... (default: CUDA when present)")
    parser.add_argument("--no-differential", dest="differential", action="store_false",
                        help="the plain similarity ranking (no closest case of the runner-up diagnosis for an uncertain query)")
    parser.add_argument("--evidence", action="store_true", help="also print the retrieval-based evidence summary (decision support, not a diagnosis)")
    parser.add_argument("--calibration", type=Path, metavar="JSON", help="evidence calibration fitted for this model (bench/site_and_evidence.py writes one)")
    parser.add_argument(
        "--explain", type=Path, metavar="OUT.png",
        help="write heatmaps of the region masks on the query and each match, and the words the composer attended to "
        "(the figure shows the images: keep it out of tracked folders)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def _same_image(a: Path, b: Path) -> bool:
    """``a`` and ``b`` are one image: the same file, or files of the same bytes (a copy of a library image)."""
    import filecmp

    try:
        return a.samefile(b) or (a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False))
    except OSError:
        return False


def _own_case(image: Path, hits: list[Any]) -> Any:
    """The hit whose library image is the query image itself (a library case sent as a query), else None: the deploy
    app's check (deploy_app/operators/retrieval.py ``_own_case``: the same SOP Instance UID) for an image file."""
    return next((h for h in hits if h.metadata.image_path and _same_image(image, Path(h.metadata.image_path))), None)


def run(args: argparse.Namespace) -> int:
    from monai_cir import retrieval
    from monai_cir.config import resolve_device
    from monai_cir.index import load_index
    from monai_cir.networks import load_model
    from monai_cir.sites_condition import resolve_site_condition

    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    if not args.image.is_file():
        raise FileNotFoundError(f"query image not found: {args.image}")
    # options that would fail or be ignored after the search are refused before it
    if args.explain is not None and args.explain.suffix.lower() != ".png":
        raise ValueError(f"--explain writes a PNG figure: give a path ending in .png, got {args.explain}")
    if args.explain is not None and args.explain.resolve() == args.image.resolve():
        raise ValueError(f"--explain {args.explain} is the query image: the figure would replace it; give another path")
    if args.calibration is not None and not args.evidence:
        raise ValueError("--calibration calibrates the evidence summary: add --evidence (or drop --calibration)")
    if args.calibration is not None and not args.calibration.is_file():
        raise FileNotFoundError(f"--calibration file not found: {args.calibration}")
    try:  # a text typed in another encoding than the terminal's reaches Python as lone surrogates (not JSON-safe)
        args.text.encode("utf-8")
    except UnicodeEncodeError as err:
        raw = args.text[err.start].encode("utf-8", "surrogateescape")
        raise ValueError(f"--text is not UTF-8 text (byte 0x{raw.hex()} at character {err.start + 1}): write it in UTF-8 (a terminal set to "
                         "UTF-8), or leave that character out") from None
    if args.query_site is not None and args.site != "same":
        raise ValueError(f"--query-site is used by --site same (the query's site), not with --site {args.site}: add --site same, or drop --query-site")
    filters, notice = resolve_site_condition(args.site, args.query_site)
    # the deploy app's checks of a query image (monai_cir.dicom.reader), for an image file: a blank or tiny image is not
    # answered, a greyscale one is, with a notice
    from monai_cir.data.preprocess import GREYSCALE_NOTICE, image_content_problem, is_grey, read_rgb

    with open(args.image, "rb") as f:  # a DICOM file has "DICM" after its 128-byte preamble
        if f.read(132)[128:] == b"DICM":
            raise ValueError(f"{args.image} is a DICOM file: `monai-cir search` reads image files (JPEG, PNG); a DICOM study is "
                             "answered by the deploy app (`python -m deploy_app -i STUDY_FOLDER -o OUT -m MODELS`, docs/deploy.md)")
    pixels = read_rgb(args.image)
    problem = image_content_problem(pixels)
    if problem is not None:
        raise ValueError(f"query image {args.image}: {problem}: not answered; send the dermoscopy image itself")
    image_notice = GREYSCALE_NOTICE if is_grey(pixels) else None
    index = load_index(args.index)
    net = load_model(args.model, device=resolve_device(args.device))
    calibration = None
    if args.evidence:
        from monai_cir.evidence import UNCALIBRATED, EvidenceCalibration, calibration_for_model

        calibration = EvidenceCalibration.load(args.calibration) if args.calibration else UNCALIBRATED
        calibration, mismatch = calibration_for_model(calibration, retrieval.model_fingerprint(net))
        if mismatch:
            print(f"warning: {args.calibration}: {mismatch}", file=sys.stderr)
    # the evidence summary votes over calibration.k neighbours (16 by default); the table shows -k, as the app does
    shown = retrieval.answer(net, index, pixels, args.text, k=args.k, filters=filters,
                             pool_size=calibration.k if calibration else 0, differential=args.differential)
    pool, hits, opened = shown.pool, shown.hits, shown.differential
    summary = None
    if calibration is not None and pool:
        from monai_cir.evidence import summarize_evidence

        library = index.info()["diagnosis"]
        searched = index.diagnosis_counts(filters) if filters else library  # a site condition's part of the library: the vote's base rate
        summary = summarize_evidence(pool, calibration=calibration, classes=sorted(library), library=searched)
    disagreement = retrieval.evidence_disagreement_notice(summary, shown)
    explanations: list[Any] = []
    if args.explain and hits:
        from monai_cir.explain import explain_matches, render_explanation

        missing = [h.case_id for h in hits if not h.metadata.image_path or not Path(h.metadata.image_path).is_file()]
        if missing:
            raise ValueError(f"--explain needs the library images, which are not reachable for cases {missing[:5]}")
        from monai_cir.dicom.reader import read_case_image

        explanations = explain_matches(  # the library images decoded as the index read them (DICOM files of a --dicom index)
            net, args.image, args.text, [read_case_image(h.metadata.image_path) for h in hits],
            labels=[f"#{h.rank} {h.case_id} ({h.metadata.diagnosis})" for h in hits], query_label=args.image.name,
        )
        render_explanation(explanations, args.explain)
    # an explanation scores the library file as it is now: one that no longer gives the score the case was ranked by
    # shows another image than the one indexed (the file was replaced since), which the figure cannot tell
    changed = [f"{h.case_id} ({e.score:.3f}, ranked by {h.score:.3f})" for h, e in zip(hits, explanations) if abs(e.score - h.score) > STALE_SCORE_GAP]
    stale_notice = (f"the library image of case(s) {', '.join(changed[:5])} no longer gives the score it was ranked by: the file changed "
                    "since it was indexed, and the explanation shows it as it is now; restore the file, or remove the case from the "
                    "index (monai-cir index remove) and add it again") if changed else None
    # the query's own case among the shown cases, or only among the evidence summary's votes (as the deploy app says it)
    own = _own_case(args.image, hits)  # the JSON's own_case names a shown case
    in_pool = own or (_own_case(args.image, pool) if summary is not None else None)
    own_notice = retrieval.own_case_notice(in_pool, shown, "the same image file", summarized=summary is not None)
    # the notes in the app's order (results.json's notices): the image, the text, the site, the order, the query's own case, the differential, the
    # evidence, what the image alone finds
    notes = [image_notice, *shown.text_notices, notice, shown.notice, shown.unlike_notice, own_notice, opened["notice"] if opened is not None else None,
             disagreement, shown.image_alone_notice, stale_notice]
    if hits and len(hits) < args.k:  # (-k 10 on a library of 6)
        notes.append(f"{len(hits)} of the {args.k} cases asked for (-k): the library has no more"
                     + (" that meet the site condition" if filters else ""))
    notes = [n for n in notes if n]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        payload = {
            "query": {"image": str(args.image), "text": args.text, "site": args.query_site, "condition": args.site},
            "filters": filters or {},
            "notice": notice,
            "text_use": shown.text_use,  # {"weight", "findings_read"}, as the app's results.json; None for an image-only query
            "notices": notes,  # every note printed, as the app's results.json lists them
            "index": str(args.index),
            "hits": [hit.to_dict() for hit in hits],
            "differential": opened,
            "own_case": None if own is None else own.case_id,  # the library case that is the query image itself (a note says so)
            "ranking": shown.ranking,  # how the hits are ordered: "similarity" or "similarity_and_diagnosis_prior" (the note says what that means)
            "evidence": summary.to_dict() if summary else None,
            "evidence_disagreement": disagreement,  # the evidence and the prior-ordered first case differ (why, in words)
            "image_alone": shown.image_alone,  # what the image finds without the text, when the text counted (as the app's results.json)
            "explanations": [e.summary() for e in explanations],
        }
        print(json.dumps(payload, indent=1, default=str))
        return 0
    if not hits:
        from monai_cir.index.base import filters_in_words

        print("no matching cases" + (f" with {filters_in_words(filters)}" if filters else "")
              + (f" (the index {args.index} holds no case)" if not len(index) else ""))
        return 0
    width = max(len("case id"), *(len(h.case_id) for h in hits))
    diag = max(len("diagnosis"), *(len(h.metadata.diagnosis) for h in hits))
    conf = max(len("confirmation"), *(len(h.metadata.confirmation) for h in hits))
    print(f"{'rank':>4}  {'case id':<{width}}  {'diagnosis':<{diag}}  {'confirmation':<{conf}}  {'score':>7}  site")
    for h in hits:
        print(f"{h.rank:>4}  {h.case_id:<{width}}  {h.metadata.diagnosis:<{diag}}  {h.metadata.confirmation:<{conf}}  {h.score:>7.4f}  {h.metadata.site}")
    if shown.image_alone:  # as the app's PDF says it
        from monai_cir.evidence import image_alone_sentence

        print(image_alone_sentence(shown.image_alone["counts"]))
    if summary:
        print(summary.text())
    if args.explain:
        print(f"explanations written to {args.explain}")
    return 0
