"""The flow's training-time distribution (ActionExpertConfig.flow_time_alpha): t = 0.999 (1 - Beta(alpha, 1))."""

from __future__ import annotations

import pytest
import torch

from instructvla.model.action_expert import ActionExpert, ActionExpertConfig
from instructvla.model.flow import sample_time
from instructvla.model.vla import InstructVLA
from instructvla.train.config import TrainConfig


def test_alpha_one_draws_times_uniformly_and_the_default_favours_noise():
    uniform = sample_time(100_000, torch.Generator().manual_seed(0), alpha=1.0)
    method = sample_time(100_000, torch.Generator().manual_seed(0))
    assert uniform.mean().item() == pytest.approx(0.999 / 2, abs=0.005)
    assert (uniform > 0.9).float().mean().item() == pytest.approx(0.099 / 0.999, abs=0.005)
    # Beta(1.5, 1): E[z] = 0.6, so E[t] = 0.999 * 0.4; P(t > 0.9) = P(z < 0.0991) = 0.0991 ** 1.5
    assert method.mean().item() == pytest.approx(0.999 * 0.4, abs=0.005)
    assert (method > 0.9).float().mean().item() == pytest.approx((1 - 0.9 / 0.999) ** 1.5, abs=0.004)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            sample_time(4, alpha=bad)


def test_the_expert_trains_on_its_time_distribution(monkeypatch):
    import instructvla.model.action_expert as ae

    seen = []

    def recording_sample_time(*args, **kwargs):
        seen.append(kwargs["alpha"])
        return sample_time(*args, **kwargs)

    monkeypatch.setattr(ae, "sample_time", recording_sample_time)
    base = ActionExpertConfig.preset("tiny", 16, image_size=32, hidden_size=64, intermediate_size=128, chunk_size=8)
    g = torch.Generator().manual_seed(0)
    lat, img, act = torch.randn(2, 3, 16, generator=g), torch.randn(2, 1, 3, 32, 32, generator=g), torch.randn(2, 8, 7)
    for alpha in (1.5, 1.0):
        expert = ActionExpert(ActionExpertConfig.from_dict({**base.to_dict(), "flow_time_alpha": alpha}))
        assert torch.isfinite(expert.loss(lat, img, None, act, generator=torch.Generator().manual_seed(1)))
    assert seen == [1.5, 1.0]
    with pytest.raises(ValueError, match="flow_time_alpha"):
        ActionExpertConfig.from_dict({**base.to_dict(), "flow_time_alpha": 0.0})


def test_stage1_saves_the_time_distribution(tmp_path, train_stage1):
    run, robot = train_stage1(flow_time_alpha=1.0)
    assert InstructVLA.from_pretrained(run / "model").action_expert.cfg.flow_time_alpha == 1.0
    with pytest.raises(ValueError, match="flow_time_alpha"):
        TrainConfig(out=str(tmp_path / "x"), stage=1, dataset=robot, flow_time_alpha=-1.0)
