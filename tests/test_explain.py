"""Explanations of a match (issue 7): region masks, exact contributions, heatmaps at image size, words, PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import activate_head, make_tiny_net
from monai_cir.explain import (
    Explanation,
    explain_match,
    explain_matches,
    grid_maps,
    merge_word_pieces,
    render_explanation,
    upsample_contribution,
    upsample_masks,
)

TEXT = "atypical pigment network, irregular streaks, blue-whitish veil; location: back"


def fitted_net(projection: str = "residual_mlp", full_text_findings: int = 1):
    """A tiny active network whose input standardisation is fitted, as in ``bundle/models/model.pt``
    (an unfitted one is the identity, and a grid that skips it would go unnoticed). The plain findings
    gate by default (TEXT composes fully); ``full_text_findings=5`` blends TEXT (3 findings) at w = 0.6."""
    net = activate_head(make_tiny_net(num_masks=3, projection=projection, full_text_findings=full_text_findings))
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        tokens, mask = net.text_features([TEXT] * 6)
        # the tiny backbone's maps are nearly centred; real frozen maps are not (composer.InputStandardizer):
        # fit on shifted, rescaled maps so that the standardisation changes the values the grid holds
        maps = [0.5 + 0.4 * x for x in net.image_features(images)]
        net.fit_input_statistics(maps, tokens, mask)
    for align in net.alignments:
        norm = align.input_norm
        assert norm.mean.abs().max() > 0.05 and (norm.std - 1).abs().max() > 0.05, "the fitted statistics must not be the identity"
    return net


@pytest.fixture(scope="module")
def net():
    return fitted_net()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 64, generator=g)


@pytest.fixture(scope="module")
def explanation(net, images):
    return explain_match(net, images[0], TEXT, images[1], target_label="case A")


def test_masks_are_spatial_distributions_at_image_size(net, images, explanation):
    for level, masks in zip(explanation.levels, net.region_masks(images[0][None], [TEXT])):
        assert level.query_masks.shape == tuple(masks.shape[1:])
        np.testing.assert_allclose(level.query_masks, masks[0].detach().numpy(), atol=1e-5)
        for m in (level.query_masks, level.target_masks):
            assert m.shape[0] == 3 and (m >= 0).all()
            np.testing.assert_allclose(m.reshape(3, -1).sum(-1), 1.0, atol=1e-5)
            up = upsample_masks(m, (64, 64))
            assert up.shape == (3, 64, 64) and (up >= 0).all()
            np.testing.assert_allclose(up.reshape(3, -1).sum(-1), 1.0, atol=1e-5)
    assert explanation.query_heatmap.shape == (64, 64) == explanation.image_size
    assert explanation.target_heatmap.shape == (64, 64)


def test_heatmap_upsampling_to_non_square_sizes_keeps_the_sum():
    values = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    up = upsample_contribution(values, (40, 56))
    assert up.shape == (40, 56)
    assert abs(up.sum() - values.sum()) < 0.05 * np.abs(values).sum()


def _local_term(net, query_image, text, target_image) -> float:
    """``Σ_i s_local^i`` as the search computes it: the local blocks of ``<Q, T>`` over β (paper Eq. 9,
    DESIGN.md section 2) and over ``1 - a`` for a network with a late-fusion branch of share ``a`` (its Eq. 9
    blocks are scaled by √(1 - a)), independent of the explanation code."""
    with torch.no_grad():
        q = net.encode_query(query_image[None], [text])[0]
        t = net.encode_target(target_image[None])[0]
    half = sum(net.dims)
    return float(q[:half] @ t[:half]) / (net.beta * (1.0 - net.late_fusion_share))


def _projection_residuals(net, query_image, text, target_image) -> list[float]:
    """Per level ``<g(ē_q), ê_t> / |e_q|``, the projection branch's share of the query side's local cosine."""
    out = []
    with torch.no_grad():
        q_maps = net.compose(net.image_features(query_image[None]), *net.text_features([text]))
        t_maps = net.image_features(target_image[None])
        for align, xq, xt in zip(net.alignments, q_maps, t_maps):
            mean_region = align.region_descriptors(xq)[0].mean(dim=1)
            e_q = align.local_descriptor(xq)[0]
            e_t = align.local_descriptor(xt)[0]
            branch = align.proj_local.net(mean_region)[0] if hasattr(align.proj_local, "net") else torch.zeros_like(e_q)  # g(ē)
            out.append(float(branch @ e_t / (e_q.norm() * e_t.norm())))
    return out


def test_score_is_the_networks_score(net, images, explanation):
    with torch.no_grad():
        s = float(net.similarity(images[0][None], [TEXT], images[1][None])[0, 0])
    assert explanation.score == pytest.approx(s, abs=1e-5)
    assert explanation.local_score == pytest.approx(_local_term(net, images[0], TEXT, images[1]), abs=1e-5)
    assert all(lv.gate != 0.0 for lv in explanation.levels)


def test_region_contributions_sum_to_the_scores_local_term(net, images, explanation):
    """With a fitted input_norm: regions + the projection residual (both computed here from the
    network's own modules) give the local term of the score the search uses."""
    residuals = _projection_residuals(net, images[0], TEXT, images[1])
    assert any(abs(r) > 1e-3 for r in residuals), "the residual projection must contribute for the test to mean anything"
    for lv, residual in zip(explanation.levels, residuals):
        assert lv.query_residual == pytest.approx(residual, abs=1e-5)
    regions = sum(float(lv.query_regions.sum()) for lv in explanation.levels)
    assert regions + sum(residuals) == pytest.approx(_local_term(net, images[0], TEXT, images[1]), abs=1e-5)
    for lv in explanation.levels:
        assert lv.target_regions.sum() + lv.target_residual == pytest.approx(lv.local_cosine, abs=1e-5)
        assert lv.query_positions.sum() == pytest.approx(lv.query_regions.sum(), abs=1e-5)
    # the image-size heatmap carries beta * (sum of region contributions over levels)
    assert explanation.query_heatmap.sum() == pytest.approx(net.beta * regions, abs=1e-3)


def test_a_blended_query_is_explained_by_the_same_blend(net, images, explanation):
    """TEXT names 3 findings: with full_text_findings=5 the query is 0.6 Q_composed + 0.4 Q_image, and its
    explanation is the same blend of the composed query's (``net``: same weights, plain gate) and the
    image-only query's, so the parts still add up to the score the search uses."""
    blended = fitted_net(full_text_findings=5)
    ex = explain_match(blended, images[0], TEXT, images[1])
    image_only = explain_match(blended, images[0], "", images[1])
    assert ex.extra["text_weight"] == pytest.approx(0.6) and "0.60 x (image + text)" in ex.sr_text()
    with torch.no_grad():
        s = float(blended.similarity(images[0][None], [TEXT], images[1][None])[0, 0])
    assert ex.score == pytest.approx(s, abs=1e-5)
    assert ex.score == pytest.approx(0.6 * explanation.score + 0.4 * image_only.score, abs=1e-6)
    assert abs(ex.score - explanation.score) > 1e-3 and abs(ex.score - image_only.score) > 1e-3
    local = _local_term(blended, images[0], TEXT, images[1])
    assert ex.local_score == pytest.approx(local, abs=1e-5)
    assert sum(float(lv.query_regions.sum()) + lv.query_residual for lv in ex.levels) == pytest.approx(local, abs=1e-5)
    for lv, composed, plain in zip(ex.levels, explanation.levels, image_only.levels):
        np.testing.assert_allclose(lv.query_regions, 0.6 * composed.query_regions + 0.4 * plain.query_regions, atol=1e-6)
        assert lv.target_regions.sum() + lv.target_residual == pytest.approx(lv.local_cosine, abs=1e-5)
        np.testing.assert_allclose(lv.query_masks.reshape(3, -1).sum(-1), 1.0, atol=1e-5)


def test_without_projection_the_regions_are_the_whole_local_term(images):
    """``projection="none"``: nothing is left to a residual, the regions alone give the local term."""
    plain = fitted_net(projection="none")
    ex = explain_match(plain, images[0], TEXT, images[1])
    for lv in ex.levels:
        assert lv.query_residual == 0.0 and lv.target_residual == 0.0
        assert lv.query_regions.sum() == pytest.approx(lv.local_cosine, abs=1e-5)
        assert lv.target_regions.sum() == pytest.approx(lv.local_cosine, abs=1e-5)
    regions = sum(float(lv.query_regions.sum()) for lv in ex.levels)
    assert regions == pytest.approx(_local_term(plain, images[0], TEXT, images[1]), abs=1e-5)


def test_score_parts_add_up_to_the_networks_score(net, images, explanation):
    with torch.no_grad():
        s = float(net.similarity(images[0][None], [TEXT], images[1][None])[0, 0])
    parts = explanation.score_parts()
    assert [p["level"] for p in parts] == list(net.levels)
    for side in ("query", "target"):
        total = sum(sum(p[f"{side}_regions"]) + p[f"{side}_projection"] + p["global"] for p in parts)
        assert total == pytest.approx(s, abs=1e-5), side
    assert explanation.summary()["score_parts"] == parts


def test_words_are_merged_and_special_tokens_dropped(explanation):
    words = [t.word for t in explanation.tokens]
    assert words, "a text query attends to its words"
    assert not any(w.startswith("##") or w in ("[CLS]", "[SEP]", "[PAD]") for w in words)
    assert all(any(c.isalnum() for c in w) for w in words)
    weights = [t.weight for t in explanation.tokens]
    assert weights == sorted(weights, reverse=True)
    assert {"pigment", "streaks", "veil"} <= set(words)


def test_words_that_weighed_most_leave_out_function_words_and_numbers(net, images):
    """Function words and numbers take attention too but name nothing a reader can weigh: never listed."""
    text = "the lesion shows an atypical pigment network and irregular streaks, no blue-whitish veil, for 3 years"
    words = {t.word.lower() for t in explain_match(net, images[0], text, images[1]).tokens}
    assert {"pigment", "streaks", "veil"} <= words
    assert not words & {"the", "an", "and", "no", "for", "shows", "years"} and not any(w.isdigit() for w in words)


def test_merge_word_pieces():
    merged = merge_word_pieces(["[CLS]", "derm", "##os", "##copy", "veil", "[SEP]"], [0.1, 0.2, 0.1, 0.1, 0.4, 0.1], special=["[CLS]", "[SEP]"])
    assert [(m.word, round(m.weight, 6)) for m in merged] == [("dermoscopy", 0.4), ("veil", 0.4)]


def test_png_is_written_for_a_query(net, images, explanation, tmp_path):
    image_only = explain_match(net, images[0], "", images[1])
    assert image_only.tokens == [] and all(lv.token_attention.sum() == 0 for lv in image_only.levels)
    path = render_explanation([explanation, image_only], tmp_path / "explain.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    summary = explanation.summary()
    assert summary["top_words"] and len(summary["levels"]) == len(net.levels)
    with pytest.raises(ValueError, match="png"):
        render_explanation(explanation, tmp_path / "explain.jpg")


def test_explain_matches_and_bad_input(net, images):
    many = explain_matches(net, images[0], TEXT, [images[1], images[0]], labels=["a", "b"])
    assert [e.target_label for e in many] == ["a", "b"] and all(isinstance(e, Explanation) for e in many)
    # one batched pass over the targets explains each as the single-pair call does, and each score is the network's
    for ex, target in zip(many, [images[1], images[0]]):
        alone = explain_match(net, images[0], TEXT, target)
        assert ex.score == pytest.approx(alone.score, abs=1e-5)
        assert ex.score == pytest.approx(float(net.similarity(images[0][None], [TEXT], target[None])[0, 0]), abs=1e-4)
        np.testing.assert_allclose(ex.target_heatmap, alone.target_heatmap, atol=1e-5)
    with pytest.raises(ValueError, match="one image"):
        explain_match(net, torch.rand(2, 3, 64, 64), TEXT, images[1])
    with pytest.raises(ValueError, match="text must be a string"):
        explain_match(net, images[0], None, images[1])  # type: ignore[arg-type]


def _same_explanation(a: Explanation, b: Explanation, atol: float = 1e-5) -> None:
    assert a.score == pytest.approx(b.score, abs=atol)
    np.testing.assert_allclose(a.query_heatmap, b.query_heatmap, atol=atol)
    np.testing.assert_allclose(a.target_heatmap, b.target_heatmap, atol=atol)
    for la, lb in zip(a.levels, b.levels):
        for name in ("query_masks", "target_masks", "query_regions", "target_regions", "query_positions", "target_positions"):
            np.testing.assert_allclose(getattr(la, name), getattr(lb, name), atol=atol, err_msg=name)
        assert (la.local_cosine, la.global_cosine) == pytest.approx((lb.local_cosine, lb.global_cosine), abs=atol)
        assert (la.query_residual, la.target_residual) == pytest.approx((lb.query_residual, lb.target_residual), abs=atol)


def test_explain_matches_from_maps_the_caller_has(net, images):
    """The app passes the query's maps from its encoding and the matches' grid maps from its cache:
    the same explanations as computing them here, and those maps are the ones used (another image's
    maps give that image's explanation)."""
    query, target = images
    other = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(9))
    plain = explain_matches(net, query, TEXT, [target, other])
    with torch.no_grad():
        q_maps = net.image_features(query[None])
        t_grids = grid_maps(net, net.image_features(torch.stack([target, other])))
    assert all(g.shape[-1] <= a.grid for g, a in zip(t_grids, net.alignments))
    given = explain_matches(net, query, TEXT, [target, other], query_maps=q_maps, target_maps=t_grids)
    for a, b in zip(given, plain):
        _same_explanation(a, b)
    with torch.no_grad():
        swapped = explain_matches(net, query, TEXT, [target], query_maps=net.image_features(other[None]),
                                  target_maps=grid_maps(net, net.image_features(other[None])))[0]
    _same_explanation(swapped, explain_match(net, other, TEXT, other))
    with pytest.raises(ValueError, match="one per target"):
        explain_matches(net, query, TEXT, [target, other], target_maps=[g[:1] for g in t_grids])



def test_explain_matches_from_the_text_tokens_of_a_batch_encoding(net, images):
    """The app passes each query's text tokens from encoding its batch (padded to the batch's longest
    text): the same explanation as encoding the text here, words included; another text's tokens give
    that text's explanation (they are the ones used)."""
    query, target = images
    longer = TEXT + "; irregular dots and globules, regression structures; age 70, male, lower extremity"
    with torch.no_grad():
        encoded = net.encode_query_parts(torch.stack([query, query]), [TEXT, longer])
    assert encoded.tokens.shape[1] > int(encoded.mask[0].sum())  # TEXT's row is padded
    torch.testing.assert_close(encoded.query, net.encode_query(torch.stack([query, query]), [TEXT, longer]))
    plain = explain_matches(net, query, TEXT, [target])[0]
    given = explain_matches(net, query, TEXT, [target], text_features=(encoded.tokens[:1], encoded.mask[:1]))[0]
    _same_explanation(given, plain)
    assert [(w.word, round(w.weight, 5)) for w in given.tokens] == [(w.word, round(w.weight, 5)) for w in plain.tokens]
    assert given.tokens
    other = explain_matches(net, query, TEXT, [target], text_features=(encoded.tokens[1:], encoded.mask[1:]))[0]
    _same_explanation(other, explain_matches(net, query, longer, [target])[0])
    with pytest.raises(ValueError, match="text_features"):
        explain_matches(net, query, TEXT, [target], text_features=(encoded.tokens, encoded.mask))


def test_image_only_queries_from_the_same_encoding(images):
    """encode_query_parts(with_image_query=True): the same images' image-only queries, from the maps the encoding
    computed (what the app compares the shown cases with), equal to encoding them with blank texts; a blank
    text's query is its own image-only query."""
    net = fitted_net(full_text_findings=5)  # TEXT (3 findings) blends at w = 0.6: the late-fusion branch and the blend both act
    batch = torch.stack([images[0], images[1]])
    with torch.no_grad():
        encoded = net.encode_query_parts(batch, [TEXT, ""], with_image_query=True)
        alone = net.encode_query(batch, ["", ""])
    torch.testing.assert_close(encoded.image_query, alone, atol=1e-5, rtol=1e-5)
    # what lets a query with no text skip the composers: with no token, Eq. 5 passes the maps through
    with torch.no_grad():
        maps = net.image_features(batch)
        tokens, mask = net.text_features([TEXT, TEXT])
        composed = net.compose(maps, tokens, torch.zeros_like(mask))
    torch.testing.assert_close(net.embed_maps(composed), net.embed_maps(maps), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(encoded.image_query[1], encoded.query[1])
    assert not torch.allclose(encoded.image_query[0], encoded.query[0], atol=1e-3)  # the text moved the first query
    assert net.encode_query_parts(batch, [TEXT, ""]).image_query is None

def test_explanation_of_a_network_in_training_mode_is_the_eval_one(images):
    """The projection's dropout is off while explaining, whatever mode the network is in, and the mode is restored."""
    net = fitted_net()
    query, target = images
    net.eval()
    reference = explain_match(net, query, TEXT, target)
    assert not any(m.training for m in net.modules())
    net.train()
    assert any(m.training for m in net.modules())
    for _ in range(2):
        _same_explanation(explain_match(net, query, TEXT, target), reference)
    assert net.training and any(m.training for m in net.alignments.modules())


def test_explanation_on_real_isic_images(offline_net, shared_data, tmp_path):
    """Pretrained offline encoders on two real ISIC UDA-1 images (read from the data root; the PNG
    goes to a pytest temp folder, never to a tracked file)."""
    folder = shared_data / "isic-uda1" / "images"
    query, target = sorted(folder.glob("*.jpg"))[:2]
    ex = explain_match(offline_net, query, "atypical pigment network, regression structures (blue areas); location: back", target,
                       query_label=query.stem, target_label=target.stem)
    assert ex.query_image.shape == (260, 260, 3) and ex.query_heatmap.shape == (260, 260)
    for lv in ex.levels:
        np.testing.assert_allclose(lv.query_masks.reshape(lv.query_masks.shape[0], -1).sum(-1), 1.0, atol=1e-4)
        assert lv.gate == 0.0  # the untrained composer: attention is computed, but the text changes nothing
    with torch.no_grad():
        s = float(offline_net.similarity(ex_tensor(query), [ex.text], ex_tensor(target))[0, 0])
    assert ex.score == pytest.approx(s, abs=1e-4)
    assert {"pigment", "regression"} & {t.word for t in ex.tokens}
    path = render_explanation(ex, tmp_path / "isic.png")
    assert path.stat().st_size > 20_000


def test_explanation_of_the_shipped_model(shared_data):
    """``bundle/models/model.pt`` (fitted input standardisation, the late-fusion branch) on two real Derm7pt
    cases: the regions and the projection residual give the local term the search uses, and the parts add
    up to the score."""
    from monai_cir.data import load_collection, load_image
    from monai_cir.networks import load_model

    shipped = load_model(Path(__file__).resolve().parents[1] / "bundle" / "models" / "model.pt")
    assert any(float(a.input_norm.std.sub(1).abs().max()) > 0.1 for a in shipped.alignments), "the shipped model has fitted statistics"
    query, target = load_collection("derm7pt", shared_data)[:2]
    q, t = load_image(query.image_path, shipped.image_size), load_image(target.image_path, shipped.image_size)
    ex = explain_match(shipped, q, query.text, t)
    with torch.no_grad():
        s = float(shipped.similarity(q[None], [query.text], t[None])[0, 0])
    assert ex.score == pytest.approx(s, abs=1e-4)
    residuals = _projection_residuals(shipped, q, query.text, t)
    regions = sum(float(lv.query_regions.sum()) for lv in ex.levels)
    assert regions + sum(residuals) == pytest.approx(_local_term(shipped, q, query.text, t), abs=1e-4)
    assert shipped.late_fusion is not None and ex.late_fusion_share == 0.5
    assert sum(sum(p["query_regions"]) + p["query_projection"] + p["global"] for p in ex.score_parts()) == pytest.approx(s, abs=1e-4)


def ex_tensor(path):
    from monai_cir.data import load_image

    return load_image(path, 260)[None]


def test_sr_text_and_pdf_image(net, images, explanation):
    from monai_cir.explain import explanation_image

    sentence = explanation.sr_text()
    assert sentence.startswith("S=") and "local cosine per level L" in sentence
    assert "query words attended most: " + explanation.tokens[0].word in sentence
    image = explanation_image(explanation)
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and image.shape[0] > 200


def test_a_late_fusion_branch_is_one_more_part_of_the_score(net, images, explanation):
    """The release network (S = (1 - a) S_Eq9 + a S_lf, a = 0.5): the Eq. 9 parts of the paper network's
    explanation count 1 - a, the branch's cosine (computed here by hand from pooled maps and the text's mean
    token, from maps pooled on the 4 x 4 grid) counts a, and the parts add up to the score the search uses,
    from the full maps or from the grid maps the index stores."""
    from monai_cir.engine import attach_late_fusion
    from monai_cir.explain import explain_matches, grid_maps
    from monai_cir.networks.late_fusion import LateFusionBranch, sentence_embedding

    torch.manual_seed(4)
    branch = LateFusionBranch(sum(net.image_encoder.channels), net.text_encoder.dim, hidden=16, out_dim=8, batch_norm=True).eval()
    with torch.no_grad():
        branch.image_norm.mean.normal_()
    released = attach_late_fusion(net, branch, share=0.5).eval()
    ex = explain_match(released, images[0], TEXT, images[1])
    with torch.no_grad():
        s = float(released.similarity(images[0][None], [TEXT], images[1][None])[0, 0])
        q_maps, t_maps = released.image_features(images[0][None]), released.image_features(images[1][None])
        cosine = float(branch.query(LateFusionBranch.pool(q_maps, grid=4), sentence_embedding(*released.text_tokens([TEXT])))
                       @ branch.target(LateFusionBranch.pool(t_maps, grid=4))[0])
    assert ex.late_fusion_share == 0.5 and ex.late_fusion_cosine == pytest.approx(cosine, abs=1e-5)
    assert ex.score == pytest.approx(s, abs=1e-5) and ex.score == pytest.approx(0.5 * explanation.score + 0.5 * cosine, abs=1e-5)
    parts = ex.score_parts()
    assert [p["level"] for p in parts] == [*net.levels, "late_fusion"]
    for side in ("query", "target"):
        assert sum(sum(p[f"{side}_regions"]) + p[f"{side}_projection"] + p["global"] for p in parts) == pytest.approx(s, abs=1e-5)
    np.testing.assert_allclose(ex.query_heatmap, 0.5 * explanation.query_heatmap, atol=1e-7)
    assert "0.50 x whole-image and text cosine" in ex.sr_text() and ex.summary()["late_fusion_cosine"] == ex.late_fusion_cosine
    (from_grids,) = explain_matches(released, images[0], TEXT, [images[1]], target_maps=grid_maps(released, t_maps))
    assert from_grids.score == pytest.approx(s, abs=1e-5)
    # the figure's caption adds up to S (found by review: "S=2.000 (local 3.00, global 3.00)" left the branch out)
    import matplotlib.pyplot as plt

    from monai_cir.explain import _figure

    fig = _figure([ex], 6)
    titles = [axis.get_title() for axis in fig.axes]
    plt.close(fig)
    assert any(f"S={ex.score:.3f} = 0.50 x Eq. 9 (local" in t and f"+ 0.50 x late fusion {cosine:.2f}" in t for t in titles), titles
