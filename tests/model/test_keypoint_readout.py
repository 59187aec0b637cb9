"""Tests for the keypoint readout: grid geometry, conditioning, the action expert's keypoint tokens and loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instructvla.data.augment import AugmentParams, apply_params, crop_keypoints
from instructvla.model.action_expert import ActionExpert, ActionExpertConfig
from instructvla.model.keypoints import KeypointReadout, heatmap_cross_entropy, patch_grid_centres


def test_patch_grid_centres_are_row_major_pixel_centres() -> None:
    c = patch_grid_centres(4)
    assert c.shape == (16, 2)
    assert torch.allclose(c[0], torch.tensor([-0.75, -0.75]))  # top-left patch
    assert torch.allclose(c[3], torch.tensor([0.75, -0.75]))  # top-right: u grows along a row
    assert torch.allclose(c[4], torch.tensor([-0.75, -0.25]))  # next row: v grows downwards


def test_readout_finds_a_conditioned_feature_after_training() -> None:
    """Two kinds of blobs on an 8x8 grid; the condition says which to locate. The readout must learn it."""
    torch.manual_seed(0)
    readout = KeypointReadout(1, feature_dim=4, cond_dim=2, hidden_size=8)
    opt = torch.optim.Adam(readout.parameters(), lr=3e-2)
    centres = patch_grid_centres(8)

    def batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = torch.zeros(n, 64, 4)
        pa, pb = torch.randint(0, 64, (n,), generator=gen), torch.randint(0, 64, (n,), generator=gen)
        idx = torch.arange(n)
        feats[idx, pa, 0] = 1.0
        feats[idx, pb, 1] = 1.0
        which = torch.randint(0, 2, (n,), generator=gen)
        cond = torch.nn.functional.one_hot(which, 2).float()
        target = torch.where(which[:, None].bool(), centres[pb], centres[pa])
        return feats, cond, target

    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        feats, cond, target = batch(32, gen)
        uv = readout(feats, cond).uv
        loss = (uv[:, 0] - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    feats, cond, target = batch(64, torch.Generator().manual_seed(2))
    uv, tokens = readout(feats, cond)[:2]
    assert tokens.shape == (64, 1, 8)
    assert (uv[:, 0] - target).abs().mean() < 0.1  # patches are 0.25 apart


def _expert(**kw: object) -> ActionExpert:
    torch.manual_seed(0)
    base = dict(image_size=32, vision_num_layers=2, hidden_size=64, intermediate_size=128, num_layers=2,
                chunk_size=8, num_views=2)
    return ActionExpert(ActionExpertConfig.preset("tiny", 16, **{**base, **kw}))


def test_expert_keypoint_tokens_loss_and_cache() -> None:
    m = _expert(keypoints=3, noise_repeats=2)
    assert m.cfg.num_visual_tokens == 2 * 16 + 3
    g = torch.Generator().manual_seed(0)
    lat, img = torch.randn(2, 4, 16, generator=g), torch.randn(2, 2, 3, 32, 32, generator=g)
    act, kp = torch.randn(2, 8, 7, generator=g), torch.rand(2, 3, 2, generator=g) * 2 - 1
    terms = m.loss_terms(lat, img, None, act, keypoints=kp)
    assert set(terms) == {"fm", "keypoint"} and terms["keypoint"] > 0
    (terms["fm"] + terms["keypoint"]).backward()
    assert m.keypoint_readout.query[0].weight.grad.abs().sum() > 0
    assert "keypoint" not in m.loss_terms(lat, img, None, act)  # no labels, no keypoint term
    with pytest.raises(ValueError, match="keypoints labels must have shape"):
        m.loss_terms(lat, img, None, act, keypoints=kp[:, :2])
    m.eval()
    noise = torch.randn(2, 8, 7, generator=g)
    cached = m.sample(lat, img, noise=noise, use_cache=True)
    full = m.sample(lat, img, noise=noise, use_cache=False)
    assert torch.allclose(cached, full, atol=1e-5)
    prefix = m.encode_prefix(lat, img)
    assert prefix.keypoints.shape == (2, 3, 2)
    assert torch.equal(m.sample(lat, img, noise=noise, prefix=prefix), cached)  # a given prefix is not re-encoded
    with pytest.raises(ValueError, match="needs use_cache"):
        m.sample(lat, img, noise=noise, prefix=prefix, use_cache=False)


def test_expert_without_keypoints_is_unchanged_and_rejects_labels() -> None:
    m = _expert()
    assert m.keypoint_readout is None and m.cfg.num_visual_tokens == 32
    lat, img, act = torch.randn(2, 4, 16), torch.randn(2, 2, 3, 32, 32), torch.randn(2, 8, 7)
    with pytest.raises(ValueError, match="no keypoint readout"):
        m.loss_terms(lat, img, None, act, keypoints=torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="keypoints must be an int"):
        ActionExpertConfig.preset("tiny", 16, keypoints=-1)


def test_crop_keypoints_follows_the_image_crop() -> None:
    """A bright pixel's position, relabelled by crop_keypoints, lands on the same pixel of the augmented crop."""
    img = np.zeros((1, 40, 40, 3), np.uint8)
    row, col = 27, 9
    img[0, row, col] = 255
    uv = np.array([[2 * (col + 0.5) / 40 - 1, 2 * (row + 0.5) / 40 - 1]], np.float32)
    p = AugmentParams(top=0.05, left=0.03, height=0.9, width=0.9, brightness=0.0, contrast=1.0, saturation=1.0,
                      hue=0.0)
    out = apply_params(img, p, 36)[0, ..., 0]  # the crop is 36 px: no resampling
    new = crop_keypoints(uv, p, 40, 40)[0]
    r, c = np.unravel_index(out.argmax(), out.shape)
    assert (c + 0.5) / 36 * 2 - 1 == pytest.approx(new[0], abs=1e-5)
    assert (r + 0.5) / 36 * 2 - 1 == pytest.approx(new[1], abs=1e-5)


def test_conv_tower_tokens_readout_and_errors() -> None:
    m = _expert(vision_tower="conv", image_size=32, keypoints=2)  # 32 px / stride 8 -> 4x4 map, pooled 2x2
    assert m.cfg.feature_grid == 4 and m.cfg.num_patches == 4 and m.cfg.num_visual_tokens == 2 * 4 + 2
    g = torch.Generator().manual_seed(0)
    lat, img = torch.randn(2, 3, 16, generator=g), torch.randn(2, 2, 3, 32, 32, generator=g)
    assert m.encode_vision(lat, img).shape == (2, 8, 64)
    terms = m.loss_terms(lat, img, None, torch.randn(2, 8, 7, generator=g), keypoints=torch.zeros(2, 2, 2))
    (terms["fm"] + terms["keypoint"]).backward()
    assert m.vision.convs[0].weight.grad.abs().sum() > 0 and m.vision.film_gamma[-1].weight.grad.abs().sum() > 0
    m.eval()
    noise = torch.randn(2, 8, 7, generator=g)
    assert torch.allclose(m.sample(lat, img, noise=noise), m.sample(lat, img, noise=noise, use_cache=False), atol=1e-5)
    assert m.unused_parameter_names() == []
    with pytest.raises(ValueError, match="vision_tower"):
        m.load_vision_weights("/nonexistent")
    with pytest.raises(ValueError, match="last channel count"):
        ActionExpertConfig.preset("tiny", 16, vision_tower="conv", vision_hidden_size=48)
    with pytest.raises(ValueError, match="multiple of the conv"):
        ActionExpertConfig.preset("tiny", 16, vision_tower="conv", image_size=36)


def test_teacher_forcing_feeds_labels_to_the_keypoint_tokens_only_in_training() -> None:
    """With p = 1 the flow-matching loss reads the labelled coordinates (changing them changes it); in eval mode, or
    with p = 0, labels only enter the keypoint L1 term."""
    g = torch.Generator().manual_seed(0)
    lat, img = torch.randn(2, 4, 16, generator=g), torch.randn(2, 2, 3, 32, 32, generator=g)
    act = torch.randn(2, 8, 7, generator=g)
    kp_a, kp_b = torch.full((2, 3, 2), -0.5), torch.full((2, 3, 2), 0.5)

    def fm(m: ActionExpert, kp: torch.Tensor) -> float:
        return float(m.loss_terms(lat, img, None, act, generator=torch.Generator().manual_seed(3), keypoints=kp)["fm"])

    forced = _expert(keypoints=3, noise_repeats=2, keypoint_teacher_forcing=1.0, keypoint_action_bias=True)
    assert fm(forced, kp_a) != pytest.approx(fm(forced, kp_b), abs=1e-7)
    kp_nan = kp_a.clone()
    kp_nan[:] = float("nan")  # unplaceable labels fall back to the predictions
    plain = _expert(keypoints=3, noise_repeats=2, keypoint_action_bias=True)
    assert fm(forced, kp_nan) == pytest.approx(fm(plain, kp_nan), abs=1e-6)
    assert fm(plain, kp_a) == pytest.approx(fm(plain, kp_b), abs=1e-7)
    forced.eval()
    assert fm(forced, kp_a) == pytest.approx(fm(forced, kp_b), abs=1e-7)


def test_keypoint_action_bias_cached_sampling_matches_full_recompute() -> None:
    m = _expert(keypoints=3, keypoint_action_bias=True, use_state=True, state_dim=5)
    g = torch.Generator().manual_seed(0)
    lat, img, st = torch.randn(2, 4, 16, generator=g), torch.randn(2, 2, 3, 32, 32, generator=g), torch.randn(2, 5)
    terms = m.loss_terms(lat, img, st, torch.randn(2, 8, 7, generator=g), keypoints=torch.zeros(2, 3, 2))
    (terms["fm"] + terms["keypoint"]).backward()
    assert m.keypoint_bias[0].weight.grad.abs().sum() > 0
    m.eval()
    prefix = m.encode_prefix(lat, img, st)
    assert prefix.action_bias.shape == (2, 64)
    noise = torch.randn(2, 8, 7, generator=g)
    fast = m.sample(lat, img, st, noise=noise, prefix=prefix)
    assert torch.allclose(fast, m.sample(lat, img, st, noise=noise, use_cache=False), atol=1e-5)
    assert not any(n.startswith("keypoint_bias") for n in m.unused_parameter_names())
    with pytest.raises(ValueError, match="keypoint_action_bias needs a keypoint readout"):
        ActionExpertConfig.preset("tiny", 16, keypoint_action_bias=True)
    with pytest.raises(ValueError, match="keypoint_teacher_forcing must be in"):
        ActionExpertConfig.preset("tiny", 16, keypoints=2, keypoint_teacher_forcing=1.5)


def test_heatmap_cross_entropy_peaks_at_the_label_and_skips_unlabelled_points() -> None:
    """Free logits trained on the loss put their peak on the patch holding the label; NaN labels add nothing."""
    labels = torch.tensor([[[0.3, -0.6], [float("nan"), 0.0]]])  # second keypoint unlabelled
    logits = torch.zeros(1, 2, 16, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=5.0)
    for _ in range(50):
        loss = heatmap_cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    centres = patch_grid_centres(4)
    nearest = int((centres - labels[0, 0]).pow(2).sum(-1).argmin())
    assert int(logits[0, 0].argmax()) == nearest
    assert torch.equal(logits[0, 1], torch.zeros(16))  # the unlabelled map got no gradient
    flat = heatmap_cross_entropy(torch.zeros(1, 2, 16), labels)
    assert float(heatmap_cross_entropy(logits.detach(), labels)) < float(flat)
    none = heatmap_cross_entropy(logits, torch.full((1, 2, 2), float("nan")))
    assert float(none) == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="square patch grid"):
        heatmap_cross_entropy(torch.zeros(1, 2, 15), labels)
    with pytest.raises(ValueError, match="must have shape"):
        heatmap_cross_entropy(torch.zeros(1, 2, 16), labels[:, :1])


def test_expert_heatmap_term_only_with_its_weight() -> None:
    g = torch.Generator().manual_seed(0)
    lat, img = torch.randn(2, 4, 16, generator=g), torch.randn(2, 2, 3, 32, 32, generator=g)
    act, kp = torch.randn(2, 8, 7, generator=g), torch.rand(2, 3, 2, generator=g) * 2 - 1
    assert "keypoint_heatmap" not in _expert(keypoints=3).loss_terms(lat, img, None, act, keypoints=kp)
    for repeats in (1, 2):  # the full-recompute and the shared-prefix training paths
        m = _expert(keypoints=3, noise_repeats=repeats, keypoint_heatmap_weight=0.5)
        terms = m.loss_terms(lat, img, None, act, keypoints=kp)
        assert float(terms["keypoint_heatmap"]) > 0
        terms["keypoint_heatmap"].backward()
        assert m.keypoint_readout.key.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="keypoint_heatmap_weight"):
        ActionExpertConfig.preset("tiny", 16, keypoints=2, keypoint_heatmap_weight=-1.0)


def test_object_queries_train_on_dense_labels_in_training_mode_only() -> None:
    g = torch.Generator().manual_seed(0)
    lat, img = torch.randn(2, 4, 16, generator=g), torch.randn(2, 2, 3, 32, 32, generator=g)
    act, kp = torch.randn(2, 8, 7, generator=g), torch.rand(2, 3, 2, generator=g) * 2 - 1
    objects = torch.rand(2, 5, 2, generator=g) * 2 - 1
    objects[0, 1:] = float("nan")  # absent objects
    for repeats in (1, 2):
        m = _expert(keypoints=3, noise_repeats=repeats, object_keypoints=5)
        terms = m.loss_terms(lat, img, None, act, keypoints=kp, object_keypoints=objects)
        assert float(terms["object_keypoint"]) > 0
        terms["object_keypoint"].backward()
        ro = m.keypoint_readout
        assert ro.object_queries.grad.abs().sum() > 0 and ro.key.weight.grad.abs().sum() > 0
        assert ro(torch.randn(2, 16, 64), torch.randn(2, 16), with_objects=True).object_logits.shape == (2, 5, 16)
    with pytest.raises(ValueError, match="object_keypoints labels must have shape"):
        m.loss_terms(lat, img, None, act, keypoints=kp, object_keypoints=objects[:, :4])
    m.eval()  # inference never runs the object queries
    assert "object_keypoint" not in m.loss_terms(lat, img, None, act, keypoints=kp, object_keypoints=objects)
    assert m.encode_prefix(lat, img).object_logits is None
    with pytest.raises(ValueError, match="no object queries"):
        KeypointReadout(1, 4, 2, 8)(torch.zeros(1, 4, 4), torch.zeros(1, 2), with_objects=True)
    with pytest.raises(ValueError, match="object_keypoints needs a keypoint readout"):
        ActionExpertConfig.preset("tiny", 16, object_keypoints=3)
    with pytest.raises(ValueError, match="object_keypoints must be an int"):
        ActionExpertConfig.preset("tiny", 16, keypoints=2, object_keypoints=True)
