"""The arm: a 7-DoF Panda-kinematics arm with a parallel gripper built from primitives, and its IK controller.

The arm follows the Franka Panda's published kinematics (modified DH parameters, joint limits) so that reach and
redundancy behave like the real robot, but is drawn with capsules and boxes (no mesh files, no extra dependency, fast
CPU rendering). The controller turns a 7-D end-effector delta into joint position targets by damped-least-squares IK.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

# Modified DH (Craig) parameters of the Panda: (a_{i-1}, d_i, alpha_{i-1}) for joints 1..7; flange offset 0.107 m.
PANDA_DH: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -np.pi / 2),
    (0.0, 0.316, np.pi / 2),
    (0.0825, 0.0, np.pi / 2),
    (-0.0825, 0.384, -np.pi / 2),
    (0.0, 0.0, np.pi / 2),
    (0.088, 0.0, np.pi / 2),
)
PANDA_FLANGE = 0.107
PANDA_LIMITS: tuple[tuple[float, float], ...] = (
    (-2.8973, 2.8973),
    (-1.7628, 1.7628),
    (-2.8973, 2.8973),
    (-3.0718, -0.0698),
    (-2.8973, 2.8973),
    (-0.0175, 3.7525),
    (-2.8973, 2.8973),
)
# A comfortable "ready" posture (gripper pointing down); the env's start pose is solved by IK from it.
READY_Q = np.array([0.0, -0.3, 0.0, -2.4, 0.0, 2.1, np.pi / 4])

ARM_JOINTS = tuple(f"arm/joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("arm/finger_left", "arm/finger_right")
TCP_SITE = "arm/tcp"
FINGER_MAX = 0.04  # metres of travel per finger (8 cm max opening)
TCP_OFFSET = 0.095  # hand origin -> tool centre point (between the finger pads), metres

# Collision bits: 1 static (table, cabinet carcass, plate, bowl), 2 arm, 4 objects, 8 drawers.
ARM_CONTYPE, ARM_CONAFFINITY = 2, 0

_LINK_RGBA = (0.92, 0.92, 0.94, 1.0)
_JOINT_RGBA = (0.25, 0.25, 0.28, 1.0)


def _rotx_quat(alpha: float) -> list[float]:
    return [float(np.cos(alpha / 2)), float(np.sin(alpha / 2)), 0.0, 0.0]


def _capsule(
    body: mujoco.MjsBody, start: np.ndarray, end: np.ndarray, radius: float, rgba, collide: bool
) -> None:
    if np.linalg.norm(end - start) < 1e-6:
        return
    g = body.add_geom(
        type=mujoco.mjtGeom.mjGEOM_CAPSULE, fromto=[*start, *end], size=[radius, 0, 0], rgba=rgba
    )
    g.contype, g.conaffinity = (ARM_CONTYPE, ARM_CONAFFINITY) if collide else (0, 0)
    g.density = 0  # the arm's inertia is set explicitly below


def build_arm(parent: mujoco.MjsBody, base_pos: tuple[float, float, float]) -> None:
    """Add the arm (bodies, joints, actuators, TCP site, wrist camera) under `parent` at `base_pos`."""
    spec = parent.add_body(name="arm/base", pos=list(base_pos))
    # pedestal and base link
    ped = spec.add_geom(
        type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[0.09, 0.03, 0], pos=[0, 0, 0.03], rgba=_JOINT_RGBA
    )
    ped.contype, ped.conaffinity = 0, 0
    body = spec
    for i, (a, d, alpha) in enumerate(PANDA_DH):
        pos = np.array([a, -np.sin(alpha) * d, np.cos(alpha) * d])
        # link geometry drawn in the parent body, from its origin to this joint's origin
        # links are visual only: the hand and fingers carry the contacts (a folded wrist must not bat objects away)
        _capsule(body, np.zeros(3), pos, 0.055 if i < 4 else 0.045, _LINK_RGBA, collide=False)
        body = body.add_body(name=f"arm/link{i + 1}", pos=pos.tolist(), quat=_rotx_quat(alpha))
        body.gravcomp = 1.0
        body.mass, body.inertia, body.explicitinertial = 1.5 if i < 4 else 0.8, [0.01, 0.01, 0.01], True
        lo, hi = PANDA_LIMITS[i]
        j = body.add_joint(
            name=ARM_JOINTS[i], type=mujoco.mjtJoint.mjJNT_HINGE, axis=[0, 0, 1], range=[lo, hi]
        )
        j.limited = mujoco.mjtLimited.mjLIMITED_TRUE
        j.armature, j.damping = 0.1, [2.0, 0, 0]
        jg = body.add_geom(
            type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[0.06 if i < 4 else 0.05, 0.06, 0], rgba=_JOINT_RGBA
        )
        jg.contype, jg.conaffinity, jg.density = 0, 0, 0
    # flange -> hand (rotated -45 deg about z like the Panda hand, so the fingers close along the link7 diagonal)
    _capsule(body, np.zeros(3), np.array([0, 0, PANDA_FLANGE - 0.01]), 0.04, _LINK_RGBA, collide=False)
    hand = body.add_body(
        name="arm/hand", pos=[0, 0, PANDA_FLANGE], quat=[np.cos(-np.pi / 8), 0, 0, np.sin(-np.pi / 8)]
    )
    hand.gravcomp = 1.0
    hand.mass, hand.inertia, hand.explicitinertial = 0.7, [0.002, 0.002, 0.002], True
    hb = hand.add_geom(
        type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.022, 0.095, 0.03], pos=[0, 0, 0.03], rgba=_LINK_RGBA
    )
    hb.contype, hb.conaffinity, hb.density = ARM_CONTYPE, ARM_CONAFFINITY, 0
    hand.add_site(name=TCP_SITE, pos=[0, 0, TCP_OFFSET], size=[0.005, 0, 0], rgba=[1, 0, 0, 0])
    # wrist camera: on the back of the hand, looking along the approach axis (+z of the hand) tilted toward the
    # fingertips; image "up" is the hand's +x (world forward for a top-down grasp at yaw 0)
    tilt = 0.32
    view = np.array([np.sin(tilt), 0.0, np.cos(tilt)])
    up = np.array([1.0, 0.0, 0.0]) - view * view[0]
    up /= np.linalg.norm(up)
    cam_z = -view
    cam_x = np.cross(up, cam_z)
    cam_q = np.zeros(4)
    mujoco.mju_mat2Quat(cam_q, np.stack([cam_x, up, cam_z], axis=1).reshape(9))
    hand.add_camera(name="wrist", pos=[-0.075, 0.0, 0.01], quat=cam_q.tolist(), fovy=70.0)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        f = hand.add_body(name=f"arm/finger_{side}_body", pos=[0, 0, 0.058])
        f.gravcomp = 1.0
        f.mass, f.inertia, f.explicitinertial = 0.05, [1e-5, 1e-5, 1e-5], True
        fj = f.add_joint(
            name=f"arm/finger_{side}",
            type=mujoco.mjtJoint.mjJNT_SLIDE,
            axis=[0, sign, 0],
            range=[0, FINGER_MAX],
        )
        fj.limited = mujoco.mjtLimited.mjLIMITED_TRUE
        fj.armature, fj.damping = 0.3, [2.0, 0, 0]  # reflected inertia: stiff pad contacts
        pad = f.add_geom(
            name=f"arm/pad_{side}",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[0.015, 0.006, 0.028],
            pos=[0, sign * 0.006, 0.03],
            rgba=_JOINT_RGBA,
        )
        pad.contype, pad.conaffinity, pad.density = ARM_CONTYPE, ARM_CONAFFINITY, 0
        pad.condim, pad.friction = 4, [1.5, 0.05, 0.001]
        pad.priority = 1
        pad.solref = [0.008, 1.0]
        # finger knuckle (visual)
        k = f.add_geom(
            type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.011, 0.009, 0.006], pos=[0, sign * 0.009, -0.002]
        )
        k.rgba, k.contype, k.conaffinity, k.density = list(_LINK_RGBA), 0, 0, 0


def add_arm_actuators(spec: mujoco.MjSpec) -> None:
    """Joint position servos (gravity is compensated) and one position servo per finger."""
    kps = (3000, 3000, 2500, 2500, 1500, 1500, 1000)
    for name, kp in zip(ARM_JOINTS, kps):
        act = spec.add_actuator(name=f"act/{name}", target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=kp, dampratio=1.0, inheritrange=True)
        act.forcerange, act.forcelimited = [-150, 150], mujoco.mjtLimited.mjLIMITED_TRUE
    for name in FINGER_JOINTS:
        act = spec.add_actuator(name=f"act/{name}", target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=2500, dampratio=1.0, inheritrange=True)
        act.forcerange, act.forcelimited = [-25, 25], mujoco.mjtLimited.mjLIMITED_TRUE


@dataclass
class ArmIds:
    """Indices of the arm in a compiled model."""

    qpos: np.ndarray  # (7,) qpos addresses of the arm joints
    dof: np.ndarray  # (7,) dof addresses
    finger_qpos: np.ndarray  # (2,)
    finger_dof: np.ndarray  # (2,)
    act: np.ndarray  # (7,) arm actuator ids
    finger_act: np.ndarray  # (2,)
    tcp: int  # site id
    lo: np.ndarray  # (7,) joint lower limits
    hi: np.ndarray  # (7,)
    pad_geoms: tuple[int, int]

    @classmethod
    def from_model(cls, model: mujoco.MjModel) -> ArmIds:
        jid = [model.joint(n).id for n in ARM_JOINTS]
        fid = [model.joint(n).id for n in FINGER_JOINTS]
        return cls(
            qpos=np.array([model.jnt_qposadr[j] for j in jid]),
            dof=np.array([model.jnt_dofadr[j] for j in jid]),
            finger_qpos=np.array([model.jnt_qposadr[j] for j in fid]),
            finger_dof=np.array([model.jnt_dofadr[j] for j in fid]),
            act=np.array([model.actuator(f"act/{n}").id for n in ARM_JOINTS]),
            finger_act=np.array([model.actuator(f"act/{n}").id for n in FINGER_JOINTS]),
            tcp=model.site(TCP_SITE).id,
            lo=model.jnt_range[jid, 0].copy(),
            hi=model.jnt_range[jid, 1].copy(),
            pad_geoms=(model.geom("arm/pad_left").id, model.geom("arm/pad_right").id),
        )


def rotvec_from_mat(mat: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle) of a 3x3 rotation matrix."""
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(mat).reshape(9))
    v = np.zeros(3)
    mujoco.mju_quat2Vel(v, q, 1.0)
    return v


def mat_from_rotvec(vec: np.ndarray) -> np.ndarray:
    """3x3 rotation of a rotation vector."""
    angle = float(np.linalg.norm(vec))
    if angle < 1e-12:
        return np.eye(3)
    k = vec / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def mat_from_euler(rpy: np.ndarray) -> np.ndarray:
    """3x3 rotation from extrinsic x-y-z (roll, pitch, yaw) angles: R = Rz(yaw) Ry(pitch) Rx(roll)."""
    cr, sr = np.cos(rpy[0]), np.sin(rpy[0])
    cp, sp = np.cos(rpy[1]), np.sin(rpy[1])
    cy, sy = np.cos(rpy[2]), np.sin(rpy[2])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def euler_from_mat(mat: np.ndarray) -> np.ndarray:
    """Inverse of `mat_from_euler` (roll, pitch, yaw), pitch in [-pi/2, pi/2]."""
    pitch = np.arcsin(np.clip(-mat[2, 0], -1.0, 1.0))
    roll = np.arctan2(mat[2, 1], mat[2, 2])
    yaw = np.arctan2(mat[1, 0], mat[0, 0])
    return np.array([roll, pitch, yaw])


class IKController:
    """Damped-least-squares IK from a TCP pose target to arm joint targets, with a posture term in the null space."""

    def __init__(self, model: mujoco.MjModel, ids: ArmIds, damping: float = 0.05, iters: int = 3):
        self.model, self.ids = model, ids
        self.scratch = mujoco.MjData(model)
        self.damping, self.iters = damping, iters
        self.posture = READY_Q.copy()
        self.posture_gain = 0.2
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def tcp_pose(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,), rotation (3,3)) of the tool centre point in `data`."""
        return data.site_xpos[self.ids.tcp].copy(), data.site_xmat[self.ids.tcp].reshape(3, 3).copy()

    def solve(self, q0: np.ndarray, pos: np.ndarray, mat: np.ndarray, iters: int | None = None) -> np.ndarray:
        """Joint positions (7,) that bring the TCP to (pos, mat), starting from joint positions q0."""
        m, d, ids = self.model, self.scratch, self.ids
        q = q0.copy()
        lam2 = self.damping**2
        n = self.iters if iters is None else iters
        for it in range(n):
            d.qpos[ids.qpos] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            p, r = d.site_xpos[ids.tcp], d.site_xmat[ids.tcp].reshape(3, 3)
            err = np.concatenate([pos - p, rotvec_from_mat(mat @ r.T)])
            mujoco.mj_jacSite(m, d, self._jacp, self._jacr, ids.tcp)
            jac = np.vstack([self._jacp[:, ids.dof], self._jacr[:, ids.dof]])  # (6, 7)
            jjt = jac @ jac.T + lam2 * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, err)
            if it < n - 1:  # null-space pull toward the posture keeps the redundant elbow well-behaved
                pinv = jac.T @ np.linalg.solve(jjt, np.eye(6))
                dq += (np.eye(7) - pinv @ jac) @ (self.posture_gain * (self.posture - q))
            q = np.clip(q + dq, ids.lo, ids.hi)
        return q
