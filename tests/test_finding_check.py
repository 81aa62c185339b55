"""The findings reader's learned check (monai_cir/data/finding_check.py): it drops readings the rules make of what is
not the imaged lesion now, keeps plain statements, loads only arrays, and never trains on a held-out review."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from monai_cir.data import finding_check
from monai_cir.data.finding_check import DIMENSIONS, FindingCheck, default_check, features, train
from monai_cir.data.report import read_by_rules, read_findings

BWV = ("blue_whitish_veil", "present")


def test_features_are_normalised_and_ignore_the_finding_itself():
    f = features("Dermoscopy: BWV present.", *BWV)
    assert abs(sum(v * v for v in f.values()) - 1.0) < 1e-6
    # the value read is not a feature: the same text read with another value has the same features
    assert f == features("Dermoscopy: BWV present.", "blue_whitish_veil", "absent")
    assert f != features("Mother's lesion: BWV present.", *BWV)
    with pytest.raises(ValueError, match="unknown criterion 'veil'"):
        features("BWV", "veil", "present")


def test_a_trained_check_tells_contexts_apart():
    stated = [(f"Dermoscopy of this lesion today: {w} present.", "blue_whitish_veil", "present", True, "r") for w in ("BWV", "blue-whitish veil", "veil")]
    not_stated = [(f"Her sister's lesion last year had {w}.", "blue_whitish_veil", "present", False, "r") for w in ("BWV", "blue-whitish veil", "veil")]
    check = train(stated + not_stated, threshold=0.5, epochs=60)
    assert check.keeps("Dermoscopy of this lesion today: BWV present.", *BWV)
    assert not check.keeps("Her sister's lesion last year had BWV.", *BWV)


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    weights = np.where(rng.random(DIMENSIONS) < 0.01, rng.normal(size=DIMENSIONS), 0).astype(np.float32)
    check = FindingCheck(weights, -0.25, 0.4, {"reviews": ["x"]})
    path = tmp_path / "check.npz"
    check.save(path)
    loaded = FindingCheck.load(path)
    assert loaded.threshold == pytest.approx(0.4) and loaded.about == {"reviews": ["x"]}
    for text in ("BWV present", "Mother had BWV", "no streaks"):
        key = "streaks" if "streaks" in text else "blue_whitish_veil"
        assert loaded.probability(text, key, "present") == pytest.approx(check.probability(text, key, "present"), abs=1e-6)


def test_load_refuses_what_is_not_a_check(tmp_path):
    crafted = tmp_path / "crafted.npz"
    np.savez(crafted, slots=np.array([1]), weights=np.array([object()], dtype=object), bias=0.0, threshold=0.5,
             dimensions=DIMENSIONS, about="{}")
    with pytest.raises(ValueError, match="allow_pickle"):  # numpy refuses object arrays without pickle
        FindingCheck.load(crafted)
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"weights": 1}))
    with pytest.raises((ValueError, OSError)):
        FindingCheck.load(pickled)
    partial = tmp_path / "partial.npz"
    np.savez(partial, slots=np.array([1]), weights=np.array([1.0]))
    with pytest.raises(ValueError, match=r"lacks \['about', 'bias', 'dimensions', 'threshold'\]"):
        FindingCheck.load(partial)
    other = tmp_path / "other.npz"
    np.savez(other, slots=np.array([1]), weights=np.array([1.0]), bias=0.0, threshold=0.5, dimensions=1 << 10, about="{}")
    with pytest.raises(ValueError, match="1024 dimensions"):
        FindingCheck.load(other)
    with pytest.raises(FileNotFoundError, match="python -m monai_cir.data.finding_check"):
        FindingCheck.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="threshold must be in"):
        FindingCheck(np.zeros(DIMENSIONS), 0.0, 1.5)


def test_the_shipped_check_never_trained_on_a_held_out_review():
    reviewed = json.loads(finding_check.REVIEWED.read_text(encoding="utf-8"))
    about = default_check().about
    assert set(about["held_out_reviews"]) <= set(reviewed["held_out_reviews"])
    assert not set(about["reviews"]) & set(reviewed["held_out_reviews"])
    assert about["review_readings"]["not_stated"] > 100


# texts the rules read wrong (from trained reviews and the hand-written set), each dropped by the shipped check
RULES_WRONG = [
    ("Atypical network (documented 10/2024 on the lesion removed from the left thigh).", ("pigment_network", "atypical")),
    ("Mum brought 9-year-old Leo. Lesion on his L thigh (imaged): regular globules throughout, no streaks. Mum had a "
     "melanoma in 2020 which, per her letters, had a BWV.", BWV),
    ("Husband present; he has a lesion with arborizing vessels which we advised him to get checked by his GP.",
     ("vascular_structures", "arborizing")),
    ("Irregular streaks (noted 03/2025, lesion since excised).", ("streaks", "irregular")),
]
# ... and ones the check leaves at its threshold, whichever side a retraining puts them: ranked below plain statements
# only ("BWV (2019)": 0.484, then 0.509 once 30 more stated readings of the rules were trained on; a bracketed year is
# also how a clinician dates today's look, "Atypical PN (Jan 2026)")
AT_THE_THRESHOLD = [
    ("BWV (2019)", BWV),
]
# plain statements of the imaged lesion: kept
PLAIN = [
    ("Irregular streaks.", (("streaks", "irregular"),)),
    ("irregular streaks", (("streaks", "irregular"),)),
    ("7PCL: BWV +", (BWV,)),
    ("Prominent BWV", (BWV,)),
    ("Atypical pigment network; irregular streaks; blue-whitish veil present",
     (BWV, ("pigment_network", "atypical"), ("streaks", "irregular"))),
    ("Dermoscopy: no vascular structures, regular dots and globules.",
     (("dots_and_globules", "regular"), ("vascular_structures", "absent"))),
]


def test_every_phrasing_of_a_finding_written_alone_is_kept():
    """A text that is a finding and nothing else states it: the check keeps every phrasing the rules know, alone and as
    a sentence (a check trained without them dropped a bare "irregular streaks", and the query fell back to the
    image)."""
    from monai_cir.data.report import _PHRASINGS

    dropped = [text for phrase in _PHRASINGS for text in (phrase, phrase[:1].upper() + phrase[1:] + ".")
               if set(read_findings(text)) != set(read_by_rules(text))]
    assert not dropped, dropped[:10]


def test_the_check_changes_no_reading_of_the_evaluation_and_training_texts():
    """Every text form of both collections (as ``monai-cir evaluate --text-forms`` writes them) and four training texts a
    case (as training augments them): the check keeps every reading the rules make of them, so no retrieval figure
    moves with it (a check that dropped some would change what the models were trained and scored on)."""
    import zlib

    from monai_cir.data import load_collection
    from monai_cir.data.report import TEXT_FORMS, augment_report, render_reports

    texts: set[str] = set()
    for name in ("derm7pt", "isic-uda1"):
        records = load_collection(name)
        for form in TEXT_FORMS:
            texts |= set(render_reports(records, form, seed=0))
        for record in records:
            rng = np.random.default_rng(zlib.crc32(str(record.case_id).encode()))
            texts |= {augment_report(record, rng) for _ in range(4)}
    readings = sum(len(read_by_rules(text)) for text in texts)
    changed = [text for text in texts if read_findings(text) != read_by_rules(text)]
    assert readings > 10_000 and not changed, (readings, changed[:5])


def test_the_check_ranks_wrong_readings_below_plain_statements():
    """Every reading of RULES_WRONG and AT_THE_THRESHOLD is less likely to the check than every finding of PLAIN: the
    check's order, which a retraining moves less than its side of the threshold (a student's unverified "BWV 2" went
    from 0.497 to 0.503 when review u was trained on, and is a rule's since)."""
    check = default_check()
    wrong = max(check.probability(text, *finding) for text, finding in RULES_WRONG + AT_THE_THRESHOLD)
    plain = min(check.probability(text, *finding) for text, findings in PLAIN for finding in findings)
    assert wrong < plain, (wrong, plain)


@pytest.mark.parametrize("text, wrong", RULES_WRONG)
def test_the_check_drops_what_the_rules_read_wrong(text, wrong):
    assert wrong in read_by_rules(text)
    assert wrong not in read_findings(text)


@pytest.mark.parametrize("text, expected", PLAIN)
def test_the_check_keeps_plain_statements(text, expected):
    assert set(read_by_rules(text)) == set(expected)
    assert set(read_findings(text)) == set(expected)
