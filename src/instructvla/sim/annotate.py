"""Programmatic VLA-IT annotations of an episode from its first frame's scene graph (method.md §5.1).

One record per episode: a caption of the first frame without the robot, QA pairs, command rewritings (CR: the
task referred to by attributes, paraphrase, other languages... + a first-person reply) and context creations (CC:
situated framings + a reply naming the single next action). Only TRAIN-split templates are used; held-out instruct
templates never appear in training data. The data helper stores the records in `meta/vla_it.jsonl`.
"""

from __future__ import annotations

import logging

import numpy as np

from instructvla.sim import instructions as I
from instructvla.sim.multimodal import caption, generate_multimodal_records
from instructvla.sim.scene_graph import SceneGraph

logger = logging.getLogger(__name__)

RECORD_FIELDS = ("episode_index", "frame_index", "caption", "qa", "command_rewriting", "context_creation")
OPTIONAL_FIELDS = ("motion",)
_PAIR_FIELDS = {"qa": ("question", "answer"), "command_rewriting": ("instruction", "response"),
                "context_creation": ("instruction", "response")}


def _sentence(kind: str, answer: str) -> str:
    """A short answer sentence: "To the left.", "Two.", "It is open."."""
    if kind == "left_right":
        text = f"to the {answer}"
    elif kind == "drawer":
        text = f"it is {answer}"
    elif kind in ("front_behind", "category_member", "commonsense") or (kind == "receptacle" and answer != "nothing"):
        text = f"the {answer}"
    elif kind == "category":
        text = f"it is {'an' if answer[0] in 'aeiou' else 'a'} {answer}"
    else:
        text = answer
    return text[0].upper() + text[1:] + "."


def _reason(family_id: str, sg: SceneGraph) -> str:
    """A brief reason before the reply of a situated instruction ("" when none fits)."""
    target = sg.task_args.get("target")
    spec = I.spec_of(target or "")
    if family_id in ("intent", "tool_use", "negation", "commonsense") and spec is not None:
        cat = I.category_noun(spec.category)
        return f"The {I.noun(target)} is {'an' if cat[0] in 'aeiou' else 'a'} {cat}."
    if family_id == "subtask":
        return f"The {sg.task_args.get('drawer', '')} drawer is still open."
    if family_id == "drawer_intent":
        return "To look inside, the drawer must be opened."
    return ""


def _rewrites(sg: SceneGraph, rng: np.random.Generator, category: str, n: int, fallback: str | None = None) -> list[dict]:
    fams = [f for f in I.families(category) if f.family_id != fallback and f.applicable(sg)]
    rng.shuffle(fams)
    if not fams and fallback is not None and I.get_family(fallback).applicable(sg):
        fams = [I.get_family(fallback)]
    out = []
    for fam in fams[:n]:
        instruction = fam.render(sg, rng, "train")
        response = I.reply_for(sg, rng)
        reason = _reason(fam.family_id, sg) if category == "situated" else ""
        if reason and rng.random() < 0.5:
            response = f"{reason} {response}"
        out.append({"instruction": instruction, "response": response, "family": fam.family_id})
    return out


def annotate_episode(
    sg: SceneGraph,
    rng: np.random.Generator,
    episode_index: int = 0,
    num_qa: int = 3,
    num_cr: int = 2,
    num_cc: int = 2,
    states: np.ndarray | None = None,
    gripper: str = "openness",
) -> dict:
    """The VLA-IT record of one episode from its first frame's scene graph `sg` (train-split wording only).

    Returns {"episode_index", "frame_index": 0, "caption", "qa": [{"question", "answer"}],
    "command_rewriting": [{"instruction", "response"}], "context_creation": [{"instruction", "response"}]}
    plus "motion" (one language-motion phrase per frame, `instructvla.data.motion`) when `states` (T, 8) is given.
    CR/CC lists may be shorter than asked when fewer template families apply to the scene; CC falls back to the
    generic "context" family so it is never empty for a known task family.
    """
    rng = I.as_rng(rng)
    if not isinstance(episode_index, (int, np.integer)) or isinstance(episode_index, bool) or episode_index < 0:
        raise ValueError(f"episode_index must be a non-negative int, got {episode_index!r}")
    for name, value in (("num_qa", num_qa), ("num_cr", num_cr), ("num_cc", num_cc)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    I.task_slots(sg)  # raises early, naming the problem, for an unknown task family / missing task args
    qa_pool = [r for r in generate_multimodal_records(sg, rng, "train", max_records=None) if r["kind"] != "caption"]
    qa = [{"question": r["question"], "answer": _sentence(r["kind"], r["answer"])} for r in qa_pool[:num_qa]]
    strip = lambda items: [{k: v for k, v in d.items() if k != "family"} for d in items]  # noqa: E731
    record = {
        "episode_index": int(episode_index),
        "frame_index": 0,
        "caption": caption(sg, rng),
        "qa": qa,
        "command_rewriting": strip(_rewrites(sg, rng, "aggregation", num_cr)),
        "context_creation": strip(_rewrites(sg, rng, "situated", num_cc, fallback="context")),
    }
    if states is not None:
        from instructvla.data.motion import motion_primitives

        record["motion"] = motion_primitives(states, gripper=gripper)
    validate_annotation(record)
    return record


def validate_annotation(record: dict) -> dict:
    """Check one VLA-IT record against the schema; raises ValueError naming the missing or bad field."""
    if not isinstance(record, dict):
        raise ValueError(f"annotation must be a dict, got {type(record).__name__}")
    missing = [k for k in RECORD_FIELDS if k not in record]
    if missing:
        raise ValueError(f"annotation is missing field(s) {missing}")
    unknown = set(record) - set(RECORD_FIELDS) - set(OPTIONAL_FIELDS)
    if unknown:
        raise ValueError(f"annotation has unknown field(s) {sorted(unknown)}")
    for key in ("episode_index", "frame_index"):
        v = record[key]
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"annotation field {key!r} must be a non-negative int, got {v!r}")
    if not isinstance(record["caption"], str) or not record["caption"].strip():
        raise ValueError("annotation field 'caption' must be a non-empty string")
    for key, (a, b) in _PAIR_FIELDS.items():
        items = record[key]
        if not isinstance(items, list):
            raise ValueError(f"annotation field {key!r} must be a list, got {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or set(item) != {a, b}:
                raise ValueError(f"annotation field {key}[{i}] must be an object with exactly {a!r} and {b!r}")
            for k in (a, b):
                if not isinstance(item[k], str) or not item[k].strip():
                    raise ValueError(f"annotation field {key}[{i}].{k} must be a non-empty string")
    if "motion" in record:
        m = record["motion"]
        if not isinstance(m, list) or not all(isinstance(x, str) and x for x in m):
            raise ValueError("annotation field 'motion' must be a list of non-empty strings (one per frame)")
    return record
