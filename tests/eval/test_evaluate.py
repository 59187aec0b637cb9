"""Evaluation scoring arithmetic on a hand-made results table, config validation, and a tiny end-to-end run."""

import json
import math

import pytest

from instructvla.eval.evaluate import (
    EvalConfig,
    _select_videos,
    evaluate_policy,
    parse_suites,
    save_results,
    summarize_suite,
)


def _eps(split, task_id, category, outcomes):
    return [{"suite": "instruct", "task_id": task_id, "category": category, "split": split, "success": bool(o),
             "steps": 10 + i, "episode": i, "seed": i, "family_id": "f"} for i, o in enumerate(outcomes)]


def hand_table():
    # seen:    A (aggregation) 3/4, B (aggregation) 1/2, C (situated) 0/2
    # heldout: A (aggregation) 1/4,                      C (situated) 2/2
    return (_eps("seen", "A", "aggregation", [1, 1, 0, 1]) + _eps("seen", "B", "aggregation", [0, 1])
            + _eps("seen", "C", "situated", [0, 0]) + _eps("heldout", "A", "aggregation", [0, 0, 1, 0])
            + _eps("heldout", "C", "situated", [1, 1]))


def test_scoring_arithmetic_hand_table():
    s = summarize_suite(hand_table())
    # seen: aggregation = (0.75 + 0.5) / 2 = 0.625, situated = 0 -> overall 0.3125
    assert s["by_split"]["seen"]["categories"] == pytest.approx({"aggregation": 0.625, "situated": 0.0})
    assert s["splits"]["seen"] == pytest.approx(0.3125)
    # heldout: aggregation = 0.25, situated = 1 -> overall 0.625
    assert s["by_split"]["heldout"]["categories"] == pytest.approx({"aggregation": 0.25, "situated": 1.0})
    assert s["splits"]["heldout"] == pytest.approx(0.625)
    # overall = mean over splits of (mean of category means); categories = mean over splits
    assert s["overall"] == pytest.approx((0.3125 + 0.625) / 2)
    assert s["categories"] == pytest.approx({"aggregation": (0.625 + 0.25) / 2, "situated": 0.5})
    assert s["overall"] == pytest.approx(sum(s["categories"].values()) / 2)
    rows = {(t["split"], t["task_id"]): t for t in s["tasks"]}
    assert rows[("seen", "A")]["successes"] == 3 and rows[("seen", "A")]["episodes"] == 4
    assert rows[("seen", "A")]["success_rate"] == pytest.approx(0.75)
    assert rows[("heldout", "C")]["success_rate"] == 1.0 and rows[("seen", "A")]["mean_steps"] == 11.5
    assert len(s["episodes"]) == 14


def test_scoring_is_per_task_not_per_episode():
    # one task with 10 episodes (all succeed) and one with 1 (fails): per-task mean is 0.5, episode mean 10/11
    eps = _eps("seen", "big", "aggregation", [1] * 10) + _eps("seen", "small", "aggregation", [0])
    assert summarize_suite(eps)["overall"] == pytest.approx(0.5)


def test_scoring_rejects_bad_records():
    bad = _eps("seen", "A", "aggregation", [1])
    bad[0]["split"] = "train"
    with pytest.raises(ValueError, match="split"):
        summarize_suite(bad)
    with pytest.raises(ValueError):
        summarize_suite([])


def test_eval_config_validation():
    with pytest.raises(ValueError, match="EvalConfig.execution"):
        EvalConfig(execution="closed")
    with pytest.raises(ValueError, match="EvalConfig.workers"):
        EvalConfig(workers=0)
    with pytest.raises(ValueError, match="EvalConfig.ensemble_k"):
        EvalConfig(ensemble_k=0)
    with pytest.raises(ValueError, match="EvalConfig.suite"):
        EvalConfig(suite=" , ")
    rc = EvalConfig(execution="open_loop", open_loop_k=3, think=True).rollout_config()
    assert rc.execution == "open_loop" and rc.open_loop_k == 3 and rc.think and rc.think_every == 20
    assert EvalConfig().alpha == 0.1


def test_parse_suites():
    assert parse_suites("instruct-quick, vqa") == ["instruct-quick", "vqa"]
    with pytest.raises(ValueError, match="did you mean 'instruct'"):
        parse_suites("instuct")
    with pytest.raises(ValueError, match="twice"):
        parse_suites("atomic,atomic")


def test_select_videos_spread_and_capped():
    from instructvla.sim.suites import get_suite

    tasks = get_suite("instruct-quick", num_episodes=2)
    assert len(_select_videos(tasks, 1, 100)) == len(tasks)
    chosen = _select_videos(tasks, 2, 5)
    assert len(chosen) == 5 and all(e in (0, 1) for _, e in chosen)
    assert _select_videos(tasks, 0, 5) == set()


def test_save_results_nan_to_null(tmp_path):
    path = save_results({"name": "x", "root": "/nowhere", "suites": {"s": {"overall": math.nan}}}, tmp_path)
    data = json.loads(path.read_text())
    assert data["suites"]["s"]["overall"] is None and "root" not in data


def _one_task_suite(tmp_path, family="pick", target="apple"):
    path = tmp_path / "suite.jsonl"
    path.write_text(json.dumps({"task_id": "aggregation/tiny_pick", "category": "aggregation",
                                "family_id": "attribute", "spec": {"family": family, "targets": [target]},
                                "split": "both", "num_episodes": 1, "seeds": [0]}) + "\n")
    return path


def test_evaluate_policy_end_to_end_tiny(tmp_path):
    from instructvla.policy import Policy

    suite = _one_task_suite(tmp_path)
    cfg = EvalConfig(suite=str(suite), max_steps=3, camera_size=64, out=str(tmp_path / "out"), videos=1,
                     name="tiny <policy>")
    res = evaluate_policy(cfg, policy=Policy.random_tiny(), progress=False)
    s = res["suites"][str(suite)]
    assert set(s["splits"]) == {"seen", "heldout"} and len(s["episodes"]) == 2
    assert all(e["steps"] <= 3 for e in s["episodes"])
    seen, held = sorted(s["episodes"], key=lambda e: e["split"] != "seen")
    assert seen["seed"] == held["seed"] and seen["instruction"] != held["instruction"]  # same scene, other template
    assert res["policy_config"]["ensemble"] is True and res["policy_config"]["ensemble_horizon"] == 8
    assert len(res["videos"]) == 2
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["suites"][str(suite)]["overall"] == s["overall"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "tiny &lt;policy&gt;" in page and page.count('class="rollout"') == 2
    for v in res["videos"]:
        assert (tmp_path / "out" / v["path"]).is_file()


@pytest.mark.slow
def test_cli_parallel_workers_match_in_process(tmp_path):
    """`instructvla eval` with 2 spawned workers gives the same episodes as 1 in-process worker."""
    import numpy as np

    from instructvla.cli import main
    from instructvla.data.multimodal import MultimodalWriter
    from instructvla.policy import Policy

    ckpt = tmp_path / "ckpt"
    Policy.random_tiny().model.save_pretrained(ckpt)
    with MultimodalWriter(tmp_path / "ds" / "multimodal") as w:
        w.add(np.full((32, 32, 3), 200, np.uint8), [{"question": "What colour is the cube?", "answer": "red",
                                                    "kind": "color"}], split="heldout")
    suite = _one_task_suite(tmp_path)
    common = ["--policy", str(ckpt), "--suite", f"{suite},vqa", "--vqa_data", str(tmp_path / "ds"),
              "--max_steps", "3", "--camera_size", "64", "--embedding", "false", "--episodes", "2"]
    assert main(["eval", *common, "--workers", "2", "--out", str(tmp_path / "w2")]) == 0
    assert main(["eval", *common, "--workers", "1", "--out", str(tmp_path / "w1")]) == 0
    r1 = json.loads((tmp_path / "w1" / "results.json").read_text())
    r2 = json.loads((tmp_path / "w2" / "results.json").read_text())
    keys = ("task_id", "split", "seed", "steps", "success", "instruction", "episode")
    e1 = [{k: e[k] for k in keys} for e in r1["suites"][str(suite)]["episodes"]]
    e2 = [{k: e[k] for k in keys} for e in r2["suites"][str(suite)]["episodes"]]
    assert e1 == e2 and len(e1) == 4
    assert r1["vqa"]["overall"]["count"] == 1 and r1["vqa"]["predictions"] == r2["vqa"]["predictions"]
    assert (tmp_path / "w2" / "report.html").is_file()
