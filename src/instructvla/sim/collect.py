"""`instructvla collect`: scripted-expert demonstrations in parallel -> a LeRobot v3.0 dataset + VLA-IT + multimodal.

Output directory:
    LeRobot v3.0 dataset (see data/lerobot.py) with features observation.images.{primary,wrist} (video),
    observation.state (8), action (7, the expert's clean action), language_motion (string: the per-frame move
    primitive from the state trajectory, data/motion.py), observation.keypoints (6, with `keypoints`: target,
    destination and gripper (u, v) in the primary camera, TabletopEnv.keypoints); the task string is the episode's
    instruction.
    meta/vla_it.jsonl   one VLA-IT record per episode at frame 0 (caption, QA, command rewriting, context creation)
                        from the first frame's scene graph.
    multimodal/         rendered scenes + caption/VQA records (split "train" or "heldout"; data/multimodal.py).

With `dagger.policy` set, each episode is DAgger-style correction data instead of a plain demonstration: a saved
policy drives the episode from its start (open loop, as in evaluation) to a random step, then the scripted expert
takes over from the state the policy reached (`Expert.take_over`) and only the expert's part is recorded. These are
the states a policy visits in closed loop and the demonstrations never do (a gripper beside the object mid-descent,
closed on nothing), labelled with the actions that recover from them.

With `regrasp` > 0, that share of the pick-based episodes (pick, place_on, place_in, move_near, stack) is recovery
data of the same kind without a policy: the expert first misses the grasp on purpose (`missed_grasp_prefix`: aimed
2-5 cm beside the object, closed, then carried on for up to 16 steps), and only what follows is recorded: reopen,
realign, grasp again, finish. A policy that closes beside the object otherwise never sees an empty closed gripper in
its data, and carries on as if it held the object.

Episodes are attempted in a fixed order with seeds derived from (seed, attempt); workers run them in parallel
(spawn, LP_NUM_THREADS=1 each) and also encode each kept episode's videos; the parent only stream-copies those mp4s
into the dataset's video files and writes the tables, in attempt order, so the dataset does not depend on the number
of workers. Only successful episodes are kept; the failure count is reported.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_CAMERA_KEYS = {"primary": "image", "wrist": "wrist_image"}


@dataclass
class DaggerConfig:
    """Policy-driven prefixes for correction data (off when `policy` is None).

    policy:            a saved model folder (stage 1 or 2) that drives each episode before the expert takes over.
    first_step / last_step: the take-over step is drawn uniformly from [first_step, last_step]; episodes the policy
                       ends before it (success or step limit) record nothing and count as `policy_finished`.
    open_loop_k:       actions of each chunk the policy executes before it is queried again (as in evaluation).
    noise_scale:       the policy's flow-matching starting noise (0 = deterministic chunks, as the quick demo evaluates).
    center_crop_area:  the policy's test-time center crop (None: the one the policy was trained for).
    """

    policy: str | None = None
    first_step: int = 8
    last_step: int = 60
    open_loop_k: int = 12
    noise_scale: float = 0.0
    center_crop_area: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.first_step <= self.last_step:
            raise ValueError(f"DaggerConfig: need 0 <= first_step <= last_step, got {self.first_step}, "
                             f"{self.last_step}")
        if self.open_loop_k < 1:
            raise ValueError(f"DaggerConfig.open_loop_k must be >= 1, got {self.open_loop_k}")
        if self.noise_scale < 0:
            raise ValueError(f"DaggerConfig.noise_scale must be >= 0, got {self.noise_scale}")
        if self.center_crop_area is not None and not 0.0 < self.center_crop_area <= 1.0:
            raise ValueError(f"DaggerConfig.center_crop_area must be in (0, 1], got {self.center_crop_area}")
        if self.policy is not None and not (Path(self.policy) / "config.json").is_file():
            raise ValueError(f"DaggerConfig.policy: {self.policy} is not a saved model folder (no config.json)")

    def policy_views(self) -> int:
        """Camera views the policy reads (primary, then wrist)."""
        import json

        config = json.loads((Path(self.policy) / "config.json").read_text())
        return int(config.get("_action_expert_config", {}).get("num_views", 1))


@dataclass
class CollectConfig:
    """Collect scripted demonstrations.

    out:                 output dataset directory.
    suite:               a task group from sim/suites.py ("atomic", "atomic-quick", "instruct", "instruct-quick");
                         ignored when `tasks` is given. Instruct-suite tasks are collected with atomic instructions.
    tasks:               registered simulator task names (e.g. pick/any place_on/any); see `instructvla tasks`.
    episodes:            episode attempts in total (round-robin over the tasks); failures are dropped.
    family_weights:      relative share of episode attempts per task family (e.g. {"open_drawer": 0.4}); families
                         not named weigh 1. Tasks are then interleaved by smooth weighted round-robin.
    workers:             parallel worker processes (0 = run in this process, for debugging).
    camera_size:         square camera resolution in pixels.
    cameras:             cameras to record ("primary", "wrist").
    fps:                 dataset frame rate; must equal the simulator's control rate (None = use it).
    seed:                base seed; episode i uses seed (seed, i).
    noise:               fraction of the expert's free-space moves perturbed (the clean action is recorded).
    codec:               video codec: "h264" (fast, default), "av1" (LeRobot's default).
    multimodal_samples:  scenes rendered for the multimodal corpus (0 = none).
    heldout_fraction:    share of multimodal scenes in the "heldout" split (held-out question wording too).
    annotate:            write meta/vla_it.jsonl.
    keypoints:           record observation.keypoints (6 floats per frame: target, destination and gripper image
                         points (u, v) in the primary camera, u/v in [-1, 1] over the image, v down, not clipped),
                         and observation.object_keypoints / observation.object_visible (every catalogue object's and
                         fixture's (u, v) there, and whether it is in the scene: dense grounding labels).
    overwrite:           replace an existing output directory.
    dagger:              policy-driven prefixes: correction data instead of demonstrations (see DaggerConfig).
    regrasp:             share of pick-based episodes recorded from a deliberately missed grasp onward (recovery
                         data, see the module docstring); 0 = plain demonstrations only.
    """

    out: str = "data/tabletop"
    suite: str | None = "atomic-quick"
    tasks: list[str] = field(default_factory=list)
    episodes: int = 40
    family_weights: dict[str, float] = field(default_factory=dict)
    workers: int = 2
    camera_size: int = 128
    cameras: list[str] = field(default_factory=lambda: ["primary", "wrist"])
    fps: int | None = None
    seed: int = 0
    noise: float = 0.2
    codec: str = "h264"
    multimodal_samples: int = 100
    heldout_fraction: float = 0.2
    annotate: bool = True
    keypoints: bool = True
    overwrite: bool = False
    dagger: DaggerConfig = field(default_factory=DaggerConfig)
    regrasp: float = 0.0

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("CollectConfig.out must be a directory path")
        if not self.tasks and not self.suite:
            raise ValueError("CollectConfig: give `suite` or `tasks`")
        if self.episodes < 1:
            raise ValueError(f"CollectConfig.episodes must be >= 1, got {self.episodes}")
        from instructvla.sim.tasks import FAMILIES

        unknown = sorted(set(self.family_weights) - set(FAMILIES))
        if unknown:
            raise ValueError(f"CollectConfig.family_weights: unknown families {unknown} (have {list(FAMILIES)})")
        bad_w = {k: w for k, w in self.family_weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad_w:
            raise ValueError(f"CollectConfig.family_weights must be finite and >= 0, got {bad_w}")
        if self.workers < 0:
            raise ValueError(f"CollectConfig.workers must be >= 0, got {self.workers}")
        if self.camera_size < 16 or self.camera_size % 2:
            raise ValueError(f"CollectConfig.camera_size must be an even int >= 16, got {self.camera_size}")
        bad = [c for c in self.cameras if c not in _CAMERA_KEYS]
        if bad or not self.cameras:
            raise ValueError(f"CollectConfig.cameras: unknown {bad} (choose from {list(_CAMERA_KEYS)})")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"CollectConfig.noise must be in [0, 1], got {self.noise}")
        if self.multimodal_samples < 0:
            raise ValueError(f"CollectConfig.multimodal_samples must be >= 0, got {self.multimodal_samples}")
        if not 0.0 <= self.heldout_fraction <= 1.0:
            raise ValueError(f"CollectConfig.heldout_fraction must be in [0, 1], got {self.heldout_fraction}")
        if not 0.0 <= self.regrasp <= 1.0:
            raise ValueError(f"CollectConfig.regrasp must be in [0, 1], got {self.regrasp}")
        if self.regrasp > 0 and self.dagger.policy is not None:
            raise ValueError("CollectConfig: `regrasp` and `dagger.policy` both choose how an episode starts; set one")
        from instructvla.data.lerobot import VideoConfig

        VideoConfig(codec=self.codec)  # validates the codec name
        if self.dagger.policy is not None:
            views = self.dagger.policy_views()
            if views > 1 and "wrist" not in self.cameras:
                raise ValueError(f"CollectConfig.cameras: the dagger policy reads {views} views (primary and wrist), "
                                 f"this collection records {self.cameras}")
        if self.fps is not None:
            from instructvla.sim.scene import CONTROL_HZ

            if self.fps != int(CONTROL_HZ):
                raise ValueError(f"CollectConfig.fps={self.fps}: the simulator runs at {int(CONTROL_HZ)} Hz")


@dataclass
class CollectResult:
    """What a collection produced."""

    out: str
    episodes_kept: int
    failures: int
    errors: int
    frames: int
    multimodal_records: int
    seconds: float
    first_error: str = ""
    steady_seconds: float = 0.0  # from the first to the last finished episode (excludes worker start-up)
    policy_finished: int = 0  # dagger / regrasp: episodes that ended before the expert took over (nothing recorded)

    @property
    def attempts(self) -> int:
        """Episodes attempted."""
        return self.episodes_kept + self.failures + self.errors + self.policy_finished

    @property
    def episodes_per_minute(self) -> float:
        """Episode attempts per minute, end to end (worker start-up and writing included)."""
        return self.attempts / max(self.seconds, 1e-9) * 60.0

    @property
    def steady_episodes_per_minute(self) -> float:
        """Attempts per minute between the first and the last finished episode (start-up excluded)."""
        n = self.attempts - 1
        return n / self.steady_seconds * 60.0 if n > 0 and self.steady_seconds > 0 else float("nan")


def resolve_tasks(cfg: CollectConfig) -> list[Any]:
    """Task names (str) or TaskSpecs to collect, in round-robin order."""
    from instructvla.sim import tasks as T

    if cfg.tasks:
        for name in cfg.tasks:
            T.get_task(name)  # raises with a did-you-mean hint
        return list(cfg.tasks)
    from instructvla.sim import suites

    out: list[Any] = []
    seen: set[str] = set()
    for task in suites.get_suite(cfg.suite):
        key = task.spec if isinstance(task.spec, str) else task.task_id
        if key in seen:
            continue
        seen.add(key)
        out.append(task.spec if isinstance(task.spec, str) else suites.task_spec(task))
    return out


def task_family(task: Any) -> str:
    """The family of a registered task name (e.g. "pick/any" -> "pick") or of a TaskSpec."""
    from instructvla.sim import tasks as T

    return T.get_task(task).family if isinstance(task, str) else task.family


def episode_tasks(tasks: list[Any], episodes: int, family_weights: dict[str, float] | None = None) -> list[Any]:
    """The task of each of `episodes` attempts: plain round-robin without weights, else smooth weighted round-robin
    (each task's share is its family's weight over the sum; ties go to the earlier task), so any prefix of the
    schedule is as close to the shares as whole episodes allow."""
    weights = [float((family_weights or {}).get(task_family(t), 1.0)) for t in tasks]
    total = sum(weights)
    if total <= 0:
        raise ValueError("family_weights: every task to collect has weight 0")
    credit = [0.0] * len(tasks)
    out: list[Any] = []
    for _ in range(episodes):
        credit = [c + w for c, w in zip(credit, weights)]
        best = max(range(len(tasks)), key=lambda k: (credit[k], -k))
        credit[best] -= total
        out.append(tasks[best])
    return out


# ------------------------------------------------------------------------------------------------ worker side
_ENVS: dict[str, Any] = {}
_POLICIES: dict[str, Any] = {}
_IN_WORKER = False  # set by _worker_init in spawned worker processes


def _worker_init() -> None:
    global _IN_WORKER
    _IN_WORKER = True
    os.environ["LP_NUM_THREADS"] = "1"
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _env_for(task: Any, camera_size: int, cameras: tuple[str, ...]):
    from instructvla.sim.env import make_env

    key = (task if isinstance(task, str) else task.name) + f"@{camera_size}:{','.join(cameras)}"
    if key not in _ENVS:
        _ENVS[key] = make_env(task, camera_size=camera_size, cameras=cameras)
    return _ENVS[key]


def _close_envs() -> None:
    while _ENVS:
        _ENVS.popitem()[1].close()
    _POLICIES.clear()


def _policy_for(dagger: dict) -> Any:
    if dagger["policy"] not in _POLICIES:
        from instructvla.policy import Policy, PolicyConfig

        if _IN_WORKER:  # one thread per worker process (in-process runs keep the caller's setting)
            import torch

            torch.set_num_threads(1)

        _POLICIES[dagger["policy"]] = Policy.from_pretrained(dagger["policy"], PolicyConfig(
            ensemble=False, noise_scale=dagger["noise_scale"], center_crop_area=dagger["center_crop_area"]))
    return _POLICIES[dagger["policy"]]


def _drive_with_policy(env: Any, obs: dict, info: dict, dagger: dict, seed: int) -> tuple[dict, dict, bool]:
    """Let the policy act until the drawn take-over step; returns (obs, info, whether the episode already ended)."""
    from instructvla.eval.rollout import PolicyDriver

    driver = PolicyDriver(_policy_for(dagger), info["instruction"], seed, dagger["open_loop_k"])
    takeover = int(np.random.default_rng([seed, 4]).integers(dagger["first_step"], dagger["last_step"] + 1))
    for _ in range(takeover):
        obs, _, terminated, truncated, info = env.step(driver.act(obs)[0])
        if terminated or truncated or info.get("success"):
            return obs, info, True
    return obs, info, False


def _run_episode(job: dict) -> dict:
    """Run one expert episode; returns frames (if successful) and its annotation. Never raises."""
    try:
        from instructvla.sim.experts import PICK_FAMILIES, make_expert, missed_grasp_prefix

        env = _env_for(job["task"], job["camera_size"], job["cameras"])
        seed = int(np.random.default_rng([job["seed"], job["attempt"]]).integers(2**31))
        obs, info = env.reset(seed=seed)
        expert = make_expert(env, noise_prob=job["noise"], seed=seed)
        expert.reset(seed=seed)
        prefix = None  # what drives the episode before the expert takes over (nothing of it is recorded)
        if job["dagger"]["policy"]:
            prefix = partial(_drive_with_policy, env, obs, info, job["dagger"], seed)
        elif (job["regrasp"] > 0 and env.unwrapped.task.spec.family in PICK_FAMILIES
              and np.random.default_rng([seed, 6]).random() < job["regrasp"]):
            prefix = partial(missed_grasp_prefix, env, obs, seed)
        if prefix is not None:
            obs, info, ended = prefix()
            if ended:
                return {"attempt": job["attempt"], "success": False, "policy_finished": True}
            expert.take_over()
        graph = env.unwrapped.scene_graph()
        images: dict[str, list[np.ndarray]] = {c: [] for c in job["cameras"]}
        states, actions, keypoints, objects = [], [], [], []
        success = False
        while True:
            action, clean = expert.act_pair(obs)
            for c in job["cameras"]:
                images[c].append(obs[_CAMERA_KEYS[c]])
            states.append(np.asarray(obs["state"], np.float32))
            actions.append(np.asarray(clean, np.float32))
            if job["keypoints"]:
                keypoints.append(env.unwrapped.keypoints())
                objects.append(env.unwrapped.object_keypoints())
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                success = bool(info["success"])
                break
        out: dict[str, Any] = {"attempt": job["attempt"], "success": success, "instruction": info["instruction"],
                               "length": len(actions)}
        if not success:
            return out
        from instructvla.data.lerobot import (
            KEYPOINTS_KEY,
            OBJECT_KEYPOINTS_KEY,
            OBJECT_VISIBLE_KEY,
            VideoConfig,
            encode_episode_video,
        )
        from instructvla.data.motion import motion_primitives

        # encode here, in parallel: the parent only stream-copies the mp4s (no re-encoding, little to transfer)
        video = VideoConfig(codec=job["codec"])
        st = np.stack(states)
        out["frames"] = {f"observation.images.{c}": encode_episode_video(
            np.stack(v), Path(job["tmp"]) / f"{job['attempt']:06d}-{c}.mp4", job["fps"], video)
            for c, v in images.items()}
        out["frames"] |= {"observation.state": st, "action": np.stack(actions), "language_motion": motion_primitives(st)}
        if job["keypoints"]:
            out["frames"][KEYPOINTS_KEY] = np.stack(keypoints)
            obj = np.stack(objects).reshape(len(objects), -1, 2)
            seen = np.isfinite(obj).all(-1)
            out["frames"][OBJECT_KEYPOINTS_KEY] = np.where(seen[..., None], obj, 0.0).reshape(len(objects), -1)
            out["frames"][OBJECT_VISIBLE_KEY] = seen.astype(np.float32)
        if job["annotate"]:
            from instructvla.sim.annotate import annotate_episode

            out["annotation"] = annotate_episode(graph, np.random.default_rng([seed, 2]))
        return out
    except Exception as e:  # reported by the parent with the attempt number
        logger.debug("episode %s failed", job["attempt"], exc_info=True)
        return {"attempt": job["attempt"], "success": False, "error": f"{type(e).__name__}: {e}"}


def _render_scene(job: dict) -> dict:
    """Reset a task env and render its primary view + caption/VQA records. Never raises."""
    try:
        from instructvla.sim.multimodal import generate_multimodal_records

        env = _env_for(job["task"], job["camera_size"], ("primary",))
        seed = int(np.random.default_rng([job["seed"], 1_000_003, job["index"]]).integers(2**31))
        obs, _ = env.reset(seed=seed)
        records = generate_multimodal_records(env.unwrapped.scene_graph(), np.random.default_rng([seed, 3]),
                                              job["split"])
        return {"index": job["index"], "image": obs["image"], "records": records, "split": job["split"]}
    except Exception as e:
        return {"index": job["index"], "error": f"{type(e).__name__}: {e}"}


def _dispatch(job: dict) -> dict:
    return _run_episode(job) if job["kind"] == "episode" else _render_scene(job)


# ------------------------------------------------------------------------------------------------ parent side
def collect(cfg: CollectConfig) -> CollectResult:
    """Collect `cfg.episodes` expert attempts with `cfg.workers` processes and write the dataset to `cfg.out`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from instructvla.data.lerobot import LeRobotDatasetWriter, VideoConfig, robot_features, write_annotations
    from instructvla.data.multimodal import MultimodalWriter
    from instructvla.sim.scene import CONTROL_HZ

    t0 = time.perf_counter()
    tasks = resolve_tasks(cfg)
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise FileExistsError(f"CollectConfig.out: {out} exists and is not empty (pass --overwrite=true)")
    cams = tuple(cfg.cameras)
    fps = int(CONTROL_HZ) if cfg.fps is None else cfg.fps
    tmp = out / ".collect-tmp"  # per-episode videos encoded by the workers, removed once appended
    schedule = episode_tasks(tasks, cfg.episodes, cfg.family_weights)
    jobs: list[dict] = [{"kind": "episode", "attempt": i, "task": schedule[i], "seed": cfg.seed,
                         "noise": cfg.noise, "camera_size": cfg.camera_size, "cameras": cams, "fps": fps,
                         "codec": cfg.codec, "tmp": str(tmp), "annotate": cfg.annotate, "keypoints": cfg.keypoints,
                         "dagger": dataclasses.asdict(cfg.dagger), "regrasp": cfg.regrasp}
                        for i in range(cfg.episodes)]
    n_held = round(cfg.multimodal_samples * cfg.heldout_fraction)
    jobs += [{"kind": "scene", "index": j, "task": tasks[j % len(tasks)], "seed": cfg.seed,
              "camera_size": cfg.camera_size, "split": "heldout" if j < n_held else "train"}
             for j in range(cfg.multimodal_samples)]
    from instructvla.sim.env import object_keypoint_names

    features = robot_features({c: (cfg.camera_size, cfg.camera_size) for c in cams}, keypoints=cfg.keypoints,
                              object_names=object_keypoint_names() if cfg.keypoints else ())
    kept = failures = errors = frames = n_records = finished = 0
    first_error = ""
    annotations: list[dict] = []
    writer = LeRobotDatasetWriter(out, fps, features, robot_type="tabletop_arm7", video=VideoConfig(codec=cfg.codec),
                                  overwrite=cfg.overwrite)
    tmp.mkdir()
    mm = MultimodalWriter(out / "multimodal") if cfg.multimodal_samples else None
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(cfg.workers, initializer=_worker_init) if cfg.workers > 0 else None
    try:
        results = pool.imap(_dispatch, jobs, chunksize=1) if pool else map(_dispatch, jobs)
        with Progress(TextColumn("[bold]collect"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                      TimeRemainingColumn(), transient=False) as progress:
            bar = progress.add_task("collect", total=len(jobs), info="")
            t_first = t_last = None
            for res in results:
                if "attempt" in res:
                    t_last = time.perf_counter()
                    t_first = t_first or t_last
                    if res.get("error"):
                        errors += 1
                        first_error = first_error or f"episode {res['attempt']}: {res['error']}"
                        logger.warning("episode %d errored: %s", res["attempt"], res["error"])
                    elif res.get("policy_finished"):
                        finished += 1
                    elif not res["success"]:
                        failures += 1
                    else:
                        ep = writer.add_episode(res["frames"], res["instruction"])
                        for k in writer.video_keys:
                            Path(res["frames"][k].path).unlink()
                        kept += 1
                        frames += res["length"]
                        if "annotation" in res:
                            annotations.append({**res["annotation"], "episode_index": ep, "frame_index": 0})
                elif res.get("error"):
                    errors += 1
                    first_error = first_error or f"scene {res['index']}: {res['error']}"
                    logger.warning("multimodal scene %d errored: %s", res["index"], res["error"])
                elif mm is not None:
                    n_records += mm.add(res["image"], res["records"], res["split"])
                progress.update(bar, advance=1, info=f"kept {kept} failed {failures} errors {errors}"
                                + (f" ended-before-take-over {finished}" if finished else ""))
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        else:
            _close_envs()
        if mm is not None:
            mm.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if kept == 0:
        writer.abort()
        raise RuntimeError(f"no successful episode in {cfg.episodes} attempts ({failures} failed, {errors} errored, "
                           f"{finished} ended before the take-over"
                           + (f"; first error: {first_error}" if first_error else "") + ")")
    writer.finalize()
    if annotations:
        write_annotations(out, annotations)
    result = CollectResult(str(out), kept, failures, errors, frames, n_records, time.perf_counter() - t0, first_error,
                           (t_last - t_first) if t_first is not None else 0.0, finished)
    logger.info("collected %d episodes (%d frames) into %s; %d failed, %d errored%s; %d multimodal records; %.1fs",
                kept, frames, out, failures, errors,
                f", {finished} ended before the take-over" if finished else "", n_records,
                result.seconds)
    return result
