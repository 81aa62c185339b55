"""``monai-cir train``: train the composed-retrieval head on a held-out fold or on all cases (Derm7pt's 888: the release model), of Derm7pt or of your own --images/--csv.

This runs the bundle's own training config, ``bundle/configs/train.yaml`` (MONAI ``ConfigWorkflow``): the
same dataset, sampler, network, loss, optimizer, handlers and saver nodes as
``python -m monai.bundle run --config_file bundle/configs/train.yaml --bundle_root bundle --fold N``;
the options below are overrides of that config's ids. CPU default: the frozen encoders' outputs are cached
once (git-ignored cache folder) and the composers / region masks / projections train on the cache
(SupCon, Adam 1e-4 / wd 1e-5, up to 100 epochs, early stopping patience 30 on an inner validation split,
the findings gate on query texts), then the late-fusion branch of the release network (full batch, 200 epochs;
``--late-fusion-share 0``: the paper's network alone). ``--fold all`` writes the release checkpoint
(``bundle/models/model.pt``) with the encoder fingerprint.

``--images DIR --csv FILE`` (the input ``monai-cir index build`` takes) trains on your own collection instead:
``--fold all`` on every case, ``--fold k`` holding out fold k of 5 folds stratified by diagnosis (seed 0, CSV order;
each patient's or lesion's images in one fold when the CSV has a ``patient_id`` or ``lesion_id`` column);
the checkpoint goes to ``output/<collection>/`` (git-ignored). An existing checkpoint is never replaced without
``--overwrite`` (checked before anything runs); the stages write ``<checkpoint>.<process id>.partial``, renamed
onto the checkpoint when all are done, so an interrupted run leaves the previous file as it was (and a run that
finds the checkpoint written by another run since it began keeps its own at the ``.partial`` path, and says so).

``--finetune`` trains end to end instead (the bundle's ``finetune.yaml`` over ``train.yaml``: encoders unfrozen, augmented
images, a fixed epoch count; meant for a GPU, about 2 minutes per epoch of 710 images at 260 px on 2 CPU cores);
``--config A.yaml B.yaml`` runs any configs layered in that order, as ``python -m monai.bundle run --config_file "['A','B']"``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run", "BUNDLE_DIR"]

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundle"
OWN_DATA_DIR = Path("output")  # git-ignored: a model of your own data never lands on the tracked release model
NUM_FOLDS = 5  # monai_cir.data.folds.NUM_FOLDS (not imported: `monai-cir --help` stays fast)


def _fold(text: str) -> str | int:
    """``--fold``: a held-out fold 0..4 or ``all``."""
    if text.strip().lower() == "all":
        return "all"
    try:
        fold = int(text)
    except ValueError:
        fold = -1
    if not 0 <= fold < NUM_FOLDS:
        raise argparse.ArgumentTypeError(f"invalid fold {text!r}: choose a held-out fold 0-{NUM_FOLDS - 1}, or 'all' (every case: the release model)")
    return fold


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train the retrieval head on a Derm7pt fold or on all cases (or on your own --images/--csv)", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fold", type=_fold, default="all", help="held-out fold 0..4, or 'all' for the release model (default)")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint path (default bundle/models/model.pt, or model_fold<k>.pt; with --images output/<collection>/model.pt or model_fold<k>.pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out (default: refuse, before any training)")
    parser.add_argument("--images", type=Path, metavar="DIR", help="train on your own collection: a folder of images, described by --csv")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        # written out here (importing monai_cir.data would slow --help down); a test checks it names every status
                        help="with --images: columns image, diagnosis (optional: case_id, text, site, confirmation = histopathology, "
                             "follow-up, expert consensus or unknown; biopsy / histology / excision also mean histopathology). See docs/data.md")
    parser.add_argument("--image-size", type=int, default=None, help="preprocessing size (default: the config's, 260; 512 = the paper's)")
    parser.add_argument("--beta", type=float, default=None, help="beta of Eq. 9 (default: the config's, 0.6)")
    parser.add_argument("--num-masks", type=int, default=None, help="k region masks (Eq. 6; default: the config's, 4)")
    parser.add_argument("--levels", nargs="+", default=None, help="feature levels (default: the config's, L M H)")
    parser.add_argument("--text-gate", choices=("findings", "none"), default=None, help="query text gate (default: the config's, findings)")
    parser.add_argument("--full-text-findings", type=int, default=None, choices=range(1, 8), metavar="N",
                        help="findings (1-7) that give a query text its full weight; fewer blend it with the image-only query (default: the config's, 5)")
    parser.add_argument("--late-fusion-share", type=float, default=None, metavar="A",
                        help="share of the late-fusion branch in the score, S = (1 - A) S_Eq9 + A S_late_fusion (default: the config's, 0.5; 0 = the paper's network)")
    parser.add_argument("--prior-strength", type=float, default=None, metavar="LAMBDA",
                        help="strength of the diagnosis prior in the ranking, S + LAMBDA w log p(y|q) (default: the config's, 10; "
                        "0 = no prior: a diagnosis with a single training case needs it)")
    parser.add_argument("--text-variants", type=int, default=None, help="training re-wordings per case (default: the config's, 0 = template texts only)")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: the config's, 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the run: the head's initialisation, batches and flips, the inner validation split, "
                             "the late-fusion branch and the prior's inner CV (default 0; the folds do not depend on it)")
    parser.add_argument("--log-dir", type=Path, default=Path("runs/train"), help="TensorBoard event files (default runs/train)")
    parser.add_argument("--data-root", type=Path, default=None, help="data root (default $MONAI_CIR_DATA or ../shared/data)")
    parser.add_argument("--finetune", action="store_true",
                        help="end-to-end fine-tuning: the bundle's finetune.yaml over train.yaml (encoders unfrozen, augmented images, "
                             "6 epochs unless --epochs; meant for a GPU)")
    parser.add_argument("--config", type=Path, nargs="+", default=[BUNDLE_DIR / "configs" / "train.yaml"],
                        help="the training config, or configs layered in this order (an overlay such as finetune.yaml after train.yaml; "
                             "default: the bundle's train.yaml)")
    parser.set_defaults(func=run)
    return parser


def overrides(args: argparse.Namespace, records: Sequence[Any] | None = None) -> dict[str, object]:
    """The config-id overrides the command-line options stand for (unset options keep the config's value);
    ``records``: the cases of ``--images``/``--csv`` (their collection names the feature cache)."""
    fold = -1 if args.fold == "all" else int(args.fold)
    name = "model.pt" if fold < 0 else f"model_fold{fold}.pt"
    out = args.out or (OWN_DATA_DIR / records[0].collection / name if records else BUNDLE_DIR / "models" / name)
    # paths go in absolute: MONAI's config parser reads a value that starts with "$" as Python to run, "@" as a
    # reference and "%" as a macro (a relative path such as "$HOME/x" would run as code)
    values: dict[str, object] = {
        "bundle_root": str(BUNDLE_DIR), "fold": fold, "seed": int(args.seed), "checkpoint": str(Path(out).absolute()),
        "log_dir": str(Path(args.log_dir).absolute()),
        "overwrite": bool(getattr(args, "overwrite", False)),
        # a tuple: the config parser keeps it as one value (a list it would parse item by item)
        "records": tuple(records) if records else None, "cache_name": records[0].collection if records else None,
        "image_size": args.image_size, "max_epochs": args.epochs, "dataset_dir": str(Path(args.data_root).absolute()) if args.data_root else None,
        "network_def#beta": args.beta, "network_def#num_masks": args.num_masks, "network_def#levels": args.levels,
        "text_gate": args.text_gate, "full_text_findings": args.full_text_findings, "text_variants": args.text_variants,
        "late_fusion_share": args.late_fusion_share, "prior_strength": getattr(args, "prior_strength", None),
    }
    for key, value in values.items():
        if isinstance(value, str) and value[:1] in ("$", "@", "%"):
            what = "the CSV's file name (the collection's name)" if key == "cache_name" else key
            raise ValueError(f"{what} {value!r} starts with {value[0]!r}, which the training config would read as "
                             f"{'code to run' if value[0] == '$' else 'a reference'}: rename it")
    return {k: v for k, v in values.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import torch
    from monai.bundle import ConfigWorkflow

    from ..engine.bundle import check_checkpoint_target

    config_files = list(args.config) + ([BUNDLE_DIR / "configs" / "finetune.yaml"] if args.finetune else [])
    for config in config_files:
        if not config.is_file():
            raise ValueError(f"training config not found: {config} (run from a monai-cir checkout, or pass --config)")
    if (args.images is None) != (args.csv is None):
        raise ValueError("--images DIR and --csv FILE go together (a folder of images and the CSV describing them: columns image, diagnosis)")
    records = None
    if args.images is not None:
        from ..data.collections import load_image_csv

        records = load_image_csv(args.images, args.csv)
    values = overrides(args, records)
    check_checkpoint_target(values["checkpoint"], args.overwrite, flag="--overwrite", elsewhere="--out PATH")  # before anything runs
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    configs = config_files[0].parent
    workflow = None
    try:
        workflow = ConfigWorkflow(config_file=[str(c) for c in config_files], meta_file=str(configs / "metadata.json"),
                                  logging_file=str(configs / "logging.conf"), workflow_type="train", **values)
        workflow.initialize()
        workflow.run()
    except RuntimeError as err:
        raise _user_error(err) or err
    except KeyError as err:  # an id the configs do not define: an overlay given alone, or a config of another layout
        names = " ".join(c.name for c in config_files)
        missing = str(err.args[0]).removeprefix("query key: ") if err.args else "an id"
        raise ValueError(f"the config(s) {names} do not define {missing!r}: an overlay such as finetune.yaml goes after train.yaml "
                         "(--config train.yaml finetune.yaml, or --finetune)") from err
    finally:
        if workflow is not None:
            workflow.finalize()
    print(json.dumps({"checkpoint": values["checkpoint"], "fold": args.fold, "seconds": round(time.perf_counter() - start, 1)}, indent=2))
    return 0


def _user_error(err: BaseException) -> Exception | None:
    """The bad-input error (``ValueError`` / ``FileNotFoundError``, e.g. Derm7pt not found, a diagnosis with too few
    cases; ``FileExistsError``: another run wrote the checkpoint meanwhile) that MONAI wrapped in its ``RuntimeError("Failed to evaluate ConfigExpression ...")``, or None."""
    seen = set()
    cause = err.__cause__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, (ValueError, FileNotFoundError, FileExistsError)):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__
    return None
