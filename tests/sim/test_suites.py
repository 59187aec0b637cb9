"""Benchmark suites: structure, scene/instruction compatibility, env construction, scoring arithmetic."""

import json
import math

import numpy as np
import pytest

from instructvla.sim import instructions as I
from instructvla.sim import suites as S
from instructvla.sim.scene_graph import ObjectState, SceneGraph


def test_instruct_suite_structure():
    suite = S.get_suite("instruct")
    seen = [t for t in suite if t.split == "seen"]
    held = [t for t in suite if t.split == "heldout"]
    assert 20 <= len(seen) <= 40 and len(seen) == len(held)
    assert len({t.task_id for t in seen}) == len(seen)
    assert {t.category for t in seen} == {"aggregation", "situated"}
    assert sum(t.category == "situated" for t in seen) >= 10 and sum(t.category == "aggregation" for t in seen) >= 10
    by_id = {t.task_id: t for t in seen}
    for h in held:
        s = by_id[h.task_id]
        assert (h.category, h.family_id, h.spec) == (s.category, s.family_id, s.spec)
        assert S.episode_seeds(h) == S.episode_seeds(s)  # same scenes, only the wording differs
        assert h.template_split == "heldout" and s.template_split == "train"
    families = {t.family_id for t in seen}
    assert {"paraphrase", "attribute", "ocr", "multilingual", "typos", "intent", "tool_use", "negation", "subtask",
            "commonsense"} <= families
    assert len(set(S.list_suite_tasks())) == len(suite)


def test_atomic_and_quick_suites():
    atomic = S.get_suite("atomic")
    from instructvla.sim import tasks as T

    fams = {T.get_task(t.spec).family for t in atomic}
    assert {"pick", "place_on", "move_near", "open_drawer", "close_drawer", "stack", "drawer_then_place"} <= fams
    assert all(t.family_id == "atomic" and t.category == "atomic" and t.split == "seen" for t in atomic)
    for name, full in (("atomic-quick", "atomic"), ("instruct-quick", "instruct")):
        quick = S.get_suite(name)
        assert 0 < len(quick) < len(S.get_suite(full))
        assert {t.key for t in quick} <= {t.key for t in S.get_suite(full)}
        assert all(t.num_episodes == 3 for t in quick)
    iq = S.get_suite("instruct-quick", num_episodes=2, seeds=(0, 1))
    assert {t.category for t in iq} == {"aggregation", "situated"} and {t.split for t in iq} == {"seen", "heldout"}
    assert len(S.episode_seeds(iq[0])) == 4 and len(set(S.episode_seeds(iq[0]))) == 4
    with pytest.raises(KeyError, match="did you mean 'instruct'"):
        S.get_suite("instrct")


def _scene_graph(inst) -> SceneGraph:
    """The SceneGraph of a sampled task's initial layout (what the env reports after reset, minus settling)."""
    lay = inst.layout
    objs = [ObjectState(p.name, (p.x, p.y, 0.03), inside=f"drawer:{p.in_drawer}" if p.in_drawer else None)
            for p in lay.objects]
    for fx in ("plate", "bowl"):
        if getattr(lay, fx) is not None:
            objs.append(ObjectState(fx, (*getattr(lay, fx), 0.0), is_fixture=True))
    if lay.cabinet:
        objs.append(ObjectState("cabinet", (0.12, 0.27, 0.0), is_fixture=True))
    drawers = {d: lay.drawers.get(d, 0.0) for d in ("top", "middle", "bottom")} if lay.cabinet else {}
    return SceneGraph(objects=objs, drawers=drawers, table_style=lay.table_style, task_family=inst.spec.family,
                      task_args=dict(inst.args))


def test_every_suite_task_scene_suits_its_instruction():
    from instructvla.sim import tasks as T

    held = [I.template_regex(t.text) for t in I.all_templates("heldout")]
    for task in S.get_suite("instruct") + S.get_suite("atomic"):
        spec = S.task_spec(task)
        rendered = 0
        for seed in range(30):
            try:
                inst = T.sample_task(spec, np.random.default_rng(seed))
            except RuntimeError:  # the simulator's layout sampler occasionally gives up (reported to its owner)
                continue
            text = task.instruction(_scene_graph(inst), np.random.default_rng(seed))
            assert text.strip()
            if task.family_id not in ("atomic", "typos"):
                assert any(r.match(text) for r in held) == (task.split == "heldout"), (task.key, text)
            rendered += 1
        assert rendered >= 25, task.key


def test_make_task_env_renders_the_family_and_split():
    task = next(t for t in S.get_suite("instruct") if t.task_id == "situated/intent_thirsty_pick" and t.split == "heldout")
    env = S.make_task_env(task, render=False)
    try:
        held = [I.template_regex(t) for t in I.get_family("intent").heldout["thirsty/pick"]]
        for seed in S.episode_seeds(task)[:2]:
            _, info = env.reset(seed=seed)
            assert any(r.match(info["instruction"]) for r in held), info["instruction"]
            assert info["task"] == task.task_id
    finally:
        env.close()
    with pytest.raises(ValueError, match="instruction_fn"):
        S.make_task_env(task, instruction_fn=lambda sg, rng: "x")


def test_instruction_raises_clearly_for_an_unsuitable_scene():
    task = S.get_suite("instruct")[0]
    bad = SceneGraph(objects=[ObjectState("apple", (0, 0, 0))], task_family="close_drawer", task_args={"drawer": "top"},
                     drawers={"top": 0.0})
    neg = S.InstructTask("situated/x", "situated", "subtask", {"family": "close_drawer"})
    with pytest.raises(RuntimeError, match="does not suit"):
        neg.instruction(bad, np.random.default_rng(0))
    assert task.instruction  # bound method usable as instruction_fn


def test_instruct_task_validation():
    with pytest.raises(ValueError, match="category"):
        S.InstructTask("x", "fun", "intent", "pick/apple")
    with pytest.raises(ValueError, match="family 'intent' is 'situated'"):
        S.InstructTask("x", "aggregation", "intent", "pick/apple")
    with pytest.raises(ValueError, match="split"):
        S.InstructTask("x", "situated", "intent", "pick/apple", split="test")
    with pytest.raises(ValueError, match="num_episodes"):
        S.InstructTask("x", "situated", "intent", "pick/apple", num_episodes=0)
    with pytest.raises(KeyError, match="unknown template family"):
        S.InstructTask("x", "situated", "intnt", "pick/apple")
    with pytest.raises(ValueError, match="spec"):
        S.InstructTask("x", "situated", "intent", {"targets": ("apple",)})


# ------------------------------------------------------------------------------------------------ scoring

RESULTS = [
    # seen: aggregation a1 = 1/2, a2 = 1/1 -> 0.75; situated s1 = 0/2 -> 0.0; overall 0.375
    {"task_id": "a1", "category": "aggregation", "split": "seen", "success": True},
    {"task_id": "a1", "category": "aggregation", "split": "seen", "success": False},
    {"task_id": "a2", "category": "aggregation", "split": "seen", "success": 1},
    {"task_id": "s1", "category": "situated", "split": "seen", "success": 0},
    {"task_id": "s1", "category": "situated", "split": "seen", "success": False},
    # heldout: aggregation a1 = 1/4 -> 0.25; situated s1 = 2/3, s2 = 0/1 -> 1/3; overall (0.25 + 1/3) / 2
    {"task_id": "a1", "category": "aggregation", "split": "heldout", "success": np.bool_(True)},
    *[{"task_id": "a1", "category": "aggregation", "split": "heldout", "success": False}] * 3,
    *[{"task_id": "s1", "category": "situated", "split": "heldout", "success": 1.0}] * 2,
    {"task_id": "s1", "category": "situated", "split": "heldout", "success": 0.0},
    {"task_id": "s2", "category": "situated", "split": "heldout", "success": False},
]


def test_score_suite_arithmetic():
    sc = S.score_suite(RESULTS)
    assert sc["seen"]["tasks"] == {"a1": 0.5, "a2": 1.0, "s1": 0.0}
    assert sc["seen"]["categories"] == {"aggregation": 0.75, "situated": 0.0}
    assert sc["seen"]["overall"] == pytest.approx(0.375)
    assert sc["seen"]["episodes"] == 5
    assert sc["heldout"]["tasks"] == pytest.approx({"a1": 0.25, "s1": 2 / 3, "s2": 0.0})
    assert sc["heldout"]["categories"] == pytest.approx({"aggregation": 0.25, "situated": 1 / 3})
    assert sc["heldout"]["overall"] == pytest.approx((0.25 + 1 / 3) / 2)
    assert sc["overall"] == pytest.approx((0.375 + (0.25 + 1 / 3) / 2) / 2)
    only_seen = S.score_suite(RESULTS[:5])
    assert "heldout" not in only_seen and only_seen["overall"] == pytest.approx(0.375)
    # a category with many tasks weighs the same as one with few (mean of category means, not of tasks)
    assert not math.isclose(sc["seen"]["overall"], np.mean(list(sc["seen"]["tasks"].values())))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"task_id": "a", "category": "aggregation", "split": "seen"}, "missing field 'success'"),
        ({"task_id": "a", "category": "aggregation", "split": "val", "success": 1}, "split"),
        ({"task_id": "a", "category": "x", "split": "seen", "success": 1}, "category"),
        ({"task_id": "a", "category": "aggregation", "split": "seen", "success": 0.5}, "success"),
        ({"task_id": "a1", "category": "situated", "split": "seen", "success": 1}, "has category"),
    ],
)
def test_score_suite_rejects_bad_records(bad, match):
    with pytest.raises(ValueError, match=match):
        S.score_suite(RESULTS[:2] + [bad])
    with pytest.raises(ValueError, match="no results"):
        S.score_suite([])


# ------------------------------------------------------------------------------------------------ files


def test_load_suite_file(tmp_path):
    p = tmp_path / "suite.jsonl"
    rows = [
        {"task_id": "situated/sponge", "category": "situated", "family_id": "intent",
         "spec": {"family": "pick", "targets": ["sponge"]}, "num_episodes": 2},
        {"task_id": "atomic/apple", "category": "atomic", "family_id": "atomic", "spec": "pick/apple", "split": "seen"},
    ]
    p.write_text("# tasks\n" + "\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    tasks = S.load_suite_file(p)
    assert [(t.task_id, t.split) for t in tasks] == [("situated/sponge", "seen"), ("situated/sponge", "heldout"),
                                                      ("atomic/apple", "seen")]
    assert S.task_spec(tasks[0]).targets == ("sponge",)
    p.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[0], "spec": {"family": "pick", "targts": ["x"]}}) + "\n")
    with pytest.raises(ValueError, match=r"suite\.jsonl:2: .*TaskSpec"):
        S.load_suite_file(p)
    p.write_text("{oops\n")
    with pytest.raises(ValueError, match=r"suite\.jsonl:1: not valid JSON"):
        S.load_suite_file(p)
