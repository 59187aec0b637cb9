"""The training loop on a small real model: resume equals uninterrupted, errors, checkpoints, time limit, EMA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from toy import toy_parts

from instructvla.train import checkpoint as ckpt
from instructvla.train.config import TrainConfig
from instructvla.train.distributed import DistInfo
from instructvla.train.trainer import NonFiniteLossError, lr_multiplier, run_training

ONE = DistInfo()


def cfg(out: Path, **kw) -> TrainConfig:
    base = dict(stage=1, dataset="toy", out=str(out), steps=8, batch_size=4, save_every=2, log_every=1,
                progress="off", keep_last=0)
    base.update(kw)
    return TrainConfig(**base)


def losses(out: Path, key: str = "loss") -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r[key] for r in rows]


def test_resume_gives_the_same_loss_curve(tmp_path):
    run_training(cfg(tmp_path / "a"), toy_parts(), ONE)
    run_training(cfg(tmp_path / "b", steps=4), toy_parts(), ONE)
    # A fresh process would rebuild the model from scratch: so do we (different init weights on purpose).
    run_training(cfg(tmp_path / "b", resume=True), toy_parts(seed=123), ONE)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(a) == len(b) == 8
    assert a == b  # bit-identical on CPU
    sa = torch.load(tmp_path / "a" / "model" / "model.pt")
    sb = torch.load(tmp_path / "b" / "model" / "model.pt")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_stage2_does_two_optimizer_steps_per_iteration(tmp_path):
    parts = toy_parts(mm=True)
    calls = []
    orig = parts.model.forward
    parts.model.forward = lambda batch: calls.append(bool(batch["has_action"].all())) or orig(batch)
    summary = run_training(cfg(tmp_path, stage=2, init="x", multimodal="toy", steps=4, mm_batch_size=2), parts, ONE)
    assert calls == [True, False] * 4  # robot step, then multimodal (LM only) step
    assert summary["step"] == 4
    assert len(losses(tmp_path, "mm_lm_loss")) == 4
    # mm_every=2: a multimodal step on even iterations only
    calls.clear()
    run_training(cfg(tmp_path / "e2", stage=2, init="x", multimodal="toy", steps=4, mm_every=2), parts, ONE)
    assert calls == [True, True, False, True, True, False]


def test_stage2_resume_is_exact_with_multimodal_stream(tmp_path):
    kw = dict(stage=2, init="x", multimodal="toy", steps=6, save_every=3)
    run_training(cfg(tmp_path / "a", **kw), toy_parts(mm=True), ONE)
    run_training(cfg(tmp_path / "b", **{**kw, "steps": 3}), toy_parts(mm=True), ONE)
    run_training(cfg(tmp_path / "b", resume=True, **kw), toy_parts(mm=True), ONE)
    assert losses(tmp_path / "a", "mm_lm_loss") == losses(tmp_path / "b", "mm_lm_loss")
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_nan_loss_stops_with_step_and_loss_name(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"step \d+: robot (loss|fm_loss|lm_loss) is nan"):
        run_training(cfg(tmp_path, steps=40), toy_parts(n=16, nan_index=3), ONE)


def test_empty_or_too_small_dataset_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="robot dataset is empty"):
        run_training(cfg(tmp_path), toy_parts(n=0), ONE)
    with pytest.raises(ValueError, match="too few"):
        run_training(cfg(tmp_path), toy_parts(n=3), ONE)


def test_existing_run_needs_resume_and_same_config(tmp_path):
    run_training(cfg(tmp_path, steps=2), toy_parts(), ONE)
    with pytest.raises(ValueError, match="--resume"):
        run_training(cfg(tmp_path, steps=4), toy_parts(), ONE)
    with pytest.raises(ValueError, match="batch_size was 4"):
        run_training(cfg(tmp_path, steps=4, batch_size=8, resume=True), toy_parts(), ONE)


def test_partial_checkpoint_never_becomes_latest(tmp_path):
    run_training(cfg(tmp_path, steps=4), toy_parts(), ONE)
    root = ckpt.checkpoint_root(tmp_path)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000004"
    # a save killed half-way: its temporary folder, or a step folder without the state file
    (root / ".tmp-step-000006").mkdir()
    (root / ".tmp-step-000006" / "model.pt").write_bytes(b"partial")
    (root / ".tmp-step-000005").mkdir()
    (root / "step-000008").mkdir()
    (root / "step-000008" / "model.pt").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000004"
    # resuming continues from step 4 and the next save replaces the stale temporary folder
    run_training(cfg(tmp_path, steps=6, resume=True), toy_parts(), ONE)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000006"
    assert not (root / ".tmp-step-000006").exists() and not (root / ".tmp-step-000005").exists()


def test_keep_last_prunes_old_checkpoints(tmp_path):
    run_training(cfg(tmp_path, steps=8, keep_last=2), toy_parts(), ONE)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [6, 8]


def test_time_limit_stops_cleanly_and_resume_continues(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 10))  # each perf_counter call advances 10 s
    monkeypatch.setattr("instructvla.train.trainer._now", lambda: float(next(clock)))
    summary = run_training(cfg(tmp_path, steps=100, save_every=0, time_limit_s=25), toy_parts(), ONE)
    assert summary["stopped_early"] and 1 <= summary["step"] < 100
    assert (tmp_path / "model" / "model.pt").is_file()
    assert ckpt.latest_checkpoint(tmp_path).name == f"step-{summary['step']:06d}"


def test_summary_throughput_is_the_runs_mean_without_checkpoint_writes(tmp_path, monkeypatch):
    clock, calls = [0.0], [0]  # the k-th forward takes k s, each checkpoint write 100 s
    monkeypatch.setattr("instructvla.train.trainer._now", lambda: clock[0])
    save = ckpt.save_checkpoint

    def slow_save(*args, **kwargs):
        clock[0] += 100.0
        return save(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", slow_save)
    parts = toy_parts()
    forward = parts.model.forward

    def timed_forward(batch):
        calls[0] += 1
        clock[0] += calls[0]
        return forward(batch)

    parts.model.forward = timed_forward
    summary = run_training(cfg(tmp_path, steps=6, save_every=2, batch_size=4), parts, ONE)
    assert summary["samples_per_s"] == pytest.approx(6 * 4 / (1 + 2 + 3 + 4 + 5 + 6))  # not the last step's 4 / 6


def test_ema_weights_are_exported_and_resumed(tmp_path):
    parts = toy_parts()
    run_training(cfg(tmp_path / "a", ema=0.5), parts, ONE)
    live = parts.model.state_dict()
    exported = torch.load(tmp_path / "a" / "model" / "model.pt")
    assert not torch.equal(live["embed.weight"], exported["embed.weight"])
    run_training(cfg(tmp_path / "b", ema=0.5, steps=4), toy_parts(), ONE)
    run_training(cfg(tmp_path / "b", ema=0.5, resume=True), toy_parts(), ONE)
    resumed = torch.load(tmp_path / "b" / "model" / "model.pt")
    assert all(torch.equal(exported[k], resumed[k]) for k in exported)


def test_frozen_parameters_do_not_move(tmp_path):
    parts = toy_parts()
    for p in parts.model.blocks.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in parts.model.blocks.state_dict().items()}
    run_training(cfg(tmp_path, steps=3), parts, ONE)
    after = parts.model.blocks.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_dataloader_workers_give_the_same_run(tmp_path):
    run_training(cfg(tmp_path / "a", steps=4, save_every=0), toy_parts(), ONE)
    run_training(cfg(tmp_path / "b", steps=4, save_every=0, num_workers=1), toy_parts(), ONE)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_prefetch_thread_gives_the_same_run_and_resume(tmp_path):
    run_training(cfg(tmp_path / "a"), toy_parts(), ONE)
    run_training(cfg(tmp_path / "b", steps=4, prefetch=2), toy_parts(), ONE)  # the thread ran ahead of step 4
    run_training(cfg(tmp_path / "b", resume=True, prefetch=3), toy_parts(seed=123), ONE)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    run_training(cfg(tmp_path / "c", steps=4, save_every=0, num_workers=1, prefetch=2), toy_parts(), ONE)
    assert losses(tmp_path / "c") == losses(tmp_path / "a")[:4]  # with DataLoader workers too


def test_cosine_schedule_follows_the_budget_and_survives_resume(tmp_path):
    run_training(cfg(tmp_path, lr=1e-3, lr_schedule="cosine", lr_final_ratio=0.1), toy_parts(), ONE)
    lrs = losses(tmp_path, "lr")
    c = cfg(tmp_path, lr=1e-3, lr_schedule="cosine", lr_final_ratio=0.1)
    assert lrs == pytest.approx([1e-3 * lr_multiplier(c, s, 0.0) for s in range(1, 9)])
    assert lrs[-1] == pytest.approx(1e-4) and all(a > b for a, b in zip(lrs, lrs[1:]))
    # a longer budget on resume rescales from the peak lr, not from the decayed value the checkpoint holds
    run_training(cfg(tmp_path, lr=1e-3, lr_schedule="cosine", lr_final_ratio=0.1, steps=16, resume=True),
                 toy_parts(), ONE)
    longer = cfg(tmp_path, lr=1e-3, lr_schedule="cosine", lr_final_ratio=0.1, steps=16)
    assert losses(tmp_path, "lr")[8] == pytest.approx(1e-3 * lr_multiplier(longer, 9, 0.0))
    assert lr_multiplier(cfg(tmp_path), 5, 0.0) == 1.0  # constant: the method's
    timed = cfg(tmp_path, lr_schedule="cosine", lr_final_ratio=0.0, steps=1000, time_limit_s=100.0)
    assert lr_multiplier(timed, 1, 50.0) == pytest.approx(0.5)  # the clock runs out before the steps
    assert lr_multiplier(timed, 1, 500.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        cfg(tmp_path, lr_schedule="linear")
    with pytest.raises(ValueError, match="lr_final_ratio must be in"):
        cfg(tmp_path, lr_final_ratio=1.5)
