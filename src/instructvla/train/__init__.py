"""Training: one loop for every stage (trainer), per-stage trainable sets (stages), torchrun plumbing, checkpoints."""

from instructvla.train.checkpoint import latest_checkpoint
from instructvla.train.config import TrainConfig
from instructvla.train.trainer import NonFiniteLossError, TrainParts, run_training, train

__all__ = ["TrainConfig", "TrainParts", "NonFiniteLossError", "latest_checkpoint", "run_training", "train"]
