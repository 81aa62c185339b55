"""The differential slot (:mod:`monai_cir.differential`): the rule, its ranking as the evaluation sees it,
its place among search hits as the app shows them, and its record in a checkpoint."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from monai_cir.differential import DifferentialSlot, differential_ranking, fit_margin, query_margins
from monai_cir.index import CaseMetadata, SearchHit
from monai_cir.metrics import rank_database

# database: 8 cases, label 1 only at index 5 (the "other diagnosis"); three queries
LABELS = np.array([0, 0, 0, 0, 0, 1, 0, 0])
SCORES = torch.tensor([
    [1.00, 0.99, 0.98, 0.97, 0.96, 0.95, 0.10, 0.05],  # margin 0.05, other at rank 6 -> opens
    [1.00, 0.99, 0.98, 0.97, 0.96, 0.20, 0.10, 0.05],  # margin 0.80 -> stays
    [1.00, 0.99, 0.50, 0.40, 0.30, 0.995, 0.10, 0.05],  # other at rank 2 already -> stays
])


def test_margins_and_positions_of_the_closest_other_diagnosis():
    margin, position = query_margins(SCORES, LABELS)
    np.testing.assert_allclose(margin, [0.05, 0.80, 0.005], atol=1e-6)
    assert position.tolist() == [5, 5, 1]
    margin, position = query_margins(SCORES, np.zeros(8, dtype=int))  # one diagnosis only: never opens
    assert np.isinf(margin).all() and position.tolist() == [8, 8, 8]


def test_slot_moves_the_closest_other_diagnosis_to_its_rank_and_nothing_else():
    slot = DifferentialSlot(margin=0.1)
    scores, opened = differential_ranking(SCORES, LABELS, slot)
    assert opened.tolist() == [True, False, False]
    ranking = rank_database(scores)  # how the evaluation ranks a method's output
    assert ranking[0].tolist() == [0, 1, 2, 5, 3, 4, 6, 7]
    assert ranking[1].tolist() == rank_database(SCORES)[1].tolist()
    assert ranking[2].tolist() == rank_database(SCORES)[2].tolist()
    # a rank-2 slot opens for the third query too? no: its other case already sits at rank 2
    _, opened = differential_ranking(SCORES, LABELS, DifferentialSlot(margin=1.0, rank=2))
    assert opened.tolist() == [True, True, False]


def test_leave_one_out_leaves_the_query_out_of_its_own_margin():
    """A collection against itself: the query's own column (the best score) is neither its best match nor the
    case the margin is measured from; it ranks last."""
    labels = np.array([0, 1, 0, 0])
    s = torch.tensor([
        [1.00, 0.85, 0.90, 0.10],  # without itself: best 0.90 (label 0), closest label 1 at 0.85: margin 0.05
        [0.85, 1.00, 0.30, 0.20],
        [0.90, 0.30, 1.00, 0.80],
        [0.10, 0.20, 0.80, 1.00],
    ])
    slot = DifferentialSlot(margin=0.1, rank=2)
    scores, opened = differential_ranking(s, labels, slot, leave_one_out=True)
    assert opened.tolist() == [False, False, False, False]  # query 0's label-1 case is its rank 2 already
    slot = DifferentialSlot(margin=0.1, rank=2)
    s[0, 3] = 0.95  # now: best 0.95 (label 0, index 3), then 0.90, then the label-1 case: it moves to rank 2
    scores, opened = differential_ranking(s, labels, slot, leave_one_out=True)
    assert opened.tolist() == [True, False, False, False]
    assert rank_database(scores)[0].tolist() == [3, 1, 2, 0]  # itself last
    _, opened = differential_ranking(s, labels, slot)  # itself counted: best 1.00, margin 0.15 > 0.1
    assert not opened[0]


def _hit(rank: int, case: str, diagnosis: str, score: float) -> SearchHit:
    return SearchHit(rank, case, score, CaseMetadata(case, diagnosis, "test"))


def test_place_puts_the_case_at_its_rank_and_renumbers():
    hits = [_hit(i, f"n{i}", "nevus", 1 - i / 10) for i in range(1, 6)]
    other = _hit(9, "m9", "melanoma", 0.1)
    slot = DifferentialSlot(margin=1.0)
    assert slot.opens(hits[0].score, other.score, other.rank)
    shown = slot.place(hits, other, top_k=5)
    assert [h.case_id for h in shown] == ["n1", "n2", "n3", "m9", "n4"]
    assert [h.rank for h in shown] == [1, 2, 3, 4, 5]
    assert hits[3].rank == 4  # the search's own hits are not changed
    # a case already in the list beyond the slot moves up instead of appearing twice
    inside = _hit(5, "n5", "melanoma", 0.6)
    assert [h.case_id for h in slot.place(hits, inside, top_k=5)] == ["n1", "n2", "n3", "n5", "n4"]
    assert slot.opens(1.0, 0.0, 9) and not slot.opens(1.0, -1e-6, 9)  # margin 1.0: at the limit it opens, beyond it not
    assert not slot.opens(1.0, 0.9, 4) and not slot.opens(1.0, 0.9, 2)  # already within the first 4: nothing to move
    notice = slot.notice("melanoma", 9, "nevus", 0.25)
    assert "rank 4" in notice and "melanoma" in notice and "similarity rank 9" in notice and "nevus" in notice


@pytest.mark.parametrize(("kwargs", "attribute"), [
    (dict(margin=0.0), "margin"), (dict(margin=-1.0), "margin"), (dict(margin=math.nan), "margin"),
    (dict(margin=True), "margin"), (dict(margin=0.2, rank=1), "rank"), (dict(margin=0.2, rank=2.5), "rank"),
])
def test_invalid_slot_names_the_attribute(kwargs, attribute):
    with pytest.raises(ValueError, match=f"DifferentialSlot.{attribute}"):
        DifferentialSlot(**kwargs)


def test_fit_margin_opens_the_slot_for_the_share_asked():
    """The margin is fitted among the queries a slot can open for (closest other diagnosis beyond its rank):
    at it, the slot opens for round(rate * n) of the n queries, however small the other queries' margins."""
    margins = np.array([0.0078125, 0.015625, 0.0625, 0.25, 0.5, 0.625, 0.75, 0.875, 0.9375, math.inf])
    positions = np.array([1, 2, 6, 4, 9, 0, 3, 2, 1, 10])  # 0-based: >= 4 is beyond rank 4 (0.0625, 0.25, 0.5)

    def opened(margin, rank=4):
        slot = DifferentialSlot(margin, rank=rank)
        return sum(slot.opens(1.0, 1.0 - m, int(p) + 1) for m, p in zip(margins, positions) if math.isfinite(m))

    assert fit_margin(margins, positions, 0.2) == 0.25 and opened(0.25) == 2  # round(0.2 * 9) = 2 of the 9 finite
    assert fit_margin(margins, positions, 0.1) == 0.0625 and opened(0.0625) == 1
    # the plain quantile of all margins (0.015625 at 0.2) would open for none of them
    assert opened(float(np.quantile(margins[:9], 0.2))) == 0
    assert fit_margin(margins, positions, 0.9) == 0.5 and opened(0.5) == 3  # fewer can open than asked: all of them
    assert fit_margin(margins, positions, 0.2, rank=2) == 0.0625 and opened(0.0625, rank=2) == 2  # at rank 2 also 0.015625 can open
    with pytest.raises(ValueError, match="open_rate"):
        fit_margin(margins, positions, 1.0)
    with pytest.raises(ValueError, match="held-out"):
        fit_margin([math.inf], [3], 0.1)
    with pytest.raises(ValueError, match="never opens"):
        fit_margin(margins[:2], positions[:2], 0.5)
    with pytest.raises(ValueError, match="one position per margin"):
        fit_margin(margins, positions[:3], 0.5)


def test_slot_recorded_in_a_checkpoint_loads_with_it(tiny_net, tmp_path):
    from monai_cir.networks import load_model, save_checkpoint
    from monai_cir.networks.checkpoint import read_checkpoint, record_in_checkpoint

    path = save_checkpoint(tiny_net, tmp_path / "model.pt", include_encoders=True, epoch=3)  # loads without the pretrained packages
    assert DifferentialSlot.from_checkpoint_info(read_checkpoint(path)["extra"]) is None
    slot = DifferentialSlot(margin=0.23, open_rate=0.15, description="test")
    before = read_checkpoint(path)
    record_in_checkpoint(path, differential=slot.to_dict())
    after = read_checkpoint(path)
    assert after["extra"] == {"epoch": 3, "differential": slot.to_dict()}  # added, nothing lost
    assert after["encoder_fingerprint"] == before["encoder_fingerprint"] and after["config"] == before["config"]
    assert all(torch.equal(after["head"][k], v) for k, v in before["head"].items())
    net = load_model(path)
    assert DifferentialSlot.from_checkpoint_info(net.checkpoint_info) == slot
    with pytest.raises(ValueError, match="differential"):
        DifferentialSlot.from_checkpoint_info({"differential": {"margin": 0.2, "colour": "red"}})


def test_closest_other_case_beyond_the_pool_and_its_similarity_rank():
    """When every case of the searched pool shares the best match's diagnosis, the other diagnoses are searched
    for the closest case; its rank is counted over the library up to a limit (a real FAISS index)."""
    from monai_cir.differential import closest_other_case, similarity_rank
    from monai_cir.index import create_index

    dim, rng = 8, np.random.default_rng(0)
    query = np.zeros(dim, dtype=np.float32)
    query[0] = 1.0
    # 300 nevi scoring 1.000 .. 0.701, then melanomas from 0.700 down: the closest melanoma is 301st
    n = 320
    vectors = np.stack([np.r_[1.0 - 0.001 * i, rng.normal(size=dim - 1) * 1e-4] for i in range(n)]).astype(np.float32)
    index = create_index(dim, "fp")
    index.add(vectors, [CaseMetadata(f"c{i:03d}", "nevus" if i < 300 else "melanoma", "test") for i in range(n)])
    pool = index.search(query[None], k=16)[0]
    assert {h.metadata.diagnosis for h in pool} == {"nevus"}
    other, rank = closest_other_case(index, query, pool, ["melanoma", "nevus"])
    assert other.case_id == "c300" and other.metadata.diagnosis == "melanoma" and rank is None  # beyond the pool
    assert similarity_rank(index, query, other.score, limit=4096) == 301
    assert similarity_rank(index, query, other.score) is None  # beyond the app's count (RANK_COUNT_LIMIT, 256)
    assert similarity_rank(index, query, other.score, limit=100) is None
    assert similarity_rank(index, query, pool[2].score) == 3
    slot = DifferentialSlot(margin=0.5)
    assert slot.opens(pool[0].score, other.score, len(pool) + 1)
    assert [h.case_id for h in slot.place(pool[:5], other, 5)] == ["c000", "c001", "c002", "c300", "c003"]
    assert not DifferentialSlot(margin=0.2).opens(pool[0].score, other.score, len(pool) + 1)  # margin ~0.30
    assert "beyond similarity rank 256" in slot.notice("melanoma", None, "nevus", 0.3)
    # found in the pool: its pool rank, no search; a library of one diagnosis: none
    assert closest_other_case(index, query, [pool[0], dataclasses.replace(other, rank=2)], ["melanoma", "nevus"])[1] == 2
    assert closest_other_case(index, query, pool, ["nevus"]) is None


def _library_index(n: int = 60, dim: int = 16, fingerprint: str = "fp", seed: int = 1):
    from monai_cir.index import create_index

    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.array(["nevus", "melanoma", "benign keratosis"])[rng.integers(0, 3, size=n)]
    index = create_index(dim, fingerprint)
    index.add(vectors, [CaseMetadata(f"c{i:03d}", str(d), "test") for i, d in enumerate(labels)])
    return index, vectors, labels


def test_library_margins_are_the_leave_one_out_margins_of_its_cases():
    """Each library case queries the others (itself left out) through the index's filtered searches: the same
    margins as a brute-force leave-one-out over the whole similarity matrix."""
    from monai_cir.differential import library_margins

    index, vectors, labels = _library_index()
    s = torch.as_tensor(vectors @ vectors.T)
    expected, where = query_margins(s.fill_diagonal_(-math.inf), np.unique(labels, return_inverse=True)[1])  # itself never counts
    margins, positions, queried = library_margins(index, sample=None, batch=7)
    assert queried == 60
    finite = np.isfinite(expected)
    np.testing.assert_allclose(margins, expected[finite], atol=1e-5)
    np.testing.assert_array_equal(positions, np.minimum(where[finite], 4))  # counted up to the slot's rank
    assert (positions < 4).any() and (positions == 4).any()  # both kinds of query occur in this library
    np.testing.assert_array_equal(library_margins(index, sample=None, rank=2)[1], np.minimum(where[finite], 2))
    # training cases left out: they do not query, but stay in the library the others search
    out = set(index.case_ids()[:20])
    kept = np.array([i for i, c in enumerate(index.case_ids()) if c not in out])
    left, left_positions, queried = library_margins(index, sample=None, exclude=out)
    assert queried == 40
    np.testing.assert_allclose(left, expected[kept][np.isfinite(expected[kept])], atol=1e-5)
    np.testing.assert_array_equal(left_positions, np.minimum(where[kept][np.isfinite(expected[kept])], 4))
    with pytest.raises(ValueError, match="excluded"):
        library_margins(index, exclude=set(index.case_ids()))
    sampled, _, queried = library_margins(index, sample=20)
    assert queried == 20 and len(sampled) == 20 and set(np.round(sampled, 5)) <= set(np.round(margins, 5))


def test_fit_differential_command_records_the_library_margin_in_the_checkpoint(tiny_net, tmp_path, capsys):
    from monai_cir.cli import main
    from monai_cir.differential import library_margins
    from monai_cir.index import create_index
    from monai_cir.networks import load_model, save_checkpoint
    from monai_cir.networks.checkpoint import read_checkpoint
    from monai_cir.retrieval import model_fingerprint

    checkpoint = save_checkpoint(tiny_net, tmp_path / "model.pt", include_encoders=True, epoch=1)
    fingerprint = model_fingerprint(load_model(checkpoint))
    index, vectors, labels = _library_index(fingerprint=fingerprint)
    index.save(tmp_path / "index")
    assert main(["index", "fit-differential", str(tmp_path / "index"), "--model", str(checkpoint), "--open-rate", "0.2"]) == 0
    recorded = DifferentialSlot.from_checkpoint_info(read_checkpoint(checkpoint)["extra"])
    assert recorded.open_rate == 0.2 and recorded.margin == pytest.approx(fit_margin(*library_margins(index)[:2], 0.2))
    assert read_checkpoint(checkpoint)["extra"]["epoch"] == 1  # the rest of the record kept
    # a checkpoint that records its training cases: those in the library do not query
    from monai_cir.networks.checkpoint import record_in_checkpoint

    trained = index.case_ids()[:30] + ["elsewhere-1"]
    record_in_checkpoint(checkpoint, trained_on=trained)
    assert "margin" in capsys.readouterr().out  # the first fit said what it recorded
    assert main(["index", "fit-differential", str(tmp_path / "index"), "--model", str(checkpoint), "--open-rate", "0.2"]) == 0
    recorded = DifferentialSlot.from_checkpoint_info(read_checkpoint(checkpoint)["extra"])
    assert recorded.margin == pytest.approx(fit_margin(*library_margins(index, exclude=set(trained))[:2], 0.2))
    assert recorded.description.startswith("fitted on 30 image-only")  # 60 cases, 30 of them training cases
    assert "30 of the 60 library cases trained this model" in capsys.readouterr().err
    assert "30 training cases of this model left out" in recorded.description
    other = create_index(vectors.shape[1], "another model")
    other.add(vectors, [CaseMetadata(f"c{i:03d}", str(d), "test") for i, d in enumerate(labels)])
    other.save(tmp_path / "other")
    assert main(["index", "fit-differential", str(tmp_path / "other"), "--model", str(checkpoint)]) != 0  # refused: another model's scores
    # a library where every case's nearest neighbour is of the other diagnosis: the slot can never open, nothing to fit
    twins = np.repeat(vectors[:20], 2, axis=0) + np.random.default_rng(2).normal(scale=1e-3, size=(40, vectors.shape[1])).astype(np.float32)
    mixed = create_index(vectors.shape[1], fingerprint)
    mixed.add(twins / np.linalg.norm(twins, axis=1, keepdims=True), [CaseMetadata(f"t{i:03d}", ("nevus", "melanoma")[i % 2], "test") for i in range(40)])
    mixed.save(tmp_path / "mixed")
    capsys.readouterr()
    before = read_checkpoint(checkpoint)["extra"]["differential"]
    assert main(["index", "fit-differential", str(tmp_path / "mixed"), "--model", str(checkpoint)]) == 2
    assert "never opens" in capsys.readouterr().err
    assert read_checkpoint(checkpoint)["extra"]["differential"] == before  # the recorded slot is left as it was


def test_the_app_and_the_evaluation_show_the_same_cases():
    """One rule, two forms: what the app shows (:func:`shown_with_differential` over a real index's search
    hits) is the top k of :func:`differential_ranking` over the same similarities (what the evaluation scores
    and the bundle's inference writes), query by query, the slot opened or not."""
    from monai_cir.differential import shown_with_differential

    index, vectors, labels = _library_index(n=80, dim=6, seed=3)
    rng = np.random.default_rng(4)
    queries = rng.normal(size=(40, 6)).astype(np.float32)
    classes = sorted(set(labels.tolist()))
    codes = np.array([classes.index(d) for d in labels])
    slot = DifferentialSlot(margin=0.15, rank=3)
    scores, opened = differential_ranking(torch.as_tensor(queries @ vectors.T), codes, slot)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    for i, query in enumerate(queries):
        pool = index.search(query[None], k=16)[0]
        hits, record = shown_with_differential(slot, index, query, pool, 5, classes)
        assert [h.case_id for h in hits] == [f"c{j:03d}" for j in order[i, :5].tolist()], i
        assert (record is not None) == bool(opened[i]), i
    assert 0 < opened.sum() < len(queries)  # both branches checked


def test_a_case_without_a_recorded_diagnosis_is_no_differential():
    """Found by review: the slot showed "the closest unknown case" (a library case indexed without a diagnosis) at rank 4,
    pushing the real differential out; and a pool led by such a case took "unknown" as the best match's diagnosis."""
    from monai_cir.differential import closest_other_case
    from monai_cir.index import create_index

    dim = 4
    query = np.array([1.0, 0, 0, 0], dtype=np.float32)
    vectors = np.array([[1.0 - 0.01 * i, 0, 0, 0] for i in range(6)], dtype=np.float32)
    diagnoses = ["unknown", "nevus", "unknown", "nevus", "melanoma", "nevus"]
    index = create_index(dim, "fp")
    index.add(vectors, [CaseMetadata(f"c{i}", d, "test") for i, d in enumerate(diagnoses)])
    pool = index.search(query[None], k=6)[0]
    other, rank = closest_other_case(index, query, pool, ["melanoma", "nevus", "unknown"])
    assert other.metadata.diagnosis == "melanoma" and rank == 5
    only_unknown_else = [h for h in pool if h.metadata.diagnosis != "melanoma"]
    assert closest_other_case(index, query, only_unknown_else, ["nevus", "unknown"]) is None


def test_library_margins_follow_the_apps_rule_for_cases_without_a_diagnosis():
    """Found by the codebase review: ``monai-cir index fit-differential`` fitted the margin counting library cases indexed
    without a diagnosis ("unknown": DICOM images with no case report) as a diagnosis of their own, which the app's rule
    never does (:func:`closest_other_case`): beside such cases a query's fitted margin was 0.0006 where the app's was
    0.9988. Each query's margin and position must be the app's, the query itself left out."""
    from monai_cir.differential import closest_other_case, library_margins
    from monai_cir.index import create_index

    def unit(v):
        v = np.asarray(v, dtype=np.float32)
        return v / np.linalg.norm(v)

    vectors = np.stack([unit([1, 0.05 * i, 0]) for i in range(3)] + [unit([1, 0.02, 0.03]), unit([1, 0.07, 0.02])]
                       + [unit([0, 1, 0.1 * i]) for i in range(3)])
    diagnoses = ["melanoma"] * 3 + ["unknown"] * 2 + ["nevus"] * 3
    index = create_index(3, "fp")
    index.add(vectors, [CaseMetadata(f"c{i}", d, "test") for i, d in enumerate(diagnoses)])
    margins, positions, queried = library_margins(index, sample=None, rank=4)
    expected_margins, expected_positions = [], []
    for i, vector in enumerate(vectors):
        pool = [h for h in index.search(vector[None], k=len(vectors))[0] if h.case_id != f"c{i}"]
        best = next(h for h in pool if h.metadata.diagnosis != "unknown")
        other, _ = closest_other_case(index, vector, pool, ["melanoma", "nevus", "unknown"])
        expected_margins.append(best.score - other.score)
        expected_positions.append(min(pool.index(other), 4))
    assert queried == 8
    np.testing.assert_allclose(margins, expected_margins, atol=1e-5)
    np.testing.assert_array_equal(positions, expected_positions)
    assert margins.min() > 0.5  # beside the unknown cases, the melanomas' differential is still the far nevi
