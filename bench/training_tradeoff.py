"""Why Acc@4 and mAP pull apart as the composed head trains (issue 8): held-out metrics every few epochs.

    .venv/bin/python bench/training_tradeoff.py                 # 5 folds, 100 epochs, probe every 10
    .venv/bin/python bench/training_tradeoff.py --folds 0 --every 5

Trains the default ``composed`` method on each fold's training folds for all epochs (no early stopping,
no inner validation split) and, every ``--every`` epochs, ranks the held-out fold's composed queries
against the training folds (flip TTA, as ``monai-cir evaluate``). Also scores each snapshot with the
frozen pooled L/M/H features mixed in (``S + γ cos(frozen)``): does keeping the pretrained neighbourhood
restore Acc@4? Writes ``bench/results/training_tradeoff.json`` and ``training_tradeoff.png`` (metrics
only: no image data).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import PAPER, begin, write_results

KEYS = ("acc@1", "acc@2", "acc@4", "map")
GAMMAS = (0.0, 0.3, 1.0)


class HeldOutProbe:
    """Every ``every`` epochs: held-out retrieval metrics of the model being trained (Ignite handler)."""

    def __init__(self, model, cache, query_idx, database_idx, frozen, every: int) -> None:
        self.model, self.cache, self.query_idx, self.database_idx, self.every = model, cache, query_idx, database_idx, every
        labels = np.asarray(cache.labels)
        self.q_labels, self.d_labels = labels[query_idx], labels[database_idx]
        mean, std = frozen[database_idx].mean(0), frozen[database_idx].std(0) + 1e-6
        unit = (frozen - mean) / std
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        self.frozen_similarity = unit[query_idx] @ unit[database_idx].T
        self.rows: list[dict] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self)

    def __call__(self, engine) -> None:
        from monai_cir.metrics import retrieval_metrics

        q = self.model.encode_queries(self.cache, self.query_idx).numpy()
        t = self.model.encode_targets(self.cache, self.database_idx).numpy()
        self.model.train()
        for gamma in GAMMAS:
            m = retrieval_metrics(q @ t.T + gamma * self.frozen_similarity, self.q_labels, self.d_labels)
            self.rows.append({"epoch": engine.state.epoch, "gamma": gamma, **{k: 100 * m[k] for k in KEYS}})


def main(argv=None) -> int:
    from monai_cir.data import build_feature_cache
    from monai_cir.engine import (
        CachedComposedModel,
        TrainConfig,
        new_head_net,
        train_head,
    )
    from monai_cir.engine.cv_methods import base_net, method_options
    from monai_cir.evaluation import fold_indices

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/results/training_tradeoff.json"))
    args = parser.parse_args(argv)
    header = begin(__file__, "held-out metrics of the composed head while it trains", argv)

    start = time.perf_counter()
    cache = build_feature_cache("derm7pt", 260)
    fold_of = fold_indices(cache)
    frozen = np.concatenate([cache.pooled(i).numpy() + cache.pooled(i, flipped=True).numpy() for i in range(3)], axis=1) / 2
    options = method_options("composed", {})
    rows = []
    for fold in args.folds:
        database_idx, query_idx = np.where(fold_of != fold)[0], np.where(fold_of == fold)[0]
        cfg = TrainConfig.from_dict({**options["train"], "epochs": args.epochs, "val_fraction": 0.0, "seed": fold})
        net = new_head_net(base_net(260), seed=fold, **options["net"])
        model = CachedComposedModel(net, "composed")
        probe = HeldOutProbe(model, cache, query_idx, database_idx, frozen, args.every)
        train_head(model, cache, database_idx, cfg, level_indices=net.level_indices, extra_handlers=[probe])
        rows += [{"fold": fold, **r} for r in probe.rows]
        print(f"fold {fold}: {time.perf_counter() - start:.0f} s", flush=True)

    summary = []
    for epoch in sorted({r["epoch"] for r in rows}):
        for gamma in GAMMAS:
            sel = [r for r in rows if r["epoch"] == epoch and r["gamma"] == gamma]
            summary.append({"epoch": epoch, "gamma": gamma, **{k: round(float(np.mean([r[k] for r in sel])), 2) for k in KEYS}})
            if gamma == 0.0 or epoch == args.epochs:
                print(f"epoch {epoch:3d}  γ {gamma:.1f}  " + "  ".join(f"{k} {summary[-1][k]:5.1f}" for k in KEYS))
    payload = {
        **header,
        "what": "held-out Derm7pt metrics of the composed head during training (mean over folds), with frozen-feature mixing γ",
        "folds": args.folds, "epochs": args.epochs, "train_options": options,
        "summary": summary, "per_fold": rows, "wall_s": round(time.perf_counter() - start, 1),
    }
    write_results(args.out, payload)
    _plot(summary, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.png')} ({payload['wall_s']} s)")
    return 0


def _plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    rows = [r for r in summary if r["gamma"] == 0.0]
    epochs = [r["epoch"] for r in rows]
    for key, style in zip(KEYS, ("-o", "-s", "-^", "-D")):
        ax.plot(epochs, [r[key] for r in rows], style, label=key)
    for key, value in (("paper Acc@4", PAPER["acc@4"]), ("paper mAP", PAPER["map"])):
        ax.axhline(value, ls=":", lw=1, color="grey")
        ax.text(epochs[0], value + 0.3, key, fontsize=7, color="grey")
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out Derm7pt, mean of folds (%)")
    ax.set_title("composed head: mAP rises as classes collapse; Acc@4 falls")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
