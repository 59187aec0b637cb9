"""Tests for the flow-matching math: time sampling, interpolation, target, Euler sampler, time embedding, masks."""

import math

import pytest
import torch

from instructvla.model.flow import (
    block_allowed,
    block_attention_mask,
    euler_integrate,
    interpolate,
    sample_time,
    sinusoidal_time_embedding,
    target_velocity,
)


def test_interpolation_endpoints() -> None:
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(4, 16, 7, generator=g), torch.randn(4, 16, 7, generator=g)
    zeros, ones = torch.zeros(4), torch.ones(4)
    assert torch.equal(interpolate(x0, x1, zeros, 0.001), x0)
    torch.testing.assert_close(interpolate(x0, x1, ones, 0.001), 0.001 * x0 + x1)
    torch.testing.assert_close(interpolate(x0, x1, ones, 0.0), x1)
    # per-sample times broadcast over (H, A)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt = interpolate(x0, x1, t, 0.0)
    for i in range(4):
        torch.testing.assert_close(xt[i], (1 - t[i]) * x0[i] + t[i] * x1[i])


def test_target_is_time_derivative_of_path() -> None:
    g = torch.Generator().manual_seed(1)
    x0, x1 = (
        torch.randn(3, 5, 7, generator=g, dtype=torch.float64),
        torch.randn(3, 5, 7, generator=g, dtype=torch.float64),
    )
    t, eps = torch.full((3,), 0.3, dtype=torch.float64), 1e-6
    fd = (interpolate(x0, x1, t + eps, 0.001) - interpolate(x0, x1, t - eps, 0.001)) / (2 * eps)
    torch.testing.assert_close(fd, target_velocity(x0, x1, 0.001))
    torch.testing.assert_close(target_velocity(x0, x1, 0.001), x1 - 0.999 * x0)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        interpolate(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="same shape"):
        target_velocity(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="t must have shape"):
        interpolate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


def test_euler_exact_on_constant_field() -> None:
    x0 = torch.randn(2, 16, 7, generator=torch.Generator().manual_seed(2))
    c = torch.randn(2, 16, 7, generator=torch.Generator().manual_seed(3))
    for steps in (1, 4, 10):
        out = euler_integrate(lambda x, t: c.expand_as(x), x0, steps)
        torch.testing.assert_close(out, x0 + c)


def test_euler_time_grid_starts_at_zero() -> None:
    seen: list[float] = []

    def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],)
        seen.append(float(t[0]))
        return t.view(-1, 1).expand_as(x)

    n = 10
    out = euler_integrate(field, torch.zeros(3, 2), n)
    assert seen == pytest.approx([i / n for i in range(n)])
    # sum_i dt * (i / n) = (n - 1) / (2 n)
    torch.testing.assert_close(out, torch.full((3, 2), (n - 1) / (2 * n)))
    with pytest.raises(ValueError, match="num_steps"):
        euler_integrate(field, torch.zeros(3, 2), 0)
    with pytest.raises(ValueError, match="velocity_fn returned shape"):
        euler_integrate(lambda x, t: x[:, :1], torch.zeros(3, 2), 2)


def test_sample_time_range_distribution_and_determinism() -> None:
    t = sample_time(50_000, torch.Generator().manual_seed(0))
    assert t.shape == (50_000,)
    assert float(t.min()) >= 0.0 and float(t.max()) <= 0.999
    # z ~ Beta(1.5, 1): E[z] = 0.6, P(z <= 0.5) = 0.5**1.5  ->  t = 0.999 (1 - z)
    assert float(t.mean()) == pytest.approx(0.999 * 0.4, abs=0.01)
    assert float((t >= 0.999 * 0.5).float().mean()) == pytest.approx(0.5**1.5, abs=0.01)
    a = sample_time(8, torch.Generator().manual_seed(5))
    b = sample_time(8, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_time(8, torch.Generator().manual_seed(6)))
    with pytest.raises(ValueError, match="batch"):
        sample_time(0)


def test_sinusoidal_time_embedding() -> None:
    t = torch.tensor([0.0, 0.5, 1.0])
    emb = sinusoidal_time_embedding(t, 16, max_period=100.0)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    # first frequency is 1 (raw t), last is 100 ** (-(half - 1) / half)
    torch.testing.assert_close(emb[:, 0], torch.cos(t))
    torch.testing.assert_close(emb[:, 15], torch.sin(t * 100.0 ** (-7 / 8)))
    assert not torch.allclose(emb[1], emb[2])
    assert sinusoidal_time_embedding(t, 7).shape == (3, 7)
    with pytest.raises(ValueError, match="1-D"):
        sinusoidal_time_embedding(torch.zeros(2, 1), 8)


def test_block_mask_structure() -> None:
    nv, nl, ns, na = 4, 3, 1, 2
    allowed = block_allowed(nv, nl, ns, na)
    p = nv + nl + ns
    assert allowed.shape == (p + na, p + na)
    assert allowed[:nv, :nv].all() and not allowed[:nv, nv:].any()  # visual sees visual only
    assert allowed[nv:p, :p].all() and not allowed[nv:p, p:].any()  # latent + state see the prefix only
    assert allowed[p:].all()  # action tokens see everything
    hard = block_attention_mask(nv, nl, ns, na, "hard")
    assert torch.equal(hard == 0, allowed)
    assert torch.isneginf(hard[~allowed]).all()
    assert torch.isneginf(hard[:p, p:]).all()  # prefix rows never see action columns
    soft = block_attention_mask(nv, nl, ns, na, "soft_bias")
    assert torch.equal(soft, allowed.float())
    assert block_attention_mask(nv, nl, 0, 0).shape == (nv + nl, nv + nl)
    with pytest.raises(ValueError, match="attention kind"):
        block_attention_mask(1, 1, 0, 1, "causal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_latent"):
        block_allowed(1, -1, 0, 1)


def test_hard_mask_softmax_has_no_nan_rows() -> None:
    mask = block_attention_mask(5, 2, 1, 3, "hard")
    probs = torch.softmax(torch.randn(11, 11) + mask, dim=-1)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(11))
    assert math.isclose(float(probs[:5, 5:].sum()), 0.0)
