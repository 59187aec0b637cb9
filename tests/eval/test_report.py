"""HTML report: content, escaping, embedded media, and rendering in headless Chromium."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from instructvla.eval.report import encode_video, load_results, render_report, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
EVIL = 'put the <b>red</b> cube & "the" <script>alert(1)</script> on the plate'


def _frames(t=6, h=48, w=62, color=(200, 30, 30)):
    frames = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, :, : (i + 1) * w // t] = color
    return frames


def _results(tmp_path, name, rate, n_videos=2, reply=None):
    vids = []
    for i in range(n_videos):
        p = encode_video(_frames(color=(30 * i, 200, 90)), tmp_path / name / "videos" / f"ep{i}", fps=5)
        vids.append({"suite": "instruct", "task_id": f"pick_apple_{i}", "seed": i, "success": i % 2 == 0,
                     "instruction": EVIL, "reply": reply, "path": str(p.relative_to(tmp_path / name)),
                     "replies": [[0, reply], [20, "then <place> it"]] if reply else []})
    return {
        "name": name, "policy": f"/ckpt/{name}", "config": {"suite": "instruct", "think": reply is not None},
        "root": str(tmp_path / name),
        "suites": {"instruct": {
            "overall": rate, "categories": {"aggregation": rate + 0.1, "situated": rate - 0.1},
            "splits": {"seen": rate + 0.05, "heldout": rate - 0.05},
            "tasks": [{"task_id": "pick_apple_0", "category": "aggregation", "split": "seen", "episodes": 4,
                       "successes": 3, "success_rate": 0.75},
                      {"task_id": "tidy<&>", "category": "situated", "split": "heldout", "episodes": 4,
                       "successes": 1, "success_rate": 0.25}]}},
        "vqa": {"split": "heldout", "overall": {"exact_match": 0.5, "bleu1": 0.4, "cider": 1.2, "count": 2},
                "by_kind": {"qa": {"exact_match": 0.5, "count": 2}},
                "examples": [{"kind": "qa", "question": "How many <cubes>?", "answer": "two", "prediction": "2"}]},
        "videos": vids,
    }


def test_encode_video_formats(tmp_path):
    p = encode_video(_frames(h=33, w=45), tmp_path / "v", fps=10)  # odd size gets padded
    assert p.suffix in (".mp4", ".webm", ".gif") and p.stat().st_size > 100
    import av

    with av.open(str(p)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 6 and frames[0].width == 46 and frames[0].height == 34
    with pytest.raises(ValueError, match="frames must be"):
        encode_video(np.zeros((4, 4, 3), np.uint8), tmp_path / "bad")
    with pytest.raises(TypeError, match="uint8"):
        encode_video(np.zeros((2, 4, 4, 3), np.float32), tmp_path / "bad")


def test_report_content_escaped_and_media(tmp_path):
    a = _results(tmp_path, "Expert", 0.4, n_videos=2)
    b = _results(tmp_path, "Generalist", 0.6, n_videos=3, reply="I will <pick> the apple & go")
    page = render_report([a, b])
    assert "<script>alert(1)</script>" not in page
    assert html_escaped(EVIL) in page
    assert "I will &lt;pick&gt; the apple &amp; go" in page
    assert "step 20: then &lt;place&gt; it" in page and page.count("1 later replies") == 3
    assert "tidy&lt;&amp;&gt;" in page and "How many &lt;cubes&gt;?" in page
    assert page.count("<video") + page.count('<img class="rollout"') == 5  # one per rollout given
    assert len(re.findall(r'<img class="plot"', page)) == 2  # one suite plot + one VQA plot
    assert "Expert" in page and "Generalist" in page
    assert "60.0" in page and "75.0" in page  # overall of Generalist, a task rate


def html_escaped(s):
    import html

    return html.escape(s, quote=True)


def test_write_report_from_files_and_errors(tmp_path):
    res = _results(tmp_path, "Expert", 0.5, n_videos=1)
    res_path = tmp_path / "Expert" / "results.json"
    res_path.write_text(json.dumps({k: v for k, v in res.items() if k != "root"}))
    loaded = load_results(res_path.parent)
    assert loaded["root"] == str(res_path.parent)
    out = write_report([res_path], tmp_path / "out")
    assert out.name == "report.html"
    assert out.read_text().count('class="rollout"') == 1
    with pytest.raises(ValueError, match="neither 'suites' nor 'vqa'"):
        render_report([{"name": "x"}])
    with pytest.raises(ValueError, match="lacks the key 'tasks'"):
        render_report([{"suites": {"s": {"overall": 0.1, "categories": {}}}}])
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "nope.json")


def _chromium(args, tmp_path, timeout=90):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HOME": str(tmp_path)})


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    a = _results(tmp_path, "Expert", 0.4, n_videos=1)
    b = _results(tmp_path, "Generalist", 0.6, n_videos=2, reply="I will pick the apple.")
    out = write_report([a, b], tmp_path / "report.html")
    url = out.resolve().as_uri()

    # every embedded video decodes (the report's script marks it) and nothing errors
    dom = _chromium(["--virtual-time-budget=8000", "--dump-dom", url], tmp_path).stdout
    assert "Suite: instruct" in dom
    n_vid = dom.count("<video")
    if n_vid:
        assert dom.count('data-state="loaded"') == n_vid, "a video did not load in Chromium"
    assert 'data-state="error"' not in dom

    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,2400", "--virtual-time-budget=5000", url], tmp_path)
    assert shot.is_file(), "Chromium wrote no screenshot"
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float32)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    assert img.std() > 10, "screenshot is blank"
    assert (img.reshape(-1, 3).max(1) - img.reshape(-1, 3).min(1) > 60).mean() > 0.005  # coloured plot bars
    keep = os.environ.get("INSTRUCTVLA_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_encode_video_fallbacks(tmp_path, monkeypatch):
    """Without H.264, VP9 webm; without any video encoder, an animated GIF (shown as <img>)."""
    import av

    from instructvla.eval import report

    vp9 = [c for c in report._video_codecs() if c[0] == "libvpx-vp9"]
    if vp9:
        monkeypatch.setattr(report, "_video_codecs", lambda: vp9)
        p = encode_video(_frames(), tmp_path / "a", fps=5)
        assert p.suffix == ".webm"
        with av.open(str(p)) as c:
            assert len(list(c.decode(video=0))) == 6
    monkeypatch.setattr(report, "_video_codecs", lambda: [])
    p = encode_video(_frames(), tmp_path / "b", fps=5)
    assert p.suffix == ".gif"
    from PIL import Image

    with Image.open(p) as im:
        assert im.n_frames == 6
    res = _results(tmp_path, "gif", 0.5, n_videos=0)
    res["videos"] = [{"suite": "s", "task_id": "t", "seed": 0, "success": True, "instruction": "x", "path": str(p)}]
    page = render_report([res])
    assert page.count('<img class="rollout"') == 1 and "data:image/gif;base64," in page
