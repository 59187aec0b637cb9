"""benchmarks/dagger_round.py at toy scale: corrections collected, two continuations trained, three Experts scored."""

import json

import pytest

from instructvla.data.dataset import write_synthetic_dataset
from instructvla.train.config import TrainConfig
from instructvla.train.trainer import train


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dagger")
    data = write_synthetic_dataset(root / "data", num_episodes=2, length=6, image_size=32, cameras=("primary",))
    train(TrainConfig(stage=1, dataset=data, out=str(root / "run"), steps=2, batch_size=2, save_every=0,
                      progress="never", augment=False, image_size=32, use_state=True))
    return root / "run"


def test_train_config_round_trips_and_names_unknown_keys(stage1_run):
    saved = json.loads((stage1_run / "train_config.json").read_text())
    assert TrainConfig.from_dict(saved).to_dict() == saved
    with pytest.raises(ValueError, match="unknown key.*'lr_warmup'"):
        TrainConfig.from_dict({**saved, "lr_warmup": 10})


def test_dagger_round_end_to_end(stage1_run, tmp_path, capsys, load_benchmark):
    dr = load_benchmark("dagger_round")
    assert dr.main(["--run", str(stage1_run), "--out", str(tmp_path / "round"), "--minutes", "0", "--steps", "2",
                    "--episodes", "3", "--first-step", "2", "--last-step", "3", "--eval-episodes", "1",
                    "--tasks", "atomic/pick_any", "--workers", "0", "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    c = res["corrections"]
    assert c["attempts"] == 3 and c["kept"] >= 1 and c["kept"] + c["failed"] + c["policy_finished"] == 3
    assert res["steps"] == {"control": 2, "corrected": 2}
    assert set(res["success"]) == {"expert", "control", "corrected"}
    assert all(0.0 <= r["atomic/pick_any"] <= 1.0 for r in res["success"].values())
    assert (tmp_path / "round" / "corrected" / "model" / "normalization.json").is_file()
