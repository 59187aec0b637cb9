"""The instruct template-family type and its registry (`TEMPLATE_FAMILIES`), filled where families are defined."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from instructvla.sim.language_utils import (
    CATEGORIES,
    SPLITS,
    NotApplicableError,
    as_rng,
    check_split,
    choice,
    fill,
    task_slots,
)
from instructvla.sim.scene_graph import SceneGraph

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

