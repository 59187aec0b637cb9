"""Flow-matching math for the action expert: time sampling, interpolation, target, Euler sampler, masks.

Conventions (method.md §2.4, §9.5): t in [0, 1] with t = 0 pure noise and t = 1 data; sigma_min in both the
interpolation and the target; training times t = 0.999 * (1 - z), z ~ Beta(1.5, 1), which favours small t (noisier
inputs; `alpha` = 1 draws t uniformly); sampling integrates the learned velocity from t = 0 to t = 1 with fixed Euler steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

AttentionKind = Literal["hard", "soft_bias"]
ATTENTION_KINDS: tuple[str, ...] = ("hard", "soft_bias")

# Beta(a, 1) has CDF z**a, so z = u**(1/a) with u ~ U(0, 1): exact, and reproducible through a torch.Generator.
_BETA_ALPHA = 1.5
_TIME_SCALE = 0.999


def sample_time(
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    alpha: float = _BETA_ALPHA,
) -> torch.Tensor:
    """Training times t = 0.999 * (1 - z), z ~ Beta(alpha, 1) (1.5 = the method, 1 = uniform); (batch,) in [0, 0.999]."""
    if batch < 1:
        raise ValueError(f"sample_time: batch must be >= 1, got {batch}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"sample_time: alpha must be a finite number > 0, got {alpha}")
    u = torch.rand(batch, generator=generator, device=_draw_device(generator, device), dtype=dtype)
    z = u.pow(1.0 / alpha)
    return (_TIME_SCALE * (1.0 - z)).to(device)


def _draw_device(
    generator: torch.Generator | None, device: torch.device | str | None
) -> torch.device | str | None:
    """Draw on the generator's device (a CPU generator then gives the same numbers whatever the model's device)."""
    return generator.device if generator is not None else device


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, returned on `device`."""
    return torch.randn(shape, generator=generator, device=_draw_device(generator, device), dtype=dtype).to(
        device
    )


def _time_column(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sample times (B,) against a (B, ...) tensor."""
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must have shape ({like.shape[0]},), got {tuple(t.shape)}")
    return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def interpolate(
    x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, sigma_min: float = 0.001
) -> torch.Tensor:
    """Point on the probability path: x_t = (1 - (1 - sigma_min) t) x0 + t x1, x0 = noise, x1 = data."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    tc = _time_column(t, x0)
    return (1.0 - (1.0 - sigma_min) * tc) * x0 + tc * x1


def target_velocity(x0: torch.Tensor, x1: torch.Tensor, sigma_min: float = 0.001) -> torch.Tensor:
    """Regression target d x_t / d t = x1 - (1 - sigma_min) x0."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    return x1 - (1.0 - sigma_min) * x0


def euler_integrate(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    num_steps: int,
) -> torch.Tensor:
    """Integrate dx/dt = velocity_fn(x, t) from t = 0 to 1 with `num_steps` Euler steps of dt = 1 / num_steps.

    velocity_fn receives x (B, ...) and t (B,) and returns a tensor shaped like x.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    dt = 1.0 / num_steps
    x = x0
    for i in range(num_steps):
        t = torch.full((x.shape[0],), i / num_steps, device=x.device, dtype=x.dtype)
        v = velocity_fn(x, t)
        if v.shape != x.shape:
            raise ValueError(f"velocity_fn returned shape {tuple(v.shape)}, expected {tuple(x.shape)}")
        x = x + dt * v
    return x


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """Sinusoidal embedding of raw t (no x1000 scaling): (B,) -> (B, dim), [cos | sin] halves, odd dim zero-padded."""
    if t.ndim != 1:
        raise ValueError(f"t must be 1-D (B,), got shape {tuple(t.shape)}")
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.to(t.dtype) if t.is_floating_point() else emb


def block_allowed(n_visual: int, n_latent: int, n_state: int, n_action: int) -> torch.Tensor:
    """Boolean (L, L) matrix, True where query row may attend key column.

    Visual sees visual only; latent and state see visual + latent + state; action tokens see everything.
    """
    for name, n in (
        ("n_visual", n_visual),
        ("n_latent", n_latent),
        ("n_state", n_state),
        ("n_action", n_action),
    ):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    n_prefix = n_visual + n_latent + n_state
    total = n_prefix + n_action
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[:n_visual, :n_visual] = True
    allowed[n_visual:n_prefix, :n_prefix] = True
    allowed[n_prefix:, :] = True
    return allowed


def block_attention_mask(
    n_visual: int,
    n_latent: int,
    n_state: int,
    n_action: int,
    kind: AttentionKind = "hard",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Additive (L, L) attention mask for the sequence [visual | latent | state | action].

    kind="hard": 0 where allowed, -inf elsewhere (a real block-wise mask; prefix rows never see action columns).
    kind="soft_bias": +1 where allowed, 0 elsewhere, i.e. every token attends everywhere with a +1 logit bonus on
    allowed pairs (what the reference code's boolean mask does under transformers 4.46-4.51 eager attention).
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention kind must be one of {ATTENTION_KINDS}, got {kind!r}")
    allowed = block_allowed(n_visual, n_latent, n_state, n_action).to(device)
    if kind == "hard":
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return mask.masked_fill(~allowed, float("-inf"))
    return allowed.to(dtype)
