"""The diagnosis prior: the query's diagnosis posterior in the ranking (:class:`monai_cir.networks.DiagnosisPrior`,
:mod:`monai_cir.prior_ranking`, :func:`monai_cir.engine.fit_diagnosis_prior`): its terms follow the findings gate,
a case index ranked with it is the dense ranking by ``S + t(y_c)``, the app's answer is the evaluation's ranking,
and the probes survive a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import activate_head, make_tiny_net
from monai_cir.differential import DifferentialSlot, differential_ranking
from monai_cir.index import CaseMetadata, create_index

CLASSES = ["melanoma", "nevus", "benign keratosis"]
FULL = ("Atypical pigment network; no streaks; no pigmentation; no regression structures; no dots and globules; "
        "blue-whitish veil present; no vascular structures.")
PARTIAL = "Dermoscopy: atypical pigment network; no streaks."  # 2 findings: w = 0.4


def _prior_net(strength: float = 10.0):
    net = activate_head(make_tiny_net(late_fusion_share=0.5, diagnosis_prior={"classes": CLASSES, "strength": strength}))
    d = net.diagnosis_prior.mean.shape[1]
    g = torch.Generator().manual_seed(0)
    for which in (0, 1):
        net.diagnosis_prior.set_probe(which, torch.randn(d, generator=g), torch.rand(d, generator=g) + 0.5,
                                      torch.randn(3, d, generator=g), torch.randn(3, generator=g))
    return net


def _library(n: int = 90, dim: int = 6, seed: int = 3):
    """A real FAISS index: three diagnoses of the prior and one it does not know."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.array([*CLASSES, "dermatofibroma"])[rng.integers(0, 4, size=n)]
    index = create_index(dim, "fp")
    index.add(vectors, [CaseMetadata(f"c{i:03d}", str(d), "test", site="trunk" if i % 3 else "face") for i, d in enumerate(labels)])
    return index, vectors, labels


def _dense_k(queries, vectors, labels, terms):
    columns = np.array([CLASSES.index(d) if d in CLASSES else len(CLASSES) for d in labels])
    return torch.as_tensor(queries @ vectors.T).double() + torch.as_tensor(terms)[:, columns]


def test_terms_follow_the_findings_gate_and_pick_the_probe_by_text_weight():
    """No finding: no term (the query ranks by S). A full report: the full-text probe's λ log p; a text naming 2
    findings: the partial-text probe's, times w = 0.4. The last column is the expected term. Q is unchanged."""
    net = _prior_net()
    images = torch.rand(4, 3, 64, 64)
    texts = ["", "female patient, 45 years", PARTIAL, FULL]
    q, terms = net.encode_query_and_terms(images, texts)
    torch.testing.assert_close(q, net.encode_query(images, texts))
    assert torch.count_nonzero(terms[:2]) == 0
    maps = net.image_features(images)
    tokens, mask = net.text_tokens(texts)
    from monai_cir.networks.late_fusion import sentence_embedding

    from monai_cir.networks.late_fusion import LateFusionBranch

    x = torch.cat([sentence_embedding(tokens, mask), LateFusionBranch.pool(maps)], dim=1)
    prior = net.diagnosis_prior
    for row, probe, w in ((2, 1, 0.4), (3, 0, 1.0)):
        logits = ((x[row] - prior.mean[probe]) / prior.scale[probe]) @ prior.weight[probe].T + prior.bias[probe]
        log_p = torch.log_softmax(logits, dim=0).clamp_min(np.log(1e-12))
        torch.testing.assert_close(terms[row, :3], 10.0 * w * log_p, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(terms[row, 3], 10.0 * w * (log_p.exp() * log_p).sum(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(terms[2, :3] / 0.4, terms[3, :3])  # two probes, not one


def test_an_unfitted_or_malformed_prior_is_refused_with_the_reason():
    net = activate_head(make_tiny_net(late_fusion_share=0.5, diagnosis_prior={"classes": CLASSES}))
    with pytest.raises(ValueError, match="not fitted"):
        net.encode_query_and_terms(torch.rand(1, 3, 64, 64), [FULL])
    assert net.encode_query(torch.rand(1, 3, 64, 64), [FULL]).shape == (1, net.embedding_dim)  # Q needs no prior
    from monai_cir.networks import DiagnosisPrior

    with pytest.raises(ValueError, match="classes"):
        DiagnosisPrior(["nevus"], 8)
    with pytest.raises(ValueError, match="strength"):
        DiagnosisPrior(CLASSES, 8, strength=-1.0)
    with pytest.raises(ValueError, match="probe weight"):
        DiagnosisPrior(CLASSES, 8).set_probe(0, np.zeros(8), np.ones(8), np.zeros((2, 8)), np.zeros(3))


def test_prior_ranked_index_is_the_dense_ranking_by_s_plus_terms():
    """One filtered search per diagnosis, merged, ranks a real index exactly as ``S + t(y_c)`` over the whole
    library (a diagnosis the prior does not know takes the last term), with and without filters; the hits carry
    ``K`` until :meth:`with_similarity` gives them back ``S``."""
    from monai_cir.prior_ranking import PriorRankedIndex

    index, vectors, labels = _library()
    rng = np.random.default_rng(5)
    queries = rng.normal(size=(25, vectors.shape[1])).astype(np.float32)
    terms = rng.normal(scale=0.5, size=(25, 4))
    dense = _dense_k(queries, vectors, labels, terms)
    for i, query in enumerate(queries):
        ranked = PriorRankedIndex(index, terms[i], CLASSES)
        hits = ranked.search(query[None], k=7)[0]
        assert [h.case_id for h in hits] == [f"c{j:03d}" for j in torch.argsort(dense[i], descending=True)[:7].tolist()], i
        np.testing.assert_allclose([h.score for h in hits], torch.sort(dense[i], descending=True).values[:7].numpy(), atol=1e-5)
        similarity = ranked.with_similarity(hits)
        np.testing.assert_allclose([h.score for h in similarity], [float(query @ vectors[int(h.case_id[1:])]) for h in hits], atol=1e-5)
        on_face = ranked.search(query[None], k=4, filters={"site": "face", "diagnosis": ["nevus", "dermatofibroma"]})[0]
        allowed = np.array([j % 3 == 0 and labels[j] in ("nevus", "dermatofibroma") for j in range(len(labels))])
        expected = [f"c{j:03d}" for j in torch.argsort(torch.where(torch.as_tensor(allowed), dense[i], -torch.inf), descending=True)[:4].tolist()]
        assert [h.case_id for h in on_face] == expected, i
    with pytest.raises(ValueError, match="4 finite values"):
        PriorRankedIndex(index, terms[0, :3], CLASSES)


def test_the_app_answer_with_the_prior_is_the_evaluations_ranking():
    """:func:`monai_cir.retrieval.ranked_answer` (what the deploy app and ``monai-cir search`` show) with the prior
    and the differential slot is, query by query, the top k of :func:`differential_ranking` over the dense ``K`` (what
    ``monai-cir evaluate``'s ``composed_late_fusion_prior_differential`` scores), slot opened or not; the cases shown
    carry their similarity ``S``, and the pool the evidence votes over stays the similarity ranking."""
    from monai_cir.retrieval import ranked_answer

    index, vectors, labels = _library(n=80)
    rng = np.random.default_rng(4)
    queries = rng.normal(size=(40, vectors.shape[1])).astype(np.float32)
    terms = rng.normal(scale=1.0, size=(40, 4))
    codes = np.array([sorted(set(labels)).index(d) for d in labels])
    dense = _dense_k(queries, vectors, labels, terms)
    slot = DifferentialSlot(margin=0.6, rank=3)
    scores, opened = differential_ranking(dense, codes, slot)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    prior = type("Prior", (), {"classes": CLASSES})()
    for i, query in enumerate(queries):
        shown = ranked_answer(index, query, 5, 16, terms=terms[i], prior=prior, slot=slot)
        assert [h.case_id for h in shown.hits] == [f"c{j:03d}" for j in order[i, :5].tolist()], i
        assert (shown.differential is not None) == bool(opened[i]), i
        if shown.differential is not None:  # its rank by similarity alone, and a notice in the prior ranking's words
            other = next(h for h in shown.hits if h.case_id == shown.differential["case_id"])
            assert shown.differential["similarity_rank"] == 1 + int((vectors @ query > other.score + 1e-6).sum()), i
            assert "nearly as likely, by the image, the findings" in shown.differential["notice"] and "similarity rank" in shown.differential["notice"]
        np.testing.assert_allclose([h.score for h in shown.hits], [float(query @ vectors[int(h.case_id[1:])]) for h in shown.hits], atol=1e-5)
        assert [h.case_id for h in shown.pool] == [f"c{j:03d}" for j in np.argsort(-(vectors @ query), kind="stable")[:16]]
    assert 0 < opened.sum() < len(queries)
    from monai_cir.prior_ranking import PRIOR_NOTICE, PRIOR_RANKING, SIMILARITY_RANKING

    moved = ranked_answer(index, queries[0], 5, terms=terms[0], prior=prior)
    assert (moved.ranking, moved.notice) == (PRIOR_RANKING, PRIOR_NOTICE)
    unmoved = ranked_answer(index, queries[0], 5, terms=np.zeros(4), prior=prior)  # a text naming no finding
    assert (unmoved.ranking, unmoved.notice) == (SIMILARITY_RANKING, None)
    # the notice's text where the ranking belongs (the field's meaning until 9a5899b) is refused, not read as "similarity"
    from monai_cir.retrieval import Answer

    with pytest.raises(TypeError):
        Answer(moved.hits, moved.pool, None, PRIOR_NOTICE)
    with pytest.raises(ValueError, match="Answer.ranking must be one of"):
        Answer(moved.hits, moved.pool, ranking=PRIOR_NOTICE)
    assert [h.case_id for h in unmoved.hits] == [h.case_id for h in unmoved.pool[:5]]
    # cases the prior brought up though not similar at all (similarity 0 or below; a library with few cases of the likely
    # diagnosis) are named as such (before: shown as "similar cases" at "-0%" and "-14%" without a word)
    import dataclasses

    scores = (1.15, 0.75, 0.45, -0.006, -0.27)
    unlike = Answer([dataclasses.replace(h, rank=r, score=v) for r, (h, v) in enumerate(zip(moved.hits, scores), 1)], moved.pool, ranking=PRIOR_RANKING)
    assert unlike.notice == PRIOR_NOTICE and moved.unlike_notice is None
    assert unlike.unlike_notice.startswith("the cases at ranks 4 and 5 are not similar to this lesion (similarity 0 or below): shown for their")
    assert Answer(unlike.hits[:4], moved.pool, ranking=PRIOR_RANKING).unlike_notice.startswith("the case at rank 4 is not similar")
    assert Answer(unlike.hits, moved.pool).unlike_notice is None  # the similarity ranking shows the most similar there are


def test_a_differential_case_beyond_the_pool_is_counted_once_by_similarity(monkeypatch):
    """With the prior, the slot's case may lie beyond the pool (the 201st case by similarity here): its rank is counted
    by similarity over the index, and no search through the prior ranking asks for more cases than the answer ranks
    (counting there, in the prior's units, was one search per diagnosis of hundreds of cases, thrown away after)."""
    from monai_cir.differential import RANK_COUNT_LIMIT
    from monai_cir.prior_ranking import PriorRankedIndex
    from monai_cir.retrieval import ranked_answer

    dim, rng = 8, np.random.default_rng(0)
    query = np.zeros(dim, dtype=np.float32)
    query[0] = 1.0
    n = 220  # 200 nevi scoring 1.000 .. 0.801, then melanomas from 0.800 down
    vectors = np.stack([np.r_[1.0 - 0.001 * i, rng.normal(size=dim - 1) * 1e-4] for i in range(n)]).astype(np.float32)
    index = create_index(dim, "fp")
    index.add(vectors, [CaseMetadata(f"c{i:03d}", "nevus" if i < 200 else "melanoma", "test") for i in range(n)])
    asked = []
    prior_search = PriorRankedIndex.search
    monkeypatch.setattr(PriorRankedIndex, "search", lambda self, q, k=10, filters=None: asked.append(k) or prior_search(self, q, k, filters))
    prior = type("Prior", (), {"classes": CLASSES})()
    terms = np.array([-0.1, 0.0, -5.0, -2.0])  # melanoma nearly as likely as nevus: the slot opens with the closest melanoma
    shown = ranked_answer(index, query, 5, 16, terms=terms, prior=prior, slot=DifferentialSlot(margin=5.0, rank=4))
    assert shown.differential is not None and shown.differential["case_id"] == "c200"
    assert shown.differential["similarity_rank"] == 201 <= RANK_COUNT_LIMIT and "similarity rank 201" in shown.differential["notice"]
    assert asked and max(asked) <= 16, sorted(set(asked))


def test_a_query_the_prior_leaves_alone_gets_the_similarity_margin():
    """With a prior the slot has two margins: ``margin`` in the prior ranking's units for the queries it orders,
    ``margin_by_similarity`` for a text naming no finding (ranked by S): the app's answer and the evaluation's
    ranking pick the same one per query."""
    from monai_cir.retrieval import ranked_answer

    slot = DifferentialSlot(margin=5.0, rank=3, margin_by_similarity=1e-6)
    assert slot.for_query(True) is slot and slot.for_query(False).margin == 1e-6 and slot.for_query(False).margin_by_similarity is None
    with pytest.raises(ValueError, match="margin_by_similarity"):
        DifferentialSlot(margin=0.2, margin_by_similarity=0.0)
    # a library that clusters by diagnosis (as the release embedding does), queries near the clusters
    rng = np.random.default_rng(7)
    names = np.array([*CLASSES, "dermatofibroma"])
    centres = rng.normal(size=(4, 6))
    codes_of = rng.integers(0, 4, size=80)
    vectors = (centres[codes_of] + 0.3 * rng.normal(size=(80, 6))).astype(np.float32)
    labels = names[codes_of]
    index = create_index(6, "fp")
    index.add(vectors, [CaseMetadata(f"c{i:03d}", str(d), "test") for i, d in enumerate(labels)])
    queries = (centres[rng.integers(0, 4, size=30)] + 0.3 * rng.normal(size=(30, 6))).astype(np.float32)
    terms = rng.normal(scale=1.0, size=(30, 4))
    terms[::2] = 0.0  # every other query: a text naming no finding
    acted = (terms != 0).any(axis=1)
    codes = np.array([sorted(set(labels)).index(d) for d in labels])
    scores, opened = differential_ranking(_dense_k(queries, vectors, labels, terms), codes, slot, prior_acted=acted)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    prior = type("Prior", (), {"classes": CLASSES})()
    for i, query in enumerate(queries):
        shown = ranked_answer(index, query, 5, terms=terms[i], prior=prior, slot=slot)
        assert [h.case_id for h in shown.hits] == [f"c{j:03d}" for j in order[i, :5].tolist()], i
        assert (shown.differential is not None) == bool(opened[i]), i
    assert not opened[~acted].any() and opened[acted].any()  # a margin of 1e-6 never opens; 5.0 does


def test_the_prior_is_saved_and_loaded_with_the_head(tmp_path):
    from monai_cir.networks import load_model, save_checkpoint

    net = _prior_net(strength=3.0)
    loaded = load_model(save_checkpoint(net, tmp_path / "model.pt", include_encoders=True))
    assert loaded.config["diagnosis_prior"] == {"classes": CLASSES, "strength": 3.0}
    images, texts = torch.rand(2, 3, 64, 64), [FULL, PARTIAL]
    torch.testing.assert_close(loaded.encode_query_and_terms(images, texts)[1], net.encode_query_and_terms(images, texts)[1])
    assert loaded.fingerprint() == net.fingerprint() != make_tiny_net(late_fusion_share=0.5).fingerprint()


def test_fit_differential_on_a_library_refits_the_margin_of_queries_the_prior_leaves_alone(tmp_path):
    """``monai-cir index fit-differential`` fits on image-only queries, which the prior leaves alone: with a prior it
    replaces ``margin_by_similarity`` and keeps the margin of the queries the prior orders (fitted on texts)."""
    from monai_cir.cli import main
    from monai_cir.differential import fit_margin, library_margins
    from monai_cir.networks import load_model, save_checkpoint
    from monai_cir.networks.checkpoint import read_checkpoint, record_in_checkpoint
    from monai_cir.retrieval import model_fingerprint

    slot = DifferentialSlot(margin=4.5, open_rate=0.15, description="derm7pt folds", margin_by_similarity=0.27)
    checkpoint = save_checkpoint(_prior_net(), tmp_path / "model.pt", include_encoders=True)
    record_in_checkpoint(checkpoint, differential=slot.to_dict())
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(60, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = create_index(16, model_fingerprint(load_model(checkpoint)))
    centres = rng.normal(size=(3, 16))  # a library that clusters by diagnosis: some queries' top 4 share one
    labels = rng.integers(0, 3, size=60)
    vectors = centres[labels] + 0.8 * vectors
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    index.add(vectors, [CaseMetadata(f"c{i:03d}", CLASSES[c], "test") for i, c in enumerate(labels)])
    index.save(tmp_path / "index")
    assert main(["index", "fit-differential", str(tmp_path / "index"), "--model", str(checkpoint), "--open-rate", "0.2"]) == 0
    recorded = DifferentialSlot.from_checkpoint_info(read_checkpoint(checkpoint)["extra"])
    assert recorded.margin == 4.5 and recorded.margin_by_similarity == pytest.approx(fit_margin(*library_margins(index)[:2], 0.2))
    assert "derm7pt folds" in recorded.description and recorded.open_rate == 0.2
    # a prior checkpoint with no slot to keep: its findings queries' margin cannot be fitted on images, so it refuses
    record_in_checkpoint(checkpoint, differential=None)
    assert main(["index", "fit-differential", str(tmp_path / "index"), "--model", str(checkpoint)]) == 2
    assert read_checkpoint(checkpoint)["extra"]["differential"] is None


def test_the_bundles_target_tower_loads_a_head_with_the_prior():
    """``ckpt_export --key_in_ckpt head`` loads the checkpoint's head into the target tower: with the prior's buffers
    in it, the tower must take them (the prior is a query-side term: the library embedding does not change). The head
    of another checkpoint than the one the tower was built from is refused: the tower's settings (β, the late-fusion
    share, the image size) are its own checkpoint's, and would be exported with the other's weights."""
    import copy

    from monai_cir.engine.bundle import TargetTower

    net = _prior_net()
    tower = TargetTower(copy.deepcopy(net), checkpoint="own.pt")
    tower.load_state_dict(net.head_state_dict())
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(tower(images), net.encode_target(images))
    other = activate_head(make_tiny_net(late_fusion_share=0.5, diagnosis_prior={"classes": CLASSES}), seed=5)
    with pytest.raises(ValueError, match=r"not those of the checkpoint network_def was built from \(own.pt; .*--ckpt_file FILE --checkpoint FILE"):
        tower.load_state_dict(other.head_state_dict())


def test_search_command_orders_with_the_prior_and_says_so(tmp_path, monkeypatch, capsys):
    """``monai-cir search`` with a network that has a prior: a text naming findings is ordered by the prior (the JSON's
    ``ranking`` is the notice, each hit's score its similarity, within a diagnosis by similarity); no text: by similarity."""
    import json

    from PIL import Image

    import monai_cir.networks
    from monai_cir import retrieval
    from monai_cir.cli import main
    from monai_cir.data.report import recognised_findings
    from monai_cir.prior_ranking import PRIOR_NOTICE, PRIOR_RANKING

    net = _prior_net()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8) for _ in range(12)]
    index = retrieval.build_index(net, images, [CaseMetadata(f"c{i:02d}", CLASSES[i % 3], "test") for i in range(12)], progress=False)
    index.save(tmp_path / "ix")
    Image.fromarray(images[0]).save(tmp_path / "query.png")
    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: net)
    search = ["search", "--index", str(tmp_path / "ix"), "--image", str(tmp_path / "query.png"), "-k", "12", "--no-differential", "--json"]
    assert main([*search, "--text", FULL]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["ranking"] == PRIOR_RANKING
    # what the text did, in the app's words (its results.json): the findings read, their weight, the prior's order
    assert answer["text_use"] == {"weight": pytest.approx(float(net.text_weights([FULL])[0]), abs=1e-4),
                                  "findings_read": list(recognised_findings(FULL))} and answer["text_use"]["findings_read"]
    assert answer["notices"][0] == ("findings read in the query text: 7 of the 7 checklist findings (atypical pigment network, no streaks, "
                                    "no pigmentation, no regression structures, no dots and globules, blue-whitish veil present, no "
                                    "vascular structures); the text counted fully in the query")
    assert PRIOR_NOTICE in answer["notices"]
    scores = {h["case_id"]: h["score"] for h in answer["hits"]}
    q = retrieval.encode_query(net, tmp_path / "query.png", FULL)[0]
    np.testing.assert_allclose([scores[c] for c in index.case_ids()], index.vectors() @ q, atol=1e-5)  # similarities
    for diagnosis in CLASSES:
        same = [h["score"] for h in answer["hits"] if h["diagnosis"] == diagnosis]
        assert same == sorted(same, reverse=True)
    assert [h["score"] for h in answer["hits"]] != sorted(scores.values(), reverse=True)  # the prior moved cases
    assert main([*search, "--text", ""]) == 0
    plain = json.loads(capsys.readouterr().out)
    plain_scores = [h["score"] for h in plain["hits"]]
    assert plain["ranking"] == "similarity" and plain_scores == sorted(plain_scores, reverse=True)
    assert plain["text_use"] is None and plain["notices"] == []


def test_bundle_inference_ranks_with_the_prior_and_reports_each_querys_slot(tmp_path):
    """``rank_collection`` (``configs/inference.yaml``) ranks as the app does: by ``S`` + the prior's term where the
    text names findings, each hit reporting ``S``; an opened slot reports the margin it opened under (the prior
    ranking's, or the similarity margin for a text naming none) and the case's rank by similarity alone."""
    from types import SimpleNamespace

    from PIL import Image

    from monai_cir.engine.bundle import rank_collection

    net = _prior_net()
    rng = np.random.default_rng(11)
    records = []
    for i in range(16):
        path = tmp_path / f"c{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)).save(path)
        records.append(SimpleNamespace(case_id=f"c{i:02d}", image_path=path, diagnosis=CLASSES[i % 3], text=FULL if i % 2 else ""))
    net.checkpoint_info = {"differential": DifferentialSlot(margin=1000.0, rank=2, margin_by_similarity=1000.0 - 1e-3).to_dict()}
    results = rank_collection(net, records, records, top_k=16)
    acted_seen = set()
    for r, result in zip(records, results):
        assert r.case_id not in {h["case_id"] for h in result["hits"]}  # leave-one-out
        scores = {h["case_id"]: h["score"] for h in result["hits"]}
        opened = result["differential"]
        if opened is None:  # rank 2 already holds another diagnosis (a margin of ~1000 opens everywhere else)
            assert result["hits"][1]["diagnosis"] != result["hits"][0]["diagnosis"]
            continue
        acted = bool(r.text)
        acted_seen.add(acted)
        assert opened["max_margin"] == (1000.0 if acted else 1000.0 - 1e-3)
        assert opened["similarity_rank"] == 1 + sum(s > scores[opened["case_id"]] for s in scores.values())
        assert ("nearly as likely, by the image, the findings" in opened["notice"]) == acted
    assert acted_seen == {True, False}


def test_the_evidence_summary_and_a_prior_ordered_first_case_that_differ_are_said_to_differ():
    """The evidence summary votes over the cases most similar by S; the prior may put another diagnosis first. Then
    (and only then: a prior-ordered answer whose first case's diagnosis is not the vote's) a notice names both."""
    from monai_cir.evidence import EvidenceSummary, summarize_evidence
    from monai_cir.index import SearchHit
    from monai_cir.prior_ranking import PRIOR_RANKING
    from monai_cir.retrieval import Answer, evidence_disagreement_notice

    def hits(diagnoses, scores):
        return [SearchHit(i + 1, f"c{i}", s, CaseMetadata(f"c{i}", d, "test")) for i, (d, s) in enumerate(zip(diagnoses, scores))]

    pool = hits(["nevus", "nevus", "melanoma", "nevus"], [0.9, 0.8, 0.7, 0.6])  # by S: the vote favours nevus
    summary = summarize_evidence(pool, classes=CLASSES)
    assert summary.predicted == "nevus"
    reordered = hits(["melanoma", "nevus", "nevus"], [0.7, 0.9, 0.8])
    notice = evidence_disagreement_notice(summary, Answer(hits=reordered, pool=pool, ranking=PRIOR_RANKING))
    assert notice is not None and "favours nevus" in notice and "first case shown is a melanoma case" in notice
    assert f"{100 * summary.confidence:.0f}%, uncalibrated" in notice  # as the summary's own text qualifies it
    # a vote that ties the first case's diagnosis favours neither: nothing to say
    tied = EvidenceSummary(k=2, distribution={"nevus": 0.5, "melanoma": 0.5}, predicted="nevus", confidence=0.5)
    assert evidence_disagreement_notice(tied, Answer(hits=reordered, pool=pool, ranking=PRIOR_RANKING)) is None
    # the prior kept the vote's diagnosis first, or did not order the answer, or there is no summary: nothing to say
    assert evidence_disagreement_notice(summary, Answer(hits=pool[:3], pool=pool, ranking=PRIOR_RANKING)) is None
    assert evidence_disagreement_notice(summary, Answer(hits=reordered, pool=pool)) is None
    assert evidence_disagreement_notice(None, Answer(hits=reordered, pool=pool, ranking=PRIOR_RANKING)) is None


def test_search_command_says_when_the_evidence_and_the_prior_ordered_answer_differ(tmp_path, monkeypatch, capsys):
    """``monai-cir search --evidence --json`` with a network whose prior favours one diagnosis whatever the query:
    that diagnosis comes first; ``evidence_disagreement`` (also printed) is the notice exactly when it is not the
    evidence summary's (which votes by similarity, the same for the three priors)."""
    import json

    from PIL import Image

    import monai_cir.networks
    from monai_cir import retrieval
    from monai_cir.cli import main

    net = _prior_net(strength=50.0)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8) for _ in range(24)]
    Image.fromarray(images[0]).save(tmp_path / "query.png")
    monkeypatch.setattr(monai_cir.networks, "load_model", lambda path=None, device=None: net)
    d = net.diagnosis_prior.mean.shape[1]
    voted = set()
    for favoured, diagnosis in enumerate(CLASSES):
        for which in (0, 1):  # weights zero: the posterior is softmax(bias), the favoured diagnosis ~1
            net.diagnosis_prior.set_probe(which, torch.zeros(d), torch.ones(d), torch.zeros(3, d), 10.0 * torch.eye(3)[favoured])
        # the prior is part of the model's fingerprint: an index per prior (the same vectors)
        index = retrieval.build_index(net, images, [CaseMetadata(f"c{i:02d}", CLASSES[i % 3], "test") for i in range(24)], progress=False)
        index.save(tmp_path / "ix")
        assert main(["search", "--index", str(tmp_path / "ix"), "--image", str(tmp_path / "query.png"), "-k", "5",
                     "--no-differential", "--evidence", "--json", "--text", FULL]) == 0
        captured = capsys.readouterr()
        answer = json.loads(captured.out)
        assert answer["hits"][0]["diagnosis"] == diagnosis
        voted.add(answer["evidence"]["predicted"])
        if answer["evidence"]["predicted"] == diagnosis:
            assert answer["evidence_disagreement"] is None
        else:
            assert f"favours {answer['evidence']['predicted']}" in answer["evidence_disagreement"]
            assert answer["evidence_disagreement"] in captured.err
    assert len(voted) == 1  # the vote is the similarity ranking's, whatever the prior


def test_the_apps_prior_terms_are_the_ones_the_probes_were_fitted_and_evaluated_on():
    """The probes are fitted (``prior_inputs``) and scored by ``monai-cir evaluate`` (``cached_prior_terms``) on each
    level's whole-map mean; the app's query encoding must give them the same input. At 260 px the maps are 33, 17 and
    9 wide, whose 4 x 4 grid bins overlap, so the grid's mean is another input: the app's terms were up to 4.6 score
    units off the evaluated ones with the release model (the score spans 4). 72 px gives such maps here."""
    from types import SimpleNamespace

    from monai_cir.engine.diagnosis_prior import cached_prior_terms
    from monai_cir.networks.late_fusion import sentence_embedding

    net = activate_head(make_tiny_net(image_size=72, late_fusion_share=0.5, diagnosis_prior={"classes": CLASSES}))
    d = net.diagnosis_prior.mean.shape[1]
    g = torch.Generator().manual_seed(0)
    for which in (0, 1):
        net.diagnosis_prior.set_probe(which, torch.randn(d, generator=g), torch.rand(d, generator=g) + 0.5,
                                      torch.randn(3, d, generator=g), torch.randn(3, generator=g))
    images = torch.rand(3, 3, 72, 72, generator=g)
    texts = [FULL, PARTIAL, FULL]
    with torch.inference_mode():
        _, terms = net.encode_query_and_terms(images, texts)
        maps = net.image_features(images)
        tokens, mask = net.text_tokens(texts)
        assert any(m.shape[-1] > 4 and m.shape[-1] % 4 for m in maps), [m.shape for m in maps]  # bins that overlap
        cache = SimpleNamespace(labels=torch.zeros(3), maps=maps, sentence=sentence_embedding(tokens, mask),
                                records=[SimpleNamespace(text=t) for t in texts])
        evaluated = cached_prior_terms(net, cache, [0, 1, 2])
    assert terms.abs().sum() > 0
    torch.testing.assert_close(terms, evaluated, atol=1e-4, rtol=1e-4)
