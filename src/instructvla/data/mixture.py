"""Per-sample prompt sampling for robot data: stage 1 (action / motion) and the stage-2 VLA-IT mixture.

Stage 1: plain action prompt; with probability `motion_fraction` (0.2) the language-motion variant when the frame
has a move primitive.
Stage 2 (method.md §4.3), per sample: 40% plain action (of which 20% with the motion primitive), 20% caption-or-QA
two-turn, 20% context creation, 20% command rewriting. A type the episode's annotation lacks falls back to plain.

Annotation record (meta/vla_it.jsonl): {"caption": str, "qa": [{"question", "answer"}],
"command_rewriting": [{"instruction", "response"}], "context_creation": [{"instruction", "response"}]}.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from instructvla.data import prompts
from instructvla.types import Turn

PROMPT_TYPES = ("action", "motion", "caption_qa", "context", "rewrite")


@dataclass
class MixtureConfig:
    """Stage-2 sampling ratios (action + caption_qa + context + rewrite must sum to 1).

    motion_fraction: share of plain-action samples (in both stages) that use the language-motion prompt.
    """

    action: float = 0.4
    caption_qa: float = 0.2
    context: float = 0.2
    rewrite: float = 0.2
    motion_fraction: float = 0.2

    def __post_init__(self) -> None:
        for name in ("action", "caption_qa", "context", "rewrite", "motion_fraction"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"MixtureConfig.{name} must be in [0, 1], got {v!r}")
        total = self.action + self.caption_qa + self.context + self.rewrite
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"MixtureConfig: action + caption_qa + context + rewrite must sum to 1, got {total:.6g}")


def _plain(instruction: str, primitive: str | None, rng: random.Random, cfg: MixtureConfig) -> tuple[list[Turn], str]:
    if primitive and primitive.strip() and rng.random() < cfg.motion_fraction:
        return prompts.motion_prompt(instruction, primitive), "motion"
    return prompts.action_prompt(instruction), "action"


def sample_conversation(
    stage: int,
    instruction: str,
    rng: random.Random,
    primitive: str | None = None,
    annotation: Mapping[str, Any] | None = None,
    cfg: MixtureConfig | None = None,
) -> tuple[list[Turn], str]:
    """Draw one robot-sample conversation. Returns (turns, prompt_type) with prompt_type in `PROMPT_TYPES`.

    stage 0 and 1 use only action/motion prompts; stage 2 the full mixture (needs `annotation` for the VLA-IT
    types; without it every draw falls back to plain action).
    """
    cfg = cfg or MixtureConfig()
    if stage not in (0, 1, 2):
        raise ValueError(f"stage must be 0, 1 or 2, got {stage!r}")
    if stage < 2:
        return _plain(instruction, primitive, rng, cfg)
    u = rng.random()
    ann = annotation or {}
    if u < cfg.action:
        return _plain(instruction, primitive, rng, cfg)
    u -= cfg.action
    if u < cfg.caption_qa:
        options: list[tuple[str, Any]] = []
        if isinstance(ann.get("caption"), str) and ann["caption"].strip():
            options.append(("caption", ann["caption"]))
        qa = [q for q in ann.get("qa") or [] if q.get("question") and q.get("answer")]
        if qa:
            options.append(("qa", qa))
        if options:
            kind, value = options[rng.randrange(len(options))]
            if kind == "caption":
                return prompts.caption_action_prompt(value, instruction, rng=rng), "caption_qa"
            item = value[rng.randrange(len(value))]
            return prompts.qa_action_prompt(item["question"], item["answer"], instruction), "caption_qa"
        return _plain(instruction, primitive, rng, cfg)
    u -= cfg.caption_qa
    field, kind = ("context_creation", "context") if u < cfg.context else ("command_rewriting", "rewrite")
    items = [it for it in ann.get(field) or [] if it.get("instruction") and it.get("response")]
    if items:
        item = items[rng.randrange(len(items))]
        return prompts.instruction_response_prompt(item["instruction"], item["response"]), kind
    return _plain(instruction, primitive, rng, cfg)
