"""`instructvla eval`: closed-loop suites + held-out VQA for one policy -> results.json and a self-contained report.

Suites come from `instructvla.sim.suites` ("atomic", "atomic-quick", "instruct", "instruct-quick", or a suite JSONL
file) and are scored like SimplerEnv-Instruct by its `score_suite` (per-task success rate -> mean per category ->
mean of categories; seen vs held-out templates). "vqa" in the suite list asks the multimodal corpus's held-out
split through the policy's chat mode (`vqa.py`). Episodes run through `Policy.infer` (`rollout.py`), in parallel
worker processes if asked, with fixed seeds, so the same command gives the same numbers.

Python use: `evaluate_policy(cfg)` (or with an in-memory `Policy`) returns the results dict and writes
`cfg.out/results.json` + `report.html`; `write_report([...], out)` renders several results side by side.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instructvla.eval.report import load_results, write_report
from instructvla.eval.rollout import (
    EXECUTIONS,
    EpisodeJob,
    RolloutConfig,
    make_policy_config,
    run_jobs,
    safe_name,
)

logger = logging.getLogger(__name__)

__all__ = ["EvalConfig", "evaluate", "evaluate_policy", "parse_suites", "summarize_suite", "write_report"]

VQA_SUITE = "vqa"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"


@dataclass
class EvalConfig:
    """`instructvla eval`: closed-loop rollouts in the tabletop + VQA metrics + an HTML report.

    policy:        checkpoint directory (config.json, model.safetensors, normalisation stats, tokenizer).
    name:          display name in the report (default: the checkpoint directory's name).
    suite:         comma list of "atomic", "atomic-quick", "instruct", "instruct-quick", "vqa", or suite JSONL files.
    episodes:      episodes per task and seed (default: the suite's own, 10; quick suites 3).
    seeds:         evaluation seeds (default: [0]); each gives `episodes` fixed episodes per task.
    workers:       parallel worker processes (each loads the policy once; 1 = in this process).
    execution:     "ensemble" (query every step, adaptive ensemble over the last `ensemble_k` chunks, `alpha`) or
                   "open_loop" (execute the first `open_loop_k` actions of each chunk).
    latent_cache:  reuse the VLM latents, recomputing every `latent_every` policy calls.
    think:         thinking mode: generate a reply first, regenerated every `think_every` steps.
    max_steps:     per-episode step limit (default: each task's own).
    camera_size:   env camera resolution (default: the policy's image size).
    center_crop_area: test-time center crop (fraction of the area kept) before resizing; 1.0 = none; None (default):
                   the policy's own, matching how it was trained.
    noise_scale:   multiplies the flow-matching starting noise (1.0 = the method, 0.0 = deterministic chunks).
    device:        torch device of the policy.
    out:           output directory: results.json, report.html, videos/.
    videos:        rollout videos per task (first episodes), at most `max_videos` in all; frame stride `video_stride`.
    vqa_data:      dataset directory with multimodal/ (or a corpus directory / records.jsonl) for the "vqa" suite.
    vqa_split:     corpus split to evaluate; vqa_limit: first N records (None = all); vqa_max_new_tokens: budget.
    embedding:     add the all-MiniLM-L6-v2 embedding cosine to the VQA metrics.
    compare:       other results.json files (or their directories) to show side by side in the report.
    """

    policy: str | None = None
    name: str | None = None
    suite: str = "instruct"
    episodes: int | None = None
    seeds: list[int] | None = None
    workers: int = 1
    execution: str = "ensemble"
    ensemble_k: int = 8
    alpha: float = 0.1
    open_loop_k: int = 4
    latent_cache: bool = False
    latent_every: int = 2
    think: bool = False
    think_every: int = 20
    max_steps: int | None = None
    camera_size: int | None = None
    center_crop_area: float | None = None
    noise_scale: float = 1.0
    device: str = "cpu"
    out: str = "outputs/eval"
    videos: int = 1
    max_videos: int = 12
    video_stride: int = 2
    vqa_data: str | None = None
    vqa_split: str = "heldout"
    vqa_limit: int | None = 200
    vqa_max_new_tokens: int = 64
    embedding: bool = True
    compare: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.suite, str) or not [s for s in self.suite.split(",") if s.strip()]:
            raise ValueError(f"EvalConfig.suite must name at least one suite, got {self.suite!r}")
        if self.episodes is not None and self.episodes < 1:
            raise ValueError(f"EvalConfig.episodes must be >= 1 or None, got {self.episodes}")
        if self.seeds is not None and (not self.seeds or not all(isinstance(s, int) for s in self.seeds)):
            raise ValueError(f"EvalConfig.seeds must be a non-empty list of ints or None, got {self.seeds!r}")
        if self.workers < 1:
            raise ValueError(f"EvalConfig.workers must be >= 1, got {self.workers}")
        if self.execution not in EXECUTIONS:
            raise ValueError(f"EvalConfig.execution must be one of {EXECUTIONS}, got {self.execution!r}")
        for name in ("ensemble_k", "open_loop_k", "latent_every", "think_every", "video_stride",
                     "vqa_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not math.isfinite(self.alpha):
            raise ValueError(f"EvalConfig.alpha must be finite, got {self.alpha}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"EvalConfig.max_steps must be >= 1 or None, got {self.max_steps}")
        if self.camera_size is not None and self.camera_size < 16:
            raise ValueError(f"EvalConfig.camera_size must be >= 16 or None, got {self.camera_size}")
        if self.center_crop_area is not None and not 0.0 < self.center_crop_area <= 1.0:
            raise ValueError(f"EvalConfig.center_crop_area must be in (0, 1], got {self.center_crop_area}")
        if not np.isfinite(self.noise_scale) or self.noise_scale < 0:
            raise ValueError(f"EvalConfig.noise_scale must be a finite number >= 0, got {self.noise_scale}")
        if self.videos < 0 or self.max_videos < 0:
            raise ValueError(f"EvalConfig.videos / max_videos must be >= 0, got {self.videos} / {self.max_videos}")
        if self.vqa_limit is not None and self.vqa_limit < 1:
            raise ValueError(f"EvalConfig.vqa_limit must be >= 1 or None, got {self.vqa_limit}")

    def rollout_config(self) -> RolloutConfig:
        return RolloutConfig(
            execution=self.execution, ensemble_k=self.ensemble_k, alpha=self.alpha, open_loop_k=self.open_loop_k,
            latent_cache=self.latent_cache, latent_every=self.latent_every, think=self.think,
            think_every=self.think_every, max_steps=self.max_steps, video_stride=self.video_stride,
        )


# --------------------------------------------------------------------------------------------------- suites


def parse_suites(spec: str) -> list[str]:
    """Split a comma list of suite names / files, checking each now (unknown names raise with a hint)."""
    from instructvla.sim.suites import SUITES

    names = [s.strip() for s in spec.split(",") if s.strip()]
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"EvalConfig.suite lists {n!r} twice")
        seen.add(n)
        if n != VQA_SUITE and n not in SUITES and not Path(n).is_file():
            import difflib

            hint = difflib.get_close_matches(n, [*SUITES, VQA_SUITE], n=1)
            raise ValueError(f"EvalConfig.suite: unknown suite {n!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                             + f" (have {[*SUITES, VQA_SUITE]} or a suite JSONL file)")
    return names


def suite_tasks(name: str, episodes: int | None, seeds: Sequence[int] | None) -> list[Any]:
    """The `InstructTask`s of a suite name or suite file, with episodes / seeds overridden when given."""
    from instructvla.sim import suites as S

    if name in S.SUITES:
        return S.get_suite(name, num_episodes=episodes, seeds=tuple(seeds) if seeds is not None else None)
    tasks = S.load_suite_file(name)
    over: dict[str, Any] = {}
    if episodes is not None:
        over["num_episodes"] = episodes
    if seeds is not None:
        over["seeds"] = tuple(seeds)
    return [dataclasses.replace(t, **over) for t in tasks] if over else tasks


def summarize_suite(episodes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Scores of one suite from its episode records (SimplerEnv-Instruct rules, via `suites.score_suite`).

    Returns {"overall", "categories": {cat: mean over splits of the split's category mean}, "splits": {split:
    overall}, "by_split": score_suite's per-split dict, "tasks": [{"task_id", "category", "split", "family_id",
    "episodes", "successes", "success_rate", "mean_steps"}], "episodes": the records}.
    """
    from instructvla.sim.suites import SUITE_SPLITS, score_suite

    score = score_suite(episodes)
    splits = [s for s in SUITE_SPLITS if s in score]
    cats = sorted({c for s in splits for c in score[s]["categories"]})
    categories = {c: float(np.mean([score[s]["categories"][c] for s in splits if c in score[s]["categories"]]))
                  for c in cats}
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in episodes:
        groups.setdefault((e["split"], e["task_id"]), []).append(e)
    tasks = []
    for (split, tid), eps in groups.items():
        succ = sum(bool(e["success"]) for e in eps)
        rate = score[split]["tasks"][tid]
        if abs(rate - succ / len(eps)) > 1e-9:
            raise RuntimeError(f"score_suite's rate for {split}/{tid} ({rate}) disagrees with the episodes")
        tasks.append({"task_id": tid, "category": eps[0]["category"], "split": split,
                      "family_id": eps[0].get("family_id", ""), "episodes": len(eps), "successes": succ,
                      "success_rate": rate, "mean_steps": float(np.mean([e.get("steps", 0) for e in eps]))})
    return {"overall": score["overall"], "categories": categories,
            "splits": {s: score[s]["overall"] for s in splits},
            "by_split": {s: score[s] for s in splits}, "tasks": tasks, "episodes": list(episodes)}


def _select_videos(tasks: list[Any], per_task: int, cap: int) -> set[tuple[str, int]]:
    """(task key, episode index) pairs that get a video: the first `per_task` episodes, spread evenly, <= cap."""
    cands = [(t.key, e) for e in range(per_task) for t in tasks if e < t.num_episodes * len(t.seeds)]
    if len(cands) <= cap:
        return set(cands)
    idx = np.linspace(0, len(cands) - 1, cap).round().astype(int)
    return {cands[i] for i in idx}


def _suite_jobs(suite: str, tasks: list[Any], cfg: EvalConfig, env_kwargs: dict[str, Any],
                video_budget: int) -> list[EpisodeJob]:
    from instructvla.sim.suites import episode_seeds, make_task_env

    with_video = _select_videos(tasks, cfg.videos, video_budget)
    jobs = []
    for t in tasks:
        for e, seed in enumerate(episode_seeds(t)):
            meta = {"suite": suite, "task_id": t.task_id, "category": t.category, "split": t.split,
                    "family_id": t.family_id, "episode": e}
            video = (f"videos/{safe_name(suite)}__{safe_name(t.split)}__{safe_name(t.task_id)}__ep{e}"
                     if (t.key, e) in with_video else None)
            jobs.append(EpisodeJob(task=t, seed=seed, meta=meta, make_env=make_task_env, env_kwargs=env_kwargs,
                                   video=video))
    return jobs


# --------------------------------------------------------------------------------------------------- running


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[note]}"), disable=not enabled, transient=False)


def evaluate_policy(cfg: EvalConfig, policy: Any = None, progress: bool = True) -> dict[str, Any]:
    """Run every suite of `cfg` (and VQA), write results.json + report.html to `cfg.out`, return the results.

    policy: an in-memory `Policy` to evaluate (workers must be 1); otherwise `cfg.policy` is loaded. The policy's
    inference settings (ensemble, thinking, latent cache, crop, device) are set from `cfg`.
    """
    from instructvla.policy import Policy, PolicyConfig

    if policy is None and not cfg.policy:
        raise ValueError("EvalConfig.policy: give a checkpoint directory (--policy DIR)")
    if policy is not None and cfg.workers > 1:
        raise ValueError("EvalConfig.workers > 1 needs a checkpoint directory (each worker loads it); "
                         "an in-memory policy runs with workers=1")
    if cfg.policy and policy is None and not Path(cfg.policy).is_dir():
        raise FileNotFoundError(f"EvalConfig.policy: checkpoint directory {cfg.policy!r} does not exist")
    names = parse_suites(cfg.suite)
    if VQA_SUITE in names and not cfg.vqa_data:
        raise ValueError("EvalConfig.vqa_data: the 'vqa' suite needs a dataset directory with a multimodal/ corpus")
    rcfg = cfg.rollout_config()
    base = PolicyConfig(center_crop_area=cfg.center_crop_area, noise_scale=cfg.noise_scale, device=cfg.device)
    pcfg = make_policy_config(rcfg, base)
    if policy is None:
        policy = Policy.from_pretrained(cfg.policy, pcfg)
    else:
        policy.config = make_policy_config(rcfg, dataclasses.replace(policy.config, center_crop_area=cfg.center_crop_area,
                                                                        noise_scale=cfg.noise_scale))
    meta = policy.metadata()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    camera_size = cfg.camera_size or int(meta["image_size"])
    cameras = ("primary", "wrist") if policy.request_spec.wrist_camera else ("primary",)
    env_kwargs = {"camera_size": camera_size, "cameras": cameras}
    if cfg.max_steps is not None:
        env_kwargs["max_steps"] = cfg.max_steps
    name = cfg.name or (Path(cfg.policy).name if cfg.policy else getattr(policy, "name", "policy"))
    results: dict[str, Any] = {
        "schema": "instructvla.eval/1", "name": name, "policy": cfg.policy or getattr(policy, "source", None),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(cfg), "policy_config": dataclasses.asdict(policy.config),
        "policy_metadata": {k: meta.get(k) for k in ("model", "chunk_size", "cameras", "image_size", "state")},
        "env": {"camera_size": camera_size, "cameras": list(cameras)},
        "suites": {}, "videos": [], "timing": {}, "root": str(out),
    }
    video_budget = cfg.max_videos
    with _progress(progress) as bar:
        for suite in names:
            if suite == VQA_SUITE:
                results["vqa"] = _run_vqa(cfg, policy, bar)
                results["timing"]["vqa_s"] = results["vqa"]["seconds"]
                continue
            tasks = suite_tasks(suite, cfg.episodes, cfg.seeds)
            jobs = _suite_jobs(suite, tasks, cfg, env_kwargs, video_budget)
            video_budget -= sum(j.video is not None for j in jobs)
            t0 = time.perf_counter()
            pid = bar.add_task(f"{suite}", total=len(jobs), note="")
            episodes, succ = [], 0
            for res in run_jobs(jobs, rcfg, policy=policy if cfg.workers == 1 else None,
                                policy_dir=cfg.policy, policy_config=pcfg, workers=cfg.workers, out_dir=out):
                episodes.append(res.to_dict())
                succ += res.success
                bar.update(pid, advance=1, note=f"success {succ}/{len(episodes)}")
            order = {(j.meta["split"], j.meta["task_id"], j.meta["episode"]): i for i, j in enumerate(jobs)}
            episodes.sort(key=lambda e: order[(e["split"], e["task_id"], e["episode"])])
            seconds = time.perf_counter() - t0
            results["suites"][suite] = summarize_suite(episodes)
            steps = sum(e["steps"] for e in episodes)
            results["timing"][suite] = {"seconds": seconds, "episodes": len(episodes), "steps": steps,
                                        "steps_per_s": steps / seconds if seconds > 0 else None}
            results["videos"] += [
                {"suite": suite, "task_id": e["task_id"], "split": e["split"], "seed": e["seed"],
                 "success": e["success"], "instruction": e["instruction"], "reply": e["reply"],
                 "replies": e.get("replies", []), "steps": e["steps"], "path": e["video"]}
                for e in episodes if e.get("video")]
    save_results(results, out)
    write_report([results, *[load_results(c) for c in cfg.compare]], out / REPORT_FILE,
                 title=f"InstructVLA evaluation: {name}")
    return results


def _run_vqa(cfg: EvalConfig, policy: Any, bar: Any) -> dict[str, Any]:
    from instructvla.eval.text_metrics import EmbeddingScorer
    from instructvla.eval.vqa import evaluate_vqa, load_vqa_records

    records = load_vqa_records(cfg.vqa_data, cfg.vqa_split, cfg.vqa_limit)
    embedder = EmbeddingScorer(device=cfg.device) if cfg.embedding else None
    pid = bar.add_task("vqa", total=len(records), note="")
    res = evaluate_vqa(policy, records, cfg.vqa_max_new_tokens, embedder,
                       on_answer=lambda i: bar.update(pid, advance=1, note=""))
    res["split"] = cfg.vqa_split
    res["data"] = str(cfg.vqa_data)
    return res


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_results(results: dict[str, Any], out: str | Path) -> Path:
    """Write results as `out/results.json` (NaN -> null; the in-memory "root" is not saved)."""
    path = Path(out) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _jsonable({k: v for k, v in results.items() if k != "root"})
    path.write_text(json.dumps(data, indent=1))
    return path


# --------------------------------------------------------------------------------------------------- CLI


def _print_summary(results: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for suite, s in results.get("suites", {}).items():
        table = Table(title=f"{results['name']}: {suite} (success %)")
        table.add_column("")
        splits = list(s["splits"])
        for sp in splits:
            table.add_column(sp, justify="right")
        table.add_column("all", justify="right")
        for cat, v in s["categories"].items():
            table.add_row(cat, *[_fmt(s["by_split"][sp]["categories"].get(cat)) for sp in splits], _fmt(v))
        table.add_row("[b]overall[/b]", *[_fmt(s["splits"][sp]) for sp in splits], f"[b]{_fmt(s['overall'])}[/b]")
        console.print(table)
    if results.get("vqa"):
        v = results["vqa"]["overall"]
        table = Table(title=f"{results['name']}: VQA ({results['vqa']['split']}, n={int(v['count'])})")
        for k in ("exact_match", "refined_exact_match", "bleu1", "bleu4", "rouge_l", "cider", "embedding_cosine"):
            if k in v:
                table.add_column(k, justify="right")
        table.add_row(*[f"{v[k]:.3f}" for k in ("exact_match", "refined_exact_match", "bleu1", "bleu4", "rouge_l",
                                                 "cider", "embedding_cosine") if k in v])
        console.print(table)
    console.print(f"results: {out / RESULTS_FILE}\nreport:  {out / REPORT_FILE}")


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f}"


def evaluate(cfg: EvalConfig) -> int:
    """CLI entry point: evaluate, print a summary table, return 0."""
    results = evaluate_policy(cfg, progress=True)
    _print_summary(results, Path(cfg.out))
    return 0
