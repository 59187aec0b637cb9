"""Print the figures of an `instructvla demo` run next to the project's targets.

usage: python benchmarks/demo_results.py [RUN_DIR]   (default runs/demo; RUN_DIR/results.json is read)

Reads only what the demo measured (results.json); prints a table, then one JSON line with the same figures.
A target whose inputs the run did not produce (e.g. the no-MoE baseline in the quick preset) is reported as "n/a".
Atomic success rates also carry their episode count and a 95 % Wilson score interval: with 8 episodes per task a
single run's rate is uncertain by about +-0.2, which a reader comparing it with a target should see.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def _suite(summary: dict[str, Any], prefix: str) -> str | None:
    """The suite name in a summary that starts with `prefix` ("atomic" -> "atomic" or "atomic-quick")."""
    names = sorted({k.split("/", 1)[0] for k in summary if k.startswith(prefix)})
    return names[0] if names else None


def _points(fraction: float | None) -> float | None:
    """A difference of success/match rates in percentage points, rounded so that float noise (0.08 - 0.06 =
    0.020000000000000004) cannot flip a comparison against a target."""
    return None if fraction is None else round(100 * fraction, 6)


def _get(summary: dict[str, Any] | None, key: str | None) -> float | None:
    if not summary or key is None:
        return None
    value = summary.get(key)
    return None if value is None else float(value)


QUICK_TARGET_TASKS = ("atomic/pick_any", "atomic/place_on_plate", "atomic/move_near")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate from `successes` of `n` episodes (95 % for z = 1.96)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of (figure, value, target, met) from a demo results dict."""
    evals: dict[str, dict[str, Any]] = results.get("evaluations", {})
    expert, generalist = evals.get("Expert"), evals.get("Generalist")
    stage0, nomoe = evals.get("Stage-0 VLM"), evals.get("Generalist (no MoE)")
    thinking = evals.get("Generalist (thinking)")
    quick = results.get("preset") == "quick"
    per_task = (results.get("config") or {}).get("eval_episodes")
    per_task = int(per_task) if per_task else None
    atomic = _suite(expert or {}, "atomic")
    instruct = _suite(generalist or {}, "instruct")
    rows: list[dict[str, Any]] = []

    def row(name: str, value: float | None, target: str, met: bool | None, episodes: int | None = None) -> None:
        """One figure; a success rate over a known number of `episodes` also gets its count and 95 % interval."""
        rows.append({"figure": name, "value": value, "target": target, "met": met})
        if value is not None and episodes:
            successes = round(value * episodes)
            lo, hi = wilson_interval(successes, episodes)
            rows[-1].update(episodes=episodes, successes=successes, ci95=[round(lo, 4), round(hi, 4)])

    minutes = results.get("wall_seconds", 0.0) / 60.0
    row("wall clock (min)", round(minutes, 2), "<= 20 (quick)" if quick else "-", minutes <= 20 if quick else None)
    for label, ev in (("Expert", expert), ("Generalist", generalist)):
        val = _get(ev, f"{atomic}/overall")
        goal = 0.6 if quick else 0.9
        n_tasks = sum(1 for k in (ev or {}) if k.startswith(f"{atomic}/task/"))
        if quick:  # the quick target is over the pick / place-on / move-near families (open-drawer is shown apart)
            row(f"{label} atomic success, all quick tasks", val, "-", None, per_task and per_task * n_tasks)
            fam = [_get(ev, f"{atomic}/task/{t}") for t in QUICK_TARGET_TASKS]
            val = None if any(v is None for v in fam) else sum(fam) / len(fam)
            row(f"{label} atomic success, pick/place_on/move_near", val, f">= {goal:.2f}",
                None if val is None else val >= goal, per_task and per_task * len(QUICK_TARGET_TASKS))
        else:
            row(f"{label} atomic success", val, f">= {goal:.2f}", None if val is None else val >= goal,
                per_task and per_task * n_tasks)
    if expert and atomic:
        for key in sorted(k for k in expert if k.startswith(f"{atomic}/task/")):
            row(f"Expert {key.split('/task/', 1)[1]}", _get(expert, key), "-", None, per_task)
    for split, goal in (("seen", 0.7), ("heldout", 0.5)):
        val = _get(generalist, f"{instruct}/{split}")
        row(f"Generalist instruct {split}", val, f">= {goal:.2f} (full)", None if val is None or quick else val >= goal)
    g_ins, e_ins = _get(generalist, f"{instruct}/overall"), _get(expert, f"{instruct}/overall")
    ratio = None if g_ins is None or not e_ins else g_ins / e_ins
    row("instruct Generalist / Expert", ratio, ">= 1.5", None if ratio is None else ratio >= 1.5)
    g_at, e_at = _get(generalist, f"{atomic}/overall"), _get(expert, f"{atomic}/overall")
    gap = None if g_at is None or e_at is None else e_at - g_at
    gap_pts = _points(gap)
    row("atomic Expert - Generalist (points)", gap_pts, "<= 5", None if gap_pts is None else gap_pts <= 5)
    for metric in ("exact_match", "embedding_cosine"):
        base = _get(stage0, f"vqa/{metric}")
        for label, ev in (("Generalist", generalist), ("no-MoE", nomoe)):
            val = _get(ev, f"vqa/{metric}")
            drop = None if val is None or base is None else _points(base - val)
            target = "<= 2" if label == "Generalist" else "> Generalist's drop"
            row(f"VQA {metric} drop vs stage 0, {label} (points)", drop, target, None)
    g_drop = next((r["value"] for r in rows if r["figure"] == "VQA exact_match drop vs stage 0, Generalist (points)"), None)
    n_drop = next((r["value"] for r in rows if r["figure"] == "VQA exact_match drop vs stage 0, no-MoE (points)"), None)
    for r in rows:
        if r["figure"] == "VQA exact_match drop vs stage 0, Generalist (points)" and g_drop is not None:
            r["met"] = g_drop <= 2
        if r["figure"] == "VQA exact_match drop vs stage 0, no-MoE (points)" and None not in (g_drop, n_drop):
            r["met"] = n_drop > g_drop
    t_on = _get(thinking, f"{instruct}/situated") if thinking else None
    t_off = _get(generalist, f"{instruct}/situated")
    row("situated: thinking on - off (points)", None if t_on is None or t_off is None else 100 * (t_on - t_off),
        ">= 0", None if t_on is None or t_off is None else t_on >= t_off)
    for stage, info in (results.get("training") or {}).items():
        row(f"{stage} training samples/s", info.get("samples_per_s"), "-", None)
        row(f"{stage} training steps", info.get("steps"), "-", None)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default="runs/demo")
    args = parser.parse_args(argv)
    path = Path(args.run_dir) / "results.json"
    if not path.is_file():
        print(f"no {path}: run `instructvla demo --out {args.run_dir}` first", file=sys.stderr)
        return 2
    results = json.loads(path.read_text())
    rows = figures(results)
    width = max(len(r["figure"]) for r in rows)
    print(f"instructvla demo results: {path} (preset {results.get('preset')})")
    print(f"{'figure':<{width}}  {'value':>10}  {'target':<22} {'met':<4} episodes (95 % interval)")
    for r in rows:
        v = r["value"]
        shown = "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        spread = f"{r['successes']}/{r['episodes']} ({r['ci95'][0]:.2f}-{r['ci95'][1]:.2f})" if "ci95" in r else ""
        print(f"{r['figure']:<{width}}  {shown:>10}  {r['target']:<22} {met:<4} {spread}".rstrip())
    print(json.dumps({"run": str(path), "preset": results.get("preset"), "figures": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
