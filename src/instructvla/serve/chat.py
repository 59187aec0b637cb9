"""`instructvla chat`: ask a policy questions about an image, locally or through a running `instructvla serve`."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from instructvla.serve.protocol import IMAGE_KEY, OPTIONS_KEY, PROMPT_KEY

logger = logging.getLogger(__name__)


@dataclass
class ChatConfig:
    """`instructvla chat`: answer questions about an image (one --question, or an interactive prompt on stdin)."""

    image: str | None = None  # image file (png/jpg/...) the questions are about
    question: str | None = None  # one question; omit for an interactive session (empty line or 'exit' quits)
    policy: str | None = None  # checkpoint directory to load locally
    random_tiny: bool = False  # a randomly initialised tiny policy (smoke tests; its answers are noise)
    server: str | None = None  # ws://host:port of a running `instructvla serve` instead of a local model
    api_key: str | None = None  # for --server; defaults to $INSTRUCTVLA_API_KEY
    max_new_tokens: int = 128
    device: str = "cpu"

    def __post_init__(self) -> None:
        sources = [self.policy is not None, self.random_tiny, self.server is not None]
        if sum(sources) != 1:
            raise ValueError("ChatConfig: give exactly one of --policy=DIR, --random_tiny=true, --server=ws://HOST:PORT")
        if self.image is None:
            raise ValueError("ChatConfig.image: give --image=PATH (the picture the questions are about)")
        if not os.path.isfile(self.image):
            raise ValueError(f"ChatConfig.image: {self.image!r} is not a file")
        if self.policy is not None and not os.path.isdir(self.policy):
            raise ValueError(f"ChatConfig.policy: {self.policy!r} is not a directory")
        if not 1 <= self.max_new_tokens <= 512:
            raise ValueError(f"ChatConfig.max_new_tokens must be in [1, 512], got {self.max_new_tokens}")
        if self.api_key is None:
            self.api_key = os.environ.get("INSTRUCTVLA_API_KEY") or None


def load_image(path: str) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as e:
        raise ValueError(f"cannot read image {path!r}: {e}") from e


def _answerer(cfg: ChatConfig) -> Any:
    if cfg.server is not None:
        from instructvla.serve.client import WebsocketPolicyClient

        return WebsocketPolicyClient(cfg.server, api_key=cfg.api_key)
    from instructvla.policy import Policy, PolicyConfig

    pcfg = PolicyConfig(device=cfg.device, chat_max_new_tokens=cfg.max_new_tokens)
    return Policy.random_tiny(pcfg) if cfg.random_tiny else Policy.from_pretrained(cfg.policy, pcfg)


def ask(policy: Any, image: np.ndarray, question: str, max_new_tokens: int = 128) -> str:
    """One chat-mode request to anything with ``infer(obs) -> dict``; returns the answer text."""
    obs = {IMAGE_KEY: image, PROMPT_KEY: question, OPTIONS_KEY: {"mode": "chat", "max_new_tokens": max_new_tokens}}
    return str(policy.infer(obs)["text"])


def chat(cfg: ChatConfig) -> int:
    """Entry point of `instructvla chat`."""
    from rich.console import Console

    console = Console()
    image = load_image(cfg.image)
    policy = _answerer(cfg)
    def show(answer: str) -> str:
        return answer if answer else "[dim](empty answer)[/dim]"

    if cfg.question is not None:
        console.print(show(ask(policy, image, cfg.question, cfg.max_new_tokens)))
        return 0
    console.print("[bold]Ask about the image[/bold] (empty line or 'exit' to quit)")
    for line in sys.stdin:
        question = line.strip()
        if not question or question.lower() in ("exit", "quit"):
            break
        console.print(f"[green]>[/green] {show(ask(policy, image, question, cfg.max_new_tokens))}")
    return 0
