"""Scripted experts: waypoint plans from privileged state, executed through the env's own 7-D delta actions.

The expert is closed-loop: every step it recomputes the delta from the measured gripper pose to the current
waypoint, so the action it returns is exactly what a policy must output in that state. With `noise_prob > 0` a
fraction of free-space moves is perturbed before execution while the clean corrective action is what should be
recorded (`expert.last_clean_action`), which gives recovery data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from instructvla.sim import objects as O
from instructvla.sim import robot as R
from instructvla.sim.catalog import CATALOG
from instructvla.sim.env import MAX_DELTA_POS, MAX_DELTA_ROT, TabletopEnv
from instructvla.sim.scene import HOME_TCP, forward_mat, top_down_mat

logger = logging.getLogger(__name__)

OPEN, CLOSED = 1.0, 0.0
PICK_FAMILIES = ("pick", "place_on", "place_in", "move_near", "stack")  # families that start with a top-down grasp
CUBE_CLEARANCE = 0.01  # m: a square block is taken at any turn when its diagonal is this much narrower than the hand
MAX_REGRASPS = 2  # times per episode the expert grasps again after losing the target
TRANSPORT_Z = 0.14  # height of the held object's bottom while moving above the table
DRAWER_CARRY_Z = 0.37  # ... and above the cabinet when carrying into the (top) drawer


@dataclass
class Waypoint:
    """Go to `pos` with orientation `mat` and gripper `grip`; then hold `wait` steps. Positions may be callables
    evaluated when the waypoint becomes active (so they can depend on where the object actually is)."""

    pos: np.ndarray | Callable[[], np.ndarray]
    mat: np.ndarray
    grip: float
    tol: float = 0.008
    wait: int = 0
    noisy: bool = False  # with noise_prob, perturb the executed translation (and rotation, if rot_noise)
    rot_noise: bool = True
    max_steps: int = 45
    name: str = ""


def grasp_yaw(name: str, obj_mat: np.ndarray) -> float:
    """Yaw of a top-down grasp: fingers close across the object's narrower horizontal dimension. A square block
    whose diagonal fits the open hand is taken at yaw 0 whatever its turn (the fingers align it as they close), so
    the demonstrations only turn the hand where the object needs it."""
    spec = CATALOG[name]
    x_axis = obj_mat[:, 0]
    theta = float(np.arctan2(x_axis[1], x_axis[0]))
    if spec.shape in ("sphere", "cylinder", "capsule") or (
        spec.shape == "ellipsoid" and spec.size[0] == spec.size[1]
    ):
        return 0.0
    if spec.shape == "box" and abs(spec.size[0] - spec.size[1]) < 1e-6:
        if 2 * np.hypot(spec.size[0], spec.size[1]) < 2 * R.FINGER_MAX - CUBE_CLEARANCE:
            return 0.0  # its diagonal fits the open hand: the closing fingers square it up, no turn needed
        period = np.pi / 2  # any face pair, the one closest to 0
    else:
        period = np.pi
        if spec.size[0] < spec.size[1]:  # narrower along local x: close along x
            theta += np.pi / 2
    return float((theta + period / 2) % period - period / 2)


def grasp_height(name: str, pos: np.ndarray, surface_z: float) -> float:
    """TCP height for grasping object `name` whose centre is at `pos` resting on a surface at `surface_z`."""
    hh = O.object_half_height(CATALOG[name])
    top = pos[2] + hh
    return float(max(pos[2], top - 0.028, surface_z + 0.024))


class Expert:
    """A waypoint follower for the env's current task.

    It plans from the scene on the first `act` after each `env.reset()` (call `reset(seed)` to also reseed the noise).
    noise_prob: probability that a step of a free-space move is perturbed (N(0, noise_pos) metres on xyz and
    N(0, noise_rot) radians on rpy); the gripper is never perturbed.
    grasp_offset: (3,) metres added to the first planned grasp (and the point above it): a deliberate miss, for
    `missed_grasp_prefix`. None = grasp where the object is.
    max_regrasps: times per episode it grasps again after losing the target (pick-based families).
    """

    def __init__(
        self,
        env: TabletopEnv,
        noise_prob: float = 0.0,
        noise_pos: float = 0.012,
        noise_rot: float = 0.05,
        seed: int | None = None,
        grasp_offset: np.ndarray | None = None,
        max_regrasps: int = MAX_REGRASPS,
    ):
        if not 0.0 <= noise_prob <= 1.0:
            raise ValueError(f"Expert.noise_prob: must be in [0, 1], got {noise_prob}")
        if grasp_offset is not None:
            grasp_offset = np.asarray(grasp_offset, dtype=np.float64)
            if grasp_offset.shape != (3,) or not np.all(np.isfinite(grasp_offset)):
                raise ValueError(f"Expert.grasp_offset: expected 3 finite numbers, got {grasp_offset!r}")
        self.grasp_offset, self.max_regrasps = grasp_offset, max_regrasps
        self.env = env.unwrapped if hasattr(env, "unwrapped") else env
        self.noise_prob, self.noise_pos, self.noise_rot = noise_prob, noise_pos, noise_rot
        self._seed = seed
        self.rng = np.random.default_rng(seed)
        self.last_clean_action = np.zeros(7)
        self._last_pick_rot = top_down_mat(0.0)
        self._grasp_yaw_last = 0.0
        self._start_xy = np.zeros(2)
        self.reset(seed)

    # ------------------------------------------------------------------ public
    def reset(self, seed: int | None = None) -> None:
        """Forget the previous plan (a new one is built from the current scene on the next `act`)."""
        self.rng = np.random.default_rng(seed if seed is not None else self._seed)
        self.plan, self._i, self._held, self._steps_in = [], 0, 0, 0
        self.regrasps, self._empty_steps = 0, 0
        self._cache: dict[str, np.ndarray] = {}
        self._best_err = np.inf
        self._stall = 0
        self._target: np.ndarray | None = None
        self._planned_for = None
        self._from_here = False

    def take_over(self) -> None:
        """Re-plan on the next `act` from the scene as it is now, after something else (a policy) drove the episode.

        Pick-based families recover from where the gripper is: hold on to a grasped target and carry on, or re-open
        a gripper closed on nothing, rise clear of the target if the fingers are beside it, align above it and grasp
        again. Other families re-plan from the current scene. The actions are the corrections DAgger-style data
        needs: what to do from the states a policy actually reaches.
        """
        self._planned_for, self._from_here = None, True

    @property
    def phase(self) -> str:
        """Name of the waypoint being followed ("" before the first `act` and once the plan is done)."""
        return self.plan[self._i].name if self._i < len(self.plan) else ""

    @property
    def done(self) -> bool:
        """All waypoints reached."""
        return bool(self.plan) and self._i >= len(self.plan)

    def act(self, obs: dict | None = None) -> np.ndarray:
        """The (7,) action to execute now. `last_clean_action` holds the noise-free one (record that)."""
        if self._planned_for is self.env.task and self._lost_the_target():
            self.regrasps += 1
            self.take_over()  # grasp again from here
        if self._planned_for is not self.env.task:  # a new episode (or a take-over): plan from the current scene
            self._cache = {}
            self.plan = self._make_plan()
            self._planned_for, self._from_here = self.env.task, False
            self._i, self._held, self._steps_in, self._target = 0, 0, 0, None
            self._best_err, self._stall = np.inf, 0
        clean, wp = self._clean_action()
        self.last_clean_action = clean
        if wp is not None and wp.noisy and self.noise_prob > 0 and self.rng.random() < self.noise_prob:
            a = clean.copy()
            a[:3] += self.rng.normal(0, self.noise_pos, 3)
            if wp.rot_noise:
                a[3:6] += self.rng.normal(0, self.noise_rot, 3)
            return a
        return clean

    def _lost_the_target(self) -> bool:
        """Pick-based families: the target is not held two steps into lifting / carrying / lowering it (the grasp
        missed or the object slipped out). At most `max_regrasps` re-plans per episode."""
        task = self.env.task
        if (task.spec.family not in PICK_FAMILIES or self.regrasps >= self.max_regrasps
                or self.phase not in ("lift", "carry", "lower") or self.env.scene.is_grasped(task.args["target"])):
            self._empty_steps = 0
            return False
        self._empty_steps += 1
        return self._empty_steps >= 2

    def act_pair(self, obs: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(action to execute, clean action to record)."""
        a = self.act(obs)
        return a, self.last_clean_action

    # ------------------------------------------------------------------ execution
    def _clean_action(self) -> tuple[np.ndarray, Waypoint | None]:
        scene = self.env.scene
        pos, mat = scene.tcp_pose()
        while self._i < len(self.plan):
            wp = self.plan[self._i]
            if self._target is None:
                self._target = np.asarray(wp.pos() if callable(wp.pos) else wp.pos, dtype=np.float64)
            err = self._target - pos
            rot_err = R.rotvec_from_mat(wp.mat @ mat.T)
            e = float(np.linalg.norm(err))
            reached = e < wp.tol and np.linalg.norm(rot_err) < 0.05
            if reached:
                self._held += 1
            # blocked (e.g. an object under the gripper): close enough and no progress for 3 steps counts as reached
            self._stall = 0 if e < self._best_err - 0.002 else self._stall + 1
            self._best_err = min(self._best_err, e)
            stalled = self._stall >= 3 and e < 0.03 and np.linalg.norm(rot_err) < 0.1
            if (
                (reached and self._held > wp.wait)
                or (stalled and self._held >= wp.wait)
                or self._steps_in >= wp.max_steps
            ):
                if not reached:
                    logger.debug("waypoint %s timed out (err %.3f m)", wp.name, np.linalg.norm(err))
                self._i, self._held, self._steps_in, self._target = self._i + 1, 0, 0, None
                self._best_err, self._stall = np.inf, 0
                continue
            self._steps_in += 1
            return self._delta(err, wp.mat, mat, wp.grip), wp
        last = self.plan[-1].grip if self.plan else OPEN
        return np.array([0, 0, 0, 0, 0, 0, last], dtype=np.float64), None

    @staticmethod
    def _delta(err: np.ndarray, goal: np.ndarray, mat: np.ndarray, grip: float) -> np.ndarray:
        step = err.copy()
        m = np.max(np.abs(step))
        if m > MAX_DELTA_POS:  # keep the direction: straight-line motion
            step *= MAX_DELTA_POS / m
        vec = R.rotvec_from_mat(goal @ mat.T)  # geodesic step toward the goal orientation
        mv = np.max(np.abs(vec))
        if mv > MAX_DELTA_ROT:
            vec *= MAX_DELTA_ROT / mv
        rot = R.euler_from_mat(R.mat_from_rotvec(vec))
        rot = np.clip(rot, -MAX_DELTA_ROT, MAX_DELTA_ROT)
        return np.array([*step, *rot, grip], dtype=np.float64)

    # ------------------------------------------------------------------ plans
    def _make_plan(self) -> list[Waypoint]:
        task = self.env.task
        if task is None:
            raise RuntimeError("Expert.act called before env.reset()")
        fam, a = task.spec.family, task.args
        if "target" in a:
            self._start_xy = self.env.scene.object_pos(a["target"])[:2].copy()
        if fam == "pick":
            return self._pick(a["target"], final_lift=0.12)
        if fam == "place_on":
            return self._pick(a["target"]) + self._place_at(a["target"], self._plate_spot)
        if fam == "place_in":
            return self._pick(a["target"]) + self._place_at(a["target"], self._bowl_spot)
        if fam == "move_near":
            pick = self._pick(a["target"])
            spot = self._near_spot(a["target"])
            # turn the hand so its long side (the finger axis) is tangent to the reference: no bumping into it
            u = self.env.scene.object_pos(a["destination"])[:2] - spot[:2]
            yaw = float(np.arctan2(u[1], u[0]))
            yaw = float((yaw + np.pi / 2) % np.pi - np.pi / 2)  # the hand is symmetric: stay within +-90 deg
            return pick + self._place_at(a["target"], self._near_spot, rot=top_down_mat(yaw))
        if fam == "stack":
            return self._pick(a["target"]) + self._place_at(a["target"], self._stack_spot)
        if fam == "open_drawer":
            return self._drawer(a["drawer"], pull=True)
        if fam == "close_drawer":
            return self._drawer(a["drawer"], pull=False)
        if fam == "drawer_then_place":
            return (
                self._drawer(a["drawer"], pull=True, retreat_high=True)
                + self._pick(a["target"], carry_z=DRAWER_CARRY_Z)
                + self._place_at(
                    a["target"], self._drawer_spot, transport_z=DRAWER_CARRY_Z, rot=top_down_mat(0.0)
                )
            )
        raise ValueError(f"no expert for family {fam!r}")  # pragma: no cover

    def _pick(
        self, name: str, final_lift: float | None = None, carry_z: float = TRANSPORT_Z
    ) -> list[Waypoint]:
        scene = self.env.scene
        p = scene.object_pos(name)
        hh = O.object_half_height(CATALOG[name])
        surface = p[2] - hh - 0.002
        yaw = grasp_yaw(name, scene.object_mat(name))
        rot = top_down_mat(yaw)
        gz = grasp_height(name, p, surface)
        above = np.array([p[0], p[1], max(gz + 0.1, surface + 0.16)])
        grasp = np.array([p[0], p[1], gz])
        if self.grasp_offset is not None and not self._from_here:
            above, grasp = above + [*self.grasp_offset[:2], 0.0], grasp + self.grasp_offset

        def lift_target() -> np.ndarray:
            tcp = scene.tcp_pose()[0]
            if final_lift is not None:
                return tcp + np.array([0, 0, final_lift])
            obj = scene.object_pos(name)
            hh = O.object_half_height(CATALOG[name])
            rise = max(carry_z + hh - obj[2], 0.06)
            return tcp + np.array([0, 0, rise])

        self._last_pick_rot, self._grasp_yaw_last = rot, yaw
        lift = Waypoint(lift_target, rot, CLOSED, tol=0.015, name="lift")
        if self._from_here:
            return self._pick_from_here(name, p, hh, rot, above, grasp, lift)
        return [
            Waypoint(above, rot, OPEN, tol=0.012, noisy=True, name="above"),
            Waypoint(grasp, rot, OPEN, tol=0.006, name="descend"),
            Waypoint(grasp, rot, CLOSED, tol=0.02, wait=4, name="close"),
            lift,
        ]

    def _pick_from_here(
        self, name: str, p: np.ndarray, hh: float, rot: np.ndarray, above: np.ndarray, grasp: np.ndarray,
        lift: Waypoint,
    ) -> list[Waypoint]:
        """`_pick` from wherever the gripper is now (see `take_over`)."""
        scene = self.env.scene
        pos, mat = scene.tcp_pose()
        if scene.is_grasped(name) and scene.gripper_openness() < 0.9:
            lift.mat = mat  # carry the object the way it is held
            self._last_pick_rot = mat
            return [lift]
        plan = []
        if scene.gripper_openness() < 0.9:  # closed (or closing) on nothing: let go first
            plan.append(Waypoint(pos.copy(), mat, OPEN, tol=0.03, wait=3, name="reopen"))
        if np.linalg.norm(pos[:2] - p[:2]) > 0.006:  # not above the target: align before going down
            clear_z = p[2] + hh + 0.03  # fingertips above the target's top
            if pos[2] < clear_z:
                plan.append(Waypoint(np.array([pos[0], pos[1], clear_z]), rot, OPEN, tol=0.01, name="rise"))
            z = float(np.clip(pos[2], clear_z, above[2]))
            plan.append(Waypoint(np.array([p[0], p[1], z]), rot, OPEN, tol=0.008, name="align"))
        return plan + [
            Waypoint(grasp, rot, OPEN, tol=0.006, name="descend"),
            Waypoint(grasp, rot, CLOSED, tol=0.02, wait=4, name="close"),
            lift,
        ]

    def _place_at(
        self,
        name: str,
        spot: Callable[[str], np.ndarray],
        transport_z: float = TRANSPORT_Z,
        rot: np.ndarray | None = None,
    ) -> list[Waypoint]:
        """Carry the held object so that its centre ends at spot(name), release, retreat."""
        scene = self.env.scene
        hh = O.object_half_height(CATALOG[name])
        state: dict[str, np.ndarray] = {}

        def offset() -> np.ndarray:
            if "off" not in state:
                state["off"] = scene.tcp_pose()[0] - scene.object_pos(name)
            return state["off"]

        def carry() -> np.ndarray:
            s = spot(name)
            return np.array([s[0], s[1], max(transport_z + hh, s[2] + 0.08)]) + offset()

        def lower() -> np.ndarray:
            return spot(name) + offset()

        def retreat() -> np.ndarray:
            return scene.tcp_pose()[0] + np.array([0, 0, 0.08])

        def here() -> np.ndarray:
            return scene.tcp_pose()[0]

        cur = (
            self._last_pick_rot if rot is None else rot
        )  # default: keep the grasp orientation while carrying
        return [
            Waypoint(carry, cur, CLOSED, tol=0.012, noisy=True, name="carry"),
            Waypoint(lower, cur, CLOSED, tol=0.008, name="lower"),
            Waypoint(here, cur, OPEN, tol=0.03, wait=3, name="release"),
            Waypoint(retreat, cur, OPEN, tol=0.02, name="retreat"),
        ]

    # spots: where the object's centre should end up
    def _plate_spot(self, name: str) -> np.ndarray:
        c = self.env.scene.fixture_pos("plate")
        return np.array([c[0], c[1], 2 * O.PLATE_HALF_H + O.object_half_height(CATALOG[name]) + 0.012])

    def _bowl_spot(self, name: str) -> np.ndarray:
        c = self.env.scene.fixture_pos("bowl")
        return np.array([c[0], c[1], 0.008 + O.object_half_height(CATALOG[name]) + 0.015])

    def _near_spot(self, name: str) -> np.ndarray:
        """Beside the reference, on the side the target came from if free, else the nearest free direction."""
        if "near" in self._cache:
            return self._cache["near"]
        scene, task = self.env.scene, self.env.task
        ref = task.args["destination"]
        pr = scene.object_pos(ref)[:2]
        r_t = O.object_radius(CATALOG[name])
        d0 = self._start_xy - pr
        a0 = float(np.arctan2(d0[1], d0[0]))
        dist = r_t + O.object_radius(CATALOG[ref]) + 0.02
        others = [
            (scene.object_pos(n)[:2], O.object_radius(CATALOG[n]))
            for n in scene.active
            if n not in (name, ref)
        ]
        lay = scene.layout
        for fx, rad in (("plate", O.PLATE_RADIUS), ("bowl", O.BOWL_RADIUS)):
            if getattr(lay, fx) is not None:
                others.append((scene.fixture_pos(fx)[:2], rad))
        best, best_clear = None, -np.inf
        for k in range(12):
            a = a0 + (k + 1) // 2 * (np.pi / 6) * (1 if k % 2 else -1)
            u = np.array([np.cos(a), np.sin(a)])
            xy = pr + dist * u
            perp = np.array([-u[1], u[0]])
            clear = min([np.linalg.norm(xy - p) - r - r_t for p, r in others] or [1.0])
            for p, r in others:  # the hand's long side spans +-0.1 m across the approach direction
                t = float(np.clip((p - xy) @ perp, -0.1, 0.1))
                clear = min(clear, float(np.linalg.norm(p - (xy + t * perp))) - r - 0.025)
            in_ws = -0.25 < xy[0] < 0.13 and -0.3 < xy[1] < 0.3
            if in_ws and clear > 0.015:
                best = xy
                break
            if in_ws and clear > best_clear:
                best, best_clear = xy, clear
        out = np.array([best[0], best[1], O.object_half_height(CATALOG[name]) + 0.01])
        self._cache["near"] = out
        return out

    def _stack_spot(self, name: str) -> np.ndarray:
        b = self.env.task.args["destination"]
        pb = self.env.scene.object_pos(b)
        return pb + np.array([0, 0, CATALOG[b].size[2] + CATALOG[name].size[2] + 0.008])

    def _drawer_spot(self, name: str) -> np.ndarray:
        scene, drawer = self.env.scene, self.env.task.args["drawer"]
        db = scene.drawer_body[drawer]
        geo = O.drawer_geometry(O.DRAWER_NAMES.index(drawer))
        opening = scene.drawer_opening(drawer)
        local_x = min((0.012 + opening) / 2 + 0.01, geo.inner_center_x)
        local = np.array([local_x, 0.0, geo.floor_z + O.object_half_height(CATALOG[name]) + 0.015])
        return scene.data.xpos[db] + scene.data.xmat[db].reshape(3, 3) @ local

    def _drawer(self, drawer: str, pull: bool, retreat_high: bool = False) -> list[Waypoint]:
        scene = self.env.scene
        h = scene.handle_pos(drawer)
        rot = forward_mat(0.0)
        opening = scene.drawer_opening(drawer)
        pre = h + np.array([-0.10, 0, 0])
        grasp = h + np.array([0.008, 0, 0])
        if pull:
            end = grasp + np.array([-(0.165 - opening), 0, 0])
        else:
            end = grasp + np.array([opening + 0.004, 0, 0])
        plan = [
            Waypoint(
                np.array([pre[0] - 0.05, pre[1], max(pre[2], 0.12)]),
                rot,
                OPEN,
                tol=0.02,
                noisy=True,
                rot_noise=False,
                name="to cabinet",
            ),
            Waypoint(pre, rot, OPEN, tol=0.008, noisy=True, name="pre-handle"),
            Waypoint(grasp, rot, OPEN, tol=0.005, name="to handle"),
            Waypoint(grasp, rot, CLOSED, tol=0.02, wait=4, name="grip handle"),
            Waypoint(end, rot, CLOSED, tol=0.01, name="pull" if pull else "push"),
            Waypoint(end, rot, OPEN, tol=0.03, wait=2, name="let go"),
            Waypoint(
                lambda: scene.tcp_pose()[0] + np.array([-0.07, 0, 0]), rot, OPEN, tol=0.015, name="back off"
            ),
        ]
        if retreat_high:
            plan.append(
                Waypoint(
                    lambda: np.array([HOME_TCP[0], 0.0, 0.3]),
                    top_down_mat(0.0),
                    OPEN,
                    tol=0.02,
                    noisy=True,
                    rot_noise=False,
                    name="reorient",
                )
            )
        return plan


def make_expert(env, noise_prob: float = 0.0, seed: int | None = None) -> Expert:
    """The scripted expert for `env`'s task (call `expert.reset()` after each `env.reset()`)."""
    return Expert(env, noise_prob=noise_prob, seed=seed)


MISS_DISTANCE = (0.02, 0.05)  # missed_grasp_prefix: sideways distance of the aimed grasp from the object (m)
MISS_HEIGHT = (0.0, 0.03)  # ... and how far above the planned grasp height (m)
MISS_FOLLOW_STEPS = 16  # ... at most this many steps of carrying on (lifting, carrying) after the close


def missed_grasp_prefix(env, obs: dict, seed: int) -> tuple[dict, dict, bool]:
    """Drive a pick-based episode into a failed grasp: the expert's own plan aimed 2-5 cm beside the object (and up
    to 3 cm above it), closed there, then followed for 0-16 more steps, as a policy that misses carries on with its
    chunk. Returns (obs, info, whether the episode already ended); the caller lets a fresh expert `take_over()`
    from there, so the recorded actions are the recovery: reopen, rise clear, realign, grasp again, finish.
    """
    base = env.unwrapped if hasattr(env, "unwrapped") else env
    if base.task is None or base.task.spec.family not in PICK_FAMILIES:
        raise ValueError(f"missed_grasp_prefix: needs a task of {PICK_FAMILIES}, not "
                         f"{None if base.task is None else base.task.spec.family!r}")
    rng = np.random.default_rng([seed, 5])
    angle, dist = rng.uniform(0.0, 2 * np.pi), rng.uniform(*MISS_DISTANCE)
    offset = np.array([dist * np.cos(angle), dist * np.sin(angle), rng.uniform(*MISS_HEIGHT)])
    follow = int(rng.integers(0, MISS_FOLLOW_STEPS + 1))
    miss = Expert(base, seed=seed, grasp_offset=offset, max_regrasps=0)  # this one must not correct itself
    info: dict = {}
    closed_for = None
    while closed_for is None or closed_for < follow:
        obs, _, terminated, truncated, info = env.step(miss.act(obs))
        if terminated or truncated or info.get("success"):
            return obs, info, True
        if closed_for is not None:
            closed_for += 1
        elif miss.phase not in ("above", "descend", "close"):  # the close (and its hold) is over
            closed_for = 0
    return obs, info, False
