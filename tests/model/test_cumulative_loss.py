"""The flow loss on a chunk's running sums of delta errors (ActionExpertConfig.cumulative_loss_weight)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from instructvla.model.action_expert import ActionExpert, ActionExpertConfig, cumulative_velocity_error
from instructvla.model.vla import InstructVLA
from instructvla.train.config import TrainConfig


def test_a_shared_drift_scores_more_than_independent_errors_of_the_same_size():
    target = torch.zeros(1, 16, 7)
    drift = torch.full((1, 16, 7), 0.1)  # the same 0.1 error at every step: the sum grows to 1.6
    alternating = drift * torch.tensor([1.0, -1.0]).repeat(8)[None, :, None]  # cancels every second step
    shared, independent = (cumulative_velocity_error(v, target, 6) for v in (drift, alternating))
    # running sums over n steps / sqrt(n): a shared error scores (n * 0.1)^2 / n, averaged over n = 1..16
    assert shared.item() == pytest.approx(0.01 * 17 / 2)
    assert independent.item() < 0.01 < shared.item()
    # only the first `dims` action dims count (the gripper is absolute, not a delta)
    gripper_only = torch.zeros(1, 16, 7)
    gripper_only[..., 6] = 1.0
    assert cumulative_velocity_error(gripper_only, target, 6).item() == 0.0


def test_expert_adds_the_term_only_when_weighted():
    cfg = ActionExpertConfig.preset("tiny", 16, image_size=32, hidden_size=64, intermediate_size=128, chunk_size=8)
    g = torch.Generator().manual_seed(0)
    lat, img, act = torch.randn(2, 3, 16, generator=g), torch.randn(2, 1, 3, 32, 32, generator=g), torch.randn(2, 8, 7)
    torch.manual_seed(0)
    assert "fm_cumulative" not in ActionExpert(cfg).loss_terms(lat, img, None, act)
    weighted = ActionExpert(ActionExpertConfig.from_dict({**cfg.to_dict(), "cumulative_loss_weight": 0.5}))
    terms = weighted.loss_terms(lat, img, None, act, generator=torch.Generator().manual_seed(1))
    assert math.isfinite(terms["fm_cumulative"].item()) and terms["fm_cumulative"].item() > 0
    with pytest.raises(ValueError, match="cumulative_loss_weight"):
        ActionExpertConfig.from_dict({**cfg.to_dict(), "cumulative_loss_weight": -1.0})
    with pytest.raises(ValueError, match="delta_dims"):
        ActionExpertConfig.from_dict({**cfg.to_dict(), "delta_dims": 8})


def test_stage1_trains_with_it_and_saves_the_weight(tmp_path, train_stage1):
    run, robot = train_stage1(cumulative_loss_weight=0.5)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["fm_cumulative_loss"]) and x["fm_cumulative_loss"] > 0 for x in lines)
    assert InstructVLA.from_pretrained(run / "model").action_expert.cfg.cumulative_loss_weight == 0.5
    with pytest.raises(ValueError, match="cumulative_loss_weight"):
        TrainConfig(out=str(tmp_path / "x"), stage=1, dataset=robot, cumulative_loss_weight=float("nan"))
