"""Multimodal corpus from scene graphs: captions and VQA about a rendered tabletop (stage-0 pretraining, co-training).

`generate_multimodal_records(sg, rng, split)` gives question/answer records about colours, counts, spatial relations
(as seen from the primary camera), drawer states, categories, letters on blocks, object existence and captions. The
question templates come in a TRAIN and a disjoint HELD-OUT split (`QUESTION_TEMPLATES`); held-out scenes are the data
helper's choice of seeds. Answers are short ("red", "two", "left", "yes") and compared with `answer_normalize`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from instructvla.sim.catalog import CATALOG, FIXTURES
from instructvla.sim.instructions import (
    as_rng,
    category_noun,
    check_split,
    choice,
    fill,
    noun,
)
from instructvla.sim.scene_graph import ObjectState, SceneGraph

# ----------------------------------------------------------------------------------------------------- view

# The primary camera of sim/scene.py ("primary": position and look-at point, table frame). A test checks they agree.
CAMERA_POS = (0.18, -0.5, 0.62)
CAMERA_LOOK_AT = (-0.05, 0.12, 0.04)
SPATIAL_MARGIN = 0.04  # metres: closer pairs get no left/right or front/behind question (ambiguous)
DRAWER_OPEN = 0.05  # metres: a drawer opened at least this much counts as open (its contents are visible)


@dataclass(frozen=True)
class View:
    """Horizontal camera frame for left/right and near/far relations as seen in the image."""

    position: tuple[float, float, float] = CAMERA_POS
    look_at: tuple[float, float, float] = CAMERA_LOOK_AT

    def _axes(self) -> tuple[np.ndarray, np.ndarray]:
        fwd = np.asarray(self.look_at, float) - np.asarray(self.position, float)
        fwd[2] = 0.0
        fwd /= np.linalg.norm(fwd)
        right = np.array([fwd[1], -fwd[0], 0.0])  # fwd x z
        return fwd, right

    def lateral(self, p: tuple[float, float, float]) -> float:
        """Position along the image's right direction (larger = further right in the image)."""
        return float(np.dot(np.asarray(p, float) - self.position, self._axes()[1]))

    def depth(self, p: tuple[float, float, float]) -> float:
        """Horizontal distance along the view direction (smaller = closer to the camera)."""
        return float(np.dot(np.asarray(p, float) - self.position, self._axes()[0]))


DEFAULT_VIEW = View()


def visible_objects(sg: SceneGraph) -> list[ObjectState]:
    """Objects and fixtures that can be seen: everything except objects inside a closed drawer."""
    out = []
    for o in sg.objects:
        inside = o.inside or ""
        if inside.startswith("drawer:") and sg.drawers.get(inside.split(":", 1)[1], 0.0) < DRAWER_OPEN:
            continue
        out.append(o)
    return out


def visible_graspables(sg: SceneGraph) -> list[ObjectState]:
    return [o for o in visible_objects(sg) if not o.is_fixture and o.name in CATALOG]


# ----------------------------------------------------------------------------------------------------- captions

def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def object_phrase(o: ObjectState) -> str:
    """Noun phrase with colour for a caption: "a red apple", "an orange", "a blue block with the letter L"."""
    spec = CATALOG.get(o.name)
    if spec is None:
        fx = FIXTURES.get(o.name, {})
        if o.name == "cabinet":
            return "a wooden cabinet with three drawers"
        return _article(f"{fx['color']} {o.name}" if fx.get("color") not in (None, "white") else o.name)
    base = noun(o.name)
    if spec.color not in base.split():
        base = f"{spec.color} {base}"
    if spec.letter:
        base += f" with the letter {spec.letter}"
    return _article(base)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


CAPTION_TEMPLATES = ("A {table} with {things}.", "On the {table} there {be} {things}.",
                     "The picture shows {things} on a {table}.", "{Things} on a {table}.")


def caption(sg: SceneGraph, rng: np.random.Generator) -> str:
    """One-sentence description of the scene without the robot: "A wooden table with a red apple and a plate."

    Objects resting on a receptacle are mentioned with it; open drawers are named with what they hold."""
    rng = as_rng(rng)
    vis = visible_objects(sg)
    on_receptacle = {o.name: o.inside for o in vis if o.inside and not o.inside.startswith("drawer:")}
    things = []
    for o in sorted(vis, key=lambda o: DEFAULT_VIEW.lateral(o.position)):  # left to right in the image
        if o.name in on_receptacle or (o.inside or "").startswith("drawer:"):
            continue
        phrase = object_phrase(o)
        held = [object_phrase(x) for x in vis if on_receptacle.get(x.name) == o.name]
        if held:
            phrase += f" holding {_join(held)}" if o.name == "bowl" else f" with {_join(held)} on it"
        things.append(phrase)
    if not things:
        return f"An empty {sg.table_style}."
    text = fill(choice(rng, CAPTION_TEMPLATES), {
        "table": sg.table_style, "things": _join(things), "Things": _join(things)[0].upper() + _join(things)[1:],
        "be": "is" if len(things) == 1 else "are"})
    if any(o.name == "cabinet" for o in vis):
        for d in (d for d, v in sg.drawers.items() if v >= DRAWER_OPEN):
            held = [object_phrase(o) for o in vis if o.inside == f"drawer:{d}"]
            text += f" The {d} drawer is open" + (f" with {_join(held)} inside." if held else ".")
    return text


# ----------------------------------------------------------------------------------------------------- questions

_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")


def number_word(n: int) -> str:
    return _NUMBERS[n] if 0 <= n < len(_NUMBERS) else str(n)


CAPTION_PROMPTS_TRAIN = (
    "Describe what's on the table. Don't mention the robot arm.",
    "Describe the table, ignoring the robot.",
    "What is on the table? Leave out the robot.",
    "Give a short description of the scene without the robot.",
    "List the objects on the table, ignoring the robot arm.",
    "Write a caption for the tabletop, not the robot.",
)
CAPTION_PROMPTS_HELDOUT = (
    "Summarise the tabletop scene in one sentence, skipping the arm.",
    "Tell me briefly what you see on the table apart from the robot.",
)

# kind -> split -> question templates
QUESTION_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "color": {"train": ("What color is the {obj}?", "What is the color of the {obj}?"),
              "heldout": ("Which colour does the {obj} have?",)},
    "count": {"train": ("How many {things} are on the table?", "Count the {things} on the table."),
              "heldout": ("What is the number of {things} you can see?",)},
    "left_right": {"train": ("Is the {a} to the left or to the right of the {b}?",),
                   "heldout": ("From the camera's view, which side of the {b} is the {a} on, left or right?",)},
    "front_behind": {"train": ("Which is closer to the camera, the {a} or the {b}?",),
                     "heldout": ("Of the {a} and the {b}, which one is nearer to the viewer?",)},
    "drawer": {"train": ("Is the {drawer} drawer open or closed?",),
               "heldout": ("What state is the {drawer} drawer in, open or closed?",)},
    "category": {"train": ("What kind of object is the {obj}?",),
                 "heldout": ("The {obj} belongs to which category?",)},
    "category_member": {"train": ("Which object on the table is a {cat}?",),
                        "heldout": ("Name the only {cat} you can see.",)},
    "letter": {"train": ("What letter is printed on the {obj}?",),
               "heldout": ("Which letter can you read on the {obj}?",)},
    "letter_color": {"train": ("What color is the block with the letter {letter}?",),
                     "heldout": ("The cube showing {letter} has which colour?",)},
    "exists": {"train": ("Is there {an_obj} on the table?",),
               "heldout": ("Can you see {an_obj} anywhere on the table?",)},
    "receptacle": {"train": ("What is {prep} the {fixture}?",),
                   "heldout": ("Which object lies {prep} the {fixture}?",)},
    "commonsense": {"train": ("Which object can be used {purpose}?",),
                    "heldout": ("If I needed something {purpose}, which object would you pick?",)},
    "caption": {"train": CAPTION_PROMPTS_TRAIN, "heldout": CAPTION_PROMPTS_HELDOUT},
}
KINDS = tuple(QUESTION_TEMPLATES)

_PURPOSES = {"for cleaning": "for cleaning", "for eating": "for eating", "for coffee": "to hold coffee",
             "for drinking": "for drinking"}


@dataclass(frozen=True)
class _Q:
    """A question before its template is chosen: kind, slots, answer."""

    kind: str
    slots: dict
    answer: str


def _color_qs(sg: SceneGraph) -> list[_Q]:
    return [_Q("color", {"obj": noun(o.name)}, CATALOG[o.name].color) for o in visible_graspables(sg)
            if CATALOG[o.name].category != "block"]


def _count_qs(sg: SceneGraph) -> list[_Q]:
    objs = visible_graspables(sg)
    out = [_Q("count", {"things": "objects"}, number_word(len(objs)))]
    for cat in sorted({CATALOG[o.name].category for o in objs} | {"fruit", "drink"}):
        n = sum(CATALOG[o.name].category == cat for o in objs)
        out.append(_Q("count", {"things": category_noun(cat, plural=True)}, number_word(n)))
    return out


def _pair_qs(sg: SceneGraph, view: View) -> list[_Q]:
    objs = [o for o in visible_objects(sg) if o.name != "cabinet" and not o.inside]
    out = []
    for a in objs:
        for b in objs:
            if a.name >= b.name:
                continue
            first, second = (a, b) if _pair_order(a, b) else (b, a)
            dl = view.lateral(first.position) - view.lateral(second.position)
            if abs(dl) > SPATIAL_MARGIN:
                out.append(_Q("left_right", {"a": noun(first.name), "b": noun(second.name)},
                              "right" if dl > 0 else "left"))
            dd = view.depth(a.position) - view.depth(b.position)
            if abs(dd) > SPATIAL_MARGIN:
                closer = a if dd < 0 else b
                out.append(_Q("front_behind", {"a": noun(first.name), "b": noun(second.name)}, noun(closer.name)))
    return out


def _pair_order(a: ObjectState, b: ObjectState) -> bool:
    """A deterministic order for "the A or the B" that does not always put the answer first."""
    return (sum(map(ord, a.name + b.name)) % 2) == 0


def _drawer_qs(sg: SceneGraph) -> list[_Q]:
    if not any(o.name == "cabinet" for o in sg.objects):
        return []
    return [_Q("drawer", {"drawer": d}, "open" if v >= DRAWER_OPEN else "closed") for d, v in sg.drawers.items()]


def _category_qs(sg: SceneGraph) -> list[_Q]:
    objs = visible_graspables(sg)
    out = [_Q("category", {"obj": noun(o.name)}, category_noun(CATALOG[o.name].category)) for o in objs
           if CATALOG[o.name].category != "block"]
    for cat in sorted({CATALOG[o.name].category for o in objs}):
        members = [o for o in objs if CATALOG[o.name].category == cat]
        if len(members) == 1 and cat != "block":
            out.append(_Q("category_member", {"cat": category_noun(cat)}, noun(members[0].name)))
    return out


def _letter_qs(sg: SceneGraph) -> list[_Q]:
    out = []
    for o in visible_graspables(sg):
        spec = CATALOG[o.name]
        if spec.letter:
            out.append(_Q("letter", {"obj": noun(o.name)}, spec.letter))
            out.append(_Q("letter_color", {"letter": spec.letter}, spec.color))
    return out


def _exists_qs(sg: SceneGraph, rng: np.random.Generator) -> list[_Q]:
    present = {o.name for o in visible_graspables(sg)}
    absent = sorted(set(CATALOG) - {o.name for o in sg.objects} - {n for n in CATALOG if CATALOG[n].category == "block"})
    out = [_Q("exists", {"an_obj": _article(noun(n))}, "yes") for n in sorted(present)
           if CATALOG[n].category != "block"]
    if absent:
        n = choice(rng, absent)
        out.append(_Q("exists", {"an_obj": _article(noun(n))}, "no"))
    return out


def _receptacle_qs(sg: SceneGraph) -> list[_Q]:
    out = []
    vis = visible_objects(sg)
    for fx in (o for o in vis if o.is_fixture and o.name in ("plate", "bowl")):
        held = sorted(noun(o.name) for o in vis if o.inside == fx.name)
        prep = "in" if fx.name == "bowl" else "on"
        out.append(_Q("receptacle", {"fixture": fx.name, "prep": prep}, " and ".join(held) if held else "nothing"))
    return out


def _commonsense_qs(sg: SceneGraph) -> list[_Q]:
    objs = visible_graspables(sg)
    out = []
    for trait, purpose in _PURPOSES.items():
        having = [o for o in objs if trait in CATALOG[o.name].traits]
        if len(having) == 1:
            out.append(_Q("commonsense", {"purpose": purpose}, noun(having[0].name)))
    return out


def candidate_questions(sg: SceneGraph, rng: np.random.Generator, view: View = DEFAULT_VIEW) -> list[_Q]:
    """Every answerable question about `sg` (kinds of `KINDS` except "caption"), before wording."""
    return (_color_qs(sg) + _count_qs(sg) + _pair_qs(sg, view) + _drawer_qs(sg) + _category_qs(sg) + _letter_qs(sg)
            + _exists_qs(sg, rng) + _receptacle_qs(sg) + _commonsense_qs(sg))


def _word(q: _Q, rng: np.random.Generator, split: str) -> str:
    return fill(choice(rng, QUESTION_TEMPLATES[q.kind][split]), q.slots)


def generate_multimodal_records(
    sg: SceneGraph, rng: np.random.Generator, split: str = "train", max_records: int | None = 12,
    view: View = DEFAULT_VIEW,
) -> list[dict[str, str]]:
    """Caption + VQA records {"question", "answer", "kind"} about scene `sg`, worded with `split`'s templates.

    At most one record per (kind, question) and at most `max_records` (None = all), sampled with `rng` so every kind
    present gets a turn before any kind repeats. The first record is always the caption.
    """
    rng = as_rng(rng)
    check_split(split)
    records = [{"question": choice(rng, QUESTION_TEMPLATES["caption"][split]), "answer": caption(sg, rng),
                "kind": "caption"}]
    by_kind: dict[str, list[dict[str, str]]] = {}
    seen = set()
    for q in candidate_questions(sg, rng, view):
        text = _word(q, rng, split)
        if text in seen:
            continue
        seen.add(text)
        by_kind.setdefault(q.kind, []).append({"question": text, "answer": q.answer, "kind": q.kind})
    for recs in by_kind.values():
        rng.shuffle(recs)
    kinds = list(by_kind)
    rng.shuffle(kinds)
    # round-robin over kinds
    while any(by_kind[k] for k in kinds) and (max_records is None or len(records) < max_records):
        for k in kinds:
            if by_kind[k] and (max_records is None or len(records) < max_records):
                records.append(by_kind[k].pop())
    return records


def question_templates(split: str) -> list[str]:
    """All question templates of `split` (every kind, caption prompts included)."""
    check_split(split)
    return [t for kinds in QUESTION_TEMPLATES.values() for t in kinds[split]]


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s']")


def answer_normalize(text: str) -> str:
    """Normalise an answer for exact match: lower-case, strip punctuation, digits -> words, drop articles."""
    if not isinstance(text, str):
        raise TypeError(f"answer must be a str, got {type(text).__name__}")
    t = _PUNCT.sub(" ", text.lower().replace("'", ""))
    t = re.sub(r"\d+", lambda m: number_word(int(m.group())), t)
    words = t.split()
    kept = _ARTICLES.sub(" ", " ".join(words)).split()
    return " ".join(kept if kept else words)  # a lone "A" (a letter) stays


def exact_match(prediction: str, answer: str) -> bool:
    """Exact match after `answer_normalize`."""
    return answer_normalize(prediction) == answer_normalize(answer)

