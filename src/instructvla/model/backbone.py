"""VLM backbone: build a preset or load any supported image-text-to-text model from a local directory.

Family-specific details (image tokens, pixel layout, where the decoder lives) sit in small `FamilyAdapter`s, so the
rest of the model only talks to `Backbone`. The Eagle2-like family (InternVL class + SigLIP vision + Qwen2 LLM) is
registered under its own model_type so `save_pretrained`/`from_pretrained` round-trip exactly (platform.md).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoTokenizer,
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.configuration_utils import SubConfigSpec

from instructvla.model import tokenizer as tk
from instructvla.model.presets import BackbonePreset, get_preset

logger = logging.getLogger(__name__)


class EagleConfig(InternVLConfig):
    """InternVL config whose vision tower is any AutoConfig (SigLIP for Eagle2), so it round-trips through JSON."""

    model_type = "instructvla_eagle"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
    }


class EagleForConditionalGeneration(InternVLForConditionalGeneration):
    """InternVL model class bound to `EagleConfig` (SigLIP vision tower, pixel shuffle 0.5, LN-MLP projector)."""

    config_class = EagleConfig


def _register() -> None:
    with contextlib.suppress(ValueError):  # already registered (module re-import)
        AutoConfig.register(EagleConfig.model_type, EagleConfig)
    with contextlib.suppress(ValueError):
        AutoModelForImageTextToText.register(EagleConfig, EagleForConditionalGeneration)


_register()


@dataclass(frozen=True)
class FamilyAdapter:
    """How one VLM family takes images and where its LLM parts live.

    name:            family id.
    image_mean/std:  pixel normalisation (SigLIP: 0.5 / 0.5).
    """

    name: str
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def base_model(self, hf: PreTrainedModel) -> nn.Module:
        """The multimodal base model (returns post-norm last hidden states)."""
        return hf.model

    def text_model(self, hf: PreTrainedModel) -> nn.Module:
        """The decoder-only LLM (embeddings, layers, final norm)."""
        base = hf.model
        return base.language_model if hasattr(base, "language_model") else base.text_model

    def image_size(self, hf: PreTrainedModel) -> int:
        size = hf.config.vision_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def num_image_tokens(self, hf: PreTrainedModel) -> int:
        vc = hf.config.vision_config
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        side = self.image_size(hf) // int(patch)
        if self.name == "smolvlm":
            return side * side // (hf.config.scale_factor**2)
        ratio = hf.config.downsample_ratio
        return int(round(side * ratio)) ** 2

    def image_token_ids(self, hf: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Token ids standing for one image in the prompt."""
        n = self.num_image_tokens(hf)
        img = hf.config.image_token_id
        names = [tk.FAKE_AROUND_IMAGE, tk.GLOBAL_IMG] if self.name == "smolvlm" else [tk.IMG_START, tk.IMG_END]
        vocab = tokenizer.get_vocab()
        missing = [t for t in names if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks the {self.name} image marker token(s) {missing}")
        a, b = (vocab[t] for t in names)
        if self.name == "smolvlm":
            return [a, b] + [img] * n + [a]
        return [a] + [img] * n + [b]

    def pixel_kwargs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model kwargs for a batch of one image per sample, pixel_values (B, 3, S, S)."""
        if self.name == "smolvlm":
            return {"pixel_values": pixel_values.unsqueeze(1)}
        return {"pixel_values": pixel_values}


ADAPTERS = {
    "instructvla_eagle": FamilyAdapter("eagle"),
    # transformers' own InternVL (InternViT vision tower): same prompt layout, ImageNet pixel statistics.
    "internvl": FamilyAdapter("eagle", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "smolvlm": FamilyAdapter("smolvlm"),
}


def adapter_for(hf: PreTrainedModel) -> FamilyAdapter:
    """The family adapter for a loaded model (by config.model_type)."""
    mt = hf.config.model_type
    if mt not in ADAPTERS:
        raise ValueError(f"unsupported backbone model_type {mt!r}; supported: {sorted(ADAPTERS)}")
    return ADAPTERS[mt]


def _cache_kwarg_name(module: nn.Module) -> str:
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def build_preset_config(preset: BackbonePreset, tokenizer: PreTrainedTokenizerBase):
    """A random-init HF config for `preset`, using `tokenizer`'s special-token ids."""
    vocab = max(len(tokenizer), preset.vocab_size)
    pad = tokenizer.pad_token_id
    eos = tokenizer.convert_tokens_to_ids(tk.IM_END)
    text = dict(
        vocab_size=vocab, hidden_size=preset.text_hidden, num_hidden_layers=preset.text_layers,
        num_attention_heads=preset.text_heads, num_key_value_heads=preset.text_kv_heads,
        intermediate_size=preset.text_mlp, max_position_embeddings=preset.max_positions,
        rope_theta=preset.rope_theta, pad_token_id=pad, eos_token_id=eos, bos_token_id=None,
    )
    vision = dict(
        hidden_size=preset.vision_hidden, num_hidden_layers=preset.vision_layers,
        num_attention_heads=preset.vision_heads, intermediate_size=preset.vision_mlp,
        image_size=preset.image_size, patch_size=preset.patch_size,
    )
    if preset.family == "eagle":
        text.update(model_type="qwen2", tie_word_embeddings=True)
        vision.update(model_type="siglip_vision_model", vision_use_head=False)
        return EagleConfig(
            text_config=text, vision_config=vision,
            image_token_id=tokenizer.convert_tokens_to_ids(tk.IMG_CONTEXT),
            image_seq_length=preset.num_image_tokens, downsample_ratio=0.5, projector_hidden_act="gelu",
            vision_feature_layer=-1, vision_feature_select_strategy="full", tie_word_embeddings=True,
        )
    from transformers import SmolVLMConfig

    text.update(model_type="llama", tie_word_embeddings=False, rms_norm_eps=1e-5)
    vision.update(model_type="smolvlm_vision")
    return SmolVLMConfig(
        text_config=text, vision_config=vision, scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids(tk.SMOL_IMAGE), pad_token_id=pad, tie_word_embeddings=False,
    )


class Backbone(nn.Module):
    """A HF image-text-to-text VLM plus its family adapter and tokenizer.

    Attributes: `hf` (the transformers model), `adapter`, `tokenizer`.
    """

    def __init__(self, hf: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.hf = hf
        self.adapter = adapter_for(hf)
        self.tokenizer = tokenizer
        self._cache_kw = _cache_kwarg_name(self.adapter.base_model(hf))
        self._attached: list = []  # MoLoRA objects hooked into this model (a list: not registered as submodules)
        self._row_hooks: list = []  # gradient-hook handles an InstructVLA put on the embedding matrices

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, seed: int | None = 0) -> Backbone:
        """Random-init backbone of a named preset with the offline tiny tokenizer."""
        preset = get_preset(name)
        tokenizer = tk.build_tiny_tokenizer(preset.tokenizer_vocab)
        config = build_preset_config(preset, tokenizer)
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                hf = AutoModelForImageTextToText.from_config(config)
        else:
            hf = AutoModelForImageTextToText.from_config(config)
        return cls(hf.float().eval(), tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Backbone:
        """Load a VLM (config.json, weights, tokenizer files) from a local directory, never from the hub."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"backbone directory {path} has no config.json")
        hf = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=dtype or torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return cls(hf.eval(), tokenizer)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config, weights and tokenizer in the standard HF layout."""
        self.hf.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    # ---- parts --------------------------------------------------------------------------------------------------
    @property
    def text_model(self) -> nn.Module:
        return self.adapter.text_model(self.hf)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.text_model.layers

    @property
    def hidden_size(self) -> int:
        return int(self.hf.config.text_config.hidden_size)

    @property
    def image_size(self) -> int:
        return self.adapter.image_size(self.hf)

    @property
    def num_image_tokens(self) -> int:
        return self.adapter.num_image_tokens(self.hf)

    @property
    def image_token_id(self) -> int:
        return int(self.hf.config.image_token_id)

    def image_token_ids(self) -> list[int]:
        return self.adapter.image_token_ids(self.hf, self.tokenizer)

    def input_embeddings(self) -> nn.Embedding:
        return self.hf.get_input_embeddings()

    def output_embeddings(self) -> nn.Linear:
        return self.hf.get_output_embeddings()

    def resize_embeddings(self, new_size: int) -> None:
        """Grow the embedding (and lm_head) to at least `new_size` rows; new rows random (no mean-resizing)."""
        if self.input_embeddings().weight.shape[0] < new_size:
            self.hf.resize_token_embeddings(new_size, mean_resizing=False)

    # ---- forward ------------------------------------------------------------------------------------------------
    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
    ):
        """Post-final-norm last hidden states (B, T, D) and the KV cache (or None)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if pixel_values is not None:
            kwargs.update(self.adapter.pixel_kwargs(pixel_values.to(self.hf.dtype)))
        if cache is not None:
            kwargs[self._cache_kw] = cache
        out = self.adapter.base_model(self.hf)(**kwargs)
        new_cache = getattr(out, self._cache_kw, None) if use_cache else None
        return out.last_hidden_state, new_cache

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM logits for hidden states (..., D)."""
        return self.output_embeddings()(hidden)
