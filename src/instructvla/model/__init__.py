"""The InstructVLA model: VLM backbone, mixture of LoRA experts, latent queries, flow-matching action expert."""

from instructvla.model.action_expert import ActionExpert, ActionExpertConfig
from instructvla.model.backbone import Backbone
from instructvla.model.config import InstructVLAConfig, LoRASettings, MoESettings
from instructvla.model.molora import MoLoRA, MoLoRAConfig
from instructvla.model.processor import VLAProcessor, action_prompt
from instructvla.model.vla import InstructVLA

__all__ = [
    "ActionExpert",
    "ActionExpertConfig",
    "Backbone",
    "InstructVLA",
    "InstructVLAConfig",
    "LoRASettings",
    "MoESettings",
    "MoLoRA",
    "MoLoRAConfig",
    "VLAProcessor",
    "action_prompt",
]
