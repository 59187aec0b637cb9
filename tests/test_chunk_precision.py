"""benchmarks/chunk_precision.py: open-loop chunk error of a saved policy against demonstrations."""

import json
import math

import numpy as np
import pytest

from instructvla.data.dataset import write_synthetic_dataset
from instructvla.policy import Policy


def _actions(xy: list[tuple[float, float]], dz: list[float], grip: list[float]) -> np.ndarray:
    a = np.zeros((len(xy), 7))
    a[:, :2], a[:, 2], a[:, 6] = xy, dz, grip
    return a


def test_score_chunk_arithmetic_on_hand_made_chunks(load_benchmark):
    cp = load_benchmark("chunk_precision")
    demo = _actions([(0.01, 0.0)] * 4, [-0.02, -0.02, 0.0, 0.0], [1, 1, 0, 0])
    pred = _actions([(0.01, 0.01)] * 4, [-0.02, -0.01, -0.01, 0.0], [1, 1, 1, 0])
    s = cp.score_chunk(pred, demo, steps=4)
    assert s["displacement_error_m"] == pytest.approx(0.04)  # y drifts 1 cm per step
    assert s["displacement_dx_m"] == pytest.approx(0.0) and s["displacement_dy_m"] == pytest.approx(0.04)
    assert s["close_step_error"] == 1.0  # closes at 3 instead of 2
    assert s["close_height_error_m"] == pytest.approx(-0.04 - (-0.04))
    # only the first `steps` count; a demonstration that does not close there gives no close figures
    s2 = cp.score_chunk(pred, demo, steps=2)
    assert s2["displacement_error_m"] == pytest.approx(0.02) and s2["close_step_error"] is None
    # a chunk that never closes in the window is counted as late by the window's end, with no height figure
    never = _actions([(0.01, 0.0)] * 4, [0.0] * 4, [1, 1, 1, 1])
    s3 = cp.score_chunk(never, demo, steps=4)
    assert s3["close_step_error"] == 2.0 and s3["close_height_error_m"] is None
    assert cp.first_close(demo) == 2 and cp.first_close(never) is None
    assert cp.first_close(_actions([(0, 0)] * 3, [0] * 3, [0, 1, 0])) == 2  # starts closed: the first re-close
    with pytest.raises(ValueError, match="at least one action"):
        cp.score_chunk(pred, demo[:0], steps=4)


def test_measure_and_cli_on_a_saved_policy(tmp_path, capsys, load_benchmark):
    cp = load_benchmark("chunk_precision")
    data = write_synthetic_dataset(tmp_path / "ds", num_episodes=3, length=8, image_size=32, cameras=("primary",))
    Policy.random_tiny().model.save_pretrained(tmp_path / "ckpt")
    res = cp.measure(str(tmp_path / "ckpt"), data, episodes=5, before=(2,), steps=3)
    start = res["anchors"]["start"]
    assert start["frames"] == 3 and math.isfinite(start["displacement_error_m_mean"])
    assert start["displacement_error_m_mean"] >= 0
    assert math.isfinite(start["displacement_bias_x_m"]) and math.isfinite(start["displacement_bias_y_m"])
    # the synthetic gripper opens and never closes again: no anchor before a close
    assert res["anchors"]["close-2"]["frames"] == 0 and res["anchors"]["close-2"]["close_step_error_mean"] is None
    assert cp.main(["--policy", str(tmp_path / "ckpt"), "--dataset", data, "--episodes", "2", "--steps", "2"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["anchors"]["start"]["frames"] == 2
