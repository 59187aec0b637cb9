"""Stage-1/2 prompt sampling ratios (statistical, seeded) and fallbacks."""

import random
from collections import Counter

import pytest

from instructvla.data.mixture import MixtureConfig, sample_conversation

ANN = {"caption": "A table.", "qa": [{"question": "How many?", "answer": "Two."}],
       "command_rewriting": [{"instruction": "Grab the fruit.", "response": "I will pick up the apple."}],
       "context_creation": [{"instruction": "I'm hungry.", "response": "I will pick up the apple."}]}
N = 4000


def _counts(stage, annotation, primitive="move up", seed=0):
    rng = random.Random(seed)
    return Counter(sample_conversation(stage, "pick the apple", rng, primitive, annotation)[1] for _ in range(N))


def test_stage2_ratios():
    c = _counts(2, ANN)
    assert abs(c["action"] / N - 0.32) < 0.03 and abs(c["motion"] / N - 0.08) < 0.02
    for k in ("caption_qa", "context", "rewrite"):
        assert abs(c[k] / N - 0.2) < 0.03, (k, c)


def test_stage1_and_fallbacks():
    c = _counts(1, ANN)
    assert set(c) == {"action", "motion"} and abs(c["motion"] / N - 0.2) < 0.03
    assert set(_counts(1, None, primitive=None)) == {"action"}
    c = _counts(2, {"caption": "A table."})  # CC / CR missing -> plain
    assert c["context"] == c["rewrite"] == 0 and abs(c["caption_qa"] / N - 0.2) < 0.03
    assert set(_counts(2, None)) <= {"action", "motion"}


def test_seeded_and_formats():
    a = [sample_conversation(2, "pick", random.Random(5), "up", ANN) for _ in range(3)]
    b = [sample_conversation(2, "pick", random.Random(5), "up", ANN) for _ in range(3)]
    assert a == b
    rng = random.Random(1)
    for _ in range(200):
        conv, kind = sample_conversation(2, "pick the apple", rng, "move up", ANN)
        assert conv[-1]["role"] == "assistant"
        if kind == "context":
            assert conv[1]["content"] == "I will pick up the apple." and "First answer" in conv[0]["content"]
        if kind == "caption_qa":
            assert len(conv) == 4 and conv[3]["content"] == ""


def test_config_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        MixtureConfig(action=0.5)
    with pytest.raises(ValueError, match="motion_fraction"):
        MixtureConfig(motion_fraction=1.5)
    with pytest.raises(ValueError, match="stage"):
        sample_conversation(3, "x", random.Random(0))
