"""Self-contained HTML evaluation report: tables, bar plots and rollout videos, no server, no external files.

Input: one or several results dicts (the `results.json` that `instructvla.eval.evaluate` writes; several = side by
side, e.g. Expert vs Generalist). Schema, as far as the report reads it:

    {"name": str, "policy": str, "config": dict, "root": dir that relative video paths start from (optional),
     "suites": {suite: {"overall": float, "categories": {cat: float}, "splits": {"seen": float, "heldout": float},
                        "by_split": {split: {"categories": {cat: float}}} (optional),
                        "tasks": [{"task_id", "category", "split", "episodes", "successes", "success_rate"}, ...]}},
     "vqa": {"split": str, "overall": {metric: float}, "by_kind": {kind: {metric: float}},
             "examples": [{"kind", "question", "answer", "prediction", "image_png_b64"?}]} (optional),
     "videos": [{"suite", "task_id", "seed", "success", "instruction", "reply", "replies"?, "path"}] (optional)}

Plots are matplotlib PNGs and videos are H.264 mp4 (yuv420p; VP9 webm, then animated GIF, when the encoder is
missing), all embedded as base64 data URIs, so the file opens straight from disk in any browser. All text is
HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["encode_video", "load_results", "render_report", "write_report"]

_MIME = {".mp4": "video/mp4", ".webm": "video/webm", ".gif": "image/gif", ".png": "image/png"}
_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
_TEXT_METRICS = ("exact_match", "refined_exact_match", "bleu1", "bleu4", "rouge_l", "cider", "embedding_cosine")


# ------------------------------------------------------------------------------------------------ video encoding


def _video_codecs() -> list[tuple[str, str, str]]:
    """(codec, container format, suffix) candidates in order of preference, filtered by what PyAV can encode."""
    import av

    out = []
    for codec, fmt, suffix in (("libx264", "mp4", ".mp4"), ("libvpx-vp9", "webm", ".webm")):
        try:
            av.codec.Codec(codec, "w")
        except Exception:  # noqa: BLE001 - PyAV raises several types for a missing encoder
            continue
        out.append((codec, fmt, suffix))
    return out


def _check_frames(frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"encode_video: frames must be (T>0, H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise TypeError(f"encode_video: frames must be uint8, got {arr.dtype}")
    return arr


def encode_video(frames: Sequence[np.ndarray] | np.ndarray, path: str | Path, fps: int = 10) -> Path:
    """Write RGB uint8 frames (T, H, W, 3) as a browser-playable video next to `path` (suffix chosen here).

    Tries H.264 mp4 (yuv420p, faststart), then VP9 webm, then an animated GIF (Pillow). Odd sizes are padded to
    even. Returns the path written (its suffix names the format).
    """
    arr = _check_frames(frames)
    if fps < 1:
        raise ValueError(f"encode_video: fps must be >= 1, got {fps}")
    t, h, w, _ = arr.shape
    if h % 2 or w % 2:  # yuv420p needs even sizes
        arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = arr.shape[1:3]
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    for codec, fmt, suffix in _video_codecs():
        import av

        target = base.with_suffix(suffix)
        try:
            opts = {"movflags": "faststart"} if fmt == "mp4" else {}
            with av.open(str(target), mode="w", format=fmt, options=opts) as container:
                stream = container.add_stream(codec, rate=fps)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                for frame in arr:
                    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            return target
        except Exception as e:  # noqa: BLE001 - try the next format, say why
            logger.warning("encoding %s with %s failed (%s); trying the next format", target, codec, e)
            target.unlink(missing_ok=True)
    from PIL import Image

    target = base.with_suffix(".gif")
    images = [Image.fromarray(f) for f in arr]
    images[0].save(target, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return target


# ------------------------------------------------------------------------------------------------ loading


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results.json; its directory becomes the root that relative video paths start from."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"results file {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"results file {path} must hold a JSON object, got {type(data).__name__}")
    data["root"] = str(path.parent)
    return data


def _check_results(res: Any, index: int) -> dict[str, Any]:
    if not isinstance(res, dict):
        raise TypeError(f"results[{index}] must be a dict or a path, got {type(res).__name__}")
    if "suites" not in res and "vqa" not in res:
        raise ValueError(f"results[{index}] ({res.get('name', '?')}) has neither 'suites' nor 'vqa'")
    for suite, body in res.get("suites", {}).items():
        for key in ("overall", "categories", "tasks"):
            if key not in body:
                raise ValueError(f"results[{index}] suite {suite!r} lacks the key {key!r}")
    return res


# ------------------------------------------------------------------------------------------------ pieces


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: Any) -> str:
    if x is None:
        return "&ndash;"
    return f"{100.0 * float(x):.1f}"


def _num(x: Any) -> str:
    if x is None:
        return "&ndash;"
    return f"{float(x):.3f}"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure_png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return _data_uri(buf.getvalue(), "image/png")


def _bar_plot(title: str, groups: list[str], series: dict[str, list[float | None]], ylabel: str,
              percent: bool = True) -> str:
    """Grouped bar plot (one group per label, one bar per series) as a PNG data URI. None values are skipped."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 1.1 * len(groups) * max(1, len(series)) ** 0.5 + 2), 3.2))
    ax = fig.add_subplot(1, 1, 1)
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (name, vals) in enumerate(series.items()):
        ys = [np.nan if v is None else (100.0 * v if percent else v) for v in vals]
        bars = ax.bar(x + (i - (n - 1) / 2) * width, ys, width, label=name, color=_COLORS[i % len(_COLORS)])
        for b, y in zip(bars, ys):
            if not np.isnan(y):
                ax.annotate(f"{y:.0f}" if percent else f"{y:.2f}", (b.get_x() + b.get_width() / 2, y),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=20 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if percent:
        ax.set_ylim(0, 105)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _figure_png(fig)


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Header cells are escaped here; row cells must already be HTML (escaped by the caller)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _names(results: list[dict]) -> list[str]:
    names, seen = [], {}
    for i, r in enumerate(results):
        name = str(r.get("name") or f"policy {i + 1}")
        if name in seen:
            seen[name] += 1
            name = f"{name} ({seen[name]})"
        else:
            seen[name] = 1
        names.append(name)
    return names


def _suite_section(suite: str, results: list[dict], names: list[str]) -> str:
    present = [(n, r["suites"][suite]) for n, r in zip(names, results) if suite in r.get("suites", {})]
    cats = sorted({c for _, s in present for c in s["categories"]})
    splits = [sp for sp in ("seen", "heldout") if any(sp in s.get("splits", {}) for _, s in present)]
    if len(splits) < 2:  # one split only (e.g. the atomic suite): its rows would repeat the totals
        splits = []
    parts = [f'<section class="suite"><h2>Suite: {_esc(suite)}</h2>']

    groups = cats + [f"{sp} templates" for sp in splits] + ["overall"]
    series = {n: [s["categories"].get(c) for c in cats] + [s.get("splits", {}).get(sp) for sp in splits]
              + [s["overall"]] for n, s in present}
    plot = _bar_plot(f"{suite}: success rate (%)", groups, series, "success %")
    parts.append(f'<img class="plot" alt="success rate per category, suite {_esc(suite)}" src="{plot}">')

    rows = [[f"<b>{_esc(c)}</b>"] + [_pct(s["categories"].get(c)) for _, s in present] for c in cats]
    for sp in splits:
        for c in cats:
            vals = [s.get("by_split", {}).get(sp, {}).get("categories", {}).get(c) for _, s in present]
            if any(v is not None for v in vals):
                rows.append([f"{_esc(sp)} &middot; {_esc(c)}"] + [_pct(v) for v in vals])
        rows.append([f"{_esc(sp)} templates"] + [_pct(s.get("splits", {}).get(sp)) for _, s in present])
    rows.append(["<b>overall</b>"] + [f"<b>{_pct(s['overall'])}</b>" for _, s in present])
    parts.append("<h3>Per category (success %, mean of per-task rates)</h3>")
    parts.append(_table(["category"] + [n for n, _ in present], rows, "summary"))

    # per task: union of task ids across policies, in first-seen order
    def key(t: dict) -> tuple[str, str]:
        return (str(t.get("split", "")), str(t["task_id"]))

    order: dict[tuple[str, str], dict] = {}
    for _, s in present:
        for t in s["tasks"]:
            order.setdefault(key(t), t)
    by_policy = [{key(t): t for t in s["tasks"]} for _, s in present]
    rows = []
    for tid, t in order.items():
        cells = [f"<code>{_esc(t['task_id'])}</code>", _esc(t.get("category", "")), _esc(t.get("split", ""))]
        for bp in by_policy:
            tt = bp.get(tid)
            cells.append("&ndash;" if tt is None else
                         f'{_pct(tt["success_rate"])} <span class="n">({int(tt.get("successes", 0))}/'
                         f'{int(tt.get("episodes", 0))})</span>')
        rows.append(cells)
    parts.append(f"<details><summary>Per task ({len(order)} tasks)</summary>")
    parts.append(_table(["task", "category", "split"] + [n for n, _ in present], rows, "tasks"))
    parts.append("</details></section>")
    return "\n".join(parts)


def _vqa_section(results: list[dict], names: list[str]) -> str:
    present = [(n, r["vqa"]) for n, r in zip(names, results) if r.get("vqa")]
    if not present:
        return ""
    parts = ['<section class="vqa"><h2>Multimodal understanding (held-out VQA / captions / QA)</h2>']
    metrics = [m for m in _TEXT_METRICS if any(m in v.get("overall", {}) for _, v in present)]
    rows = []
    for n, v in present:
        kinds = [("all", v.get("overall", {}))] + sorted(v.get("by_kind", {}).items())
        for kind, vals in kinds:
            rows.append([_esc(n), _esc(kind), str(int(vals.get("count", 0)))]
                        + [_num(vals.get(m)) for m in metrics])
    parts.append(_table(["policy", "kind", "n"] + metrics, rows, "summary"))
    if metrics:
        plot_metrics = [m for m in metrics if m != "cider"]
        series = {n: [v.get("overall", {}).get(m) for m in plot_metrics] for n, v in present}
        plot = _bar_plot("text metrics (all kinds)", plot_metrics, series, "score", percent=False)
        parts.append(f'<img class="plot" alt="text metrics" src="{plot}">')
    for n, v in present:
        ex = v.get("examples", [])
        if not ex:
            continue
        parts.append(f"<details><summary>{_esc(n)}: {len(ex)} examples</summary><div class='gallery'>")
        for e in ex:
            img = ""
            if e.get("image_png_b64"):
                img = f'<img class="thumb" alt="input image" src="data:image/png;base64,{_esc(e["image_png_b64"])}">'
            parts.append(f'<div class="card">{img}<div class="kind">{_esc(e.get("kind", ""))}</div>'
                         f'<div><b>Q:</b> {_esc(e.get("question", ""))}</div>'
                         f'<div><b>reference:</b> {_esc(e.get("answer", ""))}</div>'
                         f'<div><b>model:</b> {_esc(e.get("prediction", ""))}</div></div>')
        parts.append("</div></details>")
    parts.append("</section>")
    return "\n".join(parts)


def _video_tag(path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<div class="missing">video file missing: {_esc(path)}</div>'
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"video {path}: unknown format {path.suffix!r} (expected one of {sorted(_MIME)})")
    uri = _data_uri(path.read_bytes(), mime)
    if mime.startswith("image/"):
        return f'<img class="rollout" alt="{_esc(alt)}" src="{uri}">'
    return (f'<video class="rollout" controls muted loop autoplay playsinline preload="auto" '
            f'aria-label="{_esc(alt)}" src="{uri}"></video>')


def _later_replies(replies: list) -> str:
    """Replies regenerated later in the episode (thinking mode), after the first one."""
    if len(replies) < 2:
        return ""
    items = "".join(f"<li>step {_esc(step)}: {_esc(text)}</li>" for step, text in replies[1:])
    return f'<details class="reply"><summary>{len(replies) - 1} later replies</summary><ul>{items}</ul></details>'


def _videos_section(results: list[dict], names: list[str]) -> str:
    blocks = []
    for n, r in zip(names, results):
        vids = r.get("videos") or []
        if not vids:
            continue
        root = Path(r.get("root") or ".")
        cards = []
        for v in vids:
            p = Path(v["path"])
            p = p if p.is_absolute() else root / p
            ok = bool(v.get("success"))
            reply = v.get("reply")
            cards.append(
                f'<div class="card">{_video_tag(p, str(v.get("instruction", "")))}'
                f'<div class="{"ok" if ok else "fail"}">{"success" if ok else "failure"} &middot; '
                f'{_esc(v.get("suite", ""))} / <code>{_esc(v.get("task_id", ""))}</code> &middot; '
                f'seed {_esc(v.get("seed", ""))}</div>'
                f'<div class="instr"><b>instruction:</b> {_esc(v.get("instruction", ""))}</div>'
                + (f'<div class="reply"><b>model reply:</b> {_esc(reply)}</div>' if reply else "")
                + _later_replies(v.get("replies") or [])
                + "</div>")
        blocks.append(f"<h3>{_esc(n)}</h3><div class='gallery'>{''.join(cards)}</div>")
    if not blocks:
        return ""
    return '<section class="videos"><h2>Rollouts</h2>' + "".join(blocks) + "</section>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{margin-bottom:4px} .meta{color:#666;font-size:13px}
table{border-collapse:collapse;margin:8px 0 16px} th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left} table.tasks td:nth-child(2),
table.tasks td:nth-child(3){text-align:left} .n{color:#888;font-size:11px}
img.plot{max-width:100%;display:block;margin:8px 0}
.gallery{display:flex;flex-wrap:wrap;gap:12px} .card{border:1px solid #ddd;border-radius:6px;padding:8px;
width:260px;font-size:13px} video.rollout,img.rollout{width:256px;background:#000;display:block}
img.thumb{width:128px} .ok{color:#1a7f37;font-weight:600} .fail{color:#c0392b;font-weight:600}
.reply{color:#1f4e9c} .kind{color:#888} .missing,.novideo{color:#c0392b}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}
"""

# Marks each video once the browser has decoded its first frame (or says it cannot play it).
_JS = """
document.querySelectorAll('video.rollout').forEach(function(v){
  v.addEventListener('loadeddata', function(){ v.dataset.state = 'loaded'; });
  v.addEventListener('error', function(){
    v.dataset.state = 'error';
    var d = document.createElement('div'); d.className = 'novideo';
    d.textContent = 'this browser cannot play the embedded video';
    v.insertAdjacentElement('afterend', d);
  });
});
"""


def render_report(results: Sequence[dict[str, Any] | str | Path], title: str = "InstructVLA evaluation") -> str:
    """The report's HTML for one or several results (dicts or results.json paths), side by side."""
    if isinstance(results, (dict, str, Path)):
        results = [results]
    loaded = [load_results(r) if isinstance(r, (str, Path)) else r for r in results]
    if not loaded:
        raise ValueError("render_report: no results given")
    loaded = [_check_results(r, i) for i, r in enumerate(loaded)]
    names = _names(loaded)
    suites: list[str] = []
    for r in loaded:
        suites += [s for s in r.get("suites", {}) if s not in suites]

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<div class='meta'>generated {_esc(_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}"
        f" &middot; policies: {', '.join(_esc(n) for n in names)}</div>",
    ]
    if suites:
        rows = []
        for s in suites:
            rows.append([_esc(s)] + [_pct(r["suites"][s]["overall"]) if s in r.get("suites", {}) else "&ndash;"
                                     for r in loaded])
        parts.append("<h2>Overview (success %)</h2>")
        parts.append(_table(["suite"] + names, rows, "summary"))
    parts += [_suite_section(s, loaded, names) for s in suites]
    parts.append(_vqa_section(loaded, names))
    parts.append(_videos_section(loaded, names))
    cfgs = "".join(f"<h3>{_esc(n)}</h3><pre>{_esc(json.dumps(r.get('config', {}), indent=2, default=str))}</pre>"
                   f"<div class='meta'>policy: {_esc(r.get('policy', ''))}</div>" for n, r in zip(names, loaded))
    parts.append(f"<details><summary>Configuration</summary>{cfgs}</details>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(p for p in parts if p)


def write_report(results: Sequence[dict[str, Any] | str | Path] | dict[str, Any] | str | Path, out: str | Path,
                 title: str = "InstructVLA evaluation") -> Path:
    """Render `results` (one or several) to `out` (a .html file, or a directory that gets report.html)."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(results, title=title), encoding="utf-8")
    logger.info("wrote report %s", out)
    return out
