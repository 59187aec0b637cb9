"""The object catalogue of the tabletop: every object the language can refer to, with its attributes.

Shared contract between the simulator (which builds geometry from `shape`/`size`/`rgba`) and the language side
(instructions, VLA-IT annotations, multimodal QA), which only reads attributes. Add objects here; nothing else lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ObjectSpec:
    """A graspable object type.

    name:      unique id and the plain noun ("apple", "coke can", "block L").
    category:  "fruit" | "vegetable" | "drink" | "tool" | "container" | "block" | "toy".
    color:     plain colour word used in language.
    shape:     geometry primitive: "sphere" | "cylinder" | "box" | "ellipsoid" | "capsule".
    size:      half-extents in metres (sphere: (r,), cylinder/capsule: (r, half_height), box/ellipsoid: (x, y, z)).
    rgba:      render colour.
    size_word: "small" | "medium" | "large" (relative, for language).
    traits:    free adjectives for attribute references ("sour", "fizzy", "for cleaning").
    letter:    for letter blocks, the letter printed on it (rendered as a texture or as distinct colour code).
    synonyms:  other nouns that name it ("soda can" for a can).
    """

    name: str
    category: str
    color: str
    shape: str
    size: tuple[float, ...]
    rgba: tuple[float, float, float, float]
    size_word: str = "medium"
    traits: tuple[str, ...] = ()
    letter: str | None = None
    synonyms: tuple[str, ...] = field(default_factory=tuple)


def _c(r: int, g: int, b: int) -> tuple[float, float, float, float]:
    return (r / 255, g / 255, b / 255, 1.0)


CATALOG: dict[str, ObjectSpec] = {}


def register(spec: ObjectSpec) -> ObjectSpec:
    """Add an object type to the catalogue (names are unique)."""
    if spec.name in CATALOG:
        raise ValueError(f"object {spec.name!r} already registered")
    CATALOG[spec.name] = spec
    return spec


for _spec in [
    ObjectSpec("apple", "fruit", "red", "sphere", (0.028,), _c(200, 30, 30), "medium", ("sweet", "round")),
    ObjectSpec("lemon", "fruit", "yellow", "ellipsoid", (0.032, 0.024, 0.024), _c(245, 225, 40), "medium", ("sour",)),
    ObjectSpec("orange", "fruit", "orange", "sphere", (0.029,), _c(250, 140, 20), "medium", ("citrus", "juicy")),
    ObjectSpec("plum", "fruit", "purple", "sphere", (0.022,), _c(110, 30, 120), "small", ("small", "round")),
    ObjectSpec("pear", "fruit", "green", "ellipsoid", (0.024, 0.024, 0.032), _c(150, 200, 60), "medium", ("teardrop-shaped",)),
    ObjectSpec("eggplant", "vegetable", "purple", "ellipsoid", (0.045, 0.022, 0.022), _c(80, 20, 90), "large", ("healthy",)),
    ObjectSpec("coke can", "drink", "red", "cylinder", (0.024, 0.045), _c(180, 10, 20), "medium", ("fizzy",), synonyms=("soda can", "cola")),
    ObjectSpec("sprite can", "drink", "green", "cylinder", (0.024, 0.045), _c(40, 170, 60), "medium", ("fizzy", "lime-flavoured"), synonyms=("soda can",)),
    ObjectSpec("water bottle", "drink", "blue", "cylinder", (0.022, 0.06), _c(60, 120, 230), "large", ("for drinking",), synonyms=("bottle",)),
    ObjectSpec("sponge", "tool", "yellow", "box", (0.035, 0.022, 0.014), _c(230, 210, 60), "medium", ("for cleaning", "soft")),
    ObjectSpec("spoon", "tool", "gray", "box", (0.055, 0.012, 0.008), _c(160, 160, 170), "medium", ("for eating", "metal")),
    ObjectSpec("mug", "container", "white", "cylinder", (0.03, 0.035), _c(235, 235, 235), "medium", ("for coffee",), synonyms=("cup",)),
    ObjectSpec("block L", "block", "blue", "box", (0.022, 0.022, 0.022), _c(40, 70, 200), "small", letter="L", synonyms=("cube",)),
    ObjectSpec("block V", "block", "green", "box", (0.022, 0.022, 0.022), _c(30, 150, 70), "small", letter="V", synonyms=("cube",)),
    ObjectSpec("block A", "block", "red", "box", (0.022, 0.022, 0.022), _c(200, 50, 40), "small", letter="A", synonyms=("cube",)),
]:
    register(_spec)

# Fixtures (not graspable): receptacles and the cabinet. Language refers to them by these names.
FIXTURES = {
    "plate": {"category": "receptacle", "color": "white"},
    "bowl": {"category": "receptacle", "color": "brown", "synonyms": ("basket",)},
    "cabinet": {"category": "furniture", "color": "wooden", "drawers": ("top", "middle", "bottom")},
}
