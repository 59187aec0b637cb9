"""Fixtures of the model tests."""

from pathlib import Path

import pytest

from instructvla.data.dataset import write_synthetic_dataset
from instructvla.train.config import TrainConfig
from instructvla.train.distributed import DistInfo
from instructvla.train.stages import build_parts
from instructvla.train.trainer import run_training


@pytest.fixture
def train_stage1(tmp_path):
    """Run a two-step stage 1 on a small synthetic dataset with these TrainConfig overrides.

    Returns (run folder, dataset folder): the run's metrics.jsonl and model/ are in the first."""

    def run(**overrides) -> tuple[Path, str]:
        robot = write_synthetic_dataset(tmp_path / "robot", num_episodes=2, length=6, image_size=32)
        cfg = TrainConfig(out=str(tmp_path / "s1"), stage=1, dataset=robot, steps=2, batch_size=2, save_every=0,
                          log_every=1, progress="never", image_size=32, **overrides)
        one = DistInfo()
        run_training(cfg, build_parts(cfg, one), one)
        return tmp_path / "s1", robot

    return run
