"""Multimodal corpus writer/reader and MultimodalDataset."""

import numpy as np
import pytest

from instructvla.data.lerobot import DatasetError
from instructvla.data.multimodal import MultimodalDataset, MultimodalWriter, read_records


def test_corpus_round_trip(tmp_path):
    img = np.zeros((24, 24, 3), np.uint8)
    img[:, :12] = 200
    with MultimodalWriter(tmp_path / "multimodal") as w:
        w.add(img, [{"question": "What colour?", "answer": "Grey.", "kind": "color"},
                    {"question": "How many?", "answer": "One.", "kind": "count"}], "train")
        w.add(img[::-1].copy(), [{"question": "Where?", "answer": "Left."}], "heldout")
    assert len(read_records(tmp_path)) == 3
    ds = MultimodalDataset(tmp_path, "train", image_size=16)
    assert len(ds) == 2
    s = ds[1]
    assert s["has_action"] is False and s["images"].shape == (1, 16, 16, 3) and s["prompt_type"] == "count"
    assert s["conversation"] == [{"role": "user", "content": "How many?"}, {"role": "assistant", "content": "One."}]
    assert len(MultimodalDataset(tmp_path / "multimodal/records.jsonl", "heldout")) == 1
    with pytest.raises(DatasetError, match="no records in split"):
        MultimodalDataset(tmp_path, "test")


def test_corpus_errors(tmp_path):
    with pytest.raises(DatasetError, match="no multimodal corpus"):
        MultimodalDataset(tmp_path)
    with MultimodalWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="answer"):
            w.add(np.zeros((8, 8, 3), np.uint8), [{"question": "q", "answer": ""}], "train")
        w.add(np.zeros((8, 8, 3), np.uint8), [{"question": "q", "answer": "a"}], "train")
    (tmp_path / "images/000000.png").unlink()
    with pytest.raises(DatasetError, match="000000.png.*missing"):
        read_records(tmp_path)
