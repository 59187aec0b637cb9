"""One DAgger round on a trained Expert: does training on corrections from its own states beat training as long on the
demonstrations alone?

From a stage-1 run folder (`model/` and `train_config.json`, as `instructvla train` and the demo write them):
  1. corrections: the Expert drives `--episodes` episodes of `--suite` (open loop, `--open-loop-k` actions per chunk)
     to a step drawn from [--first-step, --last-step], then the scripted expert takes over and only its part is
     recorded (`instructvla collect --dagger.policy`);
  2. two continuations of the Expert with the run's own training settings, `--minutes` (or `--steps`) each: on its
     own training data (the control: the demonstrations, and for a later round the corrections it was trained on)
     and on that data plus the new corrections (DAgger aggregates: run it again on `<out>/corrected` for round 2);
  3. closed-loop success of the Expert, the control and the corrected Expert on `--tasks` (closed_loop_diagnostics.py,
     the demo's evaluation settings, `--eval-episodes` per task).

    python benchmarks/dagger_round.py --run runs/demo/stage1 --out runs/dagger --minutes 5

Prints a table and, as its very last line, one JSON object with the same figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import closed_loop_diagnostics as cld  # noqa: E402

STEP_CAP = 10**9  # --minutes alone bounds the continuations


def _camera_setup(views: int, dataset: str) -> tuple[int, list[str]]:
    """(camera size, cameras) of the run's dataset that an Expert reading `views` cameras takes."""
    from instructvla.data.dataset import primary_first
    from instructvla.data.lerobot import LeRobotDatasetReader

    reader = LeRobotDatasetReader(dataset)
    keys = primary_first(reader.camera_keys)
    if len(keys) < views:
        raise ValueError(f"{dataset}: the Expert reads {views} cameras, the dataset has {keys}")
    return int(reader.features[keys[0]]["shape"][0]), [k.rsplit(".", 1)[-1] for k in keys[:views]]


def run_round(run: str, out: str, minutes: float | None = 5.0, steps: int | None = None, episodes: int = 900,
              suite: str = "atomic-quick", first_step: int = 12, last_step: int = 16, open_loop_k: int = 12,
              eval_episodes: int = 24, tasks: tuple[str, ...] = cld.DEFAULT_TASKS, workers: int = 2,
              seed: int = 1, eval_seed: int = 1000) -> dict[str, Any]:
    """Collect corrections, train the control and the corrected Expert, evaluate all three (see the docstring)."""
    from instructvla.sim.collect import CollectConfig, DaggerConfig, collect
    from instructvla.train.config import TrainConfig
    from instructvla.train.trainer import train

    run_dir, out_dir = Path(run), Path(out)
    model = run_dir / "model"
    saved = json.loads((run_dir / "train_config.json").read_text())
    base = TrainConfig.from_dict(saved)
    if base.stage != 1:
        raise ValueError(f"{run}: a stage-1 run is needed, this one is stage {base.stage}")
    dagger = DaggerConfig(policy=str(model), first_step=first_step, last_step=last_step, open_loop_k=open_loop_k)
    camera_size, cameras = _camera_setup(dagger.policy_views(), base.dataset)
    res = collect(CollectConfig(
        out=str(out_dir / "corrections"), suite=suite, episodes=episodes, workers=workers, camera_size=camera_size,
        cameras=cameras, seed=seed, multimodal_samples=0, overwrite=True, dagger=dagger,
    ))
    trained: dict[str, dict[str, Any]] = {}
    earlier = list(saved.get("extra_datasets") or [])  # a later round keeps the corrections it was trained on
    for name, extra in (("control", earlier), ("corrected", [*earlier, res.out])):
        cfg = dict(saved, init=str(model), out=str(out_dir / name), extra_datasets=list(extra), resume=False,
                   save_every=0, progress="never", steps=steps or STEP_CAP,
                   time_limit_s=None if minutes is None else minutes * 60.0)
        summary = train(TrainConfig.from_dict(cfg))
        trained[name] = {"model": summary["final_dir"], "steps": summary["step"]}
    success: dict[str, dict[str, float]] = {}
    for name, model_dir in (("expert", str(model)), *((k, v["model"]) for k, v in trained.items())):
        m = cld.measure(model_dir, list(tasks), episodes=eval_episodes, seed=eval_seed, camera_size=camera_size,
                        open_loop_k=open_loop_k, verbose=False)
        success[name] = {t: s["success_rate"] for t, s in m["tasks"].items()}
    return {
        "run": run, "minutes": minutes, "eval_episodes_per_task": eval_episodes, "eval_seed": eval_seed,
        "open_loop_k": open_loop_k, "earlier_corrections": earlier,
        "takeover_steps": [first_step, last_step],
        "corrections": {"attempts": res.attempts, "kept": res.episodes_kept, "frames": res.frames,
                        "failed": res.failures, "policy_finished": res.policy_finished,
                        "seconds": round(res.seconds, 1)},
        "steps": {k: v["steps"] for k, v in trained.items()},
        "success": success,
        "successes": {k: round(sum(v.values()) * eval_episodes) for k, v in success.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a stage-1 run folder (model/ and train_config.json)")
    ap.add_argument("--out", required=True, help="output folder: corrections/, control/, corrected/")
    ap.add_argument("--minutes", type=float, default=5.0, help="time of each continuation (0 = bounded by --steps)")
    ap.add_argument("--steps", type=int, default=None, help="step cap of each continuation")
    ap.add_argument("--episodes", type=int, default=900, help="correction episodes attempted")
    ap.add_argument("--suite", default="atomic-quick", help="tasks the corrections are collected on")
    ap.add_argument("--first-step", type=int, default=12)
    ap.add_argument("--last-step", type=int, default=16)
    ap.add_argument("--open-loop-k", type=int, default=12, help="actions executed per chunk (the quick demo's 12)")
    ap.add_argument("--eval-episodes", type=int, default=24, help="closed-loop episodes per task")
    ap.add_argument("--eval-seed", type=int, default=1000, help="evaluation seed (the demo evaluates with seed + 1000)")
    ap.add_argument("--tasks", default=",".join(cld.DEFAULT_TASKS), help="comma list of atomic-suite task ids")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1, help="collection seed (not the demonstrations' own)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.minutes == 0 and args.steps is None:
        ap.error("--minutes 0 needs --steps")
    import torch

    torch.set_num_threads(args.threads)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    res = run_round(args.run, args.out, args.minutes or None, args.steps, args.episodes, args.suite, args.first_step,
                    args.last_step, args.open_loop_k, args.eval_episodes, tasks, args.workers, args.seed,
                    args.eval_seed)
    from rich.console import Console
    from rich.table import Table

    c = res["corrections"]
    table = Table(title=f"one DAgger round on {args.run}: {c['kept']} corrections kept of {c['attempts']} "
                        f"({c['frames']} frames), take-over at steps {args.first_step}-{args.last_step}")
    table.add_column("model")
    table.add_column("steps", justify="right")
    for t in tasks:
        table.add_column(t.rsplit("/", 1)[-1], justify="right")
    table.add_column(f"successes of {len(tasks) * args.eval_episodes}", justify="right")
    for name, rates in res["success"].items():
        table.add_row(name, str(res["steps"].get(name, "-")), *(f"{rates[t]:.2f}" for t in tasks),
                      str(res["successes"][name]))
    Console().print(table)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
