"""How well can a held-out *query* be classified at all? (context for the retrieval targets)

In the paper's protocol the database of each fold is exactly the training folds, so a trained target
tower can place every database image in its class region; Acc@1 and mAP are then governed by how
often the held-out query (image + text) lands in the right class. This benchmark measures that
query-side ceiling with plain classifiers on the same inputs, per fold of the committed split:

- text as one-hot 7-point criteria + elevation / location / sex (the report template's content),
- frozen pooled image features (EfficientNet-Lite2, L/M/H levels, the 260-px feature cache),
- the report's MiniLM sentence embedding (what late fusion reads),
- both; logistic regression (several C) and gradient boosting;
- a second backbone: EfficientNet-Lite0's frozen pooled levels (the other offline ImageNet weights,
  ``efficientnet_lite0-minilm`` preset) alone, beside Lite2's, and with the text: does a second set of
  image features move the ceiling (the lever left besides fine-tuning)?
- Lite2's own pretrained head (its 1 x 1 ``conv_head`` + BatchNorm + ReLU6 to 1280 channels, the features ImageNet's
  classifier reads), computed from the cached H level and pooled: the input a linear probe of a backbone usually takes;
- more images: the image probe trained on the training folds plus all of ISIC UDA-1 (555 melanoma / nevus images of
  another site, same class indices), scored on Derm7pt's held-out fold;
- an ensemble of classifier families (logistic, RBF SVM, logistic on the one-hot criteria alone or with the image),
  singles and pairs of averaged probabilities, the pair chosen per fold by inner cross-validation on that fold's
  training folds only (nested: a pair picked on the held-out folds would flatter itself).

Writes ``bench/results/query_ceiling.json``. Run: ``.venv/bin/python bench/query_ceiling.py``.

``--dihedral-tta`` measures one more lever instead, into ``bench/results/query_ceiling_dihedral_tta.json``: test-time
augmentation over the 8 dihedral views of each image (4 rotations x a flip; what dermoscopy, which has no up, allows),
the pooled L/M/H of each view encoded anew (about 17 min on 2 cores), the probes given the 8-view average, or trained on
all 8 views and given the average of their probabilities.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import begin, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "query_ceiling.json"
RESULTS_DIHEDRAL = Path(__file__).resolve().parent / "results" / "query_ceiling_dihedral_tta.json"


def query_inputs(cache) -> dict[str, np.ndarray]:
    """The query's inputs as plain feature arrays, one row per cached case: ``criteria`` (one-hot 7-point
    criteria + elevation / location / sex, the report template's content; categories only, no labels),
    ``sentence`` (the report's mean-pooled MiniLM tokens: what late fusion reads) and ``image`` (frozen
    pooled L/M/H). Shared with ``bench/finetune_probe.py``."""
    from sklearn.preprocessing import OneHotEncoder

    from monai_cir.data.report import CRITERIA

    fields = [key for key, _ in CRITERIA] + ["elevation", "location", "sex"]
    text = np.array([[str(r.metadata.get(f) or "na") for f in fields] for r in cache.records])
    return {
        "criteria": OneHotEncoder(handle_unknown="ignore").fit(text).transform(text).toarray(),
        "sentence": cache.sentence.float().numpy(),
        "image": np.concatenate([cache.pooled(level).numpy() for level in range(len(cache.maps))], axis=1),
    }


def logistic(c: float):
    """Standardised logistic regression: the probe of this benchmark and of ``bench/finetune_probe.py``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))


def _row(input_name: str, model_name: str, accuracy: list[float], **extra) -> dict:
    row = {"input": input_name, "model": model_name, "accuracy_folds": [round(100 * a, 2) for a in accuracy],
           "accuracy_mean": round(100 * float(np.mean(accuracy)), 2), "accuracy_std": round(100 * float(np.std(accuracy, ddof=1)), 2), **extra}
    print(f"{input_name:30s} {model_name:28s} {row['accuracy_mean']:5.1f} ± {row['accuracy_std']:.1f}", flush=True)
    return row


def pretrained_head_features(cache) -> np.ndarray:
    """EfficientNet-Lite2's pretrained head (``conv_head`` 1 x 1 to 1280 channels, ``bn2`` with its ReLU6) over the
    cached H level, average-pooled: what the full model's ``forward_features`` pools (the H level is its last block's
    output; equal to re-encoding within the cache's fp16)."""
    import timm
    import torch

    from monai_cir.networks.image_encoder import load_offline_efficientnet_lite

    model = timm.create_model("tf_efficientnet_lite2", pretrained=False)
    model.load_state_dict(load_offline_efficientnet_lite("tf_efficientnet_lite2"))
    model.eval()
    with torch.no_grad():
        return model.bn2(model.conv_head(cache.maps[-1].float())).mean((2, 3)).numpy()


def nested_ensemble(x_text: np.ndarray, x_sentence: np.ndarray, x_image: np.ndarray, y: np.ndarray, fold: np.ndarray) -> dict:
    """Held-out accuracy of the best single classifier or averaged pair of five families, the choice made per outer
    fold by inner cross-validation over that fold's training folds (the committed split's other folds)."""
    import itertools

    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    both = np.hstack([x_sentence, x_image])

    def svm(c: float):
        return make_pipeline(StandardScaler(), PCA(128, random_state=0), SVC(C=c, probability=True, random_state=0))

    families = {
        "logistic C=0.01 (image + sentence)": (lambda: logistic(0.01), both),
        "RBF SVM C=0.3 (image + sentence)": (lambda: svm(0.3), both),
        "RBF SVM C=1 (image + sentence)": (lambda: svm(1.0), both),
        "logistic (one-hot criteria)": (lambda: LogisticRegression(C=1.0, max_iter=5000), x_text),
        "logistic C=0.01 (one-hot criteria x5 + image)": (lambda: logistic(0.01), np.hstack([5 * x_text, x_image])),
    }
    candidates = [(name,) for name in families] + list(itertools.combinations(families, 2))

    def probabilities(train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
        return {name: make().fit(x[train], y[train]).predict_proba(x[test]) for name, (make, x) in families.items()}

    accuracy, picked = [], []
    for k in range(5):
        train, test = np.where(fold != k)[0], np.where(fold == k)[0]
        inner = {c: [] for c in candidates}
        for j in sorted(set(fold[train])):
            inner_train, inner_test = train[fold[train] != j], train[fold[train] == j]
            p = probabilities(inner_train, inner_test)
            for c in candidates:
                inner[c].append(float((sum(p[m] for m in c).argmax(1) == y[inner_test]).mean()))
        best = max(candidates, key=lambda c: np.mean(inner[c]))
        p = probabilities(train, test)
        accuracy.append(float((sum(p[m] for m in best).argmax(1) == y[test]).mean()))
        picked.append(" + ".join(best))
    return _row("image + text + sentence", "nested ensemble of classifier families", accuracy, picked_per_fold=picked)


def derm7pt_query_inputs() -> tuple:
    """Derm7pt's 260-px feature cache (built once), each case's committed fold, its class index and its
    :func:`query_inputs`; torch on the 2 threads the benchmark's figures assume."""
    import torch

    from monai_cir.data import build_feature_cache, load_folds

    torch.set_num_threads(2)
    cache = build_feature_cache("derm7pt", 260)
    folds = load_folds()
    return cache, np.array([folds[r.case_id] for r in cache.records]), cache.labels.numpy(), query_inputs(cache)


def dihedral_views(cache) -> np.ndarray:
    """Pooled L/M/H of every cached case's image under the 8 dihedral views, (N, 8, C): view 0 the image as cached, the
    others rotated by 90, 180, 270 degrees and each flipped; encoded anew by the cache's encoders (frozen, offline)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from monai_cir.data.collections import records_dataset
    from monai_cir.networks import ComposedRetrievalNet

    net = ComposedRetrievalNet.offline_default(image_size=cache.image_size).eval()
    views = []
    with torch.no_grad():
        for batch in tqdm(DataLoader(records_dataset(cache.records, cache.image_size), batch_size=16), desc="8 dihedral views", unit="batch"):
            per_view = []
            for k in range(4):
                for flip in (False, True):
                    x = torch.rot90(batch["image"], k, dims=(-2, -1))
                    maps = net.image_encoder(x.flip(-1) if flip else x)
                    per_view.append(torch.cat([m.float().mean(dim=(2, 3)) for m in maps], dim=1))
            views.append(torch.stack(per_view, dim=1))
    return torch.cat(views).numpy()


def dihedral_tta(argv: list[str] | None) -> None:
    """``--dihedral-tta``: the probes of the bound with 8-view test-time augmentation (module docstring)."""
    header = begin(__file__, "held-out accuracy of the query probes with 8-view dihedral test-time augmentation", argv)
    start = time.perf_counter()
    cache, fold, y, features = derm7pt_query_inputs()
    text = np.hstack([features["criteria"], features["sentence"]])
    views = dihedral_views(cache)
    drift = float(np.abs(views[:, 0] - features["image"]).max())  # view 0 against the cache (fp16 there)
    results = []
    for c in (0.003, 0.01):
        inputs = {"image, 1 view": views[:, 0], "image, flip average": views[:, :2].mean(1), "image, 8-view average": views.mean(1),
                  "image + text + sentence, 1 view": np.hstack([text, views[:, 0]]),
                  "image + text + sentence, 8-view average": np.hstack([text, views.mean(1)])}
        for name, x in inputs.items():
            accuracy = [float((logistic(c).fit(x[fold != k], y[fold != k]).predict(x[fold == k]) == y[fold == k]).mean()) for k in range(5)]
            results.append(_row(name, f"logistic regression C={c}", accuracy))
        for name, extra in (("image", None), ("image + text + sentence", text)):
            accuracy = []
            for k in range(5):
                train, test = fold != k, fold == k
                view = (lambda v: views[:, v]) if extra is None else (lambda v: np.hstack([extra, views[:, v]]))
                model = logistic(c).fit(np.concatenate([view(v)[train] for v in range(8)]), np.tile(y[train], 8))
                probability = np.mean([model.predict_proba(view(v)[test]) for v in range(8)], axis=0)
                accuracy.append(float((probability.argmax(1) == y[test]).mean()))
            results.append(_row(f"{name}, trained on 8 views, 8-view TTA", f"logistic regression C={c}", accuracy))
    payload = {
        **header,
        "what": "held-out 3-class accuracy of the query inputs with 8-view dihedral test-time augmentation (5-fold, committed folds), Derm7pt 888",
        "view0_max_abs_difference_from_cache": round(drift, 5),
        "results": results,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_results(RESULTS_DIHEDRAL, payload)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dihedral-tta", action="store_true", help=f"measure 8-view dihedral test-time augmentation instead (about 17 min) -> {RESULTS_DIHEDRAL.name}")
    if parser.parse_args(argv).dihedral_tta:
        dihedral_tta(argv)
        return
    from sklearn.ensemble import HistGradientBoostingClassifier

    from monai_cir.data import build_feature_cache
    from monai_cir.networks import create_model

    header = begin(__file__, "held-out accuracy of plain classifiers on the query inputs", argv)
    start = time.perf_counter()
    cache, fold, y, features = derm7pt_query_inputs()
    x_text, x_sentence, x_image = features["criteria"], features["sentence"], features["image"]
    lite0 = build_feature_cache("derm7pt", 260, net=create_model("efficientnet_lite0-minilm", pretrained=True, image_size=260), flipped=False)
    if [r.case_id for r in lite0.records] != [r.case_id for r in cache.records]:
        raise RuntimeError("the Lite0 and Lite2 feature caches list other cases: rebuild them (rebuild=True)")
    x_lite0 = query_inputs(lite0)["image"]
    x_head = pretrained_head_features(cache)
    inputs = {
        "text (one-hot criteria)": x_text,
        "text (sentence embedding)": x_sentence,
        "image (frozen pooled L/M/H)": x_image,
        "image + text": np.hstack([x_text, x_image]),
        "image + text + sentence": np.hstack([x_text, x_sentence, x_image]),
        "image Lite0 (frozen pooled L/M/H)": x_lite0,
        "image Lite2 + Lite0": np.hstack([x_image, x_lite0]),
        "image Lite2 + Lite0 + text + sentence": np.hstack([x_text, x_sentence, x_image, x_lite0]),
        "image Lite2 pretrained head (1280-d)": x_head,
        "image Lite2 pretrained head + sentence": np.hstack([x_sentence, x_head]),
    }
    models = {
        **{f"logistic regression C={c}": (lambda c=c: logistic(c)) for c in (0.003, 0.01, 0.1, 1.0)},
        "gradient boosting": lambda: HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_depth=3, random_state=0),
    }
    results = []
    for input_name, x in inputs.items():
        for model_name, make in models.items():
            accuracy = []
            for k in range(5):
                train, test = fold != k, fold == k
                accuracy.append(float((make().fit(x[train], y[train]).predict(x[test]) == y[test]).mean()))
            results.append(_row(input_name, model_name, accuracy))
    # more images of another site for the image probe (ISIC UDA-1: melanoma 0, nevus 1, Derm7pt's class indices)
    isic = build_feature_cache("isic-uda1", 260)
    index_of = {r.diagnosis: int(label) for r, label in zip(cache.records, y)}
    if any(index_of.get(r.diagnosis) != int(label) for r, label in zip(isic.records, isic.labels.tolist())):
        raise RuntimeError("ISIC UDA-1's class indices are not Derm7pt's for the same diagnoses")
    x_isic, y_isic = query_inputs(isic)["image"], isic.labels.numpy()
    for c in (0.003, 0.01):
        accuracy = []
        for k in range(5):
            train, test = fold != k, fold == k
            model = logistic(c).fit(np.vstack([x_image[train], x_isic]), np.concatenate([y[train], y_isic]))
            accuracy.append(float((model.predict(x_image[test]) == y[test]).mean()))
        results.append(_row("image (frozen pooled L/M/H), trained with ISIC UDA-1 too", f"logistic regression C={c}", accuracy))
    results.append(nested_ensemble(x_text, x_sentence, x_image, y, fold))
    payload = {
        **header,
        "what": "held-out 3-class accuracy of the query inputs (5-fold, committed folds), Derm7pt 888",
        "results": results,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_results(RESULTS, payload)


if __name__ == "__main__":
    main()
