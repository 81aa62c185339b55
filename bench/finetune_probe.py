"""Does fine-tuning the image encoder move the query ceiling? (the lever issue 8 names for a GPU)

    .venv/bin/python bench/finetune_probe.py                # 5 folds, 12 epochs
    .venv/bin/python bench/finetune_probe.py --folds 0 --epochs 6

End-to-end fine-tuning of EfficientNet-Lite2 needs a GPU. Its two stride-32 stages (``blocks[5:]``) read
exactly the cached M level, so they can be fine-tuned on CPU from the feature cache: per fold, those stages
plus a linear classifier train on the four training folds (cross-entropy, label smoothing 0.1, AdamW, flip
augmentation from the cache's flipped maps, BatchNorm statistics kept), a fixed number of epochs, nothing
chosen on the held-out fold. Reported per fold, held-out 3-class accuracy of:

- the fine-tuned image path itself (its linear classifier);
- logistic regression on the frozen pooled H level, and on frozen pooled L/M/H (the image row of
  ``bench/query_ceiling.py``);
- image + text, as the product of an image model's and a text model's class probabilities (mean of their
  log-probabilities, no weight fitted): text = logistic regression on the one-hot 7-point criteria and the
  sentence embedding; image = the frozen L/M/H probe vs the fine-tuned stages. Does a better image model
  raise the combined accuracy, i.e. the ceiling the composed query sits under (best frozen probe: 84.8 in
  ``bench/results/query_ceiling.json``, also reported here as "query inputs, frozen, logistic")?
  (A logistic probe on the fine-tuned features themselves would be unfair: on the training folds they are
  fitted to the labels, so the probe learns to trust them over the text.)

Writes ``bench/results/finetune_probe.json`` (accuracies only: no image data).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import numpy as np
from _common import begin, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_probe.json"
LOGISTIC_C = 0.003  # the best C of the image and image + text + sentence probes in bench/results/query_ceiling.json


def main() -> None:
    import timm
    import torch
    import torch.nn.functional as F
    from query_ceiling import (  # bench/ is the script's folder, hence on sys.path
        logistic,
        query_inputs,
    )
    from torch import nn
    from tqdm.auto import tqdm

    from monai_cir.data import build_feature_cache
    from monai_cir.evaluation import fold_indices
    from monai_cir.metrics import summarize_folds
    from monai_cir.networks.image_encoder import load_offline_efficientnet_lite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-4, help="lr of the fine-tuned stages (classifier: 10x)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    header = begin(__file__, "EfficientNet-Lite2's stride-32 stages fine-tuned on the cached M level vs frozen", None)

    start = time.perf_counter()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    cache = build_feature_cache("derm7pt", 260)
    if cache.maps_flipped is None:
        raise SystemExit("the feature cache has no flipped maps; rebuild it with flipped=True")
    encoder = timm.create_model("tf_efficientnet_lite2", pretrained=False)
    encoder.load_state_dict(load_offline_efficientnet_lite("tf_efficientnet_lite2"))
    stages_frozen = encoder.blocks[5:].eval()  # stride 32: reads the M level (blocks[4]), writes the H level
    m_level, h_level = cache.maps[1], cache.maps[2]
    with torch.no_grad():  # the stages reproduce the cached H level from the cached M level (fp16 tolerance)
        if not torch.allclose(stages_frozen(m_level[:4].float()), h_level[:4].float(), atol=0.05, rtol=0.05):
            raise SystemExit("blocks[5:] of tf_efficientnet_lite2 do not map the cached M level onto the H level")

    y_np = cache.labels.numpy()
    y = torch.as_tensor(y_np)
    fold_of = fold_indices(cache)
    features = query_inputs(cache)
    x_image, x_text = features["image"], np.hstack([features["criteria"], features["sentence"]])
    x_h = cache.pooled(2).numpy()

    def probe(x: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
        return float((logistic(LOGISTIC_C).fit(x[train], y_np[train]).predict(x[test]) == y_np[test]).mean())

    def pooled_h(stages: nn.Module, idx: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            views = [stages(src[torch.as_tensor(idx)].float()).mean(dim=(2, 3)) for src in (m_level, cache.maps_flipped[1])]
        return ((views[0] + views[1]) / 2).numpy()

    rows = []
    for fold in args.folds:
        train = np.flatnonzero(fold_of != fold)
        test = np.flatnonzero(fold_of == fold)
        torch.manual_seed(args.seed + fold)
        rng = np.random.default_rng(args.seed + fold)
        stages = copy.deepcopy(stages_frozen)
        classifier = nn.Linear(int(h_level.shape[1]), 3)
        optimizer = torch.optim.AdamW(
            [{"params": stages.parameters(), "lr": args.lr}, {"params": classifier.parameters(), "lr": 10 * args.lr}],
            weight_decay=1e-2,
        )
        stages.eval()  # BatchNorm keeps the ImageNet statistics (batches of 32 are too small to re-estimate)
        fold_start = time.perf_counter()
        for _ in tqdm(range(args.epochs), desc=f"fold {fold}", unit="epoch"):
            order = rng.permutation(train)
            for i in range(0, len(order), 32):
                batch = order[i : i + 32]
                flip = torch.as_tensor(rng.random(len(batch)) < 0.5)
                b = torch.as_tensor(batch)
                x = torch.where(flip[:, None, None, None], cache.maps_flipped[1][b].float(), m_level[b].float())
                loss = F.cross_entropy(classifier(stages(x).mean(dim=(2, 3))), y[b], label_smoothing=0.1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        everything = np.arange(len(y_np))
        h_tuned = pooled_h(stages, everything)
        with torch.no_grad():
            p_tuned = torch.softmax(classifier(torch.as_tensor(h_tuned[test])), dim=1).numpy()
        p_frozen = logistic(LOGISTIC_C).fit(x_image[train], y_np[train]).predict_proba(x_image[test])
        p_text = logistic(LOGISTIC_C).fit(x_text[train], y_np[train]).predict_proba(x_text[test])

        def accuracy(p: np.ndarray) -> float:
            return float((p.argmax(1) == y_np[test]).mean())

        row = {
            "fold": fold,
            "image: fine-tuned stages, own classifier": accuracy(p_tuned),
            "image: fine-tuned H, logistic": probe(h_tuned, train, test),
            "image: frozen H, logistic": probe(x_h, train, test),
            "image: frozen L/M/H, logistic": accuracy(p_frozen),
            "text: criteria + sentence, logistic": accuracy(p_text),
            "image x text: frozen L/M/H": accuracy(np.log(p_frozen) + np.log(p_text)),
            "image x text: fine-tuned stages": accuracy(np.log(p_tuned) + np.log(p_text)),
            "query inputs, frozen, logistic": probe(np.hstack([x_text, x_image]), train, test),
            "seconds": round(time.perf_counter() - fold_start, 1),
        }
        print({k: (round(100 * v, 1) if isinstance(v, float) and k != "seconds" else v) for k, v in row.items()}, flush=True)
        rows.append(row)

    names = [k for k in rows[0] if k not in ("fold", "seconds")]
    summary = {}
    for name in names:
        summary[name] = summarize_folds([r[name] for r in rows], scale=100.0, ndigits=2)
        print(f"{name:40s} {summary[name]['mean']:5.1f}" + (f" ± {summary[name]['std']:.1f}" if summary[name]["std"] is not None else ""))
    payload = {
        **header,
        "what": "held-out 3-class accuracy (percent) with the stride-32 stages of EfficientNet-Lite2 fine-tuned on the cached M level vs frozen, Derm7pt 888, committed folds, 260 px",
        "settings": vars(args) | {"batch_size": 32, "weight_decay": 1e-2, "label_smoothing": 0.1, "logistic_C": LOGISTIC_C, "tta": "flip"},
        "summary": summary, "per_fold": rows,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_results(RESULTS, payload)


if __name__ == "__main__":
    main()
