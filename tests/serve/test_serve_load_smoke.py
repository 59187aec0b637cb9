"""The load/fuzz benchmark runs end to end at a tiny size and reports zero server crashes."""

import json
import pathlib
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_serve_load_benchmark_smoke():
    script = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"
    out = subprocess.run(
        [sys.executable, str(script), "--clients", "2", "--duration", "1", "--fuzz", "300", "--infer-reps", "2",
         "--image-size", "64"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["server_crashes"] == 0 and result["client_errors"] == []
    fuzz = result["fuzz"]
    assert fuzz["messages"] >= 300 and fuzz["unexpected_closes"] == 0 and fuzz["no_reply"] == 0
    assert fuzz["probe_failed"] == 0 and fuzz["serves_after"] and fuzz["healthy_after"]
    assert result["load_1"]["requests"] > 0
