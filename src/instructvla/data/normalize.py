"""q01/q99 bounds normalisation of actions and proprio state (method.md §2.5, `BOUNDS_Q99`).

normalise:   dims with mask=True -> clip(2 (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1); constant dims (q01 == q99)
             -> 0; dims with mask=False (the gripper) pass through unchanged.
unnormalise: clip to [-1, 1]; masked dims -> 0.5 (x + 1) (q99 - q01) + q01 (constant dims -> q01); unmasked
             action dims (gripper) binarised to 1 if >= 0.5 else 0.

Stats schema (JSON-friendly, saved with checkpoints):
    {"action": {"q01": [7 floats], "q99": [7 floats], "mask": [7 bools]},
     "state":  {"q01": [8 floats], "q99": [8 floats], "mask": [8 bools]}}
Missing keys raise; there is no silent identity fallback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

EPS = 1e-8
CONSTANT_TOL = 1e-8
STAT_KEYS = ("q01", "q99", "mask")
ACTION_MASK = (True, True, True, True, True, True, False)  # gripper (absolute 0/1) not normalised


def _get(stats: Mapping[str, Any], key: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if key not in stats:
        raise KeyError(f"normalisation stats have no {key!r} entry (have {sorted(stats)})")
    entry = stats[key]
    missing = [k for k in STAT_KEYS if k not in entry]
    if missing:
        raise KeyError(f"normalisation stats[{key!r}] lacks {missing}")
    q01 = np.asarray(entry["q01"], dtype=np.float64)
    q99 = np.asarray(entry["q99"], dtype=np.float64)
    mask = np.asarray(entry["mask"], dtype=bool)
    if not (q01.shape == q99.shape == mask.shape) or q01.ndim != 1:
        raise ValueError(f"stats[{key!r}]: q01/q99/mask must be 1-D of equal length, got "
                         f"{q01.shape}/{q99.shape}/{mask.shape}")
    if dim is not None and q01.shape[0] != dim:
        raise ValueError(f"stats[{key!r}] has {q01.shape[0]} dims, data has {dim}")
    if (q99 < q01).any():
        raise ValueError(f"stats[{key!r}]: q99 < q01 in dims {np.nonzero(q99 < q01)[0].tolist()}")
    return q01, q99, mask


def compute_stats(x: np.ndarray, mask: Any = None) -> dict[str, list]:
    """q01/q99 (exact quantiles) of (N, D) data plus the normalisation mask (default: all True)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"expected non-empty (N, D) data, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("data contains NaN or inf")
    mask = np.ones(x.shape[1], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != (x.shape[1],):
        raise ValueError(f"mask has shape {mask.shape}, data has {x.shape[1]} dims")
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
    return {"q01": q01.tolist(), "q99": q99.tolist(), "mask": mask.tolist()}


def compute_norm_stats(actions: np.ndarray, states: np.ndarray | None = None) -> dict[str, dict[str, list]]:
    """Stats dict for a dataset: actions use `ACTION_MASK` (7-D) or all-but-last; states normalise every dim."""
    actions = np.asarray(actions)
    amask = ACTION_MASK if actions.shape[-1] == len(ACTION_MASK) else [True] * (actions.shape[-1] - 1) + [False]
    out = {"action": compute_stats(actions, amask)}
    if states is not None:
        out["state"] = compute_stats(states)
    return out


def normalize(x: np.ndarray, stats: Mapping[str, Any], key: str) -> np.ndarray:
    """Normalise (..., D) values of `key` ("action" or "state") to [-1, 1] (masked dims) as float32."""
    x = np.asarray(x, dtype=np.float64)
    q01, q99, mask = _get(stats, key, x.shape[-1])
    const = (q99 - q01) <= CONSTANT_TOL
    y = np.clip(2.0 * (x - q01) / (q99 - q01 + EPS) - 1.0, -1.0, 1.0)
    y = np.where(const, 0.0, y)
    return np.where(mask, y, x).astype(np.float32)


def unnormalize(y: np.ndarray, stats: Mapping[str, Any], key: str, binarize: bool | None = None) -> np.ndarray:
    """Inverse of `normalize`. Clips to [-1, 1]; unmasked dims are binarised (>= 0.5 -> 1, else 0) when
    `binarize` (default: True for "action", False otherwise)."""
    y = np.asarray(y, dtype=np.float64)
    q01, q99, mask = _get(stats, key, y.shape[-1])
    if binarize is None:
        binarize = key == "action"
    y = np.clip(y, -1.0, 1.0)
    x = 0.5 * (y + 1.0) * (q99 - q01) + q01
    unmasked = np.where(y >= 0.5, 1.0, 0.0) if binarize else y
    return np.where(mask, x, unmasked).astype(np.float32)


def zero_motion(stats: Mapping[str, Any], key: str = "action") -> np.ndarray:
    """The normalised value of each masked dim that unnormalises to 0 (no motion); 0 for constant dims.
    Unmasked dims are NaN (callers fill them, e.g. the gripper repeats its last value)."""
    q01, q99, mask = _get(stats, key)
    z = normalize(np.zeros_like(q01), stats, key).astype(np.float64)
    return np.where(mask, z, np.nan).astype(np.float32)


def validate_stats(stats: Mapping[str, Any], action_dim: int = 7, state_dim: int | None = None) -> None:
    """Raise if `stats` lacks what normalising actions (and state, if `state_dim`) needs."""
    _get(stats, "action", action_dim)
    if state_dim is not None:
        _get(stats, "state", state_dim)
