"""The gymnasium environment of the tabletop: 7-D end-effector delta actions, two cameras, task success as reward.

Action (7,) float: dx, dy, dz (metres, world/table frame), droll, dpitch, dyaw (radians, extrinsic x-y-z angles of a
rotation applied to the current gripper orientation in the world frame), gripper (absolute: 1 = open, 0 = closed).
Each step the translation is clipped to +-MAX_DELTA_POS per axis, the rotation to +-MAX_DELTA_ROT, the gripper to
[0, 1]; the target pose (current TCP pose + delta, position kept inside scene.TCP_BOUNDS) goes through
damped-least-squares IK to joint position servos and the physics runs 1 / CONTROL_HZ seconds (25 steps of 4 ms).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from instructvla.sim import objects as O
from instructvla.sim import tasks as T
from instructvla.sim.camera import project_points
from instructvla.sim.catalog import CATALOG
from instructvla.sim.scene import CONTROL_HZ, Scene
from instructvla.sim.scene_graph import ObjectState, SceneGraph

logger = logging.getLogger(__name__)

MAX_DELTA_POS = 0.02  # metres per control step (0.2 m/s at 10 Hz)
MAX_DELTA_ROT = 0.1  # radians per control step
CAMERAS = ("primary", "wrist")
KEYPOINT_CAMERA = "primary"
InstructionFn = Callable[[SceneGraph, np.random.Generator], str]
FIXTURE_KEYPOINTS = ("plate", "bowl")  # fixtures that `object_keypoints` places besides the catalogue objects


def object_keypoint_names() -> tuple[str, ...]:
    """The things `TabletopEnv.object_keypoints` places, in order: every catalogue object, then the fixtures."""
    return (*CATALOG, *FIXTURE_KEYPOINTS)

_FALLBACK_TEMPLATES = {
    "pick": "pick up the {target}",
    "place_on": "put the {target} on the plate",
    "place_in": "put the {target} in the bowl",
    "move_near": "move the {target} near the {destination}",
    "open_drawer": "open the {drawer} drawer",
    "close_drawer": "close the {drawer} drawer",
    "stack": "stack the {target} on the {destination}",
    "drawer_then_place": "open the {drawer} drawer and put the {target} into it",
}


def fallback_instruction(graph: SceneGraph, rng: np.random.Generator | None = None) -> str:
    """A plain atomic instruction from the task arguments (used when no language module is available)."""
    return _FALLBACK_TEMPLATES[graph.task_family].format(**graph.task_args)


def _default_instruction_fn() -> InstructionFn:
    try:
        mod = importlib.import_module("instructvla.sim.instructions")
    except ImportError:
        return fallback_instruction
    fn = getattr(mod, "atomic_instruction", None)
    return fn if callable(fn) else fallback_instruction


def validate_action(action) -> np.ndarray:
    """The action as a float64 (7,) array; raises ValueError/TypeError naming the problem."""
    try:
        a = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"action: expected a numeric array of shape (7,), got {type(action).__name__}") from e
    if a.shape != (7,):
        raise ValueError(f"action: expected shape (7,), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action: must be finite, got {a.tolist()}")
    return a


def clip_action(a: np.ndarray) -> np.ndarray:
    """Apply the per-step limits (see module docstring)."""
    out = a.copy()
    out[:3] = np.clip(out[:3], -MAX_DELTA_POS, MAX_DELTA_POS)
    out[3:6] = np.clip(out[3:6], -MAX_DELTA_ROT, MAX_DELTA_ROT)
    out[6] = np.clip(out[6], 0.0, 1.0)
    return out


class TabletopEnv(gym.Env):
    """A tabletop manipulation task (see `tasks.TaskSpec`) as a gymnasium Env.

    Observation dict: "image" (H, W, 3) uint8 primary camera, "wrist_image" (H, W, 3) uint8 (each only if that camera
    is enabled and render=True), "state" (8,) float32 = TCP xyz, quaternion xyzw, gripper openness (1 open),
    "privileged": {object or fixture name: (7,) pose xyz + quat xyzw, "drawer:<name>": (1,) opening in metres}.
    Reward 1.0 on the step the task succeeds; terminated on success, truncated at max_steps.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        spec: T.TaskSpec,
        camera_size: int = 224,
        cameras: tuple[str, ...] = CAMERAS,
        max_steps: int | None = None,
        instruction_fn: InstructionFn | None = None,
        render: bool = True,
    ):
        if not isinstance(spec, T.TaskSpec):
            raise TypeError(f"TabletopEnv.spec: expected a TaskSpec, got {type(spec).__name__}")
        if not isinstance(camera_size, int) or camera_size < 16:
            raise ValueError(f"TabletopEnv.camera_size: expected an int >= 16, got {camera_size!r}")
        for c in cameras:
            if c not in CAMERAS:
                raise ValueError(f"TabletopEnv.cameras: unknown camera {c!r} (have {CAMERAS})")
        if max_steps is not None and max_steps <= 0:
            raise ValueError(f"TabletopEnv.max_steps: must be positive, got {max_steps}")
        self.spec_task = spec
        self.camera_size = camera_size
        self.cameras = tuple(cameras)
        self.max_steps = max_steps or spec.episode_steps
        self.instruction_fn = instruction_fn or _default_instruction_fn()
        self.render_images = render
        self.render_mode = "rgb_array"
        self.scene = Scene()
        self._renderer = None
        self._rng = np.random.default_rng()
        self.task: T.TaskInstance | None = None
        self.instruction = ""
        self._t = 0
        self._succeeded = False
        img = gym.spaces.Box(0, 255, (camera_size, camera_size, 3), np.uint8)
        spaces = {"state": gym.spaces.Box(-np.inf, np.inf, (8,), np.float32)}
        if render:
            if "primary" in self.cameras:
                spaces["image"] = img
            if "wrist" in self.cameras:
                spaces["wrist_image"] = img
        self.observation_space = gym.spaces.Dict(spaces)  # "privileged" is extra (its keys vary per episode)
        lim = np.array([MAX_DELTA_POS] * 3 + [MAX_DELTA_ROT] * 3 + [1.0], dtype=np.float32)
        low = -lim
        low[6] = 0.0
        self.action_space = gym.spaces.Box(low, lim, dtype=np.float32)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Sample a task instance and layout (reproducible from `seed`). options: {"instruction": str} overrides it."""
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        episode_seed = int(self._rng.integers(2**31))
        task_rng = np.random.default_rng([episode_seed, 0])
        self.task = T.sample_task(self.spec_task, task_rng)
        self.scene.apply(self.task.layout)
        T.record_initial(self.task, self.scene)
        self._t = 0
        self._succeeded = False
        options = options or {}
        unknown = set(options) - {"instruction"}
        if unknown:
            raise ValueError(f"reset options: unknown keys {sorted(unknown)} (known: ['instruction'])")
        if "instruction" in options:
            self.instruction = str(options["instruction"])
        else:
            self.instruction = self.instruction_fn(
                self.scene_graph(), np.random.default_rng([episode_seed, 1])
            )
        return self._obs(), self._info(False)

    def step(self, action):
        if self.task is None:
            raise RuntimeError("TabletopEnv.step called before reset()")
        a = clip_action(validate_action(action))
        self.scene.step(a)
        self._t += 1
        success = T.is_success(self.task, self.scene)
        self._succeeded = self._succeeded or success
        truncated = self._t >= self.max_steps and not success
        return self._obs(), float(success), bool(success), bool(truncated), self._info(success)

    def render(self) -> np.ndarray:
        """The primary camera image (rgb_array)."""
        return self.render_camera("primary")

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ helpers
    def render_camera(self, camera: str) -> np.ndarray:
        if self._renderer is None:
            from instructvla.sim.render import CameraRenderer

            self._renderer = CameraRenderer(self.scene.model, self.camera_size, self.camera_size)
        return self._renderer.render(self.scene.data, camera)

    def _obs(self) -> dict:
        obs: dict = {"state": self.scene.state()}
        if self.render_images:
            if "primary" in self.cameras:
                obs["image"] = self.render_camera("primary")
            if "wrist" in self.cameras:
                obs["wrist_image"] = self.render_camera("wrist")
        obs["privileged"] = self.privileged()
        return obs

    def privileged(self) -> dict[str, np.ndarray]:
        s = self.scene
        out: dict[str, np.ndarray] = {n: s.object_pose(n) for n in s.active}
        lay = s.layout
        for fx in ("plate", "bowl"):
            if getattr(lay, fx) is not None:
                out[fx] = np.array([*s.fixture_pos(fx), 0.0, 0.0, 0.0, 1.0])
        if lay.cabinet:
            out["cabinet"] = np.array([*s.fixture_pos("cabinet"), 0.0, 0.0, 0.0, 1.0])
            for d in s.drawer_qpos:
                out[f"drawer:{d}"] = np.array([s.drawer_opening(d)])
        return out

    def _drawer_point(self, drawer: str, inside: bool = False) -> np.ndarray:
        """A drawer's handle (or, without one, its front centre); with `inside`, the centre of its inner box."""
        s = self.scene
        b = s.drawer_body[drawer]
        pos, mat = s.data.xpos[b], s.data.xmat[b].reshape(3, 3)
        if inside:
            geo = O.drawer_geometry(O.DRAWER_NAMES.index(drawer))
            return pos + mat @ np.array([geo.inner_center_x, 0.0, geo.floor_z + geo.inner_half[2]])
        try:
            return s.handle_pos(drawer)
        except KeyError:
            return pos.copy()

    def _thing_point(self, name: str) -> np.ndarray:
        """World centre of a catalogue object or of the plate/bowl's main geom."""
        s = self.scene
        if name in s.obj_body:
            return s.object_pos(name)
        return s.data.geom_xpos[s.model.geom(f"fix/{name}").id].copy()

    def task_points(self) -> np.ndarray:
        """(3, 3) world xyz of the task's target, destination and the gripper's TCP (see `keypoints`)."""
        if self.task is None:
            raise RuntimeError("TabletopEnv.task_points called before reset()")
        fam, args = self.spec_task.family, self.task.args
        if fam in ("open_drawer", "close_drawer") or "target" not in args:
            target = self._drawer_point(args["drawer"])
        else:
            target = self._thing_point(args["target"])
        if "destination" in args:
            dest = self._thing_point(args["destination"])
        elif fam == "drawer_then_place":
            dest = self._drawer_point(args["drawer"], inside=True)
        else:
            dest = target
        return np.stack([target, dest, self.scene.tcp_pose()[0]])

    def keypoints(self) -> np.ndarray:
        """(6,) float32 [target_u, target_v, destination_u, destination_v, gripper_u, gripper_v] in the primary camera.

        Normalised image coordinates (camera.py): u -1 left .. +1 right, v -1 top .. +1 bottom, not clipped. The
        target is the manipulated object's centre (the drawer's handle for open/close_drawer); the destination is
        the plate/bowl/reference object's centre (the drawer's inner box for drawer_then_place, else the target
        again); the gripper is the TCP that the IK controller steers (state[:3]). Live simulator state.
        """
        uv = project_points(self.scene.model, self.scene.data, KEYPOINT_CAMERA, self.task_points())
        return uv.reshape(6).astype(np.float32)

    def object_keypoints(self) -> np.ndarray:
        """(2N,) float32 (u, v) of every object named by `object_keypoint_names()` in the primary camera (same
        coordinates as `keypoints`); NaN for an object that is not in the scene or lies inside a drawer."""
        s = self.scene
        names = object_keypoint_names()
        out = np.full((len(names), 2), np.nan, np.float32)
        present = [i for i, n in enumerate(names) if self._visible_thing(n)]
        if present:
            pts = np.stack([self._thing_point(names[i]) for i in present])
            out[present] = project_points(s.model, s.data, KEYPOINT_CAMERA, pts).reshape(-1, 2)
        return out.reshape(-1)

    def _visible_thing(self, name: str) -> bool:
        s = self.scene
        if name in FIXTURE_KEYPOINTS:
            return getattr(s.layout, name, None) is not None
        return name in s.active and not str(s.where_is(name) or "").startswith("drawer:")

    def _info(self, success: bool) -> dict:
        return {
            "success": bool(success),
            "instruction": self.instruction,
            "task": self.spec_task.name or self.spec_task.family,
            "task_family": self.spec_task.family,
            "task_args": dict(self.task.args),
            "step": self._t,
        }

    def scene_graph(self) -> SceneGraph:
        """The language-ready description of the current state (see scene_graph.py)."""
        if self.task is None:
            raise RuntimeError("TabletopEnv.scene_graph called before reset()")
        s, lay = self.scene, self.scene.layout
        objs = [
            ObjectState(
                name=n,
                position=tuple(float(v) for v in s.object_pos(n)),
                inside=s.where_is(n),
                grasped=s.is_grasped(n),
            )
            for n in s.active
        ]
        for fx in ("plate", "bowl"):
            if getattr(lay, fx) is not None:
                objs.append(ObjectState(fx, tuple(float(v) for v in s.fixture_pos(fx)), is_fixture=True))
        if lay.cabinet:
            objs.append(
                ObjectState("cabinet", tuple(float(v) for v in s.fixture_pos("cabinet")), is_fixture=True)
            )
        return SceneGraph(
            objects=objs,
            drawers={d: s.drawer_opening(d) for d in s.drawer_qpos} if lay.cabinet else {},
            table_style=lay.table_style,
            task_family=self.spec_task.family,
            task_args=dict(self.task.args),
        )

    @property
    def elapsed_steps(self) -> int:
        return self._t


def make_env(task: str | T.TaskSpec, **kwargs) -> TabletopEnv:
    """A TabletopEnv for a registered task name ("pick/apple", "pick/any", ...) or a TaskSpec."""
    spec = T.get_task(task) if isinstance(task, str) else task
    return TabletopEnv(spec, **kwargs)


__all__ = [
    "TabletopEnv",
    "make_env",
    "validate_action",
    "clip_action",
    "fallback_instruction",
    "CATALOG",
    "MAX_DELTA_POS",
    "MAX_DELTA_ROT",
]
