"""The demo orchestrator: preset resolution, headline extraction, and (slow) a miniature end-to-end run."""

import json

import pytest

from instructvla.demo import PRESETS, DemoConfig, _headline, demo


def test_unknown_preset_names_the_field_and_suggests():
    with pytest.raises(ValueError, match=r"preset.*did you mean 'quick'"):
        DemoConfig(preset="quik")


def test_overrides_replace_preset_values():
    p = DemoConfig(preset="quick", episodes=7, stage1_minutes=0.5, lr_schedule="constant", stage2_lr=1e-4).resolved()
    assert p.episodes == 7 and p.stage1_minutes == 0.5 and p.lr_schedule == "constant" and p.stage2_lr == 1e-4
    assert p.model_preset == PRESETS["quick"].model_preset
    assert PRESETS["quick"].family_weights == (("open_drawer", 0.4),)
    q = DemoConfig(preset="quick", family_weights={"pick": 2.0, "open_drawer": 1.0}).resolved()
    assert q.family_weights == (("open_drawer", 1.0), ("pick", 2.0))  # hashable, order-free
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        DemoConfig(preset="quick", lr_schedule="step")


def test_stage1_batch_follows_batch_size_unless_set():
    assert PRESETS["quick"].stage1_batch_size == 32 and PRESETS["quick"].batch_size == 16
    assert DemoConfig(preset="quick", batch_size=8).resolved().stage1_batch_size is None  # one batch for every stage
    p = DemoConfig(preset="quick", batch_size=8, stage1_batch_size=12).resolved()
    assert (p.batch_size, p.stage1_batch_size) == (8, 12)


def test_headline_reads_the_evaluation_schema():
    results = {
        "suites": {"atomic-quick": {"overall": 0.5, "splits": {"seen": 0.5}, "categories": {"atomic": 0.5},
                                    "by_split": {"seen": {"categories": {"atomic": 0.5}}},
                                    "tasks": [{"task_id": "atomic/pick_any", "split": "seen", "success_rate": 0.75}]}},
        "vqa": {"overall": {"exact_match": 0.25, "bleu1": 0.5}},
    }
    h = _headline(results)
    assert h["atomic-quick/overall"] == 0.5 and h["atomic-quick/task/atomic/pick_any"] == 0.75
    assert h["vqa/exact_match"] == 0.25 and h["vqa/bleu1"] == 0.5


@pytest.mark.slow
def test_miniature_demo_runs_every_phase(tmp_path):
    cfg = DemoConfig(out=str(tmp_path / "demo"), workers=1, episodes=6, multimodal_samples=8, stage0_steps=2,
                     stage1_steps=2, stage2_steps=2, eval_suites="atomic-quick,vqa", eval_episodes=1,
                     eval_max_steps=8, vqa_limit=3)
    assert demo(cfg) == 0
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results["evaluations"]) == {"Stage-0 VLM", "Expert", "Generalist"}
    assert "atomic-quick/overall" in results["evaluations"]["Expert"]
    assert "vqa/exact_match" in results["evaluations"]["Stage-0 VLM"]
    assert (tmp_path / "demo" / "report.html").stat().st_size > 1000
    # a second run reuses every finished phase
    assert demo(cfg) == 0


@pytest.mark.slow
def test_miniature_full_preset_runs_the_ablation_and_thinking_phases(tmp_path, load_benchmark):
    """The full preset's extra phases (no-MoE baseline, thinking-mode evaluation, ensembled execution, instruct
    suites with seen / held-out templates) at a miniature scale, and demo_results.py reading what they produce."""
    cfg = DemoConfig(preset="full", out=str(tmp_path / "full"), workers=1, model_preset="tiny", camera_size=64,
                     image_size=64, num_queries=8, episodes=4, multimodal_samples=8, stage0_steps=2, stage1_steps=2,
                     stage2_steps=2, eval_suites="atomic-quick,instruct-quick,vqa", eval_episodes=1,
                     instruct_episodes=1, eval_max_steps=4, vqa_limit=2)
    p = cfg.resolved()
    assert p.no_moe_baseline and p.think_eval and p.eval_execution == "ensemble"
    assert demo(cfg) == 0
    results = json.loads((tmp_path / "full" / "results.json").read_text())
    evals = results["evaluations"]
    assert set(evals) == {"Stage-0 VLM", "Expert", "Generalist", "Generalist (no MoE)", "Generalist (thinking)"}
    assert "vqa/exact_match" in evals["Generalist (no MoE)"]
    assert "instruct-quick/heldout" in evals["Generalist"] and "instruct-quick/situated" in evals["Generalist"]
    assert not any(k.startswith("vqa/") for k in evals["Generalist (thinking)"])  # thinking skips VQA
    rows = {r["figure"]: r for r in load_benchmark("demo_results").figures(results)}
    assert rows["VQA exact_match drop vs stage 0, no-MoE (points)"]["value"] is not None
    assert rows["situated: thinking on - off (points)"]["value"] is not None
