"""Plumbing of the cross-validation harness and ``monai-cir evaluate`` on a small subset (tiny net,
64 px, a temporary feature cache): JSON shape, fold bookkeeping, registry, cross-site hook."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_cir import evaluation
from monai_cir.evaluation import (
    METRIC_KEYS,
    UNTRAINED_METHODS,
    FoldContext,
    available_methods,
    evaluate,
    merge_results,
    register_method,
    unregister_method,
)


@pytest.fixture(scope="module")
def tiny_caches(shared_data, tiny_net, tmp_path_factory):
    """Feature caches of 10 Derm7pt cases per fold and 16 ISIC cases, built with the tiny network."""
    import os

    from monai_cir.data import build_feature_cache, load_collection, load_folds

    old = os.environ.get("MONAI_CIR_CACHE")
    os.environ["MONAI_CIR_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        folds = load_folds()
        derm = load_collection("derm7pt", shared_data)
        quota = {"melanoma": 4, "nevus": 4, "benign keratosis": 2}  # 10 cases per fold, every class
        subset = [r for f in range(5) for c, n in quota.items() for r in [r for r in derm if folds[r.case_id] == f and r.diagnosis == c][:n]]
        isic = load_collection("isic-uda1", shared_data)
        isic = [r for r in isic if r.diagnosis == "melanoma"][:8] + [r for r in isic if r.diagnosis == "nevus"][:8]
        caches = {
            "derm7pt": build_feature_cache("derm7pt-subset", 64, net=tiny_net, records=subset, progress=False),
            "isic-uda1": build_feature_cache("isic-subset", 64, net=tiny_net, records=isic, progress=False),
        }
        # a second call loads the file instead of rebuilding
        again = build_feature_cache("derm7pt-subset", 64, net=tiny_net, records=subset, progress=False)
        assert again.path == caches["derm7pt"].path and torch.equal(again.maps[0], caches["derm7pt"].maps[0])
    finally:
        if old is None:
            os.environ.pop("MONAI_CIR_CACHE")
        else:
            os.environ["MONAI_CIR_CACHE"] = old
    return caches


def test_feature_cache_shapes(tiny_caches, tiny_net):
    cache = tiny_caches["derm7pt"]
    n = len(cache)
    assert n == 50 and cache.labels.shape == (n,)
    assert len(cache.maps) == 3 and all(m.dtype == torch.float16 and m.shape[0] == n for m in cache.maps)
    assert [m.shape[1] for m in cache.maps] == tiny_net.image_encoder.channels
    assert [m.shape for m in cache.maps_flipped] == [m.shape for m in cache.maps]
    assert cache.tokens.dtype == torch.float16 and cache.tokens.shape[:2] == cache.token_mask.shape
    assert cache.sentence.shape == (n, tiny_net.text_encoder.dim) and cache.sentence.dtype == torch.float32
    assert cache.token_mask.any(dim=1).all()  # every Derm7pt case has a report


def test_harness_plumbing(tiny_caches, tiny_net):
    results = evaluate(
        list(UNTRAINED_METHODS),
        image_size=64, folds=(0, 1, 2), cache=tiny_caches["derm7pt"], net=tiny_net, progress=False,
    )
    for entry in results["methods"].values():
        for key in METRIC_KEYS:
            assert set(entry[key]) == {"folds", "mean", "std"}
            assert len(entry[key]["folds"]) == 3
            assert all(0.0 <= v <= 100.0 for v in entry[key]["folds"])  # percent
            assert entry[key]["mean"] == pytest.approx(np.mean(entry[key]["folds"]), abs=0.01)
    assert "untrained" in results["methods"]["composed_untrained"]["label"]
    assert not any(entry["trained"] for entry in results["methods"].values())
    json.dumps(results)  # serialisable


def test_fold_context_is_disjoint(tiny_caches):
    seen = []

    @register_method("_probe", trained=False)
    def probe(ctx: FoldContext):
        assert not set(ctx.query_indices) & set(ctx.database_indices)
        assert len(ctx.query_indices) + len(ctx.database_indices) == len(ctx.cache)
        seen.append(ctx.fold)
        return torch.zeros(len(ctx.query_indices), len(ctx.database_indices))

    try:
        results = evaluate(["_probe"], image_size=64, folds=(0, 4), cache=tiny_caches["derm7pt"], progress=False)
    finally:
        unregister_method("_probe")
    assert seen == [0, 4]
    assert results["methods"]["_probe"]["acc@1"]["std"] is not None


def test_registry_each_name_once():
    methods = available_methods()
    assert set(UNTRAINED_METHODS) | {"image_only", "text_only", "composed", "late_fusion"} <= set(methods)
    # the trained methods are the engine's, the stand-ins keep their own names
    assert methods["composed"].trained and methods["composed"].fn.__module__ == "monai_cir.engine.cv_methods"
    assert not methods["composed_untrained"].trained
    with pytest.raises(ValueError, match="already registered"):
        register_method("composed", label="another composed")(lambda ctx: None)
    assert available_methods()["composed"] is methods["composed"]  # the refused registration replaced nothing


def test_cli_writes_json_and_table(tiny_caches, tmp_path, monkeypatch):
    from monai_cir.cli import main
    from monai_cir.data import feature_cache

    monkeypatch.setattr(feature_cache, "build_feature_cache", lambda collection, *a, **k: tiny_caches[collection])
    out = tmp_path / "derm7pt_cv.json"
    code = main(["evaluate", "--methods", "imagenet_cosine", "frozen_multilevel_cosine", "--folds", "0", "1",
                 "--image-size", "64", "--cross-site", "isic-uda1", "--out", str(out), "--figure", str(tmp_path / "fig")])
    assert code == 0
    payload = json.loads(out.read_text())
    assert {"commit", "config", "wall_time_s", "machine", "methods", "cross_site"} <= set(payload)
    # found by review: the file recorded no command (every derm7pt_cv*.json); it is the one that reruns it
    assert payload["command"].startswith("monai-cir evaluate --methods imagenet_cosine frozen_multilevel_cosine --folds 0 1")
    assert payload["methods"]["imagenet_cosine"]["runs"][0]["command"] == payload["command"]
    entry = payload["methods"]["imagenet_cosine"]
    assert set(METRIC_KEYS) <= set(entry) and len(entry["acc@1"]["folds"]) == 2
    site = payload["cross_site"]["isic-uda1"]
    assert site["n"] == 16 and set(METRIC_KEYS) <= set(site["methods"]["imagenet_cosine"])
    assert "| Method |" in out.with_suffix(".md").read_text()
    assert list((tmp_path / "fig").glob("*.png"))


def test_cli_folds_merge_into_one_file(tiny_caches, tmp_path, monkeypatch):
    """``--folds 0`` then ``--folds 1,2`` fill one results file with the numbers of one ``--folds 0,1,2`` run."""
    from monai_cir.cli import main
    from monai_cir.data import feature_cache

    from monai_cir import provenance

    monkeypatch.setattr(feature_cache, "build_feature_cache", lambda collection, *a, **k: tiny_caches[collection])
    common = ["evaluate", "--methods", "imagenet_cosine", "frozen_multilevel_cosine", "--image-size", "64"]
    parts, whole = tmp_path / "parts.json", tmp_path / "whole.json"
    monkeypatch.setattr(provenance, "_cpu_model", lambda: "CPU A")  # the parts run on two machines
    assert main(common + ["--folds", "0", "--out", str(parts)]) == 0
    monkeypatch.setattr(provenance, "_cpu_model", lambda: "CPU B")
    assert main(common + ["--folds", "1,2", "--out", str(parts)]) == 0
    assert main(common + ["--folds", "0,1,2", "--out", str(whole)]) == 0
    merged, single = json.loads(parts.read_text()), json.loads(whole.read_text())
    assert merged["config"]["folds"] == [0, 1, 2]
    for name in ("imagenet_cosine", "frozen_multilevel_cosine"):
        assert merged["methods"][name]["held_out_folds"] == [0, 1, 2]
        assert [r["folds"] for r in merged["methods"][name]["runs"]] == [[0], [1, 2]]
        assert [r["machine"]["cpu"] for r in merged["methods"][name]["runs"]] == ["CPU A", "CPU B"]  # each run its own
        for key in METRIC_KEYS:  # the per-fold values are kept unrounded, so a merge gives the very mean and std
            assert merged["methods"][name][key] == single["methods"][name][key]
    assert any(round(v, 2) != v for v in single["methods"]["imagenet_cosine"]["map"]["folds"])
    # another protocol setting is refused, and the file is left as it was
    before = parts.read_text()
    assert main(common + ["--folds", "3", "--seed", "7", "--out", str(parts)]) == 2  # "cannot merge: ... seed"
    assert parts.read_text() == before


def test_cli_keeps_the_methods_a_failed_run_finished(tiny_caches, tmp_path, monkeypatch):
    """A run cut short by a later method (a crash, a deadline) keeps in --out the methods it finished."""
    from monai_cir.cli import main
    from monai_cir.data import feature_cache

    def fails(ctx):
        raise RuntimeError("this method fails on purpose")

    monkeypatch.setattr(feature_cache, "build_feature_cache", lambda collection, *a, **k: tiny_caches[collection])
    register_method("fails_on_purpose", label="raises")(fails)
    out = tmp_path / "cut_short.json"
    try:
        with pytest.raises(RuntimeError, match="on purpose"):
            main(["evaluate", "--methods", "imagenet_cosine", "fails_on_purpose", "--folds", "0,1", "--image-size", "64", "--out", str(out)])
    finally:
        unregister_method("fails_on_purpose")
    payload = json.loads(out.read_text())
    assert list(payload["methods"]) == ["imagenet_cosine"]
    assert payload["methods"]["imagenet_cosine"]["held_out_folds"] == [0, 1] and len(payload["methods"]["imagenet_cosine"]["map"]["folds"]) == 2
    assert "imagenet_cosine" in out.with_suffix(".md").read_text()


def test_cli_keeps_the_folds_a_method_finished_before_it_failed(tiny_caches, tmp_path, monkeypatch):
    """A method killed in its third fold (a fine-tuned fold is an hour of CPU) keeps its first two in --out (before: a
    method was saved only when all its folds were done, so they were lost); the folds run later merge with them and
    the file lists one run per invocation."""
    from monai_cir.cli import main
    from monai_cir.data import feature_cache

    cosine = available_methods()["imagenet_cosine"].fn

    def fails_in_fold_2(ctx):
        if ctx.fold == 2:
            raise RuntimeError("killed in fold 2 on purpose")
        return cosine(ctx)

    monkeypatch.setattr(feature_cache, "build_feature_cache", lambda collection, *a, **k: tiny_caches[collection])
    register_method("fails_in_fold_2", label="raises in fold 2")(fails_in_fold_2)
    out = tmp_path / "cut_short.json"
    common = ["evaluate", "--methods", "fails_in_fold_2", "--image-size", "64", "--out", str(out)]
    try:
        with pytest.raises(RuntimeError, match="on purpose"):
            main(common + ["--folds", "0,1,2,3"])
        payload = json.loads(out.read_text())
        assert payload["config"]["folds"] == [0, 1] and payload["methods"]["fails_in_fold_2"]["held_out_folds"] == [0, 1]
        assert len(payload["methods"]["fails_in_fold_2"]["map"]["folds"]) == 2
        assert [r["folds"] for r in payload["methods"]["fails_in_fold_2"]["runs"]] == [[0, 1]]
        assert main(common + ["--folds", "3"]) == 0
    finally:
        unregister_method("fails_in_fold_2")
    payload = json.loads(out.read_text())
    assert payload["methods"]["fails_in_fold_2"]["held_out_folds"] == [0, 1, 3]
    assert [r["folds"] for r in payload["methods"]["fails_in_fold_2"]["runs"]] == [[0, 1], [3]]


def test_merge_replaces_a_fold_run_again():
    def run(folds, values):
        entry = {"label": "m", "held_out_folds": folds, "runs": [{"folds": folds}],
                 **{k: {"folds": values, "mean": float(np.mean(values)), "std": None} for k in METRIC_KEYS}}
        return {"config": {"folds": folds}, "methods": {"m": entry}, "cross_site": {}}

    merged = merge_results(run([0, 1], [10.0, 20.0]), run([1], [40.0]))
    assert merged["methods"]["m"]["acc@1"]["folds"] == [10.0, 40.0]
    assert merged["methods"]["m"]["acc@1"]["mean"] == 25.0


def test_text_forms_table_says_which_folds_it_averages():
    from monai_cir.evaluation import text_forms_table

    def entry(folds):
        return {"held_out_folds": folds, "acc@1": {"mean": 80.0, "std": None}, "map": {"mean": 85.0, "std": None}}

    one_fold = {"text_forms": {"derm7pt": {"template": {"m": entry([0])}, "empty": {"m": entry([0])}}}}
    assert "held-out fold 0 alone" in text_forms_table(one_fold) and "5-fold" not in text_forms_table(one_fold)
    five = {"text_forms": {"derm7pt": {"template": {"m": entry([0, 1, 2, 3, 4])}}}}
    assert "mean over 5 held-out folds [0, 1, 2, 3, 4]" in text_forms_table(five)
    mixed = {"text_forms": {"derm7pt": {"template": {"a": entry([0]), "b": entry([0, 1])}}}}
    assert "each method's held-out folds" in text_forms_table(mixed)
    # a researcher's own collection is cross-validated too; the other collection of the run is the cross-site one
    own = {"config": {"collection": "clinic"}, "text_forms": {"clinic": {"template": {"m": entry([0, 1, 2, 3, 4])}},
                                                               "isic-uda1": {"template": {"m": entry([0, 1, 2, 3, 4])}}}}
    clinic, isic = text_forms_table(own).split("Text forms, ")[1:]
    assert "mean over 5 held-out folds" in clinic and "leave-one-out" not in clinic
    assert "leave-one-out" in isic


def test_text_forms_a_collection_cannot_render_are_refused_before_anything_runs(tmp_path):
    """On a collection without 7-point columns, 'partial' would repeat the template's texts and 'findings_only' score
    empty ones (and without age / sex / site, 'demographics' too): refused, naming what to run instead."""
    from monai_cir.data.collections import CaseRecord
    from monai_cir.evaluation.protocol import check_text_forms

    plain = [CaseRecord(f"c{i}", tmp_path / f"c{i}.png", "nevus", 1, "a flat brown lesion") for i in range(4)]
    with pytest.raises(ValueError, match=r"--text-forms partial, findings_only, demographics: clinic has no column.*"
                                         r"run --text-forms template,empty"):
        check_text_forms(plain, ["template", "partial", "findings_only", "demographics", "empty"], "clinic")
    with_site = [CaseRecord("c", tmp_path / "c.png", "nevus", 1, "", site="trunk")]
    with pytest.raises(ValueError, match=r"--text-forms partial: .* run --text-forms template,demographics"):
        check_text_forms(with_site, ["template", "partial", "demographics"], "clinic")
    check_text_forms(with_site, ["template", "demographics", "reworded", "empty"], "clinic")  # the site is rendered
    derm7pt_like = [CaseRecord("d", tmp_path / "d.png", "nevus", 1, "", metadata={"streaks": "absent", "sex": "female"})]
    check_text_forms(derm7pt_like, ["template", "reworded", "partial", "demographics", "empty", "restyled", "findings_only"], "derm7pt")


def test_evaluate_refuses_a_fold_that_does_not_exist_before_running_any(capsys):
    from monai_cir.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--methods", "imagenet_cosine", "--folds", "0,7"])
    assert exit_info.value.code == 2 and "there are 5 folds, 0 to 4" in capsys.readouterr().err


def test_results_header_says_the_commit_a_dirty_tree_and_changed_recipes():
    """A run with changed method options (2 epochs) must not read as the default recipe's, and a dirty tree is said."""
    from monai_cir.evaluation import results_header

    payload = {"config": {"collection": "mine", "method_options": {}}, "commit": {"sha": "abc123", "dirty": False}, "wall_time_s": 12.0}
    assert results_header(payload, 260) == ("# mine cross-validation\n\nProduced by `monai-cir evaluate` (commit abc123, image size 260, "
                                            "wall time 12 s).\n\n")
    payload["commit"]["dirty"] = True
    payload["config"]["method_options"] = {"composed": {"train": {"epochs": 2}}}
    header = results_header(payload, 128)
    assert "(commit abc123, dirty tree, image size 128," in header
    assert 'method options changed from the defaults: `{"composed": {"train": {"epochs": 2}}}`' in header


def test_a_merged_results_file_is_mixed_only_when_its_runs_commits_differ():
    """One fresh run on a dirty tree is that commit, dirty (before: "mixed: see each method's runs")."""
    from monai_cir.evaluation import merged_commit

    this = {"sha": "abc", "dirty": True}
    one_run = {"methods": {"a": {"runs": [{"commit": "abc", "dirty": True}]}, "b": {"runs": [{"commit": "abc", "dirty": False}]}}}
    assert merged_commit(one_run, this) == {"sha": "abc", "dirty": True}
    clean = {"methods": {"a": {"runs": [{"commit": "abc", "dirty": False}]}}}
    assert merged_commit(clean, {"sha": "abc", "dirty": False}) == {"sha": "abc", "dirty": False}
    two = {"methods": {"a": {"runs": [{"commit": "abc", "dirty": False}]}, "b": {"runs": [{"commit": "def", "dirty": False}]}}}
    assert merged_commit(two, {"sha": "abc", "dirty": False}) == {"sha": "mixed: see each method's runs", "dirty": False}


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method"):
        evaluation.get_method("nope")


def test_text_forms_reach_the_queries_only(tiny_caches, tiny_net):
    """With ``text_forms``, each form's queries read that form's texts; training and the database keep the cache's."""
    seen: dict[str, list[bool]] = {}

    @register_method("_text_probe", trained=False)
    def probe(ctx: FoldContext):
        assert ctx.cache is tiny_caches["derm7pt"]  # what a method trains on never changes
        has_text = bool(ctx.query_cache.token_mask[torch.as_tensor(ctx.query_indices)].any())
        seen.setdefault("calls", []).append(has_text)
        # rank by "has text": a query without text scores 0 everywhere, so its ranking is the database order
        s = torch.full((len(ctx.query_indices), len(ctx.database_indices)), float(has_text))
        return s * torch.as_tensor(ctx.database_labels == 0, dtype=torch.float32)

    try:
        results = evaluate(["_text_probe", "imagenet_cosine"], image_size=64, folds=(0,), cache=tiny_caches["derm7pt"],
                           progress=False, text_forms=["template", "empty"])
    finally:
        unregister_method("_text_probe")
    assert seen["calls"] == [True, True, False]  # the main run, the template form, the empty form
    forms = results["text_forms"]["derm7pt"]
    assert set(forms) == {"template", "empty"}
    assert {k: forms["template"]["_text_probe"][k] for k in METRIC_KEYS} == {k: results["methods"]["_text_probe"][k] for k in METRIC_KEYS}
    assert forms["empty"]["_text_probe"]["map"] != forms["template"]["_text_probe"]["map"]
    assert forms["empty"]["imagenet_cosine"] == forms["template"]["imagenet_cosine"]  # the text is ignored


def test_text_augmentation_changes_only_training_queries(tiny_net):
    from monai_cir.engine import CachedComposedModel, new_head_net

    from conftest import activate_head

    net = activate_head(new_head_net(tiny_net, seed=0))
    model = CachedComposedModel(net, "composed")
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(6, c, 2, 2, generator=g) for c in tiny_net.image_encoder.channels]
    tokens, mask = torch.randn(6, 5, tiny_net.text_encoder.dim, generator=g), torch.ones(6, 5, dtype=torch.bool)
    batch = {"query_maps": maps, "target_maps": maps, "tokens": tokens, "token_mask": mask, "label": torch.zeros(6), "index": torch.arange(6)}
    net.eval()
    image_query = net.embed_maps(maps)
    model.set_text_augmentation(dropout=0.5, seed=1)
    model.train()
    net.eval()  # the wrapper trains (augmentation on); the layers stay deterministic for the comparison
    q, _ = model(batch)
    dropped = torch.isclose(q, image_query, atol=1e-5).all(dim=1)
    assert 0 < int(dropped.sum()) < 6  # some training queries lost their text, not all
    model.eval()
    q_eval, _ = model(batch)
    assert not torch.isclose(q_eval, image_query, atol=1e-5).all(dim=1).any()  # evaluation: never dropped
    with pytest.raises(ValueError, match="dropout"):
        model.set_text_augmentation(dropout=1.0)


def test_composed_late_fusion_scores_the_mean_of_its_two_models(tiny_caches, tiny_net, monkeypatch):
    """``composed_late_fusion``: one inner product whose score is (S_composed + S_late_fusion) / 2 with the
    fold's own two models (the late-fusion query weighted by the composed network's text weight)."""
    from monai_cir.engine import cv_methods

    monkeypatch.setattr(cv_methods, "base_net", lambda image_size=64: tiny_net)  # heads of the cache's own (tiny) architecture
    checked = []

    @register_method("_ensemble_probe")
    def probe(ctx: FoldContext):
        q, t = cv_methods.composed_late_fusion(ctx)
        q_c, t_c = cv_methods._fold("composed", ctx)
        (lf,) = cv_methods.train_method("late_fusion_fullbatch", ctx.cache, ctx.train_indices, ctx.config, ctx.seed, ctx.state)
        weights = cv_methods.train_method("composed", ctx.cache, ctx.train_indices, ctx.config, ctx.seed, ctx.state)[0].text_weights(ctx.query_cache)
        w = weights[torch.as_tensor(ctx.query_indices)].view(-1, 1)
        q_lf = w * lf.encode_queries(ctx.query_cache, ctx.query_indices) + (1 - w) * lf.encode_targets(ctx.query_cache, ctx.query_indices)
        s_lf = q_lf @ lf.encode_targets(ctx.cache, ctx.database_indices).T
        torch.testing.assert_close(q @ t.T, 0.5 * (q_c @ t_c.T) + 0.5 * s_lf, atol=1e-5, rtol=1e-5)
        checked.append(float(w.min()))
        return q, t

    short = dict(train=dict(epochs=2))
    try:
        with cv_methods.override_options("composed", **short), cv_methods.override_options("late_fusion_fullbatch", **short):
            evaluate(["_ensemble_probe"], image_size=64, folds=(0,), cache=tiny_caches["derm7pt"], net=tiny_net, progress=False,
                     text_forms=["partial"])
    finally:
        unregister_method("_ensemble_probe")
    assert len(checked) == 2 and checked[1] < 1.0  # the main run, then partial texts (weighted below 1)


def test_differential_slot_is_fitted_on_the_other_folds_only(tiny_caches, tiny_net, monkeypatch):
    """``composed_late_fusion_differential`` ranks a fold with a margin fitted on the other folds' held-out
    queries (each under its own fold's release network), never on the fold it ranks; its ranking is the
    release network's with the slot applied (:func:`monai_cir.differential.differential_ranking`)."""
    from monai_cir.differential import differential_ranking
    from monai_cir.engine import cv_methods
    from monai_cir.metrics import rank_database

    monkeypatch.setattr(cv_methods, "base_net", lambda image_size=64: tiny_net)
    margins_of, slots = [], []
    real_margins, real_slot = cv_methods._release_margins, cv_methods.release_differential_slot
    monkeypatch.setattr(cv_methods, "_release_margins", lambda cache, config, state, fold, *a: margins_of.append(fold) or real_margins(cache, config, state, fold, *a))
    monkeypatch.setattr(cv_methods, "release_differential_slot", lambda ctx, *a: slots.append(real_slot(ctx, *a)) or slots[-1])
    checked = []

    @register_method("_differential_probe")
    def probe(ctx: FoldContext):
        scores = cv_methods.composed_late_fusion_differential(ctx)
        q, t = cv_methods.composed_late_fusion(ctx)
        expected, _ = differential_ranking(q @ t.T, ctx.database_labels, slots[-1])
        assert (rank_database(scores) == rank_database(expected)).all()
        checked.append(ctx.fold)
        return scores

    short = dict(train=dict(epochs=2))
    try:
        with cv_methods.override_options("composed", **short), cv_methods.override_options("late_fusion_fullbatch", **short):
            results = evaluate(["_differential_probe"], image_size=64, folds=(2,), cache=tiny_caches["derm7pt"], net=tiny_net, progress=False)
    finally:
        unregister_method("_differential_probe")
    assert checked == [2] and sorted(set(margins_of)) == [0, 1, 3, 4]
    assert "[0, 1, 3, 4]" in slots[0].description and slots[0].margin > 0
    logged = [e for e in results["train_log"] if e.get("method") == "composed_late_fusion_differential"]
    assert len(logged) == 1 and logged[0]["fold"] == 2 and logged[0]["margin"] == round(slots[0].margin, 6)


def test_diagnosis_prior_method_is_fitted_on_the_training_cases_only(tiny_caches, tiny_net, monkeypatch):
    """``composed_late_fusion_prior`` scores ``S + λ w log p(y_c | q)``: the release network's score plus the terms of a
    prior fitted on the fold's training cases (never a held-out one), read off each library case's diagnosis; a query
    text naming no finding (``empty``) ranks by ``S`` alone."""
    from monai_cir.engine import cv_methods
    from monai_cir.engine import diagnosis_prior as prior_module

    monkeypatch.setattr(cv_methods, "base_net", lambda image_size=64: tiny_net)
    fitted_on, checked = [], []
    real_fit = prior_module.fit_diagnosis_prior
    monkeypatch.setattr(prior_module, "fit_diagnosis_prior", lambda net, cache, train, **kw: fitted_on.append(set(train.tolist())) or real_fit(net, cache, train, **kw))

    @register_method("_prior_probe")
    def probe(ctx: FoldContext):
        scores = cv_methods.composed_late_fusion_prior(ctx)
        q, t = cv_methods.composed_late_fusion(ctx)
        net = cv_methods._release_prior_net(ctx.cache, ctx.train_indices, ctx.config, ctx.seed, ctx.state)
        terms = prior_module.cached_prior_terms(net, ctx.query_cache, ctx.query_indices)
        columns = prior_module.prior_columns(net.diagnosis_prior.classes, ctx.cache, ctx.database_indices)
        assert net.diagnosis_prior.classes == ("melanoma", "nevus", "benign keratosis")
        assert [net.diagnosis_prior.classes[c] for c in columns] == [ctx.cache.records[int(i)].diagnosis for i in ctx.database_indices]
        torch.testing.assert_close(scores, (q @ t.T).double() + terms.double()[:, columns])
        if ctx.query_cache is not ctx.cache:  # the empty form: no term
            torch.testing.assert_close(scores, (q @ t.T).double())
        else:
            assert terms.abs().sum() > 0
        assert not set(ctx.query_indices.tolist()) & fitted_on[-1]
        checked.append(ctx.fold)
        return scores

    short = dict(train=dict(epochs=2))
    try:
        with cv_methods.override_options("composed", **short), cv_methods.override_options("late_fusion_fullbatch", **short):
            results = evaluate(["_prior_probe"], image_size=64, folds=(1,), cache=tiny_caches["derm7pt"], net=tiny_net, progress=False,
                               text_forms=["empty"])
    finally:
        unregister_method("_prior_probe")
    assert checked == [1, 1] and len(fitted_on) == 1
    logged = [e for e in results["train_log"] if e.get("method") == "composed_late_fusion_prior"]
    assert len(logged) == 1 and set(logged[0]) >= {"classes", "strength", "full_text", "partial_text"}


def test_the_partial_text_probe_is_fitted_on_findings_without_context_too(tiny_caches, tiny_net, monkeypatch):
    """The full-text probe is fitted on the training cases' template reports; the partial-text probe on those, their
    partial reports and their findings written without context, 1-4 and all (what "BWV present, irregular streaks"
    reaches the network as), a case's rows in one group (the inner cross-validation never splits a case);
    ``context_free=False`` (the 0.8 ablation) leaves the context-free rows out."""
    from conftest import make_tiny_net

    from monai_cir.data.report import findings_report, render_reports, report_fields
    from monai_cir.engine import diagnosis_prior as prior_module
    from monai_cir.evaluation.text_forms import text_form_cache, texts_cache

    cache = tiny_caches["derm7pt"]
    train = np.arange(0, len(cache), 2)
    labels = cache.labels.numpy()[train]
    fitted = []
    real_fit = prior_module._fit_probe
    monkeypatch.setattr(prior_module, "_fit_probe", lambda x, y, groups, *a: fitted.append((x, y, groups)) or real_fit(x, y, groups, *a))

    def rows(form):
        return prior_module.prior_inputs(text_form_cache(cache, form, net=tiny_net), train)

    all_findings = prior_module.prior_inputs(texts_cache(cache, [findings_report(report_fields(r).criteria) for r in cache.records], net=tiny_net), train)
    assert all(t.startswith("Lesion. Dermoscopy: ") for t in render_reports(cache.records, "findings_only", 0))
    assert not np.allclose(rows("findings_only"), rows("partial"))  # context-free texts are other inputs
    for context_free, blocks in ((True, [rows("template"), rows("partial"), rows("findings_only"), all_findings]),
                                 (False, [rows("template"), rows("partial")])):
        fitted.clear()
        _, record = prior_module.fit_diagnosis_prior(make_tiny_net(late_fusion_share=0.5), cache, train, text_net=tiny_net, c_grid=(0.1,),
                                                     inner_folds=2, context_free=context_free)
        (x_full, y_full, g_full), (x_partial, y_partial, g_partial) = fitted
        np.testing.assert_allclose(x_full, rows("template"), rtol=1e-6)
        assert (y_full == labels).all() and g_full is None
        np.testing.assert_allclose(x_partial, np.vstack(blocks), rtol=1e-6)
        assert (y_partial == np.tile(labels, len(blocks))).all() and (g_partial == np.tile(train, len(blocks))).all()
        assert record["context_free"] is context_free and record["full_text"]["C"] == record["partial_text"]["C"] == 0.1


def test_diagnosis_prior_cross_site_reads_the_other_collections_texts(tiny_caches, tiny_net, monkeypatch):
    """Cross-site, the prior fitted on all of Derm7pt ranks the other collection with its own texts: ISIC UDA-1's (age,
    sex) name no finding, so every term is zero and the ranking is the text queries' similarity; with the slot, the
    margin fitted on all five folds in the prior's units."""
    from monai_cir.engine import cv_methods
    from monai_cir.evaluation.protocol import CrossSiteContext, RunState
    from monai_cir.metrics import leave_one_out_metrics

    monkeypatch.setattr(cv_methods, "base_net", lambda image_size=64: tiny_net)
    source, target = tiny_caches["derm7pt"], tiny_caches["isic-uda1"]
    short = dict(train=dict(epochs=2))
    with cv_methods.override_options("composed", **short), cv_methods.override_options("late_fusion_fullbatch", **short):
        state = RunState(net=tiny_net)
        ctx = CrossSiteContext(source, target, {"seed": 0, "image_size": 64, "method_options": {}}, 0, state)
        out = available_methods()["composed_late_fusion_prior"].cross_site(ctx)["similarity"]
        (model,) = cv_methods.composed_late_fusion_models(source, ctx.train_indices, ctx.config, 0, state)
        idx = np.arange(len(target))
        s = model.encode_queries(target, idx) @ model.encode_targets(target, idx).T
        with_slot = available_methods()["composed_late_fusion_prior_differential"].cross_site(ctx)["similarity"]
        release = available_methods()["composed_late_fusion_differential"].cross_site(ctx)["similarity"]
        slot = cv_methods._release_slot(source, ctx.config, state, [0, 1, 2, 3, 4], 0.15, prior=True)
    torch.testing.assert_close(out, s.double())
    logged = [e for e in state.train_log if e.get("method") == "composed_late_fusion_prior_differential"]
    assert len(logged) == 1 and logged[0]["cross_site"] == len(target)
    # no query text names a finding: each query's slot is the one without the prior, as the release ranks them
    assert slot.margin_by_similarity == cv_methods._release_slot(source, ctx.config, state, [0, 1, 2, 3, 4], 0.15).margin != slot.margin
    labels = target.labels.numpy()
    assert (leave_one_out_metrics(with_slot, labels)["ranking"] == leave_one_out_metrics(release, labels)["ranking"]).all()


def test_differential_slot_cross_site_uses_every_fold(tiny_caches, tiny_net, monkeypatch):
    """Cross-site, the network trained on all of Derm7pt ranks the other collection leave-one-out with the slot
    the release checkpoint would record (margin from all five folds' held-out queries)."""
    from monai_cir.differential import differential_ranking
    from monai_cir.engine import cv_methods
    from monai_cir.evaluation.protocol import CrossSiteContext, RunState
    from monai_cir.metrics import leave_one_out_metrics

    monkeypatch.setattr(cv_methods, "base_net", lambda image_size=64: tiny_net)
    margins_of = []
    real_margins = cv_methods._release_margins
    monkeypatch.setattr(cv_methods, "_release_margins", lambda cache, config, state, fold, *a: margins_of.append(fold) or real_margins(cache, config, state, fold, *a))
    source, target = tiny_caches["derm7pt"], tiny_caches["isic-uda1"]
    short = dict(train=dict(epochs=2))
    with cv_methods.override_options("composed", **short), cv_methods.override_options("late_fusion_fullbatch", **short):
        state = RunState(net=tiny_net)
        config = {"seed": 0, "image_size": 64, "method_options": {}}
        ctx = CrossSiteContext(source, target, config, 0, state)
        out = available_methods()["composed_late_fusion_differential"].cross_site(ctx)
        emb = cv_methods._composed_late_fusion_cross_site(ctx)
    assert sorted(set(margins_of)) == [0, 1, 2, 3, 4]
    slot = cv_methods._release_slot(source, config, state, [0, 1, 2, 3, 4], 0.15)
    expected, _ = differential_ranking(emb @ emb.T, target.labels.numpy(), slot, leave_one_out=True)
    labels = target.labels.numpy()
    got, want = leave_one_out_metrics(out["similarity"], labels), leave_one_out_metrics(expected, labels)
    assert (got["ranking"] == want["ranking"]).all()
    logged = [e for e in state.train_log if e.get("method") == "composed_late_fusion_differential"]
    assert len(logged) == 1 and logged[0]["cross_site"] == len(labels)


def test_bench_variants_are_registered_for_their_run_only(tiny_caches):
    """``bench/_common.evaluate_variants``: the variants run as methods of one evaluation and are gone
    afterwards, also when one of them fails (a later benchmark can register the same names)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from _common import evaluate_variants

    zeros = lambda ctx: torch.zeros(len(ctx.query_indices), len(ctx.database_indices))  # noqa: E731
    results, wall = evaluate_variants({"_variant_a": ("a", zeros), "_variant_b": ("b", zeros)}, (0,), tiny_caches["derm7pt"])
    assert set(results["methods"]) == {"_variant_a", "_variant_b"} and results["methods"]["_variant_b"]["label"] == "b" and wall > 0
    assert "_variant_a" not in available_methods() and "_variant_b" not in available_methods()

    def broken(ctx):
        raise RuntimeError("variant failed")

    with pytest.raises(RuntimeError, match="variant failed"):
        evaluate_variants({"_variant_a": ("a", broken)}, (0,), tiny_caches["derm7pt"])
    assert "_variant_a" not in available_methods()


def test_cli_default_out_is_git_ignored_output_and_merge_is_checked_before_any_fold(tiny_caches, tmp_path, monkeypatch, capsys):
    """A quick run with no --out writes output/derm7pt_cv.json (git-ignored), never the committed results file; a run
    that cannot merge into --out (another seed) is refused before any method computes a fold."""
    from monai_cir.cli import main
    from monai_cir.data import feature_cache

    monkeypatch.setattr(feature_cache, "build_feature_cache", lambda collection, *a, **k: tiny_caches[collection])
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--methods", "imagenet_cosine", "--folds", "0", "--image-size", "64"]) == 0
    written = tmp_path / "output" / "derm7pt_cv.json"
    assert written.is_file() and written.with_suffix(".md").is_file() and not (tmp_path / "bench").exists()
    before = written.read_text()
    ran = []

    @register_method("_counts_folds", trained=False)
    def probe(ctx: FoldContext):
        ran.append(ctx.fold)
        return torch.zeros(len(ctx.query_indices), len(ctx.database_indices))

    try:
        assert main(["evaluate", "--methods", "_counts_folds", "--folds", "1", "--image-size", "64", "--seed", "7"]) == 2
    finally:
        unregister_method("_counts_folds")
    assert "cannot merge" in capsys.readouterr().err and ran == [] and written.read_text() == before


def test_cli_cross_validates_an_own_collection_from_images_and_csv(shared_data, tiny_net, tmp_path, monkeypatch):
    """`monai-cir evaluate --images DIR --csv FILE`: the collection of the CSV (the input `index build` takes), on 5
    folds stratified by diagnosis, recorded in the results (their name and fold assignment), written under output/."""
    import csv
    from types import SimpleNamespace

    from monai_cir.cli import main
    from monai_cir.data import feature_cache
    from monai_cir.engine.bundle import subset_records
    from monai_cir.evaluation import fold_indices

    monkeypatch.setenv("MONAI_CIR_CACHE", str(tmp_path / "cache"))
    real = feature_cache.build_feature_cache
    monkeypatch.setattr(feature_cache, "build_feature_cache", lambda collection, size, **k: real(collection, size, net=tiny_net, progress=False, **k))
    images = shared_data / "derm7pt" / "release_v0" / "images"
    chosen = subset_records("derm7pt", 15, shared_data)  # 5 of each diagnosis: one per fold
    table = tmp_path / "mine.csv"
    with open(table, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["case_id", "image", "diagnosis", "text"])
        rows.writerows([f"mine-{i}", r.image_path.relative_to(images), r.diagnosis, r.text] for i, r in enumerate(chosen))
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--images", str(images), "--csv", str(table), "--methods", "imagenet_cosine", "--folds", "0,1", "--image-size", "64"]) == 0
    payload = json.loads((tmp_path / "output" / "mine_cv.json").read_text())
    assert payload["config"]["collection"] == "mine" and "stratified 5-fold by diagnosis" in payload["config"]["fold_assignment"]
    assert payload["methods"]["imagenet_cosine"]["held_out_folds"] == [0, 1]
    labels = np.array([r.label for r in chosen])
    folds = fold_indices(SimpleNamespace(case_ids=[f"mine-{i}" for i in range(15)], labels=labels))
    assert all(sorted(labels[folds == f].tolist()) == [0, 1, 2] for f in range(5))  # stratified: one of each per fold


def test_cli_refuses_a_collection_its_methods_cannot_score_before_embedding_it(shared_data, tmp_path, monkeypatch, capsys):
    """`monai-cir evaluate --images --csv`: a diagnosis with one case (no relevant case for its query) and, for a
    method that fits the diagnosis prior, a fold whose training cases hold one case of a diagnosis are refused
    in one line, exit 2, before any image is embedded."""
    import csv

    from monai_cir.cli import main
    from monai_cir.data import feature_cache
    from monai_cir.engine.bundle import subset_records

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded before the check")

    monkeypatch.setattr(feature_cache, "build_feature_cache", no_embedding)
    images = shared_data / "derm7pt" / "release_v0" / "images"
    chosen = subset_records("derm7pt", 15, shared_data)  # 5 of each diagnosis
    kept = {d: [r for r in chosen if r.diagnosis == d] for d in dict.fromkeys(r.diagnosis for r in chosen)}
    first, second, third = kept
    monkeypatch.chdir(tmp_path)

    def evaluate_rows(rows, *methods):
        table = tmp_path / "mine.csv"
        with open(table, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["case_id", "image", "diagnosis", "text"])
            out.writerows([f"mine-{i}", r.image_path.relative_to(images), r.diagnosis, r.text] for i, r in enumerate(rows))
        code = main(["evaluate", "--images", str(images), "--csv", str(table), "--methods", *methods, "--folds", "0,1,2,3,4", "--image-size", "64"])
        return code, capsys.readouterr().err

    code, err = evaluate_rows(kept[first] + kept[second] + kept[third][:1], "imagenet_cosine")
    assert code == 2 and f"diagnosis {third!r} has a single case" in err, err
    code, err = evaluate_rows(kept[first] + kept[second] + kept[third][:2], "imagenet_cosine", "composed_late_fusion_prior")
    assert code == 2 and f"{third!r} has 1 training case(s) among the training cases of fold" in err and "diagnosis prior needs at least 2" in err, err
    # ... and it names the methods that cannot run, and how to run the others
    assert "cannot run on this collection: composed_late_fusion_prior; run the others without them (--methods imagenet_cosine)" in err, err


def test_results_table_names_the_collection_it_scored():
    """A table of your own collection's folds is not captioned Derm7pt."""
    from monai_cir.evaluation.report import results_table

    entry = {"label": "m", "acc@1": {"mean": 80.0, "std": 1.0}}
    mine = results_table({"methods": {"m": entry}, "config": {"folds": [0, 1], "collection": "clinic-2026"}})
    assert "clinic-2026, 2 folds [0, 1]" in mine and "Derm7pt" not in mine
    assert "Derm7pt, 2 folds [0, 1]" in results_table({"methods": {"m": entry}, "config": {"folds": [0, 1]}})


def test_figures_colour_each_class_as_the_report_does():
    from monai_cir.dicom.report_pdf import CLASS_COLOURS, OTHER_CLASS_COLOUR
    from monai_cir.evaluation.report import _class_colour

    assert [_class_colour(i) for i in range(3)] == [CLASS_COLOURS[n] for n in ("melanoma", "nevus", "benign keratosis")]
    assert _class_colour(7) == OTHER_CLASS_COLOUR


def test_cross_site_leave_one_out_does_not_rank_a_query_against_its_own_copy(tmp_path):
    """Found by review: ISIC UDA-1 holds two byte-identical pairs (ISIC_0000279 / 280, 477 / 512); in leave-one-out
    each found its copy at rank 1. Copies are found by their bytes and neither ranked nor counted for each other."""
    from types import SimpleNamespace as NS

    from monai_cir.evaluation.protocol import copies_of_one_image
    from monai_cir.metrics import leave_one_out_metrics

    for name, content in (("a", b"one"), ("b", b"one"), ("c", b"two"), ("d", b"three")):
        (tmp_path / name).write_bytes(content)
    records = [NS(case_id=n.upper(), image_path=tmp_path / n) for n in "abcd"]
    mask, groups = copies_of_one_image(records)
    assert groups == [["A", "B"]] and mask[0, 1] and mask[1, 0] and mask.sum() == 2
    similarity = np.array([[1, .99, .5, .1], [.99, 1, .1, .5], [.5, .1, 1, .2], [.1, .5, .2, 1]])
    labels = np.array([0, 0, 1, 0])
    plain = leave_one_out_metrics(similarity, labels)
    fair = leave_one_out_metrics(similarity, labels, exclude=mask)
    assert plain["hits"][1][:2].all()  # each copy finds the other
    assert not fair["hits"][1][0] and fair["hits"][1][1]  # A's next is C (other class); B's next is D (same class)
    assert fair["ranking"][0][-1] == 1 and fair["num_relevant"][0] == 1  # the copy ranks last and is not relevant


def test_cross_site_text_forms_say_which_texts_name_no_finding(tiny_caches, tiny_net, monkeypatch):
    """Found by review: ISIC UDA-1's texts name no finding, so its partial texts are its template texts, findings_only
    is empty, and a findings-gated method's every cell is its image-only query: the table showed them as evidence that
    text never hurts there. The cross-site block says how many texts name a finding and which forms are the same texts,
    and a merged run keeps it (the merge kept only the first run's methods and skipped)."""
    from monai_cir.data import feature_cache
    from monai_cir.evaluation.protocol import merge_results
    from monai_cir.evaluation.report import text_forms_table

    monkeypatch.setattr(feature_cache, "build_feature_cache", lambda collection, *a, **k: tiny_caches[collection])
    runs = [evaluate(["imagenet_cosine"], image_size=64, folds=(fold,), cross_site="isic-uda1", cache=tiny_caches["derm7pt"], net=tiny_net,
                     progress=False, text_forms=["template", "partial", "empty", "findings_only"]) for fold in (0, 1)]
    first = {**runs[0], "cross_site": {"isic-uda1": {k: v for k, v in runs[0]["cross_site"]["isic-uda1"].items() if k != "text_forms_texts"}}}
    merged = merge_results(first, runs[1])  # a file written before the block existed, merged with a run that has it
    block = merged["cross_site"]["isic-uda1"]
    texts = block["text_forms_texts"]
    assert texts["partial"]["same_texts_as"] == "template" and texts["findings_only"]["same_texts_as"] == "empty"
    assert texts["template"]["same_texts_as"] is None and all(t["naming_a_finding"] == 0 for t in texts.values())
    assert "copies_not_ranked" in block and block["methods"]["imagenet_cosine"]["copies_not_ranked"] == 0  # per method too
    table = text_forms_table(merged)
    assert "partial 0 of 16 (the same texts as template)" in table and "No isic-uda1 text names a finding" in table
