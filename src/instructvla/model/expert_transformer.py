"""Llama-style decoder stack of the action expert: RMSNorm, RoPE, SwiGLU MLP, SDPA attention, prefix KV cache.

`cached_step` is the inference fast path for the Euler steps: the same arithmetic over the action tokens only, with
everything that does not depend on them (RoPE tables, K/V buffers, fused transposed weights) prepared once.

Parameter names follow transformers' LlamaDecoderLayer so weights can be mapped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from instructvla.model.action_expert import ActionExpertConfig

__all__ = [
    "Attention",
    "CachedStepPlan",
    "DecoderLayer",
    "ExpertTransformer",
    "RMSNorm",
    "apply_rope",
    "rope_cos_sin",
]


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, scaled by a learned weight (as in Llama)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """RoPE (cos, sin) tables (L, head_dim) for integer positions (L,), in `dtype`."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
    freqs = positions.float()[:, None] * inv_freq[None]
    emb = torch.cat([freqs, freqs], dim=-1)  # (L, head_dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., L, head_dim) queries or keys by the RoPE tables (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


@dataclass
class StepWeights:
    """Inference copies of the decoder weights for `ExpertTransformer.cached_step`.

    layers: per layer (input-norm weight, [q; k; v], o, post-attention-norm weight, [gate; up], down); projections
        transposed to (in, out) and contiguous, q/k/v and gate/up fused (x @ w gives the same bits as F.linear on
        CPU and skips its transpose). norm: the final norm weight. key: identity and version of every parameter
        they were built from (rebuilt when any parameter is replaced or changed in place).
    """

    key: tuple[tuple[int, int], ...]
    layers: list[tuple[torch.Tensor, ...]]
    norm: torch.Tensor


@dataclass
class CachedStepPlan:
    """What a cached inference step reuses that does not depend on the new tokens, built once per prefix.

    cos / sin_signed: (n_new, 1, head_dim) RoPE tables of the new tokens' positions; sin_signed has its first half
        negated so rotate-half becomes roll(x, head_dim / 2) * sin_signed (bit-identical to `apply_rope`).
    keys / values: per layer (B, heads, P + n_new, head_dim) buffers holding the prefix K/V in [:P]; each step
        writes its own K/V into the tail (no concatenation per step).
    """

    start: int
    n_new: int
    dtype: torch.dtype
    cos: torch.Tensor
    sin_signed: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    weights: StepWeights


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Functional `RMSNorm.forward` (the same ops, so the same bits)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE on SDPA; returns (output, new keys, new values) for the KV cache."""

    def __init__(self, cfg: ActionExpertConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.head_dim = d // cfg.num_heads
        self.dropout = cfg.attention_dropout
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        q, k, v = (
            p(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_all, v_all = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        if mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)  # e.g. under bf16 autocast
        out = F.scaled_dot_product_attention(
            q, k_all, v_all, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1)), k, v


class DecoderLayer(nn.Module):
    """Pre-norm Llama block: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, cfg: ActionExpertConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = nn.ModuleDict(
            {
                "gate_proj": nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False),
                "up_proj": nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False),
                "down_proj": nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False),
            }
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn, k, v = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + attn
        h = self.post_attention_layernorm(x)
        x = x + self.mlp["down_proj"](F.silu(self.mlp["gate_proj"](h)) * self.mlp["up_proj"](h))
        return x, k, v


class ExpertTransformer(nn.Module):
    """Decoder stack over inputs_embeds; RoPE positions start at `start` (the prefix length for cached steps)."""

    def __init__(self, cfg: ActionExpertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.num_layers)])
        self.gradient_checkpointing = False
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # Inference copies for cached_step (a plain attribute: not in the state dict).
        self._step_weights: StepWeights | None = None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        start: int = 0,
        past: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        positions = torch.arange(start, start + x.shape[1], device=x.device)
        head_dim = self.cfg.hidden_size // self.cfg.num_heads
        cos, sin = rope_cos_sin(positions, head_dim, self.cfg.rope_theta, x.dtype)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            layer_past = None if past is None else (past[0][i], past[1][i])
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, k, v = checkpoint(layer, x, cos, sin, mask, layer_past, use_reentrant=False)
            else:
                x, k, v = layer(x, cos, sin, mask, layer_past)
            keys.append(k)
            values.append(v)
        return self.norm(x), keys, values

    @torch.no_grad()
    def step_weights(self) -> StepWeights:
        """Fused, transposed weight copies for `cached_step`, cached on the module until a parameter changes."""
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        cached = self._step_weights
        if cached is not None and cached.key == key:
            return cached

        def t(*weights: torch.Tensor) -> torch.Tensor:
            return torch.cat(weights).t().contiguous()

        layers = []
        for la in self.layers:
            attn, mlp = la.self_attn, la.mlp
            layers.append(
                (
                    la.input_layernorm.weight.detach(),
                    t(attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight),
                    t(attn.o_proj.weight),
                    la.post_attention_layernorm.weight.detach(),
                    t(mlp["gate_proj"].weight, mlp["up_proj"].weight),
                    t(mlp["down_proj"].weight),
                )
            )
        self._step_weights = StepWeights(key, layers, self.norm.weight.detach())
        return self._step_weights

    @torch.no_grad()
    def plan_cached_step(
        self, keys: list[torch.Tensor], values: list[torch.Tensor], n_new: int, dtype: torch.dtype
    ) -> CachedStepPlan:
        """Precompute RoPE tables and K/V buffers for running `n_new` tokens (in `dtype`) against a prefix KV cache
        (`keys` / `values` from `forward` over the prefix)."""
        start = keys[0].shape[2]
        head_dim = self.cfg.hidden_size // self.cfg.num_heads
        positions = torch.arange(start, start + n_new, device=keys[0].device)
        cos, sin = rope_cos_sin(positions, head_dim, self.cfg.rope_theta, dtype)
        half = head_dim // 2
        sin_signed = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)

        def buffer(past: torch.Tensor) -> torch.Tensor:
            b, h, p, hd = past.shape
            buf = past.new_empty(b, h, p + n_new, hd)
            buf[:, :, :p] = past
            return buf

        return CachedStepPlan(
            start=start,
            n_new=n_new,
            dtype=dtype,
            cos=cos[:, None],
            sin_signed=sin_signed[:, None],
            keys=[buffer(k) for k in keys],
            values=[buffer(v) for v in values],
            weights=self.step_weights(),
        )

    def cached_step(self, x: torch.Tensor, plan: CachedStepPlan) -> torch.Tensor:
        """Inference-only fast path: new tokens (B, n_new, d) against the planned prefix -> final-norm hidden states.

        Same arithmetic as `forward(x, start=plan.start, past=prefix KV)` (bit-identical on CPU), without per-step
        RoPE tables, K/V concatenation, module-call overhead or separate q/k/v and gate/up matmuls. No autograd, no
        dropout: use `forward` for training.
        """
        b, n, d = x.shape
        nh = self.cfg.num_heads
        hd = d // nh
        p = plan.start
        eps = self.cfg.rms_norm_eps
        cos, sin = plan.cos, plan.sin_signed
        h = x.reshape(b * n, d)
        for (ln1, w_qkv, w_o, ln2, w_gu, w_down), k_buf, v_buf in zip(
            plan.weights.layers, plan.keys, plan.values, strict=True
        ):
            qkv = (_rms_norm(h, ln1, eps) @ w_qkv).view(b, n, 3 * nh, hd)
            qk = qkv[:, :, : 2 * nh]
            qk = qk * cos + torch.roll(qk, hd // 2, -1) * sin
            k_buf[:, :, p:] = qk[:, :, nh:].transpose(1, 2)
            v_buf[:, :, p:] = qkv[:, :, 2 * nh :].transpose(1, 2)
            out = F.scaled_dot_product_attention(qk[:, :, :nh].transpose(1, 2), k_buf, v_buf)
            h = h + out.transpose(1, 2).reshape(b * n, d) @ w_o
            gate, up = (_rms_norm(h, ln2, eps) @ w_gu).chunk(2, dim=-1)
            h = h + (F.silu(gate) * up) @ w_down
        return _rms_norm(h, plan.weights.norm, eps).view(b, n, d)
