"""Every prompt format of method.md §3 as functions returning chat turns (`types.Turn`).

Images are implicit: they go before the first user turn's text (the model processor inserts them). For action
samples the LAST turn is the assistant's and the processor appends " " + the latent query tokens to it, so these
functions never add query tokens (assistant content is "" for a plain action prompt). No system turn is added: the
processor owns the system message ("You are a helpful assistant.").
"""

from __future__ import annotations

import random

from instructvla.types import Turn

ACTION_TEMPLATE = "What action should the robot take to {instruction}?"
MOTION_SUFFIX = " Give both move primitive and action."
ANSWER_SUFFIX = " First answer my question."
# 9 "describe the table, ignore the robot" caption prompts (the first is the VLA-IT validation prompt).
CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe what's on the table. Don't mention the robot arm.",
    "Describe the table and the objects on it, ignoring the robot.",
    "What is on the table? Leave out the robot arm.",
    "Give a short description of the scene on the table, without the robot.",
    "List and describe the items on the table. Do not talk about the robot.",
    "Describe the tabletop scene. Ignore the robot arm.",
    "What objects can you see on the table? Don't describe the robot.",
    "Write a brief caption of the table and what lies on it, excluding the robot arm.",
    "Summarize what is placed on the table, not mentioning the robot.",
)


def clean_instruction(instruction: str, lower: bool = True) -> str:
    """Strip whitespace and trailing punctuation (. ! ?); lower-case when `lower` (atomic instructions)."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
    text = " ".join(instruction.split()).rstrip(" .!?")
    if not text:
        raise ValueError(f"instruction {instruction!r} is only punctuation")
    return text.lower() if lower else text


def action_question(instruction: str) -> str:
    """`What action should the robot take to {instruction}?` with the instruction lower-cased."""
    return ACTION_TEMPLATE.format(instruction=clean_instruction(instruction))


def action_prompt(instruction: str) -> list[Turn]:
    """Plain action prompt (stage 1/2); the assistant answers only with the latent queries."""
    return [Turn(role="user", content=action_question(instruction)), Turn(role="assistant", content="")]


def motion_prompt(instruction: str, primitive: str) -> list[Turn]:
    """Language-motion prompt: the assistant states the move primitive before the queries."""
    if not primitive or not primitive.strip():
        raise ValueError("motion_prompt needs a non-empty move primitive")
    return [Turn(role="user", content=action_question(instruction) + MOTION_SUFFIX),
            Turn(role="assistant", content=primitive.strip())]


def caption_action_prompt(caption: str, instruction: str, prompt_index: int | None = None,
                          rng: random.Random | None = None) -> list[Turn]:
    """Two turns: a caption prompt (one of `CAPTION_PROMPTS`) -> caption; then the plain action prompt."""
    if prompt_index is None:
        prompt_index = (rng or random).randrange(len(CAPTION_PROMPTS))
    return [Turn(role="user", content=CAPTION_PROMPTS[prompt_index]), Turn(role="assistant", content=_nonempty(caption)),
            *action_prompt(instruction)]


def qa_action_prompt(question: str, answer: str, instruction: str) -> list[Turn]:
    """Two turns: a QA question -> answer; then the plain action prompt."""
    return [Turn(role="user", content=_nonempty(question)), Turn(role="assistant", content=_nonempty(answer)),
            *action_prompt(instruction)]


def instruction_response_prompt(instruction: str, response: str) -> list[Turn]:
    """Context creation / command rewriting: free-form instruction (case kept) -> response, then the queries."""
    question = ACTION_TEMPLATE.format(instruction=clean_instruction(instruction, lower=False)) + ANSWER_SUFFIX
    return [Turn(role="user", content=question), Turn(role="assistant", content=_nonempty(response))]


def thinking_prompt(instruction: str) -> list[Turn]:
    """Inference with thinking: the user turn only; the model generates the reply (then queries are appended)."""
    question = ACTION_TEMPLATE.format(instruction=clean_instruction(instruction, lower=False)) + ANSWER_SUFFIX
    return [Turn(role="user", content=question)]


def vqa_prompt(question: str, answer: str) -> list[Turn]:
    """Pure VQA / caption sample (multimodal data, no action)."""
    return [Turn(role="user", content=_nonempty(question)), Turn(role="assistant", content=_nonempty(answer))]


def _nonempty(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected a non-empty string, got {text!r}")
    return text.strip()
