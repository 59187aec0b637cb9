"""FiLM-conditioned vision towers of the action expert (DINOv2-with-registers, the method's, with weight loading; a
small CNN option for tiny CPU presets) and the image transform."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from instructvla.model.action_expert import ActionExpertConfig

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FiLMConvTower", "FiLMDinoV2", "film_block", "preprocess_images", "resample_pos_embed"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_images(
    images: torch.Tensor, cfg: ActionExpertConfig, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """uint8 (B, V, H, W, 3) -> float32 (B, V, 3, S, S): optional center crop, antialiased resize, normalisation.

    mean / std: (1, 3, 1, 1) per-channel statistics (ImageNet's for DINOv2); S, views, crop and resize mode from cfg.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (B, V, H, W, 3), got dtype {images.dtype}")
    if images.ndim != 5:
        raise ValueError(f"images must have 5 dims (B, V, H, W, 3), got shape {tuple(images.shape)}")
    b, v, h, w, c = images.shape
    if c != 3:
        raise ValueError(
            f"images must have 3 colour channels last, got {c} (shape {tuple(images.shape)})"
        )
    if v != cfg.num_views:
        raise ValueError(f"images has {v} views, config num_views={cfg.num_views}")
    x = images.reshape(b * v, h, w, 3).permute(0, 3, 1, 2).float().div_(255.0)
    if cfg.center_crop_ratio < 1.0:
        ch, cw = max(1, round(h * cfg.center_crop_ratio)), max(1, round(w * cfg.center_crop_ratio))
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[:, :, top : top + ch, left : left + cw]
    s = cfg.image_size
    if x.shape[-2:] != (s, s):
        x = F.interpolate(x, size=(s, s), mode=cfg.resize_mode, align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)
    x = (x - mean) / std
    return x.reshape(b, v, 3, s, s)


class FiLMDinoV2(nn.Module):
    """transformers' Dinov2WithRegistersModel run block by block, FiLM after each block's attention.

    Per block: x <- x + Attn(LN(x)); x <- x * (1 + gamma) + beta; x <- x + MLP(LN(x)), with gamma, beta linear in the
    conditioning vector (the mean latent query). Returns patch tokens only (CLS and registers stripped).
    """

    def __init__(self, cfg: ActionExpertConfig) -> None:
        super().__init__()
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        self.cfg = cfg
        dino_cfg = Dinov2WithRegistersConfig(
            hidden_size=cfg.vision_hidden_size,
            num_hidden_layers=cfg.vision_num_layers,
            num_attention_heads=cfg.vision_num_heads,
            mlp_ratio=cfg.vision_mlp_ratio,
            patch_size=cfg.vision_patch_size,
            image_size=cfg.image_size,
            num_register_tokens=cfg.vision_num_registers,
            layerscale_value=cfg.vision_layerscale_value,
            hidden_dropout_prob=cfg.vision_dropout,
            attention_probs_dropout_prob=cfg.vision_dropout,
            drop_path_rate=cfg.vision_drop_path_rate,
        )
        dino_cfg._attn_implementation = "sdpa"
        self.dino = Dinov2WithRegistersModel(dino_cfg)
        self.dino.embeddings.mask_token.requires_grad_(
            False
        )  # masked-image pretraining only; never used here
        n_used = cfg.vision_blocks_used
        self.use_final_norm = n_used == cfg.vision_num_layers
        # Blocks after the feature layer (and the final norm when unused) are dropped: they would be dead weights.
        self.dino.encoder.layer = self.dino.encoder.layer[:n_used]
        if not self.use_final_norm:
            self.dino.layernorm = nn.Identity()
        self.film_gamma = nn.ModuleList(
            [nn.Linear(cfg.latent_dim, cfg.vision_hidden_size) for _ in range(n_used)]
        )
        self.film_beta = nn.ModuleList(
            [nn.Linear(cfg.latent_dim, cfg.vision_hidden_size) for _ in range(n_used)]
        )
        self.num_prefix_tokens = 1 + cfg.vision_num_registers
        self.gradient_checkpointing = False

    def forward(self, pixels: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, S, S) normalised, cond (N, latent_dim) -> patch features (N, num_patches, vision_hidden)."""
        x = self.dino.embeddings(pixels)
        for block, g_lin, b_lin in zip(self.dino.encoder.layer, self.film_gamma, self.film_beta, strict=True):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(film_block, block, g_lin, b_lin, x, cond, use_reentrant=False)
            else:
                x = film_block(block, g_lin, b_lin, x, cond)
        x = self.dino.layernorm(x)
        return x[:, self.num_prefix_tokens :]

    def load_dinov2(self, path: str) -> int:
        """Load a saved Dinov2WithRegisters directory (save_pretrained / hub layout); returns the tensors loaded.

        Sizes (width, heads, patch, registers, enough blocks) must match; position embeddings are resampled
        (bicubic) when the checkpoint was saved at another image size. Blocks after the feature layer are skipped.
        Errors name `load_vision_weights`, the public entry point (ActionExpert.load_vision_weights).
        """
        from transformers import Dinov2WithRegistersModel

        src = Dinov2WithRegistersModel.from_pretrained(path)
        scfg, cfg = src.config, self.cfg
        checks = {
            "vision_hidden_size": (scfg.hidden_size, cfg.vision_hidden_size),
            "vision_num_heads": (scfg.num_attention_heads, cfg.vision_num_heads),
            "vision_patch_size": (scfg.patch_size, cfg.vision_patch_size),
            "vision_num_registers": (scfg.num_register_tokens, cfg.vision_num_registers),
            "vision_mlp_ratio": (scfg.mlp_ratio, cfg.vision_mlp_ratio),
        }
        for name, (theirs, ours) in checks.items():
            if theirs != ours:
                raise ValueError(
                    f"load_vision_weights({path!r}): checkpoint {name}={theirs}, config has {ours}"
                )
        if scfg.num_hidden_layers < cfg.vision_blocks_used:
            raise ValueError(
                f"load_vision_weights({path!r}): checkpoint has {scfg.num_hidden_layers} blocks, "
                f"config needs {cfg.vision_blocks_used}"
            )
        if getattr(scfg, "use_swiglu_ffn", False):
            raise ValueError(
                f"load_vision_weights({path!r}): SwiGLU-FFN DINOv2 checkpoints are not supported"
            )
        state = src.state_dict()
        own = self.dino.state_dict()
        pos_key = "embeddings.position_embeddings"
        if state[pos_key].shape != own[pos_key].shape:
            state[pos_key] = resample_pos_embed(state[pos_key], own[pos_key].shape[1] - 1)
        wanted = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(wanted))
        if missing:
            raise ValueError(f"load_vision_weights({path!r}): checkpoint lacks {missing[:5]}")
        self.dino.load_state_dict(wanted, strict=True)
        logger.info("loaded DINOv2 weights from %s (%d tensors)", path, len(wanted))
        return len(wanted)


def film_block(
    block: nn.Module, g_lin: nn.Linear, b_lin: nn.Linear, x: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """One DINOv2 block with FiLM between attention and MLP, from the block's public sub-modules."""
    attn, _ = block.attention(block.norm1(x))
    x = x + block.drop_path(block.layer_scale1(attn))
    x = x * (1.0 + g_lin(cond)[:, None]) + b_lin(cond)[:, None]
    return x + block.drop_path(block.layer_scale2(block.mlp(block.norm2(x))))


def resample_pos_embed(pos: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(1, 1 + n_old, D) -> (1, 1 + num_patches, D), bicubic on the square patch grid."""
    cls_pos, grid = pos[:, :1], pos[:, 1:]
    old, new = math.isqrt(grid.shape[1]), math.isqrt(num_patches)
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False, antialias=old > new)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, dim).to(pos.dtype)
    return torch.cat([cls_pos, grid], dim=1)



class FiLMConvTower(nn.Module):
    """A small FiLM-conditioned CNN: the action expert's vision tower option for tiny CPU presets.

    Per layer: conv 3x3 (stride per config) -> GroupNorm -> x * (1 + gamma) + beta -> SiLU, with gamma, beta linear
    in the conditioning vector (the mean latent query, as for the DINOv2 tower). Returns the last feature map as
    row-major tokens (N, H*W, C). Trained from scratch, its locality prior learns to place objects in far fewer
    steps than a ViT trained from scratch; with pretrained weights available, DINOv2 is the method's tower.
    """

    def __init__(self, cfg: ActionExpertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chans, strides = list(cfg.conv_channels), list(cfg.conv_strides)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c_in = 3
        for c, stride in zip(chans, strides, strict=True):
            self.convs.append(nn.Conv2d(c_in, c, 3, stride, 1))
            self.norms.append(nn.GroupNorm(math.gcd(8, c), c))
            c_in = c
        self.film_gamma = nn.ModuleList([nn.Linear(cfg.latent_dim, c) for c in chans])
        self.film_beta = nn.ModuleList([nn.Linear(cfg.latent_dim, c) for c in chans])
        self.gradient_checkpointing = False

    def forward(self, pixels: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, S, S) normalised, cond (N, latent_dim) -> features (N, (S / total stride)^2, channels)."""
        x = pixels
        for conv, norm, g_lin, b_lin in zip(self.convs, self.norms, self.film_gamma, self.film_beta, strict=True):
            x = norm(conv(x))
            x = F.silu(x * (1.0 + g_lin(cond)[:, :, None, None]) + b_lin(cond)[:, :, None, None])
        return x.flatten(2).transpose(1, 2)
