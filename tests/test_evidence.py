"""Evidence summary (score-weighted diagnoses among the top-k, calibrated) and site-conditioned search."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monai_cir.evidence import (
    DECISION_SUPPORT_LABEL,
    MAJORITY_VOTE,
    EvidenceCalibration,
    EvidenceSummary,
    expected_calibration_error,
    fit_calibration,
    neighbour_probabilities,
    plot_reliability,
    summarize_evidence,
)
from monai_cir.sites_condition import UNKNOWN_SITE_NOTICE, resolve_site_condition, site_from_dicom, site_share
from conftest import SCORE_RANGE


# ------------------------------------------------------------------------------ evidence
def test_hand_example_is_weighted_by_softmax_of_scores():
    cal = EvidenceCalibration(temperature=0.5, smoothing=0.0, k=3)
    summary = summarize_evidence(diagnoses=["melanoma", "nevus", "melanoma", "nevus"], scores=[0.9, 0.8, 0.1, 0.0], calibration=cal)
    w = np.exp(np.array([0.9, 0.8, 0.1]) / 0.5)
    w /= w.sum()
    assert summary.k == 3  # only the top k vote
    assert summary.distribution["melanoma"] == pytest.approx(w[0] + w[2])
    assert summary.distribution["nevus"] == pytest.approx(w[1])
    assert sum(summary.distribution.values()) == pytest.approx(1.0)
    assert summary.predicted == "melanoma" and summary.confidence == pytest.approx(w[0] + w[2])
    assert summary.counts == {"melanoma": 2, "nevus": 1}
    assert list(summary.distribution) == ["melanoma", "nevus"]  # most probable first


def test_majority_vote_smoothing_and_absent_classes():
    diagnoses = ["nevus"] * 10 + ["melanoma"] * 6
    scores = list(np.linspace(0.9, 0.5, 16))
    vote = summarize_evidence(diagnoses=diagnoses, scores=scores, calibration=MAJORITY_VOTE)
    assert vote.distribution == pytest.approx({"nevus": 10 / 16, "melanoma": 6 / 16})
    floor = EvidenceCalibration(temperature=math.inf, smoothing=0.3)
    s = summarize_evidence(diagnoses=diagnoses, scores=scores, calibration=floor, classes=["melanoma", "nevus", "benign keratosis"])
    assert s.distribution["benign keratosis"] == pytest.approx(0.1)
    assert s.distribution["nevus"] == pytest.approx(0.7 * 10 / 16 + 0.1)
    assert sum(s.distribution.values()) == pytest.approx(1.0)


def test_summary_from_search_hits_is_labelled_decision_support():
    from monai_cir.index import CaseMetadata, SearchHit

    hits = [SearchHit(i + 1, f"c{i}", 1.0 - 0.1 * i, CaseMetadata(f"c{i}", d, "lib")) for i, d in enumerate(["nevus", "nevus", "melanoma"])]
    s = summarize_evidence(hits)
    assert s.label == DECISION_SUPPORT_LABEL and "not a diagnosis" in s.text() and not s.calibrated
    assert s.to_dict()["label"] == DECISION_SUPPORT_LABEL
    with pytest.raises(ValueError, match="always labelled"):
        EvidenceSummary(1, {"nevus": 1.0}, "nevus", 1.0, label="diagnosis")
    with pytest.raises(ValueError, match="sum to 1"):
        EvidenceSummary(1, {"nevus": 0.5}, "nevus", 0.5)
    with pytest.raises(ValueError, match="ranked best first"):
        summarize_evidence(diagnoses=["a", "b"], scores=[0.1, 0.9])
    with pytest.raises(ValueError, match="no hits"):
        summarize_evidence([])



def test_summary_text_counts_each_diagnosis_and_its_biopsy_confirmed_cases_and_says_a_tie():
    """What the PDF and the command line print: the counts, each with its biopsy-confirmed cases, then the
    similarity-weighted shares; 2 against 2 is called a tie, never "the most frequent" diagnosis."""
    from monai_cir.index import CaseMetadata, SearchHit

    cases = [("nevus", "unknown"), ("melanoma", "histopathology"), ("nevus", "follow-up"), ("melanoma", "histopathology")]
    hits = [SearchHit(i + 1, f"c{i}", 1.0 - 0.01 * i, CaseMetadata(f"c{i}", d, "lib", confirmation=c)) for i, (d, c) in enumerate(cases)]
    summary = summarize_evidence(hits, calibration=EvidenceCalibration(temperature=0.1, k=4))
    assert summary.confirmed == {"nevus": 0, "melanoma": 2}
    text = summary.text(label=False)
    assert text.startswith("Among the 4 most similar library cases: melanoma 2 (2 biopsy-confirmed), nevus 2 (0 biopsy-confirmed). "
                           "The counts tie (")
    assert f"Weighted by similarity: nevus {summary.distribution['nevus']:.0%}, melanoma {summary.distribution['melanoma']:.0%} (not calibrated)" in text
    assert "most frequent" not in text and summary.text().startswith(DECISION_SUPPORT_LABEL)
    three = summarize_evidence(hits[:3], calibration=EvidenceCalibration(temperature=0.1, k=3))
    assert "counts tie" not in three.text() and "nevus 2 (0 biopsy-confirmed), melanoma 1 (1 biopsy-confirmed)" in three.text()
    # votes from bare diagnoses and scores do not say how they were confirmed: no confirmed counts invented
    bare = summarize_evidence(diagnoses=["nevus", "melanoma"], scores=[0.9, 0.8])
    assert bare.confirmed == {} and "biopsy" not in bare.text()
    assert EvidenceSummary.from_dict(summary.to_dict()) == summary
    # beside the whole library's make-up: a library of 72% nevi gives nevi most votes without any similarity
    based = summarize_evidence(hits, calibration=EvidenceCalibration(temperature=0.1, k=4), library={"nevus": 86, "melanoma": 34})
    assert "For comparison, the whole library of 120 cases: nevus 72%, melanoma 28%." in based.text()
    assert "For comparison" not in summary.text()

def _miscalibrated(n: int, seed: int):
    """Neighbourhoods that agree among themselves (vote share ~0.95) but are right only ~70% of the
    time, with a score that is higher for right neighbours: a plain vote is overconfident."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    cluster = np.where(rng.random(n) < 0.7, truth, (truth + rng.integers(1, 3, n)) % 3)
    labels = np.where(rng.random((n, 16)) < 0.95, cluster[:, None], rng.integers(0, 3, (n, 16)))
    scores = -np.sort(-(rng.normal(0.6, 0.05, (n, 16)) + 0.05 * (labels == truth[:, None])), axis=1)
    return labels, scores, truth


def test_calibration_lowers_ece_on_a_miscalibrated_example(tmp_path):
    labels, scores, truth = _miscalibrated(1500, 0)
    cal = fit_calibration(labels, scores, truth, n_classes=3)
    test_labels, test_scores, test_truth = _miscalibrated(1500, 1)

    def ece(c):
        p = neighbour_probabilities(test_labels, test_scores, 3, c.temperature, c.smoothing)
        return expected_calibration_error(p.max(1), p.argmax(1) == test_truth)

    assert cal.fitted and cal.smoothing > 0.1
    assert ece(cal) < 0.5 * ece(MAJORITY_VOTE)
    assert ece(cal) < 0.05
    # round trip, inf temperature included
    back = EvidenceCalibration.load(MAJORITY_VOTE.save(tmp_path / "cal.json"))
    assert math.isinf(back.temperature)
    assert EvidenceCalibration.load(cal.save(tmp_path / "fit.json")) == cal
    p = neighbour_probabilities(test_labels, test_scores, 3, cal.temperature, cal.smoothing)
    fig = plot_reliability({"vote": (p.max(1), p.argmax(1) == test_truth)}, tmp_path / "rel.png")
    assert fig.stat().st_size > 5_000


def test_ece_hand_example():
    # two bins: (0.9, 0.9) all right -> |1 - 0.9|; (0.6, 0.6) half right -> |0.5 - 0.6|
    assert expected_calibration_error([0.9, 0.9, 0.6, 0.6], [1, 1, 1, 0]) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)


# ------------------------------------------------------------------------------ site condition
def test_resolve_site_condition():
    assert resolve_site_condition("any", "trunk") == (None, None)
    assert resolve_site_condition(None, "trunk") == (None, None)
    assert resolve_site_condition("same", "back") == ({"site": "trunk"}, None)
    assert resolve_site_condition("palms/soles", None) == ({"site": "acral"}, None)
    for unknown in (None, "", "unknown"):
        filters, notice = resolve_site_condition("same", unknown)
        assert filters is None and notice == UNKNOWN_SITE_NOTICE
    filters, notice = resolve_site_condition("same", "moon")
    assert filters is None and "not in the vocabulary" in notice
    with pytest.raises(ValueError, match="unknown site condition"):
        resolve_site_condition("elbowz", "trunk")
    with pytest.raises(ValueError, match="names no site"):
        resolve_site_condition("unknown", "trunk")


def test_site_from_dicom():
    from pydicom import Dataset

    ds = Dataset()
    assert site_from_dicom(ds) == ("unknown", None)
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "22943007", "SCT", "Trunk"
    ds.AnatomicRegionSequence = [region]
    assert site_from_dicom(ds) == ("trunk", None)
    body = Dataset()
    body.BodyPartExamined = "LEG"
    assert site_from_dicom(body) == ("lower limbs", None)
    body.BodyPartExamined = "PHANTOM"
    site, notice = site_from_dicom(body)
    assert site == "unknown" and "PHANTOM" in notice


def test_same_site_filter_in_a_faiss_index_returns_only_that_site():
    from monai_cir.index import CaseMetadata, create_index

    rng = np.random.default_rng(0)
    sites = ["trunk", "head and neck", "acral", "unknown"]
    n = 200
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    meta = [CaseMetadata(f"c{i}", "nevus" if i % 3 else "melanoma", "lib", site=sites[i % 4]) for i in range(n)]
    index = create_index(16, "fp-test")
    index.add(vectors, meta)
    query = rng.normal(size=(3, 16)).astype(np.float32)
    for query_site in ("back", "face", "palms/soles"):
        filters, notice = resolve_site_condition("same", query_site)
        assert notice is None
        for hits in index.search(query, k=30, filters=filters):
            assert len(hits) == 30 and site_share(hits, filters["site"]) == 1.0
    filters, notice = resolve_site_condition("same", "unknown")
    hits = index.search(query, k=30, filters=filters)[0]
    assert notice and site_share(hits, "trunk") < 1.0  # fell back to all sites


# ------------------------------------------------------------------------------ DICOM integration
def test_sr_carries_the_evidence_summary_and_reads_back(tmp_path):
    """The SR writer (issue 5) takes this module's EvidenceSummary as is; the site written into a
    dicomized image's Anatomic Region Sequence comes back through site_from_dicom."""
    from monai_cir.dicom import sr
    from monai_cir.dicom.dicomize import case_uids, dermoscopy_image_dataset
    from monai_cir.index import CaseMetadata, SearchHit

    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    query = dermoscopy_image_dataset(pixels=pixels, uids=case_uids("test", "q1"), site="trunk", compression="none")
    assert site_from_dicom(query) == ("trunk", None)
    hits = [SearchHit(i + 1, f"c{i}", 0.9 - 0.1 * i, CaseMetadata(f"c{i}", d, "lib", site="trunk")) for i, d in enumerate(["melanoma", "nevus", "melanoma"])]
    summary = summarize_evidence(hits, calibration=EvidenceCalibration(temperature=0.2, smoothing=0.1, fitted=True))
    ds = sr.similar_cases_sr(query, hits, query_text="atypical network", evidence_summary=summary, score_range=SCORE_RANGE)
    path = tmp_path / "sr.dcm"
    ds.save_as(path)
    back = sr.read_similar_cases_sr(path).evidence_summary
    assert back is not None and back.predicted == summary.predicted == "melanoma"
    assert back.confidence == pytest.approx(summary.confidence, abs=1e-4) and back.k == summary.k
    for name, p in summary.distribution.items():
        assert back.distribution[name] == pytest.approx(p, abs=1e-4)
    # the same vote uncalibrated: its shares are no probabilities, and the SR does not code them as such
    from monai_cir.dicom import codes as C

    def values(dataset, code):
        def value(item):  # a project concept's OID is a Long Code Value
            concept = item.ConceptNameCodeSequence[0]
            return str(concept.get("CodeValue") or concept.get("LongCodeValue"))

        return [item for item in _content_items(dataset) if item.get("ValueType") == "NUM" and value(item) == code.value]

    assert len(values(ds, C.PROBABILITY)) == len(summary.distribution) and not values(ds, C.WEIGHTED_SHARE)
    plain = summarize_evidence(hits, calibration=EvidenceCalibration(temperature=0.2, smoothing=0.1))
    loose = sr.similar_cases_sr(query, hits, query_text="atypical network", evidence_summary=plain, score_range=SCORE_RANGE)
    assert not values(loose, C.PROBABILITY) and len(values(loose, C.WEIGHTED_SHARE)) == len(plain.distribution)
    loose.save_as(tmp_path / "loose.dcm")
    back = sr.read_similar_cases_sr(tmp_path / "loose.dcm").evidence_summary
    assert not back.calibrated and back.distribution == pytest.approx(plain.distribution, abs=1e-4)


def _content_items(ds):
    for item in ds.get("ContentSequence", []) or []:
        yield item
        yield from _content_items(item)


def test_a_vote_over_the_whole_library_says_its_counts_are_the_librarys_make_up():
    """Found by review: with a library no larger than the vote's k (14 cases, k = 16) every case voted, and the report
    read "Among the 14 most similar library cases: nevus 7, ..." as if the counts were evidence about the image."""
    from monai_cir.evidence import summarize_evidence

    hits = [{"diagnosis": d, "score": 2.0 - 0.1 * i} for i, d in enumerate(["melanoma"] * 3 + ["nevus"] * 7 + ["benign keratosis"] * 4)]
    small = summarize_evidence(hits, library={"nevus": 7, "benign keratosis": 4, "melanoma": 3})
    assert small.k == 14
    assert "Every one of the library's 14 cases voted" in small.text() and "make-up, not evidence about this image" in small.text()
    assert "most similar library cases" not in small.text()
    large = summarize_evidence(hits, library={"nevus": 70, "benign keratosis": 40, "melanoma": 30})
    assert large.text().count("Among the 14 most similar library cases") == 1 and "make-up" not in large.text()


def test_a_case_without_a_recorded_diagnosis_casts_no_vote_and_is_never_suggested():
    """Found by review: a library case indexed without a diagnosis voted as the diagnosis "unknown" ("Weighted by
    similarity: unknown 44%, melanoma 43%"), and the SR coded "unknown" as the retrieval-based diagnosis suggestion."""
    summary = summarize_evidence(diagnoses=["unknown", "melanoma", "nevus", "unknown"], scores=[0.9, 0.8, 0.5, 0.4],
                                 classes=["melanoma", "nevus", "unknown"], library={"melanoma": 3, "nevus": 5, "unknown": 2})
    assert "unknown" not in summary.distribution and summary.predicted == "melanoma"
    assert summary.k == 2 and summary.without_diagnosis == 2 and summary.library == {"melanoma": 3, "nevus": 5}
    assert "2 more without a recorded diagnosis, not counted" in summary.text()
    assert EvidenceSummary.from_dict(summary.to_dict()) == summary
    assert summarize_evidence(diagnoses=["unknown", "unknown"], scores=[0.9, 0.8]) is None  # nothing to vote with


def test_a_calibration_fitted_for_another_model_is_not_used_as_calibrated():
    """Found by review: the app applied MODELS' evidence_calibration.json whatever model it was fitted for, and labelled
    the vote "calibrated" (a probability in the SR)."""
    from monai_cir.evidence import UNCALIBRATED, calibration_for_model

    fitted = EvidenceCalibration(temperature=0.05, smoothing=0.1, k=16, fitted=True, model_fingerprint="a" * 64)
    assert calibration_for_model(fitted, "a" * 64) == (fitted, None)
    used, why = calibration_for_model(fitted, "b" * 64)
    assert used is UNCALIBRATED and "fitted for another model" in why
    unrecorded = EvidenceCalibration(temperature=0.05, smoothing=0.1, k=16, fitted=True)
    assert calibration_for_model(unrecorded, "b" * 64) == (unrecorded, None)


def test_a_site_conditioned_vote_compares_with_the_searched_part_of_the_library():
    """Found by review: a search restricted to the query's site was summarised against the whole library's make-up.
    The index counts the diagnoses of the cases a filter searches (FAISS's columns and the generic pass agree)."""
    from monai_cir.index import CaseMetadata, create_index
    from monai_cir.index.base import CaseIndex

    rng = np.random.default_rng(0)
    meta = [CaseMetadata(f"c{i}", ["nevus", "melanoma", "unknown"][i % 3], "lib", site=["trunk", "acral"][i % 2]) for i in range(30)]
    index = create_index(8, "fp")
    index.add(rng.normal(size=(30, 8)).astype(np.float32), meta)
    for filters in (None, {"site": "acral"}, {"site": ["acral", "trunk"]}, {"site": "face"}):
        expected = {}
        for m in meta:
            if filters is None or m.site in ([filters["site"]] if isinstance(filters["site"], str) else filters["site"]):
                expected[m.diagnosis] = expected.get(m.diagnosis, 0) + 1
        assert index.diagnosis_counts(filters) == expected == CaseIndex.diagnosis_counts(index, filters), filters
