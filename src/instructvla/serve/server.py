"""Websocket policy server speaking openpi's protocol (`instructvla serve`).

Per connection: the server sends one metadata frame, then answers every binary request frame (a msgpack-numpy
observation) with one binary reply frame, or with a text frame ``"<code>: <message>"`` when the request is bad; the
connection stays open after a bad request. Each connection is its own episode (ensemble buffer, cached reasoning).
`GET /healthz` answers 200. With an API key, the handshake must carry ``Authorization: Api-Key <key>`` (HTTP 401
otherwise). Model calls run one at a time in a worker thread so the event loop keeps serving other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse

from instructvla.serve.protocol import (
    OPTION_DOC,
    PROTOCOL_VERSION,
    ProtocolError,
    Request,
    format_error,
    pack,
    unpack,
)

logger = logging.getLogger(__name__)

API_KEY_ENV = "INSTRUCTVLA_API_KEY"
HEALTH_PATH = "/healthz"


class ServablePolicy(Protocol):
    """What the server needs from a policy (`instructvla.policy.Policy` implements it)."""

    def spawn(self) -> ServablePolicy: ...
    def parse(self, obs: Any) -> Request: ...
    def infer_request(self, request: Request) -> dict: ...
    def metadata(self) -> dict: ...


@dataclass
class ServeConfig:
    """`instructvla serve`: serve a policy checkpoint (or a random tiny policy) over openpi's websocket protocol."""

    policy: str | None = None  # checkpoint directory (config.json, model.safetensors, normalization.json, ...)
    random_tiny: bool = False  # serve a randomly initialised tiny policy (smoke tests, client development)
    host: str = "127.0.0.1"  # bind address; use 0.0.0.0 to accept connections from other machines
    port: int = 8000  # 0 picks a free port (logged)
    api_key: str | None = None  # require 'Authorization: Api-Key <key>'; defaults to $INSTRUCTVLA_API_KEY if set
    max_message_bytes: int = 16 * 2**20  # larger requests get a 'too_large' error frame
    think: bool = False  # default for requests that do not set options.think
    reasoning_every: int = 20  # thinking: regenerate the cached reply every N steps of an episode
    ensemble: bool = False  # server-side adaptive ensemble: actions[0] becomes the ensembled action
    ensemble_horizon: int = 8  # K chunks kept (paper: 2 Google robot, 7 WidowX, 8 LIBERO)
    ensemble_alpha: float = 0.1
    latent_cache_every: int = 1  # recompute the VLM latents every N steps (1 = every step)
    seed: int = 0  # flow-matching noise seed; each episode restarts from it
    device: str = "cpu"
    shutdown_grace_s: float = 10.0  # on SIGTERM, wait this long for in-flight requests

    def __post_init__(self) -> None:
        if (self.policy is None) == (not self.random_tiny):
            raise ValueError("ServeConfig: give exactly one of --policy=DIR or --random_tiny=true")
        if self.policy is not None and not os.path.isdir(self.policy):
            raise ValueError(f"ServeConfig.policy: {self.policy!r} is not a directory")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"ServeConfig.port must be in [0, 65535], got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"ServeConfig.max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("ServeConfig.api_key is empty")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"ServeConfig.shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")


class PolicyServer:
    """The asyncio websocket server around one policy. Use `run()` in an event loop or `ServerThread`."""

    def __init__(
        self,
        policy: ServablePolicy,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        max_message_bytes: int = 16 * 2**20,
        shutdown_grace_s: float = 10.0,
    ) -> None:
        self.policy = policy
        self.host = host
        self.port = port
        self.api_key = api_key
        self.max_message_bytes = max_message_bytes
        # Frames up to 4x the limit are read and answered with a 'too_large' error frame; beyond that the
        # websocket layer closes the connection (code 1009, "message too big") without reading the payload.
        self.hard_limit_bytes = 4 * max_message_bytes
        self.shutdown_grace_s = shutdown_grace_s
        self._executor: ThreadPoolExecutor | None = None
        self._inflight = 0
        self._idle: asyncio.Event | None = None
        self._metadata = {
            **policy.metadata(),
            "protocol_version": PROTOCOL_VERSION,
            "max_message_bytes": max_message_bytes,
            "requires_api_key": api_key is not None,
            "request_options": dict(OPTION_DOC),
        }
        self._metadata_frame = pack(self._metadata)
        self.requests_served = 0
        self.errors_sent = 0

    # ---------------------------------------------------------------------------------------------------- handshake
    def _process_request(self, connection: ServerConnection, request: HttpRequest) -> HttpResponse | None:
        if request.path.split("?", 1)[0] == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "OK\n")
        if self.api_key is not None:
            got = request.headers.get("Authorization", "")
            want = f"Api-Key {self.api_key}"
            if not hmac.compare_digest(got.encode("utf-8", "replace"), want.encode("utf-8")):
                logger.warning("rejected connection from %s: missing or invalid API key", connection.remote_address)
                return connection.respond(
                    HTTPStatus.UNAUTHORIZED,
                    "missing or invalid API key: send the header 'Authorization: Api-Key <key>'\n",
                )
        return None

    # ------------------------------------------------------------------------------------------------- per message
    async def _answer(self, session: ServablePolicy, message: Any) -> str | bytes:
        t0 = time.perf_counter()
        try:
            obs = unpack(message, max_bytes=self.max_message_bytes)
            request = session.parse(obs)
            t_parsed = time.perf_counter()
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor, session.infer_request, request)
            t_inferred = time.perf_counter()
            timing = dict(result.get("server_timing", {}))
            timing["decode_ms"] = (t_parsed - t0) * 1e3
            # time waiting for the model worker (other clients' requests) = executor wall time - infer time
            timing["queue_ms"] = max(0.0, (t_inferred - t_parsed) * 1e3 - timing.get("infer_ms", 0.0))
            result["server_timing"] = timing
            timing["server_ms"] = (time.perf_counter() - t0) * 1e3
            frame: str | bytes = pack(result)
            self.requests_served += 1
            return frame
        except ProtocolError as e:
            self.errors_sent += 1
            return e.frame()
        except Exception as e:  # a bug or a model failure: report it, keep serving
            logger.exception("inference failed")
            self.errors_sent += 1
            return format_error("internal_error", f"{type(e).__name__}: {e}")

    async def _handler(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        logger.info("client connected: %s", peer)
        session = self.policy.spawn()
        try:
            await ws.send(self._metadata_frame)
            async for message in ws:
                self._inflight += 1
                assert self._idle is not None
                self._idle.clear()
                try:  # in flight until the reply is handed to the socket (shutdown drains this)
                    await ws.send(await self._answer(session, message))
                finally:
                    self._inflight -= 1
                    if self._inflight == 0:
                        self._idle.set()
        except ConnectionClosed as e:
            logger.info("client %s closed: %s", peer, e)
        else:
            logger.info("client disconnected: %s", peer)

    # ------------------------------------------------------------------------------------------------------ running
    async def run(self, stop: asyncio.Event, ready: threading.Event | None = None) -> None:
        """Serve until `stop` is set, then drain in-flight requests (bounded) and close every connection (1001)."""
        self._idle = asyncio.Event()
        self._idle.set()
        # one worker: model calls run one at a time, off the event loop (which keeps answering everyone else)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="instructvla-model")
        async with ws_serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.hard_limit_bytes,
            compression=None,
            ping_interval=20,
            ping_timeout=60,
        ) as server:
            sockets = list(server.sockets)
            self.port = sockets[0].getsockname()[1] if sockets else self.port
            logger.info("serving on ws://%s:%d (health: http://%s:%d%s)", self.host, self.port, self.host, self.port,
                        HEALTH_PATH)
            if ready is not None:
                ready.set()
            await stop.wait()
            logger.info("shutting down: draining %d in-flight request(s)", self._inflight)
            server.server.close()  # stop accepting (websockets' close() runs once, so it comes last)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=self.shutdown_grace_s)
            server.close(close_connections=True, reason="server shutting down")
            await server.wait_closed()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None
        logger.info("server stopped (%d requests served, %d errors sent)", self.requests_served, self.errors_sent)


class ServerThread:
    """Run a `PolicyServer` in a background thread (tests, benchmarks, notebooks). Use as a context manager."""

    def __init__(self, server: PolicyServer, start_timeout_s: float = 30.0) -> None:
        self.server = server
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="instructvla-server", daemon=True)
        self._start_timeout_s = start_timeout_s

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.server.run(self._stop, self._ready)

        try:
            asyncio.run(main())
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._ready.set()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://{self.server.host}:{self.server.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(self._start_timeout_s):
            raise TimeoutError(f"server did not start within {self._start_timeout_s} s")
        if self._error is not None:
            raise RuntimeError(f"server failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_policy(cfg: ServeConfig) -> Any:
    """Load the policy a `ServeConfig` names (imports torch and the model lazily)."""
    from instructvla.policy import Policy, PolicyConfig

    pcfg = PolicyConfig(
        think=cfg.think,
        reasoning_every=cfg.reasoning_every,
        ensemble=cfg.ensemble,
        ensemble_horizon=cfg.ensemble_horizon,
        ensemble_alpha=cfg.ensemble_alpha,
        latent_cache_every=cfg.latent_cache_every,
        seed=cfg.seed,
        device=cfg.device,
    )
    if cfg.random_tiny:
        return Policy.random_tiny(pcfg)
    assert cfg.policy is not None
    return Policy.from_pretrained(cfg.policy, pcfg)


def serve(cfg: ServeConfig) -> int:
    """Entry point of `instructvla serve`: load the policy, serve until SIGTERM/SIGINT, shut down gracefully."""
    policy = build_policy(cfg)
    server = PolicyServer(
        policy,
        host=cfg.host,
        port=cfg.port,
        api_key=cfg.api_key,
        max_message_bytes=cfg.max_message_bytes,
        shutdown_grace_s=cfg.shutdown_grace_s,
    )
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and cfg.api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach this port can drive the robot", cfg.host)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.run(stop)

    asyncio.run(main())
    return 0
