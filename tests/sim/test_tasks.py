"""Tasks: spec validation, registry, reproducible sampling, success predicates that flip."""

import numpy as np
import pytest

from instructvla.sim import tasks as T
from instructvla.sim.catalog import CATALOG
from instructvla.sim.scene import Scene


def test_registry_covers_families_and_catalogue():
    names = T.list_tasks()
    for fam in T.FAMILIES:
        assert f"{fam}/any" in names
    for obj in CATALOG:
        assert f"pick/{obj}" in names
    assert "place_on/lemon-plate" in names and "open_drawer/top" in names
    with pytest.raises(KeyError, match="did you mean"):
        T.get_task("pick/aple")
    with pytest.raises(ValueError, match="already registered"):
        T.register_task("pick/any", T.TaskSpec("pick"))


def test_spec_validation_names_the_field():
    with pytest.raises(ValueError, match="family"):
        T.TaskSpec("grab")
    with pytest.raises(ValueError, match="targets"):
        T.TaskSpec("pick", targets=("banana",))
    with pytest.raises(TypeError, match="targets"):
        T.TaskSpec("pick", targets="apple")
    with pytest.raises(ValueError, match="drawers"):
        T.TaskSpec("open_drawer", drawers=("upper",))
    with pytest.raises(ValueError, match="num_distractors"):
        T.TaskSpec("pick", num_distractors=(3, 1))


def test_sampling_is_reproducible_and_respects_spec():
    spec = T.TaskSpec(
        "pick", targets=("category:fruit",), exclude_categories=("fruit",), num_distractors=(2, 3)
    )
    a = T.sample_task(spec, np.random.default_rng(5))
    b = T.sample_task(spec, np.random.default_rng(5))
    assert a.args == b.args and a.layout == b.layout
    assert CATALOG[a.args["target"]].category == "fruit"
    names = [p.name for p in a.layout.objects]
    assert names[0] == a.args["target"]
    assert all(CATALOG[n].category != "fruit" for n in names[1:]) and len(names) - 1 >= 2


def test_family_arguments():
    rng = np.random.default_rng(0)
    assert T.sample_task(T.get_task("place_on/any"), rng).layout.plate is not None
    assert T.sample_task(T.get_task("place_in/any"), rng).layout.bowl is not None
    st = T.sample_task(T.get_task("stack/any"), rng)
    assert (
        CATALOG[st.args["target"]].category == "block" and CATALOG[st.args["destination"]].category == "block"
    )
    dr = T.sample_task(T.get_task("close_drawer/middle"), rng)
    assert dr.layout.cabinet and dr.layout.drawers == {"middle": T.CLOSE_START_OPENING}
    mv = T.sample_task(T.get_task("move_near/any"), rng)
    assert mv.args["target"] != mv.args["destination"]


@pytest.fixture(scope="module")
def scene():
    return Scene()


def test_pick_predicate_flips(scene):
    task = T.sample_task(T.get_task("pick/apple"), np.random.default_rng(1))
    scene.apply(task.layout)
    T.record_initial(task, scene)
    assert not T.is_success(task, scene)


def test_drawer_predicates_flip(scene):
    task = T.sample_task(T.get_task("open_drawer/top"), np.random.default_rng(0))
    scene.apply(task.layout)
    assert not T.is_success(task, scene)
    scene.data.qpos[scene.drawer_qpos["top"]] = 0.15
    assert T.is_success(task, scene)
    close = T.sample_task(T.get_task("close_drawer/top"), np.random.default_rng(0))
    scene.apply(close.layout)
    assert not T.is_success(close, scene)
    scene.data.qpos[scene.drawer_qpos["top"]] = 0.0
    assert T.is_success(close, scene)


def test_place_and_near_predicates_flip(scene):
    import mujoco

    task = T.sample_task(T.get_task("place_on/apple-plate"), np.random.default_rng(2))
    scene.apply(task.layout)
    T.record_initial(task, scene)
    assert not T.is_success(task, scene)
    adr = scene.obj_qpos["apple"]
    plate = scene.fixture_pos("plate")
    scene.data.qpos[adr : adr + 3] = [plate[0], plate[1], 0.04]
    mujoco.mj_forward(scene.model, scene.data)
    assert T.is_success(task, scene)

    near = T.sample_task(
        T.TaskSpec("move_near", targets=("apple",), destinations=("orange",)), np.random.default_rng(3)
    )
    scene.apply(near.layout)
    T.record_initial(near, scene)
    assert not T.is_success(near, scene)
    ref = scene.object_pos("orange")
    scene.data.qpos[adr : adr + 3] = [ref[0] + 0.07, ref[1], near.init["target_z"]]
    mujoco.mj_forward(scene.model, scene.data)
    assert T.is_success(near, scene)


def test_list_tasks_cli_prints_table(capsys):
    names = T.list_tasks(T.ListTasksConfig(family="stack", suites=False))
    assert names and all(n.startswith("stack/") for n in names)
    assert "stack/any" in capsys.readouterr().out
    with pytest.raises(ValueError, match="family"):
        T.ListTasksConfig(family="fly")
