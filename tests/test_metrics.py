"""Retrieval metrics (arXiv v1 Eqs. 10-14) on hand-computed rankings and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_cir.metrics import leave_one_out_metrics, retrieval_metrics, summarize_folds


def test_hand_computed_ranking():
    # database labels:  0  1  0  1  1 ; query label 0 -> relevant items 0 and 2 (R_q = 2)
    # scores rank the database 1, 0, 4, 2, 3 -> rel = [0, 1, 0, 1, 0]
    s = np.array([[0.8, 0.9, 0.3, 0.1, 0.5]])
    m = retrieval_metrics(s, [0], [0, 1, 0, 1, 1])
    assert m["ranking"].tolist() == [[1, 0, 4, 2, 3]]
    # P(2) = 1/2, P(4) = 2/4 -> AP = (1/2 + 1/2) / 2 = 0.5
    assert m["ap"][0] == pytest.approx(0.5)
    assert m["map"] == pytest.approx(0.5)
    assert m["acc@1"] == 0.0 and m["acc@2"] == 1.0 and m["acc@4"] == 1.0


def test_precision_at_k_by_hand():
    # rel in rank order: q0 [0, 1, 0, 1, 0, 1] -> P@5 = 2/5; q1 (reversed ranking) [1, 0, 1, 0, 1, 0] -> P@5 = 3/5
    s = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]])
    m = retrieval_metrics(s, [0, 0], [1, 0, 1, 0, 1, 0], precision_ks=(1, 5))
    assert m["p@5"] == pytest.approx((2 / 5 + 3 / 5) / 2)
    assert m["p@1"] == pytest.approx(m["acc@1"])  # P@1 is Acc@1
    # fewer than K database items: the share of the whole (ranked) database
    assert retrieval_metrics(np.array([[0.2, 0.1]]), [0], [0, 1])["p@5"] == pytest.approx(1 / 2)
    # leave-one-out: the query itself is not among its top K
    loo = leave_one_out_metrics(np.ones((3, 3)), [0, 0, 1], precision_ks=(2,))
    assert loo["p@2"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)


def test_two_queries_mean_and_fractions():
    s = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    m = retrieval_metrics(s, torch.tensor([1, 0]), torch.tensor([1, 0, 0]))
    # q0 (label 1): ranking 0, 2, 1 -> rel 1, 0, 0 -> AP 1
    # q1 (label 0): ranking 1, 0, 2 -> rel 1, 0, 1 -> AP (1 + 2/3) / 2 = 5/6
    assert m["ap"].tolist() == pytest.approx([1.0, 5 / 6])
    assert m["map"] == pytest.approx((1 + 5 / 6) / 2)
    assert m["acc@1"] == 1.0  # fractions, not percent
    assert set(m["hits"]) == {1, 2, 4}


def test_ties_keep_database_order():
    # all scores equal: the ranking is the database order (stable sort), both ways round
    m = retrieval_metrics(np.zeros((1, 4)), [1], [0, 1, 1, 0])
    assert m["ranking"].tolist() == [[0, 1, 2, 3]]
    assert m["ap"][0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["acc@1"] == 0.0 and m["acc@2"] == 1.0
    m = retrieval_metrics(np.zeros((1, 4)), [1], [1, 0, 0, 1])
    assert m["ap"][0] == pytest.approx((1 + 2 / 4) / 2)
    assert m["acc@1"] == 1.0
    # a partial tie: items 1 and 3 share the top score; 1 comes first
    m = retrieval_metrics(np.array([[0.1, 0.7, 0.2, 0.7]]), [0], [0, 1, 1, 0])
    assert m["ranking"].tolist() == [[1, 3, 2, 0]]


def test_class_with_one_member_and_no_relevant():
    # a class with one member in the database
    m = retrieval_metrics(np.array([[0.1, 0.2, 0.3]]), [2], [0, 2, 0])
    assert m["ap"][0] == pytest.approx(1 / 2)
    assert m["acc@1"] == 0.0 and m["acc@2"] == 1.0
    # a query whose class is absent from the database: AP 0, no hit, counted
    m = retrieval_metrics(np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]), [2, 0], [0, 1, 0])
    assert m["ap"].tolist() == pytest.approx([0.0, 5 / 6])  # q1: rel 1, 0, 1
    assert m["no_relevant"] == 1
    assert m["acc@4"] == 0.5


def test_k_larger_than_database():
    m = retrieval_metrics(np.array([[0.9, 0.1]]), [1], [0, 1], ks=(1, 2, 4, 100))
    assert m["acc@1"] == 0.0
    assert m["acc@4"] == 1.0 and m["acc@100"] == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(np.zeros((2, 3)), [0], [0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 1.0]]), [0], [0, 1])
    with pytest.raises(ValueError, match="K"):
        retrieval_metrics(np.zeros((1, 2)), [0], [0, 1], ks=(0,))


def test_agrees_with_sklearn_average_precision():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for n_classes in (2, 3, 5):
        s = rng.normal(size=(40, 120))
        q = rng.integers(0, n_classes, 40)
        d = rng.integers(0, n_classes, 120)
        m = retrieval_metrics(s, q, d)
        for i in range(len(q)):
            expected = sklearn_metrics.average_precision_score(d == q[i], s[i])
            assert m["ap"][i] == pytest.approx(expected, abs=1e-12)
        # Acc@K against a direct computation
        order = np.argsort(-s, axis=1)
        for k in (1, 2, 4):
            assert m[f"acc@{k}"] == pytest.approx(np.mean([(d[order[i, :k]] == q[i]).any() for i in range(len(q))]))


def test_leave_one_out_matches_explicit_loop():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 8))
    s = x @ x.T
    y = rng.integers(0, 2, 30)
    m = leave_one_out_metrics(s, y)
    for i in range(30):
        keep = np.arange(30) != i
        ref = retrieval_metrics(s[i : i + 1, keep], y[i : i + 1], y[keep])
        assert m["ap"][i] == pytest.approx(ref["ap"][0])
        assert m["hits"][1][i] == ref["hits"][1][0]
        assert i not in m["ranking"][i]


def test_summarize_folds_sample_std():
    # the paper's Table 2, ResNet50-CosSim: 78.5 81.7 84.0 77.2 80.6 -> 80.4 ± 2.7 (ddof = 1)
    out = summarize_folds([78.5, 81.7, 84.0, 77.2, 80.6], ndigits=1)
    assert out["mean"] == pytest.approx(80.4) and out["std"] == pytest.approx(2.7)
    out = summarize_folds([0.5, 0.7], scale=100)
    assert out["folds"] == pytest.approx([50.0, 70.0]) and out["std"] == pytest.approx(np.std([50, 70], ddof=1))
    assert summarize_folds([0.3])["std"] is None


def test_trainer_validation_score_is_the_metric_of_metrics_py():
    """The trainer's validation mAP / Acc@1 rank ties as :func:`retrieval_metrics` does (stable, database order)."""
    from monai_cir.engine import retrieval_score

    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 2, (6, 3), generator=g).float()  # few distinct scores: many ties
    t = torch.randint(0, 2, (200, 3), generator=g).float()
    q_labels, t_labels = torch.arange(6) % 2, (torch.arange(200) // 7) % 2
    score = retrieval_score(q, t, q_labels, t_labels)
    m = retrieval_metrics(q @ t.T, q_labels, t_labels)
    assert score["val_mAP"] == pytest.approx(m["map"], abs=1e-9)
    assert score["val_acc1"] == pytest.approx(m["acc@1"], abs=1e-9)
