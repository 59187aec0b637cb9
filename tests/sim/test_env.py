"""TabletopEnv: gym API, observations, determinism, scene graph, action validation."""

import numpy as np
import pytest

from instructvla.sim.env import TabletopEnv, fallback_instruction, make_env
from instructvla.sim.scene_graph import SceneGraph
from instructvla.sim.tasks import TaskSpec


@pytest.fixture(scope="module")
def env():
    e = make_env("place_on/any", camera_size=64)
    yield e
    e.close()


def test_reset_and_step_observations(env):
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["wrist_image"].shape == (64, 64, 3)
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32
    assert info["task"] == "place_on/any" and info["success"] is False and info["instruction"]
    tgt = info["task_args"]["target"]
    assert obs["privileged"][tgt].shape == (7,) and "plate" in obs["privileged"]
    assert obs["image"].std() > 5  # not a blank frame
    obs, rew, term, trunc, info = env.step(np.array([0.01, 0, 0, 0, 0, 0, 1.0]))
    assert rew == 0.0 and not term and not trunc and info["step"] == 1


def test_same_seed_same_first_frame(env):
    a, ia = env.reset(seed=3)
    b, ib = env.reset(seed=3)
    assert (
        a["image"].tobytes() == b["image"].tobytes()
        and a["wrist_image"].tobytes() == b["wrist_image"].tobytes()
    )
    assert ia["instruction"] == ib["instruction"] and ia["task_args"] == ib["task_args"]
    c, _ = env.reset(seed=4)
    assert c["image"].tobytes() != a["image"].tobytes()


def test_scene_graph(env):
    env.reset(seed=1)
    sg = env.unwrapped.scene_graph()
    assert isinstance(sg, SceneGraph) and sg.task_family == "place_on"
    assert sg.task_args["destination"] == "plate"
    plate = sg.get("plate")
    assert plate.is_fixture and abs(plate.position[2]) < 0.01
    tgt = sg.get(sg.task_args["target"])
    assert tgt.inside is None and not tgt.grasped and tgt.position[2] > 0
    assert SceneGraph.from_dict(sg.to_dict()) == sg


@pytest.mark.parametrize(
    "bad, err",
    [
        (np.zeros(6), ValueError),
        (np.full(7, np.nan), ValueError),
        ("left", TypeError),
        (np.zeros((7, 1)), ValueError),
    ],
)
def test_bad_actions_raise(env, bad, err):
    env.reset(seed=0)
    with pytest.raises(err, match="action"):
        env.step(bad)


def test_truncation_and_no_render():
    e = TabletopEnv(TaskSpec("pick", targets=("apple",)), render=False, max_steps=3)
    obs, info = e.reset(seed=0)
    assert "image" not in obs and "wrist_image" not in obs
    for _ in range(3):
        obs, r, term, trunc, info = e.step(np.array([0, 0, 0.0, 0, 0, 0, 1]))
    assert trunc and not term


def test_instruction_fn_and_fallback():
    calls = []

    def fn(sg, rng):
        calls.append(sg.task_family)
        return f"do {sg.task_args['target']} {rng.integers(100)}"

    e = TabletopEnv(TaskSpec("pick", targets=("lemon",)), render=False, instruction_fn=fn)
    _, info = e.reset(seed=0)
    _, info2 = e.reset(seed=0)
    assert info["instruction"].startswith("do lemon") and info["instruction"] == info2["instruction"]
    _, info3 = e.reset(seed=0, options={"instruction": "custom"})
    assert info3["instruction"] == "custom" and calls == ["pick", "pick"]
    with pytest.raises(ValueError, match="options"):
        e.reset(seed=0, options={"bogus": 1})
    assert fallback_instruction(e.scene_graph()) == "pick up the lemon"


def test_constructor_validation():
    with pytest.raises(TypeError, match="spec"):
        TabletopEnv("pick/apple")
    with pytest.raises(ValueError, match="cameras"):
        make_env("pick/apple", cameras=("top",))
    with pytest.raises(ValueError, match="camera_size"):
        make_env("pick/apple", camera_size=4)


def test_fresh_env_same_seed_same_frame(env):
    a, _ = env.reset(seed=11)
    other = make_env("place_on/any", camera_size=64)
    try:
        b, _ = other.reset(seed=11)
        assert a["image"].tobytes() == b["image"].tobytes()
        np.testing.assert_array_equal(a["state"], b["state"])
    finally:
        other.close()
