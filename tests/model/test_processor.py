"""Sample -> tensors: token layout, labels, query positions, multi-view images, errors naming the problem."""

import numpy as np
import pytest
import torch

from instructvla.model.processor import IGNORE_INDEX, action_prompt
from instructvla.model.vla import InstructVLA


@pytest.fixture(scope="module")
def model():
    return InstructVLA.from_preset("tiny", num_queries=8, image_size=64)


def _sample(reply="", has_action=True, v=1, size=64, **extra):
    rng = np.random.default_rng(0)
    s = {
        "images": rng.integers(0, 256, (v, size, size, 3), dtype=np.uint8),
        "has_action": has_action,
        "conversation": [{"role": "user", "content": action_prompt("Pick up the apple.")},
                         {"role": "assistant", "content": reply}],
    }
    if has_action:
        s["actions"] = np.zeros((16, 7), np.float32)
    s.update(extra)
    return s


def test_action_prompt():
    assert action_prompt("Pick up the Apple.") == "What action should the robot take to pick up the apple?"
    assert action_prompt("x", think=True).endswith("? First answer my question.")
    with pytest.raises(ValueError, match="empty"):
        action_prompt("  ")


def test_layout_labels_queries(model):
    p = model.processor
    enc = p.encode(_sample(reply="I will pick it up."))
    ids, labels = enc["input_ids"].tolist(), enc["labels"].tolist()
    q = enc["query_positions"].tolist()
    assert [ids[i] for i in q] == model.query_ids
    assert ids.count(model.backbone.image_token_id) == model.backbone.num_image_tokens
    # Supervised = the assistant reply, a space, the queries and <|im_end|>; nothing else.
    sup = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    text = model.tokenizer.decode(sup)
    assert text.startswith("I will pick it up. <new_token_0>") and text.endswith("<new_token_7><|im_end|>")
    assert labels[q[-1] + 1] == p.im_end
    assert model.tokenizer.decode(ids).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                                  "<|im_start|>user\n<img><IMG_CONTEXT>")
    # Inference stops right after the queries.
    inf = p.encode(_sample(), inference=True)
    assert inf["input_ids"][-1].item() == model.query_ids[-1]


def test_plain_action_has_no_space_before_queries(model):
    enc = model.processor.encode(_sample(reply=""))
    q0 = enc["query_positions"][0].item()
    assert enc["input_ids"][q0 - 1].item() == model.processor._role["assistant"][-1]


def test_multimodal_sample_has_no_queries(model):
    s = _sample(reply="A red apple.", has_action=False)
    enc = model.processor.encode(s)
    assert enc["query_positions"] is None
    assert not set(model.query_ids) & set(enc["input_ids"].tolist())
    batch = model.processor([s, _sample()])
    assert batch["has_action"].tolist() == [False, True]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["pixel_values"].shape == (2, 3, 112, 112)
    assert batch["dino_images"].shape == (2, 1, 3, 64, 64)
    assert batch["actions"].shape == (2, 16, 7) and batch["action_is_pad"][0].all()


def test_two_views_side_by_side():
    m = InstructVLA.from_preset("tiny", num_queries=4, image_size=32, action_expert_overrides={"num_views": 2})
    s = _sample(v=2, size=32)
    s["images"][0] = 0
    s["images"][1] = 255
    px = m.processor.encode(s)["pixel_values"]
    assert px.shape == (3, 112, 112)
    assert px[:, :, :50].max() < -0.9 and px[:, :, 62:].min() > 0.9  # left = view 0 (black), right = view 1
    assert m.processor([s])["dino_images"].shape == (1, 2, 3, 64, 64)


@pytest.mark.parametrize(
    ("change", "err", "match"),
    [
        ({"images": np.zeros((1, 32, 64, 3), np.uint8)}, ValueError, "image size is 32x64"),
        ({"images": np.zeros((1, 64, 64, 3), np.float32)}, TypeError, "uint8"),
        ({"images": np.zeros((64, 64, 3), np.uint8)}, ValueError, r"shape \(V, H, W, 3\)"),
        ({"images": np.zeros((2, 64, 64, 3), np.uint8)}, ValueError, "2 views"),
        ({"state": np.array([np.nan] * 8, np.float32)}, ValueError, "state contains NaN"),
        ({"state": np.zeros(3, np.float32)}, ValueError, "state must have shape"),
        ({"actions": np.full((16, 7), np.nan, np.float32)}, ValueError, "actions contain NaN"),
        ({"actions": np.zeros((8, 7), np.float32)}, ValueError, "actions must have shape"),
        ({"conversation": [{"role": "user", "content": "hi"}]}, ValueError, "missing query tokens"),
        ({"conversation": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "<new_token_0>"}]},
         ValueError, "already contains latent query tokens"),
        ({"conversation": [{"role": "robot", "content": "x"}]}, ValueError, "role"),
    ],
)
def test_errors_name_the_problem(model, change, err, match):
    s = _sample()
    s.update(change)
    with pytest.raises(err, match=match):
        model.processor.encode(s)


def test_truncated_action_sample_is_an_error(model):
    long = " ".join(["apple"] * 600)
    with pytest.raises(ValueError, match="missing query tokens.*truncated"):
        model.processor.encode(_sample(reply=long))
    enc = model.processor.encode(_sample(reply=long, has_action=False))  # text-only samples may be cut
    assert len(enc["input_ids"]) == model.config.max_length


def test_collate_mixed_state_errors(model):
    a = model.processor.encode(_sample(state=np.zeros(8, np.float32)))
    b = model.processor.encode(_sample())
    with pytest.raises(ValueError, match="some samples in the batch have 'state'"):
        model.processor.collate([a, b])
    assert torch.equal(model.processor.collate([a, a])["state"], torch.zeros(2, 8))


def test_text_samples_need_no_state_and_take_any_view_count():
    """Only action samples feed the action expert: text samples (VQA, chat, thinking) need neither num_views views
    nor the proprio state, and batch together with action samples."""
    m = InstructVLA.from_preset("tiny", num_queries=4, image_size=32,
                                action_expert_overrides={"num_views": 2, "use_state": True})
    p = m.processor
    vqa = _sample(reply="A red apple.", has_action=False, v=1, size=32)
    enc = p.encode(vqa)
    assert "state" not in enc and enc["pixel_values"].shape == (3, 112, 112)
    gen = p.encode({"images": vqa["images"], "conversation": [{"role": "user", "content": "What is this?"}]},
                   generation_prompt=True)
    assert gen["input_ids"][-1].item() != p.im_end and "state" not in gen
    act = _sample(v=2, size=32, state=np.ones(8, np.float32))
    batch = p([vqa, act])
    assert batch["has_action"].tolist() == [False, True]
    assert batch["dino_images"].shape == (2, 2, 3, 64, 64) and not batch["dino_images"][0].any()
    assert torch.equal(batch["dino_images"][1:], p([act])["dino_images"])
    assert torch.equal(batch["state"], torch.stack([torch.zeros(8), torch.ones(8)]))
    out = m(batch, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in out.values()) and out["fm_loss"] > 0
    # the action expert's inputs stay required for action samples
    with pytest.raises(ValueError, match="1 views, the model expects num_views=2"):
        p.encode(_sample(v=1, size=32, state=np.ones(8, np.float32)))
    with pytest.raises(ValueError, match="state is missing"):
        p.encode(_sample(v=2, size=32))
    with pytest.raises(ValueError, match="has no views"):
        p.encode(_sample(has_action=False, v=0, size=32))
