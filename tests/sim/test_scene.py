"""Scene: compiles, layouts activate/park objects, queries and the IK controller behave."""

import numpy as np
import pytest

from instructvla.sim import objects as O
from instructvla.sim import robot as R
from instructvla.sim.catalog import CATALOG
from instructvla.sim.scene import HOME_TCP, Layout, Placement, Scene, sample_positions, top_down_mat


@pytest.fixture(scope="module")
def scene():
    return Scene()


def test_scene_compiles_with_every_catalogue_object(scene):
    m = scene.model
    assert m.nu == 9  # 7 arm joints + 2 fingers
    for name in CATALOG:
        assert m.body(O.object_body_name(name)).id > 0
    for d in O.DRAWER_NAMES:
        assert m.joint(f"fix/drawer_{d}").id >= 0
    assert m.camera("primary").id >= 0 and m.camera("wrist").id >= 0
    assert m.vis.quality.shadowsize == 0 and m.vis.quality.offsamples == 0


def test_home_pose_and_state(scene):
    scene.apply(Layout(objects=[Placement("apple", -0.1, 0.0)]))
    pos, mat = scene.tcp_pose()
    np.testing.assert_allclose(pos, HOME_TCP, atol=5e-3)
    assert np.linalg.norm(R.rotvec_from_mat(top_down_mat(0.0) @ mat.T)) < 0.02
    st = scene.state()
    assert st.shape == (8,) and st.dtype == np.float32
    assert abs(np.linalg.norm(st[3:7]) - 1) < 1e-5 and st[7] == pytest.approx(1.0, abs=0.02)


def test_layout_activates_and_parks(scene):
    scene.apply(
        Layout(
            objects=[Placement("apple", -0.1, 0.05), Placement("block L", 0.0, -0.1, 0.3)],
            plate=(-0.1, -0.15),
        )
    )
    assert scene.active == ["apple", "block L"]
    # active objects rest on the table, inactive ones are parked far below it and do not fall
    assert scene.object_pos("apple")[2] == pytest.approx(CATALOG["apple"].size[0], abs=3e-3)
    assert scene.object_pos("lemon")[2] < -1.0
    z0 = scene.object_pos("lemon")[2]
    for _ in range(5):
        scene.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    assert scene.object_pos("lemon")[2] == pytest.approx(z0, abs=1e-3)
    assert scene.fixture_pos("plate")[:2] == pytest.approx([-0.1, -0.15])
    assert scene.fixture_pos("bowl")[2] < -1.0


def test_zero_action_holds_pose_and_delta_moves(scene):
    scene.apply(Layout())
    p0 = scene.tcp_pose()[0]
    for _ in range(10):
        scene.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    np.testing.assert_allclose(scene.tcp_pose()[0], p0, atol=2e-3)
    for _ in range(5):
        scene.step(np.array([0.02, 0, 0, 0, 0, 0, 1.0]))
    assert scene.tcp_pose()[0][0] - p0[0] == pytest.approx(0.10, abs=0.01)


def test_object_in_drawer_and_predicates(scene):
    scene.apply(
        Layout(objects=[Placement("apple", -0.03, 0.0, in_drawer="top")], cabinet=True, drawers={"top": 0.15})
    )
    assert scene.drawer_opening("top") == pytest.approx(0.15, abs=0.01)
    assert scene.in_drawer("apple", "top") and not scene.in_drawer("apple", "middle")
    assert scene.where_is("apple") == "drawer:top"


def test_sample_positions_non_overlapping():
    rng = np.random.default_rng(0)
    radii = [0.08, 0.03, 0.03, 0.05]
    xy = sample_positions(rng, radii, ((-0.24, 0.1), (-0.26, 0.26)))
    for i in range(len(xy)):
        for j in range(i):
            assert np.hypot(xy[i][0] - xy[j][0], xy[i][1] - xy[j][1]) >= radii[i] + radii[j]
    with pytest.raises(RuntimeError, match="could not place"):
        sample_positions(rng, [0.2] * 5, ((-0.1, 0.1), (-0.1, 0.1)))


def test_layout_validation():
    with pytest.raises(ValueError, match="table_style"):
        Layout(table_style="marble")
    with pytest.raises(ValueError, match="unknown object"):
        Layout(objects=[Placement("banana", 0, 0)])
    with pytest.raises(ValueError, match="drawers"):
        Layout(drawers={"top": 0.5})
