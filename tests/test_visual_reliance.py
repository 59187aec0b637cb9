"""benchmarks/visual_reliance.py: swap tests of a saved policy on a dataset's first frames."""

import math

import numpy as np
import pytest

from instructvla.data.dataset import write_synthetic_dataset
from instructvla.data.lerobot import LeRobotDatasetReader
from instructvla.policy import Policy


def test_swap_figures_on_a_saved_policy(tmp_path, capsys, load_benchmark):
    vr = load_benchmark("visual_reliance")
    data = write_synthetic_dataset(tmp_path / "ds", num_episodes=4, length=8, image_size=32, cameras=("primary",))
    Policy.random_tiny().model.save_pretrained(tmp_path / "ckpt")
    res = vr.measure(str(tmp_path / "ckpt"), data, frames=10, steps=3)
    assert res["frames"] == 4 and res["steps"] == 3
    for key in ("demo_change_m", "image_swap_change_m", "instruction_swap_change_m", "fit_error_m"):
        assert math.isfinite(res[key]) and res[key] >= 0
    # the episodes differ in colour and alternate between two prompts: both swaps change a random policy's chunk
    assert res["image_swap_change_m"] > 0 and res["instruction_swap_change_m"] > 0
    # the demonstration figure is the dataset's own arithmetic: first-3-action translation sums, each vs the next
    r = LeRobotDatasetReader(data)
    act = r.column("action")
    sums = np.stack([act[r.episode_slice(e).start:r.episode_slice(e).start + 3, :3].sum(0) for e in range(4)])
    expected = np.linalg.norm(sums - np.roll(sums, -1, axis=0), axis=-1).mean()
    assert res["demo_change_m"] == pytest.approx(expected, rel=1e-6)
    assert res["image_share"] == pytest.approx(res["image_swap_change_m"] / expected)
    # the CLI prints the table, then the same figures as JSON on the last line
    assert vr.main(["--policy", str(tmp_path / "ckpt"), "--dataset", data, "--frames", "2", "--steps", "2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert '"image_swap_change_m"' in last


def test_needs_two_episodes(tmp_path, load_benchmark):
    vr = load_benchmark("visual_reliance")
    data = write_synthetic_dataset(tmp_path / "one", num_episodes=1, length=5, image_size=32, cameras=("primary",))
    Policy.random_tiny().model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="at least 2 episodes"):
        vr.measure(str(tmp_path / "ckpt"), data)
