"""Multimodal VQA/caption records from scene graphs: answers, splits, normalisation, camera agreement."""

import numpy as np
import pytest

from instructvla.sim import multimodal as M
from instructvla.sim.instructions import template_regex
from instructvla.sim.scene_graph import ObjectState, SceneGraph


def scene(drawers=None):
    objs = [
        ObjectState("apple", (-0.2, 0.0, 0.03)),
        ObjectState("coke can", (0.05, 0.0, 0.05)),
        ObjectState("block L", (-0.1, -0.2, 0.02)),
        ObjectState("plate", (-0.05, 0.2, 0.0), is_fixture=True),
        ObjectState("lemon", (-0.05, 0.2, 0.03), inside="plate"),
        ObjectState("orange", (0.15, 0.3, 0.1), inside="drawer:top"),
        ObjectState("cabinet", (0.12, 0.27, 0.0), is_fixture=True),
    ]
    return SceneGraph(objects=objs, drawers=drawers or {"top": 0.0, "middle": 0.2, "bottom": 0.0},
                      table_style="white table", task_family="pick", task_args={"target": "apple"})


def _qa(records):
    return {r["question"]: r["answer"] for r in records}


def test_answers_are_correct():
    recs = M.generate_multimodal_records(scene(), np.random.default_rng(0), "train", max_records=None)
    qa = _qa(recs)
    assert recs[0]["kind"] == "caption"
    assert qa["What color is the apple?"] == "red" or qa["What is the color of the apple?"] == "red"
    lr = qa.get("Is the coke can to the left or to the right of the apple?")
    assert lr == "right" or qa["Is the apple to the left or to the right of the coke can?"] == "left"
    closer = qa.get("Which is closer to the camera, the apple or the coke can?")
    assert (closer or qa["Which is closer to the camera, the coke can or the apple?"]) == "coke can"
    assert qa["Is the top drawer open or closed?"] == "closed"
    assert qa["Is the middle drawer open or closed?"] == "open"
    assert qa["What letter is printed on the blue block?"] == "L"
    assert qa["What color is the block with the letter L?"] == "blue"
    assert qa["What is on the plate?"] == "lemon"
    counts = {q: a for q, a in qa.items() if q.startswith(("How many", "Count"))}
    # the orange is in the closed top drawer: not visible, not counted
    assert "four" in {counts.get("How many objects are on the table?"), counts.get("Count the objects on the table.")}
    assert "two" in {counts.get("How many fruits are on the table?"), counts.get("Count the fruits on the table.")}
    assert not any("orange" in q for q in qa)
    assert all(r["answer"] for r in recs)
    kinds = {r["kind"] for r in recs}
    assert {"color", "count", "left_right", "front_behind", "drawer", "category", "letter", "exists",
            "receptacle", "caption"} <= kinds


def test_open_drawer_contents_become_visible():
    qa = _qa(M.generate_multimodal_records(scene({"top": 0.2}), np.random.default_rng(0), max_records=None))
    assert any("orange" in q for q in qa)
    assert "The top drawer is open with an orange inside." in M.caption(scene({"top": 0.2}), np.random.default_rng(0))
    bowl = SceneGraph(objects=[ObjectState("bowl", (0, 0, 0), is_fixture=True), ObjectState("plum", (0, 0, 0.03), inside="bowl")])
    qa = _qa(M.generate_multimodal_records(bowl, np.random.default_rng(0), max_records=None))
    assert qa["What is in the bowl?"] == "plum"
    assert "brown bowl holding a purple plum" in M.caption(bowl, np.random.default_rng(0))


def test_caption_mentions_objects_not_robot():
    text = M.caption(scene(), np.random.default_rng(1))
    for word in ("red apple", "coke can", "blue block with the letter L", "plate with a yellow lemon on it",
                 "white table", "cabinet", "middle drawer is open"):
        assert word in text, (word, text)
    assert "orange" not in text and "robot" not in text


def test_splits_use_their_own_templates_and_are_disjoint():
    train = set(M.question_templates("train"))
    held = set(M.question_templates("heldout"))
    assert train and held and not train & held
    assert set(M.QUESTION_TEMPLATES) == set(M.KINDS)
    train_re = [template_regex(t) for t in train]
    held_re = [template_regex(t) for t in held]
    for seed in range(5):
        for split, own, other in (("train", train_re, held_re), ("heldout", held_re, train_re)):
            for r in M.generate_multimodal_records(scene(), np.random.default_rng(seed), split, max_records=None):
                assert any(x.match(r["question"]) for x in own), (split, r)
                assert not any(x.match(r["question"]) for x in other), (split, r)


def test_record_budget_and_kind_round_robin():
    recs = M.generate_multimodal_records(scene(), np.random.default_rng(3), max_records=6)
    assert len(recs) == 6
    assert len({r["kind"] for r in recs}) == 6  # no kind repeats before every kind had a turn
    assert all(set(r) == {"question", "answer", "kind"} for r in recs)
    assert recs == M.generate_multimodal_records(scene(), np.random.default_rng(3), max_records=6)


def test_answer_normalize():
    assert M.answer_normalize("The Coke can.") == "coke can"
    assert M.answer_normalize("2") == "two" and M.answer_normalize("Two!") == "two"
    assert M.answer_normalize("A") == "a" and M.answer_normalize("a") == "a"
    assert M.exact_match("It's open", "its open")
    assert not M.exact_match("left", "right")
    with pytest.raises(TypeError):
        M.answer_normalize(3)


def test_camera_matches_the_simulator():
    mujoco = pytest.importorskip("mujoco")
    scene_mod = pytest.importorskip("instructvla.sim.scene")
    spec = scene_mod.build_spec()
    cam = spec.camera("primary")
    assert np.allclose(cam.pos, M.CAMERA_POS, atol=1e-6)
    look = np.zeros(3)
    mujoco.mju_rotVecQuat(look, np.array([0.0, 0.0, -1.0]), np.asarray(cam.quat, float))
    expected = np.asarray(M.CAMERA_LOOK_AT) - np.asarray(M.CAMERA_POS)
    assert np.allclose(look, expected / np.linalg.norm(expected), atol=1e-4)
