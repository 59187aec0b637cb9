"""Prompt formats of method.md §3."""

import random

import pytest

from instructvla.data import prompts


def test_action_and_motion():
    conv = prompts.action_prompt("Pick up the Apple.")
    assert conv == [{"role": "user", "content": "What action should the robot take to pick up the apple?"},
                    {"role": "assistant", "content": ""}]
    conv = prompts.motion_prompt("pick up the apple", "move forward, close gripper")
    assert conv[0]["content"] == ("What action should the robot take to pick up the apple? "
                                  "Give both move primitive and action.")
    assert conv[1] == {"role": "assistant", "content": "move forward, close gripper"}


def test_caption_and_qa_two_turns():
    conv = prompts.caption_action_prompt("A table with an apple.", "pick the apple", rng=random.Random(0))
    assert [t["role"] for t in conv] == ["user", "assistant", "user", "assistant"]
    assert conv[0]["content"] in prompts.CAPTION_PROMPTS and len(prompts.CAPTION_PROMPTS) == 9
    assert conv[1]["content"] == "A table with an apple."
    assert conv[2]["content"] == "What action should the robot take to pick the apple?" and conv[3]["content"] == ""
    conv = prompts.qa_action_prompt("How many apples?", "One.", "pick the apple")
    assert conv[0]["content"] == "How many apples?" and conv[1]["content"] == "One." and conv[3]["content"] == ""


def test_instruction_response_and_vqa():
    conv = prompts.instruction_response_prompt("I'm hungry, anything sweet?", "I will pick up the apple.")
    assert conv[0]["content"] == ("What action should the robot take to I'm hungry, anything sweet? "
                                  "First answer my question.")
    assert conv[1]["content"] == "I will pick up the apple."
    assert prompts.thinking_prompt("I'm hungry")[0]["content"].endswith("First answer my question.")
    assert len(prompts.thinking_prompt("x")) == 1
    assert prompts.vqa_prompt("What colour?", "Red.")[1] == {"role": "assistant", "content": "Red."}
    # queries are the processor's job: no prompt contains latent tokens
    assert "new_token" not in str(conv)


def test_bad_input():
    with pytest.raises(ValueError):
        prompts.action_prompt("  ")
    with pytest.raises(ValueError):
        prompts.motion_prompt("pick", "")
    with pytest.raises(ValueError):
        prompts.vqa_prompt("q", " ")
