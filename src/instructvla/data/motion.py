"""Language motion ("move primitives"): per-frame words describing the end effector's next motion (method.md §5.2).

For frame t the window s_t .. s_{t+2} of 8-d states (xyz, quaternion xyzw, gripper) gives
Δxyz (scaled down to an L1 norm of at most 3θ), Δrotation = q_{t+2} · q_t⁻¹ as extrinsic xyz Euler angles (pitch term
−pitch/3, yaw term yaw/5, roll unused) and Δgripper. Each term is quantised with θ = 0.02 into {−1, 0, 1} and
verbalised: "move forward left, tilt down, close gripper"; nothing moving -> "stop"; the last two frames -> "stop".
The gripper term is "close gripper" when the gripper closes, whichever convention the state uses (`gripper=`).
Pure numpy.
"""

from __future__ import annotations

import numpy as np

THETA = 0.02
WINDOW = 2  # s_t .. s_{t+WINDOW}

# words for the quantised values -1 / +1 of each term
_TRANSLATION = (("backward", "forward"), ("right", "left"), ("down", "up"))
_PITCH = ("tilt down", "tilt up")
_YAW = ("rotate clockwise", "rotate counterclockwise")
_GRIPPER = ("open gripper", "close gripper")  # for a gripper state that grows when closing (Fractal convention)

GRIPPER_CONVENTIONS = ("closedness", "openness")


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions xyzw (any norm > 0) -> (N, 3, 3) rotation matrices."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=-2,
    )


def relative_euler(q_start: np.ndarray, q_end: np.ndarray) -> np.ndarray:
    """Extrinsic xyz Euler angles (roll, pitch, yaw) of q_end · q_start⁻¹ for (N, 4) xyzw quaternions -> (N, 3)."""
    r = _quat_to_matrix(q_end) @ np.swapaxes(_quat_to_matrix(q_start), -1, -2)
    roll = np.arctan2(r[:, 2, 1], r[:, 2, 2])
    pitch = np.arcsin(np.clip(-r[:, 2, 0], -1.0, 1.0))
    yaw = np.arctan2(r[:, 1, 0], r[:, 0, 0])
    return np.stack([roll, pitch, yaw], axis=-1)


def quantize_motion(
    states: np.ndarray, theta: float = THETA, gripper: str = "openness"
) -> np.ndarray:
    """Quantised motion terms per frame: (T, 8) states -> (T, 6) int8 in {-1, 0, 1}.

    Columns: x, y, z, pitch term, yaw term, gripper term (+1 = closing). The last `WINDOW` frames are all zero.
    `gripper` says what the state's gripper value measures: "openness" (1 = open; the tabletop env's state) or
    "closedness" (1 = closed; Fractal's `gripper_closed`, the convention of method.md's word order).
    """
    s = _check_states(states)
    if not theta > 0:
        raise ValueError(f"theta must be > 0, got {theta}")
    if gripper not in GRIPPER_CONVENTIONS:
        raise ValueError(f"gripper must be one of {GRIPPER_CONVENTIONS}, got {gripper!r}")
    t = s.shape[0]
    out = np.zeros((t, 6), dtype=np.int8)
    n = t - WINDOW
    if n <= 0:
        return out
    start, end = s[:n], s[WINDOW:]
    dxyz = end[:, :3] - start[:, :3]
    l1 = np.abs(dxyz).sum(axis=-1, keepdims=True)
    limit = 3 * theta
    dxyz = np.where(l1 > limit, dxyz * limit / np.maximum(l1, 1e-12), dxyz)
    euler = relative_euler(start[:, 3:7], end[:, 3:7])
    dgrip = end[:, 7] - start[:, 7]
    if gripper == "openness":
        dgrip = -dgrip
    terms = np.concatenate([dxyz, (-euler[:, 1] / 3)[:, None], (euler[:, 2] / 5)[:, None], dgrip[:, None]], axis=-1)
    out[:n] = (terms > theta).astype(np.int8) - (terms < -theta).astype(np.int8)
    return out


def verbalize(move: np.ndarray) -> str:
    """Words for one quantised (6,) motion vector, e.g. [1, 1, 0, 0, 0, 1] -> "move forward left, close gripper"."""
    move = np.asarray(move)
    if move.shape != (6,):
        raise ValueError(f"motion vector must have shape (6,), got {move.shape}")
    parts = []
    words = [_TRANSLATION[i][int(move[i] > 0)] for i in range(3) if move[i] != 0]
    if words:
        parts.append("move " + " ".join(words))
    for value, pair in zip(move[3:], (_PITCH, _YAW, _GRIPPER)):
        if value != 0:
            parts.append(pair[int(value > 0)])
    return ", ".join(parts) if parts else "stop"


def motion_primitives(states: np.ndarray, theta: float = THETA, gripper: str = "openness") -> list[str]:
    """One language-motion phrase per frame of an episode's (T, 8) states (xyz, quat xyzw, gripper)."""
    return [verbalize(m) for m in quantize_motion(states, theta=theta, gripper=gripper)]


def _check_states(states: np.ndarray) -> np.ndarray:
    s = np.asarray(states, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != 8:
        raise ValueError(f"states must have shape (T, 8) (xyz, quat xyzw, gripper), got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("states contain NaN or inf")
    if s.shape[0] and np.any(np.linalg.norm(s[:, 3:7], axis=-1) < 1e-8):
        raise ValueError("states contain a zero quaternion (columns 3:7)")
    return s
