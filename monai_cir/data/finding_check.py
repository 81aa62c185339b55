"""A learned second look at each finding the findings reader reads: is it stated of the imaged lesion, now?

:func:`monai_cir.data.report.read_findings` is rules, each written from a review's wrong readings, and each round of
rules removes what it was shown but few of the next review's (a new kind of writing, read by the rules alone, had 5 to
8% of its texts read wrong). This check learns from every round at once: a logistic model over hashed words around
the finding's mention (the words before and after it, the head of its line, and the text's words), trained on the
reviews' texts (``bench/reader_texts/reviewed.json``). Each reading the reader made of a review's text, now or at an
earlier version (``bench/reader_texts/earlier_readings.json``), is an example: kept when the review states or allows
it, dropped otherwise; the readings of the project's own training texts (Derm7pt's findings in every training style),
labelled by the case's recorded findings, and every phrasing of a finding the rules know written alone, teach it the
plain ways of stating a finding. Reviews held out are never
trained on: they measure the check (``bench/reader_safety.py``).

The reader keeps a reading only when the check gives it a probability of :attr:`FindingCheck.threshold` or more: a
reading dropped is the safe failure (the query leans on the image), a wrong one moves the query and the diagnosis
prior. The model is a NumPy file (``monai_cir/resources/finding_check.npz``, no pickled objects) written by

    python -m monai_cir.data.finding_check [--out monai_cir/resources/finding_check.npz]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import functools
import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["FindingCheck", "default_check", "features", "phrasings_alone", "train", "DEFAULT_PATH"]

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "resources" / "finding_check.npz"
REPO = Path(__file__).resolve().parents[2]
REVIEWED = REPO / "bench" / "reader_texts" / "reviewed.json"
EARLIER_READINGS = REPO / "bench" / "reader_texts" / "earlier_readings.json"

DIMENSIONS = 1 << 18  # hashed feature space (CRC-32 of the feature's name, modulo)
WINDOW = 8  # words either side of a mention
MENTIONS = 6  # mentions of the criterion looked at, in text order
TEXT_WORD_WEIGHT = 0.3  # a word of the text anywhere, against one beside the mention
# the text's length in words, as one feature of these buckets (and "26+")
_LENGTH_BUCKETS = ((3, "1-3"), (6, "4-6"), (12, "7-12"), (25, "13-25"))
# the words a criterion is mentioned by (any wording, any value): where the check looks
_MENTION_RE = {key: re.compile(pattern) for key, pattern in {
    "blue_whitish_veil": r"bwv|veil|blue[- ]?whit|whitish",
    "streaks": r"streak|pseudopod|radial|starburst",
    "pigment_network": r"network|\bpn\b|reticul|\bnet\b",
    "dots_and_globules": r"dot|globul|\bdg\b|\bd/g\b",
    "regression_structures": r"regress|pepper|scar|granular|\brs\b|white area|blue area",
    "pigmentation": r"pigment|blotch|\bpig\b",
    "vascular_structures": r"vessel|vascul|arboriz|comma|hairpin|dotted|wreath|\bvs\b|telangiect",
}.items()}
_TOKEN_RE = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


def _slot(name: str) -> int:
    return zlib.crc32(name.encode()) % DIMENSIONS


def features(text: str, key: str, value: str) -> dict[int, float]:
    """The hashed, L2-normalised features of the reading ``(key, value)`` of ``text``: for each of the criterion's first
    :data:`MENTIONS` mentions, the :data:`WINDOW` words either side (by side, and as bigrams, the mention's word only in
    them) and the first three words of its line; every other word of the text at :data:`TEXT_WORD_WEIGHT`; the text's
    length in words (a bucket). The
    criterion, its value and the mention's own word are not features: the check judges what is said around a finding,
    not the finding (a model that learned "BWV is often read wrong" would drop a plain "BWV present")."""
    if key not in _MENTION_RE:
        raise ValueError(f"unknown criterion {key!r}: expected one of {sorted(_MENTION_RE)}")
    lowered = text.lower()
    counts: collections.Counter[int] = collections.Counter()
    tokens = [(m.group(), m.start()) for m in _TOKEN_RE.finditer(lowered)]
    starts = [s for _, s in tokens]
    mentions = list(_MENTION_RE[key].finditer(lowered))
    mentioned = set()
    for mention in mentions[:MENTIONS]:
        at = bisect.bisect_left(starts, mention.start())
        mentioned.add(at)
        low, high = max(0, at - WINDOW), min(len(tokens), at + WINDOW + 1)
        for j in range(low, high):
            word = tokens[j][0]
            if j != at:
                side = "b" if j < at else "a"
                counts[_slot("w" + side + ":" + word)] += 1
                counts[_slot("w:" + word)] += 1
            if j + 1 < high:
                counts[_slot("bi:" + word + "_" + tokens[j + 1][0])] += 1
        line_start = lowered.rfind("\n", 0, mention.start()) + 1
        for word in _TOKEN_RE.findall(lowered[line_start:mention.start()])[:3]:
            counts[_slot("lh:" + word)] += 1
    if not mentions:
        counts[_slot("nomention")] += 1
    # how much the text says besides: a text that is the finding alone ("irregular streaks") has nothing around it to
    # judge, and without this a terse statement sat at the bias (a bare "irregular streaks" at 0.55, dropped by a check at 0.6)
    words = sum(1 for token, _ in tokens if token[0].isalnum())
    counts[_slot("len:" + next((name for limit, name in _LENGTH_BUCKETS if words <= limit), "26+"))] += 1
    for word in {t for j, (t, _) in enumerate(tokens) if j not in mentioned}:
        counts[_slot("t:" + word)] += TEXT_WORD_WEIGHT
    norm = float(np.sqrt(sum(v * v for v in counts.values()))) or 1.0
    return {k: v / norm for k, v in counts.items()}


class FindingCheck:
    """A logistic model on :func:`features`: ``P(stated of the imaged lesion, now | text, reading)``.

    ``weights`` (:data:`DIMENSIONS` floats) and ``bias`` are the model; a reading is kept when its probability is at
    least ``threshold``; ``about`` says what it was trained on (reviews, examples, commit)."""

    def __init__(self, weights: np.ndarray, bias: float, threshold: float, about: dict | None = None) -> None:
        weights = np.asarray(weights, dtype=np.float32)
        if weights.shape != (DIMENSIONS,):
            raise ValueError(f"FindingCheck weights must have shape ({DIMENSIONS},), got {weights.shape}: "
                             "retrain with `python -m monai_cir.data.finding_check`")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"FindingCheck threshold must be in [0, 1), got {threshold}")
        self.weights, self.bias, self.threshold, self.about = weights, float(bias), float(threshold), dict(about or {})

    def probability(self, text: str, key: str, value: str) -> float:
        """How likely ``text`` states ``(key, value)`` of the imaged lesion, now."""
        f = features(text, key, value)
        z = self.bias + float(sum(self.weights[k] * v for k, v in f.items()))
        return float(1.0 / (1.0 + np.exp(-z)))

    def keeps(self, text: str, key: str, value: str) -> bool:
        return self.probability(text, key, value) >= self.threshold

    def save(self, path: str | Path) -> None:
        """Write the model as a NumPy ``.npz`` (arrays only), atomically."""
        from ..atomic import atomic_path

        nonzero = np.flatnonzero(self.weights).astype(np.int32)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, slots=nonzero, weights=self.weights[nonzero], bias=np.float32(self.bias),
                     threshold=np.float32(self.threshold), dimensions=np.int64(DIMENSIONS),
                     about=np.array(json.dumps(self.about, sort_keys=True)))

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> FindingCheck:
        """Read a model :meth:`save` wrote (``allow_pickle=False``: the file cannot run code)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no finding check at {path}: write one with `python -m monai_cir.data.finding_check --out {path}`")
        with np.load(path, allow_pickle=False) as data:
            missing = sorted({"slots", "weights", "bias", "threshold", "dimensions", "about"} - set(data.files))
            if missing:
                raise ValueError(f"{path} is not a finding check: it lacks {missing}")
            if int(data["dimensions"]) != DIMENSIONS:
                raise ValueError(f"{path} hashes features into {int(data['dimensions'])} dimensions, this code into {DIMENSIONS}: "
                                 "retrain with `python -m monai_cir.data.finding_check`")
            weights = np.zeros(DIMENSIONS, dtype=np.float32)
            weights[data["slots"]] = data["weights"]
            return cls(weights, float(data["bias"]), float(data["threshold"]), json.loads(str(data["about"])))


@functools.lru_cache(maxsize=1)
def default_check() -> FindingCheck:
    """The check the reader uses: ``monai_cir/resources/finding_check.npz``, read once per process."""
    return FindingCheck.load(DEFAULT_PATH)


def text_key(text: str) -> str:
    """The key of a review's text in :data:`EARLIER_READINGS` (SHA-256, first 16 hex digits)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def review_examples(entries: Iterable[dict], earlier: dict[str, list], read) -> list[tuple[str, str, str, bool, str]]:
    """``(text, key, value, stated, review)`` for every reading ``read`` (the rules) makes of a review's text, and every
    reading an earlier version made (``earlier``, by :func:`text_key`): stated when the review expects or allows it."""
    examples = []
    for e in entries:
        allowed = {tuple(f) for f in e["expected"]} | {tuple(f) for f in e["allowed"]}
        readings = set(read(e["text"])) | {tuple(f) for f in earlier.get(text_key(e["text"]), ())}
        examples.extend((e["text"], k, v, (k, v) in allowed, e["review"]) for k, v in sorted(readings))
    return examples


def own_text_examples(records: Sequence, read, per_case: int = 4) -> list[tuple[str, str, str, bool, str]]:
    """``(text, key, value, stated, "own")`` for the readings ``read`` makes of the project's own training texts
    (:func:`~monai_cir.data.report.augment_report`, ``per_case`` a case, seeded by the case): stated when the case
    records that finding."""
    from .report import augment_report, report_fields

    examples = []
    for record in records:
        truth = set(report_fields(record).criteria)
        rng = np.random.default_rng(zlib.crc32(str(record.case_id).encode()))
        texts = {augment_report(record, rng) for _ in range(per_case)}
        for text in sorted(t for t in texts if t):
            examples.extend((text, k, v, (k, v) in truth, "own") for k, v in read(text))
    return examples


def phrasing_examples(read) -> list[tuple[str, str, str, bool, str]]:
    """``(text, key, value, stated, "own")`` for each phrasing of a finding the reader knows
    (:data:`~monai_cir.data.report._PHRASINGS`: "irregular streaks", "pn (atyp)", "BWV -"...) written alone, as it is
    and as a sentence ("Irregular streaks."): a text that is a finding and nothing else states it, and a check that
    learned only from longer texts dropped some of these (a bare "irregular streaks")."""
    return [(text, k, v, (k, v) == finding, "own") for text, finding in phrasings_alone() for k, v in read(text)]


def phrasings_alone() -> list[tuple[str, tuple[str, str]]]:
    """``(text, finding)``: each phrasing of a finding the reader knows written alone, as it is and as a sentence
    ("irregular streaks", "Irregular streaks."), in phrasing order: what the check trains on
    (:func:`phrasing_examples`) and must keep (``bench/finding_check_cv.py``)."""
    from .report import _PHRASINGS

    return [(text, finding) for phrase, finding in sorted(_PHRASINGS.items()) for text in (phrase, phrase[:1].upper() + phrase[1:] + ".")]


def train(examples: Sequence[tuple[str, str, str, bool, str]], threshold: float, epochs: int = 300,
          dropped_weight: float = 5.0, own_weight: float = 0.5, weight_decay: float = 1e-4,
          about: dict | None = None) -> FindingCheck:
    """Fit the logistic model by full-batch Adam (lr 0.05, ``epochs``), an example not stated weighing
    ``dropped_weight`` (a wrong reading costs more than a missed one), one of the project's own texts ``own_weight``."""
    import torch

    rows, slots, values = [], [], []
    for i, (text, key, value, _, _) in enumerate(examples):
        for slot, v in features(text, key, value).items():
            rows.append(i), slots.append(slot), values.append(v)
    x = torch.sparse_coo_tensor([rows, slots], values, (len(examples), DIMENSIONS), dtype=torch.float32,
                                check_invariants=True).coalesce()
    y = torch.tensor([float(e[3]) for e in examples])
    weight = torch.where(y == 1, torch.tensor(1.0), torch.tensor(dropped_weight))
    weight = weight * torch.tensor([own_weight if e[4] == "own" else 1.0 for e in examples])
    torch.manual_seed(0)
    w = torch.zeros(DIMENSIONS, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.Adam([w, b], lr=0.05)
    from ..progress import progress_bar

    for _ in progress_bar(range(epochs), desc="finding check", leave=False):
        optimiser.zero_grad()
        z = torch.sparse.mm(x, w[:, None])[:, 0] + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y, weight=weight) + weight_decay * (w * w).sum()
        loss.backward()
        optimiser.step()
    return FindingCheck(w.detach().numpy(), float(b.detach()), threshold, about)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--threshold", type=float, default=0.6,
                        help="keep a reading at this probability or more (0.6: the highest of bench/finding_check_cv.py's thresholds that "
                             "lost at most 2%% of the trained reviews' stated findings by 5-fold cross-validation and kept every phrasing "
                             "of a finding written alone)")
    args = parser.parse_args(argv)
    from ..provenance import git_commit
    from .collections import load_derm7pt
    from .report import read_by_rules

    for needed in (REVIEWED, EARLIER_READINGS):
        if not needed.is_file():
            raise SystemExit(f"{needed} not found: the check is trained from a checkout of the repository (its bench/reader_texts)")
    reviewed = json.loads(REVIEWED.read_text(encoding="utf-8"))
    held_out = set(reviewed.get("held_out_reviews", []))
    entries = [e for e in reviewed["texts"] if e["review"] not in held_out]
    earlier = json.loads(EARLIER_READINGS.read_text(encoding="utf-8"))["readings"]
    examples = (review_examples(entries, earlier, read_by_rules) + own_text_examples(load_derm7pt(check_images=False), read_by_rules)
                + phrasing_examples(read_by_rules))
    counts = collections.Counter((e[4] == "own", e[3]) for e in examples)
    about = {"reviews": sorted({e["review"] for e in entries}), "held_out_reviews": sorted(held_out),
             "review_readings": {"stated": counts[(False, True)], "not_stated": counts[(False, False)]},
             "own_text_readings": {"stated": counts[(True, True)], "not_stated": counts[(True, False)]},
             "commit": git_commit(), "command": "python -m monai_cir.data.finding_check"}
    print(json.dumps(about, indent=1))
    train(examples, args.threshold, about=about).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
