"""Held-out VQA evaluation through the policy's chat mode on a tiny real corpus."""

import numpy as np
import pytest

from instructvla.eval.text_metrics import compute_text_metrics
from instructvla.eval.vqa import evaluate_vqa, load_vqa_records


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from instructvla.data.multimodal import MultimodalWriter

    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    with MultimodalWriter(root / "multimodal") as w:
        w.add(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
              [{"question": "What colour is the cube?", "answer": "red", "kind": "color"},
               {"question": "How many objects are there?", "answer": "two", "kind": "count"}], split="heldout")
        w.add(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
              [{"question": "Describe the table.", "answer": "a red cube and an apple", "kind": "caption"}],
              split="heldout")
        w.add(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
              [{"question": "Is there a mug?", "answer": "no", "kind": "exists"}], split="train")
    return root


def test_load_vqa_records(corpus):
    recs = load_vqa_records(corpus, "heldout")
    assert [r["kind"] for r in recs] == ["color", "count", "caption"]
    assert load_vqa_records(corpus, "heldout", limit=2)[-1]["kind"] == "count"
    with pytest.raises(ValueError, match=r"no records in split 'test' \(splits present: \['heldout', 'train'\]\)"):
        load_vqa_records(corpus, "test")


def test_evaluate_vqa_with_tiny_policy(corpus):
    from instructvla.policy import Policy

    recs = load_vqa_records(corpus, "heldout")
    seen = []
    res = evaluate_vqa(Policy.random_tiny(), recs, max_new_tokens=4, num_examples=2, on_answer=seen.append)
    assert seen == [0, 1, 2]
    preds = res["predictions"]
    assert len(preds) == 3 and all(isinstance(p["prediction"], str) for p in preds)
    # the reported metrics are exactly the text metrics of the recorded predictions
    expect = compute_text_metrics([p["prediction"] for p in preds], [p["answer"] for p in preds])
    assert res["overall"] == pytest.approx(expect)
    assert set(res["by_kind"]) == {"color", "count", "caption"} and res["by_kind"]["count"]["count"] == 1
    assert len(res["examples"]) == 2 and res["examples"][0]["image_png_b64"]
    with pytest.raises(ValueError, match="no records"):
        evaluate_vqa(None, [])


def test_ask_sends_only_the_scene_image_to_a_two_camera_policy():
    from instructvla.eval.vqa import ask
    from instructvla.model.vla import InstructVLA
    from instructvla.policy import Policy

    model = InstructVLA.from_preset("tiny", action_expert_overrides={"num_views": 2, "use_state": True})
    policy = Policy(model)
    assert policy.request_spec.wrist_camera
    sent = []
    infer = policy.infer

    def recording_infer(obs):
        sent.append(sorted(obs))
        return infer(obs)

    policy.infer = recording_infer
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert isinstance(ask(policy, image, "What colour is the cube?", max_new_tokens=3), str)
    assert sent == [["observation/image", "options", "prompt"]]  # no duplicated scene image as a fake wrist view
