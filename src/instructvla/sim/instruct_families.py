"""The built-in instruct template families (SimplerEnv-Instruct style), registered into `TEMPLATE_FAMILIES` on import.

Each family is tagged "aggregation" or "situated" and has a TRAIN and a disjoint HELD-OUT template split; its key and
slot functions raise NotApplicableError when it cannot describe a scene unambiguously.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from instructvla.sim.catalog import CATALOG, ObjectSpec
from instructvla.sim.language_utils import (
    TASK_FAMILIES,
    NotApplicableError,
    canonical_instruction,
    category_noun,
    choice,
    count_graspables,
    dest_name,
    graspables,
    inject_typos,
    noun,
    referring_nouns,
    spec_of,
    target_spec,
    task_slots,
    unique_descriptions,
)
from instructvla.sim.scene_graph import SceneGraph
from instructvla.sim.template_family import KeyFn, TemplateFamily, register_family

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
        dest = dest_name(sg)
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
    spec = target_spec(sg)
    if not spec.letter:
        raise NotApplicableError(f"target {spec.name!r} carries no letter")
    slots["target_letter"] = spec.letter
    if sg.task_family in ("move_near", "stack"):
        dest = spec_of(dest_name(sg))
        if dest is None or not dest.letter:
            raise NotApplicableError(f"destination {dest_name(sg)!r} carries no letter")
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
        spec = target_spec(sg)
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
    spec = target_spec(sg)
    if count_graspables(sg, lambda s: s.category == spec.category) != 1:
        raise NotApplicableError(f"the target's category {spec.category!r} is not unique in the scene")
    if not any(CATALOG[o.name].category != spec.category for o in graspables(sg)):
        raise NotApplicableError("no object of another category to negate")
    return sg.task_family


def _negation_slots(sg: SceneGraph, rng: np.random.Generator) -> dict[str, str]:
    _negation_key(sg)
    slots = task_slots(sg)
    spec = target_spec(sg)
    others = sorted({CATALOG[o.name].category for o in graspables(sg)} - {spec.category})
    neg = choice(rng, others)
    slots["target_cat"] = category_noun(spec.category)
    slots["neg_cat"] = category_noun(neg, plural=count_graspables(sg, lambda s: s.category == neg) > 1)
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
    target, dest = target_spec(sg), spec_of(dest_name(sg))
    if dest is None:
        raise NotApplicableError(f"destination {dest_name(sg)!r} is not a catalogue object")
    for pair_id, (t_need, d_need) in COMMONSENSE_PAIRS.items():
        if (t_need.match(target) and d_need.match(dest)
                and sum(t_need.rival(CATALOG[o.name]) for o in graspables(sg)) == 1
                and sum(d_need.rival(CATALOG[o.name]) for o in graspables(sg)) == 1):
            return f"{pair_id}/move_near"
    raise NotApplicableError(f"no commonsense pairing of {target.name!r} and {dest.name!r} is unambiguous here")


def _commonsense_slots(sg: SceneGraph, rng: np.random.Generator) -> dict[str, str]:
    _commonsense_key(sg)
    slots = task_slots(sg)
    slots["target_cat"] = category_noun(target_spec(sg).category)
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
