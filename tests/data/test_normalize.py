"""q01/q99 normalisation: formula, constant dims, gripper mask, round trip, missing keys."""

import numpy as np
import pytest

from instructvla.data.normalize import compute_norm_stats, normalize, unnormalize, validate_stats, zero_motion


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.05, (500, 7))
    a[:, 5] = 0.3  # constant dim
    a[:, 6] = rng.integers(0, 2, 500)  # gripper 0/1
    s = rng.normal(0, 1, (500, 8))
    return a, s


def test_formula_and_mask(data):
    a, s = data
    st = compute_norm_stats(a, s)
    assert st["action"]["mask"] == [True] * 6 + [False] and st["state"]["mask"] == [True] * 8
    n = normalize(a, st, "action")
    q01, q99 = np.quantile(a, [0.01, 0.99], axis=0)
    expect = np.clip(2 * (a[:, 0] - q01[0]) / (q99[0] - q01[0] + 1e-8) - 1, -1, 1)
    np.testing.assert_allclose(n[:, 0], expect, atol=1e-6)
    assert n.dtype == np.float32 and n[:, :6].min() >= -1 and n[:, :6].max() <= 1
    assert (n[:, 5] == 0).all()  # constant dim -> 0
    np.testing.assert_array_equal(n[:, 6], a[:, 6])  # gripper untouched


def test_round_trip(data):
    a, s = data
    st = compute_norm_stats(a, s)
    back = unnormalize(normalize(a, st, "action"), st, "action")
    q01, q99 = np.quantile(a, [0.01, 0.99], axis=0)
    inside = ((a >= q01) & (a <= q99))[:, :5]
    np.testing.assert_allclose(back[:, :5][inside], a[:, :5][inside], atol=1e-5)
    np.testing.assert_allclose(back[:, 5], 0.3, atol=1e-6)
    np.testing.assert_array_equal(back[:, 6], a[:, 6])
    # unnormalise clips and binarises the gripper
    out = unnormalize(np.array([[5, -5, 0, 0, 0, 0, 0.7], [0, 0, 0, 0, 0, 0, 0.49]]), st, "action")
    np.testing.assert_allclose(out[0, 0], q99[0], rtol=1e-5)
    np.testing.assert_allclose(out[0, 1], q01[1], rtol=1e-5)
    assert out[0, 6] == 1.0 and out[1, 6] == 0.0
    sb = unnormalize(normalize(s, st, "state"), st, "state")
    inside = (s >= np.quantile(s, 0.01, 0)) & (s <= np.quantile(s, 0.99, 0))
    np.testing.assert_allclose(sb[inside], s[inside], atol=1e-5)


def test_zero_motion(data):
    a, s = data
    st = compute_norm_stats(a, s)
    z = zero_motion(st)
    assert np.isnan(z[6])
    back = unnormalize(np.nan_to_num(z), st, "action", binarize=False)
    np.testing.assert_allclose(back[:5], 0, atol=1e-6)
    assert z[5] == 0  # constant dim


def test_missing_keys_raise(data):
    a, _ = data
    st = compute_norm_stats(a)
    with pytest.raises(KeyError, match="'state'"):
        normalize(np.zeros(8), st, "state")
    with pytest.raises(KeyError, match="lacks.*q99"):
        normalize(np.zeros(7), {"action": {"q01": [0] * 7, "mask": [True] * 7}}, "action")
    with pytest.raises(ValueError, match="7 dims, data has 6"):
        normalize(np.zeros(6), st, "action")
    with pytest.raises(KeyError):
        validate_stats(st, 7, state_dim=8)
    with pytest.raises(ValueError, match="NaN"):
        compute_norm_stats(np.full((3, 7), np.nan))
