"""Training samples from a LeRobot dataset: images, prompt (stage mixture), normalised action chunk, state.

`RobotDataset[k]` is deterministic in (seed, k): frame = k % len, draw = k // len, so a `ResumableSampler` that
yields `epoch * len + i` re-draws augmentation and prompts every epoch, works with DataLoader workers, and resumes
exactly from a saved counter. Samples are `types.Sample` dicts; turning them into tensors is the model processor's job.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from instructvla.data.augment import AugmentConfig, apply_params, crop_keypoints, resize_images, sample_params
from instructvla.data.chunks import action_chunk, padding_value
from instructvla.data.lerobot import (
    KEYPOINTS_KEY,
    OBJECT_KEYPOINTS_KEY,
    OBJECT_VISIBLE_KEY,
    LeRobotDatasetReader,
)
from instructvla.data.mixture import MixtureConfig, sample_conversation
from instructvla.data.multimodal import MultimodalDataset
from instructvla.data.normalize import compute_norm_stats, normalize, validate_stats
from instructvla.types import Sample

logger = logging.getLogger(__name__)

ACTION_KEY = "action"
STATE_KEY = "observation.state"
MOTION_KEY = "language_motion"

__all__ = ["RobotDataset", "RobotDatasets", "MultimodalDataset", "ResumableSampler", "collate_samples", "dataset_norm_stats"]


def dataset_norm_stats(reader: LeRobotDatasetReader, episodes: Sequence[int] | None = None) -> dict:
    """q01/q99 normalisation stats of a dataset's actions (and states, if present), optionally of some episodes."""
    rows = _frames_of(reader, episodes)
    states = reader.column(STATE_KEY)[rows] if STATE_KEY in reader.features else None
    return compute_norm_stats(reader.column(ACTION_KEY)[rows], states)


def _frames_of(reader: LeRobotDatasetReader, episodes: Sequence[int] | None) -> np.ndarray:
    if episodes is None:
        return np.arange(len(reader))
    bad = [e for e in episodes if not 0 <= e < reader.num_episodes]
    if bad:
        raise ValueError(f"episodes {bad} not in the dataset (0..{reader.num_episodes - 1})")
    return np.concatenate([np.arange(reader.episodes[e].start, reader.episodes[e].stop) for e in episodes])


class RobotDataset(Dataset):
    """Robot-action samples (`has_action=True`).

    root:        LeRobot v3.0 dataset directory.
    stage:       0/1 -> action (+20% motion) prompts; 2 -> the VLA-IT mixture (needs meta/vla_it.jsonl).
    chunk_size:  actions per chunk (16); past the episode end: zero motion, gripper held, action_is_pad True.
    use_state:   include the normalised proprio state.
    augment:     random-resized crop + colour jitter (same for all views); else a plain resize to image_size.
    stats:       normalisation stats ({"action": {q01, q99, mask}, "state": ...}); computed from the data if None.
    cameras:     feature keys (or their last part, "primary" / "wrist") of the views, primary first (default: every
                 camera, `*primary*` first).
    episodes:    restrict to these episode indices (e.g. a train split).
    keypoints:   attach the dataset's `observation.keypoints` labels ((K, 2) primary-view positions, moved with the
                 augmentation crop) when it has them (for an action expert with a keypoint readout).
    hide_held_target: leave the target keypoint unlabelled (NaN) from the frame whose action first closes the
                 (open) gripper to the end of its episode. The object is in the hand by then; labelled there (half of all frames),
                 the readout learns "the target is at the gripper", which in closed loop, with the gripper away from
                 the object, tells the policy it has arrived.
    object_keypoints: attach `observation.object_keypoints` ((M, 2) positions of every known object in the primary
                 view, NaN where `observation.object_visible` says it is absent; moved with the crop like keypoints)
                 as "object_keypoints" when the dataset has them (dense grounding labels).
    """

    def __init__(self, root: str | os.PathLike, stage: int = 1, chunk_size: int = 16, use_state: bool = False,
                 augment: bool = True, stats: Mapping[str, Any] | None = None, seed: int = 0,
                 cameras: Sequence[str] | None = None, image_size: int = 224, mixture: MixtureConfig | None = None,
                 augment_cfg: AugmentConfig | None = None, episodes: Sequence[int] | None = None,
                 cache_bytes: int = 2 << 30, keypoints: bool = True, hide_held_target: bool = True,
                 object_keypoints: bool = True):
        if stage not in (0, 1, 2):
            raise ValueError(f"stage must be 0, 1 or 2, got {stage!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.reader = LeRobotDatasetReader(root, cache_bytes=cache_bytes)
        r = self.reader
        if ACTION_KEY not in r.features:
            raise ValueError(f"{root}: dataset has no {ACTION_KEY!r} feature")
        if use_state and STATE_KEY not in r.features:
            raise ValueError(f"{root}: use_state=True but the dataset has no {STATE_KEY!r} feature")
        self.stage, self.chunk_size, self.use_state, self.augment, self.seed = stage, chunk_size, use_state, augment, seed
        self.mixture = mixture or MixtureConfig()
        self.augment_cfg = augment_cfg or AugmentConfig(size=image_size)
        self.image_size = self.augment_cfg.size
        if cameras is None:
            cameras = primary_first(r.camera_keys)
        short = {k.rsplit(".", 1)[-1]: k for k in r.camera_keys}  # "primary" -> "observation.images.primary"
        cameras = [c if c in r.camera_keys else short.get(c, c) for c in cameras]
        unknown = [c for c in cameras if c not in r.camera_keys]
        if unknown or not cameras:
            raise ValueError(f"cameras {list(cameras)}: unknown {unknown} (dataset has {r.camera_keys})")
        self.cameras = list(cameras)
        self.stats = dict(stats) if stats is not None else dataset_norm_stats(r, episodes)
        action_dim = r.column(ACTION_KEY).shape[-1]
        validate_stats(self.stats, action_dim, r.column(STATE_KEY).shape[-1] if use_state else None)
        self._actions = normalize(r.column(ACTION_KEY), self.stats, "action")
        self._pad = padding_value(self.stats, "action")
        self._states = normalize(r.column(STATE_KEY), self.stats, "state") if use_state else None
        self._motion = r.column(MOTION_KEY) if MOTION_KEY in r.features else None
        self._keypoints = None
        if keypoints and KEYPOINTS_KEY in r.features and self.cameras[0].endswith("primary"):
            kp = np.asarray(r.column(KEYPOINTS_KEY), dtype=np.float32)
            if kp.ndim != 2 or kp.shape[1] % 2 or not np.isfinite(kp).all():
                raise ValueError(f"{root}: {KEYPOINTS_KEY} must be finite (N, 2K) values, got shape {kp.shape}"
                                 + ("" if np.isfinite(kp).all() else " with NaN/Inf entries"))
            self._keypoints = kp.reshape(len(kp), -1, 2)
            if hide_held_target:
                self._keypoints = _hide_held_target(self._keypoints, r.column(ACTION_KEY), r)
        self._objects = None
        if object_keypoints and OBJECT_KEYPOINTS_KEY in r.features and self.cameras[0].endswith("primary"):
            self._objects = _object_labels(r, root)
        self._frames = _frames_of(r, episodes)
        if stage == 2 and not r.annotations:
            logger.warning("%s: stage 2 without meta/vla_it.jsonl: every sample falls back to plain action", root)

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def num_keypoints(self) -> int:
        """Keypoint labels per frame that samples carry (0 = none)."""
        return 0 if self._keypoints is None else self._keypoints.shape[1]

    @property
    def num_object_keypoints(self) -> int:
        """Objects with dense position labels per frame that samples carry (0 = none)."""
        return 0 if self._objects is None else self._objects.shape[1]

    def __getitem__(self, k: int) -> Sample:
        k = int(k)
        if k < 0:
            raise IndexError(f"negative sample index {k}")
        n = len(self._frames)
        row, draw = int(self._frames[k % n]), k // n
        rng = np.random.default_rng([self.seed, draw, row])
        py_rng = random.Random(int(rng.integers(2**62)))
        r = self.reader
        ep, fi = r.locate(row)
        sl = r.episode_slice(ep)
        actions, is_pad = action_chunk(self._actions[sl], fi, self.chunk_size, self._pad)
        views = [r.image(ep, fi, cam) for cam in self.cameras]
        keypoints = None if self._keypoints is None else self._keypoints[row]
        objects = None if self._objects is None else self._objects[row]
        if self.augment:
            params = sample_params(rng, self.augment_cfg)
            images = np.concatenate([apply_params(v[None], params, self.image_size) for v in views])
            if keypoints is not None:  # labels are primary-view positions: move them with the crop
                keypoints = crop_keypoints(keypoints, params, *views[0].shape[:2])
            if objects is not None:
                objects = crop_keypoints(objects, params, *views[0].shape[:2])
        else:
            images = np.concatenate([resize_images(v[None], self.image_size) for v in views])
        primitive = str(self._motion[row]) if self._motion is not None else None
        annotation = r.annotation(ep, fi) if self.stage == 2 else None
        conversation, ptype = sample_conversation(self.stage, r.episode_task(ep), py_rng, primitive, annotation,
                                                  self.mixture)
        sample = Sample(images=images, conversation=conversation, has_action=True, actions=actions,
                        action_is_pad=is_pad, prompt_type=ptype)
        if self._states is not None:
            sample["state"] = self._states[row]
        if keypoints is not None:
            sample["keypoints"] = keypoints
        if objects is not None:
            sample["object_keypoints"] = objects
        return sample


class RobotDatasets(Dataset):
    """Several `RobotDataset`s read as one (e.g. demonstrations + DAgger corrections), all normalised with the first's
    stats. Index k reads item k % len, re-drawn for draw k // len, like a single RobotDataset."""

    def __init__(self, parts: Sequence[RobotDataset]):
        if not parts:
            raise ValueError("RobotDatasets: give at least one dataset")
        first = parts[0]
        for i, d in enumerate(parts[1:], 1):
            for name in ("num_keypoints", "num_object_keypoints", "image_size", "chunk_size", "use_state"):
                if getattr(d, name) != getattr(first, name):
                    raise ValueError(f"robot dataset {i} ({d.reader.root}) has {name}={getattr(d, name)!r}, "
                                     f"dataset 0 ({first.reader.root}) has {getattr(first, name)!r}")
            if len(d.cameras) != len(first.cameras):
                raise ValueError(f"robot dataset {i} ({d.reader.root}) has cameras {d.cameras}, dataset 0 has "
                                 f"{first.cameras}")
        self.parts = list(parts)
        self.cameras, self.stats = first.cameras, first.stats
        self.num_keypoints, self.num_object_keypoints = first.num_keypoints, first.num_object_keypoints
        self._ends = np.cumsum([len(d) for d in self.parts])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, k: int) -> Sample:
        k = int(k)
        if k < 0:
            raise IndexError(f"negative sample index {k}")
        draw, i = divmod(k, len(self))
        part = int(np.searchsorted(self._ends, i, side="right"))
        local = i - (int(self._ends[part - 1]) if part else 0)
        return self.parts[part][local + draw * len(self.parts[part])]


class ResumableSampler(Sampler[int]):
    """Seeded shuffling sampler over `epoch * n + i` indices with a resumable counter (per rank).

    Each epoch is a fresh permutation of range(n) (seed, epoch), split across ranks by striding; `infinite=True`
    keeps going across epochs. `state_dict()` holds the number of indices yielded so far; with DataLoader
    prefetching that runs ahead of training, save `{"consumed": batches_done * batch_size}` instead.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 infinite: bool = True):
        if n < 1:
            raise ValueError(f"sampler needs n >= 1, got {n}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.n, self.seed, self.shuffle, self.rank, self.world_size, self.infinite = (
            n, seed, shuffle, rank, world_size, infinite)
        self.per_rank = n // world_size if n >= world_size else 1
        self.consumed = 0

    def __iter__(self) -> Iterator[int]:
        perm_epoch, perm = -1, None
        while True:
            epoch, i = divmod(self.consumed, self.per_rank)
            if epoch != perm_epoch:
                perm_epoch = epoch
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else None
            pos = (i * self.world_size + self.rank) % self.n
            self.consumed += 1
            yield epoch * self.n + (int(perm[pos]) if perm is not None else pos)
            if not self.infinite and self.consumed % self.per_rank == 0:
                return

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite ResumableSampler has no length")
        return self.per_rank - self.consumed % self.per_rank

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "consumed": self.consumed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if "consumed" not in state:
            raise KeyError("sampler state needs 'consumed'")
        if "seed" in state and state["seed"] != self.seed:
            raise ValueError(f"sampler seed {self.seed} differs from the saved state's {state['seed']}")
        self.consumed = int(state["consumed"])


def primary_first(camera_keys: Sequence[str]) -> list[str]:
    """The dataset's camera keys with the primary (third-person) view first, the others in their stored order."""
    keys = list(camera_keys)
    return sorted(keys, key=lambda k: (not k.endswith("primary"), keys.index(k)))


def collate_samples(batch: list[Sample]) -> list[Sample]:
    """DataLoader collate_fn that keeps samples as a list (the model processor batches them)."""
    return list(batch)


def _object_labels(reader: Any, root: Any) -> np.ndarray:
    """(N, M, 2) float32 object positions, NaN where `observation.object_visible` is 0; clear errors otherwise."""
    kp = np.asarray(reader.column(OBJECT_KEYPOINTS_KEY), dtype=np.float32)
    if OBJECT_VISIBLE_KEY not in reader.features:
        raise ValueError(f"{root}: {OBJECT_KEYPOINTS_KEY} needs its {OBJECT_VISIBLE_KEY!r} feature")
    vis = np.asarray(reader.column(OBJECT_VISIBLE_KEY), dtype=np.float32)
    if kp.ndim != 2 or vis.ndim != 2 or kp.shape != (len(vis), 2 * vis.shape[1]):
        raise ValueError(f"{root}: {OBJECT_KEYPOINTS_KEY} {kp.shape} must hold 2 values per object of "
                         f"{OBJECT_VISIBLE_KEY} {vis.shape}")
    if not np.isfinite(kp).all() or not np.isin(vis, (0.0, 1.0)).all():
        raise ValueError(f"{root}: {OBJECT_KEYPOINTS_KEY} must be finite and {OBJECT_VISIBLE_KEY} 0 or 1")
    out = kp.reshape(len(kp), -1, 2).copy()
    out[vis < 0.5] = np.nan
    return out


def _hide_held_target(keypoints: np.ndarray, actions: np.ndarray, reader: Any) -> np.ndarray:
    """(N, K, 2) labels with the target's (index 0) set to NaN from each episode's first open -> closed gripper
    command on (gripper command: 1 open, 0 closed; an episode that starts closed holds nothing until it opens)."""
    out = keypoints.copy()
    closed = np.asarray(actions)[:, -1] < 0.5
    for ep in range(reader.num_episodes):
        sl = reader.episode_slice(ep)
        c = closed[sl]
        first = np.flatnonzero(c[1:] & ~c[:-1])
        if first.size:
            out[sl.start + int(first[0]) + 1:sl.stop, 0] = np.nan
    return out


def write_synthetic_dataset(root: str | os.PathLike, num_episodes: int = 3, length: int | Sequence[int] = 20,
                            image_size: int = 32, cameras: Sequence[str] = ("primary", "wrist"), fps: int = 10,
                            seed: int = 0, annotations: bool = True, video: Any = None, keypoints: bool = False,
                            object_keypoints: bool = False) -> str:
    """Write a tiny synthetic LeRobot dataset (smooth moving-square videos, random-walk actions/states, motion
    words, one VLA-IT record per episode) for tests and smoke runs. keypoints: also write `observation.keypoints`
    (the primary view's square centre as the target, a fixed destination, the square's corner as the gripper);
    object_keypoints: also dense labels of two objects, the square (always there) and a "ghost" that is never in
    the scene. Returns the root as a string."""
    from instructvla.data.lerobot import LeRobotDatasetWriter, robot_features, write_annotations

    rng = np.random.default_rng(seed)
    lengths = [length] * num_episodes if isinstance(length, int) else list(length)
    if len(lengths) != num_episodes:
        raise ValueError(f"length has {len(lengths)} entries for {num_episodes} episodes")
    words = ("move forward", "move left, close gripper", "move up", "stop")
    feats = robot_features({c: (image_size, image_size) for c in cameras}, keypoints=keypoints,
                           object_names=("square", "ghost") if object_keypoints else ())
    yy, xx = np.mgrid[0:image_size, 0:image_size]
    records = []
    with LeRobotDatasetWriter(root, fps, feats, video=video, overwrite=True) as w:
        for ep in range(num_episodes):
            T = lengths[ep]
            colour = rng.integers(40, 255, 3)
            frames = {}
            for ci, cam in enumerate(cameras):
                imgs = np.empty((T, image_size, image_size, 3), np.uint8)
                for t in range(T):
                    cx = (image_size // 4 + t * 2 + ci * 5) % image_size
                    base = np.stack([xx * 200 // image_size, yy * 200 // image_size,
                                     np.full_like(xx, 60 + 40 * ci)], -1)
                    square = (np.abs(xx - cx) < image_size // 6) & (np.abs(yy - image_size // 2) < image_size // 6)
                    base[square] = colour
                    imgs[t] = base
                frames[f"observation.images.{cam}"] = imgs
            act = rng.normal(0, 0.01, (T, 7)).astype(np.float32)
            act[:, 6] = (np.arange(T) >= T // 2).astype(np.float32)
            state = np.cumsum(rng.normal(0, 0.01, (T, 8)), 0).astype(np.float32)
            frames |= {"action": act, "observation.state": state,
                       "language_motion": [words[int(i)] for i in rng.integers(0, len(words), T)]}
            cx = (image_size // 4 + np.arange(T) * 2) % image_size  # the primary view's square centre column
            u = 2.0 * (cx + 0.5) / image_size - 1.0
            v = np.full(T, 2.0 * (image_size // 2 + 0.5) / image_size - 1.0)
            if keypoints:
                frames[KEYPOINTS_KEY] = np.stack([u, v, np.full(T, 0.5), np.full(T, -0.5),
                                                 u - 1.0 / 3.0, v - 1.0 / 3.0], axis=1).astype(np.float32)
            if object_keypoints:
                zero = np.zeros(T)
                frames[OBJECT_KEYPOINTS_KEY] = np.stack([u, v, zero, zero], axis=1).astype(np.float32)
                frames[OBJECT_VISIBLE_KEY] = np.stack([np.ones(T), zero], axis=1).astype(np.float32)
            w.add_episode(frames, ("pick up the red block", "put the apple on the plate")[ep % 2])
            records.append({"episode_index": ep, "frame_index": 0, "caption": f"A table with {ep + 1} objects.",
                            "qa": [{"question": "How many objects are on the table?", "answer": str(ep + 1)}],
                            "command_rewriting": [{"instruction": "Grab the crimson cube.",
                                                   "response": "I will pick up the red block."}],
                            "context_creation": [{"instruction": "I need something red for my tower.",
                                                  "response": "I will pick up the red block."}]})
    if annotations:
        write_annotations(root, records)
    return str(root)
