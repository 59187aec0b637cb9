"""Benchmark suites of the tabletop: the atomic suite and the *instruct* suite in the image of SimplerEnv-Instruct.

An `InstructTask` is one evaluated task: a simulator task (registered name or `TaskSpec` keyword arguments), an
instruction template family, a category ("aggregation" | "situated"; "atomic" for the atomic suite) and a template
split ("seen" = train templates, "heldout" = templates never used for training data). Every instruct task exists in
both splits, on the same scenes (episode seeds do not depend on the split). `score_suite` scores like
SimplerEnv-Instruct: per-task success rate -> mean per category -> mean of categories, per split.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instructvla.jsonl import iter_jsonl
from instructvla.sim.instructions import NotApplicableError, render_instruction

logger = logging.getLogger(__name__)

SUITE_CATEGORIES = ("aggregation", "situated", "atomic")
SUITE_SPLITS = ("seen", "heldout")
TEMPLATE_SPLIT = {"seen": "train", "heldout": "heldout"}


@dataclass(frozen=True)
class InstructTask:
    """One evaluated task of a suite.

    task_id:      unique within (suite, split), e.g. "situated/intent_thirsty_pick".
    category:     "aggregation" | "situated" | "atomic".
    family_id:    instruction template family ("atomic" = plain atomic commands).
    spec:         a registered simulator task name ("pick/apple") or `TaskSpec` keyword arguments.
    split:        "seen" (train templates) or "heldout" (held-out templates).
    num_episodes: episodes per seed.
    seeds:        evaluation seeds; each gives `num_episodes` episodes (`episode_seeds`).
    """

    task_id: str
    category: str
    family_id: str
    spec: str | Mapping[str, Any] = field(hash=False)
    split: str = "seen"
    num_episodes: int = 10
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if not self.task_id or not isinstance(self.task_id, str):
            raise ValueError(f"InstructTask.task_id must be a non-empty string, got {self.task_id!r}")
        if self.category not in SUITE_CATEGORIES:
            raise ValueError(f"InstructTask.category must be one of {SUITE_CATEGORIES}, got {self.category!r}")
        if self.split not in SUITE_SPLITS:
            raise ValueError(f"InstructTask.split must be one of {SUITE_SPLITS}, got {self.split!r}")
        if not isinstance(self.spec, (str, Mapping)) or (isinstance(self.spec, Mapping) and "family" not in self.spec):
            raise ValueError(f"InstructTask.spec must be a task name or TaskSpec kwargs with 'family', got {self.spec!r}")
        if not isinstance(self.num_episodes, int) or self.num_episodes < 1:
            raise ValueError(f"InstructTask.num_episodes must be a positive int, got {self.num_episodes!r}")
        if not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            raise ValueError(f"InstructTask.seeds must be a non-empty tuple of ints, got {self.seeds!r}")
        if self.family_id != "atomic":
            from instructvla.sim.instructions import get_family

            fam = get_family(self.family_id)  # raises for an unknown family
            if self.category != "atomic" and fam.category != self.category:
                raise ValueError(f"InstructTask {self.task_id!r}: family {self.family_id!r} is {fam.category!r}, "
                                 f"not {self.category!r}")

    @property
    def template_split(self) -> str:
        return TEMPLATE_SPLIT[self.split]

    @property
    def key(self) -> str:
        """Unique key across splits: "<split>/<task_id>"."""
        return f"{self.split}/{self.task_id}"

    def instruction(self, sg, rng: np.random.Generator) -> str:
        """The instruction for scene graph `sg` (this task's family and split); the env's `instruction_fn`."""
        try:
            return render_instruction(self.family_id, sg, rng, self.template_split)
        except NotApplicableError as exc:
            raise RuntimeError(f"suite task {self.key!r}: the scene does not suit its instruction ({exc})") from exc


def episode_seeds(task: InstructTask) -> list[int]:
    """Reset seeds of the task's episodes: `num_episodes` per evaluation seed, the same for both splits."""
    base = zlib.crc32(task.task_id.encode())
    return [int((base * 1_000_003 + s * 10_007 + e) % (2**31)) for s in task.seeds for e in range(task.num_episodes)]


# ----------------------------------------------------------------------------------------------------- suites

_D = ("category:fruit", "category:vegetable", "category:drink", "category:tool", "category:container",
      "category:block")


def _spec(family: str, **kw) -> dict[str, Any]:
    if family in ("open_drawer", "close_drawer", "drawer_then_place"):
        kw.setdefault("receptacle_prob", 0.0)  # with the cabinet the free table area is small
    return {"family": family, "num_distractors": kw.pop("num_distractors", (1, 2)), **kw}


# (task_id, category, family_id, spec)
_INSTRUCT: list[tuple[str, str, str, str | dict]] = [
    # instruction / task aggregation
    ("aggregation/paraphrase_pick_coke_can", "aggregation", "paraphrase", _spec("pick", targets=("coke can",))),
    ("aggregation/paraphrase_open_drawer", "aggregation", "paraphrase", _spec("open_drawer", num_distractors=(0, 2))),
    ("aggregation/paraphrase_close_drawer", "aggregation", "paraphrase", _spec("close_drawer", num_distractors=(0, 2))),
    ("aggregation/paraphrase_drawer_then_place", "aggregation", "paraphrase",
     _spec("drawer_then_place", targets=("apple",), drawers=("top",), num_distractors=(0, 2))),
    ("aggregation/attribute_pick_lemon", "aggregation", "attribute", _spec("pick", targets=("lemon",))),
    ("aggregation/attribute_pick_plum", "aggregation", "attribute", _spec("pick", targets=("plum",))),
    ("aggregation/attribute_place_on_eggplant", "aggregation", "attribute", _spec("place_on", targets=("eggplant",))),
    ("aggregation/attribute_move_near_lemon_pear", "aggregation", "attribute",
     _spec("move_near", targets=("lemon",), destinations=("pear",))),
    ("aggregation/ocr_move_near_L_V", "aggregation", "ocr", _spec("move_near", targets=("block L",), destinations=("block V",))),
    ("aggregation/ocr_move_near_L_A", "aggregation", "ocr", _spec("move_near", targets=("block L",), destinations=("block A",))),
    ("aggregation/ocr_pick_block", "aggregation", "ocr", _spec("pick", targets=("category:block",))),
    ("aggregation/multilingual_pick", "aggregation", "multilingual",
     _spec("pick", targets=("apple", "orange", "lemon", "pear", "sprite can"))),
    ("aggregation/multilingual_place_on", "aggregation", "multilingual",
     _spec("place_on", targets=("apple", "spoon", "sponge"))),
    ("aggregation/multilingual_open_drawer", "aggregation", "multilingual", _spec("open_drawer", num_distractors=(0, 2))),
    ("aggregation/typos_pick", "aggregation", "typos", _spec("pick", targets=("plum", "orange", "coke can"))),
    ("aggregation/typos_move_near", "aggregation", "typos",
     _spec("move_near", targets=("water bottle",), destinations=("orange",))),
    # situated reasoning
    ("situated/intent_thirsty_pick", "situated", "intent",
     _spec("pick", targets=("category:drink",), exclude_categories=("drink",))),
    ("situated/intent_clean_pick", "situated", "intent", _spec("pick", targets=("sponge",))),
    ("situated/intent_hungry_pick", "situated", "intent",
     _spec("pick", targets=("category:fruit",), exclude_categories=("fruit", "vegetable"))),
    ("situated/intent_coffee_pick", "situated", "intent",
     _spec("pick", targets=("mug",), exclude_categories=("drink",))),
    ("situated/intent_thirsty_place_on", "situated", "intent",
     _spec("place_on", targets=("coke can", "sprite can"), exclude_categories=("drink",))),
    ("situated/tool_use_eat_pick", "situated", "tool_use", _spec("pick", targets=("spoon",))),
    ("situated/tool_use_feed_baby_place_on", "situated", "tool_use", _spec("place_on", targets=("spoon",))),
    ("situated/negation_pick_fruit", "situated", "negation",
     _spec("pick", targets=("apple", "orange"), exclude_categories=("fruit",))),
    ("situated/negation_place_on_fruit", "situated", "negation",
     _spec("place_on", targets=("category:fruit",), exclude_categories=("fruit",), distractors=("category:drink",))),
    ("situated/subtask_close_top_drawer", "situated", "subtask",
     _spec("close_drawer", drawers=("top",), distractors=("apple", "orange", "mug"), num_distractors=(1, 2))),
    ("situated/subtask_close_middle_drawer", "situated", "subtask",
     _spec("close_drawer", drawers=("middle",), distractors=("apple", "orange"), num_distractors=(1, 2))),
    ("situated/drawer_intent_open", "situated", "drawer_intent", _spec("open_drawer", num_distractors=(0, 2))),
    ("situated/commonsense_snack_near_mug", "situated", "commonsense",
     _spec("move_near", targets=("category:fruit",), destinations=("mug",), exclude_categories=("fruit", "vegetable"))),
    ("situated/commonsense_wet_sponge", "situated", "commonsense",
     _spec("move_near", targets=("water bottle",), destinations=("sponge",), exclude_categories=("drink",))),
    ("situated/commonsense_wash_fruit", "situated", "commonsense",
     _spec("move_near", targets=("apple", "orange"), destinations=("water bottle",),
           exclude_categories=("fruit", "vegetable", "drink"))),
]

_ATOMIC: list[tuple[str, str | dict]] = [
    ("atomic/pick_coke_can", "pick/coke can"),
    ("atomic/pick_any", "pick/any"),
    ("atomic/place_on_plate", "place_on/any"),
    ("atomic/place_in_bowl", "place_in/any"),
    ("atomic/move_near", "move_near/any"),
    ("atomic/open_drawer", "open_drawer/any"),
    ("atomic/close_drawer", "close_drawer/any"),
    ("atomic/stack_blocks", "stack/any"),
    ("atomic/drawer_then_place", "drawer_then_place/any"),
]

_QUICK_INSTRUCT = (
    "aggregation/attribute_pick_lemon", "aggregation/ocr_move_near_L_V", "aggregation/multilingual_pick",
    "aggregation/paraphrase_open_drawer", "situated/intent_thirsty_pick", "situated/negation_pick_fruit",
    "situated/subtask_close_top_drawer", "situated/commonsense_snack_near_mug",
)
_QUICK_ATOMIC = ("atomic/pick_any", "atomic/place_on_plate", "atomic/move_near", "atomic/open_drawer")

SUITES = ("atomic", "atomic-quick", "instruct", "instruct-quick")


def get_suite(name: str, num_episodes: int | None = None, seeds: tuple[int, ...] | None = None) -> list[InstructTask]:
    """The tasks of suite `name` ("atomic", "atomic-quick", "instruct", "instruct-quick").

    Instruct suites hold every task twice, split "seen" and "heldout". Defaults: 10 episodes per task (quick: 3),
    seeds (0,). `num_episodes` / `seeds` override them.
    """
    if name not in SUITES:
        import difflib

        hint = difflib.get_close_matches(name, SUITES, n=1)
        raise KeyError(f"unknown suite {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "") + f" (have {SUITES})")
    quick = name.endswith("-quick")
    n = num_episodes if num_episodes is not None else (3 if quick else 10)
    sd = tuple(seeds) if seeds is not None else (0,)
    if name.startswith("atomic"):
        return [InstructTask(tid, "atomic", "atomic", spec, "seen", n, sd) for tid, spec in _ATOMIC
                if not quick or tid in _QUICK_ATOMIC]
    return [InstructTask(tid, cat, fam, spec, split, n, sd) for split in SUITE_SPLITS for tid, cat, fam, spec in _INSTRUCT
            if not quick or tid in _QUICK_INSTRUCT]


def list_suite_tasks(name: str = "instruct") -> dict[str, str]:
    """task key -> short description, for `instructvla tasks`."""
    out = {}
    for t in get_suite(name):
        if isinstance(t.spec, str):
            spec = t.spec
        else:
            shown = {k: v for k, v in t.spec.items() if k not in ("family", "num_distractors", "receptacle_prob")}
            spec = t.spec["family"] + " " + " ".join(
                f"{k}={','.join(v) if isinstance(v, (tuple, list)) else v}" for k, v in shown.items())
        out[t.key] = f"{t.family_id}: {spec}".strip()
    return out


# ----------------------------------------------------------------------------------------------------- envs

def task_spec(task: InstructTask):
    """The simulator `TaskSpec` of a suite task (imports the simulator lazily)."""
    from dataclasses import replace

    from instructvla.sim import tasks as T

    if isinstance(task.spec, str):
        return T.get_task(task.spec)
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in task.spec.items()}
    try:
        spec = T.TaskSpec(**kwargs)
    except TypeError as exc:
        raise ValueError(f"suite task {task.task_id!r}: bad TaskSpec arguments ({exc})") from None
    return replace(spec, name=task.task_id)


def make_task_env(task: InstructTask, **env_kwargs):
    """A `TabletopEnv` for a suite task: its TaskSpec and an instruction_fn rendering its template family and split.

    Reset it with `episode_seeds(task)` to get the suite's episodes. `env_kwargs` go to `TabletopEnv`.
    """
    from instructvla.sim.env import TabletopEnv

    if "instruction_fn" in env_kwargs:
        raise ValueError("make_task_env: instruction_fn is set by the suite task; do not pass it")
    return TabletopEnv(task_spec(task), instruction_fn=task.instruction, **env_kwargs)


# ----------------------------------------------------------------------------------------------------- scoring

_RESULT_FIELDS = ("task_id", "category", "split", "success")


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else float("nan")


def score_suite(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """SimplerEnv-Instruct scores from per-episode results.

    results: records {"task_id", "category", "split" ("seen" | "heldout"), "success" (bool or 0/1)}.
    Returns {split: {"tasks": {task_id: rate}, "categories": {category: mean task rate}, "overall": mean of the
    category means, "episodes": n}} for each split present, and "overall": the mean over splits of their overall.
    Pure function; raises ValueError naming the record and field for bad input.
    """
    per: dict[str, dict[str, list[float]]] = {}
    cats: dict[tuple[str, str], str] = {}
    n = 0
    for i, r in enumerate(results):
        if not isinstance(r, Mapping):
            raise ValueError(f"results[{i}] must be a mapping, got {type(r).__name__}")
        for f in _RESULT_FIELDS:
            if f not in r:
                raise ValueError(f"results[{i}] is missing field {f!r}")
        split, cat, tid, s = r["split"], r["category"], r["task_id"], r["success"]
        if split not in SUITE_SPLITS:
            raise ValueError(f"results[{i}].split must be one of {SUITE_SPLITS}, got {split!r}")
        if cat not in SUITE_CATEGORIES:
            raise ValueError(f"results[{i}].category must be one of {SUITE_CATEGORIES}, got {cat!r}")
        if isinstance(s, (bool, np.bool_)) or (isinstance(s, (int, float, np.integer, np.floating)) and s in (0, 1)):
            s = float(s)
        else:
            raise ValueError(f"results[{i}].success must be a bool or 0/1, got {s!r}")
        if cats.setdefault((split, tid), cat) != cat:
            raise ValueError(f"results[{i}]: task {tid!r} ({split}) has category {cat!r} and {cats[(split, tid)]!r}")
        per.setdefault(split, {}).setdefault(tid, []).append(s)
        n += 1
    if n == 0:
        raise ValueError("score_suite: no results")
    out: dict[str, Any] = {}
    for split in SUITE_SPLITS:
        if split not in per:
            continue
        tasks = {tid: _mean(v) for tid, v in sorted(per[split].items())}
        by_cat: dict[str, list[float]] = {}
        for tid, rate in tasks.items():
            by_cat.setdefault(cats[(split, tid)], []).append(rate)
        categories = {c: _mean(v) for c, v in sorted(by_cat.items())}
        out[split] = {"tasks": tasks, "categories": categories, "overall": _mean(categories.values()),
                      "episodes": sum(len(v) for v in per[split].values())}
    out["overall"] = _mean(out[s]["overall"] for s in SUITE_SPLITS if s in out)
    return out


# ----------------------------------------------------------------------------------------------------- files

def load_suite_file(path: str | Path) -> list[InstructTask]:
    """Suite tasks from a JSONL file, one task per line (blank and "#" lines skipped):

        {"task_id": "situated/my_task", "category": "situated", "family_id": "intent",
         "spec": {"family": "pick", "targets": ["sponge"]}, "split": "both", "num_episodes": 5, "seeds": [0]}

    spec: a registered task name or TaskSpec keyword arguments; split: "seen" | "heldout" | "both" (default).
    Bad lines raise ValueError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite file {path} does not exist")
    out: list[InstructTask] = []
    for lineno, rec in iter_jsonl(path, comments=True):
        where = f"{path}:{lineno}"
        allowed = {"task_id", "category", "family_id", "spec", "split", "num_episodes", "seeds"}
        if set(rec) - allowed:
            raise ValueError(f"{where}: unknown field(s) {sorted(set(rec) - allowed)}")
        for key in ("task_id", "category", "family_id", "spec"):
            if key not in rec:
                raise ValueError(f"{where}: missing field {key!r}")
        split = rec.get("split", "both")
        splits = SUITE_SPLITS if split == "both" else (split,)
        try:
            for s in splits:
                task = InstructTask(rec["task_id"], rec["category"], rec["family_id"], rec["spec"], s,
                                    rec.get("num_episodes", 10), tuple(rec.get("seeds", (0,))))
                task_spec(task)  # validates the simulator arguments now
                out.append(task)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    return out
