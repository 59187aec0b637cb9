"""The flow's noise prior width (ActionExpertConfig.flow_noise_std), in training and in sampling."""

from __future__ import annotations

import pytest
import torch

from instructvla.model.action_expert import ActionExpert, ActionExpertConfig
from instructvla.model.vla import InstructVLA
from instructvla.train.config import TrainConfig


def _cfg(**kw) -> ActionExpertConfig:
    base = ActionExpertConfig.preset("tiny", 16, image_size=32, hidden_size=64, intermediate_size=128, chunk_size=8)
    return ActionExpertConfig.from_dict({**base.to_dict(), **kw})


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 16, generator=g), torch.randn(2, 1, 3, 32, 32, generator=g), torch.randn(2, 8, 7)


def test_sampling_starts_from_the_prior_width():
    torch.manual_seed(0)
    wide = ActionExpert(_cfg()).eval()
    narrow = ActionExpert(_cfg(flow_noise_std=0.25)).eval()
    narrow.load_state_dict(wide.state_dict())
    lat, img, _ = _inputs()
    noise = torch.randn(2, 8, 7, generator=torch.Generator().manual_seed(3))
    # the narrow prior's unit draw is the wide prior's draw at a quarter of the size
    a = narrow.sample(lat, img, noise=noise)
    b = wide.sample(lat, img, noise=noise * 0.25)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, wide.sample(lat, img, noise=noise), atol=1e-3)
    # noise_scale=0 is the same deterministic path whatever the prior's width
    assert torch.allclose(narrow.sample(lat, img, noise=noise, noise_scale=0.0),
                          wide.sample(lat, img, noise=noise, noise_scale=0.0), atol=1e-6)


def test_training_draws_from_the_prior_width():
    torch.manual_seed(0)
    wide = ActionExpert(_cfg())
    narrow = ActionExpert(_cfg(flow_noise_std=0.25))
    narrow.load_state_dict(wide.state_dict())
    lat, img, act = _inputs()
    losses = [m.loss_terms(lat, img, None, act, generator=torch.Generator().manual_seed(1))["fm"].item()
              for m in (wide, narrow)]
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)  # same draws, different prior: different inputs/targets
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="flow_noise_std"):
            _cfg(flow_noise_std=bad)


def test_stage1_saves_the_prior_width(tmp_path, train_stage1):
    run, robot = train_stage1(flow_noise_std=0.3)
    assert InstructVLA.from_pretrained(run / "model").action_expert.cfg.flow_noise_std == 0.3
    with pytest.raises(ValueError, match="flow_noise_std"):
        TrainConfig(out=str(tmp_path / "x"), stage=1, dataset=robot, flow_noise_std=0.0)
