"""Shared building blocks of instruction language: task slots, nouns and unique references, canonical phrasing, typos.

Everything here reads only a `SceneGraph` (and the object catalogue), never MuJoCo. Used by the template families
(`instruct_families`), the instruction API (`instructions`) and the multimodal annotators.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

import numpy as np

from instructvla.sim.catalog import CATALOG, FIXTURES, ObjectSpec
from instructvla.sim.scene_graph import ObjectState, SceneGraph

SPLITS = ("train", "heldout")
CATEGORIES = ("aggregation", "situated")
TASK_FAMILIES = (
    "pick", "place_on", "place_in", "move_near", "open_drawer", "close_drawer", "stack", "drawer_then_place",
)
DRAWERS = ("top", "middle", "bottom")


class NotApplicableError(ValueError):
    """A template family cannot describe this scene unambiguously (the suite must build another scene)."""


# ----------------------------------------------------------------------------------------------------- helpers


def as_rng(rng: np.random.Generator) -> np.random.Generator:
    """`rng` itself (a numpy Generator), or a new Generator for an int seed; TypeError otherwise."""
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (or an int seed), got {type(rng).__name__}")
    return rng


def check_split(split: str) -> str:
    """`split` if it is "train" or "heldout"; ValueError otherwise."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def choice(rng: np.random.Generator, items: Sequence):
    """One element of a non-empty sequence, drawn with `rng`."""
    if len(items) == 0:
        raise ValueError("cannot choose from an empty sequence")
    return items[int(rng.integers(len(items)))]


def spec_of(name: str) -> ObjectSpec | None:
    """Catalogue entry of a graspable object name (None for fixtures and drawer ids)."""
    return CATALOG.get(name)


def noun(name: str) -> str:
    """The plain noun used in language for an object or fixture name ("block L" -> "blue block", "drawer:top" ...)."""
    if name.startswith("drawer:"):
        return f"{name.split(':', 1)[1]} drawer"
    spec = CATALOG.get(name)
    if spec is not None and spec.category == "block":
        return f"{spec.color} block"
    return name


def graspables(sg: SceneGraph) -> list[ObjectState]:
    """Non-fixture objects of the scene that are in the catalogue."""
    return [o for o in sg.objects if not o.is_fixture and o.name in CATALOG]


def fixtures(sg: SceneGraph) -> list[ObjectState]:
    """Fixture objects of the scene (table, cabinet, ...)."""
    return [o for o in sg.objects if o.is_fixture]


def _arg(sg: SceneGraph, role: str, *fallbacks: str) -> str:
    for key in (role, *fallbacks):
        value = sg.task_args.get(key)
        if value:
            return value
    raise ValueError(
        f"task {sg.task_family!r} needs task_args[{role!r}] (got task_args={sg.task_args!r})"
    )


def task_slots(sg: SceneGraph) -> dict[str, str]:
    """Plain slot values of the scene's task: target, destination, drawer (nouns, not yet with articles)."""
    fam = sg.task_family
    if fam not in TASK_FAMILIES:
        raise ValueError(f"unknown task_family {fam!r}; expected one of {TASK_FAMILIES}")
    slots: dict[str, str] = {}
    if fam in ("pick", "place_on", "place_in", "move_near", "stack", "drawer_then_place"):
        slots["target"] = noun(_arg(sg, "target"))
    if fam in ("place_on", "move_near", "stack"):
        slots["destination"] = noun(_arg(sg, "destination", "reference"))
    if fam == "place_in":
        dest = sg.task_args.get("destination") or ""
        drawer = sg.task_args.get("drawer")
        if drawer or dest.startswith("drawer"):
            slots["destination"] = f"{drawer or dest.split(':', 1)[-1]} drawer"
        else:
            slots["destination"] = noun(_arg(sg, "destination"))
    if fam in ("open_drawer", "close_drawer", "drawer_then_place"):
        drawer = _arg(sg, "drawer")
        if drawer not in DRAWERS:
            raise ValueError(f"task_args['drawer'] must be one of {DRAWERS}, got {drawer!r}")
        slots["drawer"] = drawer
    return slots


def fill(template: str, slots: dict[str, str]) -> str:
    """`template.format(**slots)` with an error naming the missing slot."""
    try:
        return template.format(**slots)
    except KeyError as exc:
        raise ValueError(f"template {template!r} needs slot {exc.args[0]!r}; have {sorted(slots)}") from None


def template_slots(template: str) -> list[str]:
    """Names of the `{slot}` fields of a template."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def template_regex(template: str) -> re.Pattern:
    """A case-insensitive regex that matches any rendering of `template` (slots match any non-empty text)."""
    parts = []
    for literal, fname, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if fname:
            parts.append(".+?")
    return re.compile("^" + "".join(parts) + "$", re.IGNORECASE | re.DOTALL)


# ----------------------------------------------------------------------------------------------------- atomic

# Bridge-like (articles) and Fractal-like (terse, lower-case) phrasings per task family. The held-out split holds
# a few extra phrasings never used to write training data.
ATOMIC_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "pick": {
        "train": ("pick up the {target}", "pick {target}", "grasp the {target}", "pick the {target} up"),
        "heldout": ("lift up the {target}",),
    },
    "place_on": {
        "train": ("put the {target} on the {destination}", "place {target} on {destination}",
                  "put {target} on the {destination}"),
        "heldout": ("set the {target} down on the {destination}",),
    },
    "place_in": {
        "train": ("put the {target} in the {destination}", "place {target} into {destination}",
                  "put the {target} into the {destination}"),
        "heldout": ("drop the {target} inside the {destination}",),
    },
    "move_near": {
        "train": ("move the {target} near the {destination}", "move {target} near {destination}",
                  "put the {target} next to the {destination}"),
        "heldout": ("bring the {target} close to the {destination}",),
    },
    "open_drawer": {
        "train": ("open the {drawer} drawer", "open {drawer} drawer"),
        "heldout": ("pull the {drawer} drawer open",),
    },
    "close_drawer": {
        "train": ("close the {drawer} drawer", "close {drawer} drawer"),
        "heldout": ("push the {drawer} drawer shut",),
    },
    "stack": {
        "train": ("stack the {target} on the {destination}", "put the {target} on top of the {destination}",
                  "stack {target} on {destination}"),
        "heldout": ("pile the {target} onto the {destination}",),
    },
    "drawer_then_place": {
        "train": ("open the {drawer} drawer and put the {target} in it",
                  "open {drawer} drawer; place {target} into {drawer} drawer"),
        "heldout": ("first open the {drawer} drawer, then drop the {target} inside",),
    },
}


# The canonical phrasing of each task family (used for replies and as the base of paraphrases / typos).
CANONICAL = {fam: t["train"][0] for fam, t in ATOMIC_TEMPLATES.items()}


def canonical_instruction(sg: SceneGraph) -> str:
    """The canonical atomic instruction (deterministic): "pick up the apple", "open the top drawer"."""
    return fill(CANONICAL[sg.task_family], task_slots(sg))


# ----------------------------------------------------------------------------------------------------- references

CATEGORY_NOUN = {
    "fruit": "fruit", "vegetable": "vegetable", "drink": "drink", "tool": "tool", "container": "container",
    "block": "block", "toy": "toy",
}
_PLURAL = {"fruit": "fruits", "vegetable": "vegetables", "drink": "drinks", "tool": "tools", "container": "containers",
           "block": "blocks", "toy": "toys"}
# adjective-like traits that read badly in front of some category nouns
_TRAIT_STOPLIST = {("drink", "for drinking")}


def category_noun(category: str, plural: bool = False) -> str:
    """The noun of an object category ("fruit"; plural "fruits")."""
    base = CATEGORY_NOUN.get(category, category)
    return _PLURAL.get(category, base + "s") if plural else base


def _matches(spec: ObjectSpec, attrs: dict[str, str]) -> bool:
    for key, value in attrs.items():
        if key == "trait":
            if value not in spec.traits:
                return False
        elif getattr(spec, key) != value:
            return False
    return True


def _candidate_descriptions(spec: ObjectSpec) -> list[tuple[str, dict[str, str]]]:
    """(phrase, attributes) pairs describing `spec` without its name: "sour yellow fruit", "tool for cleaning"."""
    cat = category_noun(spec.category)
    out = [(f"{spec.color} {cat}", {"color": spec.color, "category": spec.category})]
    if spec.size_word != "medium":
        out.append((f"{spec.size_word} {spec.color} {cat}",
                    {"size_word": spec.size_word, "color": spec.color, "category": spec.category}))
    for trait in spec.traits:
        if (spec.category, trait) in _TRAIT_STOPLIST or trait == spec.size_word:
            continue
        if trait.startswith("for "):
            out.append((f"{cat} {trait}", {"trait": trait, "category": spec.category}))
            out.append((f"{spec.color} {cat} {trait}", {"trait": trait, "color": spec.color, "category": spec.category}))
        else:
            out.append((f"{trait} {cat}", {"trait": trait, "category": spec.category}))
            out.append((f"{trait} {spec.color} {cat}", {"trait": trait, "color": spec.color, "category": spec.category}))
    # never leak the name itself ("orange fruit" for the orange, "blue block" for a blue block)
    name_words = {noun(spec.name), spec.name, *spec.synonyms}
    return [(p, a) for p, a in out if not any(re.search(rf"\b{re.escape(w)}\b", p) for w in name_words)]


def unique_descriptions(sg: SceneGraph, name: str) -> list[str]:
    """Attribute/category references that pick out `name` alone among the scene's graspable objects."""
    spec = spec_of(name)
    if spec is None:
        return []
    others = [spec_of(o.name) for o in graspables(sg) if o.name != name]
    return [p for p, attrs in _candidate_descriptions(spec) if not any(_matches(o, attrs) for o in others if o)]


def referring_nouns(sg: SceneGraph, name: str) -> list[str]:
    """The plain noun of `name` plus those of its synonyms that no other scene object shares."""
    spec = spec_of(name)
    nouns = [noun(name)]
    if spec is None:
        syn = FIXTURES.get(name, {}).get("synonyms", ())
        return nouns + list(syn)
    for syn in spec.synonyms:
        if not any(syn in (spec_of(o.name).synonyms if spec_of(o.name) else ()) for o in graspables(sg) if o.name != name):
            nouns.append(syn)
    return nouns


def target_spec(sg: SceneGraph) -> ObjectSpec:
    name = sg.task_args.get("target", "")
    spec = spec_of(name)
    if spec is None:
        raise NotApplicableError(f"task target {name!r} is not a catalogue object")
    return spec


def dest_name(sg: SceneGraph) -> str:
    return sg.task_args.get("destination") or sg.task_args.get("reference") or ""


def count_graspables(sg: SceneGraph, pred: Callable[[ObjectSpec], bool]) -> int:
    return sum(1 for o in graspables(sg) if pred(CATALOG[o.name]))


# ----------------------------------------------------------------------------------------------------- typos

_KEY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _neighbour(ch: str, rng: np.random.Generator) -> str:
    for row in _KEY_ROWS:
        i = row.find(ch.lower())
        if i >= 0:
            near = [row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)]
            return choice(rng, near)
    return ch


def inject_typos(text: str, rng: np.random.Generator, rate: float = 0.25) -> str:
    """Deterministic (given `rng`) typos in about `rate` of the words of 4+ letters (at least one word):
    adjacent swap ("tabel"), dropped letter, doubled letter or a neighbouring key."""
    rng = as_rng(rng)
    words = text.split(" ")
    idx = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 4]
    if not idx:
        return text
    n = max(1, int(round(rate * len(idx))))
    for i in sorted(rng.choice(idx, size=min(n, len(idx)), replace=False).tolist()):
        w = words[i]
        letters = [j for j, c in enumerate(w) if c.isalpha()]
        j = int(choice(rng, letters[1:-1] or letters))  # keep first/last letters when possible
        op = int(rng.integers(4))
        if op == 0 and j + 1 < len(w) and w[j + 1].isalpha() and w[j + 1] != w[j]:
            w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        elif op == 1:
            w = w[:j] + w[j + 1:]
        elif op == 2:
            w = w[:j] + w[j] + w[j:]
        else:
            w = w[:j] + _neighbour(w[j], rng) + w[j + 1:]
        words[i] = w
    return " ".join(words)
