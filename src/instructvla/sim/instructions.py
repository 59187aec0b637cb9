"""Language for the tabletop: atomic instructions, instruct template families with train/held-out splits, replies.

Everything here reads only a `SceneGraph` (and the object catalogue), never MuJoCo. This module is the API; the
pieces live in `language_utils` (slots, references, canonical phrasing, typos), `template_family` (the
`TemplateFamily` type and registry) and `instruct_families` (the built-in families), and are re-exported here.

* `atomic_instruction(sg, rng)`: a plain Bridge/Fractal-like command for the scene's task ("pick up the apple").
* `TEMPLATE_FAMILIES`: instruct template families (SimplerEnv-Instruct style), each tagged "aggregation" or
  "situated", each with a TRAIN and a disjoint HELD-OUT template split; `render_instruction(family_id, sg, rng, split)`.
* `reply_for(sg, rng)`: a short first-person reply naming the single next atomic action ("I'll pick up the coke can.").
* `load_instruction_file(path)`: add template families from a JSONL file without editing code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instructvla.jsonl import iter_jsonl
from instructvla.sim.instruct_families import (
    COMMONSENSE_PAIRS,
    INTENT_NEEDS,
    SUBTASK_MIN_OPENING,
    TOOL_NEEDS,
    TRANSLATIONS,
    Need,
)
from instructvla.sim.language_utils import (
    ATOMIC_TEMPLATES,
    CANONICAL,
    CATEGORIES,
    CATEGORY_NOUN,
    DRAWERS,
    SPLITS,
    TASK_FAMILIES,
    NotApplicableError,
    as_rng,
    canonical_instruction,
    category_noun,
    check_split,
    choice,
    count_graspables,
    fill,
    fixtures,
    graspables,
    inject_typos,
    noun,
    referring_nouns,
    spec_of,
    task_slots,
    template_regex,
    template_slots,
    unique_descriptions,
)
from instructvla.sim.scene_graph import SceneGraph
from instructvla.sim.template_family import (
    TEMPLATE_FAMILIES,
    KeyFn,
    PostFn,
    SlotFn,
    TemplateFamily,
    register_family,
)

__all__ = [
    "ATOMIC_TEMPLATES", "CANONICAL", "CATEGORIES", "CATEGORY_NOUN", "COMMONSENSE_PAIRS", "DRAWERS", "FILE_REQUIRES",
    "FILE_SLOTS", "INTENT_NEEDS", "REPLY_TEMPLATES", "SPLITS", "SUBTASK_MIN_OPENING", "TASK_FAMILIES",
    "TEMPLATE_FAMILIES", "TOOL_NEEDS", "TRANSLATIONS", "KeyFn", "Need", "NotApplicableError", "PostFn", "SlotFn",
    "TemplateFamily", "TemplateRef", "all_templates", "as_rng", "atomic_instruction", "canonical_instruction",
    "category_noun", "check_split", "choice", "families", "fill", "fixtures", "get_family", "graspables",
    "inject_typos", "load_instruction_file", "next_action", "noun", "referring_nouns", "register_family",
    "render_instruction", "reply_for", "spec_of", "task_slots", "template_regex", "template_slots",
    "unique_descriptions",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------- atomic

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


# ----------------------------------------------------------------------------------------------------- families

def get_family(family_id: str) -> TemplateFamily:
    """The registered family `family_id`; KeyError with a "did you mean" hint if unknown."""
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
    """Registered template families, optionally only one category ("aggregation" | "situated")."""
    return [f for f in TEMPLATE_FAMILIES.values() if category is None or f.category == category]

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
            if requires.get("unique_target_category") and count_graspables(sg, lambda s: s.category == target.category) != 1:
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
    for lineno, rec in iter_jsonl(path, comments=True):
        where = f"{path}:{lineno}"
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
