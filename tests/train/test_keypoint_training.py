"""Keypoint labels end to end: dataset -> stage 1 with the keypoint loss -> stage 2 -> Policy replies -> benchmark."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from instructvla.data.dataset import RobotDataset, write_synthetic_dataset
from instructvla.data.multimodal import MultimodalWriter
from instructvla.model.vla import InstructVLA
from instructvla.policy import Policy
from instructvla.train.config import TrainConfig
from instructvla.train.distributed import DistInfo
from instructvla.train.stages import build_parts
from instructvla.train.trainer import run_training

ONE = DistInfo()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("kpdata")
    robot = write_synthetic_dataset(root / "robot", num_episodes=3, length=6, image_size=32, keypoints=True)
    plain = write_synthetic_dataset(root / "plain", num_episodes=2, length=6, image_size=32)
    with MultimodalWriter(root / "mm") as w:
        for _ in range(2):
            w.add(np.zeros((32, 32, 3), np.uint8), [{"question": "What is there?", "answer": "a block"}], "train")
    return {"robot": robot, "plain": plain, "mm": str(root / "mm")}


def _cfg(out, **kw) -> TrainConfig:
    base = dict(out=str(out), steps=2, batch_size=2, mm_batch_size=1, save_every=0, log_every=1, progress="never",
                keypoints=True)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def stage1(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("kps1")
    cfg = _cfg(out, stage=1, dataset=data["robot"])
    run_training(cfg, build_parts(cfg, ONE), ONE)
    return out


def test_dataset_samples_carry_cropped_keypoints(data):
    plain = RobotDataset(data["robot"], augment=False, image_size=32)
    aug = RobotDataset(data["robot"], augment=True, image_size=32, seed=3)
    assert plain.num_keypoints == 3
    s, a = plain[4], aug[4]
    assert s["keypoints"].shape == (3, 2) and s["keypoints"].dtype == np.float32
    # a 0.9-area crop magnifies by 1/sqrt(0.9): positions move, and spread apart
    assert not np.allclose(s["keypoints"], a["keypoints"])
    span = np.abs(a["keypoints"][0] - a["keypoints"][2]) / np.abs(s["keypoints"][0] - s["keypoints"][2])
    assert span == pytest.approx(np.full(2, 1 / math.sqrt(0.9)), rel=0.05)
    assert "keypoints" not in RobotDataset(data["robot"], image_size=32, keypoints=False)[0]


def test_stage1_trains_the_keypoint_readout(stage1):
    lines = [json.loads(x) for x in (stage1 / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["kp_loss"]) and x["kp_loss"] > 0 for x in lines)
    model = InstructVLA.from_pretrained(stage1 / "model")
    assert model.action_expert.cfg.keypoints == 3
    assert any(n.startswith("action_expert.keypoint_readout") for n, _ in model.named_parameters())


def test_policy_replies_keypoints_in_frame_coordinates(stage1):
    pol = Policy.from_pretrained(stage1 / "model")
    rng = np.random.default_rng(0)
    obs = {"observation/image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
           "observation/wrist_image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "prompt": "pick up the block"}
    out = pol.infer(obs)
    kp = out["keypoints"]
    assert kp.shape == (3, 2) and kp.dtype == np.float32 and np.isfinite(kp).all() and np.abs(kp).max() <= 1.0


def test_stage2_keeps_the_readout_and_its_loss(stage1, data, tmp_path):
    cfg = _cfg(tmp_path, stage=2, dataset=data["robot"], multimodal=data["mm"], init=str(stage1 / "model"))
    run_training(cfg, build_parts(cfg, ONE), ONE)
    assert "kp_loss" in json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert InstructVLA.from_pretrained(tmp_path / "model").action_expert.cfg.keypoints == 3


def test_keypoint_mismatches_are_clear_errors(stage1, data, tmp_path):
    with pytest.raises(ValueError, match="no 'observation.keypoints' labels"):
        build_parts(_cfg(tmp_path, stage=1, dataset=data["plain"]), ONE)
    plain_s1 = tmp_path / "plain_s1"
    cfg = _cfg(plain_s1, stage=1, dataset=data["robot"], keypoints=False, steps=1)
    run_training(cfg, build_parts(cfg, ONE), ONE)
    with pytest.raises(ValueError, match="reads 0 keypoints"):
        build_parts(_cfg(tmp_path / "s2", stage=2, dataset=data["robot"], multimodal=data["mm"],
                         init=str(plain_s1 / "model")), ONE)


def test_visual_reliance_scores_keypoints(stage1, data, load_benchmark):
    vr = load_benchmark("visual_reliance")
    res = vr.measure(str(stage1 / "model"), data["robot"], frames=3, steps=2)
    assert res["keypoint_names"] == ["target", "destination", "gripper"]
    for key in ("keypoint_error", "keypoint_label_spread", "keypoint_instruction_swap_change"):
        assert len(res[key]) == 3 and all(math.isfinite(v) and v >= 0 for v in res[key])
    # the synthetic destination never moves, so its labels have no spread
    assert res["keypoint_label_spread"][1] == pytest.approx(0.0, abs=1e-6)


def test_teacher_forcing_action_bias_heatmap_loss_and_camera_choice(data, tmp_path):
    cfg = _cfg(tmp_path, stage=1, dataset=data["robot"], keypoint_teacher_forcing=0.5, keypoint_action_bias=True,
               keypoint_heatmap_weight=0.5, cameras=["primary"])
    run_training(cfg, build_parts(cfg, ONE), ONE)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["kp_heatmap_loss"]) and x["kp_heatmap_loss"] > 0 for x in lines)
    model = InstructVLA.from_pretrained(tmp_path / "model")
    ae = model.action_expert.cfg
    assert ae.num_views == 1 and ae.keypoint_teacher_forcing == 0.5 and ae.keypoint_action_bias
    assert ae.keypoint_heatmap_weight == 0.5
    assert model.action_expert.keypoint_bias is not None
    pol = Policy.from_pretrained(tmp_path / "model")
    assert not pol.request_spec.wrist_camera  # one view: the policy takes no wrist image
    out = pol.infer({"observation/image": np.zeros((32, 32, 3), np.uint8), "prompt": "pick up the block"})
    assert out["actions"].shape[0] == ae.chunk_size and np.isfinite(out["keypoints"]).all()
    with pytest.raises(ValueError, match="keypoint_heatmap_weight must be"):
        _cfg(tmp_path, stage=1, dataset=data["robot"], keypoint_heatmap_weight=float("nan"))
    with pytest.raises(ValueError, match="need keypoints=true"):
        _cfg(tmp_path, stage=1, dataset=data["robot"], keypoints=False, keypoint_action_bias=True)
    with pytest.raises(ValueError, match="'top' is not|unknown"):
        build_parts(_cfg(tmp_path / "bad", stage=1, dataset=data["robot"], cameras=["top"]), ONE)


def test_closed_loop_diagnostics_with_and_without_oracle_keypoints(stage1, load_benchmark):
    cd = load_benchmark("closed_loop_diagnostics")
    for oracle in (False, True):
        res = cd.measure(str(stage1 / "model"), ["atomic/pick_any"], episodes=1, camera_size=32,
                         oracle_keypoints=oracle, verbose=False)
        s = res["tasks"]["atomic/pick_any"]
        assert s["episodes"] == 1 and 0.0 <= s["success_rate"] <= 1.0
        assert math.isfinite(s["median_min_dxy_cm"]) and s["median_min_dxy_cm"] >= 0
        assert s["target_kp_err"] is not None and s["target_kp_err"] >= 0
    row = cd.measure(str(stage1 / "model"), ["atomic/move_near"], episodes=1, camera_size=32,
                     verbose=False)["episodes"]["atomic/move_near"][0]
    assert row["end_dest_dxy_cm"] > 0 and row["lifted_cm"] >= 0 and isinstance(row["held_at_end"], bool)
    assert row["closes"] >= 0 and row["dest_kp_err"] >= 0
    if row["first_close"] is not None:
        assert set(row["first_close"]) >= {"above_grasp_cm", "moving_down_cm", "dx_cm", "dy_cm", "object_xy",
                                          "along_axis_cm", "across_axis_cm"}
        fc = row["first_close"]
        assert fc["along_axis_cm"] ** 2 + fc["across_axis_cm"] ** 2 == pytest.approx(fc["dxy_cm"] ** 2, rel=1e-6)
    # the summary arithmetic on hand-made rows
    rows = [{"success": True, "grasped": True, "min_dxy_cm": 1.0, "target_kp_err": 0.1, "closes": 2,
             "first_close": {"step": 10, "dxy_cm": 1.5, "dz_cm": 2.0, "above_grasp_cm": 0.5,
                             "along_axis_cm": 0.9, "across_axis_cm": 1.2},
             "dest_kp_err": 0.05, "release_dest_dxy_cm": 3.0},
            {"success": False, "grasped": True, "min_dxy_cm": 9.0, "target_kp_err": 0.3, "first_close": None,
             "end_dest_dxy_cm": 12.0, "closes": 0, "dest_kp_err": None, "release_dest_dxy_cm": None}]
    s = cd.summarise(rows)
    assert s["success_rate"] == 0.5 and s["reached_within_2cm"] == 0.5 and s["closed_rate"] == 0.5
    assert s["median_min_dxy_cm"] == 5.0 and s["median_close_dz_cm"] == 2.0 and s["median_close_above_grasp_cm"] == 0.5
    assert s["target_kp_err"] == pytest.approx(0.2)
    assert s["median_close_along_axis_cm"] == 0.9 and s["median_close_across_axis_cm"] == 1.2
    assert s["grasped_then_failed"] == 1 and s["median_end_dest_dxy_cm"] == 12.0
    assert s["retried"] == 1 and s["retried_success"] == 1 and s["released"] == 1
    assert s["median_release_dest_dxy_cm"] == 3.0 and s["dest_kp_err"] == 0.05


def test_dense_object_labels_train_object_queries(tmp_path):
    robot = write_synthetic_dataset(tmp_path / "robot", num_episodes=2, length=6, image_size=32, keypoints=True,
                                    object_keypoints=True)
    ds = RobotDataset(robot, image_size=32, augment=True, seed=1)
    assert ds.num_object_keypoints == 2
    obj = ds[3]["object_keypoints"]
    assert obj.shape == (2, 2) and np.isfinite(obj[0]).all() and np.isnan(obj[1]).all()  # the ghost is absent
    assert RobotDataset(robot, image_size=32, object_keypoints=False).num_object_keypoints == 0
    cfg = _cfg(tmp_path / "s1", stage=1, dataset=robot, object_keypoint_weight=0.5, keypoint_heatmap_weight=0.5)
    run_training(cfg, build_parts(cfg, ONE), ONE)
    lines = [json.loads(x) for x in (tmp_path / "s1" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["object_kp_loss"]) and x["object_kp_loss"] > 0 for x in lines)
    ae = InstructVLA.from_pretrained(tmp_path / "s1" / "model").action_expert
    assert ae.cfg.object_keypoints == 2 and ae.cfg.object_keypoint_weight == 0.5
    plain = write_synthetic_dataset(tmp_path / "plain", num_episodes=2, length=6, image_size=32, keypoints=True)
    with pytest.raises(ValueError, match="no 'observation.object_keypoints' labels"):
        build_parts(_cfg(tmp_path / "bad", stage=1, dataset=plain, object_keypoint_weight=1.0), ONE)
    with pytest.raises(ValueError, match="object_keypoint_weight must be"):
        _cfg(tmp_path, stage=1, dataset=robot, object_keypoint_weight=-1.0)


def test_corrupt_object_labels_are_clear_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    robot = write_synthetic_dataset(tmp_path / "robot", num_episodes=1, length=4, image_size=32, keypoints=True,
                                    object_keypoints=True)
    path = next((tmp_path / "robot" / "data").rglob("*.parquet"))
    tab = pq.read_table(path)
    col = tab.schema.get_field_index("observation.object_visible")
    bad = tab.column(col).to_pylist()
    bad[0] = [0.5, 0.0]
    pq.write_table(tab.set_column(col, tab.schema.field(col), pa.array(bad, tab.schema.field(col).type)), path)
    stats_path = tmp_path / "robot" / "meta" / "stats.json"
    stats = json.loads(stats_path.read_text())
    stats["observation.object_visible"]["min"] = [0.5, 0.0]  # consistent stats: the label check must catch it
    stats_path.write_text(json.dumps(stats))
    with pytest.raises(ValueError, match="object_visible 0 or 1"):
        RobotDataset(robot, image_size=32)
