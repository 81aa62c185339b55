"""``monai-cir train``: train the composed-retrieval head on one Derm7pt fold, or on all 888 cases (release).

This runs the bundle's own training config, ``bundle/configs/train.yaml`` (MONAI ``ConfigWorkflow``): the
same dataset, sampler, network, loss, optimizer, handlers and saver nodes as
``python -m monai.bundle run --config_file bundle/configs/train.yaml --bundle_root bundle --fold N``;
the options below are overrides of that config's ids. CPU default: the frozen encoders' outputs are cached
once (git-ignored cache folder) and the composers / region masks / projections train on the cache
(SupCon, Adam 1e-4 / wd 1e-5, up to 100 epochs, early stopping patience 30 on an inner validation split,
the findings gate on query texts), then the late-fusion branch of the release network (full batch, 200 epochs;
``--late-fusion-share 0``: the paper's network alone). ``--fold all`` writes the release checkpoint
(``bundle/models/model.pt``) with the encoder fingerprint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run", "BUNDLE_DIR"]

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "bundle"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train the retrieval head on a Derm7pt fold or on all cases", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fold", default="all", help="held-out fold 0..4, or 'all' for the release model (default)")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint path (default bundle/models/model.pt, or model_fold<k>.pt)")
    parser.add_argument("--image-size", type=int, default=None, help="preprocessing size (default: the config's, 260; 512 = the paper's)")
    parser.add_argument("--beta", type=float, default=None, help="beta of Eq. 9 (default: the config's, 0.6)")
    parser.add_argument("--num-masks", type=int, default=None, help="k region masks (Eq. 6; default: the config's, 4)")
    parser.add_argument("--levels", nargs="+", default=None, help="feature levels (default: the config's, L M H)")
    parser.add_argument("--text-gate", choices=("findings", "none"), default=None, help="query text gate (default: the config's, findings)")
    parser.add_argument("--full-text-findings", type=int, default=None, choices=range(1, 8), metavar="N",
                        help="findings (1-7) that give a query text its full weight; fewer blend it with the image-only query (default: the config's, 5)")
    parser.add_argument("--late-fusion-share", type=float, default=None, metavar="A",
                        help="share of the late-fusion branch in the score, S = (1 - A) S_Eq9 + A S_late_fusion (default: the config's, 0.5; 0 = the paper's network)")
    parser.add_argument("--text-variants", type=int, default=None, help="training re-wordings per case (default: the config's, 0 = template texts only)")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: the config's, 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", type=Path, default=Path("runs/train"), help="TensorBoard event files (default runs/train)")
    parser.add_argument("--data-root", type=Path, default=None, help="data root (default $MONAI_CIR_DATA or ../shared/data)")
    parser.add_argument("--config", type=Path, default=BUNDLE_DIR / "configs" / "train.yaml", help="the training config (default: the bundle's train.yaml)")
    parser.set_defaults(func=run)
    return parser


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """The config-id overrides the command-line options stand for (unset options keep the config's value)."""
    fold = -1 if str(args.fold).lower() == "all" else int(args.fold)
    out = args.out or BUNDLE_DIR / "models" / ("model.pt" if fold < 0 else f"model_fold{fold}.pt")
    values: dict[str, object] = {
        "bundle_root": str(BUNDLE_DIR), "fold": fold, "seed": int(args.seed), "checkpoint": str(out), "log_dir": str(args.log_dir),
        "image_size": args.image_size, "max_epochs": args.epochs, "dataset_dir": str(args.data_root) if args.data_root else None,
        "network_def#beta": args.beta, "network_def#num_masks": args.num_masks, "network_def#levels": args.levels,
        "text_gate": args.text_gate, "full_text_findings": args.full_text_findings, "text_variants": args.text_variants,
        "late_fusion_share": args.late_fusion_share,
    }
    return {k: v for k, v in values.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import torch
    from monai.bundle import ConfigWorkflow

    if not args.config.is_file():
        raise SystemExit(f"training config not found: {args.config} (run from a monai-cir checkout, or pass --config)")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    values = overrides(args)
    configs = args.config.parent
    workflow = ConfigWorkflow(config_file=str(args.config), meta_file=str(configs / "metadata.json"), logging_file=str(configs / "logging.conf"),
                              workflow_type="train", **values)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    print(json.dumps({"checkpoint": values["checkpoint"], "fold": args.fold, "seconds": round(time.perf_counter() - start, 1)}, indent=2))
    return 0
