"""Action chunks: the current and the next `chunk_size - 1` normalised actions of an episode, with padding.

Past the episode end (method.md §2.5, §9.8): relative dims get the normalised value that unnormalises to zero
motion (`normalize.zero_motion`), the gripper (unmasked dims) repeats the episode's last value, and
`action_is_pad` is True.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from instructvla.data.normalize import zero_motion


def action_chunk(actions: np.ndarray, t: int, chunk_size: int, pad_value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chunk of an episode's normalised actions starting at frame t.

    actions:   (T, D) normalised actions of ONE episode.
    pad_value: (D,) value for padded steps; NaN entries repeat the episode's last action in that dim.
    Returns (chunk (chunk_size, D) float32, action_is_pad (chunk_size,) bool).
    """
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 2 or len(actions) == 0:
        raise ValueError(f"actions must be a non-empty (T, D) array, got {actions.shape}")
    T, D = actions.shape
    if not 0 <= t < T:
        raise IndexError(f"frame {t} out of range for an episode of length {T}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    pad_value = np.asarray(pad_value, dtype=np.float32)
    if pad_value.shape != (D,):
        raise ValueError(f"pad_value must have shape ({D},), got {pad_value.shape}")
    stop = min(T, t + chunk_size)
    n = stop - t
    chunk = np.empty((chunk_size, D), dtype=np.float32)
    chunk[:n] = actions[t:stop]
    pad = np.where(np.isnan(pad_value), actions[-1], pad_value)
    chunk[n:] = pad
    is_pad = np.zeros(chunk_size, dtype=bool)
    is_pad[n:] = True
    return chunk, is_pad


def padding_value(stats: Mapping[str, Any], key: str = "action") -> np.ndarray:
    """(D,) padding value for `action_chunk` from normalisation stats (zero motion; NaN = repeat last)."""
    return zero_motion(stats, key)
