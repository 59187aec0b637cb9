"""Robot-side helpers: a light websocket client, a chunk broker (k actions per query) and the adaptive ensemble.

`ChunkBroker` and `EnsembledPolicy` wrap anything with ``infer(obs) -> dict`` returning ``actions`` (chunk, D):
our `WebsocketPolicyClient`, openpi-client's ``WebsocketClientPolicy`` or a local `instructvla.policy.Policy`.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
from websockets.sync.client import ClientConnection, connect

from instructvla.eval.ensemble import AdaptiveEnsemble, OpenLoopChunker
from instructvla.serve.protocol import OPTIONS_KEY, pack, unpack

logger = logging.getLogger(__name__)


class InferencePolicy(Protocol):
    """Anything that maps an observation dict to a reply dict with ``actions`` (chunk, D)."""

    def infer(self, obs: dict) -> dict: ...


class ServerError(RuntimeError):
    """The server answered a request with an error text frame ``"<code>: <message>"``."""

    def __init__(self, frame: str) -> None:
        code, sep, message = frame.partition(": ")
        self.code = code if sep else "error"
        self.message = message if sep else frame
        super().__init__(frame)


class WebsocketPolicyClient:
    """Minimal client for `instructvla serve` (same wire protocol as openpi-client, without its dependencies).

    `reset()` makes the next request start a new episode on the server (``options.reset``).
    """

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8000",
        api_key: str | None = None,
        open_timeout_s: float = 10.0,
        reply_timeout_s: float | None = 120.0,
    ) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"url must start with ws:// or wss://, got {url!r}")
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._ws: ClientConnection = connect(
            url, additional_headers=headers, compression=None, max_size=None, open_timeout=open_timeout_s
        )
        self._timeout = reply_timeout_s
        first = self._ws.recv(timeout=self._timeout)
        if isinstance(first, str):
            raise ServerError(first)
        self.metadata: dict = unpack(first)
        self._reset_next = False

    def infer(self, obs: dict) -> dict:
        """Send one observation; return the reply dict. Raises `ServerError` when the server rejects it."""
        if self._reset_next:
            obs = {**obs, OPTIONS_KEY: {**obs.get(OPTIONS_KEY, {}), "reset": True}}
            self._reset_next = False
        self._ws.send(pack(obs))
        reply = self._ws.recv(timeout=self._timeout)
        if isinstance(reply, str):
            raise ServerError(reply)
        return unpack(reply)

    def send_raw(self, frame: bytes | str) -> bytes | str:
        """Send one raw frame and return the raw reply (testing and fuzzing)."""
        self._ws.send(frame)
        return self._ws.recv(timeout=self._timeout)

    def reset(self) -> None:
        """Start a new episode with the next request."""
        self._reset_next = True

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> WebsocketPolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunk_of(reply: dict) -> np.ndarray:
    if "actions" not in reply:
        raise KeyError(f"reply has no 'actions' (keys: {sorted(reply)}); was it a chat-mode request?")
    chunk = np.asarray(reply["actions"])
    if chunk.ndim != 2:
        raise ValueError(f"reply 'actions' must be (chunk, action_dim), got shape {chunk.shape}")
    return chunk


def _reset_inner(policy: Any) -> None:
    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset()


class ChunkBroker:
    """Query the policy once every `execute_k` control steps and hand out one action per call (open-loop first-k).

    ``infer(obs)`` returns ``{"actions": (D,), "chunk_step": i, **other reply fields}``.
    """

    def __init__(self, policy: InferencePolicy, execute_k: int) -> None:
        self.policy = policy
        self._chunker = OpenLoopChunker(execute_k)
        self._last: dict = {}

    @property
    def execute_k(self) -> int:
        return self._chunker.k

    def infer(self, obs: dict) -> dict:
        if self._chunker.needs_chunk():
            reply = self.policy.infer(obs)
            self._chunker.set_chunk(_chunk_of(reply))
            self._last = {k: v for k, v in reply.items() if k != "actions"}
        step = self._chunker.step_in_chunk
        return {**self._last, "actions": self._chunker.pop(), "chunk_step": step}

    def reset(self) -> None:
        """New episode: drop the current chunk and reset the wrapped policy."""
        self._chunker.reset()
        self._last = {}
        _reset_inner(self.policy)


class EnsembledPolicy:
    """Client-side adaptive ensemble: query every step, execute the ensembled action.

    ``infer(obs)`` returns ``{"actions": (D,) ensembled, "chunk": (chunk, D) newest raw chunk, **other reply fields}``.
    Keep the server's own ensemble off when using this (or the actions would be ensembled twice).
    """

    def __init__(self, policy: InferencePolicy, horizon: int = 8, alpha: float = 0.1) -> None:
        self.policy = policy
        self._ensemble = AdaptiveEnsemble(horizon=horizon, alpha=alpha)

    def infer(self, obs: dict) -> dict:
        reply = self.policy.infer(obs)
        chunk = _chunk_of(reply)
        others = {k: v for k, v in reply.items() if k != "actions"}
        return {**others, "actions": self._ensemble.add(chunk), "chunk": chunk}

    def reset(self) -> None:
        """New episode: clear the ensemble buffer and reset the wrapped policy."""
        self._ensemble.reset()
        _reset_inner(self.policy)
