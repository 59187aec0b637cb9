"""Llama-style decoder stack of the action expert: RMSNorm, RoPE, SwiGLU MLP, SDPA attention, prefix KV cache.

Parameter names follow transformers' LlamaDecoderLayer so weights can be mapped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from instructvla.model.action_expert import ActionExpertConfig

__all__ = ["Attention", "DecoderLayer", "ExpertTransformer", "RMSNorm", "apply_rope", "rope_cos_sin"]


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
