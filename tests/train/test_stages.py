"""Stages on the real tiny InstructVLA: trainable sets (method.md §4), end-to-end stage 0 -> 1 -> 2, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from instructvla.data.dataset import write_synthetic_dataset
from instructvla.data.multimodal import MultimodalWriter
from instructvla.model.vla import InstructVLA
from instructvla.train.config import TrainConfig
from instructvla.train.distributed import DistInfo
from instructvla.train.stages import build_parts, configure_trainable, paper_trainable_names
from instructvla.train.trainer import run_training

ONE = DistInfo()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    robot = write_synthetic_dataset(root / "robot", num_episodes=2, length=6, image_size=32)
    rng = np.random.default_rng(0)
    with MultimodalWriter(root / "mm") as w:
        for _ in range(4):
            w.add(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                  [{"question": "What colour is the block?", "answer": "red"},
                   {"question": "Describe the table.", "answer": "A table with a red block.", "kind": "caption"}],
                  "train")
    return {"robot": robot, "mm": str(root / "mm")}


def _cfg(out, **kw) -> TrainConfig:
    base = dict(out=str(out), steps=2, batch_size=2, mm_batch_size=2, save_every=0, log_every=1, progress="never",
                augment=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def stage1_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("s1")
    cfg = _cfg(out, stage=1, dataset=data["robot"])
    run_training(cfg, build_parts(cfg, ONE), ONE)
    return out / "model"


def _names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_stage2_trainable_set_is_the_papers(stage1_dir):
    model = InstructVLA.to_stage2(stage1_dir)
    names = configure_trainable(model, 2)
    assert set(names) == _names(model) == paper_trainable_names(model, 2)
    emb = set(model.embedding_param_names())
    by_id = {id(p): n for n, p in model.named_parameters()}
    gate = {by_id[id(p)] for p in model.molora.gate_parameters()}
    lora = {by_id[id(p)] for p in model.molora.lora_parameters()}
    assert gate and gate <= set(names)  # the scale head trains
    assert lora and all(model.get_parameter(n).shape[0] == 2 for n in lora if n.endswith("lora_A"))  # 2 experts
    assert set(names) == lora | gate | emb  # ... and nothing else: no action expert, no frozen VLM weight
    assert not any(p.requires_grad for p in model.action_expert.parameters())


def test_stage1_stage0_and_no_moe_trainable_sets(stage1_dir):
    model = InstructVLA.from_preset("tiny")
    s1 = set(configure_trainable(model, 1))
    assert s1 == paper_trainable_names(model, 1) == set(model.trainable_parameter_names(1))
    mask_token = "action_expert.vision.dino.embeddings.mask_token"  # never used in a forward: frozen (DDP)
    assert mask_token not in s1 and not model.get_parameter(mask_token).requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("action_expert.") and n != mask_token)
    assert {n for n in s1 if n.startswith("backbone.")} == set(model.embedding_param_names())
    s0 = set(configure_trainable(model, 0))
    assert s0 == {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
    single = InstructVLA.from_pretrained(stage1_dir)
    nm = set(configure_trainable(single, 2, no_moe=True))
    assert not any(n.startswith("action_expert.") for n in nm)
    assert nm == {n for n in s1 if not n.startswith("action_expert.")}


def test_stage1_output_loads_and_keeps_frozen_weights(stage1_dir, data):
    model = InstructVLA.from_pretrained(stage1_dir)
    assert model.config.center_crop_area == 1.0  # trained without crops: evaluated on the whole frame
    assert model.norm_stats is not None and (stage1_dir / "normalization.json").is_file()
    fresh = InstructVLA.from_preset("tiny", action_expert_overrides={"num_views": 2, "chunk_size": 16})
    emb = model.backbone.input_embeddings().weight
    rows = torch.ones(emb.shape[0], dtype=torch.bool)
    rows[model.query_ids] = False
    # same seed -> same frozen init: every frozen VLM weight and every non-query embedding row is untouched
    trained, init = model.state_dict(), fresh.state_dict()
    for name, value in trained.items():
        if name.startswith("backbone.") and "embed_tokens" not in name and "lm_head" not in name:
            assert torch.equal(value, init[name]), name
    assert torch.equal(emb[rows], fresh.backbone.input_embeddings().weight[rows])
    assert not torch.equal(emb[~rows], fresh.backbone.input_embeddings().weight[~rows])  # query rows learned


def test_stage2_end_to_end_freezes_action_expert(stage1_dir, data, tmp_path):
    cfg = _cfg(tmp_path, stage=2, dataset=data["robot"], multimodal=data["mm"], init=str(stage1_dir),
               noise_repeats=2)
    parts = build_parts(cfg, ONE)
    assert parts.model.action_expert.cfg.noise_repeats == 2  # a training knob: this run's value
    expert_before = {k: v.clone() for k, v in parts.model.action_expert.state_dict().items()}
    run_training(cfg, parts, ONE)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("mm_lm_loss" in r and r["fm_loss"] > 0 for r in rows)
    after = parts.model.action_expert.state_dict()
    assert all(torch.equal(expert_before[k], after[k]) for k in after)
    loaded = InstructVLA.from_pretrained(tmp_path / "model")
    assert loaded.config.stage == 2 and loaded.norm_stats == parts.model.norm_stats


def test_saved_model_remembers_its_test_time_crop(stage1_dir, data, tmp_path):
    """Crop-augmented training saves the crop's area, so a Policy centre-crops the same by default."""
    from instructvla.policy import Policy, PolicyConfig

    cfg = _cfg(tmp_path, stage=2, dataset=data["robot"], multimodal=data["mm"], init=str(stage1_dir), augment=True)
    run_training(cfg, build_parts(cfg, ONE), ONE)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["center_crop_area"] == pytest.approx(0.9)
    assert Policy.from_pretrained(tmp_path / "model").crop_area == pytest.approx(0.9)
    assert Policy.from_pretrained(tmp_path / "model", PolicyConfig(center_crop_area=1.0)).crop_area == 1.0
    assert Policy.from_pretrained(stage1_dir).crop_area == 1.0


def test_stage0_then_stage1_from_its_vlm(data, tmp_path):
    cfg0 = _cfg(tmp_path / "s0", stage=0, multimodal=data["mm"])
    parts0 = build_parts(cfg0, ONE)
    run_training(cfg0, parts0, ONE)
    cfg1 = _cfg(tmp_path / "s1", stage=1, dataset=data["robot"], init=str(tmp_path / "s0" / "model"))
    parts1 = build_parts(cfg1, ONE)
    vlm0 = InstructVLA.from_pretrained(tmp_path / "s0" / "model").backbone.state_dict()
    vlm1 = parts1.model.backbone.state_dict()
    assert all(torch.equal(vlm0[k], vlm1[k]) for k in vlm0)  # stage 1 starts from the stage-0 VLM


def test_mismatches_are_clear_errors(stage1_dir, data, tmp_path):
    with pytest.raises(ValueError, match="chunk_size"):
        build_parts(_cfg(tmp_path, stage=2, dataset=data["robot"], multimodal=data["mm"], init=str(stage1_dir),
                         chunk_size=8), ONE)
    with pytest.raises(ValueError, match="use_state"):
        build_parts(_cfg(tmp_path, stage=2, dataset=data["robot"], multimodal=data["mm"], init=str(stage1_dir),
                         use_state=True), ONE)
    bad = json.loads((stage1_dir / "normalization.json").read_text())
    bad["action"] = {k: v[:6] for k, v in bad["action"].items()}
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in stage1_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "normalization.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="6 dims"):
        build_parts(_cfg(tmp_path, stage=2, dataset=data["robot"], multimodal=data["mm"], init=str(broken)), ONE)


def test_real_model_resume_gives_the_same_loss_curve(data, tmp_path):
    def run(out, steps, resume=False):
        cfg = _cfg(out, stage=1, dataset=data["robot"], steps=steps, save_every=2, resume=resume, augment=True)
        run_training(cfg, build_parts(cfg, ONE), ONE)
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    full = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    assert run(tmp_path / "b", 4, resume=True) == full


def test_no_moe_baseline_trains_one_lora_on_everything(stage1_dir, data, tmp_path):
    cfg = _cfg(tmp_path, stage=2, dataset=data["robot"], multimodal=data["mm"], init=str(stage1_dir), no_moe=True,
               steps=1)
    parts = build_parts(cfg, ONE)
    assert parts.model.config.stage == 1  # a single LoRA, no scale head
    lora_before = {n: p.detach().clone() for n, p in parts.model.molora.named_parameters()}
    run_training(cfg, parts, ONE)
    assert any(not torch.equal(lora_before[n], p) for n, p in parts.model.molora.named_parameters())
    assert not any(p.requires_grad for p in parts.model.action_expert.parameters())


def test_stage1_from_a_plain_vlm_folder(data, tmp_path):
    from instructvla.model.backbone import Backbone

    Backbone.from_preset("tiny", seed=7).save_pretrained(tmp_path / "vlm")
    parts = build_parts(_cfg(tmp_path / "run", stage=1, dataset=data["robot"], init=str(tmp_path / "vlm")), ONE)
    ref = Backbone.from_pretrained(tmp_path / "vlm").hf.state_dict()
    got = parts.model.backbone.hf.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref if "embed_tokens" not in k and "lm_head" not in k)


def test_stage1_continues_a_stage1_model_on_extra_datasets(stage1_dir, data, tmp_path):
    """init = a trained Expert: its action expert and normalisation carry on (e.g. DAgger corrections added)."""
    extra = write_synthetic_dataset(tmp_path / "extra", num_episodes=1, length=7, image_size=32, seed=9)
    cfg = _cfg(tmp_path / "more", stage=1, dataset=data["robot"], extra_datasets=[extra], init=str(stage1_dir))
    parts = build_parts(cfg, ONE)
    before = InstructVLA.from_pretrained(stage1_dir)
    assert len(parts.primary) == 12 + 7 and parts.primary.stats == before.norm_stats
    same = parts.model.action_expert.state_dict()
    assert all(torch.equal(v, same[k]) for k, v in before.action_expert.state_dict().items())
    run_training(cfg, parts, ONE)
    after = InstructVLA.from_pretrained(tmp_path / "more" / "model")
    assert after.config.stage == 1 and after.norm_stats == before.norm_stats
    changed = after.action_expert.state_dict()
    assert any(not torch.equal(v, changed[k]) for k, v in before.action_expert.state_dict().items())
