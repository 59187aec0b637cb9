"""Closed-loop rollouts with a real (random, tiny) policy in the real tabletop: execution modes, seeds, videos."""

import dataclasses

import numpy as np
import pytest

from instructvla.eval.rollout import EpisodeJob, RolloutConfig, make_policy_config, run_episode, run_jobs


@pytest.fixture(scope="module")
def task():
    from instructvla.sim.suites import get_suite

    return get_suite("atomic-quick", num_episodes=1)[0]


@pytest.fixture(scope="module")
def env(task):
    from instructvla.sim.suites import make_task_env

    e = make_task_env(task, camera_size=64, cameras=("primary",))
    yield e
    e.close()


@pytest.fixture(scope="module")
def policy():
    from instructvla.policy import Policy

    return Policy.random_tiny()


def _with(policy, rcfg):
    policy.config = make_policy_config(rcfg, policy.config)
    return policy


def test_rollout_config_validation():
    with pytest.raises(ValueError, match="RolloutConfig.execution"):
        RolloutConfig(execution="chunk")
    with pytest.raises(ValueError, match="RolloutConfig.open_loop_k"):
        RolloutConfig(open_loop_k=0)
    pc = make_policy_config(RolloutConfig(execution="ensemble", ensemble_k=2, alpha=0.3, latent_cache=True,
                                          latent_every=3, think=True, think_every=7))
    assert (pc.ensemble, pc.ensemble_horizon, pc.ensemble_alpha) == (True, 2, 0.3)
    assert pc.latent_cache_every == 3 and pc.think and pc.reasoning_every == 7
    assert make_policy_config(RolloutConfig(execution="open_loop")).ensemble is False
    assert make_policy_config(RolloutConfig(latent_cache=False, latent_every=3)).latent_cache_every == 1


def test_ensemble_queries_every_step_open_loop_every_k(policy, env):
    rc = RolloutConfig(execution="ensemble", max_steps=5)
    r = run_episode(_with(policy, rc), env, seed=3, cfg=rc, meta={"task_id": "t", "split": "seen"})
    assert r.steps == 5 and r.policy_calls == 5 and not r.success and r.instruction
    rc = RolloutConfig(execution="open_loop", open_loop_k=2, max_steps=5)
    r = run_episode(_with(policy, rc), env, seed=3, cfg=rc)
    assert r.steps == 5 and r.policy_calls == 3  # chunks at steps 0, 2, 4
    d = r.to_dict()
    assert "frames" not in d and d["seed"] == 3


def test_mode_mismatch_is_an_error(policy, env):
    rc = RolloutConfig(execution="open_loop", max_steps=2)
    _with(policy, rc)
    with pytest.raises(ValueError, match="ensemble"):
        run_episode(policy, env, seed=0, cfg=RolloutConfig(execution="ensemble", max_steps=2))


def test_fixed_seeds_reproduce_episodes(policy, env):
    rc = RolloutConfig(max_steps=4, video_stride=1, latent_cache=True, think=True, think_every=2)
    _with(policy, rc)
    a = run_episode(policy, env, seed=11, cfg=rc, record=True)
    b = run_episode(policy, env, seed=11, cfg=rc, record=True)
    c = run_episode(policy, env, seed=12, cfg=rc, record=True)
    assert a.frames.shape == (5, 64, 64, 3) and a.frames.dtype == np.uint8  # first frame + one per step
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.instruction == b.instruction
    assert not np.array_equal(a.frames[0], c.frames[0])  # another seed: another scene


def test_run_jobs_in_process_with_video(policy, task, tmp_path):
    from instructvla.sim.suites import make_task_env

    rc = RolloutConfig(max_steps=3)
    _with(policy, rc)
    jobs = [EpisodeJob(task=task, seed=s, meta={"suite": "s", "task_id": task.task_id, "episode": i},
                       make_env=make_task_env, env_kwargs={"camera_size": 64, "cameras": ("primary",)},
                       video="videos/ep" if i == 0 else None) for i, s in enumerate((5, 6))]
    res = list(run_jobs(jobs, rc, policy=policy, out_dir=tmp_path))
    assert [r.seed for r in res] == [5, 6]
    assert res[0].video and (tmp_path / res[0].video).is_file() and res[0].frames is None
    assert res[1].video is None
    with pytest.raises(ValueError, match="policy_dir"):
        list(run_jobs(jobs, rc, workers=2))
    assert dataclasses.asdict(rc)["execution"] == "ensemble"


def test_wrist_camera_and_state_policy(task):
    """A policy with a wrist view and proprio state gets both from the env (and nothing it does not take)."""
    from instructvla.model.vla import InstructVLA
    from instructvla.policy import Policy, identity_stats
    from instructvla.sim.suites import make_task_env

    model = InstructVLA.from_preset("tiny", action_expert_overrides={"num_views": 2, "use_state": True}).eval()
    model.norm_stats = identity_stats(7, 8)
    rc = RolloutConfig(execution="open_loop", open_loop_k=2, max_steps=3)
    pol = Policy(model, make_policy_config(rc))
    env = make_task_env(task, camera_size=64, cameras=("primary", "wrist"))
    try:
        r = run_episode(pol, env, seed=1, cfg=rc)
        assert r.steps == 3 and r.policy_calls == 2
    finally:
        env.close()
    env = make_task_env(task, camera_size=64, cameras=("primary",))
    try:
        with pytest.raises(ValueError, match="wrist camera"):
            run_episode(pol, env, seed=1, cfg=rc)
    finally:
        env.close()
