"""A saved policy fed recorded frames of a LeRobot dataset (offline benchmarks: visual reliance, chunk precision)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class DatasetReplay:
    """A deterministic policy (noise scale 0) and a dataset whose cameras and state it can take."""

    policy: Any  # instructvla.policy.Policy
    reader: Any  # instructvla.data.lerobot.LeRobotDatasetReader
    cameras: list[str]  # the dataset's camera keys, primary first
    states: np.ndarray | None  # (N, state_dim) raw states, None when the dataset has none

    def views(self, episode: int, frame: int) -> dict[str, np.ndarray]:
        """The frame's camera images under the keys of an env observation ("image", "wrist_image")."""
        return {key: self.reader.image(episode, frame, cam) for key, cam in zip(("image", "wrist_image"),
                                                                                self.cameras)}

    def infer(self, views: dict[str, np.ndarray], row: int, prompt: str) -> dict:
        """The policy's reply (fresh episode) to `views`, the state of global frame `row` and `prompt`."""
        from instructvla.eval.rollout import policy_observation

        obs = {**views, "state": None if self.states is None else self.states[row]}
        self.policy.reset()
        return self.policy.infer(policy_observation(obs, prompt, self.policy.request_spec, False))


def open_replay(policy_dir: str, dataset: str, center_crop_area: float | None = None) -> DatasetReplay:
    """Load the policy (centre crop: `center_crop_area`, else the policy's own) and the dataset; a clear error when
    the dataset lacks a camera or the state the policy takes."""
    from instructvla.data.dataset import STATE_KEY, primary_first
    from instructvla.data.lerobot import LeRobotDatasetReader
    from instructvla.policy import Policy, PolicyConfig

    policy = Policy.from_pretrained(policy_dir, PolicyConfig(noise_scale=0.0, center_crop_area=center_crop_area))
    spec = policy.request_spec
    reader = LeRobotDatasetReader(dataset)
    cams = primary_first(reader.camera_keys)
    if getattr(spec, "wrist_camera", False) and len(cams) < 2:
        raise ValueError(f"{dataset}: the policy takes a wrist camera, the dataset has only {cams}")
    if getattr(spec, "state_dim", None) is not None and STATE_KEY not in reader.features:
        raise ValueError(f"{dataset}: the policy takes a state, the dataset has no {STATE_KEY!r}")
    states = reader.column(STATE_KEY) if STATE_KEY in reader.features else None
    return DatasetReplay(policy, reader, cams, states)
