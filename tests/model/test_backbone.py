"""Backbone presets of both families, offline save/load, tokenizer."""

import os

import pytest
import torch

from instructvla.model import tokenizer as tk
from instructvla.model.backbone import Backbone, EagleConfig
from instructvla.model.presets import get_preset


@pytest.mark.parametrize("name", ["tiny", "tiny-smolvlm"])
def test_preset_shapes(name):
    b = Backbone.from_preset(name)
    preset = get_preset(name)
    assert b.num_image_tokens == preset.num_image_tokens == 16
    assert b.image_size == preset.image_size
    ids = b.tokenizer("pick up the apple", add_special_tokens=False).input_ids
    seq = torch.tensor([b.image_token_ids() + ids, b.image_token_ids() + ids[::-1]])
    pix = torch.randn(2, 3, b.image_size, b.image_size)
    hidden, cache = b.hidden_states(seq, torch.ones_like(seq), pix)
    assert hidden.shape == (2, seq.shape[1], preset.text_hidden)
    assert cache is None
    assert b.logits(hidden[:, -1]).shape == (2, b.input_embeddings().weight.shape[0])
    assert len(b.decoder_layers) == preset.text_layers


def test_eagle_is_internvl_with_siglip():
    b = Backbone.from_preset("tiny")
    assert isinstance(b.hf.config, EagleConfig)
    assert b.hf.config.vision_config.model_type == "siglip_vision_model"
    assert b.hf.config.tie_word_embeddings
    assert b.input_embeddings().weight is b.output_embeddings().weight


@pytest.mark.parametrize("name", ["tiny", "tiny-smolvlm"])
def test_save_load_offline_bit_exact(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    b = Backbone.from_preset(name)
    b.save_pretrained(tmp_path)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    b2 = Backbone.from_pretrained(tmp_path)
    assert b2.hf.config.model_type == b.hf.config.model_type
    seq = torch.tensor([b.image_token_ids() + [20, 21, 22]])
    pix = torch.randn(1, 3, b.image_size, b.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h1, _ = b.hidden_states(seq, None, pix)
        h2, _ = b2.hidden_states(seq, None, pix)
    assert torch.equal(h1, h2)
    assert b2.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def test_missing_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Backbone.from_pretrained(tmp_path)


def test_unknown_preset_suggests():
    with pytest.raises(ValueError, match="did you mean 'tiny'"):
        Backbone.from_preset("tinny")


def test_tokenizer_deterministic_and_chat():
    a, b = tk.build_tiny_tokenizer(), tk.build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    for t in (tk.IM_START, tk.IM_END, tk.IMG_CONTEXT, tk.IMG_START, tk.IMG_END):
        assert len(a(t, add_special_tokens=False).input_ids) == 1
    text = a.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and "You are a helpful assistant." in text
    ids = tk.add_query_tokens(a, 8)
    assert ids == list(range(ids[0], ids[0] + 8)) and ids[0] == len(a) - 8
    assert tk.add_query_tokens(a, 8) == ids  # idempotent
    enc = a("I will. " + "".join(tk.query_token(i) for i in range(8)), add_special_tokens=False).input_ids
    assert enc[-8:] == ids
    assert a.decode(a("put the lemon near the plate.").input_ids) == "put the lemon near the plate."
