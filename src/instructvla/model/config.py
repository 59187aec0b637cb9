"""InstructVLAConfig: everything that defines an InstructVLA model (hyper-parameters only, no runtime state)."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from instructvla.model.molora import DEFAULT_TARGETS, ROUTER_INPUTS
from instructvla.model.presets import PRESETS

_DEFAULT_LORA = object()


@dataclass
class LoRASettings:
    """LoRA expert sizes. rank/alpha None = the backbone preset's default (method: r=128, alpha=256 at base)."""

    rank: int | None = None
    alpha: float | None = None
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class MoESettings:
    """Stage-2 mixture: experts (0 = action, 1 = language), scale head MLP, router input."""

    num_experts: int = 2
    gate_hidden: int = 128
    gate_depth: int = 4
    gate_dropout: float = 0.2
    temperature: float = 1.0
    router_input: str = "embeddings"

    def __post_init__(self) -> None:
        if self.num_experts < 2:
            raise ValueError(f"moe.num_experts must be >= 2, got {self.num_experts}")
        if self.gate_depth < 1 or self.gate_hidden < 1:
            raise ValueError("moe.gate_depth and moe.gate_hidden must be >= 1")
        if self.router_input not in ROUTER_INPUTS:
            raise ValueError(f"moe.router_input must be one of {ROUTER_INPUTS}, got {self.router_input!r}")


@dataclass
class InstructVLAConfig:
    """The model definition saved in a checkpoint's config.json.

    backbone:        preset name ("tiny", "tiny-smolvlm", "small", "base") or a local HF VLM directory.
    num_queries:     latent action query tokens appended to the assistant turn (method: 64).
    stage:           1 = one action LoRA; 2 = action + language LoRA experts mixed by a scale head.
    action_expert:   preset name ("tiny" | "small" | "base") of the flow-matching action expert.
    action_expert_overrides: ActionExpertConfig fields to override (e.g. use_state, num_views, chunk_size).
    image_size:      side of the input images a Sample carries (checked; the processor resizes to the VLM / DINO).
    max_length:      token budget per sample; an action sample that would be cut raises.
    max_think_tokens: greedy reply budget in thinking mode (method: 50).
    fm_weight / lm_weight: loss weights (method 1:1).
    center_crop_area: the test-time centre crop that matches how the model was trained: the area its random training
                     crops kept (0.9, method.md §4.1) for crop-augmented training, 1.0 (no crop) otherwise. A Policy
                     uses it unless told otherwise; training sets it.
    """

    backbone: str = "tiny"
    num_queries: int = 64
    stage: int = 1
    lora: LoRASettings = field(default_factory=LoRASettings)
    moe: MoESettings = field(default_factory=MoESettings)
    action_expert: str = "tiny"
    action_expert_overrides: dict[str, Any] = field(default_factory=dict)
    image_size: int = 224
    max_length: int = 512
    max_think_tokens: int = 50
    fm_weight: float = 1.0
    lm_weight: float = 1.0
    seed: int = 0
    center_crop_area: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = _from_dict(LoRASettings, self.lora, "lora")
        if isinstance(self.moe, dict):
            self.moe = _from_dict(MoESettings, self.moe, "moe")
        if not self.backbone:
            raise ValueError("backbone must be a preset name or a directory")
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}")
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.max_length < self.num_queries + 8:
            raise ValueError(f"max_length {self.max_length} too small for {self.num_queries} queries")
        if self.max_think_tokens < 1:
            raise ValueError(f"max_think_tokens must be >= 1, got {self.max_think_tokens}")
        if self.fm_weight < 0 or self.lm_weight < 0:
            raise ValueError("fm_weight and lm_weight must be >= 0")
        if not 0.0 < self.center_crop_area <= 1.0:
            raise ValueError(f"center_crop_area must be in (0, 1], got {self.center_crop_area}")
        if not isinstance(self.action_expert_overrides, dict):
            raise TypeError("action_expert_overrides must be a dict")

    @property
    def backbone_is_preset(self) -> bool:
        return self.backbone in PRESETS

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lora"]["targets"] = list(d["lora"]["targets"])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstructVLAConfig:
        """Build from a dict; unknown keys (also inside lora / moe) raise naming the key."""
        return _from_dict(cls, data, "InstructVLAConfig")


def _from_dict(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a dict, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"{where}: unknown config key {key!r}{extra}")
    return cls(**data)
