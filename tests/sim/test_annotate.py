"""VLA-IT annotations: schema, validation, train-split-only wording."""

import copy
import json

import numpy as np
import pytest

from instructvla.sim import instructions as I
from instructvla.sim import multimodal as M
from instructvla.sim.annotate import annotate_episode, validate_annotation
from instructvla.sim.scene_graph import ObjectState, SceneGraph

CAB = {"top": 0.0, "middle": 0.0, "bottom": 0.0}


def sg(objs, family, args, drawers=None, fixtures=("plate",)):
    o = [ObjectState(n, (-0.2 + 0.07 * i, -0.2 + 0.09 * i, 0.03)) for i, n in enumerate(objs)]
    o += [ObjectState(f, (0.05, 0.12 * k, 0.0), is_fixture=True) for k, f in enumerate(fixtures)]
    return SceneGraph(objects=o, drawers=drawers or {}, task_family=family, task_args=args)


SCENES = [
    sg(["coke can", "apple", "sponge"], "pick", {"target": "coke can"}),
    sg(["lemon", "spoon", "water bottle"], "place_on", {"target": "lemon", "destination": "plate"}),
    sg(["spoon", "apple"], "place_on", {"target": "spoon", "destination": "plate"}),
    sg(["block L", "block V", "apple"], "move_near", {"target": "block L", "destination": "block V"}),
    sg(["apple", "mug"], "move_near", {"target": "apple", "destination": "mug"}),
    sg(["eggplant", "coke can"], "place_in", {"target": "eggplant", "destination": "bowl"}, fixtures=("bowl",)),
    sg(["block A", "block V"], "stack", {"target": "block A", "destination": "block V"}),
    sg(["apple", "mug"], "close_drawer", {"drawer": "top"}, {**CAB, "top": 0.15}, ("cabinet",)),
    sg(["orange"], "open_drawer", {"drawer": "bottom"}, CAB, ("cabinet",)),
    sg(["apple"], "drawer_then_place", {"drawer": "top", "target": "apple"}, CAB, ("cabinet",)),
]


def test_schema_and_determinism():
    rec = annotate_episode(SCENES[0], np.random.default_rng(0), episode_index=4)
    assert list(rec) == ["episode_index", "frame_index", "caption", "qa", "command_rewriting", "context_creation"]
    assert rec["episode_index"] == 4 and rec["frame_index"] == 0
    assert "coke can" in rec["caption"] and "robot" not in rec["caption"].lower()
    assert len(rec["qa"]) == 3 and all(set(q) == {"question", "answer"} for q in rec["qa"])
    assert rec["command_rewriting"] and rec["context_creation"]
    for item in rec["command_rewriting"] + rec["context_creation"]:
        assert set(item) == {"instruction", "response"}
        assert "pick up the coke can" in item["response"]
    assert rec == annotate_episode(SCENES[0], np.random.default_rng(0), episode_index=4)
    json.dumps(rec)  # JSON-serialisable as is


def test_every_scene_gets_cr_and_cc_and_replies_name_next_action():
    for s in SCENES:
        rec = annotate_episode(s, np.random.default_rng(1))
        validate_annotation(rec)
        assert rec["context_creation"], s.task_family
        nxt = I.next_action(s)
        assert all(nxt in c["response"] for c in rec["context_creation"] + rec["command_rewriting"])
    dtp = annotate_episode(SCENES[-1], np.random.default_rng(0))
    assert all("open the top drawer" in c["response"] for c in dtp["context_creation"])


def test_heldout_templates_never_appear_over_many_seeds():
    held_instr = [I.template_regex(t.text) for t in I.all_templates("heldout")]
    held_instr += [I.template_regex(t) for temps in I.ATOMIC_TEMPLATES.values() for t in temps["heldout"]]
    held_q = [I.template_regex(t) for t in M.question_templates("heldout")]
    train_q = [I.template_regex(t) for t in M.question_templates("train")]
    families_seen = set()
    for s in SCENES:
        for seed in range(25):
            rec = annotate_episode(s, np.random.default_rng(seed), num_qa=6, num_cr=4, num_cc=4)
            for item in rec["command_rewriting"] + rec["context_creation"]:
                assert not any(r.match(item["instruction"]) for r in held_instr), item
                families_seen.add(item["instruction"][:12])
            for qa in rec["qa"]:
                assert not any(r.match(qa["question"]) for r in held_q), qa
                assert any(r.match(qa["question"]) for r in train_q), qa
    assert len(families_seen) > 30  # the wording really varies


def test_motion_field_from_states():
    states = np.zeros((6, 8))
    states[:, 6] = 1.0
    states[:, 0] = 0.03 * np.arange(6)
    rec = annotate_episode(SCENES[0], np.random.default_rng(0), states=states)
    assert rec["motion"] == ["move forward"] * 4 + ["stop", "stop"]


def test_validate_annotation_names_the_bad_field():
    good = annotate_episode(SCENES[1], np.random.default_rng(0))
    assert validate_annotation(copy.deepcopy(good)) == good
    cases = [
        (lambda r: r.pop("caption"), "missing field.*caption"),
        (lambda r: r.update(caption="  "), "'caption'"),
        (lambda r: r.update(episode_index=-1), "'episode_index'"),
        (lambda r: r.update(frame_index=True), "'frame_index'"),
        (lambda r: r.update(qa="no"), "'qa' must be a list"),
        (lambda r: r["qa"].append({"question": "Why?"}), r"qa\[3\]"),
        (lambda r: r["command_rewriting"].append({"instruction": "x", "response": ""}), r"command_rewriting\[\d\]\.response"),
        (lambda r: r.update(extra=1), "unknown field"),
        (lambda r: r.update(motion=["stop", 3]), "'motion'"),
    ]
    for mutate, match in cases:
        bad = copy.deepcopy(good)
        mutate(bad)
        with pytest.raises(ValueError, match=match):
            validate_annotation(bad)
    with pytest.raises(ValueError, match="dict"):
        validate_annotation([good])


def test_bad_arguments():
    with pytest.raises(ValueError, match="episode_index"):
        annotate_episode(SCENES[0], np.random.default_rng(0), episode_index=-3)
    with pytest.raises(ValueError, match="task_family"):
        annotate_episode(sg(["apple"], "dance", {"target": "apple"}), np.random.default_rng(0))
