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

Writes ``bench/results/query_ceiling.json``. Run: ``.venv/bin/python bench/query_ceiling.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import begin, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "query_ceiling.json"


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


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # no options: --help says what it does
    import torch
    from sklearn.ensemble import HistGradientBoostingClassifier

    from monai_cir.data import build_feature_cache, load_folds
    from monai_cir.networks import create_model

    header = begin(__file__, "held-out accuracy of plain classifiers on the query inputs", argv)
    start = time.perf_counter()
    torch.set_num_threads(2)
    cache = build_feature_cache("derm7pt", 260)
    folds = load_folds()
    fold = np.array([folds[r.case_id] for r in cache.records])
    y = cache.labels.numpy()
    features = query_inputs(cache)
    x_text, x_sentence, x_image = features["criteria"], features["sentence"], features["image"]
    lite0 = build_feature_cache("derm7pt", 260, net=create_model("efficientnet_lite0-minilm", pretrained=True, image_size=260), flipped=False)
    if [r.case_id for r in lite0.records] != [r.case_id for r in cache.records]:
        raise RuntimeError("the Lite0 and Lite2 feature caches list other cases: rebuild them (rebuild=True)")
    x_lite0 = query_inputs(lite0)["image"]
    inputs = {
        "text (one-hot criteria)": x_text,
        "text (sentence embedding)": x_sentence,
        "image (frozen pooled L/M/H)": x_image,
        "image + text": np.hstack([x_text, x_image]),
        "image + text + sentence": np.hstack([x_text, x_sentence, x_image]),
        "image Lite0 (frozen pooled L/M/H)": x_lite0,
        "image Lite2 + Lite0": np.hstack([x_image, x_lite0]),
        "image Lite2 + Lite0 + text + sentence": np.hstack([x_text, x_sentence, x_image, x_lite0]),
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
            row = {"input": input_name, "model": model_name, "accuracy_folds": [round(100 * a, 2) for a in accuracy],
                   "accuracy_mean": round(100 * float(np.mean(accuracy)), 2), "accuracy_std": round(100 * float(np.std(accuracy, ddof=1)), 2)}
            print(f"{input_name:30s} {model_name:28s} {row['accuracy_mean']:5.1f} ± {row['accuracy_std']:.1f}")
            results.append(row)
    payload = {
        **header,
        "what": "held-out 3-class accuracy of the query inputs (5-fold, committed folds), Derm7pt 888",
        "results": results,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_results(RESULTS, payload)


if __name__ == "__main__":
    main()
