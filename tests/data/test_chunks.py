"""Action chunks: window, padding with zero motion and held gripper, is_pad flags."""

import numpy as np
import pytest

from instructvla.data.chunks import action_chunk, padding_value
from instructvla.data.normalize import compute_norm_stats, normalize, unnormalize


def test_chunk_inside_episode():
    a = np.arange(40 * 7, dtype=np.float32).reshape(40, 7)
    c, pad = action_chunk(a, 3, 16, np.zeros(7))
    np.testing.assert_array_equal(c, a[3:19])
    assert not pad.any() and c.shape == (16, 7)


def test_padding_rule():
    rng = np.random.default_rng(0)
    raw = rng.normal(0.02, 0.05, (30, 7))
    raw[:, 6] = np.r_[np.ones(20), np.zeros(10)]
    stats = compute_norm_stats(raw)
    norm = normalize(raw, stats, "action")
    c, pad = action_chunk(norm, 25, 16, padding_value(stats))
    np.testing.assert_array_equal(c[:5], norm[25:30])
    assert pad.tolist() == [False] * 5 + [True] * 11
    # padded relative dims unnormalise to zero motion, not to literal 0 in normalised space
    back = unnormalize(c[5:], stats, "action")
    np.testing.assert_allclose(back[:, :6], 0, atol=1e-6)
    assert not np.allclose(c[5:, :6], 0)
    np.testing.assert_array_equal(c[5:, 6], norm[-1, 6])  # gripper repeats the last value
    # last frame: one real action and 15 pads
    c, pad = action_chunk(norm, 29, 16, padding_value(stats))
    assert pad.sum() == 15


def test_bad_input():
    with pytest.raises(IndexError):
        action_chunk(np.zeros((5, 7)), 5, 16, np.zeros(7))
    with pytest.raises(ValueError, match="pad_value"):
        action_chunk(np.zeros((5, 7)), 0, 16, np.zeros(6))
