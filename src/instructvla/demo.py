"""`instructvla demo`: the whole InstructVLA pipeline end to end, at laptop or GPU scale.

collect demos -> stage 0 (tiny VLM pretraining on the simulator's multimodal corpus) -> stage 1 (Expert) ->
stage 2 (Generalist, VLA instruction tuning) [-> no-MoE baseline] -> closed-loop + VQA evaluation -> report.

Every phase writes its outputs under `--out` and a `done.json` marker; re-running the same command skips finished
phases, so a killed demo continues where it stopped (`--fresh` starts over).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from instructvla.train.config import LR_SCHEDULES

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
DONE_FILE = "done.json"


@dataclass(frozen=True)
class DemoPreset:
    """Sizes and budgets of one demo preset (time budgets in minutes of wall clock)."""

    model_preset: str
    camera_size: int
    image_size: int
    num_queries: int
    collect_suite: str
    episodes: int
    multimodal_samples: int
    stage0_minutes: float
    stage0_steps: int
    stage1_minutes: float
    stage1_steps: int
    stage2_minutes: float
    stage2_steps: int
    batch_size: int
    mm_batch_size: int
    lr: float
    noise_repeats: int
    eval_suites: str
    eval_episodes: int
    eval_max_steps: int | None
    eval_execution: str
    open_loop_k: int
    noise_scale: float
    instruct_episodes: int
    vqa_limit: int
    vqa_max_new_tokens: int
    no_moe_baseline: bool
    think_eval: bool
    keypoints: bool = True  # collect keypoint labels and train the action expert's keypoint readout on them
    use_state: bool = False  # proprioceptive state token (the paper's "(S.)" models)
    vision_tower: str = "dinov2"  # action-expert vision tower: "dinov2" (method) | "conv" (tiny CNN, CPU budgets)
    ema: float | None = None  # EMA decay of the trainable weights in stages 1 and 2 (the saved model gets them)
    keypoint_teacher_forcing: float = 0.0  # stage 1: share of samples whose keypoint tokens use the labels
    keypoint_action_bias: bool = False  # stage 1: keypoints (+ state) bias every action token directly
    keypoint_loss_weight: float = 1.0  # stage 1: weight of the keypoint L1 loss
    keypoint_heatmap_weight: float = 0.0  # stage 1: weight of the keypoint heat maps' cross-entropy at the labels
    object_keypoint_weight: float = 0.0  # stage 1: weight of the dense every-object grounding labels (0 = off)
    lr_schedule: str = "constant"  # every stage: constant | cosine (down to a tenth of lr over the stage's budget)
    stage2_lr: float | None = None  # stage 2's learning rate (None = lr): lower keeps the latents the frozen expert reads
    stage1_batch_size: int | None = None  # stage 1's robot batch (None = batch_size)
    cameras: tuple[str, ...] = ("primary", "wrist")  # views collected, trained on and evaluated
    augment: bool = True  # random 0.9-area crops + colour jitter in stages 1 and 2 (evaluation then centre-crops 0.9)
    regrasp: float = 0.0  # share of pick-based episodes collected from a missed grasp onward (sim/collect.py)
    family_weights: tuple[tuple[str, float], ...] = ()  # collection share per task family (others weigh 1)
    cumulative_loss_weight: float = 0.0  # stage 1: flow loss on the chunk's running sums of delta errors


PRESETS: dict[str, DemoPreset] = {
    # <= 20 minutes on 2 CPU cores: pick / place-on / move-near, tiny model, short schedules.
    "quick": DemoPreset(
        model_preset="tiny", camera_size=96, image_size=96, num_queries=16, collect_suite="atomic-quick", episodes=900, multimodal_samples=150,
        stage0_minutes=1.5, stage0_steps=100_000, stage1_minutes=12.5, stage1_steps=100_000,
        stage2_minutes=1.5, stage2_steps=100_000, batch_size=16, mm_batch_size=4, lr=1e-3, noise_repeats=4,
        eval_suites="atomic-quick,instruct-quick,vqa", eval_episodes=8, eval_max_steps=None,
        eval_execution="open_loop", open_loop_k=12, noise_scale=0.0, instruct_episodes=2, vqa_limit=100, vqa_max_new_tokens=24,
        no_moe_baseline=False, think_eval=False, use_state=True, vision_tower="conv", ema=0.995,
        keypoint_teacher_forcing=0.5, keypoint_action_bias=True, keypoint_heatmap_weight=1.0, object_keypoint_weight=1.0,
        cameras=("primary",), stage2_lr=3e-4, stage1_batch_size=32, augment=False, family_weights=(("open_drawer", 0.4),),
    ),
    # Hours on CPU, or one GPU: every family, the instruct suite, the no-MoE ablation and thinking mode.
    "full": DemoPreset(
        model_preset="small", camera_size=128, image_size=128, num_queries=64, collect_suite="instruct", episodes=2000, multimodal_samples=2000,
        stage0_minutes=60.0, stage0_steps=20_000, stage1_minutes=240.0, stage1_steps=60_000,
        stage2_minutes=90.0, stage2_steps=20_000, batch_size=32, mm_batch_size=8, lr=1e-4, noise_repeats=1,
        eval_suites="atomic,instruct,vqa", eval_episodes=10, eval_max_steps=None,
        eval_execution="ensemble", open_loop_k=4, noise_scale=1.0, instruct_episodes=10, vqa_limit=300, vqa_max_new_tokens=48,
        no_moe_baseline=True, think_eval=True,
    ),
}


@dataclass
class DemoConfig:
    """`instructvla demo`: collect -> stage 0 -> stage 1 -> stage 2 -> eval -> report.

    preset:   "quick" (the README default: <= 20 min on 2 CPU cores) or "full" (hours on CPU, or one GPU).
    out:      output folder: data/, stage0/, stage1/, stage2/, eval/, results.json, report.html.
    workers:  processes for collection and evaluation.
    device:   "auto" | "cpu" | "cuda" for training and evaluation.
    seed:     base seed of every phase.
    fresh:    delete `out` first instead of reusing finished phases.
    The remaining fields override the preset's value when set (see PRESETS in instructvla/demo.py); `batch_size`
    set without `stage1_batch_size` sets stage 1's batch too.
    """

    preset: str = "quick"
    out: str = "runs/demo"
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    fresh: bool = False
    model_preset: str | None = None
    camera_size: int | None = None
    image_size: int | None = None
    num_queries: int | None = None
    episodes: int | None = None
    multimodal_samples: int | None = None
    stage0_minutes: float | None = None
    stage1_minutes: float | None = None
    stage2_minutes: float | None = None
    stage0_steps: int | None = None
    stage1_steps: int | None = None
    stage2_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    noise_repeats: int | None = None
    noise_scale: float | None = None
    eval_suites: str | None = None
    eval_episodes: int | None = None
    eval_max_steps: int | None = None
    instruct_episodes: int | None = None
    vqa_limit: int | None = None
    no_moe_baseline: bool | None = None
    think_eval: bool | None = None
    keypoints: bool | None = None
    use_state: bool | None = None
    vision_tower: str | None = None
    ema: float | None = None
    keypoint_teacher_forcing: float | None = None
    keypoint_action_bias: bool | None = None
    keypoint_loss_weight: float | None = None
    keypoint_heatmap_weight: float | None = None
    object_keypoint_weight: float | None = None
    lr_schedule: str | None = None
    stage2_lr: float | None = None
    stage1_batch_size: int | None = None
    cameras: list[str] | None = None
    augment: bool | None = None
    regrasp: float | None = None
    cumulative_loss_weight: float | None = None
    family_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            import difflib

            hint = difflib.get_close_matches(self.preset, PRESETS, n=1)
            raise ValueError(f"DemoConfig.preset: unknown preset {self.preset!r} (choose from {sorted(PRESETS)})"
                             + (f"; did you mean {hint[0]!r}?" if hint else ""))
        if self.workers < 1:
            raise ValueError(f"DemoConfig.workers must be >= 1, got {self.workers}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"DemoConfig.device must be auto, cpu or cuda, got {self.device!r}")
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"DemoConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")

    def resolved(self) -> DemoPreset:
        """The preset with this config's overrides applied."""
        base = PRESETS[self.preset]
        overrides = {f.name: getattr(self, f.name) for f in fields(base) if getattr(self, f.name, None) is not None}
        if "cameras" in overrides:
            overrides["cameras"] = tuple(overrides["cameras"])
        if "family_weights" in overrides:
            overrides["family_weights"] = tuple(sorted(overrides["family_weights"].items()))
        if "batch_size" in overrides and "stage1_batch_size" not in overrides:
            overrides["stage1_batch_size"] = None  # --batch_size alone sets every stage's batch
        return replace(base, **overrides)


@dataclass
class PhaseLog:
    """Wall time and outcome of each phase, for the final table."""

    seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


def _done(folder: Path) -> dict | None:
    marker = folder / DONE_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def _mark_done(folder: Path, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (DONE_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str))
    os.replace(tmp, folder / DONE_FILE)


def _device(cfg: DemoConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _phase(name: str, folder: Path, log: PhaseLog, console: Any, run: Any) -> dict:
    """Run one phase unless its done marker exists; record its wall time."""
    done = _done(folder)
    if done is not None:
        console.print(f"[dim]{name}: already done in {folder} (skipped)[/dim]")
        log.seconds[name] = float(done.get("seconds", 0.0))
        return done
    console.rule(f"[bold]{name}")
    start = time.perf_counter()
    info = run() or {}
    info["seconds"] = time.perf_counter() - start
    _mark_done(folder, info)
    log.seconds[name] = info["seconds"]
    console.print(f"{name}: {info['seconds']:.0f} s")
    return info


def _collect(cfg: DemoConfig, p: DemoPreset, folder: Path) -> dict:
    from instructvla.sim.collect import CollectConfig, collect

    result = collect(CollectConfig(
        out=str(folder), suite=p.collect_suite, episodes=p.episodes, workers=cfg.workers,
        camera_size=p.camera_size, seed=cfg.seed, multimodal_samples=p.multimodal_samples, overwrite=True,
        keypoints=p.keypoints, cameras=list(p.cameras), regrasp=p.regrasp,
        family_weights=dict(p.family_weights),
    ))
    return {k: getattr(result, k) for k in ("episodes_kept", "failures", "errors", "frames", "multimodal_records")}


def _train(cfg: DemoConfig, p: DemoPreset, stage: int, folder: Path, data: Path, init: Path | None,
           minutes: float, steps: int, no_moe: bool = False) -> dict:
    from instructvla.train.config import TrainConfig
    from instructvla.train.trainer import train

    stage1_keypoints = stage == 1 and p.keypoints  # the readout's training options only shape a fresh expert
    summary = train(TrainConfig(
        stage=stage, dataset=None if stage == 0 else str(data), multimodal=str(data / "multimodal"),
        init=None if init is None else str(init), preset=p.model_preset, out=str(folder), steps=steps,
        batch_size=p.stage1_batch_size if stage == 1 and p.stage1_batch_size is not None else p.batch_size,
        mm_batch_size=p.mm_batch_size, device=_device(cfg),
        lr=p.stage2_lr if stage == 2 and p.stage2_lr is not None else p.lr,
        save_every=0, resume=True, seed=cfg.seed, no_moe=no_moe, progress="always", noise_repeats=p.noise_repeats,
        image_size=p.image_size, num_queries=p.num_queries, keypoints=p.keypoints and stage > 0,
        use_state=p.use_state, vision_tower=p.vision_tower, ema=p.ema if stage > 0 else None,
        keypoint_teacher_forcing=p.keypoint_teacher_forcing if stage1_keypoints else 0.0,
        keypoint_action_bias=p.keypoint_action_bias and stage1_keypoints,
        keypoint_loss_weight=p.keypoint_loss_weight,
        keypoint_heatmap_weight=p.keypoint_heatmap_weight if stage1_keypoints else 0.0,
        object_keypoint_weight=p.object_keypoint_weight if stage1_keypoints else 0.0,
        cumulative_loss_weight=p.cumulative_loss_weight if stage == 1 else 0.0,
        time_limit_s=minutes * 60.0, log_every=20, lr_schedule=p.lr_schedule, augment=p.augment,
    ))
    return {"model": summary["final_dir"], "steps": summary["step"], "samples_per_s": summary["samples_per_s"]}


def _evaluate(cfg: DemoConfig, p: DemoPreset, name: str, model_dir: str, folder: Path, data: Path,
              suites: str, think: bool = False) -> dict:
    """Evaluate one checkpoint; instruct suites run with fewer episodes per task than the atomic ones."""
    from instructvla.eval.evaluate import EvalConfig, evaluate_policy, load_results, write_report

    names = [s for s in suites.split(",") if s]
    groups = [[s for s in names if not s.startswith("instruct")], [s for s in names if s.startswith("instruct")]]
    merged: dict[str, Any] = {}
    for group, episodes in zip(groups, (p.eval_episodes, p.instruct_episodes)):
        if not group:
            continue
        sub = folder / ("instruct" if group[0].startswith("instruct") else "atomic")
        res = evaluate_policy(EvalConfig(
            policy=model_dir, name=name, suite=",".join(group), episodes=episodes, seeds=[cfg.seed + 1000],
            workers=cfg.workers, max_steps=p.eval_max_steps, camera_size=p.camera_size,
            execution=p.eval_execution, open_loop_k=p.open_loop_k, device=_device(cfg), out=str(sub),
            center_crop_area=None,  # the policy's own: the crop its training used (random 0.9-area crops or none)
            noise_scale=p.noise_scale,
            vqa_data=str(data), vqa_limit=p.vqa_limit, vqa_max_new_tokens=p.vqa_max_new_tokens, think=think,
        ))
        for video in res["videos"]:  # video paths are relative to each sub-evaluation's folder
            if video.get("path") and not Path(video["path"]).is_absolute():
                video["path"] = f"{sub.name}/{video['path']}"
        if not merged:
            merged = res
        else:
            merged["suites"].update(res["suites"])
            merged["videos"] += res["videos"]
            merged["timing"].update(res["timing"])
            if "vqa" in res:
                merged["vqa"] = res["vqa"]
    from instructvla.eval.evaluate import save_results

    merged["root"] = str(folder)
    save_results(merged, folder)
    write_report([load_results(folder / RESULTS_FILE)], folder / REPORT_FILE, title=f"InstructVLA evaluation: {name}")
    return {"results": str(folder / RESULTS_FILE), "summary": _headline(merged)}


def _headline(results: dict) -> dict:
    """The few numbers the final table shows, pulled from an evaluation's results dict (eval/evaluate.py schema)."""
    out: dict[str, Any] = {}
    for suite, res in results.get("suites", {}).items():
        out[f"{suite}/overall"] = res.get("overall")
        for split, value in (res.get("splits") or {}).items():
            out[f"{suite}/{split}"] = value
        for cat, value in (res.get("categories") or {}).items():
            out[f"{suite}/{cat}"] = value
        for split, score in (res.get("by_split") or {}).items():
            for cat, value in (score.get("categories") or {}).items():
                out[f"{suite}/{split}/{cat}"] = value
        for task in res.get("tasks", []):
            if task.get("split") in ("seen", None):
                out[f"{suite}/task/{task['task_id']}"] = task["success_rate"]
    vqa = results.get("vqa")
    if vqa:
        for key in ("exact_match", "refined_exact_match", "bleu1", "bleu4", "rouge_l", "cider", "embedding_cosine"):
            if key in vqa["overall"]:
                out[f"vqa/{key}"] = vqa["overall"][key]
    return out


def demo(cfg: DemoConfig) -> int:
    """Run the pipeline; returns 0 when every phase finished."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    p = cfg.resolved()
    out = Path(cfg.out)
    if cfg.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    log = PhaseLog()
    start = time.perf_counter()
    console.print(f"[bold]instructvla demo[/bold] preset={cfg.preset} model={p.model_preset} out={out}")

    data = out / "data"
    _phase("collect", data, log, console, lambda: _collect(cfg, p, data))
    s0 = _phase("stage 0 (VLM)", out / "stage0", log, console,
                lambda: _train(cfg, p, 0, out / "stage0", data, None, p.stage0_minutes, p.stage0_steps))
    from instructvla.data.lerobot import sharing_decoded_frames

    with sharing_decoded_frames():  # stage 2 (and the no-MoE baseline) reuse the frames stage 1 decoded
        s1 = _phase("stage 1 (Expert)", out / "stage1", log, console,
                    lambda: _train(cfg, p, 1, out / "stage1", data, Path(s0["model"]), p.stage1_minutes,
                                   p.stage1_steps))
        s2 = _phase("stage 2 (Generalist)", out / "stage2", log, console,
                    lambda: _train(cfg, p, 2, out / "stage2", data, Path(s1["model"]), p.stage2_minutes,
                                   p.stage2_steps))
        policies = {"Expert": s1["model"], "Generalist": s2["model"]}
        if p.no_moe_baseline:
            nm = _phase("stage 2 no-MoE baseline", out / "stage2_nomoe", log, console,
                        lambda: _train(cfg, p, 2, out / "stage2_nomoe", data, Path(s1["model"]), p.stage2_minutes,
                                       p.stage2_steps, no_moe=True))
            policies["Generalist (no MoE)"] = nm["model"]

    evals: dict[str, dict] = {}
    evals["Stage-0 VLM"] = _phase("eval stage-0 VQA", out / "eval" / "stage0", log, console,
                                  lambda: _evaluate(cfg, p, "Stage-0 VLM", s0["model"], out / "eval" / "stage0",
                                                    data, "vqa"))
    for name, model_dir in policies.items():
        folder = out / "eval" / name.lower().replace(" ", "_").replace("(", "").replace(")", "")
        evals[name] = _phase(f"eval {name}", folder, log, console,
                             lambda n=name, d=model_dir, f=folder: _evaluate(cfg, p, n, d, f, data, p.eval_suites))
    if p.think_eval:
        folder = out / "eval" / "generalist_thinking"
        evals["Generalist (thinking)"] = _phase(
            "eval Generalist thinking", folder, log, console,
            lambda: _evaluate(cfg, p, "Generalist (thinking)", s2["model"], folder, data,
                              p.eval_suites.replace(",vqa", ""), think=True))

    from instructvla.eval.evaluate import write_report

    report = write_report([e["results"] for e in evals.values()], out / REPORT_FILE,
                          title=f"instructvla demo ({cfg.preset})")
    total = time.perf_counter() - start
    results = {
        "preset": cfg.preset, "config": asdict(p), "wall_seconds": total, "phase_seconds": log.seconds,
        "training": {"stage0": s0, "stage1": s1, "stage2": s2},
        "evaluations": {name: e["summary"] for name, e in evals.items()},
        "report": str(report),
    }
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))

    table = Table(title=f"instructvla demo ({cfg.preset}) — {total / 60:.1f} min")
    keys = sorted({k for e in evals.values() for k in e["summary"]})
    table.add_column("metric")
    for name in evals:
        table.add_column(name, justify="right")
    for key in keys:
        row = [key]
        for e in evals.values():
            v = e["summary"].get(key)
            row.append("-" if v is None else f"{100 * v:.1f}" if isinstance(v, float) and v <= 1 else str(v))
        table.add_row(*row)
    console.print(table)
    console.print(f"results: {out / RESULTS_FILE}\nreport:  {report}")
    return 0
