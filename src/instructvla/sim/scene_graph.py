"""Scene graph: the privileged, language-ready description of a tabletop state.

The simulator fills it (`env.unwrapped.scene_graph()`); the language side (instructions, VLA-IT annotations,
multimodal QA) reads only this, never MuJoCo. Positions are in the table frame (metres): x forward (away from the
robot base), y left, z up, table surface at z = 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ObjectState:
    """One object instance in the scene. `name` is the catalogue name (sim.catalog.CATALOG) or a fixture name."""

    name: str
    position: tuple[float, float, float]
    is_fixture: bool = False
    inside: str | None = None  # "plate" / "bowl" / "drawer:top" when resting in/on it
    grasped: bool = False


@dataclass
class SceneGraph:
    """Everything the language side may know about the scene.

    objects:      objects and fixtures on (or in) the table.
    drawers:      drawer name ("top"|"middle"|"bottom") -> opening in metres (0 = closed); empty if no cabinet.
    table_style:  texture/lighting variant id (for captions: "wooden table", "white table", ...).
    task_family:  the task being solved ("pick", "place_on", "place_in", "move_near", "open_drawer", "close_drawer",
                  "stack", "drawer_then_place").
    task_args:    the task's arguments by role: {"target": "apple", "destination": "plate", "drawer": "top", ...}.
    """

    objects: list[ObjectState] = field(default_factory=list)
    drawers: dict[str, float] = field(default_factory=dict)
    table_style: str = "wooden table"
    task_family: str = ""
    task_args: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> ObjectState:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(f"no object {name!r} in scene (have: {[o.name for o in self.objects]})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SceneGraph:
        objs = [ObjectState(**{**o, "position": tuple(o["position"])}) for o in d.get("objects", [])]
        return cls(
            objects=objs,
            drawers=dict(d.get("drawers", {})),
            table_style=d.get("table_style", "wooden table"),
            task_family=d.get("task_family", ""),
            task_args=dict(d.get("task_args", {})),
        )
