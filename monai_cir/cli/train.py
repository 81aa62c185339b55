"""``monai-cir train``: train the composed-retrieval head on one Derm7pt fold, or on all 888 cases (release).

CPU default: the frozen encoders' outputs are cached once (``.cache/features``, git-ignored) and the
composers / region masks / projections train on the cache (MONAI ``SupervisedTrainer``, SupCon loss,
Adam 1e-4 / wd 1e-5, up to 100 epochs, early stopping patience 30 on an inner validation split).
``--fold all`` writes the release checkpoint (``bundle/models/model.pt``) with the encoder fingerprint.
The same as ``python -m monai.bundle run --config_file bundle/configs/train.yaml --fold N``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train the retrieval head on a Derm7pt fold or on all cases", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fold", default="all", help="held-out fold 0..4, or 'all' for the release model (default)")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint path (default bundle/models/model.pt, or model_fold<k>.pt)")
    parser.add_argument("--image-size", type=int, default=260, help="preprocessing size (default 260; 512 = the paper's)")
    parser.add_argument("--beta", type=float, default=0.6, help="beta of Eq. 9 (default 0.6)")
    parser.add_argument("--num-masks", type=int, default=4, help="k region masks (Eq. 6, default 4)")
    parser.add_argument("--levels", nargs="+", default=["L", "M", "H"], help="feature levels (default L M H)")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: the method's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", type=Path, default=Path("runs/train"), help="TensorBoard event files (default runs/train)")
    parser.add_argument("--data-root", type=Path, default=None, help="data root (default $MONAI_CIR_DATA or ../shared/data)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import torch

    from ..data.feature_cache import build_feature_cache
    from ..engine import CachedComposedModel, TrainConfig, train_head
    from ..engine.bundle import checkpoint_saver, fold_split
    from ..engine.cv_methods import method_options
    from ..networks import ComposedRetrievalNet

    fold = -1 if str(args.fold).lower() == "all" else int(args.fold)
    out = args.out or Path("bundle/models") / ("model.pt" if fold < 0 else f"model_fold{fold}.pt")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    net = ComposedRetrievalNet.offline_default(image_size=args.image_size, beta=args.beta, num_masks=args.num_masks, levels=args.levels)
    cache = build_feature_cache("derm7pt", args.image_size, net=net, root=args.data_root)
    train_idx, _ = fold_split(cache, fold)
    opts = method_options("composed", {})["train"]
    if args.epochs is not None:
        opts["epochs"] = args.epochs
    cfg = TrainConfig.from_dict({**opts, "seed": args.seed, "progress": True, "log_dir": str(args.log_dir), "checkpoint": str(out)})
    torch.manual_seed(args.seed)
    model = CachedComposedModel(net, "composed")
    result = train_head(model, cache, train_idx, cfg, level_indices=net.level_indices, save_fn=checkpoint_saver(net, fold=fold, seed=args.seed, image_size=args.image_size))
    # the best epoch's weights are in net now; write them (with the training summary) as the checkpoint
    checkpoint_saver(net, fold=fold, seed=args.seed)(out, epoch=result.best_epoch, metrics={"val_score": result.best_score}, train_seconds=round(result.seconds, 1), n_train=len(train_idx))
    print(json.dumps({"checkpoint": str(out), "fold": args.fold, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "val_score": round(result.best_score, 4), "seconds": round(time.perf_counter() - start, 1)}, indent=2))
    return 0
