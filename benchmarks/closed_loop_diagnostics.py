"""Why do closed-loop episodes fail? Reach, grasp and keypoint figures of a policy's rollouts, per task.

For every episode of the chosen atomic-suite tasks (the demo's evaluation settings: open-loop first-k chunks,
deterministic flow, the eval's centre crop) it records from the simulator's privileged state:
  - success, and whether the instructed object was ever grasped;
  - the closest the gripper's centre came to the object in the horizontal plane before the gripper first closed;
  - where the gripper was, relative to the object, when it first closed (horizontal distance, also split along and
    across the fingers' closing axis; height above the object's centre);
  - for a policy with a keypoint readout, the L1 error of its target keypoint against the simulator's projection;
  - after the grasp: how high the object was ever lifted, whether it is still held at the end, and (tasks with a
    destination object or fixture) how far its centre ended from the destination's, horizontally;
  - how many times the gripper was closed: a second close is a retry (after a miss or a drop).
`--oracle-keypoints` feeds the simulator's keypoints to the action expert instead of its own readout's (the same
override teacher forcing uses in training), which separates "where is the object" errors from control errors.

    python benchmarks/closed_loop_diagnostics.py --policy runs/demo/stage1/model --episodes 8
    python benchmarks/closed_loop_diagnostics.py --policy runs/demo/stage1/model --oracle-keypoints

Prints one row per episode, a per-task summary table, then one JSON object (the summary) as the very last line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import numpy as np

DEFAULT_TASKS = ("atomic/pick_any", "atomic/place_on_plate", "atomic/move_near")


def _oracle_hook(policy: Any) -> dict[str, Any]:
    """Make the policy's action expert read the simulator keypoints put in the returned dict's "uv" entry
    (full-frame coordinates) instead of its readout's."""
    import torch

    ae = policy.model.action_expert
    if ae.keypoint_readout is None:
        raise ValueError("--oracle-keypoints needs a policy whose action expert has a keypoint readout")
    current: dict[str, Any] = {"uv": None}
    encode = ae.encode_prefix
    scale = ae.cfg.center_crop_ratio * math.sqrt(policy.crop_area)  # full frame -> the expert's crop

    def encode_with_oracle(latents, images, state=None, keypoints_override=None):
        uv = torch.as_tensor(np.asarray(current["uv"], dtype=np.float32).reshape(1, -1, 2) / scale)
        return encode(latents, images, state, uv.expand(latents.shape[0], -1, -1).to(latents.device, latents.dtype))

    ae.encode_prefix = encode_with_oracle
    return current


def run_episode(policy: Any, env: Any, seed: int, open_loop_k: int, oracle: dict[str, Any] | None) -> dict[str, Any]:
    """One rollout with privileged bookkeeping (see the module docstring)."""
    from instructvla.eval.rollout import PolicyDriver
    from instructvla.sim.catalog import CATALOG
    from instructvla.sim.experts import grasp_height
    from instructvla.sim.objects import object_half_height

    base = env.unwrapped
    obs, info = env.reset(seed=int(seed))
    instruction = str(info["instruction"])
    scene, task = base.scene, base.task
    target = task.args["target"]
    start = scene.object_pos(target)
    start_z = float(start[2])
    grasp_z = grasp_height(target, start, start_z - object_half_height(CATALOG[target]) - 0.002)
    lifted = 0.0
    driver = PolicyDriver(policy, instruction, seed, open_loop_k)
    min_dxy, first_close, grasped, kp_err = math.inf, None, False, []
    success, closes, was_open = False, 0, True
    dest_kp_err, release_dest_dxy = [], None
    for step in range(base.max_steps):
        truth = None
        if driver.needs_inference:
            truth = np.asarray(base.keypoints(), dtype=np.float64).reshape(-1, 2)
            if oracle is not None:
                oracle["uv"] = truth
        action, out = driver.act(obs)
        if out is not None and out.get("keypoints") is not None and np.isfinite(truth[0]).all():
            kp_err.append(float(np.abs(np.asarray(out["keypoints"])[0] - truth[0]).mean()))
            if "destination" in task.args and np.isfinite(truth[1]).all():
                dest_kp_err.append(float(np.abs(np.asarray(out["keypoints"])[1] - truth[1]).mean()))
        if (release_dest_dxy is None and "destination" in task.args and not was_open and action[6] >= 0.5
                and scene.is_grasped(target)):  # first opening while holding the target: where it is let go
            held_at, dest_at, _ = base.task_points()
            release_dest_dxy = 100 * float(np.hypot(*(held_at[:2] - dest_at[:2])))
        tcp, tcp_mat = scene.tcp_pose()
        obj = scene.object_pos(target)
        dxy = float(np.hypot(*(tcp[:2] - obj[:2])))
        closes += int(was_open and action[6] < 0.5)
        was_open = action[6] >= 0.5
        if first_close is None:
            min_dxy = min(min_dxy, dxy)
            if action[6] < 0.5:
                first_close = {"step": step, "dxy_cm": 100 * dxy, "dz_cm": 100 * float(tcp[2] - obj[2]),
                               "above_grasp_cm": 100 * float(tcp[2] - grasp_z), "moving_down_cm": -100 * float(action[2]),
                               "dx_cm": 100 * float(tcp[0] - obj[0]), "dy_cm": 100 * float(tcp[1] - obj[1]),
                               "object_xy": [float(obj[0]), float(obj[1])],
                               **_along_across_closing_axis(tcp[:2] - obj[:2], tcp_mat)}
        obs, _, terminated, truncated, info = env.step(action)
        grasped = grasped or bool(scene.is_grasped(target))
        lifted = max(lifted, float(scene.object_pos(target)[2]) - start_z)
        success = success or bool(info.get("success"))
        if success or terminated or truncated:
            break
    end_dest_dxy = None
    if "destination" in task.args:
        target_end, dest_end, _ = base.task_points()  # world centres, plate / bowl fixtures included
        end_dest_dxy = 100 * float(np.hypot(*(target_end[:2] - dest_end[:2])))
    return {"seed": int(seed), "instruction": instruction, "target": target, "success": success, "grasped": grasped,
            "steps": step + 1, "min_dxy_cm": 100 * min_dxy, "first_close": first_close,
            "target_kp_err": float(np.mean(kp_err)) if kp_err else None, "lifted_cm": 100 * lifted,
            "held_at_end": bool(scene.is_grasped(target)), "end_dest_dxy_cm": end_dest_dxy, "closes": closes,
            "dest_kp_err": float(np.mean(dest_kp_err)) if dest_kp_err else None, "release_dest_dxy_cm": release_dest_dxy}


def _along_across_closing_axis(offset_xy: np.ndarray, tcp_mat: np.ndarray) -> dict[str, float]:
    """|offset| (cm) along the fingers' closing axis (the hand's y axis, in the table plane) and across it."""
    axis = tcp_mat[:2, 1] / max(float(np.linalg.norm(tcp_mat[:2, 1])), 1e-9)
    along = float(offset_xy @ axis)
    return {"along_axis_cm": 100 * abs(along), "across_axis_cm": 100 * float(np.linalg.norm(offset_xy - along * axis))}


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def summarise(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-task figures from `run_episode` rows."""
    closes = [e["first_close"] for e in episodes if e["first_close"] is not None]
    kps = [e["target_kp_err"] for e in episodes if e["target_kp_err"] is not None]
    return {
        "episodes": len(episodes),
        "success_rate": float(np.mean([e["success"] for e in episodes])) if episodes else None,
        "grasp_rate": float(np.mean([e["grasped"] for e in episodes])) if episodes else None,
        "median_min_dxy_cm": _median([e["min_dxy_cm"] for e in episodes]),
        "reached_within_2cm": float(np.mean([e["min_dxy_cm"] <= 2.0 for e in episodes])) if episodes else None,
        "closed_rate": len(closes) / len(episodes) if episodes else None,
        "median_close_dxy_cm": _median([c["dxy_cm"] for c in closes]),
        "median_close_along_axis_cm": _median([c["along_axis_cm"] for c in closes]),
        "median_close_across_axis_cm": _median([c["across_axis_cm"] for c in closes]),
        "median_close_dz_cm": _median([c["dz_cm"] for c in closes]),
        "median_close_above_grasp_cm": _median([c["above_grasp_cm"] for c in closes]),
        "median_close_step": _median([float(c["step"]) for c in closes]),
        "target_kp_err": float(np.mean(kps)) if kps else None,
        "grasped_then_failed": sum(e["grasped"] and not e["success"] for e in episodes),
        "median_end_dest_dxy_cm": _median([e["end_dest_dxy_cm"] for e in episodes
                                           if e.get("end_dest_dxy_cm") is not None]),
        "dest_kp_err": _median([e["dest_kp_err"] for e in episodes if e.get("dest_kp_err") is not None]),
        "released": sum(e.get("release_dest_dxy_cm") is not None for e in episodes),
        "median_release_dest_dxy_cm": _median([e["release_dest_dxy_cm"] for e in episodes
                                               if e.get("release_dest_dxy_cm") is not None]),
        "retried": sum(e["closes"] >= 2 for e in episodes),
        "retried_success": sum(e["closes"] >= 2 and e["success"] for e in episodes),
    }


def measure(policy_dir: str, tasks: list[str], episodes: int = 8, seed: int = 1000, camera_size: int | None = None,
            open_loop_k: int = 4, noise_scale: float = 0.0, center_crop_area: float | None = None,
            oracle_keypoints: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Diagnostics of `policy_dir` on atomic-suite `tasks` (episode seeds as `instructvla eval`'s)."""
    from instructvla.policy import Policy, PolicyConfig
    from instructvla.sim.suites import episode_seeds, get_suite, make_task_env

    policy = Policy.from_pretrained(policy_dir, PolicyConfig(ensemble=False, noise_scale=noise_scale,
                                                             center_crop_area=center_crop_area))
    oracle = _oracle_hook(policy) if oracle_keypoints else None
    camera_size = camera_size or int(policy.model.config.image_size)  # render at the side the policy was trained on
    suite = {t.task_id: t for t in get_suite("atomic", num_episodes=episodes, seeds=(seed,))}
    unknown = [t for t in tasks if t not in suite]
    if unknown:
        raise ValueError(f"unknown atomic task(s) {unknown} (have {sorted(suite)})")
    cameras = ("primary", "wrist") if policy.request_spec.wrist_camera else ("primary",)
    rows: dict[str, list[dict[str, Any]]] = {}
    for task_id in tasks:
        task = suite[task_id]
        env = make_task_env(task, camera_size=camera_size, cameras=cameras)
        try:
            for s in episode_seeds(task):
                row = run_episode(policy, env, s, open_loop_k, oracle)
                rows.setdefault(task_id, []).append(row)
                if verbose:
                    fc = row["first_close"]
                    close = "never" if fc is None else (f"step {fc['step']}: {fc['dxy_cm']:.1f} cm off, "
                                                        f"{fc['dz_cm']:+.1f} cm above ({fc['above_grasp_cm']:+.1f} "
                                                        f"over the expert's grasp, {fc['moving_down_cm']:+.1f} down)")
                    kp = "-" if row["target_kp_err"] is None else f"{row['target_kp_err']:.2f}"
                    dest = "" if row["end_dest_dxy_cm"] is None else f", ends {row['end_dest_dxy_cm']:.1f} cm from dest"
                    if row["release_dest_dxy_cm"] is not None:
                        dest += f", let go {row['release_dest_dxy_cm']:.1f} cm from it"
                    if row["dest_kp_err"] is not None:
                        dest += f", dest kp err {row['dest_kp_err']:.2f}"
                    print(f"{task_id:24} {row['instruction'][:34]:34} success={int(row['success'])} "
                          f"grasped={int(row['grasped'])} closest {row['min_dxy_cm']:5.1f} cm, closed at {close}; "
                          f"kp err {kp}; lifted {row['lifted_cm']:.1f} cm, held at end={int(row['held_at_end'])}{dest}; "
                          f"closes {row['closes']}",
                          flush=True)
        finally:
            env.close()
    return {"policy": policy_dir, "oracle_keypoints": oracle_keypoints, "episodes_per_task": episodes,
            "tasks": {t: summarise(r) for t, r in rows.items()}, "episodes": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="policy (model) directory")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma list of atomic-suite task ids")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1000, help="evaluation seed (the demo evaluates with seed + 1000)")
    ap.add_argument("--camera-size", type=int, default=None, help="default: the policy's image size")
    ap.add_argument("--open-loop-k", type=int, default=12, help="actions executed per chunk (the quick demo's 12)")
    ap.add_argument("--noise-scale", type=float, default=0.0)
    ap.add_argument("--center-crop-area", type=float, default=None,
                    help="test-time crop (default: the policy's own, matching its training)")
    ap.add_argument("--oracle-keypoints", action="store_true", help="feed the simulator's keypoints to the expert")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    res = measure(args.policy, [t for t in args.tasks.split(",") if t], args.episodes, args.seed, args.camera_size,
                  args.open_loop_k, args.noise_scale, args.center_crop_area, args.oracle_keypoints)
    from rich.console import Console
    from rich.table import Table

    cols = ("success_rate", "grasp_rate", "reached_within_2cm", "median_min_dxy_cm", "closed_rate",
            "median_close_step", "median_close_dxy_cm", "median_close_along_axis_cm",
            "median_close_across_axis_cm", "median_close_dz_cm", "target_kp_err", "retried")
    table = Table(title=f"closed-loop diagnostics{' (oracle keypoints)' if args.oracle_keypoints else ''}: "
                        f"{args.policy}")
    table.add_column("task")
    for c in cols:
        table.add_column(c.replace("_", " "), justify="right")
    for task_id, s in res["tasks"].items():
        table.add_row(task_id, *("-" if s[c] is None else f"{s[c]:.2f}" for c in cols))
    Console().print(table)
    summary = {k: v for k, v in res.items() if k != "episodes"}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
