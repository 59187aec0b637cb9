"""Geometry of catalogue objects and fixtures (plate, bowl, three-drawer cabinet), added to a `mujoco.MjSpec`.

Objects are free bodies built from the catalogue's primitive, size and colour. Round objects get a small invisible
flat foot so they rest where they are put instead of rolling. Letter blocks carry their letter in white strokes on the
top and the four sides. All names are prefixed: "obj/<name>", "fix/plate", "fix/bowl", "fix/cabinet",
"fix/drawer_<top|middle|bottom>".
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from instructvla.sim.catalog import ObjectSpec

# collision bits (see robot.py): 1 static, 2 arm, 4 objects, 8 drawers
STATIC_CONTYPE, STATIC_CONAFF = 1, 2 | 4
OBJ_CONTYPE, OBJ_CONAFF = 4, 1 | 2 | 4 | 8
DRAWER_CONTYPE, DRAWER_CONAFF = 8, 2 | 4
VISUAL_GROUP, COLLISION_ONLY_GROUP = 0, 3

PLATE_RADIUS = 0.075
PLATE_HALF_H = 0.005
BOWL_RADIUS = 0.08
BOWL_WALL_H = 0.045

# Cabinet (frame: origin at the front-bottom centre, +x into the cabinet = world +x). Drawers slide toward -x.
CAB_DEPTH, CAB_WIDTH, CAB_HEIGHT, CAB_WALL = 0.24, 0.24, 0.33, 0.01
DRAWER_NAMES = ("bottom", "middle", "top")
DRAWER_TRAVEL = 0.18
HANDLE_STANDOFF = 0.035  # handle bar axis distance in front of the drawer face
HANDLE_HALF_LEN = 0.028
_COMPARTMENT_H = (CAB_HEIGHT - 4 * CAB_WALL) / 3
_DRAWER_FRONT_T = 0.012


def object_body_name(name: str) -> str:
    return f"obj/{name}"


def object_half_height(spec: ObjectSpec) -> float:
    """Height of the object's centre above the surface it rests on (its default upright pose)."""
    if spec.shape == "sphere":
        return spec.size[0]
    if spec.shape in ("cylinder",):
        return spec.size[1]
    if spec.shape == "capsule":
        return spec.size[1] + spec.size[0]
    return spec.size[2]


def object_radius(spec: ObjectSpec) -> float:
    """Radius of the object's footprint (for non-overlapping layouts)."""
    if spec.shape in ("sphere", "cylinder", "capsule"):
        return spec.size[0]
    return float(np.hypot(spec.size[0], spec.size[1]))


def _quat_from_mat(mat: np.ndarray) -> list[float]:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(mat, dtype=np.float64).reshape(9))
    return q.tolist()


# Letter strokes as segments in a unit face square [-1, 1]^2 (u right, v up).
LETTER_STROKES: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "L": ((-0.55, 0.75, -0.55, -0.75), (-0.55, -0.75, 0.6, -0.75)),
    "V": ((-0.65, 0.75, 0.0, -0.75), (0.0, -0.75, 0.65, 0.75)),
    "A": ((-0.65, -0.75, 0.0, 0.75), (0.0, 0.75, 0.65, -0.75), (-0.33, -0.1, 0.33, -0.1)),
}


def _add_letter(body: mujoco.MjsBody, letter: str, half: tuple[float, float, float]) -> None:
    strokes = LETTER_STROKES.get(letter)
    if strokes is None:
        return
    # faces: (normal axis in body frame, u axis, v axis, half-size along normal)
    faces = [
        (
            np.array([0, 0, 1.0]),
            np.array([0, -1.0, 0]),
            np.array([1.0, 0, 0]),
            half[2],
        ),  # top, letter "up" = +x
        (np.array([-1.0, 0, 0]), np.array([0, -1.0, 0]), np.array([0, 0, 1.0]), half[0]),
        (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0]), half[0]),
        (np.array([0, 1.0, 0]), np.array([-1.0, 0, 0]), np.array([0, 0, 1.0]), half[1]),
        (np.array([0, -1.0, 0]), np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), half[1]),
    ]
    scale = 0.72 * min(half)
    for normal, u, v, h in faces:
        for u1, v1, u2, v2 in strokes:
            a = np.array([u1, v1]) * scale
            b = np.array([u2, v2]) * scale
            mid, vec = (a + b) / 2, b - a
            length = float(np.linalg.norm(vec))
            d = vec / length
            x_axis = d[0] * u + d[1] * v  # along the stroke
            z_axis = normal
            y_axis = np.cross(z_axis, x_axis)
            pos = mid[0] * u + mid[1] * v + normal * (h + 0.0004)
            g = body.add_geom(
                type=mujoco.mjtGeom.mjGEOM_BOX,
                size=[length / 2 + 0.0018, 0.0022, 0.0005],
                pos=pos.tolist(),
                quat=_quat_from_mat(np.stack([x_axis, y_axis, z_axis], axis=1)),
                rgba=[0.97, 0.97, 0.97, 1.0],
            )
            g.contype, g.conaffinity, g.density = 0, 0, 0


def add_object(world: mujoco.MjsBody, spec: ObjectSpec) -> mujoco.MjsBody:
    """Add a free-floating catalogue object; its main geom is named like its body."""
    body = world.add_body(name=object_body_name(spec.name), pos=[0, 0, 1.0])
    body.add_freejoint(name=f"{object_body_name(spec.name)}/free")
    shape = {
        "sphere": mujoco.mjtGeom.mjGEOM_SPHERE,
        "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
        "box": mujoco.mjtGeom.mjGEOM_BOX,
        "ellipsoid": mujoco.mjtGeom.mjGEOM_ELLIPSOID,
        "capsule": mujoco.mjtGeom.mjGEOM_CAPSULE,
    }.get(spec.shape)
    if shape is None:
        raise ValueError(f"catalogue object {spec.name!r}: unknown shape {spec.shape!r}")
    size = list(spec.size) + [0.0] * (3 - len(spec.size))
    g = body.add_geom(name=object_body_name(spec.name), type=shape, size=size, rgba=list(spec.rgba))
    g.contype, g.conaffinity, g.density = OBJ_CONTYPE, OBJ_CONAFF, 400.0
    g.condim, g.friction = 4, [1.0, 0.01, 0.001]
    hh = object_half_height(spec)
    if spec.shape in ("sphere", "ellipsoid", "capsule"):
        foot = body.add_geom(
            type=mujoco.mjtGeom.mjGEOM_CYLINDER,
            size=[0.45 * min(size[0], size[1] or size[0]), 0.003, 0],
            pos=[0, 0, -hh + 0.003],
            rgba=[0, 0, 0, 0],
            group=COLLISION_ONLY_GROUP,
        )
        foot.contype, foot.conaffinity, foot.density = OBJ_CONTYPE, OBJ_CONAFF, 0
        foot.condim, foot.friction = 4, [1.0, 0.01, 0.001]
    if spec.shape == "cylinder" and spec.name == "mug":  # a handle so the mug reads as a mug
        h = body.add_geom(
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[0.006, 0.012, 0.02],
            pos=[0, -size[0] - 0.008, 0.0],
            rgba=list(spec.rgba),
        )
        h.contype, h.conaffinity, h.density = 0, 0, 0
    if spec.shape == "cylinder" and spec.category == "drink":  # a darker lid band
        lid = body.add_geom(
            type=mujoco.mjtGeom.mjGEOM_CYLINDER,
            size=[size[0] * 0.8, 0.003, 0],
            pos=[0, 0, size[1]],
            rgba=[0.75, 0.75, 0.78, 1.0],
        )
        lid.contype, lid.conaffinity, lid.density = 0, 0, 0
    if spec.letter:
        _add_letter(body, spec.letter, (size[0], size[1], size[2]))
    return body


def add_plate(world: mujoco.MjsBody) -> None:
    """A flat white plate (static fixture; moved per episode through `model.body_pos`)."""
    b = world.add_body(name="fix/plate", pos=[0, 0, 0])
    g = b.add_geom(
        name="fix/plate",
        type=mujoco.mjtGeom.mjGEOM_CYLINDER,
        size=[PLATE_RADIUS, PLATE_HALF_H, 0],
        pos=[0, 0, PLATE_HALF_H],
        rgba=[0.96, 0.96, 0.94, 1],
    )
    g.contype, g.conaffinity = STATIC_CONTYPE, STATIC_CONAFF
    rim = b.add_geom(
        type=mujoco.mjtGeom.mjGEOM_CYLINDER,
        size=[PLATE_RADIUS + 0.008, PLATE_HALF_H * 0.6, 0],
        pos=[0, 0, PLATE_HALF_H * 0.6],
        rgba=[0.55, 0.6, 0.7, 1],
    )
    rim.contype, rim.conaffinity = 0, 0


def add_bowl(world: mujoco.MjsBody, n_walls: int = 16) -> None:
    """A shallow brown bowl / basket: a disc and a ring of wall slats."""
    b = world.add_body(name="fix/bowl", pos=[0, 0, 0])
    rgba = [0.55, 0.36, 0.2, 1]
    g = b.add_geom(
        name="fix/bowl",
        type=mujoco.mjtGeom.mjGEOM_CYLINDER,
        size=[BOWL_RADIUS, 0.004, 0],
        pos=[0, 0, 0.004],
        rgba=rgba,
    )
    g.contype, g.conaffinity = STATIC_CONTYPE, STATIC_CONAFF
    slat = 2 * np.pi * BOWL_RADIUS / n_walls / 2 + 0.002
    for k in range(n_walls):
        a = 2 * np.pi * k / n_walls
        w = b.add_geom(
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[0.004, slat, BOWL_WALL_H / 2],
            pos=[BOWL_RADIUS * np.cos(a), BOWL_RADIUS * np.sin(a), BOWL_WALL_H / 2],
            quat=[np.cos(a / 2), 0, 0, np.sin(a / 2)],
            rgba=rgba if k % 2 else [0.48, 0.3, 0.16, 1],
        )
        w.contype, w.conaffinity = STATIC_CONTYPE, STATIC_CONAFF


@dataclass(frozen=True)
class DrawerGeometry:
    """Where a drawer sits in the cabinet frame (front centre of its compartment) and its inner box."""

    z_center: float
    inner_half: tuple[
        float, float, float
    ]  # inner half extents (x depth, y width, z height) of the drawer box
    inner_center_x: float  # x of the box centre in the drawer frame (+x into the cabinet)
    floor_z: float  # z of the inner floor in the drawer frame


def drawer_geometry(index: int) -> DrawerGeometry:
    z0 = CAB_WALL + index * (_COMPARTMENT_H + CAB_WALL)
    box_depth = CAB_DEPTH - CAB_WALL - _DRAWER_FRONT_T - 0.01
    half_w = CAB_WIDTH / 2 - CAB_WALL - 0.006
    wall_h = _COMPARTMENT_H - 0.02
    return DrawerGeometry(
        z_center=z0 + _COMPARTMENT_H / 2,
        inner_half=(box_depth / 2 - 0.006, half_w - 0.006, wall_h / 2),
        inner_center_x=_DRAWER_FRONT_T + box_depth / 2,
        floor_z=-_COMPARTMENT_H / 2 + 0.009,
    )


def add_cabinet(world: mujoco.MjsBody) -> None:
    """A three-drawer cabinet: drawers "top"/"middle"/"bottom" on slide joints "fix/drawer_<name>" (0 = closed)."""
    wood = [0.58, 0.42, 0.26, 1]
    front_rgba = [0.72, 0.55, 0.35, 1]
    cab = world.add_body(name="fix/cabinet", pos=[0, 0, 0])

    def box(body, name, half, pos, rgba, contype, conaff):
        g = body.add_geom(
            name=name, type=mujoco.mjtGeom.mjGEOM_BOX, size=list(half), pos=list(pos), rgba=rgba
        )
        g.contype, g.conaffinity = contype, conaff
        return g

    t, d, w, h = CAB_WALL, CAB_DEPTH, CAB_WIDTH, CAB_HEIGHT
    box(
        cab,
        "fix/cabinet",
        (d / 2, t / 2, h / 2),
        (d / 2, w / 2 - t / 2, h / 2),
        wood,
        STATIC_CONTYPE,
        STATIC_CONAFF,
    )
    box(cab, None, (d / 2, t / 2, h / 2), (d / 2, -w / 2 + t / 2, h / 2), wood, STATIC_CONTYPE, STATIC_CONAFF)
    box(cab, None, (t / 2, w / 2, h / 2), (d - t / 2, 0, h / 2), wood, STATIC_CONTYPE, STATIC_CONAFF)
    for k in range(4):  # floor, two shelves, roof
        z = t / 2 + k * (_COMPARTMENT_H + t)
        box(cab, None, (d / 2, w / 2, t / 2), (d / 2, 0, z), wood, STATIC_CONTYPE, STATIC_CONAFF)
    for i, name in enumerate(DRAWER_NAMES):
        geo = drawer_geometry(i)
        dr = cab.add_body(name=f"fix/drawer_{name}", pos=[0, 0, geo.z_center])
        j = dr.add_joint(
            name=f"fix/drawer_{name}",
            type=mujoco.mjtJoint.mjJNT_SLIDE,
            axis=[-1, 0, 0],
            range=[0, DRAWER_TRAVEL],
        )
        j.limited = mujoco.mjtLimited.mjLIMITED_TRUE
        j.damping, j.frictionloss, j.armature = [8.0, 0, 0], 0.3, 0.05
        ch = _COMPARTMENT_H
        box_depth = geo.inner_half[0] * 2 + 0.012
        half_w = geo.inner_half[1] + 0.006
        wall_h = geo.inner_half[2] * 2
        fz = -ch / 2 + 0.003
        box(
            dr,
            f"fix/drawer_{name}",
            (_DRAWER_FRONT_T / 2, w / 2 - t - 0.002, ch / 2 - 0.003),
            (_DRAWER_FRONT_T / 2, 0, 0),
            front_rgba,
            DRAWER_CONTYPE,
            DRAWER_CONAFF,
        )
        bx = _DRAWER_FRONT_T + box_depth / 2
        box(
            dr, None, (box_depth / 2, half_w, 0.003), (bx, 0, fz + 0.003), wood, DRAWER_CONTYPE, DRAWER_CONAFF
        )
        box(
            dr,
            None,
            (0.003, half_w, wall_h / 2),
            (_DRAWER_FRONT_T + box_depth - 0.003, 0, fz + wall_h / 2),
            wood,
            DRAWER_CONTYPE,
            DRAWER_CONAFF,
        )
        for s in (1, -1):
            box(
                dr,
                None,
                (box_depth / 2, 0.003, wall_h / 2),
                (bx, s * (half_w - 0.003), fz + wall_h / 2),
                wood,
                DRAWER_CONTYPE,
                DRAWER_CONAFF,
            )
        # handle: a vertical bar on two standoffs, grasped by a horizontal gripper with fingers closing along y
        metal = [0.3, 0.3, 0.32, 1]
        hg = dr.add_geom(
            name=f"fix/handle_{name}",
            type=mujoco.mjtGeom.mjGEOM_CAPSULE,
            size=[0.007, HANDLE_HALF_LEN, 0],
            pos=[-HANDLE_STANDOFF, 0, 0],
            rgba=metal,
        )
        hg.contype, hg.conaffinity = DRAWER_CONTYPE, DRAWER_CONAFF
        hg.condim, hg.friction = 4, [1.5, 0.02, 0.001]
        for s in (1, -1):
            box(
                dr,
                None,
                (HANDLE_STANDOFF / 2, 0.005, 0.005),
                (-HANDLE_STANDOFF / 2, 0, s * (HANDLE_HALF_LEN - 0.004)),
                metal,
                DRAWER_CONTYPE,
                DRAWER_CONAFF,
            )
        dr.add_site(
            name=f"fix/handle_{name}", pos=[-HANDLE_STANDOFF, 0, 0], size=[0.005, 0, 0], rgba=[0, 0, 0, 0]
        )
