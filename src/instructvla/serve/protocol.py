"""openpi's websocket wire format: msgpack frames with numpy arrays as maps, safe decoding, request validation.

Wire format (compatible with `openpi_client.msgpack_numpy`): an ndarray travels as the map
``{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": "<f4", b"shape": [..]}`` and a numpy scalar as
``{b"__npgeneric__": True, b"data": <python scalar>, b"dtype": "<f4"}``. Nothing is ever pickled: decoding accepts only
plain numeric/bool dtypes and checks that the byte count matches the shape.

A request is one map (an `Observation` plus an optional ``options`` map); the reply is one map (`PolicyOutput`).
Errors travel back as a *text* frame ``"<code>: <message>"`` (openpi-client raises on a text frame).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack
import numpy as np

PROTOCOL_VERSION = 1

IMAGE_KEY = "observation/image"
WRIST_KEY = "observation/wrist_image"
STATE_KEY = "observation/state"
PROMPT_KEY = "prompt"
OPTIONS_KEY = "options"
REQUEST_KEYS = (IMAGE_KEY, WRIST_KEY, STATE_KEY, PROMPT_KEY, OPTIONS_KEY)

# Per-request options (the ``options`` map of a request) and their meaning.
OPTION_DOC: dict[str, str] = {
    "think": "bool: generate (or reuse the cached) text reply before acting; default is the server's setting",
    "mode": "'act' (default: predict an action chunk) or 'chat' (answer the prompt as a question about the image)",
    "reset": "bool: start a new episode on this connection (clears the ensemble buffer and cached reasoning)",
    "max_new_tokens": "int in [1, 512]: generation budget for chat mode / the thinking reply",
}
MODES = ("act", "chat")

# Allowed array dtype kinds on the wire: bool, signed int, unsigned int, float. No object/void/complex/str/datetime.
_ALLOWED_KINDS = frozenset("biuf")
_MAX_NDIM = 8

ErrorCode = Literal["bad_message", "bad_request", "too_large", "internal_error"]


class ProtocolError(ValueError):
    """A message that cannot be decoded or a request that is not valid; ``code`` says which kind."""

    def __init__(self, message: str, code: ErrorCode = "bad_request") -> None:
        super().__init__(message)
        self.code: ErrorCode = code

    def frame(self) -> str:
        """The text frame sent back to the client."""
        return format_error(self.code, str(self))


def format_error(code: str, message: str) -> str:
    """Text error frame: ``"<code>: <message>"``."""
    return f"{code}: {message}"


# --------------------------------------------------------------------------------------------------------------------
# msgpack-numpy
# --------------------------------------------------------------------------------------------------------------------


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise TypeError(f"cannot send an array of dtype {obj.dtype} (only bool/int/uint/float)")
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise TypeError(f"cannot send a scalar of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialise object of type {type(obj).__name__}")


def pack(obj: Any) -> bytes:
    """Serialise `obj` (dicts, lists, str, numbers, numpy arrays/scalars) to one msgpack frame."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def _parse_dtype(raw: Any) -> np.dtype:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError as e:
            raise ProtocolError("array dtype is not ASCII", "bad_message") from e
    if not isinstance(raw, str) or len(raw) > 16:
        raise ProtocolError(f"array dtype must be a short string like '<f4', got {type(raw).__name__}", "bad_message")
    try:
        dtype = np.dtype(raw)
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"unknown array dtype {raw!r}", "bad_message") from e
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(f"array dtype {raw!r} is not allowed (only bool/int/uint/float)", "bad_message")
    return dtype


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        if set(obj) != {b"__ndarray__", b"data", b"dtype", b"shape"}:
            raise ProtocolError("array map must have exactly the keys __ndarray__, data, dtype, shape", "bad_message")
        data, shape = obj[b"data"], obj[b"shape"]
        if not isinstance(data, bytes):
            raise ProtocolError(f"array data must be bytes, got {type(data).__name__}", "bad_message")
        dtype = _parse_dtype(obj[b"dtype"])
        if not isinstance(shape, (list, tuple)) or len(shape) > _MAX_NDIM:
            raise ProtocolError(f"array shape must be a list of at most {_MAX_NDIM} ints", "bad_message")
        if not all(type(s) is int and s >= 0 for s in shape):
            raise ProtocolError(f"array shape must hold non-negative ints, got {list(shape)!r}", "bad_message")
        count = math.prod(shape)
        if count * dtype.itemsize != len(data):
            raise ProtocolError(
                f"array of shape {tuple(shape)} and dtype {dtype.str} needs {count * dtype.itemsize} bytes, "
                f"got {len(data)}",
                "bad_message",
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        if set(obj) != {b"__npgeneric__", b"data", b"dtype"}:
            raise ProtocolError("scalar map must have exactly the keys __npgeneric__, data, dtype", "bad_message")
        dtype = _parse_dtype(obj[b"dtype"])
        value = obj[b"data"]
        if not isinstance(value, (bool, int, float)):
            raise ProtocolError(f"scalar data must be a number, got {type(value).__name__}", "bad_message")
        try:
            return dtype.type(value)
        except (OverflowError, ValueError, TypeError) as e:
            raise ProtocolError(f"scalar {value!r} does not fit dtype {dtype.str}", "bad_message") from e
    return obj


def unpack(data: Any, max_bytes: int | None = None) -> Any:
    """Decode one frame; raise `ProtocolError` (code ``bad_message`` / ``too_large``) on anything malformed.

    Arrays come back read-only (they view the frame's bytes); copy before writing to them.
    """
    if isinstance(data, str):
        raise ProtocolError("expected a binary msgpack frame, got a text frame", "bad_message")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}", "bad_message")
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes", "too_large")
    try:
        return msgpack.unpackb(bytes(data), object_hook=_decode, raw=False, strict_map_key=True)
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises ValueError/TypeError/UnicodeDecodeError/ExtraData/StackError/...
        raise ProtocolError(f"not a valid msgpack message ({type(e).__name__}: {e})", "bad_message") from e


# --------------------------------------------------------------------------------------------------------------------
# request validation
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestSpec:
    """What a policy accepts: which cameras, whether it takes proprio state (and its size), and sanity limits."""

    wrist_camera: bool = False
    state_dim: int | None = None  # None: the policy takes no state
    min_image_side: int = 8
    max_image_side: int = 4096
    max_prompt_chars: int = 4000
    max_new_tokens_limit: int = 512

    def __post_init__(self) -> None:
        if self.state_dim is not None and self.state_dim <= 0:
            raise ValueError(f"RequestSpec.state_dim must be positive or None, got {self.state_dim}")
        if not 1 <= self.min_image_side <= self.max_image_side:
            raise ValueError(
                f"RequestSpec.min_image_side/max_image_side must satisfy 1 <= min <= max, "
                f"got {self.min_image_side}, {self.max_image_side}"
            )
        if self.max_prompt_chars <= 0:
            raise ValueError(f"RequestSpec.max_prompt_chars must be positive, got {self.max_prompt_chars}")

    @property
    def cameras(self) -> tuple[str, ...]:
        return (IMAGE_KEY, WRIST_KEY) if self.wrist_camera else (IMAGE_KEY,)


@dataclass
class RequestOptions:
    """Per-request options. ``think=None`` means "the server's default"."""

    mode: str = "act"
    think: bool | None = None
    reset: bool = False
    max_new_tokens: int | None = None


@dataclass
class Request:
    """A validated request: arrays are owned copies, the prompt is stripped."""

    image: np.ndarray  # (H, W, 3) uint8
    prompt: str
    wrist_image: np.ndarray | None = None  # (H, W, 3) uint8
    state: np.ndarray | None = None  # (state_dim,) float32, unnormalised
    options: RequestOptions = field(default_factory=RequestOptions)


def _unknown(name: str, known: tuple[str, ...] | list[str], what: str) -> ProtocolError:
    hint = difflib.get_close_matches(name, known, n=1)
    msg = f"unknown {what} {name!r}"
    if hint:
        msg += f"; did you mean {hint[0]!r}?"
    return ProtocolError(msg + f" (known: {', '.join(known)})")


def _check_image(key: str, value: Any, spec: RequestSpec) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ProtocolError(f"{key!r} must be an ndarray (H, W, 3) uint8, got {type(value).__name__}")
    if value.dtype != np.uint8:
        raise ProtocolError(f"{key!r} must have dtype uint8, got {value.dtype}")
    if value.ndim != 3 or value.shape[2] != 3:
        raise ProtocolError(f"{key!r} must have shape (H, W, 3), got {value.shape}")
    h, w = value.shape[:2]
    if not (spec.min_image_side <= h <= spec.max_image_side and spec.min_image_side <= w <= spec.max_image_side):
        raise ProtocolError(
            f"{key!r} has size {h}x{w}; each side must be in [{spec.min_image_side}, {spec.max_image_side}]"
        )
    return np.array(value, dtype=np.uint8, copy=True)


def _check_state(value: Any, spec: RequestSpec) -> np.ndarray:
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ProtocolError(f"{STATE_KEY!r} given as a list must hold only numbers")
        value = np.asarray(value, dtype=np.float64)
    if not isinstance(value, np.ndarray):
        raise ProtocolError(f"{STATE_KEY!r} must be an ndarray of floats, got {type(value).__name__}")
    if value.dtype.kind not in "iuf":
        raise ProtocolError(f"{STATE_KEY!r} must have a numeric dtype, got {value.dtype}")
    if value.shape != (spec.state_dim,):
        raise ProtocolError(f"{STATE_KEY!r} must have shape ({spec.state_dim},), got {value.shape}")
    state = value.astype(np.float32)
    if not np.all(np.isfinite(state)):
        bad = [int(i) for i in np.flatnonzero(~np.isfinite(state))]
        raise ProtocolError(f"{STATE_KEY!r} holds NaN/inf (or overflows float32) at index {bad}")
    return state


def _check_options(value: Any, spec: RequestSpec) -> RequestOptions:
    if not isinstance(value, Mapping):
        raise ProtocolError(f"{OPTIONS_KEY!r} must be a map, got {type(value).__name__}")
    opts = RequestOptions()
    for key, v in value.items():
        if not isinstance(key, str):
            raise ProtocolError(f"option names must be strings, got {key!r}")
        if key not in OPTION_DOC:
            raise _unknown(key, list(OPTION_DOC), "option")
        if key in ("think", "reset"):
            if not isinstance(v, (bool, np.bool_)):
                raise ProtocolError(f"option {key!r} must be a bool, got {type(v).__name__}")
            setattr(opts, key, bool(v))
        elif key == "mode":
            if v not in MODES:
                raise ProtocolError(f"option 'mode' must be one of {MODES}, got {v!r}")
            opts.mode = v
        elif key == "max_new_tokens":
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise ProtocolError(f"option 'max_new_tokens' must be an int, got {type(v).__name__}")
            if not 1 <= int(v) <= spec.max_new_tokens_limit:
                raise ProtocolError(f"option 'max_new_tokens' must be in [1, {spec.max_new_tokens_limit}], got {v}")
            opts.max_new_tokens = int(v)
    return opts


def validate_request(obs: Any, spec: RequestSpec) -> Request:
    """Check a decoded observation against `spec`; raise `ProtocolError` naming the first problem found.

    Unknown keys, missing keys and inputs the policy does not use (a wrist image or state sent to a policy without
    them) are errors, never silently dropped. In chat mode the wrist image and the state are optional.
    """
    if not isinstance(obs, Mapping):
        raise ProtocolError(f"a request must be a map of observation keys, got {type(obs).__name__}")
    for key in obs:
        if not isinstance(key, str):
            raise ProtocolError(f"request keys must be strings, got {key!r}")
        if key not in REQUEST_KEYS:
            raise _unknown(key, REQUEST_KEYS, "request key")
    if IMAGE_KEY not in obs:
        raise ProtocolError(f"missing required key {IMAGE_KEY!r}")
    if PROMPT_KEY not in obs:
        raise ProtocolError(f"missing required key {PROMPT_KEY!r}")
    prompt = obs[PROMPT_KEY]
    if isinstance(prompt, bytes):
        try:
            prompt = prompt.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"{PROMPT_KEY!r} is not valid UTF-8") from e
    if not isinstance(prompt, str):
        raise ProtocolError(f"{PROMPT_KEY!r} must be a string, got {type(prompt).__name__}")
    prompt = prompt.strip()
    if not prompt:
        raise ProtocolError(f"{PROMPT_KEY!r} is empty")
    if len(prompt) > spec.max_prompt_chars:
        raise ProtocolError(f"{PROMPT_KEY!r} has {len(prompt)} characters; the limit is {spec.max_prompt_chars}")
    if "\x00" in prompt:
        raise ProtocolError(f"{PROMPT_KEY!r} contains a NUL character")

    image = _check_image(IMAGE_KEY, obs[IMAGE_KEY], spec)
    wrist = None
    if WRIST_KEY in obs:
        if not spec.wrist_camera:
            raise ProtocolError(f"this policy uses only {IMAGE_KEY!r}; do not send {WRIST_KEY!r}")
        wrist = _check_image(WRIST_KEY, obs[WRIST_KEY], spec)
    options = _check_options(obs.get(OPTIONS_KEY, {}), spec)
    # acting feeds every camera to the action expert; chat only shows the VLM the cameras sent (side by side).
    if spec.wrist_camera and wrist is None and options.mode == "act":
        raise ProtocolError(f"missing required key {WRIST_KEY!r} (this policy uses a wrist camera to act; "
                            "it is optional only in chat mode)")
    state = None
    if STATE_KEY in obs:
        if spec.state_dim is None:
            raise ProtocolError(f"this policy takes no proprio state; do not send {STATE_KEY!r}")
        state = _check_state(obs[STATE_KEY], spec)
    elif spec.state_dim is not None and options.mode == "act":
        raise ProtocolError(f"missing required key {STATE_KEY!r} (this policy takes a ({spec.state_dim},) state)")
    return Request(image=image, prompt=prompt, wrist_image=wrist, state=state, options=options)
