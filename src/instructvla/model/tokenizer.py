"""Offline tokenizers: a deterministic byte-level BPE for tiny presets, and the latent-query tokens for any tokenizer."""

from __future__ import annotations

import itertools
import logging
import random

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|endoftext|>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
# SmolVLM-style image markers (used by the smolvlm family adapter).
FAKE_AROUND_IMAGE = "<fake_token_around_image>"
GLOBAL_IMG = "<global-img>"
SMOL_IMAGE = "<image>"
CHAT_SPECIAL_TOKENS = (PAD, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT, FAKE_AROUND_IMAGE, GLOBAL_IMG, SMOL_IMAGE)
SYSTEM_PROMPT = "You are a helpful assistant."

# ChatML, as Qwen2 / Eagle2 use it. Images are not part of the template: the processor inserts image tokens.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def query_token(i: int) -> str:
    """Name of the i-th latent action query token."""
    return f"<new_token_{i}>"


def _corpus_lines() -> list[str]:
    """A small, deterministic English (+ a little French/Spanish) corpus about tabletop robots and chat."""
    from instructvla.sim.catalog import CATALOG, FIXTURES

    rng = random.Random(0)
    objects = sorted(CATALOG)
    fixtures = sorted(FIXTURES)
    colors = sorted({s.color for s in CATALOG.values()} | {"black", "brown", "pink", "wooden", "silver"})
    traits = sorted({t for s in CATALOG.values() for t in s.traits})
    cats = sorted({s.category for s in CATALOG.values()})
    verbs = ["pick up", "grab", "lift", "move", "place", "put", "push", "open", "close", "give me", "take", "stack"]
    rels = ["near", "on", "in", "next to", "left of", "right of", "behind", "in front of", "on top of", "into"]
    prims = ["move forward", "move back", "move left", "move right", "move up", "move down", "tilt down",
             "tilt up", "rotate clockwise", "rotate counterclockwise", "open gripper", "close gripper", "stop"]
    numbers = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    lines = [
        "What action should the robot take to {}? First answer my question. Give both move primitive and action.",
        "Describe what's on the table. Don't mention the robot arm.",
        "How many objects are on the table? What color is it? Where is it? Is there a drawer?",
        "yes no maybe I will I'll sure okay thanks please hello hi sorry the a an is are there it this that",
        "coger la lata, pon la fruta en el plato, agarra la esponja, dame la bebida, por favor, rojo verde azul",
        "prends la banane, ramasse la poire, soulève le citron, mets le fruit sur l'assiette, rouge vert bleu",
        "0 1 2 3 4 5 6 7 8 9 10 11 12 16 20 32 64 100 . , ? ! : ; ' \" ( ) - + = / % #",
        "user assistant system You are a helpful assistant.",
    ]
    lines += [" ".join(numbers), " ".join(colors), " ".join(traits), " ".join(cats), " ".join(prims)]
    for v, o in itertools.product(verbs, objects):
        lines.append(f"{v} the {o}")
    for o, r, f in itertools.product(objects, rels, fixtures):
        lines.append(f"put the {o} {r} the {f}.")
    for o in objects:
        spec = CATALOG[o]
        lines.append(f"The {spec.color} {o} is a {spec.size_word} {spec.category}. It is {' and '.join(spec.traits) or 'plain'}.")
        lines.append(f"What action should the robot take to pick up the {o}?")
        lines.append(f"I will pick up the {o}. There are {rng.choice(numbers)} {o}s on the table.")
        lines.append(f"Q: What color is the {o}? A: It is {spec.color}.")
    for _ in range(400):
        a, b = rng.sample(objects, 2)
        lines.append(f"I want to {rng.choice(verbs)} the {rng.choice(colors)} {a} {rng.choice(rels)} the {b}. "
                     f"{rng.choice(prims)}, {rng.choice(prims)}.")
    return lines


def build_tiny_tokenizer(vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE on a generated corpus and wrap it as a ChatML fast tokenizer (~1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(CHAT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=IM_END,
        bos_token=None,
        additional_special_tokens=list(CHAT_SPECIAL_TOKENS[1:]),
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "right"
    return fast


def add_query_tokens(tokenizer: PreTrainedTokenizerBase, num_queries: int) -> list[int]:
    """Append `<new_token_0..N-1>` (contiguous ids) unless present; return their ids. Raises if ids not contiguous."""
    if num_queries < 1:
        raise ValueError(f"num_queries must be >= 1, got {num_queries}")
    names = [query_token(i) for i in range(num_queries)]
    vocab = tokenizer.get_vocab()
    missing = [n for n in names if n not in vocab]
    if missing and len(missing) != num_queries:
        raise ValueError(f"tokenizer has only some query tokens ({num_queries - len(missing)}/{num_queries})")
    if missing:
        tokenizer.add_tokens(names, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(names)
    if ids != list(range(ids[0], ids[0] + num_queries)):
        raise ValueError("latent query token ids are not contiguous")
    return ids
