"""Collection throughput: episodes per minute with 1 and 2 workers (target: >= 1.7x), plus video codec encode speed.

Usage: python benchmarks/collect_speed.py [--episodes 24] [--camera-size 128] [--tasks pick/any place_on/any]
Prints a table and, as the last line, one JSON object with the same figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _codec_speed(frames: np.ndarray, fps: int) -> dict[str, float]:
    """Encode the same frames with each codec; frames per second (best of 2)."""
    from instructvla.data.lerobot import VideoConfig, _VideoWriter

    out = {}
    with tempfile.TemporaryDirectory() as d:
        for codec in ("h264", "av1"):
            best = float("inf")
            for rep in range(2):
                w = _VideoWriter(Path(d) / f"{codec}{rep}.mp4", fps, VideoConfig(codec=codec))
                t = time.perf_counter()
                w.write(frames)
                w.close()
                best = min(best, time.perf_counter() - t)
            out[codec] = len(frames) / best
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--camera-size", type=int, default=128)
    ap.add_argument("--tasks", nargs="+", default=["pick/any", "place_on/any"])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per worker count; the best is kept")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    logging.basicConfig(level=logging.WARNING)
    from instructvla.data.lerobot import LeRobotDatasetReader
    from instructvla.sim.collect import CollectConfig, collect

    runs: dict[int, list] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # interleaved, so a burst of load from other processes hits both
            for workers in (1, 2):
                cfg = CollectConfig(out=f"{tmp}/w{workers}", tasks=args.tasks, episodes=args.episodes,
                                    workers=workers, camera_size=args.camera_size, multimodal_samples=0,
                                    annotate=False, overwrite=True)
                runs[workers].append(collect(cfg))
        rows = {w: {"episodes_per_minute": max(r.episodes_per_minute for r in rs),
                    "steady_episodes_per_minute": max(r.steady_episodes_per_minute for r in rs),
                    "seconds": min(r.seconds for r in rs), "kept": rs[0].episodes_kept, "failures": rs[0].failures,
                    "frames": rs[0].frames} for w, rs in runs.items()}
        reader = LeRobotDatasetReader(f"{tmp}/w1")
        frames = reader.episode_frames(0, "observation.images.primary")
        frames = np.concatenate([frames] * max(1, 60 // len(frames)))
    codecs = _codec_speed(frames, reader.fps)
    speedup = rows[2]["episodes_per_minute"] / rows[1]["episodes_per_minute"]
    steady = rows[2]["steady_episodes_per_minute"] / rows[1]["steady_episodes_per_minute"]
    print(f"collect_speed: best of {args.repeats} interleaved runs of {args.episodes} episode attempts, "
          f"tasks {args.tasks}, {args.camera_size}px, 2 cameras, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other processes skew ratios)")
    print(f"{'workers':>8} {'episodes/min':>13} {'steady ep/min':>14} {'seconds':>8} {'kept':>5} {'failed':>7} "
          f"{'frames':>7}")
    for w, r in rows.items():
        print(f"{w:>8} {r['episodes_per_minute']:>13.1f} {r['steady_episodes_per_minute']:>14.1f} {r['seconds']:>8.1f} "
              f"{r['kept']:>5} {r['failures']:>7} {r['frames']:>7}")
    print(f"speed-up 2 vs 1 workers: {speedup:.2f}x end to end, {steady:.2f}x steady state (target >= 1.7x)")
    print(f"video encode at {args.camera_size}px (frames/s, one thread): "
          + ", ".join(f"{k} {v:.0f}" for k, v in codecs.items()) + f"  (h264/av1 = {codecs['h264'] / codecs['av1']:.1f}x)")
    print(json.dumps({"benchmark": "collect_speed", "episodes": args.episodes, "repeats": args.repeats, "camera_size": args.camera_size,
                      "tasks": args.tasks, "workers": {str(k): v for k, v in rows.items()}, "speedup_2_vs_1": speedup, "steady_speedup_2_vs_1": steady,
                      "encode_fps": codecs}))


if __name__ == "__main__":
    main()
