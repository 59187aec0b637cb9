"""Training: one loop for every stage (trainer), per-stage trainable sets (stages), torchrun plumbing, checkpoints.

Exports are resolved lazily, so `python -m instructvla.train.trainer` (torchrun's module entry) runs cleanly.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "instructvla.train.config",
    "TrainParts": "instructvla.train.trainer",
    "NonFiniteLossError": "instructvla.train.trainer",
    "run_training": "instructvla.train.trainer",
    "train": "instructvla.train.trainer",
    "latest_checkpoint": "instructvla.train.checkpoint",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'instructvla.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
