"""RobotDataset samples and the resumable sampler."""

import itertools

import numpy as np
import pytest
from torch.utils.data import DataLoader

from instructvla.data.dataset import (
    ResumableSampler,
    RobotDataset,
    RobotDatasets,
    collate_samples,
    write_synthetic_dataset,
)
from instructvla.data.normalize import unnormalize


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("rd") / "ds", num_episodes=3, length=(10, 20, 14),
                                   image_size=32)


def test_stage1_sample(root):
    ds = RobotDataset(root, stage=1, image_size=40, seed=0)
    assert len(ds) == 44 and ds.cameras == ["observation.images.primary", "observation.images.wrist"]
    s = ds[5]
    assert s["images"].shape == (2, 40, 40, 3) and s["images"].dtype == np.uint8
    assert s["has_action"] is True and s["actions"].shape == (16, 7) and s["actions"].dtype == np.float32
    assert s["action_is_pad"].shape == (16,) and s["action_is_pad"].sum() == 16 - 5
    assert "state" not in s
    assert s["conversation"][0]["content"].startswith("What action should the robot take to pick up the red block?")
    assert s["prompt_type"] in ("action", "motion")
    # padded steps unnormalise to zero motion, gripper held
    raw = unnormalize(s["actions"], ds.stats, "action")
    assert np.allclose(raw[s["action_is_pad"], :6], 0, atol=1e-6)


def test_determinism_and_redraws(root):
    ds = RobotDataset(root, stage=2, seed=3, image_size=32)
    a, b = ds[7], ds[7]
    np.testing.assert_array_equal(a["images"], b["images"])
    assert a["conversation"] == b["conversation"]
    c = ds[7 + len(ds)]  # same frame, next epoch: new augmentation draw
    np.testing.assert_array_equal(a["actions"], c["actions"])
    assert not np.array_equal(a["images"], c["images"])
    kinds = {ds[k]["prompt_type"] for k in range(200)}
    assert {"caption_qa", "context", "rewrite", "action"} <= kinds


def test_state_no_augment_and_given_stats(root):
    ds = RobotDataset(root, stage=1, use_state=True, augment=False, image_size=32)
    s = ds[0]
    assert s["state"].shape == (8,) and np.abs(s["state"]).max() <= 1
    assert np.abs(s["images"][0].astype(int) - ds.reader.image(0, 0, "observation.images.primary")).mean() < 8
    ds2 = RobotDataset(root, stats=ds.stats, episodes=[1], augment=False)
    assert len(ds2) == 20 and ds2.stats == ds.stats
    with pytest.raises(KeyError):
        RobotDataset(root, use_state=True, stats={"action": ds.stats["action"]})
    with pytest.raises(ValueError, match="cameras"):
        RobotDataset(root, cameras=["observation.images.top"])


def test_sampler_resume(root):
    s = ResumableSampler(44, seed=1)
    first = list(itertools.islice(iter(s), 30))
    state = s.state_dict()
    rest = list(itertools.islice(iter(s), 30))
    s2 = ResumableSampler(44, seed=1)
    s2.load_state_dict(state)
    assert list(itertools.islice(iter(s2), 30)) == rest
    assert sorted(i % 44 for i in first + rest[:14]) == list(range(44))  # epoch 0 is a permutation
    assert all(i >= 44 for i in rest[14:])  # epoch 1 indices carry the epoch
    ranks = [list(ResumableSampler(44, seed=1, rank=r, world_size=2, infinite=False)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 22 and not set(ranks[0]) & set(ranks[1])
    with pytest.raises(ValueError, match="seed"):
        s2.load_state_dict({"seed": 2, "consumed": 3})


def test_dataloader(root):
    ds = RobotDataset(root, stage=1, image_size=32)
    dl = DataLoader(ds, batch_size=4, sampler=ResumableSampler(len(ds), seed=0), collate_fn=collate_samples)
    batch = next(iter(dl))
    assert len(batch) == 4 and all(b["actions"].shape == (16, 7) for b in batch)


def test_pickles_for_spawned_workers(root):
    import pickle

    ds = RobotDataset(root, stage=1, image_size=32)
    ds[0]  # opens video containers and fills the frame cache
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.reader._decoded.nbytes == 0 and not clone.reader._decoded.episodes
    assert ds.reader._decoded.episodes  # the original keeps its own
    np.testing.assert_array_equal(clone[3]["actions"], ds[3]["actions"])


def test_hide_held_target_unlabels_the_target_from_the_first_grasp_on() -> None:
    from types import SimpleNamespace

    from instructvla.data.dataset import _hide_held_target

    kp = np.zeros((9, 3, 2), np.float32)
    grip = np.array([1, 1, 0, 0, 1,  # episode 0: closes at frame 2
                     0, 0, 1, 0])  # episode 1 starts closed (holds nothing), opens, closes at frame 8
    actions = np.zeros((9, 7), np.float32)
    actions[:, 6] = grip
    slices = [slice(0, 5), slice(5, 9)]
    reader = SimpleNamespace(num_episodes=2, episode_slice=lambda e: slices[e])
    out = _hide_held_target(kp, actions, reader)
    hidden = np.isnan(out[:, 0, 0])
    assert hidden.tolist() == [False, False, True, True, True, False, False, False, True]
    assert not np.isnan(out[:, 1:]).any() and not np.isnan(kp).any()  # other points kept, input untouched


def test_several_datasets_read_as_one_with_the_first_ones_stats(root, tmp_path):
    other = write_synthetic_dataset(tmp_path / "other", num_episodes=2, length=(6, 9), image_size=32, seed=5)
    first = RobotDataset(root, stage=1, image_size=32, seed=1)
    second = RobotDataset(other, stage=1, image_size=32, seed=1, stats=first.stats)
    both = RobotDatasets([first, second])
    assert len(both) == 44 + 15 and both.stats is first.stats and both.cameras == first.cameras
    np.testing.assert_array_equal(both[3]["actions"], first[3]["actions"])
    np.testing.assert_array_equal(both[44 + 2]["images"], second[2]["images"])
    np.testing.assert_array_equal(both[59 + 44 + 2]["images"], second[2 + 15]["images"])  # a re-draw
    assert not np.array_equal(both[59 + 44 + 2]["images"], both[44 + 2]["images"])
    keyed = write_synthetic_dataset(tmp_path / "keyed", num_episodes=1, length=8, image_size=32, keypoints=True)
    with pytest.raises(ValueError, match="num_keypoints"):
        RobotDatasets([first, RobotDataset(keyed, image_size=32, stats=first.stats)])
    with pytest.raises(ValueError, match="at least one"):
        RobotDatasets([])
