"""Multimodal understanding evaluation: the held-out VQA / caption / QA split through `Policy.infer` in chat mode.

Each record of the multimodal corpus (`instructvla.data.multimodal`: {question, answer, kind} + a rendered image) is
asked as a chat question; the answers are scored with `text_metrics` (exact match, refined EM, BLEU-1..4, ROUGE-L,
CIDEr-D, MiniLM embedding cosine), over all records and per kind.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from instructvla.eval.text_metrics import EmbeddingScorer, compute_text_metrics

logger = logging.getLogger(__name__)

__all__ = ["ask", "evaluate_vqa", "load_vqa_records"]


def load_vqa_records(data: str | Path, split: str = "heldout", limit: int | None = None) -> list[dict[str, Any]]:
    """Records of `split` from a multimodal corpus (a dataset dir with multimodal/, a corpus dir or records.jsonl).

    Each record gets "image_path" (absolute). `limit` keeps the first N records (deterministic order); None = all.
    """
    from instructvla.data.multimodal import read_records, resolve_records_file

    if limit is not None and limit < 1:
        raise ValueError(f"load_vqa_records: limit must be >= 1 or None, got {limit}")
    path = resolve_records_file(data)
    records = read_records(path, split)
    if not records:
        splits = sorted({r["split"] for r in read_records(path, None)})
        raise ValueError(f"multimodal corpus {path} has no records in split {split!r} (splits present: {splits})")
    records = records[:limit] if limit is not None else records
    return [{**r, "image_path": str(path.parent / r["image"])} for r in records]


def _load_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def ask(policy: Any, image: np.ndarray, question: str, max_new_tokens: int = 64) -> str:
    """One chat question about one image through `Policy.infer` (mode "chat"); returns the answer text.

    Only the scene image is sent, also to a policy with a wrist camera (chat mode needs no wrist view; the corpus
    has one view, the one the model saw in multimodal training).
    """
    obs: dict[str, Any] = {"observation/image": image, "prompt": question,
                           "options": {"mode": "chat", "max_new_tokens": int(max_new_tokens)}}
    out = policy.infer(obs)
    return str(out.get("text", ""))


def _thumb_b64(image: np.ndarray, size: int = 128) -> str:
    from PIL import Image

    im = Image.fromarray(image)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def evaluate_vqa(policy: Any, records: Sequence[dict[str, Any]], max_new_tokens: int = 64,
                 embedder: EmbeddingScorer | None = None, num_examples: int = 8,
                 on_answer: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Ask every record's question and score the answers.

    records: dicts with "question", "answer", "kind" and "image_path" (or "image" as an (H, W, 3) uint8 array).
    Returns {"overall": metrics, "by_kind": {kind: metrics}, "examples": first `num_examples` (with thumbnails),
    "predictions": [{"id", "kind", "question", "answer", "prediction"}], "seconds": wall time}.
    `on_answer(i)` is called after each answer (progress bars).
    """
    if not records:
        raise ValueError("evaluate_vqa: no records")
    t0 = time.perf_counter()
    preds: list[dict[str, Any]] = []
    cache: dict[str, np.ndarray] = {}
    examples = []
    for i, rec in enumerate(records):
        for key in ("question", "answer"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise ValueError(f"records[{i}] needs a non-empty string {key!r}")
        if isinstance(rec.get("image"), np.ndarray):
            image = rec["image"]
        elif "image_path" in rec:
            image = cache.get(rec["image_path"])
            if image is None:
                image = cache.setdefault(rec["image_path"], _load_image(rec["image_path"]))
        else:
            raise ValueError(f"records[{i}] has neither an 'image' array nor an 'image_path'")
        answer = ask(policy, image, rec["question"], max_new_tokens)
        p = {"id": rec.get("id", i), "kind": str(rec.get("kind", "vqa")), "question": rec["question"],
             "answer": rec["answer"], "prediction": answer}
        preds.append(p)
        if len(examples) < num_examples:
            examples.append({**p, "image_png_b64": _thumb_b64(image)})
        if on_answer is not None:
            on_answer(i)
    hyp = [p["prediction"] for p in preds]
    ref = [p["answer"] for p in preds]
    overall = compute_text_metrics(hyp, ref, embedder)
    by_kind = {}
    for kind in sorted({p["kind"] for p in preds}):
        idx = [j for j, p in enumerate(preds) if p["kind"] == kind]
        by_kind[kind] = compute_text_metrics([hyp[j] for j in idx], [ref[j] for j in idx], embedder)
    return {"overall": overall, "by_kind": by_kind, "examples": examples, "predictions": preds,
            "seconds": time.perf_counter() - t0}
