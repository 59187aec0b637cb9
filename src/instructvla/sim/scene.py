"""The tabletop scene: one compiled MuJoCo model holding the table, the arm, every catalogue object and the fixtures.

Every object of the catalogue and every fixture is compiled once; an episode's layout activates the ones it uses
(placing them on the table) and parks the rest out of sight with collisions off, so resetting never recompiles and
the renderer is created once. World frame = table frame of `scene_graph.py`: x forward (away from the robot base),
y left, z up, table surface at z = 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import mujoco
import numpy as np

from instructvla.sim import objects as O
from instructvla.sim import robot as R
from instructvla.sim.catalog import CATALOG, ObjectSpec

logger = logging.getLogger(__name__)

ROBOT_BASE = (-0.56, 0.0, 0.0)
TABLE_X = (-0.66, 0.46)
TABLE_Y = (-0.6, 0.6)
WORKSPACE_X = (-0.24, 0.1)  # where objects and receptacles are placed
WORKSPACE_Y = (-0.26, 0.26)
CABINET_POS = (0.12, 0.27, 0.0)  # front-bottom centre of the cabinet
HOME_TCP = np.array([-0.2, 0.0, 0.26])  # start pose of the tool centre point (gripper pointing down)
TCP_BOUNDS = (np.array([-0.45, -0.45, 0.005]), np.array([0.35, 0.45, 0.55]))  # the TCP target is kept inside
TIMESTEP = 0.004
CONTROL_HZ = 10.0
# third-person camera: front-right of the table, looking at the workspace (robot on the left, cabinet at the back)
PRIMARY_CAMERA_POS = (0.18, -0.5, 0.62)
PRIMARY_CAMERA_LOOK_AT = (-0.05, 0.12, 0.04)
PRIMARY_CAMERA_FOVY = 60.0
HIDDEN_GROUP = 5  # geoms of inactive things go here; the renderer does not draw this group
_QUAT_REF = np.array([0.4, 0.8, 0.45, 0.0]) / np.linalg.norm([0.4, 0.8, 0.45, 0.0])  # wxyz, see Scene.state
PARK_Z = -3.0

# name -> (rgb1, rgb2, builtin pattern, texrepeat); "wood" is procedural stripes
TABLE_STYLES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], str, float]] = {
    "wooden table": ((0.62, 0.45, 0.28), (0.52, 0.36, 0.21), "wood", 2.0),
    "dark wooden table": ((0.36, 0.24, 0.15), (0.28, 0.18, 0.11), "wood", 2.0),
    "white table": ((0.9, 0.9, 0.88), (0.86, 0.86, 0.84), "flat", 1.0),
    "gray table": ((0.55, 0.56, 0.58), (0.5, 0.51, 0.53), "flat", 1.0),
    "checkered tablecloth": ((0.8, 0.25, 0.25), (0.92, 0.92, 0.9), "checker", 6.0),
    "blue tablecloth": ((0.3, 0.42, 0.65), (0.27, 0.38, 0.6), "flat", 1.0),
}
# name -> per light (diffuse scale, position) for the two scene lights
LIGHTINGS: dict[str, tuple[tuple[float, tuple[float, float, float]], ...]] = {
    "bright": ((0.75, (0.0, -0.4, 1.6)), (0.35, (-0.8, 0.6, 1.2))),
    "dim": ((0.45, (0.0, -0.4, 1.6)), (0.15, (-0.8, 0.6, 1.2))),
    "left": ((0.55, (0.2, 1.0, 1.2)), (0.25, (-0.8, 0.6, 1.2))),
    "right": ((0.55, (0.2, -1.0, 1.2)), (0.25, (-0.8, -0.6, 1.2))),
}


def _wood_texture(width: int, height: int, rgb1, rgb2, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    y = np.arange(height)[:, None]
    x = np.arange(width)[None, :]
    grain = 0.5 + 0.5 * np.sin(
        0.09 * y + 2.5 * np.sin(0.013 * x + rng.uniform(0, 6)) + 0.4 * np.sin(0.05 * x)
    )
    c1, c2 = np.array(rgb1), np.array(rgb2)
    img = c1[None, None] * grain[..., None] + c2[None, None] * (1 - grain[..., None])
    img = np.broadcast_to(img, (height, width, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8).tobytes()


def build_spec() -> mujoco.MjSpec:
    """The full scene as an MjSpec (not compiled)."""
    spec = mujoco.MjSpec()
    spec.modelname = "instructvla_tabletop"
    spec.compiler.degree = False  # all angles below are radians
    spec.option.timestep = TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 5.0
    spec.visual.quality.shadowsize = 0
    spec.visual.quality.offsamples = 0
    spec.visual.quality.numslices = 16  # coarser tessellation of round geoms: ~1.5x faster CPU rendering
    spec.visual.quality.numstacks = 8
    spec.visual.headlight.ambient = [0.25, 0.25, 0.25]
    spec.visual.headlight.diffuse = [0.35, 0.35, 0.35]
    spec.visual.headlight.specular = [0.0, 0.0, 0.0]
    spec.visual.map.znear = 0.01
    spec.visual.global_.offwidth = 640
    spec.visual.global_.offheight = 640
    world = spec.worldbody

    floor = world.add_geom(
        name="floor",
        type=mujoco.mjtGeom.mjGEOM_PLANE,
        size=[3, 3, 0.1],
        pos=[0, 0, -0.75],
        rgba=[0.42, 0.42, 0.45, 1],
    )
    floor.contype, floor.conaffinity = O.STATIC_CONTYPE, O.STATIC_CONAFF
    for pos, size in (((1.3, 0, 0.2), (0.02, 2.0, 1.2)), ((0, 1.3, 0.2), (2.0, 0.02, 1.2))):  # room walls
        wall = world.add_geom(
            type=mujoco.mjtGeom.mjGEOM_BOX, size=list(size), pos=list(pos), rgba=[0.78, 0.8, 0.82, 1]
        )
        wall.contype, wall.conaffinity = 0, 0
    for name, (rgb1, rgb2, pattern, rep) in TABLE_STYLES.items():
        key = name.replace(" ", "_")
        if pattern == "wood":
            tex = spec.add_texture(
                name=f"tex/{key}", type=mujoco.mjtTexture.mjTEXTURE_2D, width=128, height=128, nchannel=3
            )
            tex.data = _wood_texture(128, 128, rgb1, rgb2)
        else:
            builtin = {
                "flat": mujoco.mjtBuiltin.mjBUILTIN_FLAT,
                "checker": mujoco.mjtBuiltin.mjBUILTIN_CHECKER,
            }[pattern]
            tex = spec.add_texture(
                name=f"tex/{key}",
                type=mujoco.mjtTexture.mjTEXTURE_2D,
                builtin=builtin,
                width=64,
                height=64,
                rgb1=list(rgb1),
                rgb2=list(rgb2),
            )
        mat = spec.add_material(name=f"mat/{key}", texrepeat=[rep, rep], reflectance=0.0)
        mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = f"tex/{key}"
    hx, hy = (TABLE_X[1] - TABLE_X[0]) / 2, (TABLE_Y[1] - TABLE_Y[0]) / 2
    table = world.add_geom(
        name="table",
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[hx, hy, 0.02],
        pos=[(TABLE_X[0] + TABLE_X[1]) / 2, 0, -0.02],
        material="mat/wooden_table",
    )
    table.contype, table.conaffinity = O.STATIC_CONTYPE, O.STATIC_CONAFF
    table.friction = [1.0, 0.01, 0.001]
    for sx in (TABLE_X[0] + 0.05, TABLE_X[1] - 0.05):
        for sy in (TABLE_Y[0] + 0.05, TABLE_Y[1] - 0.05):
            leg = world.add_geom(
                type=mujoco.mjtGeom.mjGEOM_BOX,
                size=[0.03, 0.03, 0.365],
                pos=[sx, sy, -0.405],
                rgba=[0.3, 0.25, 0.2, 1],
            )
            leg.contype, leg.conaffinity = 0, 0
    for i in range(2):
        world.add_light(
            name=f"light{i}",
            pos=[0, 0, 1.5],
            dir=[0, 0, -1],
            castshadow=False,
            diffuse=[0.5, 0.5, 0.5],
            specular=[0.1, 0.1, 0.1],
        )
    # primary (third-person) camera: front-right of the table, looking back at the workspace and the robot
    cam_pos = np.array(PRIMARY_CAMERA_POS)
    look = np.array(PRIMARY_CAMERA_LOOK_AT)
    fwd = (look - cam_pos) / np.linalg.norm(look - cam_pos)
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.stack([right, up, -fwd], axis=1).reshape(9))
    world.add_camera(name="primary", pos=cam_pos.tolist(), quat=q.tolist(), fovy=PRIMARY_CAMERA_FOVY)

    R.build_arm(world, ROBOT_BASE)
    R.add_arm_actuators(spec)
    for obj in CATALOG.values():
        O.add_object(world, obj)
    O.add_plate(world)
    O.add_bowl(world)
    O.add_cabinet(world)
    return spec


@dataclass
class Placement:
    """Where an active object starts: xy on the table (or inside a drawer), yaw about z."""

    name: str
    x: float
    y: float
    yaw: float = 0.0
    in_drawer: str | None = None  # "top" | "middle" | "bottom": x, y are then in the drawer's inner box frame


@dataclass
class Layout:
    """An episode's initial scene. Everything not listed is parked out of sight."""

    objects: list[Placement] = field(default_factory=list)
    plate: tuple[float, float] | None = None
    bowl: tuple[float, float] | None = None
    cabinet: bool = False
    drawers: dict[str, float] = field(default_factory=dict)  # initial openings (metres), default 0
    table_style: str = "wooden table"
    lighting: str = "bright"

    def __post_init__(self) -> None:
        if self.table_style not in TABLE_STYLES:
            raise ValueError(
                f"Layout.table_style: unknown {self.table_style!r} (have {sorted(TABLE_STYLES)})"
            )
        if self.lighting not in LIGHTINGS:
            raise ValueError(f"Layout.lighting: unknown {self.lighting!r} (have {sorted(LIGHTINGS)})")
        for p in self.objects:
            if p.name not in CATALOG:
                raise ValueError(f"Layout.objects: unknown object {p.name!r}")
        for d, v in self.drawers.items():
            if d not in O.DRAWER_NAMES or not 0 <= v <= O.DRAWER_TRAVEL:
                raise ValueError(f"Layout.drawers: bad drawer {d!r} opening {v!r}")


def sample_positions(
    rng: np.random.Generator,
    radii: list[float],
    region: tuple[tuple[float, float], tuple[float, float]],
    keepout: list[tuple[float, float, float]] = (),
    margin: float = 0.025,
    tries: int = 400,
) -> list[tuple[float, float]]:
    """Non-overlapping xy positions for discs of the given radii inside `region`, avoiding `keepout` discs (x, y, r).

    Raises RuntimeError if a layout cannot be found (too many or too large objects for the region).
    """
    (x0, x1), (y0, y1) = region
    out: list[tuple[float, float]] = []
    placed = list(keepout)
    for r in radii:
        if x1 - x0 < 2 * r or y1 - y0 < 2 * r:
            raise RuntimeError(f"could not place an object of radius {r} in region {region}: too small")
        for _ in range(tries):
            x = rng.uniform(x0 + r, x1 - r)
            y = rng.uniform(y0 + r, y1 - r)
            if all(np.hypot(x - px, y - py) >= r + pr + margin for px, py, pr in placed):
                break
        else:
            raise RuntimeError(f"could not place {len(radii)} objects without overlap in region {region}")
        out.append((x, y))
        placed.append((x, y, r))
    return out


class Scene:
    """A compiled tabletop with per-episode layouts, state queries and the arm's IK controller."""

    def __init__(self) -> None:
        spec = build_spec()
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.arm = R.ArmIds.from_model(m)
        self.ik = R.IKController(m, self.arm)
        self.n_substeps = int(round(1.0 / (CONTROL_HZ * TIMESTEP)))
        self.obj_body = {n: m.body(O.object_body_name(n)).id for n in CATALOG}
        self.obj_qpos = {n: m.jnt_qposadr[m.body_jntadr[b]] for n, b in self.obj_body.items()}
        self.obj_dof = {n: m.jnt_dofadr[m.body_jntadr[b]] for n, b in self.obj_body.items()}
        self.fix_body = {n: m.body(f"fix/{n}").id for n in ("plate", "bowl", "cabinet")}
        self.drawer_qpos = {d: m.jnt_qposadr[m.joint(f"fix/drawer_{d}").id] for d in O.DRAWER_NAMES}
        self.drawer_body = {d: m.body(f"fix/drawer_{d}").id for d in O.DRAWER_NAMES}
        self.table_geom = m.geom("table").id
        self.table_mat = {s: m.material(f"mat/{s.replace(' ', '_')}").id for s in TABLE_STYLES}
        self.lights = [m.light(f"light{i}").id for i in range(2)]
        # geoms of each switchable thing, with their compiled contype/conaffinity/group to restore on activation
        self._geoms: dict[str, np.ndarray] = {}
        for key, body in [*((n, b) for n, b in self.obj_body.items()), *self.fix_body.items()]:
            subtree = [b for b in range(m.nbody) if self._is_descendant(b, body)]
            self._geoms[key] = np.flatnonzero(np.isin(m.geom_bodyid, subtree))
        self._geom_defaults = (m.geom_contype.copy(), m.geom_conaffinity.copy(), m.geom_group.copy())
        self._fix_default_pos = {n: m.body_pos[b].copy() for n, b in self.fix_body.items()}
        self.layout: Layout | None = None
        self.active: list[str] = []
        self.home_q = self._solve_home()
        self.ik.posture = self.home_q.copy()
        self._grip_cmd = 1.0
        logger.debug("scene compiled: nbody=%d ngeom=%d nq=%d", m.nbody, m.ngeom, m.nq)

    def _is_descendant(self, b: int, root: int) -> bool:
        while b > 0:
            if b == root:
                return True
            b = self.model.body_parentid[b]
        return root == 0

    def _solve_home(self) -> np.ndarray:
        q = R.READY_Q.copy()
        for _ in range(20):
            q = self.ik.solve(q, HOME_TCP, top_down_mat(0.0), iters=5)
        return q

    # ------------------------------------------------------------------ layout
    def _set_active(self, key: str, on: bool) -> None:
        g = self._geoms[key]
        ct, ca, grp = self._geom_defaults
        m = self.model
        m.geom_contype[g] = ct[g] if on else 0
        m.geom_conaffinity[g] = ca[g] if on else 0
        m.geom_group[g] = grp[g] if on else HIDDEN_GROUP

    def apply(self, layout: Layout) -> None:
        """Reset the simulation to `layout` (arm at home, gripper open) and settle for a moment."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self.layout = layout
        self.active = [p.name for p in layout.objects]
        m.geom_matid[self.table_geom] = self.table_mat[layout.table_style]
        for lid, (scale, pos) in zip(self.lights, LIGHTINGS[layout.lighting]):
            m.light_diffuse[lid] = scale
            m.light_pos[lid] = pos
            direction = -np.asarray(pos) + np.array([0.0, 0.0, 0.0])
            m.light_dir[lid] = direction / np.linalg.norm(direction)
        for name in ("plate", "bowl"):
            xy = getattr(layout, name)
            b = self.fix_body[name]
            self._set_active(name, xy is not None)
            m.body_pos[b] = [xy[0], xy[1], 0.0] if xy is not None else [3.0, 0.0, PARK_Z]
        cb = self.fix_body["cabinet"]
        self._set_active("cabinet", layout.cabinet)
        m.body_pos[cb] = CABINET_POS if layout.cabinet else (3.0, 2.0, PARK_Z)
        for dname, adr in self.drawer_qpos.items():
            d.qpos[adr] = layout.drawers.get(dname, 0.0) if layout.cabinet else 0.0
        d.qpos[self.arm.qpos] = self.home_q
        d.qpos[self.arm.finger_qpos] = R.FINGER_MAX
        d.ctrl[self.arm.act] = self.home_q
        d.ctrl[self.arm.finger_act] = R.FINGER_MAX
        self._grip_cmd = 1.0
        mujoco.mj_kinematics(m, d)  # drawer frames for objects placed inside drawers
        for i, name in enumerate(CATALOG):
            adr, b = self.obj_qpos[name], self.obj_body[name]
            self._set_active(name, name in self.active)
            m.body_gravcomp[b] = 0.0 if name in self.active else 1.0
            d.qpos[adr : adr + 3] = [3.0 + 0.2 * i, -2.0, PARK_Z]
            d.qpos[adr + 3 : adr + 7] = [1, 0, 0, 0]
        for p in layout.objects:
            spec = CATALOG[p.name]
            adr = self.obj_qpos[p.name]
            z = O.object_half_height(spec) + 0.002
            pos = np.array([p.x, p.y, z])
            if p.in_drawer is not None:
                db = self.drawer_body[p.in_drawer]
                geo = O.drawer_geometry(O.DRAWER_NAMES.index(p.in_drawer))
                local = np.array([geo.inner_center_x + p.x, p.y, geo.floor_z + z])
                pos = d.xpos[db] + d.xmat[db].reshape(3, 3) @ local
            d.qpos[adr : adr + 3] = pos
            d.qpos[adr + 3 : adr + 7] = [np.cos(p.yaw / 2), 0, 0, np.sin(p.yaw / 2)]
        mujoco.mj_forward(m, d)
        for _ in range(int(0.3 / TIMESTEP)):  # let objects settle onto the table
            mujoco.mj_step(m, d)

    # ------------------------------------------------------------------ control
    def step(self, action: np.ndarray) -> None:
        """Execute one control step of an already-validated, already-clipped 7-D action (see env.py)."""
        m, d = self.model, self.data
        pos, mat = self.ik.tcp_pose(d)
        target_pos = np.clip(pos + action[:3], TCP_BOUNDS[0], TCP_BOUNDS[1])
        target_mat = R.mat_from_euler(action[3:6]) @ mat
        q = self.ik.solve(d.qpos[self.arm.qpos].copy(), target_pos, target_mat)
        d.ctrl[self.arm.act] = q
        self._grip_cmd = float(np.clip(action[6], 0.0, 1.0))
        d.ctrl[self.arm.finger_act] = self._grip_cmd * R.FINGER_MAX
        for _ in range(self.n_substeps):
            mujoco.mj_step(m, d)

    # ------------------------------------------------------------------ queries
    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ik.tcp_pose(self.data)

    def gripper_openness(self) -> float:
        """Finger opening as a fraction of the maximum (1 = fully open, 0 = closed)."""
        return float(np.mean(self.data.qpos[self.arm.finger_qpos]) / R.FINGER_MAX)

    def state(self) -> np.ndarray:
        """(8,) float32: TCP xyz, TCP quaternion xyzw, gripper openness."""
        pos, mat = self.tcp_pose()
        q = np.zeros(4)
        mujoco.mju_mat2Quat(q, mat.reshape(9))
        # q and -q are the same rotation: take the sign with a positive dot product with a fixed reference between the
        # top-down and forward poses, so the state is continuous for top-down yaws in (-120, 240) deg, for the forward
        # (drawer) poses and everything between them
        if float(q @ _QUAT_REF) < 0:
            q = -q
        return np.array([*pos, q[1], q[2], q[3], q[0], self.gripper_openness()], dtype=np.float32)

    def object_pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self.obj_body[name]].copy()

    def object_mat(self, name: str) -> np.ndarray:
        return self.data.xmat[self.obj_body[name]].reshape(3, 3).copy()

    def object_pose(self, name: str) -> np.ndarray:
        """(7,) position + quaternion xyzw of an object."""
        q = self.data.xquat[self.obj_body[name]]
        return np.array([*self.object_pos(name), q[1], q[2], q[3], q[0]])

    def fixture_pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self.fix_body[name]].copy()

    def drawer_opening(self, name: str) -> float:
        return float(self.data.qpos[self.drawer_qpos[name]])

    def handle_pos(self, name: str) -> np.ndarray:
        return self.data.site_xpos[self.model.site(f"fix/handle_{name}").id].copy()

    def contacts_with(self, name: str) -> set[int]:
        """Body ids touching object `name`."""
        b = self.obj_body[name]
        out: set[int] = set()
        d, m = self.data, self.model
        for i in range(d.ncon):
            c = d.contact[i]
            b1, b2 = m.geom_bodyid[c.geom1], m.geom_bodyid[c.geom2]
            if b1 == b:
                out.add(int(b2))
            elif b2 == b:
                out.add(int(b1))
        return out

    def is_grasped(self, name: str) -> bool:
        """Both finger pads touch the object."""
        touching = self.contacts_with(name)
        pads = {int(self.model.geom_bodyid[g]) for g in self.arm.pad_geoms}
        return pads <= touching

    def in_drawer(self, name: str, drawer: str) -> bool:
        """The object's centre is inside the drawer's box (in the drawer frame)."""
        db = self.drawer_body[drawer]
        geo = O.drawer_geometry(O.DRAWER_NAMES.index(drawer))
        local = self.data.xmat[db].reshape(3, 3).T @ (self.object_pos(name) - self.data.xpos[db])
        hx, hy, hz = geo.inner_half
        return (
            abs(local[0] - geo.inner_center_x) < hx + 0.005
            and abs(local[1]) < hy + 0.005
            and geo.floor_z - 0.01 < local[2] < geo.floor_z + 2 * hz + 0.02
        )

    def on_plate(self, name: str) -> bool:
        if self.layout is None or self.layout.plate is None:
            return False
        p, c = self.object_pos(name), self.fixture_pos("plate")
        hh = O.object_half_height(CATALOG[name])
        return bool(
            np.hypot(*(p[:2] - c[:2])) < O.PLATE_RADIUS - 0.005 and p[2] < 2 * O.PLATE_HALF_H + hh + 0.02
        )

    def in_bowl(self, name: str) -> bool:
        if self.layout is None or self.layout.bowl is None:
            return False
        p, c = self.object_pos(name), self.fixture_pos("bowl")
        return bool(np.hypot(*(p[:2] - c[:2])) < O.BOWL_RADIUS - 0.01 and p[2] < O.BOWL_WALL_H + 0.03)

    def where_is(self, name: str) -> str | None:
        """ "plate" / "bowl" / "drawer:<name>" if the object rests in or on it, else None."""
        if self.on_plate(name):
            return "plate"
        if self.in_bowl(name):
            return "bowl"
        if self.layout is not None and self.layout.cabinet:
            for dname in O.DRAWER_NAMES:
                if self.in_drawer(name, dname):
                    return f"drawer:{dname}"
        return None


def top_down_mat(yaw: float) -> np.ndarray:
    """TCP rotation with the approach axis pointing down; yaw 0 = fingers closing along world y."""
    # hand z -> world -z; finger axis (hand y) -> world (-sin yaw, cos yaw)
    base = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]])
    cz, sz = np.cos(yaw), np.sin(yaw)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1.0]])
    return rz @ base


def forward_mat(yaw: float = 0.0) -> np.ndarray:
    """TCP rotation with the approach axis horizontal along world +x (rotated by yaw), fingers closing along y.

    The hand's x axis points down (world -z): with the Panda's joint-6 range this is the reachable way to point the
    gripper forward at table height (the wrist turns over on joint 5).
    """
    base = np.array([[0.0, 0, 1.0], [0, 1.0, 0], [-1.0, 0, 0]])  # columns: hand x, y, z in the world
    cz, sz = np.cos(yaw), np.sin(yaw)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1.0]])
    return rz @ base


__all__ = ["Scene", "Layout", "Placement", "ObjectSpec", "top_down_mat", "forward_mat", "sample_positions"]
