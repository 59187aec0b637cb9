"""One training loop for every stage: AdamW at a constant LR, grad clipping, bf16 switch, checkpoints, metrics.

Launch: `instructvla train --stage=1 --dataset=... --out=...`, or for N processes
`torchrun --standalone --nproc_per_node N -m instructvla.train.trainer --stage=1 ...`.
`train(cfg)` builds the model and data for the stage (stages.py) and runs `run_training`, which only needs a
model whose forward(batch) returns a dict with "loss" (and optionally "fm_loss", "lm_loss") and map-style datasets.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instructvla.train import checkpoint as ckpt
from instructvla.train import distributed as D
from instructvla.train.config import TrainConfig, check_resume_compatible

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "fm_loss", "lm_loss", "kp_loss", "kp_heatmap_loss", "object_kp_loss", "fm_cumulative_loss")
METRICS_FILE = "metrics.jsonl"
_now = time.perf_counter  # one clock for the loop (tests replace it)
FINAL_DIR = "model"


@dataclass
class TrainParts:
    """What the loop trains, independent of how it was built.

    model:        forward(batch) -> {"loss": scalar tensor, optional "fm_loss"/"lm_loss"/"kp_loss"/"kp_heatmap_loss"/"object_kp_loss"/"fm_cumulative_loss"}; trainable parameters
                  already selected (requires_grad) for the stage.
    primary:      map-style dataset of the iteration's main step (robot samples; stage 0: multimodal samples).
    collate:      list of samples -> batch for the primary data (CPU tensors; moved to the device by the loop).
    param_groups: model -> AdamW parameter groups (called after wrapping, so FSDP2's sharded parameters are used).
    export:       (unwrapped model, folder) -> writes the final model folder (save_pretrained); rank 0 only.
    secondary:    map-style multimodal dataset for the extra LM-only step of stage 2 (None = no extra step).
    secondary_collate: collate for `secondary` (defaults to `collate`).
    shard_units:  model -> modules that FSDP2 shards one by one (the backbone's blocks).
    make_replica: () -> a fresh CPU model with the same structure (only needed for FSDP2 export).
    after_backward: wrapped model -> None, run after each backward before clipping (e.g. gradient masks that
                  FSDP2's parameter swap would otherwise lose).
    epoch_indices: the datasets read index k as item k % len, re-drawn (augmentation, prompts) for epoch k // len;
                  the loop then passes epoch * len + i, so each epoch draws fresh randomness reproducibly.
    """

    model: nn.Module
    primary: Any
    collate: Callable[[list], Any]
    param_groups: Callable[[nn.Module], list[dict]]
    export: Callable[[nn.Module, Path], None]
    secondary: Any = None
    secondary_collate: Callable[[list], Any] | None = None
    shard_units: Callable[[nn.Module], Any] | None = None
    make_replica: Callable[[], nn.Module] | None = None
    after_backward: Callable[[nn.Module], None] | None = None
    epoch_indices: bool = False


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to `device`; objects with `.to` are asked to move themselves."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    if hasattr(batch, "to") and callable(batch.to):
        return batch.to(device)
    return batch


class _Ema:
    """Exponential moving average of the trainable parameters (local shards under FSDP2; kept per rank)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live weights and EMA weights (call twice to undo)."""
        for name, p in self.params.items():
            tmp = p.detach().clone()
            p.copy_(self.shadow[name])
            self.shadow[name].copy_(tmp)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: _local(t).cpu() for n, t in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, t in self.shadow.items():
            if name not in state:
                raise ValueError(f"checkpoint EMA lacks {name}")
            _local(t).copy_(state[name])


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class _Progress:
    """rich progress bar (rank 0, TTY or forced) with loss, samples/s and ETA; a no-op otherwise.

    The ETA is the sooner of "all steps done" and "time limit reached" when the run has a time limit.
    """

    def __init__(self, enabled: bool, total: int, start: int, description: str,
                 time_limit_s: float | None = None) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.total, self.start_step, self.time_limit_s = total, start, time_limit_s
        self.t0 = time.perf_counter()
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[sps]} samples/s"),
            TextColumn("ETA {task.fields[eta]}"),
        )
        self.bar.start()
        self.task = self.bar.add_task(description, total=total, completed=start, loss="-", sps="-", eta="-")

    def _eta(self, step: int) -> str:
        elapsed = time.perf_counter() - self.t0
        done = step - self.start_step
        left = (self.total - step) * elapsed / done if done > 0 else float("inf")
        if self.time_limit_s is not None:
            left = min(left, max(self.time_limit_s - elapsed, 0.0))
        if left == float("inf"):
            return "-"
        minutes, seconds = divmod(int(left), 60)
        return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"

    def update(self, step: int, loss: float | None = None, sps: float | None = None) -> None:
        if self.bar is None:
            return
        fields = {"eta": self._eta(step)}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if sps is not None:
            fields["sps"] = f"{sps:.1f}"
        self.bar.update(self.task, completed=step, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _progress_enabled(mode: str, info: D.DistInfo) -> bool:
    if not info.is_main or mode == "never":
        return False
    return mode == "always" or sys.stderr.isatty()


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after `last_step` (a killed run may have logged past its last checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient norm became NaN or infinite."""


def _check_finite(values: dict[str, float], step: int, kind: str) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"step {step}: {kind} {name} is {value} (non-finite); stopping. Lower --lr, check the data for "
                "NaN/inf values, or turn off --bf16"
            )


def lr_multiplier(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
    """Share of `cfg.lr` at `step` (1-based), `elapsed_s` seconds into this run: 1 for the constant schedule; for
    cosine, from 1 down to `lr_final_ratio` over the budget (the larger of step / steps and elapsed / time_limit_s)."""
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = step / max(cfg.steps, 1)
    if cfg.time_limit_s:
        progress = max(progress, elapsed_s / cfg.time_limit_s)
    r = cfg.lr_final_ratio
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def run_training(cfg: TrainConfig, parts: TrainParts, info: D.DistInfo) -> dict[str, Any]:
    """Train `parts.model` for `cfg.steps` iterations; returns a summary (last step, losses, throughput, paths).

    Every rank must call this. Rank 0 writes metrics, checkpoints' shared files and the final model folder.
    """
    out = Path(cfg.out)
    strategy = D.resolve_strategy(cfg.strategy, info)
    model = parts.model.to(info.device)
    replica = parts.make_replica() if (strategy == "fsdp" and info.is_main and parts.make_replica) else None
    if strategy == "fsdp" and info.is_main and replica is None:
        raise ValueError("strategy 'fsdp' needs TrainParts.make_replica to export the final model")
    wrapped = D.wrap_model(model, info, strategy, shard_units=parts.shard_units)
    groups = parts.param_groups(model)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError(f"stage {cfg.stage}: no trainable parameters")
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before a resumed state brings its scheduled values
    ema = _Ema(model, cfg.ema) if cfg.ema else None

    seed = D.rank_seed(cfg.seed, info.rank)
    primary = D.ShardedBatches(parts.primary, cfg.batch_size, info, cfg.seed, parts.collate, cfg.num_workers,
                               name="multimodal dataset" if cfg.stage == 0 else "robot dataset",
                               epoch_indices=parts.epoch_indices, prefetch=cfg.prefetch)
    secondary = None
    if parts.secondary is not None and cfg.mm_every > 0:
        secondary = D.ShardedBatches(parts.secondary, cfg.mm_batch_size, info, cfg.seed + 1,
                                     parts.secondary_collate or parts.collate, cfg.num_workers,
                                     name="multimodal dataset", epoch_indices=parts.epoch_indices,
                                     prefetch=cfg.prefetch)

    # ---- resume or fresh start
    state = ckpt.TrainerState(config=cfg.to_dict(), world_size=info.world_size)
    latest = ckpt.latest_checkpoint(out)
    if latest is not None and not cfg.resume:
        raise ValueError(f"out: {out} already has checkpoints ({latest.name}); pass --resume=true or a new --out")
    if latest is not None:
        loaded = ckpt.load_checkpoint(latest, wrapped, optimizer, info)
        check_resume_compatible(loaded.state.config, cfg)
        state = loaded.state
        state.config = cfg.to_dict()
        primary.load_state_dict(loaded.data_state["primary"])
        if secondary is not None:
            secondary.load_state_dict(loaded.data_state["secondary"])
        if ema is not None:
            ema.load_state_dict(loaded.data_state["ema"])
        ckpt.restore_rng(loaded.rng)
        if info.is_main:
            _truncate_metrics(out / METRICS_FILE, state.step)
        logger.info("resumed from %s at step %d", latest, state.step)
    else:
        D.seed_everything(seed)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            _truncate_metrics(out / METRICS_FILE, 0)  # lines of a run killed before its first checkpoint
    D.barrier(info)

    def data_state() -> dict[str, Any]:
        d: dict[str, Any] = {"primary": primary.state_dict()}
        if secondary is not None:
            d["secondary"] = secondary.state_dict()
        if ema is not None:
            d["ema"] = ema.state_dict()
        return d

    autocast = (
        torch.autocast(device_type=info.device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    )
    started = _now()
    elapsed_before = state.elapsed_s

    def optimizer_step(batch: Any, kind: str, step: int, stop: bool) -> tuple[dict[str, float], float, bool]:
        """Forward, finite check (agreed by all ranks), backward, clip, AdamW step at the scheduled learning rate
        (rank 0's clock decides a time-based schedule for every rank). Returns (losses, grad norm, stop)."""
        with autocast:
            output = wrapped(to_device(batch, info.device))
        if not isinstance(output, dict) or "loss" not in output:
            raise TypeError(f"model forward must return a dict with 'loss', got {type(output).__name__}")
        names = [k for k in LOSS_KEYS if output.get(k) is not None]
        elapsed = (_now() - started) if info.is_main else 0.0
        local = torch.stack([output[k].detach().float().reshape(()).cpu() for k in names]
                            + [torch.tensor(elapsed, dtype=torch.float32), torch.tensor(float(stop))])
        summed = D.all_reduce_sum(info, local.to(info.device) if info.backend == "nccl" else local).cpu()
        losses = {k: float(v) / info.world_size for k, v in zip(names, summed[:-2].tolist())}
        scale = lr_multiplier(cfg, step, float(summed[-2]))
        _check_finite(losses, step, kind)
        output["loss"].backward()
        if parts.after_backward is not None:
            parts.after_backward(wrapped)
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        norm = float(_local(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
        _check_finite({"gradient norm": norm}, step, kind)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * scale
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update()
        return losses, norm, bool(summed[-1] > 0)

    progress = _progress_enabled(cfg.progress, info)
    bar = _Progress(progress, cfg.steps, state.step, f"stage {cfg.stage}", cfg.time_limit_s)
    metrics_path = out / METRICS_FILE
    window: dict[str, list[float]] = {}
    window_start, window_samples = _now(), 0
    samples_before = state.samples + state.mm_samples  # of earlier runs this one resumed
    saving_s = 0.0  # this run's time spent writing checkpoints
    last_saved = state.step if latest is not None else -1
    sps = 0.0
    wrapped.train()
    loop_started = _now()
    try:
        while state.step < cfg.steps:
            step = state.step + 1
            over_time = cfg.time_limit_s is not None and _now() - started > cfg.time_limit_s
            losses, norm, stop = optimizer_step(next(primary), "multimodal" if cfg.stage == 0 else "robot", step,
                                                over_time and info.is_main)
            for k, v in losses.items():
                window.setdefault(k, []).append(v)
            window.setdefault("grad_norm", []).append(norm)
            n = cfg.batch_size * info.world_size
            state.samples += n
            window_samples += n
            if secondary is not None and step % cfg.mm_every == 0:
                mm_losses, _, _ = optimizer_step(next(secondary), "multimodal", step, False)
                window.setdefault("mm_lm_loss", []).append(mm_losses.get("lm_loss", mm_losses["loss"]))
                state.mm_samples += cfg.mm_batch_size * info.world_size
                window_samples += cfg.mm_batch_size * info.world_size
            state.step = step
            state.elapsed_s = elapsed_before + _now() - started
            if step % cfg.log_every == 0 or step == cfg.steps or stop:
                now = _now()
                sps = window_samples / max(now - window_start, 1e-9)
                record = {"step": step, **{k: sum(v) / len(v) for k, v in window.items()},
                          "lr": optimizer.param_groups[0]["lr"], "samples_per_s": sps, "samples": state.samples,
                          "epoch": primary.epoch, "elapsed_s": state.elapsed_s}
                if info.is_main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    if not progress:
                        logger.info("step %d/%d loss %.4f %.1f samples/s", step, cfg.steps, record["loss"], sps)
                bar.update(step, record["loss"], sps)
                window, window_start, window_samples = {}, now, 0
            else:
                bar.update(step)
            if cfg.save_every and step % cfg.save_every == 0:
                t_save = _now()
                ckpt.save_checkpoint(out, wrapped, optimizer, state, data_state(), info, cfg.keep_last)
                save_s = _now() - t_save
                window_start += save_s  # throughput counts training time only
                saving_s += save_s
                last_saved = step
            if stop:
                logger.info("time limit of %.0f s reached at step %d: stopping", cfg.time_limit_s, step)
                break
        training_s = _now() - loop_started - saving_s
    finally:
        bar.close()
        for stream in (primary, secondary):
            if stream is not None:
                stream.close()

    if last_saved != state.step:
        ckpt.save_checkpoint(out, wrapped, optimizer, state, data_state(), info, cfg.keep_last)
    final_dir = out / FINAL_DIR
    export_model(wrapped, model, replica, parts.export, final_dir, info, ema)
    # throughput over this run's training time (not the last logging window's, which one slow step can skew)
    run_samples = state.samples + state.mm_samples - samples_before
    mean_sps = run_samples / training_s if run_samples and training_s > 0 else sps
    return {"step": state.step, "samples": state.samples, "samples_per_s": mean_sps, "final_dir": str(final_dir),
            "stopped_early": state.step < cfg.steps}


def export_model(
    wrapped: nn.Module,
    model: nn.Module,
    replica: nn.Module | None,
    export: Callable[[nn.Module, Path], None],
    folder: Path,
    info: D.DistInfo,
    ema: _Ema | None = None,
) -> None:
    """Write the final model folder on rank 0 (with EMA weights when kept); gathers FSDP2 shards first."""
    if ema is not None:
        ema.swap()
    try:
        if D.is_fsdp(wrapped):
            full = ckpt.gather_model_state(wrapped, info)
            if info.is_main:
                assert replica is not None
                replica.load_state_dict(full)
                export(replica, folder)
        elif info.is_main:
            export(model, folder)
    finally:
        if ema is not None:
            ema.swap()
    D.barrier(info)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Entry point of `instructvla train`: build the stage's model and data, then run the loop."""
    from instructvla.train.stages import build_parts

    info = D.init_distributed(cfg.device)
    D.quiet_other_ranks(info)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    def build_and_run() -> dict[str, Any]:  # the model lives only in this frame: freed before the group is destroyed
        return run_training(cfg, build_parts(cfg, info), info)

    try:
        summary = build_and_run()
        if info.is_main:
            logger.info("done: %s", summary)
        return summary
    finally:
        D.cleanup()


def main(argv: list[str] | None = None) -> int:
    """`python -m instructvla.train.trainer ...` (and torchrun's module entry): same options as `instructvla train`."""
    from instructvla.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
