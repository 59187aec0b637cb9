"""Named backbone presets: tiny / small (CPU-trainable, random init) and base (Eagle2-2B shapes), per VLM family."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class BackbonePreset:
    """Shapes of a random-init VLM backbone.

    family:       "eagle" (InternVL class + SigLIP + Qwen2, pixel shuffle 0.5) or "smolvlm" (Idefics3-style + Llama).
    image_size:   VLM input side in pixels (square); patch_size divides it and (image_size/patch)/2 must be an integer.
    vision_*:     SigLIP-style vision tower sizes.
    text_*:       decoder LLM sizes; text_kv_heads <= text_heads.
    lora_rank / lora_alpha: default LoRA sizes for this scale (method: r=128, alpha=256 at base scale).
    tokenizer_vocab: BPE vocabulary size of the offline tiny tokenizer (ignored for a real backbone directory).
    vocab_size:   embedding rows (0 = the tokenizer's length); base pads to Qwen2.5's 151936 for realistic cost.
    """

    family: str
    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_mlp: int
    lora_rank: int
    lora_alpha: int
    tokenizer_vocab: int = 2048
    max_positions: int = 2048
    rope_theta: float = 1_000_000.0
    vocab_size: int = 0

    def __post_init__(self) -> None:
        if self.family not in ("eagle", "smolvlm"):
            raise ValueError(f"family must be 'eagle' or 'smolvlm', got {self.family!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if (self.image_size // self.patch_size) % 2:
            raise ValueError("image_size/patch_size must be even for pixel shuffle 0.5")
        if self.text_heads % self.text_kv_heads or self.text_hidden % self.text_heads:
            raise ValueError("text_heads must divide text_hidden and be a multiple of text_kv_heads")

    @property
    def num_image_tokens(self) -> int:
        """LLM tokens per image after pixel shuffle 0.5."""
        return (self.image_size // self.patch_size) ** 2 // 4


PRESETS: dict[str, BackbonePreset] = {
    # CPU seconds: 16 image tokens, ~0.3 M parameters.
    "tiny": BackbonePreset("eagle", 112, 14, 48, 2, 2, 96, 64, 2, 4, 2, 128, lora_rank=8, lora_alpha=16),
    "tiny-smolvlm": BackbonePreset("smolvlm", 112, 14, 48, 2, 2, 96, 64, 2, 4, 2, 128, lora_rank=8, lora_alpha=16),
    # CPU-trainable, a few M parameters: 36 image tokens.
    "small": BackbonePreset("eagle", 192, 16, 128, 4, 4, 512, 256, 4, 4, 2, 768, lora_rank=16, lora_alpha=32,
                            tokenizer_vocab=4096),
    # Eagle2-2B shapes: SigLIP-so400m/14 @448 -> 256 tokens; Qwen2.5-1.5B. GPU only.
    "base": BackbonePreset("eagle", 448, 14, 1152, 27, 16, 4304, 1536, 28, 12, 2, 8960, lora_rank=128, lora_alpha=256,
                           tokenizer_vocab=8192, max_positions=32768, vocab_size=151936),
}


def get_preset(name: str) -> BackbonePreset:
    """Look a preset up by name; unknown names raise with a suggestion."""
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, PRESETS, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown backbone preset {name!r}{extra}; known: {sorted(PRESETS)}")
    return PRESETS[name]
