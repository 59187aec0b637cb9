"""Evaluation: closed-loop rollouts, SimplerEnv-Instruct-style scores, VQA text metrics and the HTML report.

Re-exports (imported lazily, so `import instructvla.eval` stays cheap): `EvalConfig`, `evaluate`,
`evaluate_policy`, `write_report`, `render_report`, `EmbeddingScorer`, `compute_text_metrics`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalConfig": "instructvla.eval.evaluate",
    "evaluate": "instructvla.eval.evaluate",
    "evaluate_policy": "instructvla.eval.evaluate",
    "write_report": "instructvla.eval.report",
    "render_report": "instructvla.eval.report",
    "EmbeddingScorer": "instructvla.eval.text_metrics",
    "compute_text_metrics": "instructvla.eval.text_metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'instructvla.eval' has no attribute {name!r}")
