"""Offscreen CPU rendering of the tabletop's cameras with fast settings (no shadows, no multisampling, no reflections).

The GL backend comes from `MUJOCO_GL` (default "egl", set with `setdefault` only when a renderer is created).
"""

from __future__ import annotations

import contextlib
import os

import mujoco
import numpy as np


def _gl_context(width: int, height: int):
    backend = os.environ.setdefault("MUJOCO_GL", "egl").lower()
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    else:
        from mujoco.glfw import GLContext
    return GLContext(width, height)


class CameraRenderer:
    """Renders named cameras of a model to (H, W, 3) uint8 arrays. One GL context per renderer."""

    def __init__(self, model: mujoco.MjModel, height: int = 224, width: int = 224, max_geom: int = 2000):
        if height <= 0 or width <= 0:
            raise ValueError(f"CameraRenderer: height/width must be positive, got {height}x{width}")
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        self.model, self.height, self.width = model, height, width
        self._gl = _gl_context(width, height)
        self._gl.make_current()
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
        self._scene = mujoco.MjvScene(model, maxgeom=max_geom)
        for flag in (
            mujoco.mjtRndFlag.mjRND_SHADOW,
            mujoco.mjtRndFlag.mjRND_REFLECTION,
            mujoco.mjtRndFlag.mjRND_SKYBOX,
        ):
            self._scene.flags[flag] = 0
        self._opt = (
            mujoco.MjvOption()
        )  # default geom groups 0-2 visible; 3 (collision-only) and 5 (hidden) are not
        self._pert = mujoco.MjvPerturb()
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._buf = np.empty((height, width, 3), dtype=np.uint8)

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """Image of `camera` for the current `data` (call after mj_forward/mj_step)."""
        cid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cid < 0:
            raise ValueError(f"CameraRenderer.render: no camera named {camera!r}")
        self._gl.make_current()
        self._cam.fixedcamid = cid
        mujoco.mjv_updateScene(
            self.model, data, self._opt, self._pert, self._cam, mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        mujoco.mjr_render(self._rect, self._scene, self._ctx)
        mujoco.mjr_readPixels(self._buf, None, self._rect, self._ctx)
        return np.flipud(self._buf).copy()

    def close(self) -> None:
        """Free the GL resources (safe to call twice)."""
        if getattr(self, "_ctx", None) is not None:
            self._ctx.free()
            self._ctx = None
        if getattr(self, "_gl", None) is not None:
            self._gl.free()
            self._gl = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn GL down already
            self.close()
