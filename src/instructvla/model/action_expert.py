"""The InstructVLA action expert: FiLM-DINOv2 vision, projectors, block-masked Llama transformer, flow-matching head.

Sequence layout (method.md §2.4): [visual | latent | (state) | action]. Visual tokens see visual tokens only; latent
(and state) tokens see the whole prefix; action tokens see everything. With the hard (-inf) mask the prefix never
depends on the noisy actions, so inference encodes the prefix once (`encode_prefix`, a per-layer KV cache) and each
Euler step runs only the action tokens against it (`velocity`). Under no_grad in eval mode that step takes a fast path
(`ExpertTransformer.cached_step`) whose constants (RoPE tables, K/V buffers, fused transposed weights) are built once.

Multi-view tokens are interleaved patch-wise, as in the reference: [v0p0, v1p0, v0p1, v1p1, ...]
(``view_token_order="concat"`` gives all of view 0, then all of view 1).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from instructvla.model.expert_transformer import CachedStepPlan, ExpertTransformer
from instructvla.model.film_vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FiLMConvTower,
    FiLMDinoV2,
    preprocess_images,
)
from instructvla.model.flow import (
    ATTENTION_KINDS,
    block_attention_mask,
    euler_integrate,
    interpolate,
    randn,
    sample_time,
    sinusoidal_time_embedding,
    target_velocity,
)
from instructvla.model.keypoints import KeypointReadout, heatmap_cross_entropy

logger = logging.getLogger(__name__)

PRESETS: tuple[str, ...] = ("tiny", "small", "base")


@dataclass
class ActionExpertConfig:
    """Hyper-parameters of the action expert (sizes default to method.md's full model except `latent_dim`).

    vision_feature_layer: which DINOv2 block feeds the expert. -1 (default) = last block followed by DINOv2's final
        LayerNorm (the standard DINOv2 output). Any other index = that block's raw output, no final norm, and the
        blocks after it are not built. The reference's released checkpoints use ``vision_feature_layer=2`` (the 3rd
        of 24 blocks), a side effect of how its wrapper asks timm for intermediate layers.
    attention: "hard" = additive -inf block mask (default; exact prefix caching). "soft_bias" = the reference quirk
        (no masking, +1 logit bonus on allowed pairs); sampling then recomputes the transformer every step.
    center_crop_ratio: 1.0 = none. 0.875 reproduces the reference's DINO transform (resize 256, center-crop 224).
    loss_ignore_padding: False (method: loss over every entry, padding included); True averages the loss over
        non-padded steps only when `action_is_pad` is given.
    cumulative_loss_weight: 0 (the method) or w > 0: adds w x a flow-matching loss on the running sums over the chunk
        of the first `delta_dims` action dims' velocity errors, each divided by the square root of its length. Those
        dims are deltas that add up when a chunk runs open loop, so an error shared by its steps (a drift of a
        millimetre a step) moves the arm as far as the sum; the per-step loss scores it as tiny, this term in
        proportion to how far it carries. Independent per-step errors score as in the plain loss.
    flow_noise_std: standard deviation of the flow's noise prior x0 ~ N(0, std^2 I) (1.0 = the method), in training
        and in sampling alike (sample's noise_scale multiplies it). A policy evaluated deterministically (from
        x0 = 0) only ever meets the path that starts at the prior's centre; a narrower prior keeps the training
        inputs near that path.
    flow_time_alpha: training times t = 0.999 (1 - z), z ~ Beta(alpha, 1): 1.5 (the method) trains the noisy start
        of the path most and its end least; 1.0 trains every t alike, as a deterministic Euler sampler weighs them.
    delta_dims: how many leading action dims are deltas (the tabletop's xyz + rpy: 6; the gripper is absolute).
    noise_repeats: flow-matching (noise, time) draws per training example (1 = the method). With K > 1 the prefix
        (vision, latents, state) is encoded once and shared by the K noisy chunks, which lowers the variance of the
        flow-matching gradient for a small extra cost (only the action tokens run K times); needs attention="hard".
    vision_tower: "dinov2" (the method: FiLM-DINOv2-with-registers) or "conv" (a FiLM CNN, model/film_vision.py:
        `conv_channels` per 3x3 layer with `conv_strides`; its last map, average-pooled by `conv_pool`, gives the
        visual tokens, and the keypoint readout reads the unpooled map). vision_hidden_size must equal the last
        channel count. The CNN is for tiny presets trained from scratch on a CPU, where it localises far sooner.
    keypoints: 0 (the method) or K > 0: a language-conditioned keypoint readout of the primary view (model/keypoints.py)
        adds K prefix tokens holding where the instructed things are; trained end to end and, when the batch carries
        `keypoints` labels ((B, K, 2) in [-1, 1]), by an L1 loss weighted `keypoint_loss_weight`.
    keypoint_teacher_forcing: in training with labels, the probability that a sample's keypoint tokens (and action
        bias) are built from its labelled coordinates instead of the predicted ones. The readout's early guesses are
        noise, so without it the action tokens learn to ignore the keypoints; with it they learn to follow them, and
        at inference they follow the readout. The readout keeps its own L1 loss either way.
    keypoint_action_bias: add an MLP of the keypoints' coordinates (and the state, with use_state) to every action
        token, a direct path from "where things are" to the actions besides attention to the keypoint tokens.
    keypoint_heatmap_weight: with labels, weight of a cross-entropy of the readout's heat maps against a Gaussian bump
        (half a patch wide) at each label (model/keypoints.py `heatmap_cross_entropy`); 0 = L1 only.
    object_keypoints: 0 or M > 0 (keypoint readout only): M learned object queries that place every known object on
        the primary view in training, from dense labels (B, M, 2) (`observation.object_keypoints`), by the heat-map
        cross-entropy weighted `object_keypoint_weight`. They shape the features the readout's keys are made of to
        tell objects apart in every frame, not only the instructed one; inference does not run them.
    """

    latent_dim: int
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000.0
    chunk_size: int = 16
    action_dim: int = 7
    state_dim: int = 8
    use_state: bool = False
    num_views: int = 1
    image_size: int = 224
    vision_hidden_size: int = 1024
    vision_num_layers: int = 24
    vision_num_heads: int = 16
    vision_patch_size: int = 14
    vision_num_registers: int = 4
    vision_mlp_ratio: int = 4
    vision_layerscale_value: float = 1.0
    vision_feature_layer: int = -1
    view_token_order: str = "interleave"
    resize_mode: str = "bicubic"
    center_crop_ratio: float = 1.0
    attention: str = "hard"
    time_max_period: float = 100.0
    sigma_min: float = 0.001
    num_inference_steps: int = 10
    attention_dropout: float = 0.0
    vision_dropout: float = 0.0
    vision_drop_path_rate: float = 0.0
    loss_ignore_padding: bool = False
    cumulative_loss_weight: float = 0.0
    flow_noise_std: float = 1.0
    flow_time_alpha: float = 1.5
    delta_dims: int = 6
    noise_repeats: int = 1
    vision_tower: str = "dinov2"
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 64, 64])
    conv_strides: list[int] = field(default_factory=lambda: [2, 2, 1, 2])
    conv_pool: int = 2
    keypoints: int = 0
    keypoint_loss_weight: float = 1.0
    keypoint_teacher_forcing: float = 0.0
    keypoint_action_bias: bool = False
    keypoint_heatmap_weight: float = 0.0
    object_keypoints: int = 0
    object_keypoint_weight: float = 1.0
    head_widths: list[int] = field(
        default_factory=list
    )  # empty = scale method.md's 12288->3072->1536->384 ratios

    def __post_init__(self) -> None:
        positive = (
            "latent_dim",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "chunk_size",
            "action_dim",
            "state_dim",
            "num_views",
            "image_size",
            "vision_hidden_size",
            "vision_num_layers",
            "vision_num_heads",
            "vision_patch_size",
            "vision_mlp_ratio",
            "num_inference_steps",
            "noise_repeats",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ActionExpertConfig.{name} must be a positive int, got {value!r}")
        if not (math.isfinite(self.flow_noise_std) and self.flow_noise_std > 0):
            raise ValueError(f"ActionExpertConfig.flow_noise_std must be a finite number > 0, got {self.flow_noise_std}")
        if not (math.isfinite(self.flow_time_alpha) and self.flow_time_alpha > 0):
            raise ValueError(f"ActionExpertConfig.flow_time_alpha must be a finite number > 0, got {self.flow_time_alpha}")
        if not self.cumulative_loss_weight >= 0:
            raise ValueError(f"ActionExpertConfig.cumulative_loss_weight must be >= 0, got {self.cumulative_loss_weight}")
        if not 0 <= self.delta_dims <= self.action_dim:
            raise ValueError(f"ActionExpertConfig.delta_dims must be in [0, action_dim={self.action_dim}], "
                             f"got {self.delta_dims}")
        if self.vision_num_registers < 0:
            raise ValueError(
                f"ActionExpertConfig.vision_num_registers must be >= 0, got {self.vision_num_registers}"
            )
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"ActionExpertConfig.hidden_size ({self.hidden_size}) must split into num_heads ({self.num_heads}) "
                "heads of even size (RoPE)"
            )
        if self.vision_hidden_size % self.vision_num_heads:
            raise ValueError(
                f"ActionExpertConfig.vision_hidden_size ({self.vision_hidden_size}) must be divisible by "
                f"vision_num_heads ({self.vision_num_heads})"
            )
        if self.vision_tower == "dinov2" and self.image_size % self.vision_patch_size:
            raise ValueError(
                f"ActionExpertConfig.image_size ({self.image_size}) must be a multiple of vision_patch_size "
                f"({self.vision_patch_size})"
            )
        if not -self.vision_num_layers <= self.vision_feature_layer < self.vision_num_layers:
            raise ValueError(
                f"ActionExpertConfig.vision_feature_layer={self.vision_feature_layer} is outside the "
                f"{self.vision_num_layers} vision blocks"
            )
        self.conv_channels, self.conv_strides = list(self.conv_channels), list(self.conv_strides)
        if self.vision_tower == "conv":
            if not self.conv_channels or len(self.conv_channels) != len(self.conv_strides):
                raise ValueError("ActionExpertConfig.conv_channels and conv_strides must be non-empty and of equal "
                                 f"length, got {self.conv_channels} and {self.conv_strides}")
            if any(not isinstance(v, int) or v < 1 for v in [*self.conv_channels, *self.conv_strides, self.conv_pool]):
                raise ValueError("ActionExpertConfig.conv_channels, conv_strides and conv_pool must be positive ints")
            if self.vision_hidden_size != self.conv_channels[-1]:
                raise ValueError(f"ActionExpertConfig.vision_hidden_size ({self.vision_hidden_size}) must equal the "
                                 f"conv tower's last channel count ({self.conv_channels[-1]})")
            if self.image_size % (math.prod(self.conv_strides) * self.conv_pool):
                raise ValueError(f"ActionExpertConfig.image_size ({self.image_size}) must be a multiple of the conv "
                                 f"tower's total stride x pool ({math.prod(self.conv_strides) * self.conv_pool})")
        choices = {
            "vision_tower": ("dinov2", "conv"),
            "attention": ATTENTION_KINDS,
            "view_token_order": ("interleave", "concat"),
            "resize_mode": ("bicubic", "bilinear"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"ActionExpertConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        for name in ("keypoints", "object_keypoints"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ActionExpertConfig.{name} must be an int >= 0, got {value!r}")
        for name in ("keypoint_loss_weight", "keypoint_heatmap_weight", "object_keypoint_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"ActionExpertConfig.{name} must be a finite number >= 0, got {value}")
        if not 0.0 <= self.keypoint_teacher_forcing <= 1.0:
            raise ValueError(
                f"ActionExpertConfig.keypoint_teacher_forcing must be in [0, 1], got {self.keypoint_teacher_forcing}"
            )
        if self.object_keypoints and not self.keypoints:
            raise ValueError("ActionExpertConfig.object_keypoints needs a keypoint readout (keypoints=K > 0)")
        if self.keypoint_action_bias and not self.keypoints:
            raise ValueError("ActionExpertConfig.keypoint_action_bias needs a keypoint readout (keypoints=K > 0)")
        if self.noise_repeats > 1 and self.attention != "hard":
            raise ValueError(
                f"ActionExpertConfig.noise_repeats={self.noise_repeats} shares the encoded prefix between the noisy "
                f"chunks, which needs attention='hard' (got {self.attention!r})"
            )
        for name in ("attention_dropout", "vision_dropout", "vision_drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ActionExpertConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.center_crop_ratio <= 1.0:
            raise ValueError(
                f"ActionExpertConfig.center_crop_ratio must be in (0, 1], got {self.center_crop_ratio}"
            )
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"ActionExpertConfig.sigma_min must be in [0, 1), got {self.sigma_min}")
        for name in ("time_max_period", "rope_theta", "rms_norm_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ActionExpertConfig.{name} must be > 0, got {getattr(self, name)}")
        self.head_widths = list(self.head_widths)
        if any(not isinstance(w, int) or w < 1 for w in self.head_widths):
            raise ValueError(f"ActionExpertConfig.head_widths must be positive ints, got {self.head_widths}")

    @property
    def feature_grid(self) -> int:
        """Side of the vision tower's feature map (what the keypoint readout reads)."""
        if self.vision_tower == "conv":
            return self.image_size // math.prod(self.conv_strides)
        return self.image_size // self.vision_patch_size

    @property
    def num_patches(self) -> int:
        """Visual tokens per view (the conv tower's map is average-pooled by conv_pool first)."""
        pool = self.conv_pool if self.vision_tower == "conv" else 1
        return (self.feature_grid // pool) ** 2

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens over all views (plus the keypoint tokens, which sit in the visual block)."""
        return self.num_patches * self.num_views + self.keypoints

    @property
    def vision_blocks_used(self) -> int:
        """How many DINOv2 blocks are built and run."""
        return self.vision_feature_layer % self.vision_num_layers + 1

    def resolved_head_widths(self) -> list[int]:
        """Hidden widths of the output MLP: method.md's ratios (flat/4, flat/8, flat/32) unless set explicitly."""
        if self.head_widths:
            return list(self.head_widths)
        flat = self.chunk_size * self.hidden_size
        out = self.chunk_size * self.action_dim
        return [max(flat // 4, out), max(flat // 8, out), max(flat // 32, out)]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionExpertConfig:
        """Build from a dict; unknown keys raise naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ActionExpertConfig: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, latent_dim: int, **overrides: Any) -> ActionExpertConfig:
        """Named sizes: "tiny" (CPU tests), "small" (CPU-trainable), "base" (method.md full size)."""
        if name not in _PRESETS:
            import difflib

            hint = difflib.get_close_matches(name, PRESETS, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(f"unknown action-expert preset {name!r} (known: {PRESETS}){extra}")
        return cls.from_dict({**_PRESETS[name], "latent_dim": latent_dim, **overrides})


_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        intermediate_size=256,
        image_size=64,
        vision_hidden_size=64,
        vision_num_layers=2,
        vision_num_heads=2,
        vision_patch_size=8,
        vision_num_registers=4,
        vision_mlp_ratio=2,
    ),
    "small": dict(
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        intermediate_size=384,
        image_size=112,
        vision_hidden_size=128,
        vision_num_layers=4,
        vision_num_heads=4,
        vision_patch_size=14,
        vision_num_registers=4,
        vision_mlp_ratio=2,
    ),
    "base": dict(attention_dropout=0.1),
}


class _ReadoutOutputs(NamedTuple):
    """What the keypoint readout adds to an encoded prefix (all None without a readout)."""

    uv: torch.Tensor | None  # (B, K, 2) predicted keypoints
    action_bias: torch.Tensor | None  # (B, d) added to every action token
    logits: torch.Tensor | None  # (B, K, P) heat-map scores
    object_logits: torch.Tensor | None  # (B, M, P) object-query heat maps (training only)


@dataclass
class PrefixCache:
    """What `velocity` needs from the prefix [visual | latent | (state)].

    embeds: (B, P, d) prefix token embeddings (before the transformer).
    keys / values: per layer (B, heads, P, head_dim) post-RoPE keys and values; None when the attention kind does not
        allow exact caching (soft_bias), in which case `velocity` recomputes the transformer from `embeds`.
    """

    embeds: torch.Tensor
    keys: list[torch.Tensor] | None
    values: list[torch.Tensor] | None
    n_visual: int
    n_latent: int
    n_state: int
    keypoints: torch.Tensor | None = None  # (B, K, 2) predicted keypoints when the expert has a keypoint readout
    action_bias: torch.Tensor | None = None  # (B, d) added to every action token (keypoint_action_bias)
    keypoint_logits: torch.Tensor | None = None  # (B, K, P) the readout's heat-map scores
    object_logits: torch.Tensor | None = None  # (B, M, P) object-query heat maps (training with object_keypoints)
    # Per-prefix constants of the inference fast path (RoPE tables, K/V buffers), built on the first no-grad
    # `velocity` call.
    step: tuple[CachedStepPlan, _StepInputWeights] | None = field(default=None, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return self.embeds.shape[0]

    @property
    def length(self) -> int:
        return self.embeds.shape[1]


@dataclass
class _StepInputWeights:
    """Inference copies for the fast cached step outside the transformer (see `ExpertTransformer.step_weights`):
    (bias, weight transposed to (in, out)) pairs for torch.addmm, the head as (weight, bias) or None for a SiLU,
    and the time-embedding frequencies."""

    key: tuple[tuple[int, int], ...]
    action_in: tuple[torch.Tensor, torch.Tensor]
    time_mlp: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    head: list[tuple[torch.Tensor, torch.Tensor] | None]
    time_freqs: torch.Tensor


def _mlp2(d_in: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.SiLU(), nn.Linear(d, d))


# ----------------------------------------------------------------------------------------------------------------------



def cumulative_velocity_error(velocity: torch.Tensor, target: torch.Tensor, dims: int) -> torch.Tensor:
    """Mean square of the running sums over the chunk (B, H, A) of the first `dims` dims' velocity errors, the sum
    over the first n steps divided by sqrt(n): independent per-step errors keep their scale, an error shared by all
    steps counts n times more at step n (see ActionExpertConfig.cumulative_loss_weight)."""
    err = (velocity.float() - target.float())[..., :dims]
    steps = torch.arange(1, err.shape[1] + 1, device=err.device, dtype=err.dtype).sqrt()[None, :, None]
    return (err.cumsum(dim=1) / steps).pow(2).mean()

class ActionExpert(nn.Module):
    """Flow-matching action expert conditioned on VLM latent queries, camera images and (optionally) proprio state."""

    def __init__(self, cfg: ActionExpertConfig) -> None:
        super().__init__()
        if not isinstance(cfg, ActionExpertConfig):
            raise TypeError(f"ActionExpert expects an ActionExpertConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        d = cfg.hidden_size
        self.vision = FiLMDinoV2(cfg) if cfg.vision_tower == "dinov2" else FiLMConvTower(cfg)
        self.vision_proj = _mlp2(cfg.vision_hidden_size, d)
        self.keypoint_readout = (KeypointReadout(cfg.keypoints, cfg.vision_hidden_size, cfg.latent_dim, d,
                                                 num_objects=cfg.object_keypoints)
                                 if cfg.keypoints else None)
        self.keypoint_bias = (_mlp2(self.keypoint_readout.encoding_dim * cfg.keypoints
                                    + (cfg.state_dim if cfg.use_state else 0), d)
                              if self.keypoint_readout is not None and cfg.keypoint_action_bias else None)
        self.latent_proj = _mlp2(cfg.latent_dim, d)
        self.state_proj = _mlp2(cfg.state_dim, d) if cfg.use_state else None
        self.action_in = nn.Linear(cfg.action_dim, d)
        self.action_time_mlp = _mlp2(2 * d, d)
        self.transformer = ExpertTransformer(cfg)
        widths = [cfg.chunk_size * d, *cfg.resolved_head_widths()]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.SiLU()]
        layers.append(nn.Linear(widths[-1], cfg.chunk_size * cfg.action_dim))
        self.head = nn.Sequential(*layers)
        self._fast_inputs: _StepInputWeights | None = None  # inference copies for the cached step (not saved)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ inputs

    @property
    def _dtype(self) -> torch.dtype:
        return self.action_in.weight.dtype

    def preprocess_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, V, H, W, 3) -> float (B, V, 3, S, S): optional center crop, antialiased resize, ImageNet norm."""
        return preprocess_images(images, self.cfg, self.image_mean, self.image_std).to(self._dtype)

    def _check_prefix_inputs(
        self, latents: torch.Tensor, images: torch.Tensor, state: torch.Tensor | None
    ) -> None:
        cfg = self.cfg
        if latents.ndim != 3 or latents.shape[-1] != cfg.latent_dim or latents.shape[1] < 1:
            raise ValueError(f"latents must be (B, N>=1, {cfg.latent_dim}), got shape {tuple(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or Inf")
        b = latents.shape[0]
        expected = (b, cfg.num_views, 3, cfg.image_size, cfg.image_size)
        if images.ndim != 5 or tuple(images.shape) != expected:
            raise ValueError(
                f"images must be preprocessed float (B, V, 3, S, S) = {expected}, got shape {tuple(images.shape)} "
                "(use preprocess_images on uint8 frames)"
            )
        if not images.is_floating_point():
            raise TypeError(
                f"images must be float (use preprocess_images on uint8 frames), got {images.dtype}"
            )
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or Inf")
        if cfg.use_state:
            if state is None:
                raise ValueError("state is required: config use_state=True")
            if tuple(state.shape) != (b, cfg.state_dim):
                raise ValueError(
                    f"state must be (B, {cfg.state_dim}) = ({b}, {cfg.state_dim}), got {tuple(state.shape)}"
                )
            if not torch.isfinite(state).all():
                raise ValueError("state contains NaN or Inf")
        elif state is not None:
            raise ValueError(
                "state was given but config use_state=False (build the expert with use_state=True)"
            )

    def _check_actions(self, name: str, x: torch.Tensor, batch: int) -> None:
        expected = (batch, self.cfg.chunk_size, self.cfg.action_dim)
        if tuple(x.shape) != expected:
            raise ValueError(f"{name} must have shape (B, H, A) = {expected}, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contain NaN or Inf")

    def _check_time(self, t: torch.Tensor, batch: int) -> None:
        if t.ndim != 1 or t.shape[0] != batch:
            raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")

    # ------------------------------------------------------------------ embeddings

    def encode_vision(self, latents: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Visual tokens of every view: (B, V * num_patches, vision_hidden), views ordered per config."""
        return self._order_views(self._pool(self._view_features(latents, images)))

    def _pool(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, V, grid^2, C) feature maps -> (B, V, num_patches, C) visual tokens (the conv tower's are pooled)."""
        if self.cfg.vision_tower != "conv" or self.cfg.conv_pool == 1:
            return feats
        b, v, _, c = feats.shape
        g, p = self.cfg.feature_grid, self.cfg.conv_pool
        x = feats.reshape(b * v, g, g, c).permute(0, 3, 1, 2)
        x = F.avg_pool2d(x, p).flatten(2).transpose(1, 2)
        return x.reshape(b, v, -1, c)

    def _view_features(self, latents: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(B, V, grid^2, vision_hidden) FiLM vision-tower feature maps, conditioned on the mean latent."""
        b, v = images.shape[:2]
        cond = latents.mean(dim=1).to(self._dtype)  # c-bar: mean over the N raw latent tokens
        cond = cond.repeat_interleave(v, dim=0)
        feats = self.vision(images.reshape(b * v, *images.shape[2:]).to(self._dtype), cond)
        n, dv = feats.shape[1:]
        return feats.view(b, v, n, dv)

    def _order_views(self, feats: torch.Tensor) -> torch.Tensor:
        b, v, n, dv = feats.shape
        if self.cfg.view_token_order == "interleave":
            return feats.transpose(1, 2).reshape(b, n * v, dv)
        return feats.reshape(b, v * n, dv)

    def _embed_prefix(
        self, latents: torch.Tensor, images: torch.Tensor, state: torch.Tensor | None,
        keypoints_override: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int, int, int, _ReadoutOutputs]:
        """Prefix embeddings [visual (+ keypoint tokens) | latent | (state)], the block sizes and what the keypoint
        readout gave (`_ReadoutOutputs`). `keypoints_override` (B, K, 2): finite entries replace the predicted
        coordinates in the keypoint tokens and the action bias (teacher forcing)."""
        self._check_prefix_inputs(latents, images, state)
        if keypoints_override is not None and self.keypoint_readout is None:
            raise ValueError("keypoints_override needs an action expert with a keypoint readout (keypoints=K > 0)")
        feats = self._view_features(latents, images)
        vis = [self.vision_proj(self._order_views(self._pool(feats)))]
        uv = bias = logits = object_logits = None
        if self.keypoint_readout is not None:  # keypoints of the primary (first) view, queried by c-bar
            uv, kp_tokens, used, logits, object_logits = self.keypoint_readout(
                feats[:, 0], latents.mean(dim=1).to(self._dtype), override=keypoints_override,
                with_objects=self.training and self.cfg.object_keypoints > 0)
            vis.append(kp_tokens)
            if self.keypoint_bias is not None:
                inputs = [self.keypoint_readout.encode(used).flatten(1)]
                if state is not None:
                    inputs.append(state.to(self._dtype))
                bias = self.keypoint_bias(torch.cat(inputs, dim=-1))
        vis_t = torch.cat(vis, dim=1)
        lat = self.latent_proj(latents.to(self._dtype))
        parts = [vis_t, lat]
        if self.state_proj is not None:
            parts.append(self.state_proj(state.to(self._dtype))[:, None])
        n_state = 1 if self.state_proj is not None else 0
        return (torch.cat(parts, dim=1), vis_t.shape[1], lat.shape[1], n_state,
                _ReadoutOutputs(uv, bias, logits, object_logits))

    def embed_actions(self, noisy_actions: torch.Tensor, t: torch.Tensor,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, A) noisy actions and (B,) times (+ a (B, d) per-sample bias) -> (B, H, d) action tokens."""
        a = self.action_in(noisy_actions.to(self._dtype))
        te = sinusoidal_time_embedding(t.float(), self.cfg.hidden_size, self.cfg.time_max_period).to(a.dtype)
        te = te[:, None].expand(-1, a.shape[1], -1)
        out = self.action_time_mlp(torch.cat([te, a], dim=-1))
        return out if bias is None else out + bias[:, None].to(out.dtype)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.cfg.chunk_size
        out = self.head(hidden[:, -h:].reshape(hidden.shape[0], -1))
        return out.view(-1, h, self.cfg.action_dim)

    def _mask(
        self, n_visual: int, n_latent: int, n_state: int, n_action: int, like: torch.Tensor
    ) -> torch.Tensor:
        return block_attention_mask(
            n_visual, n_latent, n_state, n_action, self.cfg.attention, dtype=like.dtype, device=like.device
        )

    # ------------------------------------------------------------------ public model API

    def encode_prefix(
        self, latents: torch.Tensor, images: torch.Tensor, state: torch.Tensor | None = None,
        keypoints_override: torch.Tensor | None = None,
    ) -> PrefixCache:
        """Run FiLM-DINOv2, the projectors and (hard mask) the transformer over the prefix; returns its KV cache.

        latents: (B, N, latent_dim) raw VLM latent-query states; images: (B, V, 3, S, S) from `preprocess_images`;
        state: (B, state_dim) when use_state. keypoints_override (B, K, 2), keypoint readout only: finite entries
        replace the predicted coordinates the keypoint tokens and action bias read (teacher forcing in training;
        oracle keypoints in diagnostics); `PrefixCache.keypoints` stays the prediction.
        """
        embeds, nv, nl, ns, ro = self._embed_prefix(latents, images, state, keypoints_override)
        keys = values = None
        if self.cfg.attention == "hard":
            _, keys, values = self.transformer(embeds, mask=self._mask(nv, nl, ns, 0, embeds))
        return PrefixCache(embeds, keys, values, nv, nl, ns, keypoints=ro.uv, action_bias=ro.action_bias,
                           keypoint_logits=ro.logits, object_logits=ro.object_logits)

    def velocity(self, prefix: PrefixCache, noisy_actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity (B, H, A) at noisy actions (B, H, A) and times (B,), given a prefix from `encode_prefix`.

        With the hard mask only the action tokens run (against the cached prefix keys/values); with soft_bias the
        whole transformer is recomputed from the cached prefix embeddings.
        """
        b = prefix.batch_size
        self._check_actions("noisy_actions", noisy_actions, b)
        self._check_time(t, b)
        return self._velocity(prefix, noisy_actions, t)

    def _velocity(self, prefix: PrefixCache, noisy_actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`velocity` without input checks (sample() validates its noise once; the Euler times are its own)."""
        if (
            prefix.keys is not None
            and prefix.values is not None
            and not self.training
            and not torch.is_grad_enabled()
        ):
            return self._velocity_fast(prefix, noisy_actions, t)
        act = self.embed_actions(noisy_actions, t, prefix.action_bias)
        if prefix.keys is not None and prefix.values is not None:
            hidden, _, _ = self.transformer(
                act, mask=None, start=prefix.length, past=(prefix.keys, prefix.values)
            )
        else:
            seq = torch.cat([prefix.embeds, act], dim=1)
            mask = self._mask(prefix.n_visual, prefix.n_latent, prefix.n_state, act.shape[1], seq)
            hidden, _, _ = self.transformer(seq, mask=mask)
        return self._head(hidden)

    @torch.no_grad()
    def _step_input_weights(self) -> _StepInputWeights:
        """Build (and cache on the module until a parameter changes) the fast step's non-transformer weights."""
        params = [*self.action_in.parameters(), *self.action_time_mlp.parameters(), *self.head.parameters()]
        key = tuple((p.data_ptr(), p._version) for p in params)
        cached = self._fast_inputs
        if cached is not None and cached.key == key:
            return cached

        def bt(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            assert isinstance(m, nn.Linear) and m.bias is not None
            return m.bias.detach(), m.weight.detach().t().contiguous()

        half = self.cfg.hidden_size // 2
        freqs = torch.exp(
            -math.log(self.cfg.time_max_period)
            * torch.arange(half, device=self.action_in.weight.device, dtype=torch.float32)
            / half
        )  # exactly sinusoidal_time_embedding's frequencies (hidden_size is even)
        # The head is Linear / SiLU only (built in __init__); F.linear keeps its (B, .) gemv bit-identical.
        head = [(m.weight.detach(), m.bias.detach()) if isinstance(m, nn.Linear) else None for m in self.head]
        mlp = self.action_time_mlp
        self._fast_inputs = _StepInputWeights(key, bt(self.action_in), (bt(mlp[0]), bt(mlp[2])), head, freqs)
        return self._fast_inputs

    def _velocity_fast(
        self, prefix: PrefixCache, noisy_actions: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Inference-only cached step: the ops of `embed_actions` + transformer + `_head` (same results), with every
        constant that does not depend on (x_t, t) built once: RoPE tables and K/V buffers per prefix, fused and
        transposed weights per parameter version. Fewer dispatches per Euler step."""
        assert prefix.keys is not None and prefix.values is not None
        b, h, a_dim = noisy_actions.shape
        d = self.cfg.hidden_size
        if prefix.step is None:
            prefix.step = (
                self.transformer.plan_cached_step(prefix.keys, prefix.values, h, self._dtype),
                self._step_input_weights(),
            )
        plan, w = prefix.step
        a = torch.addmm(w.action_in[0], noisy_actions.to(self._dtype).reshape(b * h, a_dim), w.action_in[1])
        if plan.dtype != a.dtype:  # autocast changed the compute dtype: RoPE tables in that dtype (once)
            plan = self.transformer.plan_cached_step(prefix.keys, prefix.values, h, a.dtype)
            prefix.step = (plan, w)
        args = t.float()[:, None] * w.time_freqs[None]
        te = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(a.dtype)
        x = torch.cat([te[:, None].expand(-1, h, -1), a.view(b, h, d)], dim=-1).view(b * h, 2 * d)
        (b0, w0), (b1, w1) = w.time_mlp
        x = torch.addmm(b1, F.silu(torch.addmm(b0, x, w0)), w1)
        x = x.view(b, h, d)
        if prefix.action_bias is not None:
            x = x + prefix.action_bias[:, None].to(x.dtype)
        out = self.transformer.cached_step(x, plan).reshape(b, h * d)
        for wb in w.head:
            out = F.silu(out) if wb is None else F.linear(out, wb[0], wb[1])
        return out.view(-1, h, self.cfg.action_dim)

    def forward(
        self,
        latents: torch.Tensor,
        images: torch.Tensor,
        state: torch.Tensor | None,
        noisy_actions: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """Full recompute (training path): velocity (B, H, A) for noisy actions (B, H, A) at times t (B,)."""
        return self._forward(latents, images, state, noisy_actions, t)[0]

    def _forward(
        self,
        latents: torch.Tensor,
        images: torch.Tensor,
        state: torch.Tensor | None,
        noisy_actions: torch.Tensor,
        t: torch.Tensor,
        keypoints_override: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, _ReadoutOutputs]:
        embeds, nv, nl, ns, ro = self._embed_prefix(latents, images, state, keypoints_override)
        b = embeds.shape[0]
        self._check_actions("noisy_actions", noisy_actions, b)
        self._check_time(t, b)
        act = self.embed_actions(noisy_actions, t, ro.action_bias)
        seq = torch.cat([embeds, act], dim=1)
        hidden, _, _ = self.transformer(seq, mask=self._mask(nv, nl, ns, act.shape[1], seq))
        return self._head(hidden), ro

    def loss(
        self,
        latents: torch.Tensor,
        images: torch.Tensor,
        state: torch.Tensor | None,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
        action_is_pad: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow-matching MSE: noise x0 ~ N(0, std^2 I) (config flow_noise_std, 1 = the method),
        t = 0.999(1 - Beta(alpha, 1)) (config flow_time_alpha, 1.5 = the method), regress x1 - (1 - sigma_min) x0.

        actions: (B, H, A) normalised chunk (x1). action_is_pad (B, H) is validated; it only changes the loss when
        config loss_ignore_padding=True (the method averages over every entry, padding included).
        """
        return self.loss_terms(latents, images, state, actions, generator, action_is_pad)["fm"]

    def loss_terms(
        self,
        latents: torch.Tensor,
        images: torch.Tensor,
        state: torch.Tensor | None,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
        action_is_pad: torch.Tensor | None = None,
        keypoints: torch.Tensor | None = None,
        object_keypoints: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"fm": flow-matching loss (see `loss`)} plus, when `keypoints` labels (B, K, 2) are given and the expert
        has a keypoint readout, {"keypoint": mean L1 error of the predicted keypoints} and, with
        keypoint_heatmap_weight > 0, {"keypoint_heatmap": the heat maps' cross-entropy}; with dense `object_keypoints`
        labels (B, M, 2) and object queries (object_keypoints=M, training mode), {"object_keypoint": their heat
        maps' cross-entropy}. Non-finite label entries (a point the labeller could not place, an absent object) are
        left out of the means."""
        b = actions.shape[0] if actions.ndim >= 1 else 0
        self._check_actions("actions", actions, b)
        if action_is_pad is not None and tuple(action_is_pad.shape) != (b, self.cfg.chunk_size):
            raise ValueError(
                f"action_is_pad must have shape ({b}, {self.cfg.chunk_size}), got {tuple(action_is_pad.shape)}"
            )
        if keypoints is not None and tuple(keypoints.shape) != (b, self.cfg.keypoints, 2):
            raise ValueError(
                f"keypoints labels must have shape (B, K, 2) = ({b}, {self.cfg.keypoints}, 2), "
                f"got {tuple(keypoints.shape)}"
                + (" (this expert has no keypoint readout: build it with keypoints=K)" if not self.cfg.keypoints else "")
            )
        if object_keypoints is not None and tuple(object_keypoints.shape) != (b, self.cfg.object_keypoints, 2):
            raise ValueError(
                f"object_keypoints labels must have shape (B, M, 2) = ({b}, {self.cfg.object_keypoints}, 2), "
                f"got {tuple(object_keypoints.shape)}"
            )
        k = self.cfg.noise_repeats
        x1 = actions.to(self._dtype)
        if k > 1:  # K noisy copies of every chunk, tiled along the batch: [all B] x K
            x1 = x1.repeat(k, 1, 1)
        x0 = randn(tuple(x1.shape), generator=generator, device=x1.device, dtype=x1.dtype)
        if self.cfg.flow_noise_std != 1.0:
            x0 = x0 * self.cfg.flow_noise_std
        t = sample_time(b * k, generator=generator, device=x1.device, dtype=x1.dtype, alpha=self.cfg.flow_time_alpha)
        xt = interpolate(x0, x1, t, self.cfg.sigma_min)
        target = target_velocity(x0, x1, self.cfg.sigma_min)
        override = self._teacher_keypoints(keypoints, b, generator)
        if k > 1:  # with gradients; the hard mask makes the shared prefix exact
            prefix = self.encode_prefix(latents, images, state, override)
            assert prefix.keys is not None and prefix.values is not None
            bias = None if prefix.action_bias is None else prefix.action_bias.repeat(k, 1)
            shared = PrefixCache(prefix.embeds.repeat(k, 1, 1), [x.repeat(k, 1, 1, 1) for x in prefix.keys],
                                 [x.repeat(k, 1, 1, 1) for x in prefix.values], prefix.n_visual, prefix.n_latent,
                                 prefix.n_state, action_bias=bias)
            velocity = self._velocity(shared, xt, t)
            ro = _ReadoutOutputs(prefix.keypoints, prefix.action_bias, prefix.keypoint_logits, prefix.object_logits)
        else:
            velocity, ro = self._forward(latents, images, state, xt, t, override)
        err = (velocity.float() - target.float()).pow(2)
        if self.cfg.loss_ignore_padding and action_is_pad is not None:
            keep = (~action_is_pad.bool()).repeat(k, 1).to(err.dtype)[..., None].expand_as(err)
            out = {"fm": (err * keep).sum() / keep.sum().clamp_min(1.0)}
        else:
            out = {"fm": err.mean()}
        if self.cfg.cumulative_loss_weight > 0 and self.cfg.delta_dims > 0:
            out["fm_cumulative"] = cumulative_velocity_error(velocity, target, self.cfg.delta_dims)
        if keypoints is not None and ro.uv is not None:
            labels = keypoints.to(ro.uv.device).float()
            valid = torch.isfinite(labels)
            diff = (ro.uv.float() - torch.nan_to_num(labels)).abs() * valid
            out["keypoint"] = diff.sum() / valid.sum().clamp_min(1)
            if self.cfg.keypoint_heatmap_weight > 0 and ro.logits is not None:
                out["keypoint_heatmap"] = heatmap_cross_entropy(ro.logits, labels)
        if object_keypoints is not None and ro.object_logits is not None:
            out["object_keypoint"] = heatmap_cross_entropy(ro.object_logits, object_keypoints.to(ro.object_logits.device))
        return out

    def _teacher_keypoints(self, keypoints: torch.Tensor | None, batch: int,
                           generator: torch.Generator | None) -> torch.Tensor | None:
        """Labels (NaN where the predicted keypoints stay) for the samples drawn for teacher forcing, or None."""
        p = self.cfg.keypoint_teacher_forcing
        if keypoints is None or p <= 0 or not self.training or self.keypoint_readout is None:
            return None
        dev = self.action_in.weight.device
        draw = torch.rand(batch, generator=generator, device=generator.device if generator is not None else "cpu")
        chosen = (draw.to(dev) < p)[:, None, None]
        labels = keypoints.to(dev).to(self._dtype)
        return torch.where(chosen, labels, torch.full_like(labels, float("nan")))

    @torch.no_grad()
    def sample(
        self,
        latents: torch.Tensor,
        images: torch.Tensor,
        state: torch.Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        noise: torch.Tensor | None = None,
        noise_scale: float = 1.0,
        prefix: PrefixCache | None = None,
    ) -> torch.Tensor:
        """Sample a normalised action chunk (B, H, A) by Euler integration of the velocity from t = 0 to 1.

        Any batch size. Starting noise is `noise` if given (unit scale), else drawn with `generator`; either way it is
        multiplied by the prior's `flow_noise_std` and by `noise_scale` (1.0 = the method; 0.0 = the deterministic
        flow from x0 = 0, close to the conditional mean, which is the steadier choice for a briefly trained policy
        whose samples are still too spread out). use_cache=True encodes the
        prefix once and runs only the action tokens per step (exact for the hard mask). With attention="soft_bias"
        the prefix depends on the actions, so only the vision features and prefix embeddings are cached and the
        transformer is recomputed each step. use_cache=False recomputes everything (vision included) every step.
        `prefix`: the `encode_prefix` result of these inputs, when the caller already has it (e.g. for its
        keypoints); sampling then starts from it instead of encoding again (use_cache only).
        Call .eval() first for dropout-free, reproducible samples.
        """
        steps = self.cfg.num_inference_steps if num_steps is None else num_steps
        b = latents.shape[0]
        shape = (b, self.cfg.chunk_size, self.cfg.action_dim)
        if not math.isfinite(noise_scale) or noise_scale < 0:
            raise ValueError(f"noise_scale must be a finite number >= 0, got {noise_scale}")
        if noise is None:
            noise = randn(shape, generator=generator, device=latents.device, dtype=self._dtype)
        else:
            self._check_actions("noise", noise, b)
            noise = noise.to(self._dtype)
        if noise_scale * self.cfg.flow_noise_std != 1.0:
            noise = noise * (noise_scale * self.cfg.flow_noise_std)
        if prefix is not None and not use_cache:
            raise ValueError("sample: a precomputed prefix needs use_cache=True")
        if use_cache:
            if prefix is None:
                prefix = self.encode_prefix(latents, images, state)
            elif prefix.batch_size != b:
                raise ValueError(f"sample: prefix batch {prefix.batch_size} != latents batch {b}")
            return euler_integrate(lambda x, t: self._velocity(prefix, x, t), noise, steps)
        return euler_integrate(lambda x, t: self(latents, images, state, x, t), noise, steps)

    # ------------------------------------------------------------------ weights and sizes

    def unused_parameter_names(self) -> list[str]:
        """Parameters no forward pass uses (DINOv2's masked-image-modelling mask token): kept frozen, so DDP needs
        no find_unused_parameters and trainable sets leave them out."""
        return ["vision.dino.embeddings.mask_token"] if self.cfg.vision_tower == "dinov2" else []

    def load_vision_weights(self, path: str) -> None:
        """Load a saved Dinov2WithRegisters directory (save_pretrained / hub layout) into the vision tower.

        Sizes (width, heads, patch, registers, enough blocks) must match; position embeddings are resampled
        (bicubic) when the checkpoint was saved at another image size. Blocks after the feature layer are skipped.
        """
        if self.cfg.vision_tower != "dinov2":
            raise ValueError(f"load_vision_weights({path!r}): this expert's vision tower is "
                             f"{self.cfg.vision_tower!r}; DINOv2 weights load only into vision_tower='dinov2'")
        self.vision.load_dinov2(path)

    def release_step_cache(self) -> None:
        """Free the inference copies of the action-token weights (fused, transposed; about one transformer's worth
        of memory) that the fast cached sampling step keeps between calls. They are rebuilt on the next sample."""
        self._fast_inputs = None
        self.transformer._step_weights = None

    def train(self, mode: bool = True) -> ActionExpert:
        """nn.Module.train; entering training mode also releases the inference step cache (training never uses it)."""
        if mode:
            self.release_step_cache()
        return super().train(mode)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each vision block and transformer layer in the backward pass (saves activation memory)."""
        self.vision.gradient_checkpointing = enabled
        self.transformer.gradient_checkpointing = enabled

    def count_parameters(self) -> dict[str, int]:
        """Parameter counts per part (vision, film, projectors, transformer, head) plus total and trainable."""

        def n(mod: nn.Module | None) -> int:
            return 0 if mod is None else sum(p.numel() for p in mod.parameters())

        parts = {
            "vision": n(self.vision.dino) if self.cfg.vision_tower == "dinov2"
            else n(self.vision.convs) + n(self.vision.norms),
            "film": n(self.vision.film_gamma) + n(self.vision.film_beta),
            "projectors": n(self.vision_proj)
            + n(self.keypoint_readout)
            + n(self.latent_proj)
            + n(self.state_proj)
            + n(self.action_in)
            + n(self.action_time_mlp),
            "transformer": n(self.transformer),
            "head": n(self.head),
        }
        parts["total"] = sum(p.numel() for p in self.parameters())
        parts["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return parts
