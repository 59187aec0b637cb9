"""InstructVLA: training forward, frozen rows, stage-2 equivalence, checkpoints, overfitting, inference, errors."""

import json

import numpy as np
import pytest
import torch

from instructvla.model.config import InstructVLAConfig
from instructvla.model.processor import action_prompt
from instructvla.model.vla import InstructVLA


def _samples(n, size=64, seed=0, reply="", has_action=True):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = {
            "images": rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8),
            "has_action": has_action,
            "conversation": [{"role": "user", "content": action_prompt(f"pick up the apple {i}")},
                             {"role": "assistant", "content": reply if has_action else "A red apple."}],
        }
        if has_action:
            s["actions"] = np.clip(rng.standard_normal((16, 7)), -1, 1).astype(np.float32)
        out.append(s)
    return out


def _perturb_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ad in model.molora.adapters.values():
            ad.lora_B.copy_(torch.randn(ad.lora_B.shape, generator=g) * 0.3)


@pytest.fixture(scope="module")
def tiny():
    return InstructVLA.from_preset("tiny", num_queries=8, image_size=64)


@pytest.mark.parametrize("preset", ["tiny", "tiny-smolvlm"])
def test_forward_losses(preset):
    m = InstructVLA.from_preset(preset, num_queries=8, image_size=64)
    batch = m.processor(_samples(2) + _samples(1, has_action=False))
    out = m(batch, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "fm_loss", "lm_loss"}
    assert all(torch.isfinite(v) for v in out.values())
    assert torch.allclose(out["loss"], out["fm_loss"] + out["lm_loss"])
    lm_only = m(m.processor(_samples(2, has_action=False)))
    assert lm_only["fm_loss"].item() == 0.0 and lm_only["loss"].item() == pytest.approx(lm_only["lm_loss"].item())
    chunk, reply = m.predict_action(_samples(1)[0]["images"], "pick up the apple")
    assert chunk.shape == (16, 7) and chunk.dtype == np.float32 and reply is None


def test_same_seed_same_weights():
    a = InstructVLA.from_preset("tiny", num_queries=4)
    b = InstructVLA.from_preset("tiny", num_queries=4)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("preset", ["tiny", "tiny-smolvlm"])
def test_old_embedding_rows_frozen(preset):
    m = InstructVLA.from_preset(preset, num_queries=8, image_size=64)
    names = m.set_trainable(1)
    emb, out = m.backbone.input_embeddings().weight, m.backbone.output_embeddings().weight
    assert (emb is out) == (preset == "tiny")
    before_e, before_o = emb.detach().clone(), out.detach().clone()
    assert set(m.embedding_param_names()) <= set(names) <= set(dict(m.named_parameters()))
    assert set(m.embedding_param_names()) <= set(m.no_decay_param_names())
    opt = torch.optim.AdamW(m.param_groups(weight_decay=0.1), lr=1e-2)
    m.train()
    batch = m.processor(_samples(2, reply="I will pick it up."))
    for _ in range(3):
        opt.zero_grad()
        m(batch)["loss"].backward()
        opt.step()
    q = m.query_ids
    old = [i for i in range(emb.shape[0]) if i not in q]
    assert torch.equal(emb[old], before_e[old]) and torch.equal(out[old], before_o[old])
    assert not torch.equal(emb[q], before_e[q])
    frozen = [n for n, p in m.named_parameters() if n.startswith("backbone.") and n not in m.embedding_param_names()]
    assert frozen and all(not dict(m.named_parameters())[n].requires_grad for n in frozen)


def test_trainable_sets(tiny):
    s1 = tiny.trainable_parameter_names(1)
    assert any(n.startswith("action_expert.") for n in s1) and any("lora_A" in n for n in s1)
    assert not any(n.startswith("backbone.hf.model.vision_tower") for n in s1)
    s0 = tiny.trainable_parameter_names(0)
    assert all(n.startswith("backbone.") for n in s0) and any("vision_tower" in n for n in s0)
    with pytest.raises(ValueError, match="stage-2 model"):
        tiny.trainable_parameter_names(2)
    m2 = InstructVLA.to_stage2(tiny)
    s2 = m2.trainable_parameter_names(2)
    assert any(n.startswith("molora.gate.") for n in s2)
    assert not any(n.startswith("action_expert.") for n in s2)


def test_stage2_init_equals_stage1(tiny):
    _perturb_lora(tiny)
    img = _samples(1)[0]["images"]
    a1, _ = tiny.predict_action(img, "pick up the apple", generator=torch.Generator().manual_seed(3))
    with tiny.molora.disabled():
        a0, _ = tiny.predict_action(img, "pick up the apple", generator=torch.Generator().manual_seed(3))
    assert not np.array_equal(a0, a1)  # the LoRA matters, so equality below is not trivial
    batch = tiny.processor(_samples(2, has_action=False))
    for router in ("embeddings", "adapter_free_hidden"):
        m2 = InstructVLA.to_stage2(tiny, router_input=router)
        assert m2.config.stage == 2 and m2.molora.config.num_experts == 2
        a2, _ = m2.predict_action(img, "pick up the apple", generator=torch.Generator().manual_seed(3))
        assert np.array_equal(a1, a2)
        with torch.no_grad():
            h1, _ = tiny.backbone.hidden_states(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
            h2, _ = m2.backbone.hidden_states(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
        assert torch.equal(tiny.backbone.logits(h1), m2.backbone.logits(h2))
        assert torch.equal(m2.molora.last_weights, torch.ones_like(m2.molora.last_weights))


def test_save_load_bit_identical(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _perturb_lora(tiny, seed=1)
    tiny.norm_stats = {"my_dataset": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7}}}
    tiny.save_pretrained(tmp_path)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "normalization.json"):
        assert (tmp_path / f).is_file(), f
    m = InstructVLA.from_pretrained(tmp_path)
    assert m.norm_stats == tiny.norm_stats and m.query_ids == tiny.query_ids
    img = _samples(1, seed=5)[0]["images"]
    a1, _ = tiny.predict_action(img, "put the lemon on the plate", generator=torch.Generator().manual_seed(0))
    a2, _ = m.predict_action(img, "put the lemon on the plate", generator=torch.Generator().manual_seed(0))
    assert np.array_equal(a1, a2)
    assert m.generate_text(img, "What is on the table?", 6) == tiny.generate_text(img, "What is on the table?", 6)
    # stage 2 from a directory, then its own round trip
    m2 = InstructVLA.to_stage2(tmp_path)
    assert np.array_equal(m2.predict_action(img, "put the lemon on the plate",
                                            generator=torch.Generator().manual_seed(0))[0], a1)
    m2.save_pretrained(tmp_path / "s2")
    m3 = InstructVLA.from_pretrained(tmp_path / "s2")
    assert m3.config.stage == 2
    for (n, p), (_, q) in zip(m2.state_dict().items(), m3.state_dict().items()):
        assert torch.equal(p, q), n
    tiny.norm_stats = None


def test_backbone_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = InstructVLA.from_preset("tiny-smolvlm", num_queries=4, image_size=64)
    base.backbone.save_pretrained(tmp_path / "vlm")  # includes query tokens; reused as they are
    m = InstructVLA(InstructVLAConfig(backbone=str(tmp_path / "vlm"), num_queries=4, image_size=64,
                                      lora={"rank": 4, "alpha": 8}))
    assert m.backbone.hf.config.model_type == "smolvlm" and m.query_ids == base.query_ids
    chunk, _ = m.predict_action(_samples(1)[0]["images"], "pick up the apple")
    assert chunk.shape == (16, 7)


def test_overfits_one_batch():
    m = InstructVLA.from_preset("tiny", num_queries=8, image_size=64)
    m.set_trainable(1)
    m.train()
    batch = m.processor(_samples(2))
    opt = torch.optim.AdamW(m.param_groups(0.0), lr=3e-3)
    losses = []
    for _ in range(60):  # fixed noise / times: the batch (incl. its noise) must be memorised
        out = m(batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["fm_loss"].item())
    assert losses[-1] < losses[0] / 10, losses[::10]


def test_thinking_and_batch(tiny):
    imgs = np.stack([s["images"] for s in _samples(2)])
    chunk, replies = tiny.predict_action(imgs, ["pick up the apple", "open the drawer"], think=True)
    assert chunk.shape == (2, 16, 7) and len(replies) == 2 and all(isinstance(r, str) for r in replies)
    one, reply = tiny.predict_action(imgs[0], "pick up the apple", think=True)
    assert isinstance(reply, str) and one.shape == (16, 7)
    assert isinstance(tiny.generate_text(imgs[0], "Describe what's on the table.", max_new_tokens=5), str)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'num_querys'"):
        InstructVLA.from_preset("tiny", num_querys=8)
    with pytest.raises(ValueError, match="unknown config key 'rnak'"):
        InstructVLAConfig.from_dict({"lora": {"rnak": 4}})
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        InstructVLAConfig(stage=3)
    with pytest.raises(ValueError, match="unknown backbone preset"):
        InstructVLA.from_preset("huge")
    m = InstructVLA.from_preset("tiny", num_queries=4)
    m.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["bogus"] = 1
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown config key 'bogus'"):
        InstructVLA.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        InstructVLA.from_pretrained(tmp_path / "nope")


def test_inference_input_errors(tiny):
    with pytest.raises(ValueError, match="image size"):
        tiny.predict_action(np.zeros((1, 32, 32, 3), np.uint8), "pick up the apple")
    with pytest.raises(ValueError, match="shape"):
        tiny.predict_action(np.zeros((32, 32, 3), np.uint8), "pick up the apple")
    with pytest.raises(ValueError, match="state contains NaN"):
        tiny.predict_action(np.zeros((1, 64, 64, 3), np.uint8), "pick up the apple", state=np.full(8, np.nan))
    batch = tiny.processor(_samples(1))
    batch["input_ids"][0, batch["query_positions"][0, 3]] = 20
    with pytest.raises(ValueError, match="missing query tokens"):
        tiny(batch)


def test_reusing_a_backbone_detaches_old_hooks():
    a = InstructVLA.from_preset("tiny", num_queries=4, image_size=64)
    _perturb_lora(a)
    b = InstructVLA(a.config, backbone=a.release_backbone())
    batch = b.processor(_samples(1, has_action=False))
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    with torch.no_grad():
        h, _ = b.backbone.hidden_states(*args)
        with b.molora.disabled():
            h0, _ = b.backbone.hidden_states(*args)
    assert torch.equal(h, h0)  # b's own LoRA is zero-init; a's perturbed hooks are gone
    c = InstructVLA(a.config, backbone=b.backbone)  # implicit: warns and detaches b's hooks
    assert b.backbone._attached == [c.molora]


def test_text_generation_needs_no_state_nor_every_view():
    """Thinking and chat run only the VLM: a use_state, two-camera model answers from one view without state."""
    m = InstructVLA.from_preset("tiny", num_queries=4, image_size=64,
                                action_expert_overrides={"num_views": 2, "use_state": True})
    one = _samples(1)[0]["images"]
    assert isinstance(m.generate_text(one, "What is on the table?", max_new_tokens=3), str)
    two = np.concatenate([one, one[:, ::-1]])
    chunk, reply = m.predict_action(two, "pick up the apple", state=np.zeros(8, np.float32), think=True)
    assert chunk.shape == (16, 7) and isinstance(reply, str)
    with pytest.raises(ValueError, match="state is required"):
        m.predict_action(two, "pick up the apple", think=True)


def test_release_backbone_removes_row_hooks():
    """The old model's query-row gradient mask must not act on the new model (here: stage 0, every row trains)."""
    a = InstructVLA.from_preset("tiny", num_queries=4, image_size=64)
    b = InstructVLA(a.config, backbone=a.release_backbone())
    b.set_trainable(0)
    b.train()
    b(b.processor(_samples(1, has_action=False)))["loss"].backward()
    grad = b.backbone.input_embeddings().weight.grad
    old = [i for i in range(grad.shape[0]) if i not in set(b.query_ids)]
    assert grad[old].abs().sum() > 0
    c = InstructVLA(a.config, backbone=b.backbone)  # implicit detach also drops b's row hooks
    assert len(c.backbone._row_hooks) == len({id(c.backbone.input_embeddings().weight),
                                              id(c.backbone.output_embeddings().weight)})


def test_unused_mask_token_is_frozen_in_stage1():
    """DINOv2's mask token never takes part in a forward: it stays frozen, so every trainable weight gets a
    gradient (DDP needs no find_unused_parameters)."""
    m = InstructVLA.from_preset("tiny", num_queries=4, image_size=64)
    names = m.set_trainable(1)
    assert "action_expert.vision.dino.embeddings.mask_token" not in names
    assert not m.action_expert.vision.dino.embeddings.mask_token.requires_grad
    m.train()
    m(m.processor(_samples(2)), generator=torch.Generator().manual_seed(0))["loss"].backward()
    dead = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not dead


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_generator_drives_a_cuda_model():
    m = InstructVLA.from_preset("tiny", num_queries=4, image_size=64).cuda()
    batch = m.processor(_samples(2))
    a = m(batch, generator=torch.Generator().manual_seed(0))["fm_loss"]
    b = m(batch, generator=torch.Generator().manual_seed(0))["fm_loss"]
    assert torch.equal(a, b)
    lat = torch.randn(2, 4, m.action_expert.cfg.latent_dim, device="cuda")
    imgs = batch["dino_images"].cuda()
    acts = batch["actions"].cuda()
    la = m.action_expert.loss(lat, imgs, None, acts, generator=torch.Generator().manual_seed(1))
    lb = m.action_expert.loss(lat, imgs, None, acts, generator=torch.Generator().manual_seed(1))
    assert torch.equal(la, lb)
