"""Tabletop simulator benchmark: control steps/s (2 cameras, 128 and 224 px, one process) and expert success per family.

Usage: python benchmarks/sim_speed.py [--seeds 20] [--steps 150] [--sizes 128 224] [--families pick place_on ...]
Prints a table, then one JSON line with the same figures (last line). Speeds are wall-clock on this machine in one
process with LP_NUM_THREADS=1; on a shared machine compare only ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("LP_NUM_THREADS", "1")  # llvmpipe threads: one core per process
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from instructvla.sim.env import make_env  # noqa: E402
from instructvla.sim.experts import make_expert  # noqa: E402
from instructvla.sim.tasks import FAMILIES  # noqa: E402


def measure_control_speed(camera_size: int | None, steps: int, task: str = "place_on/any") -> dict:
    """Expert-driven control steps per second; camera_size None = no rendering (physics + IK only)."""
    env = make_env(task, camera_size=camera_size or 64, render=camera_size is not None)
    expert = make_expert(env)
    seed = 0
    obs, _ = env.reset(seed=seed)
    expert.reset(seed=seed)
    done, t_step, c_step = 0, 0.0, 0.0
    while done < steps:
        a = expert.act(obs)
        t0, c0 = time.perf_counter(), time.process_time()
        obs, _, term, trunc, _ = env.step(a)
        t_step += time.perf_counter() - t0
        c_step += time.process_time() - c0
        done += 1
        if term or trunc:
            seed += 1
            obs, _ = env.reset(seed=seed)
            expert.reset(seed=seed)
    t0 = time.perf_counter()
    for s in range(3):
        env.reset(seed=100 + s)
    t_reset = (time.perf_counter() - t0) / 3
    env.close()
    return {
        "steps_per_s": steps / t_step,
        "steps_per_cpu_s": steps / c_step,  # per second of this process's CPU time: ~ a dedicated core
        "ms_per_step": 1000 * t_step / steps,
        "ms_per_reset": 1000 * t_reset,
    }


def measure_expert_success(family: str, seeds: int, noise_prob: float = 0.0) -> dict:
    """Success rate and mean episode length of the scripted expert on `<family>/any` over `seeds` seeds."""
    env = make_env(f"{family}/any", render=False)
    expert = make_expert(env, noise_prob=noise_prob, seed=0)
    ok, lengths, failed = 0, [], []
    for seed in range(seeds):
        obs, info = env.reset(seed=seed)
        expert.reset(seed=seed)
        while True:
            obs, _, term, trunc, info = env.step(expert.act(obs))
            if term or trunc:
                break
        ok += bool(info["success"])
        lengths.append(info["step"])
        if not info["success"]:
            failed.append(seed)
    env.close()
    return {"success": ok / seeds, "n": seeds, "mean_steps": float(np.mean(lengths)), "failed_seeds": failed}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20, help="expert episodes per family")
    p.add_argument("--steps", type=int, default=150, help="control steps per speed measurement")
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[128, 224], help="camera sizes (px) for the speed test"
    )
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--noise", type=float, default=0.0, help="expert noise_prob for the success measurement")
    args = p.parse_args(argv)

    speed = {"no_render": measure_control_speed(None, args.steps)}
    for size in args.sizes:
        speed[f"{size}px_2cams"] = measure_control_speed(size, args.steps)
    print(f"{'setting':<16} {'steps/s':>9} {'steps/cpu-s':>12} {'ms/step':>9} {'ms/reset':>9}")
    for k, v in speed.items():
        print(
            f"{k:<16} {v['steps_per_s']:>9.1f} {v['steps_per_cpu_s']:>12.1f} {v['ms_per_step']:>9.2f}"
            f" {v['ms_per_reset']:>9.1f}"
        )

    success = {fam: measure_expert_success(fam, args.seeds, args.noise) for fam in args.families}
    print()
    print(f"{'family':<20} {'success':>8} {'n':>4} {'mean steps':>11}  failed seeds")
    for fam, r in success.items():
        print(f"{fam:<20} {r['success']:>8.2f} {r['n']:>4} {r['mean_steps']:>11.1f}  {r['failed_seeds']}")
    result = {
        "control_speed": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in speed.items()},
        "expert_success": success,
        "expert_noise_prob": args.noise,
        "lp_num_threads": os.environ.get("LP_NUM_THREADS"),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
