"""Language for the tabletop: atomic instructions, instruct template families with train/held-out splits, replies.

Everything here reads only a `SceneGraph` (and the object catalogue), never MuJoCo.

* `atomic_instruction(sg, rng)`: a plain Bridge/Fractal-like command for the scene's task ("pick up the apple").
* `TEMPLATE_FAMILIES`: instruct template families (SimplerEnv-Instruct style), each tagged "aggregation" or
  "situated", each with a TRAIN and a disjoint HELD-OUT template split; `render_instruction(family_id, sg, rng, split)`.
* `reply_for(sg, rng)`: a short first-person reply naming the single next atomic action ("I'll pick up the coke can.").
* `load_instruction_file(path)`: add template families from a JSONL file without editing code.
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instructvla.sim.catalog import CATALOG, FIXTURES, ObjectSpec
from instructvla.sim.scene_graph import ObjectState, SceneGraph

logger = logging.getLogger(__name__)

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


def atomic_instruction(sg: SceneGraph, rng: np.random.Generator, split: str = "train") -> str:
    """A plain atomic instruction for the scene's task, e.g. "pick up the apple" or "open top drawer".

    Draws one of the task family's templates of `split` ("train" or "heldout") with `rng`; one in four is written
    Fractal-style capitalised with a full stop ("Pick coke can."). Raises ValueError for an unknown task family or
    missing task arguments.
    """
    rng = as_rng(rng)
    check_split(split)
    slots = task_slots(sg)
    text = fill(choice(rng, ATOMIC_TEMPLATES[sg.task_family][split]), slots)
    if rng.random() < 0.25:
        text = text[0].upper() + text[1:] + "."
    return text


# The canonical phrasing of each task family (used for replies and as the base of paraphrases / typos).
CANONICAL = {fam: t["train"][0] for fam, t in ATOMIC_TEMPLATES.items()}


def canonical_instruction(sg: SceneGraph) -> str:
    """The canonical atomic instruction (deterministic): "pick up the apple", "open the top drawer"."""
    return fill(CANONICAL[sg.task_family], task_slots(sg))


def next_action(sg: SceneGraph) -> str:
    """The single next atomic action from the scene's current state (for replies): for "drawer_then_place" with the
    drawer closed that is opening the drawer; otherwise the canonical instruction."""
    slots = task_slots(sg)
    if sg.task_family == "drawer_then_place":
        if sg.drawers.get(slots["drawer"], 0.0) < 0.1:
            return fill("open the {drawer} drawer", slots)
        return fill("put the {target} in the {drawer} drawer", slots)
    return canonical_instruction(sg)


REPLY_TEMPLATES = ("I'll {action}.", "Sure, I will {action}.", "OK, I'm going to {action}.", "I will {action} now.")


def reply_for(sg: SceneGraph, rng: np.random.Generator) -> str:
    """A short first-person reply naming the single next atomic action: "I'll pick up the coke can."."""
    rng = as_rng(rng)
    return fill(choice(rng, REPLY_TEMPLATES), {"action": next_action(sg)})


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


def _target_spec(sg: SceneGraph) -> ObjectSpec:
    name = sg.task_args.get("target", "")
    spec = spec_of(name)
    if spec is None:
        raise NotApplicableError(f"task target {name!r} is not a catalogue object")
    return spec


def _dest_name(sg: SceneGraph) -> str:
    return sg.task_args.get("destination") or sg.task_args.get("reference") or ""


def _count(sg: SceneGraph, pred: Callable[[ObjectSpec], bool]) -> int:
    return sum(1 for o in graspables(sg) if pred(CATALOG[o.name]))


# ----------------------------------------------------------------------------------------------------- families

SlotFn = Callable[[SceneGraph, np.random.Generator], dict[str, str]]
KeyFn = Callable[[SceneGraph], str]
PostFn = Callable[[str, np.random.Generator], str]


def _task_key(sg: SceneGraph) -> str:
    return sg.task_family


def _plain_slots(sg: SceneGraph, rng: np.random.Generator) -> dict[str, str]:
    return task_slots(sg)


@dataclass(frozen=True)
class TemplateFamily:
    """A family of instruct templates (one instruction type of SimplerEnv-Instruct).

    family_id:  unique id ("attribute", "intent", ...).
    category:   "aggregation" (instruction/task aggregation) or "situated" (situated reasoning).
    train:      key -> templates usable for training data (key = task family, or "<variant>/<task family>").
    heldout:    key -> templates never used for training data (disjoint from `train`).
    key_fn:     scene -> template key; raises NotApplicableError when the family cannot describe the scene.
    slot_fn:    (scene, rng) -> slot values; raises NotApplicableError when the reference would be ambiguous.
    post_fn:    optional (text, rng) -> text applied after filling (typo injection).
    """

    family_id: str
    category: str
    train: dict[str, tuple[str, ...]]
    heldout: dict[str, tuple[str, ...]]
    key_fn: KeyFn = _task_key
    slot_fn: SlotFn = _plain_slots
    post_fn: PostFn | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"family {self.family_id!r}: category must be one of {CATEGORIES}, got {self.category!r}")
        for split in SPLITS:
            for key, temps in self.templates(split).items():
                if not temps or not all(isinstance(t, str) and t.strip() for t in temps):
                    raise ValueError(f"family {self.family_id!r}: {split} templates for {key!r} must be non-empty strings")
        shared = {t.lower() for ts in self.train.values() for t in ts} & {t.lower() for ts in self.heldout.values() for t in ts}
        if shared:
            raise ValueError(f"family {self.family_id!r}: templates in both splits: {sorted(shared)}")

    def templates(self, split: str) -> dict[str, tuple[str, ...]]:
        return self.train if check_split(split) == "train" else self.heldout

    def check(self, sg: SceneGraph) -> str:
        """The template key for `sg`; raises NotApplicableError (with the reason) if the family does not apply."""
        key = self.key_fn(sg)
        if key not in self.train and key not in self.heldout:
            raise NotApplicableError(f"family {self.family_id!r} has no templates for {key!r}")
        self.slot_fn(sg, np.random.default_rng(0))
        return key

    def applicable(self, sg: SceneGraph) -> bool:
        try:
            self.check(sg)
        except NotApplicableError:
            return False
        return True

    def render(self, sg: SceneGraph, rng: np.random.Generator, split: str = "train") -> str:
        rng = as_rng(rng)
        key = self.key_fn(sg)
        temps = self.templates(split).get(key)
        if not temps:
            raise NotApplicableError(f"family {self.family_id!r} has no {split} templates for {key!r}")
        slots = self.slot_fn(sg, rng)
        text = fill(choice(rng, temps), slots)
        return self.post_fn(text, rng) if self.post_fn else text


TEMPLATE_FAMILIES: dict[str, TemplateFamily] = {}


def register_family(family: TemplateFamily, replace: bool = False) -> TemplateFamily:
    """Add a template family to `TEMPLATE_FAMILIES` (ids are unique unless `replace`)."""
    if family.family_id in TEMPLATE_FAMILIES and not replace:
        raise ValueError(f"template family {family.family_id!r} already registered")
    TEMPLATE_FAMILIES[family.family_id] = family
    return family


def get_family(family_id: str) -> TemplateFamily:
    if family_id not in TEMPLATE_FAMILIES:
        import difflib

        hint = difflib.get_close_matches(family_id, TEMPLATE_FAMILIES, n=1)
        raise KeyError(f"unknown template family {family_id!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                       + f" (have {sorted(TEMPLATE_FAMILIES)})")
    return TEMPLATE_FAMILIES[family_id]


def render_instruction(family_id: str, sg: SceneGraph, rng: np.random.Generator, split: str = "train") -> str:
    """Render one instruction of template family `family_id` ("atomic" for plain commands) for scene `sg`.

    Raises NotApplicableError if the family cannot refer to this scene's task unambiguously.
    """
    if family_id == "atomic":
        return atomic_instruction(sg, rng, split)
    return get_family(family_id).render(sg, rng, split)


@dataclass(frozen=True)
class TemplateRef:
    """One template of a family, as listed by `all_templates`."""

    family_id: str
    category: str
    key: str
    text: str


def all_templates(split: str, category: str | None = None) -> list[TemplateRef]:
    """Every registered instruct template of `split` (optionally one category)."""
    check_split(split)
    return [
        TemplateRef(f.family_id, f.category, key, t)
        for f in TEMPLATE_FAMILIES.values() if category is None or f.category == category
        for key, temps in f.templates(split).items() for t in temps
    ]


def families(category: str | None = None) -> list[TemplateFamily]:
    return [f for f in TEMPLATE_FAMILIES.values() if category is None or f.category == category]


# --- aggregation: paraphrase --------------------------------------------------------------------------------

_DRAWER_ALT = {"top": ("top", "upper"), "middle": ("middle", "central"), "bottom": ("bottom", "lowest")}


def _paraphrase_slots(sg: SceneGraph, rng: np.random.Generator) -> dict[str, str]:
    slots = task_slots(sg)
    if "target" in slots:
        slots["target"] = choice(rng, referring_nouns(sg, sg.task_args["target"]))
    if "drawer" in slots:
        slots["drawer_alt"] = choice(rng, _DRAWER_ALT[slots["drawer"]])
    return slots


register_family(TemplateFamily(
    "paraphrase", "aggregation",
    train={
        "pick": ("Grab the {target}.", "Could you pick up the {target}?", "Take the {target} off the table.",
                 "Please get the {target} for me."),
        "place_on": ("Could you set the {target} onto the {destination}?", "Take the {target} and place it on the {destination}.",
                     "Please move the {target} onto the {destination}."),
        "place_in": ("Drop the {target} into the {destination}.", "Could you put the {target} inside the {destination}?"),
        "move_near": ("Can you place the {target} close to the {destination}?", "Bring the {target} next to the {destination}.",
                      "Push the {target} toward the {destination}."),
        "open_drawer": ("Pull open the {drawer_alt} drawer.", "Could you open the {drawer_alt} drawer of the cabinet?"),
        "close_drawer": ("Shut the {drawer_alt} drawer.", "Please push the {drawer_alt} drawer closed."),
        "stack": ("Place the {target} on top of the {destination}.", "Could you stack the {target} onto the {destination}?"),
        "drawer_then_place": ("Open the {drawer_alt} drawer, then put the {target} inside.",
                              "Pull the {drawer_alt} drawer open and place the {target} in it."),
    },
    heldout={
        "pick": ("Would you mind lifting the {target}?", "I'd like you to hold up the {target}.",
                 "Go ahead and snatch the {target}."),
        "place_on": ("The {target} belongs on the {destination}, put it there.", "Transfer the {target} over to the {destination}, please."),
        "place_in": ("Stow the {target} in the {destination}.",),
        "move_near": ("Shift the {target} so it sits beside the {destination}.", "Relocate the {target} to be by the {destination}."),
        "open_drawer": ("Slide the {drawer_alt} drawer out of the cabinet.", "Make sure the {drawer_alt} drawer is open."),
        "close_drawer": ("Ensure the {drawer_alt} drawer is completely closed.", "Slide the {drawer_alt} drawer back in."),
        "stack": ("Balance the {target} atop the {destination}.",),
        "drawer_then_place": ("Get the {drawer_alt} drawer open and store the {target} in it.",),
    },
    slot_fn=_paraphrase_slots,
    description="paraphrases of the atomic command (synonyms, drawer words: 'Pull open the upper drawer')",
))


# --- aggregation: attribute / category reference ---------------------------------------------------------------

def _attribute_slots(sg: SceneGraph, rng: np.random.Generator) -> dict[str, str]:
    slots = task_slots(sg)
    descs = unique_descriptions(sg, sg.task_args.get("target", ""))
    if not descs:
        raise NotApplicableError(f"no attribute reference picks out {sg.task_args.get('target')!r} alone in this scene")
    slots["target_desc"] = choice(rng, descs)
    if sg.task_family == "move_near":
        dest = _dest_name(sg)
        dest_descs = unique_descriptions(sg, dest)
        slots["dest_desc"] = choice(rng, dest_descs) if dest_descs else noun(dest)
    return slots


register_family(TemplateFamily(
    "attribute", "aggregation",
    train={
        "pick": ("Pick up the {target_desc}.", "Grab the {target_desc} on the table.", "Can you get me the {target_desc}?"),
        "place_on": ("Put the {target_desc} on the {destination}.", "Place the {target_desc} onto the {destination}."),
        "place_in": ("Put the {target_desc} into the {destination}.",),
        "move_near": ("Move the {target_desc} near the {dest_desc}.", "Put the {target_desc} next to the {dest_desc}."),
    },
    heldout={
        "pick": ("Hand me the {target_desc}, please.", "I need the {target_desc}; lift it."),
        "place_on": ("Set the {target_desc} down on top of the {destination}, please.",),
        "place_in": ("Tuck the {target_desc} away in the {destination}.",),
        "move_near": ("Bring the {target_desc} over beside the {dest_desc}.",),
    },
    slot_fn=_attribute_slots,
    description="refer to the object by attributes/category ('the sour yellow fruit', 'the purple vegetable')",
))


# --- aggregation: OCR-like letter blocks ------------------------------------------------------------------------

def _ocr_slots(sg: SceneGraph, rng: np.random.Generator) -> dict[str, str]:
    slots = task_slots(sg)
    spec = _target_spec(sg)
    if not spec.letter:
        raise NotApplicableError(f"target {spec.name!r} carries no letter")
    slots["target_letter"] = spec.letter
    if sg.task_family in ("move_near", "stack"):
        dest = spec_of(_dest_name(sg))
        if dest is None or not dest.letter:
            raise NotApplicableError(f"destination {_dest_name(sg)!r} carries no letter")
        slots["dest_letter"] = dest.letter
    return slots


register_family(TemplateFamily(
    "ocr", "aggregation",
    train={
        "pick": ("pick up the block with the letter '{target_letter}'", "grab the '{target_letter}' cube"),
        "place_on": ("put the '{target_letter}' block on the {destination}",),
        "move_near": ("move the '{target_letter}' block near the '{dest_letter}' block",
                      "Please move the '{target_letter}' to '{dest_letter}'."),
        "stack": ("stack the '{target_letter}' block on the '{dest_letter}' block",),
    },
    heldout={
        "pick": ("Lift the cube labelled '{target_letter}'.",),
        "place_on": ("Set the cube labelled '{target_letter}' onto the {destination}.",),
        "move_near": ("Slide the cube marked '{target_letter}' over to the one marked '{dest_letter}'.",),
        "stack": ("Put the cube marked '{target_letter}' on top of the one showing '{dest_letter}'.",),
    },
    slot_fn=_ocr_slots,
    description="letter blocks referred to by the printed letter ('move the 'L' block near the 'V')",
))


# --- aggregation: multilingual (French, Spanish) -----------------------------------------------------------------

# noun, grammatical gender; articles and contractions are derived below.
TRANSLATIONS: dict[str, dict[str, tuple[str, str]]] = {
    "fr": {
        "apple": ("pomme", "f"), "lemon": ("citron", "m"), "orange": ("orange", "f"), "plum": ("prune", "f"),
        "pear": ("poire", "f"), "eggplant": ("aubergine", "f"), "coke can": ("canette de coca", "f"),
        "sprite can": ("canette de sprite", "f"), "water bottle": ("bouteille d'eau", "f"), "sponge": ("éponge", "f"),
        "spoon": ("cuillère", "f"), "mug": ("tasse", "f"), "block L": ("cube bleu", "m"), "block V": ("cube vert", "m"),
        "block A": ("cube rouge", "m"), "plate": ("assiette", "f"), "bowl": ("bol", "m"),
    },
    "es": {
        "apple": ("manzana", "f"), "lemon": ("limón", "m"), "orange": ("naranja", "f"), "plum": ("ciruela", "f"),
        "pear": ("pera", "f"), "eggplant": ("berenjena", "f"), "coke can": ("lata de coca-cola", "f"),
        "sprite can": ("lata de sprite", "f"), "water bottle": ("botella de agua", "f"), "sponge": ("esponja", "f"),
        "spoon": ("cuchara", "f"), "mug": ("taza", "f"), "block L": ("cubo azul", "m"), "block V": ("cubo verde", "m"),
        "block A": ("cubo rojo", "m"), "plate": ("plato", "m"), "bowl": ("cuenco", "m"),
    },
}
_DRAWER_TR = {
    "fr": {"top": "le tiroir du haut", "middle": "le tiroir du milieu", "bottom": "le tiroir du bas"},
    "es": {"top": "el cajón de arriba", "middle": "el cajón del medio", "bottom": "el cajón de abajo"},
}


def _forms(lang: str, name: str) -> dict[str, str]:
    """Article forms of a translated noun: plain ("la pomme"), with "de" ("de la pomme"/"du citron"), with "a"."""
    if name not in TRANSLATIONS[lang]:
        raise NotApplicableError(f"no {lang} translation for {name!r}")
    word, gender = TRANSLATIONS[lang][name]
    if lang == "fr":
        if word[0] in "aeéèiouh":
            return {"": f"l'{word}", "de": f"de l'{word}", "a": f"à l'{word}"}
        return ({"": f"le {word}", "de": f"du {word}", "a": f"au {word}"} if gender == "m"
                else {"": f"la {word}", "de": f"de la {word}", "a": f"à la {word}"})
    return ({"": f"el {word}", "de": f"del {word}", "a": f"al {word}"} if gender == "m"
            else {"": f"la {word}", "de": f"de la {word}", "a": f"a la {word}"})


def _multilingual_slots(sg: SceneGraph, rng: np.random.Generator) -> dict[str, str]:
    slots = task_slots(sg)
    for lang in ("fr", "es"):
        for role in ("target", "destination"):
            name = sg.task_args.get(role) or (sg.task_args.get("reference") if role == "destination" else None)
            if role in slots and name:
                if name.startswith("drawer"):
                    raise NotApplicableError("multilingual templates do not cover drawers as destinations")
                for suffix, text in _forms(lang, name).items():
                    slots[f"{role}_{lang}" + (f"_{suffix}" if suffix else "")] = text
        if "drawer" in slots:
            slots[f"drawer_{lang}"] = _DRAWER_TR[lang][slots["drawer"]]
    return slots


register_family(TemplateFamily(
    "multilingual", "aggregation",
    train={
        "pick": ("prends {target_fr}", "Peux-tu attraper {target_fr} ?", "toma {target_es}", "¿Puedes agarrar {target_es}?"),
        "place_on": ("mets {target_fr} sur {destination_fr}", "pon {target_es} sobre {destination_es}"),
        "place_in": ("mets {target_fr} dans {destination_fr}", "pon {target_es} dentro {destination_es_de}"),
        "move_near": ("déplace {target_fr} près {destination_fr_de}", "mueve {target_es} cerca {destination_es_de}"),
        "open_drawer": ("ouvre {drawer_fr}", "abre {drawer_es}"),
        "close_drawer": ("ferme {drawer_fr}", "cierra {drawer_es}"),
    },
    heldout={
        "pick": ("Soulève {target_fr}, s'il te plaît.", "Levanta {target_es}, por favor."),
        "place_on": ("Dépose {target_fr} sur {destination_fr}, s'il te plaît.", "Coloca {target_es} encima {destination_es_de}, por favor."),
        "place_in": ("Range {target_fr} dans {destination_fr}.", "Guarda {target_es} en {destination_es}."),
        "move_near": ("Pose {target_fr} à côté {destination_fr_de}.", "Acerca {target_es} {destination_es_a}."),
        "open_drawer": ("Tire {drawer_fr} pour l'ouvrir.", "Saca {drawer_es} del mueble."),
        "close_drawer": ("Repousse {drawer_fr} jusqu'au bout.", "Empuja {drawer_es} hasta cerrarlo."),
    },
    slot_fn=_multilingual_slots,
    description="French and Spanish commands (hand-written template and object-name translations)",
))


# --- aggregation: typos ---------------------------------------------------------------------------------------

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


register_family(TemplateFamily(
    "typos", "aggregation",
    train={
        "pick": ("pick up the {target} on the table", "please grab the {target}"),
        "place_on": ("please put the {target} on the {destination}",),
        "place_in": ("please put the {target} in the {destination}",),
        "move_near": ("please move the {target} near the {destination}",),
        "open_drawer": ("please open the {drawer} drawer",),
        "close_drawer": ("please close the {drawer} drawer",),
        "stack": ("please stack the {target} on the {destination}",),
    },
    heldout={
        "pick": ("give me the {target} from the table", "fetch the {target} quickly"),
        "place_on": ("carefully set the {target} onto the {destination}",),
        "place_in": ("carefully drop the {target} into the {destination}",),
        "move_near": ("carefully shove the {target} beside the {destination}",),
        "open_drawer": ("quickly yank the {drawer} drawer open",),
        "close_drawer": ("quickly shove the {drawer} drawer shut",),
        "stack": ("carefully set the {target} over the {destination}",),
    },
    post_fn=inject_typos,
    description="commands with deterministic typos ('give me the purple fruit on the tabel')",
))


# --- situated: needs (intent and tool use) ----------------------------------------------------------------------

@dataclass(frozen=True)
class Need:
    """What an implicit request asks for: `match` says which object satisfies it; `rivals` which other objects
    would make the request ambiguous (defaults to `match`)."""

    match: Callable[[ObjectSpec], bool]
    rivals: Callable[[ObjectSpec], bool] | None = None

    def rival(self, spec: ObjectSpec) -> bool:
        return (self.rivals or self.match)(spec)


INTENT_NEEDS: dict[str, Need] = {
    "thirsty": Need(lambda s: s.category == "drink"),
    "clean": Need(lambda s: "for cleaning" in s.traits),
    "hungry": Need(lambda s: s.category == "fruit", lambda s: s.category in ("fruit", "vegetable")),
    "coffee": Need(lambda s: "for coffee" in s.traits, lambda s: "for coffee" in s.traits or s.category == "drink"),
    "healthy": Need(lambda s: s.category == "vegetable", lambda s: s.category in ("fruit", "vegetable")),
}
TOOL_NEEDS: dict[str, Need] = {
    "eat": Need(lambda s: "for eating" in s.traits),
    "wipe": Need(lambda s: "for cleaning" in s.traits),
    "pour": Need(lambda s: s.category == "container"),
}


def _need_key_fn(needs: dict[str, Need], allowed: tuple[str, ...]) -> KeyFn:
    def key_fn(sg: SceneGraph) -> str:
        if sg.task_family not in allowed:
            raise NotApplicableError(f"task family {sg.task_family!r} not in {allowed}")
        spec = _target_spec(sg)
        for need_id, need in needs.items():
            if need.match(spec) and sum(need.rival(CATALOG[o.name]) for o in graspables(sg)) == 1:
                return f"{need_id}/{sg.task_family}"
        raise NotApplicableError(f"no need picks out {spec.name!r} alone in this scene")
    return key_fn


register_family(TemplateFamily(
    "intent", "situated",
    train={
        "thirsty/pick": ("I'm thirsty. Can you get me something to drink?", "I could really use a drink right now, grab one for me."),
        "thirsty/place_on": ("I'm thirsty, put something to drink on the {destination}.",),
        "clean/pick": ("I want to clean the table. Pick a suitable tool for me.", "The table is dirty, get me what I need to clean it."),
        "clean/place_on": ("I'm going to wipe the counter, put the cleaning tool on the {destination}.",),
        "hungry/pick": ("I'm hungry, can you grab me a piece of fruit?", "I want a fresh snack, pick one up for me."),
        "hungry/place_on": ("I'd like a snack, put some fruit on the {destination}.",),
        "coffee/pick": ("I want to drink some coffee. Grab the tool for me.", "Coffee time! Pick up what I need for it."),
        "coffee/place_on": ("I'm making coffee, put what I drink it from on the {destination}.",),
        "healthy/pick": ("I want a healthy vegetable, pick one up for me.",),
        "healthy/place_on": ("I'm cooking something healthy, put the vegetable on the {destination}.",),
    },
    heldout={
        "thirsty/pick": ("My throat is dry; hand me something I can sip.", "After that long walk I need a beverage. Lift it for me."),
        "thirsty/place_on": ("Serve me a beverage by setting it on the {destination}.",),
        "clean/pick": ("There's a spill here; lift whatever can wipe it up.",),
        "clean/place_on": ("Leave the thing I can scrub with on the {destination}.",),
        "hungry/pick": ("I skipped lunch, please fetch me some fruit to eat.",),
        "hungry/place_on": ("Serve me some fruit by placing it on the {destination}.",),
        "coffee/pick": ("Time for my morning espresso; lift what I'd pour it into.",),
        "coffee/place_on": ("My espresso needs a vessel; set one on the {destination}.",),
        "healthy/pick": ("I'm on a diet; lift the veggie for me.",),
        "healthy/place_on": ("For a light dinner, lay the veggie on the {destination}.",),
    },
    key_fn=_need_key_fn(INTENT_NEEDS, ("pick", "place_on")),
    description="implicit intent ('I'm thirsty' -> the only drink; 'I want to clean the table' -> the sponge)",
))

register_family(TemplateFamily(
    "tool_use", "situated",
    train={
        "eat/pick": ("Give me something to eat soup with.", "Pick up the utensil I can eat cereal with."),
        "eat/place_on": ("Put the tool that can be used to feed a baby on the {destination}.",),
        "wipe/pick": ("Pick up the tool for wiping a spill.", "I need something to scrub the dishes, grab it."),
        "wipe/place_on": ("Put the thing that soaks up water on the {destination}.",),
        "pour/pick": ("Grab something I can pour my tea into.",),
        "pour/place_on": ("Put something I can pour milk into on the {destination}.",),
    },
    heldout={
        "eat/pick": ("Which tool would let me eat my yogurt? Lift it.",),
        "eat/place_on": ("Place the utensil for scooping soup on the {destination}.",),
        "wipe/pick": ("Lift the item that can mop up water.",),
        "wipe/place_on": ("Set the thing for scrubbing pans on the {destination}.",),
        "pour/pick": ("Lift the vessel with a handle for hot drinks.",),
        "pour/place_on": ("Set a vessel for hot chocolate on the {destination}.",),
    },
    key_fn=_need_key_fn(TOOL_NEEDS, ("pick", "place_on")),
    description="tool use ('something to eat soup with' -> the spoon)",
))


# --- situated: negation ---------------------------------------------------------------------------------------

def _negation_key(sg: SceneGraph) -> str:
    if sg.task_family not in ("pick", "place_on", "place_in"):
        raise NotApplicableError(f"negation has no templates for {sg.task_family!r}")
    spec = _target_spec(sg)
    if _count(sg, lambda s: s.category == spec.category) != 1:
        raise NotApplicableError(f"the target's category {spec.category!r} is not unique in the scene")
    if not any(CATALOG[o.name].category != spec.category for o in graspables(sg)):
        raise NotApplicableError("no object of another category to negate")
    return sg.task_family


def _negation_slots(sg: SceneGraph, rng: np.random.Generator) -> dict[str, str]:
    _negation_key(sg)
    slots = task_slots(sg)
    spec = _target_spec(sg)
    others = sorted({CATALOG[o.name].category for o in graspables(sg)} - {spec.category})
    neg = choice(rng, others)
    slots["target_cat"] = category_noun(spec.category)
    slots["neg_cat"] = category_noun(neg, plural=_count(sg, lambda s: s.category == neg) > 1)
    return slots


register_family(TemplateFamily(
    "negation", "situated",
    train={
        "pick": ("Pick the {target_cat}, not the {neg_cat}.", "I don't want the {neg_cat}; grab the {target_cat} instead."),
        "place_on": ("I do not want the {neg_cat}, put the {target_cat} on the {destination}.",
                     "Not the {neg_cat}: place the {target_cat} on the {destination}."),
        "place_in": ("I do not want the {neg_cat}, put the {target_cat} in the {destination}.",),
    },
    heldout={
        "pick": ("Leave the {neg_cat} alone and lift the {target_cat}.", "Skip the {neg_cat}, I'd rather have the {target_cat}."),
        "place_on": ("Skip the {neg_cat}; the {target_cat} goes on the {destination}.",),
        "place_in": ("Keep the {neg_cat} out of it and drop the {target_cat} in the {destination}.",),
    },
    key_fn=_negation_key,
    slot_fn=_negation_slots,
    description="negation ('pick the fruit, not the drink')",
))


# --- situated: subtask identification (drawer already open, object already out) ----------------------------------

SUBTASK_MIN_OPENING = 0.05


def _subtask_key(sg: SceneGraph) -> str:
    if sg.task_family != "close_drawer":
        raise NotApplicableError("subtask identification applies to close_drawer tasks (drawer starts open)")
    drawer = sg.task_args.get("drawer", "")
    if sg.drawers.get(drawer, 0.0) < SUBTASK_MIN_OPENING:
        raise NotApplicableError(f"the {drawer} drawer is not open")
    return "close_drawer"


def _subtask_slots(sg: SceneGraph, rng: np.random.Generator) -> dict[str, str]:
    _subtask_key(sg)
    slots = task_slots(sg)
    outside = sorted(o.name for o in graspables(sg) if not (o.inside or "").startswith("drawer"))
    if not outside:
        raise NotApplicableError("no object outside the drawers that could have been taken out")
    name = sg.task_args.get("target")
    slots["obj"] = noun(name if name in outside else choice(rng, outside))
    return slots


register_family(TemplateFamily(
    "subtask", "situated",
    train={"close_drawer": ("After taking the {obj} out of the {drawer} drawer, close the drawer.",
                            "Pick the {obj} from the {drawer} drawer, then close the {drawer} drawer.",
                            "After grabbing the {obj} from the {drawer} drawer, please close the {drawer} drawer.")},
    heldout={"close_drawer": ("Once the {obj} has been removed from the {drawer} drawer, shut it.",
                              "Take the {obj} out of the {drawer} drawer and then push that drawer shut.")},
    key_fn=_subtask_key,
    slot_fn=_subtask_slots,
    description="subtask identification: the first subtask is already done, only closing the drawer remains",
))


# --- situated: drawer intent --------------------------------------------------------------------------------------

register_family(TemplateFamily(
    "drawer_intent", "situated",
    train={"open_drawer": ("Please check if there are any items in the {drawer} drawer.",
                           "I need you to retrieve some utensils from the {drawer} drawer.")},
    heldout={"open_drawer": ("Let me see what's stored in the {drawer} drawer.",
                             "I wonder whether the {drawer} drawer is empty; show me.")},
    description="implicit drawer goals ('check if there are any items in the top drawer' -> open it)",
))


# --- situated: commonsense placement --------------------------------------------------------------------------

COMMONSENSE_PAIRS: dict[str, tuple[Need, Need]] = {
    "snack_coffee": (Need(lambda s: s.category == "fruit", lambda s: s.category in ("fruit", "vegetable")),
                     Need(lambda s: "for coffee" in s.traits)),
    "wet_sponge": (Need(lambda s: s.name == "water bottle", lambda s: s.category == "drink"),
                   Need(lambda s: "for cleaning" in s.traits)),
    "wash_fruit": (Need(lambda s: s.category == "fruit", lambda s: s.category in ("fruit", "vegetable")),
                   Need(lambda s: s.name == "water bottle", lambda s: s.category == "drink")),
    "stir_coffee": (Need(lambda s: "for eating" in s.traits), Need(lambda s: "for coffee" in s.traits)),
}


def _commonsense_key(sg: SceneGraph) -> str:
    if sg.task_family != "move_near":
        raise NotApplicableError("commonsense placement applies to move_near tasks")
    target, dest = _target_spec(sg), spec_of(_dest_name(sg))
    if dest is None:
        raise NotApplicableError(f"destination {_dest_name(sg)!r} is not a catalogue object")
    for pair_id, (t_need, d_need) in COMMONSENSE_PAIRS.items():
        if (t_need.match(target) and d_need.match(dest)
                and sum(t_need.rival(CATALOG[o.name]) for o in graspables(sg)) == 1
                and sum(d_need.rival(CATALOG[o.name]) for o in graspables(sg)) == 1):
            return f"{pair_id}/move_near"
    raise NotApplicableError(f"no commonsense pairing of {target.name!r} and {dest.name!r} is unambiguous here")


def _commonsense_slots(sg: SceneGraph, rng: np.random.Generator) -> dict[str, str]:
    _commonsense_key(sg)
    slots = task_slots(sg)
    slots["target_cat"] = category_noun(_target_spec(sg).category)
    return slots


register_family(TemplateFamily(
    "commonsense", "situated",
    train={
        "snack_coffee/move_near": ("Place the fruit near the mug for a snack after my coffee.",
                                   "After I finish my coffee, can you put the fruit near it for a snack?"),
        "wet_sponge/move_near": ("Please move the water to the sponge so I can wet it.",),
        "wash_fruit/move_near": ("I want to wash the {target_cat} with water, move it near the bottle.",),
        "stir_coffee/move_near": ("I need to stir my coffee, bring the right utensil next to it.",),
    },
    heldout={
        "snack_coffee/move_near": ("I'd like a bite of fruit with my coffee; set it beside my cup.",),
        "wet_sponge/move_near": ("The sponge is dry; park something to moisten it right by it.",),
        "wash_fruit/move_near": ("The {target_cat} needs rinsing; shift it over to the water.",),
        "stir_coffee/move_near": ("My latte needs stirring; park the utensil beside it.",),
    },
    key_fn=_commonsense_key,
    slot_fn=_commonsense_slots,
    description="commonsense placement ('place the fruit near the mug for a snack after my coffee')",
))


# --- situated: generic context (any task; the fallback of VLA-IT context creation) --------------------------------

def _context_slots(sg: SceneGraph, rng: np.random.Generator) -> dict[str, str]:
    return {"action": canonical_instruction(sg)}


register_family(TemplateFamily(
    "context", "situated",
    train={fam: ("I'm tidying up the kitchen. Could you help me and {action}?",
                 "We're setting up for dinner; please {action}.",
                 "I'm busy with the laundry, so could you {action} for me?") for fam in TASK_FAMILIES},
    heldout={fam: ("Guests arrive in five minutes, so {action} right away.",
                   "Before I head out, I'd appreciate it if you'd {action}.") for fam in TASK_FAMILIES},
    slot_fn=_context_slots,
    description="a situated framing around the plain command (every task family)",
))


# ----------------------------------------------------------------------------------------------------- JSONL files

FILE_SLOTS = ("target", "destination", "drawer", "target_cat", "target_color", "target_desc")
FILE_REQUIRES = ("target_category", "target_trait", "unique_target_category", "drawer_open")
_FILE_FIELDS = ("family_id", "category", "task_family", "split", "template")


def _file_slot_fn(requires: dict) -> SlotFn:
    def slot_fn(sg: SceneGraph, rng: np.random.Generator) -> dict[str, str]:
        slots = task_slots(sg)
        target = spec_of(sg.task_args.get("target", ""))
        if requires.get("drawer_open") is not None:
            is_open = sg.drawers.get(slots.get("drawer", ""), 0.0) >= SUBTASK_MIN_OPENING
            if is_open != bool(requires["drawer_open"]):
                raise NotApplicableError(f"requires drawer_open={requires['drawer_open']}")
        if target is not None:
            cat = requires.get("target_category")
            if cat and target.category != cat:
                raise NotApplicableError(f"requires a target of category {cat!r}")
            trait = requires.get("target_trait")
            if trait and trait not in target.traits:
                raise NotApplicableError(f"requires a target with trait {trait!r}")
            if requires.get("unique_target_category") and _count(sg, lambda s: s.category == target.category) != 1:
                raise NotApplicableError("requires the target's category to be unique in the scene")
            slots["target_cat"] = category_noun(target.category)
            slots["target_color"] = target.color
            descs = unique_descriptions(sg, target.name)
            if descs:
                slots["target_desc"] = choice(rng, descs)
        elif requires.get("target_category") or requires.get("target_trait"):
            raise NotApplicableError("requires a catalogue target")
        return slots
    return slot_fn


def load_instruction_file(path: str | Path, register: bool = True) -> list[TemplateFamily]:
    """Add instruct template families from a JSONL file, without editing code.

    One JSON object per line (blank lines and lines starting with "#" are skipped):

        {"family_id": "polite", "category": "aggregation", "task_family": "pick", "split": "train",
         "template": "Would you kindly pick up the {target}?"}
        {"family_id": "polite", "category": "aggregation", "task_family": "pick", "split": "heldout",
         "template": "If it's no trouble, lift the {target}."}

    Fields: family_id (new id, not a built-in one), category ("aggregation" | "situated"), task_family (one of
    TASK_FAMILIES), split ("train" | "heldout"), template (slots: {target} {destination} {drawer} {target_cat}
    {target_color} {target_desc}); optional "requires" (object) with target_category, target_trait,
    unique_target_category (bool), drawer_open (bool): on one line of a family or identical on several. Lines of
    one family are merged; the train and held-out templates must differ (a family evaluated in a suite needs
    templates in both splits for its task family). Any bad line raises ValueError naming file and line.
    Returns the families (registered in TEMPLATE_FAMILIES unless `register=False`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"instruction file {path} does not exist")
    groups: dict[str, dict] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        unknown = set(rec) - set(_FILE_FIELDS) - {"requires"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; allowed {list(_FILE_FIELDS) + ['requires']}")
        for key in _FILE_FIELDS:
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise ValueError(f"{where}: field {key!r} must be a non-empty string")
        fid, cat, fam, split, tmpl = (rec[k] for k in _FILE_FIELDS)
        if fid in TEMPLATE_FAMILIES and fid not in groups and TEMPLATE_FAMILIES[fid].description != f"from {path}":
            raise ValueError(f"{where}: family_id {fid!r} is already registered")
        if cat not in CATEGORIES:
            raise ValueError(f"{where}: category must be one of {CATEGORIES}, got {cat!r}")
        if fam not in TASK_FAMILIES:
            raise ValueError(f"{where}: task_family must be one of {TASK_FAMILIES}, got {fam!r}")
        if split not in SPLITS:
            raise ValueError(f"{where}: split must be one of {SPLITS}, got {split!r}")
        try:
            slots = template_slots(tmpl)
        except ValueError as exc:
            raise ValueError(f"{where}: bad template {tmpl!r} ({exc})") from None
        bad = [s for s in slots if s not in FILE_SLOTS]
        if bad:
            raise ValueError(f"{where}: unknown slot(s) {bad} in template; allowed {list(FILE_SLOTS)}")
        requires = rec.get("requires")
        if requires is not None and (not isinstance(requires, dict) or set(requires) - set(FILE_REQUIRES)):
            raise ValueError(f"{where}: 'requires' must be an object with keys from {list(FILE_REQUIRES)}")
        group = groups.setdefault(fid, {"category": cat, "requires": None, "train": {}, "heldout": {}, "line": lineno})
        if group["category"] != cat:
            raise ValueError(f"{where}: family {fid!r} has category {group['category']!r} on line {group['line']}")
        if requires is not None:
            if group["requires"] is not None and group["requires"] != requires:
                raise ValueError(f"{where}: family {fid!r} has different 'requires' on line {group['requires_line']}")
            group["requires"], group["requires_line"] = requires, lineno
        group[split].setdefault(fam, []).append(tmpl)
    if not groups:
        raise ValueError(f"{path}: no template lines")
    out = []
    for fid, g in groups.items():
        try:
            family = TemplateFamily(
                fid, g["category"],
                train={k: tuple(v) for k, v in g["train"].items()},
                heldout={k: tuple(v) for k, v in g["heldout"].items()},
                slot_fn=_file_slot_fn(dict(g["requires"] or {})),
                description=f"from {path}",
            )
        except ValueError as exc:
            raise ValueError(f"{path}:{g['line']}: {exc}") from None
        out.append(family)
    if register:
        for family in out:
            register_family(family, replace=True)
    logger.info("loaded %d template families from %s", len(out), path)
    return out
