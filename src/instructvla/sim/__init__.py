"""The MuJoCo tabletop: scene, tasks, scripted experts and the gymnasium env (re-exported lazily)."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TabletopEnv": "instructvla.sim.env",
    "make_env": "instructvla.sim.env",
    "Expert": "instructvla.sim.experts",
    "make_expert": "instructvla.sim.experts",
    "TaskSpec": "instructvla.sim.tasks",
    "REGISTRY": "instructvla.sim.tasks",
    "get_task": "instructvla.sim.tasks",
    "list_tasks": "instructvla.sim.tasks",
    "register_task": "instructvla.sim.tasks",
    "Scene": "instructvla.sim.scene",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:  # imported on first use so `instructvla.sim.catalog` stays light
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'instructvla.sim' has no attribute {name!r}")
