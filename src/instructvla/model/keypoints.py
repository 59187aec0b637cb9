"""Language-conditioned keypoint readout of the action expert's primary-view features (an optional training aid).

For each of K keypoints (e.g. the instructed object, its destination, the gripper) a query vector computed from the
mean VLM latent scores every patch of the primary view; a softmax over the patch grid gives a heat map whose expected
patch centre is the keypoint's (u, v) in [-1, 1] (u right, v down, over the image the expert sees). Each keypoint
becomes one prefix token (its coordinates as Fourier features + the heat-map-pooled patch feature), so the action
tokens read "where is the thing the instruction names" as numbers instead of having to find it by attention.

With labels (a dataset's `observation.keypoints`, projected from the simulator) an L1 loss on the coordinates teaches
the vision tower, the FiLM layers and the VLM latents to localise what the instruction names, which the flow-matching
loss alone teaches too slowly for short CPU schedules. A cross-entropy of the heat map against a Gaussian bump at the
label (`heatmap_cross_entropy`) adds a direct "raise this patch" signal: the L1 of the expected position alone lets a
diffuse map settle on the average object position. Without labels the readout still trains end to end.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["KeypointOutput", "KeypointReadout", "heatmap_cross_entropy", "patch_grid_centres"]


def patch_grid_centres(grid: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(grid*grid, 2) patch-centre (u, v) in [-1, 1], row-major (the order ViT patch tokens come in)."""
    c = (torch.arange(grid, device=device, dtype=dtype) + 0.5) * (2.0 / grid) - 1.0
    v, u = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


class KeypointOutput(NamedTuple):
    """What `KeypointReadout.forward` returns."""

    uv: torch.Tensor  # (B, K, 2) predicted coordinates (the heat maps' expected patch centres)
    tokens: torch.Tensor  # (B, K, hidden) one prefix token per keypoint
    used: torch.Tensor  # (B, K, 2) the coordinates the tokens encode (uv, or the override where it is finite)
    logits: torch.Tensor  # (B, K, P) heat-map scores over the patch grid (before the softmax)
    object_logits: torch.Tensor | None  # (B, M, P) the object queries' scores over the same keys (with_objects)


def heatmap_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """Mean cross-entropy of heat maps (B, K, P) over a square patch grid against Gaussian bumps at the labelled
    (u, v) (B, K, 2); sigma is in patch widths. Labels with a non-finite entry are left out (0 when none is left)."""
    b, k, p = logits.shape
    grid = math.isqrt(p)
    if grid * grid != p:
        raise ValueError(f"heatmap_cross_entropy needs a square patch grid, got {p} patches")
    if tuple(labels.shape) != (b, k, 2):
        raise ValueError(f"heat-map labels must have shape {(b, k, 2)}, got {tuple(labels.shape)}")
    valid = torch.isfinite(labels).all(dim=-1)  # (B, K)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    centres = patch_grid_centres(grid, logits.device, torch.float32)
    dist2 = (torch.nan_to_num(labels.float())[:, :, None, :] - centres).pow(2).sum(-1)  # (B, K, P)
    width = sigma * 2.0 / grid
    target = torch.softmax(-dist2 / (2.0 * width * width), dim=-1)
    ce = -(target * torch.log_softmax(logits.float(), dim=-1)).sum(-1)  # (B, K)
    return ce[valid].mean()


class KeypointReadout(nn.Module):
    """Spatial-softmax keypoints of a patch grid, queried by a conditioning vector.

    num_keypoints: K; feature_dim: patch feature width; cond_dim: conditioning width (the VLM latent);
    hidden_size: width of the output tokens; key_dim: width of the query/key space; fourier: frequencies per
    coordinate in the token's position encoding; num_objects: M learned, unconditioned queries, one per known object
    (`forward(..., with_objects=True)`), trained on dense object labels so the keys tell every object apart.
    """

    def __init__(self, num_keypoints: int, feature_dim: int, cond_dim: int, hidden_size: int, key_dim: int = 32,
                 fourier: int = 4, num_objects: int = 0) -> None:
        super().__init__()
        if num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
        self.num_keypoints, self.key_dim, self.fourier = num_keypoints, key_dim, fourier
        self.key = nn.Linear(feature_dim, key_dim)
        self.query = nn.Sequential(nn.Linear(cond_dim, key_dim * num_keypoints), nn.SiLU(),
                                   nn.Linear(key_dim * num_keypoints, key_dim * num_keypoints))
        self.token = nn.Sequential(nn.Linear(self.encoding_dim + feature_dim, hidden_size), nn.SiLU(),
                                   nn.Linear(hidden_size, hidden_size))
        self.kind = nn.Parameter(torch.zeros(num_keypoints, hidden_size))  # which keypoint a token is
        nn.init.normal_(self.kind, std=0.02)
        self.object_queries = nn.Parameter(torch.randn(num_objects, key_dim) * key_dim**-0.5) if num_objects else None

    @property
    def encoding_dim(self) -> int:
        """Width of one keypoint's coordinate encoding (`encode`)."""
        return 2 + 4 * self.fourier

    def forward(self, features: torch.Tensor, cond: torch.Tensor, override: torch.Tensor | None = None,
                with_objects: bool = False) -> KeypointOutput:
        """features (B, P, F) of a square patch grid, cond (B, C) -> `KeypointOutput`. `override` (B, K, 2): its
        finite entries replace the predicted coordinates in the tokens (teacher forcing); the predicted uv is
        returned unchanged for the readout's own loss. with_objects: also score the object queries (training on
        dense labels), over the same keys."""
        b, p, _ = features.shape
        grid = math.isqrt(p)
        if grid * grid != p:
            raise ValueError(f"keypoint readout needs a square patch grid, got {p} patches")
        if with_objects and self.object_queries is None:
            raise ValueError("this keypoint readout has no object queries (build it with num_objects=M > 0)")
        keys = self.key(features)  # (B, P, Dk)
        queries = self.query(cond).view(b, self.num_keypoints, self.key_dim)
        logits = torch.einsum("bkd,bpd->bkp", queries, keys) / math.sqrt(self.key_dim)
        object_logits = None
        if with_objects:
            object_logits = torch.einsum("md,bpd->bmp", self.object_queries.to(keys.dtype), keys) / math.sqrt(
                self.key_dim)
        attn = logits.float().softmax(dim=-1).to(features.dtype)  # (B, K, P)
        centres = patch_grid_centres(grid, features.device, features.dtype)
        uv = attn @ centres  # (B, K, 2)
        pooled = attn @ features  # (B, K, F)
        used = uv
        if override is not None:
            if tuple(override.shape) != tuple(uv.shape):
                raise ValueError(f"keypoint override must have shape {tuple(uv.shape)}, got {tuple(override.shape)}")
            used = torch.where(torch.isfinite(override), override.to(uv.dtype), uv)
        tokens = self.token(torch.cat([self.encode(used), pooled], dim=-1)) + self.kind
        return KeypointOutput(uv, tokens, used, logits, object_logits)

    def encode(self, uv: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates -> (..., encoding_dim) Fourier features."""
        freqs = (2.0 ** torch.arange(self.fourier, device=uv.device, dtype=uv.dtype)) * math.pi
        args = uv[..., None] * freqs  # (B, K, 2, f)
        return torch.cat([uv, torch.sin(args).flatten(-2), torch.cos(args).flatten(-2)], dim=-1)
