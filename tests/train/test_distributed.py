"""Real processes: a two-process torchrun (gloo) run, and resume after a SIGKILL equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from toy import toy_parts

from instructvla.train import checkpoint as ckpt
from instructvla.train.config import TrainConfig
from instructvla.train.distributed import DistInfo, ShardedBatches
from instructvla.train.trainer import run_training

TOY = str(Path(__file__).with_name("toy.py"))


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _args(out: Path, *extra: str) -> list[str]:
    return ["--stage=1", "--dataset=toy", f"--out={out}", "--batch_size=4", "--log_every=1", "--progress=off",
            "--keep_last=0", *extra]


def _torchrun(nproc: int, args: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", TOY, *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_process_torchrun_gloo(tmp_path):
    out = tmp_path / "run"
    args = _args(out, "--stage=2", "--init=x", "--multimodal=toy", "--steps=4", "--save_every=2")
    proc = _torchrun(2, args)
    summary = json.loads(proc.stdout.split("SUMMARY ", 1)[1].splitlines()[0])
    assert summary["world_size"] == 2 and summary["step"] == 4
    assert summary["samples"] == 4 * 4 * 2  # global samples: steps x batch x processes
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and "mm_lm_loss" in r for r in rows)
    latest = ckpt.latest_checkpoint(out)
    assert latest.name == "step-000004"
    assert (latest / "rank-00000.pt").is_file() and (latest / "rank-00001.pt").is_file()
    assert json.loads((latest / ckpt.STATE_FILE).read_text())["world_size"] == 2
    assert (out / "model" / "model.pt").is_file()
    # the two ranks' data positions both advanced by 4 batches
    for r in (0, 1):
        st = torch.load(latest / f"rank-{r:05d}.pt", weights_only=True)
        assert st["data"]["primary"]["epoch"] * st["data"]["primary"]["batches_per_epoch"] + st["data"]["primary"][
            "batch"] == 4


@pytest.mark.slow
def test_two_process_fsdp2_gloo_resume(tmp_path):
    base = ("--strategy=fsdp", "--save_every=2")
    _torchrun(2, _args(tmp_path / "a", "--steps=4", *base))
    _torchrun(2, _args(tmp_path / "b", "--steps=2", *base))
    _torchrun(2, _args(tmp_path / "b", "--steps=4", "--resume=true", *base))
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_resume_after_sigkill_gives_the_same_loss_curve(tmp_path):
    steps, kill_after = 12, "step-000004"
    full, killed = tmp_path / "full", tmp_path / "killed"
    # the uninterrupted reference runs in this process (same single-thread CPU numerics as the subprocesses)
    run_training(TrainConfig(stage=1, dataset="toy", out=str(full), batch_size=4, log_every=1, progress="never",
                             keep_last=0, steps=steps, save_every=2), toy_parts(), DistInfo())
    proc = subprocess.Popen([sys.executable, TOY, *_args(killed, f"--steps={steps}", "--save_every=2")],
                            env=_env(TOY_STEP_SLEEP="0.05"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (ckpt.checkpoint_root(killed) / kill_after / ckpt.STATE_FILE).exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model").exists()  # it really died mid-run
    subprocess.run([sys.executable, TOY, *_args(killed, f"--steps={steps}", "--save_every=2", "--resume=true")],
                   env=_env(), check=True, capture_output=True, timeout=60)
    a, b = _metrics(full), _metrics(killed)
    assert [r["step"] for r in b] == list(range(1, steps + 1))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_sharded_batches_split_ranks_and_resume():
    data = list(range(23))
    streams = [ShardedBatches(data, 3, DistInfo(rank=r, world_size=2), seed=5, collate=list) for r in range(2)]
    assert len(streams[0]) == 3  # 23 // 2 = 11 per rank -> 3 batches of 3
    epoch0 = [[next(s) for _ in range(3)] for s in streams]
    seen = [i for rank in epoch0 for batch in rank for i in batch]
    assert len(seen) == len(set(seen)) == 18  # disjoint across ranks, no repeats within an epoch
    epoch1 = next(streams[0])
    assert streams[0].state_dict()["epoch"] == 1
    again = ShardedBatches(data, 3, DistInfo(rank=0, world_size=2), seed=5, collate=list)
    again.load_state_dict({"epoch": 1, "batch": 0, "batches_per_epoch": 3})
    assert next(again) == epoch1
    assert epoch1 != epoch0[0][0] or next(again) != epoch0[0][1]  # a new permutation each epoch
    with pytest.raises(ValueError, match="batches per epoch"):
        again.load_state_dict({"epoch": 0, "batch": 0, "batches_per_epoch": 4})


@pytest.mark.slow
def test_real_model_fsdp2_keeps_frozen_rows(tmp_path):
    """FSDP2 replaces parameters (the model's gradient hooks go with them): the trainer re-applies the row mask."""
    from instructvla.data.dataset import write_synthetic_dataset
    from instructvla.model.vla import InstructVLA

    data = write_synthetic_dataset(tmp_path / "data", num_episodes=2, length=6, image_size=32)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "instructvla.train.trainer", "--stage=1", f"--dataset={data}", f"--out={out}", "--steps=2",
           "--batch_size=2", "--strategy=fsdp", "--progress=never", "--device=cpu"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = InstructVLA.from_pretrained(out / "model")
    fresh = InstructVLA.from_preset("tiny", action_expert_overrides={"num_views": 2})
    emb, emb0 = trained.backbone.input_embeddings().weight, fresh.backbone.input_embeddings().weight
    frozen = torch.ones(emb.shape[0], dtype=torch.bool)
    frozen[trained.query_ids] = False
    assert torch.equal(emb[frozen], emb0[frozen])
    assert not torch.equal(emb[~frozen], emb0[~frozen])
    layer, layer0 = trained.backbone.decoder_layers[0].state_dict(), fresh.backbone.decoder_layers[0].state_dict()
    assert all(torch.equal(layer[k], layer0[k]) for k in layer)  # FSDP-sharded frozen blocks untouched


def test_epoch_indices_ask_for_a_fresh_draw_each_epoch():
    class Redraw:
        def __len__(self):
            return 4

        def __getitem__(self, k):
            return k  # a dataset that re-draws item k % 4 for epoch k // 4

    stream = ShardedBatches(Redraw(), 2, DistInfo(), seed=0, collate=list, epoch_indices=True)
    first = sorted(next(stream) + next(stream))
    second = sorted(next(stream) + next(stream))
    assert first == [0, 1, 2, 3] and second == [4, 5, 6, 7]


def test_prefetch_keeps_order_and_position_and_raises_loading_errors():
    data = list(range(23))
    plain = ShardedBatches(data, 3, DistInfo(), seed=5, collate=list)
    ahead = ShardedBatches(data, 3, DistInfo(), seed=5, collate=list, prefetch=2)
    assert [next(ahead) for _ in range(9)] == [next(plain) for _ in range(9)]
    assert ahead.state_dict() == plain.state_dict()  # counted on delivered batches, not on what the thread loaded
    ahead.load_state_dict(plain.state_dict())  # stops the thread; loading restarts from the position
    assert next(ahead) == next(plain)
    ahead.close()
    with pytest.raises(ValueError, match="prefetch"):
        ShardedBatches(data, 3, DistInfo(), seed=5, collate=list, prefetch=-1)

    class Corrupt:
        def __len__(self):
            return 8

        def __getitem__(self, k):
            if k == 5:
                raise OSError("frame 5: truncated video")
            return k

    stream = ShardedBatches(Corrupt(), 8, DistInfo(), seed=0, collate=list, prefetch=1)
    with pytest.raises(OSError, match="frame 5: truncated video"):
        next(stream)
