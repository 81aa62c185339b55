"""``monai-cir dicomize``: a collection (or a folder of images + CSV) -> DICOM studies, one per case."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dicomize",
        help="convert a collection into DICOM studies (Dermoscopic Photography image + SR with the text)",
        description=(
            "One study per case: the image as Dermoscopic Photography Image Storage (a baseline JPEG is carried "
            "as-is, anything else uncompressed) and a Comprehensive SR with the case text, its diagnosis (SNOMED CT), "
            "how the diagnosis was confirmed (histopathology, follow-up, expert consensus or unknown) and its case id. "
            "Patients are pseudonymous (CIR-<hash of collection/case id>); UIDs are deterministic. "
            "Derived from the data: write to a git-ignored folder."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--collection", choices=("isic-uda1", "derm7pt"), help="a built-in collection under $MONAI_CIR_DATA")
    source.add_argument("--images", metavar="DIR", help="a folder of images (with --csv)")
    parser.add_argument("--csv", metavar="FILE", help="the CSV describing --images (see monai_cir.data.load_image_csv)")
    parser.add_argument("--root", metavar="DIR", help="data root (default: $MONAI_CIR_DATA or ../shared/data)")
    parser.add_argument("--out", metavar="DIR", required=True, help="output folder (one sub-folder per case)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N cases")
    parser.add_argument("--case", action="append", metavar="ID", help="only these case ids (repeatable)")
    parser.add_argument("--compression", choices=("jpeg", "none"), default="jpeg", help="jpeg: carry baseline JPEGs as-is (default); none: uncompressed")
    parser.add_argument("--no-diagnosis", action="store_true", help="leave the diagnosis and its confirmation out of the SR (query studies)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..dicom.dicomize import dicomize_records

    if args.images and not args.csv:
        raise ValueError("--images needs --csv")
    if args.csv and not args.images:
        raise ValueError("--csv goes with --images")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    from ..atomic import check_writable_folder
    from ..data.collections import load_collection, load_image_csv

    check_writable_folder(args.out, "--out")  # one line now, not one error per case

    records = load_collection(args.collection, root=args.root) if args.collection else load_image_csv(args.images, args.csv)
    if args.case:
        wanted = set(args.case)
        records = [r for r in records if r.case_id in wanted]
        missing = wanted - {r.case_id for r in records}
        if missing:
            raise ValueError(f"case ids not in the collection: {sorted(missing)}")
    if args.limit:
        records = records[: args.limit]
    done, failed = dicomize_records(
        records, args.out, compression=args.compression, include_diagnosis=not args.no_diagnosis, progress=not args.no_progress
    )
    print(f"{len(done)} studies written to {args.out}" + (f"; {len(failed)} cases failed" if failed else ""))
    for case_id, error in failed:
        print(f"  {case_id}: {error}")
    return 1 if failed and not done else 0
