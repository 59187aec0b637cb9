"""Multimodal (VQA / caption) corpora: a simple png + jsonl layout, its writer, and a torch Dataset over it.

Layout (under DIR/multimodal/ for a collected dataset):
    records.jsonl      one JSON object per line: {"id", "image": "images/000012.png", "split", "question",
                       "answer", "kind"}; several records may share one image.
    images/*.png       rendered scenes (RGB).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from instructvla.data import prompts
from instructvla.data.augment import resize_images
from instructvla.data.lerobot import DatasetError, line_error
from instructvla.jsonl import iter_jsonl
from instructvla.types import Sample

RECORDS_FILE = "records.jsonl"
REQUIRED_KEYS = ("image", "question", "answer", "split")


class MultimodalWriter:
    """Append scene images and their QA records to a corpus directory (created or overwritten)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.dir = Path(out_dir)
        (self.dir / "images").mkdir(parents=True, exist_ok=True)
        self._f = (self.dir / RECORDS_FILE).open("w")
        self._n_images = 0
        self._n_records = 0

    def add(self, image: np.ndarray, records: Sequence[Mapping[str, Any]], split: str) -> int:
        """Save one image (H, W, 3) uint8 and its records ({question, answer, kind}); returns the record count."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
        for r in records:
            if not r.get("question") or not r.get("answer"):
                raise ValueError(f"multimodal record needs non-empty 'question' and 'answer': {dict(r)}")
        rel = f"images/{self._n_images:06d}.png"
        Image.fromarray(image).save(self.dir / rel)
        self._n_images += 1
        for r in records:
            rec = {"id": self._n_records, "image": rel, "split": split, "question": r["question"],
                   "answer": r["answer"], "kind": r.get("kind", "vqa")}
            self._f.write(json.dumps(rec) + "\n")
            self._n_records += 1
        return len(records)

    def close(self) -> Path:
        self._f.close()
        return self.dir / RECORDS_FILE

    def __enter__(self) -> MultimodalWriter:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def resolve_records_file(root_or_file: str | os.PathLike) -> Path:
    """Accept a records.jsonl path, a corpus directory, or a dataset directory with a multimodal/ corpus."""
    p = Path(root_or_file)
    for cand in (p, p / RECORDS_FILE, p / "multimodal" / RECORDS_FILE):
        if cand.is_file():
            return cand
    raise DatasetError(p, f"no multimodal corpus found (looked for {RECORDS_FILE} and multimodal/{RECORDS_FILE})")


def read_records(root_or_file: str | os.PathLike, split: str | None = None) -> list[dict]:
    """Records of one split (all if None); every image path is checked to exist."""
    path = resolve_records_file(root_or_file)
    out = []
    for n, rec in iter_jsonl(path, error=line_error):
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            raise DatasetError(path, f"line {n}: missing key(s) {missing}")
        if split is None or rec["split"] == split:
            if not (path.parent / rec["image"]).is_file():
                raise DatasetError(path.parent / rec["image"], f"image of record on line {n} is missing")
            out.append(rec)
    return out


class MultimodalDataset(Dataset):
    """VQA / caption samples (`has_action=False`) from a multimodal corpus, one split.

    Yields `Sample`: images (1, size, size, 3) uint8, conversation (question -> answer), prompt_type = record kind.
    """

    def __init__(self, root_or_file: str | os.PathLike, split: str = "train", image_size: int = 224):
        self.path = resolve_records_file(root_or_file)
        self.records = read_records(self.path, split)
        if not self.records:
            raise DatasetError(self.path, f"no records in split {split!r}")
        self.split, self.image_size = split, image_size
        self._images: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.records)

    def image(self, rel: str) -> np.ndarray:
        if rel not in self._images:
            try:
                img = np.asarray(Image.open(self.path.parent / rel).convert("RGB"))
            except OSError as e:
                raise DatasetError(self.path.parent / rel, f"unreadable image ({e})") from e
            self._images[rel] = resize_images(img[None], self.image_size)[0]
        return self._images[rel]

    def __getitem__(self, idx: int) -> Sample:
        rec = self.records[idx % len(self.records)]
        return Sample(images=self.image(rec["image"])[None], conversation=prompts.vqa_prompt(rec["question"],
                      rec["answer"]), has_action=False, prompt_type=rec.get("kind", "vqa"))
