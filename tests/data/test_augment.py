"""Augmentation: shapes, shared parameters across views, colour ops, test-time crop."""

import numpy as np
import pytest
import torch

from instructvla.data.augment import (
    AugmentConfig,
    AugmentParams,
    apply_params,
    augment,
    center_crop_resize,
    hsv_to_rgb,
    rgb_to_hsv,
    sample_params,
)


def _img(h=64, w=64):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 100)], -1).astype(np.uint8)


def test_shapes_and_shared_params():
    img = _img()
    views = np.stack([img, img])
    out = augment(views, np.random.default_rng(0), AugmentConfig(size=48))
    assert out.shape == (2, 48, 48, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], out[1])  # same params for every view of a frame
    a = augment(views, np.random.default_rng(0), AugmentConfig(size=48))
    np.testing.assert_array_equal(a, out)  # seeded
    b = augment(views, np.random.default_rng(1), AugmentConfig(size=48))
    assert not np.array_equal(a, b)


def test_identity_params_is_crop_resize():
    img = _img()
    p = AugmentParams(top=0, left=0, height=1, width=1, brightness=0, contrast=1, saturation=1, hue=0)
    out = apply_params(img[None], p, 64)
    assert np.abs(out[0].astype(int) - img).max() <= 1
    p.brightness = 0.2
    assert apply_params(img[None], p, 64).mean() > img.mean() + 40


def test_crop_area_and_ranges():
    cfg = AugmentConfig()
    for s in range(20):
        p = sample_params(np.random.default_rng(s), cfg)
        assert p.height * p.width == pytest.approx(0.9) and p.height == pytest.approx(p.width)
        assert 0 <= p.top <= 1 - p.height and -0.2 <= p.brightness <= 0.2 and 0.8 <= p.contrast <= 1.2
        assert -0.05 <= p.hue <= 0.05
    with pytest.raises(ValueError, match="crop_area"):
        AugmentConfig(crop_area=0)


def test_hsv_round_trip():
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


def test_center_crop():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:3] = 255  # a border stripe that the sqrt(0.9) centre crop removes
    out = center_crop_resize(img, size=32)
    assert out.shape == (32, 32, 3) and out.max() == 0
    assert center_crop_resize(np.stack([img, img]), size=16).shape == (2, 16, 16, 3)
