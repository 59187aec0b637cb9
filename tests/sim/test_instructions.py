"""Atomic instructions, instruct template families (splits, applicability, rendering), replies, JSONL loading."""

import itertools
import json

import numpy as np
import pytest

from instructvla.sim import instructions as I
from instructvla.sim.scene_graph import ObjectState, SceneGraph


def sg(objs, family, args, drawers=None, fixtures=("plate", "bowl"), inside=None):
    """A scene graph with objects spread over the table (positions do not matter for instructions)."""
    inside = inside or {}
    o = [ObjectState(n, (-0.2 + 0.07 * i, -0.2 + 0.08 * i, 0.03), inside=inside.get(n)) for i, n in enumerate(objs)]
    o += [ObjectState(f, (0.05, 0.1 * k, 0.0), is_fixture=True) for k, f in enumerate(fixtures)]
    return SceneGraph(objects=o, drawers=drawers or {}, task_family=family, task_args=args)


CAB = {"top": 0.0, "middle": 0.0, "bottom": 0.0}

# A bank of scenes; together they must cover every key of every built-in family.
SCENES = [
    sg(["lemon", "coke can", "sponge"], "pick", {"target": "lemon"}),
    sg(["coke can", "apple", "sponge"], "pick", {"target": "coke can"}),
    sg(["sponge", "apple", "coke can"], "pick", {"target": "sponge"}),
    sg(["sponge", "apple"], "place_on", {"target": "sponge", "destination": "plate"}),
    sg(["spoon", "apple"], "pick", {"target": "spoon"}),
    sg(["spoon", "apple"], "place_on", {"target": "spoon", "destination": "plate"}),
    sg(["apple", "spoon"], "pick", {"target": "apple"}),
    sg(["apple", "spoon"], "place_on", {"target": "apple", "destination": "plate"}),
    sg(["mug", "apple"], "pick", {"target": "mug"}),
    sg(["mug", "apple"], "place_on", {"target": "mug", "destination": "plate"}),
    sg(["eggplant", "sponge"], "pick", {"target": "eggplant"}),
    sg(["eggplant", "spoon"], "place_on", {"target": "eggplant", "destination": "plate"}),
    sg(["sprite can", "spoon"], "place_on", {"target": "sprite can", "destination": "plate"}),
    sg(["eggplant", "coke can"], "place_in", {"target": "eggplant", "destination": "bowl"}),
    sg(["block L", "block V"], "move_near", {"target": "block L", "destination": "block V"}),
    sg(["block L", "block A", "apple"], "pick", {"target": "block L"}),
    sg(["block A", "block V"], "stack", {"target": "block A", "destination": "block V"}),
    sg(["block A", "apple"], "place_on", {"target": "block A", "destination": "plate"}),
    sg(["apple", "mug"], "move_near", {"target": "apple", "destination": "mug"}),
    sg(["water bottle", "sponge"], "move_near", {"target": "water bottle", "destination": "sponge"}),
    sg(["orange", "water bottle"], "move_near", {"target": "orange", "destination": "water bottle"}),
    sg(["spoon", "mug"], "move_near", {"target": "spoon", "destination": "mug"}),
    sg(["apple", "lemon"], "close_drawer", {"drawer": "top"}, {**CAB, "top": 0.15}, ("cabinet",)),
    sg(["apple"], "open_drawer", {"drawer": "middle"}, CAB, ("cabinet",)),
    sg(["apple"], "drawer_then_place", {"drawer": "top", "target": "apple"}, CAB, ("cabinet",)),
]


def _covered() -> dict[str, set[str]]:
    cov: dict[str, set[str]] = {}
    for fam in I.families():
        for s in SCENES:
            if fam.applicable(s):
                cov.setdefault(fam.family_id, set()).add(fam.key_fn(s))
    return cov


# ------------------------------------------------------------------------------------------------ atomic


def test_atomic_instruction_every_task_family_and_deterministic():
    scenes = {s.task_family: s for s in SCENES}
    assert set(scenes) == set(I.TASK_FAMILIES)
    for fam, s in scenes.items():
        for split in I.SPLITS:
            texts = {I.atomic_instruction(s, np.random.default_rng(k), split) for k in range(30)}
            assert texts and all(t.strip() for t in texts)
            assert I.atomic_instruction(s, np.random.default_rng(7), split) == I.atomic_instruction(
                s, np.random.default_rng(7), split)
            words = " ".join(texts).lower()
            for slot in I.task_slots(s).values():
                assert slot.lower() in words, (fam, slot)
    assert "lemon" in I.atomic_instruction(SCENES[0], np.random.default_rng(0))


def test_atomic_errors_name_the_problem():
    with pytest.raises(ValueError, match="task_family"):
        I.atomic_instruction(sg(["apple"], "juggle", {"target": "apple"}), np.random.default_rng(0))
    with pytest.raises(ValueError, match="destination"):
        I.atomic_instruction(sg(["apple"], "place_on", {"target": "apple"}), np.random.default_rng(0))
    with pytest.raises(ValueError, match="split"):
        I.atomic_instruction(SCENES[0], np.random.default_rng(0), split="test")
    with pytest.raises(TypeError, match="Generator"):
        I.atomic_instruction(SCENES[0], "seed")


def test_reply_names_single_next_action():
    r = I.reply_for(SCENES[1], np.random.default_rng(0))
    assert "pick up the coke can" in r and r.endswith(".")
    dtp = [s for s in SCENES if s.task_family == "drawer_then_place"][0]
    assert I.next_action(dtp) == "open the top drawer"
    opened = SceneGraph(objects=dtp.objects, drawers={**CAB, "top": 0.2}, task_family="drawer_then_place",
                        task_args=dtp.task_args)
    assert I.next_action(opened) == "put the apple in the top drawer"


# ------------------------------------------------------------------------------------------------ splits


def test_every_family_has_both_splits_per_key_and_disjoint_templates():
    assert {"paraphrase", "attribute", "ocr", "multilingual", "typos", "intent", "tool_use", "negation", "subtask",
            "commonsense"} <= set(I.TEMPLATE_FAMILIES)
    assert {f.category for f in I.families()} == {"aggregation", "situated"}
    for fam in I.families():
        assert set(fam.train) == set(fam.heldout), fam.family_id
    train = {t.text.lower() for t in I.all_templates("train")}
    held = {t.text.lower() for t in I.all_templates("heldout")}
    assert train and held and not train & held
    for fam, temps in I.ATOMIC_TEMPLATES.items():
        assert not set(temps["train"]) & set(temps["heldout"]), fam


def test_train_renderings_never_match_a_heldout_template():
    held = [I.template_regex(t.text) for t in I.all_templates("heldout")]
    held += [I.template_regex(t) for temps in I.ATOMIC_TEMPLATES.values() for t in temps["heldout"]]
    for s in SCENES:
        for fam in I.families():
            if not fam.applicable(s):
                continue
            for k in range(8):
                text = fam.render(s, np.random.default_rng(k), "train")
                assert not any(r.match(text) for r in held), (fam.family_id, text)
                # and a held-out rendering is recognised as held-out (typos aside)
                if fam.post_fn is None:
                    h = fam.render(s, np.random.default_rng(k), "heldout")
                    assert any(r.match(h) for r in held), (fam.family_id, h)


def test_every_family_key_renders_for_a_suitable_scene():
    cov = _covered()
    for fam in I.families():
        if fam.description.startswith("from "):
            continue
        assert cov.get(fam.family_id, set()) == set(fam.train), (fam.family_id, set(fam.train) - cov.get(fam.family_id, set()))
    for s in SCENES:
        for fam in I.families():
            if fam.applicable(s):
                for split in I.SPLITS:
                    text = I.render_instruction(fam.family_id, s, np.random.default_rng(1), split)
                    assert text and "{" not in text and "}" not in text, (fam.family_id, text)


# ------------------------------------------------------------------------------------------------ unambiguity


def test_attribute_references_are_unique_and_never_name_the_object():
    s = sg(["lemon", "sponge", "apple"], "pick", {"target": "lemon"})
    descs = I.unique_descriptions(s, "lemon")
    assert "sour yellow fruit" in descs and "yellow fruit" in descs
    assert all("lemon" not in d for d in descs)
    # with another fruit the bare category is ambiguous but "yellow fruit" still is not
    assert "sour fruit" in descs
    two_purple = sg(["plum", "eggplant"], "pick", {"target": "plum"})
    assert "purple fruit" in I.unique_descriptions(two_purple, "plum")
    orange = I.unique_descriptions(sg(["orange"], "pick", {"target": "orange"}), "orange")
    assert orange and all("orange" not in d for d in orange)


def test_situated_applicability_constraints():
    rng = np.random.default_rng(0)
    intent = I.get_family("intent")
    assert intent.key_fn(sg(["coke can", "apple"], "pick", {"target": "coke can"})) == "thirsty/pick"
    with pytest.raises(I.NotApplicableError):
        intent.render(sg(["coke can", "sprite can"], "pick", {"target": "coke can"}), rng)
    neg = I.get_family("negation")
    assert not neg.applicable(sg(["apple", "orange", "coke can"], "pick", {"target": "apple"}))
    assert not neg.applicable(sg(["apple"], "pick", {"target": "apple"}))
    text = neg.render(sg(["apple", "coke can", "sprite can"], "pick", {"target": "apple"}), rng)
    assert "fruit" in text and "drinks" in text
    sub = I.get_family("subtask")
    assert not sub.applicable(sg(["apple"], "close_drawer", {"drawer": "top"}, CAB, ("cabinet",)))
    in_drawer = sg(["apple", "mug"], "close_drawer", {"drawer": "top", "target": "apple"}, {**CAB, "top": 0.2},
                   ("cabinet",), inside={"apple": "drawer:top"})
    assert "mug" in sub.render(in_drawer, rng)  # the object still in the drawer was not taken out
    assert not I.get_family("ocr").applicable(sg(["apple", "mug"], "move_near", {"target": "apple", "destination": "mug"}))
    cs = I.get_family("commonsense")
    assert not cs.applicable(sg(["apple", "orange", "mug"], "move_near", {"target": "apple", "destination": "mug"}))


def test_ocr_and_multilingual_wording():
    rng = np.random.default_rng(3)
    ocr = I.render_instruction("ocr", SCENES[14], rng)
    assert "'L'" in ocr and "'V'" in ocr
    s = sg(["apple", "mug"], "move_near", {"target": "apple", "destination": "mug"})
    texts = {I.render_instruction("multilingual", s, np.random.default_rng(k)) for k in range(40)}
    assert "déplace la pomme près de la tasse" in texts and "mueve la manzana cerca de la taza" in texts
    s2 = sg(["lemon"], "place_on", {"target": "lemon", "destination": "plate"})
    held = {I.render_instruction("multilingual", s2, np.random.default_rng(k), "heldout") for k in range(40)}
    assert "Coloca el limón encima del plato, por favor." in held
    assert "Dépose le citron sur l'assiette, s'il te plaît." in held


def test_typos_are_deterministic_and_present():
    text = "please move the apple near the plate"
    a = I.inject_typos(text, np.random.default_rng(5))
    assert a == I.inject_typos(text, np.random.default_rng(5))
    assert a != text and len(a.split()) == len(text.split())
    outs = {I.inject_typos(text, np.random.default_rng(k)) for k in range(20)}
    assert len(outs) > 5
    assert I.inject_typos("go up", np.random.default_rng(0)) == "go up"  # nothing long enough to corrupt


def test_unknown_family_hint():
    with pytest.raises(KeyError, match="did you mean 'intent'"):
        I.render_instruction("intnet", SCENES[0], np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------ JSONL


@pytest.fixture
def registry_guard():
    before = dict(I.TEMPLATE_FAMILIES)
    yield
    I.TEMPLATE_FAMILIES.clear()
    I.TEMPLATE_FAMILIES.update(before)


def _write(tmp_path, lines):
    p = tmp_path / "extra.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_load_instruction_file(tmp_path, registry_guard):
    rows = [
        {"family_id": "polite", "category": "aggregation", "task_family": "pick", "split": "train",
         "template": "Would you kindly pick up the {target}?"},
        {"family_id": "polite", "category": "aggregation", "task_family": "pick", "split": "heldout",
         "template": "If it's no trouble, lift the {target_desc}."},
        {"family_id": "veg", "category": "situated", "task_family": "pick", "split": "train",
         "template": "I'm making soup, grab the {target_cat}.",
         "requires": {"target_category": "vegetable", "unique_target_category": True}},
        {"family_id": "veg", "category": "situated", "task_family": "pick", "split": "heldout",
         "template": "Soup needs a {target_cat}; get it."},
    ]
    p = _write(tmp_path, ["# my families", ""] + [json.dumps(r) for r in rows])
    fams = I.load_instruction_file(p)
    assert [f.family_id for f in fams] == ["polite", "veg"]
    s = sg(["lemon", "coke can"], "pick", {"target": "lemon"})
    assert I.render_instruction("polite", s, np.random.default_rng(0)) == "Would you kindly pick up the lemon?"
    assert "fruit" in I.render_instruction("polite", s, np.random.default_rng(0), "heldout")
    assert not I.TEMPLATE_FAMILIES["veg"].applicable(s)
    egg = sg(["eggplant", "apple"], "pick", {"target": "eggplant"})
    assert I.render_instruction("veg", egg, np.random.default_rng(0)) == "I'm making soup, grab the vegetable."
    assert I.load_instruction_file(p)  # loading the same file again replaces its families


@pytest.mark.parametrize(
    "bad, match",
    [
        ("{not json", r"extra\.jsonl:2: not valid JSON"),
        (json.dumps({"family_id": "x", "category": "aggregation", "task_family": "pick", "split": "train",
                     "template": "grab the {colour}"}), r":2: unknown slot\(s\) \['colour'\]"),
        (json.dumps({"family_id": "x", "category": "funny", "task_family": "pick", "split": "train",
                     "template": "grab the {target}"}), ":2: category"),
        (json.dumps({"family_id": "x", "category": "situated", "task_family": "pick", "split": "val",
                     "template": "grab the {target}"}), ":2: split"),
        (json.dumps({"family_id": "x", "category": "situated", "task_family": "fly", "split": "train",
                     "template": "grab the {target}"}), ":2: task_family"),
        (json.dumps({"family_id": "x", "category": "situated", "task_family": "pick", "split": "train"}),
         ":2: field 'template'"),
        (json.dumps({"family_id": "intent", "category": "situated", "task_family": "pick", "split": "train",
                     "template": "grab the {target}"}), ":2: family_id 'intent' is already registered"),
        (json.dumps(["a", "list"]), ":2: expected a JSON object"),
        (json.dumps({"family_id": "x", "category": "situated", "task_family": "pick", "split": "train",
                     "template": "grab the {target}", "weight": 2}), r":2: unknown field"),
    ],
)
def test_load_instruction_file_bad_lines(tmp_path, registry_guard, bad, match):
    good = json.dumps({"family_id": "x", "category": "situated", "task_family": "pick", "split": "heldout",
                       "template": "lift the {target}"})
    p = _write(tmp_path, [good, bad])
    with pytest.raises(ValueError, match=match):
        I.load_instruction_file(p)


def test_load_instruction_file_same_template_in_both_splits(tmp_path, registry_guard):
    rows = [{"family_id": "dup", "category": "aggregation", "task_family": "pick", "split": s,
             "template": "grab the {target}"} for s in ("train", "heldout")]
    with pytest.raises(ValueError, match="both splits"):
        I.load_instruction_file(_write(tmp_path, [json.dumps(r) for r in rows]))
    with pytest.raises(FileNotFoundError):
        I.load_instruction_file(tmp_path / "missing.jsonl")


def test_template_regex_matches_renderings():
    r = I.template_regex("Pick the {target_cat}, not the {neg_cat}.")
    assert r.match("pick the fruit, not the drinks.")
    assert not r.match("Pick the fruit.")
    assert list(itertools.chain(I.template_slots("a {x} b {y}"))) == ["x", "y"]


def test_load_instruction_file_conflicting_requires(tmp_path, registry_guard):
    base = {"family_id": "r", "category": "situated", "task_family": "pick", "split": "train"}
    rows = [{**base, "template": "grab the {target}", "requires": {"target_category": "fruit"}},
            {**base, "template": "take the {target}"},  # inherits the family's requires
            {**base, "template": "hold the {target}", "requires": {"target_category": "drink"}}]
    with pytest.raises(ValueError, match=r"extra\.jsonl:3: family 'r' has different 'requires' on line 1"):
        I.load_instruction_file(_write(tmp_path, [json.dumps(r) for r in rows]))
    with pytest.raises(ValueError, match=":1: 'requires'"):
        I.load_instruction_file(_write(tmp_path, [json.dumps({**rows[0], "requires": {"colour": "red"}})]))
