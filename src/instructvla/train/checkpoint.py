"""Training checkpoints: atomic save (temporary folder, then one rename), keep-last-N, find the latest, resume.

Layout of `{run}/checkpoints/step-000100/`:
  model.pt           full model state dict (gathered from FSDP shards; DDP prefixes stripped), written by rank 0
  optimizer.pt       full optimizer state dict keyed by parameter name, written by rank 0
  rank-00000.pt      per rank: RNG states (python, numpy, torch, cuda) and the data stream position
  trainer_state.json step, samples seen, world size, config; written last, so its presence marks a complete folder

Everything is written into `.tmp-step-000100/` first and renamed in one `os.replace`, so a killed process never
leaves a half-written folder that `latest_checkpoint` would pick.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from instructvla.train.distributed import DistInfo, barrier

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """The loop's own counters, saved with every checkpoint."""

    step: int = 0
    samples: int = 0
    mm_samples: int = 0
    elapsed_s: float = 0.0
    world_size: int = 1
    config: dict[str, Any] = field(default_factory=dict)


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as (step, folder). Temporary folders are never listed."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


# ---------------------------------------------------------------- RNG state (JSON-friendly, weights_only-loadable)
def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU, and CUDA when present)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    random.setstate(_to_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


# ---------------------------------------------------------------- model / optimizer state (DDP and FSDP2 alike)
def _state_options(info: DistInfo, strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, strict=strict)


def gather_model_state(model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """Full (unsharded, unprefixed) model state dict on CPU; collective under FSDP2, so every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_state_options(info))


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict[str, Any]:
    """Full optimizer state keyed by parameter name; collective under FSDP2."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_state_options(info))


def save_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    data_state: dict[str, Any],
    info: DistInfo,
    keep_last: int = 3,
) -> Path:
    """Write one checkpoint atomically (every rank must call this); returns the final folder.

    data_state: this rank's data stream position (each rank saves its own, together with its RNG states).
    keep_last:  older complete checkpoints beyond this many are deleted (0 keeps all).
    """
    root = checkpoint_root(run_dir)
    final = root / step_dir_name(state.step)
    tmp = root / f".tmp-{final.name}"
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier(info)
    # Collectives first (FSDP2 gathers), then each rank writes its own file.
    model_state = gather_model_state(model, info)
    optim_state = gather_optimizer_state(model, optimizer, info)
    _atomic_torch_save({"rng": capture_rng(), "data": data_state}, tmp / f"rank-{info.rank:05d}.pt")
    if info.is_main:
        _atomic_torch_save(model_state, tmp / "model.pt")
        _atomic_torch_save(optim_state, tmp / "optimizer.pt")
    barrier(info)
    if info.is_main:
        state.world_size = info.world_size
        _write_json(tmp / STATE_FILE, state.__dict__)
        if final.exists():  # a re-save of the same step (e.g. the end of a resumed run): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        prune_checkpoints(run_dir, keep_last)
        logger.info("saved checkpoint %s", final)
    barrier(info)
    return final


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Delete complete checkpoints older than the newest `keep_last` (0 keeps all) and leftover temporary folders
    of saves that were killed half-way (called right after a save completed, so none is in progress)."""
    for tmp in checkpoint_root(run_dir).glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    if keep_last <= 0:
        return
    for _, path in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class LoadedCheckpoint:
    """What `load_checkpoint` restored into the model and optimizer, plus what the loop restores itself."""

    path: Path
    state: TrainerState
    data_state: dict[str, Any]
    rng: dict[str, Any]


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, info: DistInfo
) -> LoadedCheckpoint:
    """Load model (and optimizer) state in place from a checkpoint folder; every rank must call this.

    Raises ValueError when the folder is incomplete or was written by a different number of processes (the data
    position and RNG states are per rank).
    """
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    raw = json.loads(state_file.read_text())
    state = TrainerState(**raw)
    if state.world_size != info.world_size:
        raise ValueError(
            f"checkpoint {path} was written by {state.world_size} processes but this run has {info.world_size}; "
            "resume with the same --nproc_per_node"
        )
    rank_file = path / f"rank-{info.rank:05d}.pt"
    if not rank_file.is_file():
        raise ValueError(f"checkpoint {path} lacks {rank_file.name}")
    per_rank = torch.load(rank_file, map_location="cpu", weights_only=True)
    model_state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    set_model_state_dict(model, model_state, options=_state_options(info))
    if optimizer is not None:
        optim_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        # not strict: a trainable parameter that never got a gradient (unused in the forward) has no AdamW state yet
        set_optimizer_state_dict(model, optimizer, optim_state, options=_state_options(info, strict=False))
    return LoadedCheckpoint(path=path, state=state, data_state=per_rank["data"], rng=per_rank["rng"])


# ---------------------------------------------------------------- small file helpers
def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
