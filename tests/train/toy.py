"""A small real torch model and dataset for testing the training loop (real losses, real gradients).

Also a script: `python tests/train/toy.py --stage=1 --dataset=toy --out=...` (or under torchrun) trains the toy
model through `run_training` with the same draccus options as `instructvla train`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from instructvla.train.trainer import TrainParts


class ToyDataset:
    """Map-style dataset: sample i = (x, y, tokens) drawn from a fixed seed; `bad_index` gives a NaN sample."""

    def __init__(self, n: int = 64, seed: int = 0, has_action: bool = True, nan_index: int | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, 6)).astype(np.float32)
        w = rng.normal(size=(6, 3)).astype(np.float32)
        self.y = np.tanh(self.x @ w)
        self.tokens = rng.integers(0, 11, size=(n, 5))
        self.has_action = has_action
        self.nan_index = nan_index

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        x = self.x[i].copy()
        if self.nan_index is not None and i == self.nan_index:
            x[0] = np.nan
        return {"x": x, "y": self.y[i], "tokens": self.tokens[i], "has_action": self.has_action}


def collate(samples: list[dict]) -> dict:
    return {
        "x": torch.from_numpy(np.stack([s["x"] for s in samples])),
        "y": torch.from_numpy(np.stack([s["y"] for s in samples])),
        "tokens": torch.from_numpy(np.stack([s["tokens"] for s in samples])).long(),
        "has_action": torch.tensor([s["has_action"] for s in samples]),
    }


class ToyModel(nn.Module):
    """A 'backbone' (2 blocks) + an 'action head' + an 'lm head'; noise and dropout use the global torch RNG."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(6, width)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
                                     for _ in range(2)])
        self.drop = nn.Dropout(0.1)
        self.action_head = nn.Linear(width + 3, 3)
        self.lm_head = nn.Linear(width, 11 * 5)

    def forward(self, batch: dict) -> dict:
        if os.environ.get("TOY_STEP_SLEEP"):  # lets a test kill the process mid-run
            time.sleep(float(os.environ["TOY_STEP_SLEEP"]))
        h = self.embed(batch["x"])
        for block in self.blocks:
            h = h + block(h)
        h = self.drop(h)
        logits = self.lm_head(h).view(-1, 5, 11)
        lm = nn.functional.cross_entropy(logits.reshape(-1, 11), batch["tokens"].reshape(-1))
        out = {"lm_loss": lm}
        if bool(batch["has_action"].all()):
            noise = torch.randn_like(batch["y"])  # like flow matching: the loss depends on the RNG
            pred = self.action_head(torch.cat([h, noise], dim=-1))
            fm = ((pred - (batch["y"] - noise)) ** 2).mean()
            out["fm_loss"] = fm
            out["loss"] = fm + lm
        else:
            out["loss"] = lm
        return out


def export(model: nn.Module, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")


def toy_parts(n: int = 64, mm: bool = False, nan_index: int | None = None, seed: int = 0) -> TrainParts:
    torch.manual_seed(seed)  # same init on every rank
    model = ToyModel()

    def groups(m: nn.Module) -> list[dict]:
        return [{"params": [p for p in m.parameters() if p.requires_grad]}]

    return TrainParts(
        model=model,
        primary=ToyDataset(n, seed=1, nan_index=nan_index),
        collate=collate,
        param_groups=groups,
        export=export,
        secondary=ToyDataset(n, seed=2, has_action=False) if mm else None,
        shard_units=lambda m: list(m.blocks),
        make_replica=ToyModel,
    )


def main(argv: list[str]) -> int:
    import draccus

    from instructvla.train import distributed as D
    from instructvla.train.config import TrainConfig
    from instructvla.train.trainer import run_training

    cfg = draccus.parse(config_class=TrainConfig, args=argv)
    info = D.init_distributed(cfg.device)

    def build_and_train() -> dict:  # the model lives only inside this frame: freed before the group is destroyed
        nan_at = os.environ.get("TOY_NAN_INDEX")
        parts = toy_parts(n=int(os.environ.get("TOY_N", "64")), mm=cfg.stage == 2,
                          nan_index=int(nan_at) if nan_at else None)
        return run_training(cfg, parts, info)

    try:
        summary = build_and_train()
        summary["world_size"] = info.world_size
        if info.is_main:
            print("SUMMARY " + json.dumps(summary), flush=True)
    finally:
        D.cleanup()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    raise SystemExit(main(sys.argv[1:]))
