"""Retrieval-based evidence summary: what the recorded diagnoses of the most similar library cases suggest.

Tschandl et al. (Nature Medicine 2019 / JAMA Derm 2019) predicted a lesion's class as the majority of
its 16 nearest neighbours by content-based image retrieval. Here the top-``k`` hits (default 16)
vote with a **softmax of their scores** (a temperature ``T``; ``T = inf`` is the plain majority vote,
``T -> 0`` is the nearest neighbour), mixed with a uniform floor ``ε`` so that unanimous neighbours
never give probability 1::

    w_i = exp(S_i / T) / Σ_{j<=k} exp(S_j / T)
    p(d) = (1 - ε) Σ_{i<=k, diagnosis_i = d} w_i + ε / C          (C = number of diagnoses)

The prediction is ``argmax p`` and its confidence ``max p``. ``T`` and ``ε`` are the calibration:
:func:`fit_calibration` chooses them by minimising the negative log-likelihood of the true class on
held-out queries (cross-validation; see ``bench/site_and_evidence.py``), which is temperature
scaling (Guo et al. 2017) applied to a retrieval vote. An :class:`EvidenceCalibration` belongs to
one model and library (its scores' scale): refit it when either changes.

The result is an :class:`EvidenceSummary` that the DICOM SR and the PDF report carry, always with
:data:`DECISION_SUPPORT_LABEL`: the distribution of diagnoses among similar cases is
decision support, **not a diagnosis**, and only as good as the library's diagnoses (each case says how its
diagnosis was confirmed: :data:`monai_cir.data.collections.CONFIRMATIONS`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "DECISION_SUPPORT_LABEL",
    "image_alone_sentence",
    "DEFAULT_K",
    "EvidenceSummary",
    "EvidenceCalibration",
    "UNCALIBRATED",
    "MAJORITY_VOTE",
    "neighbour_probabilities",
    "summarize_evidence",
    "fit_calibration",
    "expected_calibration_error",
    "reliability_curve",
    "plot_reliability",
]

DECISION_SUPPORT_LABEL = "Decision support, not a diagnosis"
# the diagnosis a library case is indexed with when none was recorded (CaseMetadata's default)
NO_DIAGNOSIS = "unknown"
DEFAULT_K = 16  # Tschandl et al. 2019


@dataclass(frozen=True)
class EvidenceCalibration:
    """How the top-k scores become probabilities (see the module docstring).

    Attributes:
        temperature: softmax temperature over scores (``math.inf``: every hit weighs the same).
        smoothing: ``ε`` in [0, 1): the uniform floor mixed into the distribution.
        k: how many hits vote.
        fitted: whether ``temperature`` and ``smoothing`` were fitted on held-out data.
        description: where they come from (method, data, folds), for the record.
        model_fingerprint: the network whose scores they were fitted on (``None``: not recorded).
        metrics: what the fit measured (NLL, ECE before / after...).
    """

    temperature: float = 0.1
    smoothing: float = 0.0
    k: int = DEFAULT_K
    fitted: bool = False
    description: str = "uncalibrated default"
    model_fingerprint: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.temperature > 0):
            raise ValueError(f"temperature must be > 0 (math.inf for a plain vote), got {self.temperature}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must lie in [0, 1), got {self.smoothing}")
        if int(self.k) < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["temperature"] = "inf" if math.isinf(self.temperature) else self.temperature
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvidenceCalibration":
        data = dict(data)
        data["temperature"] = math.inf if data.get("temperature") in ("inf", None) else float(data["temperature"])
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        from .atomic import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EvidenceCalibration":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"evidence calibration file not found: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"{path} is not an evidence calibration file: {err}") from err


UNCALIBRATED = EvidenceCalibration()
MAJORITY_VOTE = EvidenceCalibration(temperature=math.inf, smoothing=0.0, description="majority of the k nearest (Tschandl et al. 2019), unweighted")


@dataclass
class EvidenceSummary:
    """The diagnoses among the top-``k`` similar cases, as decision support.

    Attributes:
        k: hits that voted (fewer than asked when the library, or a filter, had fewer cases).
        distribution: diagnosis -> probability, summing to 1, most probable first.
        predicted: the most probable diagnosis (retrieval-based; not a diagnosis of the patient).
        confidence: its probability (calibrated when ``calibrated``).
        label: always :data:`DECISION_SUPPORT_LABEL`.
        counts: unweighted number of hits per diagnosis.
        confirmed: of those, how many are histopathology-confirmed (biopsy), per diagnosis (empty when the
            hits did not say how their diagnoses were confirmed).
        library: cases per diagnosis in the whole library the hits came from (empty when not given): what a
            vote would look like with no similarity at all (a library of 72% nevi gives nevi most votes).
        calibrated: whether the temperature / floor were fitted on held-out data.
        method: one line on how the distribution was formed.
        without_diagnosis: of the top-``k`` hits, how many have no recorded diagnosis (a library case indexed without
            one): they do not vote, and no diagnosis "unknown" is ever suggested.
    """

    k: int
    distribution: dict[str, float]
    predicted: str
    confidence: float
    label: str = DECISION_SUPPORT_LABEL
    counts: dict[str, int] = field(default_factory=dict)
    confirmed: dict[str, int] = field(default_factory=dict)
    library: dict[str, int] = field(default_factory=dict)
    calibrated: bool = False
    method: str = ""
    without_diagnosis: int = 0

    def __post_init__(self) -> None:
        if self.label != DECISION_SUPPORT_LABEL:
            raise ValueError(f"an evidence summary is always labelled {DECISION_SUPPORT_LABEL!r}")
        if int(self.k) < 1:
            raise ValueError(f"an evidence summary needs k >= 1 voting cases, got {self.k}")
        if not self.distribution or any(not (0.0 <= float(p) <= 1.0 + 1e-9) for p in self.distribution.values()):
            raise ValueError(f"the distribution must map diagnoses to probabilities in [0, 1], got {self.distribution}")
        total = sum(self.distribution.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"the distribution must sum to 1, got {total}")
        if self.predicted not in self.distribution:
            raise ValueError(f"the predicted diagnosis {self.predicted!r} is not in the distribution {list(self.distribution)}")
        if not 0.0 <= float(self.confidence) <= 1.0:
            raise ValueError(f"confidence must lie in [0, 1], got {self.confidence}")

    def to_dict(self) -> dict[str, Any]:
        """All fields (``results.json``; :meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvidenceSummary":
        """The summary of a :meth:`to_dict` mapping (unknown keys are an error: one data model)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown evidence summary fields {unknown}; known fields are {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def coerce(cls, value: Any) -> "EvidenceSummary":
        """``value`` itself, or the summary of its :meth:`to_dict` mapping."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        raise TypeError(f"expected an EvidenceSummary or its to_dict() mapping, got {type(value).__name__}")

    def text(self, label: bool = True) -> str:
        """One paragraph for the PDF and the command line (``label``: begin with :data:`DECISION_SUPPORT_LABEL`).

        The counts first, each with how many of its cases are biopsy-confirmed, then the similarity-weighted
        shares: the share is not a frequency (8 cases against 8 can weigh 54% to 46%), and a diagnosis
        voted for only by unconfirmed cases says less than its share suggests."""
        def count(d: str) -> str:
            n = self.counts.get(d, 0)
            return f"{d} {n}" + (f" ({self.confirmed.get(d, 0)} biopsy-confirmed)" if self.confirmed else "")

        counted = ", ".join(count(d) for d in sorted(self.counts, key=lambda d: (-self.counts[d], d)) if self.counts[d])
        if self.without_diagnosis:
            counted += f"; {self.without_diagnosis} more without a recorded diagnosis, not counted"
        shares = ", ".join(f"{d} {p:.0%}" for d, p in self.distribution.items())
        top = [d for d in self.counts if self.counts[d] == max(self.counts.values(), default=0)]
        tie = f" The counts tie ({' and '.join(top)})." if len(top) > 1 else ""
        total = sum(self.library.values())
        weighted = f"Weighted by similarity: {shares} ({'calibrated' if self.calibrated else 'not calibrated'})."
        if total and self.k >= total:  # a library no larger than the vote: the counts are its make-up, whatever the image
            return (
                (f"{self.label}. " if label else "")
                + f"Every one of the library's {total} cases voted (the library is no larger than the vote): the counts ({counted}) are the "
                f"library's make-up, not evidence about this image; only the weighting by similarity is. {weighted} "
                "This describes the library cases, not this patient."
            )
        base = ("" if not total else " For comparison, the whole library of " + f"{total} cases: " + ", ".join(
            f"{d} {n / total:.0%}" for d, n in sorted(self.library.items(), key=lambda kv: (-kv[1], kv[0]))) + ".")
        return (
            (f"{self.label}. " if label else "")
            + f"Among the {self.k} most similar library cases: {counted}.{tie} {weighted}{base} This describes the library cases, not this patient."
        )


# ---------------------------------------------------------------------------------- core
def neighbour_probabilities(
    neighbour_labels: np.ndarray, neighbour_scores: np.ndarray, n_classes: int, temperature: float, smoothing: float
) -> np.ndarray:
    """Vectorised vote: (Q, k) integer labels and scores (best first; -1 label = no hit) -> (Q, C) probabilities."""
    labels = np.asarray(neighbour_labels)
    scores = np.asarray(neighbour_scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"neighbour labels and scores must be (Q, k) arrays of one shape, got {labels.shape} and {scores.shape}")
    valid = labels >= 0
    if math.isinf(temperature):
        logits = np.zeros_like(scores)
    else:
        logits = scores / temperature
    logits = np.where(valid, logits, -np.inf)
    top = logits.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    w = np.where(valid, np.exp(logits - top), 0.0)
    w_sum = w.sum(axis=1, keepdims=True)
    w = np.divide(w, w_sum, out=np.zeros_like(w), where=w_sum > 0)
    probs = np.zeros((labels.shape[0], n_classes))
    rows = np.repeat(np.arange(labels.shape[0]), labels.shape[1])
    np.add.at(probs, (rows, np.clip(labels, 0, None).ravel()), w.ravel())
    empty = w_sum[:, 0] <= 0  # no hit at all: uniform
    probs[empty] = 1.0 / n_classes
    return (1.0 - smoothing) * probs + smoothing / n_classes


def _hit_fields(hits: Iterable[Any]) -> tuple[list[str], list[float], list[str | None]]:
    """Each hit's diagnosis, score and confirmation (None when the hit does not say how it was confirmed)."""
    diagnoses, scores, confirmations = [], [], []
    for hit in hits:
        meta = getattr(hit, "metadata", None)
        diagnosis, confirmation = (_field(meta if meta is not None else hit, name) for name in ("diagnosis", "confirmation"))
        score = _field(hit, "score")
        if diagnosis is None or score is None:
            raise ValueError(f"a hit needs a diagnosis and a score (SearchHit, or a dict with 'diagnosis' and 'score'), got {hit!r}")
        diagnoses.append(str(diagnosis))
        scores.append(float(score))
        confirmations.append(confirmation)
    return diagnoses, scores, confirmations


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def calibration_for_model(calibration: EvidenceCalibration, model_fingerprint: str) -> tuple[EvidenceCalibration, str | None]:
    """``calibration`` when it was fitted on the scores of the model ``model_fingerprint`` (or records no model), else
    :data:`UNCALIBRATED` and the sentence saying why: a file fitted for another model's scores was applied and labelled
    "calibrated" (its temperature means nothing on other scores)."""
    if calibration.model_fingerprint and calibration.model_fingerprint != model_fingerprint:
        return UNCALIBRATED, (f"the evidence calibration was fitted for another model ({calibration.model_fingerprint[:12]}, this one is "
                              f"{model_fingerprint[:12]}): not used, the evidence summary is an uncalibrated vote; refit it for this model")
    return calibration, None


def summarize_evidence(
    hits: Sequence[Any] | None = None,
    *,
    diagnoses: Sequence[str] | None = None,
    scores: Sequence[float] | None = None,
    calibration: EvidenceCalibration | None = None,
    classes: Sequence[str] | None = None,
    k: int | None = None,
    library: Mapping[str, int] | None = None,
) -> EvidenceSummary | None:
    """The evidence summary of one query's ranked hits (None when none of the top ``k`` has a recorded diagnosis).

    Args:
        hits: ranked :class:`~monai_cir.index.SearchHit` (or dicts with ``diagnosis`` and ``score``),
            best first; or give ``diagnoses`` and ``scores`` instead.
        calibration: the fitted :class:`EvidenceCalibration` of the model (default: :data:`UNCALIBRATED`).
        classes: every diagnosis the library holds, so that classes absent from the top-k still
            appear (with the floor ``ε / C``); default the diagnoses present among the hits.
        k: how many hits vote (default ``calibration.k``; the first ``k`` of ``hits``).
        library: cases per diagnosis in the whole library (``index.info()["diagnosis"]``), for the reader's
            comparison (the vote's base rate).
    """
    calibration = calibration or UNCALIBRATED
    confirmations: list[str | None] = []
    if hits is not None:
        if diagnoses is not None or scores is not None:
            raise ValueError("give either hits or diagnoses + scores, not both")
        diagnoses, scores, confirmations = _hit_fields(hits)
    if diagnoses is None or scores is None:
        raise ValueError("give the ranked hits, or diagnoses and scores")
    diagnoses, scores = list(diagnoses), [float(s) for s in scores]
    if len(diagnoses) != len(scores):
        raise ValueError(f"got {len(diagnoses)} diagnoses but {len(scores)} scores")
    if not diagnoses:
        raise ValueError("no hits: the evidence summary needs at least one retrieved case")
    if any(b > a + 1e-6 for a, b in zip(scores, scores[1:])):
        raise ValueError("hits must be ranked best first (scores non-increasing)")
    k = int(k or calibration.k)
    diagnoses, scores, confirmations = diagnoses[:k], scores[:k], list(confirmations[:k])
    # a case without a recorded diagnosis casts no vote: "unknown" is no diagnosis to suggest (it was voted for, and
    # coded as the SR's retrieval-based diagnosis suggestion)
    kept = [i for i, d in enumerate(diagnoses) if d != NO_DIAGNOSIS]
    without = len(diagnoses) - len(kept)
    if not kept:
        return None
    diagnoses, scores = [diagnoses[i] for i in kept], [scores[i] for i in kept]
    confirmations = [confirmations[i] for i in kept] if confirmations else []
    classes = [c for c in classes if c != NO_DIAGNOSIS] if classes is not None else None
    class_list = list(dict.fromkeys(list(classes or []) + diagnoses)) if classes is not None else list(dict.fromkeys(diagnoses))
    index = {c: i for i, c in enumerate(class_list)}
    probs = neighbour_probabilities(
        np.array([[index[d] for d in diagnoses]]), np.array([scores]), len(class_list), calibration.temperature, calibration.smoothing
    )[0]
    order = sorted(range(len(class_list)), key=lambda i: (-probs[i], i))
    distribution = {class_list[i]: float(probs[i]) for i in order}
    counts = {c: diagnoses.count(c) for c in distribution}
    # biopsy-confirmed voters per diagnosis, when every voter says how it was confirmed
    voters = list(zip(diagnoses, confirmations[:k]))
    confirmed = {c: sum(d == c and f == "histopathology" for d, f in voters) for c in distribution} if voters and None not in confirmations[:k] else {}
    weighting = "unweighted vote" if math.isinf(calibration.temperature) else f"softmax of scores, T={calibration.temperature:.3g}"
    return EvidenceSummary(
        k=len(diagnoses),
        distribution=distribution,
        predicted=class_list[order[0]],
        confidence=float(probs[order[0]]),
        counts=counts,
        confirmed=confirmed,
        library={str(d): int(n) for d, n in (library or {}).items() if d != NO_DIAGNOSIS},
        calibrated=calibration.fitted,
        method=f"top-{len(diagnoses)} {weighting}, floor {calibration.smoothing:.3g}; {calibration.description}",
        without_diagnosis=without,
    )


# ---------------------------------------------------------------------------------- calibration
def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> float:
    """Top-label ECE: ``Σ_b (n_b / n) |accuracy_b - confidence_b|`` over ``n_bins`` equal-width bins of (0, 1]."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape or conf.ndim != 1 or len(conf) == 0:
        raise ValueError(f"confidence and correct must be non-empty 1-D arrays of one length, got {conf.shape} and {hit.shape}")
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(hit[sel].mean() - conf[sel].mean())
    return float(ece)


def reliability_curve(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> dict[str, list[float]]:
    """Per bin: mean confidence, accuracy and count (bins without queries are left out)."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    out: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": [], "bin_lower": []}
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            out["confidence"].append(float(conf[sel].mean()))
            out["accuracy"].append(float(hit[sel].mean()))
            out["count"].append(int(sel.sum()))
            out["bin_lower"].append(b / n_bins)
    return out


def _nll(probs: np.ndarray, truth: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-12, None)).mean())


DEFAULT_TEMPERATURES = tuple([math.inf] + [float(t) for t in np.geomspace(1e-3, 10.0, 41)])
DEFAULT_SMOOTHINGS = tuple(float(e) for e in np.linspace(0.0, 0.6, 31))


def fit_calibration(
    neighbour_labels: np.ndarray,
    neighbour_scores: np.ndarray,
    true_labels: np.ndarray,
    n_classes: int,
    k: int = DEFAULT_K,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    smoothings: Sequence[float] = DEFAULT_SMOOTHINGS,
    description: str = "",
    model_fingerprint: str | None = None,
) -> EvidenceCalibration:
    """Choose ``T`` and ``ε`` minimising the NLL of the true class (grid search; few parameters, no overfit).

    Args:
        neighbour_labels / neighbour_scores: (Q, >= k) labels and scores of each held-out query's
            ranked hits (best first; -1 = no hit).
        true_labels: (Q,) the queries' classes.
        n_classes: C.
    """
    labels = np.asarray(neighbour_labels)[:, :k]
    scores = np.asarray(neighbour_scores, dtype=np.float64)[:, :k]
    truth = np.asarray(true_labels).astype(int)
    if labels.shape[0] != len(truth) or len(truth) == 0:
        raise ValueError(f"need one row of neighbours per query: {labels.shape[0]} rows, {len(truth)} labels")
    best = (math.inf, math.inf, 0.0)
    for t in temperatures:
        base = neighbour_probabilities(labels, scores, n_classes, t, 0.0)
        for eps in smoothings:
            nll = _nll((1.0 - eps) * base + eps / n_classes, truth)
            if nll < best[0] - 1e-12:
                best = (nll, t, eps)
    nll, t, eps = best
    before = neighbour_probabilities(labels, scores, n_classes, math.inf, 0.0)
    after = neighbour_probabilities(labels, scores, n_classes, t, eps)
    metrics = {
        "n": int(len(truth)),
        "nll": nll,
        "ece_majority_vote": expected_calibration_error(before.max(1), before.argmax(1) == truth),
        "ece_fitted": expected_calibration_error(after.max(1), after.argmax(1) == truth),
    }
    return EvidenceCalibration(
        temperature=t,
        smoothing=eps,
        k=int(k),
        fitted=True,
        description=description or f"temperature and floor fitted by NLL on {len(truth)} held-out queries",
        model_fingerprint=model_fingerprint,
        metrics=metrics,
    )


def plot_reliability(curves: dict[str, tuple[Sequence[float], Sequence[bool]]], path: str | Path, n_bins: int = 10, title: str = "") -> Path:
    """Reliability diagram (accuracy vs confidence per bin, ECE in the legend) for several predictors."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for name, (conf, correct) in curves.items():
        curve = reliability_curve(conf, correct, n_bins)
        ece = expected_calibration_error(conf, correct, n_bins)
        ax.plot(curve["confidence"], curve["accuracy"], marker="o", ms=3, label=f"{name} (ECE {100 * ece:.1f})")
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or "reliability", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def image_alone_sentence(counts: Mapping[str, int]) -> str:
    """The line the PDF and ``monai-cir search`` show under the cases of a query whose text counted: what the same
    image finds without the text (``counts``: diagnosis -> cases among its most similar, most first, as
    :func:`monai_cir.retrieval.image_alone` records them)."""
    return f"Without the text, the image alone finds {counts_text(counts)} among its {sum(counts.values())} most similar cases."


def counts_text(counts: Mapping[str, int]) -> str:
    """``"melanoma 3, nevus 2"``: cases per diagnosis, in ``counts``' order."""
    return ", ".join(f"{diagnosis} {n}" for diagnosis, n in counts.items())
