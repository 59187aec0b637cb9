"""msgpack-numpy frames (interop with openpi-client) and request validation."""

import msgpack
import numpy as np
import pytest

from instructvla.serve.protocol import (
    ProtocolError,
    RequestSpec,
    pack,
    unpack,
    validate_request,
)

openpi_msgpack = pytest.importorskip("openpi_client.msgpack_numpy")

SPEC = RequestSpec(wrist_camera=True, state_dim=8)


def _obs(**over):
    obs = {
        "observation/image": np.zeros((32, 40, 3), np.uint8),
        "observation/wrist_image": np.ones((24, 24, 3), np.uint8),
        "observation/state": np.arange(8, dtype=np.float32),
        "prompt": "pick up the red cube",
    }
    obs.update(over)
    return {k: v for k, v in obs.items() if v is not None}


def test_roundtrip_and_openpi_interop():
    msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float32(2.5), "t": "x", "n": [1, {"b": True}]}
    for encoded in (pack(msg), openpi_msgpack.packb(msg)):
        out = unpack(encoded)
        np.testing.assert_array_equal(out["a"], msg["a"])
        assert out["a"].dtype == np.float32 and out["s"] == 2.5 and out["n"] == [1, {"b": True}]
    # our frames decode with openpi's decoder
    theirs = openpi_msgpack.unpackb(pack(msg))
    np.testing.assert_array_equal(theirs["a"], msg["a"])
    assert isinstance(theirs["s"], np.float32)


def test_pack_refuses_object_arrays():
    with pytest.raises(TypeError, match="dtype"):
        pack({"x": np.array([object()], dtype=object)})
    with pytest.raises(TypeError, match="cannot serialise"):
        pack({"x": {1, 2}})


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\xc1", "not a valid msgpack"),
        (b"\x92\x01", "not a valid msgpack"),  # truncated
        (msgpack.packb({1: 2}), "not a valid msgpack"),  # int key
        (msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 3, b"dtype": "<f4", b"shape": [1]}), "needs 4 bytes"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}), "not allowed"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "zz", b"shape": [0]}), "unknown array dtype"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}), "non-negative"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [0], b"x": 1}), "exactly"),
        (msgpack.packb({b"__npgeneric__": True, b"data": "s", b"dtype": "<f4"}), "must be a number"),
        (msgpack.packb({b"__npgeneric__": True, b"data": 300, b"dtype": "|u1"}), "does not fit"),
        (msgpack.packb([[[[]]]] * 2) + b"\x00", "not a valid msgpack"),  # extra data
        ("text", "text frame"),
    ],
)
def test_unpack_rejects_malformed(payload, match):
    with pytest.raises(ProtocolError, match=match) as info:
        unpack(payload)
    assert info.value.code == "bad_message"
    assert info.value.frame().startswith("bad_message: ")


def test_unpack_size_limit():
    with pytest.raises(ProtocolError, match="exceeds the limit") as info:
        unpack(b"\x00" * 100, max_bytes=10)
    assert info.value.code == "too_large"


def test_deep_nesting_is_an_error_not_a_crash():
    deep = b"\x91" * 100_000 + b"\x00"
    with pytest.raises(ProtocolError):
        unpack(deep)


def test_validate_accepts_good_request():
    req = validate_request(_obs(options={"think": True, "max_new_tokens": 5}), SPEC)
    assert req.image.shape == (32, 40, 3) and req.wrist_image.shape == (24, 24, 3)
    assert req.state.dtype == np.float32 and req.options.think is True and req.options.max_new_tokens == 5
    assert req.options.mode == "act" and req.prompt == "pick up the red cube"
    # chat mode needs no state and no wrist view (the VLM sees the cameras sent; the action expert does not run)
    req = validate_request(_obs(**{"observation/state": None, "options": {"mode": "chat"}}), SPEC)
    assert req.options.mode == "chat" and req.state is None and req.wrist_image is not None
    req = validate_request(_obs(**{"observation/wrist_image": None, "observation/state": None,
                                   "options": {"mode": "chat"}}), SPEC)
    assert req.wrist_image is None and req.state is None
    with pytest.raises(ProtocolError, match="wrist"):  # acting still needs it
        validate_request(_obs(**{"observation/wrist_image": None, "options": {"mode": "act"}}), SPEC)


@pytest.mark.parametrize(
    "obs, spec, match",
    [
        ([1, 2], SPEC, "must be a map"),
        (_obs(**{"observation/image": None}), SPEC, "missing required key 'observation/image'"),
        (_obs(prompt=None), SPEC, "missing required key 'prompt'"),
        (_obs(**{"observation/wrist_image": None}), SPEC, "missing required key 'observation/wrist_image'"),
        (_obs(**{"observation/state": None}), SPEC, "missing required key 'observation/state'"),
        (_obs(**{"observation/imgae": 1}), SPEC, "did you mean 'observation/image'"),
        (_obs(**{"observation/image": np.zeros((32, 32, 3), np.float32)}), SPEC, "dtype uint8"),
        (_obs(**{"observation/image": np.zeros((3, 32, 32), np.uint8)}), SPEC, r"shape \(H, W, 3\)"),
        (_obs(**{"observation/image": np.zeros((32, 32), np.uint8)}), SPEC, r"shape \(H, W, 3\)"),
        (_obs(**{"observation/image": np.zeros((2, 32, 3), np.uint8)}), SPEC, "each side"),
        (_obs(**{"observation/image": "img"}), SPEC, "must be an ndarray"),
        (_obs(**{"observation/state": np.full(8, np.nan, np.float32)}), SPEC, "NaN/inf"),
        (_obs(**{"observation/state": np.array([np.inf] + [0.0] * 7)}), SPEC, "NaN/inf"),
        (_obs(**{"observation/state": np.zeros(7, np.float32)}), SPEC, r"shape \(8,\)"),
        (_obs(**{"observation/state": np.zeros(8, bool)}), SPEC, "numeric dtype"),
        (_obs(prompt=3), SPEC, "must be a string"),
        (_obs(prompt="   "), SPEC, "is empty"),
        (_obs(prompt="x" * 5000), SPEC, "limit"),
        (_obs(options={"thnik": True}), SPEC, "unknown option 'thnik'; did you mean 'think'"),
        (_obs(options={"think": "yes"}), SPEC, "must be a bool"),
        (_obs(options={"mode": "dance"}), SPEC, "must be one of"),
        (_obs(options={"max_new_tokens": 0}), SPEC, r"in \[1, 512\]"),
        (_obs(options=[1]), SPEC, "must be a map"),
        (_obs(), RequestSpec(), "uses only 'observation/image'"),
        (_obs(**{"observation/wrist_image": None}), RequestSpec(), "takes no proprio state"),
    ],
)
def test_validate_rejects(obs, spec, match):
    with pytest.raises(ProtocolError, match=match) as info:
        validate_request(obs, spec)
    assert info.value.code == "bad_request"


def test_validated_arrays_are_writable_copies():
    frame = unpack(pack(_obs()))
    assert not frame["observation/image"].flags.writeable
    req = validate_request(frame, SPEC)
    req.image[0, 0, 0] = 7  # owned copy
    assert req.image.flags.writeable
