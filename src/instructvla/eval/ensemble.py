"""Executing predicted action chunks: the adaptive action ensemble (CogACT-style) and open-loop first-k execution.

Both work on *unnormalised* chunks of shape (chunk, action_dim) and hold per-episode state; call `reset()` between
episodes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


def _check_chunk(chunk: np.ndarray, name: str = "chunk") -> np.ndarray:
    chunk = np.asarray(chunk)
    if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] < 1:
        raise ValueError(f"{name} must have shape (chunk, action_dim), got {chunk.shape}")
    if chunk.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be numeric, got dtype {chunk.dtype}")
    if not np.all(np.isfinite(chunk)):
        raise ValueError(f"{name} holds NaN/inf")
    return chunk.astype(np.float64)


def ensemble_weights(candidates: np.ndarray, reference: np.ndarray, alpha: float) -> np.ndarray:
    """Weights ∝ exp(alpha · cos(candidate_i, reference)), normalised to sum 1.

    candidates: (n, D); reference: (D,). A zero vector has cosine 0 with everything (its weight is exp(0)).
    """
    cand_norm = np.linalg.norm(candidates, axis=1)
    ref_norm = np.linalg.norm(reference)
    denom = cand_norm * ref_norm
    dots = candidates @ reference
    cos = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    logits = alpha * cos
    w = np.exp(logits - logits.max())
    return w / w.sum()


@dataclass(frozen=True)
class EnsembleConfig:
    """Adaptive ensemble settings. horizon K: 2 (Google robot), 7 (WidowX), 8 (LIBERO) in the paper; alpha 0.1."""

    horizon: int = 8
    alpha: float = 0.1

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"EnsembleConfig.horizon must be >= 1, got {self.horizon}")
        if not np.isfinite(self.alpha):
            raise ValueError(f"EnsembleConfig.alpha must be finite, got {self.alpha}")


class AdaptiveEnsemble:
    """Adaptive action ensemble over the last K predicted chunks; the model is queried every control step.

    At each step `add(chunk)` stores the newest chunk and returns the action to execute now: for the chunk predicted
    i steps ago (i = 0 newest) take its entry i (chunks shorter than i+1 are skipped), weight each candidate by
    exp(alpha · cos(candidate, newest chunk's first action)) and return the weighted mean.
    """

    def __init__(self, horizon: int = 8, alpha: float = 0.1) -> None:
        self.config = EnsembleConfig(horizon=horizon, alpha=alpha)
        self._chunks: deque[np.ndarray] = deque(maxlen=horizon)

    def reset(self) -> None:
        """Forget every stored chunk (new episode)."""
        self._chunks.clear()

    def __len__(self) -> int:
        return len(self._chunks)

    def add(self, chunk: np.ndarray) -> np.ndarray:
        """Store `chunk` (chunk, D) predicted at this step and return the ensembled action (D,) as float32."""
        chunk = _check_chunk(chunk)
        if self._chunks and self._chunks[-1].shape[1] != chunk.shape[1]:
            raise ValueError(f"chunk action_dim {chunk.shape[1]} differs from the stored {self._chunks[-1].shape[1]}")
        self._chunks.append(chunk)
        n = len(self._chunks)
        # i steps ago -> entry i; the newest chunk is self._chunks[-1] (i = 0).
        candidates = np.stack([self._chunks[n - 1 - i][i] for i in range(n) if i < self._chunks[n - 1 - i].shape[0]])
        weights = ensemble_weights(candidates, chunk[0], self.config.alpha)
        return (weights[:, None] * candidates).sum(axis=0).astype(np.float32)


class OpenLoopChunker:
    """Open-loop "first-k" execution: run the first k actions of a chunk, then ask for a new one.

    Usage per control step: ``if chunker.needs_chunk(): chunker.set_chunk(policy(...)); action = chunker.pop()``.
    """

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"OpenLoopChunker.k must be >= 1, got {k}")
        self.k = k
        self._chunk: np.ndarray | None = None
        self._step = 0

    def reset(self) -> None:
        """Drop the current chunk (new episode)."""
        self._chunk = None
        self._step = 0

    def needs_chunk(self) -> bool:
        """True when the next `pop()` needs a freshly predicted chunk."""
        return self._chunk is None

    @property
    def step_in_chunk(self) -> int:
        """Index into the current chunk of the next action `pop()` returns."""
        return self._step

    def set_chunk(self, chunk: np.ndarray) -> None:
        """Install a new chunk (chunk, D); it must hold at least k actions."""
        arr = _check_chunk(chunk)
        if arr.shape[0] < self.k:
            raise ValueError(f"chunk has {arr.shape[0]} actions but k={self.k} are executed per chunk")
        self._chunk = np.asarray(chunk).astype(np.float32)
        self._step = 0

    def pop(self) -> np.ndarray:
        """Return the next action (D,); after k actions the chunk is used up."""
        if self._chunk is None:
            raise RuntimeError("OpenLoopChunker.pop() called with no chunk; call set_chunk() first")
        action = self._chunk[self._step].copy()
        self._step += 1
        if self._step >= self.k:
            self.reset()
        return action
