"""Closed-loop rollouts: one episode of a `Policy` in a tabletop env, and many episodes across worker processes.

An episode: `env.reset(seed)` -> each control step the observation goes through `Policy.infer` (the one inference
entry point) -> the action to execute comes from the adaptive ensemble (the policy's own, queried every step) or
from open-loop first-k execution of a chunk -> `env.step` -> until success or the step limit. Thinking (the reply is
regenerated every N steps) and latent caching are the policy's options; this module only turns them on.

Parallel runs use `multiprocessing` with the spawn start method: each worker loads the policy once from its
checkpoint directory, pins torch and llvmpipe to one thread, keeps the env of the task it ran last, and returns one
`EpisodeResult` per job. Every episode depends only on (policy, task, seed), so results do not depend on the number
of workers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["EpisodeJob", "EpisodeResult", "PolicyDriver", "RolloutConfig", "make_policy_config", "policy_observation",
           "run_episode", "run_jobs"]

EXECUTIONS = ("ensemble", "open_loop")


@dataclass
class RolloutConfig:
    """How actions are executed and what is recorded.

    execution:     "ensemble" (query every step, execute the policy's adaptive-ensembled action) or "open_loop"
                   (execute the first `open_loop_k` actions of each chunk, then query again).
    ensemble_k:    chunks kept by the adaptive ensemble (method: 2 / 7 / 8); alpha: its temperature (0.1).
    open_loop_k:   actions executed per chunk in open-loop mode.
    latent_cache:  reuse the VLM latents between steps, recomputing every `latent_every` policy calls.
    think:         generate a text reply before acting, regenerated every `think_every` steps.
    max_steps:     step limit per episode (None: the task's own limit).
    video_stride:  keep every k-th primary-camera frame for videos (the first and last frames are always kept).
    video_size:    frames are downscaled to at most this side for videos.
    """

    execution: str = "ensemble"
    ensemble_k: int = 8
    alpha: float = 0.1
    open_loop_k: int = 4
    latent_cache: bool = False
    latent_every: int = 2
    think: bool = False
    think_every: int = 20
    max_steps: int | None = None
    video_stride: int = 2
    video_size: int = 160

    def __post_init__(self) -> None:
        if self.execution not in EXECUTIONS:
            raise ValueError(f"RolloutConfig.execution must be one of {EXECUTIONS}, got {self.execution!r}")
        for name in ("ensemble_k", "open_loop_k", "latent_every", "think_every", "video_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"RolloutConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not np.isfinite(self.alpha):
            raise ValueError(f"RolloutConfig.alpha must be finite, got {self.alpha}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"RolloutConfig.max_steps must be >= 1 or None, got {self.max_steps}")
        if self.video_size < 16:
            raise ValueError(f"RolloutConfig.video_size must be >= 16, got {self.video_size}")


def make_policy_config(cfg: RolloutConfig, base: Any = None, seed: int = 0, device: str | None = None) -> Any:
    """The `PolicyConfig` that realises `cfg` (ensemble on/off, K, alpha, thinking, latent caching), from `base`."""
    from instructvla.policy import PolicyConfig

    base = base if base is not None else PolicyConfig()
    return dataclasses.replace(
        base,
        think=cfg.think,
        reasoning_every=cfg.think_every,
        ensemble=cfg.execution == "ensemble",
        ensemble_horizon=cfg.ensemble_k,
        ensemble_alpha=cfg.alpha,
        latent_cache_every=cfg.latent_every if cfg.latent_cache else 1,
        seed=seed,
        device=device if device is not None else base.device,
    )


@dataclass
class EpisodeResult:
    """One episode's outcome (JSON-friendly through `to_dict`; frames are kept only in memory)."""

    suite: str
    task_id: str
    category: str
    split: str
    seed: int
    episode: int
    success: bool
    steps: int
    instruction: str
    reply: str | None = None
    replies: list[tuple[int, str]] = field(default_factory=list)  # (step, reply) each time the reply changed
    policy_calls: int = 0
    wall_s: float = 0.0
    family_id: str = ""
    video: str | None = None  # path of the encoded video, relative to the output directory
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8, only when recorded and not yet encoded

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("frames")
        d["replies"] = [[int(s), str(t)] for s, t in self.replies]
        return d


def policy_observation(obs: dict, instruction: str, spec: Any, think: bool = False) -> dict:
    """Env observation -> Policy observation: only the inputs the policy takes (it rejects the others)."""
    out: dict[str, Any] = {"observation/image": obs["image"], "prompt": instruction,
                           "options": {"think": bool(think)}}
    if getattr(spec, "wrist_camera", False):
        if "wrist_image" not in obs:
            raise ValueError("the policy takes a wrist camera but the env renders none (enable the 'wrist' camera)")
        out["observation/wrist_image"] = obs["wrist_image"]
    if getattr(spec, "state_dim", None) is not None:
        out["observation/state"] = np.asarray(obs["state"], dtype=np.float32)
    return out


def _small(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if max(h, w) <= size:
        return frame
    from PIL import Image

    scale = size / max(h, w)
    return np.asarray(Image.fromarray(frame).resize((max(2, round(w * scale)), max(2, round(h * scale))),
                                                    Image.BILINEAR))


class PolicyDriver:
    """The action to execute at each control step of one episode of a policy.

    With `open_loop_k` the first k actions of each chunk run open loop and the policy is asked again when they are
    used up; with None it is asked every step and its first action runs (the policy's own adaptive ensemble).
    Creating a driver starts the episode on the policy's side: its noise seed is set to `seed` and its state reset.
    Evaluation rollouts, DAgger collection and the closed-loop diagnostics all drive policies through this.
    """

    def __init__(self, policy: Any, instruction: str, seed: int, open_loop_k: int | None,
                 think: bool = False) -> None:
        from instructvla.eval.ensemble import OpenLoopChunker

        policy.config = dataclasses.replace(policy.config, seed=int(seed))
        policy.reset()
        self.policy, self.instruction, self.think = policy, instruction, think
        self.chunker = OpenLoopChunker(open_loop_k) if open_loop_k is not None else None
        self.calls = 0

    @property
    def needs_inference(self) -> bool:
        """True when the next `act` calls the policy."""
        return self.chunker is None or self.chunker.needs_chunk()

    def act(self, obs: dict) -> tuple[np.ndarray, dict[str, Any] | None]:
        """(the action for env observation `obs`, the policy's reply if this step called it, else None)."""
        out = None
        if self.needs_inference:
            spec = self.policy.request_spec
            out = self.policy.infer(policy_observation(obs, self.instruction, spec, self.think))
            self.calls += 1
            if self.chunker is None:
                return np.asarray(out["actions"][0], dtype=np.float64), out
            self.chunker.set_chunk(out["actions"])
        return self.chunker.pop(), out


def run_episode(policy: Any, env: Any, seed: int, cfg: RolloutConfig, record: bool = False,
                meta: dict[str, Any] | None = None) -> EpisodeResult:
    """Run one closed-loop episode of `policy` in `env` from `seed`.

    The policy's per-episode state is reset and its noise seed set to `seed`, so an episode is a pure function of
    (policy weights, task, seed). `meta` fills the result's task fields (suite, task_id, category, split,
    family_id, episode). With `record`, every `cfg.video_stride`-th primary frame is kept in `result.frames`.
    """
    meta = dict(meta or {})
    t0 = time.perf_counter()
    if cfg.execution == "ensemble" and not policy.config.ensemble:
        raise ValueError("execution='ensemble' needs a policy built with PolicyConfig(ensemble=True) "
                         "(see make_policy_config)")
    if cfg.execution == "open_loop" and policy.config.ensemble:
        raise ValueError("execution='open_loop' needs a policy with the ensemble off (see make_policy_config)")
    obs, info = env.reset(seed=int(seed))
    instruction = str(info.get("instruction") or "")
    if not instruction:
        raise ValueError(f"env of task {meta.get('task_id', '?')!r} gave no instruction at reset")
    max_steps = cfg.max_steps or int(getattr(env, "max_steps", 0) or 0) or None
    if max_steps is None:
        raise ValueError("no step limit: pass RolloutConfig.max_steps or use an env with a max_steps attribute")
    driver = PolicyDriver(policy, instruction, seed, cfg.open_loop_k if cfg.execution == "open_loop" else None,
                          cfg.think)
    frames = [_small(obs["image"], cfg.video_size)] if record else []
    replies: list[tuple[int, str]] = []
    steps = 0
    success = False
    while steps < max_steps:
        action, out = driver.act(obs)
        text = (out or {}).get("text") or ""
        if cfg.think and text and (not replies or replies[-1][1] != text):
            replies.append((steps, text))
        obs, _, terminated, truncated, info = env.step(action)
        steps += 1
        success = success or bool(info.get("success"))
        if record and (steps % cfg.video_stride == 0 or terminated or truncated or steps == max_steps):
            frames.append(_small(obs["image"], cfg.video_size))
        if terminated or truncated or success:
            break
    return EpisodeResult(
        suite=str(meta.get("suite", "")), task_id=str(meta.get("task_id", info.get("task", ""))),
        category=str(meta.get("category", "")), split=str(meta.get("split", "")),
        family_id=str(meta.get("family_id", "")), episode=int(meta.get("episode", 0)),
        seed=int(seed), success=success, steps=steps, instruction=instruction,
        reply=replies[0][1] if replies else None, replies=replies, policy_calls=driver.calls,
        wall_s=time.perf_counter() - t0, frames=np.stack(frames) if record else None,
    )


# ------------------------------------------------------------------------------------------------ many episodes


@dataclass
class EpisodeJob:
    """One episode to run: the task (an object `make_env(task)` understands), its seed and bookkeeping fields.

    make_env: a picklable callable task -> env (for an instruct-suite task: `instructvla.sim.suites.make_task_env`).
    video:    relative path (no suffix) under the output directory to encode this episode's video to, or None.
    """

    task: Any
    seed: int
    meta: dict[str, Any]
    make_env: Callable[..., Any]
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    video: str | None = None


def safe_name(text: str) -> str:
    """A file-name-safe version of a task id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "task"


class _Runner:
    """Runs jobs with one policy, keeping the env of the last task (jobs of one task usually come in a row)."""

    def __init__(self, policy: Any, cfg: RolloutConfig, out_dir: str | Path | None) -> None:
        self.policy, self.cfg = policy, cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._env_key: tuple | None = None
        self._env: Any = None

    def env_for(self, job: EpisodeJob) -> Any:
        # the whole task (split included: seen / held-out envs render different templates) and the env options
        key = (job.meta.get("suite"), repr(job.task), job.make_env, repr(sorted(job.env_kwargs.items())))
        if key != self._env_key:
            self.close()
            self._env = job.make_env(job.task, **job.env_kwargs)
            self._env_key = key
        return self._env

    def run(self, job: EpisodeJob) -> EpisodeResult:
        from instructvla.eval.report import encode_video

        record = job.video is not None
        res = run_episode(self.policy, self.env_for(job), job.seed, self.cfg, record=record, meta=job.meta)
        if record:
            if self.out_dir is None:
                raise ValueError("a job asks for a video but no output directory was given")
            path = encode_video(res.frames, self.out_dir / job.video, fps=max(1, 10 // self.cfg.video_stride))
            res.video = str(path.relative_to(self.out_dir))
            res.frames = None
        return res

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env, self._env_key = None, None


_WORKER: _Runner | None = None


def _init_worker(policy_dir: str, policy_config: Any, cfg: RolloutConfig, out_dir: str | None) -> None:
    os.environ["LP_NUM_THREADS"] = "1"  # llvmpipe (MuJoCo's CPU renderer): one thread per worker
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    torch.set_num_threads(1)
    from instructvla.policy import Policy

    global _WORKER
    _WORKER = _Runner(Policy.from_pretrained(policy_dir, policy_config), cfg, out_dir)


def _run_in_worker(job: EpisodeJob) -> EpisodeResult:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.run(job)


def run_jobs(jobs: Sequence[EpisodeJob], cfg: RolloutConfig, *, policy: Any = None, policy_dir: str | None = None,
             policy_config: Any = None, workers: int = 1, out_dir: str | Path | None = None) -> Iterator[EpisodeResult]:
    """Run `jobs`, yielding results as they finish (in job order when workers == 1).

    workers == 1: in this process with `policy` (or one loaded from `policy_dir`). workers > 1: spawned processes,
    each loading the policy from `policy_dir` with `policy_config` (required then).
    """
    if workers < 1:
        raise ValueError(f"run_jobs: workers must be >= 1, got {workers}")
    if not jobs:
        return
    if workers == 1:
        if policy is None:
            if policy_dir is None:
                raise ValueError("run_jobs: pass a policy or a policy_dir")
            from instructvla.policy import Policy

            policy = Policy.from_pretrained(policy_dir, policy_config)
        runner = _Runner(policy, cfg, out_dir)
        try:
            for job in jobs:
                yield runner.run(job)
        finally:
            runner.close()
        return
    if policy_dir is None:
        raise ValueError("run_jobs: workers > 1 needs policy_dir (each worker loads the policy itself)")
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(processes=min(workers, len(jobs)), initializer=_init_worker,
                  initargs=(str(policy_dir), policy_config, cfg, None if out_dir is None else str(out_dir))) as pool:
        yield from pool.imap_unordered(_run_in_worker, jobs, chunksize=1)
