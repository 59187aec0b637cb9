"""TrainConfig validation and the `instructvla train` / `python -m instructvla.train.trainer` entry points."""

from __future__ import annotations

import subprocess
import sys

import pytest

from instructvla.cli import main
from instructvla.train.config import TrainConfig, check_resume_compatible


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(stage=3, dataset="d"), "stage"),
        (dict(stage=1), "dataset"),
        (dict(stage=0), "multimodal"),
        (dict(stage=2, dataset="d", init="i"), "multimodal"),
        (dict(stage=2, dataset="d", multimodal="m"), "init"),
        (dict(dataset="d", steps=0), "steps"),
        (dict(dataset="d", batch_size=-1), "batch_size"),
        (dict(dataset="d", lr=0.0), "lr"),
        (dict(dataset="d", grad_clip=-1.0), "grad_clip"),
        (dict(dataset="d", progress="sometimes"), "progress"),
        (dict(dataset="d", strategy="zero3"), "strategy"),
        (dict(dataset="d", time_limit_s=0), "time_limit_s"),
        (dict(dataset="d", ema=1.0), "ema"),
        (dict(dataset="d", no_moe=True), "no_moe"),
        (dict(dataset="d", noise_repeats=0), "noise_repeats"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_progress_accepts_on_off_spellings():
    assert TrainConfig(dataset="d", progress="False").progress == "never"
    assert TrainConfig(dataset="d", progress="on").progress == "always"


def test_resume_compatibility_allows_steps_but_not_seed():
    saved = TrainConfig(dataset="d").to_dict()
    check_resume_compatible(saved, TrainConfig(dataset="d", steps=5000, resume=True, time_limit_s=60))
    with pytest.raises(ValueError, match="seed"):
        check_resume_compatible(saved, TrainConfig(dataset="d", seed=1))


def test_cli_help_and_unknown_key(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--time_limit_s" in out and "torchrun" in out
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset=d", "--stpes=3"])
    assert e.value.code != 0
    assert "--stpes" in capsys.readouterr().err


def test_module_entry_point_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "instructvla.train.trainer", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--mm_every" in proc.stdout
