"""Task families of the tabletop, their success predicates, the `TaskSpec` that configures them, and the task registry.

A family knows which objects it may use, how to turn a `TaskSpec` into concrete task arguments and an initial layout
(reproducibly from a numpy Generator), and when the task is solved. Named tasks ("pick/apple", "open_drawer/top",
"pick/any", ...) are registered below, where they are defined; `list_tasks()` lists them and is the entry of the
`instructvla tasks` command.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field, replace

import numpy as np

from instructvla.sim import objects as O
from instructvla.sim.catalog import CATALOG, FIXTURES
from instructvla.sim.scene import (
    LIGHTINGS,
    TABLE_STYLES,
    WORKSPACE_X,
    WORKSPACE_Y,
    Layout,
    Placement,
    Scene,
    sample_positions,
)

logger = logging.getLogger(__name__)

FAMILIES = (
    "pick",
    "place_on",
    "place_in",
    "move_near",
    "open_drawer",
    "close_drawer",
    "stack",
    "drawer_then_place",
)
DEFAULT_MAX_STEPS = {
    "pick": 80,
    "place_on": 130,
    "place_in": 130,
    "move_near": 130,
    "open_drawer": 110,
    "close_drawer": 90,
    "stack": 130,
    "drawer_then_place": 240,
}
LIFT_HEIGHT = 0.05  # pick: lifted at least this far above the start height while grasped
NEAR_DISTANCE = 0.10  # move_near: centre distance below max(this, r_target + r_ref + 0.04)
OPEN_THRESHOLD = 0.12  # open_drawer: opening (m) at or above
CLOSED_THRESHOLD = 0.02  # close_drawer: opening (m) at or below
CLOSE_START_OPENING = 0.15  # close_drawer: default initial opening
DRAWER_EXCLUDED = ("water bottle",)  # too tall for a drawer
IN_DRAWER_OPENING = 0.175  # a drawer holding the target at the start is pulled out this far
CABINET_FREE_Y = 0.11  # with the cabinet on the table, loose objects stay at y below this


@dataclass(frozen=True)
class TaskSpec:
    """What a task is. Name lists accept catalogue names, "category:<cat>" or "*" (everything the family allows).

    family:             one of FAMILIES.
    targets:            candidates for the manipulated object (role "target").
    destinations:       candidates for role "destination": "plate" (place_on), "bowl" (place_in), or objects
                        (move_near: the reference object; stack: the bottom block). Default: the family's natural one.
    drawers:            candidates for role "drawer" ("top" | "middle" | "bottom"), drawer families only.
    num_distractors:    inclusive range of extra objects on the table.
    distractors:        distractor pool; never contains a name already used by the task.
    exclude_categories: categories never used for distractors (e.g. ("fruit",) when the instruction says "the fruit").
    receptacle_prob:    probability that each receptacle the task does not need (plate, bowl) is on the table anyway.
    drawer_opening:     initial opening (m) of the task's drawer; None = family default (0, or 0.15 for close_drawer).
    object_in_drawer:   the target starts inside the task's drawer, near its front (the drawer then starts open,
                        >= IN_DRAWER_OPENING); only objects small enough for a drawer are candidates.
    table_styles, lightings: allowed visual variants (empty = all).
    max_steps:          episode limit (0 = family default).
    name:               registry name (filled by `register_task`).
    """

    family: str
    targets: tuple[str, ...] = ("*",)
    destinations: tuple[str, ...] = ()
    drawers: tuple[str, ...] = ()
    num_distractors: tuple[int, int] = (0, 3)
    distractors: tuple[str, ...] = ("*",)
    exclude_categories: tuple[str, ...] = ()
    receptacle_prob: float = 0.3
    drawer_opening: float | None = None
    object_in_drawer: bool = False
    table_styles: tuple[str, ...] = ()
    lightings: tuple[str, ...] = ()
    max_steps: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            hint = difflib.get_close_matches(self.family, FAMILIES, n=1)
            raise ValueError(
                f"TaskSpec.family: unknown {self.family!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
            )
        for fname in (
            "targets",
            "destinations",
            "drawers",
            "distractors",
            "exclude_categories",
            "table_styles",
            "lightings",
        ):
            if isinstance(getattr(self, fname), str):
                raise TypeError(
                    f"TaskSpec.{fname}: expected a tuple of names, got the string {getattr(self, fname)!r}"
                )
        for n in (*self.targets, *self.distractors):
            _check_name(n, "targets/distractors")
        for n in self.destinations:
            if n not in ("plate", "bowl"):
                _check_name(n, "destinations")
        for d in self.drawers:
            if d not in O.DRAWER_NAMES:
                raise ValueError(f"TaskSpec.drawers: unknown drawer {d!r} (have {O.DRAWER_NAMES})")
        lo, hi = self.num_distractors
        if not 0 <= lo <= hi <= 5:
            raise ValueError(f"TaskSpec.num_distractors: need 0 <= lo <= hi <= 5, got {self.num_distractors}")
        if not 0.0 <= self.receptacle_prob <= 1.0:
            raise ValueError(f"TaskSpec.receptacle_prob: must be in [0, 1], got {self.receptacle_prob}")
        if self.drawer_opening is not None and not 0.0 <= self.drawer_opening <= O.DRAWER_TRAVEL:
            raise ValueError(
                f"TaskSpec.drawer_opening: must be in [0, {O.DRAWER_TRAVEL}], got {self.drawer_opening}"
            )
        for s in self.table_styles:
            if s not in TABLE_STYLES:
                raise ValueError(f"TaskSpec.table_styles: unknown {s!r} (have {sorted(TABLE_STYLES)})")
        for s in self.lightings:
            if s not in LIGHTINGS:
                raise ValueError(f"TaskSpec.lightings: unknown {s!r} (have {sorted(LIGHTINGS)})")
        if self.max_steps < 0:
            raise ValueError(f"TaskSpec.max_steps: must be >= 0, got {self.max_steps}")
        if self.object_in_drawer and self.family not in ("pick", "close_drawer"):
            raise ValueError(f"TaskSpec.object_in_drawer: only for pick/close_drawer, not {self.family!r}")

    @property
    def episode_steps(self) -> int:
        return self.max_steps or DEFAULT_MAX_STEPS[self.family]


def _check_name(n: str, field_name: str) -> None:
    if n == "*":
        return
    if n.startswith("category:"):
        cats = {s.category for s in CATALOG.values()}
        if n.split(":", 1)[1] not in cats:
            raise ValueError(f"TaskSpec.{field_name}: unknown category in {n!r} (have {sorted(cats)})")
        return
    if n not in CATALOG:
        hint = difflib.get_close_matches(n, CATALOG, n=1)
        raise ValueError(
            f"TaskSpec.{field_name}: unknown object {n!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        )


def resolve(names: tuple[str, ...], allowed: list[str]) -> list[str]:
    """Expand "*" and "category:<cat>" into catalogue names, keeping only `allowed`, in catalogue order."""
    out: set[str] = set()
    for n in names:
        if n == "*":
            out.update(allowed)
        elif n.startswith("category:"):
            cat = n.split(":", 1)[1]
            out.update(a for a in allowed if CATALOG[a].category == cat)
        elif n in allowed:
            out.add(n)
    return [a for a in CATALOG if a in out]


def family_objects(family: str) -> list[str]:
    """Catalogue objects a family may manipulate."""
    if family == "stack":
        return [n for n, s in CATALOG.items() if s.category == "block"]
    if family == "drawer_then_place":
        return [n for n in CATALOG if n not in DRAWER_EXCLUDED]
    return list(CATALOG)


@dataclass
class TaskInstance:
    """A sampled task: its arguments by role, the initial layout and what the predicates need to remember."""

    spec: TaskSpec
    args: dict[str, str]
    layout: Layout
    init: dict[str, float] = field(default_factory=dict)


def _choice(rng: np.random.Generator, items: list[str], what: str, spec: TaskSpec) -> str:
    if not items:
        raise ValueError(f"task {spec.name or spec.family!r}: no candidate {what} left for this spec")
    return items[int(rng.integers(len(items)))]


def sample_task(spec: TaskSpec, rng: np.random.Generator) -> TaskInstance:
    """Draw task arguments and a non-overlapping initial layout for `spec`."""
    fam = spec.family
    allowed = family_objects(fam)
    if spec.object_in_drawer:
        allowed = [n for n in allowed if n not in DRAWER_EXCLUDED and O.object_radius(CATALOG[n]) <= 0.045]
    args: dict[str, str] = {}
    used: list[str] = []
    plate = bowl = cabinet = False
    drawers: dict[str, float] = {}
    if fam in ("open_drawer", "close_drawer", "drawer_then_place") or spec.object_in_drawer:
        cabinet = True
        default_drawers = ["top"] if fam == "drawer_then_place" else list(O.DRAWER_NAMES)
        drawer = _choice(rng, list(spec.drawers) or default_drawers, "drawer", spec)
        args["drawer"] = drawer
        opening = spec.drawer_opening
        if opening is None:
            opening = CLOSE_START_OPENING if fam == "close_drawer" else 0.0
        if spec.object_in_drawer:
            opening = max(opening, IN_DRAWER_OPENING)
        drawers[drawer] = opening
    if fam not in ("open_drawer", "close_drawer") or spec.object_in_drawer:
        if fam == "drawer_then_place" and spec.drawers and spec.drawers != ("top",):
            raise ValueError(f"task {spec.name!r}: drawer_then_place supports the top drawer only")
        target = _choice(rng, resolve(spec.targets, allowed), "target", spec)
        args["target"] = target
        used.append(target)
    if fam == "place_on":
        args["destination"] = "plate"
        plate = True
    elif fam == "place_in":
        args["destination"] = "bowl"
        bowl = True
    elif fam in ("move_near", "stack"):
        cands = [n for n in resolve(spec.destinations or ("*",), allowed) if n not in used]
        args["destination"] = _choice(rng, cands, "destination", spec)
        used.append(args["destination"])
    plate = plate or (fam != "place_in" and rng.random() < spec.receptacle_prob)
    bowl = bowl or (fam != "place_on" and rng.random() < spec.receptacle_prob)
    lo, hi = spec.num_distractors
    n_dis = int(rng.integers(lo, hi + 1))
    pool = [
        n
        for n in resolve(spec.distractors, list(CATALOG))
        if n not in used and CATALOG[n].category not in spec.exclude_categories
    ]
    order = rng.permutation(len(pool))
    distractors = [pool[i] for i in order[:n_dis]]
    style = _choice(rng, list(spec.table_styles or TABLE_STYLES), "table style", spec)
    lighting = _choice(rng, list(spec.lightings or LIGHTINGS), "lighting", spec)

    # layout: receptacles first (largest), then objects; the cabinet's corner and pull-out zone stay free
    y_hi = CABINET_FREE_Y if cabinet else WORKSPACE_Y[1]
    region = (WORKSPACE_X, (WORKSPACE_Y[0], y_hi))
    in_drawer = spec.object_in_drawer
    needs_plate, needs_bowl = fam == "place_on", fam == "place_in"
    while True:  # drop optional receptacles, then distractors, until the layout fits
        loose = [n for n in used + distractors if not (in_drawer and n == args.get("target"))]
        radii = [O.BOWL_RADIUS + 0.01] * bowl + [O.PLATE_RADIUS + 0.01] * plate
        radii += [O.object_radius(CATALOG[n]) for n in loose]
        xy = _sample_layout(rng, radii, region, loose, args, fam)
        if xy is not None:
            break
        if bowl and not needs_bowl:
            bowl = False
        elif plate and not needs_plate:
            plate = False
        elif distractors:
            distractors = distractors[:-1]
        else:
            raise RuntimeError(f"task {spec.name or fam!r}: could not sample a non-overlapping layout")
    k = 0
    bowl_xy = plate_xy = None
    if bowl:
        bowl_xy, k = xy[k], k + 1
    if plate:
        plate_xy, k = xy[k], k + 1
    placements = [Placement(n, x, y, float(rng.uniform(-np.pi, np.pi))) for n, (x, y) in zip(loose, xy[k:])]
    if in_drawer:
        t = args["target"]
        geo = O.drawer_geometry(O.DRAWER_NAMES.index(args["drawer"]))
        r = O.object_radius(CATALOG[t])
        # near the drawer's front wall, so a top-down grasp stays clear of the drawer handles above it
        lo = 0.024 + r - geo.inner_center_x
        px = float(rng.uniform(lo, max(lo, -0.025)))
        ymax = max(geo.inner_half[1] - 0.06, 0.0)  # the open fingers (+-0.052 m) must clear the side walls
        py = float(rng.uniform(-ymax, ymax))
        placements.insert(0, Placement(t, px, py, float(rng.uniform(-0.1, 0.1)), in_drawer=args["drawer"]))
    layout = Layout(
        objects=placements,
        plate=plate_xy,
        bowl=bowl_xy,
        cabinet=cabinet,
        drawers=drawers,
        table_style=style,
        lighting=lighting,
    )
    return TaskInstance(spec=spec, args=args, layout=layout)


def _sample_layout(rng, radii, region, loose, args, fam) -> list[tuple[float, float]] | None:
    for _ in range(20):
        try:
            xy = sample_positions(rng, radii, region)
        except RuntimeError:
            return None
        if fam != "move_near" or _far_enough(xy, loose, args):
            return xy
    return None


def _far_enough(xy: list[tuple[float, float]], names: list[str], args: dict[str, str]) -> bool:
    # positions of the task's objects are the last len(names) entries
    pos = dict(zip(names, xy[len(xy) - len(names) :]))
    a, b = pos[args["target"]], pos[args["destination"]]
    return float(np.hypot(a[0] - b[0], a[1] - b[1])) >= 0.17


def record_initial(task: TaskInstance, scene: Scene) -> None:
    """Remember what the predicates compare against (start heights, openings), after the scene settled."""
    for role in ("target", "destination"):
        name = task.args.get(role)
        if name in CATALOG:
            task.init[f"{role}_z"] = float(scene.object_pos(name)[2])


def near_threshold(target: str, reference: str) -> float:
    return max(NEAR_DISTANCE, O.object_radius(CATALOG[target]) + O.object_radius(CATALOG[reference]) + 0.04)


def is_success(task: TaskInstance, scene: Scene) -> bool:
    """The family's success predicate on the current scene state."""
    fam, a = task.spec.family, task.args
    if fam == "pick":
        t = a["target"]
        return scene.is_grasped(t) and scene.object_pos(t)[2] >= task.init["target_z"] + LIFT_HEIGHT
    if fam == "place_on":
        return scene.on_plate(a["target"]) and not scene.is_grasped(a["target"])
    if fam == "place_in":
        return scene.in_bowl(a["target"]) and not scene.is_grasped(a["target"])
    if fam == "move_near":
        t, r = a["target"], a["destination"]
        pt, pr = scene.object_pos(t), scene.object_pos(r)
        return bool(
            np.hypot(*(pt[:2] - pr[:2])) < near_threshold(t, r)
            and not scene.is_grasped(t)
            and pt[2] < task.init["target_z"] + 0.02
        )
    if fam == "open_drawer":
        return scene.drawer_opening(a["drawer"]) >= OPEN_THRESHOLD
    if fam == "close_drawer":
        return scene.drawer_opening(a["drawer"]) <= CLOSED_THRESHOLD
    if fam == "stack":
        t, b = a["target"], a["destination"]
        pt, pb = scene.object_pos(t), scene.object_pos(b)
        dz = pt[2] - pb[2]
        h = CATALOG[t].size[2] + CATALOG[b].size[2]
        return bool(
            np.hypot(*(pt[:2] - pb[:2])) < 0.6 * CATALOG[b].size[0] + 0.01
            and h - 0.01 < dz < h + 0.012
            and not scene.is_grasped(t)
        )
    if fam == "drawer_then_place":
        return scene.in_drawer(a["target"], a["drawer"]) and not scene.is_grasped(a["target"])
    raise ValueError(f"is_success: unknown family {fam!r}")  # pragma: no cover - TaskSpec validates family


# ---------------------------------------------------------------------------------------------------- registry
REGISTRY: dict[str, TaskSpec] = {}


def register_task(name: str, spec: TaskSpec) -> TaskSpec:
    """Add a named task (names are unique; the spec's `name` is set to it)."""
    if name in REGISTRY:
        raise ValueError(f"task {name!r} already registered")
    spec = replace(spec, name=name)
    REGISTRY[name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """A registered task by name, with a "did you mean" hint for typos."""
    if name not in REGISTRY:
        hint = difflib.get_close_matches(name, REGISTRY, n=3)
        raise KeyError(
            f"unknown task {name!r}" + (f"; did you mean {hint}?" if hint else "; see `instructvla tasks`")
        )
    return REGISTRY[name]


def _register_defaults() -> None:
    for fam in FAMILIES:
        register_task(f"{fam}/any", TaskSpec(fam))
    for n in CATALOG:
        register_task(f"pick/{n}", TaskSpec("pick", targets=(n,)))
        register_task(f"place_on/{n}-plate", TaskSpec("place_on", targets=(n,)))
        register_task(f"place_in/{n}-bowl", TaskSpec("place_in", targets=(n,)))
    for a, b in [
        ("lemon", "pear"),
        ("apple", "orange"),
        ("block L", "block V"),
        ("block L", "block A"),
        ("water bottle", "orange"),
        ("mug", "sponge"),
        ("coke can", "apple"),
        ("spoon", "mug"),
    ]:
        register_task(f"move_near/{a}-{b}", TaskSpec("move_near", targets=(a,), destinations=(b,)))
    for a in ("block L", "block V", "block A"):
        for b in ("block L", "block V", "block A"):
            if a != b:
                register_task(f"stack/{a}-{b}", TaskSpec("stack", targets=(a,), destinations=(b,)))
    for d in O.DRAWER_NAMES:
        register_task(f"open_drawer/{d}", TaskSpec("open_drawer", drawers=(d,)))
        register_task(f"close_drawer/{d}", TaskSpec("close_drawer", drawers=(d,)))
        register_task(
            f"pick/from-{d}-drawer",
            TaskSpec("pick", targets=("category:fruit",), drawers=(d,), object_in_drawer=True),
        )
    for n in ("apple", "orange", "coke can", "sponge"):
        register_task(
            f"drawer_then_place/{n}-top", TaskSpec("drawer_then_place", targets=(n,), drawers=("top",))
        )


_register_defaults()


# ---------------------------------------------------------------------------------------------------- CLI
@dataclass
class ListTasksConfig:
    """`instructvla tasks`: list the simulator's registered tasks (and the instruct suite, when available).

    family: only tasks of this family ("" = all).
    suites: also list the instruct benchmark suite's tasks.
    """

    family: str = ""
    suites: bool = True

    def __post_init__(self) -> None:
        if self.family and self.family not in FAMILIES:
            raise ValueError(f"ListTasksConfig.family: unknown {self.family!r} (have {FAMILIES})")


def _describe(spec: TaskSpec) -> str:
    parts = [f"targets={','.join(spec.targets)}"]
    if spec.destinations:
        parts.append(f"dest={','.join(spec.destinations)}")
    if spec.drawers:
        parts.append(f"drawers={','.join(spec.drawers)}")
    if spec.object_in_drawer:
        parts.append("object starts in drawer")
    return "; ".join(parts)


def list_tasks(cfg: ListTasksConfig | None = None) -> list[str]:
    """Names of the registered tasks. With a config (the CLI), also print them as a table."""
    names = [n for n, s in REGISTRY.items() if cfg is None or not cfg.family or s.family == cfg.family]
    if cfg is None:
        return names
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"simulator tasks ({len(names)})")
    for col in ("task", "family", "max steps", "arguments"):
        table.add_column(col)
    for n in names:
        s = REGISTRY[n]
        table.add_row(n, s.family, str(s.episode_steps), _describe(s))
    console = Console()
    console.print(table)
    if cfg.suites:
        try:
            from instructvla.sim import suites  # written by the language side; optional here
        except ImportError:
            logger.info("instructvla.sim.suites not available; instruct suite not listed")
        else:
            _print_suite(console, suites)
    return names


def _print_suite(console, suites_module) -> None:
    from rich.table import Table

    items = None
    for attr in ("list_suite_tasks", "instruct_suite", "INSTRUCT_SUITE", "SUITE"):
        obj = getattr(suites_module, attr, None)
        if obj is not None:
            items = obj() if callable(obj) else obj
            break
    if items is None:
        logger.info("instructvla.sim.suites has no suite listing (expected list_suite_tasks())")
        return
    rows = list(items.items()) if isinstance(items, dict) else [(str(i), "") for i in items]
    table = Table(title=f"instruct suite ({len(rows)})")
    table.add_column("task")
    table.add_column("details")
    for k, v in rows:
        table.add_row(str(k), str(v))
    console.print(table)


__all__ = [
    "FAMILIES",
    "FIXTURES",
    "REGISTRY",
    "TaskSpec",
    "TaskInstance",
    "ListTasksConfig",
    "get_task",
    "is_success",
    "list_tasks",
    "register_task",
    "sample_task",
    "record_initial",
]
