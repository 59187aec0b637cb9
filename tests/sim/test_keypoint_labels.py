"""Per-frame 2-D keypoints: camera projection checked against renders, and the `observation.keypoints` column."""

import json

import mujoco
import numpy as np
import pytest

from instructvla.data.lerobot import (
    KEYPOINT_NAMES,
    KEYPOINTS_KEY,
    OBJECT_KEYPOINTS_KEY,
    OBJECT_VISIBLE_KEY,
    LeRobotDatasetReader,
    robot_features,
)
from instructvla.sim.camera import project_points, to_pixels
from instructvla.sim.collect import CollectConfig, collect
from instructvla.sim.env import make_env, object_keypoint_names
from instructvla.sim.scene import PRIMARY_CAMERA_LOOK_AT, PRIMARY_CAMERA_POS

SIZE = 128
MAGENTA = np.array([1.0, 0.0, 1.0, 1.0])


def _painted_mask(env, geoms: list[int]) -> np.ndarray:
    """(H, W) bool: pixels of `geoms` in the env's own primary render: magenta once they are painted magenta."""
    m = env.scene.model
    before = env.render_camera("primary").astype(int)
    old = m.geom_rgba[geoms].copy()
    m.geom_rgba[geoms] = MAGENTA
    try:
        img = env.render_camera("primary").astype(int)
    finally:
        m.geom_rgba[geoms] = old
    changed = np.abs(img - before).sum(-1) > 30
    return changed & (img[..., 0] - img[..., 1] > 60) & (img[..., 2] - img[..., 1] > 60)


def _segmentation(env) -> np.ndarray:
    """(H, W) geom id (-1 for none) of MuJoCo's own segmentation render of the primary camera."""
    r = mujoco.Renderer(env.scene.model, SIZE, SIZE)
    try:
        r.update_scene(env.scene.data, camera="primary")
        r.enable_segmentation_rendering()
        seg = r.render()
    finally:
        r.close()
    return np.where(seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM), seg[..., 0], -1)


def _check_point(env, uv: np.ndarray, geom: int, centroid_tol_px: float = 1.5) -> None:
    """The projected point lies on `geom` (painted render and segmentation) near the centroid of its pixels."""
    ((row, col),) = to_pixels(uv[None], SIZE, SIZE)
    mask = _painted_mask(env, [geom])
    assert mask[row, col], f"projected pixel {(row, col)} is not on geom {env.scene.model.geom(geom).name}"
    assert _segmentation(env)[row, col] == geom
    rows, cols = np.nonzero(mask)
    centroid = np.array([cols.mean() + 0.5, rows.mean() + 0.5])  # (x, y) pixels, pixel-centre convention
    proj = (uv + 1) / 2 * SIZE
    assert np.abs(centroid - proj).max() < centroid_tol_px, (centroid, proj)


@pytest.fixture(scope="module")
def envs():
    made = {}

    def get(task):
        if task not in made:
            made[task] = make_env(task, camera_size=SIZE, cameras=("primary",))
        return made[task]

    yield get
    for e in made.values():
        e.close()


def test_projection_geometry(envs):
    env = envs("pick/apple")
    env.reset(seed=0)
    m, d = env.scene.model, env.scene.data
    pts = np.array([PRIMARY_CAMERA_LOOK_AT, PRIMARY_CAMERA_POS, 2 * np.array(PRIMARY_CAMERA_POS)])
    uv = project_points(m, d, "primary", pts)
    np.testing.assert_allclose(uv[0], 0.0, atol=1e-9)  # the optical axis hits the image centre
    assert np.isnan(uv[1:]).all()  # at / behind the camera
    # image corners: camera-frame rays at +-tan(fovy/2) reach u, v = +-1; up (+y) is the top edge (v = -1)
    pos, mat = d.cam_xpos[0], d.cam_xmat[0].reshape(3, 3)
    t = np.tan(np.deg2rad(m.cam_fovy[0]) / 2)
    corners = pos + np.array([[-t, t, -1.0], [t, -t, -1.0]]) @ mat.T
    np.testing.assert_allclose(project_points(m, d, "primary", corners), [[-1, -1], [1, 1]], atol=1e-9)
    np.testing.assert_array_equal(
        to_pixels(np.array([[-1 + 1 / SIZE, 1 - 1 / SIZE]]), SIZE, SIZE), [[SIZE - 1, 0]]
    )
    with pytest.raises(ValueError, match="no camera"):
        project_points(m, d, "nope", pts)


@pytest.mark.parametrize(
    "task, seed",
    [
        ("pick/apple", 0),
        ("pick/any", 1),
        ("place_on/orange-plate", 0),
        ("open_drawer/any", 0),
        ("open_drawer/any", 2),
    ],
)
def test_keypoints_land_on_the_task_objects(envs, task, seed):
    env = envs(task)
    env.reset(seed=seed)
    kp = env.keypoints()
    assert kp.shape == (6,) and kp.dtype == np.float32 and np.isfinite(kp).all()
    m, args = env.scene.model, env.task.args
    uv = kp.reshape(3, 2).astype(np.float64)
    if env.spec_task.family == "open_drawer":
        target = m.geom(f"fix/handle_{args['drawer']}").id
    else:
        target = m.geom(f"obj/{args['target']}").id
    _check_point(env, uv[0], target)
    if "destination" in args:
        _check_point(env, uv[1], m.geom(f"fix/{args['destination']}").id, centroid_tol_px=3.0)
    else:
        np.testing.assert_array_equal(uv[1], uv[0])
    # gripper: the TCP (state[:3]) projected; it sits between the finger pads, on the painted hand's silhouette
    np.testing.assert_allclose(
        uv[2], project_points(m, env.scene.data, "primary", env.scene.state()[None, :3])[0], atol=1e-6
    )
    pads = env.scene.data.geom_xpos[list(env.scene.arm.pad_geoms)]
    mid = project_points(m, env.scene.data, "primary", pads).mean(0)
    assert np.abs((mid - uv[2]) * SIZE / 2).max() < 2.0
    hand = [g for g in range(m.ngeom) if m.body(m.geom_bodyid[g]).name.startswith(("arm/hand", "arm/finger"))]
    rows, cols = np.nonzero(_painted_mask(env, hand))
    ((row, col),) = to_pixels(uv[2][None], SIZE, SIZE)
    assert rows.min() <= row <= rows.max() and cols.min() <= col <= cols.max()


def test_other_families_and_errors(envs):
    env = envs("drawer_then_place/any")
    env.reset(seed=0)
    pts = env.task_points()
    d = env.scene.drawer_body["top"]
    local = env.scene.data.xmat[d].reshape(3, 3).T @ (pts[1] - env.scene.data.xpos[d])
    assert local[0] > 0  # inside the drawer box, behind its front
    with pytest.raises(RuntimeError, match="before reset"):
        make_env("pick/apple", render=False).keypoints()


def test_robot_features_keypoints_flag():
    assert KEYPOINTS_KEY not in robot_features({"primary": (8, 8)})
    ft = robot_features({"primary": (8, 8)}, keypoints=True)[KEYPOINTS_KEY]
    assert ft == {"dtype": "float32", "shape": [6], "names": list(KEYPOINT_NAMES)}


def test_collect_writes_keypoints(tmp_path):
    cfg = CollectConfig(
        out=str(tmp_path / "ds"),
        tasks=["pick/apple", "place_on/any"],
        episodes=2,
        workers=0,
        camera_size=32,
        cameras=["primary"],
        multimodal_samples=0,
        annotate=False,
    )
    res = collect(cfg)
    assert res.episodes_kept == 2 and res.errors == 0
    r = LeRobotDatasetReader(res.out)
    assert r.features[KEYPOINTS_KEY]["names"] == list(KEYPOINT_NAMES)
    kp = r.column(KEYPOINTS_KEY)
    assert kp.shape == (len(r), 6) and kp.dtype == np.float32 and np.isfinite(kp).all()
    stats = json.loads((tmp_path / "ds" / "meta" / "stats.json").read_text())[KEYPOINTS_KEY]
    assert len(stats["mean"]) == 6 and stats["count"] == [len(r)]
    # frame 0 of episode 0 is attempt 0 reset with the collector's seed
    env = make_env("pick/apple", render=False)
    env.reset(seed=int(np.random.default_rng([cfg.seed, 0]).integers(2**31)))
    np.testing.assert_allclose(kp[r.episode_slice(0)][0], env.keypoints(), atol=1e-6)
    # a pick ends with the apple lifted in the gripper: target and gripper points move together
    ep0 = kp[r.episode_slice(0)]
    assert np.abs(ep0[-1, :2] - ep0[-1, 4:]).max() < 0.1 < np.abs(ep0[0, :2] - ep0[0, 4:]).max()
    ep1 = kp[r.episode_slice(1)]
    assert np.abs(ep1[:, 2:4] - ep1[0, 2:4]).max() < 1e-5  # the plate does not move
    # off: no column
    res2 = collect(
        CollectConfig(**(cfg.__dict__ | {"out": str(tmp_path / "ds2"), "episodes": 1, "keypoints": False}))
    )
    assert KEYPOINTS_KEY not in LeRobotDatasetReader(res2.out).features
    assert OBJECT_KEYPOINTS_KEY not in LeRobotDatasetReader(res2.out).features
    # dense labels: every known object's point, 0 and invisible where it is not in the scene
    names = object_keypoint_names()
    assert r.features[OBJECT_VISIBLE_KEY]["names"] == list(names)
    obj, vis = r.column(OBJECT_KEYPOINTS_KEY).reshape(len(r), -1, 2), r.column(OBJECT_VISIBLE_KEY)
    assert obj.shape == (len(r), len(names), 2) and set(np.unique(vis)) <= {0.0, 1.0}
    assert (obj[vis == 0] == 0).all()
    first = r.episode_slice(0).start
    apple = names.index("apple")
    assert vis[first, apple] == 1 and np.allclose(obj[first, apple], kp[first, :2], atol=1e-6)
    assert vis[r.episode_slice(1).start, names.index("plate")] == 1  # place_on has a plate


def test_object_keypoints_cover_the_scene(envs):
    env = envs("move_near/any")
    env.reset(seed=3)
    names = object_keypoint_names()
    obj = env.object_keypoints().reshape(-1, 2)
    assert obj.shape == (len(names), 2) and obj.dtype == np.float32
    present = {n for n, p in zip(names, obj) if np.isfinite(p).all()}
    assert present == set(env.scene.active) | {f for f in ("plate", "bowl") if getattr(env.scene.layout, f)}
    args, kp = env.task.args, env.keypoints().reshape(3, 2)
    np.testing.assert_allclose(obj[names.index(args["target"])], kp[0], atol=1e-6)
    np.testing.assert_allclose(obj[names.index(args["destination"])], kp[1], atol=1e-6)
