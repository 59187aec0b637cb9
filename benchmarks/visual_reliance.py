"""Does a trained policy look at its images? Swap tests on a policy's own training (or any) dataset.

For the first frame of episodes of a LeRobot dataset (the arm at its start pose in every episode) the policy predicts
deterministic chunks (noise scale 0) three times: as recorded, with the camera images of another episode's first frame
(image swap: other objects, other places) and with another episode's instruction (instruction swap). A policy that
localises objects moves its chunk under an image swap about as much as the two demonstrations differ; one that
ignores its cameras barely moves. Translation figures are in metres, summed over the chunk's first `--steps` actions
(the part a rollout executes before re-planning), averaged over the frames. For a policy with a keypoint readout it
also scores the keypoints it replies against the dataset's `observation.keypoints` labels (same first frames).

    python benchmarks/visual_reliance.py --policy runs/demo/stage1/model --dataset runs/demo/data

Prints a table, then one JSON object (the same figures) as the very last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np


def _episodes(reader: Any, count: int) -> list[int]:
    """Up to `count` evenly spaced episodes; their first frames are used: the arm is at its start pose in every
    episode, so swapping images between them changes the scene (which objects, where) and not the phase."""
    n_ep = reader.num_episodes
    return [int(e) for e in np.unique(np.linspace(0, n_ep - 1, min(count, n_ep)).round().astype(int))]


def _displacement(actions: np.ndarray, steps: int) -> np.ndarray:
    """(H, 7) actions -> (3,) summed translation of the first `steps` actions."""
    return np.asarray(actions, dtype=np.float64)[:steps, :3].sum(axis=0)


def measure(policy_dir: str, dataset: str, frames: int = 48, steps: int = 4,
            center_crop_area: float | None = None) -> dict[str, Any]:
    """Swap-test figures of one policy on one dataset (see the module docstring)."""
    from instructvla.data.dataset import ACTION_KEY
    from instructvla.eval.replay import open_replay

    replay = open_replay(policy_dir, dataset, center_crop_area)
    reader = replay.reader
    episodes = _episodes(reader, frames)
    if len(episodes) < 2:
        raise ValueError(f"{dataset}: need at least 2 episodes for swap tests, found {reader.num_episodes}")
    actions = reader.column(ACTION_KEY)
    starts = [reader.episode_slice(ep).start for ep in episodes]
    # each first frame's camera images, decoded once and reused by every swap
    views = [replay.views(ep, 0) for ep in episodes]

    located: dict[tuple[int, int], np.ndarray] = {}  # (views, prompt) -> the policy's keypoints, when it has them

    def act(i_views: int, prompt: str, i_state: int, i_prompt: int) -> np.ndarray:
        reply = replay.infer(views[i_views], starts[i_state], prompt)
        if "keypoints" in reply:
            located[(i_views, i_prompt)] = np.asarray(reply["keypoints"], dtype=np.float64)
        return _displacement(reply["actions"], steps)

    demos = np.stack([_displacement(actions[row:reader.episode_slice(ep).stop], steps)
                      for ep, row in zip(episodes, starts, strict=True)])
    own, image_swap, instr_swap = [], [], []
    for i, ep in enumerate(episodes):
        j = (i + 1) % len(episodes)
        prompt, prompt_j = reader.episode_task(ep), reader.episode_task(episodes[j])
        own.append(act(i, prompt, i, i))
        image_swap.append(act(j, prompt, i, i))  # the other scene's cameras, this frame's state
        instr_swap.append(act(i, prompt_j, i, j))
    own_arr, img_arr, ins_arr = np.stack(own), np.stack(image_swap), np.stack(instr_swap)

    def mean_norm(x: np.ndarray) -> float:
        return float(np.linalg.norm(x, axis=-1).mean())

    demo_change = mean_norm(demos - np.roll(demos, -1, axis=0))
    keypoints = _keypoint_figures(reader, starts, located) if located else {}
    return {
        "policy": policy_dir, "dataset": dataset, "frames": len(episodes), "steps": steps,
        "demo_change_m": demo_change,
        "image_swap_change_m": mean_norm(own_arr - img_arr),
        "instruction_swap_change_m": mean_norm(own_arr - ins_arr),
        "image_share": mean_norm(own_arr - img_arr) / max(demo_change, 1e-9),
        "fit_error_m": mean_norm(own_arr - demos),
        "mean_action_error_m": mean_norm(demos - demos.mean(axis=0)),
        **keypoints,
    }


def _keypoint_figures(reader: Any, starts: list[int], located: dict[tuple[int, int], np.ndarray]) -> dict[str, Any]:
    """For a policy with a keypoint readout: its keypoint error against the dataset's labels (when it has them), the
    spread of those labels, and how far its keypoints move under the instruction swap; distances in image units
    ([-1, 1] across the frame), one figure per keypoint."""
    from instructvla.data.lerobot import KEYPOINTS_KEY

    n = len(starts)
    own = np.stack([located[(i, i)] for i in range(n)])
    swapped = np.stack([located[(i, (i + 1) % n)] for i in range(n)])
    out: dict[str, Any] = {"keypoint_instruction_swap_change": np.linalg.norm(own - swapped, axis=-1).mean(0).tolist()}
    if KEYPOINTS_KEY in reader.features:
        labels = np.asarray(reader.column(KEYPOINTS_KEY), dtype=np.float64)[starts].reshape(own.shape)
        out["keypoint_error"] = np.linalg.norm(own - labels, axis=-1).mean(0).tolist()
        out["keypoint_label_spread"] = np.linalg.norm(labels - labels.mean(0), axis=-1).mean(0).tolist()
        names = reader.features[KEYPOINTS_KEY].get("names") or []
        out["keypoint_names"] = [str(x).rsplit("_", 1)[0] for x in names[::2]][: own.shape[1]]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="a trained model folder (e.g. runs/demo/stage1/model)")
    ap.add_argument("--dataset", required=True, help="a LeRobot dataset folder (e.g. runs/demo/data)")
    ap.add_argument("--frames", type=int, default=48, help="episodes tested (their first frames)")
    ap.add_argument("--steps", type=int, default=4, help="actions of each chunk summed (the executed part)")
    ap.add_argument("--center-crop-area", type=float, default=None,
                    help="test-time crop (default: the policy's own, matching its training)")
    args = ap.parse_args(argv)
    if args.frames < 2 or args.steps < 1:
        ap.error("--frames must be >= 2 and --steps >= 1")
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    res = measure(args.policy, args.dataset, args.frames, args.steps, args.center_crop_area)
    rows = [
        ("demonstrations of the two frames differ by", res["demo_change_m"], "m"),
        ("policy chunk moves under an image swap", res["image_swap_change_m"], "m"),
        ("policy chunk moves under an instruction swap", res["instruction_swap_change_m"], "m"),
        ("image share (image swap / demo difference)", res["image_share"], ""),
        ("policy error vs the demonstration", res["fit_error_m"], "m"),
        ("error of always predicting the mean", res["mean_action_error_m"], "m"),
    ]
    print(f"visual reliance of {res['policy']} on {res['frames']} frames of {res['dataset']} "
          f"(first frames; translation of the first {res['steps']} actions)")
    for label, value, unit in rows:
        print(f"  {label:<48s} {value:8.4f} {unit}")
    if "keypoint_instruction_swap_change" in res:
        names = res.get("keypoint_names") or [f"keypoint {k}" for k in range(len(res["keypoint_instruction_swap_change"]))]
        print("  keypoints (image units, [-1, 1] across the frame):")
        print(f"    {'keypoint':<14s} {'error':>8s} {'label spread':>13s} {'instruction swap':>17s}")
        for k, name in enumerate(names):
            err = res.get("keypoint_error", [float("nan")] * len(names))[k]
            spread = res.get("keypoint_label_spread", [float("nan")] * len(names))[k]
            print(f"    {name:<14s} {err:8.4f} {spread:13.4f} {res['keypoint_instruction_swap_change'][k]:17.4f}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
