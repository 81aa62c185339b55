"""``monai-cir index build | info``: embed a case library once and save its index.

    monai-cir index build --collection isic-uda1 --out output/isic-index
    monai-cir index build --images DIR --csv cases.csv --out output/my-index
    monai-cir index build --dicom STUDIES_DIR --out output/pacs-index
    monai-cir index build --collection derm7pt --out output/d7 --backend milvus --uri http://milvus:19530
    monai-cir index info output/isic-index
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("index", help="build or inspect a case-library index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="index_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    build = actions.add_parser("build", help="embed a case library and save its index")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--collection", choices=("derm7pt", "isic-uda1"), help="a named collection under $MONAI_CIR_DATA")
    source.add_argument("--images", type=Path, metavar="DIR", help="a folder of images, described by --csv")
    source.add_argument("--dicom", type=Path, metavar="DIR", help="a folder of DICOM dermoscopy studies")
    build.add_argument("--csv", type=Path, metavar="FILE", help="with --images: columns image, diagnosis (optional: case_id, text, site)")
    build.add_argument("--name", help="collection name recorded for --images / --dicom cases (default: the folder name)")
    build.add_argument("--out", type=Path, required=True, metavar="DIR", help="index folder to write")
    build.add_argument("--model", help="checkpoint (.pt) or bundle folder; default $MONAI_CIR_MODEL, bundle/models/model.pt, else the offline default")
    build.add_argument("--batch-size", type=int, default=16)
    build.add_argument("--limit", type=int, metavar="N", help="index only the first N cases (a quick look)")
    build.add_argument("--confirmed-only", action="store_true", help="keep only histopathology-confirmed (biopsy-confirmed) cases")
    build.add_argument("--device", help="cuda, cpu... (default: CUDA when present)")
    build.add_argument("--backend", choices=("faiss", "milvus"), default="faiss")
    build.add_argument("--uri", help="Milvus: a milvus-lite file (default <out>/milvus.db) or http://host:19530")
    build.add_argument("--milvus-collection", default="monai_cir_cases")
    build.add_argument("--exact-max", type=int, default=50_000, help="FAISS: exact search up to this many cases, approximate beyond")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index at --out (or Milvus collection)")
    build.set_defaults(func=run_build)

    info = actions.add_parser("info", help="describe a saved index")
    info.add_argument("index", type=Path, metavar="DIR")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=run_info)


def run_build(args: argparse.Namespace) -> int:
    from monai_cir import retrieval
    from monai_cir.index import MANIFEST_NAME, CaseIndex
    from monai_cir.networks import load_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.images is not None and args.csv is None:
        raise ValueError("--images needs --csv describing the cases (columns image, diagnosis; optional case_id, text, site)")
    if args.csv is not None and args.images is None:
        raise ValueError("--csv goes with --images DIR")
    if (args.out / MANIFEST_NAME).is_file() and not args.overwrite:
        raise ValueError(f"{args.out} already holds an index; pass --overwrite to replace it")
    if args.backend == "faiss" and (args.uri or args.milvus_collection != "monai_cir_cases"):
        raise ValueError("--uri and --milvus-collection apply to --backend milvus")

    metadata = None
    if args.collection:
        from monai_cir.data import load_collection

        records: list[Any] = load_collection(args.collection)
    elif args.images is not None:
        from monai_cir.data import load_image_csv

        records = load_image_csv(args.images, args.csv, collection=args.name)
    else:
        records, metadata = retrieval.dicom_library(args.dicom, args.name)
    if args.confirmed_only:
        confirmations = [m.confirmation for m in metadata] if metadata is not None else [getattr(r, "confirmation", "unknown") for r in records]
        keep = [i for i, c in enumerate(confirmations) if c == "histopathology"]
        logger.info("--confirmed-only: %d of %d cases are histopathology-confirmed", len(keep), len(records))
        if not keep:
            raise ValueError("--confirmed-only: none of the cases is histopathology-confirmed; nothing to index")
        records = [records[i] for i in keep]
        metadata = [metadata[i] for i in keep] if metadata is not None else None
    if args.limit is not None:
        records = records[: args.limit]
        metadata = metadata[: args.limit] if metadata is not None else None

    net = load_model(args.model)
    if args.backend == "milvus":
        options: dict[str, Any] = {"uri": args.uri or str(args.out / "milvus.db"), "collection": args.milvus_collection, "overwrite": args.overwrite}
    else:
        options = {"exact_max": args.exact_max}
    logger.info("embedding %d cases at %d px (batch %d)", len(records), net.image_size, args.batch_size)
    index = retrieval.build_index(net, records, metadata, batch_size=args.batch_size, device=args.device, backend=args.backend, **options)
    index.save(args.out)
    CaseIndex.load(args.out)  # read back what was written: a failed check is reported now, not at search time
    print(f"indexed {len(index)} cases ({args.backend}, dim {index.dim}) -> {args.out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from monai_cir.index import CaseIndex, read_manifest

    manifest = read_manifest(args.index)
    info = CaseIndex.load(args.index).info()
    info["options"] = manifest.get("options", {})
    info["files"] = {role: {"name": f["name"], "bytes": f["bytes"]} for role, f in manifest.get("files", {}).items()}
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    print(f"index {args.index}: {info['cases']} cases, {info['backend']}, dim {info['dim']}")
    print(f"  model fingerprint {info['fingerprint']}")
    for key in ("diagnosis", "site", "collection"):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(info[key].items(), key=lambda kv: -kv[1]))
        print(f"  {key}: {counts}")
    for key, value in info["options"].items():
        print(f"  {key}: {value}")
    return 0
