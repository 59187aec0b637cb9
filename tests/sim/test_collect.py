"""`instructvla collect`: parallel expert collection into a readable LeRobot dataset + VLA-IT + multimodal."""

import numpy as np
import pytest

from instructvla.data.dataset import RobotDataset
from instructvla.data.lerobot import LeRobotDatasetReader
from instructvla.data.multimodal import read_records
from instructvla.sim.collect import CollectConfig, collect, episode_tasks, resolve_tasks, task_family


def _cfg(out, **kw):
    base = dict(out=str(out), tasks=["pick/any", "place_on/any"], episodes=3, workers=2, camera_size=48,
                multimodal_samples=4, heldout_fraction=0.5)
    return CollectConfig(**(base | kw))


def test_collect_two_workers(tmp_path):
    res = collect(_cfg(tmp_path / "ds"))
    assert res.episodes_kept + res.failures + res.errors == 3 and res.errors == 0 and res.episodes_kept >= 1
    r = LeRobotDatasetReader(res.out)
    assert r.num_episodes == res.episodes_kept and len(r) == res.frames
    assert r.camera_keys == ["observation.images.primary", "observation.images.wrist"]
    assert r.episode_frames(0, "observation.images.wrist").shape[1:] == (48, 48, 3)
    a = r.column("action")
    assert a.shape[1] == 7 and set(np.unique(a[:, 6])) <= {0.0, 1.0}
    assert all(isinstance(m, str) and m for m in r.column("language_motion"))
    ann = r.annotation(0, 5)
    assert ann["episode_index"] == 0 and ann["caption"] and ann["command_rewriting"]
    recs = read_records(res.out)
    assert {x["split"] for x in recs} == {"train", "heldout"} and len(recs) == res.multimodal_records
    s = RobotDataset(res.out, stage=2, image_size=32)[0]
    assert s["actions"].shape == (16, 7) and s["images"].shape == (2, 32, 32, 3)


@pytest.mark.slow
def test_collect_independent_of_workers(tmp_path):
    a = collect(_cfg(tmp_path / "a", workers=0, multimodal_samples=0))  # in-process
    b = collect(_cfg(tmp_path / "b", workers=2, multimodal_samples=0))
    ra, rb = LeRobotDatasetReader(a.out), LeRobotDatasetReader(b.out)
    np.testing.assert_array_equal(ra.column("action"), rb.column("action"))
    assert ra.tasks == rb.tasks


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        CollectConfig(workers=-1)
    with pytest.raises(ValueError, match="camera_size"):
        CollectConfig(camera_size=33)
    with pytest.raises(ValueError, match="codec"):
        CollectConfig(codec="mjpeg")
    with pytest.raises(ValueError, match="fps"):
        CollectConfig(fps=30)
    with pytest.raises(KeyError, match="unknown task"):
        resolve_tasks(CollectConfig(tasks=["pick/banana-split"]))
    assert len(resolve_tasks(CollectConfig(suite="atomic-quick"))) == 4
    with pytest.raises(ValueError, match="unknown families.*'opne_drawer'"):
        CollectConfig(family_weights={"opne_drawer": 0.5})
    with pytest.raises(ValueError, match="finite and >= 0"):
        CollectConfig(family_weights={"pick": -1.0})
    with pytest.raises(ValueError, match="finite and >= 0"):
        CollectConfig(family_weights={"pick": float("nan")})
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(FileExistsError, match="overwrite"):
        collect(_cfg(tmp_path / "x"))


def test_dagger_collection_records_the_expert_after_a_policy_prefix(tmp_path):
    from instructvla.policy import Policy
    from instructvla.sim.collect import DaggerConfig

    Policy.random_tiny().model.save_pretrained(tmp_path / "policy")
    dagger = DaggerConfig(policy=str(tmp_path / "policy"), first_step=5, last_step=5, open_loop_k=4)
    res = collect(_cfg(tmp_path / "ds", tasks=["pick/any"], episodes=2, workers=0, multimodal_samples=0,
                       cameras=["primary"], dagger=dagger))
    assert res.attempts == 2 and res.errors == 0 and res.episodes_kept >= 1
    plain = collect(_cfg(tmp_path / "plain", tasks=["pick/any"], episodes=2, workers=0, multimodal_samples=0,
                         cameras=["primary"]))
    r, p = LeRobotDatasetReader(res.out), LeRobotDatasetReader(plain.out)
    # same seeds: the corrections start where the random policy left the arm after 5 steps, not at the home pose
    assert not np.allclose(r.column("observation.state")[0], p.column("observation.state")[0])
    assert r.num_episodes == res.episodes_kept


def test_regrasp_collection_records_the_recovery_from_a_missed_grasp(tmp_path):
    res = collect(_cfg(tmp_path / "ds", tasks=["pick/any"], episodes=3, workers=0, multimodal_samples=0,
                       cameras=["primary"], regrasp=1.0))
    assert res.attempts == 3 and res.errors == 0 and res.episodes_kept >= 1
    r = LeRobotDatasetReader(res.out)
    for ep in range(r.num_episodes):
        first = r.episode_slice(ep).start
        state, action = r.column("observation.state")[first], r.column("action")[first]
        assert state[7] < 0.5 and action[6] == 1.0  # starts with an empty closed gripper, and opens it first
    with pytest.raises(ValueError, match="regrasp"):
        CollectConfig(regrasp=1.5)


def test_dagger_config_validation(tmp_path):
    from instructvla.sim.collect import DaggerConfig

    with pytest.raises(ValueError, match="first_step"):
        DaggerConfig(first_step=10, last_step=5)
    with pytest.raises(ValueError, match="open_loop_k"):
        DaggerConfig(open_loop_k=0)
    with pytest.raises(ValueError, match="not a saved model folder"):
        DaggerConfig(policy=str(tmp_path))
    from instructvla.model.vla import InstructVLA

    InstructVLA.from_preset("tiny", action_expert_overrides={"num_views": 2}).save_pretrained(tmp_path / "two_views")
    dagger = DaggerConfig(policy=str(tmp_path / "two_views"))
    assert dagger.policy_views() == 2
    with pytest.raises(ValueError, match="reads 2 views"):
        CollectConfig(cameras=["primary"], dagger=dagger)
    with pytest.raises(ValueError, match="set one"):
        CollectConfig(dagger=dagger, regrasp=0.5)


def test_episode_tasks_follow_the_family_weights():
    tasks = resolve_tasks(CollectConfig(suite="atomic-quick"))
    assert episode_tasks(tasks, 8) == tasks + tasks  # no weights: plain round-robin
    fams = [task_family(t) for t in episode_tasks(tasks, 900, {"open_drawer": 0.4})]
    counts = {f: fams.count(f) for f in set(fams)}
    assert counts["open_drawer"] == 106 and sum(counts.values()) == 900  # 0.4 / 3.4 of 900, rounded
    assert all(abs(counts[f] - 900 / 3.4) <= 1 for f in ("pick", "place_on", "move_near"))
    # every prefix stays within one episode of its share: drawers are spread out, not bunched at the end
    first = fams[:34]
    assert first.count("open_drawer") == 4
    assert task_family("pick/any") == "pick"
    assert "open_drawer" not in {task_family(t) for t in episode_tasks(tasks, 40, {"open_drawer": 0.0})}
    with pytest.raises(ValueError, match="weight 0"):
        episode_tasks(tasks, 4, {f: 0.0 for f in ("pick", "place_on", "move_near", "open_drawer")})
