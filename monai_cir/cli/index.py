"""``monai-cir index build | add | remove | info``: embed a case library once, keep it up to date.

    monai-cir index build --collection isic-uda1 --out output/isic-index
    monai-cir index build --images DIR --csv cases.csv --out output/my-index
    monai-cir index build --dicom STUDIES_DIR --out output/pacs-index
    monai-cir index build --dicomweb http://pacs:8042/dicom-web --filter "StudyDescription=monai-cir case*" --out output/pacs-index
    monai-cir index build --collection derm7pt --out output/d7 --backend milvus --uri http://milvus:19530
    monai-cir index add output/pacs-index --dicom NEW_STUDIES_DIR       # new cases only, nothing re-embedded
    monai-cir index remove output/pacs-index CASE_ID [CASE_ID ...]       # e.g. consent withdrawn
    monai-cir index info output/isic-index
    monai-cir index fit-differential MODELS/index --model MODELS/model.pt   # the differential slot, fitted on this library

``add`` and ``remove`` save like ``build``: the new generation of files is committed by one atomic
rename of the manifest, so a crash part-way leaves the previous index as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]

logger = logging.getLogger(__name__)


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Where library cases come from (``build`` and ``add``), and the model that embeds them."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--collection", choices=("derm7pt", "isic-uda1"), help="a named collection under $MONAI_CIR_DATA")
    source.add_argument("--images", type=Path, metavar="DIR", help="a folder of images, described by --csv")
    source.add_argument("--dicom", type=Path, metavar="DIR", help="a folder of DICOM dermoscopy studies")
    source.add_argument("--dicomweb", metavar="URL", help="a DICOMweb service (QIDO-RS + WADO-RS), e.g. http://pacs:8042/dicom-web")
    parser.add_argument(
        "--csv", type=Path, metavar="FILE",
        # written out here (importing monai_cir.data would slow --help down); a test checks it names every status
        help="with --images: columns image, diagnosis (optional: case_id, text, site, confirmation = histopathology, follow-up, "
             "expert consensus or unknown; biopsy / histology / excision also mean histopathology, which --confirmed-only keeps). "
             "See docs/data.md",
    )
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="with --dicomweb: QIDO-RS study filter (repeatable), e.g. ModalitiesInStudy=DMS")
    parser.add_argument("--pull-to", type=Path, metavar="DIR", help="with --dicomweb: keep the pulled instances here (the app's PDF shows library thumbnails from them)")
    parser.add_argument(
        "--name",
        help="collection name recorded for the cases (default: with --images the CSV file's name without its extension; with --dicom "
             "/ --dicomweb the collection each case's SR records, else the folder's name / 'dicomweb')",
    )
    parser.add_argument("--model", help="checkpoint (.pt) or bundle folder; default $MONAI_CIR_MODEL, bundle/models/model.pt, else the offline default")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, metavar="N", help="index only the first N cases (a quick look)")
    parser.add_argument("--device", help="cuda, cpu... (default: CUDA when present)")
    parser.add_argument(
        "--confirmed-only", action="store_true",
        help="keep only histopathology-confirmed (biopsy-confirmed) cases: with --images, the CSV's confirmation column says which",
    )
    parser.add_argument(
        "--no-grid-maps", action="store_true",
        help="do not keep the library images' grid maps in <index>/grid_maps (~33 KB a case; the app's explanations then run a forward per match)",
    )


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("index", help="build, update or inspect a case-library index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="index_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    build = actions.add_parser("build", help="embed a case library and save its index")
    _add_source_arguments(build)
    build.add_argument("--out", type=Path, required=True, metavar="DIR", help="index folder to write")
    build.add_argument("--backend", choices=("faiss", "milvus"), default="faiss")
    build.add_argument("--uri", help="Milvus: a milvus-lite file (default <out>/milvus.db) or http://host:19530")
    build.add_argument("--milvus-collection", default="monai_cir_cases")
    build.add_argument("--exact-max", type=int, default=50_000, help="FAISS: exact search up to this many cases, approximate beyond")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index at --out (or Milvus collection)")
    build.set_defaults(func=run_build)

    add = actions.add_parser("add", help="embed new cases into an existing index (cases already there are kept, not re-embedded)")
    add.add_argument("index", type=Path, metavar="DIR")
    _add_source_arguments(add)
    add.set_defaults(func=run_add)

    remove = actions.add_parser("remove", help="remove cases by id (e.g. consent withdrawn)")
    remove.add_argument("index", type=Path, metavar="DIR")
    remove.add_argument("case_ids", nargs="+", metavar="CASE")
    remove.set_defaults(func=run_remove)

    fit = actions.add_parser(
        "fit-differential",
        help="fit the differential slot's margin on this library's own cases and record it in the checkpoint",
        description="Each library case (at most --sample) queries the others with its image alone; the margin at which the slot "
                    "opens for --open-rate of them is recorded in the checkpoint (extra['differential']), where the deploy app reads "
                    "it (monai_cir.differential). The checkpoint must be the one the index was built with; its weights are not changed. "
                    "Fit it on cases the model was not trained on: a training case sits closer to its own diagnosis than a new "
                    "query does, and a margin fitted on training cases opens the slot for far more new queries than the rate "
                    "(on Derm7pt 57-95% at 15%: bench/results/derm7pt_differential_refit.md). The training cases a checkpoint "
                    "records (trained_on: train.yaml writes them) stay in the library but do not query.",
    )
    fit.add_argument("index", type=Path, metavar="DIR")
    fit.add_argument("--model", required=True, type=Path, help="the checkpoint the index was built with (e.g. MODELS/model.pt): the margin is recorded in it")
    fit.add_argument("--open-rate", type=float, default=None, help="share of the library's own queries whose slot opens (default 0.15)")
    fit.add_argument("--sample", type=int, default=5000, help="at most this many library cases query (default 5000)")
    fit.set_defaults(func=run_fit_differential)

    info = actions.add_parser("info", help="describe a saved index")
    info.add_argument("index", type=Path, metavar="DIR")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--case-ids", action="store_true",
                      help="list the index's cases instead, one per line: case id, collection, diagnosis (tab-separated; with "
                      "--json, a list of objects): what `monai-cir index remove` takes")
    info.set_defaults(func=run_info)


def _parse_filters(items: list[str]) -> dict[str, str]:
    filters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--filter must be KEY=VALUE (a QIDO-RS attribute, e.g. ModalitiesInStudy=DMS), got {item!r}")
        filters[key.strip()] = value.strip()
    return filters


def _library(args: argparse.Namespace, skipped: list[Any] | None = None) -> tuple[list[Any], list[Any] | None]:
    """``(records, metadata or None)`` of the cases named by the source arguments; ``skipped`` gains the DICOM inputs
    that were reported and skipped (``--dicom``)."""
    from monai_cir import retrieval

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.images is not None and args.csv is None:
        raise ValueError("--images needs --csv describing the cases (columns image, diagnosis; optional case_id, text, site, confirmation)")
    if args.csv is not None and args.images is None:
        raise ValueError("--csv goes with --images DIR")
    if (args.filter or args.pull_to) and not args.dicomweb:
        raise ValueError("--filter and --pull-to go with --dicomweb URL")
    metadata = None
    if args.collection:
        from monai_cir.data import load_collection

        records: list[Any] = load_collection(args.collection)
    elif args.images is not None:
        from monai_cir.data import load_image_csv

        records = load_image_csv(args.images, args.csv, collection=args.name)
    elif args.dicomweb:
        records, metadata = retrieval.dicomweb_library(args.dicomweb, _parse_filters(args.filter), name=args.name, pull_to=args.pull_to, limit=args.limit)
    else:
        records, metadata = retrieval.dicom_library(args.dicom, args.name, problems_out=skipped)
    if args.confirmed_only:
        confirmations = [m.confirmation for m in metadata] if metadata is not None else [getattr(r, "confirmation", "unknown") for r in records]
        keep = [i for i, c in enumerate(confirmations) if c == "histopathology"]
        logger.info("--confirmed-only: %d of %d cases are histopathology-confirmed", len(keep), len(records))
        if not keep:
            raise ValueError(f"--confirmed-only: none of the {len(records)} cases is histopathology-confirmed; nothing to index. {_how_to_confirm(args, records)}")
        records = [records[i] for i in keep]
        metadata = [metadata[i] for i in keep] if metadata is not None else None
    if args.limit is not None:
        records = records[: args.limit]
        metadata = metadata[: args.limit] if metadata is not None else None
    return records, metadata


def _how_to_confirm(args: argparse.Namespace, records: list[Any]) -> str:
    """How a user marks a case of this source as histopathology-confirmed (the end of the --confirmed-only error)."""
    from monai_cir.data.collections import CONFIRMATION_WORDS

    words = " / ".join(CONFIRMATION_WORDS["histopathology"])
    if args.images is not None:
        has_column = any("confirmation" in (getattr(r, "metadata", None) or {}) for r in records)
        where = "no row of it says so now" if has_column else "the CSV has no such column"
        return f"Mark the biopsy-confirmed cases in {args.csv}'s 'confirmation' column with one of {words} ({where})"
    if args.collection:
        return f"{args.collection} records no histopathology-confirmed case"
    return (f"A case SR records it as its Diagnosis confirmation method; `monai-cir dicomize --images DIR --csv FILE` writes it "
            f"from the CSV's 'confirmation' column ({words})")


def _refuse_a_foreign_folder(out: Path) -> None:
    """The FAISS save's refusal (monai_cir.index.base.write_generation), run before embedding: a user's
    folder of other files is refused before an hour of embedding, and before grid maps are written into it."""
    from monai_cir.index import MANIFEST_NAME
    from monai_cir.index.base import GRID_STORE_DIR

    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; choose a folder for the index")
    # a folder that cannot be written is found now, not after the embedding (which would be lost)
    from monai_cir.atomic import check_writable_folder

    check_writable_folder(out, "--out")
    if out.is_dir() and not (out / MANIFEST_NAME).is_file() and any(p.name != GRID_STORE_DIR for p in out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no monai-cir index; choose a new or empty folder for --out")


def run_build(args: argparse.Namespace) -> int:
    from monai_cir import retrieval
    from monai_cir.config import resolve_device
    from monai_cir.index import MANIFEST_NAME
    from monai_cir.index.base import GRID_STORE_DIR, verify_saved
    from monai_cir.networks import load_model, refresh_encoder_artifact

    if (args.out / MANIFEST_NAME).is_file() and not args.overwrite:
        raise ValueError(f"{args.out} already holds an index; pass --overwrite to replace it, or `monai-cir index add {args.out} ...` to add cases")
    if args.backend == "faiss" and (args.uri or args.milvus_collection != "monai_cir_cases"):
        raise ValueError("--uri and --milvus-collection apply to --backend milvus")
    if args.backend == "faiss":  # a Milvus folder may hold its milvus-lite file beside other things (its save allows it)
        _refuse_a_foreign_folder(args.out)
    skipped: list[Any] = []
    records, metadata = _library(args, skipped)
    net = load_model(args.model, device=resolve_device(args.device))
    if args.backend == "milvus":
        options: dict[str, Any] = {"uri": args.uri or str(args.out / "milvus.db"), "collection": args.milvus_collection, "overwrite": args.overwrite}
    else:
        options = {"exact_max": args.exact_max}
    logger.info("embedding %d cases at %d px (batch %d)", len(records), net.image_size, args.batch_size)
    index = retrieval.build_index(
        net, records, metadata, batch_size=args.batch_size, backend=args.backend,
        grid_store=None if args.no_grid_maps else args.out / GRID_STORE_DIR, **options,
    )
    index.save(args.out)
    verify_saved(args.out)  # what was written is checked now, not at search time (its files' sizes and checksums)
    refresh_encoder_artifact(net, args.out)  # after the save: the index folder must be empty before it
    print(f"indexed {len(index)} cases ({args.backend}, dim {index.dim}) -> {args.out}"
          + (f"; {len(skipped)} DICOM input(s) skipped, not indexed (the warnings above say why; first: {skipped[0]})" if skipped else ""))
    return 0


def run_add(args: argparse.Namespace) -> int:
    from monai_cir.atomic import exclusive_lock
    from monai_cir.config import resolve_device
    from monai_cir.networks import load_model

    net = load_model(args.model, device=resolve_device(args.device))
    # from reading the index to saving it, no other add / remove may save it: the later save would undo the other's
    # (a case removed for withdrawn consent coming back with the add's save)
    with exclusive_lock(args.index, "index add / remove read and save it whole"):
        return _add(args, net)


def _add(args: argparse.Namespace, net: Any) -> int:
    from monai_cir import retrieval
    from monai_cir.index import load_index
    from monai_cir.index.base import GRID_STORE_DIR, verify_saved
    from monai_cir.networks import refresh_encoder_artifact

    # refuse an index of another model before embedding anything
    index = load_index(args.index, expected_fingerprint=retrieval.model_fingerprint(net))
    skipped: list[Any] = []
    records, metadata = _library(args, skipped)
    skipped_note = f"; {len(skipped)} DICOM input(s) skipped, not added (the warnings above say why; first: {skipped[0]})" if skipped else ""
    if metadata is None:
        metadata = [retrieval.record_metadata(r) for r in records]
    new = [i for i, m in enumerate(metadata) if m.case_id not in index]
    if len(new) < len(records):
        logger.info("%d of %d cases are already in the index: kept as they are", len(records) - len(new), len(records))
        _warn_changed_cases(args.index, index, [m for m in metadata if m.case_id in index])
    if not new:
        refresh_encoder_artifact(net, args.index)  # an index built before the artifact existed gains one
        print(f"no new cases: the index {args.index} keeps its {len(index)} cases{skipped_note}")
        return 0
    retrieval.build_index(
        net, [records[i] for i in new], [metadata[i] for i in new], batch_size=args.batch_size, index=index,
        grid_store=None if args.no_grid_maps else args.index / GRID_STORE_DIR,
    )
    index.save(args.index)  # atomic: a crash before the manifest rename leaves the previous index
    verify_saved(args.index)
    refresh_encoder_artifact(net, args.index)  # kept when it is already for this network
    print(f"added {len(new)} cases -> {args.index} ({len(index)} cases){skipped_note}")
    return 0


# the first this many changed cases are named (the count of the others follows)
MAX_LISTED_CASES = 5


# where a case is and which run named it, not what its source row says: a CSV of another name (its stem is the
# default collection) or an images folder moved since would otherwise flag every kept case
NOT_COMPARED = ("collection", "image_path", "retrieve_url")


def _differences(stored: Any, given: Any) -> dict[str, tuple[Any, Any]]:
    """``{field: (stored value, given value)}`` where two CaseMetadata differ (a standard field, else a key of ``extra``;
    ``image`` when both image files can be read and hold other bytes: the same case id given to another image, as file
    names that restart each month give it)."""
    from monai_cir.atomic import sha256_file

    changed_image: dict[str, tuple[Any, Any]] = {}
    if stored.image_path and given.image_path and stored.image_path != given.image_path:
        try:
            if Path(stored.image_path).stat().st_size != Path(given.image_path).stat().st_size or sha256_file(stored.image_path) != sha256_file(given.image_path):
                tail = lambda path: "/".join(Path(path).parts[-2:])  # noqa: E731 (the folder and name tell two batches apart)
                changed_image["image"] = (tail(stored.image_path), f"{tail(given.image_path)}, another image")
        except OSError:  # the stored file moved or is gone: nothing to compare
            pass
    old, new = stored.to_dict(), given.to_dict()
    old_extra, new_extra = old.pop("extra"), new.pop("extra")
    changed = {key: (old[key], new[key]) for key in old if key not in NOT_COMPARED and old[key] != new.get(key)}
    for key in sorted(set(old_extra) | set(new_extra)):
        # "label" is the class's position among the source's classes: another new class shifts it, the diagnosis does not change
        # "case_id": the CSV's own column, which a batch without it lacks; the case's id is the same by definition here
        if key not in ("label", "case_id") and key not in changed and old_extra.get(key) != new_extra.get(key):
            changed[key] = (old_extra.get(key), new_extra.get(key))
    return {**changed_image, **changed}


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _warn_changed_cases(where: Path, index: Any, given: list[Any]) -> None:
    """Warn about the cases ``add`` keeps whose source now says something else (a corrected diagnosis...):
    ``add`` never changes a stored case, so a corrected CSV would otherwise be ignored without a word."""
    changed = [(meta.case_id, diff) for meta in given if (diff := _differences(index.get(meta.case_id), meta))]
    if not changed:
        return
    listed = "; ".join(
        f"{case_id} (" + ", ".join(f"{key} {_short(old)} -> {_short(new)}" for key, (old, new) in diff.items()) + ")"
        for case_id, diff in changed[:MAX_LISTED_CASES]
    )
    more = f"; and {len(changed) - MAX_LISTED_CASES} more" if len(changed) > MAX_LISTED_CASES else ""
    ids = " ".join(case_id for case_id, _ in changed[:20]) + (" ..." if len(changed) > 20 else "")
    logger.warning(
        "%d case(s) already in the index differ from their source row and were kept as the index stores them (index -> source): %s%s. "
        "`index add` never changes a stored case: to update them, remove them (monai-cir index remove %s %s) and run this "
        "`index add` again, which embeds them anew from the source%s",
        len(changed), listed, more, where, ids,
        ("; a case whose image is another one is another case under the same id (file names that restart, e.g. IMG_0001.jpg "
         "each month): give the CSV a case_id column of ids unique across the library, and add them again") if any("image" in diff for _, diff in changed) else "",
    )


def run_remove(args: argparse.Namespace) -> int:
    from monai_cir.atomic import exclusive_lock
    from monai_cir.grid_store import GridMapStore
    from monai_cir.index import load_index
    from monai_cir.index.base import GRID_STORE_DIR, verify_saved

    with exclusive_lock(args.index, "index add / remove read and save it whole"):  # see run_add
        index = load_index(args.index)
        case_ids = list(dict.fromkeys(args.case_ids))
        missing = [c for c in case_ids if c not in index]
        if missing:
            raise ValueError(f"{len(missing)} case id(s) are not in {args.index}: {missing[:10]}; nothing was removed (`monai-cir index info {args.index} --case-ids` lists the index's cases)")
        removed = set(case_ids)
        paths = {index.get(c).image_path for c in removed} - {None}
        kept = {index.get(c).image_path for c in index.case_ids() if c not in removed}
        index.remove(case_ids)
        index.save(args.index)
        verify_saved(args.index)
        # what the index folder keeps of a removed case's image (its path, its feature maps) goes with it: a case is
        # removed when its consent is withdrawn
        dropped = GridMapStore.drop(args.index / GRID_STORE_DIR, index.fingerprint, paths - kept)
    print(f"removed {len(case_ids)} cases -> {args.index} ({len(index)} cases)" + (f"; their grid maps dropped ({dropped})" if dropped else ""))
    return 0


def run_fit_differential(args: argparse.Namespace) -> int:
    from monai_cir import retrieval
    from monai_cir.differential import DEFAULT_OPEN_RATE, DEFAULT_RANK, DifferentialSlot, fit_margin, library_margins
    from monai_cir.index import load_index
    from monai_cir.networks import load_model
    from monai_cir.networks.checkpoint import read_checkpoint, record_in_checkpoint

    rate = DEFAULT_OPEN_RATE if args.open_rate is None else args.open_rate
    if not 0 < rate < 1:
        raise ValueError(f"--open-rate must lie in (0, 1), got {rate}")
    if args.sample < 10:
        raise ValueError(f"--sample must be >= 10, got {args.sample}")
    if not args.model.is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.model} (give the .pt file the index was built with)")
    # refuse an index of another model: the margin is in this model's score units
    index = load_index(args.index, expected_fingerprint=retrieval.model_fingerprint(load_model(args.model)))
    extra = read_checkpoint(args.model)["extra"]
    previous = DifferentialSlot.from_checkpoint_info(extra)
    rank = previous.rank if previous is not None else DEFAULT_RANK
    # the model's own training cases (recorded by train.yaml) stay in the library but do not query; a case is
    # (collection, case id) when the checkpoint records the collection it trained on, else its case id alone
    from monai_cir.engine.bundle import trained_overlap

    library = [index.get(case_id) for case_id in index.case_ids()]
    positions, by_collection = trained_overlap(extra, library)
    trained = {library[i].case_id for i in positions}
    if trained:
        if by_collection:
            how = f"their collection {extra['trained_collection']!r} and case id"
        elif extra.get("trained_collection"):
            how = (f"case id alone: no library case is of the collection it trained on ({extra['trained_collection']!r}; a "
                   "collection's name is the one a run gave it), so cases of another collection with the same ids count too")
        else:
            how = ("case id alone: the checkpoint does not record the collection it trained on, so a case of another collection with "
                   "the same id counts too")
        print(f"note: {len(trained)} of the {len(index)} library cases trained this model (matched by {how}): they do not query "
              "(a training case sits closer to its own diagnosis than a new query does)", file=sys.stderr)
    margins, positions, queried = library_margins(index, sample=args.sample, rank=rank, exclude=trained)
    fitted = fit_margin(margins, positions, rate, rank)
    description = (f"fitted on {queried} image-only leave-one-out queries of the library {args.index} ({len(index)} cases"
                   + (f", {len(trained)} training cases of this model left out)" if trained else ")"))
    has_prior = bool(read_checkpoint(args.model)["config"].get("diagnosis_prior"))
    if has_prior and (previous is None or previous.margin_by_similarity is None):
        raise ValueError(f"{args.model} ranks with a diagnosis prior: the slot's margin for queries whose text names findings is in the "
                         "prior ranking's units and is fitted on texts (bench/differential_slot.py --prior --write-checkpoint); this "
                         "command fits only the margin of queries without findings, and the checkpoint records no slot to keep beside it; the "
                         "model ranks without the slot (a model trained with --prior_strength 0 gets one from this command)")
    if has_prior:
        # image-only queries are the ones the diagnosis prior leaves alone (ranked by S): this fit is their margin; the
        # margin of queries whose text the prior orders stays the checkpoint's (it needs texts with findings to fit)
        slot = dataclasses.replace(previous, margin_by_similarity=fitted, open_rate=rate,
                                   description=f"{description} for queries without findings; for the others: {previous.description}")
        was = f" (was {previous.margin_by_similarity:.4f}; the margin of queries the diagnosis prior orders stays {previous.margin:.4f})"
    else:
        slot = DifferentialSlot(fitted, rank=rank, open_rate=rate, description=description)
        was = f" (was {previous.margin:.4f}: {previous.description})" if previous is not None else ""
    record_in_checkpoint(args.model, differential=slot.to_dict())
    print(f"differential slot: margin {fitted:.4f} at open rate {rate:g} over {queried} cases of {args.index}{was} -> recorded in {args.model}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from monai_cir.index import load_index, read_manifest

    manifest = read_manifest(args.index)
    index = load_index(args.index)
    if args.case_ids:  # (a consent withdrawn: which id to remove)
        cases = [index.get(case_id) for case_id in index.case_ids()]
        if args.json:
            print(json.dumps([{"case_id": c.case_id, "collection": c.collection, "diagnosis": c.diagnosis} for c in cases], indent=1))
        else:
            for case in cases:
                print(f"{case.case_id}\t{case.collection}\t{case.diagnosis}")
        return 0
    info = index.info()
    info["options"] = manifest.get("options", {})
    info["files"] = {role: {"name": f["name"], "bytes": f["bytes"]} for role, f in manifest.get("files", {}).items()}
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    print(f"index {args.index}: {info['cases']} cases, {info['backend']}, dim {info['dim']}")
    print(f"  model fingerprint {info['fingerprint']}")
    if info.get("search"):
        print(f"  search: {info['search']}")
    for key in ("diagnosis", "site", "collection"):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(info[key].items(), key=lambda kv: -kv[1]))
        print(f"  {key}: {counts}")
    for key, value in info["options"].items():
        print(f"  {key}: {value}")
    return 0
