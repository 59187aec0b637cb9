"""How precise is a policy on the demonstrations' own states? Open-loop chunk error against held-out demonstrations.

Closed-loop failures come from two sources: a policy that is imprecise even where the demonstrations went, or one
that is precise there and drifts (compounding errors, states the demonstrations never visit). This benchmark measures
the first. For episodes of a LeRobot dataset (best: fresh demonstrations the policy never saw, e.g.
`instructvla collect --noise=0 --seed=777 ...`) it asks the policy for a deterministic chunk (noise scale 0) at
anchor frames: the first frame, and N steps before the demonstration first closes its gripper. It compares the
chunk's first `--steps` actions with the demonstration's:
  - displacement error: distance between the summed xy translation of the two (what open-loop execution of the chunk
    moves the gripper by, against where the demonstration went), metres; and its mean signed x / y components, a
    drift the policy shares across states (a constant offset, not noise);
  - close timing: steps between the chunk's first closing command and the demonstration's (anchors before a close);
  - close height: the chunk's summed z translation up to its close minus the demonstration's up to its own, metres.
Compare with `closed_loop_diagnostics.py`, which reports where the gripper really is when it closes in closed loop.

    python benchmarks/chunk_precision.py --policy runs/demo/stage1/model --dataset data/fresh

Prints a table, then one JSON object (the same figures) as the very last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

GRIP = 6  # gripper command column: 1 open, 0 closed


def first_close(actions: np.ndarray) -> int | None:
    """Index of the first closing command that follows an opening one in (T, 7) actions (None if there is none)."""
    closed = np.asarray(actions)[:, GRIP] < 0.5
    idx = np.flatnonzero(closed[1:] & ~closed[:-1])
    return int(idx[0]) + 1 if idx.size else None


def score_chunk(pred: np.ndarray, demo: np.ndarray, steps: int) -> dict[str, float | None]:
    """Figures of one predicted chunk (H, 7) against the demonstration's next actions (>= 1, 7), both unnormalised.

    Only the first min(steps, H, len(demo)) actions count. close_* are None unless the demonstration closes the
    gripper within them (close timing) and the chunk does too (close height)."""
    n = min(steps, len(pred), len(demo))
    if n < 1:
        raise ValueError("score_chunk needs at least one action on each side")
    p, d = np.asarray(pred, np.float64)[:n], np.asarray(demo, np.float64)[:n]
    out: dict[str, float | None] = {
        "displacement_error_m": float(np.linalg.norm(p[:, :2].sum(0) - d[:, :2].sum(0))),
        "displacement_dx_m": float(p[:, 0].sum() - d[:, 0].sum()),
        "displacement_dy_m": float(p[:, 1].sum() - d[:, 1].sum()),
        "close_step_error": None, "close_height_error_m": None,
    }
    d_closed = np.flatnonzero(d[:, GRIP] < 0.5)
    if d_closed.size:
        dc = int(d_closed[0])
        p_closed = np.flatnonzero(p[:, GRIP] < 0.5)
        pc = int(p_closed[0]) if p_closed.size else n  # never closes within the window: at least n - dc late
        out["close_step_error"] = float(pc - dc)
        if p_closed.size:
            out["close_height_error_m"] = float(p[:pc, 2].sum() - d[:dc, 2].sum())
    return out


def _summary(rows: list[dict[str, float | None]]) -> dict[str, Any]:
    def stat(key: str, fn) -> float | None:
        vals = [r[key] for r in rows if r[key] is not None]
        return float(fn(vals)) if vals else None

    return {
        "frames": len(rows),
        "displacement_error_m_mean": stat("displacement_error_m", np.mean),
        "displacement_error_m_median": stat("displacement_error_m", np.median),
        "displacement_bias_x_m": stat("displacement_dx_m", np.mean),
        "displacement_bias_y_m": stat("displacement_dy_m", np.mean),
        "close_step_error_mean_abs": stat("close_step_error", lambda v: np.mean(np.abs(v))),
        "close_step_error_mean": stat("close_step_error", np.mean),
        "close_height_error_m_median": stat("close_height_error_m", np.median),
    }


def measure(policy_dir: str, dataset: str, episodes: int = 100, before: tuple[int, ...] = (3, 6, 12),
            steps: int = 12, center_crop_area: float | None = None) -> dict[str, Any]:
    """Figures per anchor ("start", "close-N") of one policy on one dataset (see the module docstring)."""
    from instructvla.data.dataset import ACTION_KEY
    from instructvla.eval.replay import open_replay

    replay = open_replay(policy_dir, dataset, center_crop_area)
    reader = replay.reader
    actions = np.asarray(reader.column(ACTION_KEY), np.float64)
    anchors: dict[str, list[dict[str, float | None]]] = {"start": [], **{f"close-{n}": [] for n in before}}
    for ep in range(min(episodes, reader.num_episodes)):
        sl = reader.episode_slice(ep)
        ep_actions = actions[sl]
        frames = {"start": 0}
        close = first_close(ep_actions)
        if close is not None:
            frames |= {f"close-{n}": close - n for n in before if close - n >= 0}
        for name, fi in frames.items():
            reply = replay.infer(replay.views(ep, fi), sl.start + fi, reader.episode_task(ep))
            anchors[name].append(score_chunk(reply["actions"], ep_actions[fi:], steps))
    return {"policy": policy_dir, "dataset": dataset, "steps": steps,
            "anchors": {name: _summary(rows) for name, rows in anchors.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="a trained model folder (e.g. runs/demo/stage1/model)")
    ap.add_argument("--dataset", required=True, help="a LeRobot dataset folder (best: demonstrations not trained on)")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--before", default="3,6,12", help="anchors: steps before the demonstration's first close")
    ap.add_argument("--steps", type=int, default=12, help="actions of each chunk compared (the executed part)")
    ap.add_argument("--center-crop-area", type=float, default=None,
                    help="test-time crop (default: the policy's own, matching its training)")
    args = ap.parse_args(argv)
    before = tuple(int(x) for x in args.before.split(",") if x.strip())
    if args.episodes < 1 or args.steps < 1 or any(n < 1 for n in before):
        ap.error("--episodes, --steps and every --before entry must be >= 1")
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    res = measure(args.policy, args.dataset, args.episodes, before, args.steps, args.center_crop_area)

    def fmt(v: float | None, scale: float = 1.0, unit: str = "") -> str:
        return "-" if v is None else f"{v * scale:.2f}{unit}"

    print(f"chunk precision on demonstration states: {args.policy} on {args.dataset}, first {args.steps} actions")
    print(f"{'anchor':10} {'frames':>6} {'xy err mean':>12} {'median':>8} {'bias x':>8} {'bias y':>8} "
          f"{'close |dt|':>10} {'close dt':>9} {'close dz med':>13}")
    for name, s in res["anchors"].items():
        print(f"{name:10} {s['frames']:>6} {fmt(s['displacement_error_m_mean'], 100, ' cm'):>12} "
              f"{fmt(s['displacement_error_m_median'], 100, ' cm'):>8} "
              f"{fmt(s['displacement_bias_x_m'], 100, ' cm'):>8} {fmt(s['displacement_bias_y_m'], 100, ' cm'):>8} "
              f"{fmt(s['close_step_error_mean_abs']):>10} "
              f"{fmt(s['close_step_error_mean']):>9} {fmt(s['close_height_error_m_median'], 100, ' cm'):>13}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
