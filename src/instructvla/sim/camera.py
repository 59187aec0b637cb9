"""Pinhole projection of world points into a MuJoCo camera's image, matching `render.CameraRenderer`'s frames.

MuJoCo camera model: the camera looks along its local -z with +y up and +x right (`data.cam_xmat` columns in the
world frame); `model.cam_fovy` is the vertical field of view in degrees, and the horizontal extent follows the
viewport's aspect ratio. Coordinates are normalised over the whole image: u = -1 at the left edge, +1 at the right
edge; v = -1 at the top edge, +1 at the bottom edge (image rows, as in the renderer's flipped output). Pixel column c
of a W-wide image spans u in [2c/W - 1, 2(c+1)/W - 1] (centre 2(c+0.5)/W - 1), rows likewise for v.
"""

from __future__ import annotations

import mujoco
import numpy as np


def camera_id(model: mujoco.MjModel, camera: str) -> int:
    """The id of the perspective, fovy-defined camera named `camera` (raises ValueError otherwise)."""
    cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cid < 0:
        raise ValueError(f"project_points: no camera named {camera!r}")
    if int(model.cam_projection[cid]) != 0:
        raise ValueError(f"project_points: camera {camera!r} is not a perspective camera")
    if np.any(model.cam_sensorsize[cid] > 0):
        raise ValueError(
            f"project_points: camera {camera!r} uses sensor intrinsics; only fovy cameras are supported"
        )
    return cid


def camera_frame(model: mujoco.MjModel, data: mujoco.MjData, camera: str) -> tuple[np.ndarray, np.ndarray]:
    """World position (3,) and rotation (3, 3) (columns: camera x right, y up, z backward) of a camera."""
    cid = camera_id(model, camera)
    return data.cam_xpos[cid].copy(), data.cam_xmat[cid].reshape(3, 3).copy()


def project_points(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    camera: str,
    points_xyz: np.ndarray,
    aspect: float = 1.0,
) -> np.ndarray:
    """(N, 2) normalised image coordinates (u, v) of world points (N, 3) in `camera` (see the module docstring).

    Uses `data.cam_xpos`/`cam_xmat`, i.e. the state of the last mj_forward/mj_step, like the renderer. `aspect` is
    the image width / height. Points outside the view give values outside [-1, 1] (not clipped); points at or behind
    the camera plane give NaN.
    """
    pts = np.asarray(points_xyz, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"project_points: expected points of shape (N, 3), got {pts.shape}")
    if aspect <= 0:
        raise ValueError(f"project_points: aspect must be positive, got {aspect}")
    cid = camera_id(model, camera)
    pos, mat = data.cam_xpos[cid], data.cam_xmat[cid].reshape(3, 3)
    local = (pts - pos) @ mat  # rows: camera-frame coordinates (x right, y up, z backward)
    depth = -local[:, 2]
    tan_half = np.tan(np.deg2rad(model.cam_fovy[cid]) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = local[:, 0] / (depth * tan_half * aspect)
        v = -local[:, 1] / (depth * tan_half)
    out = np.stack([u, v], axis=1)
    out[depth <= 1e-9] = np.nan
    return out


def to_pixels(uv: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, 2) integer (row, col) of the pixels containing normalised points (N, 2); may lie outside the image."""
    uv = np.asarray(uv, dtype=np.float64)
    col = np.floor((uv[:, 0] + 1) / 2 * width)
    row = np.floor((uv[:, 1] + 1) / 2 * height)
    return np.stack([row, col], axis=1).astype(np.int64)


__all__ = ["project_points", "camera_frame", "camera_id", "to_pixels"]
