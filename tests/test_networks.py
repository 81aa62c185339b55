"""The network of paper Eqs. 2-9: decomposition, β limits, masks, encoders, input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import activate_head, make_tiny_net
from monai_cir.networks import (
    ComposedRetrievalNet,
    CrossModalTransformer,
    HierarchicalImageEncoder,
    create_model,
    load_model,
    save_checkpoint,
)
from monai_cir.networks import image_encoder as image_encoder_module

TEXTS = ["atypical pigment network, irregular streaks", "blue-whitish veil present, palpable lesion on the trunk"]




@pytest.fixture(scope="module")
def active_net():
    return activate_head(make_tiny_net(num_masks=3))


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_decomposition_identity(active_net):
    """S computed from feature maps (Eq. 9) equals the inner product of the query and target embeddings."""
    q_img, t_img = _images(2), _images(5, seed=1)
    with torch.no_grad():
        s = active_net.similarity(q_img, TEXTS, t_img)
        q = active_net.encode_query(q_img, TEXTS)
        t = active_net.encode_target(t_img)
    assert q.shape == (2, active_net.embedding_dim) and t.shape == (5, active_net.embedding_dim)
    assert active_net.embedding_dim == 2 * sum(active_net.dims)
    torch.testing.assert_close(q @ t.T, s, atol=1e-5, rtol=1e-5)
    # with 3 levels the score is a weighted sum of 3 + 3 cosines: |S| <= 3
    assert s.abs().max() <= 3.0 + 1e-5


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Every row of ``a`` against every row of ``b``: ``a·b / (|a| |b|)``."""
    return (a @ b.T) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :])


def _hand_descriptors(align, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 6-8 written out: pool to the grid, standardise with the fitted statistics, k softmax masks
    over positions, ``E_j = Σ_p α_j(p) X(p)``, mean over j, projection; global = spatial mean, projection."""
    if x.shape[-1] > align.grid or x.shape[-2] > align.grid:
        x = torch.nn.functional.adaptive_avg_pool2d(x, (min(align.grid, x.shape[-2]), min(align.grid, x.shape[-1])))
    x = (x - align.input_norm.mean[None, :, None, None]) / align.input_norm.std[None, :, None, None]
    positions = x.flatten(2)  # (B, C, P)
    alpha = align.masks.net(x).flatten(2).softmax(dim=-1)  # (B, k, P)
    regions = torch.einsum("bkp,bcp->bkc", alpha, positions)
    return align.proj_local(regions.mean(dim=1)), align.proj_global(positions.mean(dim=-1))


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.6])
def test_beta_limits(beta):
    """S = β Σ local + (1-β) Σ global (Eq. 9), with the cosines computed here from the maps, and a
    fitted (non-identity) input standardisation so that the score must apply it. The plain findings gate
    (full_text_findings=1): these texts compose fully, the blend has its own test."""
    net = activate_head(make_tiny_net(beta=beta, full_text_findings=1))
    q_img, t_img = _images(2), _images(3, seed=2)
    with torch.no_grad():
        maps = net.image_features(_images(4, seed=3))
        net.fit_input_statistics([0.5 + 0.4 * x for x in maps], *net.text_features(TEXTS * 2))
        maps_q = net.compose(net.image_features(q_img), *net.text_features(TEXTS))
        maps_t = net.image_features(t_img)
        local = global_ = torch.zeros(2, 3)
        for align, xq, xt in zip(net.alignments, maps_q, maps_t):
            (lq, gq), (lt, gt) = _hand_descriptors(align, xq), _hand_descriptors(align, xt)
            local, global_ = local + _cosine(lq, lt), global_ + _cosine(gq, gt)
        s = net.similarity(q_img, TEXTS, t_img)
        emb = net.encode_query(q_img, TEXTS) @ net.encode_target(t_img).T
    expected = {0.0: global_, 1.0: local, 0.6: 0.6 * local + 0.4 * global_}[beta]
    torch.testing.assert_close(s, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(local, global_, atol=1e-3), "local and global must differ for the test to mean anything"


def test_masks_are_spatial_distributions_aligned_with_input(active_net):
    images = _images(2, size=96)
    with torch.no_grad():
        masks = active_net.region_masks(images, TEXTS)
        maps = active_net.image_features(images)
    assert len(masks) == 3
    grid = active_net.composers[0].grid  # composed maps live on the pooled grid (composer.DEFAULT_GRID)
    for m, x, stride in zip(masks, maps, active_net.image_encoder.reductions):
        side = min(grid, math.ceil(96 / stride))
        assert m.shape == (2, 3, min(grid, x.shape[2]), min(grid, x.shape[3]))
        assert m.shape[2] == side and m.shape[3] == side
        assert (m >= 0).all()
        torch.testing.assert_close(m.sum(dim=(2, 3)), torch.ones(2, 3), atol=1e-5, rtol=0)


def test_untrained_composer_is_identity_and_text_changes_query():
    net = make_tiny_net()
    images = _images(2)
    with torch.no_grad():
        maps = net.image_features(images)
        composed = net.compose(maps, *net.text_features(TEXTS))
    from monai_cir.networks.composer import pool_to_grid

    for a, b, block in zip(maps, composed, net.composers):
        torch.testing.assert_close(pool_to_grid(a, block.grid), b)  # zero-initialised gates: the query starts in the target's space
    active = activate_head(make_tiny_net())
    with torch.no_grad():
        with_text = active.encode_query(images, TEXTS)
        image_only = active.encode_query(images, ["", "   "])
        target = active.encode_target(images)
    assert not torch.allclose(with_text, image_only, atol=1e-4)
    # an empty text is an image-only query: no text contribution at all
    torch.testing.assert_close(image_only, target, atol=1e-5, rtol=1e-5)


def test_cross_modal_transformer_preserves_shape_and_masks_padding():
    block = CrossModalTransformer(dim=24, text_dim=16, num_heads=5, grid=None)  # 5 does not divide 24: reduced to 4
    with torch.no_grad():
        block.gate_attn.fill_(1.0)
    x, z = torch.randn(2, 24, 5, 7), torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out, attention = block(x, z, mask, return_attention=True)
    assert out.shape == x.shape and attention.shape == (2, 6)
    assert torch.all(attention[0, 3:] == 0)  # padded tokens get no attention
    z2 = z.clone()
    z2[0, 3:] = 100.0  # changing padded tokens changes nothing
    torch.testing.assert_close(block(x, z2, mask), out)


def test_swin_config_gives_three_nchw_levels_and_valid_score():
    bert_base = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    net = create_model("swin_t-bert_base", pretrained=False, text_model="offline-minilm", text_config_overrides=bert_base, image_size=224).eval()
    assert net.image_encoder.channels_last_output
    assert net.text_encoder.dim == 768
    images = _images(2, size=224)
    with torch.no_grad():
        maps = net.image_features(images)
        assert [tuple(m.shape) for m in maps] == [(2, 192, 28, 28), (2, 384, 14, 14), (2, 768, 7, 7)]
        s = net.similarity(images, TEXTS, images)
        q, t = net.encode_query(images, TEXTS), net.encode_target(images)
    assert torch.isfinite(s).all() and s.shape == (2, 2)
    torch.testing.assert_close(q @ t.T, s, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda: (torch.rand(2, 1, 64, 64), TEXTS), "3 \\(RGB\\) channels"),
        (lambda: (torch.rand(2, 4, 64, 64), TEXTS), "3 \\(RGB\\) channels"),
        (lambda: (torch.full((2, 3, 64, 64), float("nan")), TEXTS), "NaN or infinite"),
        (lambda: (torch.rand(2, 3, 64, 64) * 255, TEXTS), "scaled to \\[0, 1\\]"),
        (lambda: (torch.rand(3, 3, 64, 64), TEXTS), "3 images but 2 texts"),
        (lambda: (torch.rand(2, 3, 64, 64), []), "texts is empty"),
        (lambda: (torch.rand(3, 64, 64), TEXTS[:1]), "add the batch dimension"),
        (lambda: ((torch.rand(2, 3, 64, 64) * 255).to(torch.uint8), TEXTS), "float RGB"),
        (lambda: (torch.rand(2, 3, 64, 64), "one string"), "not a single string"),
    ],
)
def test_bad_input_raises_clear_value_error(tiny_net, make_input, message):
    images, texts = make_input()
    with pytest.raises(ValueError, match=message):
        tiny_net.encode_query(images, texts)


def test_non_finite_target_images_rejected(tiny_net):
    images = torch.rand(3, 3, 64, 64)
    images[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"batch items \[1\]"):
        tiny_net.encode_target(images)


def test_over_long_text_is_truncated_with_warning(tiny_net):
    long_text = " ".join(["the lesion was followed for years"] * 100)  # names no finding: read as written
    with pytest.warns(UserWarning, match="truncated"):
        q = tiny_net.encode_query(torch.rand(1, 3, 64, 64), [long_text])
    assert torch.isfinite(q).all()


def test_the_findings_gate_reads_the_findings_in_the_templates_words(tiny_net):
    """With the findings gate the text encoder is given the findings a text states, as the template states them
    (data.report.query_text): "BWV -" the same as "no blue-whitish veil", a diagnosis or filler never, and findings
    named after 400 repetitions of filler are read (the model reads the short template sentence, not the first
    512 tokens). Without the gate (the paper's network) the text goes in as written."""
    images = torch.rand(1, 3, 64, 64)
    template = "Lesion. Dermoscopy: irregular streaks; no blue-whitish veil."
    for text in ("7PCL: irreg. streaks, BWV -", "irregular streaks; no blue-whitish veil. Likely melanoma, excise.",
                 "the lesion was followed for years. " * 100 + "Streaks: irregular\nBlue-whitish veil: absent"):
        assert tiny_net.query_text(text) == template
        torch.testing.assert_close(tiny_net.encode_query(images, [text]), tiny_net.encode_query(images, [template]), atol=0, rtol=0)
    assert tiny_net.text_weights([template]) == tiny_net.text_weights(["BWV -, irreg. streaks"])
    plain = make_tiny_net(text_gate="none")
    assert plain.query_text("7PCL: irreg. streaks, BWV -") == "7PCL: irreg. streaks, BWV -"


def test_invalid_construction_arguments():
    with pytest.raises(ValueError, match="beta must lie in"):
        make_tiny_net(beta=1.5)
    with pytest.raises(ValueError, match="levels must be"):
        make_tiny_net(levels=("X",))
    with pytest.raises(ValueError, match="unknown preset"):
        create_model("resnet-clip", pretrained=False)


def test_fingerprint_tracks_weights_and_config():
    a, b = make_tiny_net(), make_tiny_net()
    assert a.fingerprint() == b.fingerprint()
    activate_head(b)
    assert a.fingerprint() != b.fingerprint()
    assert make_tiny_net(image_size=96).fingerprint() != a.fingerprint()


def test_level_subsets_change_dimension():
    net = make_tiny_net(levels=("M", "H"))
    assert net.levels == ("M", "H") and net.embedding_dim == 2 * sum(net.image_encoder.channels[1:])
    with torch.no_grad():
        assert net.encode_target(_images(2)).shape == (2, net.embedding_dim)


# ---------------------------------------------------------------- real offline weights
@pytest.mark.integration
def test_offline_weights_load_strictly_and_are_deterministic(offline_net):
    enc = offline_net.image_encoder
    assert enc.model_name == "tf_efficientnet_lite2" and enc.channels == [48, 120, 352] and enc.reductions == [8, 16, 32]
    # EfficientNet-Lite was trained on (x - 0.5) / 0.5 (TF's 127/128 scaling), not ImageNet mean/std:
    # timm's pretrained config says so, and a mid-grey image maps to zero.
    torch.testing.assert_close(enc.normalize(torch.full((1, 3, 2, 2), 0.5)), torch.zeros(1, 3, 2, 2))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 260, 260, generator=g)
    with torch.no_grad():
        first = offline_net.encode_target(images)
        second = offline_net.encode_target(images)
        singles = torch.cat([offline_net.encode_target(images[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, singles, atol=1e-4, rtol=1e-4)
    # pretrained weights differ from a random init of the same architecture
    random_enc = HierarchicalImageEncoder("tf_efficientnet_lite2", pretrained=None)
    assert not torch.equal(random_enc.backbone.conv_stem.weight, enc.backbone.conv_stem.weight)


@pytest.mark.integration
def test_offline_weights_refuse_a_mismatching_architecture(monkeypatch):
    lite2_file = image_encoder_module._offline_weight_file("tf_efficientnet_lite2")
    monkeypatch.setattr(image_encoder_module, "_offline_weight_file", lambda name: lite2_file)
    with pytest.raises(RuntimeError, match="does not match|expects"):
        image_encoder_module.load_offline_efficientnet_lite("tf_efficientnet_lite0")


@pytest.mark.integration
def test_offline_text_encoder_gives_real_token_embeddings(offline_net):
    tokens, mask = offline_net.text_features(["irregular streaks", "typical pigment network"])
    assert tokens.shape[0] == 2 and tokens.shape[2] == 384 and mask.dtype == torch.bool
    pooled = [(t[m]).mean(0) for t, m in zip(tokens, mask)]
    # a real MiniLM separates unrelated sentences: their pooled embeddings are not identical
    assert torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0) < 0.99


@pytest.mark.integration
def test_checkpoint_round_trip(offline_net, tmp_path):
    net = activate_head(ComposedRetrievalNet.offline_default(image_size=260, num_masks=2))
    path = save_checkpoint(net, tmp_path / "model.pt", note="test")
    loaded = load_model(path)
    assert loaded.fingerprint() == net.fingerprint() and loaded.num_masks == 2
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_model(tmp_path / "bad.pt")
    # a folder: its model.pt (a MODELS folder), else its models/model.pt (a bundle folder), the app's rule
    from monai_cir.networks.checkpoint import checkpoint_in_folder

    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "models" / "model.pt").write_bytes(path.read_bytes())
    assert checkpoint_in_folder(bundle) == bundle / "models" / "model.pt" and load_model(bundle).fingerprint() == net.fingerprint()
    (bundle / "model.pt").write_bytes(b"not a checkpoint")
    assert checkpoint_in_folder(bundle) == bundle / "model.pt"  # the folder's own model.pt first, as the app reads MODELS
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model checkpoint in the folder .*: expected model.pt or models/model.pt"):
        load_model(tmp_path / "empty")


def test_untrained_head_is_the_same_in_every_process():
    """The head's initialisation is seeded: an index built with an untrained net can be searched by another process."""
    from monai_cir.networks import create_model
    from conftest import TINY_TEXT

    torch.manual_seed(123)
    a = create_model(pretrained=False, image_model="test_efficientnet", text_config_overrides=TINY_TEXT, image_size=64)
    torch.manual_seed(456)
    b = create_model(pretrained=False, image_model="test_efficientnet", text_config_overrides=TINY_TEXT, image_size=64)
    heads_a, heads_b = a.head_state_dict(), b.head_state_dict()
    assert all(torch.equal(heads_a[k], heads_b[k]) for k in heads_a)


def test_input_standardisation_is_fitted_on_training_data_and_saved_with_the_head():
    """The heads standardise their inputs with training statistics; an unfitted net is unaffected."""
    from monai_cir.networks.composer import InputStandardizer

    norm = InputStandardizer(3)
    x = torch.randn(200, 3) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([10.0, -3.0, 0.5])
    assert torch.equal(norm(x), x)  # identity before fit
    norm.fit(x)
    z = norm(x)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-4) and torch.allclose(z.std(0), torch.ones(3), atol=1e-3)
    maps4d = x[:8].view(8, 3, 1, 1).expand(8, 3, 2, 2)
    assert torch.allclose(norm(maps4d, dim=1)[:, :, 0, 0], z[:8], atol=1e-5)  # channel axis of a map
    with pytest.raises(ValueError, match="training vectors"):
        norm.fit(torch.randn(5, 4))

    net = make_tiny_net()
    images = _images(6)
    before = net.encode_query(images, TEXTS * 3)
    maps = net.image_features(images)
    tokens, mask = net.text_features(TEXTS * 3)
    net.fit_input_statistics(maps, tokens * 3.0 + 1.0, mask)
    after = net.encode_query(images, TEXTS * 3)
    assert not torch.allclose(before, after)
    head = net.head_state_dict()
    assert any(k.endswith("text_norm.mean") for k in head) and any(k.endswith("input_norm.std") for k in head)
    fresh = make_tiny_net()
    fresh.load_head_state_dict(head)
    assert torch.allclose(fresh.encode_query(images, TEXTS * 3), after, atol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        net.fit_input_statistics(maps[:1], tokens, mask)


def test_findings_gate_gives_the_image_only_query_for_text_without_findings():
    """text_gate="findings" (the default): age / sex text composes nothing (the image-only query, exactly);
    a text with a 7-point finding still changes the query; text_gate="none" composes every text."""
    images = _images(2)
    gated = activate_head(make_tiny_net())
    ungated = activate_head(make_tiny_net(text_gate="none"))
    demographics = ["Lesion on the back of a female patient, about 55 years old.", "male patient aged 60"]
    with torch.no_grad():
        image_only = gated.encode_query(images, ["", ""])
        torch.testing.assert_close(gated.encode_query(images, demographics), image_only, atol=0, rtol=0)
        assert not torch.allclose(gated.encode_query(images, TEXTS), image_only, atol=1e-4)
        assert not torch.allclose(ungated.encode_query(images, demographics), ungated.encode_query(images, ["", ""]), atol=1e-4)
    assert gated.texts_used(demographics + TEXTS) == [False, False, True, True]
    assert gated.config["text_gate"] == "findings" and ungated.config["text_gate"] == "none"
    with pytest.raises(ValueError, match="text_gate"):
        make_tiny_net(text_gate="sometimes")


SEVEN_FINDINGS = ("typical pigment network, no streaks, regular pigmentation, no regression structures, irregular dots "
                  "and globules, blue-whitish veil present, no vascular structures")


def test_text_with_few_findings_blends_the_composed_and_image_only_queries():
    """full_text_findings (default 5): a text naming n findings weighs w = min(1, n / 5), the query is
    w Q_composed + (1 - w) Q_image, and S computed from the maps (Eq. 9) is the same blend; a text naming
    all seven composes fully. Q_composed comes from a twin network with the plain gate (same weights)."""
    net = activate_head(make_tiny_net())
    plain = activate_head(make_tiny_net(full_text_findings=1))
    for a, b in zip(net.head_state_dict().values(), plain.head_state_dict().values()):
        assert torch.equal(a, b)
    q_img, t_img = _images(2), _images(3, seed=2)
    assert net.text_weights(TEXTS) == pytest.approx([0.4, 0.2])  # 2 and 1 findings named
    assert plain.text_weights(TEXTS) == [1.0, 1.0] and net.text_weights(["", "male, 60"]) == [0.0, 0.0]
    w = torch.tensor([[0.4], [0.2]])
    with torch.no_grad():
        composed, image_only = plain.encode_query(q_img, TEXTS), net.encode_query(q_img, ["", ""])
        query = net.encode_query(q_img, TEXTS)
        torch.testing.assert_close(query, w * composed + (1 - w) * image_only, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(query, composed, atol=1e-4) and not torch.allclose(query, image_only, atol=1e-4)
        score = net.similarity(q_img, TEXTS, t_img)
        expected = w * plain.similarity(q_img, TEXTS, t_img) + (1 - w) * net.similarity(q_img, ["", ""], t_img)
        torch.testing.assert_close(score, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(query @ net.encode_target(t_img).T, score, atol=1e-5, rtol=1e-5)
        assert net.text_weights([SEVEN_FINDINGS]) == [1.0]
        torch.testing.assert_close(net.encode_query(q_img[:1], [SEVEN_FINDINGS]), plain.encode_query(q_img[:1], [SEVEN_FINDINGS]), atol=0, rtol=0)
    assert net.config["full_text_findings"] == 5
    for bad in (0, 8, 2.5, True):
        with pytest.raises(ValueError, match="full_text_findings"):
            make_tiny_net(full_text_findings=bad)


def test_feature_caches_store_every_text_the_gate_acts_at_query_time():
    """A cache stores the text as written (text_tokens, no gate): the gated network's own query drops an
    age / sex text, but the cache keeps its tokens, so gate-off ablations and late fusion still read it."""
    from monai_cir.data.feature_cache import _encode_texts

    gated = make_tiny_net()
    texts = ["male patient aged 60", "atypical pigment network"]
    tokens, mask, sentence = _encode_texts(gated, texts, 8)
    assert mask.any(dim=1).tolist() == [True, True]
    assert gated.text_features(texts)[1].any(dim=1).tolist() == [False, True]
    assert sentence[0].abs().sum() > 0


def test_late_fusion_branch_adds_its_cosine_to_eq9_in_one_inner_product(tmp_path):
    """late_fusion_share a: S = (1 - a) S_Eq9 + a S_lf, where S_Eq9 is the paper network's score (same head
    weights) and S_lf the branch's cosine of w q_lf + (1 - w) t_lf(query image) with t_lf(target), computed
    here by hand from the maps pooled on the 4 x 4 grid (as the cache trains it) and the mask-mean of the tokens.
    Q . T equals it; the checkpoint keeps the branch; a bad share or a level subset is refused."""
    from monai_cir.engine import attach_late_fusion
    from monai_cir.networks.late_fusion import LateFusionBranch

    paper = activate_head(make_tiny_net())
    torch.manual_seed(3)
    branch = LateFusionBranch(sum(paper.image_encoder.channels), paper.text_encoder.dim, hidden=16, out_dim=8, dropout=0.1, batch_norm=True)
    with torch.no_grad():  # non-trivial standardisation and BatchNorm statistics (eval mode uses them)
        for buffer in (branch.image_norm.mean, branch.text_norm.mean, branch.query_mlp[1].running_mean, branch.target_mlp[1].running_mean):
            buffer.normal_()
    net = attach_late_fusion(paper, branch.eval(), share=0.3).eval()
    assert net.embedding_dim == paper.embedding_dim + 8 and net.score_range == pytest.approx((-(0.7 * 3 + 0.3), 0.7 * 3 + 0.3))
    for model in (paper, net):  # the target embedding is the blocks its network says, each of norm its weight
        blocks = model.embedding_blocks
        assert sum(width for width, _ in blocks) == model.embedding_dim
        with torch.no_grad():
            t = model.encode_target(_images(3, size=88, seed=5))
        edges = np.cumsum([0] + [width for width, _ in blocks])
        norms = [t[:, lo:hi].norm(dim=-1) for lo, hi in zip(edges[:-1], edges[1:])]
        for norm, (_, weight) in zip(norms, blocks):
            assert torch.allclose(norm, torch.full_like(norm, weight), atol=1e-5), (norm, weight)
    q_img, t_img = _images(2, size=88), _images(3, size=88, seed=2)  # maps that do not split evenly into 4 x 4
    texts = [TEXTS[0], ""]  # two findings (w = 0.4), and no text (w = 0)
    with torch.no_grad():
        pooled_q = LateFusionBranch.pool(net.image_features(q_img), grid=4)
        pooled_t = LateFusionBranch.pool(net.image_features(t_img), grid=4)
        assert not torch.allclose(pooled_q, LateFusionBranch.pool(net.image_features(q_img)), atol=1e-4)  # the grid matters here
        tokens, mask = net.text_tokens(texts)
        sentence = (tokens * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        w = torch.tensor([[0.4], [0.0]])
        q_lf = w * branch.query(pooled_q, sentence) + (1 - w) * branch.target(pooled_q)
        s_lf = q_lf @ branch.target(pooled_t).T
        expected = 0.7 * paper.similarity(q_img, texts, t_img) + 0.3 * s_lf
        score = net.similarity(q_img, texts, t_img)
        torch.testing.assert_close(score, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net.encode_query(q_img, texts) @ net.encode_target(t_img).T, score, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(score, paper.similarity(q_img, texts, t_img), atol=1e-3)
    path = save_checkpoint(net, tmp_path / "model.pt", include_encoders=True)  # the tiny encoders are random: keep them
    loaded = load_model(path)
    assert loaded.config["late_fusion_share"] == 0.3 and loaded.config["late_fusion"]["out_dim"] == 8
    assert loaded.fingerprint() == net.fingerprint() != paper.fingerprint()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_query(q_img, texts), net.encode_query(q_img, texts), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="late_fusion_share"):
        make_tiny_net(late_fusion_share=1.0)
    with pytest.raises(ValueError, match="all three levels"):
        make_tiny_net(late_fusion_share=0.5, levels=("M", "H"))
    with pytest.raises(ValueError, match="unknown late_fusion options"):
        make_tiny_net(late_fusion_share=0.5, late_fusion=dict(width=3))
    with pytest.raises(ValueError, match="already has"):
        attach_late_fusion(net, branch)


def test_the_packaged_text_model_loads_without_a_progress_bar(capfd):
    """Loading the packaged MiniLM from its folder prints no "Loading weights" bar (noise in every CLI run and
    app log), and leaves transformers' progress bars as they were for everything else."""
    from transformers.utils import logging as hf_logging

    from monai_cir.networks.text_encoder import TextEncoder

    assert hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    encoder = TextEncoder()
    assert encoder.dim == 384
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
